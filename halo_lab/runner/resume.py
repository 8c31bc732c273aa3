"""Resuming a run: which checkpoint ``ckpt_path`` means, and whether it can be resumed here.

The data position is the datamodule's: its train loader (``halo_lab.data.resumable``) saves its position
(epoch, batches of it handed out) in every checkpoint, and Lightning restores it on resume.

Before anything is built, :func:`inspect_checkpoint` reads the checkpoint itself with
``weights_only=True`` (whatever torch's environment says: no code in a file ever runs), checks its
checksum and compares its model with the configured one, so an unreadable, corrupted or mismatched
checkpoint is one line naming ``ckpt_path`` and what to do, before any data is read. The data-dependent
checks (the tokenizer, the vocabulary) run in :class:`ResumeCheck` once the data is prepared.
:func:`plan_resume` puts these together into the run's :class:`ResumePlan`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("halo_lab.train")

# Model fields that may differ on resume without a word (they do not change what the weights compute).
_FREE_FIELDS = {"dropout", "attention_backend", "init_std", "allow_full_window"}


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


@dataclass
class CheckpointInfo:
    """What the runner needs to know about the checkpoint it resumes from."""

    path: str
    global_step: int
    epoch: int
    model_config: dict[str, Any]
    arch: str | None
    tokenizer: dict[str, Any] | None
    verified: bool
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


def _err(path: str, msg: str):
    from halo_lab.runner.config import ConfigError

    return ConfigError(f"ckpt_path={path}: {msg}")


def inspect_checkpoint(path: str, checked: dict[str, Any]) -> CheckpointInfo:
    """Read ``path`` safely and check it against this run's model (``checked``: validate_config's result);
    a ConfigError naming ``ckpt_path`` and what to do when it cannot be resumed here."""
    from halo_lab.checkpoint.integrity import CheckpointFileError, load_checkpoint_file

    try:
        ck = load_checkpoint_file(path, mmap=True)
    except CheckpointFileError as exc:
        msg = str(exc)
        raise _err(path, msg.split(": ", 1)[1] if msg.startswith(f"{path}: ") else msg) from None
    verified = True
    if not isinstance(ck, dict) or "state_dict" not in ck or "hyper_parameters" not in ck:
        keys = sorted(ck)[:6] if isinstance(ck, dict) else type(ck).__name__
        raise _err(
            path,
            f"not a checkpoint written by halo_lab.train (no state_dict / hyper_parameters; it holds {keys}); "
            "pass a .ckpt from a run's checkpoints/ directory, or start fresh with ckpt_path=null",
        )
    from halo_lab.checkpoint.integrity import CHECKSUM_KEY

    if CHECKSUM_KEY not in ck:
        verified = False
        log.info("ckpt_path=%s: no checksum (written before halo_lab checked them); not verified", path)
    hp = ck.get("hyper_parameters") or {}
    mc = hp.get("model_config")
    if not isinstance(mc, dict):
        raise _err(path, "its hyper_parameters hold no model_config; it was not written by halo_lab.train")
    shapes = {k: tuple(v.shape) for k, v in (ck.get("state_dict") or {}).items() if hasattr(v, "shape")}
    info = CheckpointInfo(
        path=str(path),
        global_step=int(ck.get("global_step", 0) or 0),
        epoch=int(ck.get("epoch", 0) or 0),
        model_config=dict(mc),
        arch=hp.get("arch"),
        tokenizer=hp.get("tokenizer") if isinstance(hp.get("tokenizer"), dict) else None,
        verified=verified,
        shapes=shapes,
    )
    del ck
    check_model(info, checked)
    return info


def _fmt(v: Any) -> str:
    return json.dumps(v) if isinstance(v, list | dict) else str(v)


def check_model(info: CheckpointInfo, checked: dict[str, Any]) -> None:
    """The configured model against the checkpoint's: a different architecture or any tensor of another
    shape is a ConfigError naming the differing model keys; other differences (the graph, RoPE) a warning."""
    arch = checked["arch"]
    if info.arch is not None and info.arch != arch:
        raise _err(
            info.path,
            f"the checkpoint is a module.arch={info.arch} model, this run is module.arch={arch}; resume with "
            f"variant={info.arch}, or start a fresh run (ckpt_path=null or a new hydra.run.dir)",
        )
    from halo_lab.config import HaloConfig

    defaults = HaloConfig(allow_full_window=True).to_dict()  # fields a config or checkpoint leaves out
    have = {**defaults, **info.model_config}
    want = {**defaults, **checked["model_config"]}
    if want.get("vocab_size") is None:  # follows the data: checked against the data in ResumeCheck
        want["vocab_size"] = have.get("vocab_size")
    diffs = [
        (k, have.get(k), v) for k, v in sorted(want.items()) if k not in _FREE_FIELDS and have.get(k) != v
    ]
    bad_shapes = _shape_mismatches(info, want, arch)
    named = ", ".join(f"model.{k}={_fmt(new)} (checkpoint: {_fmt(old)})" for k, old, new in diffs[:4])
    if len(diffs) > 4:
        named += f" and {len(diffs) - 4} more"
    if bad_shapes:
        what = named or "; ".join(bad_shapes[:2])
        raise _err(
            info.path,
            f"the checkpoint's model differs from this run's: {what}; resume with the checkpoint's model "
            "settings, or start a fresh run (ckpt_path=null or a new hydra.run.dir)",
        )
    if diffs:
        log.warning("ckpt_path=%s: resuming with a changed model: %s", info.path, named)


def _shape_mismatches(info: CheckpointInfo, model_config: dict[str, Any], arch: str) -> list[str]:
    """Tensors whose shape (or presence) differs between the checkpoint and the configured model, which
    is built on the meta device (no memory)."""
    import torch

    from halo_lab.model import build_model

    try:
        with torch.device("meta"):
            model = build_model(dict(model_config), arch=arch)
    except Exception as exc:  # the configured model is validated elsewhere; compare what we can
        log.debug("resume check: cannot build the configured model on the meta device: %s", exc)
        return []
    want = {f"model.{k}": tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: v for k, v in info.shapes.items() if k.startswith("model.")}
    out = []
    for k in sorted(set(want) | set(have)):
        if k not in have:
            out.append(f"{k} is missing in the checkpoint")
        elif k not in want:
            out.append(f"{k} is not in this run's model")
        elif want[k] != have[k]:
            out.append(f"{k}: checkpoint {list(have[k])}, this run {list(want[k])}")
    return out


# ---------------------------------------------------------------------------------------------- no-op
def nothing_to_train(info: CheckpointInfo, cfg: Any) -> bool:
    """True when the checkpoint already reached the run's end (``trainer.max_steps``, else ``max_epochs``)."""
    steps = int(cfg.trainer.get("max_steps", -1) or -1)
    epochs = cfg.trainer.get("max_epochs")
    if steps > 0:
        return info.global_step >= steps
    return epochs is not None and int(epochs) > 0 and info.epoch >= int(epochs)


