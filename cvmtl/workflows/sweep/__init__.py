"""Hyper-parameter sweeps on Optuna (``cvmtl sweep``): the search space (``space``), where the
study lives and how workers share it (``storage``), one trial (``trial``), a worker's loop
(``runner``), what a study leaves behind (``results``, ``report``)."""

from cvmtl.workflows.sweep.runner import run_sweep

__all__ = ["run_sweep"]
