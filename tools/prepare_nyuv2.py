"""Convert the official NYUv2 ``nyu_depth_v2_labeled.mat`` into the cvmtl format.

The code is in cvmtl/commands/prepare_nyuv2.py; this file runs it from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from cvmtl.commands.prepare_nyuv2 import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
