"""A HALO-S model's whole batch-1 decode step in one persistent launch (issue 30).

At batch 1 the step is ~44 small kernels a token (GEMVs, the fused q/k/v, the attention), each a few µs of
which most is the launch and the first loads, not the work: 153 µs a token on an H100 where the weights
read in ~19 µs (experiments/bench/README.md, "Seventh session"). Here P programs (one per SM) run the
step's phases in order and wait for each other at a grid-wide barrier between phases, so a token is one
launch. Per layer l:

    A  norm_1 + q/k/v GEMV + RoPE + cache write      (decode_qkv.py's math)
    B  each query head over the layer's K key slots  (decode.py's math)
    C  o-projection + residual                       (gemv.py's math, for all of C to F)
    D  norm_2 + gate/up GEMV
    E  SwiGLU + down projection + residual

then F: the final norm + LM head, the logits. Each GEMV phase loads its program's weight tile before it
waits at the barrier: no kernel writes the weights, so that load overlaps the wait, and after the barrier a
phase reads only the small vectors the phase before wrote (from L2). Rounding follows the unfused kernels
(the GEMV's: its input rounded to the weight's dtype, its product before the residual add), so the step's
logits equal the GEMV step's up to the order of fp32 sums; ``reference_decode_step`` is that chain of the
kernels' own torch references.

The barrier (``_grid_sync``): each program adds 1 to a counter with release semantics at GPU scope and
polls it with acquire semantics until it reaches (phase number) x P, as CUDA's cooperative grid sync does.
It needs all P programs resident at once: P is at most the SM count, one program an SM. A barrier that
spins past ``spin_limit`` polls sets ``flag`` and goes on, and later barriers then do not wait (wrong
logits, no hang); the decoder raises on it (``PersistentStep.check``).

Block sizes: each GEMV phase splits its rows into P tiles of a power-of-two number of rows, the smallest
that covers them (``tile_rows``): medium model (hidden 512, 8/2 heads of 64, FFN 2048) on 132 SMs: q/k/v
4 RoPE pairs (8 rows) x 512, o 4 x 512, gate/up 32 x 512, down 4 x 2048, head 2 x 512, so a program holds
at most 16K weight values (64 a thread at 8 warps) across the barrier.

Testing without a GPU: Triton's interpreter runs programs one after another, so a barrier at P > 1 would
wait forever there. ``sync=False`` runs the same code one phase per launch (``phase_lo``, ``phase_hi``): the
interpreter checks every phase's split of the rows at any P, and ``sync=True`` at P = 1 runs the barrier's
code. On a GPU the tests run ``sync=True`` at the SM count.
"""

from __future__ import annotations

import math

import torch

from halo_lab.graph.reference import apply_rope
from halo_lab.kernels import decode as kd
from halo_lab.kernels import gemv as kg

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - torch without triton
    HAS_TRITON = False

