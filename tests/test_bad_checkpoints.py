"""Unusable checkpoints and bad CLI input: one clear error, never a traceback.

RWKV.from_checkpoint raises ValueError or FileNotFoundError naming the file and what is wrong,
writing nothing; python -m rwkv_wkv.generate prints one line on stderr and exits with 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from rwkv_wkv import RWKV, RWKVConfig
from rwkv_wkv.generate import main

safetensors = pytest.importorskip("safetensors")


def small_model(vocab=256, layers=2, seed=0):
    torch.manual_seed(seed)
    return RWKV(RWKVConfig(vocab_size=vocab, n_layer=layers, n_embd=16, ctx_len=32)).eval()


def hf_dir(tmp_path, name="hf"):
    d = tmp_path / name
    small_model().save_hf(d)
    return d


def edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))


# Each builder makes a bad checkpoint under tmp_path and returns (its path, the file a message
# must name). Table: name -> (builder, exception, message).
def truncated_safetensors(tmp_path):
    d = hf_dir(tmp_path)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return d, f


def text_as_safetensors(tmp_path):
    d = hf_dir(tmp_path)
    (d / "model.safetensors").write_text("this is not a safetensors file\n")
    return d, d / "model.safetensors"


def layers_disagree(tmp_path):
    d = hf_dir(tmp_path)
    edit_config(d, num_hidden_layers=3)
    return d, d


def hidden_disagrees(tmp_path):
    d = hf_dir(tmp_path)
    edit_config(d, hidden_size=32, attention_hidden_size=32, intermediate_size=128)
    return d, d


def config_not_json(tmp_path):
    d = hf_dir(tmp_path)
    (d / "config.json").write_text("{ not json")
    return d, d / "config.json"


def config_other_model(tmp_path):
    d = hf_dir(tmp_path)
    edit_config(d, model_type="gpt2")
    return d, d / "config.json"


def config_missing_key(tmp_path):
    d = hf_dir(tmp_path)
    edit_config(d, hidden_size=None)
    return d, d / "config.json"


def config_bad_value(tmp_path):
    d = hf_dir(tmp_path)
    edit_config(d, vocab_size="many")
    return d, d / "config.json"


def no_weights(tmp_path):
    d = hf_dir(tmp_path)
    os.remove(d / "model.safetensors")
    return d, d


def index_names_missing_shard(tmp_path):
    d = hf_dir(tmp_path)
    os.remove(d / "model.safetensors")
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"emb.weight": "model-00001-of-00002.safetensors"}})
    )
    return d, d / "model-00001-of-00002.safetensors"


def corrupt_bin(tmp_path):
    d = hf_dir(tmp_path)
    os.remove(d / "model.safetensors")
    (d / "pytorch_model.bin").write_bytes(b"\x00\x01garbage")
    return d, d / "pytorch_model.bin"


def dir_without_config(tmp_path):
    d = tmp_path / "empty_dir"
    d.mkdir()
    return d, d


def missing_path(tmp_path):
    return tmp_path / "nope.pth", tmp_path / "nope.pth"


def random_bytes_pth(tmp_path):
    f = tmp_path / "m.pth"
    f.write_bytes(os.urandom(300))
    return f, f


def empty_pth(tmp_path):
    f = tmp_path / "m.pth"
    f.write_bytes(b"")
    return f, f


def pth_missing_keys(tmp_path):
    sd = small_model().state_dict()
    del sd["blocks.1.att.key.weight"], sd["ln_out.weight"]
    f = tmp_path / "m.pth"
    torch.save(sd, f)
    return f, f


def pth_wrong_shape(tmp_path):
    sd = small_model().state_dict()
    sd["head.weight"] = torch.zeros(300, 16)
    f = tmp_path / "m.pth"
    torch.save(sd, f)
    return f, f


def pth_a_list(tmp_path):
    f = tmp_path / "m.pth"
    torch.save([torch.zeros(3)], f)
    return f, f


def pth_not_rwkv(tmp_path):
    f = tmp_path / "m.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, f)
    return f, f


def trainer_unknown_config_key(tmp_path):
    m = small_model()
    f = tmp_path / "ckpt.pt"
    torch.save({"model": m.state_dict(), "config": dict(m.config_dict(), n_head=8)}, f)
    return f, f


def trainer_layers_disagree(tmp_path):
    m = small_model()
    f = tmp_path / "ckpt.pt"
    torch.save({"model": m.state_dict(), "config": dict(m.config_dict(), n_layer=3)}, f)
    return f, f


CASES = {
    "truncated safetensors": (truncated_safetensors, ValueError, "not a readable safetensors file"),
    "text as safetensors": (text_as_safetensors, ValueError, "not a readable safetensors file"),
    "config layers != weights": (layers_disagree, ValueError, "config says 3 layers, but the weights hold 2"),
    "config hidden != weights": (hidden_disagrees, ValueError, "the weights do not fit the model its config describes"),
    "config not JSON": (config_not_json, ValueError, "not a readable JSON file"),
    "config of another model": (config_other_model, ValueError, "not a Hugging Face RWKV config"),
    "config without hidden_size": (config_missing_key, ValueError, "has no 'hidden_size'"),
    "config vocab_size a string": (config_bad_value, ValueError, "'vocab_size' must be a positive integer"),
    "directory without weights": (no_weights, ValueError, "no model.safetensors or pytorch_model.bin"),
    "index names a missing shard": (index_names_missing_shard, FileNotFoundError, "but not there"),
    "corrupt pytorch_model.bin": (corrupt_bin, ValueError, "not a readable PyTorch weight file"),
    "directory without config": (dir_without_config, ValueError, "no config.json"),
    "missing path": (missing_path, FileNotFoundError, "checkpoint not found"),
    "random bytes .pth": (random_bytes_pth, ValueError, "not a readable checkpoint"),
    "empty .pth": (empty_pth, ValueError, "not a readable checkpoint"),
    ".pth missing weights": (pth_missing_keys, ValueError, "missing blocks.1.att.key.weight, ln_out.weight"),
    ".pth head of another vocabulary": (pth_wrong_shape, ValueError, r"head.weight is \(300, 16\) in the file"),
    ".pth holding a list": (pth_a_list, ValueError, "expected a state dict or a trainer checkpoint, got list"),
    ".pth of another model": (pth_not_rwkv, ValueError, "not an RWKV-4 state dict"),
    "trainer config with an unknown key": (
        trainer_unknown_config_key,
        ValueError,
        "its config does not describe an RWKV-4 model",
    ),
    "trainer config layers != weights": (
        trainer_layers_disagree,
        ValueError,
        "config says 3 layers, but the weights hold 2",
    ),
}


def snapshot(root):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("name", list(CASES))
def test_from_checkpoint_raises_one_clear_error(name, tmp_path):
    build, exc, message = CASES[name]
    path, names = build(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(Exception, match=message) as info:
        RWKV.from_checkpoint(path)
    assert type(info.value) is exc, f"{type(info.value).__name__}: {info.value}"
    text = str(info.value)
    assert str(names) in text, f"the message does not name {names}: {text}"
    assert "\n" not in text, f"not one line: {text!r}"
    assert snapshot(tmp_path) == before, "something was written"


@pytest.mark.parametrize("name", list(CASES))
def test_cli_says_one_line_and_exits_2(name, tmp_path, capsys):
    build, _, message = CASES[name]
    path, _ = build(tmp_path)
    assert main([str(path), "--prompt", "hi", "--max-new-tokens", "2", "--tokenizer", "bytes"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.err


@pytest.fixture()
def good_pth(tmp_path):
    path = tmp_path / "model.pth"
    small_model().save_rwkv_lm(path)
    return str(path)


BAD_ARGS = {
    "negative temperature": (["--temperature", "-1"], "--temperature must be >= 0"),
    "temperature nan": (["--temperature", "nan"], "--temperature must be >= 0"),
    "temperature not a number": (["--temperature", "hot"], "argument --temperature: invalid float value"),
    "top-p zero": (["--top-p", "0"], r"--top-p must be in \(0, 1\]"),
    "top-p above one": (["--top-p", "1.5"], r"--top-p must be in \(0, 1\]"),
    "top-k zero": (["--top-k", "0"], "--top-k must be >= 1"),
    "no new tokens": (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    "tokens not a number": (["--max-new-tokens", "ten"], "invalid int value"),
    "unknown device": (["--device", "gpu"], "--device must be cpu or cuda"),
    "device tpu": (["--device", "xla"], "--device must be cpu or cuda"),
    "unknown dtype": (["--dtype", "fp8"], "argument --dtype: invalid choice"),
    "empty prompt": (["--prompt", ""], "--prompt is empty"),
    "tokenizer file missing": (["--tokenizer", "/nonexistent/tokenizer.json"], "is neither 'bytes', 'world'"),
    "unknown option": (["--beam-width", "4"], "unrecognized arguments"),
}


@pytest.mark.parametrize("name", list(BAD_ARGS))
def test_cli_bad_arguments(name, good_pth, capsys):
    extra, message = BAD_ARGS[name]
    argv = [good_pth, "--prompt", "hi", "--tokenizer", "bytes", *extra]
    assert main(argv) == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert out.out == "" and len(lines) == 1 and lines[0].startswith("error: "), out.err
    import re

    assert re.search(message, lines[0]), lines[0]


def test_cli_missing_prompt_is_one_line(good_pth, capsys):
    assert main([good_pth]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--prompt" in lines[0]


def test_cli_unreadable_tokenizer_json(good_pth, tmp_path, capsys):
    pytest.importorskip("tokenizers")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{}")
    assert main([good_pth, "--prompt", "hi", "--tokenizer", str(bad)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "not a readable tokenizer.json" in lines[0]


def model_preferring_high_ids(vocab):
    """A model whose logits favour ids >= 256 by far: unmasked, it would sample them."""
    model = small_model(vocab=vocab)
    with torch.no_grad():
        model.head.weight.zero_()
        model.ln_out.weight.zero_()
        model.ln_out.bias.zero_()
        model.ln_out.bias[0] = 1.0
        model.head.weight[256:, 0] = 20.0
    return model


def test_generate_never_samples_beyond_vocab_limit():
    model = model_preferring_high_ids(300)
    prompt = torch.tensor([1, 2, 3])
    free = model.generate(prompt, 50, temperature=1.0, seed=0)
    assert (free[3:] >= 256).all()  # the test would catch an unmasked sampler
    for temperature in (0.0, 1.0, 5.0):
        out = model.generate(prompt, 50, temperature=temperature, top_k=20, top_p=1.0, seed=0, vocab_limit=256)
        assert (out < 256).all()
    with pytest.raises(ValueError, match="vocab_limit must be in"):
        model.generate(prompt, 1, vocab_limit=301)


def test_cli_bytes_tokenizer_on_a_larger_vocabulary(tmp_path, capsys):
    """The crash of --tokenizer bytes on a vocabulary > 256: ids it cannot decode are masked."""
    path = tmp_path / "big.pth"
    model_preferring_high_ids(300).save_rwkv_lm(path)
    assert main([str(path), "--prompt", "hi", "--tokenizer", "bytes", "--max-new-tokens", "40", "--seed", "0"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("hi") and "ids >= 256 are never sampled" in out.err
    assert "generation: 40 tokens" in out.err


def test_cli_process_truncated_safetensors_no_traceback(tmp_path):
    """End to end in a real process, the issue's first example."""
    path, _ = truncated_safetensors(tmp_path)
    r = subprocess.run([sys.executable, "-m", "rwkv_wkv.generate", str(path), "--prompt", "hi"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
