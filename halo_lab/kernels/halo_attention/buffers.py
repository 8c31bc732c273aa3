"""The buffers the dQ pass writes besides dQ, allocated as the eager path or a traced (compiled) one needs
them (``written_apart``)."""

from __future__ import annotations

import torch


def written_apart(q, k, sk, nsum: int, nd: int, selecting, biased, token_biased, sbias, tbias, apart: bool):
    """The dQ pass's extra outputs (see backward_kernels; dsum: dsk and dsv stacked, or None).

    Eager (``apart`` False): each pair is one allocation and one memset, split in two views, and an unused
    output is an input the kernel never writes: a layer's host time is what small batches pay (kernel_notes.md, "2026-12-02: host time per
    layer"). Traced (torch.compile): every tensor a kernel may write is a standalone allocation of its own,
    and no tensor is passed twice. Inductor clones, reinplaces and re-lays out the buffers a user Triton
    kernel mutates, and views of one base or a tensor in two arguments are where that has gone wrong
    (pytorch#132196, #184050, #198031): the compiled path's gradients differed from eager on CUDA
    (experiments/bench/README.md, "Eighth session")."""
    B, Hkv, L, d = k.shape
    f32 = {"device": q.device, "dtype": torch.float32}
    if apart:
        dk_extra, dv_extra = torch.zeros(B, Hkv, L, d, **f32), torch.zeros(B, Hkv, L, d, **f32)
        dk_dil, dv_dil = (torch.empty(nd, B, Hkv, L, d, device=q.device, dtype=k.dtype) for _ in range(2))
    else:
        dk_extra, dv_extra = torch.zeros(2, B, Hkv, L, d, **f32).unbind(0)
        dk_dil, dv_dil = torch.empty(2, nd, B, Hkv, L, d, device=q.device, dtype=k.dtype).unbind(0)
    dsum = None  # eager with selection: dsk and dsv stacked (the traced path stacks them after the kernels)
    if selecting and apart:
        dsk, dsv = (torch.zeros(B, Hkv, nsum, sk.shape[-1], **f32) for _ in range(2))
    elif selecting:
        dsum = torch.zeros(2, B, Hkv, nsum, sk.shape[-1], **f32)
        dsk, dsv = dsum.unbind(0)
    else:  # never written without selection
        dsk, dsv = (torch.zeros(1, 1, 1, 1, **f32) for _ in range(2)) if apart else (dk_extra, dv_extra)
    unused = (lambda t: torch.zeros(1, **f32)) if apart else (lambda t: t)
    dbias = torch.zeros(B, Hkv, **f32) if biased else unused(sbias)
    dtbias = torch.zeros(B, Hkv, **f32) if token_biased else unused(tbias)
    return dk_extra, dv_extra, dk_dil, dv_dil, dsk, dsv, dsum, dbias, dtbias
