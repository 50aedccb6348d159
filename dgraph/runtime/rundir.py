"""Run directories: where a run's files go, who may write them, and what ``--overwrite`` deletes.

A run directory is a folder dgraph created for a run: it holds a ``.dgraph-run`` marker (JSON:
dgraph's version, the spec's name, when the folder became a run directory). dgraph deletes
only in marked folders, and there only the paths in :data:`OWNED`; anything else a user put
there stays. A folder without the marker is used only when it holds none of those names (or
to ``--resume`` a run an older dgraph wrote, which has no marker yet).

While a job runs it holds an exclusive ``flock`` on ``.dgraph-lock`` (the file holds the
holder's pid). The kernel drops the lock when the process ends, even by SIGKILL, so
``--resume`` can follow a crash at once, and a second job into the same folder fails at once,
with ``--resume`` and ``--overwrite`` too. Under ``torchrun`` only rank 0 takes the lock: the
ranks of one job share it, and only rank 0 writes into the folder.

A folder a *spec* chooses stays inside a base: ``name`` gives ``runs/<name>``, inside
``runs/``; ``train.out`` must lie inside the working directory. ``--out`` is the user's own
choice and may point anywhere.

This module imports neither torch nor the rest of the runtime.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, cast

from dgraph import __version__
from dgraph.errors import DgraphError, SpecError

try:  # flock is POSIX; on other systems runs are not locked.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK",
    "MARKER",
    "OWNED",
    "RunDirError",
    "RunLock",
    "atomic_write",
    "atomic_write_text",
    "open_run_dir",
    "os_reason",
    "spec_run_dir",
]

MARKER = ".dgraph-run"
LOCK = ".dgraph-lock"
#: Everything dgraph writes in a run directory; ``--overwrite`` deletes these and nothing else.
OWNED = (
    "checkpoints", "final", "tb", "cache", "generated", "metrics.jsonl", "summary.json",
    "spec.resolved.yaml", "graph.svg", "graph.mmd", MARKER, LOCK,
)
# Temporary files of an atomic write of one of those names that a crash left behind.
_LEFTOVER = re.compile(r"^\.(?P<name>[^/]+)\.[^/]*\.tmp$")


class RunDirError(DgraphError):
    """A run directory cannot be created, written, locked, reused or overwritten."""


def os_reason(exc: OSError) -> str:
    """The system's words for an OSError ('No space left on device'), without the errno."""
    return exc.strerror or str(exc)


# -- atomic writes -----------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once, at import (os.umask can only be read by setting it, which is not thread-safe).
_MODE = 0o666 & ~_current_umask()


def _open_temp(tmp: str, fd: int) -> IO[bytes]:
    """The handle an atomic write writes through (a seam: tests make it fail like a full disk)."""
    return os.fdopen(fd, "wb")


