"""Typed run configuration: dataclass defaults <- YAML file <- ``a.b=value`` overrides.

Every key is declared here with its type; an unknown key, a value of the wrong type or a value
outside its allowed set raises :class:`ConfigError` naming the key and what was expected. The
checking and merging machinery lives in :mod:`cvmtl.config_parse`; its public names are
re-exported here, so ``from cvmtl.config import ConfigError, parse_override`` keeps working.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cvmtl import config_parse
from cvmtl.config_parse import ConfigError, _merge, bool_or_word, override_values, parse_override
from cvmtl.tasks import TASKS, import_task_modules
from cvmtl.tasks.registry import DEFAULT_TASKS

__all__ = [
    "CHOICES",
    "COMPILE_MODES",
    "CUDA_GRAPH_MODES",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "FinetuneConfig",
    "LossConfig",
    "ModelConfig",
    "TrainConfig",
    "from_dict",
    "load_config",
    "parse_override",
    "save_config",
    "to_dict",
    "validate",
]


@dataclass
class DataConfig:
    root: str = "data/synthetic"
    format: str = "cvmtl"
    num_classes: int = 13
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    val_fraction: float = 0.0
    split_seed: int = 0  # seed of the val_fraction carve (fixed across train.seed: same val ids)
    crop: list[int] = field(default_factory=lambda: [240, 320])
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    num_workers: int = 2
    skip_bad: bool = False
    # train augmentation: random scale in [lo, hi] then crop; flip; photometric jitter strength
    scale_range: list[float] = field(default_factory=lambda: [1.0, 1.5])
    hflip: bool = True
    color_jitter: float = 0.2
    # any albumentations pixel-level pipeline, one serialized transform per item (replaces the
    # color_jitter default), e.g. [{__class_fullname__: ColorJitter, brightness: 0.3, p: 0.8}]
    photometric: list[dict[str, Any]] | None = None
    eval_batch_size: int = 0  # 0 = train.batch_size
    # train data decoded once and augmented on whole batches (cvmtl/data/cached_loader.py):
    # none = the worker DataLoader; host = kept in host memory; device = on the training device
    cache: str = "none"


@dataclass
class ModelConfig:
    backbone: str = "resnet18"
    pretrained: bool = False
    pretrained_file: str | None = None
    init_from: str | None = None
    arch: str = "fpn"  # fpn | deeplab | mtan | cross_stitch | padnet | mtinet
    sharing: str = "hard"
    # fpn (README's options table): what the tasks share of the FPN (pyramid | all | none |
    # convs); MTAN's attention on each level before a task's merge (off: it lifts the
    # single-task models as much, docs/results.md); a learned mix of the other tasks' maps
    neck_sharing: str = "pyramid"
    level_attention: bool = False
    task_exchange: bool = False
    soft_weight: float = 1.0e-4
    neck_channels: int = 128
    head_channels: int = 64
    norm: str = "bn"
    max_depth: float = 10.0
    drop_path: float = 0.0


@dataclass
class LossConfig:
    balancer: str = "fixed"
    balancer_args: dict[str, Any] = field(default_factory=dict)
    grad_source: str = "features"
    depth: str = "l1"
    normal: str = "cosine"
    seg_label_smoothing: float = 0.0
    seg_class_weights: list[float] | None = None
    edge_pos_weight: float = 0.95  # weight of the (rare) edge pixels in the edge BCE
    aux_weight: float = 1.0  # deep supervision of padnet / mtinet initial predictions
    consistency: dict[str, float] = field(default_factory=dict)  # cross-task terms' weights


@dataclass
class TrainConfig:
    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 1.0e-3
    optimizer: str = "adamw"
    weight_decay: float = 1.0e-4
    momentum: float = 0.9
    backbone_lr_mult: float = 1.0
    scheduler: str = "cosine"
    step_at: list[float] = field(default_factory=lambda: [0.5, 0.75])  # scheduler=step
    step_gamma: float = 0.1  # lr factor at each of step_at (fractions of the steps after warmup)
    warmup_steps: int = 0
    # auto: resolved per device by cvmtl.precision (bf16 where the hardware has it, fp16 +
    # GradScaler on older CUDA GPUs, fp32 elsewhere; channels_last where it measured faster)
    amp: str = "auto"
    channels_last: bool | str = "auto"
    compile: bool | str = False  # false | true (= default) | a torch.compile mode, COMPILE_MODES
    grad_clip: float = 0.0
    accumulate: int = 1
    ema: float = 0.0
    seed: int = 0
    device: str = "auto"
    eval_every: int = 1
    save_every: int = 0
    best_metric: str = "delta_m"
    log_every: int = 10
    max_bad_steps: int = 10
    num_vis: int = 4


@dataclass
class EvalConfig:
    min_depth: float = 0.001
    max_depth: float = 10.0
    tta: bool = False
    scales: list[float] = field(default_factory=lambda: [1.0])
    edge_max_dist: float = 0.0075  # edge matching tolerance, a fraction of the image diagonal
    # true: tests and tools/eval.py match edges one-to-one (BSDS; ~15x the approximate matcher's
    # time); validation always uses the fast approximate one (results say which: edge/exact)
    edge_exact: bool = False
    edge_thresholds: int = 99  # probability thresholds of the edge metric (SEISM's 99)
    max_disparity: float = 1.0e4  # disparity metric range (0, max_disparity]


@dataclass
class FinetuneConfig:
    epochs: int = 0
    tasks: list[str] = field(default_factory=list)
    freeze: str = "backbone"
    lr: float | None = None


@dataclass
class Config:
    name: str = "synthetic_demo"
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    task_modules: list[str] = field(default_factory=list)  # user modules that register tasks
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


# torch.compile modes for train.compile; reduce-overhead and max-autotune add CUDA graphs on GPUs
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")

CHOICES: dict[str, tuple[str, ...]] = {  # keys whose value must be one of a fixed set
    "data.format": ("cvmtl", "nyuv2_npy", "nyud_mt", "pascal_mt", "cityscapes_npy", "cityscapes"),
    "data.cache": ("none", "host", "device"),
    "model.arch": ("fpn", "deeplab", "mtan", "cross_stitch", "padnet", "mtinet"),
    "model.sharing": ("hard", "soft"),
    "model.neck_sharing": ("pyramid", "all", "none", "convs"),
    "model.norm": ("bn", "gn", "syncbn"),
    "loss.grad_source": ("features", "params"),
    "loss.depth": ("l1", "silog", "berhu", "log_l1"),
    "loss.normal": ("cosine", "l1"),
    "train.optimizer": ("adamw", "adam", "sgd"),
    "train.scheduler": ("cosine", "poly", "step", "none"),
    "train.amp": ("auto", "none", "bf16", "fp16"),
    "train.device": ("auto", "cpu", "cuda"),
    "finetune.freeze": ("backbone", "neck", "none"),
}


def validate(cfg: Config) -> Config:
    """Check values beyond their types (choices, ranges, task names)."""
    bool_or_word(cfg.train, "train.channels_last", ("auto",))
    bool_or_word(cfg.train, "train.compile", COMPILE_MODES)
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ConfigError(f"{key}: expected one of {'|'.join(allowed)}, got {value!r}")
    if not cfg.tasks:
        raise ConfigError("tasks: expected at least one task")
    try:
        import_task_modules(cfg.task_modules)  # before the task names are checked
    except ValueError as err:
        raise ConfigError(str(err)) from None
    for task in list(cfg.tasks) + list(cfg.finetune.tasks):
        if task not in TASKS:
            raise ConfigError(f"tasks: unknown task {task!r} (available: {', '.join(TASKS)})")
    if len(set(cfg.tasks)) != len(cfg.tasks):
        raise ConfigError(f"tasks: duplicate task in {cfg.tasks}")
    config_parse.check_consistency(cfg.loss.consistency, cfg.loss.depth, TASKS)
    config_parse.check_class_weights(cfg.loss.seg_class_weights, cfg.data.num_classes)
    checks = [
        ("data.crop", len(cfg.data.crop) == 2 and min(cfg.data.crop) > 0, "[height, width] > 0"),
        ("data.mean", len(cfg.data.mean) == 3, "3 values"),
        ("data.std", len(cfg.data.std) == 3 and min(cfg.data.std) > 0, "3 positive values"),
        ("data.val_fraction", 0.0 <= cfg.data.val_fraction < 1.0, "a fraction in [0, 1)"),
        ("data.num_classes", cfg.data.num_classes > 0, "a positive integer"),
        ("data.num_workers", cfg.data.num_workers >= 0, "an integer >= 0"),
        (
            "data.scale_range",
            len(cfg.data.scale_range) == 2
            and 0 < cfg.data.scale_range[0] <= cfg.data.scale_range[1],
            "[lo, hi] with 0 < lo <= hi",
        ),
        ("model.max_depth", cfg.model.max_depth > 0, "a positive number of metres"),
        ("model.neck_channels", cfg.model.neck_channels > 0, "a positive integer"),
        ("train.batch_size", cfg.train.batch_size > 0, "a positive integer"),
        ("train.epochs", cfg.train.epochs >= 0, "an integer >= 0"),
        ("train.max_steps", cfg.train.max_steps is None or cfg.train.max_steps > 0, "null or > 0"),
        ("train.lr", cfg.train.lr > 0, "a positive number"),
        ("train.accumulate", cfg.train.accumulate >= 1, "an integer >= 1"),
        ("train.ema", 0.0 <= cfg.train.ema < 1.0, "a decay in [0, 1)"),
        ("train.eval_every", cfg.train.eval_every >= 0, "an integer >= 0 (0 = never)"),
        ("train.grad_clip", cfg.train.grad_clip >= 0, "a number >= 0 (0 = off)"),
        ("train.max_bad_steps", cfg.train.max_bad_steps >= 1, "an integer >= 1"),
        ("eval.min_depth", 0 <= cfg.eval.min_depth < cfg.eval.max_depth, "0 <= min < max_depth"),
        ("eval.scales", len(cfg.eval.scales) > 0 and min(cfg.eval.scales) > 0, "positive scales"),
    ]
    for key, ok, expected in checks:
        if not ok:
            section, name = key.split(".")
            value = getattr(getattr(cfg, section), name)
            raise ConfigError(f"{key}: expected {expected}, got {value!r}")
    best = cfg.train.best_metric
    if best != "delta_m" and "/" not in best:
        raise ConfigError(f"train.best_metric: expected 'delta_m' or 'task/metric', got {best!r}")
    return cfg


def from_dict(values: dict[str, Any]) -> Config:
    cfg = Config()
    _merge(cfg, values)
    return validate(cfg)


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Dataclass defaults <- YAML at ``path`` <- ``key=value`` overrides; validated.

    ``path`` is a file, or the name of a shipped config (``synthetic_demo``; see
    :mod:`cvmtl.configs`)."""
    from cvmtl.configs import find_config, shipped

    cfg = Config()
    if path is not None:
        found = find_config(path)
        if found is None:
            names = ", ".join(shipped())
            raise ConfigError(f"config file not found: {path} (shipped configs: {names})")
        path = found
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})".replace("\n", " ")) from None
        _merge(cfg, values)
    for text in overrides:
        _merge(cfg, override_values(cfg, *parse_override(text)))
    return validate(cfg)


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (loadable again with :func:`load_config`)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
