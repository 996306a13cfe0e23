"""``key=value`` overrides anywhere among a command's flags (issue 27): for every ``cvmtl``
command, overrides before, between and after its flags give the same arguments and the same
config as the trailing run of overrides; a mistyped flag stays a usage error (exit 2)."""

from __future__ import annotations

import importlib

import pytest

from cvmtl import cli
from cvmtl.config import load_config, to_dict

OVERRIDES = ["train.lr=0.003", "data.crop=[32,40]", "name=moved", "train.lr=0.002"]  # last wins
# each command's flags, one list per flag with its values
FLAGS: dict[str, list[list[str]]] = {
    "train": [["--config", "synthetic_demo"], ["--train-baselines"], ["--baselines-only"]],
    "eval": [["--checkpoint", "run/best.pt"], ["--split", "val"], ["--tta"]],
    "visualize": [["--checkpoint", "run/best.pt"], ["--num", "2"], ["--out", "vis"]],
    "infer": [["--checkpoint", "run/best.pt"], ["--input", "in"], ["--out", "o"], ["--npz"]],
    "export": [["--checkpoint", "run/best.pt"], ["--out", "m.onnx"], ["--static"]],
    "benchmark": [["--config", "synthetic_demo"], ["--iters", "5"], ["--no-eval"]],
    "affinity": [["--config", "synthetic_demo"], ["--batches", "2"], ["--split", "val"]],
    "demo": [["--config", "synthetic_demo"], ["--train", "4"], ["--fresh"]],
    "compare-balancers": [["--config", "synthetic_demo"], ["--seeds", "0"], ["--table-only"]],
    "compare-smp": [["--config", "synthetic_demo"], ["--seeds", "0"], ["--out", "o"]],
    "sweep": [["--config", "synthetic_demo"], ["--space", "s.yaml"], ["--trials", "3"]],
    "make-synthetic": [["--out", "d"], ["--train", "2"], ["--no-progress"]],
    "prepare-nyuv2": [["--mat", "a"], ["--splits", "b"], ["--mapping", "c"], ["--out", "d"]],
    "class-weights": [["--config", "synthetic_demo"], ["--power", "1"], ["--digits", "4"]],
}
NO_OVERRIDES = {"make-synthetic", "prepare-nyuv2"}  # they read no config


def test_every_command_is_covered():
    assert set(FLAGS) == set(cli.COMMANDS)


def parsed(monkeypatch, command: str, argv: list[str]):
    """The arguments ``cvmtl <command> argv`` hands to the command's body (nothing runs)."""
    module = importlib.import_module(f"cvmtl.commands.{cli.COMMANDS[command]}")
    seen = []
    monkeypatch.setattr(module, "run_main", lambda body, *args: seen.append(args) or 0)
    assert cli.main([command, *argv]) == 0
    (args,) = seen
    return args[0]


def interleaved(flags: list[list[str]], overrides: list[str]) -> list[str]:
    """An override first, then one after each flag, the rest at the end."""
    out, rest = [overrides[0]], list(overrides[1:])
    for flag in flags:
        out += flag
        if rest:
            out.append(rest.pop(0))
    return out + rest


@pytest.mark.parametrize("command", sorted(set(FLAGS) - NO_OVERRIDES))
def test_overrides_anywhere_give_the_same_config(command, monkeypatch):
    flags = FLAGS[command]
    trailing = parsed(monkeypatch, command, [w for f in flags for w in f] + OVERRIDES)
    assert trailing.overrides == OVERRIDES
    mixed = interleaved(flags, OVERRIDES)
    assert mixed[0] == OVERRIDES[0] and mixed[1] == flags[0][0]  # before, between (after)
    anywhere = parsed(monkeypatch, command, mixed)
    assert vars(anywhere) == vars(trailing)
    config = getattr(anywhere, "config", None)
    cfg = load_config(config, anywhere.overrides)
    assert to_dict(cfg) == to_dict(load_config(config, trailing.overrides))
    assert cfg.train.lr == 0.002 and cfg.data.crop == [32, 40] and cfg.name == "moved"


@pytest.mark.parametrize("command", sorted(FLAGS))
def test_a_mistyped_flag_is_still_an_error(command, monkeypatch, capsys):
    flags = FLAGS[command]
    words = [w for f in flags for w in f]
    argv = words[:2] + ["--no-such-flag", "3"] + words[2:]
    if command not in NO_OVERRIDES:
        argv = interleaved(flags[:1], OVERRIDES[:2]) + ["--no-such-flag", "3"] + words[2:]
    module = importlib.import_module(f"cvmtl.commands.{cli.COMMANDS[command]}")
    monkeypatch.setattr(module, "run_main", lambda body, *args: pytest.fail("ran"))
    with pytest.raises(SystemExit) as stop:
        cli.main([command, *argv])
    assert stop.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(NO_OVERRIDES))
def test_commands_without_a_config_refuse_overrides(command, monkeypatch, capsys):
    module = importlib.import_module(f"cvmtl.commands.{cli.COMMANDS[command]}")
    monkeypatch.setattr(module, "run_main", lambda body, *args: pytest.fail("ran"))
    with pytest.raises(SystemExit):
        cli.main([command, *interleaved(FLAGS[command], ["train.lr=1"])])
    assert "unrecognized arguments: train.lr=1" in capsys.readouterr().err


def test_resume_without_a_value_leaves_an_override_after_it(monkeypatch, tmp_path):
    # --resume [RUN_DIR]: a key=value word after it is an override, not the run folder ...
    words = ["--config", "synthetic_demo", "name=a", "--resume", "train.lr=0.5", "name=b"]
    args = parsed(monkeypatch, "train", words)
    assert args.resume is True and args.overrides == ["name=a", "train.lr=0.5", "name=b"]
    # ... unless a folder of that name exists (run folders may hold "=")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lr=0.5").mkdir()
    args = parsed(monkeypatch, "train", ["--resume", "lr=0.5", "name=b"])
    assert args.resume == "lr=0.5" and args.overrides == ["name=b"]
    args = parsed(monkeypatch, "train", ["--resume", "runs/x", "name=b", "--train-baselines"])
    assert args.resume == "runs/x" and args.overrides == ["name=b"] and args.train_baselines
