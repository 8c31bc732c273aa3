"""Checkpoint compatibility: turn any supported state dict + config into (HaloConfig, arch, state dict).

Sources handled here (file I/O lives in halo_lab.hub):

* halo_lab's own exports (config.json written by ``save_for_hub``, the runner's Lightning ``.ckpt``);
* the reference package pyhalos (1.0.3 and 2.x; checked against 1.0.3 and 2.2.1): raw ``.pt`` state
  dicts, ``.safetensors`` files, its Trainer checkpoints (``model_state_dict`` + ``config``) and its
  HF-format directories (``config.json`` with ``halo_version``).

What the reference mapping does, and why:

* Key names are the same as ours (token_emb, global_memory, layers.{i}.{ln_1,attn,ln_2,ffn}, ln_f,
  lm_head; 1.x and 2.x share them). Wrapper prefixes are stripped: ``model.`` (Lightning),
  ``module.`` (DataParallel/DDP), ``_orig_mod.`` (torch.compile, also inside submodule names).
* ``layers.{i}.global_attn.*``: the reference runs the G global positions through a second attention
  module. halo_lab has none (globals use the layer's attention, over globals 0..g), so these weights
  cannot be used: strict loading refuses them, ``strict=False`` drops them with a warning. With one
  layer this changes nothing (global outputs are discarded before the head); with more layers the text
  tokens read globals that were computed differently, so logits differ from the reference's.
* GELU vs SwiGLU comes from the keys, not the config: ``ffn.w3`` in every layer means SwiGLU, in none
  means the 1.x GELU FFN (a 1.x config has no ``use_swiglu``; a 2.x default of True would be wrong).
* The reference dense baseline uses full multi-head attention: ``num_kv_heads`` is read from the
  ``k_proj`` shape (so it imports as num_kv_heads = num_heads).
* Graph fields are translated so the imported model keeps the reference's (causal) edges:
  its window is symmetric around the token and causality masks the future half, so a reference
  ``local_window`` W reaches W // 2 + 1 keys back (self included): we import ``local_window = W//2 + 1``.
  Its dilated offsets are absolute distances: ``dilation_rule = "absolute"`` (offsets inside the window
  duplicate window edges in both packages). Its random edges are a per-token hash that ignores the step:
  ``random_edges = "token"``; the drawn keys still differ from ours (different generator), so with
  ``num_random > 0`` logits match the reference only where the whole past is inside the window.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from halo_lab.config import HaloConfig

WRAPPER_PREFIXES = ("model.", "module.", "_orig_mod.")
# config.json keys that describe the file, not the model
META_KEYS = frozenset(
    {
        "model_type",
        "architectures",
        "arch",
        "halo_version",
        "halo_lab_version",
        "torch_dtype",
        "tokenizer",
        "transformers_version",
        # what the transformers side of an export adds (halo_lab.hub.hf_files)
        "auto_map",
        "eos_token_id",
        "dtype",
    }
)
# The class names config.json stores ("architectures"), a file-format table: compat sits below the model
# and cannot import it; tests/test_layout.py checks it names halo_lab.model.ARCHS's classes.
ARCH_BY_CLASS = {"HaloSModel": "halo", "BaselineModel": "dense"}
CLASS_BY_ARCH = {v: k for k, v in ARCH_BY_CLASS.items()}
# the reference's HaloConfig fields (use_swiglu since 2.0)
REFERENCE_FIELDS = frozenset(
    {
        "vocab_size",
        "hidden_size",
        "num_layers",
        "num_heads",
        "num_kv_heads",
        "num_globals",
        "local_window",
        "dilated_offsets",
        "num_random",
        "dropout",
        "max_seq_len",
        "use_swiglu",
    }
)
# fields the reference lacks: a config with none of them (and no halo_lab_version) is the reference's
HALO_LAB_ONLY_FIELDS = frozenset(f.name for f in dataclasses.fields(HaloConfig)) - REFERENCE_FIELDS
REFERENCE_DEFAULT_WINDOW = 64

_LAYER_KEY = re.compile(r"^layers\.(\d+)\.")
_GLOBAL_ATTN = re.compile(r"^layers\.\d+\.global_attn\.")
_W3 = re.compile(r"^layers\.(\d+)\.ffn\.w3\.weight$")


@dataclass
class Prepared:
    """A checkpoint made ready for ``load_state_dict`` on ``build_model(config, arch)``."""

    config: HaloConfig
    arch: str
    state_dict: dict[str, torch.Tensor]
    origin: str  # "halo_lab" or "reference"
    reference_only: list[str] = field(default_factory=list)  # keys halo_lab has no module for
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ keys


def strip_wrappers(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Remove Lightning / DDP / torch.compile prefixes.

    When some keys carry ``model.`` and others do not (a LightningModule with more than the model), only
    the ``model.`` ones are the model's."""
    sd = dict(state_dict)
    if any(k.startswith("model.") for k in sd) and not all(k.startswith("model.") for k in sd):
        inner = {k: v for k, v in sd.items() if k.startswith("model.")}
        if any(k.startswith(("model.token_emb.", "model._orig_mod.", "model.module.")) for k in inner):
            sd = inner
    changed = True
    while changed and sd:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                changed = True
    # torch.compile of a submodule wraps it as ._orig_mod: only its own keys carry the prefix
    return {k.replace("._orig_mod.", ".").replace("._orig_mod", ""): v for k, v in sd.items()}


