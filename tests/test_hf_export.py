"""Exports for the Hugging Face ecosystem: transformers loads them (trust_remote_code) with halo_lab's
logits and greedy generations, AutoTokenizer gives halo_lab's ids, the model card carries license, data
and metrics, file modes follow the umask, and an offline push fails with one line after the export."""

from __future__ import annotations

import json
import os
import stat
import sys

import pytest
import torch

from halo_lab.config import HaloConfig
from halo_lab.export import main as export_main
from halo_lab.hub import hf_files, load_from_hub, save_for_hub
from halo_lab.model import build_model
from halo_lab.tokenizers import CharacterTokenizer, WordTokenizer

SMALL = dict(
    vocab_size=256,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    local_window=8,
    dilated_offsets=[1, 2],
    num_random=2,
    dropout=0.0,
    max_seq_len=96,
    graph_block_size=16,
)
TEXT = "To be, or not to be: that is the question.\nWhether 'tis nobler in the mind to suffer\n"


def make(arch="halo", **kw):
    torch.manual_seed(0)
    model = build_model(HaloConfig(**{**SMALL, **kw}), arch).eval()
    with torch.no_grad():  # off the init, so a tensor that does not load shows in the logits
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def hf_load(path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=True).eval()


@pytest.mark.parametrize(
    "arch,kw",
    [
        ("halo", {}),
        ("halo", {"random_edges": "token", "short_conv": 3, "norm": "rmsnorm"}),
        ("halo", {"tie_embeddings": True, "use_swiglu": False, "num_globals": 0}),
        ("dense", {}),
        ("halo", {"select_blocks": 2, "select_block_size": 4, "select_group_size": 0}),
        ("halo", {"select_blocks": 2, "select_block_size": 4, "select_group_size": 3, "short_conv": 3}),
        ("halo", {"select_blocks": 3, "select_block_size": 8, "select_summary_keys": False}),
        ("halo", {"select_blocks": 2, "select_block_size": 4, "select_pooling": "learned"}),
        (
            "halo",
            {
                "select_blocks": 2,
                "select_block_size": 4,
                "select_pooling": "learned",
                "select_summary_bias": -1.5,
            },
        ),
        (
            "halo",
            {"select_blocks": 2, "select_block_size": 4, "select_group_size": 3, "select_score": "bound"},
        ),
        (
            "halo",
            {
                "select_blocks": 2,
                "select_block_size": 4,
                "select_score": "bound",
                "select_summary_bias": -1.5,
                "select_token_bias": -1.0,
            },
        ),
    ],
    ids=[
        "halo-block",
        "halo-token-conv-rms",
        "halo-tied-gelu-noglobals",
        "dense",
        "select-flat",
        "select-groups-conv",
        "select-no-summary-keys",
        "select-learned-pooling",
        "select-summary-bias",  # the perturbation gives each KV head its own bias
        "select-bound-score",
        "select-token-bias",
    ],
)
def test_transformers_round_trip_logits_and_greedy_generate(tmp_path, arch, kw):
    model = make(arch, **kw)
    save_for_hub(model, None, tmp_path, tokenizer=CharacterTokenizer())
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["auto_map"] == hf_files.AUTO_MAP
    hf = hf_load(tmp_path)
    # the remote code imports no halo_lab module: its graph is its own
    assert not any(
        line.startswith(("import halo_lab", "from halo_lab"))
        for name in hf_files.REMOTE_FILES
        for line in (tmp_path / name).read_text().splitlines()
    )
    x = torch.randint(0, 256, (2, 90), generator=torch.Generator().manual_seed(3))  # > W * dilation, > block
    with torch.no_grad():
        ours, theirs = model(x)[0], hf(x).logits
    assert theirs.shape == ours.shape
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    prompt = x[:1, :12]
    greedy = model.generate(prompt, max_new_tokens=16, temperature=0)
    out = hf.generate(prompt, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert out.tolist() == greedy.tolist()
    sampled = hf.generate(
        prompt, max_new_tokens=8, do_sample=True, top_k=20, eos_token_id=None, pad_token_id=0
    )
    assert sampled.shape == (1, 20) and torch.equal(sampled[:, :12], prompt)


def test_hf_graph_mask_equals_halo_lab_graph():
    pytest.importorskip("transformers")
    from halo_lab import graph
    from halo_lab.hub.hf_remote import configuration_halo, modeling_halo  # the files copied into exports

    for kw in ({}, {"random_edges": "token"}, {"dilation_rule": "absolute", "dilated_offsets": [3, 9, 12]}):
        cfg = HaloConfig(**{**SMALL, **kw})
        hf_cfg = configuration_halo.HaloSConfig(**cfg.to_dict())
        for layer in (0, 1):
            ours = graph.dense_mask(cfg, layer, graph.EVAL_STEP, 150)
            assert torch.equal(modeling_halo.graph_mask(hf_cfg, layer, 150, "cpu"), ours), (kw, layer)


def test_byte_and_word_tokenizer_files_give_halo_lab_ids(tmp_path):
    transformers = pytest.importorskip("transformers")
    char = CharacterTokenizer()
    save_for_hub(make(), None, tmp_path / "char", tokenizer=char)
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "char"), trust_remote_code=True)
    text = TEXT + "Ünïcödé — ok"
    assert tok(text).input_ids == char.encode(text)
    assert tok.decode(char.encode(text)) == text

    word = WordTokenizer().build_vocab([TEXT])
    model = make(vocab_size=word.vocab_size)
    save_for_hub(model, None, tmp_path / "word", tokenizer=word)
    cfg = json.loads((tmp_path / "word" / "config.json").read_text())
    assert cfg["tokenizer"] == {"type": "word", "file": "halo_tokenizer.json"}  # no vocabulary in config.json
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "word"), trust_remote_code=True)
    assert tok(TEXT).input_ids == word.encode(TEXT)
    assert tok.decode(word.encode(TEXT)) == TEXT
    assert tok.eos_token_id == word.eos_token_id and tok.unk_token_id == word.unk_token_id
    loaded = load_from_hub(tmp_path / "word")  # halo_lab rebuilds its own tokenizer from the side file
    assert isinstance(loaded.tokenizer, WordTokenizer) and loaded.tokenizer.itos == word.itos


