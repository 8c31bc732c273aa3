"""``HaloTritonAttention``: the fused HALO kernels behind one autograd.Function (the eager path; op.py: the ops a compiled model traces).

Block sizes (rows are query positions x the query heads of one KV head):

* forward / dQ: BLOCK_M = 128 rows for head_dim <= 64, 64 for 128 (the fp32 accumulator and the
  row-wise key loads hold BLOCK_M x head_dim values in registers). BLOCK_T = BLOCK_M / GRP positions, so
  the window tiles cover BLOCK_T + W - 1 keys: the shorter the tile, the less of each window tile is
  masked away (67% useful at BLOCK_T = 32, W = 64), which is why the query heads are packed instead of
  using longer position tiles. BLOCK_N = 32 window keys per step. With a selected part: BLOCK_T = 16
  positions (64 rows at GRP 4), so that a tile's union of chosen blocks, each loaded for the tile, is small.
* dK/dV: BLOCK_N = 64 keys per program (32 for head_dim 128 or fp32); the window queries come in
  tiles packed like the forward's (BLOCK_Q positions x GRP heads = 128 rows); the dilated, global and
  random keys' dK/dV come from the dQ pass's buffers. KEYS_AS_N: dK^T, dV^T accumulators (M = head_dim).
* dilated groups (dilated.py): DIL_P = 16 / GRP positions x GRP heads = 16 rows, DIL_K = DIL_P x ND
  columns (padded to 16): the smallest tensor-core product that holds a row's ND keys.

The shapes are those of ``halo_lab.model.attention``: q [B, Hq, L, d], k/v [B, Hkv, L, d] over the full sequence
(G globals then the text), last dimension contiguous.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from halo_lab import graph
from halo_lab.config import HaloConfig
from halo_lab.graph.selection import select
from halo_lab.kernels.halo_attention import chosen_dkv, summary_dkv
from halo_lab.kernels.halo_attention.backward import halo_bwd_dkv_kernel, halo_bwd_dq_kernel
from halo_lab.kernels.halo_attention.buffers import written_apart
from halo_lab.kernels.halo_attention.choose import fused_choice
from halo_lab.kernels.halo_attention.forward import halo_fwd_kernel
from halo_lab.kernels.halo_attention.tables import (
    GraphTables,
    distinct_per_tile,
    graph_tables,
    padded_choices,
)
from halo_lab.kernels.launch import Launcher

LOG2E = 1.4426950408889634
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"  # read by triton when the kernels are defined
# the choice of the selected blocks with groups through choose.py (False: graph.selection's, for comparison)
FUSED_CHOICE = True
# direct launches of the compiled kernels: a layer's host time is what small batches pay (launch.py)
_fwd, _dq, _dkv = Launcher(halo_fwd_kernel), Launcher(halo_bwd_dq_kernel), Launcher(halo_bwd_dkv_kernel)
_chosen = Launcher(chosen_dkv.chosen_dkv_kernel)
_summaries = {k: Launcher(k) for k in (summary_dkv.group_blocks_dkv_kernel, summary_dkv.suffix_dkv_kernel)}


def launch_options(
    head_dim: int, group: int, dtype: torch.dtype, selecting: bool = False
) -> dict[str, dict[str, int]]:
    """Block sizes and launch options of the three kernels (see the module docstring for the reasons);
    ``selecting``: the graph has a content-selected part."""
    # fp32 tiles take twice the shared memory of bf16 ones: halve the rows (fp32 is the test/eval path)
    wide = head_dim > 64 or dtype == torch.float32
    rows = 64 if wide else 128
    # warps: the fastest measured on an H200 (experiments/bench/kernel_notes.md, section Versions, v4 tuned):
    # 8/4/8 for fwd/dQ/dK-dV.
    # The bf16 dQ kernel also takes 4 at 64 rows: with 8 warps (head_dim 128) Triton 3.6 compiles it to an
    # illegal memory access on an H200 (kernel_notes.md, section "head_dim 128 in bf16"); fp32 (no wgmma) is
    # fine with 8.
    dq_warps = 8 if dtype == torch.float32 else 4
    block_t = max(16, rows // group)  # >= 16: a dilated tile has BLOCK_T keys, and tl.dot needs 16
    # the selected path at 16 positions: forward 896 vs 1,230 µs at 4K, dQ within 3% (bench/h100_select_v7)
    query_t = 16 if selecting else block_t
    # DIL_GROUPED: the dilated keys as one batched product of 16-row groups (dilated.py) instead of a
    # [BLOCK_M, BLOCK_T] tile per distance
    # num_stages 3: 2-5% less GPU time than 2 in each kernel at 1K, 16K and 64K (kernel_notes.md, section
    # 2026-12-02f/g)
    query_tiles = {"BLOCK_T": query_t, "BLOCK_N": 32, "num_stages": 3, "DIL_GROUPED": True}
    return {
        # the selected path's forward at 4 warps: 3-4% less fwd + bwd time than 8 at 1K, 4K and 16K, its
        # kernel 1.20 vs 1.43 ms at 4K (H100, 2026-12-05, experiments/bench/h100_train_v4/kernel_tune_select.log)
        "fwd": {**query_tiles, "num_warps": 4 if selecting else 8},
        # SEL_KG 3: the chosen keys' dK/dV by key blocks after the dQ pass (chosen_dkv.py): fwd + bwd 9.0 vs
        # 12.3 ms at 16K, 6.9 vs 9.7 at 4K, 5.7 vs 7.1 at 1K (H100, experiments/bench/h100_select_v4/); 0: by the dQ pass's
        # atomics (backward.add_key_grads); 1, 2: timing probes. SUM_KG 3: the summaries' by passes that own
        # them (summary_dkv.py): compiled fwd + bwd 4.30 vs 4.58 ms at 4K, 5.90 vs 6.27 at 16K (H100,
        # experiments/bench/h100_select_v10/); 0 the dQ pass's atomics; 1, 2 probes
        "dq": {
            **query_tiles,
            "num_warps": dq_warps,
            "SEL_KG": 3 if selecting else 0,
            "SUM_KG": 3 if selecting else 0,
        },
        "dkv": {
            "BLOCK_N": 32 if wide else 64,
            "BLOCK_Q": block_t,
            # dK^T, dV^T accumulators: 215 vs 301 µs at 1K-64K on an H200 (kernel_notes.md, section
            # 2026-12-02f/g); the wide cases (head_dim 128, fp32) keep the form they were tested in on the GPU
            "KEYS_AS_N": not wide,
            "num_warps": 8,
            "num_stages": 3,
        },
    }


TUNED: dict[tuple, dict[str, dict[str, int]]] = {}  # (head_dim, group, dtype) -> overrides, for tuning runs
# (a tuning run that changes TUNED clears _PLANS, the launch plans built from it)


def _options(head_dim: int, group: int, dtype: torch.dtype, selecting: bool) -> dict[str, dict[str, int]]:
    return TUNED.get((head_dim, group, dtype)) or launch_options(head_dim, group, dtype, selecting)


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride()[:3]  # one call: a layer's launches read ~16 tensors' strides


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


@dataclass
class SelectionTables:
    """The content-selected part as the kernels read it (selected.py), built in torch from the choice of
    ``halo_lab.graph.selection.select``: every row's chosen blocks and groups (global rows: none), and per
    query tile the sorted distinct blocks and groups its rows chose."""

    blk: torch.Tensor  # [B, Hkv, L, NSELP] int32 chosen blocks per position, -1 = none
    grps: torch.Tensor  # [B, Hkv, L, NG2P] int32 chosen groups per position, -1 = none
    tb: torch.Tensor  # [B, Hkv, NT, UMAX] int32 a tile's distinct blocks, ascending, -1 after them
    tbn: torch.Tensor  # [B, Hkv, NT] int32 how many
    # the same for the groups: a tile scores the block summaries of these groups only, not every candidate
    tg: torch.Tensor  # [B, Hkv, NT, UGMAX] int32
    tgn: torch.Tensor  # [B, Hkv, NT] int32
    nt: int
    umax: int
    ugmax: int
    nb: int  # block summaries (rows 0..nb-1 of the summary keys; the groups' follow)
    nsum: int  # summary rows in all (>= 1: an empty store holds one unused zero row)

    @staticmethod
    def empty(device) -> SelectionTables:
        """Tables of a graph without selection: one-element tensors the kernels never read."""
        z = torch.zeros(1, device=device, dtype=torch.int32)
        return SelectionTables(z, z, z, z, z, z, 1, 1, 1, 0, 1)


_NO_SELECTION: dict[str, tuple] = {}


def _no_selection(q: torch.Tensor) -> tuple:
    """(sk, sv, tables) for a graph without selection: one-element tensors the kernels never read."""
    key = str(q.device)
    if key not in _NO_SELECTION:
        s = torch.zeros(1, 1, 1, 1, device=q.device, dtype=q.dtype)
        _NO_SELECTION[key] = (s, s, SelectionTables.empty(q.device))
    sk, sv, tables = _NO_SELECTION[key]
    return sk.to(q.dtype), sv.to(q.dtype), tables


def selection_tables(q, k, v, config: HaloConfig, block_t: int, pool=None, router=None):
    """(summary keys, summary values, SelectionTables) of the query tiles of ``block_t`` positions."""
    G = config.num_globals
    B, Hkv, L, d = k.shape
    if pool is not None and pool.shape[-1] != d:  # head_dim padded for the tiles: zero columns
        pool = torch.nn.functional.pad(pool, (0, d - pool.shape[-1]))
    positions = torch.arange(L - G, device=q.device)  # a router reads q's first head_dim columns
    sel = select(q[:, :, G:], k, v, config, positions, pool, fused_choice if FUSED_CHOICE else None, router)
    nselp, ng2p = _pow2(config.select_blocks), _pow2(max(config.select_groups, 1))
    blk = padded_choices(sel.blocks, nselp, G)
    grps = padded_choices(sel.groups, ng2p, G)
    tb, tbn = distinct_per_tile(blk, block_t)
    if config.select_group_size:
        tg, tgn = distinct_per_tile(grps, block_t)
    else:  # no groups: lists the kernels never read (SM = 0), not a sort of an all -1 table
        tg, tgn = tb.new_full((*tb.shape[:3], 1), -1), torch.zeros_like(tbn)
    sk, sv = sel.summary_k, sel.summary_v
    if sk.shape[2] == 0:  # no complete block yet: one zero row keeps the pointers valid
        sk, sv = (torch.cat([t, t.new_zeros(B, Hkv, 1, d)], 2) for t in (sk, sv))
    nt, umax, ugmax = tb.shape[2], tb.shape[3], tg.shape[3]
    tables = SelectionTables(blk, grps, tb, tbn, tg, tgn, nt, umax, ugmax, sel.num_blocks, sk.shape[2])
    return sk.contiguous(), sv.contiguous(), tables


def _dummy(device) -> torch.Tensor:
    """A one-element fp32 tensor for a pointer argument the kernels never read (no summary bias)."""
    key = str(device)
    if key not in _DUMMY:
        _DUMMY[key] = torch.zeros(1, device=device, dtype=torch.float32)
    return _DUMMY[key]


_DUMMY: dict[str, torch.Tensor] = {}


def _launch(launcher: Launcher, grid: tuple, args: tuple, meta: dict, traced: bool) -> None:
    """One kernel launch: eagerly through the direct ``Launcher``; ``traced`` (the ops of op.py under
    torch.compile / make_fx) through ``torch.library.wrap_triton``, which records it in the graph. Under the
    interpreter a traced call only computes output shapes (op.py registers an opaque op there): no launch."""
    if not traced:
        launcher(grid, args, meta)
    elif not INTERPRETED:
        torch.library.wrap_triton(launcher.kernel)[grid](*args, **meta)


def forward_kernels(
    q, k, v, sk, sv, sbias, tbias, dist, rand, sel: SelectionTables, plan: _Plan, scale, traced=False
):
    """(o, lse) of the forward kernel; ``sbias``: the summary keys' logit bias [Hkv] fp32 (read with
    ``plan.fwd["SUMB"]``), ``tbias`` the chosen tokens' (with ``plan.fwd["TOKB"]``), else any one-element
    fp32 tensor."""
    B, Hq, L, d = q.shape
    Hkv = k.shape[1]
    # o [B, H, L, d] stored as [B, L, H, d] (its consumer transposes it). Traced, the kernel is handed that
    # buffer itself with the view's strides, not a view: what a kernel writes is a standalone tensor there
    # (see written_apart)
    o_base = q.new_empty(B, L, Hq, d)
    o = o_base.transpose(1, 2)
    o_arg = o_base if traced else o
    lse = torch.empty(B, Hq, L, device=q.device, dtype=torch.float32)
    _launch(
        _fwd,
        (-(-L // plan.block_t), B * Hkv),
        (
            q, k, v, o_arg, lse, dist, rand,
            sk, sv, sel.blk, sel.grps, sel.tb, sel.tbn, sel.tg, sel.tgn, sbias, tbias,
            scale * LOG2E,
            *_strides(q), *_strides(k), *_strides(v), *_strides(o),
            rand.stride(0),
            *_strides(sk),
            L, Hkv, sel.nt, sel.umax, sel.ugmax, sel.nb, sel.nsum,
        ),
        plan.fwd,
        traced,
    )  # fmt: skip
    return o, lse


def backward_kernels(
    do, q, k, v, o, lse, sk, sv, sbias, tbias, dist, rand, sel, plan: _Plan, scale, traced=False
):
    """(dq, dk, dv, dsum, dbias, dtbias): dsum the summaries' dK, dV stacked, fp32 [2, B, Hkv, nsum, d]
    (None without selection), dbias fp32 [B, Hkv] per batch row (None without a summary bias), dtbias the
    same for the token bias (None without one)."""
    B, Hq, L, d = q.shape
    Hkv = k.shape[1]
    dq = torch.empty_like(q)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    delta = torch.empty_like(lse)
    selecting, biased, token_biased = plan.fwd["SEL"], plan.dq["SUMB"], plan.dq["TOKB"]
    # dk_extra, dv_extra: fp32 dK/dV of the keys outside the window, added by the dQ pass's atomics;
    # dk_dil, dv_dil: the dilated keys' per-distance dK/dV (every slot the dK/dV pass reads is written by
    # the dQ pass); dsk, dsv: the summaries' fp32 dK/dV, which torch's autograd carries to the pooled keys;
    # dbias, dtbias: the biases' gradients per (batch row, KV head), fp32 atomics
    dk_extra, dv_extra, dk_dil, dv_dil, dsk, dsv, dsum, dbias, dtbias = written_apart(
        q, k, sk, sel.nsum, plan.nd, selecting, biased, token_biased, sbias, tbias, apart=traced
    )
    sq, s_k, s_v = _strides(q), _strides(k), _strides(v)
    _launch(
        _dq,
        (-(-L // plan.block_t), B * Hkv),
        (
            q, k, v, o, do, dq, lse, delta, dk_extra, dv_extra, dk_dil, dv_dil, dist, rand,
            sk, sv, dsk, dsv, sel.blk, sel.grps, sel.tb, sel.tbn, sel.tg, sel.tgn, sbias, dbias, tbias, dtbias,
            scale * LOG2E, scale, dk_dil.stride(0),
            *sq, *s_k, *s_v, *_strides(o), *_strides(do), *_strides(dq),
            rand.stride(0),
            *_strides(sk),
            L, Hkv, sel.nt, sel.umax, sel.ugmax, sel.nb, sel.nsum,
        ),
        plan.dq,
        traced,
    )  # fmt: skip
    if selecting and plan.dq["SEL_KG"] == chosen_dkv.KG_BY_BLOCKS:  # the chosen keys' dK/dV by key blocks
        args = (q, k, v, do, lse, delta, dk_extra, dv_extra, sel, rand, dist, tbias, plan.dq, scale)
        _launch(_chosen, *chosen_dkv.launch_args(*args), traced)
    if selecting and plan.dq["SUMK"] and plan.dq["SUM_KG"] == summary_dkv.KS_BY_SUMMARIES:
        args = (q, sk, sv, do, lse, delta, dsk, dsv, sel, sbias, plan.dq, scale)
        for kernel, grid, kernel_args, meta in summary_dkv.launches(*args):
            _launch(_summaries[kernel], grid, kernel_args, meta, traced)
    _launch(
        _dkv,
        (-(-L // plan.dkv_block_n), B * Hkv),
        (
            q, k, v, do, dk, dv, lse, delta, dk_extra, dv_extra, dk_dil, dv_dil, dist,
            scale * LOG2E, scale, dk_dil.stride(0),
            *sq, *s_k, *s_v, *_strides(do), *_strides(dk), *_strides(dv),
            L, Hkv,
        ),
        plan.dkv,
        traced,
    )  # fmt: skip
    if selecting and dsum is None:
        dsum = torch.stack([dsk, dsv])
    return dq, dk, dv, dsum, dbias if biased else None, dtbias if token_biased else None


class HaloTritonAttention(torch.autograd.Function):
    """The eager path: an autograd Function around the direct launches (op.py: the same kernels as
    torch.library ops, which a compiled model traces through)."""

    @staticmethod
    def forward(
        ctx, q, k, v, sk, sv, bias, token_bias, tables: GraphTables, sel: SelectionTables, plan: _Plan,
        scale: float,
    ):  # fmt: skip
        """``bias``: the summary keys' logit bias [Hkv] fp32 (with ``plan.fwd["SUMB"]``), ``token_bias``
        the chosen tokens' (with ``plan.fwd["TOKB"]``), else None."""
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        sbias = bias if bias is not None else _dummy(q.device)
        tbias = token_bias if token_bias is not None else _dummy(q.device)
        o, lse = forward_kernels(q, k, v, sk, sv, sbias, tbias, tables.dist, tables.rand, sel, plan, scale)
        ctx.save_for_backward(q, k, v, o, lse, sk, sv, sbias, tbias)
        ctx.tables, ctx.sel, ctx.plan, ctx.scale = tables, sel, plan, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, sk, sv, sbias, tbias = ctx.saved_tensors
        tables, sel = ctx.tables, ctx.sel
        do = _last_dim_contiguous(do)
        dq, dk, dv, dsum, dbias, dtbias = backward_kernels(
            do, q, k, v, o, lse, sk, sv, sbias, tbias, tables.dist, tables.rand, sel, ctx.plan, ctx.scale
        )
        if dsum is None:
            return dq, dk, dv, None, None, None, None, None, None, None, None
        dbias = dbias.sum(0) if dbias is not None else None
        dtbias = dtbias.sum(0) if dtbias is not None else None
        dsk, dsv = dsum[0].to(sk.dtype), dsum[1].to(sv.dtype)
        return dq, dk, dv, dsk, dsv, dbias, dtbias, None, None, None, None


