"""`python -m vitdino_core.data where|download NAME`: see command.py."""

import sys

from ..cli import run_cli
from .command import main

sys.exit(run_cli(main))