def test_tiktoken_export_records_the_encoding_name(tmp_path):
    desc = {"type": "tiktoken", "encoding": "cl100k_base"}
    save_for_hub(make(), None, tmp_path, tokenizer=desc)
    assert json.loads((tmp_path / "config.json").read_text())["tokenizer"] == desc
    assert not (tmp_path / "tokenizer.json").exists()
    assert "cl100k_base" in (tmp_path / "README.md").read_text()


def test_model_card_license_datasets_metrics_graph(tmp_path):
    from huggingface_hub import ModelCard

    metrics = {"val_loss": 1.7078, "val_ppl": 5.517, "val_bpt": 2.4638, "steps": 500}
    save_for_hub(
        make(), None, tmp_path, tokenizer={"type": "char"}, metrics=metrics, datasets=["shakespeare"]
    )
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.license == "mit" and card.data.datasets == ["shakespeare"]
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"loss": 1.7078, "perplexity": 5.517, "bits_per_token": 2.4638}
    text = card.text
    assert "trust_remote_code=True" in text and "G=2, W=8, dilated [8, 16], R=2" in text


def test_file_modes_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_for_hub(make(), None, tmp_path, tokenizer={"type": "char"})
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes


def test_export_of_a_run_dir_puts_its_metrics_and_data_in_the_card(tmp_path):
    from tests.test_hub import lightning_checkpoint

    model = make()
    run = tmp_path / "run"
    lightning_checkpoint(model, run / "checkpoints" / "last.ckpt", tokenizer={"type": "char"})
    (run / "metrics.json").write_text(json.dumps({"val_loss": 2.25, "val_ppl": 9.49}))
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("data:\n  dataset: text\n  path: /data/book.txt\n")
    assert export_main([str(run), str(tmp_path / "out")]) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert "- book.txt" in card and "value: 2.25" in card


