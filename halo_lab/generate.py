"""Sample from a trained model: ``python -m halo_lab.generate SOURCE [PROMPT] [options]`` (or ``halo-generate``).

SOURCE is a run directory (its hub/ export, else checkpoints/last.ckpt), an exported folder
(config.json + weights), a checkpoint file or a Hugging Face Hub repo id. The prompt comes from the
command line, ``--prompt-file FILE`` (``-`` reads stdin) or is empty-handed: a missing prompt is an error.
Tokens stream to stdout as they come (every ``--sync-every`` tokens: the stop check's cadence); the
speed goes to stderr at the end. Bad input is a one-line ``halo_lab.generate: error: ...`` and exit 1
(exit 2 for a malformed command line: an unknown option, a missing SOURCE).

    python -m halo_lab.generate outputs/runs/shakespeare "ROMEO:" --max-new-tokens 200 --temperature 0.8
"""

from __future__ import annotations

import argparse
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from halo_lab.generation import generate, stop_token_id
from halo_lab.hub import CONFIG_NAME


class GenerateError(Exception):
    """Bad input: reported as one line, exit status 1."""


def pick_device(want: str) -> torch.device:
    """The torch device for a ``--device`` / ``device=`` value: auto (CUDA when available, else the CPU),
    cpu, cuda, cuda:N, mps, or a device profile name (h100, a100, t4, ...: that profile's accelerator).
    ValueError, saying why, for anything else or a device this machine does not have. halo_lab.eval
    uses it too."""
    from halo_lab.device import PROFILES

    name = str(want).strip()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    profile = PROFILES.get(name.lower())
    spec = {"gpu": "cuda", "mps": "mps"}.get(profile.accelerator, "cpu") if profile else name
    kinds = f"auto, cpu, cuda, cuda:N, mps or a device profile ({', '.join(PROFILES)})"
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"not a device: use {kinds}")
    needs = f"the {profile.display_name} profile needs" if profile else "needs"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{needs} CUDA, which this machine does not have (auto or cpu runs here)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{needs} Apple MPS, which this machine does not have (auto or cpu runs here)")
    return device


def resolve_source(source: str) -> str:
    """The directory or file to load for SOURCE (a Hub id passes through unchanged)."""
    p = Path(source).expanduser()
    if p.is_dir() and not (p / CONFIG_NAME).is_file():
        if (p / "hub" / CONFIG_NAME).is_file():
            return str(p / "hub")
        if (p / "checkpoints" / "last.ckpt").is_file():
            return str(p / "checkpoints" / "last.ckpt")
        raise GenerateError(
            f"{p}: not a run directory (no hub/{CONFIG_NAME}, no checkpoints/last.ckpt) or a saved model "
            f"(no {CONFIG_NAME})"
        )
    if p.exists():
        return str(p)
    from halo_lab.checkpoint.weights import _looks_like_repo_id

    if not _looks_like_repo_id(source):
        raise GenerateError(f"{source}: no such file or directory")
    return source


def _run_dir_tokenizer(loaded_from: str) -> dict | None:
    """A run directory's tokenizer description (hub/config.json) for a model loaded from its checkpoint
    (a vocabulary file it names is read from inside hub/)."""
    from halo_lab.export import _run_dir_tokenizer as from_run_dir

    return from_run_dir(Path(loaded_from))


def load(source: str, device: str, dtype: torch.dtype | None, tokenizer: str | None):
    """(model, tokenizer) for SOURCE; ``tokenizer`` (char, word, tiktoken) overrides the saved one."""
    from halo_lab.hub import load_from_hub
    from halo_lab.hub.errors import quiet_hub_retries
    from halo_lab.tokenizers import build_tokenizer, tokenizer_from_dict

    path = resolve_source(source)
    hub_id = not Path(path).expanduser().exists()
    with warnings.catch_warnings(record=True) as caught, quiet_hub_retries() if hub_id else nullcontext():
        warnings.simplefilter("always")
        model = load_from_hub(path, device=device, dtype=dtype)
    notes = [str(w.message) for w in caught]
    if tokenizer is not None:
        try:
            tok = build_tokenizer(tokenizer)
        except (ValueError, TypeError) as e:
            raise GenerateError(f"--tokenizer {tokenizer}: {e}") from e
    else:
        tok = model.tokenizer
        if tok is None and path.endswith(".ckpt"):
            desc = _run_dir_tokenizer(path)
            tok = tokenizer_from_dict(desc) if desc else None
        if tok is None:
            why = next((n for n in notes if "tokenizer" in n), "it saved no tokenizer description")
            raise GenerateError(
                f"{source}: no usable tokenizer ({why.splitlines()[0]}); pass --tokenizer char|word|tiktoken"
            )
    return model, tok