PHASES = 5  # per layer: A to E of the module doc (dense: 6, its attention in two)
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

    @triton.jit
    def _grid_sync(sync_ptr, flag_ptr, target, SPIN: tl.constexpr):
        """Wait until the counter at ``sync_ptr`` reaches ``target`` after adding this program's 1."""
        tl.debug_barrier()  # this program's stores before its arrival
        tl.atomic_add(sync_ptr, 1, sem="release", scope="gpu")
        seen = tl.atomic_add(sync_ptr, 0, sem="acquire", scope="gpu")
        # after one timeout the step's later barriers do not wait either (the logits are wrong already)
        spins = tl.where(tl.load(flag_ptr, volatile=True) == 0, 0, SPIN)
        while (seen < target) & (spins < SPIN):
            seen = tl.atomic_add(sync_ptr, 0, sem="acquire", scope="gpu")
            spins += 1
        if seen < target:
            tl.atomic_xchg(flag_ptr, 1)
        tl.debug_barrier()

    @triton.jit
    def _tile(w_ptr, n, in_n, K, CHUNK: tl.constexpr):
        """The [rows, CHUNK] weight tile of rows ``n`` (the whole row: K <= CHUNK)."""
        kk = tl.arange(0, CHUNK)
        return tl.load(
            w_ptr + n[:, None] * K + kk[None, :], mask=in_n[:, None] & (kk < K)[None, :], other=0.0
        )

    @triton.jit
    def _begin(ph, sync_ptr, flag_ptr, SYNC: tl.constexpr, SPIN: tl.constexpr):
        """Before phase ``ph`` (> 0): every program has finished phase ph - 1."""
        if SYNC:
            _grid_sync(sync_ptr, flag_ptr, ph * tl.num_programs(0), SPIN)

    @triton.jit
    def _gemv_phase(ph, lo, hi, w_ptr, x_in, nw_ptr, nb_ptr, out_ptr, res_ptr, sync_ptr, flag_ptr, K, N, eps,
                    NORM: tl.constexpr, HAS_BIAS: tl.constexpr, SWIGLU: tl.constexpr, HAS_RES: tl.constexpr,
                    BN: tl.constexpr, CHUNK: tl.constexpr, SYNC: tl.constexpr, SPIN: tl.constexpr):  # fmt: skip
        """out[n] = (res[n] +) prologue(x_in) . w[n] for this program's BN rows; the tile loads before the
        barrier."""
        if (ph >= lo) & (ph < hi):
            n = tl.program_id(0) * BN + tl.arange(0, BN)
            in_n = n < N
            wt = _tile(w_ptr, n, in_n, K, CHUNK)
            _begin(ph, sync_ptr, flag_ptr, SYNC, SPIN)
            acc = kg._dot_loaded(wt, x_in, nw_ptr, nb_ptr, K, eps, NORM, HAS_BIAS, SWIGLU, CHUNK, x_in, False)
            y = acc.to(wt.dtype)
            if HAS_RES:
                y = (y.to(tl.float32) + tl.load(res_ptr + n, mask=in_n, other=0.0).to(tl.float32)).to(
                    wt.dtype
                )
            tl.store(out_ptr + n, y, mask=in_n)

    @triton.jit
    def _qkv_phase(ph, lo, hi, w_ptr, x_ptr, nw_ptr, nb_ptr, q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, pos,
                   ws_ptr, sync_ptr, flag_ptr, s_ch, s_cs, s_cos, s_sin, eps,
                   C: tl.constexpr, HQ: tl.constexpr, HKV: tl.constexpr, HALF: tl.constexpr,
                   NORM: tl.constexpr, HAS_BIAS: tl.constexpr, BP: tl.constexpr, CHUNK: tl.constexpr,
                   SYNC: tl.constexpr, SPIN: tl.constexpr):  # fmt: skip
        """norm + q/k/v + RoPE + cache write (decode_qkv's math): a tile holds both rows of its BP RoPE
        pairs; k and v go to the slots at ws_ptr[0] and ws_ptr[1] (-1: none)."""
        if (ph >= lo) & (ph < hi):
            pid = tl.program_id(0)
            D: tl.constexpr = 2 * HALF
            PAIRS: tl.constexpr = (HQ + 2 * HKV) * HALF
            r = tl.arange(0, 2 * BP)
            pr = pid * BP + r // 2
            wt = _tile(w_ptr, (pr // HALF) * D + pr % HALF + (r % 2) * HALF, pr < PAIRS, C, CHUNK)
            if ph > 0:
                _begin(ph, sync_ptr, flag_ptr, SYNC, SPIN)
            y = kg._dot_loaded(wt, x_ptr, nw_ptr, nb_ptr, C, eps, NORM, HAS_BIAS, False, CHUNK, x_ptr, False)
            x1, x2 = tl.split(tl.reshape(y.to(wt.dtype).to(tl.float32), [BP, 2]))
            p = pid * BP + tl.arange(0, BP)
            h = p // HALF  # q heads, then k heads, then v heads
            i = p % HALF
            c1 = tl.load(cos_ptr + pos * s_cos + i).to(tl.float32)
            c2 = tl.load(cos_ptr + pos * s_cos + HALF + i).to(tl.float32)
            s1 = tl.load(sin_ptr + pos * s_sin + i).to(tl.float32)
            s2 = tl.load(sin_ptr + pos * s_sin + HALF + i).to(tl.float32)
            roped = h < HQ + HKV
            o1 = tl.where(roped, x1 * c1 - x2 * s1, x1).to(wt.dtype)
            o2 = tl.where(roped, x2 * c2 + x1 * s2, x2).to(wt.dtype)
            is_q = (p < PAIRS) & (h < HQ)
            tl.store(q_ptr + h * D + i, o1, mask=is_q)
            tl.store(q_ptr + h * D + HALF + i, o2, mask=is_q)
            is_k = (p < PAIRS) & (h >= HQ) & (h < HQ + HKV)
            is_v = (p < PAIRS) & (h >= HQ + HKV)
            hk = tl.where(is_k, h - HQ, h - HQ - HKV) * s_ch + i
            for w in range(2):  # the slot of pos, then a ring cache's store slot
                slot = tl.load(ws_ptr + w).to(tl.int64)
                if slot >= 0:
                    at = slot * s_cs + hk
                    tl.store(k_ptr + at, o1, mask=is_k)
                    tl.store(k_ptr + at + HALF, o2, mask=is_k)
                    tl.store(v_ptr + at, o1, mask=is_v)
                    tl.store(v_ptr + at + HALF, o2, mask=is_v)

    @triton.jit
    def _attend_phase(ph, lo, hi, q_ptr, k_ptr, v_ptr, slots_ptr, att_ptr, sync_ptr, flag_ptr, n_keys, s_ch,
                      s_cs, scale, HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
                      BLOCK_K: tl.constexpr, SYNC: tl.constexpr, SPIN: tl.constexpr):  # fmt: skip
        """Each query head over the layer's key slots (decode.py's math), heads dealt round the programs."""
        if (ph >= lo) & (ph < hi):
            _begin(ph, sync_ptr, flag_ptr, SYNC, SPIN)
            j = tl.arange(0, BLOCK_K)
            c = tl.arange(0, D)
            slot = tl.load(slots_ptr + j, mask=j < n_keys, other=-1)
            valid = slot >= 0
            safe = tl.where(valid, slot, 0).to(tl.int64)
            for hq in range(tl.program_id(0), HQ, tl.num_programs(0)):
                q = tl.load(q_ptr + hq * D + c).to(tl.float32)
                at = (hq // (HQ // HKV)) * s_ch + safe[:, None] * s_cs + c[None, :]
                kt = tl.load(k_ptr + at, mask=valid[:, None], other=0.0)
                s = tl.sum(kt.to(tl.float32) * q[None, :], axis=1) * scale
                s = tl.where(valid, s, float("-inf"))
                e = tl.where(valid, tl.exp(s - tl.max(s, axis=0)), 0.0)
                e = e / tl.sum(e, axis=0)
                vt = tl.load(v_ptr + at, mask=valid[:, None], other=0.0)
                o = tl.sum(vt.to(tl.float32) * e[:, None], axis=0)
                tl.store(att_ptr + hq * D + c, o.to(att_ptr.dtype.element_ty))

    @triton.jit
    def _dense_partial_phase(ph, lo, hi, q_ptr, k_ptr, v_ptr, part_ptr, sync_ptr, flag_ptr, pos, s_ch, s_cs,
                             scale, HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, PH: tl.constexpr,
                             CH: tl.constexpr, SYNC: tl.constexpr, SPIN: tl.constexpr):  # fmt: skip
        """Dense attention split over the keys 0..pos: unit (KV head hk, part j) of HKV x PH takes every
        PH-th chunk of CH keys for the hk's G query heads, and writes its online-softmax partial (max, sum,
        weighted values) for the combine phase. Units are dealt round the programs."""
        if (ph >= lo) & (ph < hi):
            _begin(ph, sync_ptr, flag_ptr, SYNC, SPIN)
            G: tl.constexpr = HQ // HKV
            g = tl.arange(0, G)
            c = tl.arange(0, D)
            for u in range(tl.program_id(0), HKV * PH, tl.num_programs(0)):
                hk = u // PH
                q = tl.load(q_ptr + (hk * G + g)[:, None] * D + c[None, :]).to(tl.float32)  # [G, D]
                m = tl.full([G], float("-inf"), tl.float32)
                lsum = tl.zeros([G], tl.float32)
                acc = tl.zeros([G, D], tl.float32)
                for start in range((u % PH) * CH, pos + 1, PH * CH):
                    j = start + tl.arange(0, CH)
                    valid = j <= pos
                    at = hk * s_ch + j.to(tl.int64)[:, None] * s_cs + c[None, :]
                    kt = tl.load(k_ptr + at, mask=valid[:, None], other=0.0).to(tl.float32)  # [CH, D]
                    s = tl.sum(q[:, None, :] * kt[None, :, :], axis=2) * scale  # [G, CH]
                    s = tl.where(valid[None, :], s, float("-inf"))
                    m_new = tl.maximum(m, tl.max(s, axis=1))
                    e = tl.where(valid[None, :], tl.exp(s - m_new[:, None]), 0.0)
                    alpha = tl.exp(m - m_new)
                    vt = tl.load(v_ptr + at, mask=valid[:, None], other=0.0).to(tl.float32)
                    lsum = lsum * alpha + tl.sum(e, axis=1)
                    acc = acc * alpha[:, None] + tl.sum(e[:, :, None] * vt[None, :, :], axis=1)
                    m = m_new
                base = part_ptr + u * (G * (D + 2))
                tl.store(base + g, m)
                tl.store(base + G + g, lsum)
                tl.store(base + 2 * G + g[:, None] * D + c[None, :], acc)

    @triton.jit
    def _dense_combine_phase(ph, lo, hi, part_ptr, att_ptr, sync_ptr, flag_ptr, HQ: tl.constexpr,
                             HKV: tl.constexpr, D: tl.constexpr, PH: tl.constexpr, PH2: tl.constexpr,
                             SYNC: tl.constexpr, SPIN: tl.constexpr):  # fmt: skip
        """Each query head's PH partials into its attention output (the log-sum-exp merge)."""
        if (ph >= lo) & (ph < hi):
            _begin(ph, sync_ptr, flag_ptr, SYNC, SPIN)
            G: tl.constexpr = HQ // HKV
            r = tl.arange(0, PH2)
            c = tl.arange(0, D)
            for hq in range(tl.program_id(0), HQ, tl.num_programs(0)):
                g = hq % G
                base = part_ptr + ((hq // G) * PH + r) * (G * (D + 2))
                m = tl.load(base + g, mask=r < PH, other=float("-inf"))
                wgt = tl.where(r < PH, tl.exp(m - tl.max(m, axis=0)), 0.0)  # 0 for a part with no keys too
                lsum = tl.sum(wgt * tl.load(base + G + g, mask=r < PH, other=0.0), axis=0)
                acc = tl.load(base[:, None] + 2 * G + g * D + c[None, :], mask=(r < PH)[:, None], other=0.0)
                o = tl.sum(wgt[:, None] * acc, axis=0) / lsum
                tl.store(att_ptr + hq * D + c, o.to(att_ptr.dtype.element_ty))

    # fmt: off
    @triton.jit
    def _decode_step_kernel(
        x_ptr, q_ptr, att_ptr, h_ptr, part_ptr, logits_ptr,
        wqkv_ptr, wo_ptr, wup_ptr, wdown_ptr, lm_ptr,
        n1w_ptr, n1b_ptr, n2w_ptr, n2b_ptr, nfw_ptr, nfb_ptr,
        k_ptr, v_ptr, cos_ptr, sin_ptr, pos_ptr, slots_ptr, wslots_ptr, sync_ptr, flag_ptr,
        n_keys, s_cl, s_ch, s_cs, s_cos, s_sin, scale, eps, lo, hi,
        L: tl.constexpr, C: tl.constexpr, HQ: tl.constexpr, HKV: tl.constexpr, HALF: tl.constexpr,
        F: tl.constexpr, V: tl.constexpr, NORM: tl.constexpr, HAS_BIAS: tl.constexpr,
        BP_QKV: tl.constexpr, BN_O: tl.constexpr, BN_UP: tl.constexpr, BN_DOWN: tl.constexpr,
        BN_HEAD: tl.constexpr, CH_C: tl.constexpr, CH_A: tl.constexpr, CH_F: tl.constexpr,
        BLOCK_K: tl.constexpr, DENSE: tl.constexpr, PH: tl.constexpr, PH2: tl.constexpr,
        CH_KEYS: tl.constexpr, NPH: tl.constexpr, SYNC: tl.constexpr, SPIN: tl.constexpr,
    ):
        """Phases [lo, hi) of the step (the module doc), a barrier before each but the first. NPH phases a
        layer: A, B, C, D, E, and for DENSE the attention in two (B: partials over the keys, B2: merge)."""
        A: tl.constexpr = HQ * 2 * HALF  # attention width
        W_QKV: tl.constexpr = (HQ + 2 * HKV) * 2 * HALF * C  # per-layer sizes of the stacked weights
        pos = tl.load(pos_ptr)
        for layer in range(L):
            lc = tl.cast(layer, tl.int64)
            ph = NPH * layer
            k_l, v_l = k_ptr + lc * s_cl, v_ptr + lc * s_cl
            _qkv_phase(ph, lo, hi, wqkv_ptr + lc * W_QKV, x_ptr, n1w_ptr + lc * C, n1b_ptr + lc * C, q_ptr,
                       k_l, v_l, cos_ptr, sin_ptr, pos, wslots_ptr + lc * 2, sync_ptr, flag_ptr, s_ch, s_cs,
                       s_cos, s_sin, eps, C, HQ, HKV, HALF, NORM, HAS_BIAS, BP_QKV, CH_C, SYNC, SPIN)
            if DENSE:
                _dense_partial_phase(ph + 1, lo, hi, q_ptr, k_l, v_l, part_ptr, sync_ptr, flag_ptr, pos, s_ch,
                                     s_cs, scale, HQ, HKV, 2 * HALF, PH, CH_KEYS, SYNC, SPIN)
                _dense_combine_phase(ph + 2, lo, hi, part_ptr, att_ptr, sync_ptr, flag_ptr, HQ, HKV, 2 * HALF,
                                     PH, PH2, SYNC, SPIN)
            else:
                _attend_phase(ph + 1, lo, hi, q_ptr, k_l, v_l, slots_ptr + lc * n_keys, att_ptr, sync_ptr,
                              flag_ptr, n_keys, s_ch, s_cs, scale, HQ, HKV, 2 * HALF, BLOCK_K, SYNC, SPIN)
            # o-projection + residual; norm_2 + gate/up; SwiGLU + down projection + residual
            ph = ph + NPH - 3
            _gemv_phase(ph, lo, hi, wo_ptr + lc * (C * A), att_ptr, wo_ptr, wo_ptr, x_ptr, x_ptr, sync_ptr,
                        flag_ptr, A, C, eps, 0, False, False, True, BN_O, CH_A, SYNC, SPIN)
            _gemv_phase(ph + 1, lo, hi, wup_ptr + lc * (2 * F * C), x_ptr, n2w_ptr + lc * C, n2b_ptr + lc * C,
                        h_ptr, h_ptr, sync_ptr, flag_ptr, C, 2 * F, eps, NORM, HAS_BIAS, False, False, BN_UP,
                        CH_C, SYNC, SPIN)
            _gemv_phase(ph + 2, lo, hi, wdown_ptr + lc * (C * F), h_ptr, wdown_ptr, wdown_ptr, x_ptr, x_ptr,
                        sync_ptr, flag_ptr, F, C, eps, 0, False, True, True, BN_DOWN, CH_F, SYNC, SPIN)
        # the final norm + LM head
        _gemv_phase(NPH * L, lo, hi, lm_ptr, x_ptr, nfw_ptr, nfb_ptr, logits_ptr, logits_ptr, sync_ptr,
                    flag_ptr, C, V, eps, NORM, HAS_BIAS, False, False, BN_HEAD, CH_C, SYNC, SPIN)
    # fmt: on


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
) -> torch.Tensor:
    """The Triton kernel: what ``reference_decode_step`` computes (x [1, C] becomes the last residual
    stream, the caches are written), in one launch of ``programs`` programs (``sync``), or one launch a
    phase (not ``sync``: the interpreter's way to run P > 1). Returns the logits [1, V]. ``dense``: each
    query attends to every cache slot up to ``pos`` (``slots`` unused), split over the programs."""
    w = weights
    L, B, Hkv, S, d = k_cache.shape
    C, V, F = x.shape[1], w["lm"].shape[0], w["wdown"].shape[2]
    if B != 1 or x.shape[0] != 1:
        raise ValueError(
            f"the persistent decode step is for batch 1, got caches of {B} rows, x {tuple(x.shape)}"
        )
    if norm not in ("layernorm", "rmsnorm"):
        raise ValueError(f"norm={norm!r}: the persistent step takes layernorm or rmsnorm")
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
    if max(C, A, F) > kg.MAX_CHUNK:
        raise ValueError(f"rows of up to {kg.MAX_CHUNK} columns: hidden {C}, attention {A}, FFN {F}")
    has_bias = "n1b" in w
    dev, dt = x.device, w["wqkv"].dtype
    q, att = torch.empty(A, device=dev, dtype=dt), torch.empty(A, device=dev, dtype=dt)
    h = torch.empty(2 * F, device=dev, dtype=dt)
    logits = torch.empty(1, V, device=dev, dtype=dt)
    counter = torch.zeros(1, device=dev, dtype=torch.int32)
    P = int(programs)
    parts = max(1, P // Hkv) if dense else 1  # PH: the programs of one KV head's keys
    part = torch.empty(
        Hkv * parts * (num_heads // Hkv) * (d + 2) if dense else 1, device=dev, dtype=torch.float32
    )
    n_keys = slots.shape[1]
    nb = {k: w[k] if has_bias else w[k.replace("b", "w")] for k in ("n1b", "n2b", "nfb")}
    pairs = (num_heads + 2 * Hkv) * d // 2
    nph = PHASES + 1 if dense else PHASES
    args = (
        x, q, att, h, part, logits,
        w["wqkv"], w["wo"], w["wup"], w["wdown"], w["lm"],
        w["n1w"], nb["n1b"], w["n2w"], nb["n2b"], w["nfw"], nb["nfb"],
        k_cache, v_cache, cos, sin, pos, slots.contiguous(), wslots.contiguous(), counter, flag,
        n_keys, k_cache.stride(0), k_cache.stride(2), k_cache.stride(3), cos.stride(0), sin.stride(0),
        1.0 / math.sqrt(d), eps,
    )  # fmt: skip
    meta = dict(
        L=L, C=C, HQ=num_heads, HKV=Hkv, HALF=d // 2, F=F, V=V,
        NORM=kg.NORMS[norm], HAS_BIAS=has_bias,
        BP_QKV=tile_rows(pairs, P), BN_O=tile_rows(C, P), BN_UP=tile_rows(2 * F, P),
        BN_DOWN=tile_rows(C, P), BN_HEAD=tile_rows(V, P),
        CH_C=triton.next_power_of_2(C), CH_A=triton.next_power_of_2(A), CH_F=triton.next_power_of_2(F),
        BLOCK_K=max(2, triton.next_power_of_2(n_keys)), DENSE=dense, PH=parts,
        PH2=max(2, triton.next_power_of_2(parts)), CH_KEYS=DENSE_CHUNK, NPH=nph, SPIN=spin_limit, num_warps=8,
    )  # fmt: skip
    if sync:
        _decode_step_kernel[(P,)](*args, 0, nph * L + 1, SYNC=True, **meta)
    else:
        for ph in range(nph * L + 1):
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
        wslots: torch.Tensor,
        flag: torch.Tensor,
        num_heads: int,
        norm: str,
        eps: float,
        programs: int,
        dense: bool,
    ) -> torch.Tensor:
        """``decode_step`` as one opaque op of a compiled step; ``weights`` in the order WEIGHTS + BIASES."""
        named = dict(zip(WEIGHTS + BIASES, weights))
        return decode_step(
            x, named, k_cache, v_cache, cos, sin, pos, slots, wslots, flag, num_heads=num_heads, norm=norm,
            eps=eps, programs=programs, dense=dense,
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
        wslots,
        flag,
        num_heads,
        norm,
        eps,
        programs,
        dense,
    ):
        return x.new_empty(1, weights[4].shape[0], dtype=weights[0].dtype)


def programs_for(device: torch.device) -> int:
    """P for ``sync=True``: one program an SM on a GPU; 1 under the interpreter (programs run in turn)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1
