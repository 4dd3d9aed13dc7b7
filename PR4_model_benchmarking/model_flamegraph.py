"""Where does inference time go? A py-spy flamegraph, a profiler trace and the top operators of a model.

    python PR4_model_benchmarking/model_flamegraph.py --model models/resnet50.pt --duration 5 --native
    python PR4_model_benchmarking/model_flamegraph.py --model models/resnet50.pt --compare models/quantized_model.pt

For each model it writes, under ``--output-dir``:

- ``<name>_flame.svg``: py-spy samples a child process that only loops inference (loading is not in it);
  ``--native`` adds the C++ frames (ATen, oneDNN, ONNX Runtime kernels).
- ``<name>_trace.json``: a Chrome trace (open in chrome://tracing or https://ui.perfetto.dev). For torch
  backends it comes from torch.profiler (aten operators); torch.profiler sees an ONNX Runtime session as
  one opaque call, so for ONNX models it is ONNX Runtime's own profile (one event per graph node).
- ``<name>_top_ops.md`` / ``.json``: operators by self time per inference call.

``--compare`` profiles a second model the same way and prints both op tables side by side.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from modelops.cli import check_positive, common_parser, load_options, run_cli, set_help, usable_cores
from modelops.errors import UsageError
from modelops.load_options import LoadOptions
from modelops.results import markdown_table, write_results

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 600.0


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Profile a model artifact: py-spy flamegraph (SVG), Chrome trace, top operators by self time; "
                    "--compare a second model to see where the time went.",
        parents=[common_parser()], add_help=add_help,
    )
    parser.set_defaults(batch_size=1)
    set_help(parser, "batch_size", "batch size of the profiled calls (default: 1)")
    parser.add_argument("--model", required=True, help="model artifact to profile (.pt, .pth, .pt2, .onnx)")
    parser.add_argument("--compare", default=None, metavar="PATH",
                        help="a second artifact to profile the same way and compare op by op (default: none)")
    spy = parser.add_argument_group("flamegraph (py-spy)")
    spy.add_argument("--duration", type=float, default=5.0, help="seconds py-spy samples inference (default: 5)")
    spy.add_argument("--rate", type=int, default=100, help="py-spy samples per second (default: 100)")
    spy.add_argument("--native", action="store_true",
                     help="include native C/C++ frames (ATen, oneDNN, ORT kernels) (default: off)")
    spy.add_argument("--py-spy", default=None,
                     help="py-spy executable (default: next to this Python, else on PATH)")
    spy.add_argument("--no-flamegraph", action="store_true", help="skip py-spy, only profile ops (default: off)")
    prof = parser.add_argument_group("operator profile")
    prof.add_argument("--profile-iters", type=int, default=10, help="profiled inference calls (default: 10)")
    prof.add_argument("--warmup", type=int, default=3, help="calls before profiling starts (default: 3)")
    prof.add_argument("--top", type=int, default=15, help="operators listed (default: 15)")
    parser.add_argument("--output-dir", default="runs/flamegraph", help="where files go (default: runs/flamegraph)")
    return parser


# ---------------------------------------------------------------------- py-spy


def find_py_spy(explicit: str | None = None) -> str:
    candidates = [explicit] if explicit else [str(Path(sys.executable).parent / "py-spy"), shutil.which("py-spy")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    raise UsageError(f"py-spy not found ({explicit or 'next to ' + sys.executable + ' or on PATH'}); "
                     "install it with `pip install py-spy==0.4.3` or pass --no-flamegraph")


def record_flamegraph(model: str | Path, svg_path: Path, options: LoadOptions, *, duration: float, rate: int,
                      native: bool, batch_size: int, py_spy: str | None = None) -> dict[str, Any]:
    """Run inference in a child process and let py-spy sample it for ``duration`` seconds into ``svg_path``.

    The child loads and warms up first and says ``ready``; only then does py-spy attach (by pid), so
    the flamegraph holds inference frames, not imports and loading. ``options`` reach its loader as flags
    (device, threads, all usable cores where None, trust_pickle, arch, image_size), so it runs the model on the
    input the operator profile used; it compiles as the model's manifest says.
    """
    exe = find_py_spy(py_spy)
    svg_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "PR4_model_benchmarking.inference_loop", "--model", str(model),
           "--batch-size", str(batch_size), "--threads", str(options.threads or usable_cores()),
           "--device", options.device, "--seconds", str(duration + 60)]
    if options.trust_pickle:
        cmd.append("--trust-pickle")
    cmd += ["--arch", options.arch] if options.arch else []
    cmd += ["--image-size", str(options.image_size)] if options.image_size else []
    # The child inherits this environment: each runtime keeps its default threading, as when it is timed.
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = _wait_ready(child)
        if not line.startswith("ready"):
            err = (child.stderr.read() if child.stderr else "").strip().splitlines()
            raise RuntimeError(f"inference child for {model} exited before it was ready: "
                               f"{err[-1] if err else 'no output'}")
        spy = [exe, "record", "--pid", str(child.pid), "--duration", str(max(1, round(duration))),
               "--rate", str(rate), "--format", "flamegraph", "--output", str(svg_path)]
        # --nonblocking (sample without pausing the child) is cheaper, but py-spy cannot unwind native
        # stacks of a running process: --native pauses it for each sample.
        spy.append("--native" if native else "--nonblocking")
        started = time.perf_counter()
        done = subprocess.run(spy, capture_output=True, text=True, timeout=duration + 120)
        elapsed = time.perf_counter() - started
        if done.returncode != 0 or not svg_path.is_file() or svg_path.stat().st_size == 0:
            last = (done.stderr or done.stdout).strip().splitlines()
            raise RuntimeError(f"py-spy failed (exit {done.returncode}): {last[-1] if last else 'no output'}")
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    return {"flamegraph": str(svg_path), "py_spy_seconds": round(elapsed, 2), "rate": rate, "native": native}


def _wait_ready(child: subprocess.Popen) -> str:
    """The child's first stdout line (``ready <pid>``), or "" if it exits first."""
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(child.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if selector.select(timeout=1.0):
            return child.stdout.readline().strip()  # type: ignore[union-attr]
        if child.poll() is not None:
            return ""
    raise RuntimeError(f"inference child not ready after {READY_TIMEOUT_S:.0f} s")


# ---------------------------------------------------------------------- operator profiles


def profile_torch(predictor: Any, batch: Any, *, iters: int, warmup: int, trace_path: Path) -> list[dict[str, Any]]:
    """torch.profiler over ``iters`` calls: a Chrome trace and aten ops by self CPU time per call."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        predictor(batch)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            predictor(batch)
    trace_path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(trace_path))
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    return _op_rows({e.key: (e.self_cpu_time_total, e.count) for e in events}, iters)


def profile_onnxruntime(path: str | Path, batch: Any, *, iters: int, warmup: int, threads: int,
                        trace_path: Path) -> list[dict[str, Any]]:
    """ONNX Runtime's own profiler: node kernel time per op type per call, its JSON kept as the trace.

    load_artifact's session has profiling off, so this opens a second session on the same file with
    the same thread settings and profiling on.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = True
    trace_path.parent.mkdir(parents=True, exist_ok=True)
    options.profile_file_prefix = str(trace_path.with_suffix("")) + "_ort"
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: batch.detach().cpu().float().numpy()}
    for _ in range(warmup + iters):
        session.run(None, feed)
    produced = Path(session.end_profiling())
    events = json.loads(produced.read_text())
    produced.replace(trace_path)
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[warmup:]
    windows = [(e["ts"], e["ts"] + e["dur"]) for e in runs]
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        if any(start <= event["ts"] <= end for start, end in windows):
            op = event.get("args", {}).get("op_name", event["name"])
            totals[op][0] += event["dur"]
            totals[op][1] += 1
    return _op_rows({op: (us, count) for op, (us, count) in totals.items()}, len(windows) or iters)


