"""Resuming a run: which checkpoint ``ckpt_path`` means.

The data position is the datamodule's: its train loader is a torchdata ``StatefulDataLoader``, whose
state Lightning saves in every checkpoint and restores on resume.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("halo_lab.train")


def resolve_ckpt_path(value: Any, run_dir: str | os.PathLike) -> str | None:
    """``ckpt_path`` -> the file to resume from, or None for a fresh start.

    ``auto`` (or ``last``): ``<run_dir>/checkpoints/last.ckpt`` when it exists; otherwise the run starts
    from step 0 and says so loudly (Lightning's own ``fit(ckpt_path="last")`` starts from scratch
    silently when it finds nothing).
    """
    from halo_lab.runner.config import ConfigError

    if value in (None, ""):
        return None
    if value in ("auto", "last"):
        last = Path(run_dir) / "checkpoints" / "last.ckpt"
        if last.is_file():
            log.info("ckpt_path=%s: resuming from %s", value, last)
            return str(last)
        log.warning(
            "ckpt_path=%s: no checkpoint at %s -- STARTING FROM STEP 0. To resume a run, pass its "
            "directory: hydra.run.dir=<that run's directory> ckpt_path=auto",
            value,
            last,
        )
        return None
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise ConfigError(f"ckpt_path={value!r}: no such checkpoint file")
    log.info("ckpt_path: resuming from %s", path)
    return str(path)
