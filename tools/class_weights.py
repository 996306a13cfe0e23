"""Segmentation class weights from the training split.

The code is in cvmtl/commands/class_weights.py; this file runs it from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from cvmtl.commands.class_weights import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