def _pow2(n: int) -> int:  # triton.next_power_of_2 / cdiv cost µs a call on the host (JIT callables)
    return 1 << max(n - 1, 0).bit_length()


@dataclass(frozen=True)
class _Plan:
    """What the launches of one (graph, shape kind) need besides tensors: each kernel's constexprs and
    launch options in one dict, built once (a layer's host time is what small batches pay)."""

    fwd: dict
    dq: dict
    dkv: dict
    block_t: int  # query positions per forward / dQ program
    dkv_block_n: int  # keys per dK/dV program
    nd: int  # per-distance dK/dV buffers (>= 1)
    id: int = 0  # plan_id(): how the ops of op.py name it (their arguments are ints)


_PLANS: dict[tuple, _Plan] = {}
# every plan ever built, by id, and the config it was built for (the graph tables' op reads its graph):
# a tuning run that clears _PLANS builds new plans, the old ids stay valid
PLANS_BY_ID: dict[int, _Plan] = {}
PLAN_CONFIGS: dict[int, HaloConfig] = {}


def _source_digest() -> str:
    """This package's source: the ops' Python (which kernels a traced call launches, and how) is not in
    torch's cache keys, so the plan ids carry it, and an edited package never meets an old cache entry."""
    h = hashlib.blake2b(digest_size=8)
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


