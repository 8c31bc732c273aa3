"""Micro-batch selection: a memory model of a training step, and a measured probe on CUDA."""

from __future__ import annotations

import logging
from typing import Any

import torch

from halo_lab.device.conf import _normalize_precision
from halo_lab.device.profiles import (
    _cuda_index,
    _host_memory_bytes,
    detect_device_profile,
    get_optimal_device,
)

logger = logging.getLogger("halo_lab.device")


def _as_config(config: Any):
    from halo_lab.config import HaloConfig

    if isinstance(config, HaloConfig):
        return config
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return HaloConfig.from_dict(dict(config))


def _precision_bytes(precision: str) -> tuple[float, int]:
    """(bytes of weights+grads+AdamW state per parameter, bytes per activation element)."""
    if precision.endswith("-true") and not precision.startswith(("32", "64")):
        return 8.0, 2  # half weights, grads and moments
    if precision.endswith("-mixed"):
        return 18.0, 2  # fp32 weights/grads/moments (16) + autocast's half weight copies (2)
    if precision.startswith("64"):
        return 32.0, 8
    return 16.0, 4


def estimate_num_parameters(config: Any, arch: str = "halo") -> int:
    """Parameter count of ``build_model(config, arch)`` from the config alone."""
    c = _as_config(config)
    h, d, layers = c.hidden_size, c.head_dim, c.num_layers
    kv = c.num_kv_heads * d
    inner = c.ffn_mult * h
    norm = h if c.norm == "rmsnorm" else 2 * h
    attn = h * c.num_heads * d * 2 + h * kv * 2  # q, o and k, v projections (no biases)
    ffn = (3 if c.use_swiglu else 2) * h * inner
    total = layers * (attn + ffn + 2 * norm) + norm + c.vocab_size * h
    if not c.tie_embeddings:
        total += c.vocab_size * h
    if arch == "halo":
        total += c.num_globals * h
    return int(total)


