"""After fit: the final model, ``metrics.json``, the hub export, the final sample, where things are.

:func:`finish_run` is the one call the entry point makes (rank 0); the functions below are its steps.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("halo_lab.train")


def finish_run(
    cfg: DictConfig, checked: dict[str, Any], trainer: Any, module: Any, datamodule: Any,
    val: dict[str, Any], train_loss: Any, plan: Any, t_start: float,
) -> dict[str, Any]:  # fmt: skip
    """Rank 0, after fit and validate: the final model and the attention backend it ran, metrics.json and
    the hub export, the final sample, the printed locations. ``val``: the final validation's metrics;
    ``train_loss``: the last one this process logged (None: read from history.jsonl); ``plan``: the run's
    :class:`~halo_lab.runner.resume.ResumePlan`. Returns the summary (with the sample)."""
    run_dir = Path(cfg.paths.output_dir)
    if train_loss is None and plan.info is not None:  # nothing trained in this process: the run's last
        train_loss = last_logged(run_dir / "history.jsonl", "train/loss", plan.info.global_step)
    val = {**val, "train/loss": float(train_loss) if train_loss is not None else None}
    model = final_model(trainer, module, cfg)
    backend = attention_backend_ran(
        model, trainer.strategy.root_device, cfg.data.get("seq_len"), getattr(module, "model", None)
    )
    result = write_metrics(
        cfg, checked, trainer, module, model, datamodule, val, plan.ckpt_path, t_start, backend,
        plan.checkpoint_step,
    )  # fmt: skip
    sample = final_sample(cfg, trainer.callbacks, module, model)
    if sample is not None:
        result["sample"] = sample
    print_locations(run_dir, result)
    from halo_lab.runner.lock import release

    release()  # the run is done with its directory
    return result


def final_model(trainer: Any, module: Any, cfg: DictConfig) -> Any:
    """The trained model for export and the final sample: the module's own, except under FSDP, where
    parameters are sharded across ranks and the consolidated last.ckpt is loaded instead."""
    from lightning.pytorch.strategies import FSDPStrategy

    from halo_lab.runner.module import HaloLitModule

    if not isinstance(trainer.strategy, FSDPStrategy):
        return module.model
    full = HaloLitModule.load_from_checkpoint(
        Path(cfg.paths.ckpt_dir) / "last.ckpt", map_location="cpu", weights_only=True
    )
    return full.model


def attention_backend_ran(model: Any, device: Any, seq_len: int | None, trained: Any = None) -> str:
    """The attention backend training ran: what the trained model's ``BackendRecord`` noted at the call (a
    fallback included; ``trained``: the module's own model when ``model`` is a rebuilt copy, as under
    FSDP), else (no training step in this process) what ``auto`` resolves to on ``device``."""
    import torch

    from halo_lab.model import HaloSModel
    from halo_lab.model.attention import resolve_backend

    if not isinstance(model, HaloSModel):
        return "dense"
    record = getattr(trained if trained is not None else model, "backend_record", None)
    ran = record.get("training") if record is not None else None
    if ran is not None:
        return ran
    length = None if seq_len is None else int(seq_len) + model.config.num_globals
    return resolve_backend(model.config, torch.device(device), length)


def write_metrics(
    cfg: DictConfig, checked: dict[str, Any], trainer: Any, module: Any, model: Any, datamodule: Any,
    val: dict[str, Any], ckpt_path: str | None, t_start: float, backend: str, steps: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """metrics.json (the final summary) and the hub/ export; returns the summary. ``steps``: the model's
    training steps when this process trained none (validating a checkpoint: the checkpoint's step)."""
    from halo_lab.runner.config import ablation_name
    from halo_lab.runner.progress import TokenThroughput
    from halo_lab.utils import atomic_write_text, count_parameters

    run_dir = Path(cfg.paths.output_dir)
    perf = next((c for c in trainer.callbacks if isinstance(c, TokenThroughput)), None)
    summary: dict[str, Any] = {
        "status": "ok",
        "val_loss": val.get("val/loss"),
        "val_ppl": val.get("val/ppl"),
        "val_bpt": val.get("val/bpt"),
    }
    if "val/acc" in val:
        summary["val_acc"] = val["val/acc"]
        summary["val_acc_by_distance"] = {
            str(k): v for k, v in sorted(val.get("val/acc_by_distance", {}).items())
        }
        for key in (
            "val/acc_control",
            "val/acc_first_query",
        ):  # needle / mqar controls (halo_lab.report.gate)
            if key in val:
                summary[key.replace("/", "_")] = val[key]
        buckets = getattr(getattr(datamodule, "val_dataset", None), "distance_buckets", None)
        if buckets is not None:  # mqar: the keys above are bucket edges, one accuracy per query
            summary["distance_buckets"] = [int(e) for e in buckets]
    summary.update(
        {
            "train_loss": val.get("train/loss"),
            "params": count_parameters(model),
            "steps": int(trainer.global_step) if steps is None else int(steps),
        }
    )
    summary.update(perf.summary(module.device) if perf else {"tokens_per_sec": None, "peak_mem_mb": None})
    summary.update(
        {
            "wall_time_s": time.time() - t_start,
            "arch": checked["arch"],
            "ablation": ablation_name(cfg),
            "task_name": cfg.task_name,
            "seed": cfg.seed,
            "seq_len": OmegaConf.select(cfg, "data.seq_len"),
            "batch_size": getattr(datamodule, "batch_size", None),
            "world_size": trainer.world_size,
            "device": checked["device"]["name"],
            "attention_backend": backend,
            "precision": str(trainer.precision),
            "resumed_from": ckpt_path,
            "model_config": dict(module.hparams.model_config),
            "run_dir": str(run_dir),
        }
    )
    if cfg.get("export_hub", True):
        from halo_lab.hub import save_for_hub

        hub_dir = run_dir / "hub"
        from halo_lab.hub.hf_files import dataset_names

        data = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") is not None else None
        save_for_hub(
            model, model.config, str(hub_dir), tokenizer=module.get_tokenizer(), metrics=summary,
            datasets=dataset_names(data),
        )  # fmt: skip
        summary["hub_dir"] = str(hub_dir)
    summary = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}
    atomic_write_text(run_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
    return summary


def final_sample(cfg: DictConfig, callbacks: list[Any], module: Any, model: Any) -> str | None:
    """The end-of-run sample (prompt: ``sample.prompt``, else the samples callback's), printed."""
    from halo_lab.runner.samples import SampleGeneration, generate_sample

    sample_cb = next((c for c in callbacks if isinstance(c, SampleGeneration)), None)
    prompt = sample_cb.get_prompt() if sample_cb else None
    if cfg.sample.get("prompt") is not None:
        prompt = cfg.sample.prompt
    tok = module.get_tokenizer()
    if prompt is None or tok is None or model is None:
        return None
    p, text = generate_sample(
        model,
        tok,
        prompt,
        max_new_tokens=cfg.sample.max_new_tokens,
        temperature=cfg.sample.temperature,
        top_k=cfg.sample.top_k,
        seed=cfg.seed,
    )
    print(f"\n--- sample (prompt | continuation) ---\n{p}|{text}\n---")
    return p + text


def print_locations(run_dir: Path, summary: dict[str, Any]) -> None:
    from halo_lab.runner.launches import resume_command

    def show(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = [
        "",
        f"run directory : {run_dir}",
        f"  config      : {run_dir / '.hydra' / 'config.yaml'}",
        f"  checkpoints : {run_dir / 'checkpoints'} (last.ckpt; resume: {resume_command(run_dir)} [trainer.max_steps=N to extend])",
        f"  metrics     : {run_dir / 'metrics.json'} (history: history.jsonl)",
    ]
    if summary.get("hub_dir"):
        lines.append(f"  hub export  : {summary['hub_dir']}")
    if (run_dir / "wandb").is_dir():
        lines.append(
            f"  W&B files   : {run_dir / 'wandb'} (offline runs: wandb sync {run_dir / 'wandb'}/offline-run-*)"
        )
    keys = (
        "val_loss",
        "val_ppl",
        "val_acc",
        "params",
        "steps",
        "tokens_per_sec",
        "peak_mem_mb",
        "wall_time_s",
    )
    lines.append(
        "result        : " + ", ".join(f"{k}={show(summary[k])}" for k in keys if summary.get(k) is not None)
    )
    print("\n".join(lines), flush=True)


def last_logged(history: Path, key: str, max_step: int | None = None) -> float | None:
    """The last value of ``key`` in a history.jsonl (at or before ``max_step``): the train loss of a run
    whose final steps were trained by an earlier process (a resume that only validates and exports)."""
    value = None
    try:
        with open(history, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut off by a kill
                if key in rec and (max_step is None or int(rec.get("step", 0)) <= max_step):
                    v = rec[key]
                    value = float(v) if isinstance(v, int | float) else value
    except OSError:
        return None
    return value
