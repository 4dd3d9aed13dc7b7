"""Where log records and warnings go: the project's own on the terminal, everything in the log file.

The terminal shows the project's progress and results; libraries' messages (torch's deprecation notes, inductor's
and torchao's ``UserWarning``\\ s, NNCF's notes) are addressed to their own developers, so they go to the log file
when there is one (``--log-file``; the main job's ``<output-dir>/job.log``), and to the terminal only with ``-v``
or when they are errors. Python warnings are logged (``py.warnings``), and the libraries that print through their
own handlers (torch, NNCF) are made to log through the root logger like the rest.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The project's top-level packages; a script run as ``python script.py`` logs as ``__main__``, a spawned worker's
# entry module as ``__mp_main__``.
PROJECT_LOGGERS = ("modelops", "PR1_horizontal_pod_autoscaling", "PR2_async_inference", "PR3_model_optimization",
                   "PR4_model_benchmarking", "main_job", "__main__", "__mp_main__")
# Libraries that attach their own stream handlers (and stop propagation) when imported.
SELF_PRINTING = ("torch", "nncf")
# Chatty at INFO; their warnings still reach the log.
QUIET_AT_INFO = ("torch._dynamo", "torch._inductor", "torch.onnx", "onnxscript", "kafka", "onnxruntime", "nncf")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ProjectOnly(logging.Filter):
    """Passes the project's records, and anyone's errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or record.name.split(".")[0] in PROJECT_LOGGERS


class _Console(logging.StreamHandler):
    """The terminal handler this module adds (told apart from handlers others add, e.g. pytest's)."""


class _LogFile(logging.FileHandler):
    """The log file handler this module adds."""


def configure_logging(*, verbose: bool = False, log_file: str | Path | None = None,
                      console_level: int = logging.INFO) -> None:
    """Route records and warnings (idempotent: every script's set-up may call it again).

    Args:
        verbose: DEBUG level, and libraries' records on the terminal too.
        log_file: a file that receives every record, the libraries' included (appended to; default: none).
        console_level: the lowest level the terminal shows (default: INFO; a spawned worker shows WARNING).

    Where the root logger already has handlers that this module did not add (a test runner's), they are left to
    do the showing and no terminal handler is added, as :func:`logging.basicConfig` would do.
    """
    root = logging.getLogger()
    foreign = [h for h in root.handlers if not isinstance(h, (_Console, _LogFile))]
    if not foreign:
        root.setLevel(logging.DEBUG if verbose else logging.INFO)
        if not any(isinstance(h, _Console) for h in root.handlers):
            console = _Console(sys.stderr)
            console.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
            root.addHandler(console)
    for handler in root.handlers:
        if isinstance(handler, _Console):
            handler.setLevel(logging.DEBUG if verbose else console_level)
            handler.filters = [] if verbose else [ProjectOnly()]
    if log_file is not None and log_file_path() != Path(log_file).resolve():
        add_log_file(log_file)
    logging.captureWarnings(True)
    for name in SELF_PRINTING:
        adopt(name)
    for name in QUIET_AT_INFO:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


def add_log_file(path: str | Path) -> Path:
    """Send every record (libraries' too) to ``path`` as well, in place of an earlier log file."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _LogFile)]:
        root.removeHandler(handler)
        handler.close()
    handler = _LogFile(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    return path


@contextmanager
def logging_to(path: str | Path) -> Iterator[Path]:
    """Every record goes to ``path`` too while the block runs (an earlier log file comes back after it)."""
    previous = log_file_path()
    try:
        yield add_log_file(path)
    finally:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if isinstance(h, _LogFile)]:
            root.removeHandler(handler)
            handler.close()
        if previous is not None:
            add_log_file(previous)


def log_file_path() -> Path | None:
    """The log file :func:`configure_logging` set up in this process, or None (a spawned worker appends to it)."""
    return next((Path(h.baseFilename) for h in logging.getLogger().handlers if isinstance(h, _LogFile)), None)


def adopt(name: str) -> None:
    """Make the logger ``name`` and its children log through the root's handlers instead of their own."""
    for logger_name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and (logger_name == name or logger_name.startswith(name + ".")):
            for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
                logger.removeHandler(handler)
            logger.propagate = True
