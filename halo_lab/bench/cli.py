"""``python -m halo_lab.bench`` (``make bench``, ``halo-bench``): the Hydra app on ``conf/bench.yaml``. ``run``
checks the HALO backends against the reference, runs the configured parts, prints the table and writes
``results.json`` and ``bench.png`` to the run directory."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from halo_lab.bench.attention import bench_attention, check_backends
from halo_lab.bench.decode_speed import bench_decode
from halo_lab.bench.plots import plot
from halo_lab.bench.reference import bench_reference
from halo_lab.bench.tables import add_ratios, format_table
from halo_lab.bench.timing import DTYPES, device_name
from halo_lab.bench.train_step import bench_train


def run(cfg: dict, out_dir: Path) -> dict:
    """Run the benchmark described by a plain dict (the Hydra config) and write its outputs."""
    mode = cfg["mode"]
    if mode == "auto":
        mode = "gpu" if torch.cuda.is_available() else "cpu"
    device = torch.device("cuda" if mode == "gpu" else "cpu")
    spec = cfg[mode]
    dtype = DTYPES[cfg["dtype"]] if mode == "gpu" else torch.float32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    parts = list(cfg["parts"])
    result: dict[str, Any] = {
        "device": device_name(device),
        "mode": mode,
        "dtype": str(dtype),
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
        "rows": [],
    }
    print(f"halo_lab bench on {result['device']} ({mode} mode, {dtype})", flush=True)
    if cfg.get("check", True):
        result["check"] = check_backends(device, dtype if device.type == "cuda" else torch.float32)
        worst = max(result["check"].values())
        print(f"correctness vs reference: worst relative error {worst:.2e}", flush=True)
        if worst > (2e-2 if device.type == "cuda" else 1e-4):
            raise RuntimeError(f"HALO backend disagrees with the reference: {result['check']}")
    warmup, repeats = cfg["warmup"], cfg["repeats"]
    if "attention" in parts:
        result["rows"] += bench_attention(spec["attention"], device, dtype, warmup, repeats)
    if "train" in parts:
        result["rows"] += bench_train(spec["train"], device, dtype, warmup, repeats)
    if "reference" in parts:
        result["rows"] += bench_reference(spec["reference"], device, dtype, warmup, repeats)
    if "decode" in parts:
        result["rows"] += bench_decode(
            spec["decode"], device, dtype if device.type == "cuda" else torch.float32
        )
    add_ratios(result["rows"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(result, indent=2))
    plot(result["rows"], out_dir / "bench.png", f"halo_lab bench: {result['device']}, {dtype}")
    print(format_table(result["rows"]))
    print(f"\nresults: {out_dir / 'results.json'}\nplot:    {out_dir / 'bench.png'}")
    return result


def main() -> None:
    import hydra
    from omegaconf import OmegaConf

    def _main(cfg) -> None:
        from hydra.core.hydra_config import HydraConfig

        run(OmegaConf.to_container(cfg, resolve=True), Path(HydraConfig.get().runtime.output_dir))

    # Hydra names the job after the task function's module: `bench` (hydra.job.name, bench.log in the run
    # directory), as when the bench was the one module halo_lab/bench.py, not `cli`.
    _main.__module__ = "halo_lab.bench"
    hydra.main(
        version_base="1.3",
        config_path=str(Path(__file__).resolve().parents[2] / "conf"),
        config_name="bench",
    )(_main)()
