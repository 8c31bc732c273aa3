"""Issue 28: a mistake of the user's or of the machine's is one line from `python -m halo_lab.train` that
names the key, file or path and says what to do, never a traceback; nothing lost, no empty run
directories left behind.

Unit tests where the decision is a function (config checks, the error line, W&B's fallback); the command
line (a subprocess, tiny model, CPU) where only the whole run shows it: a missing mandatory value, a
diverging loss, a full disk at the checkpoint write, a read-only run directory.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from halo_lab.runner import config as rc
from halo_lab.runner import rundir
from halo_lab.runner.config import ConfigError, compose_config, validate_config

REPO = Path(__file__).resolve().parents[1]
ONE_LINE = re.compile(r"^halo_lab\.train: [\w ]*error: ")


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    import random

    r = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog and the king sees the queen in her castle".split()
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(" ".join(r.choice(words) for _ in range(r.randint(4, 10))) for _ in range(600)))
    return path


def tiny(corpus: Path, steps: int = 6) -> list[str]:
    return [
        "data=text",
        f"data.path={corpus}",
        "data.seq_len=32",
        "data.batch_size=4",
        "model.hidden_size=32",
        "model.num_layers=1",
        "model.num_heads=2",
        "model.num_kv_heads=1",
        "model.max_seq_len=64",
        "model.local_window=8",
        "model.dilated_offsets=[1,2]",
        "trainer=debug",
        f"trainer.max_steps={steps}",
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=1",
        "logger=none",
        "callbacks.samples=null",
        "callbacks.last_checkpoint.every_n_train_steps=3",
        "sample.max_new_tokens=4",
        "scheduler.warmup_steps=1",
    ]


def cli(args: list[str], cwd: Path, prelude: str = "", timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m halo_lab.train ARGS`, or with ``prelude`` (Python run first: a monkeypatch) the same
    main through ``python -c``."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    if prelude:
        code = f"{prelude}\nimport sys\nfrom halo_lab.train import main\nsys.argv[0] = 'halo_lab.train'\nmain()\n"
        cmd = [sys.executable, "-c", code, *args]
    else:
        cmd = [sys.executable, "-m", "halo_lab.train", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def assert_one_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The run failed with exactly one line of its own, naming every needle, and no traceback."""
    assert proc.returncode != 0, proc.stderr[-3000:]
    err = proc.stderr
    assert "Traceback" not in err and "Error executing job" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ONE_LINE.match(ln)]
    assert len(lines) == 1, err[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------- 1. ???
@pytest.mark.parametrize("option", ["text", "jsonl", "streaming"])
def test_a_missing_mandatory_value_names_the_full_key(option, tmp_path):
    cfg = compose_config([f"data={option}"], output_dir=tmp_path)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    msg = str(err.value)
    assert msg.startswith("data.path: ") and f"data={option}" in msg and "data.path=/path/" in msg
    assert "\n" not in msg


def test_every_mandatory_value_of_the_train_config_is_checked(tmp_path):
    """Every `???` under conf/ that the train config can select: the check is generic (OmegaConf's
    missing keys, Hydra's own node aside), so a new one is covered without a line of code."""
    conf = rc.conf_dir()
    found = {
        p.relative_to(conf).parts[0] for p in conf.rglob("*.yaml") if re.search(r":\s*\?\?\?", p.read_text())
    }
    assert found <= {"data", "eval.yaml"}, found  # eval.yaml: `source`, halo_lab.eval's
    cfg = compose_config(["data=text", "data.path=x.txt", "+trainer.extra=???"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^trainer\.extra: no value given .*; set trainer\.extra=VALUE$"):
        validate_config(cfg)


def test_missing_data_path_on_the_command_line_is_one_line_and_leaves_no_run_dir(tmp_path):
    root = Path(os.environ["HALO_LAB_ROOT"])  # conftest: a fresh one per test; outputs/ go under it
    proc = cli(["data=text", "logger=none"], tmp_path)
    line = assert_one_line(proc, "config error: data.path: ", "data.path=")
    assert proc.returncode == 2, line
    runs = root / "outputs" / "train"
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())  # issue 28.6: none left


# ---------------------------------------------------------------------------------------------- 6. run dirs
def _hydra_run_dir(tmp_path: Path) -> tuple[Path, str]:
    from hydra.core.hydra_config import HydraConfig

    run_dir = tmp_path / "run"
    compose_config([], output_dir=run_dir)
    (run_dir / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (run_dir / ".hydra" / name).write_text("{}\n")
    log = f"{HydraConfig.get().job.name}.log"
    (run_dir / log).write_text("[INFO] - a line\n")
    return run_dir, log


def test_a_run_dir_with_only_hydra_files_is_removed_only_when_this_run_made_it(tmp_path, monkeypatch):
    run_dir, _ = _hydra_run_dir(tmp_path)
    compose_config([], output_dir=run_dir)
    assert not rundir.remove_untouched_run_dir() and run_dir.is_dir()  # it existed before this run
    monkeypatch.setattr(rundir, "_CREATED_RUN_DIRS", {str(run_dir.resolve())})
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    assert not rundir.remove_untouched_run_dir() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    (run_dir / "checkpoints" / "last.ckpt").unlink()
    (run_dir / "checkpoints").rmdir()
    (run_dir / ".hydra" / "notes.txt").write_text("mine")  # a user's file, even inside .hydra/
    assert not rundir.remove_untouched_run_dir() and run_dir.is_dir()
    (run_dir / ".hydra" / "notes.txt").unlink()
    assert rundir.remove_untouched_run_dir() and not run_dir.exists()


def test_a_new_run_dir_with_this_launchs_lock_and_launch_line_is_removed_but_not_another_runs(
    tmp_path, monkeypatch
):
    """The runner's lock (.run.lock) and launch record (launches.jsonl) are written before the config is
    checked: in a directory this run made they are its own and go with it; a lock this process does not
    hold is another live run's, whose directory stays."""
    from halo_lab.runner import lock
    from halo_lab.runner.launches import LAUNCHES

    run_dir, _ = _hydra_run_dir(tmp_path)
    monkeypatch.setattr(rundir, "_CREATED_RUN_DIRS", {str(run_dir.resolve())})
    (run_dir / LAUNCHES).write_text('{"launch": 1, "command": [], "overrides": []}\n')
    (run_dir / lock.LOCK_NAME).write_text('{"pid": 1}\n')  # not this process's: another run holds it
    assert not rundir.remove_untouched_run_dir() and run_dir.is_dir()
    lock.hold_run_dir(run_dir)
    try:
        assert lock.holds(run_dir)
        assert rundir.remove_untouched_run_dir() and not run_dir.exists()
        assert not lock.holds(run_dir)  # released with its directory
    finally:
        lock.release()


# ---------------------------------------------------------------------------------------------- 4. device
def test_a_gpu_profile_without_a_gpu_is_a_config_error_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_config(["device=h100"], output_dir=tmp_path)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    msg = str(err.value)
    assert msg.startswith("device=h100: ") and "no CUDA GPU here" in msg
    assert msg.endswith("use device=auto or device=cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert validate_config(compose_config(["device=h100"], output_dir=tmp_path))["device"]["name"] == "h100"
    assert validate_config(compose_config(["device=cpu"], output_dir=tmp_path))["device"]["name"] == "cpu"


def test_tiktoken_on_a_cpu_warns_with_the_size(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="halo_lab.train")
    validate_config(compose_config(["data=jsonl", "data.path=x.jsonl", "device=cpu"], output_dir=tmp_path))
    assert "tiktoken" not in caplog.text  # data=jsonl's default tokenizer is the byte-level one now
    validate_config(
        compose_config(["data=jsonl", "data.path=x", "data.tokenizer=tiktoken", "device=cpu"], tmp_path)
    )
    assert "data.tokenizer=tiktoken on a CPU: " in caplog.text and "~26M embedding" in caplog.text


# ---------------------------------------------------------------------------------------------- 2. divergence
POISON = """
import lightning.pytorch as pl, torch
class Poison(pl.Callback):
    # The weights become NaN before step 4: the loss of that step is not finite.
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 4:
            with torch.no_grad():
                next(pl_module.model.parameters()).fill_(float("nan"))
"""


def test_a_diverging_run_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, corpus):
    run_dir = tmp_path / "run"
    args = [*tiny(corpus), "+callbacks.poison._target_=__main__.Poison", f"hydra.run.dir={run_dir}"]
    proc = cli(args, tmp_path, prelude=POISON)
    line = assert_one_line(proc, "training error: the loss diverged", "(nan) at step 4", "lower optimizer.lr")
    assert proc.returncode == 1
    last = run_dir / "checkpoints" / "last.ckpt"
    assert f"the last checkpoint from before it is kept: {last}" in line
    ck = torch.load(last, map_location="cpu", weights_only=True)
    assert ck["global_step"] == 3
    assert all(torch.isfinite(t).all() for t in ck["state_dict"].values() if t.is_floating_point())


def test_the_divergence_line_names_the_learning_rate_and_what_to_try():
    from types import SimpleNamespace

    from halo_lab.runner.module import HaloLitModule

    module = HaloLitModule({"vocab_size": 32, "hidden_size": 32, "num_layers": 1, "num_heads": 2},
                           optimizer={"_target_": "torch.optim.AdamW", "lr": 1e6})  # fmt: skip
    assert module._divergence_advice() == "lower optimizer.lr (now 1e+06) or check the data"
    module._trainer = SimpleNamespace(precision="bf16-mixed")
    assert module._divergence_advice().endswith(
        ", check the data or use device.precision=32 (now bf16-mixed)"
    )


# ---------------------------------------------------------------------------------------------- 3. disk full
def _full_disk_torch_save(monkeypatch) -> None:
    """torch.save into a file whose writes fail with ENOSPC: torch raises its own RuntimeError
    (``[enforce fail at inline_container.cc] ... unexpected pos``) with the OSError as its context."""
    real = torch.save

    class Full(io.RawIOBase):  # room for the first record, none for the rest
        written = 0

        def writable(self):
            return True

        def write(self, b):
            self.written += len(b)
            if self.written > 100:
                raise OSError(errno.ENOSPC, "No space left on device")
            return len(b)

    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: real(obj, Full(), *a, **k))


def test_no_space_at_the_checkpoint_write_names_the_checkpoint(tmp_path, monkeypatch):
    from halo_lab.runner.checkpointing import AtomicCheckpointIO
    from halo_lab.runner.user_errors import user_error

    _full_disk_torch_save(monkeypatch)
    target = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(RuntimeError) as err:
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(1000)}, target)
    assert "unexpected pos" in str(err.value)  # torch's own message: the ENOSPC is only its context
    line, code = user_error(err.value)
    assert line.startswith(f"disk error: no space left on device writing {target}; ") and code == 1
    assert list(target.parent.iterdir()) == []  # no half-written temp file left


