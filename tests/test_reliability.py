"""Reliability: resume at every point, safe checkpoint loading, one-line errors for bad input, no kill
leftovers (issue 16). The kill-and-resume tests in subprocesses are marked slow (`make test-full`)."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from halo_lab.runner.config import ConfigError, compose_config

REPO = Path(__file__).resolve().parents[1]
BATCHES_PER_EPOCH = 6


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


class BatchRecorder(pl.Callback):
    """Appends (step, epoch, batch index, hash of the batch) of every training batch to a JSON-lines file."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x = batch["input_ids"] if isinstance(batch, dict) else batch[0]
        h = hashlib.sha1(x.detach().cpu().numpy().tobytes()).hexdigest()[:16]
        rec = {"step": trainer.global_step, "epoch": trainer.current_epoch, "idx": batch_idx, "h": h}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")


class CrashAt(pl.Callback):
    """Stops the process's training abruptly (as a kill would) when step ``step`` is about to start."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise _Crash(f"simulated crash at step {self.step}")


class _Crash(RuntimeError):
    pass


class SleepAt(pl.Callback):
    """Sleeps before step ``step`` (a window for the slow tests' SIGKILL)."""

    def __init__(self, step: int, seconds: float):
        self.step, self.seconds = step, seconds

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            time.sleep(self.seconds)


def effective(path: Path) -> dict[int, dict]:
    """step -> the batch that step finally trained (a resumed run re-trains steps after its checkpoint)."""
    out: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        out[r["step"]] = r
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """1,800 bytes: with seq_len 32, batch 8 and a 10% held-out part, 6 training batches per epoch."""
    import random

    r = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog and the king sees the queen in her castle".split()
    text = ""
    while len(text) < 1800:
        text += " ".join(r.choice(words) for _ in range(r.randint(4, 10))) + "\n"
    p = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    p.write_text(text[:1800])
    return p


def tiny(corpus: Path, steps: int, rec: Path | None = None, *extra: str) -> list[str]:
    out = [
        "data=text",
        f"data.path={corpus}",
        "data.seq_len=32",
        "data.batch_size=8",
        "model.hidden_size=32",
        "model.num_layers=1",
        "model.num_heads=2",
        "model.num_kv_heads=1",
        "model.max_seq_len=64",
        "model.local_window=8",
        "model.dilated_offsets=[1,2]",
        "trainer=debug",
        "trainer.accelerator=cpu",
        f"trainer.max_steps={steps}",
        "trainer.val_check_interval=1000",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "logger=none",
        "callbacks.samples=null",
        "callbacks.last_checkpoint.every_n_train_steps=3",
        "export_hub=false",
        "scheduler.warmup_steps=2",
    ]
    if rec is not None:
        out += [f"+callbacks.rec._target_={__name__}.BatchRecorder", f"+callbacks.rec.path={rec}"]
    return out + list(extra)


def run(overrides: list[str], run_dir: Path) -> dict:
    from halo_lab.train import run as train_run

    cfg = compose_config(overrides, output_dir=run_dir)
    return train_run(cfg)


# A resume with ckpt_path=auto runs the run's own overrides (its launches.jsonl) with the command line's on
# top: it drops the crash the first launch added.
NO_CRASH = "++callbacks.crash=null"


def crash(overrides: list[str], run_dir: Path, step: int) -> None:
    with pytest.raises(_Crash):
        run(
            [*overrides, f"+callbacks.crash._target_={__name__}.CrashAt", f"+callbacks.crash.step={step}"],
            run_dir,
        )


@pytest.fixture(scope="module")
def straight(tmp_path_factory, corpus) -> dict[int, dict]:
    """An uninterrupted 15-step run (two and a half epochs)."""
    d = tmp_path_factory.mktemp("straight")
    run(tiny(corpus, 15, d / "rec.jsonl"), d / "run")
    rec = effective(d / "rec.jsonl")
    assert len(rec) == 15 and rec[BATCHES_PER_EPOCH]["epoch"] == 1  # the corpus gives 6 batches an epoch
    return rec


# ---------------------------------------------------------------------------------------------- 1. epoch end
def test_resume_from_the_final_checkpoint_at_an_epoch_end(tmp_path, corpus, straight):
    rec, d = tmp_path / "rec.jsonl", tmp_path / "run"
    run(tiny(corpus, BATCHES_PER_EPOCH, rec), d)  # ends exactly at the epoch's end
    run(tiny(corpus, 15, rec, "ckpt_path=auto"), d)
    assert effective(rec) == straight  # the same batch, epoch and batch index at every step


def test_resume_after_a_kill_right_after_the_epoch_end_checkpoint(tmp_path, corpus, straight):
    rec, d = tmp_path / "rec.jsonl", tmp_path / "run"
    crash(tiny(corpus, 15, rec), d, step=BATCHES_PER_EPOCH + 1)  # last.ckpt at step 6 (every 3 steps)
    run(tiny(corpus, 15, rec, "ckpt_path=auto", NO_CRASH), d)
    assert effective(rec) == straight


def test_epoch_based_resume_goes_on_with_the_next_epochs_order(tmp_path, corpus):
    epochs = ["trainer.max_steps=-1", "callbacks.last_checkpoint.every_n_train_steps=0"]
    rec_a, rec_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    run(tiny(corpus, 1, rec_a, *epochs, "trainer.max_epochs=3"), tmp_path / "a")
    run(tiny(corpus, 1, rec_b, *epochs, "trainer.max_epochs=1"), tmp_path / "b")
    run(tiny(corpus, 1, rec_b, *epochs, "trainer.max_epochs=3", "ckpt_path=auto"), tmp_path / "b")
    a, b = effective(rec_a), effective(rec_b)
    assert len(a) == 3 * BATCHES_PER_EPOCH
    assert [r["h"] for r in b.values()] == [r["h"] for r in a.values()]


def test_loader_position_is_the_same_whenever_it_is_saved():
    """Saved after any number of batches (epoch ends included), the position resumes the same sequence."""
    from halo_lab.data.resumable import ResumableDataLoader

    def loader():
        g = torch.Generator().manual_seed(0)
        return ResumableDataLoader(list(range(12)), batch_size=2, shuffle=True, drop_last=True, generator=g)

    ld = loader()
    straight = [b.tolist() for _ in range(3) for b in ld]
    for stop in range(1, len(straight)):
        a, seen = loader(), []
        while len(seen) < stop:  # the trainer takes len(loader) batches of each iterator
            for i, batch in enumerate(a):
                seen.append(batch.tolist())
                if len(seen) == stop or i == len(a) - 1:
                    break
        b = loader()
        b.load_state_dict(a.state_dict())
        rest: list = []
        while len(seen) + len(rest) < len(straight):
            rest += [x.tolist() for x in b]
        assert seen + rest[: len(straight) - len(seen)] == straight, stop


# ---------------------------------------------------------------------------------------------- 2. no-op resume
def test_noop_resume_leaves_the_run_as_it_was_then_extends_exactly(tmp_path, corpus, straight, capfd):
    rec, d = tmp_path / "rec.jsonl", tmp_path / "run"
    run(tiny(corpus, 9, rec), d)
    last, metrics = d / "checkpoints" / "last.ckpt", d / "metrics.json"
    before = (last.read_bytes(), metrics.read_bytes())
    result = run(tiny(corpus, 9, rec, "ckpt_path=auto"), d)
    assert "nothing to train" in capfd.readouterr().err
    assert (last.read_bytes(), metrics.read_bytes()) == before
    assert result["steps"] == 9 and result["train_loss"] is not None
    run(tiny(corpus, 15, rec, "ckpt_path=auto"), d)
    assert effective(rec) == straight


def test_resume_after_a_kill_during_the_final_validation_finishes_the_run(tmp_path, corpus):
    rec, d = tmp_path / "rec.jsonl", tmp_path / "run"
    run(tiny(corpus, 6, rec), d)
    (d / "metrics.json").unlink()  # as if killed after the last step, before metrics.json
    result = run(tiny(corpus, 6, rec, "ckpt_path=auto"), d)
    assert json.loads((d / "metrics.json").read_text())["steps"] == 6
    assert result["val_loss"] is not None and result["train_loss"] is not None


def test_unused_streaming_loader_keeps_its_restored_position(tmp_path):
    from halo_lab.data.streaming import StreamingDataLoader, StreamingDataset
    from halo_lab.tokenizers import CharacterTokenizer

    p = tmp_path / "s.txt"
    p.write_text("some text to stream\n" * 200)
    ds = StreamingDataset(p, CharacterTokenizer(), 16, 0, file_format="txt", rank=0, world_size=1)
    loader = StreamingDataLoader(ds, batch_size=2)
    state = {"epoch": 1, "batches": 7, "batch_size": 2, "num_workers": 0, "seed": 0}
    loader.load_state_dict(state)
    assert loader.state_dict() == state


# ---------------------------------------------------------------------------------------------- 3. weights_only
class _Payload:
    """Unpickling it creates a file: the proof that a checkpoint ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def _evil(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "x": _Payload(marker)}, path)
    return path, marker


def test_malicious_checkpoint_never_runs_under_force_no_weights_only(tmp_path, corpus, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    evil, marker = _evil(tmp_path)
    for extra, d in (([], "run"), (["train=false"], "run2")):  # fit(ckpt_path=...) and validate(...)
        with pytest.raises(Exception) as exc:
            run(tiny(corpus, 4, None, f"ckpt_path={evil}", *extra), tmp_path / d)
        assert not marker.exists(), "the checkpoint's payload ran"
        assert exc.type is ConfigError
        assert re.search(r"ckpt_path=.*evil\.ckpt: .*not allowed.*weights_only=True", str(exc.value))


def test_trainer_loads_pass_weights_only_themselves(tmp_path, monkeypatch):
    """Lightning's own loads (fit / validate with ckpt_path) go through the plugin, which refuses code."""
    # Every torch.load / fit / validate with a checkpoint in the package passes weights_only=True itself.
    import ast

    calls, missing = 0, []
    for f in (REPO / "halo_lab").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            name, kw = node.func.attr, {k.arg: k.value for k in node.keywords}
            owner = node.func.value
            loads = name == "load" and isinstance(owner, ast.Name) and owner.id == "torch"
            loads = loads or name == "load_from_checkpoint"
            loads = loads or (name in ("fit", "validate", "test") and "ckpt_path" in kw)
            if not loads:
                continue
            calls += 1
            wo = kw.get("weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                missing.append(f"{f.relative_to(REPO)}:{node.lineno}")
    assert calls >= 4 and not missing, missing
    # Lightning's load passes through the runner's plugin, which refuses code whatever it is asked.
    from halo_lab.checkpoint.integrity import CheckpointFileError
    from halo_lab.runner.checkpointing import AtomicCheckpointIO

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    evil, marker = _evil(tmp_path)
    with pytest.raises(CheckpointFileError, match="not allowed"):
        AtomicCheckpointIO().load_checkpoint(evil, weights_only=False)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- 4. one-line errors
def test_vocab_size_below_the_tokenizers_is_one_line(tmp_path, corpus):
    with pytest.raises(ConfigError, match=r"model\.vocab_size=100: smaller than the data's vocabulary \(256"):
        run(tiny(corpus, 2, None, "model.vocab_size=100"), tmp_path / "run")


@pytest.mark.parametrize("kind", ["empty", "random", "truncated", "text"])
def test_unreadable_checkpoint_is_one_line(tmp_path, corpus, kind):
    bad = tmp_path / f"{kind}.ckpt"
    if kind == "empty":
        bad.write_bytes(b"")
    elif kind == "random":
        bad.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        torch.save({"w": torch.randn(4096)}, bad)
        bad.write_bytes(bad.read_bytes()[:6000])
    else:
        bad.write_text("not a checkpoint\n" * 20)
    with pytest.raises(ConfigError, match=rf"^ckpt_path=.*{kind}\.ckpt: .*(start fresh|ckpt_path=null)"):
        run(tiny(corpus, 2, None, f"ckpt_path={bad}"), tmp_path / "run")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus) -> Path:
    d = tmp_path_factory.mktemp("trained") / "run"
    run(tiny(corpus, 3), d)
    return d / "checkpoints" / "last.ckpt"


def test_resume_with_another_model_size_is_one_line(tmp_path, corpus, trained):
    with pytest.raises(ConfigError, match=r"model\.hidden_size=64 \(checkpoint: 32\).*fresh run"):
        run(tiny(corpus, 6, None, f"ckpt_path={trained}", "model.hidden_size=64"), tmp_path / "run")
    with pytest.raises(ConfigError, match=r"module\.arch=halo model, this run is module\.arch=dense"):
        run(tiny(corpus, 6, None, f"ckpt_path={trained}", "variant=dense"), tmp_path / "run")


def test_resume_with_another_tokenizer_is_one_line(tmp_path, corpus, trained):
    with pytest.raises(ConfigError, match=r"trained with the char tokenizer, this run's data gives the word"):
        run(tiny(corpus, 6, None, f"ckpt_path={trained}", "data.tokenizer=word"), tmp_path / "run")


def test_checkpoint_errors_on_the_command_line_are_one_line(tmp_path, corpus):
    bad = tmp_path / "empty.ckpt"
    bad.write_bytes(b"")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "halo_lab.train",
        *tiny(corpus, 2),
        f"ckpt_path={bad}",
        f"hydra.run.dir={tmp_path}/r",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert re.search(r"config error: ckpt_path=.*empty\.ckpt: an empty file", proc.stderr)


# ---------------------------------------------------------------------------------------------- 5. silent accepts
def test_window_covering_the_sequence_is_an_error_unless_asked_for(tmp_path, corpus, caplog):
    from halo_lab.config import HaloConfig

    with pytest.raises(ValueError, match=r"local_window=64: covers the whole sequence \(max_seq_len=64\)"):
        HaloConfig(max_seq_len=64, local_window=64)
    assert HaloConfig(max_seq_len=64, local_window=64, allow_full_window=True).local_window == 64
    with pytest.warns(UserWarning, match="covers the whole sequence"):  # saved before the rule: loads
        assert HaloConfig.from_dict({"max_seq_len": 32, "local_window": 64}).allow_full_window
    with pytest.raises(ConfigError, match=r"^model\.local_window=64: covers the whole sequence"):
        run(tiny(corpus, 2, None, "model.local_window=64"), tmp_path / "run")
    from halo_lab.runner.config import validate_config

    with caplog.at_level("WARNING", logger="halo_lab.train"):
        validate_config(compose_config(tiny(corpus, 2, None, "model.local_window=32"), output_dir=tmp_path))
    assert "covers every training sequence (data.seq_len=32)" in caplog.text


def test_whitespace_only_text_with_the_word_tokenizer_is_an_error(tmp_path):
    from halo_lab.data import HaloDataModule

    p = tmp_path / "blank.txt"
    p.write_text(" \n\t  \n" * 500)
    dm = HaloDataModule(dataset="text", path=p, tokenizer="word", seq_len=16, batch_size=2, data_dir=tmp_path)
    with pytest.raises(ValueError, match=r"blank\.txt: .*only whitespace"):
        dm.prepare_data()


def test_binary_file_as_text_is_refused(tmp_path, corpus):
    elf = tmp_path / "program.txt"
    shutil.copyfile(sys.executable if Path(sys.executable).stat().st_size < 50_000_000 else "/bin/ls", elf)
    if b"\0" not in elf.read_bytes()[:65536]:
        elf.write_bytes(b"\x7fELF\x02\x01\x01\0" + os.urandom(4096))
    with pytest.raises(ConfigError, match=r"^data: .*program\.txt looks like a binary file: a NUL byte"):
        run(tiny(corpus, 2, None, f"data.path={elf}"), tmp_path / "run")
    from halo_lab.data.datasets import TextDataset

    with pytest.raises(ValueError, match="binary"):
        TextDataset(elf, "char", 8, cache_dir=tmp_path / "c")


def test_flipped_bit_in_a_checkpoint_is_detected(tmp_path, corpus, trained):
    ck = torch.load(trained, weights_only=True)
    data = bytearray(trained.read_bytes())
    w = ck["state_dict"]["model.lm_head.weight"] if "model.lm_head.weight" in ck["state_dict"] else None
    at = len(data) // 2
    if w is not None:  # flip a bit inside a weight tensor's bytes
        raw = w.numpy().tobytes()
        at = data.find(raw[:64]) + 32
    data[at] ^= 0x04
    flipped = tmp_path / "flipped.ckpt"
    flipped.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"ckpt_path=.*flipped\.ckpt: checksum mismatch"):
        run(tiny(corpus, 6, None, f"ckpt_path={flipped}"), tmp_path / "run")
    from halo_lab.hub import load_from_hub

    with pytest.raises(ValueError, match="checksum mismatch"):  # the weights readers check it too
        load_from_hub(str(flipped))
    from halo_lab.checkpoint.integrity import CHECKSUM_KEY, checkpoint_checksum

    assert ck[CHECKSUM_KEY]["sha256"] == checkpoint_checksum(ck)  # the intact file verifies


