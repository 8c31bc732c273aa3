"""experiments/retrieval/grid.py, the GPU grid launcher of issue 14: its job lists, the budget logic and
(slow) a CPU smoke run through halo_lab.report."""

from __future__ import annotations

import importlib.util
import json
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("retrieval_grid", ROOT / "experiments/retrieval/grid.py")
grid = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = grid  # dataclasses look their module up
_spec.loader.exec_module(grid)


def _keys(job) -> tuple:
    return tuple(sorted(o.split("=")[0] for o in job.overrides()))


def test_the_done_when_points_come_first_and_names_are_unique():
    g = grid.grids()
    part1 = g["part1"][0]
    first = [(j.experiment, j.variant, j.layers, j.conv) for j in part1[:2]]
    assert first == [("needle_1024", "dense", 2, 3), ("mqar_1024", "dense", 2, 3)]
    names = [j.name(p) for p in ("part1", "part2") for j in g[p][0]]
    assert len(names) == len(set(names))
    # A dense run at every 1024-token depth HALO-S is measured at (the report's gate compares per point).
    jobs = g["part1"][0] + g["part2"][0]
    for j in jobs:
        if j.experiment.endswith("_1024") and j.variant != "dense":
            assert any(
                d.variant == "dense" and d.experiment == j.experiment and d.layers == j.layers for d in jobs
            ), j.name("x")


def test_every_section_passes_the_same_override_keys_and_extras():
    """The report's variant labels and gate points come from the overrides that differ inside a
    section (task): only the axes may differ, or a job would be labelled and gated apart."""
    for jobs, _ in grid.grids().values():
        by_task: dict[str, list] = {}
        for j in jobs:
            by_task.setdefault(j.task, []).append(j)
        for task, members in by_task.items():
            # an ablation (by option, or by override with a tag) is told apart by its own keys
            ablation = {_keys(j) for j in members if j.ablation}
            plain = {_keys(j) for j in members if not (j.ablation or j.tag)}
            assert len(plain) <= 1 and len(ablation) <= 1, task
            for tag in {j.tag for j in members if j.tag}:
                assert len({_keys(j) for j in members if j.tag == tag}) == 1, (task, tag)
            assert len({tuple(j.extra) for j in members if not j.tag}) <= 1, task  # none: all tagged


def test_jobs_that_do_not_fit_the_budget_are_dropped_not_started(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    rc = grid.main(["run", str(out), "--grid", "part1", "--budget", "30", "--work", str(work)])
    assert rc == 1  # nothing ran
    summary = json.loads((out / "part1_summary.json").read_text())
    assert {j["status"] for j in summary["jobs"]} == {"dropped (budget)"}
    assert len(summary["jobs"]) == len(grid.grids()["part1"][0])
    with tarfile.open(out / "part1.tar.gz") as tar:
        assert "part1_summary.json" in tar.getnames()
    assert "dropped (budget)" in (out / "part1_summary.txt").read_text()


def test_work_directory_inside_out_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="must lie outside OUT"):
        grid.main(["run", str(tmp_path), "--grid", "smoke", "--budget", "30", "--work", str(tmp_path / "w")])


@pytest.mark.slow
def test_every_grid_job_composes_and_builds_its_data():
    assert grid.main(["check", "part1", "part2", "smoke"]) == 0


@pytest.mark.slow
def test_smoke_grid_trains_on_the_cpu_and_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "out"
    rc = grid.main(
        [
            "run",
            str(out),
            "--grid",
            "smoke",
            "--budget",
            "300",
            "--reserve",
            "40",
            "--work",
            str(tmp_path / "work"),
        ]
    )
    assert rc == 0
    summary = json.loads((out / "smoke_summary.json").read_text())
    assert [j["status"] for j in summary["jobs"]] == ["ok", "ok", "ok"]
    assert all(j["metrics"]["steps"] == 4 for j in summary["jobs"])
    with tarfile.open(out / "smoke.tar.gz") as tar:
        assert not [n for n in tar.getnames() if "checkpoints" in n or n.endswith(".ckpt")]
    rep = tmp_path / "rep"
    assert (
        grid.main(
            [
                "report",
                str(out / "smoke.tar.gz"),
                "--root",
                str(rep / "root"),
                "--out",
                str(rep),
                "--no-plots",
            ]
        )
        == 0
    )
    needle = (rep / "needle" / "report.md").read_text()
    assert "## needle_1024" in needle and "Dense gate" in needle and "swapped-key control" in needle
    assert "## mqar_cpu" in (rep / "mqar" / "report.md").read_text()
    assert "max_time" not in needle.split("## needle_1024")[1].split("Common setup")[0]


@pytest.mark.slow  # two smoke grids on the CPU, ~25 s
def test_a_cut_job_goes_on_from_its_checkpoint_in_the_next_call(tmp_path, monkeypatch):
    """--ckpt-out keeps the last.ckpt of each job that stopped short of its own schedule (here cut to 2 of
    its 4 steps by an extra override), and --resume-from continues it to the end in the next call."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    first, second = tmp_path / "out1", tmp_path / "out2"
    common = ["--grid", "smoke", "--budget", "300", "--reserve", "40"]
    cut = ["--extra", "trainer.max_steps=2", "--ckpt-out", "--work", str(tmp_path / "w1")]
    assert grid.main(["run", str(first), *common, *cut]) == 0
    kept = sorted(p.name for p in first.glob("*.ckpt"))
    assert len(kept) == 3
    resume = ["--resume-from", str(first), "--ckpt-out", "--work", str(tmp_path / "w2")]
    assert grid.main(["run", str(second), *common, *resume]) == 0
    jobs = json.loads((second / "smoke_summary.json").read_text())["jobs"]
    assert all(j["metrics"]["steps"] == 4 and j["resumed_from"] for j in jobs)
    assert not list(second.glob("*.ckpt"))  # runs that reach their schedule leave none


@pytest.mark.slow  # a smoke grid on the CPU and recall.py twice, ~40 s
def test_recall_reads_each_finished_jobs_checkpoint(tmp_path, monkeypatch):
    """--recall runs experiments/selection/recall.py on each job's last checkpoint before the checkpoints
    go: run/recall.txt in the job's folder and the tarball, a row per needle distance (MQAR: per distance
    bucket) for the selection, and a one-line answer for dense (no chosen blocks)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out, work = tmp_path / "out", tmp_path / "work"
    common = ["--grid", "smoke_recall", "--budget", "400", "--reserve", "40", "--recall", "120"]
    assert grid.main(["run", str(out), *common, "--work", str(work)]) == 0
    texts = {p.parents[1].name: p.read_text() for p in work.glob("*/*/run/recall.txt")}
    assert len(texts) == 3, texts
    dense, select, mqar = (
        next(t for n, t in texts.items() if v in n)
        for v in ("-dense-", "needle_1024-halo_select-", "mqar_cpu")
    )
    assert "chooses no blocks" in dense

    def rows(text: str) -> list[int]:
        return [int(r.split(":")[0]) for r in text.split("misses not chosen\n")[1].splitlines()]

    assert rows(select) == [16, 40, 100], select
    assert rows(mqar) and set(rows(mqar)) <= {2, 16, 64}, mqar  # the run's distance_buckets
    with tarfile.open(out / "smoke_recall.tar.gz") as tar:
        assert sum(n.endswith("run/recall.txt") for n in tar.getnames()) == 3
        assert not [n for n in tar.getnames() if n.endswith(".ckpt")]