def test_no_space_at_the_metrics_and_history_writes_names_the_file(tmp_path, monkeypatch):
    from halo_lab.runner.progress import MetricsHistory
    from halo_lab.runner.user_errors import user_error
    from halo_lab.utils import atomic_write_text

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError) as err:
        atomic_write_text(tmp_path / "metrics.json", "{}")
    assert user_error(err.value)[0].startswith(
        f"disk error: no space left on device writing {tmp_path / 'metrics.json'}"
    )

    class FullFile(io.StringIO):
        name = str(tmp_path / "history.jsonl")

        def write(self, s):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "open", lambda self, *a, **k: FullFile())
    with pytest.raises(OSError) as err:
        MetricsHistory(str(tmp_path / "history.jsonl"))._write({"step": 1})
    assert f"writing {tmp_path / 'history.jsonl'};" in user_error(err.value)[0]
    assert user_error(RuntimeError("a bug")) is None  # anything else keeps its traceback


def test_a_full_disk_after_a_checkpoint_names_the_command_that_resumes(tmp_path):
    """The disk line's resume hint is the runner's resume command: the whole command line, quoted for
    Hydra where the run directory needs it (a sweep job's commas), nothing else to retype."""
    from halo_lab.runner.launches import resume_command
    from halo_lab.runner.user_errors import user_error

    run_dir = tmp_path / "seed=2,variant=dense"
    cfg = compose_config([], output_dir=run_dir)
    full = OSError(errno.ENOSPC, "No space left on device", str(run_dir / "metrics.json"))
    line, code = user_error(full, cfg)
    assert code == 1 and "then resume" not in line  # no checkpoint yet: nothing to resume
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    line, code = user_error(full, cfg)
    assert line.endswith(f"; then resume: {resume_command(run_dir)}") and code == 1
    assert "'hydra.run.dir=" in line and "ckpt_path=auto" in line


