"""The tools battery (issue 28): user mistakes through eval, export, generate, report and bench. Each is
one line ``halo_lab.<tool>: error: ...`` that names the option, file or directory, exit status 1 or 2,
no traceback. In-process through each tool's ``main`` (the Hydra tools with ``sys.argv`` set), except
the Hub cases, which run the real command line without a network. experiments/reliability/README.md
("tools battery") lists the cases with what they printed before."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

REPO = Path(__file__).resolve().parents[1]
TEXT = "".join(f"line {i}: the king sees the queen in her castle, and the fox runs.\n" for i in range(60))


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A saved model, a sweep job directory holding it, text files good and bad, odd paths."""
    from tests.test_eval import export

    root = tmp_path_factory.mktemp("cli")
    f = {"root": root, "model": export(root)}
    f["text"] = root / "text.txt"
    f["text"].write_text(TEXT)
    f["empty"] = root / "empty.txt"
    f["empty"].write_text("")
    f["binary"] = root / "binary.bin"
    f["binary"].write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4)
    f["latin1"] = root / "latin1.txt"
    f["latin1"].write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    f["empty_ckpt"] = root / "empty.ckpt"
    f["empty_ckpt"].write_bytes(b"")
    f["not_a_run"] = root / "not_a_run"
    f["not_a_run"].mkdir()
    return f


