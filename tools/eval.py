"""Evaluate a checkpoint: metrics.json (delta_m when baselines are known), report.md, report.html.

The code is in cvmtl/commands/eval.py; this file runs it from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from cvmtl.commands.eval import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
