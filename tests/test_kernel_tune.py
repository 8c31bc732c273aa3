"""experiments/bench/kernel_tune.py's arguments and its choice histogram (run on the CPU before a device
call spends time on them)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
kt = runpy.run_path(str(ROOT / "experiments" / "bench" / "kernel_tune.py"), run_name="kernel_tune")


def test_arguments_parse_lengths_and_the_histogram_and_refuse_unknown_variants():
    lengths, select, hist, names = kt["_arguments"](
        ["--select", "compiled", "--n=4096", "--hist", "--n=16384"]
    )
    assert (lengths, select, hist, names) == ([4096, 16384], True, True, ["compiled"])
    with pytest.raises(SystemExit, match="unknown variant"):
        kt["_arguments"](["--select", "no_such_variant"])


def test_the_choice_histogram_counts_every_choice_of_the_oracle():
    from halo_lab.bench.attention import SELECT, selection_parameters
    from halo_lab.config import HaloConfig
    from halo_lab.graph import selection

    cfg = HaloConfig().replace(**SELECT)
    glob = kt["choice_histogram"].__globals__
    glob["CONFIG"], glob["EXTRAS"] = cfg, selection_parameters(cfg, torch.device("cpu"))
    n, G = 1024, cfg.num_globals
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 8, n + G, 64), torch.randn(2, 2, n + G, 64), torch.randn(2, 2, n + G, 64)
    hist = kt["choice_histogram"](q, k, v)
    sel = selection.select(q[:, :, G:], k, v, cfg, torch.arange(n), pool=glob["EXTRAS"].get("pool"))
    for name, ids in (("groups", sel.groups), ("blocks", sel.blocks)):
        counts = torch.bincount(ids[ids >= 0])
        assert hist[name]["choices"] == int((ids >= 0).sum()) > 0
        assert hist[name]["max"] == int(counts.max()) and hist[name]["first8"] == counts[:8].tolist()