def _op_rows(totals: dict[str, tuple[float, int]], iters: int) -> list[dict[str, Any]]:
    """Rows sorted by self time: op, calls per inference, self ms per inference, share of the total."""
    grand = sum(us for us, _ in totals.values()) or 1.0
    rows = [{"op": op, "calls_per_iter": round(count / iters, 2), "self_ms_per_iter": round(us / 1e3 / iters, 4),
             "self_pct": round(100 * us / grand, 2)} for op, (us, count) in totals.items()]
    return sorted(rows, key=lambda r: r["self_ms_per_iter"], reverse=True)


def compare_ops(a: list[dict[str, Any]], b: list[dict[str, Any]], names: tuple[str, str],
                top: int) -> list[dict[str, Any]]:
    """Both models' ops side by side (joined on the op name), largest first; blank where a model lacks one."""
    a_ms = {r["op"]: r["self_ms_per_iter"] for r in a}
    b_ms = {r["op"]: r["self_ms_per_iter"] for r in b}
    ops = sorted(set(a_ms) | set(b_ms), key=lambda op: max(a_ms.get(op, 0), b_ms.get(op, 0)), reverse=True)
    rows = []
    for op in ops[:top]:
        x, y = a_ms.get(op), b_ms.get(op)
        rows.append({"op": op, f"{names[0]}_ms": x, f"{names[1]}_ms": y,
                     "delta_ms": round((y or 0) - (x or 0), 4)})
    rows.append({"op": "TOTAL (all ops)", f"{names[0]}_ms": round(sum(a_ms.values()), 4),
                 f"{names[1]}_ms": round(sum(b_ms.values()), 4),
                 "delta_ms": round(sum(b_ms.values()) - sum(a_ms.values()), 4)})
    return rows


