"""The tokenizer interface (:class:`Tokenizer`), JSON save/load, and the description registry.

Every concrete tokenizer registers itself (:func:`register_tokenizer`) under its ``type_name`` and rebuilds
from its description with ``from_dict``; :func:`tokenizer_from_dict` dispatches on the ``"type"`` key. The
registry (instead of a table naming the classes here) keeps this module below the concrete ones, so
``Tokenizer.load`` needs no import of them.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import posixpath
from collections.abc import Iterable, Sequence
from pathlib import Path, PureWindowsPath
from typing import Any

# Bumped when the way text becomes ids changes in this package, so stale token caches are not reused.
TOKENIZATION_VERSION = 1


class Tokenizer(abc.ABC):
    """Base class: the shared interface. Subclasses implement encode/decode/vocab_size/eos/to_dict/from_dict
    (abstract: a subclass that misses one cannot be made)."""

    type_name = "base"

    # -- interface -------------------------------------------------------------------------------
    @abc.abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abc.abstractmethod
    def decode(self, ids: Iterable[int]) -> str: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``[encode(t) for t in texts]``; tokenizers that can use several threads override it."""
        return [self.encode(t) for t in texts]

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abc.abstractmethod
    def eos_token_id(self) -> int: ...

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    @abc.abstractmethod
    def from_dict(cls, d: dict[str, Any]) -> Tokenizer:
        """Rebuild from :meth:`to_dict` (``d["type"]`` already checked by :func:`tokenizer_from_dict`)."""

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


def tokenizer_from_dict(d: dict[str, Any], base_dir: str | os.PathLike | None = None) -> Tokenizer:
    """Rebuild a tokenizer from :meth:`Tokenizer.to_dict`. A description that names a file instead
    (``{"type": "word", "file": "halo_tokenizer.json"}``, a saved model's config.json) is read from that
    file, which must lie inside ``base_dir`` (:func:`file_in_folder`)."""
    if not isinstance(d, dict) or "type" not in d:
        raise ValueError(f"a tokenizer description needs a 'type' key, got {d!r:.200}")
    if "file" in d:
        if base_dir is None:
            raise ValueError(
                f"tokenizer.file={d['file']!r}: the tokenizer description names a file; pass the folder it "
                "was saved in (tokenizer_from_dict(d, base_dir=...))"
            )
        p = file_in_folder(base_dir, d["file"])
        try:
            inner = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"tokenizer.file={d['file']!r}: {p} is not a readable JSON file ({e})") from None
        if not isinstance(inner, dict) or "file" in inner:
            raise ValueError(f"tokenizer.file={d['file']!r}: {p} is not a tokenizer description")
        return tokenizer_from_dict(inner)
    kind = _ALIASES.get(d["type"], d["type"])
    cls = _TYPES.get(kind)
    if cls is None:
        raise ValueError(f"unknown tokenizer type {d['type']!r}; known: {sorted(_TYPES)}")
    return cls.from_dict(d)


# ------------------------------------------------------------------------------------ saved files
def relative_name(name: Any, key: str = "tokenizer.file", where: str | os.PathLike | None = None) -> str:
    """``name`` as a normalised relative POSIX path that stays inside its folder; else a one-line
    ValueError naming ``key`` and the path: not a string, absolute, or a ``..`` that leads out."""
    at = f"{where}: " if where is not None else ""
    if not isinstance(name, str) or not name.strip() or "\0" in name:
        raise ValueError(f"{at}{key}={name!r} is not a file name")
    why = None
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive or Path(name).is_absolute():
        why = "an absolute path"
    else:
        norm = posixpath.normpath(name.replace("\\", "/"))
        if norm == ".." or norm.startswith("../"):
            why = "'..' leads out of it"
    if why is not None:
        raise ValueError(
            f"{at}{key}={name!r} is outside the model folder ({why}); the files a saved model names must lie "
            "inside its folder"
        )
    return norm


def file_in_folder(
    folder: str | os.PathLike, name: Any, key: str = "tokenizer.file", where: str | os.PathLike | None = None
) -> Path:
    """The path of the file ``name`` inside the saved model folder ``folder``, symlinks resolved: a relative
    path whose target (after ``..`` and symlinks) is inside ``folder``; else a one-line ValueError naming
    ``key`` and the path (see :func:`relative_name`)."""
    rel = relative_name(name, key, where)
    root = Path(folder).resolve()
    target = (root / rel).resolve()
    if target != root and root not in target.parents:
        at = f"{where}: " if where is not None else ""
        raise ValueError(
            f"{at}{key}={name!r} is outside the model folder {root} (it resolves to {target} through a "
            "symlink); the files a saved model names must lie inside its folder"
        )
    return target
