"""StreamingDataset: sharding across workers x ranks, shuffling, resume, formats and bad input."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

import halo_lab.data.streaming as st
from halo_lab.data import StreamingDataLoader, StreamingDataset
from halo_lab.tokenizers import CharacterTokenizer, WordTokenizer

T = 24
N_DOCS = 300


def doc(i: int) -> str:
    return f"d{i:04d} some words {i % 7}"


@pytest.fixture
def jsonl(tmp_path):
    p = tmp_path / "docs.jsonl"
    p.write_text("".join(json.dumps({"text": doc(i)}) + "\n" for i in range(N_DOCS)))
    return p


@pytest.fixture
def wtok():
    """Word tokenizer in which every document marker d0000.. is one token, so documents can be counted
    exactly in the windows."""
    return WordTokenizer().build_vocab([doc(i) for i in range(N_DOCS)])


def window_key(x: torch.Tensor, y: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.tolist()) + (int(y[-1]),)


def doc_ids(tok, xs) -> list[int]:
    """Document markers in the inputs of windows. Inputs of one shard's windows tile its token stream
    without overlap (a window shares only its last target with the next window's first input), so each
    document read by a shard appears exactly once, except in the shard's dropped tail."""
    out = []
    for x in xs:
        for t in x.tolist() if torch.is_tensor(x) else x:
            w = tok.itos[t]
            if w.startswith("d") and w[1:].isdigit():
                out.append(int(w[1:]))
    return out


def rebuild(items) -> list[int]:
    """The token stream a single unshuffled shard read: its inputs in order plus the last target."""
    return [t for x, _ in items for t in x.tolist()] + [int(items[-1][1][-1])]


def fake_worker(monkeypatch, wid: int, nw: int) -> None:
    monkeypatch.setattr(st, "get_worker_info", lambda: SimpleNamespace(id=wid, num_workers=nw))


def test_items_shape_and_alignment(jsonl):
    tok = CharacterTokenizer()
    items = list(StreamingDataset(jsonl, tok, T, buffer_size=0, rank=0, world_size=1))
    assert items
    for x, y in items:
        assert x.shape == y.shape == (T,) and x.dtype == torch.long
        assert torch.equal(x[1:], y[:-1])
    # Unshuffled, one shard: the windows tile the documents joined by end-of-text, in order.
    stream = b"".join(doc(i).encode() + b"\x00" for i in range(N_DOCS))
    got = bytes(rebuild(items))
    assert stream.startswith(got) and len(stream) - len(got) < T + 1


def test_two_workers_two_ranks_partition_the_documents(jsonl, wtok, monkeypatch):
    per_shard = {}
    for rank, wid in itertools.product(range(2), range(2)):
        ds = StreamingDataset(jsonl, wtok, T, buffer_size=16, seed=3, rank=rank, world_size=2)
        fake_worker(monkeypatch, wid, 2)
        per_shard[(rank, wid)] = [(x, y) for x, y in ds]
    windows = [window_key(x, y) for items in per_shard.values() for x, y in items]
    assert len(windows) == len(set(windows))  # no window seen twice in the epoch
    seen = {k: doc_ids(wtok, [x for x, _ in items]) for k, items in per_shard.items()}
    flat = [i for ids in seen.values() for i in ids]
    assert len(flat) == len(set(flat))  # no document read by two (rank, worker) shards
    assert all(len(v) > 10 for v in seen.values())
    # Only each shard's last partial window is dropped (< T + 1 tokens: at most 4 short documents).
    assert len(flat) >= N_DOCS - 4 * 4


def test_real_dataloader_workers_and_ranks_disjoint(jsonl, wtok):
    by_rank = {}
    for rank in range(2):
        ds = StreamingDataset(jsonl, wtok, T, buffer_size=8, seed=1, rank=rank, world_size=2)
        by_rank[rank] = [
            (x, y) for bx, by in DataLoader(ds, batch_size=4, num_workers=2) for x, y in zip(bx, by)
        ]
    windows = [window_key(x, y) for r in by_rank for x, y in by_rank[r]]
    assert len(windows) == len(set(windows))
    ids = [doc_ids(wtok, [x for x, _ in by_rank[r]]) for r in range(2)]
    flat = ids[0] + ids[1]
    assert ids[0] and ids[1] and len(flat) == len(set(flat))
    assert len(flat) >= N_DOCS - 4 * 4


def test_zero_vs_several_workers_cover_the_same_documents(jsonl, wtok):
    ds = StreamingDataset(jsonl, wtok, T, buffer_size=0, rank=0, world_size=1)
    single = doc_ids(wtok, [x for x, _ in ds])
    multi = doc_ids(wtok, [x for bx, _ in DataLoader(ds, batch_size=2, num_workers=2) for x in bx])
    assert len(single) == len(set(single)) and len(multi) == len(set(multi))
    assert len(single) >= N_DOCS - 4 and len(multi) >= N_DOCS - 8
    assert len(set(single) ^ set(multi)) <= 12  # only the shard tails differ


def test_distributed_rank_from_environment(jsonl, monkeypatch):
    tok = CharacterTokenizer()
    explicit = [window_key(x, y) for x, y in StreamingDataset(jsonl, tok, T, 0, rank=1, world_size=2)]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    from_env = [window_key(x, y) for x, y in StreamingDataset(jsonl, tok, T, 0)]
    assert from_env == explicit
    with pytest.raises(ValueError, match="rank 2"):
        StreamingDataset(jsonl, tok, T, rank=2, world_size=2)


def test_shuffle_is_seeded_bounded_and_per_epoch(jsonl):
    tok = CharacterTokenizer()

    def run(seed, epoch=0):
        ds = StreamingDataset(jsonl, tok, T, buffer_size=10, seed=seed, rank=0, world_size=1)
        ds.set_epoch(epoch)
        return [window_key(x, y) for x, y in ds]

    base = run(0)
    ordered = [window_key(x, y) for x, y in StreamingDataset(jsonl, tok, T, 0, rank=0, world_size=1)]
    assert run(0) == base and sorted(base) == sorted(ordered) and base != ordered
    assert run(1) != base and sorted(run(1)) == sorted(base)
    assert run(0, epoch=1) != base
    # Bounded buffer: output i has been read by then, so it comes from at most 10 places further on.
    pos = {w: i for i, w in enumerate(ordered)}
    assert all(pos[w] <= i + 10 for i, w in enumerate(base))
    # Iterating again advances the epoch by itself.
    ds = StreamingDataset(jsonl, tok, T, buffer_size=10, seed=0, rank=0, world_size=1)
    first, second = [window_key(*s) for s in ds], [window_key(*s) for s in ds]
    assert first == base and second == run(0, epoch=1)


def test_state_dict_resume_single_process(jsonl):
    tok = CharacterTokenizer()
    make = lambda: StreamingDataset(jsonl, tok, T, buffer_size=10, seed=5, rank=0, world_size=1)  # noqa: E731
    full = [window_key(*s) for s in make()]
    ds = make()
    it = iter(ds)
    head = [window_key(*next(it)) for _ in range(17)]
    state = ds.state_dict()
    assert state == {"epoch": 0, "samples": 17, "seed": 5}
    resumed = make()
    resumed.load_state_dict(state)
    tail = [window_key(*s) for s in resumed]
    assert head + tail == full


@pytest.mark.parametrize("num_workers, lookahead", [(0, 0), (2, 0), (2, 1)])
def test_loader_resume_with_workers(jsonl, num_workers, lookahead):
    tok = CharacterTokenizer()

    def loader():
        ds = StreamingDataset(jsonl, tok, T, buffer_size=6, seed=2, rank=0, world_size=1)
        return StreamingDataLoader(ds, batch_size=3, num_workers=num_workers, lookahead=lookahead)

    def keys(batches):
        return [window_key(x, y) for bx, by in batches for x, y in zip(bx, by)]

    full = keys(list(loader()))
    first = loader()
    it = iter(first)
    fetched = [next(it) for _ in range(5)]
    used = fetched[: len(fetched) - lookahead]  # the consumer fetched `lookahead` batches it did not use
    state = first.state_dict()
    assert state["epoch"] == 0 and state["batches"] == len(used)
    second = loader()
    second.load_state_dict(state)
    rest = keys(list(second))
    assert sorted(keys(used) + rest) == sorted(full)
    assert len(set(keys(used) + rest)) == len(full)
    # After a finished epoch the state points at the next one.
    assert second.state_dict()["epoch"] == 1 and second.state_dict()["batches"] == 0


def test_txt_format_non_utf8_and_eos(tmp_path):
    p = tmp_path / "plain.txt"
    data = b"".join(b"line %d caf\xe9\n" % i for i in range(100))
    p.write_bytes(data)
    items = list(StreamingDataset(p, CharacterTokenizer(), 16, 0, file_format="txt", rank=0, world_size=1))
    got = bytes(rebuild(items))  # raw bytes kept by the byte tokenizer, end-of-text after the file
    assert (data + b"\x00").startswith(got) and len(data) + 1 - len(got) < 17
    tok = WordTokenizer().build_vocab(["line caf\ufffd\n" + " ".join(str(i) for i in range(100))])
    with pytest.warns(UserWarning, match=r"plain\.txt: invalid UTF-8 .* \(first at line 1\)"):
        out = list(StreamingDataset(p, tok, 8, 0, file_format="txt", rank=0, world_size=1))
    assert "\ufffd" in tok.decode(out[0][0].tolist())
    with pytest.raises(ValueError, match=r"plain\.txt: not valid UTF-8 at line 1"):
        list(
            StreamingDataset(p, tok, 8, 0, file_format="txt", encoding_errors="strict", rank=0, world_size=1)
        )


def test_txt_lines_partition_across_shards(tmp_path, monkeypatch, wtok):
    p = tmp_path / "lines.txt"
    p.write_text("".join(doc(i) + "\n" for i in range(N_DOCS)))
    shards = []
    for wid in range(3):
        ds = StreamingDataset(p, wtok, T, 0, file_format="txt", rank=0, world_size=1)
        fake_worker(monkeypatch, wid, 3)
        shards.append(doc_ids(wtok, [x for x, _ in ds]))
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat)) and len(flat) >= N_DOCS - 3 * 4


