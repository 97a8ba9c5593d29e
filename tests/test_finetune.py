"""Fine-tuning and scaling with the trainer (python -m rwkv_wkv.train) and token data
(rwkv_wkv/tokens.py), on the CPU with gloo:
FSDP2 over 2 ranks = 1 rank with the same global batch, gradient accumulation = a bigger batch,
activation checkpointing = the same gradients, sharded memory, exact kill-and-resume, a real
fine-tune of a Hugging Face checkpoint with a BPE tokenizer, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rwkv_wkv import RWKV, RWKV7, RWKV7Config, RWKVConfig
from rwkv_wkv.data import DataError
from rwkv_wkv.tokens import load_token_corpus

ROOT = Path(__file__).resolve().parents[1]
TRAINER = ["-m", "rwkv_wkv.train"]
TINY = ["--preset", "finetune", "--n-layer", "2", "--n-embd", "32", "--ctx-len", "32", "--lr", "3e-3",
        "--lr-final", "1e-3", "--warmup-steps", "2", "--max-steps", "6", "--eval-interval", "3",
        "--ckpt-interval", "3", "--eval-tokens", "2048", "--device", "cpu", "--seed", "3"]


def run(args, ranks=1, check=True, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if ranks == 1:
        cmd = [sys.executable, *TRAINER, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               *TRAINER, *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def log(out):
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def weights(out):
    return torch.load(Path(out) / "model.pth", weights_only=True)


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "wkv", "rwkv", "state", "token", "über", "naïve"]
    lines = [" ".join(words[i] for i in rng.integers(0, len(words), 12)) + "." for _ in range(2500)]
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, text_file):
    """1 rank with batch 4; FSDP x2 with batch 2 each; FSDP x2 killed after step 3 and resumed."""
    base = tmp_path_factory.mktemp("runs")
    cache = str(base / "cache")
    common = ["--data", str(text_file), "--cache-dir", cache, *TINY]
    one, fsdp, resumed = base / "one", base / "fsdp", base / "resumed"
    run([*common, "--out-dir", str(one), "--batch-size", "4"])
    run([*common, "--out-dir", str(fsdp), "--batch-size", "2", "--fsdp"], ranks=2)
    run([*common, "--out-dir", str(resumed), "--batch-size", "2", "--fsdp", "--stop-after", "3"], ranks=2)
    run([*common, "--out-dir", str(resumed), "--batch-size", "2", "--fsdp", "--resume"], ranks=2)
    return {"one": one, "fsdp": fsdp, "resumed": resumed, "common": common}


def test_fsdp_two_ranks_equal_one_rank(runs):
    """Same global batch: the same losses and final weights up to float32 summation order (the
    gradient is reduced over ranks in another order than one process sums it: ~1e-7 relative per
    step; 6 Adam steps at lr 3e-3 move weights by ~1e-2, so differences stay near 1e-6)."""
    a, b = log(runs["one"]), log(runs["fsdp"])
    la = [r["train_loss"] for r in a if "train_loss" in r]
    lb = [r["train_loss"] for r in b if "train_loss" in r]
    assert len(la) == len(lb) == 6
    assert np.allclose(la, lb, rtol=1e-5, atol=0), (la, lb)
    assert max_diff(weights(runs["one"]), weights(runs["fsdp"])) < 2e-5
    assert la[-1] < la[0]  # it learns


def test_fsdp_halves_parameter_and_optimizer_memory(runs):
    one = log(runs["one"])[1]["memory_bytes"]
    fsdp = log(runs["fsdp"])[1]["memory_bytes"]
    for key in ("params", "grads", "optimizer"):
        assert 0.45 <= fsdp[key] / one[key] <= 0.55, (key, fsdp[key], one[key])


def test_fsdp_kill_and_resume_equals_uninterrupted(runs):
    assert max_diff(weights(runs["fsdp"]), weights(runs["resumed"])) == 0
    assert [r.get("train_loss") for r in log(runs["fsdp"])] == [r.get("train_loss") for r in log(runs["resumed"])]


def test_grad_accum_equals_bigger_batch(runs, tmp_path):
    out = tmp_path / "accum"
    run([*runs["common"], "--out-dir", str(out), "--batch-size", "2", "--grad-accum", "2"])
    la = [r["train_loss"] for r in log(runs["one"]) if "train_loss" in r]
    lb = [r["train_loss"] for r in log(out) if "train_loss" in r]
    assert np.allclose(la, lb, rtol=1e-5, atol=0), (la, lb)
    assert max_diff(weights(runs["one"]), weights(out)) < 2e-5


@pytest.mark.parametrize("generation", [4, 7])
def test_grad_checkpoint_gives_the_same_gradients(generation):
    torch.manual_seed(0)
    if generation == 4:
        model = RWKV(RWKVConfig(vocab_size=64, n_layer=3, n_embd=32, ctx_len=16)).train()
    else:  # RWKV-7's init zeroes more (the output projections): perturb it so every gradient is non-trivial
        model = RWKV7(RWKV7Config(vocab_size=64, n_layer=3, n_embd=32, head_size=16, ctx_len=16)).train()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    idx = torch.randint(0, 64, (2, 16))
    grads = []
    for recompute in (False, True):
        model.grad_checkpoint = recompute
        model.zero_grad()
        _, loss = model(idx, idx)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    rtol, atol = (1e-6, 1e-9) if generation == 4 else (1e-5, 1e-8)  # RWKV-7: larger, perturbed weights
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], rtol=rtol, atol=atol), n


def test_grad_checkpoint_run_matches(runs, tmp_path):
    out = tmp_path / "ac"
    run([*runs["common"], "--out-dir", str(out), "--batch-size", "4", "--grad-checkpoint"])
    assert max_diff(weights(runs["one"]), weights(out)) < 1e-6


# ---- token data ----------------------------------------------------------------------------------
def test_token_cache_and_bytes(tmp_path, text_file):
    c1 = load_token_corpus(text_file, "bytes", tmp_path / "cache", progress=False)
    total = sum(len(s) for s in (c1.train, c1.val, c1.test))
    raw = text_file.read_bytes()
    assert total == len(raw) + 1  # one token per byte, plus the document separator
    assert sum(s.bytes_of(0, len(s)) for s in (c1.train, c1.val, c1.test)) == len(raw)
    assert c1.train.tokens.dtype == np.uint16
    files = sorted(os.listdir(tmp_path / "cache"))
    c2 = load_token_corpus(text_file, "bytes", tmp_path / "cache", progress=False)  # from the cache
    assert sorted(os.listdir(tmp_path / "cache")) == files and np.array_equal(c1.train.tokens, c2.train.tokens)


def bpe_tokenizer(path, text_file, vocab=300):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(text_file)], trainer)
    tok.save(str(path))
    return tok


def test_bpe_tokens_cover_every_byte(tmp_path, text_file):
    bpe_tokenizer(tmp_path / "tokenizer.json", text_file)
    c = load_token_corpus(text_file, str(tmp_path / "tokenizer.json"), tmp_path / "cache", progress=False)
    assert sum(s.bytes_of(0, len(s)) for s in (c.train, c.val, c.test)) == len(text_file.read_bytes())
    assert sum(len(s) for s in (c.train, c.val, c.test)) < len(text_file.read_bytes()) / 2  # it merges


def test_jsonl_and_directory_documents(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("first document " * 10)
    (tmp_path / "docs" / "b.txt").write_text("second document " * 10)
    (tmp_path / "docs.jsonl").write_text(
        "\n".join(json.dumps({"text": t}) for t in ("first document " * 10, "second document " * 10))
    )
    a = load_token_corpus(tmp_path / "docs", "bytes", tmp_path / "c1", progress=False)
    b = load_token_corpus(tmp_path / "docs.jsonl", "bytes", tmp_path / "c2", progress=False)
    ta = np.concatenate([a.train.tokens, a.val.tokens, a.test.tokens])
    tb = np.concatenate([b.train.tokens, b.val.tokens, b.test.tokens])
    assert np.array_equal(ta, tb) and (ta == 0).sum() == 2  # two documents, two separators


def test_finetune_hf_checkpoint_with_bpe(tmp_path, text_file):
    """A random HF checkpoint fine-tuned on text with its own BPE tokenizer.json: validation bits
    per byte go down; the exported HF directory loads in transformers with our logits."""
    transformers = pytest.importorskip("transformers")
    bpe_tokenizer(tmp_path / "tokenizer.json", text_file)
    torch.manual_seed(0)
    RWKV(RWKVConfig(vocab_size=320, n_layer=2, n_embd=32, ctx_len=64)).save_hf(tmp_path / "base")
    os.replace(tmp_path / "tokenizer.json", tmp_path / "base" / "tokenizer.json")
    out = tmp_path / "out"
    r = run(["--init-from", str(tmp_path / "base"), "--data", str(text_file), "--cache-dir", str(tmp_path / "cache"),
             "--out-dir", str(out), "--ctx-len", "32", "--batch-size", "8", "--lr", "3e-3", "--lr-final", "1e-3",
             "--warmup-steps", "2", "--max-steps", "30", "--eval-interval", "30", "--eval-tokens", "4096",
             "--device", "cpu", "--save-hf"])
    vals = [rec["val_bpb"] for rec in log(out) if "val_bpb" in rec]
    assert vals[-1] < vals[0] - 0.5, vals
    assert "tokenizer.json" in r.stdout and (out / "hf" / "tokenizer.json").exists()
    ours = RWKV.from_checkpoint(out / "hf").eval()
    theirs = transformers.RwkvForCausalLM.from_pretrained(out / "hf").eval()
    ids = torch.randint(0, 320, (2, 20))
    with torch.no_grad():
        a, _ = ours(ids)
        b = theirs(ids).logits
    assert ((a - b).abs().max() / b.abs().max()).item() < 1e-4


# ---- bad input -----------------------------------------------------------------------------------
def bad(tmp_path, args, message, ranks=1):
    out = tmp_path / "out"
    r = run([*args, "--out-dir", str(out), "--cache-dir", str(tmp_path / "cache"), *TINY], ranks=ranks, check=False)
    assert r.returncode != 0
    # the cause, said once (by the rank that hit it, or rank 0), whatever order the ranks end in
    err = [line for line in r.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and message in err[0], r.stderr[-2000:]
    # (under torchrun the launcher itself reports a failed worker with its own traceback; ours
    # must not appear in it)
    assert 'train.py", line' not in r.stderr and "rwkv_wkv" not in r.stderr.split("error: ")[0], r.stderr[-2000:]
    if ranks == 1:
        assert "Traceback" not in r.stderr, r.stderr[-2000:]
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists(), "something was written"
    cache = tmp_path / "cache"
    assert not cache.exists() or not [f for f in os.listdir(cache) if f.endswith(".part")], "a half-written cache"


def test_vocabulary_that_does_not_fit(tmp_path, text_file):
    torch.manual_seed(0)
    RWKV(RWKVConfig(vocab_size=100, n_layer=2, n_embd=32, ctx_len=32)).save_rwkv_lm(tmp_path / "small.pth")
    bad(tmp_path, ["--init-from", str(tmp_path / "small.pth"), "--data", str(text_file), "--tokenizer", "bytes"],
        "has 256 tokens but the model only 100")


def test_fsdp_without_torchrun(tmp_path, text_file):
    bad(tmp_path, ["--data", str(text_file), "--fsdp"], "run it under torchrun")


def test_empty_data_file(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    bad(tmp_path, ["--data", str(tmp_path / "empty.txt")], "empty.txt is empty")


def test_empty_documents(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    bad(tmp_path, ["--data", str(tmp_path / "empty.jsonl")], "the data is empty")


def test_missing_data_file(tmp_path):
    bad(tmp_path, ["--data", str(tmp_path / "nope.txt")], "does not exist")


def test_unreadable_jsonl(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\nnot json\n')
    bad(tmp_path, ["--data", str(tmp_path / "bad.jsonl")], 'bad.jsonl:2: not a JSON object with a "text" field')


def test_unusable_checkpoint(tmp_path, text_file):
    (tmp_path / "junk.pth").write_bytes(b"junk")
    bad(tmp_path, ["--init-from", str(tmp_path / "junk.pth"), "--data", str(text_file)], "not a readable checkpoint")


def test_bad_data_under_torchrun_stops_every_rank(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    bad(tmp_path, ["--data", str(tmp_path / "empty.txt"), "--fsdp"], "empty.txt is empty", ranks=2)


def test_data_errors_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="holds no .txt files"):
        (tmp_path / "d").mkdir()
        load_token_corpus(tmp_path / "d", "bytes", tmp_path / "cache", progress=False)
