"""Hugging Face format both ways, against transformers' own RwkvForCausalLM (float32).

With 7 layers transformers' eval mode halves the residual stream after layer 6 (its fp16 guard,
rescale_every=6); with LayerNorm's epsilon at 1e-5 that changes nothing measurable. (With a large
epsilon it would: LN(x / 2, eps) = LN(x, 4 eps). We compute the model without that rescaling,
which is transformers' training-mode output.)"""

from __future__ import annotations

import pytest
import torch

from rwkv_wkv import RWKV, RWKVConfig

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")


def _hf_config(layers=3, **kw):
    return transformers.RwkvConfig(vocab_size=97, context_length=64, hidden_size=32, num_hidden_layers=layers,
                                   intermediate_size=80, **kw)


def _randomise(module, seed):
    """Every parameter random (the RWKV init zeroes many matrices, which would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() == 2 else 0.3))
            if name.endswith("time_decay"):
                p.copy_(torch.linspace(-4, 1, p.numel()))
    return module


def _rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("eps, layers", [(1e-5, 7), (1e-3, 3)])
def test_load_transformers_checkpoint(tmp_path, eps, layers):
    torch.manual_seed(0)
    theirs = _randomise(transformers.RwkvForCausalLM(_hf_config(layers, layer_norm_epsilon=eps)), 1).eval()
    theirs.save_pretrained(tmp_path / "hf")
    ours = RWKV.from_checkpoint(tmp_path / "hf").eval()
    assert ours.config.n_layer == layers and ours.config.dim_ffn == 80 and ours.config.layer_norm_eps == eps
    idx = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = theirs(idx).logits
        got, _ = ours(idx)
    assert _rel_err(got, ref) < 1e-4


def test_save_for_transformers(tmp_path):
    ours = _randomise(RWKV(RWKVConfig(vocab_size=97, n_layer=3, n_embd=32, ctx_len=64, dim_ffn=80)), 3).eval()
    ours.save_hf(tmp_path / "out")
    theirs = transformers.RwkvForCausalLM.from_pretrained(tmp_path / "out").eval()
    idx = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref, _ = ours(idx)
        got = theirs(idx).logits
    assert _rel_err(got, ref) < 1e-4
    # and back: our loader reads what we wrote, exactly
    again = RWKV.from_checkpoint(tmp_path / "out")
    for (n, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n


def test_bad_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        RWKV.from_checkpoint(tmp_path / "missing")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="not a Hugging Face RWKV checkpoint"):
        RWKV.from_checkpoint(tmp_path / "empty_dir")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        RWKV.from_checkpoint(tmp_path / "junk.pth")
