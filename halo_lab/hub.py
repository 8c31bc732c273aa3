"""Save, load and share halo_lab models in the Hugging Face layout (config.json + model.safetensors).

* ``save_for_hub``: config.json (model_type "halo-s", architectures, every HaloConfig field, the
  halo_lab version, the tokenizer description), model.safetensors (tied tensors stored once) or
  pytorch_model.bin, and a short model card.
* ``load_from_hub``: a local directory, a single weights file (.safetensors, .pt, .pth, .bin, the
  runner's Lightning .ckpt, the reference package's files) or a Hub repo id. Torch files are always read
  with ``weights_only=True``: loading never runs code from a checkpoint.
* ``push_to_hub``: create_repo + upload_folder. The token comes from the argument, HF_TOKEN or the
  stored login, and is never written to disk or logged.

huggingface_hub is imported only for Hub repo ids and pushes (works with 1.x and 2.x), so local paths
load without it. A path that does not exist locally is treated as a repo id only when it has the form
``name`` or ``owner/name``; anything path-like (``./x``, ``/x``, ``a/b/c``, ``x.pt``) fails locally with
FileNotFoundError instead of going to the network.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from halo_lab import compat
from halo_lab.config import HaloConfig

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
PT_WEIGHTS_NAME = "pytorch_model.bin"
MODEL_CARD_NAME = "README.md"
MODEL_TYPE = "halo-s"
HUB_INSTALL_HINT = "pip install 'huggingface_hub>=1.0'"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not fit the model its config describes."""


def _version() -> str:
    from halo_lab import __version__

    return __version__


# ============================================================================================ save


