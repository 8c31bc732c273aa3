"""save_for_hub / load_from_hub / push_to_hub / export: round trips, Hub cache, push, errors."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import sys
import warnings
from pathlib import Path

import pytest
import torch

from halo_lab.config import HaloConfig
from halo_lab.export import main as export_main
from halo_lab.hub import CheckpointMismatchError, load_from_hub, push_to_hub, save_for_hub
from halo_lab.model import BaselineModel, HaloSModel, build_model

SMALL = dict(
    vocab_size=61,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    local_window=4,
    dilated_offsets=[1, 2],
    num_random=1,
    dropout=0.0,
    max_seq_len=64,
    graph_block_size=8,
)


# what an export holds for transformers besides config.json + weights + README.md (halo_lab.hub.hf_files)
HF_FILES = ["configuration_halo.py", "modeling_halo.py", "generation_config.json"]
TOK = ["tokenizer.json", "tokenizer_config.json"]  # with a byte or word tokenizer


def make(arch="halo", seed=0, **kw):
    torch.manual_seed(seed)
    model = build_model(HaloConfig(**{**SMALL, **kw}), arch).eval()
    with torch.no_grad():  # move every parameter off its init so a missed tensor shows up in the logits
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def ids(vocab=SMALL["vocab_size"], n=24, seed=1):
    return torch.randint(0, vocab, (2, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def same_logits(a, b, x=None) -> bool:
    x = ids() if x is None else x
    return torch.equal(a(x)[0], b(x)[0])


def rewrite_safetensors(path: Path, change):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(path))
    change(sd)
    save_file(sd, str(path))


# ------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("arch", ["halo", "dense"])
@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_save_load_identical_logits(tmp_path, arch, safe):
    model = make(arch)
    save_for_hub(model, model.config, tmp_path, safe_serialization=safe)
    weights = "model.safetensors" if safe else "pytorch_model.bin"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["config.json", "README.md", weights, *HF_FILES]
    )
    loaded = load_from_hub(tmp_path)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.config == model.config
    assert same_logits(model, loaded)
    cls = HaloSModel if arch == "halo" else BaselineModel
    assert same_logits(model, cls.from_pretrained(str(tmp_path)))


def test_from_pretrained_refuses_the_other_class(tmp_path):
    save_for_hub(make("dense"), None, tmp_path)
    with pytest.raises(TypeError, match="BaselineModel"):
        HaloSModel.from_pretrained(str(tmp_path))


def test_config_json_and_model_card(tmp_path):
    from halo_lab import __version__

    model = make("halo")
    save_for_hub(model, model.config, tmp_path, tokenizer={"type": "char"}, repo_id="someone/tiny-halo")
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "halo-s" and cfg["architectures"] == ["HaloSModel"]
    assert cfg["halo_lab_version"] == __version__ and cfg["tokenizer"] == {"type": "char"}
    for name, value in model.config.to_dict().items():
        assert cfg[name] == value, name
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\n") and "HaloSModel" in card and 'load_from_hub("someone/tiny-halo")' in card


def test_save_refuses_a_config_that_does_not_fit(tmp_path):
    model = make("halo")
    with pytest.raises(ValueError, match="vocab_size"):
        save_for_hub(model, model.config.replace(vocab_size=70), tmp_path)


def test_tied_embeddings_saved_once_and_retied(tmp_path):
    from safetensors import safe_open

    model = make("halo", tie_embeddings=True)
    assert model.lm_head.weight is model.token_emb.weight
    save_for_hub(model, model.config, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert json.loads(f.metadata()["halo_lab.tied"]) == {"lm_head.weight": "token_emb.weight"}
    assert "token_emb.weight" in keys and "lm_head.weight" not in keys
    loaded = load_from_hub(tmp_path)
    assert loaded.lm_head.weight is loaded.token_emb.weight
    assert same_logits(model, loaded)


def test_untied_tensors_into_tied_model_is_an_error(tmp_path):
    model = make("halo")
    save_for_hub(model, model.config, tmp_path)
    with pytest.raises(CheckpointMismatchError, match="tie_embeddings"):
        load_from_hub(tmp_path, config={"tie_embeddings": True})


def test_tokenizer_is_rebuilt_and_generation_from_a_string_works(tmp_path):
    tokenizers = pytest.importorskip("halo_lab.tokenizers")
    tok = tokenizers.WordTokenizer(vocab=["to", "be", "or", "not", " ", ","])
    model = make("halo", vocab_size=tok.vocab_size)
    save_for_hub(model, model.config, tmp_path, tokenizer=tok)
    loaded = load_from_hub(tmp_path)
    assert type(loaded.tokenizer) is type(tok) and loaded.tokenizer.to_dict() == tok.to_dict()
    kw = dict(max_new_tokens=5, temperature=0)
    out = loaded.generate("to be", tokenizer=loaded.tokenizer, **kw)
    assert isinstance(out, str) and out == model.generate("to be", tokenizer=tok, **kw)


def test_tokenizer_problems_do_not_block_the_weights(tmp_path, monkeypatch):
    model = make("halo")
    save_for_hub(model, model.config, tmp_path, tokenizer={"type": "no-such-tokenizer"})
    with pytest.warns(UserWarning, match="tokenizer"):
        loaded = load_from_hub(tmp_path)
    assert loaded.tokenizer is None and same_logits(model, loaded)
    monkeypatch.setitem(sys.modules, "halo_lab.tokenizers", None)  # the module missing altogether
    with pytest.warns(UserWarning, match="halo_lab.tokenizers"):
        assert load_from_hub(tmp_path).tokenizer is None


def test_missing_fields_default_and_unknown_fields_warn(tmp_path):
    model = make("halo")
    save_for_hub(model, model.config, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["norm_eps"], cfg["graph_seed"]
    cfg["some_future_field"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="some_future_field"):
        loaded = load_from_hub(tmp_path)
    assert loaded.config.norm_eps == HaloConfig().norm_eps and loaded.config.graph_seed == 0
    assert same_logits(model, loaded)


def test_single_files(tmp_path):
    model = make("halo")
    save_for_hub(model, model.config, tmp_path / "st")
    save_for_hub(model, model.config, tmp_path / "pt", safe_serialization=False)
    # a lone .safetensors written by save_for_hub carries its config in the header metadata
    lone = tmp_path / "lone" / "weights.safetensors"
    lone.parent.mkdir()
    shutil.copy(tmp_path / "st" / "model.safetensors", lone)
    assert same_logits(model, load_from_hub(lone))
    # a file next to a config.json uses it
    assert same_logits(model, load_from_hub(tmp_path / "pt" / "pytorch_model.bin"))
    # a raw state dict without any config needs one
    raw = tmp_path / "raw.pt"
    torch.save(model.state_dict(), raw)
    with pytest.raises(ValueError, match="num_heads"):
        load_from_hub(raw)
    assert same_logits(model, load_from_hub(raw, config=model.config))
    # a dict only has to name what shapes cannot tell, plus fields that differ from the defaults
    partial = {
        k: SMALL[k]
        for k in (
            "num_heads",
            "local_window",
            "dilated_offsets",
            "num_random",
            "max_seq_len",
            "graph_block_size",
        )
    }
    loaded = load_from_hub(raw, config=partial)
    assert loaded.config.num_kv_heads == 2 and loaded.config.vocab_size == 61
    assert same_logits(model, loaded)


# ------------------------------------------------------------------------------------------ errors


def test_directory_without_config_json(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_from_hub(tmp_path)
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="run directory"):
        load_from_hub(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupted_safetensors(tmp_path, damage):
    save_for_hub(make("halo"), None, tmp_path)
    f = tmp_path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x07" * 8 + b"not a header" * 10)
    with pytest.raises(ValueError, match="corrupted or truncated safetensors"):
        load_from_hub(tmp_path)


def test_truncated_torch_file(tmp_path):
    save_for_hub(make("halo"), None, tmp_path, safe_serialization=False)
    f = tmp_path / "pytorch_model.bin"
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(ValueError, match="cannot read it as a torch checkpoint"):
        load_from_hub(tmp_path)


def test_wrong_vocabulary_names_the_tensor(tmp_path):
    save_for_hub(make("halo"), None, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["vocab_size"] = 100
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match=r"token_emb\.weight.*vocabulary.*61 tokens"):
        load_from_hub(tmp_path)
    with pytest.raises(CheckpointMismatchError, match=r"token_emb\.weight"):
        load_from_hub(tmp_path, strict=False)  # shapes are never skipped


def test_wrong_shape_names_the_tensor(tmp_path):
    save_for_hub(make("dense"), None, tmp_path)
    with pytest.raises(CheckpointMismatchError, match=r"layers\.0\.ffn\.w1\.weight: checkpoint \(128, 32\)"):
        load_from_hub(tmp_path, config={"ffn_mult": 2})


def test_strict_key_mismatch_names_the_keys(tmp_path):
    model = make("halo")
    save_for_hub(model, None, tmp_path)

    def change(sd):
        del sd["layers.1.ln_2.bias"]
        sd["layers.1.extra.weight"] = torch.zeros(3)

    rewrite_safetensors(tmp_path / "model.safetensors", change)
    with pytest.raises(
        CheckpointMismatchError, match=r"missing layers\.1\.ln_2\.bias.*unexpected layers\.1\.extra"
    ):
        load_from_hub(tmp_path)
    with pytest.warns(UserWarning, match=r"layers\.1\.ln_2\.bias"):
        loaded = load_from_hub(tmp_path, strict=False)
    with torch.no_grad():
        assert torch.equal(loaded.layers[0].attn.q_proj.weight, model.layers[0].attn.q_proj.weight)


def test_swiglu_mismatch_is_explained(tmp_path):
    save_for_hub(make("halo", use_swiglu=False), None, tmp_path)
    with pytest.raises(CheckpointMismatchError, match=r"ffn\.w3.*use_swiglu"):
        load_from_hub(tmp_path, config={"use_swiglu": True})


class _Boom:
    """Unpickling this would run code (create a file); weights_only=True must refuse before that."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_torch_files_are_loaded_weights_only(tmp_path):
    marker = tmp_path / "code-ran"
    boom = _Boom()
    boom.marker = marker
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": make("halo").state_dict(), "hyper_parameters": {"x": boom}}, ckpt)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_from_hub(ckpt)
    assert not marker.exists()


