"""The decode benchmark on its own, without Hydra: ``python -m halo_lab.bench.decode [--preset gpu|quick]``.

The ``gpu`` preset is issue 13's grid on the ~31M medium model: batch 1 at 1K / 32K / 128K context,
batch 8 and 64 at 4K / 32K; dense, HALO-S with the full cache and HALO-S with the ring cache, all through
the same compiled + CUDA-graph decode step. The prefill (time to first token) is timed at batch 1 and
32K; elsewhere a synthetic random cache stands in for the prompt (decode speed does not depend on it).
``--check`` first asserts that the step (compiled on CUDA) gives the uncached forward's greedy tokens (at
batch 2: add ``--gemv`` to check the GEMV step, and with it the fused q/k/v kernel, which batch 1 takes by
default) and that the Triton decode kernels match their references. ``--no-fused-qkv``: the GEMV step's
q/k/v GEMV, then RoPE and the cache write (the step before ``halo_lab.kernels.decode_qkv``);
``--no-fused-attn-o``: the attention, then the o-projection GEMV (before ``decode_attn_o``): A/B timing.
Writes ``results.json`` (``results.partial.json`` as rows come) and ``bench.png`` to ``--out`` (default
``outputs/bench/decode-<time>``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from halo_lab.bench.decode_speed import DECODE_VARIANTS, bench_decode
from halo_lab.bench.plots import plot
from halo_lab.bench.tables import add_ratios, format_decode_table, format_table
from halo_lab.bench.timing import DTYPES, device_name, partial_writer

MEDIUM = {
    "vocab_size": 256,
    "hidden_size": 512,
    "num_layers": 8,
    "num_heads": 8,
    "num_kv_heads": 2,
    "dropout": 0.0,
}
TINY = {
    "vocab_size": 64,
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "dropout": 0.0,
}

PRESETS: dict[str, dict[str, Any]] = {
    "gpu": {
        "model": MEDIUM,
        "new_tokens": 256,
        "repeats": 3,
        "variants": ["dense", "halo", "halo_ring", "halo_select"],
        "runs": [
            {"batch": 1, "contexts": [1024, 32768, 131072]},
            {"batch": 8, "contexts": [4096, 32768]},
            {"batch": 64, "contexts": [4096, 32768]},
        ],
        "prefill_contexts": {1: [32768]},
    },
    "quick": {
        "model": TINY,
        "new_tokens": 8,
        "repeats": 1,
        "variants": ["dense", "halo", "halo_ring", "halo_select"],
        "runs": [{"batch": 1, "contexts": [256, 1024]}, {"batch": 4, "contexts": [256]}],
        "prefill_contexts": {1: [256]},
    },
}

CHECK_CONFIG = dict(
    vocab_size=64,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    local_window=8,
    dilated_offsets=[1, 2, 4],  # distances 8, 16, 32
    num_random=2,
    graph_block_size=16,
    dropout=0.0,
    max_seq_len=256,
)


@torch.inference_mode()
def check_decode_matches_forward(
    device: str | torch.device = "cpu",
    compile: bool | None = None,
    prompt_len: int = 11,
    new_tokens: int = 90,
    batch: int = 2,
    dtype: torch.dtype = torch.float32,
    gemv: bool | None = None,
) -> dict[str, str]:
    """Greedy tokens of the cached decode step (compiled where ``compile``) == the uncached forward's, for
    dense, HALO-S and HALO-S with the ring cache, at lengths that cross the window and the dilated
    distances (8, 16, 32); ``gemv``: through the fused-GEMV step. Returns {variant: decode path}; raises
    AssertionError on a mismatch."""
    from halo_lab.config import HaloConfig
    from halo_lab.model import build_model

    device = torch.device(device)
    paths = {}
    for variant, (arch, cache, fields) in DECODE_VARIANTS.items():
        torch.manual_seed(0)
        model = build_model(HaloConfig(**{**CHECK_CONFIG, **fields}), arch).to(device, dtype).eval()
        for layer in getattr(model, "layers", []):  # a learned pooling that is not the plain mean
            if getattr(layer.attn, "select_pool", None) is not None:
                torch.nn.init.normal_(layer.attn.select_pool)
        prompt = torch.randint(0, 64, (batch, prompt_len), device=device)
        ref = model.generate(prompt, max_new_tokens=new_tokens, temperature=0, use_cache=False)
        from halo_lab.generation import Decoder

        dec = Decoder(model, batch, prompt_len, new_tokens, cache=cache, compile=compile, gemv=gemv)
        out = torch.cat([prompt, dec.generate(prompt)], dim=1)
        if not torch.equal(out, ref):
            bad = (out != ref).nonzero()[0].tolist()
            raise AssertionError(f"{variant} ({dec.path}): cached tokens differ from the forward's at {bad}")
        paths[variant] = dec.path
    return paths


def check_kernel(device, dtype=torch.bfloat16) -> float:
    """Max error of the Triton decode kernel against the gather reference at the medium model's shapes."""
    from halo_lab.kernels import decode as kd

    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(4, 8, 1, 64, device=device, dtype=dtype, generator=g)
    k = torch.randn(4, 2, 5000, 64, device=device, dtype=dtype, generator=g)
    v = torch.randn(4, 2, 5000, 64, device=device, dtype=dtype, generator=g)
    slots = torch.randint(0, 5000, (72,), device=device, generator=g)
    slots[::7] = -1
    ref = kd.reference_decode_attention(q, k, v, slots).float()
    err = (kd.halo_decode_attention(q, k, v, slots).float() - ref).abs().max().item()
    if err > 2e-2:
        raise AssertionError(f"Triton decode kernel: max error {err:.3g} against the gather reference")
    return err


