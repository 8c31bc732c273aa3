"""``generate(model, prompt, ...)``: the one generation entry point. ``HaloSModel.generate``, the runner's
sample callback, the ``python -m halo_lab.generate`` command and ``halo_lab.api.generate`` all call it.

str -> str, list[str] -> list[str] (through a tokenizer), LongTensor [T] or [B, T] -> the same rank with
the prompt included. With the KV cache (the default) it runs a :class:`~halo_lab.generation.decoder.Decoder`;
without, it re-runs the prefix for every token (the reference the cached path is tested against).
"""

from __future__ import annotations

from typing import Any

import torch

from halo_lab.generation.decoder import Decoder
from halo_lab.generation.sampling import check_sampling, gumbel_noise, noise_base, seed_tensor, select_tokens


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    prompt: str | list[str] | torch.Tensor,
    tokenizer: Any = None,
    max_new_tokens: int = 100,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_token: int | str | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    cuda_graph: bool = True,
    *,
    compile: bool | None = False,
    cache: str = "full",
    sync_every: int = 8,
    stream: Any = None,
    stats: dict | None = None,
):
    """Sample a continuation of ``prompt`` from ``model`` (a loaded model's own ``tokenizer`` is used when
    none is given). temperature=0 is greedy. Generation stops early once every row has produced
    ``stop_token`` (rows that stopped are padded with it). Prompt plus new tokens beyond max_seq_len is an
    error. With the KV cache a HALO-S token costs O(K) attention, not a prefix re-run; on CUDA each decode
    step replays a captured CUDA graph (``cuda_graph=False`` turns that off), ``compile=True`` compiles the
    step first (one compile per shape: worth it for long generations). ``cache``: "full" or "ring" (HALO-S:
    a bounded, exact cache; see halo_lab.model.attention.KVCache). Sampling runs on the device; the stop
    token is checked every ``sync_every`` tokens. ``generator`` seeds the sampling noise (a hash of seed
    and position: the same tokens with or without the cache). ``stream`` (tensor prompts): called with each
    chunk of new tokens, [B, n] on the CPU. ``stats`` (a dict, cached path): filled with the decoder's path
    (e.g. "compiled+cuda_graph") and the seconds of its prefill, build and decode."""
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    options = dict(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        use_cache=use_cache, generator=generator, cuda_graph=cuda_graph, compile=compile, cache=cache,
        sync_every=sync_every,
    )  # fmt: skip
    if isinstance(prompt, (str, list)):
        if tokenizer is None:
            raise ValueError("generate() got a string prompt but no tokenizer: pass tokenizer=...")
        texts = [prompt] if isinstance(prompt, str) else prompt
        stop_id = stop_token_id(stop_token, tokenizer)
        device = model.lm_head.weight.device
        outs = []
        for text in texts:  # one by one: prompts of different lengths need no padding policy
            ids = torch.tensor(tokenizer.encode(text), dtype=torch.long, device=device)
            new = generate(model, ids, None, stop_token=stop_id, **options)[len(ids) :].tolist()
            if stop_id is not None and stop_id in new:
                new = new[: new.index(stop_id)]
            outs.append(text + tokenizer.decode(new))
        return outs[0] if isinstance(prompt, str) else outs
    if not isinstance(prompt, torch.Tensor) or prompt.dtype != torch.long or prompt.dim() not in (1, 2):
        raise TypeError("prompt must be a str, a list of str or a LongTensor of shape [T] or [B, T]")
    ids = prompt.unsqueeze(0) if prompt.dim() == 1 else prompt
    stop_id = stop_token_id(stop_token, tokenizer)
    total = ids.shape[1] + max_new_tokens
    if ids.shape[1] == 0:
        raise ValueError("generate() needs a non-empty prompt")
    if total > model.config.max_seq_len:
        raise ValueError(
            f"prompt ({ids.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) = {total} exceeds "
            f"max_seq_len={model.config.max_seq_len}; shorten the prompt or lower max_new_tokens"
        )
    was_training = model.training
    model.eval()
    try:
        out = _sample_loop(model, ids, stop_id, stream, stats, **options)
    finally:
        model.train(was_training)
    return out[0] if prompt.dim() == 1 else out


def stop_token_id(stop_token: int | str | None, tokenizer: Any) -> int | None:
    """The id of ``stop_token`` (an id, or a string that must encode to exactly one token)."""
    if stop_token is None or isinstance(stop_token, int):
        return stop_token
    if tokenizer is None:
        raise ValueError("a string stop_token needs a tokenizer")
    ids = tokenizer.encode(stop_token)
    if len(ids) != 1:
        raise ValueError(f"stop_token {stop_token!r} encodes to {len(ids)} tokens; it must be exactly one")
    return ids[0]


def _sample_loop(model, ids, stop_id, stream, stats, *, max_new_tokens, temperature, top_k, top_p, use_cache,
                 generator, cuda_graph, compile, cache, sync_every):  # fmt: skip
    check_sampling(temperature, top_k, top_p)
    if max_new_tokens <= 0:
        return ids
    B = ids.shape[0]
    seed = seed_tensor(generator, ids.device) if temperature > 0 else None
    if use_cache:
        dec = Decoder(
            model, B, ids.shape[1], max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
            stop_id=stop_id, cache=cache, compile=compile, cuda_graph=cuda_graph, sync_every=sync_every,
        )  # fmt: skip
        new = dec.generate(ids, seed, stream)
        if stats is not None:
            stats.update(dec.timings, path=dec.path)
        return torch.cat([ids, new], dim=1)
    base = noise_base(B, model.config.vocab_size, ids.device) if temperature > 0 else None
    out = ids
    done = torch.zeros(B, dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        logits = model.forward_cached(out, None, last_only=True)[:, -1]
        pos = torch.full((1,), model.num_globals + out.shape[1], dtype=torch.long, device=ids.device)
        gumbel = gumbel_noise(base, seed, pos) if temperature > 0 else None
        nxt = select_tokens(logits, temperature, top_k, top_p, gumbel)
        if stop_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, stop_id), nxt)
            done |= nxt == stop_id
        out = torch.cat([out, nxt[:, None]], dim=1)
        if stream is not None:
            stream(nxt[:, None].cpu())
        if stop_id is not None and bool(done.all()):
            break
    return out
