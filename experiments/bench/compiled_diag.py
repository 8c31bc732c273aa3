"""Where the Inductor-compiled attention differs from eager on CUDA (issue 29; README, "Eighth session").

python experiments/bench/compiled_diag.py OUT [CASE ...]   (CUDA only; cases of tests/test_triton_op.py,
default plain-gqa2 and selection-bf16)

For each case and each Inductor setting below, torch.compile(fullgraph=True) of the attention against
eager at two training steps: the relative error of the output and of each gradient (q, k, v, then the
pooling's u and the biases where the case has them), one JSON row each, in ``OUT/compiled_diag.json``.
The settings separate the suspects: the default; ``comprehensive_padding`` off (Inductor pads the strides
of buffers it lays out, where the kernels take strides traced as numbers); the FX graph and AOTAutograd
caches off. Inductor's output code of the default setting goes to ``OUT/output_code_<case>.py`` to compare
with the eager launches, buffer by buffer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from halo_lab.model import attention as attn  # noqa: E402
from tests.test_triton_op import inputs, rel, run  # noqa: E402

SETTINGS = {
    "default": {},
    "no_padding": {"comprehensive_padding": False},
    "no_caches": {"fx_graph_cache": False, "autotune_local_cache": False},
}


def fn(q, k, v, config, layer, step, pool, bias, token_bias):
    return attn.halo_attention(q, k, v, config, layer, step, "triton", None, pool, bias, token_bias) * 2.0


def errors(name: str, options: dict) -> list[dict]:
    torch._dynamo.reset()
    c, ins, u, biases = inputs(name)
    compiled = torch.compile(fn, fullgraph=True, backend="inductor", options=options)
    rows = []
    for step in (5, 6):
        torch.manual_seed(step)
        out, grads, g = run(compiled, c, ins, u, biases, step)
        e_out, e_grads, _ = run(fn, c, ins, u, biases, step, grad=g)
        rows.append(
            {"step": step, "out": rel(out, e_out), "grads": [rel(a, b) for a, b in zip(grads, e_grads)]}
        )
    return rows


def output_code(name: str, path: Path) -> None:
    """The compiled module's source (Inductor's wrapper with every kernel launch and buffer)."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    c, ins, u, biases = inputs(name)
    compiled = torch.compile(fn, fullgraph=True, backend="inductor")

    def both():
        out, grads, _ = run(compiled, c, ins, u, biases, 5)
        return out

    _, codes = run_and_get_code(both)
    path.write_text("\n\n# ----------------------------------------------------------------\n\n".join(codes))


def main(out: str, names: list[str]) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("compiled_diag: needs CUDA (Inductor's Triton kernels)")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    for name in names or ["plain-gqa2", "selection-bf16"]:
        for setting, options in SETTINGS.items():
            try:
                rows = errors(name, options)
            except Exception as e:  # noqa: BLE001 - a setting that fails is a result too
                rows = [{"error": f"{type(e).__name__}: {str(e)[:300]}"}]
            for r in rows:
                result["rows"].append({"case": name, "setting": setting, **r})
                print(name, setting, r, flush=True)
        try:
            output_code(name, out_dir / f"output_code_{name}.py")
        except Exception as e:  # noqa: BLE001
            print(f"{name}: no output code ({type(e).__name__}: {e})", flush=True)
    (out_dir / "compiled_diag.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
