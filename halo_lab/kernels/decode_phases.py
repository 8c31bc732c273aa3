"""The phases of the persistent decode step (``decode_step.py``), three a layer and one for the head.

A phase is one step's worth of work split over the P programs of the launch; a grid barrier (``_begin``)
separates two phases. A barrier costs about 2.5 µs on an H100 at the step's GEMV size
(experiments/bench/README.md, "Twenty-fourth session"), so the step has as few phases as its data flow
allows: per layer

    A   norm_1 + q/k/v GEMV + RoPE + cache write  (decode_qkv.py's math)
   (A2  dense only: the attention's partials over the keys, merged in BC)
    BC  attention and o-projection, unit (query head, slice of o's rows): the head's attention, then its
        columns of W_o times it, a partial sum of those rows added into an fp32 buffer with atomics
        (decode_attn_o.py's split, per query head)
    DE  norm_2 + SwiGLU FFN, unit (slice of hidden units): their gate/up rows, SwiGLU, their columns of
        W_down, a partial sum of every output added into an fp32 buffer (decode_ffn.py's split-K)

The residual stream is x (bf16) plus the two buffers not yet added to it: ``ob`` (the o-projection's fp32
sums; two of them, by layer parity) and ``fb`` (the FFN's). Whoever reads the stream rounds as the unfused
step does (``_residual``: round(round(x + round(ob)) + round(fb))). In phase BC of layer l, the units of
query head 0 fold layer l-1's buffers into their rows of x and zero them: no other unit reads x or those
buffers in that phase, and the barrier after it orders the zeros before the next atomics into them. ob
alternates with the layer because BC adds into this layer's ob while it folds the last one's.

Every phase loads its first unit's weights before it waits at the barrier: no kernel writes the weights,
so that load overlaps the wait. In BC a program with more than one unit (P below the query heads: the
interpreter's tests) loads the next unit's weights after the one before.

Measured on an H100 (experiments/bench/README.md, "Twenty-fifth" to "Twenty-seventh session"): the
medium model's 25 phases take 106-111 µs. Phase by phase (experiments/bench/phase_cost.py) layers 0-2 cost
2.6-4.4 µs a phase against a GEMV phase's 2.5 in the barrier probe, and the FFN phase grows to 4.9-13.5
µs from layer 3 on (a probe of the step's prefixes: the prefix whose weights cross L2's 50 MB pays for
earlier phases' misses too, so the later costs are not those phases' own). Asking for the FFN's weights two phases early (loads, or PTX L2 prefetches) moved that
cost into phases A and BC and made the step 11-12% slower, so the step does not prefetch.
"""

from __future__ import annotations

from halo_lab.kernels import gemv as kg

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - torch without triton
    HAS_TRITON = False


