"""Per-kernel times and launch-option variants of the fused HALO kernels (GPU only, no Hydra needed).

python experiments/bench/kernel_tune.py OUT_DIR [VARIANT ...]   (default: all of VARIANTS; the bench setting: 8 query heads, 2 KV heads, d=64,
B*N = 65,536 tokens, the default graph, bf16; dense = causal flash SDPA in the same process)
python experiments/bench/kernel_tune.py OUT_DIR --select [VARIANT ...]   (the same for the bench's
triton_select, halo_lab.bench.attention.SELECT, with SELECT_VARIANTS at 1K, 4K and 16K)
--n=N (repeatable) times only those lengths; --hist (with --select) also records how unevenly the positions
choose the groups and blocks at each N (choice_histogram). The JSON is rewritten after each length, so a run cut by a
time limit keeps the lengths it finished.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import traceback
import types
from pathlib import Path

import torch
from triton.testing import do_bench

from halo_lab.config import HaloConfig
from halo_lab.kernels.halo_attention import chosen_dkv, interface, summary_dkv
from halo_lab.model import attention as attn

VARIANTS = {
    "default": {},
    "warps8": {"fwd": {"num_warps": 8}, "dq": {"num_warps": 8}, "dkv": {"num_warps": 8}},
    "fwd8_dq4_dkv8": {"fwd": {"num_warps": 8}, "dkv": {"num_warps": 8}},
    "fwd8_dq8_dkv4": {"fwd": {"num_warps": 8}, "dq": {"num_warps": 8}},
    "stages2": {"fwd": {"num_stages": 2}, "dq": {"num_stages": 2}, "dkv": {"num_stages": 2}},
    "dkv_bn32": {"dkv": {"BLOCK_N": 32}},
    # dK^T / dV^T accumulators (KEYS_AS_N): 32-key tiles compute 96 query positions per key for the
    # window's 64 (67% useful) against 128 at 64 keys (50%), with M = head_dim rows in the products
    "dkv_t32": {"dkv": {"BLOCK_N": 32, "KEYS_AS_N": True}},
    "dkv_t32_w4": {"dkv": {"BLOCK_N": 32, "KEYS_AS_N": True, "num_warps": 4}},
    "dkv_t64": {"dkv": {"BLOCK_N": 64, "KEYS_AS_N": True}},
    "dkv_q64": {"dkv": {"BLOCK_Q": 64}},
    # the dilated keys as one tile per distance (before 2026-12-02c) against the grouped products (dilated.py)
    "per_distance": {"fwd": {"DIL_GROUPED": False}, "dq": {"DIL_GROUPED": False}},
    "grouped_fwd_only": {"dq": {"DIL_GROUPED": False}},
    "dq8": {"dq": {"num_warps": 8}},
    # the dQ pass at 8 warps with a tile per distance: the one dQ build without a spill on sm_90 (kernel_regs.py,
    # Triton 3.9: 232 registers, against 255 + 1,872 B of stack for the default and 255 + 904 B for dq8),
    # at one program an SM (232 x 256 threads); untimed until the twenty-fourth session's call
    "dq8_per_distance": {"dq": {"num_warps": 8, "DIL_GROUPED": False}},
    # wider key tiles in the dK/dV pass (66% of the window products useful instead of 50%; sm_90 build
    # under Triton 3.9: 255 registers + 576 B spill, against 253 and none at 64 keys) and in the query
    # passes' window loop (2 softmax updates instead of 3, more masked keys; forward 155 registers against
    # 113, no spill). Timed on an H200 2026-12-02 (kernel_tune_2026-12-02b.log): neither wins at every N,
    # within the ±20% spread between runs of the default (kernel_notes.md)
    "dkv_bn128": {"dkv": {"BLOCK_N": 128}},
    "win64": {"fwd": {"BLOCK_N": 64}, "dq": {"BLOCK_N": 64}},
}

AT_EVERY_N = ("default", "per_distance", "grouped_fwd_only", "dq8", "dq8_per_distance")  # the rest at 1K only

# The selected path (--select). Its dQ build spills more than plain HALO-S's (sm_90 under Triton 3.9,
# kernel_regs.py: 255 registers + 2,160 B stack at 4 warps, 792 B at 8), and BPT (chosen blocks per key
# tile, 2 since 2026-12-05) was chosen on the CPU by the loop count. The H100 (2026-12-05,
# h100_train_v4/kernel_tune_select.log) kept both (bpt1 +0.5 to 2%, dq8 +3 to 9%) and took the forward at 4 warps.
COMPILED = "compiled"  # a variant's key: time the layer under torch.compile instead of eagerly
GROUP_PART = "group_part"  # a variant's key: summary_dkv.GROUP_PART (a group's choosers a program; 0 all)
BLOCK_PART = "block_part"  # the same for chosen_dkv.BLOCK_PART (a chosen block's choosers a program)
SELECT_VARIANTS = {
    "default": {},
    "bpt1": {"fwd": {"BPT": 1}, "dq": {"BPT": 1}},
    "dq8": {"dq": {"num_warps": 8}},
    "dq8_bpt1": {"dq": {"num_warps": 8, "BPT": 1}, "fwd": {"BPT": 1}},
    "fwd8": {"fwd": {"num_warps": 8}},  # the default before 2026-12-05's H100 run (fwd4 then: -3 to -4%)
    # timing probes, wrong dK/dV: the selected keys' dK/dV by plain stores, and not at all. What the dQ
    # pass's atomics cost, and the products with them: the case for a pass that owns the chosen keys
    "probe_kg_store": {"dq": {"SEL_KG": 1, "SUM_KG": 1}},
    "probe_kg_none": {"dq": {"SEL_KG": 2, "SUM_KG": 2}},
    # ... and the summaries' alone, the chosen keys' by key blocks as by default (chosen_dkv.py): what the
    # summaries' fp32 atomics cost the dQ pass (every query tile of a row adds into the same few group
    # summaries), stored (1) or skipped (2): the case for a pass that owns the summaries
    "probe_sum_store": {"dq": {"SUM_KG": 1}},
    "probe_sum_none": {"dq": {"SUM_KG": 2}},
    # exact: the summaries' dK/dV by the dQ pass's atomics (SUM_KG 0), the default before 2026-12-07's H100
    # run (h100_select_v10/: compiled 4.58 vs 4.30 ms at 4K, 6.27 vs 5.90 at 16K against the passes that own
    # them, summary_dkv.py, SUM_KG 3), eager and compiled
    "sum_atomics": {"dq": {"SUM_KG": 0}},
    "sum_atomics_compiled": {"dq": {"SUM_KG": 0}, COMPILED: True},
    # the summaries' group pass with a group's choosers split over programs of 256 / 512 (summary_dkv.py:
    # one program a group waits on the early groups, chosen by most positions; 804 µs at 16K compiled)
    "part256": {GROUP_PART: 256},
    "part512": {GROUP_PART: 512},
    "part256_compiled": {GROUP_PART: 256, COMPILED: True},
    "part512_compiled": {GROUP_PART: 512, COMPILED: True},
    # ... and both passes split (chosen_dkv.py's blocks too: 717 µs at 16K compiled)
    "parts512_compiled": {GROUP_PART: 512, BLOCK_PART: 512, COMPILED: True},
    "parts1024_compiled": {GROUP_PART: 1024, BLOCK_PART: 1024, COMPILED: True},
    # (the 2026-12-07 run named the opt-in SUM_KG 3 sum_owned / sum_owned_compiled against these defaults)
    # exact: the chosen keys' dK/dV by the dQ pass's atomics, the default before the H100's 2026-12-06 run
    # (h100_select_v4/: 12.3 vs 9.0 ms fwd + bwd at 16K against the pass owned by key blocks, chosen_dkv.py)
    "kg_atomics": {"dq": {"SEL_KG": 0}},
    # the default launch options, the layer under torch.compile(fullgraph=True): the eager layer's wall
    # time is 2.1-2.5 ms above its kernels' GPU time at every N (h100_select_v4/), the host's selection
    # glue (~163 aten ops forward, 115 backward, counted on the CPU); Inductor fuses that glue
    "compiled": {COMPILED: True},
    # 32-position query tiles in the forward and dQ pass, the selected path's default before 2026-12-06
    # (h100_select_v7/: 16 positions took the forward kernel from 1,230 to 896 µs at 4K, 1,620 to 1,129 at
    # 16K, dQ within 3%; an 8-warp dQ at 16 positions nearly doubled dQ's time)
    "t32": {"fwd": {"BLOCK_T": 32}, "dq": {"BLOCK_T": 32}},
    "t32_compiled": {"fwd": {"BLOCK_T": 32}, "dq": {"BLOCK_T": 32}, COMPILED: True},
}


def inputs(n: int, config: HaloConfig, dtype=torch.bfloat16):
    # seeded, so processes time the same data: the selected kernels' work depends on which groups the
    # positions choose, and two unseeded processes timed the same 16K group pass at 707 and 1,151 µs
    # (h100_select_v11/; the cause not isolated)
    torch.manual_seed(n)
    B = 65536 // n
    L = n + config.num_globals
    q = torch.randn(B, 8, L, 64, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(B, 2, L, 64, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn(B, 2, L, 64, device="cuda", dtype=dtype, requires_grad=True)
    return q, k, v, torch.randn_like(q)


ROUNDS = 5  # the H200's speed drifts by ±20% between calls and within one: variants are timed in turns


def step_fns(fn_fwd, q, k, v, g):
    def fwd():
        with torch.no_grad():
            fn_fwd(q, k, v)

    def fwd_bwd():
        fn_fwd(q, k, v).backward(g)
        q.grad = k.grad = v.grad = None

    return fwd, fwd_bwd


_COMPILED_CODES: list = []  # the compiled variants' code objects (one each: with_options)


def with_options(override: dict):
    """HALO attention through the triton backend with one variant's launch options (``COMPILED``: the
    default options, the call under torch.compile)."""
    base = interface.launch_options(64, 4, torch.bfloat16, CONFIG.selects)
    opts = {kern: {**o, **override.get(kern, {})} for kern, o in base.items()}

    def layer(q, k, v, extras):  # the selection's tensors as arguments, as the compile tests pass them
        return attn.halo_attention(q, k, v, CONFIG, 0, 0, "triton", **extras)

    # static shapes: a recompile at the next N with symbolic sizes fails in Inductor's triton_kernel_wrapper
    # pass (torch 2.11, H100, twelfth session: failed_compiled_4096.txt). Each compiled variant gets a code
    # object of its own: Dynamo caches graphs by code object, and the launch options are read at trace time
    # without a guard, so a second compiled variant reused the first one's graph (t16_compiled timed the
    # default's kernels: h100_select_v7/, forward kernel 1,242 µs at 4K against eager t16's 896)
    if override.get(COMPILED):
        code = layer.__code__.replace(co_name=f"layer_{len(_COMPILED_CODES)}")
        _COMPILED_CODES.append(code)
        layer = types.FunctionType(code, layer.__globals__)
    inner = torch.compile(layer, fullgraph=True, dynamic=False) if override.get(COMPILED) else layer

    def fn(q, k, v):
        summary_dkv.GROUP_PART = override.get(GROUP_PART, 0)  # read at each launch (a trace: at compile)
        chosen_dkv.BLOCK_PART = override.get(BLOCK_PART, 0)
        if interface.TUNED.get((64, 4, torch.bfloat16)) is not opts:  # variants are timed in turns
            interface.TUNED[(64, 4, torch.bfloat16)] = opts
            interface._PLANS.clear()
        return inner(q, k, v, EXTRAS)

    return fn


def kernel_times(fn, q, k, v, g) -> dict[str, float]:
    """Mean µs per fwd + bwd of each CUDA kernel (torch profiler, 10 steps): GPU time, where the wall time
    of one layer at 1K also holds the host's launch time."""
    _, fwd_bwd = step_fns(fn, q, k, v, g)
    fwd_bwd()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            fwd_bwd()
        torch.cuda.synchronize()
    return {
        e.key[:40]: round(e.device_time_total / 10, 1) for e in prof.key_averages() if e.device_time_total > 0
    }


