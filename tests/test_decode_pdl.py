"""Programmatic dependent launch of the decode kernels (halo_lab/kernels/pdl.py).

The safety rule, read off the sm_90 PTX without a GPU: with PDL a kernel may run beside the kernels
before it, so it must neither store nor load what they write before its grid-dependency wait (atomics
count as stores). The GEMV, the fused q/k/v, the attention + o-projection and the split-K FFN load only
their weights (which no kernel writes) before it; the attention loads nothing. Without PDL the same
kernels carry no grid-dependency instruction. On a CUDA card, the greedy tokens of the PDL step equal the
uncached forward's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from halo_lab.kernels import pdl  # noqa: E402


@pytest.fixture(scope="module")
def ptx_lines() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(Path(__file__).parents[1])}
    script = Path(__file__).with_name("pdl_ptx.py")
    run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "kernel",
    [
        "gemv",
        "gemv_acc",
        "decode_qkv",
        "decode_qkv_ffn",
        "decode_qkv_ffn_split",
        "decode_attention",
        "decode_attn_o",
        "decode_ffn",
        "decode_attn_o_split",
        "decode_ffn_split",
    ],  # fmt: skip
)
def test_no_kernel_touches_an_earlier_kernels_output_before_its_wait(ptx_lines, kernel):
    built = ptx_lines[kernel]["pdl"]
    assert len(built["wait"]) == 1 and built["launch"], built
    wait = built["wait"][0]
    assert all(line > wait for line in built["store"]), (kernel, built)
    early = [line for line in built["load"] if line < wait]
    if kernel == "decode_attention":
        assert not early  # the slots and the cache: an earlier kernel wrote them
    else:  # the weight tiles' loads (gemv's ONE_CHUNK: a [BLOCK_N, CHUNK] tile), the row's after the wait
        assert early and len(early) < len(built["load"])
    plain = ptx_lines[kernel]["plain"]
    assert not plain["wait"] and not plain["launch"] and len(plain["load"]) == len(built["load"])


def test_pdl_is_off_where_the_device_cannot_take_it():
    """Never on the CPU (the interpreter has no grid dependency control); the launches' options follow
    ``pdl.enabled`` and return to what they were."""
    assert not pdl.supported("cpu")
    assert pdl.launch_options() == {"PDL": False}
    with pdl.enabled():
        assert pdl.launch_options() == {"PDL": True, "launch_pdl": True}
        with pdl.enabled(False):
            assert pdl.launch_options() == {"PDL": False}
        assert pdl.ENABLED
    assert not pdl.ENABLED


def test_a_decoder_asking_for_pdl_runs_without_it_on_the_cpu(monkeypatch):
    from halo_lab.generation import Decoder
    from tests.test_decode_fused import _interpreted_or_cuda, fused_tokens, model_for

    _interpreted_or_cuda()
    if torch.cuda.is_available():
        pytest.skip("the CPU's fallback")
    monkeypatch.setattr(Decoder, "pdl", True)
    model = model_for("halo")
    prompt = torch.randint(0, 64, (1, 6))
    out, dec = fused_tokens(model, prompt, 4)
    assert not dec.pdl_on and "pdl" not in dec.path
    ref = model.generate(prompt, max_new_tokens=4, temperature=0, use_cache=False)
    assert torch.equal(out, ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="PDL launches need a CUDA card (sm_90+)")
@pytest.mark.parametrize("arch,attn_o", [("halo", False), ("dense", False), ("halo", True)])
def test_pdl_decode_equals_uncached_forward_cuda(arch, attn_o, monkeypatch):
    """The compiled + CUDA-graph step with PDL gives the uncached forward's greedy tokens (HALO-S also with
    its attention + o-projection in one launch, ``Decoder.fused_attn_o``)."""
    from halo_lab.generation import Decoder
    from tests.test_decode_fused import fused_tokens, model_for

    if not pdl.supported("cuda"):
        pytest.skip("this card or Triton has no programmatic dependent launch")
    monkeypatch.setattr(Decoder, "pdl", True)
    monkeypatch.setattr(Decoder, "fused_attn_o", attn_o)
    model = model_for(arch).to("cuda")
    prompt = torch.randint(0, 64, (1, 11), device="cuda")
    ref = model.generate(prompt, max_new_tokens=25, temperature=0, use_cache=False)
    out, dec = fused_tokens(model, prompt, 25)
    assert (
        dec.pdl_on and "pdl" in dec.path and "cuda_graph" in dec.path and (dec.attn_o is not None) == attn_o
    )
    assert torch.equal(out, ref)
