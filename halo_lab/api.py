"""Functions the reference package's API has and the model classes do not: graph statistics, a memory
estimate, and a free ``generate(model, ids, ...)``.

* :func:`estimate_graph_stats`: edges per token, coverage (direct edges / causal pairs), the receptive
  field of the last token through 1, 2, ... layers (the eval graph: each layer has its own random edges), and
  the memory of the index table against a dense mask.
* :func:`estimate_memory`: parameters + KV cache + activations for a batch and length (+ gradients and
  AdamW state when training), from the config alone (halo_lab.device.batch's memory model).
* :func:`generate`: ``model.generate`` with the reference's argument names (``top_k``/``top_p`` None =
  off); beyond ``max_seq_len`` it keeps going on the last ``max_seq_len`` tokens, as the reference does.

Not ``halo_lab.generate``: that name is the ``python -m halo_lab.generate`` command's module.
"""

from __future__ import annotations

from typing import Any

import torch

from halo_lab import graph
from halo_lab.config import HaloConfig
from halo_lab.graph import selection

MB = 2**20


def _config_arch(model_or_config: Any, arch: str | None) -> tuple[HaloConfig, str]:
    if isinstance(model_or_config, HaloConfig):
        return model_or_config, arch or "halo"
    if isinstance(model_or_config, dict):
        return HaloConfig.from_dict(model_or_config), arch or "halo"
    config = getattr(model_or_config, "config", None)
    if not isinstance(config, HaloConfig):
        raise TypeError(
            f"expected a HaloConfig, a config dict or a halo_lab model, got {type(model_or_config).__name__}"
        )
    return config, arch or getattr(model_or_config, "arch", "halo")


def estimate_graph_stats(
    model_or_config: Any, seq_len: int | None = None, *, arch: str | None = None, step: int = graph.EVAL_STEP
) -> dict[str, Any]:
    """Statistics of the attention graph over ``seq_len`` text tokens (default ``max_seq_len``).

    ``edges_per_token``: mean distinct keys per text token (globals included); ``max_edges_per_token``:
    the most any token has (K once the past is long enough). ``coverage``: direct edges / causal text
    pairs (1 for dense). ``receptive_field_by_layer[l]``: the share of the last token's past (itself
    included) that reaches its output through l + 1 layers (the model's last l + 1). ``index_mb`` / ``dense_mask_mb``: the int64 key table
    against an L x L boolean mask."""
    c, arch = _config_arch(model_or_config, arch)
    n = int(seq_len or c.max_seq_len)
    if n < 1:
        raise ValueError(f"seq_len={seq_len}: must be >= 1")
    pairs = n * (n + 1) // 2
    if arch == "dense":
        return {
            "seq_len": n, "arch": arch, "num_neighbors": n, "edges_per_token": (n + 1) / 2,
            "max_edges_per_token": n, "total_edges": pairs, "dense_edges": pairs, "coverage": 1.0,
            "receptive_field_by_layer": [1.0] * c.num_layers, "index_mb": 0.0, "dense_mask_mb": n * n / MB,
        }  # fmt: skip
    G = c.num_globals
    tables = [graph.full_neighbor_index(c, layer, step, n, "cpu") for layer in range(c.num_layers)]
    text = tables[0][G:]
    positions = torch.arange(n)
    chosen = selection.keys_per_query(c, positions)  # content-selected keys: an upper bound, see there
    summaries = selection.summaries_per_query(c, positions) if c.select_summary_keys else 0 * chosen
    per_token = (text >= 0).sum(1) + chosen
    # text keys only: what coverage compares with causal pairs (the summaries are not text positions)
    text_edges = (text[:, G:] >= 0).sum() + (chosen - summaries).sum()
    # every token of a candidate block can be chosen: the reach through selection (where the input sends
    # it) covers text positions 0 .. c_i * b - 1 of a query i
    reachable = selection.candidate_blocks(c, positions) * c.select_block_size if c.selects else None
    reach = torch.zeros(G + n, dtype=torch.bool)
    reach[G + n - 1] = True
    field = []
    for idx in reversed(tables):  # the last layer reads layer l-1's outputs at its keys, and so on down
        keys = idx[reach]
        far = int(reachable[reach[G:]].max()) if reachable is not None and reach[G:].any() else 0
        reach = reach.clone()
        reach[keys[keys >= 0]] = True
        reach[G : G + far] = True
        field.append(float(reach[G:].sum()) / n)
    return {
        "seq_len": n,
        "arch": arch,
        "num_neighbors": c.num_neighbors,
        "selected_keys_per_token": float(chosen.float().mean()),
        "edges_per_token": float(per_token.float().mean()),
        "max_edges_per_token": int(per_token.max()),
        "total_edges": int((text >= 0).sum()),
        "dense_edges": pairs,
        "coverage": float(text_edges) / pairs,
        "receptive_field_by_layer": field,
        "index_mb": text.numel() * 8 / MB,
        "dense_mask_mb": (G + n) ** 2 / MB,
    }