def one_line(capsys, rc, tool: str, *needles: str) -> str:
    """The error of a failed call: exit status 1 or 2 and one stderr line naming every needle."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc in (1, 2), f"exit status {rc}: {err[-2000:]}"
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert lines[0].startswith(f"halo_lab.{tool}: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def hydra_tool(monkeypatch, tool: str, *args: str) -> int:
    """``python -m halo_lab.<tool> ARGS`` in this process: the exit status."""
    if tool == "eval":
        from halo_lab.eval import main
    else:
        from halo_lab.bench.cli import main
    monkeypatch.setattr(sys, "argv", [f"halo_lab.{tool}", *args])
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        main()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    finally:  # Hydra's job logging writes to this test's captured streams: not the next test's
        for h in root.handlers:
            if h not in handlers:
                h.close()
        root.handlers[:], root.level = handlers, level
    return 0


def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


# -------------------------------------------------------------------------------------------- eval
EVAL_CASES = [
    # (id, overrides (with {placeholders} from `files`), words the line must hold)
    ("no source", [], ["source"]),
    ("source missing", ["source={root}/nowhere/run"], ["source=", "nowhere/run"]),
    ("source not a run", ["source={not_a_run}"], ["source=", "not a run directory"]),
    ("source a text file", ["source={text}"], ["source=", "text.txt"]),
    ("source an empty ckpt", ["source={empty_ckpt}"], ["source=", "empty.ckpt"]),
    ("file missing", ["source={model}", "file={root}/missing.txt"], ["file=", "missing.txt: no such file"]),
    ("file a directory", ["source={model}", "file={root}"], ["file=", "a directory"]),
    ("file empty", ["source={model}", "file={empty}"], ["file=", "empty.txt", "empty"]),
    ("file binary", ["source={model}", "file={binary}", "seq_len=32"], ["file=", "binary.bin"]),
    ("device h100", ["source={model}", "file={text}", "device=h100"], ["device=h100", "CUDA"]),
    ("device cuda", ["source={model}", "file={text}", "device=cuda"], ["device=cuda", "CUDA"]),
    ("device bogus", ["source={model}", "file={text}", "device=bogus"], ["device=bogus", "not a device"]),
    ("seq_len abc", ["source={model}", "file={text}", "seq_len=abc"], ["seq_len='abc'", "positive"]),
    ("seq_len 0", ["source={model}", "file={text}", "seq_len=0"], ["seq_len=0", "positive"]),
    ("seq_len -5", ["source={model}", "file={text}", "seq_len=-5"], ["seq_len=-5"]),
    ("max_batches 0", ["source={model}", "file={text}", "max_batches=0"], ["max_batches=0"]),
    ("batch_size 0", ["source={model}", "file={text}", "batch_size=0"], ["batch_size=0"]),
    ("split bogus", ["source={model}", "split=bogus"], ["split='bogus'"]),
    ("data bogus", ["source={model}", "data=bogus"], ["data=bogus", "shakespeare"]),
    ("unknown key", ["source={model}", "foo=1"], ["foo: not a key", "--help"]),
    ("a training group", ["source={model}", "trainer=ddp"], ["trainer: not a key"]),
    ("data=text, no path", ["source={model}", "data=text"], ["data=text", "data.path"]),
    (
        "data.path missing",
        ["source={model}", "data=text", "data.path={root}/nope.txt"],
        ["data.path=", "nope.txt"],
    ),
    ("bad grammar", ["source={model}", "seq_len=[1"], ["seq_len=[1", "not a valid override"]),
]


@pytest.mark.parametrize("args,needles", [c[1:] for c in EVAL_CASES], ids=[c[0] for c in EVAL_CASES])
def test_eval_mistakes_are_one_line(files, monkeypatch, capsys, args, needles):
    no_cuda(monkeypatch)
    args = [a.format(**files) for a in args]
    rc = hydra_tool(monkeypatch, "eval", *args, f"paths.root_dir={files['root']}")
    one_line(capsys, rc, "eval", *needles)


def test_eval_sweep_job_failure_is_one_line(files, monkeypatch, capsys):
    """Under -m a job's ConfigError fails the sweep: Hydra names the job, then one error line."""
    no_cuda(monkeypatch)
    rc = hydra_tool(
        monkeypatch, "eval", "-m", f"source={files['model']}", f"file={files['text']}", "device=cpu,h100",
        "max_batches=1", f"hydra.sweep.dir={files['root'] / 'sweep'}",
    )  # fmt: skip
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[")]
    assert rc == 2 and "Traceback" not in err, err[-3000:]
    assert lines[-1].startswith("halo_lab.eval: error: device=h100: the NVIDIA H100 profile needs CUDA")
    assert len(lines) == 2 and "Error executing job with overrides" in lines[0], lines


# ------------------------------------------------------------------------------------------ export
EXPORT_CASES = [
    (
        "source missing",
        ["{root}/nowhere", "{root}/o1"],
        ["nowhere", "no such checkpoint file or run directory"],
    ),
    ("source not a run", ["{not_a_run}", "{root}/o2"], ["not_a_run", "not a run directory"]),
    ("empty ckpt", ["{empty_ckpt}", "{root}/o3"], ["empty.ckpt"]),
    ("OUT is a file", ["{model}", "{text}"], ["text.txt", "OUT_DIR"]),
    ("OUT under a file", ["{model}", "{text}/sub"], ["text.txt/sub"]),
    ("bad repo id", ["{model}", "{root}/o4", "--push", "bad id!"], ["bad id!"]),
]


@pytest.mark.parametrize("args,needles", [c[1:] for c in EXPORT_CASES], ids=[c[0] for c in EXPORT_CASES])
def test_export_mistakes_are_one_line(files, capsys, args, needles):
    from halo_lab.export import main

    one_line(capsys, main([a.format(**files) for a in args]), "export", *needles)


# ---------------------------------------------------------------------------------------- generate
GENERATE_CASES = [
    ("source missing", ["./nowhere/run", "hi"], ["nowhere/run", "no such file or directory"]),
    ("source not a run", ["{not_a_run}", "hi"], ["not_a_run", "not a run directory"]),
    ("prompt file missing", ["{model}", "--prompt-file", "{root}/none.txt"], ["--prompt-file", "none.txt"]),
    ("prompt file a directory", ["{model}", "--prompt-file", "{root}"], ["--prompt-file"]),
    (
        "prompt file not UTF-8",
        ["{model}", "--prompt-file", "{latin1}"],
        ["--prompt-file", "latin1.txt", "UTF-8"],
    ),
    ("device h100", ["{model}", "hi", "--device", "h100"], ["--device h100", "CUDA"]),
    ("device cuda", ["{model}", "hi", "--device", "cuda"], ["--device cuda", "CUDA"]),
    ("device bogus", ["{model}", "hi", "--device", "bogus"], ["--device bogus", "not a device"]),
    ("max new tokens 0", ["{model}", "hi", "--max-new-tokens", "0"], ["--max-new-tokens"]),
    ("sync every 0", ["{model}", "hi", "--sync-every", "0"], ["--sync-every"]),
    ("tokenizer bogus", ["{model}", "hi", "--tokenizer", "bogus"], ["--tokenizer bogus"]),
]


@pytest.mark.parametrize("args,needles", [c[1:] for c in GENERATE_CASES], ids=[c[0] for c in GENERATE_CASES])
def test_generate_mistakes_are_one_line(files, monkeypatch, capsys, args, needles):
    from halo_lab.generate import main

    no_cuda(monkeypatch)
    one_line(capsys, main([a.format(**files) for a in args]), "generate", *needles)


# ------------------------------------------------------------------------------------------ report
def test_report_mistakes_are_one_line(files, tmp_path, capsys):
    from halo_lab.report import main
    from tests.test_report import make_job, metrics

    sweep = tmp_path / "sweep"
    make_job(sweep, ["model.arch=halo"], metrics("halo", 1.5, 9000.0))
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ([str(tmp_path / "nope")], ["nope", "no such directory"]),
        ([str(empty)], ["empty", "no runs found"]),
        ([str(files["text"])], ["text.txt", "not a directory"]),
        ([str(sweep), "--out", str(files["text"])], ["text.txt", "--out"]),
        ([str(sweep), "--out", str(files["text"] / "sub")], ["text.txt/sub"]),
    ]
    for args, needles in cases:
        one_line(capsys, main([*args, "--wandb", "off", "--no-plots"]), "report", *needles)


