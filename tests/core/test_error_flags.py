"""Every flag an error message names is a flag of the script that can print it."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from modelops.cli import common_parser

REPO_ROOT = Path(__file__).resolve().parents[2]
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
ERRORS = {"UsageError", "ArtifactError", "SystemExit"}
# A command suggested for another script ("run prepare_model.py --arch resnet50 --save-path X") names its flags.
OTHER_SCRIPT_COMMAND = re.compile(r"\S+\.py(\s+[^\s(]+)*")
# Core modules raise into every script, so they may name only the common flags.
CORE = sorted(p for p in (REPO_ROOT / "modelops").glob("*.py"))
SCRIPTS = [
    "PR3_model_optimization.model_quantization", "PR3_model_optimization.model_pruning",
    "PR3_model_optimization.model_distillation", "PR3_model_optimization.prepare_model",
    "PR3_model_optimization.optimize_pipeline", "PR4_model_benchmarking.benchmark_models",
    "PR4_model_benchmarking.model_flamegraph", "modelops.describe",
]


def _text(node: ast.AST) -> str:
    """The literal text of a message expression (f-string parts and concatenations included)."""
    return " ".join(n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def flags_in_error_messages(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            func = node.exc.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name in ERRORS:
                message = " ".join(_text(arg) for arg in node.exc.args)
                found |= set(FLAG.findall(OTHER_SCRIPT_COMMAND.sub("", message)))
    return found


def option_strings(parser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


def helper_flags(core_module: str) -> set[str]:
    """Flags a core module's messages may name beyond the common ones: those of the only scripts that reach it."""
    import argparse

    if core_module == "training.py":  # its checks run on the flags its add_training_args gives every trainer
        from modelops.training import add_training_args

        parser = argparse.ArgumentParser()
        add_training_args(parser)
        return option_strings(parser)
    if core_module == "quantization_input.py":  # only model_quantization.py (also run by the pipeline) loads through it
        return option_strings(importlib.import_module("PR3_model_optimization.model_quantization").get_args_parser())
    if core_module == "models.py":  # pretrained weights are fetched only for a new model
        return option_strings(importlib.import_module("PR3_model_optimization.prepare_model").get_args_parser())
    return set()


def test_the_check_sees_flags_in_messages():
    assert "--arch" in flags_in_error_messages(REPO_ROOT / "modelops" / "arch_inference.py")


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_messages_name_only_common_flags(path):
    unknown = flags_in_error_messages(path) - option_strings(common_parser()) - helper_flags(path.name)
    assert not unknown, f"{path.name} names flags no script shares: {sorted(unknown)}"


@pytest.mark.parametrize("module", SCRIPTS)
def test_script_messages_name_only_flags_the_script_accepts(module):
    mod = importlib.import_module(module)
    path = Path(mod.__file__)
    unknown = flags_in_error_messages(path) - option_strings(mod.get_args_parser())
    assert not unknown, f"{path.name} names flags its parser does not accept: {sorted(unknown)}"
