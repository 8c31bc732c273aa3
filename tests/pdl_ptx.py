"""The decode kernels' sm_90 PTX with and without PDL, without a GPU (a subprocess of tests/test_decode_pdl.py).

python tests/pdl_ptx.py  ->  one JSON object {kernel: {"pdl": ..., "plain": ...}}, each the line numbers
of the PTX's grid-dependency instructions, global loads and global stores. Needs TRITON_INTERPRET=0 (the
kernels are compiled, not interpreted) and no driver: Triton compiles for GPUTarget("cuda", 90, 32).
"""

from __future__ import annotations

import json
import re

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from halo_lab.kernels.decode import _decode_kernel
from halo_lab.kernels.decode_attn_o import _attn_o_kernel, _attn_o_split_kernel
from halo_lab.kernels.decode_ffn import _ffn_kernel
from halo_lab.kernels.decode_qkv import _decode_qkv_kernel
from halo_lab.kernels.gemv import _gemv_kernel, block_sizes

INT64 = {"pos_ptr", "store_ptr", "slot_ptr"}
FP32 = {"acc_ptr", "zero_ptr", "zero2_ptr", "ain_ptr"}  # the split-K sums
FLOATS = {"eps", "scale"}


def _signature(kernel, constexprs: dict) -> dict[str, str]:
    def kind(name: str) -> str:
        if name in constexprs:
            return "constexpr"
        if name in FLOATS:
            return "fp32"
        if name.endswith("_ptr"):
            return "*i64" if name in INT64 else "*fp32" if name in FP32 else "*bf16"
        return "i32"

    return {n: kind(n) for n in kernel.arg_names}


def _lines(kernel, constexprs: dict) -> dict[str, list[int]]:
    src = ASTSource(kernel, _signature(kernel, constexprs), constexprs=constexprs)
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["ptx"]
    found: dict[str, list[int]] = {"wait": [], "launch": [], "load": [], "store": []}
    patterns = {
        "wait": r"griddepcontrol\.wait",
        "launch": r"griddepcontrol\.launch_dependents",
        "load": r"\bld\.global",
        "store": r"\bst\.global|\bred\.global|\batom\.global",  # atomics write too
    }
    for i, line in enumerate(ptx.splitlines()):
        for name, pattern in patterns.items():
            if re.search(pattern, line):
                found[name].append(i)
    return found


def main() -> None:
    block_n, chunk = block_sizes(512)
    gemv = dict(NORM=2, HAS_BIAS=False, SWIGLU=False, HAS_RES=True, ACC=False, BLOCK_N=block_n, CHUNK=chunk)
    gemv["ONE_CHUNK"] = True
    qkv = dict(HQ=8, HKV=2, HALF=32, NORM=2, HAS_BIAS=False, RING=False, HAS_STORE=False)
    qkv.update(BLOCK_P=block_n // 2, CHUNK=chunk, ONE_CHUNK=True, ACC=False, FFN_OUT=False, ZERO2=False)
    attn = dict(HEADS=8, D=64, BLOCK_K=128, BLOCK_D=64)
    attn_o = dict(
        HQ=8, HKV=2, HP=16, HW=8, D=64, BLOCK_K=128, BLOCK_D=64, BLOCK_N=8, IEEE=False, UPCAST=False
    )
    attn_split = dict(G=4, HP=16, GW=4, D=64, BLOCK_K=128, BLOCK_D=64, BLOCK_N=16, IEEE=False, UPCAST=False)
    ffn = dict(NORM=2, HAS_BIAS=False, BLOCK_H=16, CHUNK=512, ACC_IN=False)
    out = {}
    for name, kernel, consts in (
        ("gemv", _gemv_kernel, gemv),
        ("gemv_acc", _gemv_kernel, {**gemv, "ACC": True, "HAS_RES": False}),
        ("decode_qkv", _decode_qkv_kernel, qkv),
        ("decode_qkv_ffn", _decode_qkv_kernel, {**qkv, "ACC": True, "FFN_OUT": True}),
        ("decode_qkv_ffn_split", _decode_qkv_kernel, {**qkv, "ACC": True, "FFN_OUT": True, "ZERO2": True}),
        ("decode_attention", _decode_kernel, attn),
        ("decode_attn_o", _attn_o_kernel, attn_o),
        ("decode_ffn", _ffn_kernel, ffn),
        ("decode_attn_o_split", _attn_o_split_kernel, attn_split),
        ("decode_ffn_split", _ffn_kernel, {**ffn, "ACC_IN": True}),
    ):
        out[name] = {
            tag: _lines(kernel, {**consts, "PDL": on}) for tag, on in (("pdl", True), ("plain", False))
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
