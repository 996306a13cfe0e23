"""Benchmark a config's model: training step (and its phases), evaluation, MFU, memory.

The code is in cvmtl/commands/benchmark.py; this file runs it from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from cvmtl.commands.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
