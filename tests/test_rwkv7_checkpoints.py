"""RWKV-7 checkpoints: RWKV-LM x070 .pth and fla-hub Hugging Face directories both ways,
generation detection, and a one-line error for every unusable file."""

import json

import pytest
import torch
from model7_helpers import random_model

import rwkv_wkv
from rwkv_wkv import RWKV, RWKV7, RWKVConfig
from rwkv_wkv.models import generation_of_checkpoint

pytest.importorskip("safetensors")


def same_logits(a, b):
    idx = torch.randint(0, a.config.vocab_size, (2, 13))
    with torch.no_grad():
        torch.testing.assert_close(a(idx)[0], b(idx)[0], rtol=0, atol=0)


def test_rwkv_lm_pth_round_trip_is_strict_and_exact(tmp_path):
    model = random_model()
    model.save_rwkv_lm(tmp_path / "m.pth")
    sd = torch.load(tmp_path / "m.pth")
    assert set(sd) == set(model.state_dict())
    assert sd["blocks.0.att.x_r"].shape == (1, 1, 128) and sd["blocks.0.att.r_k"].shape == (2, 64)
    assert sd["blocks.1.att.w1"].shape == (128, 32) and sd["blocks.0.att.v0"].shape == (1, 1, 128)
    fresh = RWKV7(RWKV7.config_from_state_dict(sd))
    fresh.load_state_dict(sd, strict=True)
    for loaded in (RWKV7.from_checkpoint(tmp_path / "m.pth"), rwkv_wkv.from_checkpoint(tmp_path / "m.pth"), fresh):
        assert isinstance(loaded, RWKV7)
        assert loaded.config == model.config
        same_logits(model, loaded.eval())


def test_fla_hf_directory_round_trip(tmp_path):
    model = random_model()
    model.save_hf(tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["model_type"] == "rwkv7" and cfg["head_dim"] == 64 and cfg["decay_low_rank_dim"] == 32
    from safetensors.torch import load_file

    t = load_file(tmp_path / "hf" / "model.safetensors")
    # fla's names and shapes (its LoRA modules hold the transposed matrices, w0 as a bias)
    assert t["model.layers.1.attn.w_lora.lora.0.weight"].shape == (32, 128)
    assert t["model.layers.1.attn.w_lora.lora.2.weight"].shape == (128, 32)
    assert t["model.layers.1.attn.w_lora.lora.2.bias"].shape == (128,)
    assert t["model.layers.1.attn.x_r"].shape == (1, 1, 128) and t["model.layers.1.attn.k_k"].shape == (128,)
    assert t["model.layers.2.ffn.x_k"].shape == (128,) and "model.layers.0.pre_norm.weight" in t
    assert "model.layers.0.attn.v_lora.lora.0.weight" not in t and "model.layers.1.attn.v_lora.lora.0.weight" in t
    torch.testing.assert_close(t["model.layers.1.attn.g_norm.weight"], model.blocks[1].att.ln_x.weight)
    for loaded in (RWKV7.from_checkpoint(tmp_path / "hf"), rwkv_wkv.from_checkpoint(tmp_path / "hf")):
        assert isinstance(loaded, RWKV7) and loaded.config == model.config
        same_logits(model, loaded.eval())
        for k, v in model.state_dict().items():
            if not k.startswith("blocks.0.att.v"):  # block 0's unused value residual: not in fla's files
                assert torch.equal(v, loaded.state_dict()[k]), k
    # and back to RWKV-LM's format, loadable strictly
    RWKV7.from_checkpoint(tmp_path / "hf").save_rwkv_lm(tmp_path / "back.pth")
    same_logits(model, RWKV7.from_checkpoint(tmp_path / "back.pth").eval())


def test_generation_detection(tmp_path):
    random_model().save_rwkv_lm(tmp_path / "seven.pth")
    RWKV(RWKVConfig(vocab_size=20, n_layer=1, n_embd=16)).save_rwkv_lm(tmp_path / "four.pth")
    random_model().save_hf(tmp_path / "hf7")
    RWKV(RWKVConfig(vocab_size=20, n_layer=1, n_embd=16)).save_hf(tmp_path / "hf4")
    assert [generation_of_checkpoint(tmp_path / n) for n in ("seven.pth", "four.pth", "hf7", "hf4")] == [7, 4, 7, 4]
    assert isinstance(rwkv_wkv.from_checkpoint(tmp_path / "four.pth"), RWKV)
    assert isinstance(rwkv_wkv.from_checkpoint(tmp_path / "hf4"), RWKV)
    with pytest.raises(ValueError, match="an RWKV-7 checkpoint, not RWKV-4: load it with rwkv_wkv.from_checkpoint"):
        RWKV.from_checkpoint(tmp_path / "seven.pth")
    with pytest.raises(ValueError, match="an RWKV-4 checkpoint, not RWKV-7"):
        RWKV7.from_checkpoint(tmp_path / "four.pth")


def one_line_error(path, match):
    with pytest.raises(ValueError) as e:
        rwkv_wkv.from_checkpoint(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    assert match in msg, msg


def test_unusable_files_are_one_line_errors(tmp_path):
    model = random_model()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    bad = dict(sd)
    del bad["blocks.1.att.k_a"]
    torch.save(bad, tmp_path / "missing.pth")
    one_line_error(tmp_path / "missing.pth", "missing blocks.1.att.k_a")
    bad = dict(sd)
    bad["blocks.1.att.extra"] = torch.zeros(3)
    torch.save(bad, tmp_path / "extra.pth")
    one_line_error(tmp_path / "extra.pth", "unexpected blocks.1.att.extra")
    bad = dict(sd)
    bad["blocks.2.att.g2"] = torch.zeros(32, 64)
    torch.save(bad, tmp_path / "shape.pth")
    one_line_error(tmp_path / "shape.pth", "blocks.2.att.g2 is (32, 64) in the file but (32, 128)")
    bad = dict(sd)
    del bad["blocks.0.att.r_k"]
    bad["blocks.0.att.w0"] = sd["blocks.0.att.w0"]
    torch.save(bad, tmp_path / "nork.pth")
    one_line_error(tmp_path / "nork.pth", "no 2-D 'blocks.0.att.r_k'")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    one_line_error(tmp_path / "junk.pth", "not a readable checkpoint")
    with pytest.raises(FileNotFoundError):
        rwkv_wkv.from_checkpoint(tmp_path / "nothing.pth")


def test_unusable_hf_directories(tmp_path):
    model = random_model()
    model.save_hf(tmp_path / "hf")
    cfg_path = tmp_path / "hf" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["num_hidden_layers"] = 4
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError) as e:
        RWKV7.from_checkpoint(tmp_path / "hf")
    assert "4 layers" in str(e.value) and "\n" not in str(e.value)
    cfg["num_hidden_layers"], cfg["attn"] = 3, {"layers": [1], "num_heads": 2}
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="a hybrid model"):
        RWKV7.from_checkpoint(tmp_path / "hf")
    del cfg["attn"]
    cfg["model_type"] = "llama"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not an fla RWKV-7 config"):
        RWKV7.from_checkpoint(tmp_path / "hf")
    cfg["model_type"] = "rwkv7"
    cfg_path.write_text(json.dumps(cfg))
    (tmp_path / "hf" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        RWKV7.from_checkpoint(tmp_path / "hf")
