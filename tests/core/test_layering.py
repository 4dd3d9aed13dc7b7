"""The layout's promises, checked on the source: imports point down only, no import cycles, small modules.

Layers: the shared core (``modelops``) at the bottom, the four parts (``PR1``..``PR4``) above it, the main job
(``main_job``) on top. A module may import its own layer or a lower one; among the parts, only the edges the
top README's "Layers" section names are allowed.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from tests.conftest import REPO_ROOT

CORE = "modelops"
PARTS = ("PR1_horizontal_pod_autoscaling", "PR2_async_inference", "PR3_model_optimization", "PR4_model_benchmarking")
TOP = "main_job"
LAYER = {CORE: 0, **dict.fromkeys(PARTS, 1), TOP: 2}
# Part -> part imports the top README's "Layers" section names (with the sentence that names each).
ALLOWED_PART_EDGES = {
    ("PR1_horizontal_pod_autoscaling", "PR2_async_inference"): "PR1 imports PR2",
    ("PR1_horizontal_pod_autoscaling", "PR4_model_benchmarking"): "PR1 also imports PR4",
}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Modules and functions over the limits, each with the reason it stays; keep this list short.
SIZE_EXCEPTIONS: dict[str, str] = {}


def source_files() -> Iterator[Path]:
    for package in LAYER:
        yield from sorted((REPO_ROOT / package).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=1)
def modules() -> dict[str, Path]:
    return {module_name(path): path for path in source_files()}


def type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (imports for annotations only, never run)."""
    hidden: set[int] = set()
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and (getattr(test, "id", None) == "TYPE_CHECKING"
                                         or getattr(test, "attr", None) == "TYPE_CHECKING"):
            hidden.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return hidden


def imported_modules(path: Path, runtime_only: bool = False) -> set[str]:
    """Every project module ``path`` imports, at module level or inside a function, resolved to a module.

    Args:
        path: a source file.
        runtime_only: leave out imports under ``if TYPE_CHECKING:`` (default: False).
    """
    known = modules()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    hidden = type_checking_nodes(tree) if runtime_only else set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one.
            candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in candidates:
            while name and name not in known:  # ``import a.b.c`` of a non-module attribute: its module
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    found.discard(module_name(path))
    return found


def top_package(module: str) -> str:
    return module.split(".")[0]


@lru_cache(maxsize=2)
def import_graph(runtime_only: bool = False) -> dict[str, set[str]]:
    return {name: imported_modules(path, runtime_only) for name, path in modules().items()}


def test_the_scan_sees_the_known_edges() -> None:
    graph = import_graph()
    assert "modelops.artifact" in graph["PR3_model_optimization.model_quantization"]
    assert "PR3_model_optimization.quantization.backends" in graph["PR3_model_optimization.quantization.config"]
    assert {"main_job.job", "modelops.cli"} <= graph["main_job.cli"]
    assert "PR3_model_optimization.quantization.config" in graph["PR3_model_optimization.quantization.backends"]
    runtime = import_graph(runtime_only=True)
    assert "PR3_model_optimization.quantization.config" not in runtime["PR3_model_optimization.quantization.backends"]


def test_imports_point_down_only() -> None:
    upward = []
    for module, targets in import_graph().items():
        source = top_package(module)
        for target in targets:
            dest = top_package(target)
            if dest == source:
                continue
            if LAYER[dest] > LAYER[source]:
                upward.append(f"{module} -> {target}")
            elif LAYER[dest] == LAYER[source] and (source, dest) not in ALLOWED_PART_EDGES:
                upward.append(f"{module} -> {target} (part to part, not in the README's Layers section)")
    assert upward == []


def test_the_readme_names_every_allowed_part_edge() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    layers = readme.split("## Layers", 1)[1].split("\n## ", 1)[0]
    for sentence in ALLOWED_PART_EDGES.values():
        assert sentence in layers, sentence


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles() -> None:
    # An import for annotations only (under TYPE_CHECKING) never runs, so it cannot close a cycle.
    assert find_cycle(import_graph(runtime_only=True)) is None


@lru_cache(maxsize=1)
def oversized() -> list[str]:
    found = []
    for path in source_files():
        text = path.read_text()
        rel = path.relative_to(REPO_ROOT).as_posix()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            found.append(rel)
        for node in ast.walk(ast.parse(text)):
            function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            if function and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                found.append(f"{rel}::{node.name}")
    return found


def test_modules_and_functions_stay_small() -> None:
    assert [name for name in oversized() if name not in SIZE_EXCEPTIONS] == []


def test_every_size_exception_is_still_needed() -> None:
    within = [name for name in SIZE_EXCEPTIONS if name not in oversized()]
    assert within == [], f"{within} are within the limits now: drop them from SIZE_EXCEPTIONS"


# ---------------------------------------------------------------------- explicit inputs, no hidden state
# The shared core keeps no process-wide state that a script sets and a loader reads: what a loader needs comes in
# as arguments (a ``LoadOptions``). A module-level name bound to a call's result, or rebound by a function
# (``global``), is such state, except these, each with why it is not.
ALLOWED_MODULE_CALLS = {
    "logging.getLogger": "a logger; configured once at the entry point, never read as a setting",
    "TypeVar": "a typing construct",
    "object": "a sentinel, compared by identity only",
    "Path": "an immutable path constant",
    "TimingPolicy": "a frozen dataclass constant (the timing policy's defaults)",
    "import_torchvision": "the torchvision module itself, imported through the compat helper: the same object "
                          "`import torchvision` binds, not a setting",
}
# (module, name) -> why a function may rebind it.
ALLOWED_GLOBALS = {
    ("modelops/tv_compat.py", "_compat_library"): "keeps torch's op registrations alive: torch's op registry is "
                                                  "process-wide by nature, not a script's setting",
    ("modelops/tv_compat.py", "patched"): "records whether those placeholder ops were defined in this process",
}