# ---------------------------------------------------------------------------------------------- 6. leftovers
def test_kill_leftovers_are_removed_at_the_next_start(tmp_path, corpus):
    d = tmp_path / "run"
    run(tiny(corpus, 3), d)
    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    ck = d / "checkpoints"
    junk = [
        ck / f".last.ckpt.tmp-{dead}-abcd1234",
        ck / ".last.ckpt.tmp-k3j2h1xx",  # the name before pids were part of it
        d / f".metrics.json.tmp{dead}",
    ]
    for j in junk:
        j.write_bytes(b"x" * 1000)
    alive = ck / f".last.ckpt.tmp-{os.getppid()}-live0000"  # a live writer's file stays
    alive.write_bytes(b"x")
    cache = Path(os.environ["HALO_LAB_ROOT"]) / "data" / "cache"
    stale_bin = cache / f"corpus-{'0' * 16}.bin.tmp{dead}"
    stale_meta = cache / f"corpus-{'0' * 16}.json.tmp{dead}.1"
    stale_bin.write_bytes(b"x" * 1000)
    stale_meta.write_text("{")
    old = time.time() - 3600
    os.utime(stale_meta, (old, old))
    run(tiny(corpus, 6, None, "ckpt_path=auto"), d)
    assert not any(j.exists() for j in junk)
    assert alive.exists()
    assert not stale_bin.exists() and not stale_meta.exists()


