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
    """This launch's number in ``<run_dir>/launches.jsonl`` (rank 0; :mod:`halo_lab.runner.launches`)."""

    @property
    def checkpoint_step(self) -> int | None:
        """The model's training steps when this process trains none (it validates a checkpoint)."""
        return self.info.global_step if self.info is not None and not self.train else None

    def callbacks(self) -> list[Any]:
        """The data checks of a resume (:class:`ResumeCheck`), once the data is prepared; the mark in
        launches.jsonl that this launch trained (its overrides are the run's from then on)."""
        from halo_lab.runner.launches import launch_trained

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
    from halo_lab.runner.launches import read_launches

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