def hub_failure(kind: str) -> BaseException:
    """An exception of the class the installed huggingface_hub (or its HTTP library) raises for ``kind``:
    no network (DNS / refused connection), a timeout, offline mode, or the Hub's answer 401/403/500."""
    import huggingface_hub

    if kind in ("httpx", "httpx2"):  # huggingface_hub 1.x: httpx; 2.x: httpx2 (not an httpx subclass)
        mod = pytest.importorskip(kind)
        return mod.ConnectError("[Errno -2] Name or service not known")
    if kind == "httpx2-timeout":
        return pytest.importorskip("httpx2").ReadTimeout("The read operation timed out")
    if kind == "requests":  # huggingface_hub < 1.0
        return pytest.importorskip("requests").exceptions.ConnectionError("Max retries exceeded with url")
    if kind == "timeout":
        return TimeoutError("timed out")
    if kind == "offline":
        return huggingface_hub.errors.OfflineModeIsEnabled(
            "Cannot reach https://huggingface.co: offline mode"
        )
    status = int(kind.removeprefix("http-"))  # what hf_raise_for_status makes of the Hub's answer
    from huggingface_hub.errors import Response  # httpx's (1.x) or httpx2's (2.x) Response class
    from huggingface_hub.utils import hf_raise_for_status

    request = sys.modules[Response.__module__.split(".")[0]].Request(
        "POST", "https://huggingface.co/api/repos/create"
    )
    response = Response(
        status, request=request, json={"error": "Invalid credentials in Authorization header"}
    )
    try:
        hf_raise_for_status(response)
    except Exception as e:  # noqa: BLE001 - whatever class this version raises
        return e
    raise AssertionError(f"hf_raise_for_status({status}) raised nothing")


KINDS = ["httpx", "httpx2", "httpx2-timeout", "requests", "timeout", "offline", "http-401", "http-500"]


@pytest.mark.parametrize("step", ["create_repo", "upload_folder"])
@pytest.mark.parametrize("kind", KINDS)
def test_failed_push_is_one_line_after_the_export(tmp_path, monkeypatch, capsys, kind, step):
    import huggingface_hub

    error = hub_failure(kind)

    def fails(self, *a, **kw):
        raise error

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, *a, **kw: None)
    monkeypatch.setattr(huggingface_hub.HfApi, step, fails)
    src, out = tmp_path / "src", tmp_path / "out"
    save_for_hub(make(), None, src, tokenizer={"type": "char"})
    assert export_main([str(src), str(out), "--push", "someone/tiny", "--private"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("halo_lab.export: error: ") and "someone/tiny" in err
    assert f"the export in {out} is complete" in err
    assert f"hf upload someone/tiny {out} --private" in err
    if kind == "http-401":
        assert "hf auth login" in err and "HF_TOKEN" in err
    assert (out / "model.safetensors").is_file() and (out / "modeling_halo.py").is_file()


def test_export_of_a_checkpoint_takes_the_word_vocabulary_from_the_run_hub_dir(tmp_path):
    from tests.test_hub import lightning_checkpoint

    word = WordTokenizer().build_vocab([TEXT])
    model = make(vocab_size=word.vocab_size)
    run = tmp_path / "run"
    lightning_checkpoint(model, run / "checkpoints" / "last.ckpt")  # no tokenizer in the checkpoint
    save_for_hub(model, None, run / "hub", tokenizer=word)
    assert export_main([str(run), str(tmp_path / "out")]) == 0
    loaded = load_from_hub(tmp_path / "out")
    assert isinstance(loaded.tokenizer, WordTokenizer) and loaded.tokenizer.itos == word.itos