def choice_histogram(q, k, v) -> dict:
    """How unevenly the text positions choose the groups and blocks (item 5d of the bench README's next
    calls): each group's and block's choosers over (batch row, KV head, position, slot), from the oracle's
    choice on the timed inputs. The group pass and the chosen blocks' dK/dV give a program per group or
    block, so the largest count is the longest program."""
    from halo_lab.graph import selection

    G = CONFIG.num_globals
    n = q.shape[2] - G
    with torch.no_grad():
        sel = selection.select(
            q[:, :, G:], k, v, CONFIG, torch.arange(n, device=q.device), pool=EXTRAS.get("pool")
        )
    out = {}
    for name, ids in (("groups", sel.groups), ("blocks", sel.blocks)):
        ids = ids[ids >= 0]
        if ids.numel():
            c = torch.bincount(ids.flatten()).float()
            out[name] = {
                "count": c.numel(), "choices": int(c.sum()), "max": int(c.max()), "mean": round(float(c.mean()), 1),
                "max_over_mean": round(float(c.max() / c.mean()), 2), "top8": [int(x) for x in c.topk(min(8, c.numel())).values],
                "first8": [int(x) for x in c[:8]],
            }  # fmt: skip
    return out


CONFIG = HaloConfig()
EXTRAS: dict = {}  # the selection's parameters (pool, biases) with --select


