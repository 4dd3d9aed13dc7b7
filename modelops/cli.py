"""What every command-line script shares: common flags, logging, threads, exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

import numpy as np
import torch

from modelops.data import DATASET_CHOICES, DatasetSplits, load_dataset
from modelops.errors import UsageError
from modelops.load_options import LoadOptions
from modelops.logs import configure_logging
from modelops.preprocessing import PRESETS
from modelops.training import TrainingConfig

logger = logging.getLogger(__name__)


def common_parser(loads_model: bool = True) -> argparse.ArgumentParser:
    """Flags spelled the same in every script; use as ``parents=[common_parser()]``.

    Args:
        loads_model: include ``--arch`` (the architecture of a bare state_dict input); a script that builds
            a new model instead defines its own ``--arch``.
    """
    parser = argparse.ArgumentParser(add_help=False)
    if loads_model:
        parser.set_defaults(arch_names_input=True)
        model = parser.add_argument_group("model input")
        model.add_argument("--arch", default=None,
                           help="torchvision architecture of a bare state_dict model file, e.g. resnet50 "
                                "(default: identified from its parameter names and shapes)")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="digits",
                      help=f"{' | '.join(DATASET_CHOICES)} (default: digits, bundled with scikit-learn, offline)")
    data.add_argument("--preprocessing", default=None, choices=PRESETS,
                      help="image preprocessing for --dataset imagefolder:PATH; imagenet = resize 256, centre "
                           "crop 224, ImageNet mean/std (default: resize to --image-size, ImageNet mean/std)")
    data.add_argument("--labels", default=None, metavar="FILE",
                      help="class names, one a line in class-index order (default: the dataset's own, e.g. "
                           "the folder names of imagefolder:PATH)")
    data.add_argument("--image-size", type=int, default=None,
                      help="model input side in pixels (default: the model's manifest, else the dataset's own)")
    data.add_argument("--data-dir", default="data", help="cache for downloadable datasets (default: data)")
    data.add_argument("--split-seed", type=int, default=None,
                      help="seed of the train/val/test split (default: the one the model was trained on, from "
                           "its manifest; 0 for new models)")
    data.add_argument("-b", "--batch-size", type=int, default=64, help="batch size (default: 64)")
    data.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default: 0)")
    run = parser.add_argument_group("runtime")
    run.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    run.add_argument("--threads", type=int, default=None,
                     help="intra-op threads (default: all usable cores)")
    run.add_argument("--seed", type=int, default=0,
                     help="random seed for weight init, shuffling and augmentation (default: 0)")
    run.add_argument("--trust-pickle", action="store_true",
                     help="allow loading whole pickled nn.Modules (runs arbitrary code; default: off)")
    run.add_argument("-v", "--verbose", action="store_true",
                     help="debug logging, libraries' messages on the terminal too, and tracebacks on errors")
    run.add_argument("--log-file", default=None, metavar="FILE",
                     help="also write every log record to FILE, libraries' warnings included, which the terminal "
                          "shows only with -v (default: none)")
    return parser


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def setup(args: argparse.Namespace) -> None:
    """Logging, threads, seeds and the device check, once at the entry point."""
    configure_logging(verbose=getattr(args, "verbose", False), log_file=getattr(args, "log_file", None))
    if getattr(args, "trust_pickle", False):  # said once, where the choice was made, not at every file loaded
        logger.warning("--trust-pickle: whole pickled modules will be loaded, which runs the code they hold; "
                       "pass it only for files you made or trust")
    threads = getattr(args, "threads", None) or usable_cores()
    if threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    seed = getattr(args, "seed", 0)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    device = getattr(args, "device", "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UsageError(f"Unknown device {device!r}. Choose one of: cpu, cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA device is available; use --device cpu")


def load_options(args: argparse.Namespace, **changes: Any) -> LoadOptions:
    """The :class:`LoadOptions` a script's common flags ask for, built once in its ``main``; ``changes`` set
    fields that script's own flags decide (``compile=...``, ``threads=...``).

    ``arch`` is taken only from the input-model ``--arch`` of :func:`common_parser` (``loads_model=True``); a script
    that builds a new model defines its own ``--arch``, which names no file to load.
    """
    options = LoadOptions(
        device=getattr(args, "device", "cpu"), threads=getattr(args, "threads", None),
        trust_pickle=getattr(args, "trust_pickle", False),
        arch=getattr(args, "arch", None) if getattr(args, "arch_names_input", False) else None,
        image_size=getattr(args, "image_size", None),
    )
    return replace(options, **changes)


def training_config(args: argparse.Namespace, **changes: Any) -> TrainingConfig:
    """The :class:`TrainingConfig` a script's training flags ask for (:func:`modelops.training.add_training_args`),
    built once in its ``main``; ``changes`` set fields the script decides (``resume=...``).

    The parsed flags travel along, ``changes`` applied, as the record each checkpoint saves.
    """
    settings = {f.name: getattr(args, f.name) for f in fields(TrainingConfig)
                if f.name != "flags" and hasattr(args, f.name)}
    return TrainingConfig(**{**settings, **changes}, flags={**vars(args), **changes})


def split_seed(args: argparse.Namespace, manifest: Any = None) -> int:
    """The split to load: ``--split-seed`` if given, else the model's own, so its test set stays unseen."""
    if getattr(args, "split_seed", None) is not None:
        return args.split_seed
    recorded = getattr(manifest, "split_seed", None)
    return recorded if recorded is not None else 0


def load_model_dataset(args: argparse.Namespace, manifest: Any, *, dataset: str | None = None) -> DatasetSplits:
    """The dataset a script's flags name, shaped for the model of ``manifest``.

    ``fake`` takes the model's class count and input size; the split is the model's own (:func:`split_seed`);
    ``--preprocessing`` and ``--labels`` apply.

    Args:
        args: the parsed common flags.
        manifest: the model's manifest (its ``input_shape``, ``num_classes``, ``dataset``).
        dataset: overrides ``args.dataset`` (default: ``args.dataset``, else the manifest's, else digits).
    """
    name = dataset or getattr(args, "dataset", None) or manifest.dataset or "digits"
    image_size = getattr(args, "image_size", None) or manifest.input_shape[-1]
    return load_dataset(
        name, image_size=image_size, seed=split_seed(args, manifest), data_dir=getattr(args, "data_dir", "data"),
        num_classes=manifest.num_classes if name == "fake" else None,
        preprocessing=getattr(args, "preprocessing", None), labels_file=getattr(args, "labels", None),
    )


def set_help(parser: argparse.ArgumentParser, dest: str, text: str) -> None:
    """Re-word the help of an inherited common flag whose meaning or default differs in one script."""
    for action in parser._actions:
        if action.dest == dest:
            action.help = text


def check_positive(name: str, value: float | int | None, *, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise UsageError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def run_cli(main: Callable[[argparse.Namespace], Any], parser: argparse.ArgumentParser,
            argv: list[str] | None = None) -> int:
    """Parse, set up and run ``main``; map failures to one readable line and an exit code.

    Exit codes: 0 success, 2 bad usage or input (argparse does the same), 1 failure, 130 interrupted.
    """
    args = parser.parse_args(argv)
    try:
        setup(args)
        main(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: partial results, if any, were kept", file=sys.stderr)
        return 130
    except Exception as exc:
        if getattr(args, "verbose", False):
            logger.exception("failed")
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        print(f"error: {type(exc).__name__}: {first_line} (run with -v for the traceback)", file=sys.stderr)
        return 1
    return 0
