"""TextDataset and JSONLDataset: shapes, alignment, token cache reuse/invalidation, every bad input."""

from __future__ import annotations

import json
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from halo_lab.data import JSONLDataset, TextDataset
from halo_lab.tokenizers import CharacterTokenizer, TiktokenTokenizer, WordTokenizer

TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog, ünïcödé ✓.\n" for i in range(60))


@pytest.fixture(autouse=True)
def _cache_env(monkeypatch, tmp_path):
    # Datasets built without cache_dir must never write to the home directory in tests.
    monkeypatch.setenv("HALO_CACHE_DIR", str(tmp_path / "default_cache"))


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


def write_jsonl(path, rows):
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


# ----------------------------------------------------------------------------------- TextDataset
def test_text_shapes_alignment_and_content(corpus, tmp_path):
    tok = CharacterTokenizer()
    ds = TextDataset(corpus, tok, max_seq_len=32, cache_dir=tmp_path / "c")
    raw = np.frombuffer(corpus.read_bytes(), dtype=np.uint8)
    assert ds.num_tokens == len(raw)
    assert len(ds) == (len(raw) - 33) // 32 + 1
    for i in (0, 1, len(ds) - 1, -1):
        x, y = ds[i]
        assert x.shape == y.shape == (32,) and x.dtype == y.dtype == torch.long
        assert torch.equal(x[1:], y[:-1])  # next-token alignment
        s = (i % len(ds)) * 32
        assert torch.equal(x, torch.from_numpy(raw[s : s + 32].astype(np.int64)))
        assert y[-1].item() == raw[s + 32]
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert isinstance(ds.tokens, np.memmap) and ds.tokens.dtype == np.uint8


def test_text_stride_and_split(corpus, tmp_path):
    tok = CharacterTokenizer()
    full = TextDataset(corpus, tok, 16, stride=4, cache_dir=tmp_path)
    assert len(full) == (full.num_tokens - 17) // 4 + 1
    assert torch.equal(full[1][0][:12], full[0][0][4:])
    train = TextDataset(corpus, tok, 16, cache_dir=tmp_path, split=(0.0, 0.9))
    val = TextDataset(corpus, tok, 16, cache_dir=tmp_path, split=(0.9, 1.0))
    assert train.end == val.start and train.start == 0 and val.end == full.num_tokens  # disjoint, complete
    assert abs(val.num_tokens / full.num_tokens - 0.1) < 0.01
    with pytest.raises(ValueError, match="split"):
        TextDataset(corpus, tok, 16, cache_dir=tmp_path, split=(0.5, 0.5))


