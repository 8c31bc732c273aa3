"""make bench's CPU mode end to end at a tiny size (the real CPU mode takes about a minute: not in CI)."""

import json
import statistics
import subprocess
import sys

import pytest
import torch

from halo_lab import bench
from halo_lab.model import attention as attn


def tiny_spec() -> dict:
    model = {
        "vocab_size": 64,
        "hidden_size": 32,
        "num_layers": 1,
        "num_heads": 2,
        "num_kv_heads": 1,
        "dropout": 0.0,
    }
    return {
        "mode": "cpu",
        "dtype": "bf16",
        "parts": ["attention", "train", "reference", "decode"],
        "check": True,
        "warmup": 1,
        "repeats": 2,
        "cpu": {
            "attention": {
                "seq_lens": [128],
                "tokens": 256,
                "heads": 2,
                "kv_heads": 1,
                "head_dim": 16,
                "backends": ["dense", "masked", "reference"],  # as conf/bench.yaml's CPU mode
                "reference_max_len": 128,
            },
            "train": {"seq_lens": [128], "tokens": 256, "model": model},
            "reference": {
                "configs": {"tiny": {"seq_len": 64, "batch": 2, "model": {**model, "num_globals": 1}}}
            },
            "decode": {"contexts": [64], "new_tokens": 4, "cuda_graph": False, "model": model},
        },
    }


