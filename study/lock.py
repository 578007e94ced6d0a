"""One driver per study: a lock file in the study's folder of the Tune storage.

Two drivers on one experiment would restore the same trials twice and log into the same runs.
`hold_study` takes the lock or refuses at once, naming the driver that holds it (host, pid,
since when); with `wait=True` it waits for that driver instead.

What counts as held:
- The lock is an exclusive `flock` on `driver.lock`, which the kernel releases when its driver
  dies, however it dies (kill -9 included): a stale lock never blocks a relaunch on the same
  host.
- The file also names its driver (host, pid, start, heartbeat every 30 s). Some shared
  filesystems do not carry a `flock` from one host to another, so a lock written by a driver on
  another host counts as held until its heartbeat is 120 s old, whatever `flock` says. The
  same host's pid is checked too, for filesystems without `flock`.
- A driver that ends, normally or by Ctrl-C, empties the file.

Remote storage (`s3://`) has no lock: run one driver per study there.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from transinv.config import ConfigError

LOCK_FILE = "driver.lock"
HEARTBEAT_S = 30.0
STALE_S = 120.0
"""A lock written on another host whose heartbeat is older than this is stale."""


class StudyBusy(ConfigError):
    """Another driver runs this study (a usage error: exit status 2, like a bad space file)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(text: str) -> dict | None:
    try:
        info = json.loads(text)
    except ValueError:
        return None
    return info if isinstance(info, dict) and "pid" in info else None


def _describe(info: dict) -> str:
    since = datetime.fromtimestamp(info["since"]).isoformat(sep=" ", timespec="seconds")
    return f"driver pid {info['pid']} on host {info['host']} since {since}"


def _holds(info: dict | None, locked: bool | None) -> bool:
    """Whether another driver holds the study, from `_try_lock`'s answer and the file."""
    if locked is False:
        return True
    if info is None:
        return False
    if info["host"] != socket.gethostname():
        return time.time() - info.get("beat", info["since"]) < STALE_S
    # On this host a granted flock is the answer (a dead driver's pid may be reused).
    return locked is None and info["pid"] != os.getpid() and _alive(info["pid"])


def _try_lock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: the filesystem has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            return None
        raise


def _write(fd: int, info: dict) -> None:
    data = json.dumps(info).encode()
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, data)
    os.fsync(fd)


def _acquire(path: Path, probe: bool = False) -> tuple[int | None, dict | None]:
    """(fd, None) once held, or (None, the holder's info) when another driver has it. A
    `probe` leaves the file as it is."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by Ray's children
    try:
        locked = _try_lock(fd)
        info = _holder(path.read_text(errors="replace"))
        if _holds(info, locked):
            os.close(fd)
            return None, info or {"pid": "?", "host": "?", "since": path.stat().st_mtime}
        if probe:
            return fd, None
        now = time.time()
        _write(fd, {"host": socket.gethostname(), "pid": os.getpid(), "since": now, "beat": now})
        return fd, None
    except BaseException:
        os.close(fd)
        raise


def check_free(folder: Path, study: str) -> None:
    """StudyBusy now if another driver holds the study (a probe before starting Ray and a
    server; `hold_study` still decides)."""
    path = folder / LOCK_FILE
    if not path.exists():
        return
    fd, holder = _acquire(path, probe=True)
    if fd is not None:
        os.close(fd)
    else:
        raise _busy(study, holder, path)


def _busy(study: str, holder: dict, path: Path) -> StudyBusy:
    return StudyBusy(
        f"study {study!r} is already running: {_describe(holder)} (lock {path}); "
        "wait for it to end, or pass --wait to start when it does"
    )


@contextmanager
def hold_study(folder: Path, study: str, wait: bool = False, poll_s: float = 2.0) -> Iterator[None]:
    """Hold the study's lock for the block; StudyBusy at once if another driver has it (or,
    with `wait`, wait until it has not)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    said = False
    while True:
        fd, holder = _acquire(path)
        if fd is not None:
            break
        if not wait:
            raise _busy(study, holder, path)
        if not said:
            print(f"waiting for {_describe(holder)} to end study {study!r}", flush=True)
            said = True
        time.sleep(poll_s)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            info = _holder(path.read_text(errors="replace")) or {}
            try:
                _write(fd, {**info, "beat": time.time()})
            except OSError as exc:  # a full or vanished disk must not stop the study
                print(f"warning: cannot refresh {path}: {exc}", file=sys.stderr)

    thread = threading.Thread(target=beat, name="study-lock", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # releases the flock
