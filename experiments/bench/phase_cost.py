"""What each phase of the one-launch decode step costs on a card (issue 30).

The step at 3 phases a layer (halo_lab/kernels/decode_step.py, decode_phases.py) took 111 µs for its 25
phases on an H100, 4.4 µs a phase where a bare GEMV phase behind the same barrier costs 2.46
(experiments/bench/README.md, "Twenty-fifth session"). Which phase costs the rest? This probe launches
the step's kernel for its first h phases only (``decode_step(..., phases=h)``), h = 1 .. all, and times
each prefix with CUDA events (20 calls to a CUDA graph, replayed). T(h) - T(h - 1) is then phase h - 1's
cost inside the chain, its barrier included, with the launch's fixed cost cancelled. The inputs are the
medium model's shapes (hidden 512, 8 layers, 8 / 2 heads of 64, FFN 2048, vocabulary 256) with random
weights and caches, at one context: HALO-S over K key slots (72 by default, HALO-S's keys a query at
1K), or dense over every earlier slot.

A prefix reads only its own phases' weights, so a short one runs from L2 while the whole step (61 MB of
weights against 50 MB of L2 on an H100) cannot: on the H100 of the twenty-sixth session the FFN phase
cost 3.5 µs in layers 0-2 and up to 12.6 µs further on. ``--cold`` writes 128 MB before every call, so
every prefix reads its weights from HBM; beside the default run it shows what L2 saves each phase.
``--programs`` and ``--warps`` time the same step at other launch sizes, ``--keep-l2 n`` with layers
0..n-1's weights marked to stay in L2 (decode_step.py). The prefixes are also why a phase's cost beyond
the first few layers is not its cost inside the whole step: the prefix that crosses L2's size pays for
every earlier phase's misses too (the twenty-seventh session's spike at layer 5 is there). ``--whole``
times the whole step alone (one prefix), the number that compares options.

    python experiments/bench/phase_cost.py OUT [--context 1024] [--keys 72] [--dense] [--repeats 200]
        [--cold] [--programs P] [--warps 8] [--keep-l2 n] [--whole]

Writes OUT/phase_cost.json (the card, each prefix's time, each phase's cost) and prints the mean cost of
each kind of phase (A: q/k/v; A2: dense's partials; BC: attention + o-projection; DE: the FFN; head).
Without CUDA it runs at P = 1 with ``sync=False`` under Triton's interpreter, at the given shapes, timed
with the wall clock: that is a check that the probe runs, not a measurement
(tests/test_phase_cost.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from halo_lab.bench.timing import time_ms
from halo_lab.kernels import decode_step as ks

MEDIUM = {"C": 512, "L": 8, "heads": 8, "kv_heads": 2, "d": 64, "F": 2048, "V": 256}


def phase_names(layers: int, dense: bool) -> list[str]:
    """The step's phases in order, as ``<kind>.<layer>`` (the head last): decode_step.py's numbering."""
    kinds = ["A", "A2", "BC", "DE"] if dense else ["A", "BC", "DE"]
    return [f"{k}.{layer}" for layer in range(layers) for k in kinds] + ["head"]


def inputs(shape: dict, context: int, keys: int, dense: bool, device, dtype=torch.bfloat16, seed: int = 0):
    """decode_step's arguments for one token at position ``context``: random weights and caches, HALO-S's
    ``keys`` key slots a layer (the token's own among them) or dense's every slot up to it."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    C, L, H, Hkv, d, F, V = (shape[k] for k in ("C", "L", "heads", "kv_heads", "d", "F", "V"))
    A, S = H * d, context + 1

    def rnd(*s, scale=1.0):
        return (scale * torch.randn(*s, generator=g)).to(device=device, dtype=dtype)

    w = {
        "wqkv": rnd(L, A + 2 * Hkv * d, C, scale=C**-0.5),
        "wo": rnd(L, C, A, scale=A**-0.5),
        "wup": rnd(L, 2 * F, C, scale=C**-0.5),
        "wdown": rnd(L, C, F, scale=F**-0.5),
        "lm": rnd(V, C, scale=C**-0.5),
        "n1w": 1 + rnd(L, C, scale=0.1),
        "n2w": 1 + rnd(L, C, scale=0.1),
        "nfw": 1 + rnd(C, scale=0.1),
    }
    angle = torch.arange(S)[:, None] * torch.rand(d // 2, generator=g)[None, :]
    cos = torch.cat([angle.cos()] * 2, 1).to(device=device, dtype=dtype)
    sin = torch.cat([angle.sin()] * 2, 1).to(device=device, dtype=dtype)
    k, v = rnd(L, 1, Hkv, S, d), rnd(L, 1, Hkv, S, d)
    pos = torch.tensor([context], device=device)
    if dense:
        slots = torch.zeros(L, 1, dtype=torch.long, device=device)
    else:
        past = torch.stack([torch.randperm(context, generator=g)[: keys - 1] for _ in range(L)])
        slots = torch.cat([past, torch.full((L, 1), context)], 1).to(device)
    wslots = torch.tensor([[context, -1]] * L, device=device)
    x = rnd(1, C)
    return x, w, k, v, cos, sin, pos, slots, wslots


COLD_MB = 128  # what --cold writes before each call: over the H100's 50 MB and the H200's 60 MB of L2


def time_prefix(args, kw: dict, phases: int, repeats: int, per_graph: int = 20, cold: bool = False) -> float:
    """µs a call of the step's first ``phases`` phases. On CUDA ``per_graph`` calls are captured in one CUDA
    graph and ``time_ms`` times ``repeats`` calls as replays of it (CUDA events, the median of 3 rounds): the
    wrapper's Python launch (~170 µs on the host, more than the kernel) then stays out of the time, as it
    does in the decoder's graphed step. The twenty-sixth session's first run timed plain launches and got
    the host's time (every prefix 110-190 µs, differences of ±90). ``cold``: each call follows a write of
    COLD_MB MB, so it reads its weights from HBM whatever the prefix; the write's time is the same in every
    prefix and cancels in the differences. On the CPU: the median call."""
    x, w, k, v, cos, sin, pos, slots, wslots = args
    flag = torch.zeros(1, dtype=torch.int32, device=x.device)

    def call():
        ks.decode_step(x, w, k, v, cos, sin, pos, slots, wslots, flag, phases=phases, **kw)

    if x.device.type != "cuda":
        return time_ms(call, x.device, warmup=1, repeats=repeats) * 1e3
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        call()  # compiles and warms up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    scratch = torch.empty(COLD_MB << 20, dtype=torch.uint8, device=x.device) if cold else None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(per_graph):
            if scratch is not None:
                scratch.zero_()  # evicts the last call's lines from L2
            call()
    us = time_ms(graph.replay, x.device, warmup=2, repeats=max(1, repeats // per_graph)) * 1e3 / per_graph
    if int(flag.item()):
        raise RuntimeError("a grid barrier timed out: the programs were not all resident")
    return us


def measure(
    shape: dict,
    context: int,
    keys: int,
    dense: bool,
    repeats: int,
    cold: bool = False,
    programs: int | None = None,
    warps: int = 8,
    keep_l2: int | None = None,
    whole: bool = False,
) -> dict:
    """Each prefix's µs and each phase's cost (the difference), on CUDA or under the interpreter."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    args = inputs(shape, context, keys, dense, device, torch.bfloat16 if cuda else torch.float32)
    kw = dict(
        num_heads=shape["heads"], norm="rmsnorm", eps=1e-5, programs=programs or ks.programs_for(device),
        dense=dense, sync=cuda, warps=warps, keep_l2=keep_l2,
    )  # fmt: skip
    every = phase_names(shape["L"], dense)
    names = every[-1:] if whole else every  # whole: one prefix, the whole step, and no phase's own cost
    prefix = [
        time_prefix(args, kw, h, repeats, cold=cold)
        for h in range(len(every) - len(names) + 1, len(every) + 1)
    ]
    cost = [prefix[0]] + [b - a for a, b in zip(prefix, prefix[1:])]
    kinds: dict[str, list[float]] = {}
    for name, c in zip([] if whole else names, cost):
        kinds.setdefault(name.split(".")[0], []).append(c)
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu (Triton's interpreter: not a measurement)",
        "torch": torch.__version__,
        "command": "python " + " ".join(sys.argv),
        "shape": shape,
        "context": context,
        "keys": None if dense else keys,
        "dense": dense,
        "cold": cold,
        "programs": kw["programs"],
        "warps": warps,
        "keep_l2": keep_l2,
        "whole": whole,
        "repeats": repeats,
        "phases": [{"phase": n, "prefix_us": t, "cost_us": c} for n, t, c in zip(names, prefix, cost)],
        "mean_cost_us": {k: statistics.mean(v) for k, v in kinds.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="phase_cost.py", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="where phase_cost.json goes")
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--keys", type=int, default=72, help="HALO-S's key slots a layer")
    p.add_argument("--dense", action="store_true")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--cold", action="store_true", help=f"write {COLD_MB} MB before each call (L2 cold)")
    p.add_argument("--programs", type=int, default=None, help="P (default: the SM count)")
    p.add_argument("--warps", type=int, default=8, help="a program's warps")
    p.add_argument("--keep-l2", type=int, default=None, help="layers whose weights load marked to stay in L2")
    p.add_argument("--whole", action="store_true", help="time the whole step only")
    p.add_argument("--shape", default=None, help="JSON overrides of the medium shape (tests: a tiny one)")
    a = p.parse_args(argv)
    shape = {**MEDIUM, **(json.loads(a.shape) if a.shape else {})}
    if not 1 <= a.keys <= a.context:
        raise SystemExit(f"phase_cost.py: --keys {a.keys} must be 1 .. --context ({a.context})")
    result = measure(
        shape, a.context, a.keys, a.dense, a.repeats, a.cold, a.programs, a.warps, a.keep_l2, a.whole
    )
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "phase_cost.json").write_text(json.dumps(result, indent=1))
    total = result["phases"][-1]["prefix_us"]
    kind = "dense" if a.dense else "HALO-S"
    options = f"{a.warps} warps" + (", L2 cold" if a.cold else "")
    options += "" if a.keep_l2 is None else f", layers 0..{a.keep_l2 - 1} marked to stay in L2"
    print(f"{result['device']}, P = {result['programs']}, context {a.context}, {kind}, {options}")
    print(f"all {len(phase_names(shape['L'], a.dense))} phases: {total:.1f} µs a call")
    for kind, c in result["mean_cost_us"].items():
        print(f"  {kind:5s} {c:7.2f} µs a phase on average")
    return 0


if __name__ == "__main__":
    sys.exit(main())
