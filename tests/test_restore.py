"""The one way from a checkpoint to a model (cvmtl.engine.restore): wrapper prefixes stripped,
overrides applied, a mismatch named by its file."""

from __future__ import annotations

import pytest
import torch

from cvmtl.config import Config, to_dict
from cvmtl.engine.checkpoint import save_checkpoint
from cvmtl.engine.restore import config_from_checkpoint, load_model
from cvmtl.models.build import build_model


def _cfg() -> Config:
    cfg = Config()
    cfg.model.neck_channels, cfg.model.head_channels = 16, 8
    cfg.train.device = "cpu"
    return cfg


def test_wrapped_names_load_into_the_plain_model(tmp_path):
    cfg = _cfg()
    torch.manual_seed(0)
    model = build_model(cfg)
    # what DDP (module.) and torch.compile of a submodule (._orig_mod.) write
    wrapped = {}
    for name, value in model.state_dict().items():
        head, _, tail = name.partition(".")
        wrapped[f"module.{head}._orig_mod.{tail}"] = value
    path = save_checkpoint({"model": wrapped, "config": to_dict(cfg)}, tmp_path / "w.pt")
    loaded, got = load_model(path, ["eval.tta=true"])
    assert got.eval.tta and not loaded.training
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0)


def test_a_checkpoint_of_another_model_is_named(tmp_path):
    cfg = _cfg()
    state = build_model(cfg).state_dict()
    other = _cfg()
    other.model.neck_channels = 32
    path = save_checkpoint({"model": state, "config": to_dict(other)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="x.pt: weights do not fit"):
        load_model(path)
    with pytest.raises(ValueError, match="holds no config"):
        config_from_checkpoint({"model": state})