def test_cpu_bench_writes_table_json_and_plot(tmp_path, capsys):
    result = bench.run(tiny_spec(), tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == result["rows"] and (tmp_path / "bench.png").stat().st_size > 0
    parts = {(r["part"], r["variant"]) for r in result["rows"]}
    assert {
        ("attention", "dense"),
        ("attention", "masked"),  # what CPU training runs
        ("attention", "reference"),
        ("train_step", "halo"),
        ("decode", "halo"),
        ("reference_tiny", "halo"),
        ("reference_tiny", "pyhalos_halo"),  # the compat extra installs the reference package
        ("reference_tiny", "pyhalos_dense"),
    } <= parts
    dense_rows = [r for r in result["rows"] if r["variant"] == "dense"]
    assert all(r["ratio_to_dense"] == 1.0 for r in dense_rows)
    # the reference part times its models in turns: a median over REFERENCE_ROUNDS rounds of each
    for r in (r for r in result["rows"] if r["part"] == "reference_tiny"):
        assert (
            len(r["ms_rounds"]) == bench.REFERENCE_ROUNDS
            and abs(r["ms"] - statistics.median(r["ms_rounds"])) < 1e-3
        )
    assert max(result["check"].values()) < 1e-4
    assert "x dense" in capsys.readouterr().out


def test_reference_part_alone_writes_its_rows(tmp_path):
    """`parts=[reference]` in a process of its own (how the GPU bench runs it): its rows have no curve to
    plot, which must not lose the results."""
    spec = {**tiny_spec(), "parts": ["reference"], "check": False}
    result = bench.run(spec, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == result["rows"] and {r["part"] for r in saved["rows"]} == {"reference_tiny"}


def test_a_bench_stopped_by_a_crash_keeps_the_rows_before_it(tmp_path, monkeypatch):
    """A part that dies mid-way (on a card: an illegal address, a time limit) leaves every row measured
    before it in results.partial.json, as the decode bench does."""
    from halo_lab.bench import cli, train_step

    def crash(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(train_step, "_train_row", crash)
    spec = {**tiny_spec(), "parts": ["attention", "train"], "check": False}
    with pytest.raises(RuntimeError, match="illegal memory access"):
        cli.run(spec, tmp_path)
    assert not (tmp_path / "results.json").exists()
    saved = json.loads((tmp_path / "results.partial.json").read_text())
    assert [(r["part"], r["variant"]) for r in saved["rows"]] == [
        ("attention", "dense"),
        ("attention", "masked"),
        ("attention", "reference"),
    ]


def test_check_backends_catches_a_wrong_backend(monkeypatch):
    real = attn.halo_attention

    def off_by_one_step(q, k, v, config, layer, step, backend):
        return real(q, k, v, config, layer, step + 1, backend)  # another step: other random edges

    monkeypatch.setattr(attn, "halo_attention", off_by_one_step)
    errors = bench.check_backends(torch.device("cpu"), torch.float32, n=300)
    assert max(errors.values()) > 1e-3


def test_estimate_flops_public_helper():
    flops = bench.estimate_flops({"hidden_size": 64, "num_heads": 4, "num_kv_heads": 2}, 512)
    dense = bench.estimate_flops({"hidden_size": 64, "num_heads": 4, "num_kv_heads": 2}, 512, arch="dense")
    assert 0 < flops["attention"] < dense["attention"]
    with pytest.raises(ValueError):
        bench.estimate_flops({"hidden_size": 64}, 512, arch="sparse")


def test_command_lines_parse():
    """`python -m halo_lab.bench` (the Hydra app, job `bench` as when it was one module) and
    `python -m halo_lab.bench.decode` (argparse) start and parse their options."""
    hydra = subprocess.run(
        [sys.executable, "-m", "halo_lab.bench", "--cfg", "hydra"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert hydra.returncode == 0 and "    name: bench\n" in hydra.stdout, hydra.stderr
    decode = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", "halo_lab.bench.decode", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert decode.returncode == 0 and "usage: python -m halo_lab.bench.decode" in decode.stdout, decode.stderr


def test_help_lists_no_training_groups():
    """The bench composes no config group: its --help shows its usage and options, not the runner's groups
    (trainer, callbacks, logger, model, ...)."""
    proc = subprocess.run(
        [sys.executable, "-m", "halo_lab.bench", "--help"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("python -m halo_lab.bench [mode=auto|cpu|gpu]")
    assert "Configuration groups" not in proc.stdout and "mode: auto" in proc.stdout
    for group in ("trainer:", "callbacks:", "logger:", "experiment:", "variant:", "ablation:"):
        assert group not in proc.stdout


def test_the_selected_row_times_the_variant_as_trained(tmp_path):
    """triton_select is variant=halo_select's attention (the model settings the variant composes), and the
    timed step passes the layer's selection parameters (pooling, summary and token biases) as the model does."""
    from halo_lab.bench.attention import _attention_variants, selection_parameters
    from halo_lab.config import HaloConfig
    from halo_lab.runner.config import build_model_config, compose_config

    model, _, _ = build_model_config(
        compose_config(
            ["+experiment=needle_tiny", "variant=halo_select", "logger=none"], output_dir=tmp_path
        ),
        vocab_size=64,
    )
    timed = _attention_variants(HaloConfig())["triton_select"][1]
    for key in (
        "select_blocks",
        "select_pooling",
        "select_score",
        "select_summary_bias",
        "select_token_bias",
    ):
        assert getattr(timed, key) == model[key], key
    extras = selection_parameters(timed.replace(select_token_bias=-4.0), "cpu")
    assert set(extras) == {"pool", "bias", "token_bias"} and all(t.requires_grad for t in extras.values())
    assert selection_parameters(HaloConfig(), "cpu") == {}


@pytest.mark.slow  # Inductor compiles 2 models on the CPU: about a minute
def test_compiled_train_rows_compare_with_compiled_dense_and_count_graph_breaks():
    """train.modes=[eager, compiled]: each model's blocks compiled with fullgraph=True, a row per mode,
    the compiled HALO-S row's ratio against compiled dense, its graph breaks counted (0: it compiled); a
    mode that is not one is a clear error."""
    from halo_lab.bench.tables import add_ratios
    from halo_lab.bench.train_step import bench_train

    spec = {**tiny_spec()["cpu"]["train"], "seq_lens": [128], "tokens": 128, "modes": ["eager", "compiled"]}
    rows = bench_train(spec, torch.device("cpu"), torch.float32, warmup=1, repeats=1)
    add_ratios(rows)
    by_name = {r["variant"]: r for r in rows}
    assert set(by_name) == {"dense", "halo", "dense_compiled", "halo_compiled"}
    for name in ("dense_compiled", "halo_compiled"):
        assert "error" not in by_name[name] and by_name[name]["graph_breaks"] == 0, by_name[name]
    halo = by_name["halo_compiled"]
    assert halo["ratio_to_dense"] == pytest.approx(halo["ms"] / by_name["dense_compiled"]["ms"])
    assert by_name["dense_compiled"]["ratio_to_dense"] == 1.0
    with pytest.raises(ValueError, match="train.modes: 'jit'"):
        bench_train({**spec, "modes": ["jit"]}, torch.device("cpu"), torch.float32, 1, 1)


def test_decode_bench_batches_keeps_only_those_runs():
    """`--batches 8 64` keeps the preset's batch-8 and batch-64 runs (a call with little device time left
    measures just those); a batch the preset lacks is an error that names what it has."""
    import argparse

    from halo_lab.bench.decode import spec_for

    def args(batches):
        names = ("variants", "new_tokens", "gemv", "fused_qkv", "fused_attn_o", "fused_ffn", "split_attn_o")
        names += ("steps",)
        return argparse.Namespace(
            batches=batches, no_compile=False, no_cuda_graph=False, **dict.fromkeys(names)
        )

    assert [r["batch"] for r in spec_for("gpu", args([8, 64]))["runs"]] == [8, 64]
    assert [r["batch"] for r in spec_for("gpu", args(None))["runs"]] == [1, 8, 64]
    with pytest.raises(SystemExit, match=r"has batches \[1, 8, 64\]"):
        spec_for("gpu", args([2]))