def reference_only_keys(state_dict: dict[str, Any]) -> list[str]:
    return sorted(k for k in state_dict if _GLOBAL_ATTN.match(k))


def detect_swiglu(state_dict: dict[str, Any]) -> bool | None:
    """True if every layer has ffn.w3 (SwiGLU), False if none has (GELU), None without FFN keys."""
    layers = num_layers(state_dict)
    if not layers:
        return None
    with_w3 = {int(m.group(1)) for k in state_dict if (m := _W3.match(k))}
    if not with_w3:
        return False
    if len(with_w3) != layers:
        missing = sorted(set(range(layers)) - with_w3)
        raise ValueError(
            f"inconsistent FFN: layers {sorted(with_w3)} have ffn.w3.weight (SwiGLU) but layers {missing} "
            "do not (GELU); a checkpoint must use one FFN kind"
        )
    return True


def num_layers(state_dict: dict[str, Any]) -> int:
    ids = {int(m.group(1)) for k in state_dict if (m := _LAYER_KEY.match(k))}
    return max(ids) + 1 if ids else 0


def infer_from_shapes(state_dict: dict[str, Any], num_heads: int | None) -> dict[str, Any]:
    """Config fields that tensor shapes determine. ``num_heads`` is not one of them (q_proj is
    hidden x hidden whatever the head count); when given, num_kv_heads follows from k_proj."""
    sd = state_dict
    out: dict[str, Any] = {}
    if "token_emb.weight" in sd:
        out["vocab_size"], out["hidden_size"] = (int(s) for s in sd["token_emb.weight"].shape)
    elif "lm_head.weight" in sd:
        out["vocab_size"], out["hidden_size"] = (int(s) for s in sd["lm_head.weight"].shape)
    n = num_layers(sd)
    if n:
        out["num_layers"] = n
    out["num_globals"] = int(sd["global_memory"].shape[0]) if "global_memory" in sd else 0
    swiglu = detect_swiglu(sd)
    if swiglu is not None:
        out["use_swiglu"] = swiglu
    hidden = out.get("hidden_size")
    ffn_mult = _ffn_mult_from_shapes(sd, hidden)
    if ffn_mult is not None:
        out["ffn_mult"] = ffn_mult
    if "layers.0.ln_1.weight" in sd:
        out["norm"] = "layernorm" if "layers.0.ln_1.bias" in sd else "rmsnorm"
    if "token_emb.weight" in sd:
        out["tie_embeddings"] = "lm_head.weight" not in sd
    kv_heads = _kv_heads_from_shapes(sd, hidden, num_heads)
    if kv_heads is not None:
        out["num_kv_heads"] = kv_heads
    return out


def _ffn_mult_from_shapes(sd: dict[str, Any], hidden: int | None) -> int | None:
    """FFN inner width / hidden size, from layer 0's w1 (None: unknown or not a whole multiple)."""
    if hidden and "layers.0.ffn.w1.weight" in sd:
        inner = int(sd["layers.0.ffn.w1.weight"].shape[0])
        if inner % hidden == 0:
            return inner // hidden
    return None


def _kv_heads_from_shapes(sd: dict[str, Any], hidden: int | None, num_heads: int | None) -> int | None:
    """KV heads = k_proj rows / head_dim, from layer 0 (None: unknown or not a whole number)."""
    if num_heads and hidden and hidden % num_heads == 0 and "layers.0.attn.k_proj.weight" in sd:
        head_dim = hidden // num_heads
        rows = int(sd["layers.0.attn.k_proj.weight"].shape[0])
        if rows % head_dim == 0:
            return rows // head_dim
    return None


# ---------------------------------------------------------------------------------------- configs


def is_reference_config(d: dict[str, Any]) -> bool:
    if "halo_lab_version" in d:
        return False
    return "halo_version" in d or not (set(d) & HALO_LAB_ONLY_FIELDS)


def is_full_reference_config(d: dict[str, Any]) -> bool:
    """A caller's dict that is a whole reference config (``RefConfig.to_dict()``), not a few halo_lab fields."""
    return is_reference_config(d) and REFERENCE_FIELDS - {"use_swiglu"} <= set(d)