def test_split_parts_are_disjoint(jsonl, wtok):
    train = StreamingDataset(jsonl, wtok, T, 0, split=(0.0, 0.8), rank=0, world_size=1)
    val = StreamingDataset(jsonl, wtok, T, 0, split=(0.8, 1.0), rank=0, world_size=1)
    a = set(doc_ids(wtok, [x for x, _ in train]))
    b = set(doc_ids(wtok, [x for x, _ in val]))
    assert a and b and not a & b and max(a) < min(b)
    assert 0.1 < len(b) / (len(a) + len(b)) < 0.3


def test_infinite_keeps_going_with_new_epochs(jsonl):
    ds = StreamingDataset(jsonl, CharacterTokenizer(), T, 4, rank=0, world_size=1, infinite=True)
    finite = sum(1 for _ in StreamingDataset(jsonl, CharacterTokenizer(), T, 4, rank=0, world_size=1))
    got = list(itertools.islice(iter(ds), finite * 2 + 3))
    assert len(got) == finite * 2 + 3


# ----------------------------------------------------------------------------------- bad input
def test_bad_paths(tmp_path):
    tok = CharacterTokenizer()
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        StreamingDataset(tmp_path / "missing.jsonl", tok, T)
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError, match="directory"):
        StreamingDataset(tmp_path / "d", tok, T)
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        StreamingDataset(tmp_path / "e.jsonl", tok, T)
    good = tmp_path / "g.jsonl"
    good.write_text('{"text": "some text that is long enough"}\n' * 5)
    with pytest.raises(ValueError, match="more than once"):
        StreamingDataset([good, tmp_path / "." / "g.jsonl"], tok, 8)
    with pytest.raises(ValueError, match="file_format"):
        StreamingDataset(tmp_path / "e.jsonl", tok, T, file_format="csv")


