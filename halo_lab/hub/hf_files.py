"""The files of an export that the Hugging Face ecosystem reads, beside halo_lab's config.json + weights.

* remote code: ``configuration_halo.py`` + ``modeling_halo.py`` (halo_lab/hub/hf_remote/, self-contained) and
  the ``auto_map`` that points ``AutoConfig`` / ``AutoModelForCausalLM`` at them (``trust_remote_code``);
* ``tokenizer.json`` + ``tokenizer_config.json`` built with HF ``tokenizers`` (byte and word tokenizers;
  a tiktoken encoding is recorded by name: tiktoken itself loads it), and ``generation_config.json``;
* the model card through huggingface_hub's ``ModelCard`` / ``ModelCardData`` (license, datasets, the
  run's metrics as model-index results, the graph, how to load);
* file modes: every file follows the umask (safetensors writes 0600);
* :func:`write_file`: how every file of an export is written: a temp file in the folder renamed over the
  name, so a symlink planted in the output folder is replaced, never written through.
"""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

REMOTE_DIR = Path(__file__).resolve().parent / "hf_remote"
REMOTE_FILES = ("configuration_halo.py", "modeling_halo.py")
AUTO_MAP = {
    "AutoConfig": "configuration_halo.HaloSConfig",
    "AutoModelForCausalLM": "modeling_halo.HaloSForCausalLM",
}
HALO_TOKENIZER_NAME = "halo_tokenizer.json"  # halo_lab's own description when it is large (a word vocab)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", HALO_TOKENIZER_NAME)
LICENSE = "mit"
WORD_PATTERN = r"\w+|[^\w\s]|\s+"  # halo_lab.tokenizers._WORD_PATTERN


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_file(
    path: Path, data: bytes | str | None = None, writer: Callable[[str], Any] | None = None
) -> Path:
    """Write ``data`` (or let ``writer(temp_path)`` write) to ``path`` without ever following a symlink:
    a new temp file in the same folder (O_EXCL: never an existing file or link), mode 0666 & ~umask,
    renamed over ``path``. A symlink at ``path`` is replaced by the file; its target is left untouched,
    and a crash leaves the old file (or none), never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if data is not None:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            os.fchmod(f.fileno(), 0o666 & ~_umask())
        if writer is not None:
            writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_remote_code(out: Path) -> None:
    for name in REMOTE_FILES:
        write_file(out / name, (REMOTE_DIR / name).read_bytes())


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table: the alphabet of HF's ByteLevel pre-tokenizer/decoder."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def hf_tokenizer(desc: dict[str, Any]):
    """A ``tokenizers.Tokenizer`` with halo_lab's ids for a char or word description; None for others."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    kind = desc.get("type")
    if kind == "char":  # one token per byte: a byte-level BPE without merges, ids = byte values
        vocab = {ch: b for b, ch in bytes_to_unicode().items()}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        return tok
    if kind == "word":
        unk, eos = desc.get("unk_token", "<unk>"), desc.get("eos_token", "<eos>")
        itos = [unk, eos] + [w for w in desc["vocab"] if w not in (unk, eos)]
        tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(itos)}, unk_token=unk))
        if desc.get("lowercase"):
            tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated")
        tok.decoder = decoders.Fuse()  # pieces carry their own whitespace: join them as they are
        tok.add_special_tokens([unk, eos])
        return tok
    return None


def write_tokenizer_files(out: Path, desc: dict[str, Any] | None, max_len: int) -> dict[str, Any] | None:
    """Write tokenizer.json / tokenizer_config.json; returns the description config.json keeps (a word
    vocabulary goes to halo_tokenizer.json instead of config.json)."""
    for name in TOKENIZER_FILES:  # a re-export must not keep another tokenizer's files
        (out / name).unlink(missing_ok=True)
    if desc is None:
        return None
    tok = hf_tokenizer(desc)
    if tok is not None:
        write_file(out / "tokenizer.json", tok.to_str(pretty=True))
        cfg: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": max_len,
            "clean_up_tokenization_spaces": False,
        }
        if desc["type"] == "word":
            eos = desc.get("eos_token", "<eos>")
            cfg.update(eos_token=eos, unk_token=desc.get("unk_token", "<unk>"), pad_token=eos)
        write_file(out / "tokenizer_config.json", json.dumps(cfg, indent=2) + "\n")
    if desc.get("type") == "word":
        write_file(out / HALO_TOKENIZER_NAME, json.dumps(desc, ensure_ascii=False) + "\n")
        return {"type": "word", "file": HALO_TOKENIZER_NAME}
    return desc


