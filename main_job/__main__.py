"""``python -m main_job``: run the main job (see :mod:`main_job`)."""

import sys

from main_job.cli import get_args_parser, main
from modelops.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
