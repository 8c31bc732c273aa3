"""What torch's analysis of a traced Triton kernel says each fused-attention kernel writes (run by
tests/test_triton_op.py in a subprocess, without the interpreter: the analysis reads the kernels' TTIR).

``torch.library.wrap_triton`` records a launch in a compiled graph, and functionalisation takes every
tensor that ``identify_accessed_tensors`` reports as written for a mutated input. Its analysis is
conservative: every argument of a ``@triton.jit`` call whose result reaches a store's address counts as
written. A K or V (a leaf that requires grad) reported so fails compiled training on CUDA ("a leaf
Variable that requires grad is being used in an in-place operation"). TTIR needs a target, not a GPU: the
driver is replaced by one that names sm_90. Launches are captured, not run.

python tests/kernel_writes.py CASE  ->  one JSON object {kernel name: [written argument names]}
"""

import json
import sys
from pathlib import Path

import triton
from torch._higher_order_ops.triton_kernel_wrap import identify_accessed_tensors
from triton.backends.compiler import GPUTarget

sys.path.insert(0, str(Path(__file__).parent))


class _Sm90Driver:
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


def main(case: str) -> None:
    triton.runtime.driver.set_active(_Sm90Driver())
    import test_triton_op as cases

    from halo_lab.kernels.halo_attention import choose, halo_triton_attention, interface

    launches = []
    interface._launch = lambda launcher, grid, args, meta, traced: launches.append(
        (launcher.kernel, args, meta)
    )

    def choice(grid, args, meta):  # not run: no block chosen (-1), which the key-block pass's host side reads
        dict(zip(choose.choose_blocks_kernel.arg_names, args))["BLK"].fill_(-1)
        launches.append((choose.choose_blocks_kernel, args, meta))

    choose._launch = choice
    c, ins, u, biases = cases.inputs(case)
    halo_triton_attention(*ins, c, 1, 5, u, *biases).sum().backward()
    writes = {}
    for kernel, args, meta in launches:
        kwargs = dict(zip(kernel.arg_names, args)) | {k: v for k, v in meta.items() if k in kernel.arg_names}
        accesses = identify_accessed_tensors(kernel, kwargs, {})
        writes[kernel.fn.__name__] = sorted(dep.name for dep in accesses.read_writes.writes)
    print(json.dumps(writes))


if __name__ == "__main__":
    main(sys.argv[1])
