"""One run per run directory: an exclusive lock on ``<run_dir>/.run.lock`` for the run's life.

Without it two launches into one ``hydra.run.dir`` run side by side silently: history.jsonl interleaves,
last.ckpt comes from one run and a versioned copy from the other. :func:`hold_run_dir` takes the lock
with ``fcntl.flock`` on an open file: the kernel drops it when the process ends, however it ends, so a
SIGKILLed run's lock file never blocks the resume (no stale-pid guessing). The file names its holder
(pid, host, start time, command) for the one line a second launch stops with, and keeps the holder's
``.hydra/`` files, which Hydra rewrites at every launch before any of halo_lab's code runs: the refused
launch puts them back.

Only global rank 0 takes it: the DDP ranks Lightning relaunches into the same directory (and torchrun's
other ranks) belong to the same run. The lock is released when the run finishes, when this process
starts the next job of a multirun (another directory), or when the process ends. Where ``fcntl`` does
not exist (Windows), there is no lock.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from halo_lab.runner.config import ConfigError

log = logging.getLogger("halo_lab.train")

LOCK_NAME = ".run.lock"
_HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")
_held: dict[str, Any] = {}  # the lock this process holds: {"dir": resolved run dir, "fh": open file}


def hold_run_dir(run_dir: str | os.PathLike) -> None:
    """Take the run directory's lock for this run (rank 0; a no-op on other ranks), releasing the one this
    process held for an earlier run. Raises :class:`RunDirectoryBusy` (a ConfigError: one line, exit
    status 2) naming the directory and the holder's pid when another live process holds it."""
    from halo_lab.runner.ddp import global_rank

    if global_rank() != 0:
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return
    d = Path(run_dir).resolve()
    if _held.get("dir") == str(d):
        return  # this process runs this directory again (tests, a notebook): still ours
    release()
    d.mkdir(parents=True, exist_ok=True)
    fh = open(d / LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the run's life
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        holder = _read_holder(d)
        _restore_hydra_files(d, holder)
        raise RunDirectoryBusy(d, holder) from None
    _held.update(dir=str(d), fh=fh)
    _write_holder(fh, d)


def remember_hydra_files(run_dir: str | os.PathLike) -> None:
    """Keep the current ``.hydra/`` files in the lock file (after the runner rewrote them on a resume)."""
    fh = _held.get("fh")
    if fh is not None and _held.get("dir") == str(Path(run_dir).resolve()):
        _write_holder(fh, Path(run_dir).resolve())


def holds(run_dir: str | os.PathLike) -> bool:
    """Whether this process holds ``run_dir``'s lock."""
    return _held.get("fh") is not None and _held.get("dir") == str(Path(run_dir).resolve())


def release() -> None:
    """Give up the lock this process holds (the file stays: removing it would race with a new holder)."""
    fh = _held.pop("fh", None)
    _held.pop("dir", None)
    if fh is not None:
        fh.close()  # closing the file drops the flock


class RunDirectoryBusy(ConfigError):
    """Another live run holds the directory's lock."""

    def __init__(self, run_dir: Path, holder: dict[str, Any]):
        self.run_dir, self.holder = run_dir, holder
        who = f"pid {holder.get('pid', '?')}"
        if holder.get("host") and holder.get("host") != socket.gethostname():
            who += f" on {holder['host']}"
        if holder.get("started"):
            who += f", started {holder['started']}"
        super().__init__(
            f"hydra.run.dir={run_dir}: another run is using this directory ({who}); wait for it to end "
            "(or stop it), or pick another hydra.run.dir"
        )


def _hydra_dir(run_dir: Path) -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return run_dir / ".hydra"
    sub = HydraConfig.get().output_subdir
    return None if sub is None else run_dir / str(sub)


def _write_holder(fh, run_dir: Path) -> None:
    hydra_dir = _hydra_dir(run_dir)
    files = {}
    for name in _HYDRA_FILES if hydra_dir is not None else ():
        try:
            files[name] = (hydra_dir / name).read_text(encoding="utf-8")
        except OSError:
            pass
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": sys.argv,
        "hydra_files": files,
    }
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps(info) + "\n")
    fh.flush()


def _read_holder(run_dir: Path) -> dict[str, Any]:
    for _ in range(20):  # the holder writes its line right after taking the lock
        try:
            info = json.loads((run_dir / LOCK_NAME).read_text(encoding="utf-8"))
            if isinstance(info, dict):
                return info
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return {}


def _restore_hydra_files(run_dir: Path, holder: dict[str, Any]) -> None:
    """Hydra rewrote ``.hydra/`` for this refused launch: put the running run's files back."""
    from halo_lab.utils import atomic_write_text

    hydra_dir = _hydra_dir(run_dir)
    files = holder.get("hydra_files") or {}
    if hydra_dir is None or not hydra_dir.is_dir() or not isinstance(files, dict):
        return
    for name, text in files.items():
        if name in _HYDRA_FILES and isinstance(text, str):
            atomic_write_text(hydra_dir / name, text)
