"""The fused HALO attention as ``torch.library`` ops: what a compiled model traces through (no graph break).

* ``halo_lab::halo_attention_fwd`` (q, k, v, summary keys/values, summary bias, token bias, the graph
  tables, the selection tables, scale, plan id, the selection's ints) -> (o, lse) and
  ``halo_lab::halo_attention_bwd`` -> (dq, dk, dv, dsum, dbias, dtbias), tied by ``register_autograd``. Every argument is a tensor or a plain
  int/float: the launch plan (the three kernels' constexprs and launch options, interface.py) goes by its
  id in ``interface.PLANS_BY_ID``.
  With compiled Triton (CUDA) they are ``torch.library.triton_op``s: traced (AOTAutograd, Inductor), each
  launch is recorded through ``torch.library.wrap_triton`` as a kernel node that Inductor schedules and
  calls like its own kernels; eagerly the op's body runs with the direct launches of kernels/launch.py.
  Under ``TRITON_INTERPRET=1`` they are opaque ``custom_op``s instead: ``wrap_triton`` hands an interpreted
  kernel back unwrapped (torch/_library/triton.py: an ``InterpretedFunction`` "is eager-launchable but
  lacks the JIT metadata the traceable wrapper needs"), so a traced call could not record the launches and
  a decomposed op would lose its kernels. The opaque op is still one graph node (fullgraph compiles), its
  fake computes the output shapes, and at run time its body runs the interpreter.
* ``halo_lab::halo_graph_tables`` (q for the device, plan id, layer, step, length) -> (dilated distances,
  random keys): the cached device tables of tables.py behind an opaque op (copies: an op's outputs are
  fresh tensors), so that dynamo never traces the caches' Python.

``halo_triton_attention`` runs eagerly through the autograd Function of interface.py (cheaper on the host
than the op's dispatch: experiments/bench/kernel_notes.md, section "2026-12-05: torch.library ops") and,
under torch.compile, through these ops. ``EAGER_OP = True`` sends eager calls through the ops too.
"""

import dataclasses
import math

import torch

from halo_lab.config import HaloConfig
from halo_lab.kernels.halo_attention import interface, tables
from halo_lab.kernels.halo_attention.interface import INTERPRETED, SelectionTables

try:
    from torch._library.triton import is_wrap_triton_enabled, set_wrap_triton_enabled
except ImportError:  # pragma: no cover - a torch without triton_op
    is_wrap_triton_enabled = set_wrap_triton_enabled = None

Tensor = torch.Tensor
EAGER_OP = False  # eager calls through the ops instead of the autograd Function (for tests and timing)


def _register(name: str, fn):
    """``fn`` as the op ``halo_lab::name``: a triton_op, or under the interpreter an opaque custom op (see
    the module docstring) whose fake is ``fn`` itself (its launches skipped while traced)."""
    if not INTERPRETED:
        return torch.library.triton_op(f"halo_lab::{name}", fn, mutates_args=())

    def backend(*args, **kwargs):
        with set_wrap_triton_enabled(False):  # as triton_op's eager body: launches, not records
            return fn(*args, **kwargs)

    schema = torch.library.infer_schema(fn, mutates_args=())
    op = torch.library.custom_op(f"halo_lab::{name}", backend, mutates_args=(), schema=schema)
    op.register_fake(fn)
    return op


