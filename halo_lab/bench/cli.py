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
from halo_lab.bench.timing import DTYPES, device_name, partial_writer
from halo_lab.bench.train_step import bench_train

PARTS = ("attention", "train", "reference", "decode")


def check_options(cfg: dict) -> str:
    """The mode to run (cpu or gpu) after checking the options a user sets; ConfigError names a bad one."""
    from halo_lab.runner.config import ConfigError

    mode = cfg.get("mode")
    if mode not in ("auto", "cpu", "gpu"):
        raise ConfigError(f"mode={mode}: must be auto, cpu or gpu")
    if mode == "auto":
        mode = "gpu" if torch.cuda.is_available() else "cpu"
    if mode == "gpu" and not torch.cuda.is_available():
        raise ConfigError("mode=gpu: CUDA is not available on this machine (mode=cpu or mode=auto runs here)")
    if cfg.get("dtype") not in DTYPES:
        raise ConfigError(f"dtype={cfg.get('dtype')}: must be one of {', '.join(DTYPES)}")
    parts = cfg.get("parts")
    if isinstance(parts, str):
        parts = [parts]
    unknown = [p for p in parts or [] if p not in PARTS] if isinstance(parts, list) else [parts]
    if unknown or not parts:
        shown = f"[{','.join(map(str, parts))}]" if isinstance(parts, list) else parts
        raise ConfigError(f"parts={shown}: a list of {', '.join(PARTS)}, e.g. parts=[attention,decode]")
    cfg["parts"] = parts
    for key, least in (("warmup", 0), ("repeats", 1)):
        value = cfg.get(key)
        if type(value) is not int or value < least:
            raise ConfigError(f"{key}={value!r}: must be an integer >= {least}")
    if not isinstance(cfg.get(mode), dict):
        raise ConfigError(f"{mode}: the {mode} mode's settings are missing from the config")
    return mode


def run(cfg: dict, out_dir: Path) -> dict:
    """Run the benchmark described by a plain dict (the Hydra config) and write its outputs."""
    mode = check_options(cfg)
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
    out_dir.mkdir(parents=True, exist_ok=True)
    save_partial = partial_writer(out_dir, result)

    if "attention" in parts:
        result["rows"] += bench_attention(spec["attention"], device, dtype, warmup, repeats, save_partial)
    if "train" in parts:
        result["rows"] += bench_train(spec["train"], device, dtype, warmup, repeats, save_partial)
    if "reference" in parts:
        result["rows"] += bench_reference(spec["reference"], device, dtype, warmup, repeats, save_partial)
    if "decode" in parts:
        result["rows"] += bench_decode(
            spec["decode"], device, dtype if device.type == "cuda" else torch.float32, on_row=save_partial
        )
    add_ratios(result["rows"])
    (out_dir / "results.json").write_text(json.dumps(result, indent=2))
    plot(result["rows"], out_dir / "bench.png", f"halo_lab bench: {result['device']}, {dtype}")
    print(format_table(result["rows"]))
    print(f"\nresults: {out_dir / 'results.json'}\nplot:    {out_dir / 'bench.png'}")
    return result


def main() -> None:
    """``python -m halo_lab.bench`` / ``halo-bench``: the Hydra app on conf/bench.yaml alone (its ``--help``
    lists no training groups); a bad option is one line ``halo_lab.bench: error: ...``, exit status 2."""
    from halo_lab.runner.config import ConfigError
    from halo_lab.runner.tool_app import run_hydra_tool

    def _main(cfg) -> None:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf

        try:
            run(OmegaConf.to_container(cfg, resolve=True), Path(HydraConfig.get().runtime.output_dir))
        except ConfigError as exc:
            print(f"halo_lab.bench: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    # The job's name (bench.log in the run directory) is conf/bench.yaml's hydra.job.name: `bench`, as when
    # the bench was the one module halo_lab/bench.py, not `cli`.
    run_hydra_tool("halo_lab.bench", _main, "bench")
