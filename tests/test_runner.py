"""The runner: LightningModule, callbacks, checkpoints, loggers, resume helpers and the CLI (fast set)."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from torch.utils.data import DataLoader, Dataset

from halo_lab.runner.checkpointing import AtomicCheckpointIO
from halo_lab.runner.config import ConfigError, compose_config
from halo_lab.runner.ddp import ddp_rank_command
from halo_lab.runner.module import HaloLitModule, _lr_factor, param_groups, warmup_cosine_schedule
from halo_lab.runner.resume import resolve_ckpt_path
from halo_lab.runner.wandb_run import wandb_mode, wandb_run_id

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {
    "vocab_size": 32,
    "hidden_size": 32,
    "num_layers": 1,
    "num_heads": 2,
    "num_kv_heads": 1,
    "max_seq_len": 64,
    "local_window": 8,
    "num_random": 1,
    "dropout": 0.0,
}


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


def make_corpus(path: Path, n_lines: int = 1500) -> Path:
    import random

    r = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog and the king sees the queen in her castle".split()
    path.write_text(
        "\n".join(" ".join(r.choice(words) for _ in range(r.randint(4, 10))) for _ in range(n_lines))
    )
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


def tiny_overrides(corpus: Path, steps: int = 6) -> list[str]:
    return [
        "data=text",
        f"data.path={corpus}",
        "data.seq_len=64",
        "data.batch_size=8",
        "model.hidden_size=32",
        "model.num_layers=1",
        "model.num_heads=2",
        "model.num_kv_heads=1",
        "model.local_window=16",
        "model.dilated_offsets=[1,2]",
        "trainer=debug",
        f"trainer.max_steps={steps}",
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=2",
        "trainer.log_every_n_steps=2",
        "callbacks.last_checkpoint.every_n_train_steps=3",
        "callbacks.samples.every_n_steps=3",
        "callbacks.samples.max_new_tokens=8",
        "sample.max_new_tokens=8",
        "scheduler.warmup_steps=2",
    ]


def run_inprocess(overrides: list[str], run_dir: Path) -> dict:
    from halo_lab.train import run

    cfg = compose_config(overrides, output_dir=run_dir)
    try:
        return run(cfg)
    finally:
        import wandb

        if wandb.run is not None:
            wandb.finish()


# ---------------------------------------------------------------------------------------------- optimisation
def test_warmup_cosine_schedule():
    assert _lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert _lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert _lr_factor(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert _lr_factor(55, 10, 100, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert _lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert _lr_factor(500, 10, 100, 0.1) == pytest.approx(0.1)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    sch = warmup_cosine_schedule(opt, 2, 10, 0.0)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0) and lrs[-1] < 0.05
    # Plain state: loadable with weights_only (torch >= 2.6 refuses anything else by default).
    import io

    buf = io.BytesIO()
    torch.save(sch.state_dict(), buf)
    buf.seek(0)
    torch.load(buf, weights_only=True)


def test_param_groups_exclude_norms_biases_embeddings_globals():
    from halo_lab.model import build_model

    model = build_model({**TINY_MODEL, "tie_embeddings": True}, arch="halo")
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    d = {names[id(p)] for p in decay["params"]}
    assert "global_memory" in nd and "token_emb.weight" in nd
    assert any(n.endswith("ln_1.weight") for n in nd) and any(n.startswith("ln_f") for n in nd)
    assert any(n.endswith("q_proj.weight") for n in d) and any(n.endswith("w1.weight") for n in d)
    assert not d & nd
    # tied lm_head is the embedding: counted once, not decayed
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


# ---------------------------------------------------------------------------------------------- metrics
class _Batches(Dataset):
    """Sequences with a different number of scored targets each, optionally with needle distances."""

    def __init__(self, n: int = 12, with_distance: bool = False):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 32, (n, 16), generator=g)
        self.y = torch.randint(0, 32, (n, 16), generator=g)
        for i in range(n):
            self.y[i, : (i * 5) % 15] = -100  # 1..16 scored positions
        self.d = torch.tensor([16, 32, 48] * (n // 3))
        self.with_distance = with_distance

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if self.with_distance:
            return self.x[i], self.y[i], self.d[i]
        return self.x[i], self.y[i]


def _trainer(**kw) -> pl.Trainer:
    base = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    return pl.Trainer(**{**base, **kw})


def test_val_loss_is_token_weighted_and_needle_accuracy_by_distance():
    from halo_lab.data.synthetic import answer_correct

    module = HaloLitModule(TINY_MODEL, arch="halo")
    data = _Batches(12, with_distance=True)
    loader = DataLoader(data, batch_size=4)
    _trainer().validate(module, dataloaders=loader, verbose=False)
    module.model.eval()
    ce_sum, n_tok, right = 0.0, 0, {16: [], 32: [], 48: []}
    with torch.no_grad():
        for x, y, d in loader:
            logits, _ = module.model(x)
            ce_sum += torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum"
            ).item()
            n_tok += int((y != -100).sum())
            for ok, dd in zip(answer_correct(logits, y), d):
                right[int(dd)].append(float(ok))
    expected = ce_sum / n_tok
    assert module.last_val["val/loss"] == pytest.approx(expected, rel=1e-5)
    assert module.last_val["val/ppl"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert module.last_val["val/bpt"] == pytest.approx(expected / math.log(2), rel=1e-5)
    by_d = module.last_val["val/acc_by_distance"]
    assert set(by_d) == {16, 32, 48}
    for d, oks in right.items():
        assert by_d[d] == pytest.approx(sum(oks) / len(oks))
    # A mean of per-batch losses would differ here (batches score different numbers of tokens).
    module.model.eval()


class _Oracle(torch.nn.Module):
    """Stands in for the model on a fixed mqar dataset: the right answer at every position, except for the
    queries whose distance bucket is in ``wrong_buckets`` (their last value token is off by one)."""

    def __init__(self, ds, wrong_buckets=()):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.vocab = ds.vocab_size
        self.table = {}
        for i in range(len(ds)):
            x, y, d = ds[i]
            pred = y.clamp(min=0).clone()
            scored = torch.nonzero(y != -100).flatten().view(ds.num_queries, ds.value_len)
            for q, b in enumerate(d.tolist()):
                if b in wrong_buckets:
                    pos = scored[q, -1]
                    pred[pos] = (pred[pos] + 1) % self.vocab
            self.table[x.numpy().tobytes()] = pred

    def forward(self, input_ids, targets=None):
        pred = torch.stack([self.table[row.numpy().tobytes()] for row in input_ids])
        logits = torch.nn.functional.one_hot(pred, self.vocab).float() * 10 + self.dummy
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss


@pytest.mark.parametrize("wrong", ["none", "all", "far"])
def test_mqar_per_query_accuracy_by_distance(wrong):
    from halo_lab.data import AssociativeRecallDataset

    ds = AssociativeRecallDataset(
        num_examples=24,
        seq_len=128,
        vocab_size=48,
        num_pairs=8,
        num_queries=4,
        value_len=2,
        distance_buckets=[1, 32, 64],
        split="val",
    )
    buckets = torch.stack([ds[i][2] for i in range(len(ds))])
    assert set(buckets.unique().tolist()) == {1, 32, 64}
    wrong_buckets = {"none": (), "all": (1, 32, 64), "far": (64,)}[wrong]
    module = HaloLitModule(TINY_MODEL, arch="halo")
    module.model = _Oracle(ds, wrong_buckets)
    _trainer().validate(module, dataloaders=DataLoader(ds, batch_size=5), verbose=False)
    by_d = module.last_val["val/acc_by_distance"]
    expected = {b: 0.0 if b in wrong_buckets else 1.0 for b in (1, 32, 64)}
    assert by_d == expected
    # Overall accuracy counts queries (24 x 4), not examples.
    n_wrong = sum(int((buckets == b).sum()) for b in wrong_buckets)
    assert module.last_val["val/acc"] == pytest.approx(1 - n_wrong / buckets.numel())


def test_nonfinite_loss_stops_naming_the_step():
    module = HaloLitModule(TINY_MODEL, arch="halo", optimizer={"_target_": "torch.optim.SGD", "lr": 0.1})
    real_forward = module.model.forward

    def forward(x, y=None):
        logits, loss = real_forward(x, y)
        if module.global_step == 2:
            loss = loss * float("nan")
        return logits, loss

    module.model.forward = forward
    loader = DataLoader(_Batches(12), batch_size=2)
    with pytest.raises(FloatingPointError, match="at step 2"):
        _trainer(max_steps=5, limit_val_batches=0).fit(module, train_dataloaders=loader)


def test_graph_step_follows_global_step():
    module = HaloLitModule(TINY_MODEL, arch="halo")
    seen = []
    real = module.model.set_graph_step
    module.model.set_graph_step = lambda s: (seen.append(s), real(s))
    _trainer(max_steps=4, limit_val_batches=0).fit(
        module, train_dataloaders=DataLoader(_Batches(12), batch_size=2)
    )
    assert seen == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------------- checkpoints
def test_atomic_checkpoint_io_never_leaves_a_broken_file(tmp_path, monkeypatch):
    io_ = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io_.save_checkpoint({"step": 1, "w": torch.ones(3)}, target)
    assert torch.load(target, weights_only=True)["step"] == 1
    assert oct(target.stat().st_mode & 0o777) != oct(0o600) or os.umask(0o022) == 0o077

    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        f.write(b"partial garbage")  # what a kill mid-write would leave
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io_.save_checkpoint({"step": 2, "w": torch.zeros(3)}, target)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(target, weights_only=True)["step"] == 1  # the old checkpoint is intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temp file left


SELECTING = {**TINY_MODEL, "select_blocks": 1, "select_block_size": 4, "select_summary_bias": -4.0,
             "select_token_bias": -2.0, "attention_backend": "masked"}  # fmt: skip


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_the_selection_biases_train_at_their_own_rate(scale):
    """module.select_bias_lr_scale: one AdamW step moves the selection's two biases by about scale * lr
    (Adam's first step is lr * sign(grad)) and every other parameter by about lr; at 1 the optimizer keeps
    its two groups, as older checkpoints have."""
    module = HaloLitModule(SELECTING, arch="halo", select_bias_lr_scale=scale, optimizer={
        "_target_": "torch.optim.AdamW", "lr": 1e-3, "weight_decay": 0.1})  # fmt: skip
    opt = module.configure_optimizers()
    assert len(opt.param_groups) == (2 if scale == 1.0 else 3)
    attn = module.model.layers[0].attn
    biases = {id(attn.select_bias), id(attn.select_token_bias)}
    if scale != 1.0:
        assert {id(p) for p in opt.param_groups[2]["params"]} == biases
        assert opt.param_groups[2]["lr"] == pytest.approx(1e-2) and opt.param_groups[2]["weight_decay"] == 0.0
    listed = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(listed) == sorted({id(p) for p in module.model.parameters()})  # each once
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    x = torch.randint(0, 32, (2, 40))
    module.model(x, x)[1].backward()
    assert all(bool((p.grad != 0).all()) for p in (attn.select_bias, attn.select_token_bias))
    opt.step()
    for n, p in module.model.named_parameters():
        moved = (p.detach() - before[n]).abs().max().item()
        if p.grad is None or not bool((p.grad != 0).any()):
            continue
        want = 1e-3 * (scale if id(p) in biases else 1.0)
        assert want * 0.5 < moved < want * 1.5, (n, moved, want)


@pytest.mark.parametrize("value", [0, -1.0, "fast", True])
def test_a_bad_select_bias_lr_scale_is_named(tmp_path, value):
    from halo_lab.runner.config import validate_config

    cfg = compose_config(["variant=halo_select", f"module.select_bias_lr_scale={value}"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^module\.select_bias_lr_scale"):
        validate_config(cfg)


def test_resolve_ckpt_path(tmp_path, caplog):
    assert resolve_ckpt_path(None, tmp_path) is None
    with caplog.at_level(logging.WARNING, logger="halo_lab.train"):
        assert resolve_ckpt_path("auto", tmp_path) is None
    assert "STARTING FROM STEP 0" in caplog.text and "hydra.run.dir" in caplog.text
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"x")
    assert resolve_ckpt_path("auto", tmp_path) == str(last)
    with pytest.raises(ConfigError, match="^ckpt_path"):
        resolve_ckpt_path(str(tmp_path / "missing.ckpt"), tmp_path)


# ---------------------------------------------------------------------------------------------- W&B / DDP helpers
def test_wandb_mode_and_run_id(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert wandb_mode(None) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(None) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(None) == "disabled" and wandb_mode("offline") == "offline"
    rid = wandb_run_id(tmp_path, None, write=True)
    assert (tmp_path / "wandb_run_id.txt").read_text().strip() == rid
    assert wandb_run_id(tmp_path, None, write=True) == rid  # reused on resume
    other = tmp_path / "other"
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert wandb_run_id(other, str(ckpt), write=False) == rid  # found next to the resumed checkpoint


def test_ddp_rank_command_runs_only_this_job(tmp_path, monkeypatch):
    import __main__

    job_dir = tmp_path / "multirun" / "seed=2,variant=dense"
    compose_config(["variant=dense", "seed=2"], output_dir=job_dir)
    monkeypatch.setattr(__main__, "__spec__", SimpleNamespace(name="halo_lab.train"), raising=False)
    monkeypatch.setattr(
        sys, "argv", ["train.py", "-m", "--config-name", "train", "variant=halo,dense", "seed=1,2"]
    )
    cmd, cwd = ddp_rank_command(1)
    assert cmd[:3] == [sys.executable, "-m", "halo_lab.train"]
    assert "-m" not in cmd[3:] and "variant=halo,dense" not in cmd
    assert ["--config-name", "train"] == cmd[3:5]
    assert "variant=dense" in cmd and "seed=2" in cmd
    assert f'hydra.run.dir="{job_dir.resolve()}"' in cmd and "hydra.output_subdir=null" in cmd
    assert cwd == os.getcwd()


def test_resume_command_quotes_what_hydra_would_misread():
    """A sweep job's directory holds commas (a sweep to Hydra), another a space: quoted for Hydra and the
    shell, the command gives Hydra the directory back."""
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from halo_lab.runner.launches import resume_command

    assert resume_command("/o/train/t") == "python -m halo_lab.train hydra.run.dir=/o/train/t ckpt_path=auto"
    for d in ("/o/multirun/seed=1,variant=dense", "/o/my runs/x"):
        arg = shlex.split(resume_command(d))[3]
        assert OverridesParser.create().parse_overrides([arg])[0].value() == d


def test_run_directory_lock_spares_the_ddp_ranks_of_the_run(tmp_path):
    """Rank 0 holds the directory; a relaunched rank (LOCAL_RANK=1) of the same run takes no lock, another
    rank-0 process stops naming the holder; the lock goes with its holder."""
    from halo_lab.runner import lock

    code = (
        "import sys; from halo_lab.runner.lock import hold_run_dir\n"
        "try:\n    hold_run_dir(sys.argv[1]); print('ran')\n"
        "except ValueError as e:\n    print(e)\n"
    )

    def other(**env) -> str:
        env = {**os.environ, "PYTHONPATH": str(REPO), **env}
        cmd = [sys.executable, "-c", code, str(tmp_path / "run")]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120).stdout.strip()

    try:
        lock.hold_run_dir(tmp_path / "run")
        lock.hold_run_dir(tmp_path / "run")  # this process again (a notebook, the next in-process run)
        assert other(LOCAL_RANK="1") == "ran"
        refused = other()
        assert refused.startswith(f"hydra.run.dir={(tmp_path / 'run').resolve()}: another run")
        assert f"(pid {os.getpid()}," in refused
    finally:
        lock.release()
    assert other() == "ran"


# ---------------------------------------------------------------------------------------------- whole runs
def test_inprocess_run_checkpoint_is_plain_and_rebuilds(tmp_path, corpus):
    run_dir = tmp_path / "run"
    summary = run_inprocess([*tiny_overrides(corpus), "logger=none"], run_dir)
    assert summary["steps"] == 6 and summary["val_loss"] < math.log(256)
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)  # plain containers only (weights_only=True)
    assert ckpt["global_step"] == 6
    hp = ckpt["hyper_parameters"]
    assert hp["arch"] == "halo" and hp["model_config"]["vocab_size"] == 256 and hp["tokenizer"]["type"]
    assert len(list((run_dir / "checkpoints").glob("best-step*.ckpt"))) == 1
    module = HaloLitModule.load_from_checkpoint(last, map_location="cpu", weights_only=True)
    from halo_lab.model import build_model

    ref = build_model(hp["model_config"], arch=hp["arch"])
    ref.load_state_dict({k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()})
    for (k, a), b in zip(module.model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k
    assert module.get_tokenizer().decode(module.get_tokenizer().encode("hi")) == "hi"
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert any("val/loss" in h for h in history) and any("train/loss" in h for h in history)
    assert (run_dir / "samples.txt").read_text().count("=== step") >= 2


def test_the_seed_fixes_the_run_on_the_cpu(tmp_path, corpus):
    """Same seed, same losses, bitwise (data order, initialisation, dropout): so two runs of one seed that
    differ on a GPU differ by its numerics (experiments/selection/README.md); another seed differs."""

    def losses(seed: int, name: str) -> list:
        run_dir = tmp_path / name
        run_inprocess([*tiny_overrides(corpus, steps=4), "logger=none", f"seed={seed}"], run_dir)
        rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
        return [(r["step"], r.get("train/loss"), r.get("val/loss")) for r in rows]

    first = losses(3, "a")
    assert any(v is not None for _, v, _ in first) and first == losses(3, "b")
    assert losses(4, "c") != first


@pytest.mark.parametrize("logger", ["none", "csv", "wandb"])
def test_loggers(logger, tmp_path, corpus):
    run_dir = tmp_path / "run"
    extra = ["logger.wandb.mode=disabled"] if logger == "wandb" else []
    summary = run_inprocess([*tiny_overrides(corpus, steps=3), f"logger={logger}", *extra], run_dir)
    assert summary["steps"] == 3 and (run_dir / "metrics.json").is_file()
    if logger == "csv":
        rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
        assert "train/loss" in rows[0] and len(rows) > 1
        assert "model_config" in (run_dir / "csv" / "hparams.yaml").read_text()
    else:
        assert not (run_dir / "csv").exists()


def _cli(
    args: list[str], cwd: Path, code: str | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "halo_lab.train", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_cli_smoke_writes_the_contracted_files(tmp_path, corpus):
    """`python -m halo_lab.train` from another directory (config found: Hydra resolves config_path per caller)."""
    run_dir = tmp_path / "run"
    proc = _cli([*tiny_overrides(corpus, steps=4), "logger=none", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rel in (
        ".hydra/config.yaml",
        "checkpoints/last.ckpt",
        "hub/config.json",
        "hub/model.safetensors",
        "metrics.json",
    ):
        assert (run_dir / rel).is_file(), rel
    m = json.loads((run_dir / "metrics.json").read_text())
    for key in ("val_loss", "val_ppl", "params", "tokens_per_sec", "peak_mem_mb", "steps", "wall_time_s"):
        assert m[key] is not None, key
    assert m["steps"] == 4 and m["tokens_per_sec"] > 0
    # What `auto` ran on this CPU (short sequences: the graph as an SDPA mask), and CPU memory.
    assert m["attention_backend"] == "masked" and m["peak_mem_kind"] == "cpu_peak_rss"
    assert "--- sample" in proc.stdout and str(run_dir) in proc.stdout
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "lightning_logs").exists()
    from halo_lab.hub import load_from_hub

    model = load_from_hub(str(run_dir / "hub"))
    assert model.config.hidden_size == 32


def test_cli_imported_main_and_failing_exit_code(tmp_path, corpus):
    """`from halo_lab.train import main` (console scripts: another config_path resolution); a bad value exits non-zero naming it."""
    code = "import sys; from halo_lab.train import main; sys.argv[0] = 'halo-train'; main()"
    proc = _cli(
        [*tiny_overrides(corpus), "model.hidden_size=33", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path, code
    )
    assert proc.returncode != 0
    assert "model.hidden_size=33" in proc.stderr
    assert "Traceback" not in proc.stderr  # a user error is one line, not a stack trace
    assert not (Path(os.environ["HALO_LAB_ROOT"]) / "data" / "cache").exists()  # no data touched


# ---------------------------------------------------------------------------------------------- data position
class _Record(pl.Callback):
    def __init__(self):
        self.seen: list[tuple[int, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((trainer.global_step, int(batch[0][:, 0].sum())))


class _DM(pl.LightningDataModule):
    def train_dataloader(self):
        from halo_lab.data.resumable import ResumableDataLoader

        # What HaloDataModule returns for map-style data (test_data_module_train_loader_is_stateful).
        g = torch.Generator().manual_seed(0)
        return ResumableDataLoader(_Batches(12), batch_size=2, shuffle=True, drop_last=True, generator=g)


def test_data_module_train_loader_is_stateful():
    from halo_lab.data import HaloDataModule
    from halo_lab.data.resumable import ResumableDataLoader

    dm = HaloDataModule(dataset="copy", seq_len=32, batch_size=4, num_train=64, num_val=8, vocab_size=16)
    dm.setup("fit")
    assert isinstance(dm.train_dataloader(), ResumableDataLoader)


@pytest.mark.parametrize("stop_at", [4, 8])  # inside the first epoch (6 batches) and inside the second
def test_resume_continues_the_data_position(stop_at, tmp_path):
    def fit(max_steps, ckpt=None):
        torch.manual_seed(0)
        module = HaloLitModule(TINY_MODEL, arch="halo")
        dm = _DM()
        rec = _Record()
        trainer = _trainer(max_steps=max_steps, limit_val_batches=0, callbacks=[rec])
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
        return trainer, rec.seen

    _, straight = fit(12)
    trainer, first = fit(stop_at)
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    _, resumed = fit(12, ckpt=tmp_path / "mid.ckpt")
    assert first == straight[:stop_at]
    assert resumed == straight[stop_at:]


def test_throughput_summary_reports_the_training_device_after_teardown(monkeypatch):
    # Lightning's teardown moves the module back to the CPU after fit: metrics.json must still report the
    # memory of the device training ran on (on a GPU: CUDA max allocated, not the CPU's RSS).
    import halo_lab.runner.progress as runner_progress
    from halo_lab.runner.progress import TokenThroughput

    seen = []
    monkeypatch.setattr(
        runner_progress, "peak_memory_mb", lambda device=None: (seen.append(device), (1.0, "k"))[1]
    )
    perf = TokenThroughput()
    trained_on = torch.device("meta")  # stands in for cuda:0 on this CPU-only machine
    perf.on_train_start(SimpleNamespace(), SimpleNamespace(device=trained_on))
    perf.summary(torch.device("cpu"))  # what the runner passes after fit
    assert seen == [trained_on]


# ---------------------------------------------------------------------------------------------- bug fixes
def test_metrics_attention_backend_is_what_ran(tmp_path, corpus):
    """model.attention_backend=flex on a CPU: FlexAttention has no backward here, so training falls back
    to the reference gather; metrics.json must say so (it used to re-derive "flex" from the config)."""
    overrides = [
        *tiny_overrides(corpus, steps=2),
        "logger=none",
        "callbacks.samples=null",
        "callbacks.best_checkpoint=null",
        "model.attention_backend=flex",
        "trainer.limit_val_batches=0",
        "validate=false",
        "export_hub=false",
    ]
    run_inprocess(overrides, tmp_path / "run")
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["attention_backend"] == "reference"


def test_config_level_flops_resolve_auto_on_the_device_it_would_run(monkeypatch):
    """bench.estimate_flops(config) builds on the meta device; `auto` must resolve where the model would
    run (here: a CUDA machine, faked), not on a hard-coded CPU."""
    from halo_lab import bench
    from halo_lab.model import attention

    seen = []

    def resolve(config, device, seq_len=None):
        seen.append(torch.device(device).type)
        return "masked"

    monkeypatch.setattr(attention, "resolve_backend", resolve)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    bench.estimate_flops({"hidden_size": 64, "num_heads": 4, "num_kv_heads": 2}, 256)
    assert seen == ["cuda"]
    model = build_model_tiny()
    model.estimate_flops(256, device="cuda")  # an explicit device wins over the model's own
    assert seen == ["cuda", "cuda"]
    model.estimate_flops(256)  # a built model: its own device
    assert seen[-1] == "cpu"


def build_model_tiny():
    from halo_lab.model import build_model

    return build_model(TINY_MODEL, arch="halo")
