"""Weights & Biases: the mode without a login prompt, one run id per run directory, closing the run.

The run id is saved in the run directory (``wandb_run_id.txt``) because W&B has no other way to find
"this run" again: a resumed run (``ckpt_path=auto``) passes the same id and continues the same W&B run.
"""

from __future__ import annotations

import os
import secrets
import string
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

WANDB_ID_FILE = "wandb_run_id.txt"


def wandb_mode(configured: str | None) -> str:
    """null -> $WANDB_MODE if set, else online with $WANDB_API_KEY, else offline (never a login prompt)."""
    if configured:
        return configured
    env = os.environ.get("WANDB_MODE")
    if env:
        return "offline" if env == "dryrun" else env
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def wandb_run_id(run_dir: str | os.PathLike, ckpt_path: str | None, write: bool) -> str:
    """The W&B run id of this run directory: reused on resume, created (and saved) otherwise.

    Looks in the run directory, then in the directory of the checkpoint being resumed.
    """
    run_dir = Path(run_dir)
    places = [run_dir / WANDB_ID_FILE]
    if ckpt_path:
        places.append(Path(ckpt_path).resolve().parent.parent / WANDB_ID_FILE)
    for p in places:
        if p.is_file() and p.read_text().strip():
            return p.read_text().strip()
    alphabet = string.ascii_lowercase + string.digits  # the shape of W&B's own ids
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / WANDB_ID_FILE).write_text(run_id + "\n")
    return run_id


def fill_wandb_logger(sub: DictConfig, run_dir: Path, ckpt_path: str | None, default_name: str) -> None:
    """Fill a WandbLogger config's null ``mode``, ``id`` (resume: the same run) and ``name``."""
    from halo_lab.runner.ddp import global_rank

    with open_dict(sub):
        sub.mode = wandb_mode(sub.get("mode"))
        if sub.get("id") is None and sub.mode != "disabled":
            sub.id = wandb_run_id(run_dir, ckpt_path, write=global_rank() == 0)
        if sub.get("id") is not None:
            sub.resume = "allow"  # same id on resume: the W&B run continues
        if not sub.get("name"):
            sub.name = default_name


def finish_wandb(failed: bool) -> None:
    """Close this job's W&B run, with a failing exit code on error: in a multirun (one process) an
    unclosed run would swallow the next job's metrics."""
    wandb: Any = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)
