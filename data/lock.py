"""One writer per output folder: a kernel lock on ``<folder>/.mscseg.lock``, and the leftovers of dead runs.

``fcntl.flock`` holds the lock while the process (or a step process it started with the
lock's descriptor) lives; the kernel releases it when they die, so a killed run never leaves
a stale lock. A lock covers the folder's whole tree: a folder is busy when its own lock is
held, when a folder above it is held (a run writing into it), or when a folder below it is
held (a trainer writing into one of its run folders). The holder writes its pid, host,
command and start time into the lock file, which names it in the refusal.

Leftovers of a dead run (``.staging-*`` folders, ``*.partial`` files) are removed when the
next run takes the lock; the leftovers of a live run are never touched, since its lock
keeps the folder busy.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TextIO

from .errors import MscsegError

LOCK_NAME = ".mscseg.lock"
LEFTOVER = re.compile(r"^(\.staging-[a-z0-9_]{8}|.+\.partial(\.weights\.h5|\.[A-Za-z0-9]+)?)$")
BUSY_RETRIES = 5          # a second process probing the same lock holds it for microseconds
BUSY_RETRY_S = 0.02
BUSY, GONE = -1, -2       # what ``_lock_file`` returns instead of a descriptor


class FolderBusyError(MscsegError):
    """Another process writes into the folder (or a folder above or below it)."""


@dataclass
class FolderLock:
    """A held lock: ``fd`` is the open lock file (pass it to a child that writes for this process)."""

    folder: Path
    path: Path
    fd: int
    created: Path | None = None

    def release(self) -> None:
        """Remove the lock file (still holding it), unlock, and remove the folder again when it was made empty."""
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = -1
        if self.created is not None:
            remove_empty(self.folder, self.created)
        _HELD[:] = [lock for lock in _HELD if lock is not self]


_HELD: list[FolderLock] = []
_COMMAND_LOCKS: list[FolderLock] = []


def acquire(folder: str | Path, command: str | None = None) -> FolderLock:
    """Lock ``folder`` (made if missing) for this process; ``FolderBusyError`` naming the holder if it is in use."""
    folder = Path(folder).absolute()
    created = next((p for p in reversed((folder, *folder.parents)) if not p.exists()), None)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(folder, folder / LOCK_NAME, -1, created)
    try:
        lock.fd = _lock_file(lock.path, exclusive=True)
        if lock.fd == BUSY:
            raise _busy(folder, _holder_of(folder))
        for other in (*_locks_above(folder), *_locks_below(folder)):
            info = _probe(other)
            if info is not None:
                raise _busy(folder, info, other.parent)
    except BaseException:
        if lock.fd >= 0:
            with contextlib.suppress(OSError):
                lock.path.unlink()
            os.close(lock.fd)
            lock.fd = -1
        if created is not None:
            remove_empty(folder, created)
        raise
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command or _command_line(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _HELD.append(lock)
    try:
        os.ftruncate(lock.fd, 0)
        os.pwrite(lock.fd, (json.dumps(record) + "\n").encode(), 0)
    except OSError as error:
        lock.release()
        raise OSError(error.errno, error.strerror or str(error), str(lock.path)) from None
    return lock


@contextlib.contextmanager
def locked(folder: str | Path, command: str | None = None, out: TextIO | None = None) -> Iterator[FolderLock]:
    """Hold the lock on ``folder`` for the block, after removing the leftovers of dead runs (a note to ``out``)."""
    lock = acquire(folder, command)
    try:
        remove_leftovers(lock.folder, out)
        yield lock
    finally:
        lock.release()


def lock_output_folder(folder: str | Path, command: str | None = None, out: TextIO | None = None) -> FolderLock:
    """``locked`` for a console script: held until ``release_command_locks`` (``data.cli.run_cli`` calls it when
    the command ends)."""
    lock = acquire(folder, command)
    _COMMAND_LOCKS.append(lock)
    remove_leftovers(lock.folder, out if out is not None else sys.stdout)
    return lock


def command_lock_count() -> int:
    return len(_COMMAND_LOCKS)


def release_command_locks(since: int = 0) -> None:
    """Release the locks ``lock_output_folder`` took after the first ``since`` (the command is over)."""
    while len(_COMMAND_LOCKS) > since:
        _COMMAND_LOCKS.pop().release()


def held_fds() -> tuple[int, ...]:
    """The descriptors of the locks this process holds (a step process inherits them, so the lock outlives a killed parent)."""
    return tuple(lock.fd for lock in _HELD if lock.fd >= 0)


def holder(folder: str | Path) -> dict | None:
    """Who holds ``folder`` itself (pid, host, command, started), or None when it is free."""
    path = Path(folder) / LOCK_NAME
    return _probe(path) if path.is_file() else None


def is_lock_file(path: Path) -> bool:
    return path.name == LOCK_NAME


def has_content(folder: str | Path) -> bool:
    """True when ``folder`` holds anything besides a lock file."""
    return any(not is_lock_file(p) for p in Path(folder).iterdir())


def leftovers(folder: str | Path) -> list[Path]:
    """The staging folders and partial files under ``folder`` (outermost only)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        for name in list(dirs):
            if LEFTOVER.match(name):
                found.append(Path(root) / name)
                dirs.remove(name)
        found += [Path(root) / name for name in files if LEFTOVER.match(name)]
    return sorted(found)


