"""The dense gate (halo_lab.report.gate): verdicts on hand-made results, its block in the sweep report, and
(slow) a real CPU-sized dense MQAR run that passes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from halo_lab.report import gate
from halo_lab.report.gate import GATE, Result, check_gate, gate_lines

REPO = Path(__file__).resolve().parents[1]


def res(arch, acc, seq_len=512, seed=0, **kw):
    return Result(label=kw.pop("label", arch), arch=arch, point=(seq_len, seed, ""), acc=acc, **kw)


def test_gate_passes_only_when_dense_reaches_the_threshold_at_every_point():
    ok = check_gate(
        [res("dense", 0.97), res("halo", 0.40), res("dense", 0.99, seed=1), res("halo", 0.5, seed=1)]
    )
    assert ok.passed is True and ok.line.startswith("**Dense gate: passed**") and not ok.failed_points
    bad = check_gate(
        [res("dense", 0.97), res("halo", 0.40), res("dense", 0.94, seed=1), res("halo", 0.2, seed=1)]
    )
    assert bad.passed is False and bad.failed_points == [(512, 1, "")]
    assert "FAILED" in bad.line and "not meaningful" in bad.line and "seed 1: dense 0.940" in bad.line
    assert "Passed at len 512, seed 0: dense 0.970" in bad.line
    assert check_gate([res("dense", GATE)]).passed is True  # the threshold itself passes
    assert check_gate([res("dense", None)]) is None  # no accuracy at all: not a retrieval sweep
    none = check_gate([res("halo", 0.9), res("halo", 0.1, label="HALO-S local_only")])
    assert none.passed is None and "not checked" in none.line
    # a dense run that failed (no accuracy) at a point fails the gate there
    assert check_gate([res("dense", None), res("halo", 0.3)]).passed is False


def test_gate_lines_show_controls_beside_accuracy_with_chance():
    lines = gate_lines(
        [res("dense", 0.99, control=0.98, chance=0.25), res("halo", 0.30, control=0.05, chance=0.25)]
    )
    text = "\n".join(lines)
    assert "Dense gate: passed" in text and "swapped-key control" in text and "chance" in text
    assert "| halo | len 512, seed 0 | 0.300 | 0.050 | 0.250 |" in text
    first = "\n".join(gate_lines([res("dense", 0.5, first_query=0.125, chance=0.125)]))
    assert "first query" in first and "0.125" in first and "FAILED" in first
    assert gate_lines([res("dense", None)]) == []


def _job(sweep: Path, variant: str, arch: str, acc: float, num_pairs: int = 8) -> None:
    job = sweep / f"variant={variant}"
    (job / ".hydra").mkdir(parents=True)
    cfg = {"task_name": "mqar_cpu", "model": {"arch": arch}, "seed": 0, "data": {"num_pairs": num_pairs}}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"variant={variant}"]))
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {}}}}))
    m = {"status": "ok", "task_name": "mqar_cpu", "arch": arch, "seq_len": 512, "seed": 0, "val_loss": 1.0}
    m.update(val_acc=acc, val_acc_by_distance={"2": acc}, ablation="full", steps=10)
    (job / "metrics.json").write_text(json.dumps(m))
    hist = {"step": 10, "stage": "validate", "val/acc": acc, "val/acc_first_query": acc / 2}
    (job / "history.jsonl").write_text(json.dumps(hist) + "\n")


@pytest.mark.parametrize("dense_acc,word", [(0.99, "passed"), (0.40, "FAILED")])
def test_sweep_report_marks_a_sweep_whose_dense_baseline_fails(tmp_path, dense_acc, word):
    from halo_lab.report import build_report

    sweep = tmp_path / "sweep"
    _job(sweep, "dense", "dense", dense_acc)
    _job(sweep, "halo", "halo", 0.30)
    text = build_report(sweep, plots=False).read_text()
    assert f"Dense gate: {word}" in text
    assert ("not meaningful" in text) == (word == "FAILED")
    assert "first query" in text and "0.125" in text  # chance = 1 / 8 records
    assert "| 0.300 | 0.150 |" in text  # HALO-S: accuracy, then its first query's (from history.jsonl)


def test_non_retrieval_sweeps_get_no_gate_block(tmp_path):
    sweep = tmp_path / "sweep"
    _job(sweep, "dense", "dense", 0.9)
    m = json.loads((sweep / "variant=dense" / "metrics.json").read_text())
    for k in ("val_acc", "val_acc_by_distance"):
        m.pop(k)
    (sweep / "variant=dense" / "metrics.json").write_text(json.dumps(m))
    (sweep / "variant=dense" / "history.jsonl").write_text("")
    from halo_lab.report import build_report

    assert "Dense gate" not in build_report(sweep, plots=False).read_text()
    assert gate.report_lines([]) == []


@pytest.mark.slow
def test_cpu_sized_dense_run_passes_the_gate(tmp_path):
    """The gate point (conf/experiment/mqar_gate.yaml) shortened to 300 steps: dense with the short conv
    solves Zoology-layout MQAR at 128 tokens on a CPU (about 1-2 minutes)."""
    run_dir = tmp_path / "gate"
    args = [
        "-m",
        "halo_lab.train",
        "+experiment=mqar_gate",
        "variant=dense",
        "trainer.max_steps=300",
        "trainer.val_check_interval=300",
        "logger=none",
        "sample.max_new_tokens=1",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "HALO_LAB_ROOT": str(tmp_path), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["arch"] == "dense" and metrics["steps"] == 300
    assert metrics["val_acc"] >= GATE, metrics
    verdict = check_gate([gate.result_of(_RunView(run_dir, metrics))])
    assert verdict.passed is True, verdict.line


class _RunView:
    """The duck-typed Run that gate.result_of reads, for a single run directory."""

    def __init__(self, path: Path, metrics: dict):
        self.path, self.metrics, self.ok, self.label, self.extra = path, metrics, True, "dense", ""
        self.arch, self.seq_len, self.seed = metrics["arch"], metrics.get("seq_len"), metrics.get("seed")
        lines = (path / "history.jsonl").read_text().splitlines() if (path / "history.jsonl").exists() else []
        self.history = [json.loads(x) for x in lines if x.strip()]

    def m(self, key, default=None):
        return self.metrics.get(key, default)
