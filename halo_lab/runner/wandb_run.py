"""Weights & Biases: the mode without a login prompt, one run id per run directory, closing the run.

The run id is saved in the run directory (``wandb_run_id.txt``) because W&B has no other way to find
"this run" again: a resumed run (``ckpt_path=auto``) passes the same id and continues the same W&B run.

An online run first checks in a few seconds that the W&B server answers (:func:`wandb_unreachable`);
without a network it logs offline with one warning, instead of failing with W&B's ``CommError`` after
its 90 s init timeout. ``WandbLogger`` (conf/logger/wandb.yaml) is Lightning's without the
``anonymous`` argument that makes W&B warn on every run.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import socket
import string
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from omegaconf import DictConfig, open_dict

log = logging.getLogger("halo_lab.train")

WANDB_ID_FILE = "wandb_run_id.txt"
WANDB_CHECK_TIMEOUT_S = 5.0
DEFAULT_WANDB_URL = "https://api.wandb.ai"


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
        if sub.mode == "online" and global_rank() == 0:  # the one rank that talks to W&B
            why = wandb_unreachable()
            if why is not None:
                log.warning(
                    "W&B: %s does not answer (%s): logging offline to %s; upload later with "
                    "`wandb sync %s/offline-run-*`",
                    _wandb_url(),
                    why,
                    Path(run_dir) / "wandb",
                    Path(run_dir) / "wandb",
                )
                sub.mode = "offline"
        if sub.get("id") is None and sub.mode != "disabled":
            sub.id = wandb_run_id(run_dir, ckpt_path, write=global_rank() == 0)
        if sub.get("id") is not None:
            sub.resume = "allow"  # same id on resume: the W&B run continues
        if not sub.get("name"):
            sub.name = default_name


def finish_wandb(failed: bool) -> None:
    """Close this job's W&B run, with a failing exit code on error: in a multirun (one process) an
    unclosed run would swallow the next job's metrics. Closing it cannot fail the job (a full disk, a
    lost connection): the run's own files are written by then; a warning says what W&B lost."""
    wandb: Any = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        try:
            wandb.finish(exit_code=1 if failed else 0)
        except Exception as exc:  # noqa: BLE001 - whatever W&B raises, the job's result stands
            log.warning("W&B: closing the run failed (%s); its files may be incomplete", exc)


def _wandb_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_WANDB_URL


def wandb_unreachable(timeout: float = WANDB_CHECK_TIMEOUT_S) -> str | None:
    """None when the W&B server ($WANDB_BASE_URL, else api.wandb.ai) accepts a connection within
    ``timeout`` seconds; else why not, in a few words. The name lookup and the connection run in a thread,
    so a DNS resolver that hangs cannot hold the run longer than ``timeout``."""
    url = urlsplit(_wandb_url())
    host, port = url.hostname or "", url.port or (80 if url.scheme == "http" else 443)
    result: dict[str, str] = {}

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["ok"] = ""
        except Exception as exc:  # noqa: BLE001 - whatever the lookup raises, the answer is "offline"
            result["error"] = str(exc) or type(exc).__name__

    thread = threading.Thread(target=probe, name="wandb-check", daemon=True)
    thread.start()
    thread.join(timeout)
    if "ok" in result:
        return None
    return result.get("error") or f"no answer in {timeout:g} s"


def __getattr__(name: str) -> Any:
    # ``halo_lab.runner.wandb_run.WandbLogger`` (conf/logger/wandb.yaml), made on first use so that
    # importing this module does not import Lightning.
    if name == "WandbLogger":
        return _wandb_logger_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _wandb_logger_class() -> type:
    from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger

    class WandbLogger(LightningWandbLogger):
        """Lightning's WandbLogger, less the ``anonymous=None`` it passes to ``wandb.init``: W&B >= 0.19 warns
        "The anonymous setting has no effect" for any value given, on every run."""

        def __init__(self, *args: Any, anonymous: bool | None = None, **kwargs: Any) -> None:
            super().__init__(*args, anonymous=anonymous, **kwargs)
            if anonymous is None:
                self._wandb_init.pop("anonymous", None)

    WandbLogger.__module__ = __name__
    WandbLogger.__qualname__ = "WandbLogger"
    return WandbLogger
