"""Device profiles, resolution of conf/device, optimize_for_device and batch-size selection (CPU only)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn

from halo_lab import device as dv
from halo_lab.config import HaloConfig

CONF_DEVICE = Path(__file__).resolve().parents[1] / "conf" / "device"
ISSUE_PROFILES = {"cpu", "t4", "p100", "l4", "l40", "rtx_6000", "a100", "h100", "h200"}


@pytest.fixture
def no_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def keep_matmul_precision():
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


# ------------------------------------------------------------------------------------------ detection
@pytest.mark.parametrize(
    "name, key",
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H100 PCIe", "h100"),
        ("NVIDIA H100 NVL", "h100"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA H200 NVL", "h200"),
        ("Tesla T4", "t4"),
        ("NVIDIA A100-SXM4-40GB", "a100"),
        ("NVIDIA A100 80GB PCIe", "a100"),
        ("Tesla P100-PCIE-16GB", "p100"),
        ("NVIDIA L4", "l4"),
        ("NVIDIA L40", "l40"),
        ("NVIDIA L40S", "l40"),
        ("NVIDIA RTX 6000 Ada Generation", "rtx_6000"),
        ("cpu", "cpu"),
    ],
)
def test_profile_from_device_name(name, key):
    assert dv.detect_device_profile(name).name == key


def test_memory_from_name_scales_default_batch():
    a40 = dv.detect_device_profile("NVIDIA A100-SXM4-40GB")
    a80 = dv.detect_device_profile("NVIDIA A100-SXM4-80GB")
    assert (a40.memory_gb, a80.memory_gb) == (40, 80)
    assert a40.batch_size == dv.PROFILES["a100"].batch_size // 2
    assert a80.batch_size == dv.PROFILES["a100"].batch_size
    # injected memory wins over the name
    assert dv.detect_device_profile("NVIDIA H100 NVL", memory_gb=94.0).memory_gb == 94.0


@pytest.mark.parametrize(
    "name, cc, mem, precision, flash, compile_mode",
    [
        ("NVIDIA RTX A6000", (8, 6), 48, "bf16-mixed", True, "default"),  # not the Ada card
        ("NVIDIA A10G", (8, 6), 24, "bf16-mixed", True, "default"),
        ("NVIDIA GH200 480GB", (9, 0), 96, "bf16-mixed", True, "default"),  # not h200
        ("Quadro RTX 6000", (7, 5), 24, "16-mixed", False, "default"),  # Turing: no bf16
        ("Tesla V100-SXM2-16GB", (7, 0), 16, "16-mixed", False, "default"),
        ("NVIDIA GeForce GTX 1080", (6, 1), 8, "32-true", False, None),  # slow fp16, no Triton
    ],
)
def test_unknown_cards_fall_back_to_capability_rules(name, cc, mem, precision, flash, compile_mode):
    p = dv.detect_device_profile(name, capability=cc, memory_gb=mem)
    assert p.generic and p.name == f"cuda_sm{cc[0]}{cc[1]}"
    assert p.display_name == name and p.compute_capability == cc and p.memory_gb == mem
    assert (p.precision, p.flash_sdpa, p.compile) == (precision, flash, compile_mode)
    assert p.bf16 == p.tf32 == (cc >= (8, 0))
    assert p.mem_efficient_sdpa and p.batch_size >= 1


def test_unknown_name_without_capability_is_conservative():
    p = dv.detect_device_profile("Some Future Accelerator")
    assert p.precision == "32-true" and p.compile is None and not p.bf16 and not p.flash_sdpa


def test_known_name_with_contradicting_capability_trusts_the_hardware():
    p = dv.detect_device_profile("Tesla T4", capability=(8, 0))
    assert p.generic and p.bf16


def test_no_cuda_gives_cpu(no_accelerator):
    assert dv.get_optimal_device() == "cpu"
    p = dv.detect_device_profile()
    assert p.name == "cpu" and p.accelerator == "cpu" and p.memory_gb > 0


def test_default_detection_reads_torch_cuda(monkeypatch):
    props = SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0, total_memory=85 * 2**30)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda idx: props)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert dv.get_optimal_device() == "cuda"
    p = dv.detect_device_profile()
    assert p.name == "h100" and p.memory_gb == 85.0 and p.precision == "bf16-mixed"
    # asking for the CPU explicitly ignores the GPU
    assert dv.detect_device_profile(device="cpu").name == "cpu"


def test_detection_reads_this_ranks_gpu(monkeypatch):
    cards = [
        SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0, total_memory=80 * 2**30),
        SimpleNamespace(name="NVIDIA A100-SXM4-40GB", major=8, minor=0, total_memory=40 * 2**30),
    ]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda idx: cards[idx])
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert dv.detect_device_profile().name == "h100"
    assert dv.detect_device_profile(device="cuda:1").name == "a100"
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP rank launched before Lightning set its device
    assert dv.detect_device_profile(device="cuda").name == "a100"


def test_table_states_the_hardware_facts():
    t = dv.PROFILES
    assert ISSUE_PROFILES <= set(t)
    for key in ("t4", "p100"):
        assert not t[key].bf16 and not t[key].tf32 and not t[key].flash_sdpa
        assert t[key].precision == "16-mixed" and t[key].mem_efficient_sdpa
    assert t["p100"].compile is None  # Triton needs sm70+
    for key in ("l4", "l40", "rtx_6000", "a100", "h100", "h200"):
        p = t[key]
        assert p.bf16 and p.tf32 and p.flash_sdpa and p.precision == "bf16-mixed"
        assert p.matmul_precision == "high"
    assert t["h200"].memory_gb > t["h100"].memory_gb
    assert t["cpu"].precision == "32-true" and t["cpu"].compile is None


def test_gpu_profiles_compile_in_the_default_mode():
    # max-autotune spent minutes tuning matmuls before a medium model's first step on an H200: a default
    # must start at once. Autotuning stays one override away.
    for p in dv.PROFILES.values():
        assert p.compile in (None, "default"), p.name
    assert dv.profile_from_capability((9, 0), 141).compile == "default"
    tuned = dv.resolve_device_config({"name": "h200", "compile": "max-autotune-no-cudagraphs"})
    assert tuned["compile"] == "max-autotune-no-cudagraphs"


def test_table_follows_the_capability_rules():
    """The named entries agree with what their compute capability implies (no silent table typos)."""
    fields = ("precision", "bf16", "tf32", "matmul_precision", "flash_sdpa", "mem_efficient_sdpa")
    for p in dv.PROFILES.values():
        if p.accelerator != "gpu":
            continue
        derived = dv.profile_from_capability(p.compute_capability, p.memory_gb)
        for f in (*fields, "flex_attention", "compile"):
            assert getattr(p, f) == getattr(derived, f), (p.name, f)
        assert p.precision in dv.LIGHTNING_PRECISIONS and p.matmul_precision in dv.MATMUL_PRECISIONS
        assert p.compile is None or p.compile in dv.COMPILE_MODES


def test_device_info_is_json():
    info = dv.device_info()
    json.dumps(info)
    for key in ("name", "capability", "memory_gb", "torch", "cuda", "cpu_count", "device", "profile"):
        assert key in info
    assert info["torch"] == torch.__version__ and info["cpu_count"] >= 1


# ------------------------------------------------------------------------------------------ config
def _yaml(name: str) -> dict:
    """The ``device=NAME`` option as the runner registers it: the name, every override null."""
    return {"name": name, **dict.fromkeys(dv.OVERRIDABLE_KEYS)}


def test_device_options_come_from_the_table(tmp_path):
    from hydra.core.global_hydra import GlobalHydra

    from halo_lab.runner.config import compose_config, to_plain

    # One file (auto, the default, documenting the keys); every table row is an option without a copy.
    assert {p.stem for p in CONF_DEVICE.glob("*.yaml")} == {"auto"}
    auto = yaml.safe_load((CONF_DEVICE / "auto.yaml").read_text())
    assert auto == _yaml("auto")
    try:
        for name in sorted(dv.PROFILES):
            cfg = compose_config([f"device={name}"], tmp_path / name)
            assert to_plain(cfg.device) == _yaml(name)
            out = dv.resolve_device_config(to_plain(cfg.device))
            assert {k: out[k] for k in dv.PROFILES[name].to_dict()} == dv.PROFILES[name].to_dict()
        cfg = compose_config(["device=h100", "device.precision=32-true"], tmp_path / "o")
        assert dv.resolve_device_config(to_plain(cfg.device))["precision"] == "32-true"
    finally:
        GlobalHydra.instance().clear()


def test_runner_batch_size_precedence(tmp_path):
    """data.batch_size, else trainer.auto_batch_size (decided at setup), else the device profile's."""
    from hydra.core.global_hydra import GlobalHydra

    from halo_lab.runner.build import choose_batch_size
    from halo_lab.runner.config import compose_config

    dev = dv.resolve_device_config({"name": "cpu"})
    try:
        cfg = compose_config([], tmp_path)
        assert choose_batch_size(cfg, dev) == (dv.PROFILES["cpu"].batch_size, "device profile cpu")
        cfg = compose_config(["data.batch_size=5", "trainer.auto_batch_size=true"], tmp_path)
        assert choose_batch_size(cfg, dev) == (5, "data.batch_size")
        cfg = compose_config(["trainer.auto_batch_size=true"], tmp_path)
        assert choose_batch_size(cfg, dev) == (None, "auto")
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("name", sorted(ISSUE_PROFILES))
def test_resolve_fills_nulls_from_table(name):
    out = dv.resolve_device_config(_yaml(name))
    expected = dv.PROFILES[name].to_dict()
    assert {k: out[k] for k in expected} == expected
    assert out["requested"] == name and out["overrides"] == []
    json.dumps(out)