SOURCE_DIGEST = _source_digest()


def plan_id(key: tuple, fwd: dict, dq: dict, dkv: dict) -> int:
    """A plan's id, from its content and the package's source: the same in every process. A compiled
    graph holds the id as a literal, and torch's compile caches (AOTAutograd's, Inductor's, on disk) key on
    that graph: an id that counted plans in build order named another plan in the next process, whose
    cached kernels (the first process's constexprs) then ran on this process's tables (wrong gradients,
    illegal addresses; H100, 2026-12-05). 56 bits: an int64 op argument."""
    text = repr((SOURCE_DIGEST, key, sorted(fwd.items()), sorted(dq.items()), sorted(dkv.items())))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=7).digest(), "little")


def _selection_key(config: HaloConfig) -> tuple:
    c = config
    return (c.select_blocks, c.select_block_size, c.select_summary_keys, c.select_group_size, c.select_groups)


def _plan(
    config: HaloConfig, unit: int, group: int, head_dim: int, dtype: torch.dtype, biased: bool = False,
    token_biased: bool = False,
) -> _Plan:  # fmt: skip
    biases = (biased, token_biased)
    key = (graph.graph_key(config), _selection_key(config), unit, group, head_dim, dtype, biases)
    plan = _PLANS.get(key)
    if plan is None:
        opts = _options(head_dim, group, dtype, config.selects)
        consts = _consts(config, unit, group, head_dim, dtype, opts["fwd"]["BLOCK_T"], biased, token_biased)
        dkv_consts = {n: consts[n] for n in ("G", "W", "ND", "GRP", "HD", "IEEE", "UPCAST")}  # no selection
        fwd, dq, dkv = {**consts, **opts["fwd"]}, {**consts, **opts["dq"]}, {**dkv_consts, **opts["dkv"]}
        pid = plan_id(key, fwd, dq, dkv)
        plan = _PLANS[key] = PLANS_BY_ID.get(pid) or _Plan(
            fwd=fwd,
            dq=dq,
            dkv=dkv,
            block_t=opts["fwd"]["BLOCK_T"],
            dkv_block_n=opts["dkv"]["BLOCK_N"],
            nd=max(consts["ND"], 1),
            id=pid,
        )
        PLANS_BY_ID[pid] = plan
        PLAN_CONFIGS.setdefault(pid, config)  # the key holds the graph: any config of it builds its tables
    return plan


