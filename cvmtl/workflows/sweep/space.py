"""A sweep's search space: a YAML file of config keys and their ranges.

    metric: delta_m              # or task/metric (seg/miou); optional, default delta_m
    direction: maximize          # optional; default: the metric's own direction
    params:
      loss.balancer: {choices: [fixed, uw, dwa]}                  # categorical
      loss.balancer_args.weights.normal: {low: 1.0, high: 6.0, when: {loss.balancer: fixed}}
      train.lr: {low: 5.0e-4, high: 5.0e-3, log: true}            # float, log scale
      model.head_channels: {type: int, low: 16, high: 64, step: 16}

Any config key can be searched; keys under a free-form mapping (``loss.balancer_args``) are
passed on as they are (the balancer checks its hyper-parameters when a trial builds it).
``when`` samples a parameter only where the named keys (earlier parameters or the base config)
hold one of the given values. A trial whose balancer differs from the base config's starts
from empty ``balancer_args`` (the base's belong to its own balancer).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cvmtl.config import Config, ConfigError, from_dict, to_dict
from cvmtl.tasks import TASKS, higher_is_better

KINDS = ("categorical", "int", "float")


@dataclass
class Param:
    """One searched config key."""

    key: str
    kind: str
    choices: list[Any] = field(default_factory=list)
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    when: dict[str, list[Any]] = field(default_factory=dict)

    def probes(self) -> list[Any]:
        """Values that must all make a valid config (the choices, or both ends)."""
        if self.kind == "categorical":
            return list(self.choices)
        return [int(self.low), int(self.high)] if self.kind == "int" else [self.low, self.high]


@dataclass
class SearchSpace:
    params: list[Param]
    metric: str = "delta_m"
    direction: str = "maximize"

    def describe(self) -> dict[str, Any]:
        """A plain-data view (stored in the study, compared when another worker joins)."""
        return {
            "metric": self.metric,
            "direction": self.direction,
            "params": [dataclasses.asdict(p) for p in self.params],
        }


def check_key(key: str) -> None:
    """ConfigError unless ``key`` names a config value (or a key under a free-form mapping)."""
    node: Any = Config()
    parts = key.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, dict):
            return  # a free-form mapping (loss.balancer_args): checked when the run is built
        where = ".".join(parts[:i]) or "the config"
        if not dataclasses.is_dataclass(node):
            raise ConfigError(f"{key!r} is not a config key ({where} is a value, not a section)")
        names = [f.name for f in dataclasses.fields(node)]
        if part not in names:
            raise ConfigError(
                f"{key!r} is not a config key (no {part!r} in {where}; known: {', '.join(names)})"
            )
        node = getattr(node, part)
    if dataclasses.is_dataclass(node):
        raise ConfigError(f"{key!r} is a config section, not a key")


def _number(key: str, spec: dict, name: str) -> float:
    value = spec.get(name)
    try:
        return float(value)  # YAML 1.1 reads 5e-4 (no dot) as a string
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: {name}: expected a number, got {value!r}") from None


def parse_param(key: str, spec: Any) -> Param:
    """One ``key: {...}`` entry of ``params`` -> :class:`Param` (ranges checked)."""
    check_key(key)
    if not isinstance(spec, dict):
        raise ConfigError(f"{key}: expected a mapping such as {{low: 1, high: 2}}, got {spec!r}")
    unknown = set(spec) - {"type", "choices", "low", "high", "log", "step", "when"}
    if unknown:
        raise ConfigError(f"{key}: unknown field(s) {sorted(unknown)}")
    kind = spec.get("type") or ("categorical" if "choices" in spec else None)
    when = {k: v if isinstance(v, list) else [v] for k, v in (spec.get("when") or {}).items()}
    for other in when:
        check_key(other)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{key}: choices: expected a non-empty list, got {choices!r}")
        if not all(c is None or isinstance(c, bool | int | float | str) for c in choices):
            raise ConfigError(f"{key}: choices: numbers, strings, booleans or null, got {choices}")
        return Param(key, kind, choices=choices, when=when)
    low, high = _number(key, spec, "low"), _number(key, spec, "high")
    if kind is None:
        kind = "int" if all(isinstance(spec[k], int) for k in ("low", "high")) else "float"
    if kind not in KINDS:
        raise ConfigError(f"{key}: type: expected one of {'|'.join(KINDS)}, got {kind!r}")
    if low >= high:
        raise ConfigError(f"{key}: empty range: low={spec['low']} >= high={spec['high']}")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise ConfigError(f"{key}: log scale needs low > 0, got {spec['low']}")
    step = _number(key, spec, "step") if spec.get("step") is not None else None
    if step is not None and (step <= 0 or log):
        raise ConfigError(f"{key}: step: expected a positive step on a linear scale")
    return Param(key, kind, low=low, high=high, log=log, step=step, when=when)


def default_direction(metric: str, tasks: list[str]) -> str:
    """maximize for delta_m, else the metric's own direction (``task/metric``)."""
    if metric == "delta_m":
        return "maximize"
    task, _, name = metric.partition("/")
    if task not in tasks or task not in TASKS or name not in TASKS[task].metrics:
        raise ConfigError(f"metric: expected delta_m or task/metric of {tasks}, got {metric!r}")
    return "maximize" if higher_is_better(task, name) else "minimize"