def test_resolve_keeps_user_overrides():
    cfg = _yaml("h100") | {"precision": "32", "compile": False, "batch_size": 7, "flash_sdpa": "false"}
    out = dv.resolve_device_config(cfg)
    assert out["name"] == "h100" and out["precision"] == "32-true" and out["compile"] is None
    assert out["batch_size"] == 7 and out["flash_sdpa"] is False
    assert out["matmul_precision"] == "high"  # untouched keys keep the profile's value
    assert out["overrides"] == ["batch_size", "compile", "flash_sdpa", "precision"]
    assert dv.resolve_device_config({"name": "cpu", "compile": True})["compile"] == "default"
    assert dv.resolve_device_config({"name": "a100", "compile": "default"})["compile"] == "default"


def test_resolve_auto_detects(no_accelerator):
    assert dv.resolve_device_config(_yaml("auto"))["name"] == "cpu"
    assert dv.resolve_device_config({})["name"] == "cpu"


@pytest.mark.parametrize(
    "cfg",
    [
        {"name": "tpu9000"},
        {"name": "h100", "precison": "32-true"},
        {"name": "h100", "precision": "8-mixed"},
        {"name": "h100", "compile": "fastest"},
        {"name": "h100", "matmul_precision": "low"},
        {"name": "h100", "batch_size": 0},
        {"name": "h100", "flash_sdpa": "maybe"},
    ],
)
def test_resolve_rejects_bad_input(cfg):
    with pytest.raises(ValueError):
        dv.resolve_device_config(cfg)


