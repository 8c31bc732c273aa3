"""Shared test setup: no network logging, no writes into the repository."""

from __future__ import annotations

import os

import pytest

# W&B never talks to the network in tests (WANDB_MODE=disabled); subprocesses inherit it.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    """Runs write their outputs and data caches under a temporary root, never the repository."""
    root = tmp_path_factory.mktemp("halo_root")
    monkeypatch.setenv("HALO_LAB_ROOT", str(root))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(root))
    yield
