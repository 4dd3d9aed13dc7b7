"""The top README's measured table, written from a main-job report so the README and the report cannot differ.

    python PR4_model_benchmarking/readme_table.py --report runs/main_job/report.json   # copy + rewrite README
    python PR4_model_benchmarking/readme_table.py --check                              # exit 1 if they differ

The report is copied to ``docs/measurements/main_job_report.json`` (committed, so anyone can check the table),
and the block between the README's ``measured-table`` markers is rewritten from it: the CPU it ran on, one row
per variant (what was done, size, speed-up at batch 1 and 16, top-1 change), and the command.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from modelops.errors import UsageError
from modelops.results import speedup_key
from PR4_model_benchmarking.report_format import fmt
from PR4_model_benchmarking.summary import HEADLINE_BATCHES

REPO_ROOT = Path(__file__).resolve().parents[1]
KEPT_REPORT = Path("docs/measurements/main_job_report.json")
BLOCK = re.compile(r"<!-- measured-table: begin report=(?P<report>\S+) -->\n(?P<body>.*?)<!-- measured-table: end -->",
                   re.DOTALL)
LOADGEN_NOTE = ("Single-stream p90 and offline samples/s are MLPerf LoadGen's figures with its verdict, under "
                "MLPerf Inference's scenario rules (see PR4's README); not an MLPerf submission.")
CPU_NOTE = ("Speed-up ratios depend on the CPU class: int8 kernels gain least with AVX2 alone, more with "
            "AVX512-VNNI (or AVX-VNNI), most with AMX; the same run on another class gives other ratios.")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help)
    parser.add_argument("--report", default=None,
                        help=f"a main-job report.json to copy to {KEPT_REPORT} and write the table from "
                             "(default: the report the README names)")
    parser.add_argument("--readme", default=str(REPO_ROOT / "README.md"), help="the README (default: README.md)")
    parser.add_argument("--check", action="store_true",
                        help="only compare the README's table with the report it names; exit 1 if they differ "
                             "(default: off)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks on errors")
    return parser


def markdown_text(rows: list[dict[str, Any]]) -> str:
    """A Markdown table that prints every cell as written (a "+0.28" stays signed)."""
    from tabulate import tabulate

    return tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True)


def _ratio(value: Any) -> str:
    return f"{value:.2f}x" if isinstance(value, int | float) else "-"


def _loadgen(value: Any, result: Any) -> str:
    """A LoadGen figure with LoadGen's verdict: "14.4 (VALID)"."""
    return "-" if value is None else f"{fmt(value)} ({result or '?'})"


def table_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per benchmarked variant, every figure copied from the report's Benchmark section; the MLPerf
    LoadGen columns where the report has them."""
    rows = report["sections"]["Benchmark"]
    ref = rows[0]
    loadgen = any(row.get("single_stream_latency_ms_p90") is not None or row.get("offline_samples_per_s") is not None
                  for row in rows)
    out = []
    for row in rows:
        size = row.get("size_mb")
        share = f"{100 * size / ref['size_mb']:.1f}%" if size and ref.get("size_mb") else "-"
        delta = row.get("top1_change_pts")
        line = {"variant": row["model"], "what was done": row.get("transform") or row.get("backend") or "-",
                "size (% of original)": f"{share} ({fmt(size)} MB)" if size else share,
                **{f"speed-up batch {b}": _ratio(row.get(speedup_key(b))) for b in HEADLINE_BATCHES},
                "top-1 change (pts)": "-" if delta is None else f"{delta:+.2f}",
                "top-1 (%)": "-" if row.get("top1_pct") is None else f"{row['top1_pct']:.2f}"}
        if loadgen:
            line["single-stream p90 (ms)"] = _loadgen(row.get("single_stream_latency_ms_p90"),
                                                       row.get("single_stream_result"))
            line["offline (samples/s)"] = _loadgen(row.get("offline_samples_per_s"), row.get("offline_result"))
        out.append(line)
    return out


def render(report: dict[str, Any], report_path: str) -> str:
    """The block's body: where and how it was measured, the table, the CPU-class caveat."""
    head = report.get("headline") or {}
    env = report.get("environment", {})
    cpu = head.get("cpu_model") or env.get("cpu_model")
    rows = table_rows(report)
    loadgen = [LOADGEN_NOTE] if rows and "offline (samples/s)" in rows[0] else []
    return "\n".join([
        f"The main job's benchmark (`python -m main_job`, report `{report_path}`) on {cpu} "
        f"({head.get('cpu_class', 'unknown class')} int8 kernels, {head.get('threads')} threads); ratios are "
        "median latencies against the original at the same batch size, each model in its own process, timed in "
        "interleaved turns with every runtime's default threading.", "",
        markdown_text(rows), "", CPU_NOTE, *loadgen,
        "Regenerate: `python PR4_model_benchmarking/readme_table.py --report runs/main_job/report.json`.", ""])


def readme_block(text: str) -> re.Match[str]:
    match = BLOCK.search(text)
    if match is None:
        raise UsageError("the README has no '<!-- measured-table: begin report=PATH -->' ... "
                         "'<!-- measured-table: end -->' block")
    return match


def main(args: argparse.Namespace) -> dict[str, Any]:
    readme = Path(args.readme)
    text = readme.read_text()
    match = readme_block(text)
    root = readme.resolve().parent  # paths in the README are relative to it
    named = str(KEPT_REPORT) if args.report else match["report"]
    if args.report:
        if args.check:
            raise UsageError("--check compares with the report the README names; drop --report")
        if not Path(args.report).is_file():
            raise UsageError(f"--report {args.report} does not exist")
        (root / KEPT_REPORT).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.report, root / KEPT_REPORT)
    report_file = root / named
    if not report_file.is_file():
        raise UsageError(f"the README names report {named}, which does not exist; run with --report PATH")
    body = render(json.loads(report_file.read_text()), named)
    matches = match["body"] == body
    if args.check:
        print("README table matches" if matches else f"README table differs from {named}")
        if not matches:
            raise RuntimeError(f"the README's measured table differs from {named}: rerun without --check")
        return {"matches": True, "report": named}
    new = text[:match.start()] + f"<!-- measured-table: begin report={named} -->\n{body}<!-- measured-table: end -->" \
        + text[match.end():]
    readme.write_text(new)
    print(f"{readme}: measured table written from {named}")
    return {"matches": True, "report": named, "readme": str(readme)}


if __name__ == "__main__":
    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
