"""A tokenizer from a config: :func:`build_tokenizer` (a name and options, a description, or an instance)."""

from __future__ import annotations

from typing import Any

from halo_lab.tokenizers.base import _ALIASES, _TYPES, Tokenizer, tokenizer_from_dict
from halo_lab.tokenizers.char import CharacterTokenizer
from halo_lab.tokenizers.tiktoken_bpe import TiktokenTokenizer
from halo_lab.tokenizers.word import WordTokenizer


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
