"""Tokenizers with one interface: byte-level UTF-8, word-level, and tiktoken BPE (offline).

Every tokenizer has ``encode(text) -> list[int]``, ``decode(ids) -> str``, ``vocab_size``, ``eos_token_id``
(the end-of-text id that separates documents), ``save(path)`` / ``load(path)`` (a small JSON file),
``to_dict()`` (a JSON-able description with a ``"type"`` key; the hub export stores it so a loaded model can
generate from a string) and ``fingerprint()`` (a hash that changes whenever the token ids a text maps to can
change; the token cache keys on it). :func:`tokenizer_from_dict` rebuilds a tokenizer from ``to_dict()``,
:func:`build_tokenizer` builds one from a config name (``"char"``, ``"word"``, ``"tiktoken"``).

Modules: ``base`` (the interface, save/load, the description registry, ``tokenizer_from_dict``), ``char``,
``word``, ``tiktoken_bpe`` (one tokenizer each), ``build`` (``build_tokenizer``). This package imports
nothing of halo_lab but ``halo_lab.utils``: ``halo_lab.checkpoint`` imports it.
"""

from __future__ import annotations

from halo_lab.tokenizers.base import TOKENIZATION_VERSION, Tokenizer, tokenizer_from_dict
from halo_lab.tokenizers.build import build_tokenizer
from halo_lab.tokenizers.char import CharacterTokenizer
from halo_lab.tokenizers.tiktoken_bpe import TiktokenTokenizer, TiktokenUnavailableError
from halo_lab.tokenizers.word import WordTokenizer

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
