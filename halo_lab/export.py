"""Export a trained model to the Hugging Face layout, optionally pushing it to the Hub.

    python -m halo_lab.export CKPT_OR_RUN_DIR OUT_DIR [--push REPO] [--private] [--bin] [--no-strict]

CKPT_OR_RUN_DIR is a run directory (its checkpoints/last.ckpt, else its newest checkpoints/*.ckpt, else
its hub/ export), a checkpoint file (the runner's Lightning .ckpt, a .pt/.bin/.safetensors file, the
reference package's files) or a saved model directory (re-exported, e.g. to convert a reference one).
The export is loaded back and its logits compared with the source model's before anything is pushed.
The Hub token comes from HF_TOKEN or `hf auth login`, never from the command line (it would end up in
shell history and process lists).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from halo_lab.hub import CONFIG_NAME, HubPushError, load_from_hub, save_for_hub, upload_dir


def find_source(path: str | Path) -> Path:
    """The file or directory to load for ``path`` (see the module doc)."""
    p = Path(path).expanduser()
    if p.is_file() or (p.is_dir() and (p / CONFIG_NAME).is_file()):
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such checkpoint file or run directory")
    ckpts = p / "checkpoints"
    if (ckpts / "last.ckpt").is_file():
        return ckpts / "last.ckpt"
    found = sorted(ckpts.glob("*.ckpt"), key=lambda f: f.stat().st_mtime) if ckpts.is_dir() else []
    if found:
        return found[-1]
    if (p / "hub" / CONFIG_NAME).is_file():
        return p / "hub"
    raise FileNotFoundError(
        f"{p}: no checkpoints/last.ckpt, no checkpoints/*.ckpt, no hub/{CONFIG_NAME} and no {CONFIG_NAME}: "
        "not a run directory or a saved model"
    )


def _run_dir(source: Path, src: Path) -> Path | None:
    """The run directory behind an export source (itself, or the one holding checkpoints/X.ckpt)."""
    for d in (source, src.parent.parent if src.parent.name == "checkpoints" else None):
        if d is not None and d.is_dir() and (d / "metrics.json").is_file():
            return d
    return None


def _run_card_info(run: Path | None) -> tuple[dict | None, list[str]]:
    """(metrics.json, training data names) of a run directory, for the model card."""
    from halo_lab.hub.hf_files import dataset_names

    if run is None:
        return None, []
    try:
        metrics = json.loads((run / "metrics.json").read_text())
    except ValueError:
        metrics = None
    data = None
    cfg = run / ".hydra" / "config.yaml"
    if cfg.is_file():
        from omegaconf import OmegaConf

        try:
            data = OmegaConf.to_container(OmegaConf.load(cfg).get("data"), resolve=False)
        except Exception:  # an unreadable config only costs the card its datasets line
            data = None
    return metrics if isinstance(metrics, dict) else None, dataset_names(
        data if isinstance(data, dict) else None
    )


class PushFailed(HubPushError):
    """The export was written but could not be uploaded (no network, DNS, proxy, timeout, refused)."""


def _push(out: Path, repo: str, private: bool, commit_message: str | None, revision: str | None) -> None:
    try:
        upload_dir(out, repo, private=private, commit_message=commit_message, revision=revision)
    except HubPushError as e:
        flags = (" --private" if private else "") + (f" --revision {revision}" if revision else "")
        raise PushFailed(
            f"{e}; the export in {out} is complete, push it later with: hf upload {repo} {out}{flags}"
        ) from None


def _run_dir_tokenizer(path: Path) -> dict | None:
    """The tokenizer description the runner saved in RUN_DIR/hub/config.json, if any."""
    for cfg in (path / "hub" / CONFIG_NAME, path.parent.parent / "hub" / CONFIG_NAME):
        if cfg.is_file():
            tok = json.loads(cfg.read_text()).get("tokenizer")
            if isinstance(tok, dict) and "file" in tok:  # a word vocabulary beside config.json, inside hub/
                from halo_lab.tokenizers.base import file_in_folder

                return json.loads(file_in_folder(cfg.parent, tok["file"], "tokenizer.file", cfg).read_text())
            if isinstance(tok, dict):
                return tok
    return None


@torch.no_grad()
def _check_same_logits(a: torch.nn.Module, b: torch.nn.Module) -> float:
    n = min(16, a.config.max_seq_len)
    x = (torch.arange(2 * n).view(2, n) * 7919 % a.config.vocab_size).to(next(a.parameters()).device)
    diff = (a(x)[0].float() - b(x.to(next(b.parameters()).device))[0].float()).abs().max().item()
    if diff > 1e-5:
        raise RuntimeError(f"export check failed: reloaded model's logits differ by {diff:.3g}")
    return diff


def export(
    source: str | Path,
    out_dir: str | Path,
    *,
    push: str | None = None,
    private: bool = False,
    safe_serialization: bool = True,
    strict: bool = True,
    verify: bool = True,
    commit_message: str | None = None,
    revision: str | None = None,
) -> Path:
    """Load ``source``, save it to ``out_dir`` in the Hub layout, check it reloads, optionally push it."""
    src = find_source(source)
    model = load_from_hub(src, strict=strict)
    tokenizer = model.tokenizer
    if tokenizer is None:
        tokenizer = _run_dir_tokenizer(Path(source).expanduser() if Path(source).is_dir() else src)
    metrics, datasets = _run_card_info(_run_dir(Path(source).expanduser(), src))
    out = save_for_hub(
        model, model.config, out_dir, safe_serialization, tokenizer, repo_id=push, metrics=metrics,
        datasets=datasets,
    )  # fmt: skip
    if verify:
        _check_same_logits(model, load_from_hub(out))
    if push:
        _push(out, push, private, commit_message, revision)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m halo_lab.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", metavar="CKPT_OR_RUN_DIR")
    parser.add_argument("out_dir", metavar="OUT_DIR")
    parser.add_argument("--push", metavar="REPO", help="also upload to this Hub repo (owner/name)")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--revision", help="Hub branch to push to (created if missing)")
    parser.add_argument("--commit-message")
    parser.add_argument(
        "--bin", action="store_true", help="write pytorch_model.bin instead of model.safetensors"
    )
    parser.add_argument(
        "--no-strict", action="store_true", help="load despite missing/unexpected keys (warned)"
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the reload-and-compare check")
    # a bad option: one line naming it (argparse would print its usage block first)
    parser.error = lambda message: parser.exit(2, f"halo_lab.export: error: {message} (--help: usage)\n")
    args = parser.parse_args(argv)
    try:
        out = export(
            args.source,
            args.out_dir,
            push=args.push,
            private=args.private,
            safe_serialization=not args.bin,
            strict=not args.no_strict,
            verify=not args.no_verify,
            commit_message=args.commit_message,
            revision=args.revision,
        )
    except (OSError, ValueError, ImportError, RuntimeError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        if isinstance(e, OSError) and e.filename and e.strerror:  # e.g. OUT_DIR is a file, or not writable
            msg = f"{e.filename}: {e.strerror}"
            if isinstance(e, (FileExistsError, NotADirectoryError)):
                msg += " (OUT_DIR must be a directory or a new path)"
        print(f"halo_lab.export: error: {msg}", file=sys.stderr)
        return 1
    files = ", ".join(sorted(f.name for f in out.iterdir()))
    print(f"exported {args.source} -> {out} ({files})")
    if args.push:
        print(f"pushed to https://huggingface.co/{args.push}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
