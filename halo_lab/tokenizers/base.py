"""The tokenizer interface (:class:`Tokenizer`), JSON save/load, and the description registry.

Every concrete tokenizer registers itself (:func:`register_tokenizer`) under its ``type_name`` and rebuilds
from its description with ``from_dict``; :func:`tokenizer_from_dict` dispatches on the ``"type"`` key. The
registry (instead of a table naming the classes here) keeps this module below the concrete ones, so
``Tokenizer.load`` needs no import of them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

# Bumped when the way text becomes ids changes in this package, so stale token caches are not reused.
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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tokenizer:
        """Rebuild from :meth:`to_dict` (``d["type"]`` already checked by :func:`tokenizer_from_dict`)."""
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


# ------------------------------------------------------------------------------------ registry
# type_name -> class; filled by register_tokenizer as the concrete modules are imported (the package's
# __init__ imports them all).
_TYPES: dict[str, type[Tokenizer]] = {}
# Accepted spellings in configs.
_ALIASES = {"byte": "char", "bytes": "char", "character": "char", "bpe": "tiktoken"}


def register_tokenizer(cls: type[Tokenizer]) -> type[Tokenizer]:
    """Class decorator: make ``cls`` rebuildable from descriptions whose ``"type"`` is its ``type_name``."""
    _TYPES[cls.type_name] = cls
    return cls


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from :meth:`Tokenizer.to_dict`."""
    if not isinstance(d, dict) or "type" not in d:
        raise ValueError(f"a tokenizer description needs a 'type' key, got {d!r:.200}")
    kind = _ALIASES.get(d["type"], d["type"])
    cls = _TYPES.get(kind)
    if cls is None:
        raise ValueError(f"unknown tokenizer type {d['type']!r}; known: {sorted(_TYPES)}")
    return cls.from_dict(d)
