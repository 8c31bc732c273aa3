"""A HALO-S model's whole batch-1 decode step in one persistent launch (issue 30).

At batch 1 the step is ~44 small kernels a token (GEMVs, the fused q/k/v, the attention), each a few µs of
which most is the launch and the first loads, not the work: 153 µs a token on an H100 where the weights
read in ~19 µs (experiments/bench/README.md, "Seventh session"). Here P programs (one per SM) run the
step's phases in order and wait for each other at a grid-wide barrier between phases, so a token is one
launch. Its phases are in ``decode_phases.py``, three a layer: A (norm_1 + q/k/v + RoPE + cache write),
BC (the attention with the o-projection, split over (query head, slice of rows), fp32 atomics into a
buffer) and DE (the SwiGLU FFN split over the hidden units, fp32 atomics into another), then the final
norm + LM head: 25 phases a token for 8 layers, where one phase a kernel (A, B, C, D, E) took 41. Each
phase loads its program's weights before it waits at the barrier: no kernel writes the weights, so that
load overlaps the wait, and after the barrier a phase reads only the small vectors and sums the phase
before wrote (from L2). Rounding follows the unfused kernels (the GEMV's: its input rounded to the
weight's dtype, its product rounded before the residual add), so the step's logits equal the GEMV step's
up to the order of fp32 sums; ``reference_decode_step`` is that chain of the kernels' own torch
references. x holds the residual stream less the last layer's buffered sums when the step returns.

The barrier (``_grid_sync``): each program adds 1 to a counter with release semantics at GPU scope and
polls it with acquire semantics until it reaches (phase number) x P, as CUDA's cooperative grid sync does.
It needs all P programs resident at once: P is at most the SM count, one program an SM. A barrier that
spins past ``spin_limit`` polls sets ``flag`` and goes on, and later barriers then do not wait (wrong
logits, no hang); the decoder raises on it (``PersistentStep.check``).

HALO-S's key slots and write slots come as tables [L, rows, K] and [L, rows, 2] of every decode position
(``slots``, ``wslots``, row 0 the position ``first``): the kernel reads pos's rows. Given ``tok``, layer 0
reads its stream from the token's embedding row (``weights["emb"]``). When the compiled step computed the
embedding and the slots each token, that kernel took 5.0 µs on an H100, against 2.0 for dense's without
key slots (experiments/bench/README.md, "Twenty-seventh session"); with the tables and the embedding read
here, a HALO-S token is this one launch. Not yet timed.

L2 (``keep_l2``, off by default, not yet timed): the medium model's 61 MB of weights do not fit an H100's
50 MB of L2, so token after token the step reads them in a cycle longer than the cache, which a
least-recently-used cache serves worst. The phase probe's later layers looked slow (experiments/bench/
README.md, "Twenty-seventh session") where its prefixes crossed the cache's size. ``keep_l2=n`` marks the
loads of layers 0..n-1 ``evict_last`` and the rest ``evict_first``, so that a fixed part stays resident
and the rest streams from HBM.

Block sizes, medium model (hidden 512, 8/2 heads of 64, FFN 2048) on 132 SMs: q/k/v 4 RoPE pairs (8 rows)
x 512 a program (``tile_rows``: the smallest power of two whose P tiles cover the rows); BC 8 heads x 16
slices of 32 rows (a [32, 64] tile of W_o); DE 16 hidden units (2 x 16 rows of W_up, 16 columns of W_down:
24K values, 96 a thread at 8 warps, as decode_ffn); head 2 x 512.

Testing without a GPU: Triton's interpreter runs programs one after another, so a barrier at P > 1 would
wait forever there. ``sync=False`` runs the same code one phase per launch (``lo``, ``hi``): the
interpreter checks every phase's split of the rows at any P, and ``sync=True`` at P = 1 runs the barrier's
code. On a GPU the tests run ``sync=True`` at the SM count.
"""

from __future__ import annotations

import math

import torch

