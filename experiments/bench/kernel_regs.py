"""Registers, spills and shared memory of the fused kernels' sm_90 builds, without a GPU.

python experiments/bench/kernel_regs.py [--aligned]   (Triton compiles for GPUTarget("cuda", 90, 32);
                                                        cuobjdump -res-usage reads the cubin; no driver)

A kernel that spills (STACK > 0) pays local-memory traffic per tile; compare variants before spending
device time on them. The Triton here may differ from the GPU machine's (3.6): treat as a hint.

``--aligned`` marks every pointer argument 16-byte aligned, as Triton's launcher does for a tensor whose
address is (torch's allocations are): the loads then vectorise, as in the build a launch gets. Without it
(the numbers before 2026-12-08) the pointers' alignment is unknown and the weight loads are 2-byte scalar
loads; e.g. the persistent decode step takes 184 registers unaligned, 148 aligned.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from halo_lab.bench.attention import SELECT
from halo_lab.config import HaloConfig
from halo_lab.kernels import decode_step as ks
from halo_lab.kernels.decode_attn_o import _attn_o_kernel, _attn_o_split_kernel
from halo_lab.kernels.decode_ffn import _ffn_kernel
from halo_lab.kernels.gemv import _gemv_kernel, block_sizes
from halo_lab.kernels.halo_attention import chosen_dkv, interface
from halo_lab.kernels.halo_attention.backward import halo_bwd_dq_kernel
from halo_lab.kernels.halo_attention.choose import choose_blocks_kernel
from halo_lab.kernels.halo_attention.forward import halo_fwd_kernel

FP32_POINTERS = ("LSE", "DELTA", "DKA", "DVA", "DSK", "DSV", "SBIAS", "TBIAS", "DBIAS", "DTBIAS")
INT32_POINTERS = ("DIST", "RAND", "BLK", "GRPS", "TB", "TBN", "TG", "TGN", "OFFS", "POS")
INTS = ("L", "HKV", "NT", "UMAX", "UGMAX", "NB", "NSUM", "NBLK")


def _signature(kernel, constexprs: dict, dtype: str) -> dict[str, str]:
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ("qk_scale", "sm_scale"):
            sig[name] = "fp32"
        elif name[0].isupper() and name not in INTS:  # tensors
            sig[name] = (
                "*i32" if name in INT32_POINTERS else "*fp32" if name in FP32_POINTERS else f"*{dtype}"
            )
        else:
            sig[name] = "i32"
    return sig


def _gemv_signature(kernel, constexprs: dict, dtype: str) -> dict[str, str]:
    """The decode kernels' arguments: ``*_ptr`` tensors (the split-K FFN's sums fp32, the key slots
    int64), eps and scale fp32, the rest i32."""
    typed = {"eps": "fp32", "scale": "fp32", "acc_ptr": "*fp32", "zero_ptr": "*fp32", "ain_ptr": "*fp32"}
    longs = ("slot_ptr", "pos_ptr", "first_ptr", "store_ptr", "slots_ptr", "wslots_ptr", "tok_ptr")
    typed.update(dict.fromkeys(longs, "*i64"))
    typed.update(dict.fromkeys(("part_ptr", "ob_ptr", "fb_ptr"), "*fp32"))  # the persistent step's sums
    typed.update(dict.fromkeys(("sync_ptr", "flag_ptr"), "*i32"))
    return {
        n: "constexpr" if n in constexprs else typed.get(n, f"*{dtype}" if n.endswith("_ptr") else "i32")
        for n in kernel.arg_names
    }


ALIGNED = False  # main's --aligned: every pointer argument marked 16-byte aligned (the module doc)


def resources(kernel, opts: dict, consts: dict, dtype: str = "bf16", signature=_signature) -> str:
    """``REG:n STACK:n SHARED:n LOCAL:n`` of one sm_90 build."""
    constexprs = {**{k: v for k, v in opts.items() if k not in ("num_warps", "num_stages")}, **consts}
    sig = signature(kernel, constexprs, dtype)
    pointers = [i for i, t in enumerate(sig.values()) if t.startswith("*")] if ALIGNED else []
    attrs = {(i,): [["tt.divisibility", 16]] for i in pointers}
    src = ASTSource(kernel, sig, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": opts["num_warps"], "num_stages": opts["num_stages"]}
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    tool = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    return " ".join(re.findall(r"REG:\d+ STACK:\d+ SHARED:\d+ LOCAL:\d+", out))


def main() -> None:
    global ALIGNED
    ALIGNED = "--aligned" in sys.argv[1:]
    config = HaloConfig()

    base = interface.launch_options(64, 4, torch.bfloat16)
    consts = interface._consts(config, config.graph_block_size, 4, 64, torch.bfloat16, base["fwd"]["BLOCK_T"])
    aligned = "pointers 16-byte aligned" if ALIGNED else "pointers of unknown alignment"
    print(f"triton {triton.__version__}, sm_90, bf16, head_dim 64, 4 query heads per KV head, default graph, {aligned}")
    for kname, kernel in (("fwd", halo_fwd_kernel), ("dq", halo_bwd_dq_kernel)):
        for warps in (4, 8):
            for grouped in (False, True):
                opts = {**base[kname], "num_warps": warps, "DIL_GROUPED": grouped}
                tag = "grouped dilated" if grouped else "per-distance tiles"
                print(f"{kname:3s} {warps} warps {tag:20s} {resources(kernel, opts, consts)}", flush=True)
    # the selected path (the bench's triton_select: halo_lab.bench.attention.SELECT, both biases), its
    # chosen blocks one (BPT 1, until 2026-12-05) or two to a key tile
    # at the selected path's own tiles (16 positions since 2026-12-06; 32 before)
    sel = config.replace(**SELECT)
    base = interface.launch_options(64, 4, torch.bfloat16, selecting=True)
    block_t = base["fwd"]["BLOCK_T"]
    consts = interface._consts(sel, sel.graph_block_size, 4, 64, torch.bfloat16, block_t, True, True)
    for kname, kernel in (("fwd", halo_fwd_kernel), ("dq", halo_bwd_dq_kernel)):
        for warps in (4, 8):
            for bpt in (1, 2):
                regs = resources(kernel, {**base[kname], "num_warps": warps}, {**consts, "BPT": bpt})
                print(f"{kname:3s} {warps} warps selection, BPT {bpt}, {block_t} positions {regs}", flush=True)
    # the dQ pass without the chosen keys' dK/dV, and the pass that owns them (chosen_dkv.py, SEL_KG 3)
    regs = resources(halo_bwd_dq_kernel, {**base["dq"], "SEL_KG": 3}, consts)
    print(f"dq  {base['dq']['num_warps']} warps selection, SEL_KG 3 {regs}", flush=True)
    names = ("G", "W", "ND", "NR", "UNIT", "GRP", "HD", "SB", "SBP", "TOKB", "IEEE", "UPCAST")
    chosen = {n: consts[n] for n in names} | {"BLOCK_P": chosen_dkv.BLOCK_P, "SPLIT": bool(chosen_dkv.BLOCK_PART)}
    for warps in (4, 8):
        regs = resources(chosen_dkv.chosen_dkv_kernel, {"num_warps": warps, "num_stages": 2}, chosen)
        print(f"chosen_dkv {warps} warps {regs}", flush=True)
    # the selection's choice (choose.py) at the variant's settings: 16 blocks a group, 2 groups, 4 blocks
    consts = {"M": 16, "N2": 2, "NSEL": 4, "NSELP": 4, "D": 64, "TWO": True, "BLOCK_P": 32}
    sig = {n: "constexpr" if n in consts else "*fp32" for n in choose_blocks_kernel.arg_names}
    sig.update(GRPS="*i32", CAND="*i32", BLK="*i32", P="i32", S="i32", inv_sqrt_d="fp32")
    for warps in (2, 4):
        regs = resources(
            choose_blocks_kernel, {"num_warps": warps, "num_stages": 1}, consts, signature=lambda *a: sig
        )
        print(f"choose {warps} warps {regs}", flush=True)
    decode_kernels()


def decode_kernels() -> None:
    """The batch-1 decode step's kernels at the medium model (hidden 512, 8 / 2 heads of 64, FFN 2048)."""
    # the decode step's fused GEMV (halo_lab/kernels/gemv.py), each prologue / epilogue it is built with, at
    # the medium model's row widths (512: q/k/v, o, gate/up, head; 2048: down)
    for tag, kind, k in (
        ("layernorm", 1, 512),
        ("rmsnorm", 2, 512),
        ("swiglu + residual", 0, 2048),
        ("residual", 0, 512),
    ):
        consts = {
            "NORM": kind,
            "HAS_BIAS": kind == 1,
            "SWIGLU": tag.startswith("swiglu"),
            "HAS_RES": "residual" in tag,
            "ACC": False,
            "PDL": False,
        }
        block_n, chunk = block_sizes(k)
        opts = {"BLOCK_N": block_n, "CHUNK": chunk, "ONE_CHUNK": True, "num_warps": 4, "num_stages": 2}
        print(
            f"gemv {tag:18s} K={k:5d} {resources(_gemv_kernel, opts, consts, signature=_gemv_signature)}",
            flush=True,
        )
    # the batch-1 step's attention + o-projection (decode_attn_o.py) and split-K FFN (decode_ffn.py) at the
    # medium model (8 / 2 heads of 64, K = 72 keys padded to 128; hidden 512, FFN 2048), with PDL
    consts = dict(
        HQ=8, HKV=2, HP=16, HW=8, D=64, BLOCK_K=128, BLOCK_D=64, BLOCK_N=8, IEEE=False, UPCAST=False, PDL=True
    )
    regs = resources(_attn_o_kernel, {"num_warps": 4, "num_stages": 2}, consts, signature=_gemv_signature)
    print(f"decode_attn_o 4 warps {regs}", flush=True)
    consts = dict(
        G=4, HP=16, GW=4, D=64, BLOCK_K=128, BLOCK_D=64, BLOCK_N=16, IEEE=False, UPCAST=False, PDL=True
    )
    regs = resources(
        _attn_o_split_kernel, {"num_warps": 4, "num_stages": 2}, consts, signature=_gemv_signature
    )
    print(f"decode_attn_o_split 4 warps {regs}", flush=True)
    for warps in (4, 8):
        consts = dict(NORM=2, HAS_BIAS=False, BLOCK_H=16, CHUNK=512, PDL=True, ACC_IN=warps == 8)
        regs = resources(
            _ffn_kernel, {"num_warps": warps, "num_stages": 2}, consts, signature=_gemv_signature
        )
        print(f"decode_ffn {warps} warps {regs}", flush=True)
    # the whole batch-1 step in one persistent launch (decode_step.py, 3 phases a layer) on 132 SMs
    # (and at 88 programs, PersistentStep.most_programs: larger tiles a program; and with layers 0-4's
    # weights marked to stay in L2, PersistentStep.keep_l2)
    for dense, programs, keep in ((False, 132, None), (True, 132, None), (False, 88, None), (False, 132, 5)):
        meta = ks.launch_meta(
            C=512, F=2048, V=256, L=8, num_heads=8, kv_heads=2, d=64, n_keys=72, norm="rmsnorm",
            has_bias=False, programs=programs, dense=dense, keep_l2=keep,
        )  # fmt: skip
        opts = {"num_warps": meta.pop("num_warps"), "num_stages": 1}
        regs = resources(ks._decode_step_kernel, opts, {**meta, "SYNC": True}, signature=_gemv_signature)
        kind = ("dense" if dense else "HALO-S") + ("" if keep is None else f", keep_l2 {keep}")
        print(f"decode_step {kind} 8 warps, P = {programs} {regs}", flush=True)


if __name__ == "__main__":
    main()
