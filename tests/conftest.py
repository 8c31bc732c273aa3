"""Shared test setup: no network logging, no writes into the repository."""

from __future__ import annotations

import os
import random

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's CPU interpreter (read when the kernels are defined, so set
# before anything imports halo_lab.kernels); on a GPU machine they run compiled.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# W&B never talks to the network in tests (WANDB_MODE=disabled); subprocesses inherit it.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _seeded():
    """Each test starts from the same random state, whatever ran before it in its process (the files are
    spread over processes by `make test`, so the order differs from run to run)."""
    # not 0: tests draw their inputs from generators seeded 0, 1, ...; the same stream again would repeat them
    random.seed(20261206)
    torch.manual_seed(20261206)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    """Runs write their outputs and data caches under a temporary root, never the repository."""
    root = tmp_path_factory.mktemp("halo_root")
    monkeypatch.setenv("HALO_LAB_ROOT", str(root))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(root))
    yield