from halo_lab.graph.reference import apply_rope
from halo_lab.kernels import decode as kd
from halo_lab.kernels import decode_phases as dp
from halo_lab.kernels import gemv as kg

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - torch without triton
    HAS_TRITON = False

PHASES = 3  # per layer: A, BC, DE (decode_phases.py; dense: 4, A2 its attention's partials)
DENSE_CHUNK = 32  # dense keys a step: [G, 32, d] products in registers (G = 4 query heads a KV head)
SPIN_LIMIT = 1 << 20  # barrier polls before the watchdog gives up (~0.3-0.5 s at 0.3-0.5 µs a poll)


def available() -> bool:
    return HAS_TRITON


def tile_rows(rows: int, programs: int, least: int = 2) -> int:
    """Rows a program takes so that ``programs`` tiles cover ``rows``: a power of two, at least ``least``."""
    return max(least, triton.next_power_of_2(-(-rows // programs)))


def reference_decode_step(
    x: torch.Tensor,
    weights: dict[str, torch.Tensor],
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    pos: torch.Tensor,
    slots: torch.Tensor,
    wslots: torch.Tensor,
    *,
    num_heads: int,
    norm: str,
    eps: float,
) -> torch.Tensor:
    """The unfused kernels' references in a row: logits [1, V]; k_cache / v_cache [L, 1, Hkv, S, d] written
    at the slots ``wslots`` [L, 2] (-1: none). x [1, C] the token's embedding; slots [L, K] key slots."""
    w, d = weights, k_cache.shape[-1]
    for layer in range(k_cache.shape[0]):
        n1, n2 = ({"norm_weight": w[f"{n}w"][layer]} for n in ("n1", "n2"))
        if "n1b" in w:
            n1["norm_bias"], n2["norm_bias"] = w["n1b"][layer], w["n2b"][layer]
        # decode_qkv's reference, writing at the given slots
        qkv = kg.reference_gemv(x, w["wqkv"][layer], norm=norm, eps=eps, **n1)
        q, k, v = qkv.view(1, -1, 1, d).split([num_heads, k_cache.shape[2], k_cache.shape[2]], dim=1)
        c, s = cos.index_select(0, pos).float(), sin.index_select(0, pos).float()
        q, k = (apply_rope(t.float(), c, s).to(t.dtype) for t in (q, k))
        for slot in wslots[layer][wslots[layer] >= 0]:
            k_cache[layer].index_copy_(2, slot.view(1), k)
            v_cache[layer].index_copy_(2, slot.view(1), v)
        a = kd.reference_decode_attention(q, k_cache[layer], v_cache[layer], slots[layer])
        x = kg.reference_gemv(a.reshape(1, -1), w["wo"][layer], residual=x)
        h = kg.reference_gemv(x, w["wup"][layer], norm=norm, eps=eps, **n2)
        x = kg.reference_gemv(h, w["wdown"][layer], swiglu=True, residual=x)
    nf = {"norm_weight": w["nfw"], **({"norm_bias": w["nfb"]} if "nfb" in w else {})}
    return kg.reference_gemv(x, w["lm"], norm=norm, eps=eps, **nf)


if HAS_TRITON:
    # fmt: off
    @triton.jit
    def _decode_step_kernel(
        x_ptr, q_ptr, part_ptr, ob_ptr, fb_ptr, logits_ptr,
        wqkv_ptr, wo_ptr, wup_ptr, wdown_ptr, lm_ptr,
        n1w_ptr, n1b_ptr, n2w_ptr, n2b_ptr, nfw_ptr, nfb_ptr,
        k_ptr, v_ptr, cos_ptr, sin_ptr, pos_ptr, first_ptr, slots_ptr, wslots_ptr, sync_ptr, flag_ptr,
        emb_ptr, tok_ptr, n_keys, rows, s_cl, s_ch, s_cs, s_cos, s_sin, scale, eps, lo, hi,
        L: tl.constexpr, C: tl.constexpr, HQ: tl.constexpr, HKV: tl.constexpr, HALF: tl.constexpr,
        F: tl.constexpr, V: tl.constexpr, NORM: tl.constexpr, HAS_BIAS: tl.constexpr,
        BP_QKV: tl.constexpr, NS_O: tl.constexpr, BN_O: tl.constexpr, BH: tl.constexpr,
        BN_HEAD: tl.constexpr, CH_C: tl.constexpr,
        BLOCK_K: tl.constexpr, DENSE: tl.constexpr, PH: tl.constexpr, PH2: tl.constexpr,
        CH_KEYS: tl.constexpr, NPH: tl.constexpr, SYNC: tl.constexpr, SPIN: tl.constexpr, KEEP: tl.constexpr,
    ):
        """Phases [lo, hi) of the step (decode_phases.py), a barrier before each but the first. NPH phases a
        layer: A, BC, DE, and for DENSE A2 (the attention's partials over the keys) after A."""
        W_QKV: tl.constexpr = (HQ + 2 * HKV) * 2 * HALF * C  # per-layer sizes of the stacked weights
        pos = tl.load(pos_ptr)
        row = tl.minimum(tl.maximum(pos - tl.load(first_ptr), 0), rows - 1)  # pos's row of the slot tables
        x_emb = emb_ptr + tl.load(tok_ptr) * C  # layer 0 reads the stream from the token's embedding row
        # KEEP >= 0 (at most L): layers [0, KEEP) load their weights marked to stay in L2, the rest marked to
        # leave it first (launch_meta's ``keep_l2``); one loop over the layers when KEEP < 0
        for part in tl.static_range(1 if KEEP < 0 else 2):
            EV = (KEEP >= 0) * (part + 1)  # decode_phases._wload: 0 no mark, 1 evict_last, 2 evict_first
            for layer in range(part * KEEP, L if KEEP < 0 else KEEP + part * (L - KEEP)):
                lc = tl.cast(layer, tl.int64)
                ph = NPH * layer
                k_l, v_l = k_ptr + lc * s_cl, v_ptr + lc * s_cl
                ob_this, ob_last = ob_ptr + (layer % 2) * C, ob_ptr + ((layer + 1) % 2) * C
                x_in = tl.where(layer == 0, x_emb, x_ptr)
                at = lc * rows + row  # this layer's row of the slot tables
                dp._qkv_phase(ph, lo, hi, wqkv_ptr + lc * W_QKV, x_in, ob_last, fb_ptr, n1w_ptr + lc * C,
                              n1b_ptr + lc * C, q_ptr, k_l, v_l, cos_ptr, sin_ptr, pos, wslots_ptr + at * 2,
                              sync_ptr, flag_ptr, s_ch, s_cs, s_cos, s_sin, eps, C, HQ, HKV, HALF, NORM,
                              HAS_BIAS, BP_QKV, CH_C, SYNC, SPIN, EV)
                if DENSE:
                    dp._dense_partial_phase(ph + 1, lo, hi, q_ptr, k_l, v_l, part_ptr, sync_ptr, flag_ptr,
                                            pos, s_ch, s_cs, scale, HQ, HKV, 2 * HALF, PH, CH_KEYS, SYNC,
                                            SPIN)
                ph = ph + NPH - 2
                dp._attend_o_phase(ph, lo, hi, q_ptr, k_l, v_l, slots_ptr + at * n_keys, part_ptr,
                                   wo_ptr + lc * (C * HQ * 2 * HALF), x_in, x_ptr, ob_last, ob_this, fb_ptr,
                                   sync_ptr, flag_ptr, n_keys, s_ch, s_cs, scale, C, HQ, HKV, 2 * HALF, NS_O,
                                   BN_O, BLOCK_K, DENSE, PH, PH2, SYNC, SPIN, EV)
                dp._ffn_phase(ph + 1, lo, hi, wup_ptr + lc * (2 * F * C), wdown_ptr + lc * (C * F), x_ptr,
                              ob_this, n2w_ptr + lc * C, n2b_ptr + lc * C, fb_ptr, sync_ptr, flag_ptr, eps, C,
                              F, NORM, HAS_BIAS, BH, CH_C, SYNC, SPIN, EV)
        # the final norm + LM head
        dp._head_phase(NPH * L, lo, hi, lm_ptr, x_ptr, ob_ptr + ((L - 1) % 2) * C, fb_ptr, nfw_ptr, nfb_ptr,
                       logits_ptr, sync_ptr, flag_ptr, eps, C, V, NORM, HAS_BIAS, BN_HEAD, CH_C, SYNC, SPIN)
    # fmt: on


def launch_meta(*, C, F, V, L, num_heads, kv_heads, d, n_keys, norm, has_bias, programs, dense,
                spin_limit=SPIN_LIMIT, warps=8, keep_l2=None) -> dict:  # fmt: skip
    """The kernel's constexprs and warps for a model's sizes at P = ``programs`` (the module doc's block
    sizes); experiments/bench/kernel_regs.py compiles it with these. 8 warps at P = 132: 148 registers and
    no stack with the pointers aligned, as a launch builds it (``--aligned``; 184 unaligned); at P = 88,
    186 aligned, no stack (unaligned: 255 and a spill). ``keep_l2``: None, no eviction hints; n, the
    weights of layers 0..n-1 loaded ``evict_last`` and the others' ``evict_first`` (the module doc)."""
    P, pairs = int(programs), (num_heads + 2 * kv_heads) * d // 2
    slices = 1 << max(0, (P // num_heads).bit_length() - 1)  # NS: o's row slices, NS x heads <= P
    parts = max(1, P // kv_heads) if dense else 1  # PH: the programs of one KV head's keys
    return dict(
        L=L, C=C, HQ=num_heads, HKV=kv_heads, HALF=d // 2, F=F, V=V,
        NORM=kg.NORMS[norm], HAS_BIAS=has_bias,
        BP_QKV=tile_rows(pairs, P), NS_O=slices, BN_O=tile_rows(C, slices), BH=tile_rows(F, P),
        BN_HEAD=tile_rows(V, P), CH_C=triton.next_power_of_2(C),
        BLOCK_K=max(2, triton.next_power_of_2(n_keys)), DENSE=dense, PH=parts,
        PH2=max(2, triton.next_power_of_2(parts)), CH_KEYS=DENSE_CHUNK, NPH=PHASES + dense,
        SPIN=spin_limit, KEEP=-1 if keep_l2 is None else min(max(int(keep_l2), 0), L), num_warps=int(warps),
    )  # fmt: skip


def _slot_tables(slots: torch.Tensor, wslots: torch.Tensor, pos: torch.Tensor, first: torch.Tensor | None):
    """(key slots [L, rows, K], write slots [L, rows, 2], the full position of row 0). A [L, K] or [L, 2]
    argument holds the slots of the query at ``pos`` alone and serves as every row."""
    if slots.dim() == 2 and wslots.dim() == 2:
        return slots[:, None], wslots[:, None], pos
    if first is None:
        raise ValueError(
            f"a slot table needs ``first``, the position of its row 0 (slots {tuple(slots.shape)}, write "
            f"slots {tuple(wslots.shape)})"
        )
    rows = (slots if slots.dim() == 3 else wslots).shape[1]
    slots, wslots = (t if t.dim() == 3 else t[:, None].expand(-1, rows, -1) for t in (slots, wslots))
    if slots.shape[1] != wslots.shape[1]:
        raise ValueError(f"key slots for {slots.shape[1]} positions, write slots for {wslots.shape[1]}")
    return slots, wslots, first


def _embedding(x: torch.Tensor, emb: torch.Tensor | None, tok: torch.Tensor | None):
    """(embedding, token) that layer 0 reads its stream from: ``emb``'s row ``tok``, or without a token x
    itself as a one-row embedding."""
    if tok is None:
        return x, torch.zeros(1, device=x.device, dtype=torch.long)
    if emb is None or emb.dim() != 2 or emb.shape[1] != x.shape[1] or not emb.is_contiguous():
        shape = None if emb is None else tuple(emb.shape)
        raise ValueError(
            f"a token needs weight emb, a contiguous [vocab, {x.shape[1]}] embedding; got {shape}"
        )
    return emb, tok


def decode_step(
    x: torch.Tensor,
    weights: dict[str, torch.Tensor],
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    pos: torch.Tensor,
    slots: torch.Tensor,
    wslots: torch.Tensor,
    flag: torch.Tensor,
    *,
    num_heads: int,
    norm: str,
    eps: float,
    programs: int,
    dense: bool = False,
    sync: bool = True,
    spin_limit: int = SPIN_LIMIT,
    phases: int | None = None,
    warps: int = 8,
    keep_l2: int | None = None,
    first: torch.Tensor | None = None,
    tok: torch.Tensor | None = None,
) -> torch.Tensor:
    """The Triton kernel: what ``reference_decode_step`` computes (x [1, C] becomes the last residual
    stream, the caches are written), in one launch of ``programs`` programs (``sync``), or one launch a
    phase (not ``sync``: the interpreter's way to run P > 1). Returns the logits [1, V]. ``dense``: each
    query attends to every cache slot up to ``pos`` (``slots`` unused), split over the programs.
    ``phases``: only the step's first that many phases (experiments/bench/phase_cost.py times them).
    ``warps``: a program's warps; ``keep_l2``: layers whose weights load marked to stay in L2 (launch_meta).
    ``slots``: the key slots [L, K] of the query at ``pos``, or a table [L,
    rows, K] whose row r is the query at full position ``first`` + r ([1] long; the kernel reads pos's row,
    so a step need not compute its slots); ``wslots`` likewise [L, 2] or a table [L, rows, 2]. ``tok``: the
    token [1] long; the kernel then reads its embedding row from ``weights["emb"]`` and x is only written."""
    w = weights
    L, B, Hkv, S, d = k_cache.shape
    C, V, F = x.shape[1], w["lm"].shape[0], w["wdown"].shape[2]
    if B != 1 or x.shape[0] != 1:
        raise ValueError(
            f"the persistent decode step is for batch 1, got caches of {B} rows, x {tuple(x.shape)}"
        )
    if norm not in ("layernorm", "rmsnorm"):
        raise ValueError(f"norm={norm!r}: the persistent step takes layernorm or rmsnorm")
    slots, wslots, first = _slot_tables(slots, wslots, pos, first)
    if not (k_cache.is_contiguous() and v_cache.is_contiguous() and k_cache.stride() == v_cache.stride()):
        raise ValueError("the stacked caches must be contiguous and alike")
    A = num_heads * d
    if num_heads % Hkv or (num_heads // Hkv) & (num_heads // Hkv - 1) or d & (d - 1):
        raise ValueError(
            f"{num_heads} query heads over {Hkv} KV heads of {d}: needs a power-of-two group and d"
        )
    shapes = {"wqkv": (L, A + 2 * Hkv * d, C), "wo": (L, C, A), "wup": (L, 2 * F, C), "wdown": (L, C, F),
              "lm": (V, C), "n1w": (L, C), "n2w": (L, C), "nfw": (C,)}  # fmt: skip
    for name, shape in shapes.items():
        if tuple(w[name].shape) != shape or not w[name].is_contiguous():
            raise ValueError(f"weight {name}: {tuple(w[name].shape)}, expected contiguous {shape}")
    emb, tok = _embedding(x, w.get("emb"), tok)
    if max(C, A, F) > kg.MAX_CHUNK:
        raise ValueError(f"rows of up to {kg.MAX_CHUNK} columns: hidden {C}, attention {A}, FFN {F}")
    has_bias = "n1b" in w
    dev, dt = x.device, w["wqkv"].dtype
    q = torch.empty(A, device=dev, dtype=dt)
    logits = torch.empty(1, V, device=dev, dtype=dt)
    # one zeroed allocation (one memset): the o-projection's two fp32 buffers, the FFN's, the barrier's
    # counter (0 bits are 0.0 as fp32)
    work = torch.zeros(3 * C + 1, device=dev, dtype=torch.int32)
    sums = work[: 3 * C].view(torch.float32)
    ob, fb, counter = sums[: 2 * C], sums[2 * C :], work[3 * C :]
    P, rows, n_keys = int(programs), slots.shape[1], slots.shape[2]
    meta = launch_meta(
        C=C, F=F, V=V, L=L, num_heads=num_heads, kv_heads=Hkv, d=d, n_keys=n_keys, norm=norm,
        has_bias=has_bias, programs=P, dense=dense, spin_limit=spin_limit, warps=warps, keep_l2=keep_l2,
    )  # fmt: skip
    # dense's partials: (max, sum, weighted values) of each query head for each of PH parts of its keys
    part = torch.empty(meta["PH"] * num_heads * (d + 2) if dense else 1, device=dev, dtype=torch.float32)
    nb = {k: w[k] if has_bias else w[k.replace("b", "w")] for k in ("n1b", "n2b", "nfb")}
    args = (
        x, q, part, ob, fb, logits,
        w["wqkv"], w["wo"], w["wup"], w["wdown"], w["lm"],
        w["n1w"], nb["n1b"], w["n2w"], nb["n2b"], w["nfw"], nb["nfb"],
        k_cache, v_cache, cos, sin, pos, first, slots.contiguous(), wslots.contiguous(), counter, flag,
        emb, tok, n_keys, rows, k_cache.stride(0), k_cache.stride(2), k_cache.stride(3),
        cos.stride(0), sin.stride(0), 1.0 / math.sqrt(d), eps,
    )  # fmt: skip
    total = meta["NPH"] * L + 1
    run = total if phases is None else min(int(phases), total)
    if sync:
        _decode_step_kernel[(P,)](*args, 0, run, SYNC=True, **meta)
    else:
        for ph in range(run):
            _decode_step_kernel[(P,)](*args, ph, ph + 1, SYNC=False, **meta)
    return logits


# the op's weight list: these, then the norms' biases for a LayerNorm model
WEIGHTS = ("wqkv", "wo", "wup", "wdown", "lm", "n1w", "n2w", "nfw")
BIASES = ("n1b", "n2b", "nfb")

decode_step_op = None
if HAS_TRITON:

    @torch.library.custom_op("halo_lab::decode_step", mutates_args=("x", "k_cache", "v_cache", "flag"))
    def decode_step_op(
        x: torch.Tensor,
        weights: list[torch.Tensor],
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        pos: torch.Tensor,
        slots: torch.Tensor,
        first: torch.Tensor,
        wslots: torch.Tensor,
        flag: torch.Tensor,
        tok: torch.Tensor,
        emb: torch.Tensor,
        num_heads: int,
        norm: str,
        eps: float,
        programs: int,
        dense: bool,
        keep_l2: int = -1,
    ) -> torch.Tensor:
        """``decode_step`` of the token ``tok`` (its embedding row of ``emb``) as one opaque op of a compiled
        step; ``weights`` in the order WEIGHTS + BIASES; ``slots`` [L, rows, K] and ``wslots`` [L, rows, 2]
        tables whose row 0 is the query at full position ``first``; x [1, C] is written. ``keep_l2`` < 0:
        None (no L2 marks)."""
        named = dict(zip(WEIGHTS + BIASES, weights), emb=emb)
        return decode_step(
            x, named, k_cache, v_cache, cos, sin, pos, slots, wslots, flag, num_heads=num_heads, norm=norm,
            eps=eps, programs=programs, dense=dense, first=first, tok=tok, keep_l2=None if keep_l2 < 0 else keep_l2,
        )  # fmt: skip

    @decode_step_op.register_fake
    def _(
        x,
        weights,
        k_cache,
        v_cache,
        cos,
        sin,
        pos,
        slots,
        first,
        wslots,
        flag,
        tok,
        emb,
        num_heads,
        norm,
        eps,
        programs,
        dense,
        keep_l2=-1,
    ):
        return x.new_empty(1, weights[4].shape[0], dtype=weights[0].dtype)


def programs_for(device: torch.device) -> int:
    """P for ``sync=True``: one program an SM on a GPU; 1 under the interpreter (programs run in turn)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1