def estimate_memory(
    model_or_config: Any,
    batch_size: int = 1,
    seq_len: int | None = None,
    *,
    arch: str | None = None,
    precision: str = "32-true",
    training: bool = False,
) -> dict[str, float]:
    """Memory in MB of ``batch_size`` sequences of ``seq_len`` tokens (default ``max_seq_len``).

    ``parameters_mb`` (weights), ``kv_cache_mb`` (K and V of every layer for the whole sequence, globals
    included: what generation keeps), ``activations_mb`` (inference: one layer's working set + the
    logits; training: everything kept for the backward pass, halo_lab.device.batch's model), and when
    ``training`` also ``gradients_mb`` + ``optimizer_mb`` (AdamW's two moments); ``total_mb`` sums them."""
    from halo_lab.device.batch import _precision_bytes, estimate_num_parameters, estimate_training_memory

    c, arch = _config_arch(model_or_config, arch)
    n = int(seq_len or c.max_seq_len)
    act = 2 if precision.startswith(("16", "bf16")) else (8 if precision.startswith("64") else 4)
    if isinstance(model_or_config, torch.nn.Module):
        n_params = sum(p.numel() for p in model_or_config.parameters())
    else:
        n_params = estimate_num_parameters(c, arch)
    weight_bytes = act if precision.endswith("-true") else 4
    t = n + (c.num_globals if arch == "halo" else 0)
    kv = c.num_kv_heads * c.head_dim
    out = {
        "parameters_mb": n_params * weight_bytes / MB,
        "kv_cache_mb": batch_size * t * kv * 2 * c.num_layers * act / MB,
    }
    if training:
        est = estimate_training_memory(c, n, batch_size, arch, precision)
        per_param = _precision_bytes(precision)[0]
        out["activations_mb"] = batch_size * est["per_sample"] / MB
        out["gradients_mb"] = n_params * weight_bytes / MB
        out["optimizer_mb"] = n_params * (per_param - 2 * weight_bytes) / MB  # moments (+ mixed's copies)
        out["kv_cache_mb"] = 0.0  # no cache in a training step (K and V are part of the activations)
    else:
        h, inner = c.hidden_size, c.ffn_mult * c.hidden_size
        keys = min(c.num_neighbors, t) if arch == "halo" else t
        layer = t * (4 * h + 2 * kv + (3 if c.use_swiglu else 2) * inner) + c.num_heads * t * keys * 4 / act
        out["activations_mb"] = batch_size * (layer + n * c.vocab_size * 4 / act) * act / MB
    out["total_mb"] = sum(out.values())
    out["total_estimated_mb"] = out["total_mb"]  # the reference's key
    return out


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int = 100,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    *,
    stop_token: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample ``max_new_tokens`` after ``input_ids`` ([T] or [B, T]; the prompt is included in the
    result). temperature 0 is greedy. Within ``max_seq_len`` this is ``halo_lab.generation.generate`` (KV cache);
    past it, each new token is predicted from the last ``max_seq_len`` tokens (no cache)."""
    from halo_lab.generation import generate as generate_cached
    from halo_lab.generation import sample_next_token

    k, p = int(top_k or 0), 1.0 if top_p is None else float(top_p)
    ids = input_ids if input_ids.dim() == 2 else input_ids.unsqueeze(0)
    limit = model.config.max_seq_len
    room = max(0, limit - ids.shape[1])
    first = min(max_new_tokens, room)
    out = ids
    if first and ids.shape[1] <= limit:
        out = generate_cached(
            model, ids, max_new_tokens=first, temperature=temperature, top_k=k, top_p=p, stop_token=stop_token,
            generator=generator,
        )  # fmt: skip
    if stop_token is not None and bool((out[:, ids.shape[1] :] == stop_token).any(1).all()):
        return out if input_ids.dim() == 2 else out[0]
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens - (out.shape[1] - ids.shape[1])):
            logits = model(out[:, -limit:])[0][:, -1]
            nxt = sample_next_token(logits.float(), temperature, k, p, generator)
            out = torch.cat([out, nxt[:, None].to(out.dtype)], dim=1)
            if stop_token is not None and bool((out[:, ids.shape[1] :] == stop_token).any(1).all()):
                break
    finally:
        model.train(was_training)
    return out if input_ids.dim() == 2 else out[0]
