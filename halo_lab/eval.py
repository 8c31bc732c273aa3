"""``python -m halo_lab.eval source=SOURCE [data=OPTION | file=PATH] [seq_len=N] [-m]``: evaluate a model.

SOURCE is a run directory, an export, a checkpoint / weights file or a Hub repo id (halo_lab.export's
``find_source`` and ``load_from_hub``); the text is a ``data=`` option's split or a whole ``file=``. The
model's own tokenizer encodes it. Printed and written to the run directory (``eval.json``):

* loss (mean cross-entropy per scored token, nats), perplexity = exp(loss), bits per token, and bits
  per byte (the scored targets' UTF-8 bytes; equal to bits per token for the byte-level tokenizer);
* loss by position: equal-width bins over positions 0..seq_len-1 (``loss_by_position.json`` + ``.png``):
  a model that uses its context has a falling curve;
* tokens/s of the forward passes.

Sums, never means of means (DESIGN.md pitfall 10): torchmetrics ``SumMetric`` of summed cross-entropy
and token counts, per position too. A Hydra app (conf/eval.yaml), so ``-m`` sweeps over checkpoints or
lengths; HALO-S runs at lengths beyond its trained ``max_seq_len`` (its graph does not depend on the
length), the dense baseline does not.

The command line (``main``): the app's config comes from conf/eval.yaml and only the groups its defaults
list names (``register_tool_config``: ``--help`` lists those, and ``device=`` is eval's own key, not the
runner's device group); a ``source=`` or ``file=`` path that Hydra's override grammar would reject (a
sweep job directory: ``.../module.arch=dense,seed=2``) is quoted for it (``quote_path_overrides``); a
mistake is one line ``halo_lab.eval: error: ...`` and exit status 2 (``run_hydra_tool``, which
halo_lab.bench uses too).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from halo_lab.runner.config import ConfigError, conf_dir, register_resolvers
from halo_lab.runner.tool_app import run_hydra_tool

log = logging.getLogger("halo_lab.eval")
CONF_DIR = str(conf_dir())
register_resolvers()
SPLITS = ("val", "test", "train")


def load_model(source: str, device: torch.device) -> tuple[torch.nn.Module, Any, str]:
    """(model in eval mode, its tokenizer or None, what was loaded) for a path or a Hub repo id."""
    from halo_lab.export import _run_dir_tokenizer, find_source
    from halo_lab.hub import load_from_hub
    from halo_lab.hub.errors import quiet_hub_retries
    from halo_lab.tokenizers import tokenizer_from_dict

    p = Path(source).expanduser()
    src: str | Path = find_source(p) if p.exists() else source  # not a local path: a Hub repo id
    with quiet_hub_retries() if isinstance(src, str) else contextlib.nullcontext():
        model = load_from_hub(src, device=device)
    tok = model.tokenizer
    if tok is None and isinstance(src, Path):
        desc = _run_dir_tokenizer(p if p.is_dir() else src)
        tok = tokenizer_from_dict(desc) if desc else None
    return model, tok, str(src)


def _fit_length(model: torch.nn.Module, seq_len: int) -> None:
    trained = model.config.max_seq_len
    if seq_len <= trained:
        return
    if getattr(model, "arch", "halo") != "halo":
        raise ConfigError(
            f"seq_len={seq_len}: exceeds the dense baseline's max_seq_len={trained} (it never attended over "
            "such distances); HALO-S models evaluate at any length"
        )
    log.info(
        "seq_len %d > trained max_seq_len %d: HALO-S's graph is length-independent, RoPE extends",
        seq_len,
        trained,
    )
    model.config.max_seq_len = seq_len  # the layers share this config object


def _file_data(cfg: DictConfig, tokenizer: Any, seq_len: int):
    """(loader, tokenizer, description) of ``file=`` evaluated whole."""
    from torch.utils.data import DataLoader

    from halo_lab.data import TextDataset

    f = Path(str(cfg.file)).expanduser()
    if f.is_dir():
        raise ConfigError(f"file={cfg.file}: a directory, not a text file")
    if not f.is_file():
        raise ConfigError(f"file={cfg.file}: no such file")
    try:
        ds = TextDataset(f, tokenizer, seq_len, cache_dir=Path(cfg.paths.data_dir) / "cache")
    except (OSError, ValueError) as e:  # unreadable, empty, binary, not UTF-8 (DataError is a ValueError)
        raise ConfigError(f"file={cfg.file}: {e}") from None
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=False), tokenizer, f"file {f}"


def build_data(cfg: DictConfig, tokenizer: Any, seq_len: int, vocab_size: int):
    """The evaluation DataLoader: ``file`` whole, else the data option's ``split``."""
    from halo_lab.data import HaloDataModule

    if cfg.split not in SPLITS:
        raise ConfigError(f"split={cfg.split!r}: must be one of {SPLITS}")
    if tokenizer is None:
        from halo_lab.tokenizers import build_tokenizer

        tokenizer = build_tokenizer(str(cfg.data.get("tokenizer", "char")))
        log.warning("the model has no saved tokenizer: using data.tokenizer=%s", tokenizer.type_name)
    if cfg.get("file"):
        return _file_data(cfg, tokenizer, seq_len)
    name = cfg.data.get("dataset")
    missing = sorted(k.removeprefix("data.") for k in OmegaConf.missing_keys(cfg.data))
    if missing:
        raise ConfigError(
            f"data={name} needs {', '.join(f'data.{k}' for k in missing)} (e.g. data.{missing[0]}=FILE), "
            "or evaluate on a file: file=FILE"
        )
    kw = OmegaConf.to_container(cfg.data, resolve=True)
    kw.pop("_target_", None)
    kw.update(seq_len=seq_len, batch_size=cfg.batch_size, eval_batch_size=cfg.batch_size)
    if kw.get("dataset") not in ("copy", "needle", "mqar"):
        kw["tokenizer"] = tokenizer.to_dict()
    try:
        dm = HaloDataModule(**kw)
        dm.prepare_data()
        dm.setup("fit" if cfg.split == "train" else ("test" if cfg.split == "test" else "validate"))
    except (OSError, ValueError, TypeError) as e:  # a missing or bad data.path, a bad data.* value
        what = f" data.path={kw['path']}" if kw.get("path") else ""
        raise ConfigError(f"data={name}{what}: {' '.join(str(e).split())}") from None
    if dm.vocab_size > vocab_size:
        raise ConfigError(f"data={kw.get('dataset')}: vocabulary {dm.vocab_size} > the model's {vocab_size}")
    loader = {"val": dm.val_dataloader, "test": dm.test_dataloader, "train": dm.train_dataloader}[cfg.split]()
    return loader, dm.tokenizer or tokenizer, f"data={kw.get('dataset')} ({cfg.split})"