def test_apply_profile_sets_matmul_precision(keep_matmul_precision, no_accelerator):
    out = dv.apply_profile("h100")
    assert torch.get_float32_matmul_precision() == "high"
    assert any("SDPA" in s for s in out["skipped"])  # no CUDA here
    dv.apply_profile(dv.resolve_device_config({"name": "h100", "matmul_precision": "highest"}))
    assert torch.get_float32_matmul_precision() == "highest"


# ------------------------------------------------------------------------------------------ optimize
class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x)


def test_optimize_for_device_cpu(keep_matmul_precision, caplog):
    model = _Tiny()
    with caplog.at_level(logging.INFO, logger="halo_lab.device"):
        out = dv.optimize_for_device(model, device="cpu", mode="inference")
    assert out is model and not model.training
    assert next(model.parameters()).device.type == "cpu"
    assert torch.get_float32_matmul_precision() == "highest"
    assert "skipped" in caplog.text and "compile" in caplog.text  # the cpu profile runs eager: logged
    assert dv.optimize_for_device(model, device="cpu") is model and model.training
    x = torch.randn(2, 4)
    assert torch.equal(model(x), model.lin(x))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"device": "nonsense:7"},
        {"device": "cuda"},  # no CUDA on this machine: the move fails and is skipped
        {"mode": "warp-speed"},
        {"profile": "no-such-profile"},
        {"profile": {"name": "broken", "compile": "default", "matmul_precision": "bogus"}},
    ],
)
def test_optimize_for_device_never_raises(kwargs, keep_matmul_precision, caplog):
    model = _Tiny()
    with caplog.at_level(logging.INFO, logger="halo_lab.device"):
        assert dv.optimize_for_device(model, **kwargs) is model
    assert "optimize_for_device" in caplog.text


