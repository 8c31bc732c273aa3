"""Security and data (issue 28): no checkpoint runs code through any door, a token cache is checked by
content, tokenizer files stay inside the model folder, an export never writes through a symlink."""

from __future__ import annotations

import builtins
import hashlib
import os
import pickle
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

SMALL = dict(
    vocab_size=61,
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    local_window=4,
    dilated_offsets=[1, 2],
    num_random=1,
    dropout=0.0,
    max_seq_len=64,
    graph_block_size=8,
)


# ---------------------------------------------------------------------------------------------- 1. pickles
class _Reduce:
    """Unpickling it calls ``fn(*args)``: every payload below creates the marker file."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _good_checkpoint() -> dict:
    """What the runner writes: a Lightning checkpoint of plain containers (model_config, arch, tokenizer)."""
    import lightning

    from halo_lab.runner.module import HaloLitModule

    torch.manual_seed(0)
    m = HaloLitModule(model_config=dict(SMALL), arch="halo", tokenizer={"type": "char"})
    return {
        "state_dict": m.state_dict(),
        "hyper_parameters": dict(m.hparams),
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
    }


PAYLOADS = ["open", "exec", "os.system", "subprocess.run", "in_state_dict", "in_hparams", "legacy", "pickle"]


def _plant(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    """A checkpoint that would create ``marker`` if it were unpickled with weights_only=False."""
    marker = tmp_path / f"MARKER_{kind.replace('.', '_')}"
    path = tmp_path / f"evil_{kind.replace('.', '_')}.ckpt"
    m = str(marker)
    good = _good_checkpoint()
    opened = _Reduce(builtins.open, (m, "w"))
    if kind == "open":
        torch.save({**good, "x": opened}, path)
    elif kind == "exec":
        torch.save({**good, "x": _Reduce(builtins.exec, (f"open({m!r}, 'w')",))}, path)
    elif kind == "os.system":
        torch.save({**good, "x": _Reduce(os.system, (f"touch {m}",))}, path)
    elif kind == "subprocess.run":
        torch.save({**good, "x": _Reduce(subprocess.run, (["touch", m],))}, path)
    elif kind == "in_state_dict":
        torch.save({**good, "state_dict": {**good["state_dict"], "model.w": opened}}, path)
    elif kind == "in_hparams":
        torch.save({**good, "hyper_parameters": {**good["hyper_parameters"], "arch": opened}}, path)
    elif kind == "legacy":
        torch.save({**good, "x": opened}, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as fh:
            pickle.dump({**good, "x": opened}, fh)
    return path, marker


def _lightning(p: Path, out: Path):
    from halo_lab.runner.module import HaloLitModule

    return HaloLitModule.load_from_checkpoint(p)


def _lightning_asked_unsafe(p: Path, out: Path):
    from halo_lab.runner.module import HaloLitModule

    return HaloLitModule.load_from_checkpoint(p, weights_only=False)  # asked for, never granted


def _lightning_file_object(p: Path, out: Path):
    from halo_lab.lit import HaloLitModule  # the old import path too

    with open(p, "rb") as fh:
        return HaloLitModule.load_from_checkpoint(fh)


def _trainer(p: Path, out: Path, stage: str = "validate"):
    """The runner's Trainer (its checkpoint plugin), weights_only left to Lightning's default."""
    import lightning.pytorch as pl
    from halo_lab.runner.callbacks import AtomicCheckpointIO

    from halo_lab.runner.module import HaloLitModule

    m = HaloLitModule(model_config=dict(SMALL))
    x = torch.randint(0, SMALL["vocab_size"], (2, 16))
    loader = torch.utils.data.DataLoader(list(zip(x, x, strict=True)), batch_size=2)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
        plugins=[AtomicCheckpointIO()],
    )
    if stage == "fit":
        return trainer.fit(m, train_dataloaders=loader, ckpt_path=p)
    return trainer.validate(m, dataloaders=loader, ckpt_path=p)


def _trainer_fit(p: Path, out: Path):
    return _trainer(p, out, "fit")


def _integrity(p: Path, out: Path):
    from halo_lab.checkpoint.integrity import load_checkpoint_file

    return load_checkpoint_file(p)


def _hub(p: Path, out: Path):
    from halo_lab.hub import load_from_hub

    return load_from_hub(p)


def _from_pretrained(p: Path, out: Path):
    from halo_lab import HaloSModel

    return HaloSModel.from_pretrained(p)


def _export_cli(p: Path, out: Path):
    from halo_lab.export import main

    if main([str(p), str(out / "export")]) != 0:
        raise RuntimeError("export failed")


def _generate_cli(p: Path, out: Path):
    from halo_lab.generate import main

    if main([str(p), "ab", "--max-new-tokens", "2", "--device", "cpu", "--tokenizer", "char"]) != 0:
        raise RuntimeError("generate failed")


def _eval_cli(p: Path, out: Path):
    from halo_lab.eval import load_model

    return load_model(str(p), torch.device("cpu"))


DOORS = {
    "LightningModule.load_from_checkpoint": _lightning,
    "load_from_checkpoint(weights_only=False)": _lightning_asked_unsafe,
    "load_from_checkpoint(file object)": _lightning_file_object,
    "Trainer.validate(ckpt_path)": _trainer,
    "Trainer.fit(ckpt_path)": _trainer_fit,
    "checkpoint.integrity": _integrity,
    "hub.load_from_hub": _hub,
    "HaloSModel.from_pretrained": _from_pretrained,
    "export CLI": _export_cli,
    "generate CLI": _generate_cli,
    "eval CLI": _eval_cli,
}


@pytest.mark.parametrize("force", [False, True], ids=["default", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1"])
@pytest.mark.parametrize("door", list(DOORS))
def test_no_door_runs_a_planted_pickle(tmp_path, monkeypatch, door, force):
    if force:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    else:
        monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    kinds = PAYLOADS if door == "LightningModule.load_from_checkpoint" else ["open", "in_hparams"]
    for kind in kinds:
        evil, marker = _plant(tmp_path, kind)
        with pytest.raises(Exception):  # noqa: B017 - each door has its own (one-line) error
            DOORS[door](evil, tmp_path)
        assert not marker.exists(), f"{door}: the {kind} payload ran"


def test_load_from_checkpoint_still_loads_a_good_checkpoint(tmp_path, monkeypatch):
    from halo_lab.runner.module import HaloLitModule

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    good = _good_checkpoint()
    torch.save(good, tmp_path / "good.ckpt")
    m = HaloLitModule.load_from_checkpoint(tmp_path / "good.ckpt")
    assert m.hparams.arch == "halo" and m.get_tokenizer() is not None
    for k, v in good["state_dict"].items():
        assert torch.equal(m.state_dict()[k], v), k


# ---------------------------------------------------------------------------------------------- 2. token cache
TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(80))


def _tamper(ds, data: bytes, meta: dict | None = None) -> None:
    """Replace the cached tokens of ``ds`` by same-size ``data`` (size and mtime kept: only the content
    tells), optionally edit its metadata, and forget what this process verified (as a new process would)."""
    import json

    from halo_lab.data import cache

    p = Path(ds.cache_path)
    st = p.stat()
    assert len(data) == st.st_size
    p.write_bytes(data)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    if meta is not None:
        mp = p.with_suffix(".json")
        mp.write_text(json.dumps({**json.loads(mp.read_text()), **meta}))
    getattr(cache, "_VERIFIED", set()).clear()


def _corpus(tmp_path: Path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text(TEXT)
    return p


def test_same_size_garbage_in_the_token_cache_is_rebuilt(tmp_path):
    from halo_lab.data import TextDataset

    corpus, c = _corpus(tmp_path), tmp_path / "cache"
    first = TextDataset(corpus, "char", 16, cache_dir=c)
    _tamper(first, bytes(reversed(TEXT.encode())))
    with pytest.warns(UserWarning, match=rf"{first.cache_path.name}.*checksum.*rebuil") as rec:
        again = TextDataset(corpus, "char", 16, cache_dir=c)
    assert len([w for w in rec if "token cache" in str(w.message)]) == 1
    assert "\n" not in str(rec[0].message)
    assert not again.cache_reused and bytes(np.asarray(again.tokens)) == TEXT.encode()
    # Rebuilt: the next open reuses it, silently.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert TextDataset(corpus, "char", 16, cache_dir=c).cache_reused
    assert again.cache_meta["tokens_sha256"] == hashlib.sha256(TEXT.encode()).hexdigest()


def test_token_ids_beyond_the_vocabulary_are_rebuilt_not_an_index_error(tmp_path):
    from halo_lab.data import TextDataset
    from halo_lab.tokenizers import TiktokenTokenizer

    corpus, c, tok = _corpus(tmp_path), tmp_path / "cache", TiktokenTokenizer()
    first = TextDataset(corpus, tok, 16, cache_dir=c)
    good = np.asarray(first.tokens).copy()
    bad = good.copy()
    bad[len(bad) // 2] = np.iinfo(bad.dtype).max  # far beyond the vocabulary
    # Even with a checksum that matches the garbage, the ids are checked against the vocabulary.
    _tamper(first, bad.tobytes(), {"tokens_sha256": hashlib.sha256(bad.tobytes()).hexdigest()})
    with pytest.warns(UserWarning, match=rf"{first.cache_path.name}.*token id.*vocabulary"):
        again = TextDataset(corpus, tok, 16, cache_dir=c)
    assert not again.cache_reused and np.array_equal(np.asarray(again.tokens), good)


def test_a_cache_without_a_checksum_is_rebuilt(tmp_path):
    from halo_lab.data import JSONLDataset

    src = tmp_path / "d.jsonl"
    src.write_text("".join(f'{{"text": "document {i} with some words"}}\n' for i in range(60)))
    c = tmp_path / "cache"
    first = JSONLDataset(src, "char", 16, cache_dir=c)
    _tamper(first, bytes(Path(first.cache_path).read_bytes()), {"tokens_sha256": None})
    with pytest.warns(UserWarning, match=rf"{first.cache_path.name}.*no checksum"):
        assert not JSONLDataset(src, "char", 16, cache_dir=c).cache_reused


def test_a_bad_cache_that_cannot_be_rebuilt_is_a_one_line_error(tmp_path):
    from halo_lab.data import TextDataset

    corpus, c = _corpus(tmp_path), tmp_path / "cache"
    first = TextDataset(corpus, "char", 16, cache_dir=c)
    _tamper(first, b"x" * len(TEXT.encode()))
    # Something in the way of the rebuild (here: a directory where its temp file goes).
    Path(f"{first.cache_path}.tmp{os.getpid()}").mkdir()
    with pytest.raises(ValueError) as exc, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        TextDataset(corpus, "char", 16, cache_dir=c)
    msg = str(exc.value)
    assert "\n" not in msg and first.cache_path.name in msg and "checksum" in msg and "rebuil" in msg


def test_the_cache_is_hashed_once_per_process(tmp_path, monkeypatch):
    from halo_lab.data import TextDataset, cache

    corpus, c = _corpus(tmp_path), tmp_path / "cache"
    TextDataset(corpus, "char", 16, cache_dir=c)
    cache._VERIFIED.clear()
    calls = []
    real = cache._scan_tokens
    monkeypatch.setattr(cache, "_scan_tokens", lambda *a: calls.append(a) or real(*a))
    for _ in range(3):
        assert TextDataset(corpus, "char", 16, cache_dir=c).cache_reused
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------- 3. tokenizer files
def _word_model(tmp_path: Path, safetensors: bool = True) -> tuple[Path, Path]:
    """A saved model with a word vocabulary (config.json: tokenizer.file) and another vocabulary outside."""
    import json

    from halo_lab.config import HaloConfig
    from halo_lab.hub import save_for_hub
    from halo_lab.model import build_model
    from halo_lab.tokenizers import WordTokenizer

    tok = WordTokenizer().build_vocab(["the king and the queen"])
    model = build_model(HaloConfig(**SMALL), "halo")
    folder = save_for_hub(model, None, tmp_path / "model", safetensors, tokenizer=tok)
    assert json.loads((folder / "config.json").read_text())["tokenizer"]["file"] == "halo_tokenizer.json"
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(WordTokenizer().build_vocab(["an attacker's vocabulary"]).to_dict()))
    return folder, outside


def _set_file(folder: Path, name: str) -> None:
    import json

    cfg = json.loads((folder / "config.json").read_text())
    cfg["tokenizer"]["file"] = name
    (folder / "config.json").write_text(json.dumps(cfg))


def _escapes(folder: Path, outside: Path) -> dict[str, str]:
    """How a tokenizer file can point outside the model folder -> the path the error must name."""
    return {
        "../outside.json": "../outside.json",
        "absolute": str(outside),
        "sub/../../outside.json": "sub/../../outside.json",
        "symlink": "halo_tokenizer.json",
    }


def _plant_escape(folder: Path, outside: Path, how: str) -> None:
    if how == "symlink":
        (folder / "halo_tokenizer.json").unlink()
        (folder / "halo_tokenizer.json").symlink_to(os.path.relpath(outside, folder))
    else:
        (folder / "sub").mkdir()
        _set_file(folder, str(outside) if how == "absolute" else how)


@pytest.mark.parametrize("how", ["../outside.json", "absolute", "sub/../../outside.json", "symlink"])
@pytest.mark.parametrize("what", ["folder", "weights file beside config.json"])
def test_a_tokenizer_file_outside_the_model_folder_is_refused(tmp_path, how, what):
    import re

    from halo_lab.hub import load_from_hub

    folder, outside = _word_model(tmp_path, safetensors=what == "folder")
    _plant_escape(folder, outside, how)
    named = _escapes(folder, outside)[how]
    with pytest.raises(ValueError) as exc:  # a .bin holds no config: the one beside it is read
        load_from_hub(folder if what == "folder" else folder / "pytorch_model.bin")
    msg = str(exc.value)
    assert "\n" not in msg and "tokenizer.file" in msg and re.escape(named) in re.escape(msg), msg
    assert "outside the model folder" in msg


def test_a_tokenizer_file_inside_the_model_folder_still_loads(tmp_path):
    from halo_lab.hub import load_from_hub

    folder, _ = _word_model(tmp_path)
    tok = load_from_hub(folder).tokenizer
    assert tok.decode(tok.encode("the queen")) == "the queen" and tok.vocab_size == 7
    (folder / "sub").mkdir()
    _set_file(folder, "sub/../halo_tokenizer.json")  # a '..' that stays inside is fine
    assert load_from_hub(folder).tokenizer.to_dict() == tok.to_dict()


@pytest.mark.parametrize("tool", ["export", "generate"])
def test_run_directory_tokenizer_files_stay_inside_the_hub_folder(tmp_path, tool):
    """The tools' fallback (a checkpoint without a tokenizer: the run's hub/config.json) obeys the rule."""
    folder, outside = _word_model(tmp_path)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    folder.rename(run / "hub")
    _set_file(run / "hub", "../../outside.json")
    with pytest.raises(
        ValueError, match=r"tokenizer\.file=.*\.\./\.\./outside\.json.*outside the model folder"
    ):
        if tool == "export":
            from halo_lab.export import _run_dir_tokenizer

            _run_dir_tokenizer(run)
        else:
            from halo_lab.generate import _run_dir_tokenizer

            _run_dir_tokenizer(str(run / "checkpoints" / "last.ckpt"))


def test_tokenizer_from_dict_never_ignores_a_file_reference():
    from halo_lab.tokenizers import tokenizer_from_dict

    with pytest.raises(ValueError, match=r"tokenizer\.file"):
        tokenizer_from_dict({"type": "word", "file": "halo_tokenizer.json"})  # was: an empty vocabulary


def test_a_hub_repo_tokenizer_file_outside_the_repo_is_refused(tmp_path, monkeypatch):
    import huggingface_hub

    from halo_lab.hub import load_from_hub

    folder, outside = _word_model(tmp_path)
    _set_file(folder, "../outside.json")
    asked = []

    def download(repo_id, filename, **kw):
        asked.append(filename)
        return str(folder / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(
        ValueError, match=r"owner/model/config\.json: tokenizer\.file='\.\./outside\.json' is outside"
    ):
        load_from_hub("owner/model")
    assert not any(".." in a for a in asked), asked


# ---------------------------------------------------------------------------------------------- 4. export symlinks
EXPORT_FILES = [
    "config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "README.md",
    "configuration_halo.py",
    "modeling_halo.py",
    "tokenizer.json",
    "tokenizer_config.json",
    "halo_tokenizer.json",
    "generation_config.json",
]


def _plant_links(out: Path, victims: Path) -> dict[Path, Path]:
    """A symlink in ``out`` for every file an export writes (and one it does not), each to its own victim
    file outside (mode 0600): a write through a link would change the victim's content or mode."""
    out.mkdir(parents=True)
    victims.mkdir()
    links = {}
    for name in [*EXPORT_FILES, "notes.txt"]:
        v = victims / f"victim-{name}"
        v.write_text("VICTIM")
        os.chmod(v, 0o600)
        (out / name).symlink_to(v)
        links[out / name] = v
    return links


