"""The run directory before and after a job: writable before Hydra opens its log there, and removed again
when a config or data error left nothing in it but Hydra's own files.

- :class:`RunDirCheck`: a Hydra callback (conf/hydra/default.yaml) that runs before Hydra makes the run
  directory: a directory that cannot be written is one line naming it and exit code 2, instead of
  Hydra's ``Unable to configure handler 'file'`` traceback. It also records whether this run creates the
  directory (:func:`created_run_dir`).
- :func:`remove_untouched_run_dir`: after a config or data error (``train.main``), the directory this
  run created, when it holds only ``.hydra/`` (its three files), the job's log and this launch's own
  records (the ``.run.lock`` it holds, its line in ``launches.jsonl``): mistyped commands leave no empty
  ``outputs/train/<time>/`` behind. Never a directory that existed before, one with anything else in
  it, or one whose lock another process holds.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from halo_lab.runner.config import open_dict_rw

# Run directories this process's Hydra run created (see RunDirCheck): only these may be removed again.
_CREATED_RUN_DIRS: set[str] = set()


def created_run_dir(path: str | os.PathLike) -> bool:
    """Whether this process's Hydra run created ``path`` (it did not exist when the run started)."""
    return str(Path(path).resolve()) in _CREATED_RUN_DIRS


def unwritable_reason(path: str | os.PathLike) -> str | None:
    """Why no file can be created in ``path`` (or in its nearest existing parent, where the directory would
    be made), else None. Tries a real file: permissions, a read-only file system and root all count."""
    d = Path(path).absolute()
    while not d.exists() and d != d.parent:
        d = d.parent
    if not d.is_dir():
        return f"{d} is not a directory"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".halo-write-check-", dir=d)
    except OSError as exc:
        return f"{d}: {exc.strerror or exc}"
    os.close(fd)
    os.unlink(tmp)
    return None


class RunDirCheck(Callback):
    """A Hydra callback (conf/hydra/default.yaml) run before Hydra makes the run directory and opens its
    log file there: a directory that cannot be written is one line naming it and exit code 2, instead of
    Hydra's ``Unable to configure handler 'file'`` traceback. It pins ``hydra.run.dir`` to its resolved
    value (``${now:...}`` resolved once) and records whether the directory is new (``created_run_dir``)."""

    def on_run_start(self, config: DictConfig, config_name: str | None = None, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir", config_name, pin=True)

    def on_multirun_start(self, config: DictConfig, config_name: str | None = None, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir", config_name, pin=False)

    @staticmethod
    def _check(config: DictConfig, key: str, config_name: str | None, pin: bool) -> None:
        try:
            run_dir = str(OmegaConf.select(config, key, throw_on_missing=True))
        except Exception:  # noqa: BLE001 - not resolvable here (e.g. ${hydra:...}): Hydra reports it
            return
        reason = unwritable_reason(run_dir)
        if reason is not None:
            print(
                f"halo_lab.{config_name or 'train'}: run directory error: cannot write the run directory "
                f"{run_dir} ({reason}); pick a writable place: {key}=DIR or HALO_LAB_ROOT=DIR",
                file=sys.stderr,
            )
            raise SystemExit(2)
        if pin:
            with open_dict_rw(config):
                OmegaConf.update(config, key, run_dir)
            if not Path(run_dir).exists():
                _CREATED_RUN_DIRS.add(str(Path(run_dir).resolve()))


HYDRA_FILES = {"config.yaml", "hydra.yaml", "overrides.yaml"}


def remove_untouched_run_dir() -> bool:
    """After a config or data error: remove the run directory when this process's Hydra run created it
    and it holds nothing but Hydra's own files (``.hydra/`` with its three YAML files, the job's log)
    and this launch's records (``.run.lock``, held by this process, and ``launches.jsonl``: in a
    directory this process created, only this launch's line): failed commands leave no empty
    ``outputs/train/<time>/`` behind. Never a directory that existed before (a resumed run's), one with
    any other file, or one whose lock this process does not hold (another run uses it)."""
    from halo_lab.runner import lock
    from halo_lab.runner.launches import LAUNCHES

    if not HydraConfig.initialized():
        return False
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    if not created_run_dir(run_dir) or not run_dir.is_dir():
        return False
    sub = str(hc.output_subdir or ".hydra")
    names = {p.name for p in run_dir.iterdir()}
    if names - {sub, f"{hc.job.name}.log", lock.LOCK_NAME, LAUNCHES}:
        return False
    if lock.LOCK_NAME in names and not lock.holds(run_dir):
        return False
    hydra_dir = run_dir / sub
    if hydra_dir.exists() and {p.name for p in hydra_dir.iterdir()} - HYDRA_FILES:
        return False
    lock.release()
    shutil.rmtree(run_dir, ignore_errors=True)
    return True