def test_a_full_disk_during_the_run_is_one_line(tmp_path, corpus):
    prelude = """
import errno, io, torch
real = torch.save
class Full(io.RawIOBase):
    written = 0
    def writable(self):
        return True
    def write(self, b):
        self.written += len(b)
        if self.written > 100:
            raise OSError(errno.ENOSPC, "No space left on device")
        return len(b)
torch.save = lambda obj, f, *a, **k: real(obj, Full(), *a, **k)
"""
    run_dir = tmp_path / "run"
    proc = cli([*tiny(corpus), f"hydra.run.dir={run_dir}"], tmp_path, prelude=prelude)
    assert_one_line(
        proc, f"disk error: no space left on device writing {run_dir / 'checkpoints' / 'last.ckpt'}"
    )
    assert proc.returncode == 1
    assert not [p for p in (run_dir / "checkpoints").iterdir() if ".tmp" in p.name]


# ---------------------------------------------------------------------------------------------- 3. read-only
READ_ONLY = """
import builtins, os
RO = {ro!r}
def _ro(path):
    return os.path.abspath(os.fsdecode(path)).startswith(RO)
def _deny(real):
    def call(path, *a, **k):
        if not isinstance(path, int) and _ro(path):
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real(path, *a, **k)
    return call
os.open, os.mkdir, builtins.open = _deny(os.open), _deny(os.mkdir), _deny(builtins.open)
"""


