"""Cached decoding: a static-shape decode step (compiled and captured in a CUDA graph on GPU), sampling on
the device (``halo_lab.generation.sampling``), and the stop check every few tokens.

``Decoder`` owns one generation's state on the device: the per-layer KV caches (full, or the exact ring
cache of HALO-S, see ``halo_lab.model.attention.KVCache``), the current token and position, the output buffer and the
``done`` flags. One decode step (embedding, every layer's projections, cache write, attention, FFN, head,
sampling, the output write and the position increment) reads and writes only those buffers, so it can be
compiled once (``torch.compile(fullgraph=True)``) and captured once in a CUDA graph; the host then only
replays the graph and reads ``done`` every ``sync_every`` tokens (the only host sync).

The decoder knows no model class: it uses the model's public decoding interface (``new_caches``,
``forward_cached``, ``decode_step``, per block ``fused_decode_weights`` / ``attn.decode_qkv`` /
``attn.decode_attend`` / ``attn.decode_key_slots``, per cache ``decode_write_slots``), so it imports nothing
of ``halo_lab.model``, which imports it (``HaloSModel.generate``). At batch 1 on CUDA the step's
projections are Triton GEMVs (``halo_lab.kernels.gemv``), each layer's q/k/v projection, RoPE and cache
write one launch (``halo_lab.kernels.decode_qkv``), HALO-S's attention with the o-projection one more
(``halo_lab.kernels.decode_attn_o``) and the SwiGLU FFN one more, split over its hidden units
(``halo_lab.kernels.decode_ffn``): see ``Decoder.triton_gemv``, ``fused_qkv``, ``fused_attn_o`` and
``fused_ffn``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import torch

from halo_lab.generation.sampling import check_sampling, gumbel_noise, noise_base, select_tokens
from halo_lab.generation.step_kernels import (
    attn_o_kernel,
    ffn_kernels,
    fused_weights,
    gemv_kernel,
    norm_args,
    norm_kind,
    qkv_kernel,
    split_attn_kernels,
)
from halo_lab.kernels import pdl

CACHE_KINDS = ("full", "ring")


def graphs_supported(device: torch.device) -> bool:
    """Whether the step can be compiled with Triton and captured in a CUDA graph on ``device``."""
    return device.type == "cuda"


class Decoder:
    """One batched generation: prefill, then decode steps over static buffers (see the module doc).

    ``compile``: torch.compile the step (None: on CUDA only). ``cuda_graph``: capture the step in a CUDA
    graph and replay it (CUDA only; False runs it step by step). ``cache``: "full" or "ring" (HALO-S).
    ``gemv``: the projections through the fused Triton GEMV (None: ``Decoder.triton_gemv``, else on CUDA at
    batch 1; needs ``fuse_weights`` and CUDA or Triton's interpreter). ``path`` says what ran: e.g. "compiled+cuda_graph".
    """

    # Inductor options of the compiled step on CUDA. combo_kernels fuses independent kernels side by side
    # (the layers' key-slot tables, the k/v cache writes): 99 -> 77 kernels a HALO-S token and 3,852 ->
    # 4,356 tokens/s on an H200 (experiments/bench/kernel_notes.md, section "Decode step"; GPU only)
    inductor_options: dict = {"combo_kernels": True}
    # The fused step's projections through halo_lab.kernels.gemv (the norm, SwiGLU and residual add fused
    # into each GEMV): on an H200 a HALO-S token at batch 1 takes 159 µs with it against 231 through cuBLAS
    # (kernel_notes.md, section "Decode step"). It reads the weights once per row of the batch, so
    # batches are cuBLAS's: at batch 8 a HALO-S token took 274 µs with it against 241, at batch 64 1,311
    # against 263 (bench_decode, H200). None: on CUDA up to GEMV_MAX_BATCH rows; the interpreter's CPU
    # path stays opt-in (it is a test of the kernel, not a speed-up).
    triton_gemv: bool | None = None
    GEMV_MAX_BATCH = 1
    # With the GEMV, each layer's q/k/v projection, RoPE and KV-cache write in one launch
    # (halo_lab/kernels/decode_qkv.py; kernel_notes.md, "Decode step, 2026-12-05"): one kernel a layer fewer
    # than the GEMV followed by the RoPE / cache-write kernel. It covers every cache the step has (dense,
    # HALO-S full and ring, with or without selection: the attention after it reads the written cache);
    # False keeps the GEMV + ``attn.decode_qkv`` (for A/B timing).
    fused_qkv: bool = True
    # With the fused q/k/v, HALO-S's attention over its K graph keys, the o-projection and the residual add
    # in one launch too (halo_lab/kernels/decode_attn_o.py; dense and selection never take it). Off: on an
    # H100 (medium model, batch 1, 1K, with PDL) it takes 6.9 µs a launch where the attention kernel and
    # the GEMV it replaces take 3.5 + ~3.1, so 7,659 tokens/s against 9,065 without it (every program
    # recomputes every head's attention before its product; experiments/bench/h100_decode_v6/). Opt-in.
    fused_attn_o: bool = False
    # With the fused q/k/v, each layer's SwiGLU FFN in one launch split over its hidden units (fp32 atomics
    # into a zeroed buffer; halo_lab/kernels/decode_ffn.py), its residual add read by the next layer's q/k/v
    # kernel (and the head's GEMV): one dependent kernel a layer fewer than the up and down GEMVs. On an
    # H100 (medium model, batch 1, PDL) HALO-S decodes at 9,552 tokens/s with it against 9,065 without
    # (1K; 9,427 against 9,008 at 128K), dense at 6,754 against 6,688, with the forward's greedy tokens
    # (experiments/bench/h100_decode_v6/). The sums' order follows the programs' arrival, so two runs may
    # differ in the last bit of a bf16 value: False gives the GEMVs' fixed order.
    fused_ffn: bool = True
    # With the split-K FFN, HALO-S's attention over its K graph keys and the o-projection in one launch
    # split over KV heads instead (halo_lab/kernels/decode_attn_o.py, ``decode_attn_o_split``): each
    # program attends with one KV head's query heads and adds its share of the o-projection into an fp32
    # buffer with atomics, which the FFN kernel adds to the residual (so no program recomputes another KV
    # head's attention, the price of ``fused_attn_o``). Three kernels a layer. Not yet timed: opt-in.
    split_attn_o: bool = False
    # With the GEMV, the step's own kernels (GEMVs, fused q/k/v, HALO-S's attention) launched with
    # programmatic dependent launch (halo_lab/kernels/pdl.py, sm_90+): each may start while the one before
    # runs and load its weights before it waits. On an H100 (medium model, batch 1) HALO-S decodes at 9,117
    # tokens/s with it against 6,516 without, dense at 6,717 against 5,521, with the forward's greedy tokens
    # (experiments/bench/README.md, "Issue 30: timed"). Where the device or Triton lacks PDL it is off.
    pdl: bool = True
    # With the fused q/k/v at batch 1 on a HALO-S model (fixed key lists, SwiGLU), the whole step in one
    # persistent launch with a grid barrier between its phases (halo_lab/kernels/decode_step.py,
    # halo_lab/generation/persistent.py): 1 kernel where the step above launches ~44. Off: on an H100 its 25
    # phases (3 a layer) take 122.4 µs a HALO-S token against 121.2 with PDL in the same process
    # (experiments/bench/README.md, "Twenty-fifth session"): each phase's work costs what a kernel did. Opt-in.
    persistent_step: bool = False

    def __init__(
        self,
        model,
        batch: int,
        prompt_len: int,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        stop_id: int | None = None,
        cache: str = "full",
        compile: bool | None = None,
        cuda_graph: bool = True,
        sync_every: int = 8,
        fuse_weights: bool | None = None,
        gemv: bool | None = None,
    ):
        check_sampling(temperature, top_k, top_p)
        if fuse_weights is None:  # on by default where it pays: a compiled step (a copy of the weights)
            fuse_weights = graphs_supported(next(model.parameters()).device) if compile is None else compile
        if cache not in CACHE_KINDS:
            raise ValueError(f"cache={cache!r}: must be one of {CACHE_KINDS}")
        if cache == "ring" and model.arch != "halo":
            raise ValueError("cache='ring' is for HALO-S: a dense token attends to every earlier position")
        if max_new_tokens < 1 or prompt_len < 1:
            raise ValueError("a Decoder needs a non-empty prompt and max_new_tokens >= 1")
        p = next(model.parameters())
        self.model, self.device, self.dtype = model, p.device, p.dtype
        self.batch, self.prompt_len, self.max_new_tokens = batch, prompt_len, max_new_tokens
        self.temperature, self.top_k, self.top_p, self.stop_id = temperature, top_k, top_p, stop_id
        self.sync_every = max(1, int(sync_every))
        on_cuda = graphs_supported(self.device)
        self.compile = on_cuda if compile is None else bool(compile)
        self.cuda_graph = bool(cuda_graph) and on_cuda
        G = model.num_globals
        self.start = G + prompt_len  # full position of the first new token
        cap = prompt_len + max_new_tokens - 1  # the last sampled token is never fed back
        self.caches = model.new_caches(
            batch,
            max(cap, prompt_len),
            self.device,
            self.dtype,
            ring=cache == "ring",
            prompt_len=prompt_len,
            decode_kernel=True,
        )
        dev = self.device
        rope = model.rope
        n_pos = G + max(cap, prompt_len)
        if rope.cos.shape[0] < n_pos:
            rope._build(n_pos)
        # the step's own RoPE tables (module buffers would be compiled with static sizes: one compile each)
        self.cos = rope.cos[:n_pos].to(dev, self.dtype, copy=True)
        self.sin = rope.sin[:n_pos].to(dev, self.dtype, copy=True)
        self.tok = torch.zeros(batch, 1, dtype=torch.long, device=dev)
        self.pos = torch.full((1,), self.start, dtype=torch.long, device=dev)
        self.start_t = self.pos.clone()
        self.out = torch.zeros(batch, max_new_tokens, dtype=torch.long, device=dev)
        self.done = torch.zeros(batch, dtype=torch.bool, device=dev)
        self.seed = torch.zeros(1, dtype=torch.long, device=dev)
        self.base = noise_base(batch, model.config.vocab_size, dev) if temperature > 0 else None
        self.generated = 0  # tokens in self.out so far
        self.fused = fused_weights(model) if fuse_weights else None
        by_default = self.device.type == "cuda" and batch <= self.GEMV_MAX_BATCH
        use_gemv = next(g for g in (gemv, self.triton_gemv, by_default) if g is not None)
        self.gemv = gemv_kernel(model, self.device) if self.fused is not None and use_gemv else None
        self.qkv = qkv_kernel(model) if self.gemv is not None and self.fused_qkv else None
        self.attn_o = attn_o_kernel(model) if self.qkv is not None and self.fused_attn_o else None
        self.ffn = ffn_kernels(model) if self.qkv is not None and self.fused_ffn else None
        self.split = split_attn_kernels(model) if self.ffn is not None and self.split_attn_o else None
        self.pdl_on = bool(self.pdl) and self.gemv is not None and pdl.supported(self.device)
        self.persistent, self.persistent_why_not = None, "Decoder.persistent_step is off"
        if self.persistent_step and self.qkv is not None:
            from halo_lab.generation import persistent

            why = persistent.why_not(model, self.fused, self.caches, batch, self.start_t)
            if why is None:
                self.persistent = persistent.PersistentStep(model, self.fused, self.caches, self.device)
            self.persistent_why_not = why
        self.path = "compiled" if self.compile else "eager"
        self._run_step: Callable[[], None] | None = None
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------------------------ state
    @property
    def kv_cache_bytes(self) -> int:
        return sum(c.nbytes for c in self.caches)

    def _sample(self, logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        gumbel = gumbel_noise(self.base, self.seed, pos) if self.temperature > 0 else None
        nxt = select_tokens(logits, self.temperature, self.top_k, self.top_p, gumbel)
        if self.stop_id is not None:
            nxt = torch.where(self.done, torch.full_like(nxt, self.stop_id), nxt)
            self.done.logical_or_(nxt == self.stop_id)
        return nxt

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, seed: torch.Tensor | None = None) -> None:
        """Run the prompt [B, T] through the model, filling the caches, and sample the first new token."""
        if tuple(ids.shape) != (self.batch, self.prompt_len):
            raise ValueError(f"prompt shape {tuple(ids.shape)} != ({self.batch}, {self.prompt_len})")
        if seed is not None:
            self.seed.copy_(seed)
        m = self.model
        logits = m.forward_cached(ids, self.caches, last_only=True)[:, -1]
        self.pos.fill_(self.start)
        nxt = self._sample(logits, self.pos)
        self.out[:, 0] = nxt
        self.tok.copy_(nxt[:, None])
        self.generated = 1

    def reset(self) -> None:
        """Forget the prompt and the tokens (the caches' contents stay until overwritten)."""
        for c in self.caches:
            c.length = 0
        self.done.zero_()
        self.pos.fill_(self.start)
        self.generated = 0

    @torch.no_grad()
    def fill_random(self, seed: int = 0) -> None:
        """A synthetic context instead of a prefill (benchmarks): random keys/values in every cache slot,
        a random current token, and the position just after the prompt."""
        g = torch.Generator(device=self.device).manual_seed(seed)
        for c in self.caches:
            c.k.normal_(generator=g)
            c.v.normal_(generator=g)
            c.length = self.start
        self.tok.random_(0, self.model.config.vocab_size, generator=g)
        self.pos.fill_(self.start)
        self.generated = 1

    # ------------------------------------------------------------------------------------ the step
    def _step(self) -> None:
        """Feed ``tok`` at ``pos``, sample the next token into ``out``/``tok``, advance ``pos``: buffers only."""
        if self.fused is not None:
            logits = self._fused_decode_step()
        else:
            logits = self.model.decode_step(self.tok, self.pos, self.caches, (self.cos, self.sin))
        nxt_pos = self.pos + 1
        nxt = self._sample(logits, nxt_pos)
        self.out.index_copy_(1, nxt_pos - self.start_t, nxt[:, None])
        self.tok.copy_(nxt[:, None])
        self.pos.copy_(nxt_pos)

    def _project(self, x, w, norm=None, residual=None, swiglu: bool = False, acc=None) -> torch.Tensor:
        """``residual + prologue(x) @ w.T`` for [B, K] rows, the prologue being ``norm`` or SwiGLU: one
        ``gemv`` launch with ``Decoder.triton_gemv``, else the unfused ops (the same math). ``acc``: the
        split-K FFN's sums, x + acc being the input (gemv only)."""
        if self.gemv is not None:
            return self.gemv(x, w, *norm_args(norm), residual, *norm_kind(norm), swiglu, acc)
        if swiglu:
            gate, up = x.chunk(2, dim=-1)
            x = torch.nn.functional.silu(gate) * up
        y = torch.nn.functional.linear(x if norm is None else norm(x), w)
        return y if residual is None else residual + y

    def _attention(
        self, layer, cache, w_qkv: torch.Tensor, x: torch.Tensor, rope: tuple | None, acc=None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """One layer's (x, a, f): x + o_proj(attention(ln_1(x))) is x + round(a) with ``split`` (a: the split
        attention's fp32 sums), else x (a None); f: with the split-K FFN that layer's FFN buffer, zeroed
        (else None), and the input is x + ``acc`` (the FFN before's sums; None at the first layer). With
        ``qkv`` one kernel projects, ropes and writes k and v into the cache; then where the layer has a
        fixed key list (``attn.decode_key_slots``) one more attends and projects (``split`` or ``attn_o``),
        else ``attn.decode_attend`` reads the cache and a GEMV projects. Without ``qkv``: the projection,
        ``attn.decode_qkv`` (RoPE, cache write, attention) and the o-projection; ``rope``: the (cos, sin)
        rows at ``pos`` it needs (None with ``qkv``, which reads the tables at ``pos``)."""
        a, pos, w_o = layer.attn, self.pos, layer.attn.o_proj.weight
        if self.qkv is None:
            y = a.decode_qkv(self._project(x, w_qkv, norm=layer.ln_1), *rope, cache, pos)
            return self._project(y, w_o, residual=x), None, None
        G, ring, store, row0 = cache.decode_write_slots()
        args = (
            w_qkv, *norm_args(layer.ln_1), self.cos, self.sin, pos, cache.k, cache.v, store,
            *norm_kind(layer.ln_1), self.model.config.num_heads, G, ring, row0,
        )  # fmt: skip
        zero = zero_attn = None
        if self.split is not None:
            q, x, zero, zero_attn = self.split[0](x, acc, *args)
        elif self.ffn is not None:
            q, x, zero = self.ffn[0](x, acc, *args)
        else:
            q = self.qkv(x, *args)
        slots = a.decode_key_slots(cache, pos) if self.attn_o is not None or zero_attn is not None else None
        if slots is not None and zero_attn is not None:
            self.split[1](q, cache.k, cache.v, slots, w_o, zero_attn)
            return x, zero_attn, zero
        if slots is not None:
            return self.attn_o(q, cache.k, cache.v, slots, w_o, x), None, zero
        return self._project(a.decode_attend(q, cache, pos), w_o, residual=x), None, zero

    def _fused_decode_step(self) -> torch.Tensor:
        """``model.decode_step`` with each layer's q/k/v projections as one matmul and the SwiGLU gate and
        up projections as one (``fuse_weights``): 3 fewer kernels per layer, the same math. With ``gemv``
        each projection is one launch with its norm, SwiGLU and residual add fused in (``_project``), the
        q/k/v one with RoPE and the cache write too (``qkv``), HALO-S's attention one with the
        o-projection (``attn_o``; see ``_attention``), and the FFN one split-K launch whose sums the next
        q/k/v kernel or the head adds (``ffn``)."""
        m, pos, proj = self.model, self.pos, self._project
        if self.persistent is not None:  # every layer and the head in one launch, the embedding included
            return self.persistent(self.tok, pos, self.cos, self.sin)
        x = m.token_emb(self.tok)
        # the RoPE table rows at pos for attn.decode_qkv (the qkv kernel reads the tables itself)
        rope = (
            None if self.qkv is not None else (self.cos.index_select(0, pos), self.sin.index_select(0, pos))
        )
        x = x.view(x.shape[0], -1)
        acc = None  # the split-K FFN's sums, added by the next kernel that reads x
        for layer, cache, (w_qkv, w_up) in zip(m.layers, self.caches, self.fused):
            f = layer.ffn
            x, a_acc, acc = self._attention(layer, cache, w_qkv, x, rope, acc)
            ffn_args = (w_up, f.w2.weight, *norm_args(layer.ln_2), acc, *norm_kind(layer.ln_2))
            if a_acc is not None:  # the FFN's input x + round(a_acc): the residual its sums are added to
                x = self.split[2](x, a_acc, *ffn_args)
                continue
            if acc is not None:
                self.ffn[1](x, *ffn_args)
                continue
            h = proj(x, w_up, norm=layer.ln_2)
            if f.w3 is not None:
                x = proj(h, f.w2.weight, residual=x, swiglu=True)
            else:
                x = proj(torch.nn.functional.gelu(h), f.w2.weight, residual=x)
        return proj(x, m.lm_head.weight, norm=m.ln_f, acc=acc)

    @torch.no_grad()
    def _build(self) -> Callable[[], None]:
        fn = self._step
        if self.compile:
            import torch._dynamo

            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            # dynamic=None: the first shape compiles static, a second one (another context or batch) once
            # more with those sizes symbolic, and later shapes reuse that graph
            options = self.inductor_options if self.device.type == "cuda" else {}
            compiled = torch.compile(self._step, fullgraph=True, options=dict(options))
            self._mark_dynamic()
            state = self._snapshot()
            try:
                compiled()  # compiles now; the state is restored below
                fn = compiled
            except Exception as e:  # noqa: BLE001 - any compile failure: the eager step is exact
                warnings.warn(
                    f"decode step did not compile ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                    "running it eagerly",
                    stacklevel=3,
                )
                self.path = "eager"
            self._restore(state)
        if self.persistent is not None:
            self.path += "+persistent"
        if self.pdl_on:
            fn = self._with_pdl(fn)
            self.path += "+pdl"
        self._fn = fn  # the step without the graph (for profiling)
        if not self.cuda_graph:
            return fn
        try:
            return self._capture(fn)
        except Exception as e:  # noqa: BLE001 - the step still runs, launch by launch
            warnings.warn(
                f"decode step could not be captured in a CUDA graph ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200]}); replaying it without one",
                stacklevel=3,
            )
            torch.cuda.synchronize(self.device)
            return fn

    @staticmethod
    def _with_pdl(fn: Callable[[], None]) -> Callable[[], None]:
        """``fn`` with the decode kernels' launches made with PDL (captured so in the CUDA graph)."""

        def step() -> None:
            with pdl.enabled():
                fn()

        return step

    def _mark_dynamic(self) -> None:
        """Sizes that change with the context, the batch or the ring store are compiled symbolic up front, so
        that one compiled step serves every context (and every batch > 1) instead of one compile each."""
        mark = torch._dynamo.maybe_mark_dynamic
        for c in self.caches:
            for t in (c.k, c.v):
                mark(t, 2)
                if self.batch > 1:
                    mark(t, 0)
            if c.layout is not None:
                mark(c.layout.rand, 0)
                if c.layout.store is not None:
                    mark(c.layout.store, 0)
        for t in (self.cos, self.sin):
            mark(t, 0)
        if self.persistent is not None:
            mark(self.persistent.k, 3)
            mark(self.persistent.v, 3)
        mark(self.out, 1)
        if self.batch > 1:
            for t in (self.tok, self.out, self.done) + ((self.base,) if self.base is not None else ()):
                mark(t, 0)

    def _capture(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Warm ``fn`` up on a side stream, capture one call in a CUDA graph; return its replay."""
        state = self._snapshot()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                fn()
                # each warm-up step writes the cache slot of the next position; a second one without this
                # restore would overwrite, in a ring cache, the oldest key the real first step still reads
                self._restore(state)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        self._restore(state)  # warm-up steps wrote the next slots: put the state back
        self.path += "+cuda_graph"
        self._graph = graph
        return graph.replay

    def _snapshot(self) -> list[torch.Tensor]:
        return [t.clone() for t in (self.tok, self.pos, self.out, self.done)]

    def _restore(self, state: list[torch.Tensor]) -> None:
        for t, s in zip((self.tok, self.pos, self.out, self.done), state):
            t.copy_(s)

    @torch.no_grad()
    def decode(self, steps: int | None = None, stream: Callable[[torch.Tensor], None] | None = None) -> int:
        """Run up to ``steps`` decode steps (default: to max_new_tokens), checking the stop token every
        ``sync_every`` steps; ``stream`` gets each chunk of new tokens ([B, n] on the CPU). Returns the
        number of tokens in ``out``."""
        if self._run_step is None:
            self._run_step = self._build()
        left = self.max_new_tokens - self.generated if steps is None else steps
        left = min(left, self.max_new_tokens - self.generated)
        emitted = self.generated
        while left > 0:
            if self.stop_id is not None and bool(self.done.all()):
                break
            n = min(self.sync_every, left)
            for _ in range(n):
                self._run_step()
            self.generated += n
            left -= n
            if stream is not None:
                stream(self.out[:, emitted : self.generated].cpu())
                emitted = self.generated
        if self.persistent is not None:
            self.persistent.check()
        return self.generated

    def tokens(self) -> torch.Tensor:
        """[B, n] the new tokens, cut after the step where every row had produced the stop token."""
        out = self.out[:, : self.generated]
        if self.stop_id is not None:
            hit = out == self.stop_id
            first = torch.where(hit.any(1), hit.int().argmax(1), torch.full_like(hit[:, 0], out.shape[1]))
            if bool(hit.any(1).all()):
                out = out[:, : int(first.max()) + 1]
        return out

    def generate(
        self, ids: torch.Tensor, seed: torch.Tensor | None = None, stream: Callable | None = None
    ) -> torch.Tensor:
        """Prefill, build the step (compile / capture), decode; the new tokens [B, n]. ``timings`` then
        holds the seconds of each phase (the build is not part of the decode speed)."""
        t0 = time.perf_counter()
        self.prefill(ids, seed)
        if stream is not None:
            stream(self.out[:, :1].cpu())
        _sync(self.device)
        t1 = time.perf_counter()
        if self._run_step is None:
            self._run_step = self._build()
        t2 = time.perf_counter()
        if self.stop_id is None or not bool(self.done.all()):
            self.decode(stream=stream)
        out = self.tokens()
        _sync(self.device)
        self.timings = {"prefill_s": t1 - t0, "build_s": t2 - t1, "decode_s": time.perf_counter() - t2}
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
