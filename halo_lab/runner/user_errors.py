"""The error boundary of ``python -m halo_lab.train``: a mistake of the user's or the machine's (config, data,
a diverging loss, a full disk) as one line naming the key, file or path, with the exit code; anything
else (a bug) is not recognised, so its traceback stays."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from halo_lab.runner.config import ConfigError


def user_error(exc: BaseException, cfg: DictConfig | None = None) -> tuple[str, int] | None:
    """The one line (after ``halo_lab.train: ``) and the exit code for a mistake of the user's or the
    machine's; None for anything else (a bug: its traceback is what helps)."""
    from halo_lab.data import DataError

    disk = disk_full_line(exc)
    if disk is not None:
        return disk + _resume_hint(cfg), 1
    if isinstance(exc, ConfigError):
        return f"config error: {exc}", 2
    if isinstance(exc, DataError):
        return f"data error: {' '.join(str(exc).split())}", 2
    if isinstance(exc, FloatingPointError):  # HaloLitModule: a non-finite loss, with its step and what to try
        return f"training error: {' '.join(str(exc).split())}{_kept_checkpoint(cfg)}", 1
    return None


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_PATH_LOCALS = ("target", "filepath", "path", "file_path", "filename")


def disk_full_line(exc: BaseException) -> str | None:
    """``disk error: no space left on device writing PATH`` when ENOSPC is anywhere in ``exc``'s chain
    (torch.save reports it as ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``
    with the OSError only as its context); PATH is the file being written, read from the traceback: the
    innermost halo_lab or Lightning frame holding a path (``target``, ``filepath``, ``path``) or an open
    file."""
    chain = _chain(exc)
    if not any(_no_space(e) for e in chain):
        return None
    path = next((p for e in chain if (p := _written_path(e))), None)
    where = f" writing {path}" if path else ""
    return (
        f"disk error: no space left on device{where}; free space there or write elsewhere (HALO_LAB_ROOT=DIR)"
    )


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _no_space(e: BaseException) -> bool:
    return (isinstance(e, OSError) and e.errno in _NO_SPACE) or "No space left on device" in str(e)


def _written_path(e: BaseException) -> str | None:
    if isinstance(e, OSError) and e.filename:
        return str(e.filename)
    frames = []
    tb = e.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):  # innermost first
        name = frame.f_code.co_filename
        if f"{os.sep}halo_lab{os.sep}" in name or f"{os.sep}lightning{os.sep}" in name:
            found = _path_in(frame.f_locals)
            if found:
                return found
    return None


def _path_in(local_vars: dict[str, Any]) -> str | None:
    for key in _PATH_LOCALS:
        value = local_vars.get(key)
        if isinstance(value, str | os.PathLike) and str(value):
            return str(value)
    for value in local_vars.values():
        if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
            return value.name
    return None


def _run_paths(cfg: DictConfig | None) -> tuple[Path, Path] | None:
    """(run directory, last.ckpt) of this run, when the config can say."""
    try:
        return Path(cfg.paths.output_dir), Path(cfg.paths.ckpt_dir) / "last.ckpt"
    except Exception:  # noqa: BLE001 - no config, or no Hydra context to resolve it
        return None


def _kept_checkpoint(cfg: DictConfig | None) -> str:
    paths = _run_paths(cfg)
    if paths is None:
        return ""
    if paths[1].is_file():
        return f"; the last checkpoint from before it is kept: {paths[1]}"
    return "; no checkpoint was written before it"


def _resume_hint(cfg: DictConfig | None) -> str:
    """``; then resume: COMMAND`` (the run's config comes back from its launches.jsonl) when a checkpoint
    was kept."""
    from halo_lab.runner.launches import resume_command

    paths = _run_paths(cfg)
    if paths is None or not paths[1].is_file():
        return ""
    return f"; then resume: {resume_command(paths[0])}"
