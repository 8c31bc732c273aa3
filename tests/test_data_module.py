"""HaloDataModule: every dataset kind, vocabulary exposure, loaders, early errors, Lightning resume."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from torch import nn

from halo_lab.data import HaloDataModule, StreamingDataLoader
from halo_lab.data.corpora import SHAKESPEARE_VAL_WORKS, make_test_tarball
from halo_lab.tokenizers import CharacterTokenizer, TiktokenTokenizer, WordTokenizer

LINES = "".join(
    f"Line {i}: all the world's a stage, and all the men and women merely players.\n" for i in range(80)
)


@pytest.fixture
def text(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text(LINES)
    return p


@pytest.fixture
def jsonl(tmp_path):
    p = tmp_path / "docs.jsonl"
    p.write_text(
        "".join(json.dumps({"text": f"document {i}: " + "words " * (i % 9)}) + "\n" for i in range(200))
    )
    return p


def first_batch(loader):
    return next(iter(loader))


def check_batch(batch, batch_size, seq_len, vocab_size):
    x, y = batch[0], batch[1]
    assert x.shape == y.shape == (batch_size, seq_len) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert int(x.max()) < vocab_size


def test_text_module_split_and_loaders(text, tmp_path):
    dm = HaloDataModule(
        "text", path=text, seq_len=32, batch_size=4, data_dir=tmp_path / "data", val_fraction=0.2
    )
    assert dm.vocab_size == 256 and isinstance(dm.tokenizer, CharacterTokenizer)  # known before setup
    dm.prepare_data()
    dm.setup("fit")
    assert dm.train_dataset.end == dm.val_dataset.start  # last 20% held out, no overlap
    check_batch(first_batch(dm.train_dataloader()), 4, 32, 256)
    vb = first_batch(dm.val_dataloader())
    assert vb[0].shape[1] == 32 and len(vb) == 2
    assert dm.test_dataset is dm.val_dataset
    assert list((tmp_path / "data" / "cache").glob("corpus-*.bin"))  # cache lives under data_dir
    d = dm.describe()
    assert d["dataset"] == "text" and d["vocab_size"] == 256 and d["train_examples"] == len(dm.train_dataset)
    dm.setup("fit")  # idempotent
    # Training order is seeded.
    same = HaloDataModule(
        "text", path=text, seq_len=32, batch_size=4, data_dir=tmp_path / "data", val_fraction=0.2
    )
    same.setup("fit")
    assert torch.equal(first_batch(same.train_dataloader())[0], first_batch(dm.train_dataloader())[0])


def test_word_vocab_built_from_training_part(text, tmp_path):
    val = tmp_path / "val.txt"
    val.write_text("Line 999: unseenword appears only in validation.\n" * 20)
    dm = HaloDataModule(
        "text", path=text, val_path=val, tokenizer="word", seq_len=16, batch_size=2, data_dir=tmp_path / "d"
    )
    dm.prepare_data()
    dm.setup("fit")
    tok = dm.tokenizer
    assert isinstance(tok, WordTokenizer) and dm.vocab_size == tok.vocab_size > 10
    assert "unseenword" not in tok.stoi and "stage" in tok.stoi
    saved = list((tmp_path / "d" / "tokenizers").glob("word-*.json"))
    assert len(saved) == 1 and WordTokenizer.load(saved[0]).itos == tok.itos
    check_batch(first_batch(dm.val_dataloader()), 2, 16, dm.vocab_size)
    # A second module reuses the saved vocabulary.
    again = HaloDataModule(
        "text", path=text, val_path=val, tokenizer="word", seq_len=16, batch_size=2, data_dir=tmp_path / "d"
    )
    assert again.tokenizer.itos == tok.itos


def test_word_vocab_excludes_held_out_fraction(tmp_path):
    p = tmp_path / "c.txt"
    tail = "tailword only in the held out part\n" * 5  # under 10% of the bytes
    p.write_text("common words here\n" * 200 + tail)
    dm = HaloDataModule("text", path=p, tokenizer="word", seq_len=8, batch_size=2, data_dir=tmp_path)
    assert "common" in dm.tokenizer.stoi and "tailword" not in dm.tokenizer.stoi
    j = tmp_path / "c.jsonl"
    j.write_text(
        "".join(json.dumps({"text": f"early {i}"}) + "\n" for i in range(200)) + '{"text": "lateword"}\n' * 5
    )
    dm = HaloDataModule("jsonl", path=j, tokenizer="word", seq_len=8, batch_size=2, data_dir=tmp_path)
    assert "early" in dm.tokenizer.stoi and "lateword" not in dm.tokenizer.stoi


def test_jsonl_and_tiktoken(jsonl, tmp_path):
    dm = HaloDataModule(
        "jsonl", path=jsonl, tokenizer="tiktoken", seq_len=16, batch_size=3, data_dir=tmp_path
    )
    assert isinstance(dm.tokenizer, TiktokenTokenizer) and dm.vocab_size == 100277
    dm.prepare_data()
    dm.setup("fit")
    check_batch(first_batch(dm.train_dataloader()), 3, 16, dm.vocab_size)
    assert dm.train_dataset.tokens[dm.train_dataset.end - 1] == dm.tokenizer.eos_token_id


def test_streaming_module(jsonl, tmp_path):
    dm = HaloDataModule("streaming", path=jsonl, seq_len=16, batch_size=4, data_dir=tmp_path, buffer_size=8)
    assert dm.file_format == "jsonl"
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, StreamingDataLoader) and loader.lookahead == 0
    check_batch(first_batch(loader), 4, 16, 256)
    val = [x for x, _ in dm.val_dataloader()]
    assert val and all(v.shape[1] == 16 for v in val)


def test_synthetic_modules(tmp_path):
    needle = HaloDataModule(
        "needle",
        seq_len=128,
        batch_size=4,
        data_dir=tmp_path,
        num_train=40,
        num_val=8,
        distances=[16, 64],
        vocab_size=40,
        num_pairs=2,
        key_len=2,
        value_len=2,
    )
    assert needle.vocab_size == 40 and needle.tokenizer is None
    needle.prepare_data()
    needle.setup("fit")
    x, y, d = first_batch(needle.val_dataloader())
    assert x.shape == (4, 128) and set(d.tolist()) <= {16, 64} and (y != -100).sum() == 4 * 2
    assert len(first_batch(needle.train_dataloader())) == 3
    assert not torch.equal(needle.train_dataset[0][0], needle.val_dataset[0][0])
    copy = HaloDataModule("copy", seq_len=32, batch_size=4, data_dir=tmp_path, vocab_size=12, num_train=16)
    assert copy.vocab_size == 12
    cx, cy = first_batch(copy.train_dataloader())
    assert cx.shape == cy.shape == (4, 32) and int(cx.max()) < 12
    scored = cy[:, :-1] != -100
    assert scored.any() and torch.equal(cx[:, 1:][scored], cy[:, :-1][scored])
    with pytest.raises(ValueError, match="distance 500 does not fit"):
        HaloDataModule("needle", seq_len=128, distances=[500])
    with pytest.raises(TypeError, match="unexpected keyword"):
        HaloDataModule("copy", seq_len=32, no_such_option=1)


def test_mqar_module(tmp_path):
    dm = HaloDataModule(
        "mqar",
        seq_len=96,
        batch_size=4,
        data_dir=tmp_path,
        num_train=40,
        num_val=8,
        vocab_size=40,
        num_pairs=6,
        num_queries=3,
        distance_buckets=[1, 32, 64],
    )
    from halo_lab.data import AssociativeRecallDataset

    assert dm.vocab_size == 40 and dm.tokenizer is None
    assert isinstance(dm.val_dataset, AssociativeRecallDataset) and dm.val_dataset.distance_buckets == [
        1,
        32,
        64,
    ]
    dm.prepare_data()
    dm.setup("fit")
    x, y, d = first_batch(dm.val_dataloader())
    assert x.shape == (4, 96) and d.shape == (4, 3) and set(d.flatten().tolist()) <= {1, 32, 64}
    assert ((y != -100).sum(-1) == 3).all()  # one value token per query
    assert len(first_batch(dm.train_dataloader())) == 3
    assert not torch.equal(dm.train_dataset[0][0], dm.val_dataset[0][0])
    assert dm.describe()["dataset"] == "mqar"
    with pytest.raises(ValueError, match="seq_len 16 is too short"):
        HaloDataModule("mqar", seq_len=16, num_pairs=6, num_queries=3)  # Zoology layout: 18 tokens
    with pytest.raises(ValueError, match="takes no path"):
        HaloDataModule("mqar", path=__file__)


def test_shakespeare_module_from_local_archive(tmp_path, monkeypatch):
    works = {w: f"{w.upper()}\n\n" + f"Verse of {w}, line after line.\n" * 30 for w in SHAKESPEARE_VAL_WORKS}
    works.update(
        {"hamlet": "HAMLET\n\n" + "To be, or not to be.\n" * 200, "macbeth": "MACBETH\n\n" + "Out!\n" * 300}
    )
    tb = make_test_tarball(tmp_path / "s.tar.gz", works)
    monkeypatch.setenv("HALO_SHAKESPEARE_TARBALL", str(tb))
    monkeypatch.setenv("HALO_SHAKESPEARE_SHA256", "skip")
    dm = HaloDataModule("shakespeare", seq_len=64, batch_size=2, data_dir=tmp_path / "data")
    dm.prepare_data()
    dm.setup("fit")
    assert (tmp_path / "data" / "shakespeare" / "manifest.json").is_file()
    val_text = CharacterTokenizer().decode(dm.val_dataset.tokens[:].tolist())
    assert "Verse of sonnets" in val_text and "To be" not in val_text
    check_batch(first_batch(dm.train_dataloader()), 2, 64, 256)


def test_workers_and_pin_memory(text, tmp_path):
    dm = HaloDataModule(
        "text", path=text, seq_len=16, batch_size=4, num_workers=2, pin_memory=False, data_dir=tmp_path
    )
    dm.setup("fit")  # setup prepares by itself when prepare_data was not called
    loader = dm.train_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers
    batches = list(loader)
    assert len(batches) == len(dm.train_dataset) // 4
    tiny = HaloDataModule("text", path=text, seq_len=16, batch_size=10_000, data_dir=tmp_path)
    tiny.setup("fit")
    with pytest.warns(UserWarning, match="fewer than batch_size"):
        assert len(list(tiny.train_dataloader())) == 1  # never silently empty


# ----------------------------------------------------------------------------------- bad input
def test_errors_at_construction(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        HaloDataModule("imagenet")
    with pytest.raises(ValueError, match="needs path"):
        HaloDataModule("text")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        HaloDataModule("text", path=tmp_path / "missing.txt")
    (tmp_path / "adir").mkdir()
    with pytest.raises(IsADirectoryError, match="adir"):
        HaloDataModule("jsonl", path=tmp_path / "adir")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        HaloDataModule("streaming", path=tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match="val.txt"):
        HaloDataModule("text", path=__file__, val_path=tmp_path / "val.txt")
    with pytest.raises(ValueError, match="takes no path"):
        HaloDataModule("shakespeare", path=__file__)
    with pytest.raises(TypeError, match="unexpected arguments"):
        HaloDataModule("text", path=__file__, distances=[4])
    with pytest.raises(ValueError, match="val_fraction"):
        HaloDataModule("text", path=__file__, val_fraction=1.0)


def test_errors_in_prepare_data(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("only a few bytes of text here " * 3)
    dm = HaloDataModule("text", path=short, seq_len=64, data_dir=tmp_path)
    with pytest.raises(
        ValueError, match=r"short\.txt\) split 0\.9-1 has 9 tokens, fewer than max_seq_len \+ 1 = 65"
    ):
        dm.prepare_data()
    with pytest.raises(
        ValueError, match=r"short\.txt\) split 0-0\.9 has 81 tokens, fewer than max_seq_len \+ 1 = 129"
    ):
        HaloDataModule("text", path=short, seq_len=128, data_dir=tmp_path).prepare_data()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "also fine"}\n{broken\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: invalid JSON"):
        HaloDataModule("jsonl", path=bad, seq_len=4, data_dir=tmp_path).prepare_data()


# ----------------------------------------------------------------------------------- Lightning
class _Tiny(L.LightningModule):
    """Records the batches it trains on."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(256, 4)
        self.seen = []

    def training_step(self, batch, i):
        x, y = batch
        self.seen.append(x.clone())
        return self.emb(x).mean() * 0 + self.emb.weight.sum() * 0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(dm, steps, ckpt=None, root=None):
    model = _Tiny()
    trainer = L.Trainer(
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    return trainer, model


def test_lightning_saves_and_restores_stream_position(jsonl, tmp_path):
    def make():
        return HaloDataModule(
            "streaming", path=jsonl, seq_len=8, batch_size=2, buffer_size=4, data_dir=tmp_path
        )

    _, straight = _fit(make(), 6)
    trainer, first = _fit(make(), 3, root=tmp_path)
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert state[0]["epoch"] == 0 and state[0]["batches"] == 3  # the prefetched batch is not counted
    _, second = _fit(make(), 6, ckpt=str(ckpt), root=tmp_path)
    resumed = first.seen + second.seen
    assert len(resumed) == 6
    assert all(torch.equal(a, b) for a, b in zip(resumed, straight.seen))
