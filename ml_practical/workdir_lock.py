"""One owner per run directory: an exclusive lock held for as long as the run lives.

A scheduler that relaunches a job whose old process is still alive would otherwise have two
processes append to one metrics.jsonl, save into one checkpoint directory, or (with
`train.restart=True`) delete the files of a run that is still training. `WorkdirLock(workdir)`
takes an exclusive `fcntl.flock` on `<workdir>/.lock` before anything in the directory is read or
written, and keeps it until the run ends:

* a second process is refused at once (`WorkdirBusyError`), with the holder's host, pid and start
  time, which the holder writes into the lock file;
* the kernel releases a flock when its holder dies, SIGKILL included, so a relaunch after a crash
  takes the directory over without help (and says whose lock it took over);
* the lock is re-entrant within a process: a study script that locks its directory may run a
  `loop.fit` that locks the same one;
* in a run of several processes, process 0 holds it (the others only read the run files).

On a network filesystem the lock is as good as the filesystem's locking (NFS needs a lock manager:
`flock` is emulated with byte-range locks by Linux NFS clients).
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import pathlib
import socket
import sys
from typing import Any, ClassVar

LOCK_NAME = ".lock"


class WorkdirBusyError(RuntimeError):
    """Another live process holds the run directory."""


def _describe(holder: dict[str, Any]) -> str:
    started = holder.get("started_at")
    when = (datetime.datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M:%S")
            if isinstance(started, (int, float)) else "an unknown time")
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {when}"


class WorkdirLock:
    """An exclusive, re-entrant lock on a run directory (see the module docstring).

    Args:
      workdir: the directory (created if missing).
      enabled: False gives a lock that does nothing (the processes other than 0 of a
        multi-process run).

    Usage: `with WorkdirLock(path): ...`, or `acquire()` / `release()`.
    """

    # Locks this process holds: real path -> [file descriptor, depth].
    _held: ClassVar[dict[str, list[int]]] = {}

    def __init__(self, workdir: os.PathLike, enabled: bool = True):
        self.workdir = pathlib.Path(workdir)
        self.path = self.workdir / LOCK_NAME
        self.enabled = enabled
        self._key: str | None = None

    def acquire(self) -> WorkdirLock:
        """Takes the lock, or raises WorkdirBusyError naming the live holder."""
        if not self.enabled or self._key is not None:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
        if key in self._held:
            self._held[key][1] += 1
            self._key = key
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            previous = _read(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise WorkdirBusyError(
                    f"{self.workdir} is in use by {_describe(previous)}; wait for that run to "
                    "end or stop it, or use another --workdir") from None
            raise
        previous = _read(fd)
        if previous.get("pid") is not None:
            # A holder that released the lock normally empties the file: this one died.
            print(f"{self.workdir}: took over the lock of {_describe(previous)}, which is no "
                  "longer running", file=sys.stderr)
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "started_at": datetime.datetime.now().timestamp(), "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self._held[key] = [fd, 1]
        self._key = key
        return self

    def release(self) -> None:
        """Gives the lock back (the outermost release of this process empties the file)."""
        if self._key is None:
            return
        entry = self._held[self._key]
        entry[1] -= 1
        if entry[1] == 0:
            fd = entry[0]
            os.ftruncate(fd, 0)  # a released lock leaves no holder behind
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            del self._held[self._key]
        self._key = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def _read(fd: int) -> dict[str, Any]:
    try:
        text = os.pread(fd, 65536, 0).decode(errors="replace").strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}