def check_qkv_kernel(device, dtype=torch.bfloat16) -> float:
    """Max error of the fused q/k/v + RoPE + cache-write kernel (q and the written cache slot) against its
    torch reference at the medium model's shapes (hidden 512, 8/2 heads of 64), position 4000."""
    from halo_lab.kernels import decode_qkv as kq

    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(1, 512, device=device, dtype=dtype, generator=g)
    w = (torch.randn(768, 512, device=device, generator=g) / 512**0.5).to(dtype)
    nw = (1 + 0.1 * torch.randn(512, device=device, generator=g)).to(dtype)
    cos, sin = (torch.randn(5000, 64, device=device, generator=g).to(dtype) for _ in range(2))
    pos = torch.tensor([4000], device=device)
    caches = [torch.zeros(1, 2, 5000, 64, device=device, dtype=dtype) for _ in range(4)]
    kw = {"num_heads": 8, "norm": "rmsnorm", "norm_weight": nw}
    q = kq.decode_qkv(x, w, cos, sin, pos, caches[0], caches[1], **kw).float()
    ref = kq.reference_decode_qkv(x, w, cos, sin, pos, caches[2], caches[3], **kw).float()
    err = max(
        (a.float() - b.float()).abs().max().item() for a, b in zip([q, *caches[:2]], [ref, *caches[2:]])
    )
    if err > 5e-2 * ref.abs().max().item():
        raise AssertionError(f"fused q/k/v kernel: max error {err:.3g} against its torch reference")
    return err


def check_attn_o_kernel(device, dtype=torch.bfloat16) -> float:
    """Max error of the fused attention + o-projection kernel against its torch reference at the medium
    model's shapes (8/2 heads of 64, hidden 512, 72 keys in a 5000-slot cache)."""
    from halo_lab.kernels import decode_attn_o as ka

    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, 8, 1, 64, device=device, dtype=dtype, generator=g)
    k, v = (torch.randn(1, 2, 5000, 64, device=device, dtype=dtype, generator=g) for _ in range(2))
    w = (torch.randn(512, 512, device=device, generator=g) / 512**0.5).to(dtype)
    res = torch.randn(1, 512, device=device, dtype=dtype, generator=g)
    slots = torch.randint(0, 5000, (72,), device=device, generator=g)
    slots[::7] = -1
    ref = ka.reference_decode_attn_o(q, k, v, slots, w, res).float()
    err = (ka.decode_attn_o(q, k, v, slots, w, res).float() - ref).abs().max().item()
    if err > 5e-2 * ref.abs().max().item():
        raise AssertionError(
            f"fused attention + o-projection kernel: max error {err:.3g} against its reference"
        )
    return err


