"""Save, load and share halo_lab models in the Hugging Face layout (config.json + model.safetensors).

* ``save_for_hub``: config.json (model_type "halo-s", architectures, every HaloConfig field, the
  halo_lab version, the tokenizer description), model.safetensors (tied tensors stored once) or
  pytorch_model.bin, and a short model card.
* ``load_from_hub``: a local directory, a single weights file or a Hub repo id (the reading itself is
  :mod:`halo_lab.checkpoint.weights`, which ``HaloSModel.from_pretrained`` uses too).
* ``push_to_hub``: create_repo + upload_folder. The token comes from the argument, HF_TOKEN or the
  stored login, and is never written to disk or logged. huggingface_hub is imported only for pushes and
  Hub repo ids.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from halo_lab.checkpoint import compat
from halo_lab.checkpoint.weights import (
    CONFIG_NAME,
    PT_WEIGHTS_NAME,
    SAFE_WEIGHTS_NAME,
    CheckpointMismatchError,
    _import_hub,
    _version,
    load_pretrained,
)
from halo_lab.config import HaloConfig
from halo_lab.hub import hf_files
from halo_lab.hub.errors import HubPushError, describe_hub_failure
from halo_lab.model import build_model

logger = logging.getLogger(__name__)

MODEL_CARD_NAME = "README.md"
MODEL_TYPE = "halo-s"
__all__ = [
    "CONFIG_NAME",
    "MODEL_CARD_NAME",
    "PT_WEIGHTS_NAME",
    "SAFE_WEIGHTS_NAME",
    "CheckpointMismatchError",
    "HubPushError",
    "describe_tokenizer",
    "load_from_hub",
    "push_to_hub",
    "save_for_hub",
    "unwrap_model",
    "upload_dir",
]


# ============================================================================================ save


def save_for_hub(
    model: torch.nn.Module,
    config: HaloConfig | dict | None,
    save_dir: str | os.PathLike,
    safe_serialization: bool = True,
    tokenizer: Any = None,
    *,
    repo_id: str | None = None,
    metrics: dict[str, Any] | None = None,
    datasets: list[str] | None = None,
) -> Path:
    """Write ``save_dir``/{config.json, model.safetensors or pytorch_model.bin, README.md, the transformers
    remote code, tokenizer files, generation_config.json} (see halo_lab.hub.hf_files); return the dir.
    Every file is a temp file renamed into place (:func:`halo_lab.hub.hf_files.write_file`): a symlink
    planted in ``save_dir`` is replaced, never written through.

    ``config`` defaults to ``model.config``; ``tokenizer`` (an object with ``to_dict()`` or that dict) to
    ``model.tokenizer``. ``repo_id`` only goes into the model card's usage snippet; ``metrics`` (a run's
    metrics.json) and ``datasets`` (names of the training data) into the card's metadata."""
    model = unwrap_model(model)
    if config is None:
        config = model.config
    config = HaloConfig.from_dict(config) if isinstance(config, dict) else config
    arch = getattr(model, "arch", None) or ("halo" if hasattr(model, "global_memory") else "dense")
    if arch not in compat.CLASS_BY_ARCH:
        raise ValueError(f"model.arch={arch!r}: expected one of {sorted(compat.CLASS_BY_ARCH)}")
    state = model.state_dict()
    _check_config_fits(state, config, arch)
    model_config = getattr(model, "config", None)
    if isinstance(model_config, HaloConfig) and model_config.to_dict() != config.to_dict():
        differ = [k for k, v in config.to_dict().items() if model_config.to_dict().get(k) != v]
        warnings.warn(
            f"save_for_hub: config differs from model.config in {differ}; saving the given config",
            stacklevel=2,
        )
    if tokenizer is None:
        tokenizer = getattr(model, "tokenizer", None)
    tok_desc = describe_tokenizer(tokenizer)

    out = Path(save_dir)
    out.mkdir(parents=True, exist_ok=True)
    first = next(iter(state.values()), None)
    dtype = str(first.dtype).removeprefix("torch.") if first is not None else "float32"
    cfg = {
        "model_type": MODEL_TYPE,
        "architectures": [compat.CLASS_BY_ARCH[arch]],
        "auto_map": hf_files.AUTO_MAP,
        "arch": arch,
        **config.to_dict(),
        "halo_lab_version": _version(),
        "torch_dtype": dtype,
    }
    stored_tok = hf_files.write_tokenizer_files(out, tok_desc, config.max_seq_len)
    if stored_tok is not None:
        cfg["tokenizer"] = stored_tok
    eos = _eos_id(tokenizer, tok_desc)
    if eos is not None:
        cfg["eos_token_id"] = eos
    hf_files.write_file(out / CONFIG_NAME, json.dumps(cfg, indent=2) + "\n")
    hf_files.write_remote_code(out)
    hf_files.write_generation_config(out, eos)

    if safe_serialization:
        from safetensors.torch import save_file

        tensors, aliases = _dedupe_shared(state)
        metadata = {
            "format": "pt",
            "halo_lab.arch": arch,
            "halo_lab.config": json.dumps(config.to_dict()),
            "halo_lab.tied": json.dumps(aliases),
        }
        hf_files.write_file(
            out / SAFE_WEIGHTS_NAME, writer=lambda tmp: save_file(tensors, tmp, metadata=metadata)
        )
        stale = out / PT_WEIGHTS_NAME
    else:
        cpu = {k: v.detach().cpu() for k, v in state.items()}
        hf_files.write_file(out / PT_WEIGHTS_NAME, writer=lambda tmp: torch.save(cpu, tmp))
        stale = out / SAFE_WEIGHTS_NAME
    # The loader prefers safetensors: an old file of the other format would win or confuse.
    stale.unlink(missing_ok=True)
    n_params = sum(p.numel() for p in model.parameters())
    card = _model_card(config, arch, n_params, tok_desc, repo_id, metrics, list(datasets or []))
    hf_files.write_file(out / MODEL_CARD_NAME, str(card))
    hf_files.follow_umask(out)
    logger.info("saved %s (%s parameters) to %s", compat.CLASS_BY_ARCH[arch], f"{n_params:,}", out)
    return out


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside torch.compile (``_orig_mod``) and DDP/DataParallel (``module``) wrappers."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        elif isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def describe_tokenizer(tokenizer: Any) -> dict | None:
    """The JSON-able description stored in config.json (``tokenizer.to_dict()``), or None."""
    if tokenizer is None:
        return None
    desc = tokenizer if isinstance(tokenizer, dict) else tokenizer.to_dict()
    try:
        json.dumps(desc)
    except TypeError as e:
        raise ValueError(f"tokenizer description is not JSON-serialisable: {e}") from e
    return desc