def _consts(
    config: HaloConfig, unit: int, group: int, head_dim: int, dtype, block_t: int, biased: bool = False,
    token_biased: bool = False,
) -> dict:  # fmt: skip
    """Compile-time constants of the query-tile kernels (forward, dQ); ``biased``: the summary keys carry
    a logit bias (``select_summary_bias``), ``token_biased``: the chosen tokens (``select_token_bias``)."""
    G, R, ND = config.num_globals, config.num_random, len(config.dilated_distances)
    shared_random = config.random_edges == "block" and unit % block_t == 0
    dil_p = min(block_t, max(1, 16 // group))
    return {
        "G": G,
        "W": config.local_window,
        "ND": ND,
        "NR": R,
        "UNIT": unit,
        "GRP": group,
        "HD": head_dim,
        "SHARED_RANDOM": shared_random,  # every query of a tile shares its random keys
        "SHARED_N": max(16, _pow2(G + (R if shared_random else 0))),
        "RAND_N": max(16, _pow2(block_t * R)),
        # dilated groups (dilated.py): DIL_P positions x GRP heads = 16 rows (or GRP), DIL_K columns
        "DIL_P": dil_p,
        "DIL_K": max(16, _pow2(dil_p * max(ND, 1))),
        "DIL_NG": block_t // dil_p,
        "IEEE": dtype == torch.float32,
        "UPCAST": INTERPRETED,
        # the content-selected part (selected.py): b keys per chosen block, padded to a tensor-core tile
        "SEL": config.selects,
        "SB": config.select_block_size,
        "SBP": max(16, _pow2(config.select_block_size)),
        # chosen blocks side by side in one key tile: 32 keys like a window tile (selected.py)
        "BPT": max(1, 32 // max(16, _pow2(config.select_block_size))),
        "NSELP": _pow2(max(config.select_blocks, 1)),
        "SM": config.select_group_size,
        "SMP": max(16, _pow2(config.select_group_size)),  # a group's block summaries as one key tile
        "GPT": max(1, 32 // max(16, _pow2(config.select_group_size))),  # chosen groups a key tile
        "NG2P": _pow2(max(config.select_groups, 1)),
        "SUMK": config.select_summary_keys,
        "SUM_N": 32,  # summaries per tile: a window tile's width
        "SUMB": bool(biased and config.selects and config.select_summary_keys),
        "TOKB": bool(token_biased and config.selects),
    }


def prepare(q, k, v) -> tuple:
    """(q, k, v, d, padded head_dim, group, dtype): q/k/v in the attention's dtype (autocast's where it is
    on, as SDPA), their head_dim padded with zero columns to what the tiles take."""
    d = q.shape[-1]
    padded = max(16, _pow2(d))  # tl.dot needs >= 16 and a power of two: zero columns
    if padded > 128:
        raise ValueError(f"the triton backend supports head_dim up to 128, not {d}")
    group = q.shape[1] // k.shape[1]
    if group & (group - 1):  # a tile packs the group's heads: its row count must be a power of two
        raise ValueError(
            f"the triton backend needs num_heads / num_kv_heads to be a power of two, not "
            f"{q.shape[1]} / {k.shape[1]} = {group} (attention_backend=flex or auto covers it)"
        )
    dev = q.device.type
    if torch.is_autocast_enabled(dev):  # like SDPA: attention runs in the autocast dtype
        dtype = torch.get_autocast_dtype(dev)
    else:  # RoPE in fp32 can leave q/k fp32 beside a bf16 v
        dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    q, k, v = (t if t.dtype == dtype else t.to(dtype) for t in (q, k, v))
    if padded != d:  # zero columns change no score and give zero output columns, sliced away
        q, k, v = (torch.nn.functional.pad(t, (0, padded - d)) for t in (q, k, v))
    return q, k, v, d, padded, group, dtype


def function_attention(
    q, k, v, config: HaloConfig, layer: int, step: int, pool=None, bias=None, token_bias=None, router=None
):
    """The eager path: tables from their caches, the kernels behind ``HaloTritonAttention``."""
    q, k, v, d, padded, group, dtype = prepare(q, k, v)
    tables = graph_tables(config, layer, step, q.shape[2], q.device)
    plan = _plan(config, tables.unit, group, padded, dtype, bias is not None, token_bias is not None)
    if config.selects:
        sk, sv, sel = selection_tables(q, k, v, config, plan.block_t, pool, router)
    else:
        sk, sv, sel = _no_selection(q)
    bias = bias.float().contiguous() if plan.fwd["SUMB"] else None  # fp32 whatever the model's dtype
    token_bias = token_bias.float().contiguous() if plan.fwd["TOKB"] else None
    # no autocast guard: the Function's forward and backward run no op that autocast casts
    out = HaloTritonAttention.apply(q, k, v, sk, sv, bias, token_bias, tables, sel, plan, 1.0 / math.sqrt(d))
    return out[..., :d] if padded != d else out