# ---------------------------------------------------------------------- one model


def profile_model(path: str | Path, args: argparse.Namespace, output_dir: Path) -> dict[str, Any]:
    """Flamegraph, trace and top-op table of one artifact."""
    import torch

    from modelops.artifact import load_artifact

    threads = args.threads or usable_cores()
    options = load_options(args, threads=threads)  # the same for the py-spy child, so it runs the same input
    name = Path(path).name.replace(".", "_")
    predictor = load_artifact(path, options)
    batch = torch.randn(args.batch_size, *predictor.input_shape)
    predictor.check_input(batch)
    trace = output_dir / f"{name}_trace.json"
    if predictor.backend == "onnxruntime":
        rows = profile_onnxruntime(path, batch, iters=args.profile_iters, warmup=args.warmup, threads=threads,
                                   trace_path=trace)
        profiler = "onnxruntime profiler (node kernel time per op type)"
    else:
        rows = profile_torch(predictor, batch, iters=args.profile_iters, warmup=args.warmup, trace_path=trace)
        profiler = "torch.profiler (CPU self time per aten op)"
    del predictor
    result: dict[str, Any] = {"model": str(path), "backend": profiler.split()[0], "profiler": profiler,
                              "batch_size": args.batch_size, "threads": threads, "trace": str(trace),
                              "top_ops": rows[: args.top]}
    write_results(output_dir / f"{name}_top_ops.json", rows, fmt="json")
    md = output_dir / f"{name}_top_ops.md"
    md.write_text(f"# Top operators: {path}\n\n{profiler}, batch {args.batch_size}, {threads} threads, "
                  f"{args.profile_iters} calls\n\n{markdown_table(rows[: args.top])}\n")
    result["top_ops_md"] = str(md)
    if not args.no_flamegraph:
        result.update(record_flamegraph(path, output_dir / f"{name}_flame.svg", options, duration=args.duration,
                                        rate=args.rate, native=args.native, batch_size=args.batch_size,
                                        py_spy=args.py_spy))
    return result


def main(args: argparse.Namespace) -> dict[str, Any]:
    check_positive("--duration", args.duration)
    check_positive("--rate", args.rate)
    check_positive("--profile-iters", args.profile_iters)
    check_positive("--top", args.top)
    check_positive("--batch-size", args.batch_size)
    check_positive("--warmup", args.warmup, allow_zero=True)
    for path in (args.model, args.compare):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"Model file {path} does not exist")
    if not args.no_flamegraph:
        find_py_spy(args.py_spy)  # fail before any work
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"output_dir": str(output_dir), "models": [profile_model(args.model, args, output_dir)]}
    first = result["models"][0]
    print(f"Top operators of {args.model} ({first['profiler']}, ms per call):")
    print(markdown_table(first["top_ops"]))
    if args.compare:
        second = profile_model(args.compare, args, output_dir)
        result["models"].append(second)
        names = (Path(args.model).stem, Path(args.compare).stem)
        if names[0] == names[1]:
            names = (names[0] + "_a", names[1] + "_b")
        full_a = json.loads((output_dir / f"{Path(args.model).name.replace('.', '_')}_top_ops.json").read_text())
        full_b = json.loads((output_dir / f"{Path(args.compare).name.replace('.', '_')}_top_ops.json").read_text())
        rows = compare_ops(full_a, full_b, names, args.top)
        compare_md = output_dir / "compare.md"
        compare_md.write_text(f"# Where the time went: {args.model} vs {args.compare}\n\n"
                              f"Self time per inference call in ms ({first['profiler']} / {second['profiler']})."
                              f"\n\n{markdown_table(rows)}\n")
        result["compare"] = {"rows": rows, "markdown": str(compare_md)}
        print(f"\nSide by side ({names[0]} vs {names[1]}, ms per call):")
        print(markdown_table(rows))
    for model in result["models"]:
        logger.info("%s: trace %s, flamegraph %s", model["model"], model["trace"], model.get("flamegraph", "-"))
    write_results(output_dir / "flamegraph_summary.json",
                  {**result, "models": [{k: v for k, v in m.items() if k != "top_ops"} for m in result["models"]]},
                  fmt="json")
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