def finished_metrics(run_dir: str | os.PathLike, info: CheckpointInfo) -> dict[str, Any] | None:
    """The run's metrics.json when it was written for the checkpoint's final step (the run finished),
    else None (killed during the final validation or export: those still have to run)."""
    p = Path(run_dir) / "metrics.json"
    try:
        m = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or m.get("status") != "ok" or int(m.get("steps") or -1) < info.global_step:
        return None
    return m


# ---------------------------------------------------------------------------------------------- data checks
def _describe_tok(d: dict[str, Any] | None) -> str:
    if not d:
        return "unknown"
    kind = d.get("type", "?")
    if kind == "word":
        return f"word ({len(d.get('vocab') or []) + 2} entries)"
    if kind == "tiktoken":
        return f"tiktoken {d.get('encoding', d.get('name', ''))}".strip()
    return str(kind)


class _ResumeCheck:
    """Once the data is prepared (``setup``, before the model is built or restored): the data's tokenizer
    and vocabulary against the checkpoint's, so a resume onto other data is one line, not a size-mismatch
    dump from ``load_state_dict``. (A Lightning callback: :func:`resume_check` makes it.)"""

    def __init__(self, info: CheckpointInfo):
        self.info = info

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage not in ("fit", "validate"):
            return
        dm = getattr(trainer, "datamodule", None)
        tok = getattr(dm, "tokenizer", None) if dm is not None else None
        saved = self.info.tokenizer
        if tok is not None and saved is not None and hasattr(tok, "to_dict"):
            now = tok.to_dict()
            if now != saved:
                raise _err(
                    self.info.path,
                    f"the checkpoint was trained with the {_describe_tok(saved)} tokenizer, this run's data "
                    f"gives the {_describe_tok(now)} tokenizer; resume with the same data.tokenizer and "
                    "data files, or start a fresh run (ckpt_path=null or a new hydra.run.dir)",
                )
        vocab = getattr(dm, "vocab_size", None) if dm is not None else None
        configured = pl_module.hparams.model_config.get("vocab_size")
        saved_vocab = self.info.model_config.get("vocab_size")
        if (
            configured is None
            and vocab is not None
            and saved_vocab is not None
            and int(vocab) != int(saved_vocab)
        ):
            raise _err(
                self.info.path,
                f"the checkpoint's model has vocab_size={saved_vocab}, this run's data gives {vocab} token ids "
                f"(model.vocab_size=null follows the data); resume with the same data, or "
                f"model.vocab_size={saved_vocab}",
            )