def test_too_short_for_seq_len(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"text": "hi"}\n')
    with pytest.raises(ValueError, match=r"s\.jsonl.*15 bytes, fewer than max_seq_len \+ 1"):
        StreamingDataset(p, CharacterTokenizer(), 64)


def test_shard_without_a_window_is_an_error(tmp_path):
    p = tmp_path / "small.jsonl"
    p.write_text("".join(json.dumps({"text": doc(i)}) + "\n" for i in range(3)))
    ds = StreamingDataset(p, CharacterTokenizer(), 40, 0, rank=0, world_size=4)
    with pytest.raises(RuntimeError, match="shard 0 of 4 .* got no complete window"):
        list(ds)


def test_malformed_jsonl(tmp_path):
    first_bad = tmp_path / "first.jsonl"
    first_bad.write_text("this is not json\n" + '{"text": "x"}\n' * 50)
    with pytest.raises(ValueError, match=r"first\.jsonl:1: invalid JSON"):
        StreamingDataset(first_bad, CharacterTokenizer(), 8)  # at construction
    later = tmp_path / "later.jsonl"
    rows = [json.dumps({"text": doc(i)}) for i in range(200)]
    rows[150] = '{"text": 7}'
    later.write_text("\n".join(rows) + "\n")
    # The whole file is scanned at construction: a bad line deep in the file fails before training.
    with pytest.raises(ValueError, match=r"later\.jsonl:151: field 'text' is int.*skip_bad_lines=True"):
        StreamingDataset(later, CharacterTokenizer(), 8, 0, rank=0, world_size=1)
    # Without the scan (or a file changed after it) the stream itself still names file and line,
    ds = StreamingDataset(later, CharacterTokenizer(), 8, 0, rank=0, world_size=1, validate=False)
    with pytest.raises(ValueError, match=r"later\.jsonl:151: field 'text' is int"):
        list(ds)
    # also when raised inside a worker process.
    with pytest.raises(ValueError, match=r"later\.jsonl:151"):
        list(DataLoader(ds, batch_size=2, num_workers=2))
    with pytest.warns(UserWarning, match=r"skipping 1 bad JSONL line.*later\.jsonl:151"):
        skipping = StreamingDataset(
            later, CharacterTokenizer(), 8, 0, rank=0, world_size=1, skip_bad_lines=True
        )
    assert skipping.skipped_lines == 1
    assert list(skipping)