def translate_reference_config(d: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Reference config fields -> halo_lab fields with the same causal graph (see the module doc)."""
    out = dict(d)
    notes = []
    window = int(out.get("local_window", REFERENCE_DEFAULT_WINDOW))
    out["local_window"] = window // 2 + 1
    notes.append(
        f"reference local_window={window} (symmetric, future half masked) -> local_window={window // 2 + 1}"
    )
    out.setdefault("dilation_rule", "absolute")
    out.setdefault("random_edges", "token")
    return out, notes


def _arch_from(config_dict: dict[str, Any] | None) -> str | None:
    if not config_dict:
        return None
    if config_dict.get("arch") in CLASS_BY_ARCH:
        return config_dict["arch"]
    archs = config_dict.get("architectures") or []
    for name in archs:
        if name in ARCH_BY_CLASS:
            return ARCH_BY_CLASS[name]
    if archs:
        raise ValueError(f"config.json architectures={archs}: expected one of {sorted(ARCH_BY_CLASS)}")
    return None


def prepare(
    state_dict: dict[str, Any],
    config_dict: dict[str, Any] | None,
    *,
    arch: str | None = None,
    origin: str | None = None,
    overrides: dict[str, Any] | HaloConfig | None = None,
    source: str = "checkpoint",
) -> Prepared:
    """Normalise keys, work out the config and the architecture.

    ``config_dict``: the config found with the weights (config.json, hyper-parameters), or None.
    ``overrides``: a HaloConfig (used as is, halo_lab semantics) or a dict merged over ``config_dict``
    before any reference translation (so it is read in the source's terms). For a bare state dict the
    dict is the whole config: a complete reference config (all its fields, none of halo_lab's) is read
    as the reference's, anything else as halo_lab's.
    Raises ValueError when there is no way to know ``num_heads``."""
    sd = strip_wrappers(state_dict)
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{source}: state dict entries that are not tensors: {bad[:5]}")
    ref_keys = reference_only_keys(sd)
    raw = dict(config_dict or {})
    if origin is None:
        origin = _origin_of(ref_keys, raw, config_dict, overrides)
    notes: list[str] = []

    if arch is None:
        arch = (_arch_from(raw) if origin == "halo_lab" else None) or (
            "halo" if "global_memory" in sd else "dense"
        )
    if arch not in CLASS_BY_ARCH:
        raise ValueError(f"{source}: arch={arch!r}, expected one of {sorted(CLASS_BY_ARCH)}")

    if isinstance(overrides, HaloConfig):
        return Prepared(overrides, arch, sd, origin, ref_keys, ["config given by the caller"])

    cfg = {k: v for k, v in raw.items() if k not in META_KEYS}
    cfg.update(overrides or {})
    _require_num_heads(cfg, sd, source, have_config=bool(config_dict) or bool(overrides))
    inferred = infer_from_shapes(sd, int(cfg["num_heads"]))
    defaulted = [k for k in inferred if k not in cfg]
    for k in defaulted:  # shapes beat defaults for fields the config does not state
        cfg[k] = inferred[k]
    if defaulted:
        notes.append(f"fields read from tensor shapes: {defaulted}")

    if origin == "reference":
        cfg, more = _follow_reference_weights(cfg, raw, inferred, source)
        notes += more

    try:
        config = HaloConfig.from_dict(cfg)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: invalid model config: {e}") from e
    return Prepared(config, arch, sd, origin, ref_keys, notes)


def _origin_of(
    ref_keys: list[str],
    raw: dict[str, Any],
    config_dict: dict[str, Any] | None,
    overrides: dict[str, Any] | HaloConfig | None,
) -> str:
    """prepare's origin when not given: "reference" when the weights have reference-only keys, the
    config found with them is the reference's, or (for a bare state dict) the caller's dict is a whole
    reference config; else "halo_lab"."""
    from_caller = isinstance(overrides, dict) and not config_dict and is_full_reference_config(overrides)
    from_file = bool(config_dict) and is_reference_config(raw)
    return "reference" if ref_keys or from_file or from_caller else "halo_lab"


def _require_num_heads(cfg: dict[str, Any], sd: dict[str, Any], source: str, have_config: bool) -> None:
    """ValueError when ``cfg`` has no num_heads (tensor shapes cannot tell it)."""
    if not cfg.get("num_heads"):
        inferred = infer_from_shapes(sd, None)
        raise ValueError(
            f"{source}: no model config found (no config.json beside it, none inside it), and the number "
            f"of attention heads cannot be read from tensor shapes. Pass config=HaloConfig(...) or a dict "
            f"with at least num_heads (shapes give {inferred})"
            if not have_config
            else f"{source}: the config has no num_heads; pass config={{'num_heads': ...}}"
        )


def _follow_reference_weights(
    cfg: dict[str, Any], raw: dict[str, Any], inferred: dict[str, Any], source: str
) -> tuple[dict[str, Any], list[str]]:
    """A reference config made to agree with its weights (FFN kind, KV heads; a warning when the file's
    use_swiglu says otherwise), then translated to halo_lab fields: (config, notes)."""
    swiglu = inferred.get("use_swiglu")
    if swiglu is not None and "use_swiglu" in raw and bool(raw["use_swiglu"]) != swiglu:
        warnings.warn(
            f"{source}: config says use_swiglu={raw['use_swiglu']} but the weights are "
            f"{'SwiGLU (ffn.w3 present)' if swiglu else 'GELU (no ffn.w3)'}: following the weights",
            stacklevel=5,  # prepare's caller's caller, as when this was inline in prepare (stacklevel=4)
        )
    if swiglu is not None:
        cfg["use_swiglu"] = swiglu
    if "num_kv_heads" in inferred:  # the reference baseline is full MHA whatever its config says
        cfg["num_kv_heads"] = inferred["num_kv_heads"]
    return translate_reference_config(cfg)


# -------------------------------------------------------------------------- checkpoint containers


def _find(obj: Any, pred, depth: int = 4):
    """Depth-first search of nested dicts for a (key, value) satisfying pred."""
    if depth < 0 or not isinstance(obj, dict):
        return None
    for k, v in obj.items():
        if pred(k, v):
            return v
    for v in obj.values():
        hit = _find(v, pred, depth - 1)
        if hit is not None:
            return hit
    return None


def _looks_like_config(v: Any) -> bool:
    return isinstance(v, dict) and "hidden_size" in v and "num_layers" in v


def unpack_checkpoint(obj: Any, source: str) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    """(state_dict, config dict or None, extras) of a loaded .pt/.bin/.ckpt object.

    Understands a raw state dict, a Lightning checkpoint (state_dict + hyper_parameters, the model config
    under ``model_config`` or ``config``, ``arch``, optional ``tokenizer`` description), the reference
    Trainer's (model_state_dict + config + halo_version) and ``{"model": state_dict}``."""
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: expected a state dict or a checkpoint dict, got {type(obj).__name__}")
    extras: dict[str, Any] = {}
    if _is_state_dict(obj):
        return obj, None, extras
    sd = _weights_in(obj, source)
    hp = obj.get("hyper_parameters") or obj.get("hparams") or {}
    config = _config_in(obj, hp)
    arch = _find(hp, lambda k, v: k == "arch" and v in CLASS_BY_ARCH)
    if arch is not None:
        extras["arch"] = arch
    tok = _find(hp, lambda k, v: k == "tokenizer" and isinstance(v, dict) and "type" in v)
    if tok is not None:
        extras["tokenizer"] = tok
    if "halo_version" in obj:  # the reference Trainer's checkpoint
        extras["halo_version"] = obj["halo_version"]
        if config is not None:
            config.setdefault("halo_version", obj["halo_version"])
    if "pytorch-lightning_version" in obj:
        extras["lightning_version"] = obj["pytorch-lightning_version"]
    return sd, config, extras


def _is_state_dict(d: dict[str, Any]) -> bool:
    """A non-empty dict of tensors only."""
    return bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def _weights_in(obj: dict[str, Any], source: str) -> dict[str, Any]:
    """The state dict of a checkpoint dict: the first of its keys state_dict, model_state_dict, model that
    holds one."""
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj.get(key), dict) and _is_state_dict(obj[key]):
            return obj[key]
    raise ValueError(
        f"{source}: no model weights found (looked for a raw state dict and the keys state_dict, "
        f"model_state_dict, model; top-level keys are {sorted(map(str, obj))[:12]})"
    )


def _config_in(obj: dict[str, Any], hp: dict[str, Any]) -> dict[str, Any] | None:
    """A copy of the model config of a checkpoint dict: under model_config or config (or their "model") of
    the hyper-parameters, then of the checkpoint itself, then anywhere in the hyper-parameters."""
    for container in (hp, obj):
        config = _config_under(container)
        if config is not None:
            return config
    found = _find(hp, lambda k, v: _looks_like_config(v))
    return dict(found) if found is not None else None


def _config_under(container: dict[str, Any]) -> dict[str, Any] | None:
    """A copy of the config at ``container[key]`` or ``container[key]["model"]``, key model_config or config."""
    for key in ("model_config", "config"):
        if _looks_like_config(container.get(key)):
            return dict(container[key])
        if isinstance(container.get(key), dict) and _looks_like_config(container[key].get("model")):
            return dict(container[key]["model"])
    return None
