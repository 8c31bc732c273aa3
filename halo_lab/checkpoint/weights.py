"""Reading saved halo_lab models: a hub directory, a weights file or a Hub repo id -> a model.

Formats: a directory with config.json; a single weights file (.safetensors, .pt, .pth, .bin, the runner's
Lightning .ckpt, the reference package's files); a Hugging Face Hub repo id. Torch files are always read
with ``weights_only=True``: loading never runs code from a checkpoint. huggingface_hub is imported only
for Hub repo ids (works with 1.x and 2.x), so local paths load without it. A path that does not exist
locally is treated as a repo id only when it has the form ``name`` or ``owner/name``; anything path-like
(``./x``, ``/x``, ``a/b/c``, ``x.pt``) fails locally with FileNotFoundError instead of going to the network.

Below the model on purpose: it imports no model class (the caller passes a builder), so
``HaloSModel.from_pretrained`` and ``halo_lab.hub.load_from_hub`` share it without an import cycle.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from halo_lab.checkpoint import compat
from halo_lab.checkpoint.integrity import verify_checksum
from halo_lab.config import HaloConfig

logger = logging.getLogger("halo_lab.hub")

CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
PT_WEIGHTS_NAME = "pytorch_model.bin"
HUB_INSTALL_HINT = "pip install 'huggingface_hub>=1.0'"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not fit the model its config describes."""


def _version() -> str:
    from halo_lab import __version__

    return __version__


@dataclass
class _Checkpoint:
    state_dict: dict[str, Any]
    config: dict[str, Any] | None
    source: str
    arch: str | None = None
    tokenizer: dict | None = None
    aliases: dict[str, str] = field(default_factory=dict)