def test_local_path_that_does_not_exist_never_reaches_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    def no_network(*a, **k):
        raise AssertionError("went to the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    for path in (tmp_path / "nope", "./nope", "runs/a/b", "model.pt"):
        with pytest.raises(FileNotFoundError, match="No such file or directory"):
            load_from_hub(path)


def test_without_huggingface_hub(tmp_path, monkeypatch):
    model = make("halo")
    save_for_hub(model, None, tmp_path)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import huggingface_hub -> ImportError
    assert same_logits(model, load_from_hub(tmp_path))  # local paths still work
    with pytest.raises(ImportError, match=r"pip install 'huggingface_hub"):
        load_from_hub("someone/some-model")
    with pytest.raises(ImportError, match="huggingface_hub"):
        push_to_hub(model, None, "someone/some-model")


def _hub_error(name):
    from huggingface_hub import errors

    cls = getattr(errors, name)
    err = cls.__new__(cls)  # skip the HTTP-response constructor: only the type matters to the loader
    Exception.__init__(err, f"{name} (mocked)")
    return err


def test_repo_not_found_names_the_repo(monkeypatch):
    import huggingface_hub

    def not_found(*a, **k):
        raise _hub_error("RepositoryNotFoundError")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", not_found)
    with pytest.raises(OSError, match="no repo 'someone/missing-model'.*token"):
        load_from_hub("someone/missing-model")


# -------------------------------------------------------------------------------- local Hub cache


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1 as huggingface_hub sees it, and any socket use fails the test."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_socket(*a, **k):
        raise AssertionError("network access during an offline test")

    monkeypatch.setattr(socket.socket, "connect", no_socket)


def fill_cache(cache: Path, repo_id: str, folder: Path, commit: str, refs=("main",)) -> None:
    """Lay files out the way hf_hub_download caches them: refs/<name> -> commit, snapshots/<commit>/."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        shutil.copy(f, snap / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)


def test_load_through_local_hub_cache_offline(tmp_path, offline):
    v1, v2 = make("halo", seed=1), make("halo", seed=2)
    save_for_hub(v1, None, tmp_path / "v1")
    save_for_hub(v2, None, tmp_path / "v2", safe_serialization=False)  # the .bin fallback too
    cache = tmp_path / "cache"
    fill_cache(cache, "someone/tiny-halo", tmp_path / "v1", "1" * 40, refs=("v1",))
    fill_cache(cache, "someone/tiny-halo", tmp_path / "v2", "2" * 40, refs=("main",))
    assert same_logits(v2, load_from_hub("someone/tiny-halo", cache_dir=cache))
    assert same_logits(v1, load_from_hub("someone/tiny-halo", revision="v1", cache_dir=cache))
    assert same_logits(v1, load_from_hub("someone/tiny-halo", revision="1" * 40, cache_dir=cache))
    assert same_logits(v2, HaloSModel.from_pretrained("someone/tiny-halo", cache_dir=cache))


def test_offline_and_not_cached_names_repo_and_offline_mode(tmp_path, offline):
    with pytest.raises(OSError, match=r"'someone/not-cached'.*HF_HUB_OFFLINE=1 is set"):
        load_from_hub("someone/not-cached", cache_dir=tmp_path)


# ------------------------------------------------------------------------------------------- push


class FakeApi:
    """HfApi stand-in at its method boundary: records calls and copies what would be uploaded."""

    calls: list = []
    uploaded: dict = {}

    def __init__(self, token=None, **kw):
        self.token = token
        FakeApi.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id, **kw):
        FakeApi.calls.append(("create_repo", {"repo_id": repo_id, **kw}))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kw):
        FakeApi.calls.append(("create_branch", {"repo_id": repo_id, **kw}))

    def upload_folder(self, *, repo_id, folder_path, **kw):
        FakeApi.calls.append(("upload_folder", {"repo_id": repo_id, **kw}))
        FakeApi.uploaded = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        return "commit-info"


@pytest.fixture
def fake_api(monkeypatch):
    import huggingface_hub

    FakeApi.calls, FakeApi.uploaded = [], {}
    for name in ("create_repo", "create_branch", "upload_folder"):  # the real class, methods replaced
        monkeypatch.setattr(huggingface_hub.HfApi, name, getattr(FakeApi, name))
    return FakeApi


def test_push_to_hub_uploads_the_export_and_never_the_token(tmp_path, fake_api, caplog, monkeypatch):
    secret = "hf_" + "s3cr3tT0k3n" * 3
    model = make("halo")
    caplog.set_level(logging.DEBUG)
    out = push_to_hub(
        model,
        model.config,
        "someone/tiny-halo",
        token=secret,
        private=True,
        commit_message="first upload",
        revision="exp-1",
        tokenizer={"type": "char"},
    )
    assert out == "commit-info"
    names = [c[0] for c in fake_api.calls]
    assert names == ["create_repo", "create_branch", "upload_folder"]
    create, branch, upload = (c[1] for c in fake_api.calls)
    assert (
        create["repo_id"] == "someone/tiny-halo" and create["private"] is True and create["exist_ok"] is True
    )
    assert branch["branch"] == "exp-1"
    assert upload["commit_message"] == "first upload" and upload["revision"] == "exp-1"
    assert sorted(fake_api.uploaded) == sorted(
        ["README.md", "config.json", "model.safetensors", *HF_FILES, *TOK]
    )
    for name, data in fake_api.uploaded.items():
        assert secret.encode() not in data, name
    assert secret not in caplog.text
    # what was uploaded is a loadable export of this model
    folder = tmp_path / "uploaded"
    folder.mkdir()
    for name, data in fake_api.uploaded.items():
        (folder / name).write_bytes(data)
    assert same_logits(model, load_from_hub(folder))
    # the token from the environment is not written either
    monkeypatch.setenv("HF_TOKEN", secret)
    push_to_hub(model, None, "someone/tiny-halo")
    assert all(secret.encode() not in data for data in fake_api.uploaded.values())


def test_push_passes_the_token_to_hfapi_only(monkeypatch, tmp_path):
    import huggingface_hub

    seen = {}

    class Api(FakeApi):
        def __init__(self, token=None, **kw):
            seen["token"] = token

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    push_to_hub(make("dense"), None, "someone/x", token="hf_abc")
    assert seen["token"] == "hf_abc"


@pytest.mark.parametrize("kind", ["httpx2", "httpx", "httpx2-timeout", "offline", "http-403"])
def test_push_to_hub_without_network_raises_one_clear_line(monkeypatch, kind):
    """The library call: not the HTTP library's own exception (its class differs between huggingface_hub
    1.x and 2.x), but an OSError naming the repo, the cause and how to push later."""
    import huggingface_hub

    from halo_lab.hub import HubPushError
    from tests.test_hf_export import hub_failure

    error = hub_failure(kind)

    def fails(self, *a, **kw):
        raise error

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", fails)
    with pytest.raises(HubPushError) as info:
        push_to_hub(make("dense"), None, "someone/x")
    msg = str(info.value)
    assert isinstance(info.value, OSError) and len(msg.splitlines()) == 1
    assert "someone/x" in msg and "hf upload someone/x DIR" in msg
    if kind == "http-403":
        assert "HTTP 403 Forbidden (Invalid credentials" in msg and "hf auth login" in msg
    else:
        assert f"could not reach the Hugging Face Hub ({type(error).__name__}: " in msg


def test_push_lets_other_errors_through(monkeypatch):
    import huggingface_hub

    def bad_id(self, *a, **kw):
        raise ValueError("Repo id must use alphanumeric chars")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", bad_id)
    with pytest.raises(ValueError, match="alphanumeric"):
        push_to_hub(make("dense"), None, "bad id!")


# ------------------------------------------------------------------------------- Lightning / export


def lightning_checkpoint(model, path: Path, prefix="model.", tokenizer=None, arch=None) -> Path:
    """What the runner's ModelCheckpoint writes: plain containers only (torch >= 2.6 loads with weights_only)."""
    sd = {prefix + k: v for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    hp = {
        "model_config": model.config.to_dict(),
        "arch": arch or model.arch,
        "lr": 1e-3,
        "data": {"dataset": "shakespeare", "seq_len": 32},
    }
    if tokenizer is not None:
        hp["tokenizer"] = tokenizer
    ckpt = {
        "epoch": 1,
        "global_step": 40,
        "pytorch-lightning_version": "2.6.0",
        "state_dict": sd,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 2, "completed": 1}}}},
        "callbacks": {
            "ModelCheckpoint{'monitor': None}": {
                "best_model_score": torch.tensor(1.5),
                "best_model_path": str(path),
            }
        },
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [{"last_epoch": 40, "base_lrs": [1e-3]}],
        "hparams_name": "kwargs",
        "hyper_parameters": hp,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("prefix", ["model.", "model._orig_mod."], ids=["plain", "compiled"])