class NothingToEvaluate(ValueError):
    """The loader gave no scored token (an empty split or file, or max_batches=0)."""


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    loader,
    tokenizer: Any = None,
    bins: int = 16,
    max_batches: int | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """The metrics of ``model`` over ``loader``'s (input_ids, targets, ...) batches (see the module doc)."""
    from torchmetrics import SumMetric

    device = torch.device(device)
    ce, count, nbytes = (SumMetric().to(device) for _ in range(3))
    pos_ce = pos_n = None
    seconds, seq_len, batches = 0.0, 0, 0
    byte_level = getattr(tokenizer, "type_name", None) == "char"
    for batch in loader:
        if max_batches is not None and batches >= max_batches:
            break
        x, y = (batch["input_ids"], batch["targets"]) if isinstance(batch, dict) else batch[:2]
        x, y = x.to(device), y.to(device)
        t0 = time.perf_counter()
        logits = model(x)[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - t0
        tok_ce = F.cross_entropy(logits.float().transpose(1, 2), y, ignore_index=-100, reduction="none")
        scored = (y != -100).to(tok_ce.dtype)
        if pos_ce is None:  # per-position sums ([T]; SumMetric reduces to a scalar)
            seq_len = x.shape[1]
            pos_ce, pos_n = torch.zeros(seq_len, device=device), torch.zeros(seq_len, device=device)
        if x.shape[1] == seq_len:  # a shorter last window would shift the position bins
            pos_ce += tok_ce.sum(0)
            pos_n += scored.sum(0)
        ce.update(tok_ce.sum())
        count.update(scored.sum())
        if tokenizer is not None and not byte_level:
            nbytes.update(sum(len(tokenizer.decode(row[row != -100].tolist()).encode()) for row in y.cpu()))
        batches += 1
    n = float(count.compute()) if batches else 0.0
    if n == 0:
        raise NothingToEvaluate(
            "no tokens to evaluate: the split or file is empty (or shorter than one sequence)"
        )
    loss = float(ce.compute()) / n
    total_bytes = n if byte_level else (float(nbytes.compute()) if nbytes.update_called else None)
    edges = [round(i * seq_len / bins) for i in range(bins + 1)] if seq_len else []
    pce, pn = pos_ce.cpu(), pos_n.cpu()
    by_pos = []
    for lo, hi in zip(edges, edges[1:]):
        if hi > lo:
            k = float(pn[lo:hi].sum())
            by_pos.append(
                {"start": lo, "end": hi, "tokens": int(k), "loss": float(pce[lo:hi].sum()) / k if k else None}
            )
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_token": loss / math.log(2),
        "bits_per_byte": float(ce.compute()) / math.log(2) / total_bytes if total_bytes else None,
        "tokens": int(n),
        "sequences_seq_len": seq_len,
        "batches": batches,
        "tokens_per_sec": n / seconds if seconds > 0 else None,
        "loss_by_position": by_pos,
    }


def source_name(source: str) -> str:
    """What a plot title calls the evaluated model: the run directory's name for a checkpoint in
    ``RUN/checkpoints/`` (``RUN (last.ckpt)``) or an export in ``RUN/hub``, the folder or file name of
    another local source, the repo id of a Hub model. A multirun job's numbered directory keeps its
    sweep's name (``2026-01-01_12-00-00/3``)."""
    p = Path(source)
    if not p.exists():
        return source  # a Hub repo id

    def run_name(d: Path) -> str:
        return f"{d.parent.name}/{d.name}" if d.name.isdigit() and d.parent.name else d.name

    if p.parent.name == "checkpoints":
        return f"{run_name(p.parent.parent)} ({p.name})"
    if p.name == "hub" and p.is_dir():
        return f"{run_name(p.parent)} (hub export)"
    return run_name(p)


