"""Task affinity: per-stage gradient cosine and lookahead affinity between tasks.

The code is in cvmtl/commands/affinity.py; this file runs it from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from cvmtl.commands.affinity import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