def save_for_hub(
    model: torch.nn.Module,
    config: HaloConfig | dict | None,
    save_dir: str | os.PathLike,
    safe_serialization: bool = True,
    tokenizer: Any = None,
    *,
    repo_id: str | None = None,
) -> Path:
    """Write ``save_dir``/{config.json, model.safetensors or pytorch_model.bin, README.md}; return the dir.

    ``config`` defaults to ``model.config``; ``tokenizer`` (an object with ``to_dict()`` or that dict) to
    ``model.tokenizer``. ``repo_id`` only goes into the model card's usage snippet."""
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
        "arch": arch,
        **config.to_dict(),
        "halo_lab_version": _version(),
        "torch_dtype": dtype,
    }
    if tok_desc is not None:
        cfg["tokenizer"] = tok_desc
    (out / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")

    if safe_serialization:
        from safetensors.torch import save_file

        tensors, aliases = _dedupe_shared(state)
        metadata = {
            "format": "pt",
            "halo_lab.arch": arch,
            "halo_lab.config": json.dumps(config.to_dict()),
            "halo_lab.tied": json.dumps(aliases),
        }
        save_file(tensors, str(out / SAFE_WEIGHTS_NAME), metadata=metadata)
        stale = out / PT_WEIGHTS_NAME
    else:
        torch.save({k: v.detach().cpu() for k, v in state.items()}, out / PT_WEIGHTS_NAME)
        stale = out / SAFE_WEIGHTS_NAME
    if stale.exists():  # the loader prefers safetensors: an old file of the other format would win or confuse
        stale.unlink()
    n_params = sum(p.numel() for p in model.parameters())
    (out / MODEL_CARD_NAME).write_text(_model_card(config, arch, n_params, tok_desc, repo_id))
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


def _model_card(
    config: HaloConfig, arch: str, n_params: int, tok_desc: dict | None, repo_id: str | None
) -> str:
    cls = compat.CLASS_BY_ARCH[arch]
    where = repo_id or "path/to/this/directory"
    kind = (
        f"HALO-S sparse-attention causal LM: {config.num_globals} global tokens, window {config.local_window}, "
        f"dilated distances {list(config.dilated_distances)}, {config.num_random} random edges "
        f"(K = {config.num_neighbors} keys per token)"
        if arch == "halo"
        else "dense causal Transformer baseline (the HALO-S comparison model)"
    )
    tok = tok_desc.get("type", "custom") if tok_desc else None
    usage_gen = (
        'print(model.generate("To be, or not to be", tokenizer=model.tokenizer, max_new_tokens=50))'
        if tok
        else "# no tokenizer was saved: pass tokenizer=... to generate() for string prompts"
    )
    return f"""---
library_name: halo_lab
tags:
- halo-s
- sparse-attention
- text-generation
pipeline_tag: text-generation
---

# {repo_id.split("/")[-1] if repo_id else cls}

{cls} ({n_params / 1e6:.2f}M parameters), a {kind}, saved with halo_lab {_version()}.

| field | value |
|---|---|
| layers / hidden / heads (kv) | {config.num_layers} / {config.hidden_size} / {config.num_heads} ({config.num_kv_heads}) |
| vocabulary | {config.vocab_size} |
| max_seq_len | {config.max_seq_len} |
| FFN | {"SwiGLU" if config.use_swiglu else "GELU"} x{config.ffn_mult} |
| tokenizer | {tok or "not saved"} |

## Usage

```python
from halo_lab import load_from_hub

model = load_from_hub("{where}")  # weights only: no code is loaded from the repo
{usage_gen}
```

The architecture name HALO-S comes from the pyhalos reference package.
"""


# ============================================================================================ load


@dataclass
class _Checkpoint:
    state_dict: dict[str, Any]
    config: dict[str, Any] | None
    source: str
    arch: str | None = None
    tokenizer: dict | None = None
    aliases: dict[str, str] = field(default_factory=dict)


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
    src = os.fspath(path_or_repo_id)
    path = Path(src).expanduser()
    if path.is_dir():
        ck = _read_dir(path)
    elif path.is_file():
        ck = _read_file(path)
    elif _looks_like_repo_id(src):
        ck = _read_hub(src, revision, token, cache_dir, local_files_only)
    else:
        raise FileNotFoundError(
            f"No such file or directory: '{src}' (resolved to {path.absolute()}); it does not look like a "
            "Hugging Face Hub repo id ('name' or 'owner/name') either"
        )
    return _build(ck, device, strict, config, arch, dtype)


def _looks_like_repo_id(s: str) -> bool:
    return bool(_REPO_ID.match(s)) and not s.endswith((".safetensors", *_TORCH_SUFFIXES, ".json"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


def _read_dir(d: Path) -> _Checkpoint:
    cfg_path = d / CONFIG_NAME
    if not cfg_path.is_file():
        hint = ""
        if (d / "hub" / CONFIG_NAME).is_file():
            hint = f" It looks like a halo_lab run directory: load {d / 'hub'} instead."
        elif (d / "checkpoints").is_dir():
            hint = f" It looks like a halo_lab run directory: `python -m halo_lab.export {d} OUT_DIR` exports it."
        files = sorted(p.name for p in d.iterdir())[:10]
        raise FileNotFoundError(
            f"{d} has no {CONFIG_NAME}, so it is not a saved model directory (files: {files}).{hint}"
        )
    cfg = _read_json(cfg_path)
    for name in (SAFE_WEIGHTS_NAME, PT_WEIGHTS_NAME):
        if (d / name).is_file():
            ck = _read_weights(d / name)
            break
    else:
        sharded = (
            " (sharded checkpoints are not supported)"
            if (d / f"{SAFE_WEIGHTS_NAME}.index.json").exists()
            else ""
        )
        raise FileNotFoundError(
            f"{d} has {CONFIG_NAME} but neither {SAFE_WEIGHTS_NAME} nor {PT_WEIGHTS_NAME}{sharded}"
        )
    return _with_config(ck, cfg, str(d))


def _with_config(ck: _Checkpoint, cfg: dict[str, Any], source: str) -> _Checkpoint:
    """Attach a config.json's contents (it describes the model better than a file's own metadata)."""
    ck.config = cfg
    ck.source = source
    ck.tokenizer = cfg.get("tokenizer") if isinstance(cfg.get("tokenizer"), dict) else ck.tokenizer
    ck.arch = None  # config.json's architectures (halo_lab) or the keys (reference) decide
    return ck


def _read_file(p: Path) -> _Checkpoint:
    ck = _read_weights(p)
    if ck.config is None and (p.parent / CONFIG_NAME).is_file():
        return _with_config(ck, _read_json(p.parent / CONFIG_NAME), str(p))
    return ck


def _read_weights(p: Path) -> _Checkpoint:
    if p.suffix == ".safetensors":
        sd, meta = _load_safetensors(p)
        cfg = json.loads(meta["halo_lab.config"]) if "halo_lab.config" in meta else None
        aliases = json.loads(meta.get("halo_lab.tied", "{}"))
        return _Checkpoint(sd, cfg, str(p), meta.get("halo_lab.arch"), None, aliases)
    obj = _torch_load(p)
    sd, cfg, extras = compat.unpack_checkpoint(obj, str(p))
    return _Checkpoint(sd, cfg, str(p), extras.get("arch"), extras.get("tokenizer"))


def _load_safetensors(p: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except Exception as e:  # SafetensorError (header, truncation) and OSError
        raise ValueError(
            f"{p}: corrupted or truncated safetensors file ({e}); re-download or re-export it"
        ) from e


def _torch_load(p: Path) -> Any:
    import pickle

    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{p}: holds Python objects other than tensors and plain containers ({first}). halo_lab loads "
            "torch files only with weights_only=True, so no code from a checkpoint ever runs; re-save it "
            "with plain dicts (e.g. OmegaConf.to_container(cfg, resolve=True) for hyper-parameters)"
        ) from e
    except Exception as e:  # truncated zip, not a torch file, ...
        raise ValueError(f"{p}: cannot read it as a torch checkpoint ({type(e).__name__}: {e})") from e


# -------------------------------------------------------------------------------------------- Hub


def _import_hub(what: str):
    try:
        import huggingface_hub
    except ImportError as e:
        raise ImportError(
            f"{what} needs the huggingface_hub package: {HUB_INSTALL_HINT} "
            "(local directories and files load without it)"
        ) from e
    return huggingface_hub


def _hub_errors() -> dict[str, type]:
    try:  # huggingface_hub >= 0.20 (1.x, 2.x)
        errors = importlib.import_module("huggingface_hub.errors")
    except ImportError:  # pragma: no cover - older releases kept them in utils
        errors = importlib.import_module("huggingface_hub.utils")
    names = (
        "RepositoryNotFoundError",
        "RevisionNotFoundError",
        "LocalEntryNotFoundError",
        "EntryNotFoundError",
        "OfflineModeIsEnabled",
    )
    return {n: getattr(errors, n, None) or type(n, (Exception,), {}) for n in names}


def _offline() -> bool:
    constants = importlib.import_module("huggingface_hub.constants")
    return bool(
        constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE
    )


class _MissingOnHub(Exception):
    pass


def _hub_file(hub, repo_id: str, filename: str, kw: dict[str, Any]) -> str:
    err = _hub_errors()
    try:
        return hub.hf_hub_download(repo_id=repo_id, filename=filename, **kw)
    except err["RepositoryNotFoundError"] as e:
        raise OSError(
            f"'{repo_id}' is not a local file or directory, and the Hugging Face Hub has no repo '{repo_id}' "
            "that you can access (private or gated repos need token= or `hf auth login`)"
        ) from e
    except err["RevisionNotFoundError"] as e:
        raise OSError(f"Hub repo '{repo_id}' has no revision '{kw.get('revision')}'") from e
    except (err["LocalEntryNotFoundError"], err["OfflineModeIsEnabled"]) as e:
        why = (
            "HF_HUB_OFFLINE=1 is set"
            if _offline()
            else ("local_files_only=True" if kw.get("local_files_only") else "the Hub could not be reached")
        )
        cache = f" ({kw['cache_dir']})" if kw.get("cache_dir") else ""
        raise _MissingOnHub(
            f"cannot load '{repo_id}': it is not a local file or directory, its {filename} is not in the local "
            f"Hub cache{cache}, and {why}. Check the path, or go online (unset HF_HUB_OFFLINE) to download it"
        ) from e
    except err["EntryNotFoundError"] as e:
        raise _MissingOnHub(f"Hub repo '{repo_id}' has no file {filename}") from e


def _read_hub(repo_id, revision, token, cache_dir, local_files_only) -> _Checkpoint:
    hub = _import_hub(f"'{repo_id}' is not a local path; loading it from the Hugging Face Hub")
    logger.info("'%s' is not a local path: fetching it from the Hugging Face Hub", repo_id)
    kw = {
        "revision": revision,
        "token": token,
        "cache_dir": os.fspath(cache_dir) if cache_dir is not None else None,
        "local_files_only": local_files_only,
        "library_name": "halo_lab",
        "library_version": _version(),
    }
    try:
        cfg = _read_json(Path(_hub_file(hub, repo_id, CONFIG_NAME, kw)))
    except _MissingOnHub as e:
        raise OSError(str(e)) from e
    problems = []
    for name in (SAFE_WEIGHTS_NAME, PT_WEIGHTS_NAME):
        try:
            weights = Path(_hub_file(hub, repo_id, name, kw))
            break
        except _MissingOnHub as e:
            problems.append(str(e))
    else:
        raise OSError("; ".join(problems))
    source = f"{repo_id}@{revision}" if revision else repo_id
    return _with_config(_read_weights(weights), cfg, source)


# ------------------------------------------------------------------------------------------ build


def _build(ck: _Checkpoint, device, strict: bool, config, arch, dtype) -> torch.nn.Module:
    from halo_lab.model import build_model

    prep = compat.prepare(ck.state_dict, ck.config, arch=arch or ck.arch, overrides=config, source=ck.source)
    for note in prep.notes:
        logger.info("%s: %s", ck.source, note)
    model = build_model(prep.config, prep.arch)
    sd = dict(prep.state_dict)

    if prep.reference_only:
        layers = sorted({int(k.split(".")[1]) for k in prep.reference_only})
        msg = (
            f"{ck.source}: reference-package checkpoint with separate global-token attention "
            f"(layers.{{i}}.global_attn.*, {len(prep.reference_only)} tensors in layers {layers}); halo_lab's "
            "HaloSModel runs global tokens through each layer's own attention, so these weights have no place"
        )
        if strict:
            raise CheckpointMismatchError(
                msg + ". Pass strict=False to drop them (logits then differ from the reference's for models "
                "with more than one layer)"
            )
        warnings.warn(msg + ": dropped", stacklevel=3)
        for k in prep.reference_only:
            del sd[k]

    for alias, canonical in ck.aliases.items():
        if canonical in sd:
            sd.setdefault(alias, sd[canonical])
    _fill_tied(model, sd, ck.source)

    expected = model.state_dict()
    wrong = [k for k in sd if k in expected and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if wrong:
        lines = []
        for k in wrong:
            line = f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
            if k in ("token_emb.weight", "lm_head.weight") and sd[k].shape[0] != expected[k].shape[0]:
                line += f" (vocabulary: checkpoint has {sd[k].shape[0]} tokens, config vocab_size={prep.config.vocab_size})"
            lines.append(line)
        raise CheckpointMismatchError(
            f"{ck.source}: tensor shapes do not match the model: " + "; ".join(lines)
        )

    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        msg = f"{ck.source}: checkpoint keys do not match {type(model).__name__}: " + _key_report(
            missing, unexpected
        )
        if strict:
            raise CheckpointMismatchError(msg + ". Pass strict=False to load anyway")
        warnings.warn(msg + " (strict=False: missing ones keep their initial values)", stacklevel=3)
        for k in unexpected:
            del sd[k]
    model.load_state_dict(sd, strict=False)
    model.to(device)
    if dtype is not None:
        model.to(dtype)
    model.eval()
    model.tokenizer = _rebuild_tokenizer(ck.tokenizer, ck.source)
    return model


def _key_report(missing: list[str], unexpected: list[str], limit: int = 12) -> str:
    def show(keys):
        return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")

    parts = []
    if missing:
        parts.append(f"missing {show(missing)}")
    if unexpected:
        parts.append(f"unexpected {show(unexpected)}")
    if any(k.endswith("ffn.w3.weight") for k in missing + unexpected):
        parts.append("(ffn.w3 is the SwiGLU gate: check use_swiglu)")
    return "; ".join(parts)


def _fill_tied(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Parameters the model shares (tie_embeddings) need only one copy in the checkpoint."""
    groups: dict[tuple, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if t.numel():
            groups.setdefault((t.data_ptr(), tuple(t.shape)), []).append(name)
    for names in groups.values():
        present = [n for n in names if n in sd]
        if len(names) < 2 or not present:
            continue
        first = sd[present[0]]
        for n in present[1:]:
            if not torch.equal(sd[n], first):
                raise CheckpointMismatchError(
                    f"{source}: {present[0]} and {n} are one tensor in this model (tie_embeddings=True) but "
                    "differ in the checkpoint; load it with config={'tie_embeddings': False}"
                )
        for n in names:
            sd.setdefault(n, first)


def _rebuild_tokenizer(desc: dict | None, source: str):
    if not desc:
        return None
    try:
        from halo_lab.tokenizers import tokenizer_from_dict
    except ImportError as e:
        warnings.warn(
            f"{source}: tokenizer not rebuilt, halo_lab.tokenizers is unavailable ({e})", stacklevel=4
        )
        return None
    try:
        return tokenizer_from_dict(desc)
    except Exception as e:  # an unknown type or a missing optional dependency must not block the weights
        warnings.warn(
            f"{source}: tokenizer {desc.get('type')!r} not rebuilt ({type(e).__name__}: {e}); model.tokenizer "
            "is None, pass tokenizer= to generate()",
            stacklevel=4,
        )
        return None


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
    """Save the model to a temporary directory and upload it (returns upload_folder's CommitInfo)."""
    with tempfile.TemporaryDirectory(prefix="halo_lab_push_") as tmp:
        save_for_hub(model, config, tmp, safe_serialization, tokenizer, repo_id=repo_id)
        return upload_dir(
            tmp, repo_id, token=token, private=private, commit_message=commit_message, revision=revision
        )


def upload_dir(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    revision: str | None = None,
):
    """create_repo (exist_ok) + create_branch when ``revision`` is given + upload_folder."""
    hub = _import_hub(f"pushing to the Hugging Face Hub repo '{repo_id}'")
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
    logger.info("uploaded %s to Hub repo %s%s", folder, repo_id, f"@{revision}" if revision else "")
    return info
