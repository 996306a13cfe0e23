"""Re-export of :mod:`cvmtl.distributed` (its home below every package), for old imports."""

from cvmtl.distributed import *  # noqa: F403
from cvmtl.distributed import __all__  # noqa: F401
