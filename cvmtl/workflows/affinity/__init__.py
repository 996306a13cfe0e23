"""Task relatedness (issue 12): per-stage gradient cosines and the lookahead inter-task affinity
of Fifty et al. (2021), a recommendation (task groups, branch points) and reports.

``compute`` holds the measures, ``report`` reads them (recommendation, JSON, markdown, heatmap),
``run`` loads a model and batches from a checkpoint or a config (what ``tools/affinity.py`` calls).
"""

from cvmtl.workflows.affinity.compute import (
    AffinityResult,
    compute_affinity,
    stage_names,
    stage_parameter_groups,
    staged_forward,
)
from cvmtl.workflows.affinity.report import (
    grouping_score,
    partitions,
    plot_heatmaps,
    recommend,
    to_markdown,
    write_outputs,
)
from cvmtl.workflows.affinity.run import load_for_affinity, run_affinity

__all__ = [
    "AffinityResult",
    "compute_affinity",
    "grouping_score",
    "load_for_affinity",
    "partitions",
    "plot_heatmaps",
    "recommend",
    "run_affinity",
    "stage_names",
    "stage_parameter_groups",
    "staged_forward",
    "to_markdown",
    "write_outputs",
]
