"""python -m rwkv_wkv.generate: loads any checkpoint, tokenizes, streams, reports tokens/s."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import pytest
import torch
from rwkv_wkv.model import decode_bytes, encode_bytes

from rwkv_wkv import RWKV, RWKVConfig
from rwkv_wkv.generate import main


def _byte_model(tmp_path, vocab=256):
    torch.manual_seed(0)
    model = RWKV(RWKVConfig(vocab_size=vocab, n_layer=2, n_embd=32, ctx_len=64))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    path = tmp_path / "model.pth"
    model.save_rwkv_lm(path)
    return model.eval(), str(path)


def test_greedy_output_equals_model_generate(tmp_path, capsys):
    model, path = _byte_model(tmp_path)
    assert (
        main([path, "--prompt", "hello", "--max-new-tokens", "20", "--temperature", "0", "--tokenizer", "bytes"]) == 0
    )
    out = capsys.readouterr()
    expect = decode_bytes(model.generate(torch.tensor(encode_bytes("hello")), 20, temperature=0).tolist())
    assert out.out == expect + "\n"
    assert "prompt: 5 tokens" in out.err and "generation: 20 tokens" in out.err and "tokens/s" in out.err


def test_streams_while_generating(tmp_path):
    """Text reaches the pipe while the generator is still running (read incrementally)."""
    _, path = _byte_model(tmp_path)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rwkv_wkv.generate",
            path,
            "--prompt",
            "ab",
            "--tokenizer",
            "bytes",
            "--max-new-tokens",
            "100000",
            "--seed",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        got = b""
        deadline = time.time() + 120
        while len(got) < 64 and time.time() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                got += os.read(proc.stdout.fileno(), 4096)
            assert proc.poll() is None, proc.stderr.read().decode()
        assert got.startswith(b"ab") and len(got) >= 64
        assert proc.poll() is None  # still generating: what we read was streamed, not dumped at the end
    finally:
        proc.kill()
        proc.wait()


def test_hf_directory_brings_its_tokenizer(tmp_path, capsys):
    tokenizers = pytest.importorskip("tokenizers")
    pytest.importorskip("safetensors")
    from tokenizers import models, pre_tokenizers

    words = ["the", "cat", "sat", "on", "mat", "a", "dog", "[UNK]"]
    tok = tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    model, _ = _byte_model(tmp_path, vocab=len(words) + 2)
    model.save_hf(tmp_path / "hf")
    tok.save(str(tmp_path / "hf" / "tokenizer.json"))
    assert main([str(tmp_path / "hf"), "--prompt", "the cat", "--max-new-tokens", "5", "--temperature", "0"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("the cat") and "prompt: 2 tokens" in out.err
    # the same tokenizer is refused by a model whose vocabulary is smaller
    small, small_path = _byte_model(tmp_path, vocab=4)
    assert main([small_path, "--prompt", "the", "--tokenizer", str(tmp_path / "hf" / "tokenizer.json")]) == 2
    assert "do not belong together" in capsys.readouterr().err


@pytest.mark.parametrize("case, message", [
    ("missing", "checkpoint not found"),
    ("junk", "not a readable checkpoint"),
    ("empty_prompt", "--prompt is empty"),
    ("no_tokenizer", "give its tokenizer"),
    ("bad_tokenizer", "is neither 'bytes', 'world', a World vocabulary"),
])
def test_clear_errors(tmp_path, capsys, case, message):
    _, path = _byte_model(tmp_path)
    (tmp_path / "big").mkdir()
    _, big = _byte_model(tmp_path / "big", vocab=300)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage")
    args = {
        "missing": [str(tmp_path / "nope.pth"), "--prompt", "x"],
        "junk": [str(junk), "--prompt", "x"],
        "empty_prompt": [path, "--prompt", ""],
        "no_tokenizer": [big, "--prompt", "x"],
        "bad_tokenizer": [path, "--prompt", "x", "--tokenizer", "gpt9"],
    }[case]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_16bit_weights(tmp_path, capsys, dtype):
    """--dtype bf16/fp16 casts the weights; time_decay / time_first reach the op as float32."""
    model, path = _byte_model(tmp_path)
    assert main([path, "--prompt", "hello", "--max-new-tokens", "8", "--temperature", "0", "--dtype", dtype]) == 0
    out = capsys.readouterr().out
    assert out.startswith("hello") and len(out) > len("hello\n")


def test_streaming_decoder_holds_back_partial_characters():
    """A byte-level BPE splits multi-byte characters across tokens: the stream never shows a
    half character, and what it shows adds up to the full decode."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from rwkv_wkv.tokenizer import JsonTokenizer

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = "héllo wörld ✓ naïve café 日本語 " * 20
    tok.train_from_iterator(
        [text], trainers.BpeTrainer(vocab_size=280, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    wrapped = JsonTokenizer.__new__(JsonTokenizer)
    wrapped.tok, wrapped.vocab_size = tok, tok.get_vocab_size()
    ids = wrapped.encode("日本語 ✓ wörld")
    feed = wrapped.stream_decoder()
    pieces = [feed([i]) for i in ids]
    assert "".join(pieces) == tok.decode(ids) == "日本語 ✓ wörld"
    assert not any("\ufffd" in p for p in pieces)
    assert "" in pieces  # some token ended inside a character and was held back