def test_a_read_only_run_dir_is_one_line_naming_it(tmp_path, corpus):
    """Simulated (tests run as root, where chmod does not bite): every open or mkdir under the directory
    fails with EACCES, as Hydra's log file would."""
    run_dir = tmp_path / "ro" / "run"
    run_dir.mkdir(parents=True)
    proc = cli(
        [*tiny(corpus), f"hydra.run.dir={run_dir}"], tmp_path, prelude=READ_ONLY.format(ro=str(run_dir))
    )
    line = assert_one_line(
        proc, f"run directory error: cannot write the run directory {run_dir}", "hydra.run.dir="
    )
    assert "Permission denied" in line and proc.returncode == 2
    assert "Unable to configure handler" not in proc.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod")
def test_a_chmod_read_only_run_dir_is_one_line(tmp_path, corpus):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_dir.chmod(0o555)
    try:
        proc = cli([*tiny(corpus), f"hydra.run.dir={run_dir}"], tmp_path)
    finally:
        run_dir.chmod(0o755)
    assert_one_line(proc, f"run directory error: cannot write the run directory {run_dir}")


def test_unwritable_reason(tmp_path, monkeypatch):
    assert rundir.unwritable_reason(tmp_path / "a" / "b") is None  # made later, in a writable parent
    (tmp_path / "file").write_text("x")
    assert "is not a directory" in rundir.unwritable_reason(tmp_path / "file" / "run")
    real = rundir.tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if str(dir).startswith(str(tmp_path)):
            raise PermissionError(13, "Permission denied")
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(rundir.tempfile, "mkstemp", mkstemp)
    assert rundir.unwritable_reason(tmp_path / "run") == f"{tmp_path}: Permission denied"


# ---------------------------------------------------------------------------------------------- 5. W&B
def test_wandb_online_without_network_falls_back_to_offline_quickly(tmp_path, monkeypatch, caplog):
    from halo_lab.runner import wandb_run

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    calls = []

    def no_network(address, timeout=None):
        calls.append((address, timeout))
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    caplog.set_level(logging.WARNING, logger="halo_lab.train")
    sub = OmegaConf.create({"mode": None, "id": None, "name": None})
    t0 = time.time()
    wandb_run.fill_wandb_logger(sub, tmp_path, None, "run")
    assert sub.mode == "offline" and time.time() - t0 < 2
    assert calls and calls[0][0] == ("api.wandb.ai", 443) and calls[0][1] <= wandb_run.WANDB_CHECK_TIMEOUT_S
    assert (
        "does not answer (" in caplog.text
        and "logging offline" in caplog.text
        and "wandb sync" in caplog.text
    )

    monkeypatch.setattr(socket, "create_connection", lambda address, timeout=None: socket.socket())
    sub = OmegaConf.create({"mode": None, "id": None, "name": None})
    wandb_run.fill_wandb_logger(sub, tmp_path, None, "run")
    assert sub.mode == "online"  # a server that answers: online as configured


def test_wandb_check_never_waits_longer_than_its_timeout(monkeypatch):
    from halo_lab.runner import wandb_run

    monkeypatch.setattr(
        socket, "create_connection", lambda address, timeout=None: time.sleep(2) or socket.socket()
    )
    t0 = time.time()
    assert wandb_run.wandb_unreachable(timeout=0.2) == "no answer in 0.2 s"
    assert time.time() - t0 < 1.5


def test_wandb_logger_passes_no_anonymous_setting(tmp_path):
    from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger

    from halo_lab.runner.wandb_run import WandbLogger

    logger = WandbLogger(project="p", save_dir=str(tmp_path), mode="disabled")
    assert isinstance(logger, LightningWandbLogger) and "anonymous" not in logger._wandb_init
    assert WandbLogger(save_dir=str(tmp_path), anonymous=True)._wandb_init["anonymous"] == "allow"
    target = compose_config(["logger=wandb"], output_dir=tmp_path).logger.wandb._target_
    assert target == "halo_lab.runner.wandb_run.WandbLogger"


def test_closing_wandb_cannot_turn_a_one_line_error_into_a_traceback(monkeypatch, caplog):
    """main's `finally` closes W&B after the error line: a full disk there must not raise over it."""
    import types

    from halo_lab.runner.wandb_run import finish_wandb

    def finish(exit_code):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(run=object(), finish=finish))
    caplog.set_level(logging.WARNING, logger="halo_lab.train")
    finish_wandb(failed=True)
    assert "W&B: closing the run failed ([Errno 28] No space left on device)" in caplog.text