def write_generation_config(out: Path, eos_token_id: int | None) -> None:
    cfg: dict[str, Any] = {"use_cache": False}  # the remote model has no KV cache (see its docstring)
    if eos_token_id is not None:
        cfg.update(eos_token_id=eos_token_id, pad_token_id=eos_token_id)
    write_file(out / "generation_config.json", json.dumps(cfg, indent=2) + "\n")


def follow_umask(out: Path) -> None:
    """0666 & ~umask for every regular file of the export (earlier exports may be 0600); a symlink is
    skipped, never followed (opened with O_NOFOLLOW, changed with fchmod)."""
    mode = 0o666 & ~_umask()
    for p in out.iterdir():
        try:
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError:  # a symlink (ELOOP), a file we cannot open: left as it is
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.fchmod(fd, mode)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------------- card
def dataset_names(data: dict[str, Any] | None) -> list[str]:
    """Names for the card's ``datasets`` from a run's ``data`` node (no Hub id exists for most)."""
    if not data:
        return []
    kind = data.get("dataset")
    if kind in ("text", "jsonl", "streaming"):
        paths = data.get("path")
        paths = paths if isinstance(paths, list) else [paths]
        return [Path(str(p)).name for p in paths if p]
    return [str(kind)] if kind else []


def _metric_results(metrics: dict[str, Any], name: str, datasets: list[str]):
    from huggingface_hub import EvalResult

    ds = datasets[0] if datasets else "validation split"
    out = []
    for key, mtype, mname in (
        ("val_loss", "loss", "validation loss (nats/token)"),
        ("val_ppl", "perplexity", "validation perplexity"),
        ("val_bpt", "bits_per_token", "validation bits per token"),
        ("val_acc", "accuracy", "validation accuracy"),
    ):
        v = metrics.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out.append(
                EvalResult(
                    task_type="text-generation",
                    dataset_type=ds,
                    dataset_name=ds,
                    dataset_split="validation",
                    metric_type=mtype,
                    metric_name=mname,
                    metric_value=round(float(v), 4),
                )
            )
    return out


def model_card(
    *,
    title: str,
    summary: str,
    table: list[tuple[str, str]],
    where: str,
    tok_type: str | None,
    metrics: dict[str, Any] | None,
    datasets: list[str],
):
    """The model card (a huggingface_hub ``ModelCard``): YAML metadata + how to load it."""
    from huggingface_hub import ModelCard, ModelCardData

    metrics = metrics or {}
    results = _metric_results(metrics, title, datasets)
    data = ModelCardData(
        license=LICENSE,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["halo-s", "sparse-attention", "halo_lab", "custom_code"],
        datasets=datasets or None,
        model_name=title if results else None,
        eval_results=results or None,
    )
    rows = "\n".join(f"| {k} | {v} |" for k, v in table)
    if metrics:
        shown = [(k, metrics.get(k)) for k in ("val_loss", "val_ppl", "val_bpt", "steps", "tokens_per_sec")]
        rows += "\n" + "\n".join(
            f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in shown
            if v is not None
        )
    tok_line = {
        "char": "tok = AutoTokenizer.from_pretrained(repo)  # byte-level: one id per UTF-8 byte",
        "word": "tok = AutoTokenizer.from_pretrained(repo)  # word-level vocabulary",
        "tiktoken": "import tiktoken; tok = tiktoken.get_encoding(ENCODING)  # see config.json's tokenizer",
    }.get(tok_type or "", "# no tokenizer was saved with this model")
    content = f"""---
{data.to_yaml()}
---

# {title}

{summary}

| field | value |
|---|---|
{rows}

Training data: {", ".join(datasets) if datasets else "not recorded"}. License: MIT.

## Usage with transformers

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

repo = "{where}"
model = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True)  # modeling_halo.py, no halo_lab
{tok_line}
ids = tok("To be, or not to be", return_tensors="pt").input_ids
print(tok.decode(model.generate(ids, max_new_tokens=50, do_sample=True, top_k=50)[0]))
```

The remote code applies the HALO-S graph as a dense mask (exact, O(L^2) memory) and re-runs the sequence
per generated token. halo_lab has the fast kernels and a KV cache:

```python
from halo_lab import load_from_hub

model = load_from_hub("{where}")  # weights only: no code is loaded from the repo
```

The architecture name HALO-S comes from the pyhalos reference package.
"""
    return ModelCard(content)
