"""Tune's saved state kept readable across a driver killed mid-write (`study/tune_state.py`), on
files shaped like Tune's; the killed driver's resume through a torn state file runs end to end
in tests/test_study.py (`test_killed_driver_resumes_without_duplicate_runs`)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from study.tune_state import BACKUP, UNREADABLE, StateBackup, repair_saved_state


def save(folder: Path, session: str, step: int) -> dict[str, bytes]:
    """A session's three files as Tune writes them, holding `step`."""
    files = {
        f"experiment_state-{session}.json": json.dumps({"trial_data": [step]}).encode(),
        f"search_gen_state-{session}.json": pickle.dumps({"step": step}),  # a pickle, as Tune's
        f"searcher-state-{session}.pkl": pickle.dumps({"step": step}),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def test_backup_keeps_the_last_whole_state_and_repair_puts_it_back(tmp_path):
    backup = StateBackup(tmp_path)
    whole = save(tmp_path, "s1", step=3)
    backup.backup()
    assert {p.name: p.read_bytes() for p in (tmp_path / BACKUP).iterdir()} == whole
    # The driver is killed while Tune rewrites the state: one file empty, one cut short.
    (tmp_path / "experiment_state-s1.json").write_bytes(b"")
    (tmp_path / "searcher-state-s1.pkl").write_bytes(whole["searcher-state-s1.pkl"][:5])
    backup.backup()  # a torn state never replaces the copy
    assert (tmp_path / BACKUP / "experiment_state-s1.json").read_bytes() == whole[
        "experiment_state-s1.json"
    ]
    said = repair_saved_state(tmp_path)
    assert len(said) == 1 and "s1" in said[0] and "experiment_state-s1.json" in said[0]
    assert "searcher-state-s1.pkl" in said[0] and BACKUP in said[0]
    assert {name: (tmp_path / name).read_bytes() for name in whole} == whole
    assert repair_saved_state(tmp_path) == []  # whole again: nothing to do


def test_backup_follows_newer_saves(tmp_path):
    backup = StateBackup(tmp_path)
    save(tmp_path, "s1", step=1)
    backup.backup()
    newer = save(tmp_path, "s1", step=2)
    backup.backup()
    assert {p.name: p.read_bytes() for p in (tmp_path / BACKUP).iterdir()} == newer


def test_a_torn_session_without_a_copy_is_moved_aside_and_earlier_ones_stay(tmp_path):
    earlier = save(tmp_path, "s1", step=5)
    save(tmp_path, "s2", step=1)
    (tmp_path / "experiment_state-s2.json").write_bytes(b"")
    said = repair_saved_state(tmp_path)
    assert len(said) == 1 and "s2" in said[0] and UNREADABLE in said[0]
    assert sorted(p.name for p in tmp_path.glob("*-s2.*")) == []
    assert sorted(p.name for p in (tmp_path / UNREADABLE).iterdir()) == [
        "experiment_state-s2.json", "search_gen_state-s2.json", "searcher-state-s2.pkl",
    ]  # fmt: skip
    assert {name: (tmp_path / name).read_bytes() for name in earlier} == earlier
