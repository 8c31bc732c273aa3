"""Checkpoints of the reference package (pyhalos) load, and give the reference's logits.

The first group builds reference-format files by hand (always runs). The second uses the real package
(``pip install pyhalos==2.2.1``, the ``compat`` extra) and skips without it. pyhalos 1.0.3's state-dict
keys and shapes are those of 2.2.1 with ``use_swiglu=False`` (checked against its wheel), and its
Trainer checkpoints carry a config without ``use_swiglu``: that is how the 1.x files are made here.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from halo_lab.checkpoint import compat
from halo_lab.config import HaloConfig
from halo_lab.hub import CheckpointMismatchError, load_from_hub, save_for_hub
from halo_lab.model import BaselineModel, HaloSModel

REF_CONFIG = dict(
    vocab_size=40,
    hidden_size=32,
    num_layers=3,
    num_heads=4,
    num_kv_heads=2,
    num_globals=2,
    local_window=8,
    dilated_offsets=[1, 2, 4, 8],
    num_random=0,
    dropout=0.0,
    max_seq_len=128,
    use_swiglu=True,
)


def ids(n=24, vocab=40, seed=3):
    return torch.randint(0, vocab, (2, n), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------ format logic, no pyhalos


def test_reference_config_translation():
    cfg, notes = compat.translate_reference_config({"local_window": 64, "dilated_offsets": [1, 2, 4, 8]})
    assert cfg["local_window"] == 33 and cfg["dilation_rule"] == "absolute" and cfg["random_edges"] == "token"
    assert compat.translate_reference_config({"local_window": 9})[0]["local_window"] == 5
    assert compat.is_reference_config({"halo_version": "2.2.0", "dilation_rule": "absolute"})
    assert compat.is_reference_config({"hidden_size": 8, "num_layers": 1})
    assert not compat.is_reference_config(HaloConfig().to_dict())


def test_key_normalisation_and_ffn_detection():
    t = torch.zeros(1)
    sd = {"module._orig_mod.layers.0.ffn.w1.weight": t, "module._orig_mod.layers.0.ffn.w3.weight": t}
    assert set(compat.strip_wrappers(sd)) == {"layers.0.ffn.w1.weight", "layers.0.ffn.w3.weight"}
    assert set(compat.strip_wrappers({"layers.0._orig_mod.ffn.w1.weight": t})) == {"layers.0.ffn.w1.weight"}
    two = {f"layers.{i}.ffn.w1.weight": t for i in range(2)}
    assert compat.detect_swiglu(two) is False
    assert compat.detect_swiglu({**two, **{f"layers.{i}.ffn.w3.weight": t for i in range(2)}}) is True
    with pytest.raises(ValueError, match="inconsistent FFN"):
        compat.detect_swiglu({**two, "layers.1.ffn.w3.weight": t})


def reference_like_dir(path: Path, swiglu: bool, say_swiglu) -> HaloSModel:
    """A reference-layout HF directory made from one of our models, with layers.{i}.global_attn.* added."""
    torch.manual_seed(0)
    ours = HaloSModel(
        HaloConfig(
            **{
                **REF_CONFIG,
                "use_swiglu": swiglu,
                "local_window": 5,
                "dilation_rule": "absolute",
                "random_edges": "token",
            }
        )
    ).eval()
    sd = dict(ours.state_dict())
    for i in range(REF_CONFIG["num_layers"]):
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            sd[f"layers.{i}.global_attn.{p}.weight"] = sd[f"layers.{i}.attn.{p}.weight"].clone()
    from safetensors.torch import save_file

    path.mkdir()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path / "model.safetensors"))
    cfg = {"model_type": "halo-s", "architectures": ["HaloSModel"], "halo_version": "2.2.0", **REF_CONFIG}
    if say_swiglu is None:
        del cfg["use_swiglu"]
    else:
        cfg["use_swiglu"] = say_swiglu
    (path / "config.json").write_text(json.dumps(cfg))
    return ours


@pytest.mark.parametrize(
    "swiglu,say", [(True, True), (False, None), (False, True)], ids=["2.x", "1.x-config", "stale-flag"]
)
def test_reference_layout_directory(tmp_path, swiglu, say):
    ours = reference_like_dir(tmp_path / "ref", swiglu, say)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointMismatchError, match=r"global_attn.*strict=False"):
            load_from_hub(tmp_path / "ref")
        caught.clear()
        loaded = load_from_hub(tmp_path / "ref", strict=False)
    messages = " ".join(str(w.message) for w in caught)
    assert "global_attn" in messages and "dropped" in messages
    assert ("following the weights" in messages) == (say is not None and say != swiglu)
    c = loaded.config
    assert c.use_swiglu is swiglu and c.local_window == 5 and c.dilation_rule == "absolute"
    with torch.no_grad():
        assert torch.equal(loaded(ids())[0], ours(ids())[0])


# ----------------------------------------------------------------------------- the real reference

try:
    import halo
    from halo.attention.halo_attention import HaloSparseAttention
    from halo.core.config import HaloConfig as RefConfig
    from halo.models.baseline_model import BaselineModel as RefBaseline
    from halo.models.halo_model import HaloSModel as RefHalo
except ImportError:  # the tests below skip
    halo = None

needs_reference = pytest.mark.skipif(halo is None, reason="pyhalos (the reference package) is not installed")


def ref_model(cls, seed=0, share_global_attn=True, **kw):
    torch.manual_seed(seed)
    model = cls(RefConfig(**{**REF_CONFIG, **kw})).eval()
    if cls is RefHalo and share_global_attn:
        # halo_lab's globals go through each layer's own attention: make the reference's separate
        # global-token attention the same weights, so the two architectures compute the same function
        for layer in model.layers:
            layer.global_attn.load_state_dict(layer.attn.state_dict())
    return model


@pytest.fixture
def reference_set_semantics(monkeypatch):
    """Run the reference's sparse attention through its own GPU path (SDPA with a boolean graph mask).

    Its CPU gather path counts a neighbour listed twice (out-of-range indices are redirected to the
    token itself) twice in the softmax; its GPU path, like halo_lab, treats the graph as a set."""
    monkeypatch.setattr(
        HaloSparseAttention,
        "_forward_gather",
        lambda self, q, k, v, batch, seq, device, is_causal: self._forward_sdpa(q, k, v, batch, seq),
    )


@torch.no_grad()
def assert_same_logits(ref, ours, n=24):
    x = ids(n)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-5, atol=2e-5)


def load_dropping_global_attn(path, **kw):
    with pytest.warns(UserWarning, match="global_attn"):
        return load_from_hub(path, strict=False, **kw)


@needs_reference
def test_reference_hf_directory_trivial_graph(tmp_path):
    """Window 1 and no extra edges: the reference's CPU path has no duplicate neighbours, no patching."""
    ref = ref_model(RefHalo, local_window=1, dilated_offsets=[], num_random=0)
    halo.save_for_hub(ref, ref.config, str(tmp_path))
    with pytest.raises(CheckpointMismatchError, match=r"layers\.\{i\}\.global_attn"):
        load_from_hub(tmp_path)
    ours = load_dropping_global_attn(tmp_path)
    assert isinstance(ours, HaloSModel) and ours.config.local_window == 1
    assert_same_logits(ref, ours)


