"""Fused HALO attention: the whole graph (globals, window, dilated, random) in one online softmax.

The oracle it is tested against is ``halo_lab.graph.reference.reference_attention``; ``naive.py`` computes
the same function from the kernel's own tables, so a table bug and a kernel bug fail different tests.
"""

from halo_lab.kernels.halo_attention.op import halo_triton_attention

__all__ = ["halo_triton_attention"]
