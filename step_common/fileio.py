"""Atomic file writes and hashing.

State that must survive a crash (checkpoints, ledgers, metrics) is written to a temporary file in
the same folder, flushed and fsync'ed, then renamed over the target: a reader sees the old file or
the new one, never half of one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from step_common.errors import StepError

FSYNC_ENV = "STEP_FSYNC"
"""``STEP_FSYNC=0`` skips fsync. Writes stay atomic (a killed process leaves the old or the new
file); only a power loss could lose the last ones. step-sim sets it for its simulation
processes: every institution is virtual, on one machine, and each round writes every node's
state (fsync took 3% of an in-process run of the default example on this 2-core machine)."""


def _durable() -> bool:
    return os.environ.get(FSYNC_ENV, "1") != "0"


def _fsync(fd: int) -> None:
    if _durable():
        os.fsync(fd)


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (POSIX needs the directory itself synced)."""
    if not _durable():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` so that the file is either the old or the new content.

    ``mode``: the file's permissions (default: 0o666 minus the umask, as for a plain open();
    private keys pass 0o600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode if mode is not None else 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            _fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync it (a crash loses at most the line being written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        _fsync(f.fileno())


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it is renamed to ``path`` in one step.

    ``path`` must not exist yet (a folder cannot be atomically renamed over a non-empty one);
    on any error the temporary folder is removed and ``path`` is untouched.
    """
    tmp = temporary_directory(path)
    try:
        yield tmp
        commit_directory(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def temporary_directory(path: Path) -> Path:
    """A new temporary sibling folder of ``path`` (``remove_stale_temps`` clears it after a
    kill), for writers that fill it in more than one process before ``commit_directory``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0o700
    return tmp


def commit_directory(tmp: Path, path: Path) -> None:
    """Make the filled temporary folder ``tmp`` durable and rename it to ``path`` (which must
    not exist) in one step."""
    for child in tmp.rglob("*"):
        if child.is_file():
            with open(child, "rb") as f:
                _fsync(f.fileno())
    _fsync_dir(tmp)
    os.rename(tmp, path)
    _fsync_dir(Path(path).parent)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created 0600 if missing) for the block:
    processes that take the same lock run the block one at a time; the lock goes with the
    process, so a killed holder never leaves it held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def check_writable(folder: Path, what: str) -> None:
    """StepError unless files can be created in ``folder`` (made if missing)."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise StepError(
            f"{what} {folder} is not writable ({e.strerror or e}): choose a folder this account "
            "can write, with free space"
        ) from None


def remove_tree(path: Path) -> None:
    """Remove the folder ``path`` so that a kill at any moment leaves it whole or gone: it is
    first renamed to a temporary sibling (one atomic step), then deleted. A half-deleted
    folder under its real name would look like a damaged checkpoint; a half-deleted temporary
    is removed by ``remove_stale_temps``."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        os.rename(path, tmp)
    except FileNotFoundError:
        return
    shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove the temporary files and folders (``.NAME.*.tmp``) that the atomic writers above
    leave behind when the process is killed mid-write; they never hold committed state. Call
    only where no other process writes into ``folder``. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def read_yaml(path: Path, missing: str) -> Any:
    """The parsed YAML of ``path``; a missing file or bad syntax is a StepError (``missing``:
    what to do when the file is not there)."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StepError(f"{path} not found: {missing}") from None
    except yaml.YAMLError as e:
        raise StepError(f"{path} is not valid YAML ({e}): fix the syntax") from None