@pytest.mark.parametrize("num_random,n", [(0, 40), (2, 24)])
@needs_reference
def test_reference_hf_directory_full_graph(tmp_path, reference_set_semantics, num_random, n):
    """Window 8 (reaches 4 back) + absolute dilated offsets; random edges agree only inside the window."""
    ref = ref_model(RefHalo, local_window=64 if num_random else 8, num_random=num_random)
    halo.save_for_hub(ref, ref.config, str(tmp_path))
    ours = load_dropping_global_attn(tmp_path)
    assert ours.config.dilated_distances == ((8,) if not num_random else ())
    assert_same_logits(ref, ours, n)


@needs_reference
def test_reference_single_layer_needs_no_shared_global_attn(tmp_path, reference_set_semantics):
    ref = ref_model(RefHalo, num_layers=1, share_global_attn=False)
    halo.save_for_hub(ref, ref.config, str(tmp_path))
    assert_same_logits(ref, load_dropping_global_attn(tmp_path))


@needs_reference
def test_reference_1x_gelu_trainer_checkpoint(tmp_path):
    from halo.training.trainer import Trainer

    ref = ref_model(RefHalo, use_swiglu=False, local_window=1, dilated_offsets=[])
    path = Trainer(ref, device="cpu").save_checkpoint(str(tmp_path / "epoch0.pt"))
    ckpt = torch.load(path, weights_only=True)  # plain containers: safe to rewrite
    del ckpt["config"]["use_swiglu"]  # a 1.x config has no such field
    ckpt["halo_version"] = "1.0.3"
    torch.save(ckpt, path)
    ours = load_dropping_global_attn(path)
    assert ours.config.use_swiglu is False and ours.layers[0].ffn.w3 is None
    assert_same_logits(ref, ours)


@pytest.mark.parametrize("swiglu", [True, False], ids=["2.x", "1.x"])
@needs_reference
def test_reference_baseline_pt_and_safetensors(tmp_path, swiglu):
    ref = ref_model(RefBaseline, use_swiglu=swiglu)
    pt = tmp_path / "baseline.pt"
    torch.save(ref.state_dict(), pt)
    ours = load_from_hub(pt, config=ref.config.to_dict())  # a raw state dict has no config of its own
    assert isinstance(ours, BaselineModel)
    assert ours.config.num_kv_heads == ours.config.num_heads == 4  # the reference baseline is full MHA
    assert_same_logits(ref, ours)
    from safetensors.torch import save_file

    st = tmp_path / "baseline.safetensors"
    save_file(ref.state_dict(), str(st))
    assert_same_logits(ref, load_from_hub(st, config=ref.config.to_dict()))


@needs_reference
def test_reference_dataparallel_prefix_and_export(tmp_path):
    ref = ref_model(RefBaseline)
    sd = {"module." + k: v for k, v in ref.state_dict().items()}  # saved from an nn.DataParallel wrapper
    torch.save(
        {"model_state_dict": sd, "config": ref.config.to_dict(), "halo_version": "2.2.1"}, tmp_path / "c.pt"
    )
    ours = load_from_hub(tmp_path / "c.pt")
    assert_same_logits(ref, ours)
    # and once imported it is an ordinary halo_lab model
    save_for_hub(ours, None, tmp_path / "export")
    again = load_from_hub(tmp_path / "export")
    assert json.loads((tmp_path / "export" / "config.json").read_text())["architectures"] == ["BaselineModel"]
    assert_same_logits(ref, again)


@needs_reference
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_reference_model_save_files(tmp_path, suffix):
    """HaloSModel.save() of the reference writes a bare state dict: the config comes from the caller."""
    ref = ref_model(RefHalo, local_window=1, dilated_offsets=[])
    path = tmp_path / f"model{suffix}"
    ref.save(str(path))
    with pytest.raises(ValueError, match="num_heads"):
        load_from_hub(path, strict=False)
    ours = load_dropping_global_attn(path, config=ref.config.to_dict())
    assert ours.config.local_window == 1
    assert_same_logits(ref, ours)
