"""End-to-end runner tests through the CLI in subprocesses (slow: `make test-full`).

SIGKILL + resume, W&B offline id reuse, multirun layout, and 2-process gloo DDP (single run and inside a
multirun: Lightning relaunches each rank with the whole command line) on CPU.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_runner import make_corpus, tiny_overrides

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt", n_lines=3000)


def _env(**extra) -> dict:
    return {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO), **extra}


def _run(args, cwd, timeout=400, **env) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "halo_lab.train", *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _step_of(ckpt: Path) -> int:
    return int(torch.load(ckpt, weights_only=True, map_location="cpu")["global_step"])


def test_sigkill_then_resume_continues_from_last_checkpoint(tmp_path, corpus):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    args = [
        *tiny_overrides(corpus, steps=100000),
        "callbacks.last_checkpoint.every_n_train_steps=5",
        "trainer.val_check_interval=1000",
        "callbacks.samples.every_n_steps=0",
        "logger=wandb",
        "logger.wandb.mode=offline",
        f"hydra.run.dir={run_dir}",
    ]
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "halo_lab.train", *args],
        cwd=tmp_path,
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 300
        killed_at = None
        while time.time() < deadline and proc.poll() is None:
            # Atomic writes: whenever last.ckpt exists it is complete and loadable.
            if last.is_file() and _step_of(last) >= 15:
                proc.kill()  # SIGKILL: no handler, no cleanup
                proc.wait(timeout=30)
                killed_at = _step_of(last)
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert killed_at is not None, (tmp_path / "first.log").read_text()[-3000:]
    assert proc.returncode == -9
    assert not (run_dir / "metrics.json").exists()
    run_id = (run_dir / "wandb_run_id.txt").read_text().strip()

    target = killed_at + 10
    resumed = _run(
        [*args[:-1], f"trainer.max_steps={target}", "ckpt_path=auto", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
    )
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["steps"] == target, m
    assert m["steps_this_run"] == target - killed_at  # continued, not restarted from step 0
    assert m["resumed_from"] == str(last)
    assert "resuming from" in resumed.stdout + resumed.stderr
    # Same W&B run: the id file is unchanged and both offline run directories carry it.
    assert (run_dir / "wandb_run_id.txt").read_text().strip() == run_id
    offline = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(name.endswith(run_id) for name in offline), offline
    # Optimizer and scheduler state came back too: AdamW's per-parameter step count and the scheduler's
    # position count every step since step 0, not just the resumed ones.
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["lr_schedulers"][0]["last_epoch"] == target
    adam_steps = {int(st["step"]) for st in ckpt["optimizer_states"][0]["state"].values()}
    assert adam_steps == {target}


def test_resume_auto_in_a_fresh_directory_says_so(tmp_path, corpus):
    run_dir = tmp_path / "fresh"
    proc = _run(
        [*tiny_overrides(corpus, steps=2), "logger=none", "ckpt_path=auto", f"hydra.run.dir={run_dir}"],
        tmp_path,
    )
    assert "STARTING FROM STEP 0" in proc.stdout + proc.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 2


def tiny_experiment(conf_dir: Path, corpus: Path, steps: int) -> list[str]:
    """The tiny settings as an experiment in an extra config dir (short sweep directory names; also checks
    that --config-dir reaches the runner)."""
    import yaml

    body: dict = {}
    for o in tiny_overrides(corpus, steps):
        key, value = o.split("=", 1)
        if key in ("data", "trainer"):
            continue
        node = body
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    head = "# @package _global_\ndefaults:\n  - override /data: text\n  - override /trainer: debug\n"
    (conf_dir / "experiment").mkdir(parents=True, exist_ok=True)
    (conf_dir / "experiment" / "tiny_test.yaml").write_text(head + yaml.safe_dump(body))
    return ["-cd", str(conf_dir), "+experiment=tiny_test"]


def test_multirun_layout_and_no_overwrite(tmp_path, corpus):
    exp = tiny_experiment(tmp_path / "conf", corpus, steps=3)
    args = ["-m", *exp, "logger=wandb", "logger.wandb.mode=offline", "variant=halo,dense"]
    _run(args, tmp_path, HALO_LAB_ROOT=str(tmp_path))
    time.sleep(1.1)  # sweep directories are named by the second
    _run(args, tmp_path, HALO_LAB_ROOT=str(tmp_path))
    sweeps = sorted((tmp_path / "outputs" / "multirun" / "train").iterdir())
    assert len(sweeps) == 2
    for sweep in sweeps:
        jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
        assert [j.name for j in jobs] == ["variant=dense", "variant=halo"]
        ids = set()
        for job in jobs:
            m = json.loads((job / "metrics.json").read_text())
            assert m["arch"] in job.name and (job / "checkpoints" / "last.ckpt").is_file()
            ids.add((job / "wandb_run_id.txt").read_text().strip())
            assert len(list((job / "wandb").glob("offline-run-*"))) == 1  # one W&B run per job, not merged
        assert len(ids) == 2
    assert not (tmp_path / "outputs" / "train").exists()


DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


def test_ddp_two_cpu_processes_one_run_directory(tmp_path, corpus):
    _run([*tiny_overrides(corpus, steps=6), *DDP, "logger=csv"], tmp_path, HALO_LAB_ROOT=str(tmp_path))
    runs = list((tmp_path / "outputs" / "train").iterdir())
    assert len(runs) == 1, runs  # rank 1 joined rank 0's directory
    run_dir = runs[0]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["steps"] == 6
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))[-1] == "last.ckpt"
    assert len(list(tmp_path.rglob("metrics.json"))) == 1 and len(list(tmp_path.rglob(".hydra"))) == 1


def test_ddp_inside_a_multirun_runs_each_job_once(tmp_path, corpus):
    exp = tiny_experiment(tmp_path / "conf", corpus, steps=4)
    _run(["-m", *exp, *DDP, "logger=none", "seed=1,2"], tmp_path, HALO_LAB_ROOT=str(tmp_path))
    sweeps = list((tmp_path / "outputs" / "multirun" / "train").iterdir())
    assert len(sweeps) == 1  # ranks > 0 did not start sweeps of their own
    metrics = sorted(sweeps[0].rglob("metrics.json"))
    assert [p.parent.name for p in metrics] == [f"seed={i},{','.join(sorted(DDP))}" for i in (1, 2)]
    assert all(json.loads(p.read_text())["world_size"] == 2 for p in metrics)
    assert not (tmp_path / "outputs" / "train").exists()


def test_resume_from_a_bare_command_line_keeps_the_runs_config_and_record(tmp_path, corpus):
    """`hydra.run.dir=DIR ckpt_path=auto` (+ an extension) resumes the run as it was configured; .hydra/
    describes the run, launches.jsonl each launch; a second launch while the run holds the directory stops
    with one line naming the holder's pid and leaves .hydra/ as it was."""
    import yaml

    run_dir = tmp_path / "run"
    first = [*tiny_overrides(corpus, steps=3), "logger=none"]
    _run([*first, f"hydra.run.dir={run_dir}"], tmp_path)
    extend = ["ckpt_path=auto", "trainer.max_steps=5"]
    proc = _run([f"hydra.run.dir={run_dir}", *extend], tmp_path)
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["steps"] == 5 and m["steps_this_run"] == 2 and m["model_config"]["hidden_size"] == 32
    assert f"python -m halo_lab.train hydra.run.dir={run_dir} ckpt_path=auto" in proc.stdout
    hydra_dir = run_dir / ".hydra"
    overrides = yaml.safe_load((hydra_dir / "overrides.yaml").read_text())
    assert overrides == [o for o in first if o != "trainer.max_steps=3"] + extend
    cfg = yaml.safe_load((hydra_dir / "config.yaml").read_text())
    assert cfg["trainer"]["max_steps"] == 5 and cfg["data"]["path"] == str(corpus)
    hydra = yaml.safe_load((hydra_dir / "hydra.yaml").read_text())["hydra"]
    assert hydra["runtime"]["choices"]["data"] == "text" and hydra["overrides"]["task"] == overrides
    from halo_lab.runner.launches import read_launches

    assert [(x["command"], x["trained_from"]) for x in read_launches(run_dir)] == [(first, 0), (extend, 3)]

    code = (
        "import sys, time; from halo_lab.runner.lock import hold_run_dir; hold_run_dir(sys.argv[1]); "
        "print('held', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir)], env=_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = {p.name: p.read_text() for p in hydra_dir.iterdir()}
        second = subprocess.run(
            [sys.executable, "-m", "halo_lab.train", f"hydra.run.dir={run_dir}", "seed=7"],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2, second.stderr[-2000:]
    assert "Traceback" not in second.stderr
    assert re.search(
        rf"config error: hydra\.run\.dir={re.escape(str(run_dir))}: .*\bpid {holder.pid}\b", second.stderr
    )
    assert {p.name: p.read_text() for p in hydra_dir.iterdir()} == before
    assert len(read_launches(run_dir)) == 2