def test_optimize_for_device_survives_failing_compile(monkeypatch, keep_matmul_precision, caplog):
    model = _Tiny()

    def boom(*args, **kwargs):
        raise RuntimeError("inductor exploded")

    monkeypatch.setattr(model, "compile", boom)
    monkeypatch.setattr(
        dv.flags, "_compile_blocker", lambda dev: None
    )  # reach compile even without a C++ compiler
    with caplog.at_level(logging.WARNING, logger="halo_lab.device"):
        assert dv.optimize_for_device(model, device="cpu", compile_mode="default") is model
    assert "inductor exploded" in caplog.text


def test_optimize_for_device_compiles_in_place(monkeypatch, keep_matmul_precision):
    from torch._dynamo import config as dynamo_config

    monkeypatch.setattr(dv.flags, "_compile_blocker", lambda dev: None)
    model = _Tiny()
    keys = list(model.state_dict())
    # optimize_for_device sets dynamo's suppress_errors; patch() restores it (monkeypatch breaks the
    # config module's attribute on undo and later FlexAttention calls fail)
    with dynamo_config.patch(suppress_errors=False):
        out = dv.optimize_for_device(model, device="cpu", compile_mode="default")
    assert out is model and model._compiled_call_impl is not None  # compiled, not wrapped
    assert list(model.state_dict()) == keys and not any("_orig_mod" in k for k in keys)
    # a resolved config that turns compile off wins over compile_mode's default (the profile's)
    other = _Tiny()
    dv.optimize_for_device(
        other, device="cpu", profile=dv.resolve_device_config({"name": "h100", "compile": False})
    )
    assert other._compiled_call_impl is None


# ------------------------------------------------------------------------------------------ batch size
def test_parameter_estimate_matches_the_model():
    from halo_lab.model import build_model

    for cfg in (
        HaloConfig(hidden_size=64, num_heads=4, num_kv_heads=2, num_layers=2),
        HaloConfig(
            hidden_size=96, num_heads=6, num_kv_heads=3, num_layers=3, use_swiglu=False, norm="rmsnorm"
        ),
        HaloConfig(hidden_size=64, num_heads=4, num_layers=1, tie_embeddings=True, vocab_size=1000),
    ):
        for arch in ("halo", "dense"):
            assert dv.estimate_num_parameters(cfg, arch) == build_model(cfg, arch).count_parameters()


def test_cpu_batch_size_estimate_is_monotone():
    cfg = HaloConfig()
    mem = 16e9
    lens = [64, 128, 256, 512, 1024, 2048, 4096]
    by_len = [dv.get_optimal_batch_size(cfg, t, device="cpu", memory_bytes=mem) for t in lens]
    assert all(b >= 1 for b in by_len)
    assert all(a >= b for a, b in zip(by_len, by_len[1:])), by_len
    assert by_len[0] > by_len[-1]
    widths = [128, 256, 512, 768, 1024]
    by_width = [
        dv.get_optimal_batch_size(cfg.replace(hidden_size=h), 512, device="cpu", memory_bytes=mem)
        for h in widths
    ]
    assert all(a >= b for a, b in zip(by_width, by_width[1:])), by_width
    assert by_width[0] > by_width[-1]
    # the dense baseline keeps no neighbour gather: more sequences fit
    assert dv.get_optimal_batch_size(cfg, 512, arch="dense", memory_bytes=mem, device="cpu") > by_len[3]