def spec_for(preset: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = json.loads(json.dumps(PRESETS[preset]))
    if args.variants:
        spec["variants"] = args.variants
    if args.new_tokens:
        spec["new_tokens"] = args.new_tokens
    spec["compile"] = False if args.no_compile else None
    spec["cuda_graph"] = not args.no_cuda_graph
    spec["triton_gemv"] = args.gemv  # None: Decoder's default (on CUDA)
    spec["fused_qkv"] = args.fused_qkv  # None: Decoder's default (with the GEMV)
    spec["fused_attn_o"] = args.fused_attn_o  # None: Decoder's default (with the fused q/k/v)
    spec["fused_ffn"] = args.fused_ffn  # None: Decoder's default (with the fused q/k/v)
    spec["split_attn_o"] = args.split_attn_o  # None: Decoder's default (with the split-K FFN)
    if args.steps:
        spec["steps"] = args.steps
    if args.batches:
        runs = [r for r in spec["runs"] if int(r["batch"]) in args.batches]
        if not runs:
            have = sorted({int(r["batch"]) for r in spec["runs"]})
            raise SystemExit(f"--batches {args.batches}: preset {preset!r} has batches {have}")
        spec["runs"] = runs
    return spec


def run_decode(spec: dict[str, Any], device: torch.device, dtype: torch.dtype, on_row=None) -> list[dict]:
    """bench_decode once per run entry (each with its own timed-prefill contexts)."""
    rows = []
    prefill = {int(k): v for k, v in spec.get("prefill_contexts", {}).items()}
    for run_spec in spec["runs"]:
        one = {**spec, "runs": [run_spec], "prefill_contexts": prefill.get(int(run_spec["batch"]), [])}
        rows += bench_decode(one, device, dtype, on_row=on_row)
    add_ratios(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m halo_lab.bench.decode", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="default: gpu on CUDA, else quick")
    parser.add_argument("--out", type=Path, help="output directory")
    parser.add_argument("--variants", nargs="+", choices=sorted(DECODE_VARIANTS))
    parser.add_argument("--new-tokens", type=int)
    parser.add_argument("--batches", type=int, nargs="+", help="only the preset's runs at these batch sizes")
    parser.add_argument(
        "--steps",
        nargs="+",
        choices=["default", "persistent"],
        help="decode steps to time, each with its own rows (persistent: <variant>_persistent; default: default)",
    )
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help="CUDA dtype")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-cuda-graph", action="store_true")
    parser.add_argument("--check", action="store_true", help="check decode == forward first")
    parser.add_argument(
        "--gemv",
        action=argparse.BooleanOptionalAction,
        help="projections through the fused Triton GEMV or cuBLAS (default: Decoder's, the GEMV on CUDA)",
    )
    parser.add_argument(
        "--fused-qkv",
        action=argparse.BooleanOptionalAction,
        help="with the GEMV, each layer's q/k/v projection, RoPE and cache write in one kernel or the GEMV "
        "then RoPE and the cache write (default: Decoder.fused_qkv, one kernel)",
    )
    parser.add_argument(
        "--fused-attn-o",
        action=argparse.BooleanOptionalAction,
        help="with the fused q/k/v, HALO-S's attention and o-projection in one kernel or two (default: "
        "Decoder.fused_attn_o, two)",
    )
    parser.add_argument(
        "--fused-ffn",
        action=argparse.BooleanOptionalAction,
        help="with the fused q/k/v, each layer's SwiGLU FFN in one split-K kernel or the up and down GEMVs "
        "(default: Decoder.fused_ffn, the one split-K kernel)",
    )
    parser.add_argument(
        "--split-attn-o",
        action=argparse.BooleanOptionalAction,
        help="with the split-K FFN, HALO-S's attention and o-projection in one kernel split over KV heads, "
        "its sums added by the FFN kernel (default: Decoder.split_attn_o, off)",
    )
    parser.add_argument(
        "--pdl",
        action=argparse.BooleanOptionalAction,
        help="with the GEMV, launch the step's kernels with programmatic dependent launch (default: "
        "Decoder.pdl, on where the card allows it)",
    )
    parser.add_argument(
        "--persistent",
        dest="persistent_step",
        action=argparse.BooleanOptionalAction,
        help="at batch 1 on HALO-S, the whole step in one persistent launch (default: Decoder.persistent_step, "
        "off)",
    )
    args = parser.parse_args(argv)
    from halo_lab.generation import Decoder

    for name in ("fused_qkv", "fused_attn_o", "fused_ffn", "split_attn_o", "pdl", "persistent_step"):
        if getattr(args, name) is not None:
            setattr(Decoder, name, getattr(args, name))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    preset = args.preset or ("gpu" if cuda else "quick")
    dtype = DTYPES[args.dtype] if cuda else torch.float32
    out = args.out or Path("outputs/bench") / time.strftime("decode-%Y-%m-%d_%H-%M-%S")
    result: dict[str, Any] = {
        "device": device_name(device),
        "preset": preset,
        "dtype": str(dtype),
        "torch": torch.__version__,
        "command": " ".join(
            ["python -m halo_lab.bench.decode", *(argv if argv is not None else sys.argv[1:])]
        ),
    }
    print(f"halo_lab decode bench on {result['device']} ({preset}, {dtype})", flush=True)
    if args.check:
        t0 = time.perf_counter()
        try:
            result["check"] = check_decode_matches_forward(
                device, compile=False if args.no_compile else None, gemv=args.gemv
            )
            if cuda:
                result["check"]["kernel_bf16_max_err"] = check_kernel(device)
                result["check"]["qkv_kernel_bf16_max_err"] = check_qkv_kernel(device)
                result["check"]["attn_o_kernel_bf16_max_err"] = check_attn_o_kernel(device)
        except Exception as e:  # noqa: BLE001 - recorded, and the exit status says so; the bench still runs
            result["check"] = {"error": f"{type(e).__name__}: {e}"}
        print(f"check: {result['check']} ({time.perf_counter() - t0:.0f}s)", flush=True)
    if cuda:  # after the check: its fp32 forward and decode step must not differ by TF32 rounding
        torch.backends.cuda.matmul.allow_tf32 = True
    spec = spec_for(preset, args)
    result["spec"] = spec
    out.mkdir(parents=True, exist_ok=True)
    save_partial = partial_writer(out, result)

    t0 = time.perf_counter()
    result["rows"] = run_decode(spec, device, dtype, on_row=save_partial)
    result["wall_s"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(result, indent=2))
    try:
        plot(result["rows"], out / "bench.png", f"halo_lab decode: {result['device']}, {dtype}")
    except ImportError as e:  # matplotlib is optional here
        print(f"no plot ({e})")
    print(format_table(result["rows"]))
    print(format_decode_table(result["rows"]))
    print(f"\nresults: {out / 'results.json'}\nplot:    {out / 'bench.png'}")
    return 1 if "error" in result.get("check", {}) else 0


if __name__ == "__main__":
    sys.exit(main())