def test_save_top_k_holds_after_a_kill(tmp_path, corpus):
    """Killed after a new best replaced the old one but before last.ckpt recorded it: the resumed run
    must still keep exactly one best file."""
    d = tmp_path / "run"
    val = [
        "trainer.val_check_interval=2",
        "callbacks.last_checkpoint.every_n_train_steps=2",
    ]
    crash(tiny(corpus, 12, None, *val), d, step=5)  # last.ckpt at 4 (before step 4's validation)
    best = sorted((d / "checkpoints").glob("best-step*.ckpt"))
    assert [p.name for p in best] == ["best-step000004.ckpt"]
    run(tiny(corpus, 12, None, *val, "ckpt_path=auto", NO_CRASH), d)
    best = sorted((d / "checkpoints").glob("best-step*.ckpt"))
    assert len(best) == 1, [p.name for p in best]


# ---------------------------------------------------------------------------------------------- 7. streaming
def _jsonl(path: Path, bad_at: int | None, n: int = 300) -> Path:
    rows = [json.dumps({"text": f"document {i}: " + "words and more words " * 3}) for i in range(n)]
    if bad_at is not None:
        rows[bad_at - 1] = '{"text": 7}'
    path.write_text("\n".join(rows) + "\n")
    return path


def test_streaming_jsonl_bad_line_is_reported_up_front(tmp_path):
    from halo_lab.data import HaloDataModule

    p = _jsonl(tmp_path / "mid.jsonl", bad_at=250)
    dm = HaloDataModule(dataset="streaming", path=p, seq_len=16, batch_size=2, data_dir=tmp_path)
    with pytest.raises(ValueError, match=r"mid\.jsonl:250: field 'text' is int.*skip_bad_lines=True"):
        dm.setup("fit")  # before the first batch, not when the stream reaches line 250