def test_cpu_batch_size_uses_the_memory_model():
    cfg = HaloConfig(hidden_size=128, num_heads=4, num_layers=2)
    est = dv.estimate_training_memory(cfg, 256, 1)
    mem = est["static"] + 10 * est["per_sample"]
    b = dv.get_optimal_batch_size(cfg, 256, device="cpu", memory_bytes=mem, safety=1.0)
    assert b == 10
    assert dv.get_optimal_batch_size(cfg, 256, device="cpu", memory_bytes=mem, safety=0.5) < b
    assert dv.get_optimal_batch_size(cfg, 256, device="cpu", memory_bytes=1e3) == 1  # nothing fits: 1
    assert dv.get_optimal_batch_size(cfg, 64, device="cpu", memory_bytes=1e15, max_batch=37) == 37
    assert dv.get_optimal_batch_size(cfg, 256, device="cpu") >= 1  # real free RAM
    # half precision halves activations
    half = dv.estimate_training_memory(cfg, 256, 1, precision="bf16-mixed")
    assert half["per_sample"] < est["per_sample"]
    with pytest.raises(ValueError):
        dv.get_optimal_batch_size(cfg, 256, safety=0)
    odd = dv.get_optimal_batch_size(
        cfg, 256, device="cpu", memory_bytes=mem, safety=1.0, precision="transformer-engine"
    )
    assert odd == b  # an unmodelled precision is sized as full precision


@pytest.mark.parametrize("capacity", [None, 300.0])
def test_search_batch_size_finds_the_largest_fitting_batch(capacity):
    fixed, slope, budget = 50.0, 1.7, 400.0
    calls = []

    def trial(b):
        calls.append(b)
        peak = fixed + slope * b + 0.002 * b * b  # slightly super-linear, like fragmentation
        if capacity is not None and peak > capacity:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return peak

    best = dv.search_batch_size(trial, budget, max_batch=1024)
    limit = min(budget, capacity or budget)
    true_best = max(b for b in range(1, 1025) if fixed + slope * b + 0.002 * b * b <= limit)
    assert 0.95 * true_best <= best <= true_best
    assert len(calls) <= 12


def test_search_batch_size_on_random_memory_curves():
    """Linear at small batches, steeper later (what a GPU shows), with and without a hard OOM limit."""
    import random

    rng = random.Random(0)
    for _ in range(400):
        fixed, slope = rng.uniform(0.1, 20), rng.uniform(0.01, 2)
        quad, kink = rng.choice([0.0, rng.uniform(0, 0.002)]), rng.uniform(1, 1.4)
        capacity, budget = rng.choice([None, rng.uniform(50, 400)]), rng.uniform(30, 300)
        max_batch = rng.choice([64, 1024, 4096])

        def peak(b, fixed=fixed, slope=slope, quad=quad, kink=kink):
            return fixed + slope * b * (1 if b < 16 else kink) + quad * b * b

        calls = []

        def trial(b, capacity=capacity, peak=peak, calls=calls):
            calls.append(b)
            if capacity is not None and peak(b) > capacity:
                raise MemoryError
            return peak(b)

        best = dv.search_batch_size(trial, budget, max_batch)
        limit = min(budget, capacity or budget)
        fits = [b for b in range(1, max_batch + 1) if peak(b) <= limit]
        true_best = max(fits) if fits else 1
        assert 0.95 * true_best - 1 <= best <= true_best, (best, true_best, calls)
        assert len(calls) <= 12


def test_search_batch_size_edge_cases():
    assert dv.search_batch_size(lambda b: 1.0, budget=10.0, max_batch=64) == 64  # flat memory: the cap

    def oom(b):
        raise MemoryError

    assert dv.search_batch_size(oom, budget=10.0) == 1  # nothing fits: 1, the caller's last resort
