"""Files that survive a kill: atomic writes and an exclusive lock on a directory.

* :func:`atomic_writer` / :func:`atomic_write`: the data goes to ``NAME.tmp`` in the same
  directory, is flushed and fsynced, renamed over ``NAME`` (``os.replace``, atomic on
  POSIX and Windows) and the directory is fsynced. A reader, or a run after a kill at
  any instant, sees the old file or the new one, never an empty or partial one; at
  worst a stale ``NAME.tmp`` is left behind, which the next write replaces.
* :class:`DirLock`: ``fcntl.flock`` on a lock file in the directory, holding the
  holder's pid, host and start time. The kernel releases a flock when its process dies
  (``kill -9`` included), so a stale lock file never blocks the next run.

Used for every state and output file of the labeller, the accuracy dataset, router
checkpoints and the route job's progress.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from aragog_jax.errors import AragogError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; DirLock is then a no-op
    fcntl = None


def fsync_dir(directory: str | Path) -> None:
    """Make a rename or unlink in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file whose content replaces ``path`` atomically when the block ends
    without an exception (on an exception ``path`` is untouched and the temp file removed)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` (str is written as UTF-8) atomically and durably."""
    with atomic_writer(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def remove_durably(*paths: str | Path) -> None:
    """Unlink the ``paths`` that exist and fsync their directories."""
    dirs = set()
    for p in map(Path, paths):
        if p.exists():
            p.unlink()
            dirs.add(p.parent)
    for d in dirs:
        fsync_dir(d)


class DirLock:
    """An exclusive lock on ``directory`` held through ``directory / name``.

    ``with DirLock(out, "label.lock", "label run"):`` raises :class:`AragogError` at once,
    naming the holder's pid, host and start time, when another process (or another
    ``DirLock`` in this one) holds it.
    """

    def __init__(self, directory: str | Path, name: str, what: str):
        self.path = Path(directory) / name
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None or self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            try:
                h = json.loads(holder)
                who = f"pid {h['pid']} on {h['host']}, started {h['started']}"
            except (ValueError, KeyError, TypeError):
                who = "a process that has not yet written its name"
            raise AragogError(
                f"{self.path.parent}: another {self.what} is using it ({who}; lock {self.path}); "
                "wait for it to finish or stop it"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        # Emptied before unlocking, so the file never names a holder that is gone. The
        # file itself stays: unlinking it would let two runs lock two different inodes.
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> DirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