# ---------------------------------------------------------------------------------------------- long lines
def _one_long_document(tmp_path, n_chars: int):
    import random

    r = random.Random(0)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dög", "king\n", "qu\teen"]
    text = " ".join(r.choice(words) for _ in range(n_chars // 4))[:n_chars]
    p = tmp_path / "long.jsonl"
    p.write_text(json.dumps({"text": text}) + "\n")
    return p, text


def test_a_long_jsonl_line_streams_in_bounded_memory(tmp_path):
    """One 3 MB document: tokenised whole it became a Python list of ints, an int64 copy and a
    concatenated copy that the shuffle buffer's windows kept alive (24x the line under tracemalloc, 30x
    in RSS); in pieces the peak stays near the line itself (its bytes, the decoded line, the string)."""
    import tracemalloc

    path, text = _one_long_document(tmp_path, 3_000_000)
    size = path.stat().st_size
    ds = StreamingDataset(path, "char", 64, buffer_size=1000, validate=False)
    tracemalloc.start()
    try:
        n = sum(1 for _ in ds)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == (len(text.encode()) + 1 - 1) // 64  # every byte, then the end-of-text id, in windows
    assert peak < 5 * size, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB line"


@pytest.mark.parametrize("tokenizer", ["char", "tiktoken", "word"])
def test_chunked_encoding_gives_the_ids_of_one_encode(tokenizer, tmp_path):
    from halo_lab.data._io import encode_in_chunks
    from halo_lab.tokenizers import build_tokenizer

    _, text = _one_long_document(tmp_path, 200_000)
    tok = build_tokenizer(tokenizer)
    if tokenizer == "word":
        tok.build_vocab([text])
    pieces = list(encode_in_chunks(tok, text, chunk=4096))
    assert len(pieces) > 40 and max(len(p) for p in pieces) <= 4096 * (2 if tokenizer == "char" else 1)
    assert [int(i) for p in pieces for i in p] == tok.encode(text)
    # A run with no space or line break is cut at the chunk's end: bounded, and the text round-trips.
    run = "x" * 20_000
    pieces = list(encode_in_chunks(tok, run, chunk=4096))
    assert len(pieces) == 5 and max(len(p) for p in pieces) <= 4096
    if tokenizer != "word":
        assert tok.decode([int(i) for p in pieces for i in p]) == run