def test_streaming_skip_bad_lines_counts_once_and_a_resume_goes_past(tmp_path):
    import warnings

    from halo_lab.data import HaloDataModule

    p = _jsonl(tmp_path / "mid.jsonl", bad_at=150)

    def module():
        dm = HaloDataModule(
            dataset="streaming", path=p, seq_len=16, batch_size=2, data_dir=tmp_path, skip_bad_lines=True
        )
        return dm

    dm = module()
    with pytest.warns(UserWarning, match=r"skipping 1 bad JSONL line.*mid\.jsonl:150"):
        dm.setup("fit")
    loader = dm.train_dataloader()
    batches = [b[0] for b in loader]
    # Resume from a position past the bad line: the rest of the epoch, no error, no new warning.
    dm2 = module()
    with pytest.warns(UserWarning, match="skipping 1"):
        dm2.setup("fit")
    half = len(batches) * 2 // 3
    loader2 = dm2.train_dataloader()
    loader2.load_state_dict({"epoch": 0, "batches": half, "batch_size": 2, "num_workers": 0, "seed": 0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rest = [b[0] for b in loader2]
    assert all(torch.equal(a, b) for a, b in zip(rest, batches[half:])) and len(rest) == len(batches) - half


# ---------------------------------------------------------------------------------------------- slow: SIGKILL
def _cli(overrides: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "halo_lab.train", *overrides],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_sigkill_right_after_the_epoch_end_checkpoint_then_resume(tmp_path, corpus, straight):
    """A real SIGKILL after the periodic checkpoint at the epoch end (step 6), in a subprocess."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    rec, d = tmp_path / "rec.jsonl", tmp_path / "run"
    over = [*tiny(corpus, 15, rec), f"hydra.run.dir={d}", "callbacks.last_checkpoint.every_n_train_steps=6"]
    over = [o.replace(f"{__name__}.", "test_reliability.") for o in over]
    slow = [
        "+callbacks.slow._target_=test_reliability.SleepAt",
        "+callbacks.slow.step=7",
        "+callbacks.slow.seconds=30",
    ]
    proc = _cli([*over, *slow], env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if rec.exists() and any(
            json.loads(x)["step"] >= BATCHES_PER_EPOCH + 1 for x in rec.read_text().splitlines()
        ):
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == BATCHES_PER_EPOCH
    proc = _cli([*over, "ckpt_path=auto", "++callbacks.slow=null"], env)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert effective(rec) == straight
    assert not list((d / "checkpoints").glob(".*tmp*"))


# ---------------------------------------------------------------------------------------------- 8. issue 28: resume
TOKENS_PER_STEP = 8 * 32  # data.batch_size x data.seq_len of tiny()


def test_one_last_checkpoint_when_max_steps_is_not_a_multiple_of_the_interval(tmp_path, corpus):
    """trainer=debug's 20 steps with a checkpoint every 50: last.ckpt and last-v1.ckpt at the same step
    (Lightning's save_last at train end beside the runner's final-step save)."""
    d = tmp_path / "run"
    run(tiny(corpus, 2), d)  # a checkpoint every 3 steps: none before the end
    ckpts = sorted(p.name for p in (d / "checkpoints").iterdir())
    assert ckpts == ["last.ckpt"], ckpts
    run(tiny(corpus, 4, None, "ckpt_path=auto"), d)  # the resume: a periodic one at 3, the final at 4
    ckpts = sorted(p.name for p in (d / "checkpoints").iterdir())
    assert ckpts == ["last.ckpt"], ckpts
    assert torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


class InterruptAt(pl.Callback):
    """Ctrl-C (a KeyboardInterrupt) when step ``step`` is about to start (a batch in flight), or in the
    validation at that step (between two steps)."""

    def __init__(self, step: int, where: str):
        self.step, self.where = step, where

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.where == "step" and trainer.global_step == self.step:
            raise KeyboardInterrupt

    def on_validation_start(self, trainer, pl_module):
        if self.where == "validation" and trainer.global_step == self.step and not trainer.sanity_checking:
            raise KeyboardInterrupt


@pytest.mark.parametrize(("where", "saved"), [("step", 3), ("validation", 4)])
def test_ctrl_c_prints_the_resume_command(tmp_path, corpus, straight, capfd, where, saved):
    """Interrupted with a batch in flight, last.ckpt stays the last complete step (3: every 3 steps); in a
    validation (between steps), last.ckpt is written at that step. Either way the run resumes exactly."""
    rec, d = tmp_path / "rec.jsonl", tmp_path / "run"
    val = "trainer.val_check_interval=2"
    stop = [f"+callbacks.stop._target_={__name__}.InterruptAt", "+callbacks.stop.step=4"]
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises((KeyboardInterrupt, SystemExit)):
            run(tiny(corpus, 15, rec, val, *stop, f"+callbacks.stop.where={where}"), d)
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores SIGINT after an interrupt
    err = capfd.readouterr().err
    assert f"interrupted at step 4; last.ckpt holds step {saved}" in err, err[-2000:]
    assert f"resume with: python -m halo_lab.train hydra.run.dir={d} ckpt_path=auto\n" in err
    assert torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == saved
    run(["ckpt_path=auto", "++callbacks.stop=null"], d)  # the printed command (and the test's stop undone)
    assert effective(rec) == straight


@pytest.fixture(scope="module")
def crashed_then_resumed(tmp_path_factory, corpus) -> Path:
    """Killed before step 8 (last.ckpt at 6; history.jsonl has steps 7 and 8 already), then resumed to 15."""
    d = tmp_path_factory.mktemp("crashed") / "run"
    crash(tiny(corpus, 15, None, "trainer.val_check_interval=3"), d, step=8)
    run(tiny(corpus, 15, None, "trainer.val_check_interval=3", "ckpt_path=auto", NO_CRASH), d)
    return d


def test_resumed_metrics_count_the_whole_run(crashed_then_resumed):
    m = json.loads((crashed_then_resumed / "metrics.json").read_text())
    assert m["steps"] == 15 and m["steps_this_run"] == 15 - 6  # this process's steps
    assert m["train_tokens"] == 15 * TOKENS_PER_STEP  # the run's, not the last process's
    assert m["tokens_per_sec"] > 0 and m["train_step_time_s"] > 0


def test_metrics_after_a_kill_during_the_export_count_the_whole_run(tmp_path, corpus):
    d = tmp_path / "run"
    run(tiny(corpus, 6), d)
    first = json.loads((d / "metrics.json").read_text())
    (d / "metrics.json").unlink()  # killed after the last step, before metrics.json
    run(tiny(corpus, 6, None, "ckpt_path=auto"), d)
    m = json.loads((d / "metrics.json").read_text())
    assert m["train_tokens"] == first["train_tokens"] == 6 * TOKENS_PER_STEP
    assert m["tokens_per_sec"] == pytest.approx(first["tokens_per_sec"])
    assert m["steps"] == 6 and m["steps_this_run"] == 0
    val = [json.loads(x)["step"] for x in (d / "history.jsonl").read_text().splitlines() if "val/loss" in x]
    assert val == [6], val  # the final validation, run again by the resume, recorded once


def test_history_holds_each_step_once_after_a_resume(crashed_then_resumed):
    records = [json.loads(x) for x in (crashed_then_resumed / "history.jsonl").read_text().splitlines()]
    train = [r["step"] for r in records if "train/loss" in r]
    val = [r["step"] for r in records if "val/loss" in r]
    assert train == list(range(1, 16)), train
    assert val == sorted(set(val)) and val[-1] == 15, val


def test_resume_without_overrides_uses_the_runs_own_config(tmp_path, corpus):
    """`hydra.run.dir=DIR ckpt_path=auto` and nothing else: the run's overrides come back from its record."""
    d = tmp_path / "run"
    first = tiny(corpus, 3)
    run(first, d)
    result = run(["ckpt_path=auto", "trainer.max_steps=6"], d)  # extend: allowed on top
    assert result["steps"] == 6 and result["model_config"]["hidden_size"] == 32
    from halo_lab.runner.launches import read_launches

    launches = read_launches(d)
    assert [x["command"] for x in launches] == [first, ["ckpt_path=auto", "trainer.max_steps=6"]]
    assert launches[1]["overrides"] == [o for o in first if not o.startswith("trainer.max_steps=")] + [
        "ckpt_path=auto",
        "trainer.max_steps=6",
    ]
    assert [x.get("trained_from") for x in launches] == [0, 3]
    assert run(["ckpt_path=auto"], d)["steps"] == 6  # max_steps=6 is the run's now: nothing to train
    with pytest.raises(ConfigError, match=r"model\.hidden_size=64 \(checkpoint: 32\)"):
        run(["ckpt_path=auto", "model.hidden_size=64"], d)
    # A launch that trained nothing does not change the run's config (its line stays, for the record).
    assert run(["ckpt_path=auto", "trainer.max_steps=7"], d)["model_config"]["hidden_size"] == 32
    assert len(read_launches(d)) == 5


def test_resume_before_any_checkpoint_uses_the_last_launchs_config(tmp_path, corpus):
    d = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"x\.txt"):  # stopped before training: no checkpoint
        run(tiny(corpus, 2, None, "data.path=/nonexistent/x.txt"), d)
    result = run(["ckpt_path=auto", f"data.path={corpus}"], d)  # the launch's config, the path fixed
    assert result["steps"] == 2 and result["model_config"]["hidden_size"] == 32


def test_a_second_run_in_the_same_directory_stops_naming_the_holder(tmp_path, corpus):
    rec, d = tmp_path / "rec.jsonl", tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    over = [o.replace(f"{__name__}.", "test_reliability.") for o in tiny(corpus, 15, rec)]
    hold = ["+callbacks.slow._target_=test_reliability.SleepAt", "+callbacks.slow.step=4"]
    proc = _cli([*over, *hold, "+callbacks.slow.seconds=120", f"hydra.run.dir={d}"], env)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            if rec.exists() and len(rec.read_text().splitlines()) >= 5:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read()
        history = (d / "history.jsonl").read_text()
        with pytest.raises(ConfigError, match=rf"{re.escape(str(d))}: .*\bpid {proc.pid}\b"):
            run(tiny(corpus, 3), d)
        assert (d / "history.jsonl").read_text() == history  # the second run did nothing
    finally:
        proc.kill()  # SIGKILL: its lock file stays behind
        proc.wait()
    assert (d / "checkpoints" / "last.ckpt").is_file()
    # a dead holder blocks nothing (the resume restores the run's own overrides, so its 120 s sleep too:
    # this command line's on top of them sets it to 0)
    assert run(tiny(corpus, 6, None, "ckpt_path=auto", *hold, "+callbacks.slow.seconds=0"), d)["steps"] == 6
