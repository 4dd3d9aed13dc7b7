"""The main job's flags and ``main(args)``; ``python -m main_job`` runs it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import main_job
from main_job.job import STAGES, Job, JobConfig
from main_job.sizing import SizingConfig, add_sizing_flags, check_sizing_flags
from modelops.cli import common_parser, run_cli, set_help
from modelops.logs import logging_to


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    # The job trains its own models (--teacher-arch, --student-arch): no --arch for a model file.
    parser = argparse.ArgumentParser(prog="python -m main_job", description=(main_job.__doc__ or "").split("\n\n")[0],
                                     parents=[common_parser(loads_model=False)], add_help=add_help,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-arch", default="resnet50", help="the original model (default: resnet50)")
    parser.add_argument("--student-arch", default="resnet18", help="the distillation student (default: resnet18)")
    parser.add_argument("--models-dir", default="models", help="where artifacts go (default: models)")
    parser.add_argument("--output-dir", default="runs/main_job",
                        help="stage summaries and reports (default: runs/main_job)")
    parser.add_argument("--tiny", action="store_true", help="smallest sizes everywhere: a smoke run (default: off)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma list of stages to run (default: all: "
                        f"{','.join(STAGES)})")
    parser.add_argument("--force", action="store_true", help="redo stages that already have results (default: reuse)")
    add_sizing_flags(parser)
    set_help(parser, "log_file", "also write every log record to FILE, libraries' warnings included, which the "
             "terminal shows only with -v (default: <output-dir>/job.log)")
    return parser


def job_config(args: argparse.Namespace) -> JobConfig:
    """The job's flags as the stages' typed config."""
    return JobConfig(teacher_arch=args.teacher_arch, student_arch=args.student_arch, dataset=args.dataset,
                     seed=args.seed, threads=args.threads, models_dir=Path(args.models_dir),
                     output_dir=Path(args.output_dir), tiny=args.tiny,
                     stages=tuple(s.strip() for s in args.stages.split(",") if s.strip()), force=args.force)


def sizing_config(args: argparse.Namespace) -> SizingConfig:
    """The sizing flags as the sizing step's typed config."""
    return SizingConfig(p95_ms=args.p95_ms, peak_rps=args.peak_rps, base_rps=args.base_rps, headroom=args.headroom)


def main(args: argparse.Namespace) -> dict:
    sizing = sizing_config(args)
    check_sizing_flags(sizing)  # a bad objective fails now, not after the stages
    # The terminal shows the job's progress and results; libraries' messages go to the job's log file.
    log_file = Path(args.log_file or Path(args.output_dir) / "job.log")
    with logging_to(log_file):
        summary = Job(job_config(args), sizing).run()
    if summary.get("sizing_line"):
        print(f"\n{summary['sizing_line']}")
    print(f"\nReport: {summary['report_md']}\n        {summary['report_html']}\nLog:    {log_file}")
    return summary


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
