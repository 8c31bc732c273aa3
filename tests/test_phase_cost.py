"""experiments/bench/phase_cost.py (issue 30's per-phase probe): it names the step's phases in
decode_step.py's order and times every prefix; on the CPU it runs under Triton's interpreter at a tiny
shape (a check that it runs, not a measurement)."""

from __future__ import annotations

import json
import os
import runpy
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
pc = runpy.run_path(str(ROOT / "experiments" / "bench" / "phase_cost.py"))
TINY = {"C": 32, "L": 2, "heads": 4, "kv_heads": 2, "d": 8, "F": 48, "V": 40}


def test_phase_names_follow_the_kernels_numbering():
    from halo_lab.kernels import decode_step as ks

    assert pc["phase_names"](2, False) == ["A.0", "BC.0", "DE.0", "A.1", "BC.1", "DE.1", "head"]
    assert pc["phase_names"](1, True) == ["A.0", "A2.0", "BC.0", "DE.0", "head"]
    assert len(pc["phase_names"](8, False)) == ks.PHASES * 8 + 1 == 25


@pytest.mark.parametrize("dense", [False, True])
def test_every_prefix_is_timed_and_written(tmp_path, dense):
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or Triton's interpreter")
    argv = [str(tmp_path), "--context", "16", "--keys", "6", "--repeats", "1", "--shape", json.dumps(TINY)]
    options = ["--dense"] if dense else ["--cold", "--programs", "3"]
    options += ["--warps", "4"]
    assert pc["main"](argv + options) == 0
    result = json.loads((tmp_path / "phase_cost.json").read_text())
    names = [r["phase"] for r in result["phases"]]
    assert names == pc["phase_names"](2, dense)
    assert result["cold"] == (not dense)
    assert (result["programs"], result["warps"]) == (1 if dense else 3, 4)
    assert all(r["prefix_us"] > 0 for r in result["phases"])
    assert set(result["mean_cost_us"]) == (
        {"A", "A2", "BC", "DE", "head"} if dense else {"A", "BC", "DE", "head"}
    )


def test_the_whole_step_alone_with_l2_marks(tmp_path):
    """``--whole`` times one prefix, the whole step (named as its last phase, no per-kind means);
    ``--keep-l2`` reaches the kernel and the JSON."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or Triton's interpreter")
    argv = [str(tmp_path), "--context", "16", "--keys", "6", "--repeats", "1", "--shape", json.dumps(TINY)]
    assert pc["main"](argv + ["--whole", "--keep-l2", "1"]) == 0
    result = json.loads((tmp_path / "phase_cost.json").read_text())
    assert [r["phase"] for r in result["phases"]] == ["head"] and result["mean_cost_us"] == {}
    assert (result["keep_l2"], result["whole"]) == (1, True) and result["phases"][0]["prefix_us"] > 0


def test_keys_past_the_context_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="--keys 20 must be"):
        pc["main"]([str(tmp_path), "--context", "16", "--keys", "20"])