def _fwd(
    q: Tensor, k: Tensor, v: Tensor, sk: Tensor, sv: Tensor, sbias: Tensor, tbias: Tensor, dist: Tensor,
    rand: Tensor, blk: Tensor, grps: Tensor, tb: Tensor, tbn: Tensor, tg: Tensor, tgn: Tensor,
    scale: float, plan_id: int, nt: int, umax: int, ugmax: int, nb: int, nsum: int,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    sel = SelectionTables(blk, grps, tb, tbn, tg, tgn, nt, umax, ugmax, nb, nsum)
    plan = interface.PLANS_BY_ID[plan_id]
    o, lse = interface.forward_kernels(
        q, k, v, sk, sv, sbias, tbias, dist, rand, sel, plan, scale, is_wrap_triton_enabled()
    )
    return o, lse


def _bwd(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, sk: Tensor, sv: Tensor,
    sbias: Tensor, tbias: Tensor, dist: Tensor, rand: Tensor, blk: Tensor, grps: Tensor, tb: Tensor,
    tbn: Tensor, tg: Tensor, tgn: Tensor, scale: float, plan_id: int, nt: int, umax: int, ugmax: int, nb: int,
    nsum: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """(dq, dk, dv, dsum, dbias, dtbias); dsum the summaries' dK, dV stacked, fp32 [2, B, Hkv, nsum, d]
    (empty without selection), dbias fp32 [B, Hkv] per batch row (empty without a summary bias), dtbias
    the token bias's (empty without one)."""
    sel = SelectionTables(blk, grps, tb, tbn, tg, tgn, nt, umax, ugmax, nb, nsum)
    plan = interface.PLANS_BY_ID[plan_id]
    dq, dk, dv, dsum, dbias, dtbias = interface.backward_kernels(
        do, q, k, v, o, lse, sk, sv, sbias, tbias, dist, rand, sel, plan, scale, is_wrap_triton_enabled()
    )
    # an op returns tensors, each fresh
    dsum, dbias, dtbias = (
        q.new_empty(0, dtype=torch.float32) if t is None else t for t in (dsum, dbias, dtbias)
    )
    return dq, dk, dv, dsum, dbias, dtbias


def _graph_tables(q: Tensor, plan_id: int, layer: int, step: int, seq_len: int) -> tuple[Tensor, Tensor]:
    t = tables.graph_tables(interface.PLAN_CONFIGS[plan_id], layer, step, seq_len, q.device)
    return t.dist.clone(), t.rand.clone()


halo_attention_fwd = _register("halo_attention_fwd", _fwd)
halo_attention_bwd = _register("halo_attention_bwd", _bwd)
halo_graph_tables = torch.library.custom_op("halo_lab::halo_graph_tables", _graph_tables, mutates_args=())


@halo_graph_tables.register_fake
def _graph_tables_fake(q, plan_id, layer, step, seq_len):
    config = interface.PLAN_CONFIGS[plan_id]
    unit = tables._unit(config)
    dist = q.new_empty(max(len(config.dilated_distances), 1), dtype=torch.int32)
    return dist, q.new_empty(-(-seq_len // unit), max(config.num_random, 1), dtype=torch.int32)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, sk, sv, sbias, tbias, dist, rand, blk, grps, tb, tbn, tg, tgn, *ints = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, sk, sv, sbias, tbias, dist, rand, blk, grps, tb, tbn, tg, tgn)
    ctx.ints = ints  # scale, plan id, nt, umax, ugmax, nb, nsum
    ctx.mark_non_differentiable(lse)


def _backward(ctx, do, _dlse):
    q, k, v, o, lse, sk, sv, sbias, tbias, *tabs = ctx.saved_tensors
    do = do if do.stride(-1) == 1 else do.contiguous()
    dq, dk, dv, dsum, dbias, dtbias = halo_attention_bwd(
        do, q, k, v, o, lse, sk, sv, sbias, tbias, *tabs, *ctx.ints
    )
    plan = interface.PLANS_BY_ID[ctx.ints[1]]
    nones = (None,) * 15
    if not plan.fwd["SEL"]:
        return dq, dk, dv, None, None, None, None, *nones
    dbias = dbias.sum(0) if plan.dq["SUMB"] else None
    dtbias = dtbias.sum(0) if plan.dq["TOKB"] else None
    return dq, dk, dv, dsum[0].to(sk.dtype), dsum[1].to(sv.dtype), dbias, dtbias, *nones


halo_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


_FIELDS = tuple(f.name for f in dataclasses.fields(HaloConfig))
_LIST_FIELDS = frozenset(f.name for f in dataclasses.fields(HaloConfig) if "list" in str(f.type))
_CONFIGS: dict[tuple, HaloConfig] = {}


def _config_key(config: HaloConfig) -> tuple:
    """The config's field values, lists as tuples: a constant that dynamo can hand to ``_plan_info`` (torch
    2.11's ``assume_constant_result`` takes no user object as an argument)."""
    return tuple(tuple(v) if isinstance(v, list) else v for v in [getattr(config, n) for n in _FIELDS])


@torch.compiler.assume_constant_result
def _plan_info(
    key: tuple, group: int, head_dim: int, dtype: torch.dtype, biased: bool, token_biased: bool
) -> tuple:
    """(plan id, query positions per tile, summary bias on, token bias on) of the config with the field
    values ``key``: constants of a traced call (the plan is built here, outside the graph)."""
    config = _CONFIGS.get(key)
    if config is None:
        fields = {n: list(v) if n in _LIST_FIELDS else v for n, v in zip(_FIELDS, key)}
        config = _CONFIGS[key] = HaloConfig(**fields)
    plan = interface._plan(config, tables._unit(config), group, head_dim, dtype, biased, token_biased)
    return plan.id, plan.block_t, plan.fwd["SUMB"], plan.fwd["TOKB"]


def op_attention(
    q, k, v, config: HaloConfig, layer: int, step: int, pool=None, bias=None, token_bias=None, router=None
) -> Tensor:
    """``halo_triton_attention`` through the ops (what torch.compile traces)."""
    q, k, v, d, padded, group, dtype = interface.prepare(q, k, v)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    plan_id, block_t, biased, token_biased = _plan_info(
        _config_key(config), group, padded, dtype, bias is not None, token_bias is not None
    )
    dist, rand = halo_graph_tables(q, plan_id, layer, step, q.shape[2])
    if config.selects:
        sk, sv, sel = interface.selection_tables(q, k, v, config, block_t, pool, router)
    else:  # one-element tensors the kernels never read
        sk = sv = q.new_zeros(1, 1, 1, 1)
        sel = SelectionTables.empty(q.device)
    sbias = bias.float().contiguous() if biased else q.new_zeros(1, dtype=torch.float32)
    tbias = token_bias.float().contiguous() if token_biased else q.new_zeros(1, dtype=torch.float32)
    o, _ = halo_attention_fwd(
        q, k, v, sk, sv, sbias, tbias, dist, rand, sel.blk, sel.grps, sel.tb, sel.tbn, sel.tg, sel.tgn,
        1.0 / math.sqrt(d), plan_id, sel.nt, sel.umax, sel.ugmax, sel.nb, sel.nsum,
    )  # fmt: skip
    return o[..., :d] if padded != d else o


def halo_triton_attention(
    q, k, v, config: HaloConfig, layer: int, step: int, pool=None, bias=None, token_bias=None, router=None
) -> torch.Tensor:
    """HALO attention over the full sequence (globals included) through the fused Triton kernels;
    ``pool``: the learned summary pooling's u, ``bias`` [Hkv]: the summary keys' logit bias,
    ``token_bias`` [Hkv]: the chosen tokens' (``select_token_bias``), ``router``: the choice's router."""
    if EAGER_OP or torch.compiler.is_compiling():
        return op_attention(q, k, v, config, layer, step, pool, bias, token_bias, router)
    return interface.function_attention(q, k, v, config, layer, step, pool, bias, token_bias, router)
