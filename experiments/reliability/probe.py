"""Reliability probe: bad inputs and kill-and-resume trials against the real command line (CPU, tiny).

    python experiments/reliability/probe.py [--out DIR] [--jobs 2] [--repo PATH] [--only inputs|kills]
                                            [--trials REGEX]

Every probe is a ``python -m halo_lab.train`` subprocess on a tiny model (hidden 32, one layer, 32-token
sequences, 10 batches an epoch), so the whole probe takes a few minutes on one or two cores.

Bad inputs: each is classified as
  one-line      the run stops with one line ``halo_lab.train: ... error: ...`` naming the key or file
                (no traceback, no Hydra error report);
  named         it stops naming the key or file, but in a traceback or Hydra's error report;
  unclear       it stops without naming what is wrong;
  warned        it runs, after a clear warning (where a warning is the designed answer);
  accepted      it runs silently although it should not;
  ran safely    (symlinks planted in an export's output folder) it runs, and no file outside was written;
  EXECUTED      (malicious pickles) the checkpoint's payload ran;
  WROTE-THROUGH (planted symlinks) a file outside the output folder was written or its mode changed.
  timeout       it was still running after 300 s.
Most probes are ``python -m halo_lab.train`` runs; a few run ``python -m halo_lab.export`` / ``generate``
(a pickle through their loaders, a tokenizer file outside the model folder, symlinks in the output folder).
Kill trials: a run is SIGKILLed at a chosen point (a random step, halfway through a checkpoint write, right
after the epoch-end checkpoint, inside a validation, inside the hub export), then resumed with
``ckpt_path=auto``; a trial passes when last.ckpt was readable (weights_only=True, checksum), the resume
exits 0 from that checkpoint's step, the data of every step is bit-identical to an uninterrupted run
(batch, epoch and batch index), metrics.json is complete, no temp file is left, ``save_top_k`` holds and
the run leaves exactly one ``last.ckpt`` (no ``last-v1.ckpt``). The resume drops the trial's pause
callback (``++callbacks.pause=null``): ``ckpt_path=auto`` runs the run's own overrides again. Issue 28
adds two trials: a second run started in the directory while the first one runs (it must stop at once,
naming the directory and the first run's pid, and the first run then resumes after its kill, from a bare
``hydra.run.dir=DIR ckpt_path=auto``), and a finished run extended to 33 steps (not a multiple of the
checkpoint interval) from a bare command line (``hydra.run.dir=DIR ckpt_path=auto trainer.max_steps=33``).

``--repo`` points at another checkout (e.g. the code before a fix) to compare the counts.
"""

from __future__ import annotations

import argparse
import builtins
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
UNSET = "<unset>"
MAX_STEPS = 30
EPOCH = 10  # training batches per epoch of the probe corpus


def tiny(corpus: Path, steps: int = MAX_STEPS) -> list[str]:
    return [
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
        "trainer.val_check_interval=10",
        "trainer.limit_val_batches=2",
        "trainer.log_every_n_steps=1",
        "logger=none",
        "callbacks.samples=null",
        "callbacks.last_checkpoint.every_n_train_steps=5",
        "scheduler.warmup_steps=2",
    ]


