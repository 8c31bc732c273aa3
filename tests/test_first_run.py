"""What a first run shows: progress lines with the current validation loss and at least every 20 s off
a terminal, one history row per validation, a warning when a warmup given on the command line never ends,
no deprecation warning from halo_lab's own flex_attention calls, and none of the noise of issue 28 (the
default warmup in a short run, Lightning's litlogger tip, W&B's "anonymous" warning, a model summary
table of metric modules and "Total FLOPs: 0")."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import torch
from hydra.core.global_hydra import GlobalHydra

from halo_lab.runner import progress as cb
from halo_lab.runner.config import compose_config, validate_config


def fake_trainer(step: int, metrics: dict, *, fn: str = "fit", max_steps: int = 500):
    return types.SimpleNamespace(
        global_step=step,
        max_steps=max_steps,
        callback_metrics={k: torch.tensor(v) for k, v in metrics.items()},
        progress_bar_callback=None,
        is_global_zero=True,
        sanity_checking=False,
        log_every_n_steps=10,
        current_epoch=0,
        state=types.SimpleNamespace(fn=fn, stage=types.SimpleNamespace(value="validate")),
    )


def test_progress_lines_show_the_validation_loss_of_their_step_and_come_every_20_s(monkeypatch, caplog):
    clock = [1000.0]
    monkeypatch.setattr(cb.time, "time", lambda: clock[0])
    caplog.set_level(logging.INFO, logger="halo_lab.train")
    p = cb.ProgressLog(every_n_steps=50, max_interval_s=20)
    p.on_train_start(fake_trainer(0, {}), None)

    def lines():
        out = [r.getMessage() for r in caplog.records]
        caplog.clear()
        return out

    clock[0] += 5
    p.on_train_batch_end(fake_trainer(100, {"train/loss": 2.5}), None, None, None, 0)
    assert lines() == ["step 100/500 | train/loss 2.5000 | elapsed 5s, ~20s left"]
    # the validation at step 100 runs after that step's line: its own line carries the new loss
    p.on_validation_end(fake_trainer(100, {"val/loss": 2.25}), None)
    assert lines() == ["step 100/500 | val/loss 2.2500 | elapsed 5s, ~20s left"]
    clock[0] += 1
    p.on_train_batch_end(fake_trainer(150, {"train/loss": 2.0, "val/loss": 2.25}), None, None, None, 0)
    assert lines()[0].startswith("step 150/500 | train/loss 2.0000 | val/loss 2.2500 @100 |")
    # no step multiple of 50 for 20 s: a line anyway (a slow shared machine must not look hung)
    clock[0] += 10
    p.on_train_batch_end(fake_trainer(151, {"train/loss": 2.0}), None, None, None, 0)
    assert lines() == []
    clock[0] += 11
    p.on_train_batch_end(fake_trainer(152, {"train/loss": 1.9}), None, None, None, 0)
    assert [m.split(" | ")[0] for m in lines()] == ["step 152/500"]
    # the runner's validate() after fit prints no training-progress line
    p.on_validation_end(fake_trainer(500, {"val/loss": 1.7}, fn="validate"), None)
    assert lines() == []


def test_the_final_validate_adds_no_duplicate_history_row(tmp_path):
    path = tmp_path / "history.jsonl"
    h = cb.MetricsHistory(str(path))
    h.on_validation_end(fake_trainer(400, {"val/loss": 1.8}), None)
    h.on_validation_end(fake_trainer(500, {"val/loss": 1.7}), None)  # fit's last validation
    h.on_validation_end(fake_trainer(500, {"val/loss": 1.7}, fn="validate"), None)  # train.run's validate()
    h.on_validation_end(fake_trainer(500, {"val/loss": 1.6}, fn="validate"), None)  # other weights: kept
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["step"], round(r["val/loss"], 4)) for r in rows] == [(400, 1.8), (500, 1.7), (500, 1.6)]


def test_warmup_longer_than_the_run_warns(tmp_path, caplog):
    """The default warmup (50) in a shorter run (trainer=debug, a short trainer.max_steps) is shortened to a
    tenth of the run with one info line; a warmup given on the command line is kept, with a warning."""
    caplog.set_level(logging.INFO, logger="halo_lab.train")
    try:
        for overrides, steps in ((["trainer.max_steps=20"], 20), (["trainer=debug"], 20)):
            cfg = compose_config(overrides, output_dir=tmp_path)
            validate_config(cfg)
            assert cfg.scheduler.warmup_steps == steps // 10
            assert [r.levelname for r in caplog.records if "warmup" in r.getMessage()] == ["INFO"]
            assert f"scheduler.warmup_steps={steps // 10} (a tenth of this {steps}-step run" in caplog.text
            caplog.clear()
        validate_config(compose_config([], output_dir=tmp_path))
        assert "warmup_steps" not in caplog.text
        cfg = compose_config(["trainer.max_steps=20", "scheduler.warmup_steps=50"], output_dir=tmp_path)
        validate_config(cfg)
        assert cfg.scheduler.warmup_steps == 50
        assert (
            "scheduler.warmup_steps=50 >= the schedule's 20 steps" in caplog.text
            and "max_steps=20" in caplog.text
        )
        caplog.clear()
        validate_config(
            compose_config(["scheduler.total_steps=40", "scheduler.warmup_steps=40"], output_dir=tmp_path)
        )
        assert "scheduler.warmup_steps=40 >= the schedule's 40 steps (scheduler.total_steps=40" in caplog.text
    finally:
        GlobalHydra.instance().clear()


def test_hybrid_attention_calls_flex_without_the_deprecated_return_lse():
    from halo_lab.config import HaloConfig
    from halo_lab.model import attention

    cfg = HaloConfig(
        hidden_size=32, num_heads=2, num_kv_heads=1, local_window=8, dilated_offsets=[1], graph_block_size=16
    )
    q = torch.randn(1, 2, cfg.num_globals + 40, 16)
    k = v = torch.randn(1, 1, cfg.num_globals + 40, 16)
    with warnings.catch_warnings(record=True) as seen, torch.no_grad():
        warnings.simplefilter("always")
        out = attention.hybrid_attention(q, k, v, cfg, 0, -1)
    ref = attention.reference_attention(q, k, v, cfg, 0, -1)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert not [w for w in seen if "return_lse" in str(w.message)], [str(w.message) for w in seen]


NOISE = (
    "warmup_steps=50 >=",  # the default warmup in a short run
    "litlogger",  # Lightning's tip, every Trainer
    "anonymous setting",  # W&B, every run through Lightning's WandbLogger
    "SumMetric",  # Lightning's summary table: the validation metric modules as rows
    "Total FLOPs",  # ... and a FLOPs column it cannot fill
)


def test_a_short_run_prints_none_of_the_noise(tmp_path):
    """A short run with the default trainer (model summary on) and the default logger (W&B, offline)."""
    import random

    r = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog and the king sees the queen".split()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(r.choice(words) for _ in range(8)) for _ in range(400)))
    args = [
        "data=text",
        f"data.path={corpus}",
        "data.seq_len=32",
        "data.batch_size=4",
        "model.hidden_size=32",
        "model.num_layers=1",
        "model.num_heads=2",
        "model.num_kv_heads=1",
        "model.local_window=8",
        "model.dilated_offsets=[1,2]",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0",
        "callbacks.samples=null",
        "sample.max_new_tokens=4",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "halo_lab.train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert (tmp_path / "run" / "wandb").is_dir()  # W&B did run (offline)
    assert [n for n in NOISE if n in out] == [], out
    assert "model: HaloSModel, " in out and " parameters (all trainable, " in out  # the summary's one line
