"""load_config: defaults <- YAML <- overrides; every bad key or value is a one-line ConfigError."""

import pytest

from cvmtl.config import Config, ConfigError, load_config, save_config


def test_defaults_yaml_and_overrides_merge(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ndata: {num_classes: 40, crop: [64, 80]}\ntrain: {lr: 1e-3}\n")
    overrides = ["data.crop=[96,128]", "train.lr=2e-4", "model.pretrained=true"]
    overrides += ["loss.balancer_args={weights: {seg: 2}}", "train.max_steps=null"]
    cfg = load_config(path, overrides)
    assert isinstance(cfg, Config) and cfg.name == "x"
    assert cfg.data.num_classes == 40  # from YAML
    assert cfg.data.crop == [96, 128]  # override parsed as a YAML list, wins over the file
    assert cfg.train.lr == pytest.approx(2e-4) and isinstance(cfg.train.lr, float)
    assert cfg.model.pretrained is True and cfg.train.max_steps is None
    assert cfg.loss.balancer_args == {"weights": {"seg": 2}}
    assert cfg.data.format == "cvmtl" and cfg.train.batch_size == 8  # untouched defaults
    save_config(cfg, tmp_path / "again.yaml")
    assert load_config(tmp_path / "again.yaml") == cfg


def test_dotted_override_into_a_mapping_keeps_its_other_entries(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss: {balancer: fixed, balancer_args: {weights: {normal: 3.0}}}\n")
    cfg = load_config(path, ["loss.balancer_args.weights.depth=0.5"])
    assert cfg.loss.balancer_args == {"weights": {"normal": 3.0, "depth": 0.5}}
    cfg = load_config(path, ["loss.balancer_args.weights.normal=2", "loss.balancer_args.x.y=1"])
    assert cfg.loss.balancer_args == {"weights": {"normal": 2}, "x": {"y": 1}}
    assert load_config(path, ["loss.balancer_args={}"]).loss.balancer_args == {}  # whole field
    assert load_config(path).loss.balancer_args == {"weights": {"normal": 3.0}}  # file untouched


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.cropp=[1,2]", "data.cropp"),  # unknown key
        ("nope=1", "nope"),
        ("train.batch_size=abc", "train.batch_size"),  # wrong type
        ("data.crop=[1,x]", "data.crop[1]"),
        ("model.pretrained=3", "model.pretrained"),
        ("train.amp=fp8", "train.amp"),  # bad choice
        ("data.format=coco", "data.format"),
        ("data.val_fraction=1.5", "data.val_fraction"),  # out of range
        ("tasks=[seg,edges]", "tasks"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert key in message and "\n" not in message


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("data: {crop: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_config(tmp_path / "bad.yaml")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["train.lr"])


def test_every_shipped_config_loads():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 4
    for path in configs:
        assert load_config(path).tasks  # loads and validates


def test_shipped_config_by_name_path_wins_and_unknown_lists_them(tmp_path, monkeypatch):
    from cvmtl.configs import shipped

    monkeypatch.chdir(tmp_path)  # no checkout here: the names come from the package
    assert load_config("synthetic_demo").name == "synthetic_demo"
    assert load_config("nyuv2_13_npy.yaml").data.format == "nyuv2_npy"
    own = tmp_path / "synthetic_demo"
    own.write_text("name: mine\n")  # an existing file of that name wins
    assert load_config("synthetic_demo").name == "mine"
    with pytest.raises(ConfigError, match="config file not found: nope.yaml") as err:
        load_config("nope.yaml")
    assert all(name in str(err.value) for name in shipped())
    assert {"synthetic_demo", "nyuv2_13_npy", "nyud_mt_40"} <= set(shipped())


@pytest.mark.parametrize(
    ("value", "want"),
    [("false", False), ("true", True), ("reduce-overhead", "reduce-overhead"),
     ("Max-Autotune", "max-autotune"), ("default", "default")],
)  # fmt: skip
def test_train_compile_is_a_bool_or_a_torch_compile_mode(value, want):
    assert load_config(None, [f"train.compile={value}"]).train.compile == want


def test_train_compile_rejects_an_unknown_mode_naming_key_and_modes():
    with pytest.raises(ConfigError, match="train.compile: expected default\\|reduce-overhead"):
        load_config(None, ["train.compile=fast"])
    with pytest.raises(ConfigError, match="train.channels_last: expected auto\\|true\\|false"):
        load_config(None, ["train.channels_last=maybe"])


def test_class_weights_are_checked_against_the_classes_at_load_time():
    """One weight per class, >= 0: a config moved to other data fails on loading, saying how to
    compute weights for it, instead of at the first training step."""
    with pytest.raises(ConfigError, match="3 weights for data.num_classes 4 .*class-weights"):
        load_config(None, ["data.num_classes=4", "loss.seg_class_weights=[1,2,3]"])
    with pytest.raises(ConfigError, match="loss.seg_class_weights: expected weights >= 0"):
        load_config(None, ["data.num_classes=2", "loss.seg_class_weights=[1,-1]"])
    with pytest.raises(ConfigError, match="loss.seg_class_weights: expected weights >= 0"):
        load_config(None, ["data.num_classes=2", "loss.seg_class_weights=[0,0]"])
    cfg = load_config(None, ["data.num_classes=2", "loss.seg_class_weights=[0.5,2]"])
    assert cfg.loss.seg_class_weights == [0.5, 2.0]