def resume_check(info: CheckpointInfo) -> Any:
    """The :class:`_ResumeCheck` callback for ``info`` (Lightning is imported only here)."""
    import lightning.pytorch as pl

    cls = type("ResumeCheck", (_ResumeCheck, pl.Callback), {})
    return cls(info)


# ---------------------------------------------------------------------------------------------- the plan
@dataclass
class ResumePlan:
    """What ``ckpt_path`` means for this run, decided before anything is built."""

    ckpt_path: str | None
    """The checkpoint to resume from (or, with ``train=False``, to validate and export); None: fresh."""
    info: CheckpointInfo | None
    """That checkpoint, read safely and checked against the configured model."""
    train: bool
    """False: validate and export only (``train=false``, or the checkpoint is at the run's end)."""
    finished: dict[str, Any] | None = None
    """The run had already ended (the checkpoint at its end, its metrics.json written): that summary,
    nothing left to do."""
    run_dir: str | None = None
    launch: int | None = None
    """This launch's number in ``<run_dir>/launches.jsonl`` (rank 0)."""

    @property
    def checkpoint_step(self) -> int | None:
        """The model's training steps when this process trains none (it validates a checkpoint)."""
        return self.info.global_step if self.info is not None and not self.train else None

    def callbacks(self) -> list[Any]:
        """The data checks of a resume (:class:`ResumeCheck`), once the data is prepared; the mark in
        launches.jsonl that this launch trained (its overrides are the run's from then on)."""
        out = [resume_check(self.info)] if self.info is not None else []
        if self.launch is not None and self.run_dir is not None:
            out.append(launch_trained(self.run_dir, self.launch))
        return out


def plan_resume(cfg: Any, checked: dict[str, Any], run_dir: str | os.PathLike) -> ResumePlan:
    """``ckpt_path`` resolved (:func:`resolve_ckpt_path`) and its checkpoint inspected
    (:func:`inspect_checkpoint`; ConfigError when it cannot be resumed here), a killed run's temp files in
    ``run_dir`` removed (rank 0), and whether anything is left to train."""
    from halo_lab.runner.checkpointing import clean_run_leftovers
    from halo_lab.runner.config import ConfigError
    from halo_lab.runner.ddp import global_rank

    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir)
    train = cfg.get("train", True)
    if not train and ckpt_path is None:
        raise ConfigError("train=false: needs ckpt_path (the checkpoint to validate and export)")
    info = inspect_checkpoint(ckpt_path, checked) if ckpt_path is not None else None
    if global_rank() == 0:
        clean_run_leftovers(run_dir, cfg.paths.ckpt_dir)  # temp files of a killed run in this directory
    launches = read_launches(run_dir) if global_rank() == 0 else []
    plan = ResumePlan(ckpt_path=ckpt_path, info=info, train=train, run_dir=str(run_dir))
    plan.launch = launches[-1]["launch"] if launches else None
    if train and info is not None and nothing_to_train(info, cfg):
        _at_the_end(plan, info, cfg, run_dir)
    return plan


def _at_the_end(plan: ResumePlan, info: CheckpointInfo, cfg: Any, run_dir: str | os.PathLike) -> None:
    """The checkpoint is at the run's end: nothing to do when metrics.json says the run finished, else
    (killed during the final validation or export) those still run."""
    plan.train = False
    plan.finished = finished_metrics(run_dir, info)
    if plan.finished is not None:
        from halo_lab.runner.lock import release

        release()  # nothing to do in the directory
        print(
            f"halo_lab.train: nothing to train: {plan.ckpt_path} is at step {info.global_step}, the end of this "
            f"run (trainer.max_steps={cfg.trainer.max_steps}); raise trainer.max_steps to train further "
            "(last.ckpt and metrics.json left as they are)",
            file=sys.stderr,
            flush=True,
        )
        return
    log.info(
        "ckpt_path: %s is at step %d, the end of this run: nothing to train; running the final "
        "validation and export that did not finish",
        plan.ckpt_path,
        info.global_step,
    )


# ---------------------------------------------------------------------------------------------- the run's config
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
