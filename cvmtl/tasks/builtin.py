"""Registers the built-in tasks, one module each, in the order reports list them."""

# isort: off
import cvmtl.tasks.seg  # noqa: F401
import cvmtl.tasks.depth  # noqa: F401
import cvmtl.tasks.normal  # noqa: F401
import cvmtl.tasks.edge  # noqa: F401
import cvmtl.tasks.saliency  # noqa: F401
import cvmtl.tasks.parts  # noqa: F401
import cvmtl.tasks.disparity  # noqa: F401
# isort: on
