"""A process that only runs inference, for py-spy to sample from outside (used by model_flamegraph.py).

    python -m PR4_model_benchmarking.inference_loop --model models/resnet18.pt --seconds 30

Loads the artifact, warms up, prints ``ready <pid>`` on stdout, then calls the model in a loop until
``--seconds`` have passed, so the flamegraph shows inference and not the loading.
"""

from __future__ import annotations

import argparse
import sys
import time


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Loop inference on one artifact (a py-spy target).",
                                     add_help=add_help)
    parser.add_argument("--model", required=True, help="model artifact")
    parser.add_argument("-b", "--batch-size", type=int, default=1, help="batch size (default: 1)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all usable cores)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--seconds", type=float, default=30.0, help="stop after this long (default: 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before 'ready' (default: 3)")
    parser.add_argument("--trust-pickle", action="store_true", help="allow pickled modules (default: off)")
    parser.add_argument("--arch", default=None, help="architecture of a bare state_dict (default: identified)")
    parser.set_defaults(arch_names_input=True)  # this --arch names the input file's (modelops.cli.load_options)
    parser.add_argument("--image-size", type=int, default=None,
                        help="input side tried first on a file that does not declare its input (default: none)")
    return parser


def inference_loop(predictor, batch, seconds: float) -> int:
    """Call ``predictor(batch)`` until ``seconds`` pass; the number of calls."""
    calls, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        predictor(batch)
        calls += 1
    return calls


def main(args: argparse.Namespace) -> dict:
    import torch

    from modelops.artifact import load_artifact
    from modelops.cli import load_options, usable_cores

    threads = args.threads or usable_cores()
    torch.set_num_threads(threads)
    predictor = load_artifact(args.model, load_options(args, threads=threads))
    batch = torch.randn(args.batch_size, *predictor.input_shape)
    for _ in range(args.warmup):
        predictor(batch)
    print(f"ready {__import__('os').getpid()}", flush=True)
    calls = inference_loop(predictor, batch, args.seconds)
    return {"calls": calls}


if __name__ == "__main__":
    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
