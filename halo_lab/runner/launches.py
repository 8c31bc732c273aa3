"""A run directory's launches: ``launches.jsonl``, the run's own config on ``ckpt_path=auto``, and the
command that resumes a run.

Hydra composes a job's config from its command line alone and rewrites ``.hydra/`` at every start, before
any of halo_lab's code runs: a resume used to run the defaults unless every override was typed again, and
the first run's record was gone. Here every launch into a directory appends its command line and the run's
overrides to ``<run_dir>/launches.jsonl`` (:func:`restore_run_config`, called first in ``train.run``), a
launch that trains is marked so (:func:`launch_trained`), and ``ckpt_path=auto`` composes the config again
from the run's overrides with the new command line's on top.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("halo_lab.train")

LAUNCHES = "launches.jsonl"
"""One JSON line per launch into a run directory: the overrides typed (``command``) and the run's
overrides with that launch (``overrides``: those of the last launch that trained, with this command
line's on top); then, once that launch starts training, a line ``{"launch": n, "trained_from": step}``:
only a launch that trained makes its overrides the run's (one that stopped on a config or checkpoint
error changes nothing), unless none did and there is no checkpoint (killed before the first one): then
the last launch's."""
PER_LAUNCH_KEYS = ("ckpt_path", "train")
"""Overrides that belong to one launch and are never carried to the next."""


def resume_command(run_dir: str | os.PathLike) -> str:
    """The command line that resumes the run in ``run_dir``: nothing else to retype (its config comes back
    from its ``launches.jsonl``, see :func:`restore_run_config`)."""
    import re
    import shlex

    from halo_lab.runner.ddp import _hydra_quote

    value = str(run_dir)
    if re.search(r"[^\w./+@%-]", value):  # a comma would read as a sweep, a space as two arguments
        value = _hydra_quote(value)
    return f"python -m halo_lab.train {shlex.quote(f'hydra.run.dir={value}')} ckpt_path=auto"


def read_launches(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The launches recorded in ``run_dir``, oldest first, each with ``trained_from`` (the step its
    training started from) when it trained. A line cut off by a kill is skipped."""
    try:
        lines = (Path(run_dir) / LAUNCHES).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    launches: dict[int, dict[str, Any]] = {}
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        n = rec.get("launch") if isinstance(rec, dict) else None
        if not isinstance(n, int):
            continue
        if isinstance(rec.get("overrides"), list):
            launches[n] = dict(rec)
        elif "trained_from" in rec and n in launches:
            launches[n]["trained_from"] = rec["trained_from"]
    return [launches[n] for n in sorted(launches)]


def _override_key(override: str) -> str:
    return str(override).split("=", 1)[0].lstrip("+~")


def merge_overrides(saved: list[str], new: list[str]) -> list[str]:
    """The run's overrides (``saved``, less the per-launch keys) with ``new`` on top: a key given again
    takes the new value, every other saved override stays."""
    new_keys = {_override_key(o) for o in new}
    kept = [o for o in saved if _override_key(o) not in new_keys | set(PER_LAUNCH_KEYS)]
    return [*kept, *new]


def restore_run_config(cfg: Any, run_dir: str | os.PathLike) -> Any:
    """The config this launch runs with, and its line in ``<run_dir>/launches.jsonl`` (rank 0).

    ``ckpt_path=auto`` (or ``last``) in a directory that holds an earlier launch: that launch's overrides
    with this command line's on top, composed again by Hydra, so ``hydra.run.dir=DIR ckpt_path=auto``
    alone resumes the run as it was configured and ``trainer.max_steps=N`` extends it. A new value that
    does not fit the checkpoint (the model's size, its architecture, the tokenizer) is then the
    checkpoint check's one-line error. ``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml``,
    which Hydra rewrote for this command line at startup, are written again for the run's config.
    Any other launch runs the config it was given. Only a launch that trained (see :data:`LAUNCHES`)
    makes its overrides the run's."""
    from halo_lab.runner.ddp import global_rank

    typed = _task_overrides(cfg)
    launches = read_launches(run_dir)
    base = _run_launch(launches, Path(run_dir))
    effective = typed
    if cfg.get("ckpt_path") in ("auto", "last"):
        if base is not None:
            effective = merge_overrides(list(base["overrides"]), typed)
            _log_restored(run_dir, base, typed)
        elif (Path(run_dir) / "checkpoints" / "last.ckpt").is_file():
            log.warning(
                "ckpt_path=auto: %s has no %s with a launch that trained (a run from before halo_lab kept "
                "one): resuming with this command line's config only; pass the run's overrides again if "
                "they differ",
                run_dir,
                LAUNCHES,
            )
    if effective != typed:
        cfg = _recompose(cfg, effective)
    if global_rank() == 0:
        _record_launch(run_dir, launches[-1]["launch"] + 1 if launches else 1, typed, effective)
        if effective != typed:
            _rewrite_hydra_files(cfg, Path(run_dir))
    return cfg


def _task_overrides(cfg: Any) -> list[str]:
    """This launch's overrides (Hydra's ``overrides.task``: the command line's, a sweep's parameters)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    task = OmegaConf.select(cfg, "hydra.overrides.task", default=None)
    if task is None and HydraConfig.initialized():
        task = HydraConfig.get().overrides.task
    return [str(o) for o in task or ()]


def _run_launch(launches: list[dict[str, Any]], run_dir: Path) -> dict[str, Any] | None:
    """The launch whose overrides are the run's: the last one that trained; with no checkpoint in the
    directory (killed before its first one), the last one."""
    trained = [x for x in launches if "trained_from" in x]
    if trained:
        return trained[-1]
    if launches and not (run_dir / "checkpoints" / "last.ckpt").is_file():
        return launches[-1]
    return None


def _log_restored(run_dir: str | os.PathLike, base: dict[str, Any], typed: list[str]) -> None:
    saved = base["overrides"]
    changed = [o for o in typed if o not in saved and _override_key(o) not in PER_LAUNCH_KEYS]
    log.info(
        "ckpt_path=auto: the run in %s (launch %s in %s): its overrides %s%s",
        run_dir,
        base.get("launch"),
        LAUNCHES,
        [o for o in saved if _override_key(o) not in PER_LAUNCH_KEYS],
        f", with this command line's on top: {changed}" if changed else "",
    )


def _recompose(cfg: Any, overrides: list[str]) -> Any:
    """The root config composed again from ``overrides``, and Hydra's record of this job (its overrides,
    group choices, directory name) made to match; every other field of the job's Hydra node (its output
    directory above all) stays as Hydra set it for this launch."""
    import copy

    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from halo_lab.runner.config import open_dict_rw

    new = _compose(str(HydraConfig.get().job.get("config_name") or "train"), overrides)
    node = copy.deepcopy(HydraConfig.get())  # this job's node (Hydra marks it read-only)
    OmegaConf.set_readonly(node, False)
    with open_dict_rw(node):
        node.overrides.task = list(overrides)
        node.runtime.choices = new.hydra.runtime.choices
        node.job.override_dirname = new.hydra.job.override_dirname
    with open_dict_rw(new):
        new.hydra = node
    HydraConfig.instance().set_config(new)  # ${hydra:...}, choices and overrides now describe the run
    if "hydra" in cfg:
        return new
    task = copy.deepcopy(new)
    with open_dict_rw(task):
        del task["hydra"]
    return task


def _compose(config_name: str, overrides: list[str]) -> Any:
    """Hydra's compose with this app's search path (inside ``hydra.main``), else the runner's ``conf/``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from halo_lab.runner.config import ConfigError, conf_dir

    try:
        if GlobalHydra.instance().is_initialized():
            return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    except Exception as exc:  # Hydra's composition errors: an override that no longer applies
        raise ConfigError(
            f"ckpt_path=auto: the run's overrides (from its {LAUNCHES}) with this command line's do not "
            f"compose: {' '.join(str(exc).split())}"
        ) from None


