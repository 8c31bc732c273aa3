"""The word-level tokenizer (``"word"``): words, punctuation marks and whitespace runs, with a vocabulary
built from texts or loaded from a saved description."""

from __future__ import annotations

import collections
import re
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

from halo_lab.tokenizers.base import Tokenizer, register_tokenizer

# Words, single punctuation marks, and whitespace runs: whitespace is kept as tokens so that text whose
# pieces are all in the vocabulary decodes back exactly.
_WORD_PATTERN = re.compile(r"\w+|[^\w\s]|\s+")


@register_tokenizer
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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WordTokenizer:
        return cls(
            vocab=d.get("vocab", []),
            lowercase=d.get("lowercase", False),
            unk_token=d.get("unk_token", "<unk>"),
            eos_token=d.get("eos_token", "<eos>"),
        )