def test_text_several_files_joined_by_eos(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("first document " * 5)
    b.write_text("second document " * 5)
    tok = WordTokenizer().build_vocab([a.read_text(), b.read_text()])
    ds = TextDataset([a, b], tok, 8, cache_dir=tmp_path / "c")
    ids = list(np.asarray(ds.tokens))
    assert ids == tok.encode(a.read_text()) + [tok.eos_token_id] + tok.encode(b.read_text())
    assert ds.tokens.dtype == np.uint8  # 6 ids
    big = WordTokenizer().build_vocab([" ".join(f"w{i}" for i in range(300))])
    assert TextDataset(a, big, 2, cache_dir=tmp_path / "c").tokens.dtype == np.uint16


def test_tiktoken_cache_is_uint32_and_matches_encode(corpus, tmp_path):
    tok = TiktokenTokenizer()
    ds = TextDataset(corpus, tok, 16, cache_dir=tmp_path)
    assert ds.tokens.dtype == np.uint32
    assert list(np.asarray(ds.tokens)) == tok.encode(TEXT)


def test_chunked_tokenisation_equals_whole_text(tmp_path, monkeypatch):
    # Files are tokenised in chunks cut before a non-space line start: the ids must equal one encode().
    import halo_lab.data._io as io_mod

    text = "".join(f"  {i} words  here\n\n\tindented {i}\n" for i in range(400))
    p = tmp_path / "t.txt"
    p.write_text(text)
    monkeypatch.setattr(io_mod, "CHUNK_BYTES", 64)
    for tok in (TiktokenTokenizer(), WordTokenizer().build_vocab([text])):
        chunks = list(io_mod.iter_text_chunks(p, chunk_bytes=64))
        assert len(chunks) > 10 and "".join(chunks) == text
        assert sum((tok.encode(c) for c in chunks), []) == tok.encode(text)


# ----------------------------------------------------------------------------------- token cache
def test_cache_reused_without_retokenising(corpus, tmp_path, monkeypatch):
    tok = WordTokenizer().build_vocab([TEXT])
    first = TextDataset(corpus, tok, 16, cache_dir=tmp_path / "c")
    assert not first.cache_reused

    def boom(text):
        raise AssertionError("re-tokenised although cached")

    monkeypatch.setattr(tok, "encode", boom)
    again = TextDataset(corpus, tok, 16, cache_dir=tmp_path / "c")
    assert again.cache_reused and again.cache_path == first.cache_path
    assert torch.equal(again[3][0], first[3][0])
    # Moving the file keeps the cache: the key is the content, not the path.
    moved = tmp_path / "moved.txt"
    os.rename(corpus, moved)
    assert TextDataset(moved, tok, 16, cache_dir=tmp_path / "c").cache_reused


def test_cache_invalidated_by_file_change(corpus, tmp_path):
    tok = CharacterTokenizer()
    first = TextDataset(corpus, tok, 16, cache_dir=tmp_path / "c")
    st = corpus.stat()
    changed = TEXT.replace("quick", "QUICK")  # same size
    corpus.write_text(changed, encoding="utf-8")
    os.utime(corpus, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    second = TextDataset(corpus, tok, 16, cache_dir=tmp_path / "c")
    assert not second.cache_reused and second.cache_path != first.cache_path
    assert bytes(np.asarray(second.tokens)) == changed.encode()


def test_cache_invalidated_by_tokenizer_change(corpus, tmp_path):
    c = tmp_path / "c"
    a = TextDataset(corpus, WordTokenizer().build_vocab([TEXT]), 16, cache_dir=c)
    b = TextDataset(corpus, WordTokenizer().build_vocab([TEXT], max_size=10), 16, cache_dir=c)
    d = TextDataset(corpus, CharacterTokenizer(), 16, cache_dir=c)
    assert len({a.cache_path, b.cache_path, d.cache_path}) == 3
    assert not (a.cache_reused or b.cache_reused or d.cache_reused)
    assert np.asarray(b.tokens).max() < 10


def test_cache_rebuilt_when_truncated(corpus, tmp_path):
    tok = CharacterTokenizer()
    first = TextDataset(corpus, tok, 16, cache_dir=tmp_path)
    with open(first.cache_path, "r+b") as f:
        f.truncate(10)
    again = TextDataset(corpus, tok, 16, cache_dir=tmp_path)
    assert not again.cache_reused and again.num_tokens == len(TEXT.encode())


def test_default_cache_dir_from_env(corpus, tmp_path):
    ds = TextDataset(corpus, "char", 16)
    assert str(ds.cache_path).startswith(str(tmp_path / "default_cache"))


def test_pickle_reopens_memmap(corpus, tmp_path):
    ds = TextDataset(corpus, CharacterTokenizer(), 16, cache_dir=tmp_path)
    blob = pickle.dumps(ds)
    assert len(blob) < ds.num_tokens  # the token array is not copied into the pickle
    back = pickle.loads(blob)
    assert torch.equal(back[5][1], ds[5][1])


def test_zero_and_several_workers_give_identical_batches(corpus, tmp_path):
    ds = TextDataset(corpus, CharacterTokenizer(), 16, cache_dir=tmp_path)
    b0 = [torch.cat(b) for b in DataLoader(ds, batch_size=4, num_workers=0)]
    b2 = [torch.cat(b) for b in DataLoader(ds, batch_size=4, num_workers=2)]
    assert len(b0) == len(b2) > 0 and all(torch.equal(x, y) for x, y in zip(b0, b2))


# ----------------------------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.txt"):
        TextDataset(tmp_path / "nothere.txt", "char", 16, cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="nothere.jsonl"):
        JSONLDataset(tmp_path / "nothere.jsonl", "char", 16, cache_dir=tmp_path)


def test_directory_instead_of_file(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError, match="dir"):
        TextDataset(tmp_path / "dir", "char", 16, cache_dir=tmp_path)
    with pytest.raises(IsADirectoryError, match="dir"):
        JSONLDataset(tmp_path / "dir", "char", 16, cache_dir=tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match=r"empty\.txt is empty"):
        TextDataset(tmp_path / "empty.txt", "char", 16, cache_dir=tmp_path)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"empty\.jsonl is empty"):
        JSONLDataset(tmp_path / "empty.jsonl", "char", 16, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="no text file"):
        TextDataset([], "char", 16, cache_dir=tmp_path)


def test_corpus_shorter_than_seq_len(tmp_path):
    p = tmp_path / "short.txt"
    p.write_text("tiny text")  # 9 bytes
    with pytest.raises(ValueError, match=r"short\.txt.*9 tokens, fewer than max_seq_len \+ 1 = 17"):
        TextDataset(p, "char", 16, cache_dir=tmp_path)
    TextDataset(p, "char", 8, cache_dir=tmp_path)  # exactly max_seq_len + 1 tokens is one example
    assert len(TextDataset(p, "char", 8, cache_dir=tmp_path)) == 1
    j = write_jsonl(tmp_path / "short.jsonl", [{"text": "hi"}])
    with pytest.raises(ValueError, match="fewer than max_seq_len"):
        JSONLDataset(j, "char", 16, cache_dir=tmp_path)


def test_non_utf8_bytes(tmp_path):
    p = tmp_path / "latin1.txt"
    data = ("caf\xe9 au lait\n" * 10).encode("latin-1")
    p.write_bytes(data)
    # The byte tokenizer reads raw bytes: nothing is lost and nothing is said.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = TextDataset(p, "char", 16, cache_dir=tmp_path)
    assert bytes(np.asarray(ds.tokens)) == data
    # Word and BPE tokenizers decode text: invalid bytes are replaced, with a warning naming the file.
    for tok in (WordTokenizer().build_vocab(["caf au lait \ufffd\n"]), TiktokenTokenizer()):
        with pytest.warns(
            UserWarning, match=r"latin1\.txt: 10 byte\(s\) are not valid UTF-8 \(first at line 1"
        ):
            ds = TextDataset(p, tok, 8, cache_dir=tmp_path)
        assert "\ufffd" in tok.decode(np.asarray(ds.tokens[:20]).tolist())
    with pytest.raises(ValueError, match=r"latin1\.txt: not valid UTF-8 at line 1"):
        TextDataset(p, TiktokenTokenizer(), 8, cache_dir=tmp_path / "strict", encoding_errors="strict")


def test_word_tokenizer_without_vocab(corpus, tmp_path):
    with pytest.raises(ValueError, match="no vocabulary"):
        TextDataset(corpus, WordTokenizer(), 16, cache_dir=tmp_path)


# ----------------------------------------------------------------------------------- JSONL
def test_jsonl_documents_joined_by_eos(tmp_path):
    docs = ["first document here", "second one, ünïcödé", "third and last document"]
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": d, "id": i} for i, d in enumerate(docs)] + [""])
    tok = CharacterTokenizer()
    ds = JSONLDataset(p, tok, 8, cache_dir=tmp_path)
    expected = sum((tok.encode(d) + [tok.eos_token_id] for d in docs), [])
    assert list(np.asarray(ds.tokens)) == expected
    assert ds.num_documents == 3 and ds.skipped_lines == 0
    x, y = ds[0]
    assert torch.equal(x[1:], y[:-1])
    other = JSONLDataset(
        write_jsonl(tmp_path / "o.jsonl", [{"body": d} for d in docs]), tok, 8, "body", cache_dir=tmp_path
    )
    assert list(np.asarray(other.tokens)) == expected


@pytest.mark.parametrize(
    "bad, reason",
    [
        ('{"text": "unterminated', "invalid JSON"),
        ('["a", "list"]', "expected a JSON object, got list"),
        ('{"content": "wrong field"}', "missing field 'text'"),
        ('{"text": 42}', "field 'text' is int, not a string"),
    ],
)
def test_jsonl_bad_line_names_file_and_line(tmp_path, bad, reason):
    p = write_jsonl(tmp_path / "bad.jsonl", [{"text": "good line " * 5}, "", bad, {"text": "more"}])
    with pytest.raises(ValueError, match=rf"bad\.jsonl:3: {reason}"):
        JSONLDataset(p, "char", 8, cache_dir=tmp_path)


def test_jsonl_non_utf8_line_is_a_bad_line(tmp_path):
    p = tmp_path / "enc.jsonl"
    p.write_bytes(b'{"text": "fine line, long enough"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"enc\.jsonl:2: not valid UTF-8"):
        JSONLDataset(p, "char", 8, cache_dir=tmp_path)


def test_jsonl_skip_bad_lines_reports(tmp_path):
    rows = [{"text": "good document number one"}, "{oops", {"text": None}, {"text": "good document two"}]
    p = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with pytest.warns(UserWarning, match=r"skipped 2 bad line\(s\); first: .*mixed\.jsonl:2"):
        ds = JSONLDataset(p, "char", 8, skip_bad_lines=True, cache_dir=tmp_path)
    assert ds.skipped_lines == 2 and ds.num_documents == 2
    with pytest.warns(UserWarning, match="skipped 2"):  # the count survives a cache hit
        again = JSONLDataset(p, "char", 8, skip_bad_lines=True, cache_dir=tmp_path)
    assert again.cache_reused and again.skipped_lines == 2
    only_bad = write_jsonl(tmp_path / "allbad.jsonl", ["{oops", {"x": 1}])
    with pytest.raises(ValueError, match="no document"), pytest.warns(UserWarning):
        JSONLDataset(only_bad, "char", 8, skip_bad_lines=True, cache_dir=tmp_path)


def test_jsonl_split_at_document_boundary(tmp_path):
    docs = [f"document {i} " + "x" * (i % 7) for i in range(200)]
    p = write_jsonl(tmp_path / "many.jsonl", [{"text": d} for d in docs])
    tok = CharacterTokenizer()
    train = JSONLDataset(p, tok, 8, cache_dir=tmp_path, split=(0.0, 0.9))
    val = JSONLDataset(p, tok, 8, cache_dir=tmp_path, split=(0.9, 1.0))
    assert train.end == val.start
    assert train.tokens[train.end - 1] == tok.eos_token_id  # the cut follows an end-of-text
    val_text = tok.decode(np.asarray(val.tokens[val.start : val.end]).tolist())
    assert val_text.startswith("document ")
