"""The byte-level UTF-8 tokenizer (``"char"``): vocab 256, any text round-trips exactly."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from halo_lab.tokenizers.base import Tokenizer, register_tokenizer


@register_tokenizer
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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CharacterTokenizer:
        return cls()
