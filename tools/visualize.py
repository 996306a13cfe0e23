"""Prediction panels and a contact sheet for samples of a split, or a run's training curves.

The code is in cvmtl/commands/visualize.py; this file runs it from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from cvmtl.commands.visualize import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
