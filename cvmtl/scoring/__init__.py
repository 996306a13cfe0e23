"""The streaming metric classes, one per kind of map (leaves that know no task registry: the
task specs in :mod:`cvmtl.tasks` compose them; :mod:`cvmtl.metrics` builds one per task from the
specs and re-exports them). Each has ``update(pred, target)`` and ``compute() -> {name: value}``,
its sums reduced over DDP ranks (:mod:`cvmtl.scoring._common`)."""