# ------------------------------------------------------------------------------------------- bench
BENCH_CASES = [
    ("gpu without CUDA", ["mode=gpu"], ["mode=gpu", "CUDA"]),
    ("mode bogus", ["mode=bogus"], ["mode=bogus"]),
    ("parts bogus", ["parts=[bogus]"], ["parts=[bogus]"]),
    ("parts empty", ["parts=[]"], ["parts=[]"]),
    ("repeats 0", ["repeats=0"], ["repeats=0"]),
    ("warmup abc", ["warmup=abc"], ["warmup='abc'"]),
    ("dtype bogus", ["dtype=bogus"], ["dtype=bogus"]),
    ("unknown key", ["foo=1"], ["foo: not a key"]),
    ("a training group", ["trainer=ddp"], ["trainer: not a key"]),
]


@pytest.mark.parametrize("args,needles", [c[1:] for c in BENCH_CASES], ids=[c[0] for c in BENCH_CASES])
def test_bench_mistakes_are_one_line(files, monkeypatch, capsys, args, needles):
    no_cuda(monkeypatch)
    rc = hydra_tool(monkeypatch, "bench", *args, f"hydra.run.dir={files['root'] / 'bench'}")
    one_line(capsys, rc, "bench", *needles)


# --------------------------------------------------------------------------------- Hub, no network
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The real command line against a Hub endpoint that refuses connections; huggingface_hub's retry
# back-off (about 23 s) is skipped, its retry warnings are not.
OFFLINE = """
import sys, time
time.sleep = lambda s: None
sys.argv = [sys.argv[0], *{args!r}]
from halo_lab.{tool} import main
sys.exit(main({call}))
"""


@pytest.mark.parametrize("tool", ["generate", "eval"])
def test_a_hub_id_without_network_is_one_line(files, tmp_path, tool):
    if tool == "generate":
        args, call = ["someone/tiny-halo", "hi", "--device", "cpu"], "sys.argv[1:]"
    else:
        args, call = ["source=someone/tiny-halo", f"file={files['text']}", f"paths.root_dir={tmp_path}"], ""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
        "HF_HUB_OFFLINE": "0",
        "HF_TOKEN": "",
        "OMP_NUM_THREADS": "1",
    }
    code = OFFLINE.format(args=args, tool=tool, call=call)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode in (1, 2) and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"halo_lab.{tool}: error: ") and "someone/tiny-halo" in lines[0]
    assert "could not be reached" in lines[0], lines[0]
    assert not json.dumps(proc.stdout).count("Traceback")