def _arguments(args: list[str]) -> tuple[list[int], bool, bool, list[str]]:
    """(lengths, select, hist, variant names) from the command line after OUT_DIR; unknown names fail."""
    lengths = [int(a.split("=", 1)[1]) for a in args if a.startswith("--n=")]
    hist = "--hist" in args  # with --select: the choice's histogram at each N (choice_histogram)
    names = [a for a in args if not a.startswith("--n=") and a != "--hist"]
    select = bool(names) and names[0] == "--select"
    names = names[1:] if select else names
    table = SELECT_VARIANTS if select else VARIANTS
    unknown = [name for name in names if name not in table]
    if unknown:
        raise SystemExit(f"kernel_tune.py: unknown variant(s) {unknown}; known: {sorted(table)}")
    return lengths, select, hist, names


def main(out: str, args: list[str]) -> None:
    global CONFIG, EXTRAS
    lengths, select, hist, names = _arguments(args)
    table = SELECT_VARIANTS if select else VARIANTS
    if select:
        from halo_lab.bench.attention import SELECT, selection_parameters

        CONFIG = HaloConfig().replace(**SELECT)
        torch.manual_seed(0)
        EXTRAS = selection_parameters(CONFIG, torch.device("cuda"))
    variants = {name: table[name] for name in names} if names else table
    results: dict = {"device": torch.cuda.get_device_name(), "rounds": ROUNDS, "select": select, "rows": []}
    print(results["device"], flush=True)
    for n in lengths or ((1024, 4096, 16384) if select else (1024, 16384, 65536)):
        q, k, v, g = inputs(n, CONFIG)
        if select and hist:
            results.setdefault("choice", {})[n] = choice = choice_histogram(q, k, v)
            print(f"N={n:6d} choice {json.dumps(choice)}", flush=True)
        fns = {"dense": lambda q, k, v: attn.dense_attention(q, k, v)}
        fns.update(
            (name, with_options(o))
            for name, o in variants.items()
            if n == 1024 or names or select or name in AT_EVERY_N
        )
        times: dict[str, dict[str, list[float]]] = {name: {"fwd_ms": [], "fwd_bwd_ms": []} for name in fns}
        for name in list(fns):
            try:  # compile outside the timed turns; a variant that does not compile is a result too
                step_fns(fns[name], q, k, v, g)[1]()
            except Exception as e:  # noqa: BLE001
                print(f"N={n:6d} {name:16s} failed: {type(e).__name__}: {str(e)[:120]}", flush=True)
                os.makedirs(out, exist_ok=True)  # the whole error: Dynamo's explanation is past 120 chars
                Path(out, f"failed_{name}_{n}.txt").write_text(traceback.format_exc())
                del fns[name], times[name]
        for _ in range(ROUNDS):
            for name, fn in fns.items():
                fwd, fwd_bwd = step_fns(fn, q, k, v, g)
                times[name]["fwd_ms"].append(do_bench(fwd, warmup=5, rep=20, return_mode="median"))
                times[name]["fwd_bwd_ms"].append(do_bench(fwd_bwd, warmup=5, rep=40, return_mode="median"))
        dense = statistics.median(times["dense"]["fwd_bwd_ms"])
        for name, t in times.items():
            row = {"variant": name, "N": n, **{k: statistics.median(v) for k, v in t.items()}, "all": t}
            if name != "dense":
                row["kernels_us"] = kernel_times(fns[name], q, k, v, g)
            results["rows"].append(row)
            spread = max(t["fwd_bwd_ms"]) / min(t["fwd_bwd_ms"])
            print(
                f"N={n:6d} {name:16s} fwd {row['fwd_ms']:.3f}  fwd+bwd {row['fwd_bwd_ms']:.3f}  "
                f"x dense {row['fwd_bwd_ms'] / dense:.2f}  (max/min of {ROUNDS} turns {spread:.2f})"
                + (f"  kernels µs {row['kernels_us']}" if "kernels_us" in row else ""),
                flush=True,
            )
        interface.TUNED.clear()
        interface._PLANS.clear()
        os.makedirs(out, exist_ok=True)
        with open(f"{out}/kernel_tune{'_select' if select else ''}.json", "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        raise SystemExit(__doc__)  # the usage, not a CUDA traceback on a machine without a card
    main(sys.argv[1], sys.argv[2:])