def _record_launch(run_dir: str | os.PathLike, n: int, typed: list[str], effective: list[str]) -> None:
    import socket

    rec = {"pid": os.getpid(), "host": socket.gethostname(), "command": typed, "overrides": effective}
    _append_launch_line(run_dir, n, rec)


def _append_launch_line(run_dir: str | os.PathLike, n: int, rec: dict[str, Any]) -> None:
    import time

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(run_dir) / LAUNCHES, "a", encoding="utf-8") as f:
        f.write(json.dumps({"launch": n, "time": time.strftime("%Y-%m-%d %H:%M:%S"), **rec}) + "\n")


class _LaunchTrained:
    """At the start of training (rank 0): this launch's mark in launches.jsonl. (A Lightning callback:
    :func:`launch_trained` makes it.)"""

    def __init__(self, run_dir: str, launch: int):
        self.run_dir, self.launch = run_dir, launch

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            _append_launch_line(self.run_dir, self.launch, {"trained_from": int(trainer.global_step)})


def launch_trained(run_dir: str, launch: int) -> Any:
    """The :class:`_LaunchTrained` callback (Lightning is imported only here)."""
    import lightning.pytorch as pl

    cls = type("LaunchTrained", (_LaunchTrained, pl.Callback), {})
    return cls(run_dir, launch)


def _rewrite_hydra_files(cfg: Any, run_dir: Path) -> None:
    """``.hydra/`` as Hydra writes it at startup, for the run's config instead of this command line's."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from halo_lab.runner.lock import remember_hydra_files
    from halo_lab.utils import atomic_write_text

    hc = HydraConfig.get()
    hydra_dir = run_dir / str(hc.output_subdir) if hc.output_subdir is not None else None
    if hydra_dir is None or not hydra_dir.is_dir():
        return
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    atomic_write_text(hydra_dir / "config.yaml", OmegaConf.to_yaml(task))
    atomic_write_text(hydra_dir / "hydra.yaml", OmegaConf.to_yaml(HydraConfig.instance().cfg))
    atomic_write_text(hydra_dir / "overrides.yaml", OmegaConf.to_yaml(list(hc.overrides.task)))
    remember_hydra_files(run_dir)
