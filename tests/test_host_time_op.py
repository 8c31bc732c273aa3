"""experiments/bench/host_time_op.py: its stub silences every kernel launcher of the fused attention, so
that what it times is host work, not kernels running in the interpreter."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

pytest.importorskip("triton")

from halo_lab.kernels.halo_attention import interface  # noqa: E402
from halo_lab.kernels.launch import Launcher  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _launchers() -> list[str]:
    """Every Launcher that interface.py holds, by attribute or in a dict."""
    found = []
    for name, value in vars(interface).items():
        if isinstance(value, Launcher):
            found.append(name)
        elif isinstance(value, dict):
            found += [f"{name}[{k}]" for k, v in value.items() if isinstance(v, Launcher)]
    return found


def test_the_stub_leaves_no_launcher_and_restores_them_all():
    before = _launchers()
    assert len(before) >= 5  # fwd, dq, dkv, the chosen keys' and the summaries' passes
    script = runpy.run_path(str(ROOT / "experiments" / "bench" / "host_time_op.py"))
    with script["stubbed_launches"]():
        assert _launchers() == []
    assert _launchers() == before
