"""Predict segmentation, depth and normals for images, a folder or a glob.

The code is in cvmtl/commands/infer.py; this file runs it from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from cvmtl.commands.infer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