def _untouched(links: dict[Path, Path], written: list[str]) -> None:
    for link, victim in links.items():
        assert victim.read_text() == "VICTIM", f"the export wrote through {link}"
        assert victim.stat().st_mode & 0o777 == 0o600, f"the export changed the mode of {victim} via {link}"
        if link.name in written:
            assert not link.is_symlink() and link.is_file(), link


@pytest.mark.parametrize("safetensors", [True, False], ids=["safetensors", "bin"])
def test_save_for_hub_never_writes_through_a_symlink(tmp_path, safetensors):
    from halo_lab.config import HaloConfig
    from halo_lab.hub import load_from_hub, save_for_hub
    from halo_lab.model import build_model
    from halo_lab.tokenizers import WordTokenizer

    out = tmp_path / "out"
    links = _plant_links(out, tmp_path / "victims")
    model = build_model(HaloConfig(**SMALL), "halo").eval()
    tok = WordTokenizer().build_vocab(["the king and the queen"])
    save_for_hub(model, None, out, safetensors, tokenizer=tok)
    written = [n for n in EXPORT_FILES if n != ("pytorch_model.bin" if safetensors else "model.safetensors")]
    _untouched(links, written)
    x = torch.randint(0, SMALL["vocab_size"], (1, 12))
    with torch.no_grad():
        assert torch.equal(load_from_hub(out)(x)[0], model(x)[0])
    assert load_from_hub(out).tokenizer.to_dict() == tok.to_dict()


def test_export_cli_never_writes_through_a_symlink(tmp_path):
    from halo_lab.export import main

    src, _ = _word_model(tmp_path)
    out = tmp_path / "out"
    links = _plant_links(out, tmp_path / "victims")
    assert main([str(src), str(out)]) == 0
    _untouched(links, [n for n in EXPORT_FILES if n != "pytorch_model.bin"])
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())
