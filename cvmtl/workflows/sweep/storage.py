"""Where a study lives, and how workers share it.

The default storage is Optuna's journal file ``runs/<study>/study.journal`` (JournalStorage +
JournalFileBackend: an append-only log that processes take turns writing through a lock file,
which also works on a shared NFS folder). ``--storage URL`` takes any database URL Optuna
accepts (``sqlite:///x.db``, ``postgresql://user:pw@host/db``): workers on many machines then
run the same study (``load_if_exists``). Any other ``--storage`` value is a journal file path.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

JOURNAL = "study.journal"
PRUNERS = ("median", "hyperband", "none")
# the states that hold one of the study's N trial slots (failed trials give theirs back; an
# enqueued WAITING trial takes one when a worker asks for its next trial)
SLOT_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def open_storage(storage: str | None, study_dir: Path) -> Any:
    """The Optuna storage ``storage`` names (default: the journal file in ``study_dir``); one
    ValueError line when it cannot be opened."""
    from optuna.storages import RDBStorage
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    where = storage or str(study_dir / JOURNAL)
    try:
        if storage is not None and "://" in storage:
            return RDBStorage(storage)
        if storage is None:
            study_dir.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(where))
    except Exception as err:  # a driver missing, a server down, a folder that does not exist
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"--storage {where}: cannot open it ({text})") from None


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """median: stop a trial whose validation is worse than the median of earlier trials at the
    same validation round (after 3 finished trials); hyperband: successive halving brackets over
    validation rounds; none: never prune."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"--pruner: expected one of {'|'.join(PRUNERS)}, got {name!r}")


def open_study(
    name: str, storage: Any, direction: str, pruner: str, fingerprint: dict[str, Any]
) -> optuna.Study:
    """Create the study or join it. A study made for another base config, space or direction
    is refused (its trials would not be comparable), naming the first difference."""
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction=direction,
        pruner=make_pruner(pruner),
        load_if_exists=True,
    )
    if study.direction.name.lower() != direction:
        raise ValueError(f"study {name!r} was created to {study.direction.name.lower()}")
    stored = study.user_attrs.get("fingerprint")
    if stored is None:
        study.set_user_attr("fingerprint", fingerprint)
    elif stored != fingerprint:
        raise ValueError(f"study {name!r} was created with {_difference(stored, fingerprint)}")
    return study


def _difference(old: Any, new: Any, key: str = "") -> str:
    """The first place two plain-data values differ, as ``key=old (now new)``."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            if old.get(k) != new.get(k):
                return _difference(old.get(k), new.get(k), f"{key}.{k}" if key else str(k))
    return f"{key or 'value'}={old!r} (now {new!r}); use another --study-name"


@contextlib.contextmanager
def local_lock(study_dir: Path) -> Iterator[None]:
    """An exclusive lock among this machine's workers of the study (``study_dir/sweep.lock``)."""
    study_dir.mkdir(parents=True, exist_ok=True)
    with open(study_dir / "sweep.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def worker_id() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_stale(study: optuna.Study) -> list[int]:
    """Mark failed the running trials of this machine whose worker process is gone (killed
    without a chance to record it); their slots go back to the study. Returns their numbers."""
    me, failed = worker_id(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("worker") or {}
        if owner.get("host") == me["host"] and not _alive(int(owner.get("pid", -1))):
            trial = optuna.trial.Trial(study, t._trial_id)
            trial.set_user_attr("note", f"worker {owner['pid']} died (found by {me['pid']})")
            study.tell(t.number, state=TrialState.FAIL)
            failed.append(t.number)
    return failed


def claim_trial(study: optuna.Study, total: int, study_dir: Path) -> optuna.Trial | None:
    """A new trial (an enqueued one first) if the study has fewer than ``total`` trials
    completed, pruned or running; else
    None. On one machine the local lock makes this exact; across machines a trial that lost a
    race for the last slot (its number is past ``total`` among the slot holders) is recorded as
    failed with a note, and None is returned."""
    with local_lock(study_dir):
        if len(study.get_trials(deepcopy=False, states=SLOT_STATES)) >= total:
            return None
        trial = study.ask()
        trial.set_user_attr("worker", worker_id())
    holders = study.get_trials(deepcopy=False, states=SLOT_STATES)
    order = sorted((t.number, t._trial_id) for t in holders)
    if [n for n, _ in order].index(trial.number) >= total:
        trial.set_user_attr("note", "surplus: another worker took the last slot")
        study.tell(trial, state=TrialState.FAIL)
        return None
    return trial
