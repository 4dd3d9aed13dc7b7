"""Make the starting model every other script works on: a torchvision classifier as an artifact.

Train it on ``--dataset`` (default: the bundled ``digits``), start from ``--pretrained`` torchvision
weights (needs network), or keep ``--random-weights`` for speed-only work.

    python PR3_model_optimization/prepare_model.py --arch resnet18 --epochs 15 --save-path models/resnet18.pt
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from modelops.artifact import FORMATS, Manifest, save_artifact
from modelops.cli import common_parser, run_cli, split_seed, training_config
from modelops.data import AugmentedDataset, load_dataset, make_loader, train_augmentation
from modelops.evaluate import evaluate
from modelops.models import check_arch, count_macs, count_parameters, create_model
from modelops.training import add_training_args, check_training_config, fit

logger = logging.getLogger(__name__)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train (or load) a torchvision classifier and save it as a model artifact.",
        parents=[common_parser(loads_model=False)], add_help=add_help,
    )
    model = parser.add_argument_group("model")
    model.add_argument("--arch", default="resnet18", help="torchvision classification model (default: resnet18)")
    source = model.add_mutually_exclusive_group()
    source.add_argument("--pretrained", action="store_true",
                        help="start from torchvision's ImageNet weights (downloads; default: off)")
    source.add_argument("--random-weights", action="store_true",
                        help="skip training: random weights, for speed-only benchmarks (default: off)")
    model.add_argument("--format", default="state_dict", choices=FORMATS[:-1],
                       help="artifact format (default: state_dict, the only one later steps can train)")
    model.add_argument("--save-path", default=None, help="where to write the model (default: models/<arch>.pt)")
    model.add_argument("--output-dir", default=None,
                       help="checkpoints and per-epoch metrics (default: runs/prepare_<arch>)")
    add_training_args(parser, epochs=15, lr=0.05)
    return parser


def artifact_summary(path: str | Path, manifest: Manifest) -> dict:
    """The figures this script prints for a baseline artifact, read from its manifest."""
    return {"model": str(path), "manifest": f"{path}.json", "arch": manifest.arch,
            "test_accuracy": manifest.metrics.get("accuracy"), "size_mb": manifest.size_mb,
            "params_m": round(manifest.metrics.get("params", 0) / 1e6, 3),
            "macs_m": round(manifest.metrics.get("macs", 0) / 1e6, 2), "train_s": manifest.metrics.get("train_s")}


def main(args: argparse.Namespace) -> dict:
    check_arch(args.arch)
    training = training_config(args)
    check_training_config(training)
    save_path = Path(args.save_path or f"models/{args.arch}.pt")
    output_dir = Path(args.output_dir or f"runs/prepare_{args.arch}")
    data = load_dataset(args.dataset, image_size=args.image_size, seed=split_seed(args), data_dir=args.data_dir)
    model = create_model(args.arch, data.num_classes, pretrained=args.pretrained)

    started = time.perf_counter()
    history: dict = {}
    if not args.random_weights:
        train_set = data.train if args.no_augment else AugmentedDataset(data.train, train_augmentation(data.image_size))
        train_loader = make_loader(train_set, args.batch_size, shuffle=True, seed=args.seed, workers=args.workers)
        val_loader = make_loader(data.val, 256)
        result = fit(model, train_loader, val_loader, training, output_dir=output_dir, desc=args.arch)
        history = {"best_val_top1_pct": result.best_accuracy, "best_epoch": result.best_epoch,
                   "epochs_run": len(result.history)}
    train_s = time.perf_counter() - started

    model.eval()
    test = evaluate(model, make_loader(data.test, 256), progress=True)
    manifest = Manifest(
        arch=args.arch, num_classes=data.num_classes, input_shape=data.input_shape,
        preprocessing=data.preprocessing, labels=data.labels, dataset=data.name, split_seed=data.split_seed,
        transform={"kind": "baseline", "source": "pretrained" if args.pretrained
                   else "random" if args.random_weights else "trained", "epochs": args.epochs},
        metrics={"accuracy": test["accuracy"], "params": count_parameters(model),
                 "macs": count_macs(model, data.input_shape), "train_s": round(train_s, 1), **history},
    )
    manifest = save_artifact(model, save_path, manifest, fmt=args.format)
    summary = artifact_summary(save_path, manifest)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
