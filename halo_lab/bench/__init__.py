"""Speed and memory benchmark: HALO-S backends against dense attention, measured in the same process.

``python -m halo_lab.bench`` (or ``make bench``) sweeps sequence length x {dense, HALO backends} at three
levels: the attention layer alone (forward + backward), a whole training step, and cached decoding. It
checks the HALO backends against the reference first, prints a table and writes ``results.json`` and
``bench.png`` to its run directory under ``outputs/bench/``. Without a GPU it runs a quick CPU mode.
``python -m halo_lab.bench.decode`` is the decode benchmark on its own, without Hydra.

One module per part:

- ``timing``: dtypes, device name, ``time_ms``, ``peak_memory_mb``, ``step_functions``
- ``attention``: the attention layer alone (``bench_attention``) and ``check_backends``
- ``train_step``: the whole training step (``bench_train``), ``benchmark_speed``, ``estimate_flops``
- ``reference``: both packages at the reference's published configs (``bench_reference``)
- ``decode_speed``: cached decoding (``bench_decode``), ``benchmark_generation``, ``kernels_per_step``
- ``tables``, ``plots``: ratios to dense, the printed tables, ``bench.png``
- ``cli``: ``run`` (one config dict -> outputs) and the Hydra ``main`` (``__main__``, ``halo-bench``)
- ``decode``: the decode CLI (presets, the decode == forward check, ``run_decode``, its own ``main``)
"""

from __future__ import annotations

from halo_lab.bench.attention import bench_attention, check_backends
from halo_lab.bench.cli import main, run
from halo_lab.bench.decode_speed import DECODE_VARIANTS, bench_decode, benchmark_generation, kernels_per_step
from halo_lab.bench.plots import plot
from halo_lab.bench.reference import REFERENCE_ROUNDS, bench_reference
from halo_lab.bench.tables import add_ratios, format_decode_table, format_table
from halo_lab.bench.timing import DTYPES, device_name, peak_memory_mb, step_functions, time_ms
from halo_lab.bench.train_step import bench_train, benchmark_speed, estimate_flops

__all__ = [
    "DECODE_VARIANTS",
    "DTYPES",
    "REFERENCE_ROUNDS",
    "add_ratios",
    "bench_attention",
    "bench_decode",
    "bench_reference",
    "bench_train",
    "benchmark_generation",
    "benchmark_speed",
    "check_backends",
    "device_name",
    "estimate_flops",
    "format_decode_table",
    "format_table",
    "kernels_per_step",
    "main",
    "peak_memory_mb",
    "plot",
    "run",
    "step_functions",
    "time_ms",
]
