"""The top README's measured table is the main job's table, from the report the README names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from modelops.cli import run_cli
from PR4_model_benchmarking import readme_table

REPO_ROOT = Path(__file__).resolve().parents[2]
REPORT = {
    "environment": {"cpu_model": "Test CPU 9000"},
    "headline": {"cpu_model": "Test CPU 9000", "cpu_class": "AVX2", "threads": 2, "best": "combined"},
    "sections": {"Benchmark": [
        {"model": "original", "transform": "baseline", "size_mb": 94.4, "top1_pct": 97.2,
         "top1_change_pts": 0.0, "speedup_b1_x": 1.0, "speedup_b16_x": 1.0},
        {"model": "combined", "transform": "quantization", "size_mb": 6.2, "top1_pct": 97.5,
         "top1_change_pts": 0.28, "speedup_b1_x": 14.4, "speedup_b16_x": 11.9}]},
}


def _readme(tmp_path: Path) -> Path:
    readme = tmp_path / "README.md"
    readme.write_text("# Project\n\n## Measured results\n\n<!-- measured-table: begin report=none -->\nold\n"
                      "<!-- measured-table: end -->\n\nMore text.\n")
    (tmp_path / "report.json").write_text(json.dumps(REPORT))
    return readme


def _args(*argv: str):
    return readme_table.get_args_parser().parse_args(list(argv))


def test_table_is_written_from_the_report_and_checked_against_it(tmp_path):
    readme = _readme(tmp_path)
    readme_table.main(_args("--readme", str(readme), "--report", str(tmp_path / "report.json")))
    text = readme.read_text()
    assert "report=docs/measurements/main_job_report.json" in text and "More text." in text
    assert (tmp_path / readme_table.KEPT_REPORT).is_file()
    row = next(line for line in text.splitlines() if line.startswith("| combined"))
    assert "6.6% (6.2 MB)" in row and "14.40x" in row and "11.90x" in row and "+0.28" in row
    assert "Test CPU 9000 (AVX2 int8 kernels, 2 threads)" in text and "AVX512-VNNI" in text and "AMX" in text
    assert readme_table.main(_args("--readme", str(readme), "--check"))["matches"]
    # a figure edited by hand in the README no longer matches its report
    readme.write_text(text.replace("14.40x", "16.30x"))
    assert run_cli(readme_table.main, readme_table.get_args_parser(), ["--readme", str(readme), "--check"]) == 1


def test_bad_input_exits_2(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no block\n")
    assert run_cli(readme_table.main, readme_table.get_args_parser(), ["--readme", str(readme)]) == 2
    assert "measured-table" in capsys.readouterr().err
    readme = _readme(tmp_path)
    assert run_cli(readme_table.main, readme_table.get_args_parser(),
                   ["--readme", str(readme), "--report", str(tmp_path / "missing.json")]) == 2


def test_the_top_readme_table_matches_the_report_it_names(tmp_path):
    text = (REPO_ROOT / "README.md").read_text()
    block = readme_table.readme_block(text)
    assert "AVX2" in block["body"] and "AVX512-VNNI" in block["body"] and "AMX" in block["body"]
    if block["report"] == "none":
        pytest.skip("the README names no main-job report yet (python PR4_model_benchmarking/readme_table.py "
                    "--report runs/main_job/report.json writes one)")
    copy = tmp_path / "README.md"
    shutil.copyfile(REPO_ROOT / "README.md", copy)
    (tmp_path / block["report"]).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO_ROOT / block["report"], tmp_path / block["report"])
    assert readme_table.main(_args("--readme", str(copy), "--check"))["matches"]