def hidden_state(source: str, rel: str) -> list[str]:
    """Module-level names of the module ``rel`` (its ``source``) bound to a call's result or rebound by a function,
    less the allowed ones."""
    tree = ast.parse(source, filename=rel)
    found = []
    for node in tree.body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if isinstance(value, ast.Call) and ast.unparse(value.func) not in ALLOWED_MODULE_CALLS:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found += [f"{rel}:{node.lineno} {ast.unparse(t)} = {ast.unparse(value.func)}(...)" for t in targets]
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            found += [f"{rel}:{node.lineno} global {name}" for name in node.names if (rel, name) not in ALLOWED_GLOBALS]
    return found


def test_the_state_check_sees_both_forms() -> None:
    # The shape of the old ``--arch`` global: a literal at module level, rebound by a setter the CLI called.
    source = ("import logging\n_arch = None\nCACHE = dict()\nlogger = logging.getLogger(__name__)\n"
              "def set_arch(arch):\n    global _arch\n    _arch = arch\n")
    assert hidden_state(source, "modelops/sample.py") == ["modelops/sample.py:3 CACHE = dict(...)",
                                                          "modelops/sample.py:6 global _arch"]


def test_no_hidden_process_state_in_the_core() -> None:
    found = []
    for path in sorted((REPO_ROOT / CORE).rglob("*.py")):
        found += hidden_state(path.read_text(), path.relative_to(REPO_ROOT).as_posix())
    assert found == []


# Library code takes typed parameters; only a script's own functions and the CLI layer read parsed flags, and
# nothing changes them after parsing (a flag changed below ``main`` is hidden state too).
CLI_LAYER = {"modelops/cli.py": "turns the common flags into typed values (load_options, setup, datasets)"}
# Library modules that still take a Namespace, each with why; the list only shrinks (checked below).
NAMESPACE_EXCEPTIONS: dict[str, str] = {}
# Scripts that still fill their own flags in after parsing, each with why.
MUTATION_EXCEPTIONS: dict[str, str] = {}


def is_script(tree: ast.Module) -> bool:
    """A module with ``get_args_parser`` or an ``if __name__ == "__main__":`` entry point."""
    return any((isinstance(node, ast.FunctionDef) and node.name == "get_args_parser")
               or (isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)) for node in tree.body)


def namespace_uses(source: str, rel: str) -> tuple[list[str], list[str]]:
    """(functions of a library module that take a Namespace, functions anywhere that change one they were given)."""
    tree = ast.parse(source, filename=rel)
    takes, changes = [], []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        params = [*func.args.posonlyargs, *func.args.args, *func.args.kwonlyargs]
        flags = {p.arg for p in params if p.annotation is not None and "Namespace" in ast.unparse(p.annotation)}
        if flags and not is_script(tree):
            takes.append(f"{rel}::{func.name}")
        for node in ast.walk(func):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
            hit = any(isinstance(t, ast.Attribute) and getattr(t.value, "id", None) in flags for t in targets)
            hit |= (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr" and bool(node.args)
                    and getattr(node.args[0], "id", None) in flags)
            if hit:
                changes.append(f"{rel}::{func.name}:{node.lineno}")
    return takes, changes


def test_the_namespace_check_sees_both_forms() -> None:
    library = ("import argparse\ndef run(args: argparse.Namespace, n: int) -> None:\n    return None\n"
               "def fill(args: argparse.Namespace) -> None:\n    args.dataset = 'digits'\n"
               "    setattr(args, 'iters', 3)\n")
    assert namespace_uses(library, "PR4_model_benchmarking/lib.py") == (
        ["PR4_model_benchmarking/lib.py::run", "PR4_model_benchmarking/lib.py::fill"],
        ["PR4_model_benchmarking/lib.py::fill:5", "PR4_model_benchmarking/lib.py::fill:6"])
    script = library + "def get_args_parser():\n    pass\n"
    assert namespace_uses(script, "s.py")[0] == []  # a script's own functions may read its flags


@lru_cache(maxsize=1)
def namespace_findings() -> dict[str, tuple[list[str], list[str]]]:
    return {path.relative_to(REPO_ROOT).as_posix(): namespace_uses(path.read_text(),
                                                                   path.relative_to(REPO_ROOT).as_posix())
            for path in source_files()}


def test_library_code_takes_no_namespace() -> None:
    takes = [f for rel, (found, _) in namespace_findings().items()
             if rel not in CLI_LAYER and rel not in NAMESPACE_EXCEPTIONS for f in found]
    assert takes == []


def test_no_function_changes_the_parsed_flags() -> None:
    changes = [f for rel, (_, found) in namespace_findings().items() if rel not in MUTATION_EXCEPTIONS for f in found]
    assert changes == []


def test_every_namespace_exception_is_still_needed() -> None:
    findings = namespace_findings()
    unneeded = [rel for rel in NAMESPACE_EXCEPTIONS if not findings.get(rel, ([], []))[0]]
    unneeded += [rel for rel in MUTATION_EXCEPTIONS if not findings.get(rel, ([], []))[1]]
    assert unneeded == [], f"{unneeded} no longer need their exception: drop them"