def _prompt_text(args: argparse.Namespace) -> str:
    if args.prompt is not None and args.prompt_file is not None:
        raise GenerateError("give the prompt either on the command line or with --prompt-file, not both")
    if args.prompt_file is not None:
        if args.prompt_file == "-":
            return sys.stdin.read()
        try:
            return Path(args.prompt_file).read_text(encoding="utf-8")
        except OSError as e:
            raise GenerateError(f"--prompt-file {args.prompt_file}: {e.strerror or e}") from e
        except UnicodeDecodeError as e:
            raise GenerateError(
                f"--prompt-file {args.prompt_file}: not UTF-8 text ({e.reason} at byte {e.start})"
            ) from None
    if args.prompt is None:
        raise GenerateError("no prompt: pass PROMPT or --prompt-file FILE")
    return args.prompt


class _Printer:
    """Prints one row's text as its tokens arrive; holds back an incomplete UTF-8 tail."""

    def __init__(self, tokenizer: Any, stop_id: int | None, out=None):
        self.tok, self.stop_id, self.out = tokenizer, stop_id, out or sys.stdout
        self.ids: list[int] = []
        self.shown = 0
        self.stopped = False

    def __call__(self, chunk: torch.Tensor) -> None:
        if self.stopped:
            return
        for t in chunk[0].tolist():
            if t == self.stop_id:
                self.stopped = True
                break
            self.ids.append(t)
        self.flush(final=self.stopped)

    def flush(self, final: bool = False) -> None:
        text = self.tok.decode(self.ids)
        end = len(text) if final or not text.endswith("\ufffd") else len(text) - 1
        if end > self.shown:
            self.out.write(text[self.shown : end])
            self.out.flush()
            self.shown = end


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m halo_lab.generate", description=__doc__.split("\n")[0])
    p.add_argument("source", metavar="SOURCE", help="run directory, exported folder, checkpoint or Hub id")
    p.add_argument("prompt", nargs="?", metavar="PROMPT")
    p.add_argument("--prompt-file", metavar="FILE", help="read the prompt from FILE ('-': stdin)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--stop", metavar="TOKEN", help="stop at this token (a string that encodes to one token)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1, help="samples of the prompt, decoded as one batch")
    p.add_argument("--tokenizer", help="override the saved tokenizer: char, word or tiktoken")
    p.add_argument(
        "--device",
        default="auto",
        help="auto (cuda when available), cpu, cuda, cuda:1, mps or a profile (h100, ...)",
    )
    p.add_argument(
        "--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto", help="auto: bf16 on CUDA"
    )
    p.add_argument("--cache", choices=["full", "ring"], default="full", help="ring: bounded HALO-S cache")
    p.add_argument("--no-compile", action="store_true", help="do not torch.compile the decode step (CUDA)")
    p.add_argument("--no-cuda-graph", action="store_true", help="do not capture the decode step")
    p.add_argument("--sync-every", type=int, default=8, help="tokens between stop checks / streamed chunks")
    # a bad option: one line naming it (argparse would print its usage block first)
    p.error = lambda message: p.exit(2, f"halo_lab.generate: error: {message} (--help: usage)\n")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1:
        raise GenerateError(f"--max-new-tokens must be >= 1 (got {args.max_new_tokens})")
    if args.num_samples < 1:
        raise GenerateError(f"--num-samples must be >= 1 (got {args.num_samples})")
    if args.sync_every < 1:
        raise GenerateError(f"--sync-every must be >= 1 (got {args.sync_every})")
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
        raise GenerateError("need --temperature >= 0, 0 < --top-p <= 1, --top-k >= 0")


def _prompt_ids(text: str, tok: Any, model: Any, args: argparse.Namespace) -> tuple[list[int], int | None]:
    """The prompt's token ids and the stop token's id, checked against the model."""
    cfg = model.config
    ids = tok.encode(text)
    if not ids:
        raise GenerateError("the prompt is empty after tokenization")
    if max(ids) >= cfg.vocab_size:
        raise GenerateError(
            f"the tokenizer gives token id {max(ids)} but the model's vocab_size is {cfg.vocab_size}: "
            "wrong --tokenizer?"
        )
    if len(ids) >= cfg.max_seq_len:
        raise GenerateError(
            f"the prompt has {len(ids)} tokens; the model's max_seq_len is {cfg.max_seq_len} (prompt and "
            "new tokens must fit)"
        )
    stop_id = None
    if args.stop is not None:
        try:
            stop_id = stop_token_id(args.stop, tok)
        except ValueError as e:
            raise GenerateError(f"--stop: {e}") from e
    if args.cache == "ring" and model.arch != "halo":
        raise GenerateError("--cache ring is for HALO-S models; this one is dense")
    return ids, stop_id


def _print_result(new, text, tok, stop_id, printer, stats, prompt_len: int, num_samples: int) -> None:
    """The samples (unless streamed) to stdout, the speed to stderr."""
    if printer is not None:
        printer.flush(final=True)
    else:
        for i, row in enumerate(new.tolist()):
            if stop_id is not None and stop_id in row:
                row = row[: row.index(stop_id)]
            sys.stdout.write(("" if i == 0 else f"\n--- sample {i + 1} ---\n{text}") + tok.decode(row))
    sys.stdout.write("\n")
    sys.stdout.flush()
    n = new.shape[1]
    decode_s = stats["decode_s"]
    rate = num_samples * max(n - 1, 0) / decode_s if decode_s > 0 else float("inf")
    print(
        f"[{num_samples} x {n} tokens; prefill {prompt_len} tokens {1e3 * stats['prefill_s']:.0f} ms; "
        f"decode {rate:,.1f} tokens/s ({stats['path']}; setup {stats['build_s']:.1f} s)]",
        file=sys.stderr,
    )


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    text = _prompt_text(args)
    try:
        device = pick_device(args.device)
    except ValueError as e:
        raise GenerateError(f"--device {args.device}: {e}") from None
    cuda = device.type == "cuda"
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    dtype = dtypes.get(args.dtype) or (torch.bfloat16 if cuda else None)
    model, tok = load(args.source, device, dtype, args.tokenizer)
    cfg = model.config
    ids, stop_id = _prompt_ids(text, tok, model, args)
    max_new = min(args.max_new_tokens, cfg.max_seq_len - len(ids))
    if max_new < args.max_new_tokens:
        print(
            f"[max_new_tokens {args.max_new_tokens} -> {max_new}: max_seq_len={cfg.max_seq_len}]",
            file=sys.stderr,
        )

    prompt = torch.tensor(ids, dtype=torch.long, device=device).expand(args.num_samples, -1).contiguous()
    printer = _Printer(tok, stop_id) if args.num_samples == 1 else None
    sys.stdout.write(text)
    sys.stdout.flush()
    stats: dict[str, Any] = {}
    out = generate(
        model,
        prompt,
        max_new_tokens=max_new,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        stop_token=stop_id,
        generator=torch.Generator().manual_seed(args.seed),
        cuda_graph=not args.no_cuda_graph,
        compile=False if args.no_compile else None,
        cache=args.cache,
        sync_every=args.sync_every,
        stream=printer,
        stats=stats,
    )
    _print_result(out[:, len(ids) :].cpu(), text, tok, stop_id, printer, stats, len(ids), args.num_samples)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except GenerateError as e:
        msg = str(e)
    except Exception as e:  # noqa: BLE001 - bad input, or no network; anything else propagates
        from halo_lab.hub.errors import describe_hub_failure

        why = describe_hub_failure(e)  # a transport error that huggingface_hub let through, or its answer
        if why is None and not isinstance(e, (OSError, ValueError, ImportError, RuntimeError, KeyError)):
            raise
        msg = why or (str(e) if str(e) else type(e).__name__)
    print(f"halo_lab.generate: error: {' '.join(msg.split())}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