def _check_config_fits(state: dict[str, torch.Tensor], config: HaloConfig, arch: str) -> None:
    """Refuse to write a config.json that would not load back onto these weights."""
    inferred = compat.infer_from_shapes(state, config.num_heads)
    fields = ["vocab_size", "hidden_size", "num_layers", "use_swiglu", "num_kv_heads", "ffn_mult", "norm"]
    if arch == "halo":
        fields.append("num_globals")
    bad = {
        f: (getattr(config, f), inferred[f])
        for f in fields
        if f in inferred and inferred[f] != getattr(config, f)
    }
    if bad:
        detail = ", ".join(f"{f}: config {c!r} vs weights {w!r}" for f, (c, w) in bad.items())
        raise ValueError(f"save_for_hub: config does not match the model's weights ({detail})")


def _dedupe_shared(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses tensors that share memory: keep the first name of each tied group.

    Not ``safetensors.torch.save_model``: it keeps the alphabetically first name (``lm_head.weight``,
    dropping the embedding), which would change the files' layout (token_emb.weight stored, the
    ``halo_lab.tied`` metadata naming the alias) that earlier exports and tests/test_hub.py rely on.

    Returns (tensors to save, {dropped name: kept name}). Overlapping but different views are copied."""
    kept: dict[tuple, str] = {}
    by_storage: dict[int, list[str]] = {}
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, t in state.items():
        t = t.detach()
        if t.numel() == 0:
            tensors[name] = t.cpu().contiguous()
            continue
        view = (
            t.untyped_storage().data_ptr(),
            t.storage_offset(),
            tuple(t.shape),
            tuple(t.stride()),
            t.dtype,
        )
        if view in kept:
            aliases[name] = kept[view]
            continue
        kept[view] = name
        ptr = view[0]
        shares = ptr in by_storage
        by_storage.setdefault(ptr, []).append(name)
        t = t.cpu()
        tensors[name] = t.clone().contiguous() if shares else t.contiguous()
    return tensors, aliases


def _eos_id(tokenizer: Any, desc: dict | None) -> int | None:
    eos = (
        getattr(tokenizer, "eos_token_id", None)
        if tokenizer is not None and not isinstance(tokenizer, dict)
        else None
    )
    if eos is None and desc is not None:
        eos = {"char": 0, "word": 1}.get(desc.get("type"))
    return int(eos) if eos is not None else None


def _model_card(
    config: HaloConfig,
    arch: str,
    n_params: int,
    tok_desc: dict | None,
    repo_id: str | None,
    metrics: dict | None,
    datasets: list[str],
):
    cls = compat.CLASS_BY_ARCH[arch]
    kind = (
        f"HALO-S sparse-attention causal LM: {config.num_globals} global tokens, window {config.local_window}, "
        f"dilated distances {list(config.dilated_distances)}, {config.num_random} random edges "
        f"(K = {config.num_neighbors} keys per token)"
        if arch == "halo"
        else "dense causal Transformer baseline (the HALO-S comparison model)"
    )
    table = [
        ("layers / hidden / heads (kv)", f"{config.num_layers} / {config.hidden_size} / {config.num_heads} ({config.num_kv_heads})"),
        ("vocabulary", str(config.vocab_size)),
        ("max_seq_len (trained)", str(config.max_seq_len)),
        ("FFN", f"{'SwiGLU' if config.use_swiglu else 'GELU'} x{config.ffn_mult}"),
        ("tokenizer", (tok_desc or {}).get("type", "not saved") + (f" ({tok_desc['encoding']})" if tok_desc and tok_desc.get("encoding") else "")),
    ]  # fmt: skip
    if arch == "halo":
        table.insert(1, ("graph", f"G={config.num_globals}, W={config.local_window}, dilated {list(config.dilated_distances)}, R={config.num_random} ({config.random_edges}), seed {config.graph_seed}"))  # fmt: skip
    return hf_files.model_card(
        title=repo_id.split("/")[-1] if repo_id else cls,
        summary=f"{cls} ({n_params / 1e6:.2f}M parameters), a {kind}, saved with halo_lab {_version()}.",
        table=table,
        where=repo_id or "path/to/this/directory",
        tok_type=(tok_desc or {}).get("type"),
        metrics=metrics,
        datasets=datasets,
    )


# ============================================================================================ load


def load_from_hub(
    path_or_repo_id: str | os.PathLike,
    device: str | torch.device = "cpu",
    revision: str | None = None,
    token: str | bool | None = None,
    strict: bool = True,
    *,
    config: HaloConfig | dict | None = None,
    arch: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    dtype: torch.dtype | None = None,
) -> torch.nn.Module:
    """Load a HaloSModel or BaselineModel, in eval mode, with ``model.tokenizer`` set (None if unknown).

    ``path_or_repo_id``: a directory with config.json; a weights file; or a Hub repo id (then
    ``revision``, ``token``, ``cache_dir``, ``local_files_only`` go to ``hf_hub_download``).
    ``strict``: keys that do not match the model are an error naming them; with ``strict=False`` they
    are reported in a warning (missing ones keep their initial values). Wrong shapes are always an error.
    ``config``: a HaloConfig used as is, or a dict of fields that override the checkpoint's config
    (needed for raw state dicts that come without any config). ``arch``: "halo" or "dense", to override
    what config/keys say."""
    return load_pretrained(
        path_or_repo_id,
        build_model,
        device,
        revision,
        token,
        strict,
        config=config,
        arch=arch,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        dtype=dtype,
    )


# ============================================================================================ push


def push_to_hub(
    model: torch.nn.Module,
    config: HaloConfig | dict | None,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    revision: str | None = None,
    *,
    tokenizer: Any = None,
    safe_serialization: bool = True,
):
    """Save the model to a temporary directory and upload it (returns upload_folder's CommitInfo).

    Raises HubPushError (an OSError) with one line when the Hub cannot be reached or refuses."""
    with tempfile.TemporaryDirectory(prefix="halo_lab_push_") as tmp:
        save_for_hub(model, config, tmp, safe_serialization, tokenizer, repo_id=repo_id)
        try:
            return upload_dir(
                tmp, repo_id, token=token, private=private, commit_message=commit_message, revision=revision
            )
        except HubPushError as e:
            raise HubPushError(
                f"{e}. The model was not uploaded; to push it later, save it with save_for_hub(model, None, "
                f"DIR) and run: hf upload {repo_id} DIR"
            ) from None


def upload_dir(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    revision: str | None = None,
):
    """create_repo (exist_ok) + create_branch when ``revision`` is given + upload_folder.

    Raises HubPushError (an OSError) with one line when the Hub cannot be reached or refuses."""
    hub = _import_hub(f"pushing to the Hugging Face Hub repo '{repo_id}'")
    try:
        api = hub.HfApi(token=token)  # None: HF_TOKEN or the stored login, resolved by huggingface_hub
        api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id=repo_id, branch=revision, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=os.fspath(folder),
            commit_message=commit_message or f"Upload model with halo_lab {_version()}",
            revision=revision,
            repo_type="model",
        )
    except Exception as e:  # noqa: BLE001 - classified below; anything else propagates unchanged
        why = describe_hub_failure(e)
        if why is None:
            raise
        raise HubPushError(f"could not push to Hub repo '{repo_id}': {why}") from None
    logger.info("uploaded %s to Hub repo %s%s", folder, repo_id, f"@{revision}" if revision else "")
    return info