def load_space(path: str | Path, base: Config, metric: str | None = None) -> SearchSpace:
    """Read and check the space at ``path`` against ``base`` (every probe value must give a
    valid config). Errors are one-line ConfigErrors naming the file and the key. A name or
    ``configs/sweeps/NAME.yaml`` path that is not a file finds a shipped space."""
    path = find_space(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise ConfigError(f"search space: cannot read {path} ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})".replace("\n", " ")) from None
    try:
        space = _parse(data, base, metric)
        for param in space.params:
            for value in param.probes():
                sample = {k: v[0] for k, v in param.when.items()} | {param.key: value}
                apply_params(base, sample)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return space


def find_space(name_or_path: str | Path) -> Path:
    """An existing file, else the shipped ``cvmtl/configs/sweeps/<name>.yaml`` (so a pip install
    has the examples), else the path as given (reading it then fails naming it)."""
    from cvmtl.configs import HERE

    path = Path(name_or_path)
    shipped = HERE / "sweeps" / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if not path.is_file() and shipped.is_file() and path.parent.name in ("", "sweeps"):
        return shipped
    return path


def _parse(data: Any, base: Config, metric: str | None) -> SearchSpace:
    if not isinstance(data, dict) or set(data) - {"metric", "direction", "params"}:
        raise ConfigError("expected a mapping with params (and optionally metric, direction)")
    params = data.get("params")
    if not isinstance(params, dict) or not params:
        raise ConfigError("params: expected a mapping of config keys to ranges")
    metric = metric or data.get("metric") or "delta_m"
    direction = data.get("direction") or default_direction(metric, base.tasks)
    if metric != "delta_m":
        default_direction(metric, base.tasks)  # the name must exist either way
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"direction: expected maximize or minimize, got {direction!r}")
    parsed = [parse_param(str(k), v) for k, v in params.items()]
    return SearchSpace(parsed, metric, direction)


def apply_params(base: Config, params: dict[str, Any]) -> Config:
    """``base`` with the sampled ``params`` (``{"a.b.c": value}``) written in; validated."""
    values = copy.deepcopy(to_dict(base))
    balancer = params.get("loss.balancer", base.loss.balancer)
    if balancer != base.loss.balancer:
        values["loss"]["balancer_args"] = {}  # the base's hparams belong to its own balancer
    for key, value in params.items():
        *parents, last = key.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    try:
        return from_dict(values)
    except ConfigError as err:
        raise ConfigError(f"{err} (with {params})") from None


def current_value(key: str, sampled: dict[str, Any], base: Config) -> Any:
    """``key``'s value in a trial so far: sampled, else the base config's (None if absent)."""
    if key in sampled:
        return sampled[key]
    node: Any = to_dict(base)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def suggest(trial: Any, space: SearchSpace, base: Config) -> dict[str, Any]:
    """Sample the space in an Optuna ``trial`` (define-by-run: ``when`` skips a parameter);
    ``{key: value}``."""
    sampled: dict[str, Any] = {}
    for p in space.params:
        if any(current_value(k, sampled, base) not in ok for k, ok in p.when.items()):
            continue
        if p.kind == "categorical":
            sampled[p.key] = trial.suggest_categorical(p.key, p.choices)
        elif p.kind == "int":
            step = int(p.step or 1)
            sampled[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high), step=step, log=p.log)
        else:
            sampled[p.key] = trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.log)
    return sampled