class _Recorded:
    """A file handle that remembers the OSError of a failed write.

    Some writers (``torch.save``) turn a failed write into their own RuntimeError; the
    OSError kept here says what really happened (a full disk, an I/O error).
    """

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        try:
            self.handle.flush()
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` through a temporary file in its folder, fsynced and renamed into place.

    A process killed, or a disk that fills, at any moment leaves either the old file or the
    new one, never a part; the temporary file is removed when the write fails. OSErrors
    propagate: callers say which file could not be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _MODE)  # mkstemp makes the file private; a run's files follow the umask
        with _open_temp(tmp, fd) as raw:
            handle = _Recorded(raw)
            try:
                write(cast(IO[bytes], handle))
            except OSError:
                raise
            except Exception:
                if handle.error is not None:
                    raise handle.error from None
                raise
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: Path, text: str, *, what: str = "file") -> None:
    """:func:`atomic_write` of UTF-8 text; an OSError becomes a :class:`RunDirError`."""
    try:
        atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
    except OSError as exc:
        raise RunDirError(f"cannot write {what} {path} ({os_reason(exc)}); no part of it was "
                          "written. Free space or fix the folder's permissions, then run "
                          "again") from None


# -- where a spec may put its run --------------------------------------------------------------
def spec_run_dir(spec) -> Path:
    """The run directory a spec chooses: ``train.out``, else ``runs/<name>``.

    Spec text is data: the folder must lie inside the working directory (``train.out``) or
    inside ``runs/`` (``name``), symbolic links followed; otherwise a located
    :class:`SpecError`. ``--out`` on the command line is how a user writes elsewhere.
    """
    cwd = Path.cwd()
    key: tuple[str, ...]
    if spec.train.out:
        value, key = spec.train.out, ("train", "out")
        base, candidate, inside = cwd, Path(spec.train.out), "the working directory"
        rule = ("a spec may only choose a folder inside the working directory (such as "
                "runs/my_run)")
    else:
        value, key = spec.display_name, ("name",)
        base, candidate, inside = cwd / "runs", Path("runs") / spec.display_name, "runs/"
        rule = "a spec's name becomes the folder runs/<name>: use a plain name such as 'kd_small'"
    base = base.resolve()
    target = (cwd / candidate).resolve()
    if target == base or base not in target.parents:
        field = ".".join(key)
        raise SpecError(
            f"{field} '{value}' would put the run directory at {target}, outside {inside} "
            f"({base})",
            spec.source.where(key),
            code="run-dir-outside",
            expected=f"a folder inside {base}",
            found=str(target),
            suggestion=f"{rule}; pass --out DIR on the command line to write elsewhere",
        )
    return candidate


# -- the lock ------------------------------------------------------------------------------------
class RunLock:
    """An exclusive ``flock`` on ``<run dir>/.dgraph-lock``, held until :meth:`release`.

    The kernel releases it when the holding process ends however it ends. The lock file holds
    the holder's pid, which a refused job names.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunDirError(f"cannot write in run directory {self.run_dir} "
                              f"({os_reason(exc)}: {self.path}); choose a writable --out") from None
        if fcntl is None:  # pragma: no cover - Windows
            self._fd = fd
            return self
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f"pid {holder}" if holder is not None else "pid unknown"
                raise RunDirError(
                    f"run directory {self.run_dir} is in use by another dgraph job ({who}, "
                    f"lock {self.path}); wait for it to end or stop it, or choose another "
                    "--out") from None
            raise RunDirError(f"cannot lock run directory {self.run_dir} ({os_reason(exc)}: "
                              f"{self.path}); choose a --out on a local filesystem") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is for messages only; the lock itself is held
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> RunLock:
        if not self.held:
            self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


# -- claiming a folder for a run -------------------------------------------------------------
def _listing(names: Iterable[str], run_dir: Path, limit: int = 8) -> str:
    shown = [f"{n}/" if (run_dir / n).is_dir() and not (run_dir / n).is_symlink() else n
             for n in names]
    text = ", ".join(shown[:limit])
    if len(shown) > limit:
        text += f" and {len(shown) - limit} more"
    return text


def _entries(run_dir: Path) -> tuple[list[str], list[str]]:
    """(names dgraph writes, other names) in a folder, each sorted."""
    names = sorted(os.listdir(run_dir))
    ours = [n for n in names if n in OWNED]
    return ours, [n for n in names if n not in OWNED]


def _has_run(run_dir: Path) -> bool:
    return (run_dir / "checkpoints").exists() or (run_dir / "final").exists()


def _check_target(run_dir: Path) -> None:
    """Refuse a path that is a file, or lies under one, before anything is written."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} is an existing file, not a folder; choose "
                          "another --out")
    for parent in run_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunDirError(f"cannot create run directory {run_dir}: {parent} is a file, "
                                  "not a folder; choose another --out")
            break


def _check_unmarked(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """A folder without the marker: use it only when no file of a run would be overwritten."""
    ours, others = _entries(run_dir)
    if not ours:
        return  # empty, or only the user's own files: they stay untouched
    legacy = (run_dir / "spec.resolved.yaml").is_file() and _has_run(run_dir)
    if legacy and resume:
        return  # a run an older dgraph wrote; it is marked from now on
    found = f"{_listing(ours, run_dir)} (names a run writes)"
    if others:
        found += f" and {_listing(others, run_dir)} (not dgraph's)"
    if overwrite:
        raise RunDirError(
            f"--overwrite refused: {run_dir} has no {MARKER} marker, so dgraph did not create "
            f"it and deletes nothing in it; it holds {found}. Delete what you no longer need "
            "yourself, or choose another --out")
    hint = " (to continue a run an older dgraph wrote there, pass --resume)" if legacy else ""
    raise RunDirError(
        f"run directory {run_dir} has no {MARKER} marker, so dgraph did not create it, and it "
        f"already holds {found}; a run would overwrite those. Choose another --out, or move "
        f"them away{hint}")


def _remove_owned(run_dir: Path, say: Callable[[str], Any]) -> None:
    """Delete a previous run's files (only names in OWNED, never what links point to)."""
    removed = []
    for name in sorted(os.listdir(run_dir)):
        leftover = _LEFTOVER.match(name)
        if name in (MARKER, LOCK) or not (name in OWNED or
                                          (leftover and leftover["name"] in OWNED)):
            continue
        path = run_dir / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as exc:
            raise RunDirError(f"--overwrite: cannot delete {path} ({os_reason(exc)}); fix its "
                              "permissions or choose another --out") from None
        removed.append(name)
    _, others = _entries(run_dir)
    kept = [n for n in others if not _LEFTOVER.match(n)]
    say(f"--overwrite: removed the previous run ({', '.join(removed)}) from {run_dir}"
        + (f"; kept {_listing(kept, run_dir)} (not dgraph's)" if kept else ""))


def open_run_dir(run_dir: Path, *, spec_name: str, spec_text: str, resume: bool,
                 overwrite: bool, say: Callable[[str], Any] = print) -> RunLock:
    """Create or reuse ``run_dir`` for a run and return its lock, held.

    Checks the folder (a file? someone else's? another job's?), takes the lock, then under the
    lock: refuses to replace a run unless ``overwrite`` (deleting only dgraph's paths) or
    ``resume``, writes the marker, and writes ``spec.resolved.yaml`` (or, on resume, checks
    the spec is the one the run was started with). Every failure is a :class:`RunDirError`
    (or a CheckpointError for a changed spec) naming the folder.
    """
    from dgraph.errors import CheckpointError

    run_dir = Path(run_dir)
    _check_target(run_dir)
    if run_dir.is_dir() and not (run_dir / MARKER).exists():
        _check_unmarked(run_dir, resume=resume, overwrite=overwrite)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create run directory {run_dir} ({os_reason(exc)}); choose a "
                          "writable --out") from None
    lock = RunLock(run_dir).acquire()
    try:
        if _has_run(run_dir) and not resume:
            if not overwrite:
                raise RunDirError(
                    f"run directory {run_dir} already holds a run; pass --resume to continue "
                    "it, --out DIR for a new run, or --overwrite to replace it")
            _remove_owned(run_dir, say)
            (run_dir / MARKER).unlink(missing_ok=True)
        if not (run_dir / MARKER).exists():
            marker = {"dgraph_run": 1, "dgraph_version": __version__, "spec": spec_name,
                      "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            atomic_write_text(run_dir / MARKER, json.dumps(marker, indent=2) + "\n",
                              what="run directory marker")
        resolved = run_dir / "spec.resolved.yaml"
        if resume and resolved.exists() and resolved.read_text() != spec_text:
            raise CheckpointError(
                f"the spec differs from the one this run was started with ({resolved}); resume "
                "with the same spec and overrides, or start a new run with --out")
        atomic_write_text(resolved, spec_text, what="resolved spec")
    except BaseException:
        lock.release()
        raise
    return lock
