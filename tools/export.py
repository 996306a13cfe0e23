"""Export a checkpoint to ONNX, torch.export (.pt2) or TorchScript and verify it against PyTorch.

The code is in cvmtl/commands/export.py; this file runs it from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from cvmtl.commands.export import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