def remove_leftovers(folder: str | Path, out: TextIO | None = None) -> list[Path]:
    """Remove the leftovers of dead runs under ``folder`` (call it holding the lock); one note line to ``out``."""
    folder = Path(folder)
    found = leftovers(folder)
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    if found and out is not None:
        shown = ", ".join(str(p.relative_to(folder)) for p in found[:3])
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        print(f"mscseg: note: removed {len(found)} leftover(s) of a stopped run in {folder}: {shown}{more}",
              file=out, flush=True)
    return found


# ---------------------------------------------------------------- internals

def _lock_file(path: Path, exclusive: bool) -> int:
    """An open descriptor of ``path`` locked as asked (made when ``exclusive``), ``BUSY`` when another process
    holds it, or ``GONE`` (a shared probe only) when the file is not there.

    Retries when the file was replaced between opening and locking (its holder removed it).
    """
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    busy = 0
    while True:
        flags = os.O_RDWR | os.O_CREAT if exclusive else os.O_RDONLY
        try:
            fd = os.open(path, flags | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            return GONE
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            busy += 1
            if busy > BUSY_RETRIES:
                return BUSY
            time.sleep(BUSY_RETRY_S)
            continue
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
        if not exclusive:
            return GONE


def _probe(path: Path) -> dict | None:
    """The holder of the lock file ``path`` when another process holds it, else None."""
    fd = _lock_file(path, exclusive=False)
    if fd >= 0:
        os.close(fd)
    return _read(path) if fd == BUSY else None


def _read(path: Path) -> dict:
    try:
        content = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        content = {}
    return content if isinstance(content, dict) else {}


def _holder_of(folder: Path) -> dict:
    """Who makes ``folder`` busy: its own holder, else a process holding a folder below it."""
    own = _read(folder / LOCK_NAME)
    if own.get("pid") and _alive(own["pid"]):
        return own
    for other in _locks_below(folder):
        info = _probe(other)
        if info is not None:
            return info
    return own


def _locks_above(folder: Path) -> list[Path]:
    return [parent / LOCK_NAME for parent in folder.parents if (parent / LOCK_NAME).is_file()]


def _locks_below(folder: Path) -> list[Path]:
    return [Path(root) / LOCK_NAME for root, _, files in os.walk(folder)
            if LOCK_NAME in files and Path(root) != folder]


def _busy(folder: Path, info: dict, where: Path | None = None) -> FolderBusyError:
    pid = info.get("pid")
    who = f"process {pid}" if pid else "another process"
    if info.get("host") and info.get("host") != socket.gethostname():
        who += f" on {info['host']}"
    command = f" ({info['command']})" if info.get("command") else ""
    since = f" since {info['started']}" if info.get("started") else ""
    inside = "" if where is None or where == folder else f" (it writes into {where})"
    ended = "; that process has ended, a step process it started still runs" if pid and not _alive(pid) else ""
    return FolderBusyError(f"in use by {who}{command}{since}{inside}{ended}; wait for it to finish, "
                           "or choose another output folder (nothing was written)", folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True
    return True


def _command_line() -> str:
    return " ".join([Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]])


def remove_empty(folder: Path, top: Path) -> None:
    """Remove ``folder`` and its parents up to ``top`` while they are empty."""
    for candidate in (folder, *folder.parents):
        if not candidate.is_dir() or any(candidate.iterdir()):
            return
        candidate.rmdir()
        if candidate == top:
            return