def test_lightning_ckpt_export_then_load(tmp_path, prefix, capsys):
    model = make("halo", tie_embeddings=True)
    run = tmp_path / "run"
    lightning_checkpoint(model, run / "checkpoints" / "last.ckpt", prefix, tokenizer={"type": "char"})
    assert same_logits(model, load_from_hub(run / "checkpoints" / "last.ckpt"))
    assert export_main([str(run), str(tmp_path / "out")]) == 0
    assert "exported" in capsys.readouterr().out
    loaded = load_from_hub(tmp_path / "out")
    assert isinstance(loaded, HaloSModel) and same_logits(model, loaded)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tokenizer"] == {"type": "char"}


def test_export_dense_run_takes_tokenizer_from_run_hub_dir_and_pushes(tmp_path, fake_api):
    model = make("dense")
    run = tmp_path / "run"
    lightning_checkpoint(model, run / "checkpoints" / "epoch=0-step=10.ckpt")
    save_for_hub(model, None, run / "hub", tokenizer={"type": "char"})
    rc = export_main([str(run), str(tmp_path / "out"), "--push", "someone/dense", "--private", "--bin"])
    assert rc == 0
    assert sorted(fake_api.uploaded) == sorted(
        ["README.md", "config.json", "pytorch_model.bin", *HF_FILES, *TOK]
    )
    assert json.loads(fake_api.uploaded["config.json"])["tokenizer"] == {"type": "char"}
    assert [c[1]["private"] for c in fake_api.calls if c[0] == "create_repo"] == [True]
    assert same_logits(model, load_from_hub(tmp_path / "out"))


