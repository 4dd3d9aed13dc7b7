"""modelops.stages and modelops.selection: the stage reuse and the best-variant rule the pipeline and main job share."""

from __future__ import annotations

import json
from pathlib import Path

from modelops.selection import accuracy_within, best_variant, pick_best, within_budget
from modelops.stages import StageRunner


def test_a_stage_runs_once_then_is_reused_until_forced(tmp_path: Path) -> None:
    calls: list[str] = []
    output = tmp_path / "artifact.bin"

    def build() -> dict:
        calls.append("built")
        output.write_text("x")
        return {"value": 1, "path": output}

    first = StageRunner(tmp_path / "stages").run("make", build, outputs=[output])
    assert first["value"] == 1 and first["path"] == str(output) and "stage_s" in first and "reused" not in first
    assert json.loads((tmp_path / "stages" / "make.json").read_text())["value"] == 1

    again = StageRunner(tmp_path / "stages").run("make", build, outputs=[output])
    assert again == {**first, "reused": True} and calls == ["built"]

    output.unlink()  # an output gone: the stage is redone
    StageRunner(tmp_path / "stages").run("make", build, outputs=[output])
    assert calls == ["built", "built"]
    StageRunner(tmp_path / "stages", force=True).run("make", build, outputs=[output])
    assert calls == ["built", "built", "built"]


def test_readiness_is_the_callers_rule(tmp_path: Path) -> None:
    output = tmp_path / "model.pt"
    output.write_text("no manifest beside it")
    runner = StageRunner(tmp_path, ready=lambda p: p.with_name(p.name + ".json").exists())
    runner.run("s", lambda: {"n": 1}, outputs=[output])
    assert not runner.is_done("s", [output])
    output.with_name("model.pt.json").write_text("{}")
    assert runner.is_done("s", [output])


def test_pick_best_fastest_within_budget_else_most_accurate() -> None:
    rows = [
        {"model": "original", "acc": 98.0, "speedup": 1.0},
        {"model": "pruned", "acc": 97.0, "speedup": 2.0},
        {"model": "int8", "acc": 95.0, "speedup": 4.0},
        {"model": "broken", "acc": 99.0, "speedup": 9.0, "error": "boom"},
        {"model": "untimed", "acc": 99.0, "speedup": None},
    ]
    budget = accuracy_within(98.0, 1.5, "acc")
    assert pick_best(rows, speed="speedup", accuracy="acc", meets_budget=budget)["model"] == "pruned"
    assert pick_best(rows, speed="speedup", accuracy="acc", meets_budget=lambda r: True)["model"] == "int8"
    assert pick_best(rows, speed="speedup", accuracy="acc", meets_budget=lambda r: False)["model"] == "original"
    assert pick_best(rows[3:], speed="speedup", accuracy="acc", meets_budget=budget) is None


def test_best_variant_names_the_winner_against_the_reference_row() -> None:
    rows = [
        {"model": "int8", "acc": 95.0, "speedup": 4.0},
        {"model": "original", "acc": 98.0, "speedup": 1.0},
        {"model": "pruned", "acc": 97.0, "speedup": 2.0},
    ]
    assert best_variant(rows, speed="speedup", accuracy="acc") == "pruned"  # the default 1.5-point budget
    assert best_variant(rows, speed="speedup", accuracy="acc", max_drop=None) == "int8"
    assert best_variant(rows, speed="speedup", accuracy="acc", max_drop=0.5) == "original"
    # the budget is set by the row named ``reference``, wherever it stands
    assert best_variant(rows, speed="speedup", accuracy="acc", max_drop=0.0) == "original"
    assert best_variant(rows, speed="speedup", accuracy="acc", reference="int8", max_drop=0.0) == "int8"
    assert best_variant([{"model": "original", "acc": 98.0}], speed="speedup", accuracy="acc") == "original"


def test_within_budget() -> None:
    assert within_budget(96.5, 98.0, 1.5) and not within_budget(96.4, 98.0, 1.5)
    assert within_budget(None, None, 1.5) and within_budget(1.0, 98.0, None) and not within_budget(None, 98.0, 1.5)
