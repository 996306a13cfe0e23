"""Workflows built on the engine, one module (or sub-package) each: the demo, the single-task
baselines and the balancer comparison over seeds, evaluation reports, per-task fine-tuning, the
benchmark, task affinity. ``cvmtl.commands`` is the thin CLI layer above them; nothing in
``cvmtl.engine`` or below imports this package."""
