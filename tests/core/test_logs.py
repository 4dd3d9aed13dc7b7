"""Where records go: the project's on the terminal, libraries' only in the log file (or with -v)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch  # noqa: F401  (torch attaches its own handler at import: the routing must take it over)

from modelops.logs import ProjectOnly, configure_logging, log_file_path, logging_to


def record(name: str, level: int) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "a message", None, None)


def test_the_terminal_shows_the_projects_records_and_anyones_errors() -> None:
    terminal = ProjectOnly()
    assert terminal.filter(record("PR3_model_optimization.quantization.run", logging.INFO))
    assert terminal.filter(record("__main__", logging.INFO)) and terminal.filter(record("modelops", logging.WARNING))
    assert not terminal.filter(record("torch.utils._pytree", logging.WARNING))
    assert not terminal.filter(record("py.warnings", logging.WARNING))
    assert terminal.filter(record("nncf", logging.ERROR))


def test_library_records_reach_the_log_file_then_it_closes(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO)  # the root's level, which pytest's handlers own here
    configure_logging()
    assert all(type(h) is not logging.StreamHandler for h in logging.getLogger("torch").handlers)
    with logging_to(tmp_path / "job.log") as path:
        assert log_file_path() == path
        logging.getLogger("torch.utils._pytree").warning("a torch deprecation note")
        logging.getLogger("PR3_model_optimization.quantization.run").info("trial 0")
    assert "a torch deprecation note" in path.read_text() and "trial 0" in path.read_text()
    assert log_file_path() is None