def test_export_errors_exit_nonzero(tmp_path, capsys):
    assert export_main([str(tmp_path), str(tmp_path / "out")]) == 1
    assert "not a run directory" in capsys.readouterr().err


def test_ckpt_with_extra_lightning_module_keys(tmp_path):
    """A LightningModule holding more than the model (e.g. a loss module with a buffer)."""
    model = make("halo")
    path = lightning_checkpoint(model, tmp_path / "x.ckpt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["loss_fn.weight"] = torch.ones(3)
    torch.save(ckpt, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert same_logits(model, load_from_hub(path))


def test_save_unwraps_compiled_model(tmp_path):
    from safetensors import safe_open

    model = make("halo")
    save_for_hub(torch.compile(model), None, tmp_path)  # never run: only the wrapper's keys matter
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert not any("_orig_mod" in k for k in f.keys())
    assert same_logits(model, load_from_hub(tmp_path))


def test_real_lightning_checkpoint(tmp_path):
    """A checkpoint written by Lightning itself (loops, callback and optimizer state) loads weights_only."""
    L = pytest.importorskip("lightning")
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, TensorDataset

    class Module(L.LightningModule):
        def __init__(self, model_config: dict, arch: str, tokenizer: dict):
            super().__init__()
            self.save_hyperparameters()  # plain containers, as the runner saves them
            self.model = build_model(model_config, arch)

        def training_step(self, batch, batch_idx):
            return self.model(*batch)[1]

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    cfg = HaloConfig(**SMALL).to_dict()
    module = Module(cfg, "halo", {"type": "char"})
    x = ids(n=16)
    data = DataLoader(TensorDataset(x, torch.roll(x, -1, 1)), batch_size=1)
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)],
    )
    trainer.fit(module, data)
    loaded = load_from_hub(tmp_path / "checkpoints" / "last.ckpt")
    assert same_logits(module.model.eval(), loaded)
    pytest.importorskip("halo_lab.tokenizers")
    assert loaded.tokenizer.to_dict() == {"type": "char"}