# ------------------------------------------------------------------------- documented sweep lines
def _documented_commands() -> list[tuple[str, str]]:
    """(file, command) for each `python -m halo_lab.{train,eval}` line of README.md's and docs/runner.md's
    bash blocks, and the Makefile's sweep recipes."""
    import re

    out = []
    for doc in ("README.md", "docs/runner.md"):
        for block in re.findall(r"```bash\n(.*?)```", (REPO / doc).read_text(), flags=re.S):
            for line in block.splitlines():
                cmd = line.split("  #")[0].strip()
                if cmd.startswith(("python -m halo_lab.train", "python -m halo_lab.eval")):
                    out.append((doc, cmd))
    make = (REPO / "Makefile").read_text()
    for recipe in re.findall(r"^\t\$\(PY\) (-m halo_lab\.train -m .*?)$", make, flags=re.M):
        out.append(("Makefile", "python " + recipe.replace("$(ARGS)", "").strip()))
    return out


@pytest.mark.parametrize("doc,cmd", _documented_commands(), ids=str)
def test_documented_sweeps_take_one_more_override(doc, cmd):
    """Every documented line, with one more override appended (`make sweep-baseline ARGS=...`, or a user
    adding a key), still parses: an override after a trailing `-m` is `unrecognized arguments`."""
    import shlex

    from hydra._internal.utils import get_args_parser

    words = shlex.split(cmd.replace("<", "").replace(">", ""))[3:]
    try:
        args = get_args_parser().parse_args([*words, "trainer.max_steps=20"])
    except SystemExit:
        pytest.fail(f"{doc}: `{cmd} trainer.max_steps=20` is rejected by Hydra's argument parser")
    assert args.overrides[-1] == "trainer.max_steps=20"


def test_documented_wandb_sync_options_exist():
    """docs/runner.md's `wandb sync` lines use only options the installed wandb has (0.31 removed
    `--sync-all`)."""
    import re
    import shutil

    exe = shutil.which("wandb") or str(Path(sys.executable).parent / "wandb")
    if not Path(exe).exists():
        pytest.skip("wandb is not installed")
    help_text = subprocess.run([exe, "sync", "--help"], capture_output=True, text=True, timeout=120).stdout
    assert "Usage: wandb sync" in help_text, help_text
    lines = [
        line.split("  #")[0]
        for doc in ("README.md", "docs/runner.md")
        for line in (REPO / doc).read_text().splitlines()
        if line.strip().startswith("wandb sync")
    ]
    assert lines
    for line in lines:
        for option in re.findall(r"\s(--[a-z-]+)", line):
            assert re.search(rf"{option}\b", help_text), f"{line.strip()}: wandb sync has no {option}"


@pytest.mark.parametrize(
    "tool,args,needle",
    [
        ("export", ["a", "b", "--bogus"], "unrecognized arguments: --bogus"),
        ("generate", [], "SOURCE"),
        ("generate", ["x", "hi", "--dtype", "fp64"], "--dtype"),
        ("report", ["x", "--wandb", "bogus"], "--wandb"),
    ],
)
def test_argparse_mistakes_are_one_line(capsys, tool, args, needle):
    """argparse's own errors (an unknown option, a missing argument, a bad choice) without the usage block."""
    import importlib

    main = importlib.import_module(f"halo_lab.{tool}").main
    with pytest.raises(SystemExit) as info:
        main(args)
    one_line(capsys, info.value.code, tool, needle, "--help")


def test_a_tool_run_leaves_the_config_store_as_it_was(files, monkeypatch, capsys, tmp_path):
    """eval's app composes from the ConfigStore; afterwards the store holds none of its nodes, so a later
    compose of conf/eval.yaml in the same process (tests, notebooks) is not matched against them."""
    from hydra.core.config_store import ConfigStore

    from halo_lab.runner.config import compose_config

    before = {k: set(v) if isinstance(v, dict) else None for k, v in ConfigStore.instance().repo.items()}
    hydra_tool(monkeypatch, "eval", "seq_len=0", f"source={files['model']}")
    capsys.readouterr()
    repo = ConfigStore.instance().repo
    assert "eval.yaml" not in repo and "data" not in repo and "default.yaml" not in repo["hydra"]
    assert all(k in repo for k in before)
    cfg = compose_config([f"source={files['model']}"], output_dir=tmp_path, config_name="eval")
    assert cfg.data.dataset == "shakespeare"
