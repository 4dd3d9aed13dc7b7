"""Describe and evaluate any model artifact.

    python -m modelops.describe models/resnet18.pt --dataset digits --split test
"""

from __future__ import annotations

import argparse
import json
import sys

from modelops.artifact import load_artifact
from modelops.cli import common_parser, load_model_dataset, load_options, run_cli
from modelops.data import SPLITS, make_loader
from modelops.errors import UsageError
from modelops.evaluate import evaluate


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Print an artifact's manifest and its accuracy on a dataset split.",
                                     parents=[common_parser()], add_help=add_help)
    parser.add_argument("model", help="model artifact (.pt, .pth, .pt2, .onnx)")
    parser.add_argument("--split", default="test", choices=SPLITS, help="split to evaluate on (default: test)")
    parser.add_argument("--no-eval", action="store_true", help="only print the manifest (default: evaluate too)")
    return parser


def describe(args: argparse.Namespace) -> dict:
    predictor = load_artifact(args.model, load_options(args))
    manifest = predictor.manifest
    summary = {"model": args.model, "format": manifest.format, "backend": predictor.backend, "arch": manifest.arch,
               "input_shape": manifest.input_shape, "num_classes": manifest.num_classes, "size_mb": manifest.size_mb,
               "transform": manifest.transform, "lineage": manifest.lineage, "metrics": manifest.metrics}
    if not args.no_eval:
        data = load_model_dataset(args, manifest)  # fake data takes the model's classes and size
        if data.num_classes != manifest.num_classes:
            raise UsageError(f"{args.model} predicts {manifest.num_classes} classes but dataset {args.dataset!r} "
                             f"has {data.num_classes}")
        predictor.check_input(data.split(args.split)[0][0].unsqueeze(0))
        summary[f"{args.split}_accuracy"] = evaluate(predictor, make_loader(data.split(args.split), args.batch_size),
                                                     progress=True)["accuracy"]
    return summary


def main(args: argparse.Namespace) -> dict:
    summary = describe(args)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
