"""Shared test setup: no network logging, no writes into the repository."""

from __future__ import annotations

import dataclasses
import os
import random

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's CPU interpreter (read when the kernels are defined, so set
# before anything imports halo_lab.kernels); on a GPU machine they run compiled.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _interpret_without_overflow_checks() -> None:
    """The interpreter checks every int32 add and mul for overflow (an int64 copy of the operation and an
    assert): about a quarter of an interpreted kernel's time (27 against 37 s for the longest selection
    test), and at the tests' sizes (a few hundred positions) no offset comes near 2**31. `make test-full`
    keeps the checks (HALO_TEST_OVERFLOW_CHECKS=1)."""
    if os.environ.get("TRITON_INTERPRET") != "1" or os.environ.get("HALO_TEST_OVERFLOW_CHECKS") == "1":
        return
    try:
        from triton.runtime import interpreter
    except ImportError:  # no triton: the Triton tests skip themselves
        return
    builder = interpreter.interpreter_builder
    builder.options = dataclasses.replace(builder.options, sanitize_overflow=False)


_interpret_without_overflow_checks()

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