def plot_loss_by_position(result: dict[str, Any], path: Path, title: str) -> Path:
    """Loss per position bin, in the project's plotting style (halo_lab.report.style); ``title`` names
    the model (``source_name``) and the data."""
    from halo_lab.report import style

    fig, axes = style.figure(1, width=5.6, height=3.6)
    ax = axes[0][0]
    pts = [b for b in result["loss_by_position"] if b["loss"] is not None]
    mids = [(b["start"] + b["end"] - 1) / 2 for b in pts]
    ax.plot(mids, [b["loss"] for b in pts], "o-", color="#1f77b4", lw=1.6, ms=4, label="loss of the bin")
    style.reference_line(ax, result["loss"], label=f"mean {style.number(result['loss'])}")
    trained = result.get("trained_max_seq_len")
    if trained and trained < result["sequences_seq_len"]:  # beyond here: longer than the model trained on
        style.reference_line(
            ax, trained, vertical=True, color="#d62728", ls="--", label=f"trained max_seq_len {trained}"
        )
    ax.set_xlim(*style.padded(0, result["sequences_seq_len"]))
    ax.set_xlabel("position in the sequence (bin centre, tokens)")
    ax.set_ylabel("loss (nats/token)")
    style.format_axis(ax)
    style.finish(ax)
    style.title(fig, title)
    style.legend(fig, axes.flat)
    return style.save(fig, path)


def run(cfg: DictConfig) -> dict[str, Any]:
    from halo_lab.generate import pick_device
    from halo_lab.hub.errors import describe_hub_failure

    if OmegaConf.is_missing(cfg, "source") or not cfg.source:
        raise ConfigError("source: the model to evaluate (source=RUN_DIR, EXPORT, CKPT file or owner/name)")
    for key, nullable in (("batch_size", False), ("bins", False), ("seq_len", True), ("max_batches", True)):
        value = cfg.get(key)
        if not (value is None and nullable) and (type(value) is not int or value < 1):
            raise ConfigError(
                f"{key}={value!r}: must be a positive integer" + (" or null" if nullable else "")
            )
    try:
        device = pick_device(str(cfg.get("device", "auto")))
    except ValueError as e:
        raise ConfigError(f"device={cfg.get('device')}: {e}") from None
    try:
        model, tokenizer, source = load_model(str(cfg.source), device)
    except Exception as e:  # noqa: BLE001 - a bad file or repo, or no network; anything else propagates
        why = describe_hub_failure(e)  # a transport error that huggingface_hub let through, or its answer
        if why is None and not isinstance(e, (OSError, ValueError, ImportError)):
            raise
        raise ConfigError(f"source={cfg.source}: {why or ' '.join(str(e).split())}") from None
    seq_len = int(cfg.seq_len or cfg.data.get("seq_len") or model.config.max_seq_len)
    trained = model.config.max_seq_len
    _fit_length(model, seq_len)
    loader, tokenizer, what = build_data(cfg, tokenizer, seq_len, model.config.vocab_size)
    try:
        result = evaluate(model, loader, tokenizer, cfg.bins, cfg.max_batches, device)
    except NothingToEvaluate as e:
        raise ConfigError(f"{what}, seq_len {seq_len}, max_batches={cfg.max_batches}: {e}") from None
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {"model": source, "data": what, "seq_len": seq_len, "trained_max_seq_len": trained, **result}
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "loss_by_position.json").write_text(
        json.dumps({"seq_len": seq_len, "bins": result["loss_by_position"]}, indent=2) + "\n"
    )
    plot_loss_by_position(
        result, out / "loss_by_position.png", f"{source_name(source)}: {what}, seq_len {seq_len}"
    )
    bpb = result["bits_per_byte"]
    print(
        f"{source} on {what}, seq_len {seq_len}: loss {result['loss']:.4f}, perplexity "
        f"{result['perplexity']:.3f}, bits/token {result['bits_per_token']:.4f}"
        + (f", bits/byte {bpb:.4f}" if bpb is not None else "")
        + f" | {result['tokens']:,} tokens, {result['tokens_per_sec'] or 0:,.0f} tokens/s | {out / 'eval.json'}"
    )
    return result


def _task(cfg: DictConfig) -> float | None:
    """One evaluation; a bad option is one line on stderr and exit code 2 (in a sweep, the job fails and
    ``run_hydra_tool`` reports it in one line)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return run(cfg)["loss"]
    except ConfigError as exc:
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        print(f"halo_lab.eval: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> float | None:
    """``python -m halo_lab.eval`` / ``halo-eval``."""
    return run_hydra_tool("halo_lab.eval", _task, "eval", path_keys=("source", "file"))


if __name__ == "__main__":
    main()
