"""What one dependent phase of a persistent decode kernel costs, by how the phases wait (issue 30).

The one-launch decode step (halo_lab/kernels/decode_step.py) measured 3.2 µs a phase behind grid-wide
barriers on an H100, no better than a launch under PDL (experiments/bench/README.md, "Issue 30: timed").
The megakernel designs (Hazy Research's Llama-1B, Mirage) wait instead on flags that each producer sets
for the tiles it wrote. This probe times a chain of dependent phases on a vector of D = P x R values, P
programs (one an SM), R rows each, with the work of a phase held fixed and the wait varied:

    launch   one kernel a phase (also replayed from a CUDA graph)
    barrier  one launch; a grid-wide counter between phases (decode_step.py's barrier), polled with
             acquire atomics (decode_phases._wait_count)
    flags    one launch; each program sets its flag when its rows are stored, and a consumer polls only
             the flags of the programs whose rows it reads: all P for a GEMV's input (FANIN 0), or k

and two kinds of work a phase: ``gemv`` (y = W_t x / sqrt(D) + x / 2, a [D, D] bf16 weight a phase,
each program's [R, D] tile loaded before it waits, as decode_step.py does) and ``mean`` (y = x / 2 +
mean(x over what it reads) / 4 + 1: the dependence without the arithmetic). ``reference`` is the chain in
torch; ``check`` compares them. The time a phase is (run time) / (runs x phases), K runs back to back, so
a launch's fixed cost is spread over the phases of the one-launch modes.

Block sizes: R = 4 rows a program by default (the o-projection's split on 132 SMs in decode_step.py); the
weight tile is R x next_pow2(D) (4 x 1024 at D = 528), 16 KB of bf16 a program, in registers across the
wait. ``--rows 8`` grows the GEMV to the decode step's own size (q/k/v 512 x 768, o 512 x 512, FFN 512 x
4,096 and 2,048 x 512: about 0.95M weights a phase on average, 3.4x the 528 x 528 one): R = 8 is 1056 x
1056 (1.1M) at 8 warps, 106 registers with the barrier in the sm_90 build, no spill. R = 16 (2112 x 2112,
a 16 x 4096 tile) spills at 16 warps (128 registers, 232-296 bytes of stack), so R stops at 8.

Testing without a GPU: the interpreter runs programs one after another, so a wait on another program
never ends there; ``launch`` checks every phase at any P and ``barrier``/``flags`` run their waits at
P = 1 (tests/test_phase_sync.py). A wait that spins past ``SPIN`` polls sets ``err`` and later waits do
not wait (wrong values, no hang); ``run`` raises on it.

    python experiments/bench/phase_sync.py OUT [--phases 40] [--runs 50] [--rows 4 8] [--work gemv]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from halo_lab.kernels import decode_phases as dp

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - torch without triton
    HAS_TRITON = False

R = 4  # rows a program (default)
SPIN = 1 << 16  # polls before a wait gives up (~20-30 ms on a card)
SYNC = {"launch": 0, "barrier": 1, "flags": 2}

if HAS_TRITON:

    @triton.jit
    def _poll_flags(flags_ptr, qs, qmask, target, err_ptr, SPIN: tl.constexpr):
        """Wait until every flag ``qs`` (where ``qmask``) reaches ``target``; acquire, GPU scope."""
        zero = tl.zeros_like(qs)
        spins = tl.where(tl.load(err_ptr, volatile=True) == 0, 0, SPIN)
        seen = tl.atomic_add(flags_ptr + qs, zero, mask=qmask, sem="acquire", scope="gpu")
        low = tl.min(tl.where(qmask, seen, target))
        while (low < target) & (spins < SPIN):
            seen = tl.atomic_add(flags_ptr + qs, zero, mask=qmask, sem="acquire", scope="gpu")
            low = tl.min(tl.where(qmask, seen, target))
            spins += 1
        if low < target:
            tl.atomic_xchg(err_ptr, 1)

    @triton.jit
    def _wait(
        flags_ptr, count_ptr, err_ptr, qs, qmask, base, k, t, P, SYNC: tl.constexpr, SPIN: tl.constexpr
    ):
        """Before phase t (the launch's k-th): the barrier's count, or the flags of the programs read."""
        if SYNC == 1:  # the decode step's own wait
            dp._wait_count(count_ptr, err_ptr, (base + k) * P, SPIN)
        if SYNC == 2:
            _poll_flags(flags_ptr, qs, qmask, base + t, err_ptr, SPIN)

    @triton.jit
    def _signal(flags_ptr, count_ptr, p, value, SYNC: tl.constexpr):
        """After this program's rows of a phase are stored: arrive at the barrier, or raise its flag."""
        if SYNC != 0:
            tl.debug_barrier()  # every thread's stores before the signal
        if SYNC == 1:
            tl.atomic_add(count_ptr, 1, sem="release", scope="gpu")
        if SYNC == 2:
            tl.atomic_xchg(flags_ptr + p, value, sem="release", scope="gpu")

    @triton.jit
    def _mean_of_reads(row, rows, r, qs, qmask, cols, cmask, D, R: tl.constexpr, FANIN: tl.constexpr):
        """The ``mean`` work's dependence: the mean of the whole row (FANIN 0) or of the producers' rows."""
        if FANIN == 0:
            return tl.sum(tl.load(row + cols, mask=cmask, other=0.0, cache_modifier=".cg")) / D
        x = tl.load(row + qs[:, None] * R + r[None, :], mask=qmask[:, None], other=0.0, cache_modifier=".cg")
        return tl.sum(x) / (FANIN * R)

    # Triton specializes an int argument on "divisible by 16" unless told not to: ``base`` changes every
    # pass, so the first timed pass whose base is not a multiple of 16 compiled a second kernel inside the
    # timed loop (the twenty-second session's one-launch rows, 44-92 µs a phase, were that compile spread
    # over 2,000 phases). Nothing here gains from the specialization.
    @triton.jit(do_not_specialize=["base", "phase_lo", "phase_hi"])
    def _chain_kernel(
        buf_ptr, w_ptr, flags_ptr, count_ptr, err_ptr, P, D, base, phase_lo, phase_hi,
        R: tl.constexpr, DB: tl.constexpr, PB: tl.constexpr, FANIN: tl.constexpr, KB: tl.constexpr,
        SYNC: tl.constexpr, GEMV: tl.constexpr, SPIN: tl.constexpr,
    ):  # fmt: skip
        """Phases [phase_lo, phase_hi): phase t reads buffer row t and writes this program's R values of
        row t + 1. ``base`` numbers this launch's phases after the earlier launches' (flags and counter
        are never reset)."""
        p = tl.program_id(0)
        r = tl.arange(0, R)
        rows = p * R + r
        cols = tl.arange(0, DB)
        cmask = cols < D
        if FANIN == 0:  # the programs whose rows a phase reads
            qs = tl.arange(0, PB)
            qmask = qs < P
        else:
            qs = (p + tl.arange(0, KB)) % P
            qmask = tl.arange(0, KB) < FANIN
        for t in range(phase_lo, phase_hi):
            if GEMV:  # no kernel writes the weights: their load overlaps the wait
                w = tl.load(
                    w_ptr + t * D * D + rows[:, None] * D + cols[None, :], mask=cmask[None, :], other=0.0
                )
            if t > phase_lo:
                _wait(flags_ptr, count_ptr, err_ptr, qs, qmask, base, t - phase_lo, t, P, SYNC, SPIN)
            row = buf_ptr + t * D
            own = tl.load(row + rows, cache_modifier=".cg")
            if GEMV:
                x = tl.load(row + cols, mask=cmask, other=0.0, cache_modifier=".cg")
                y = tl.sum(w.to(tl.float32) * x[None, :], axis=1) / tl.sqrt(D.to(tl.float32)) + own * 0.5
            else:
                y = own * 0.5 + _mean_of_reads(row, rows, r, qs, qmask, cols, cmask, D, R, FANIN) * 0.25 + 1.0
            tl.store(buf_ptr + (t + 1) * D + rows, y)
            if t < phase_hi - 1:
                _signal(flags_ptr, count_ptr, p, base + t + 1, SYNC)


def reference(
    x0: torch.Tensor, phases: int, P: int, fanin: int = 0, w: torch.Tensor | None = None, rows: int = R
) -> torch.Tensor:
    """The chain in torch, fp32: [phases + 1, D], row 0 ``x0``; ``w`` ([phases, D, D]) for the GEMV work;
    ``rows`` values a program (D = P x rows)."""
    D = x0.numel()
    out = [x0.float()]
    for t in range(phases):
        x = out[-1]
        if w is not None:
            y = w[t].float() @ x / math.sqrt(D) + x * 0.5
        else:
            if fanin == 0:
                m = x.mean().expand(D)
            else:
                chunks = x.view(P, rows)
                m = torch.stack([chunks[[(p + j) % P for j in range(fanin)]].mean() for p in range(P)])
                m = m.repeat_interleave(rows)
            y = x * 0.5 + m * 0.25 + 1.0
        out.append(y)
    return torch.stack(out)


class Chain:
    """The buffers of one chain (P programs, ``phases`` phases) and its launches in each mode."""

    def __init__(
        self,
        P: int,
        phases: int,
        work: str,
        fanin: int = 0,
        device: str = "cuda",
        seed: int = 0,
        spin: int = SPIN,
        rows: int = R,
    ):
        if work == "gemv" and fanin:
            raise ValueError("a GEMV reads the whole vector: fanin must be 0")
        g = torch.Generator().manual_seed(seed)
        if rows not in (1, 2, 4, 8):
            raise ValueError(f"rows must be 1, 2, 4 or 8 (a tile's row count; 16 spills), got {rows}")
        self.P, self.phases, self.work, self.fanin, self.spin, self.rows = P, phases, work, fanin, spin, rows
        self.D = P * rows
        self.x0 = torch.randn(self.D, generator=g).to(device)
        self.w = (
            torch.randn(phases, self.D, self.D, generator=g).to(device, torch.bfloat16)
            if work == "gemv"
            else None
        )
        self.buf = torch.zeros(phases + 1, self.D, device=device)
        self.flags = torch.zeros(P, dtype=torch.int32, device=device)
        self.count = torch.zeros(1, dtype=torch.int32, device=device)
        self.err = torch.zeros(1, dtype=torch.int32, device=device)
        self.runs = 0  # one-launch runs so far (the flags' and counter's numbering)

    def _launch(self, sync: int, lo: int, hi: int, base: int) -> None:
        w = self.w if self.w is not None else self.buf  # unused when work != gemv
        _chain_kernel[(self.P,)](
            self.buf, w, self.flags, self.count, self.err, self.P, self.D, base, lo, hi,
            R=self.rows, DB=triton.next_power_of_2(self.D), PB=triton.next_power_of_2(self.P), FANIN=self.fanin,
            KB=triton.next_power_of_2(max(self.fanin, 1)), SYNC=sync, GEMV=self.work == "gemv", SPIN=self.spin,
            num_warps=max(4, self.rows),
        )  # fmt: skip

    def run(self, mode: str) -> None:
        """One pass of the chain: row 0 is x0, rows 1..phases are written."""
        self.buf[0].copy_(self.x0)
        if mode == "launch":
            for t in range(self.phases):
                self._launch(0, t, t + 1, 0)
            return
        sync = SYNC[mode]
        base = self.runs * (self.phases if sync == 2 else self.phases - 1)
        self._launch(sync, 0, self.phases, base)
        self.runs += 1

    def check(self) -> float:
        """The largest relative error of the last pass against ``reference``; raises if a wait timed out."""
        if int(self.err.item()):
            raise RuntimeError("a wait spun past its limit: are all P programs resident (P <= SMs)?")
        ref = reference(self.x0, self.phases, self.P, self.fanin, self.w, self.rows)
        return float(((self.buf - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item())


def time_chain(chain: Chain, mode: str, runs: int, graph: bool = False) -> tuple[float, float]:
    """(µs a phase over ``runs`` passes back to back (CUDA events), the last pass's relative error), after
    a checked warm-up pass."""
    chain.run(mode)
    torch.cuda.synchronize()
    chain.check()
    step = lambda: chain.run(mode)  # noqa: E731
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            chain.run(mode)
        step = g.replay
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(runs):
        step()
    end.record()
    torch.cuda.synchronize()
    err = chain.check()
    if err > 1e-3:
        raise RuntimeError(f"{mode}: the chain's values differ from the reference by {err:.2e}")
    return start.elapsed_time(end) * 1000 / (runs * chain.phases), err


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--phases", type=int, default=40, help="dependent phases a pass (HALO-S medium: 41)")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--programs", type=int, default=0, help="P (default: the SM count)")
    ap.add_argument("--rows", type=int, nargs="+", default=[R], help="values a program, each a GEMV size")
    ap.add_argument("--work", choices=["gemv", "mean"], nargs="+", default=["gemv", "mean"])
    args = ap.parse_args(argv)
    if not torch.cuda.is_available() or not HAS_TRITON:
        print("phase_sync.py: needs a CUDA card and Triton", file=sys.stderr)
        return 2
    P = args.programs or torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    shapes = (("gemv", 0), ("mean", 0), ("mean", 1), ("mean", 4))
    for work, fanin, r in [(w, f, r) for r in args.rows for w, f in shapes if w in args.work]:
        modes = (
            ("launch", False),
            ("launch", True),
            ("barrier", False),
            ("flags", False),
        )
        for mode, graph in modes:
            if fanin and mode.startswith("barrier"):
                continue  # the barrier waits for everyone whatever a phase reads
            chain = Chain(P, args.phases, work, fanin, rows=r)
            us, err = time_chain(chain, mode, args.runs, graph)
            rows.append({"work": work, "fanin": fanin, "rows": r, "D": chain.D, "mode": mode + (" (graph)" if graph else ""),
                         "us_per_phase": round(us, 3), "max_rel_err": err})  # fmt: skip
            print(
                f"{work:5} D {chain.D:5} fanin {fanin or 'all':>3}  {rows[-1]['mode']:15} {us:7.3f} µs a phase",
                flush=True,
            )
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"card": torch.cuda.get_device_name(), "programs": P, "rows_per_program": args.rows,
            "phases": args.phases, "runs": args.runs, "torch": torch.__version__, "triton": triton.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": "python experiments/bench/phase_sync.py " + " ".join(argv or sys.argv[1:])}  # fmt: skip
    (args.out / "phase_sync.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