def estimate_training_memory(
    config: Any, seq_len: int, batch_size: int = 1, arch: str = "halo", precision: str = "32-true"
) -> dict[str, float]:
    """Memory model of one training step with AdamW, in bytes.

    ``static`` = parameters x (weights + grads + optimizer state). ``per_sample`` = activations kept
    for the backward pass of one sequence: per layer and token the norms, q/k/v (+ RoPE copies), the
    attention (HALO: the reference gather's K neighbour keys/values per KV head and the float
    scores/probabilities per query head, K = num_neighbors capped by the length; dense: the score
    matrix of the math SDPA path, T keys), the FFN; plus the logits (logits, float upcast, gradient).
    A 1.3 overhead factor covers temporaries, dropout masks and allocator fragmentation.
    """
    c = _as_config(config)
    param_bytes, act = _precision_bytes(_normalize_precision(precision))
    n_params = estimate_num_parameters(c, arch)
    h, nh, d = c.hidden_size, c.num_heads, c.head_dim
    kv = c.num_kv_heads * d
    inner = c.ffn_mult * h
    t = seq_len + (c.num_globals if arch == "halo" else 0)
    keys = min(c.num_neighbors, t)
    dense_like = 7 * h + 2 * kv + 2 * kv  # ln in/out x2, q, o-proj out, residual; k, v; RoPE'd q/k extra
    ffn = (4 if c.use_swiglu else 2) * inner
    if arch == "halo":
        # gathered keys/values, and scores + probs kept in float32 (upcast before the softmax)
        attn = 2 * keys * kv + 3 * nh * keys * max(4 // act, 1)
    else:
        # SDPA's fused kernels (flash on CPU and CUDA) hold no T x T matrix; measured on CPU (torch 2.13)
        # their GQA-expanded K/V, output, log-sum-exp and backward scratch come to ~12 x hidden per token
        attn = 12 * h
    per_token_layer = dense_like + ffn + attn
    logits = 3 * c.vocab_size * max(4 // act, 1)
    per_sample = 1.3 * act * (t * c.num_layers * per_token_layer + seq_len * logits + t * h)
    static = n_params * param_bytes
    return {
        "params": float(n_params),
        "static": float(static),
        "per_sample": float(per_sample),
        "total": float(static + batch_size * per_sample),
    }


def _available_memory_bytes(dev: torch.device) -> int | None:
    if dev.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(_cuda_index(dev))
        return int(free)
    return _host_memory_bytes(available=True)


def estimate_batch_size(
    config: Any,
    seq_len: int,
    arch: str = "halo",
    memory_bytes: float | None = None,
    precision: str = "32-true",
    safety: float = 0.8,
    max_batch: int = 1024,
) -> int:
    """Largest batch whose modelled training memory fits ``safety * memory_bytes`` (default: free RAM)."""
    if memory_bytes is None:
        memory_bytes = _host_memory_bytes(available=True) or 0
    est = estimate_training_memory(config, seq_len, 1, arch, precision)
    budget = safety * float(memory_bytes) - est["static"]
    if budget < est["per_sample"]:
        logger.warning(
            "estimated memory for one sequence of %d tokens (%.2f GB) exceeds the budget (%.2f GB): batch 1",
            seq_len,
            (est["static"] + est["per_sample"]) / 1e9,
            safety * float(memory_bytes) / 1e9,
        )
        return 1
    return int(max(1, min(max_batch, budget // est["per_sample"])))


def search_batch_size(trial, budget: float, max_batch: int = 1024, max_trials: int = 12) -> int:
    """Largest batch b <= max_batch with ``trial(b) <= budget`` (within about 5%).

    ``trial(b)`` runs one step and returns its peak memory in bytes, or raises on out-of-memory (any
    exception counts as "does not fit"). Trials are costly (a GPU step, and a recompile for kernels
    compiled per shape), so this is a safeguarded secant search (Brent-style): batches 1 and 2 fit
    the line peak = fixed + b * slope, the line through the two largest measured batches predicts the
    next candidate, and whenever a step did not halve the interval between the largest fitting and
    the smallest failing batch (or the prediction falls outside it) the next step bisects.
    """
    search = _BatchSearch(trial, budget, max_batch)
    for b in (1, 2):
        if b <= max_batch and search.lo < b < search.hi:
            search.run(b)
    if search.lo == 0:
        return 1
    bisect = False
    while search.hi - search.lo > max(1, search.lo // 20) and len(search.tried) < max_trials:
        gap = search.hi - search.lo
        search.run(search.next_batch(bisect))
        bisect = search.hi - search.lo > gap // 2  # too little progress: bisect next
    return max(1, search.lo)


class _BatchSearch:
    """The state of :func:`search_batch_size`: ``lo`` fits (0: none known), ``hi`` does not; the peaks
    measured by batch; the batches tried."""

    def __init__(self, trial, budget: float, max_batch: int) -> None:
        self.trial, self.budget, self.max_batch = trial, budget, max_batch
        self.lo, self.hi = 0, max_batch + 1
        self.points: dict[int, float] = {}
        self.tried: set[int] = set()

    def run(self, b: int) -> None:
        """One trial of batch ``b``; narrows [lo, hi)."""
        self.tried.add(b)
        try:
            peak = float(self.trial(b))
        except Exception as exc:
            logger.info("batch-size probe: batch %d failed (%s)", b, type(exc).__name__)
            self.hi = min(self.hi, b)
            return
        self.points[b] = peak
        logger.debug("batch-size probe: batch %d peak %.3g of budget %.3g", b, peak, self.budget)
        if peak <= self.budget:
            self.lo = max(self.lo, b)
        else:
            self.hi = min(self.hi, b)

    def predict(self) -> int | None:
        """The batch whose peak the line through the two largest measured batches puts at the budget."""
        if len(self.points) < 2:
            return None
        (b1, p1), (b2, p2) = sorted(self.points.items())[-2:]
        slope = (p2 - p1) / (b2 - b1)
        if slope <= 0:  # memory flat in b (a tiny model): aim at the cap
            return self.hi - 1
        return int((self.budget - (p2 - slope * b2)) // slope)

    def next_batch(self, bisect: bool) -> int:
        """The prediction when it is new and inside (lo, hi) (the cap when it lies beyond), else the middle."""
        guess = None if bisect else self.predict()
        if guess is not None and guess >= self.hi and self.hi > self.max_batch:
            guess = self.max_batch  # the prediction is beyond the cap: try the cap itself
        if guess is None or guess in self.tried or not self.lo < guess < self.hi:
            guess = (self.lo + self.hi) // 2
        return guess


def _probe_gpu_batch_size(config, seq_len, arch, dev, safety, max_batch, precision) -> int:
    import gc

    from halo_lab.model import build_model  # lazy: the device module must not need the model

    c = _as_config(config)
    if c.max_seq_len < seq_len:
        c = c.replace(max_seq_len=seq_len)
    idx = _cuda_index(dev)
    dev = torch.device("cuda", idx)
    gc.collect()
    torch.cuda.empty_cache()
    free, _total = torch.cuda.mem_get_info(idx)
    budget = safety * free + torch.cuda.memory_allocated(idx)
    dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(precision.split("-")[0])
    model = build_model(c, arch)
    if precision.endswith("-true") and dtype is not None:
        model = model.to(dtype)
    model.to(dev).train()
    # held in a dict so that the finally below can drop the last references before empty_cache()
    state = {"model": model, "opt": torch.optim.AdamW(model.parameters(), lr=0.0)}
    del model
    autocast = dtype is not None and precision.endswith("-mixed")

    def trial(b: int) -> int:
        torch.cuda.reset_peak_memory_stats(idx)
        try:
            x = torch.randint(0, c.vocab_size, (b, seq_len), device=dev)
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=autocast):
                _, loss = state["model"](x, x)
            loss.backward()
            state["opt"].step()  # AdamW state is allocated by the first step and stays: part of the peak
            torch.cuda.synchronize(idx)
            return torch.cuda.max_memory_allocated(idx)
        finally:
            state["opt"].zero_grad(set_to_none=True)

    try:
        best = search_batch_size(trial, budget, max_batch)
    finally:
        state.clear()
        gc.collect()
        torch.cuda.empty_cache()
    # Multiples of 8 keep DDP ranks on equal cards in agreement despite tiny allocator differences.
    return best - best % 8 if best >= 16 else best


def get_optimal_batch_size(
    config: Any,
    seq_len: int,
    arch: str = "halo",
    device: str | torch.device | None = None,
    safety: float = 0.8,
    max_batch: int = 1024,
    precision: str | None = None,
    memory_bytes: float | None = None,
) -> int:
    """Micro-batch size for training ``build_model(config, arch)`` on sequences of ``seq_len``.

    On a CUDA device: measured with a short probe of the real model (forward + backward + AdamW step
    in the profile's precision, peak from ``torch.cuda.max_memory_allocated``, a few batch sizes
    around a linear fit, binary search on OOM), keeping the peak under ``safety`` x free memory.
    On CPU/MPS (or when the probe cannot run, or ``memory_bytes`` is given): the memory model of
    :func:`estimate_training_memory` against the available memory. ``precision`` defaults to the
    device profile's. Never a lookup table. Returns an int in [1, max_batch].
    """
    if not 0 < safety <= 1:
        raise ValueError(f"safety={safety}: must be in (0, 1]")
    if seq_len < 1 or max_batch < 1:
        raise ValueError("seq_len and max_batch must be positive")
    try:
        dev = torch.device(device) if device is not None else torch.device(get_optimal_device())
    except Exception:
        dev = torch.device("cpu")
    if precision is None:
        try:
            precision = detect_device_profile(device=dev).precision
        except Exception:
            precision = "32-true"
    try:
        precision = _normalize_precision(precision)
    except ValueError:  # e.g. a Lightning plugin name: size for full precision, the safe side
        logger.warning("batch size: precision %r not modelled, sizing for 32-true", precision)
        precision = "32-true"
    if dev.type == "cuda" and memory_bytes is None and torch.cuda.is_available():
        try:
            b = _probe_gpu_batch_size(config, seq_len, arch, dev, safety, max_batch, precision)
            logger.info("batch size %d measured on %s (seq_len=%d, %s, %s)", b, dev, seq_len, arch, precision)
            return b
        except Exception as exc:
            logger.warning(
                "GPU batch-size probe failed (%s: %s): using the memory model", type(exc).__name__, exc
            )
    if memory_bytes is None:
        memory_bytes = _available_memory_bytes(dev) or 0
    b = estimate_batch_size(config, seq_len, arch, memory_bytes, precision, safety, max_batch)
    logger.info(
        "batch size %d estimated for %s (seq_len=%d, %s, %s, %.1f GB available)",
        b,
        dev,
        seq_len,
        arch,
        precision,
        memory_bytes / 1e9,
    )
    return b