if HAS_TRITON:

    @triton.jit
    def _wait_count(sync_ptr, flag_ptr, target, SPIN: tl.constexpr):
        """Poll the arrival counter at ``sync_ptr`` with acquire atomics at GPU scope until it reaches
        ``target``. Past SPIN polls it sets ``flag_ptr``, and once that is set later waits do not wait (the
        results are wrong already; experiments/bench/phase_sync.py's probe waits with this too). Polling
        with volatile loads instead was slower on an H100 (experiments/bench/README.md, "Twenty-seventh
        session")."""
        spins = tl.where(tl.load(flag_ptr, volatile=True) == 0, 0, SPIN)
        seen = tl.atomic_add(sync_ptr, 0, sem="acquire", scope="gpu")
        while (seen < target) & (spins < SPIN):
            seen = tl.atomic_add(sync_ptr, 0, sem="acquire", scope="gpu")
            spins += 1
        if seen < target:
            tl.atomic_xchg(flag_ptr, 1)

    @triton.jit
    def _grid_sync(sync_ptr, flag_ptr, target, SPIN: tl.constexpr):
        """Add this program's 1 to the counter at ``sync_ptr`` and wait until it reaches ``target``."""
        tl.debug_barrier()  # this program's stores before its arrival
        tl.atomic_add(sync_ptr, 1, sem="release", scope="gpu")
        _wait_count(sync_ptr, flag_ptr, target, SPIN)
        tl.debug_barrier()

    @triton.jit
    def _begin(ph, sync_ptr, flag_ptr, SYNC: tl.constexpr, SPIN: tl.constexpr):
        """Before phase ``ph`` (> 0): every program has finished phase ph - 1 (SYNC false: one launch a
        phase, nothing to wait for)."""
        if SYNC:
            _grid_sync(sync_ptr, flag_ptr, ph * tl.num_programs(0), SPIN)

    @triton.jit
    def _wload(ptrs, mask, EV: tl.constexpr):
        """Weights at ``ptrs`` (0 where not ``mask``), marked for L2 by EV: 0 no mark, 1 ``evict_last`` (to
        stay), 2 ``evict_first`` (to leave first); decode_step.py's ``keep_l2``."""
        if EV == 1:
            w = tl.load(ptrs, mask=mask, other=0.0, eviction_policy="evict_last")
        elif EV == 2:
            w = tl.load(ptrs, mask=mask, other=0.0, eviction_policy="evict_first")
        else:
            w = tl.load(ptrs, mask=mask, other=0.0)
        return w

    @triton.jit
    def _tile(w_ptr, n, in_n, K, CHUNK: tl.constexpr, EV: tl.constexpr = 0):
        """The [rows, CHUNK] weight tile of rows ``n`` (the whole row: K <= CHUNK), marked for L2 by EV."""
        kk = tl.arange(0, CHUNK)
        return _wload(w_ptr + n[:, None] * K + kk[None, :], in_n[:, None] & (kk < K)[None, :], EV)

    @triton.jit
    def _residual(x_ptr, ob_ptr, fb_ptr, kk, in_k, dt: tl.constexpr, FB: tl.constexpr):
        """The residual stream's columns kk in fp32 (0 where not in_k): x + the o-projection's sums, rounded,
        + (FB) the FFN's, rounded, each sum rounded first as the unfused GEMV rounds its output."""
        x = tl.load(x_ptr + kk, mask=in_k, other=0.0).to(tl.float32)
        o = tl.load(ob_ptr + kk, mask=in_k, other=0.0).to(dt).to(tl.float32)
        x = (x + o).to(dt).to(tl.float32)
        if FB:
            f = tl.load(fb_ptr + kk, mask=in_k, other=0.0).to(dt).to(tl.float32)
            x = (x + f).to(dt).to(tl.float32)
        return x

    @triton.jit
    def _write_kv(k_ptr, v_ptr, slot, s_cs, hk, o1, o2, is_k, is_v, HALF: tl.constexpr):
        """The new key's and value's halves o1 / o2 into cache slot ``slot`` (none if negative)."""
        if slot >= 0:
            at = slot * s_cs + hk
            tl.store(k_ptr + at, o1, mask=is_k)
            tl.store(k_ptr + at + HALF, o2, mask=is_k)
            tl.store(v_ptr + at, o1, mask=is_v)
            tl.store(v_ptr + at + HALF, o2, mask=is_v)

    @triton.jit
    def _qkv_phase(ph, lo, hi, w_ptr, x_in, ob_ptr, fb_ptr, nw_ptr, nb_ptr, q_ptr, k_ptr, v_ptr, cos_ptr,
                   sin_ptr, pos, ws_ptr, sync_ptr, flag_ptr, s_ch, s_cs, s_cos, s_sin, eps,
                   C: tl.constexpr, HQ: tl.constexpr, HKV: tl.constexpr, HALF: tl.constexpr,
                   NORM: tl.constexpr, HAS_BIAS: tl.constexpr, BP: tl.constexpr, CHUNK: tl.constexpr,
                   SYNC: tl.constexpr, SPIN: tl.constexpr, EV: tl.constexpr):  # fmt: skip
        """A: norm + q/k/v + RoPE + cache write (decode_qkv's math) of the residual stream: a tile holds both
        rows of its BP RoPE pairs; k and v go to the slots at ws_ptr[0] and ws_ptr[1] (-1: none). x_in: x, or
        in layer 0 the token's embedding row (no layer before has written x)."""
        if (ph >= lo) & (ph < hi):
            pid = tl.program_id(0)
            D: tl.constexpr = 2 * HALF
            PAIRS: tl.constexpr = (HQ + 2 * HKV) * HALF
            r = tl.arange(0, 2 * BP)
            pr = pid * BP + r // 2
            wt = _tile(w_ptr, (pr // HALF) * D + pr % HALF + (r % 2) * HALF, pr < PAIRS, C, CHUNK, EV)
            p = pid * BP + tl.arange(0, BP)
            h = p // HALF  # q heads, then k heads, then v heads
            i = p % HALF
            # the rotation and the write slots are inputs no phase writes: loaded before the wait too
            c1 = tl.load(cos_ptr + pos * s_cos + i).to(tl.float32)
            c2 = tl.load(cos_ptr + pos * s_cos + HALF + i).to(tl.float32)
            s1 = tl.load(sin_ptr + pos * s_sin + i).to(tl.float32)
            s2 = tl.load(sin_ptr + pos * s_sin + HALF + i).to(tl.float32)
            slot0 = tl.load(ws_ptr).to(tl.int64)
            slot1 = tl.load(ws_ptr + 1).to(tl.int64)
            if ph > 0:
                _begin(ph, sync_ptr, flag_ptr, SYNC, SPIN)
            kk = tl.arange(0, CHUNK)
            a = _residual(x_in, ob_ptr, fb_ptr, kk, kk < C, wt.dtype, True)
            y = kg._dot_input(wt, a, nw_ptr, nb_ptr, C, eps, NORM, HAS_BIAS, CHUNK)
            x1, x2 = tl.split(tl.reshape(y.to(wt.dtype).to(tl.float32), [BP, 2]))
            roped = h < HQ + HKV
            o1 = tl.where(roped, x1 * c1 - x2 * s1, x1).to(wt.dtype)
            o2 = tl.where(roped, x2 * c2 + x1 * s2, x2).to(wt.dtype)
            is_q = (p < PAIRS) & (h < HQ)
            tl.store(q_ptr + h * D + i, o1, mask=is_q)
            tl.store(q_ptr + h * D + HALF + i, o2, mask=is_q)
            is_k = (p < PAIRS) & (h >= HQ) & (h < HQ + HKV)
            is_v = (p < PAIRS) & (h >= HQ + HKV)
            hk = tl.where(is_k, h - HQ, h - HQ - HKV) * s_ch + i
            _write_kv(k_ptr, v_ptr, slot0, s_cs, hk, o1, o2, is_k, is_v, HALF)  # the slot of pos
            _write_kv(k_ptr, v_ptr, slot1, s_cs, hk, o1, o2, is_k, is_v, HALF)  # a ring cache's store slot

    @triton.jit
    def _dense_partial_phase(ph, lo, hi, q_ptr, k_ptr, v_ptr, part_ptr, sync_ptr, flag_ptr, pos, s_ch, s_cs,
                             scale, HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, PH: tl.constexpr,
                             CH: tl.constexpr, SYNC: tl.constexpr, SPIN: tl.constexpr):  # fmt: skip
        """A2, dense attention split over the keys 0..pos: unit (KV head hk, part j) of HKV x PH takes every
        PH-th chunk of CH keys for the hk's G query heads, and writes its online-softmax partial (max, sum,
        weighted values) for phase BC to merge. Units are dealt round the programs."""
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
    def _head_over_slots(hq, q_ptr, k_ptr, v_ptr, slots_ptr, n_keys, s_ch, s_cs, scale, HQ: tl.constexpr,
                         HKV: tl.constexpr, D: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
        """Query head hq over the layer's key slots (decode.py's math): fp32 [D]."""
        j = tl.arange(0, BLOCK_K)
        c = tl.arange(0, D)
        slot = tl.load(slots_ptr + j, mask=j < n_keys, other=-1)
        valid = slot >= 0
        safe = tl.where(valid, slot, 0).to(tl.int64)
        q = tl.load(q_ptr + hq * D + c).to(tl.float32)
        at = (hq // (HQ // HKV)) * s_ch + safe[:, None] * s_cs + c[None, :]
        kt = tl.load(k_ptr + at, mask=valid[:, None], other=0.0)
        vt = tl.load(v_ptr + at, mask=valid[:, None], other=0.0)  # with K: one round trip, not two
        s = tl.sum(kt.to(tl.float32) * q[None, :], axis=1) * scale
        s = tl.where(valid, s, float("-inf"))
        e = tl.where(valid, tl.exp(s - tl.max(s, axis=0)), 0.0)
        e = e / tl.sum(e, axis=0)
        return tl.sum(vt.to(tl.float32) * e[:, None], axis=0)

    @triton.jit
    def _head_from_parts(hq, part_ptr, HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
                         PH: tl.constexpr, PH2: tl.constexpr):  # fmt: skip
        """Query head hq's PH dense partials merged (the log-sum-exp merge): fp32 [D]."""
        G: tl.constexpr = HQ // HKV
        r = tl.arange(0, PH2)
        c = tl.arange(0, D)
        g = hq % G
        base = part_ptr + ((hq // G) * PH + r) * (G * (D + 2))
        m = tl.load(base + g, mask=r < PH, other=float("-inf"))
        wgt = tl.where(r < PH, tl.exp(m - tl.max(m, axis=0)), 0.0)  # 0 for a part with no keys too
        lsum = tl.sum(wgt * tl.load(base + G + g, mask=r < PH, other=0.0), axis=0)
        acc = tl.load(base[:, None] + 2 * G + g * D + c[None, :], mask=(r < PH)[:, None], other=0.0)
        return tl.sum(wgt[:, None] * acc, axis=0) / lsum

    @triton.jit
    def _o_tile(wo_ptr, u, C: tl.constexpr, HQ: tl.constexpr, D: tl.constexpr, BN: tl.constexpr,
                EV: tl.constexpr):  # fmt: skip
        """Unit u's [BN, D] slice of W_o [C, HQ * D]: rows of slice u // HQ, columns of head u % HQ."""
        n = (u // HQ) * BN + tl.arange(0, BN)
        c = tl.arange(0, D)
        at = wo_ptr + n[:, None] * (HQ * D) + (u % HQ) * D + c[None, :]
        # u >= U: n >= NS * BN >= C
        return _wload(at, (n < C)[:, None] & (c < D)[None, :], EV)

    @triton.jit
    def _attend_o_phase(ph, lo, hi, q_ptr, k_ptr, v_ptr, slots_ptr, part_ptr, wo_ptr, x_in, x_ptr, ob_in,
                        ob_out, fb_ptr, sync_ptr, flag_ptr, n_keys, s_ch, s_cs, scale, C: tl.constexpr,
                        HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, NS: tl.constexpr,
                        BN: tl.constexpr, BLOCK_K: tl.constexpr, DENSE: tl.constexpr, PH: tl.constexpr,
                        PH2: tl.constexpr, SYNC: tl.constexpr, SPIN: tl.constexpr,
                        EV: tl.constexpr):  # fmt: skip
        """BC: unit (query head u % HQ, slice u // HQ of BN rows of o) of HQ x NS: the head's attention (over
        its key slots, or DENSE: merged from A2's partials), rounded, times its [BN, D] of W_o, added into
        ob_out. Head 0's units first fold ob_in and fb into their rows of x (the module doc), read from x_in
        (layer 0: the token's embedding row)."""
        if (ph >= lo) & (ph < hi):
            pid = tl.program_id(0)
            U: tl.constexpr = HQ * NS
            wt = _o_tile(wo_ptr, pid, C, HQ, D, BN, EV)
            _begin(ph, sync_ptr, flag_ptr, SYNC, SPIN)
            dt = wt.dtype
            for u in range(pid, U, tl.num_programs(0)):
                hq = u % HQ
                n = (u // HQ) * BN + tl.arange(0, BN)
                in_n = n < C
                if hq == 0:
                    xr = _residual(x_in, ob_in, fb_ptr, n, in_n, dt, True)
                    tl.store(x_ptr + n, xr.to(dt), mask=in_n)
                    tl.store(ob_in + n, tl.zeros([BN], tl.float32), mask=in_n)
                    tl.store(fb_ptr + n, tl.zeros([BN], tl.float32), mask=in_n)
                if DENSE:
                    o = _head_from_parts(hq, part_ptr, HQ, HKV, D, PH, PH2)
                else:
                    o = _head_over_slots(hq, q_ptr, k_ptr, v_ptr, slots_ptr, n_keys, s_ch, s_cs, scale, HQ,
                                         HKV, D, BLOCK_K)  # fmt: skip
                o = o.to(dt).to(tl.float32)  # the attention's output rounding
                part = tl.sum(wt.to(tl.float32) * o[None, :], axis=1)
                tl.atomic_add(ob_out + n, part, mask=in_n, sem="relaxed")
                wt = _o_tile(wo_ptr, u + tl.num_programs(0), C, HQ, D, BN, EV)

    @triton.jit
    def _ffn_tiles(wu_ptr, wd_ptr, u, C: tl.constexpr, F: tl.constexpr, BH: tl.constexpr,
                   CHUNK: tl.constexpr, EV: tl.constexpr):  # fmt: skip
        """Unit u's gate rows, up rows [BH, CHUNK] and W_down columns [CHUNK, BH]: hidden units u·BH + j."""
        j = u * BH + tl.arange(0, BH)
        in_j = j < F  # u >= U: j >= U * BH >= F
        c = tl.arange(0, CHUNK)
        in_c = c < C
        rows = in_j[:, None] & in_c[None, :]
        wg = _wload(wu_ptr + j[:, None] * C + c[None, :], rows, EV)
        wu = _wload(wu_ptr + (F + j)[:, None] * C + c[None, :], rows, EV)
        wd = _wload(wd_ptr + c[:, None] * F + j[None, :], in_c[:, None] & in_j[None, :], EV)
        return wg, wu, wd

    @triton.jit
    def _ffn_phase(ph, lo, hi, wu_ptr, wd_ptr, x_ptr, ob_ptr, nw_ptr, nb_ptr, fb_ptr, sync_ptr, flag_ptr, eps,
                   C: tl.constexpr, F: tl.constexpr, NORM: tl.constexpr, HAS_BIAS: tl.constexpr,
                   BH: tl.constexpr, CHUNK: tl.constexpr, SYNC: tl.constexpr, SPIN: tl.constexpr,
                   EV: tl.constexpr):  # fmt: skip
        """DE: program p's slice of BH hidden units (of cdiv(F, BH) <= P): norm_2 of x + ob, their gate/up
        rows, SwiGLU (rounded as decode_ffn rounds), their W_down columns times it: a partial sum of every
        output, added into fb."""
        if (ph >= lo) & (ph < hi):
            pid = tl.program_id(0)
            U: tl.constexpr = (F + BH - 1) // BH
            wg, wu, wd = _ffn_tiles(wu_ptr, wd_ptr, pid, C, F, BH, CHUNK, EV)
            _begin(ph, sync_ptr, flag_ptr, SYNC, SPIN)
            dt = wg.dtype
            c = tl.arange(0, CHUNK)
            if pid < U:  # the host's BH gives each program one unit at most
                a = _residual(x_ptr, ob_ptr, fb_ptr, c, c < C, dt, False)  # fb: this phase's output
                gate = kg._dot_input(wg, a, nw_ptr, nb_ptr, C, eps, NORM, HAS_BIAS, CHUNK).to(dt)
                up = kg._dot_input(wu, a, nw_ptr, nb_ptr, C, eps, NORM, HAS_BIAS, CHUNK).to(dt)
                g = gate.to(tl.float32)
                silu = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32)
                h = (silu * up.to(tl.float32)).to(dt).to(tl.float32)  # 0 past F: its rows load as 0
                part = tl.sum(wd.to(tl.float32) * h[None, :], axis=1)
                tl.atomic_add(fb_ptr + c, part, mask=c < C, sem="relaxed")

    @triton.jit
    def _head_phase(ph, lo, hi, w_ptr, x_ptr, ob_ptr, fb_ptr, nw_ptr, nb_ptr, out_ptr, sync_ptr, flag_ptr, eps,
                    C: tl.constexpr, V: tl.constexpr, NORM: tl.constexpr, HAS_BIAS: tl.constexpr,
                    BN: tl.constexpr, CHUNK: tl.constexpr, SYNC: tl.constexpr, SPIN: tl.constexpr):  # fmt: skip
        """The final norm + LM head of the residual stream, BN rows of the logits a program."""
        if (ph >= lo) & (ph < hi):
            n = tl.program_id(0) * BN + tl.arange(0, BN)
            in_n = n < V
            wt = _tile(w_ptr, n, in_n, C, CHUNK)
            _begin(ph, sync_ptr, flag_ptr, SYNC, SPIN)
            kk = tl.arange(0, CHUNK)
            a = _residual(x_ptr, ob_ptr, fb_ptr, kk, kk < C, wt.dtype, True)
            y = kg._dot_input(wt, a, nw_ptr, nb_ptr, C, eps, NORM, HAS_BIAS, CHUNK)
            tl.store(out_ptr + n, y.to(wt.dtype), mask=in_n)