@dataclass
class Env:
    repo: Path
    work: Path
    corpus: Path = field(init=False)

    def __post_init__(self):
        self.corpus = self.work / "corpus.txt"

    def env(self, **extra: str) -> dict[str, str]:
        e = dict(os.environ)
        e.update(
            HALO_LAB_ROOT=str(self.work / "root"),
            WANDB_MODE="disabled",
            PYTHONPATH=os.pathsep.join([str(self.repo), str(HERE)]),
        )
        e.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
        e.update(extra)
        for k in [k for k, v in e.items() if v == UNSET]:  # a probe's way to remove a variable
            del e[k]
        return e

    def train(self, args: list[str], timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
        return self.run("halo_lab.train", args, timeout, **env)

    def run(
        self, module: str, args: list[str], timeout: float = 600, **env: str
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=self.repo,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def recorder(path: Path) -> list[str]:
    return ["+callbacks.rec._target_=hooks.BatchRecorder", f"+callbacks.rec.path={path}"]


def effective(path: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue  # a line cut off by the kill
            out[r["step"]] = r
    return out


# ---------------------------------------------------------------------------------------------- fixtures
def make_files(e: Env) -> dict[str, Path]:
    import torch

    r = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog and the king sees the queen in her castle".split()
    text = ""
    while len(text) < 2900:
        text += " ".join(r.choice(words) for _ in range(r.randint(4, 10))) + "\n"
    e.corpus.write_text(text[:2900])
    d = e.work / "inputs"
    d.mkdir()
    f: dict[str, Path] = {}

    def put(name: str, data: bytes | str) -> Path:
        p = d / name
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
        f[name] = p
        return p

    put("empty.txt", b"")
    put("short.txt", "too short\n")
    put("whitespace.txt", " \n\t  \n" * 800)
    put("utf16.txt", text.encode("utf-16"))
    exe = Path(shutil.which("ls") or sys.executable)
    put("elf.txt", exe.read_bytes()[:200_000])
    put("latin1.txt", (text.replace("e", "\xe9")).encode("latin-1"))
    docs = [json.dumps({"text": text[i : i + 90]}) for i in range(0, 2800, 90)]
    bad = list(docs)
    bad[20] = '{"text": 7}'
    put("bad_mid.jsonl", "\n".join(bad) + "\n")
    nofield = [json.dumps({"body": x}) for x in docs]
    put("nofield.jsonl", "\n".join(nofield) + "\n")
    notjson = list(docs)
    notjson[25] = "this line is not JSON"
    put("notjson_mid.jsonl", "\n".join(notjson) + "\n")
    (d / "a_directory").mkdir()
    f["a_directory"] = d / "a_directory"
    # A real checkpoint (3 steps), and damaged copies of it.
    run_dir = e.work / "trained"
    p = e.train([*tiny(e.corpus, 3), f"hydra.run.dir={run_dir}"])
    if p.returncode != 0:
        raise RuntimeError(f"probe setup: the reference run failed:\n{p.stderr[-3000:]}")
    good = run_dir / "checkpoints" / "last.ckpt"
    f["good.ckpt"] = good
    raw = good.read_bytes()
    put("empty.ckpt", b"")
    put("random.ckpt", random.Random(1).randbytes(50_000))
    put("truncated.ckpt", raw[: len(raw) // 2])
    put("text.ckpt", "not a checkpoint\n" * 100)
    flipped = bytearray(raw)
    ck = torch.load(good, weights_only=True)
    w = next(v for k, v in ck["state_dict"].items() if v.numel() > 64).numpy().tobytes()
    at = raw.find(w[:64]) + 40
    flipped[at] ^= 0x08
    put("flipped.ckpt", bytes(flipped))
    torch.save(ck["state_dict"], d / "plain_state_dict.ckpt")
    f["plain_state_dict.ckpt"] = d / "plain_state_dict.ckpt"
    hub = run_dir / "hub" / "model.safetensors"
    if hub.exists():
        f["model.safetensors"] = hub
    # Malicious pickles: each writes a marker file when unpickled.
    for i, (name, fn) in enumerate(_payloads(d)):
        f[name] = fn
        f[f"{name}.marker"] = d / f"MARKER_{i}"
    # The same payload for the export and generate command lines (a marker of their own).
    for tool in ("export", "generate"):
        name = f"evil_{tool}.ckpt"
        f[f"{name}.marker"] = d / f"MARKER_{tool}"
        torch.save({**ck, "x": _Reduce(builtins.open, (str(d / f"MARKER_{tool}"), "w"))}, d / name)
        f[name] = d / name
    _cache_inputs(e, f)
    if (run_dir / "hub" / "config.json").exists():
        _model_folder_inputs(e, f, run_dir / "hub")
    return f


def _cache_inputs(e: Env, f: dict[str, Path]) -> None:
    """Token caches built for a copy of the corpus (each in its own HALO_LAB_ROOT), then damaged: same-size
    garbage (char tokenizer), and ids beyond the vocabulary with a checksum that matches them (tiktoken)."""
    import hashlib

    import numpy as np

    for tok in ("char", "tiktoken"):
        root = e.work / "cache_roots" / tok
        corpus = root / "corpus.txt"
        corpus.parent.mkdir(parents=True)
        corpus.write_bytes(e.corpus.read_bytes())
        cache = root / "data" / "cache"
        code = f"from halo_lab.data import TextDataset; TextDataset({str(corpus)!r}, {tok!r}, 32, cache_dir={str(cache)!r})"
        p = subprocess.run(
            [sys.executable, "-c", code], cwd=e.repo, env=e.env(), capture_output=True, text=True
        )
        if p.returncode != 0:
            raise RuntimeError(f"probe setup: building the {tok} token cache failed:\n{p.stderr[-3000:]}")
        (bin_path,) = cache.glob("*.bin")
        meta_path = bin_path.with_suffix(".json")
        meta = json.loads(meta_path.read_text())
        ids = np.fromfile(bin_path, dtype=meta["dtype"])
        if tok == "char":
            ids = ids[::-1].copy()  # the same bytes, reversed: same size, valid ids, another text
        else:
            ids[len(ids) // 2] = np.iinfo(ids.dtype).max
            meta["tokens_sha256"] = hashlib.sha256(ids.tobytes()).hexdigest()
            meta_path.write_text(json.dumps(meta))
        st = bin_path.stat()
        bin_path.write_bytes(ids.tobytes())
        os.utime(bin_path, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime kept: only the content tells
        f[f"cache_root_{tok}"] = root
        f[f"cache_corpus_{tok}"] = corpus


EXPORT_FILES = (
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
)


def _model_folder_inputs(e: Env, f: dict[str, Path], hub: Path) -> None:
    """Copies of the reference run's export whose config.json names a tokenizer file outside the folder
    (``../outside.json``; a symlink to it), and an export output folder full of symlinks to victims."""
    d = e.work / "inputs"
    outside = d / "outside.json"
    outside.write_text(json.dumps({"type": "word", "vocab": ["an", "attacker's", "vocabulary"]}))
    for name, file in (("tok_dotdot", "../outside.json"), ("tok_symlink", "halo_tokenizer.json")):
        m = d / name
        shutil.copytree(hub, m)
        cfg = json.loads((m / "config.json").read_text())
        cfg["tokenizer"] = {"type": "word", "file": file}
        (m / "config.json").write_text(json.dumps(cfg))
        if name == "tok_symlink":
            (m / file).unlink(missing_ok=True)
            (m / file).symlink_to(os.path.relpath(outside, m))
        f[name] = m
    out, victims = d / "export_out", d / "victims"
    out.mkdir()
    victims.mkdir()
    for name in EXPORT_FILES:
        v = victims / name
        v.write_text("VICTIM")
        os.chmod(v, 0o600)
        (out / name).symlink_to(v)
    f["export_out"] = out
    f["victims"] = victims


class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _payloads(d: Path) -> list[tuple[str, Path]]:
    import builtins

    import torch

    out = []
    for i, (name, make) in enumerate(
        [
            ("evil_open.ckpt", lambda m: _Reduce(builtins.open, (m, "w"))),
            ("evil_exec.ckpt", lambda m: _Reduce(builtins.exec, (f"open({m!r}, 'w')",))),
            ("evil_eval.ckpt", lambda m: _Reduce(builtins.eval, (f"open({m!r}, 'w')",))),
            ("evil_system.ckpt", lambda m: _Reduce(os.system, (f"touch {m}",))),
            ("evil_popen.ckpt", lambda m: _Reduce(subprocess.Popen, (["touch", m],))),
            ("evil_in_state_dict.ckpt", None),
            ("evil_in_hparams.ckpt", None),
            ("evil_legacy_format.ckpt", None),
            ("evil_plain_pickle.ckpt", None),
        ]
    ):
        marker = str(d / f"MARKER_{i}")
        path = d / name
        payload = _Reduce(builtins.open, (marker, "w"))
        if make is not None:
            torch.save({"state_dict": {}, "hyper_parameters": {}, "x": make(marker)}, path)
        elif name == "evil_in_state_dict.ckpt":
            torch.save({"state_dict": {"model.w": payload}, "hyper_parameters": {}}, path)
        elif name == "evil_in_hparams.ckpt":
            torch.save({"state_dict": {}, "hyper_parameters": {"model_config": payload}}, path)
        elif name == "evil_legacy_format.ckpt":
            torch.save({"state_dict": {}, "x": payload}, path, _use_new_zipfile_serialization=False)
        else:
            with open(path, "wb") as fh:
                pickle.dump({"state_dict": {}, "x": payload}, fh)
        out.append((name, path))
    return out


# ---------------------------------------------------------------------------------------------- bad inputs
@dataclass
class Probe:
    name: str
    args: list[str]
    expect: str  # "error" | "warn"
    match: str  # what the message must name
    resume: bool = False  # run in a copy of the trained run's directory with ckpt_path=auto
    marker: Path | None = None
    module: str = "halo_lab.train"  # another command line: ``args`` is then all of it
    env: dict[str, str] = field(default_factory=dict)
    victims: Path | None = None  # files outside that the command must leave as they are ("VICTIM", 0600)
    run_dir: Path | None = None  # the run directory (default: probes/NN)


def input_probes(e: Env, f: dict[str, Path]) -> list[Probe]:
    P = []

    def add(name, args, match, expect="error", **kw):
        P.append(Probe(name, args, expect, match, **kw))

    # configuration
    add("model.hidden_size not divisible by heads", ["model.hidden_size=33"], r"model\.hidden_size")
    add("model.vocab_size below the tokenizer's", ["model.vocab_size=100"], r"model\.vocab_size=100")
    add("model.local_window >= max_seq_len", ["model.local_window=64"], r"model\.local_window=64")
    add(
        "model.local_window >= data.seq_len (warning)",
        ["model.local_window=32"],
        r"local_window=32 covers every training sequence",
        expect="warn",
    )
    add("data.seq_len > model.max_seq_len", ["data.seq_len=128"], r"data\.seq_len=128")
    add("data.batch_size=0", ["data.batch_size=0"], r"data\.batch_size")
    add("trainer.max_steps=0", ["trainer.max_steps=0"], r"trainer\.max_steps")
    add("optimizer.lr < 0", ["optimizer.lr=-1"], r"optimizer\.lr")
    add("trainer.gradient_clip_val not a number", ["trainer.gradient_clip_val=high"], r"gradient_clip_val")
    add("model: unknown key", ["+model.hiddn_size=3"], r"model\.hiddn_size")
    add("unknown tokenizer", ["data.tokenizer=bogus"], r"bogus")
    add("logger.wandb.mode invalid", ["logger=wandb", "logger.wandb.mode=bogus"], r"logger\.wandb\.mode")
    add("train=false without ckpt_path", ["train=false"], r"train=false")
    # data files
    add("missing data file", ["data.path=/nonexistent/x.txt"], r"/nonexistent/x\.txt")
    add("a directory as data.path", [f"data.path={f['a_directory']}"], r"a_directory")
    add("empty data file", [f"data.path={f['empty.txt']}"], r"empty\.txt")
    add("data too short for seq_len", [f"data.path={f['short.txt']}"], r"short\.txt")
    add("ELF binary as text", [f"data.path={f['elf.txt']}"], r"elf\.txt.*binary")
    add("UTF-16 text", [f"data.path={f['utf16.txt']}"], r"utf16\.txt.*(binary|UTF-16)")
    add(
        "whitespace-only file, word tokenizer",
        [f"data.path={f['whitespace.txt']}", "data.tokenizer=word"],
        r"whitespace\.txt.*whitespace",
    )
    add(
        "latin-1 text, word tokenizer (warning)",
        [f"data.path={f['latin1.txt']}", "data.tokenizer=word"],
        r"latin1\.txt.*not valid UTF-8",
        expect="warn",
    )
    jsonl = ["data=jsonl", "data.tokenizer=char", "data.seq_len=32", "data.batch_size=8"]
    add("jsonl: bad line mid-file", [*jsonl, f"data.path={f['bad_mid.jsonl']}"], r"bad_mid\.jsonl:21")
    add("jsonl: missing text field", [*jsonl, f"data.path={f['nofield.jsonl']}"], r"nofield\.jsonl:1")
    stream = ["data=streaming", "data.tokenizer=char", "data.seq_len=32", "data.batch_size=8"]
    stream.append("data.val_fraction=0.2")  # the default 1% of a 3 KB file holds no window
    add(
        "streaming jsonl: bad line mid-file",
        [*stream, f"data.path={f['bad_mid.jsonl']}"],
        r"bad_mid\.jsonl:21",
    )
    add(
        "streaming jsonl: not-JSON line mid-file",
        [*stream, f"data.path={f['notjson_mid.jsonl']}"],
        r"notjson_mid\.jsonl:26",
    )
    add(
        "streaming jsonl: skip_bad_lines (warning with a count)",
        [*stream, f"data.path={f['bad_mid.jsonl']}", "data.skip_bad_lines=true"],
        r"skipping 1 bad JSONL line",
        expect="warn",
    )
    # checkpoints
    add("ckpt_path: no such file", ["ckpt_path=/nonexistent/x.ckpt"], r"ckpt_path=.*x\.ckpt")
    for name in ("empty.ckpt", "random.ckpt", "truncated.ckpt", "text.ckpt", "flipped.ckpt"):
        add(f"ckpt_path: {name}", [f"ckpt_path={f[name]}"], rf"ckpt_path=.*{re.escape(name)}")
    add(
        "ckpt_path: a plain state dict",
        [f"ckpt_path={f['plain_state_dict.ckpt']}"],
        r"ckpt_path=.*plain_state_dict",
    )
    if "model.safetensors" in f:
        add(
            "ckpt_path: a safetensors file",
            [f"ckpt_path={f['model.safetensors']}"],
            r"ckpt_path=.*safetensors",
        )
    add("resume: another model size", ["model.hidden_size=64"], r"model\.hidden_size=64", resume=True)
    add("resume: module.arch=dense", ["module.arch=dense"], r"module\.arch", resume=True)
    add("resume: another tokenizer", ["data.tokenizer=word"], r"tokenizer", resume=True)
    add("resume: another vocabulary size", ["model.vocab_size=300"], r"vocab_size", resume=True)
    for name in sorted(k for k in f if k.startswith("evil_") and not k.endswith(".marker")):
        add(
            f"malicious pickle: {name}",
            [f"ckpt_path={f[name]}"],
            rf"ckpt_path=.*{re.escape(name)}",
            marker=f[f"{name}.marker"],
        )
    # issue 28 (security and data): added, not yet run in the battery
    force = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    add(
        "malicious pickle through python -m halo_lab.export",
        [str(f["evil_export.ckpt"]), str(e.work / "inputs" / "evil_export_out")],
        r"evil_export\.ckpt",
        marker=f["evil_export.ckpt.marker"],
        module="halo_lab.export",
        env=force,
    )
    add(
        "malicious pickle through python -m halo_lab.generate",
        [
            str(f["evil_generate.ckpt"]),
            "ab",
            "--max-new-tokens",
            "2",
            "--device",
            "cpu",
            "--tokenizer",
            "char",
        ],
        r"evil_generate\.ckpt",
        marker=f["evil_generate.ckpt.marker"],
        module="halo_lab.generate",
        env=force,
    )
    add(
        "token cache: same-size garbage (char) (warning, rebuilt)",
        [f"data.path={f['cache_corpus_char']}"],
        r"token cache .*\.bin: checksum mismatch.*rebuilding",
        expect="warn",
        env={"HALO_LAB_ROOT": str(f["cache_root_char"])},
    )
    add(
        "token cache: ids beyond the vocabulary (tiktoken) (warning, rebuilt)",
        [f"data.path={f['cache_corpus_tiktoken']}", "data.tokenizer=tiktoken"],
        r"token cache .*\.bin: token id \d+ beyond the tokenizer's vocabulary.*rebuilding",
        expect="warn",
        env={"HALO_LAB_ROOT": str(f["cache_root_tiktoken"])},
    )
    if "tok_dotdot" in f:
        add(
            "saved model: tokenizer.file ../outside.json (export)",
            [str(f["tok_dotdot"]), str(e.work / "inputs" / "tok_dotdot_out")],
            r"tokenizer\.file='\.\./outside\.json' is outside the model folder",
            module="halo_lab.export",
        )
        add(
            "saved model: tokenizer file a symlink to outside (generate)",
            [str(f["tok_symlink"]), "ab", "--max-new-tokens", "2", "--device", "cpu"],
            r"tokenizer\.file='halo_tokenizer\.json' is outside the model folder",
            module="halo_lab.generate",
        )
        add(
            "export into a folder of symlinks to files outside",
            [str(f["good.ckpt"].parent.parent), str(f["export_out"])],
            r"exported",
            expect="run",
            module="halo_lab.export",
            victims=f["victims"],
        )
    _issue28_probes(e, add)
    return P


def _issue28_probes(e: Env, add) -> None:
    """Issue 28 (errors of the user's and of the machine's): one line each, or a warning where the run
    should go on. The full disk and the read-only run directory are simulated in the training process
    (the probe may run as root, where chmod does not bite): see full_disk and read_only below."""
    add("data=text without data.path (???)", ["data.path=???"], r"data\.path: no value given")
    add("device=h100 without a GPU", ["device=h100"], r"device=h100: .*no CUDA GPU here")
    add(
        "a diverging loss (optimizer.lr=1e6)",
        ["optimizer.lr=1e6"],
        r"diverged: .* at step \d+ .*optimizer\.lr",
    )
    add(
        "a full disk at the checkpoint write",
        ["+callbacks.full_disk._target_=probe.full_disk"],
        r"no space left on device writing \S*last\.ckpt",
    )
    ro = e.work / "probes" / "read_only"
    add(
        "a read-only run directory",
        ["+hydra.callbacks.read_only._target_=probe.read_only", f"+hydra.callbacks.read_only.path={ro}"],
        r"run directory error: cannot write the run directory",
        run_dir=ro,
    )
    add(
        "W&B key without a network (warning, offline)",
        ["logger=wandb"],
        r"W&B: \S+ does not answer .*logging offline",
        expect="warn",
        env={"WANDB_MODE": UNSET, "WANDB_API_KEY": "0" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"},
    )


def full_disk():
    """A callback target that makes every later torch.save fail as on a full disk (the first 100 bytes
    written, then ENOSPC: torch raises its ``unexpected pos`` RuntimeError with the OSError as context)."""
    import errno
    import io

    import lightning.pytorch as pl
    import torch

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
    return pl.Callback()


def read_only(path: str):
    """A Hydra callback target (made before Hydra's run starts): every open or mkdir under ``path`` fails
    with EACCES from now on, as in a directory the user cannot write."""
    import builtins

    from hydra.experimental.callback import Callback

    root = os.path.abspath(path)
    os.makedirs(root, exist_ok=True)

    def deny(real):
        def call(p, *a, **k):
            if not isinstance(p, int) and os.path.abspath(os.fsdecode(p)).startswith(root):
                raise PermissionError(13, "Permission denied", os.fsdecode(p))
            return real(p, *a, **k)

        return call

    os.open, os.mkdir, builtins.open = deny(os.open), deny(os.mkdir), deny(builtins.open)
    return Callback()


def run_probe(e: Env, f: dict[str, Path], p: Probe, i: int) -> dict:
    d = p.run_dir or e.work / "probes" / f"{i:02d}"
    args = [*tiny(e.corpus, 4), *p.args]
    env = dict(p.env)
    if p.resume:
        shutil.copytree(f["good.ckpt"].parent.parent, d)
        args.append("ckpt_path=auto")
    if p.marker is not None:
        env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    t0 = time.time()
    try:
        if p.module == "halo_lab.train":
            proc = e.train([*args, f"hydra.run.dir={d}"], timeout=300, **env)
        else:
            proc = e.run(p.module, p.args, timeout=300, **env)
    except subprocess.TimeoutExpired:  # e.g. device=h100 on a CPU before issue 28: bf16 + compile, no end
        return {"probe": p.name, "verdict": "timeout", "rc": None, "seconds": 300.0, "last_line": ""}
    err = proc.stderr
    out = proc.stdout + err  # Hydra's log handler (warnings) writes to stdout
    named = re.search(p.match, out if p.expect == "warn" else err, re.S) is not None
    # One line: the runner's own "halo_lab.train: ... error: ..." naming the problem, nothing else of it.
    one_line = any(
        re.match(r"halo_lab\.\w+: [\w ]*error: ", ln) and re.search(p.match, ln) for ln in err.splitlines()
    )
    traceback = "Traceback (most recent call last)" in err or "Error executing job" in err
    if p.marker is not None and p.marker.exists():
        verdict = "EXECUTED"
    elif p.victims is not None and not _victims_untouched(p.victims):
        verdict = "WROTE-THROUGH"
    elif proc.returncode == 0 and p.expect == "run":
        verdict = "ran safely"
    elif proc.returncode == 0:
        verdict = "warned" if (p.expect == "warn" and named) else "accepted"
    elif p.expect in ("warn", "run"):
        verdict = "unclear"  # it should have run (with a warning)
    elif one_line and not traceback:
        verdict = "one-line"
    elif named:
        verdict = "named"
    else:
        verdict = "unclear"
    last = [ln for ln in err.strip().splitlines() if ln.strip()][-1:] or [""]
    if verdict == "warned":  # the warning itself, not whatever came last
        last = [ln for ln in out.splitlines() if re.search(p.match, ln)][:1] or last
    return {
        "probe": p.name,
        "verdict": verdict,
        "rc": proc.returncode,
        "seconds": round(time.time() - t0, 1),
        "last_line": last[0][:300],
    }


def _victims_untouched(victims: Path) -> bool:
    return all(v.read_text() == "VICTIM" and v.stat().st_mode & 0o777 == 0o600 for v in victims.iterdir())


# ---------------------------------------------------------------------------------------------- kill trials
@dataclass
class Trial:
    name: str
    kind: str  # step | ckpt | val | final_val | export | noop
    step: int


def kill_trials(n_random: int, seed: int) -> list[Trial]:
    r = random.Random(seed)
    out = [Trial(f"random step {s}", "step", s) for s in sorted(r.sample(range(2, MAX_STEPS), n_random))]
    out += [
        Trial("right after the epoch-end checkpoint (step 10)", "step", EPOCH + 1),
        Trial("halfway through a checkpoint write (step 5)", "ckpt", 5),
        Trial("halfway through a checkpoint write (step 20)", "ckpt", 20),
        Trial("halfway through the final last.ckpt write", "ckpt", MAX_STEPS),
        Trial("after a new best, before the next last.ckpt (step 21)", "step", 21),
        Trial("inside a validation (step 10)", "val", 10),
        Trial("inside a validation (step 20)", "val", 20),
        Trial("inside the final validation", "final_val", MAX_STEPS),
        Trial("inside the hub export", "export", MAX_STEPS),
        Trial("no-op resume, then extend max_steps", "noop", MAX_STEPS),
        Trial("a second run in the same directory (while step 12 runs)", "second", 12),
        Trial("extend to 33 steps (not a multiple of the interval), bare command line", "extend", 33),
    ]
    return out


def leftovers(run_dir: Path, cache: Path) -> list[str]:
    found = [
        p.name
        for d in (run_dir, run_dir / "checkpoints")
        if d.is_dir()
        for p in d.iterdir()
        if ".tmp" in p.name
    ]
    if cache.is_dir():
        found += [p.name for p in cache.iterdir() if re.search(r"\.tmp\d+", p.name)]
    return found


def checkpoint_ok(path: Path) -> tuple[bool, int | None]:
    import torch

    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return False, None
    try:
        from halo_lab.checkpoint.integrity import verify_checksum

        verify_checksum(ck, path)
    except ImportError:
        pass
    except ValueError:
        return False, None
    return True, int(ck.get("global_step", -1))


NO_PAUSE = "++callbacks.pause=null"  # the resume runs the run's own overrides: drop the trial's pause


def bare(d: Path, *extra: str) -> list[str]:
    """A resume command line with nothing of the run's own: its overrides come from launches.jsonl."""
    return [f"hydra.run.dir={d}", "ckpt_path=auto", NO_PAUSE, *extra]


def run_trial(e: Env, t: Trial, i: int, straight: dict[int, dict]) -> dict:
    d = e.work / "kills" / f"{i:02d}"
    rec = e.work / "kills" / f"{i:02d}.jsonl"
    base = [*tiny(e.corpus), *recorder(rec), f"hydra.run.dir={d}"]
    if t.kind == "noop":
        res = _noop_trial(e, d, base)
        steps = 40
    elif t.kind == "extend":
        first = e.train(base)
        ext = e.train(bare(d, f"trainer.max_steps={t.step}"))
        res = {"readable": first.returncode == 0, "resumed": ext.returncode == 0, "from_step": MAX_STEPS}
        if ext.returncode != 0:
            res["error"] = (ext.stderr.strip().splitlines() or [""])[-1][:300]
        steps = t.step
    else:
        res = _kill_trial(e, t, d, rec, base, e.work / "kills" / f"{i:02d}.paused")
        steps = MAX_STEPS
    res = {"trial": t.name, **res}
    res.update(
        data_identical=effective(rec) == {s: straight[s] for s in range(steps)},
        metrics=_metrics_steps(d) == steps,
        leftovers=leftovers(d, e.work / "root" / "data" / "cache"),
        best_files=len(list((d / "checkpoints").glob("best-step*.ckpt"))),
        last_files=sorted(p.name for p in (d / "checkpoints").glob("last*.ckpt")),
    )
    res["ok"] = _trial_ok(res) and all(
        res.get(k, True) for k in ("killed", "noop_untouched", "second_refused")
    )
    if "ckpt_step" in res and res["ckpt_step"] is not None:
        res["ok"] = res["ok"] and res["from_step"] in (res["ckpt_step"], MAX_STEPS)
    return res


def _noop_trial(e: Env, d: Path, base: list[str]) -> dict:
    first = e.train(base)
    last = d / "checkpoints" / "last.ckpt"
    before = (last.read_bytes(), (d / "metrics.json").read_bytes()) if first.returncode == 0 else None
    noop = e.train([*base, "ckpt_path=auto"])
    after = (last.read_bytes(), (d / "metrics.json").read_bytes()) if last.exists() else None
    ext = e.train([*base, "trainer.max_steps=40", "ckpt_path=auto"])
    untouched = noop.returncode == 0 and before is not None and before == after
    return {
        "noop_untouched": untouched,
        "readable": True,
        "resumed": ext.returncode == 0,
        "from_step": MAX_STEPS,
    }


def _kill_trial(e: Env, t: Trial, d: Path, rec: Path, base: list[str], marker: Path) -> dict:
    pause = [
        "+callbacks.pause._target_=hooks.Pause",
        f"+callbacks.pause.kind={'step' if t.kind == 'second' else t.kind}",
        f"+callbacks.pause.step={t.step}",
        f"+callbacks.pause.marker={marker}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "halo_lab.train", *base, *pause],
        cwd=e.repo,
        env=e.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not marker.exists():
        time.sleep(0.02)
    res: dict = {}
    if t.kind == "second":
        res.update(_second_run(e, d, proc))
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    res["killed"] = killed
    last = d / "checkpoints" / "last.ckpt"
    # No last.ckpt at all (killed while the first one was written) is fine: the resume starts at 0.
    res["readable"], res["ckpt_step"] = checkpoint_ok(last) if last.exists() else (True, 0)
    n_before = len(rec.read_text().splitlines()) if rec.exists() else 0
    resume = e.train(bare(d) if t.kind == "second" else [*base, "ckpt_path=auto", NO_PAUSE])
    res["resumed"] = resume.returncode == 0
    if not res["resumed"]:
        res["error"] = (resume.stderr.strip().splitlines() or [""])[-1][:300]
    lines = rec.read_text().splitlines()[n_before:] if rec.exists() else []
    res["from_step"] = json.loads(lines[0])["step"] if lines else MAX_STEPS
    return res


def _second_run(e: Env, d: Path, holder: subprocess.Popen) -> dict:
    """Another run into the directory while ``holder`` runs: it must stop at once with one line naming the
    directory and the holder's pid, and leave the holder running."""
    t0 = time.time()
    second = e.train([*tiny(e.corpus), f"hydra.run.dir={d}"], timeout=300)
    line = (second.stderr.strip().splitlines() or [""])[-1]
    named = re.search(rf"{re.escape(str(d))}.*\bpid {holder.pid}\b", line) is not None
    return {
        "second_refused": second.returncode != 0 and named and holder.poll() is None,
        "second_seconds": round(time.time() - t0, 1),
        "second_line": line[:300],
    }


def _metrics_steps(d: Path) -> int | None:
    try:
        return int(json.loads((d / "metrics.json").read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _trial_ok(r: dict) -> bool:
    return (
        bool(r["readable"] and r["resumed"] and r["data_identical"] and r["metrics"] and not r["leftovers"])
        and r["best_files"] <= 1
        and r["last_files"] == ["last.ckpt"]
    )


# ---------------------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="write results.json here")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repo", type=Path, default=HERE.parents[1])
    ap.add_argument("--random-kills", type=int, default=6)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--only", choices=("inputs", "kills"), default=None)
    ap.add_argument("--trials", default=None, help="only the kill trials whose name matches this regex")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--probes", default=None, help="only the bad inputs whose name matches this regex")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="halo_probe_"))
    e = Env(repo=args.repo.resolve(), work=work)
    t0 = time.time()
    out: dict = {"repo": str(e.repo)}
    try:
        f = make_files(e)
        with ThreadPoolExecutor(args.jobs) as pool:
            if args.only != "kills":
                probes = input_probes(e, f)
                if args.probes:
                    probes = [p for p in probes if re.search(args.probes, p.name)]
                out["inputs"] = list(pool.map(lambda ip: run_probe(e, f, ip[1], ip[0]), enumerate(probes)))
            if args.only != "inputs":
                rec = work / "straight.jsonl"
                p = e.train([*tiny(e.corpus, 40), *recorder(rec), f"hydra.run.dir={work / 'straight'}"])
                if p.returncode != 0:
                    raise RuntimeError(f"the uninterrupted run failed:\n{p.stderr[-3000:]}")
                straight = effective(rec)
                trials = kill_trials(args.random_kills, args.seed)
                trials = [t for t in trials if args.trials is None or re.search(args.trials, t.name)]
                out["kills"] = list(
                    pool.map(lambda it: run_trial(e, it[1], it[0], straight), enumerate(trials))
                )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")
    out["seconds"] = round(time.time() - t0, 1)
    report(out)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


def report(out: dict) -> None:
    if "inputs" in out:
        print("\nbad inputs:")
        for r in out["inputs"]:
            print(f"  {r['verdict']:9s} {r['probe']}  [{r['last_line'][:140]}]")
        counts: dict[str, int] = {}
        for r in out["inputs"]:
            counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
        print(
            f"  -> {len(out['inputs'])} probes: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        )
    if "kills" in out:
        print("\nkill-and-resume trials:")
        for r in out["kills"]:
            flags = {
                k: r.get(k)
                for k in (
                    "readable",
                    "resumed",
                    "from_step",
                    "ckpt_step",
                    "data_identical",
                    "metrics",
                    "best_files",
                    "last_files",
                )
            }
            extra = f" leftovers={r['leftovers']}" if r.get("leftovers") else ""
            extra += f" error={r['error']}" if r.get("error") else ""
            extra += f" second run: {r['second_line']!r}" if r.get("second_line") else ""
            print(f"  {'ok  ' if r['ok'] else 'FAIL'} {r['trial']}: {flags}{extra}")
        ok = sum(r["ok"] for r in out["kills"])
        same = sum(bool(r["data_identical"]) for r in out["kills"])
        print(f"  -> {ok} of {len(out['kills'])} trials pass; data bit-identical in {same}")
    print(f"\n({out['seconds']} s)")


if __name__ == "__main__":
    sys.exit(main())
