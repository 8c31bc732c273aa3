"""python -m halo_lab.eval: a tiny run's model on a file and on a data option; the numbers are sums over
every scored token; loss by position has the bins it promises; lengths beyond the trained one (HALO-S);
a Hydra sweep over lengths."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.core.global_hydra import GlobalHydra

from halo_lab.config import HaloConfig
from halo_lab.eval import evaluate, run
from halo_lab.hub import save_for_hub
from halo_lab.model import build_model
from halo_lab.runner.config import ConfigError, compose_config
from halo_lab.tokenizers import CharacterTokenizer

REPO = Path(__file__).resolve().parents[1]
TEXT = "".join(f"line {i}: the king sees the queen in her castle, and the fox runs.\n" for i in range(60))


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


def export(tmp_path: Path, arch: str = "halo", max_seq_len: int = 64) -> Path:
    torch.manual_seed(0)
    cfg = HaloConfig(
        vocab_size=256, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, local_window=8,
        dilated_offsets=[1, 2], max_seq_len=max_seq_len, graph_block_size=16, dropout=0.0,
    )  # fmt: skip
    out = tmp_path / f"{arch}-export"
    save_for_hub(build_model(cfg, arch).eval(), None, out, tokenizer=CharacterTokenizer())
    return out


def compose(tmp_path: Path, *overrides: str):
    return compose_config(
        [f"paths.data_dir={tmp_path / 'data'}", *overrides], output_dir=tmp_path / "eval", config_name="eval"
    )


def test_eval_on_a_file_sums_every_token_and_bins_by_position(tmp_path):
    model_dir = export(tmp_path)
    f = tmp_path / "text.txt"
    f.write_text(TEXT)
    res = run(compose(tmp_path, f"source={model_dir}", f"file={f}", "seq_len=32", "bins=4", "batch_size=3"))
    # by hand: the same non-overlapping 32-token windows, summed cross-entropy over every target
    from halo_lab.hub import load_from_hub

    model = load_from_hub(model_dir)
    ids = torch.tensor(CharacterTokenizer().encode(TEXT))
    n = (len(ids) - 1) // 32
    x = ids[: n * 32].view(n, 32)
    y = ids[1 : n * 32 + 1].view(n, 32)
    with torch.no_grad():
        ce = F.cross_entropy(model(x)[0].transpose(1, 2), y, reduction="none")
    assert res["tokens"] == n * 32
    assert res["loss"] == pytest.approx(ce.mean().item(), rel=1e-5)
    assert res["perplexity"] == pytest.approx(math.exp(res["loss"]))
    assert res["bits_per_byte"] == pytest.approx(res["bits_per_token"])  # byte-level tokenizer
    assert res["tokens_per_sec"] > 0
    out = tmp_path / "eval"
    saved = json.loads((out / "loss_by_position.json").read_text())
    assert saved["seq_len"] == 32
    assert [(b["start"], b["end"]) for b in saved["bins"]] == [(0, 8), (8, 16), (16, 24), (24, 32)]
    for b, (lo, hi) in zip(saved["bins"], [(0, 8), (8, 16), (16, 24), (24, 32)]):
        assert b["tokens"] == n * (hi - lo)
        assert b["loss"] == pytest.approx(ce[:, lo:hi].mean().item(), rel=1e-5)
    assert json.loads((out / "eval.json").read_text())["loss"] == pytest.approx(res["loss"])
    assert (out / "loss_by_position.png").stat().st_size > 1000


def test_eval_a_trained_run_dir_on_a_data_option(tmp_path):
    from tests.test_runner import make_corpus, run_inprocess, tiny_overrides

    corpus = make_corpus(tmp_path / "corpus.txt", 400)
    run_dir = tmp_path / "run"
    trained = run_inprocess([*tiny_overrides(corpus, steps=4), "logger=none"], run_dir)
    GlobalHydra.instance().clear()
    res = run(
        compose(tmp_path, f"source={run_dir}", "data=text", f"data.path={corpus}", "seq_len=64", "bins=2")
    )
    assert res["data"] == "data=text (val)" and res["model"].endswith("last.ckpt")
    # the runner's own final validation saw the same split with the same weights
    assert res["loss"] == pytest.approx(trained["val_loss"], rel=1e-4)
    assert len(res["loss_by_position"]) == 2


def test_longer_than_trained_runs_for_halo_not_for_dense(tmp_path):
    f = tmp_path / "text.txt"
    f.write_text(TEXT)
    halo = export(tmp_path, "halo", max_seq_len=32)
    res = run(compose(tmp_path, f"source={halo}", f"file={f}", "seq_len=128", "bins=4"))
    assert res["seq_len"] == 128 and res["trained_max_seq_len"] == 32 and len(res["loss_by_position"]) == 4
    dense = export(tmp_path, "dense", max_seq_len=32)
    with pytest.raises(ConfigError, match="seq_len=128: exceeds the dense baseline's max_seq_len=32"):
        run(compose(tmp_path, f"source={dense}", f"file={f}", "seq_len=128"))


def test_bad_inputs_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="source=.*nowhere"):
        run(compose(tmp_path, f"source={tmp_path / 'nowhere'}/x.safetensors"))
    with pytest.raises(ConfigError, match="file=.*missing.txt: no such file"):
        run(compose(tmp_path, f"source={export(tmp_path)}", f"file={tmp_path / 'missing.txt'}"))


def test_evaluate_counts_only_scored_targets():
    model = build_model(
        HaloConfig(vocab_size=16, hidden_size=16, num_layers=1, num_heads=2, max_seq_len=8, local_window=4),
        "dense",
    )
    x = torch.randint(0, 16, (2, 8))
    y = x.clone()
    y[:, :4] = -100
    res = evaluate(model.eval(), [(x, y)], None, bins=2)
    assert res["tokens"] == 8 and res["loss_by_position"][0]["tokens"] == 0
    assert res["loss_by_position"][0]["loss"] is None and res["loss_by_position"][1]["tokens"] == 8


def test_cli_sweep_over_lengths(tmp_path):
    """`python -m halo_lab.eval -m ... seq_len=16,48` from another directory: one job per length."""
    f = tmp_path / "text.txt"
    f.write_text(TEXT)
    model_dir = export(tmp_path, max_seq_len=32)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "halo_lab.eval", "-m", f"source={model_dir}", f"file={f}", "seq_len=16,48",
           f"hydra.sweep.dir={tmp_path / 'sweep'}", f"paths.data_dir={tmp_path / 'data'}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = sorted(json.loads(p.read_text())["seq_len"] for p in (tmp_path / "sweep").rglob("eval.json"))
    assert results == [16, 48]
    assert "loss" in proc.stdout and "tokens/s" in proc.stdout


def test_a_source_that_is_not_a_path_is_loaded_from_the_hub(tmp_path, monkeypatch):
    import halo_lab.hub
    from halo_lab.hub import load_from_hub

    model_dir = export(tmp_path)
    asked = []

    def fake_hub(src, **kw):
        asked.append(src)
        return load_from_hub(model_dir, **kw)

    monkeypatch.setattr(halo_lab.hub, "load_from_hub", fake_hub)
    f = tmp_path / "text.txt"
    f.write_text(TEXT)
    res = run(compose(tmp_path, "source=someone/tiny-halo", f"file={f}", "seq_len=32"))
    assert asked == ["someone/tiny-halo"] and res["model"] == "someone/tiny-halo" and res["tokens"] > 0


def test_a_sweep_job_directory_is_a_source_as_typed(tmp_path):
    """Sweep job directories are named by their overrides (`a=1,b=2`): `source=<that path>` pasted from
    the shell, unquoted, must evaluate it (Hydra's grammar alone rejects `=` and `,` in a value)."""
    job = tmp_path / "multirun" / "baseline" / "2026-01-01_00-00-00" / "module.arch=halo,seed=1"
    model_dir = export(tmp_path, max_seq_len=32)
    (job / "hub").parent.mkdir(parents=True)
    model_dir.rename(job / "hub")  # a run directory whose only model is its hub/ export
    f = job / "text=a,b.txt"  # file= takes such paths too
    f.write_text(TEXT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "halo_lab.eval", f"source={job}", f"file={f}", "seq_len=16", "device=cpu",
           f"hydra.run.dir={tmp_path / 'out'}", f"paths.data_dir={tmp_path / 'data'}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert result["model"] == str(job / "hub") and result["data"] == f"file {f}" and result["tokens"] > 0


def test_path_overrides_are_quoted_only_where_hydra_needs_it(tmp_path):
    from halo_lab.runner.tool_app import quote_path_overrides

    a, b = tmp_path / "x=1,y=2", tmp_path / "x=2,y=2"
    for d in (a, b):
        d.mkdir()
    plain = tmp_path / "book.txt"
    plain.write_text("x")

    def q(*args):
        return quote_path_overrides(list(args), ("source", "file"))

    assert q(f"source={a}", f"file={plain}", "seq_len=8") == [f"source='{a}'", f"file={plain}", "seq_len=8"]
    assert q("source=owner/name") == ["source=owner/name"]  # a Hub id
    assert q("-m", f"source={a},{b}") == ["-m", f"source='{a}','{b}'"]  # a sweep over both jobs
    assert q("-m", f"source={plain},{plain}") == ["-m", f"source={plain},{plain}"]
    assert q(f"source={tmp_path}/gone=1,b=2") == [f"source='{tmp_path}/gone=1,b=2'"]  # then: no such file
    assert q(f"source={tmp_path}/gone,b") == [f"source='{tmp_path}/gone,b'"]  # no -m: not a sweep
    assert q("source='quoted=1'", "data=text") == ["source='quoted=1'", "data=text"]
    odd = tmp_path / "it's ${x} [1]"
    odd.mkdir()
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parsed = OverridesParser.create().parse_override(q(f"source={odd}")[0]).value()
    assert OmegaConf.create({"source": parsed}).source == str(odd)


def test_help_lists_only_the_groups_eval_uses():
    """conf/eval.yaml composes data and paths: --help lists those, not the runner's groups, whether the
    app starts as `python -m halo_lab.eval` or from an import (the halo-eval console script)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    as_module = [sys.executable, "-m", "halo_lab.eval", "--help"]
    imported = [
        sys.executable,
        "-c",
        "import sys; sys.argv[1:] = ['--help']; from halo_lab.eval import main; main()",
    ]
    for cmd in (as_module, imported):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        groups = proc.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
        names = [line.split(":")[0] for line in groups.splitlines()[2:] if ":" in line]
        assert names == ["data", "paths"], groups
        assert "data: copy, jsonl, mqar, needle, shakespeare, streaming, text" in groups
