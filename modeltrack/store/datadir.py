"""
The data dir's layout and its permissions: prompts never land here, but spend,
labels and the per-install secret do, so nothing is readable beyond the service's
own group (and the state dir, which holds the secret, beyond its user).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

DATA_DIR_MODE = 0o750
STATE_DIR_MODE = 0o700
#: The event log, its segments and the SQLite index.
FILE_MODE = 0o640


def make_data_dir(path: Path) -> None:
    """
    Create the data dir if it is missing (an existing one keeps its mode: the
    operator's choice).
    """
    path.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)


def state_dir(data_dir: Path) -> Path:
    """
    C{<data-dir>/state}, created 0700 if missing: the cache secret, snapshots and
    checkpoints.
    """
    path = data_dir / "state"
    path.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    return path


def create_file(path: Path) -> None:
    """
    Create C{path} with L{FILE_MODE} if it does not exist (before a library that
    would create it with its own mode opens it).
    """
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """
    Replace C{path} with C{data} whole: written to a file of this process's own,
    fsynced, then renamed over it, so that a reader (or a crash) never sees half of it.
    """
    path.parent.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def install_id(state_dir: Path) -> str:
    """
    This install's name, made once: among the contributors to a shared budget, and the
    instance whose events the fleet's store holds.
    """
    path = state_dir / "instance-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        name = secrets.token_hex(8)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(name + "\n")
        return name
