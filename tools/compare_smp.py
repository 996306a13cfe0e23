"""smp's FPN trained as the single-task seg model would be (a test-only extra).

The code is in cvmtl/commands/compare_smp.py; this file runs it from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from cvmtl.commands.compare_smp import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
