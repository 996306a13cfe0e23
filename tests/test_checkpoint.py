"""Checkpoint files: atomic writes, weights_only loading, refusal of foreign files, RNG states."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from cvmtl.engine import checkpoint as ck


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((3,), value)}, "step": int(value), "rng": ck.get_rng_state()}


def test_roundtrip_weights_only(tmp_path):
    path = ck.save_checkpoint(_state(1.0), tmp_path / "last.pt")
    raw = torch.load(path, weights_only=True)  # what every tool may do
    assert raw[ck.MAGIC_KEY] == 1 and raw["format_version"] == ck.FORMAT_VERSION
    state = ck.load_checkpoint(tmp_path)  # a run folder means its last.pt
    assert torch.equal(state["model"]["w"], torch.ones(3)) and state["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left


def test_interrupted_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ck.save_checkpoint(_state(1.0), path)
    real_save = torch.save

    def partial_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")  # some bytes reach the disk, then the crash
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", partial_save)
    with pytest.raises(OSError, match="simulated"):
        ck.save_checkpoint(_state(2.0), path)
    monkeypatch.setattr(torch, "save", real_save)
    assert ck.load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


class _Custom:
    pass


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_foreign_files_refused(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, plain)
    with pytest.raises(ValueError, match=r"plain\.pt is not a cvmtl checkpoint \(no"):
        ck.load_checkpoint(plain)
    evil = tmp_path / "evil.pt"
    torch.save({ck.MAGIC_KEY: 1, "x": _Custom()}, evil)  # needs unpickling arbitrary classes
    with pytest.raises(ValueError, match=r"evil\.pt is not a cvmtl checkpoint: torch\.load"):
        ck.load_checkpoint(evil)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.txt is not a cvmtl checkpoint"):
        ck.load_checkpoint(text)
    pick = tmp_path / "data.pkl"
    pick.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match=r"data\.pkl is not a cvmtl checkpoint"):
        ck.load_checkpoint(pick)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ck.load_checkpoint(tmp_path / "missing.pt")
    future = tmp_path / "future.pt"
    torch.save({ck.MAGIC_KEY: 1, "format_version": ck.FORMAT_VERSION + 1}, future)
    with pytest.raises(ValueError, match="newer"):
        ck.load_checkpoint(future)


def test_rng_state_roundtrip(tmp_path):
    np.random.normal()  # a cached Gaussian in numpy's state
    random.gauss(0, 1)  # and in Python's
    ck.save_checkpoint({"rng": ck.get_rng_state()}, tmp_path / "r.pt")
    expected = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    ck.set_rng_state(ck.load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1]) and expected[2:] == got[2:]


def test_preserved_rng_isolates_draws():
    torch.manual_seed(0)
    a = torch.rand(2)
    torch.manual_seed(0)
    with ck.preserved_rng():
        _ = torch.rand(100), np.random.rand(5), random.random()
    assert torch.equal(torch.rand(2), a)


def test_linked_checkpoint_is_one_file_until_replaced(tmp_path):
    """best.pt and last.pt of a best epoch are one file; a later last.pt leaves best.pt alone."""
    best = ck.save_checkpoint({"step": 3, "w": torch.ones(4)}, tmp_path / "best.pt")
    last = ck.link_checkpoint(best, tmp_path / "last.pt")
    assert last.samefile(best) and ck.load_checkpoint(last)["step"] == 3
    ck.save_checkpoint({"step": 5, "w": torch.zeros(4)}, tmp_path / "last.pt")
    assert not last.samefile(best)
    assert ck.load_checkpoint(best)["step"] == 3 and ck.load_checkpoint(last)["step"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temps


def test_linked_checkpoint_copies_without_hard_links(tmp_path, monkeypatch):
    best = ck.save_checkpoint({"step": 3, "w": torch.arange(4.0)}, tmp_path / "best.pt")

    def no_links(*args):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(ck.os, "link", no_links)  # a file system without hard links
    last = ck.link_checkpoint(best, tmp_path / "last.pt")
    assert not last.samefile(best)
    assert torch.equal(ck.load_checkpoint(last)["w"], torch.arange(4.0))
