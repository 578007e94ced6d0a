"""Tune's saved state, kept readable across a driver killed at any moment.

Ray Tune 2.60 saves a study's state (`experiment_state-<session>.json`, the searcher's
`search_gen_state-<session>.json` and `searcher-state-<session>.pkl`) by rewriting the files in
place, then copying them into the storage folder in a background thread. A driver killed during
either leaves an empty or cut-short file; `Tuner.restore` then logs "Failed to restore the run
state" and starts the study over beside its earlier trials (measured: exit 130, one of three
trials redone, the others lost to the resume).

`StateBackup` (a Tune callback on the driver) copies each session's files to `state_backup/`
whenever they change and read back whole, replacing the copy atomically, so the folder always
holds the last complete state. Before a resume, `repair_saved_state` puts that copy back in
place of any unreadable file, or, with no copy, moves the session's files to `unreadable/` so
that Tune restores the newest readable session instead of failing on this one.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

from ray import tune

BACKUP = "state_backup"
UNREADABLE = "unreadable"
STATE = "experiment_state-"


def session_files(folder: Path, session: str) -> list[Path]:
    """The files Tune saves for one driver session (those present)."""
    names = (f"{STATE}{session}.json", f"search_gen_state-{session}.json",
             f"searcher-state-{session}.pkl")  # fmt: skip
    return [folder / name for name in names if (folder / name).is_file()]


def sessions(folder: Path) -> list[str]:
    return sorted(p.name[len(STATE) : -len(".json")] for p in folder.glob(f"{STATE}*.json"))


def readable(data: bytes, name: str) -> bool:
    """Whether a saved file's bytes are whole: the experiment state is JSON that parses; the
    searcher's files are pickles that load (`search_gen_state-*.json` too, despite its name)."""
    try:
        if name.startswith(STATE):
            json.loads(data)
        else:
            pickle.loads(data)  # noqa: S301 - Tune's own file, which Tune unpickles next
    except Exception:
        return False
    return True


def read_whole(files: list[Path]) -> dict[str, bytes] | None:
    """The files' bytes by name when every one reads back whole, else None."""
    contents = {p.name: p.read_bytes() for p in files}
    return contents if all(readable(d, name) for name, d in contents.items()) else None


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


class StateBackup(tune.Callback):
    """Keeps `<experiment_dir>/state_backup/` at the last complete copy of each session's
    saved state. Checked once per step of Tune's loop; files are read only when their
    modification time changed."""

    def __init__(self, experiment_dir: str | Path) -> None:
        self.folder = Path(experiment_dir)
        self.seen: dict[str, int] = {}

    def on_step_end(self, iteration, trials, **info):
        self.backup()

    def on_experiment_end(self, trials, **info):
        self.backup()

    def backup(self) -> None:
        for session in sessions(self.folder):
            files = session_files(self.folder, session)
            stamp = sum(p.stat().st_mtime_ns for p in files)
            if self.seen.get(session) == stamp:
                continue
            contents = read_whole(files)
            if contents is None:
                continue  # mid-write: the next step sees it whole
            target = self.folder / BACKUP
            target.mkdir(exist_ok=True)
            for name, data in contents.items():
                _write_atomically(target / name, data)
            self.seen[session] = stamp


def repair_saved_state(experiment_dir: Path) -> list[str]:
    """Before `Tuner.restore`: each session whose saved files do not read back whole gets its
    backup put back, or, without one, its files moved to `unreadable/`. What was done, a line
    per session (empty when every file reads back)."""
    done = []
    for session in sessions(experiment_dir):
        files = session_files(experiment_dir, session)
        broken = [p.name for p in files if not readable(p.read_bytes(), p.name)]
        if not broken:
            continue
        backup = session_files(experiment_dir / BACKUP, session)
        copy = read_whole(backup) if backup else None
        if copy is not None:
            for name, data in copy.items():
                _write_atomically(experiment_dir / name, data)
            done.append(
                f"Tune's saved state of session {session} did not read back ({', '.join(broken)}:"
                f" the driver was stopped while writing it); resuming from its last complete "
                f"copy in {BACKUP}/"
            )
            continue
        aside = experiment_dir / UNREADABLE
        aside.mkdir(exist_ok=True)
        for p in files:
            os.replace(p, aside / p.name)
        done.append(
            f"Tune's saved state of session {session} did not read back ({', '.join(broken)})"
            f" and has no complete copy; moved to {UNREADABLE}/, so the resume starts from the "
            "newest earlier session, or anew"
        )
    return done