def load_pretrained(
    path_or_repo_id: str | os.PathLike,
    builder: Callable[[HaloConfig, str], torch.nn.Module],
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
    """Load a saved model, in eval mode, with ``model.tokenizer`` set (None if unknown).

    ``builder(config, arch)`` makes the empty model (``halo_lab.model.build_model``): this module reads
    files and knows no model class, so the model can offer ``from_pretrained`` without an import cycle.

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
    return _build(ck, builder, device, strict, config, arch, dtype)


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
    return _with_config(ck, cfg, str(d), _beside(d))


def _beside(folder: Path):
    """``beside`` for a local model folder: a file it names must lie inside it (symlinks resolved)."""
    from halo_lab.tokenizers.base import file_in_folder

    return lambda name: file_in_folder(folder, name, "tokenizer.file", folder / CONFIG_NAME)


def _with_config(ck: _Checkpoint, cfg: dict[str, Any], source: str, beside=None) -> _Checkpoint:
    """Attach a config.json's contents (it describes the model better than a file's own metadata).
    ``beside(name)``: the path of a file next to config.json (a word vocabulary: ``{"file": ...}``); it
    refuses a name outside the model folder (an absolute path, a ``..`` or symlink that leads out)."""
    ck.config = cfg
    ck.source = source
    ck.tokenizer = cfg.get("tokenizer") if isinstance(cfg.get("tokenizer"), dict) else ck.tokenizer
    if beside is not None and isinstance(ck.tokenizer, dict) and "file" in ck.tokenizer:
        ck.tokenizer = _read_json(Path(beside(ck.tokenizer["file"])))
    ck.arch = None  # config.json's architectures (halo_lab) or the keys (reference) decide
    return ck


def _read_file(p: Path) -> _Checkpoint:
    ck = _read_weights(p)
    if ck.config is None and (p.parent / CONFIG_NAME).is_file():
        return _with_config(ck, _read_json(p.parent / CONFIG_NAME), str(p), _beside(p.parent))
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
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{p}: holds Python objects other than tensors and plain containers ({first}). halo_lab loads "
            "torch files only with weights_only=True, so no code from a checkpoint ever runs; re-save it "
            "with plain dicts (e.g. OmegaConf.to_container(cfg, resolve=True) for hyper-parameters)"
        ) from e
    except Exception as e:  # truncated zip, not a torch file, ...
        raise ValueError(f"{p}: cannot read it as a torch checkpoint ({type(e).__name__}: {e})") from e
    verify_checksum(obj, p)  # the runner's checkpoints carry one: a flipped bit is an error, not a model
    return obj


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
    errors = importlib.import_module("huggingface_hub.errors")  # every release >= the pinned 1.0
    names = (
        "RepositoryNotFoundError",
        "RevisionNotFoundError",
        "LocalEntryNotFoundError",
        "EntryNotFoundError",
        "OfflineModeIsEnabled",
    )
    return {n: getattr(errors, n) for n in names}


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
    try:
        from halo_lab.tokenizers.base import relative_name

        def beside(name: Any) -> str:  # a file of the same repo, never a path outside it
            return _hub_file(
                hub, repo_id, relative_name(name, "tokenizer.file", f"{source}/{CONFIG_NAME}"), kw
            )

        return _with_config(_read_weights(weights), cfg, source, beside)
    except _MissingOnHub as e:
        raise OSError(str(e)) from e


# ------------------------------------------------------------------------------------------ build


def _build(ck: _Checkpoint, builder, device, strict: bool, config, arch, dtype) -> torch.nn.Module:
    prep = compat.prepare(ck.state_dict, ck.config, arch=arch or ck.arch, overrides=config, source=ck.source)
    for note in prep.notes:
        logger.info("%s: %s", ck.source, note)
    model = builder(prep.config, prep.arch)
    sd = dict(prep.state_dict)

    if prep.reference_only:
        _drop_reference_only(sd, prep.reference_only, ck.source, strict)

    for alias, canonical in ck.aliases.items():
        if canonical in sd:
            sd.setdefault(alias, sd[canonical])
    _fill_tied(model, sd, ck.source)

    expected = model.state_dict()
    _check_shapes(sd, expected, ck.source, prep.config.vocab_size)
    _match_keys(sd, expected, ck.source, type(model).__name__, strict)
    model.load_state_dict(sd, strict=False)
    model.to(device)
    if dtype is not None:
        model.to(dtype)
    model.eval()
    model.tokenizer = _rebuild_tokenizer(ck.tokenizer, ck.source)
    return model


# The helpers below warn with stacklevel=4: the caller of _build's caller, as the warnings had when they
# were written in _build (stacklevel=3).


def _drop_reference_only(sd: dict[str, Any], reference_only: list[str], source: str, strict: bool) -> None:
    """The reference's separate global-token attention weights: an error when ``strict``, else dropped
    from ``sd`` with a warning."""
    layers = sorted({int(k.split(".")[1]) for k in reference_only})
    msg = (
        f"{source}: reference-package checkpoint with separate global-token attention "
        f"(layers.{{i}}.global_attn.*, {len(reference_only)} tensors in layers {layers}); halo_lab's "
        "HaloSModel runs global tokens through each layer's own attention, so these weights have no place"
    )
    if strict:
        raise CheckpointMismatchError(
            msg + ". Pass strict=False to drop them (logits then differ from the reference's for models "
            "with more than one layer)"
        )
    warnings.warn(msg + ": dropped", stacklevel=4)
    for k in reference_only:
        del sd[k]


def _check_shapes(sd: dict[str, Any], expected: dict[str, Any], source: str, vocab_size: int) -> None:
    """CheckpointMismatchError naming every tensor whose shape is not the model's (and the vocabularies
    when an embedding's rows differ)."""
    wrong = [k for k in sd if k in expected and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if not wrong:
        return
    lines = []
    for k in wrong:
        line = f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        if k in ("token_emb.weight", "lm_head.weight") and sd[k].shape[0] != expected[k].shape[0]:
            line += f" (vocabulary: checkpoint has {sd[k].shape[0]} tokens, config vocab_size={vocab_size})"
        lines.append(line)
    raise CheckpointMismatchError(f"{source}: tensor shapes do not match the model: " + "; ".join(lines))


def _match_keys(
    sd: dict[str, Any], expected: dict[str, Any], source: str, model_name: str, strict: bool
) -> None:
    """Keys of ``sd`` missing from the model or unknown to it: an error when ``strict``, else a warning
    and the unknown ones dropped from ``sd``."""
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if not (missing or unexpected):
        return
    msg = f"{source}: checkpoint keys do not match {model_name}: " + _key_report(missing, unexpected)
    if strict:
        raise CheckpointMismatchError(msg + ". Pass strict=False to load anyway")
    warnings.warn(msg + " (strict=False: missing ones keep their initial values)", stacklevel=4)
    for k in unexpected:
        del sd[k]


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
