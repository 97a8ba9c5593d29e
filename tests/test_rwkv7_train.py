"""RWKV-7 in the one trainer (from scratch, exact resume, gradient accumulation, FSDP2,
fine-tuning; activation checkpointing: tests/test_finetune.py) and state tuning; the World
tokenizer; the generate CLI on RWKV-7 (greedy = model.generate, a tuned state, batched prompts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import rwkv_wkv
from rwkv_wkv import RWKV7, RWKV7Config
from rwkv_wkv.errors import UsageError
from rwkv_wkv.generate import main as generate_main
from rwkv_wkv.tokenizer import WorldTokenizer, find_world_vocab, get_tokenizer
from rwkv_wkv.train import train

TINY7 = ["--generation", "7", "--n-layer", "2", "--n-embd", "32", "--head-size", "16", "--ctx-len", "32",
         "--batch-size", "4", "--lr", "3e-3", "--lr-final", "1e-3", "--warmup-steps", "2", "--eval-tokens", "2048",
         "--test-tokens", "2048", "--sample-len", "8", "--device", "cpu", "--seed", "5"]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = [b"alpha ", b"beta ", b"gamma ", b"delta ", b"wkv ", b"rwkv ", b"state "]
    path = tmp_path_factory.mktemp("corpus7") / "corpus.txt"
    path.write_bytes(b"".join(words[i] for i in rng.integers(0, len(words), 12000)))
    return path


def run_args(corpus_file, out, steps, *extra):
    return ["--data", str(corpus_file), "--out-dir", str(out), "--max-steps", str(steps), "--ckpt-interval", "2",
            "--eval-interval", "2", *TINY7, *extra]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, corpus_file):
    out = tmp_path_factory.mktemp("scratch7") / "run"
    return out, train(run_args(corpus_file, out, 12))


def test_rwkv7_from_scratch_learns(scratch):
    out, result = scratch
    vals = [r["val_bpb"] for r in result["records"] if "val_bpb" in r]
    assert vals[-1] < vals[0] - 2.0, vals
    model = rwkv_wkv.from_checkpoint(out / "model.pth")
    assert isinstance(model, RWKV7) and model.config.head_size == 16 and model.config.n_layer == 2
    # the trainer's checkpoint loads too, as the same model; as RWKV-4 it is refused in one line
    from_ckpt = rwkv_wkv.from_checkpoint(out / "ckpt")
    with pytest.raises(ValueError, match="an RWKV-7 checkpoint, not RWKV-4: load it with rwkv_wkv.from_checkpoint"):
        rwkv_wkv.RWKV.from_checkpoint(out / "ckpt")
    assert isinstance(from_ckpt, RWKV7)
    for k, v in model.state_dict().items():
        assert torch.equal(v, from_ckpt.state_dict()[k]), k
    assert (out / "sample.txt").is_file() and (out / "loss.png").is_file()


def test_rwkv7_resume_is_bit_identical(tmp_path, corpus_file):
    full = train(run_args(corpus_file, tmp_path / "full", 6))
    train(run_args(corpus_file, tmp_path / "split", 6, "--stop-after", "3"))
    resumed = train(run_args(corpus_file, tmp_path / "split", 6, "--resume"))
    assert [r.get("train_loss") for r in full["records"]] == [r.get("train_loss") for r in resumed["records"]]
    for (n, p), q in zip(full["model"].state_dict().items(), resumed["model"].state_dict().values()):
        assert torch.equal(p, q), n


def test_rwkv7_grad_accum_equals_bigger_batch(tmp_path, corpus_file):
    one = train(run_args(corpus_file, tmp_path / "one", 4))
    acc = train(run_args(corpus_file, tmp_path / "acc", 4, "--batch-size", "2", "--grad-accum", "2"))
    la = [r["train_loss"] for r in one["records"] if "train_loss" in r]
    lb = [r["train_loss"] for r in acc["records"] if "train_loss" in r]
    assert np.allclose(la, lb, rtol=1e-5, atol=0), (la, lb)


def test_rwkv7_fsdp_two_ranks_equal_one_rank(tmp_path, corpus_file):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    common = [*run_args(corpus_file, tmp_path / "x", 4)[4:], "--max-steps", "4", "--sample-len", "0"]
    outs = {}
    for name, ranks, batch in (("one", 1, "4"), ("fsdp", 2, "2")):
        out = tmp_path / name
        launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                        f"--nproc_per_node={ranks}"]
        cmd = [*launcher, "-m", "rwkv_wkv.train", *common, "--out-dir", str(out), "--batch-size", batch]
        cmd += ["--fsdp"] if ranks > 1 else []
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        outs[name] = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    la = [r["train_loss"] for r in outs["one"] if "train_loss" in r]
    lb = [r["train_loss"] for r in outs["fsdp"] if "train_loss" in r]
    assert np.allclose(la, lb, rtol=1e-5, atol=0), (la, lb)
    a = torch.load(tmp_path / "one" / "model.pth")
    b = torch.load(tmp_path / "fsdp" / "model.pth")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 2e-5


def test_fine_tune_an_rwkv7_checkpoint(scratch, tmp_path, corpus_file):
    out, _ = scratch
    tuned = train(["--init-from", str(out / "model.pth"), "--data", str(corpus_file), "--out-dir",
                   str(tmp_path / "ft"), "--max-steps", "4", "--eval-interval", "2", "--ckpt-interval", "2",
                   "--eval-tokens", "2048", "--test-tokens", "2048", "--sample-len", "0", "--device", "cpu",
                   "--save-hf"])
    assert isinstance(tuned["model"], RWKV7)
    assert isinstance(rwkv_wkv.from_checkpoint(tmp_path / "ft" / "hf"), RWKV7)


# ---- state tuning ------------------------------------------------------------------------------
def state_tune_args(scratch_out, corpus_file, out, steps, *extra):
    return ["--init-from", str(scratch_out / "model.pth"), "--state-tune", "--data", str(corpus_file), "--out-dir",
            str(out), "--max-steps", str(steps), "--lr", "2e-2", "--lr-final", "1e-2", "--warmup-steps", "0",
            "--eval-interval", "3", "--ckpt-interval", "3", "--eval-tokens", "4096", "--test-tokens", "2048",
            "--sample-len", "0", "--ctx-len", "32", "--device", "cpu", "--seed", "9", *extra]


def test_state_tuning_changes_only_the_state(scratch, tmp_path, corpus_file):
    out, _ = scratch
    result = train(state_tune_args(out, corpus_file, tmp_path / "st", 6))
    assert not (tmp_path / "st" / "model.pth").exists() and (tmp_path / "st" / "state.pth").is_file()
    base = rwkv_wkv.from_checkpoint(out / "model.pth")
    final = result["model"]
    for k, v in base.state_dict().items():
        assert torch.equal(v, final.state_dict()[k]), k
    assert final.initial_state.abs().max() > 0
    vals = [r["val_bpb"] for r in result["records"] if "val_bpb" in r]
    assert vals[-1] < vals[0], vals  # the same validation tokens, scored from the tuned state
    # generation starts from it: the state file in a fresh copy of the model gives the tuned logits
    fresh = rwkv_wkv.from_checkpoint(out / "model.pth").load_tuned_state(tmp_path / "st" / "state.pth")
    idx = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(fresh(idx)[0], final.eval()(idx)[0])
        assert not torch.allclose(base(idx)[0], fresh(idx)[0])


def test_state_tuning_resume_is_bit_identical(scratch, tmp_path, corpus_file):
    out, _ = scratch
    full = train(state_tune_args(out, corpus_file, tmp_path / "full", 6))
    train(state_tune_args(out, corpus_file, tmp_path / "split", 6, "--stop-after", "3"))
    resumed = train(state_tune_args(out, corpus_file, tmp_path / "split", 6, "--resume"))
    assert [r.get("train_loss") for r in full["records"]] == [r.get("train_loss") for r in resumed["records"]]
    assert torch.equal(full["model"].initial_state, resumed["model"].initial_state)


@pytest.mark.parametrize("extra,message", [
    (["--state-tune"], "--state-tune tunes the initial state of a trained model: give it with --init-from"),
    (["--head-size", "16"], "--head-size is for RWKV-7"),
    (["--state-tune", "--init-from", "x.pth", "--save-hf"], "--save-hf writes the model, which --state-tune"),
    (["--generation", "7", "--n-embd", "40", "--head-size", "16"], "must be a multiple of --head-size 16"),
])
def test_bad_settings(tmp_path, corpus_file, extra, message):
    with pytest.raises(UsageError, match=message):
        train(["--data", str(corpus_file), "--out-dir", str(tmp_path / "x"), "--max-steps", "1", *extra])
    assert not (tmp_path / "x").exists()


def test_state_tuning_an_rwkv4_model_is_refused(tmp_path, corpus_file):
    rwkv_wkv.RWKV(rwkv_wkv.RWKVConfig(vocab_size=256, n_layer=1, n_embd=16)).save_rwkv_lm(tmp_path / "four.pth")
    with pytest.raises(UsageError, match="is an RWKV-4 model; state tuning is for RWKV-7"):
        train(["--init-from", str(tmp_path / "four.pth"), "--state-tune", "--data", str(corpus_file), "--out-dir",
               str(tmp_path / "x")])
    with pytest.raises(UsageError, match="--generation is for a new model"):
        train(["--init-from", str(tmp_path / "four.pth"), "--generation", "7", "--out-dir", str(tmp_path / "x")])


# ---- the World tokenizer ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world():
    path = find_world_vocab()
    if path is None:
        pytest.skip("no rwkv_vocab_v20230424.txt (ChatRWKV's rwkv package ships one: pip install rwkv)")
    return get_tokenizer(path)


def test_world_tokenizer_equals_chatrwkvs(world):
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    ref = TRIE_TOKENIZER(str(world.path))
    import pydoc_data.topics

    text = "".join(list(pydoc_data.topics.topics.values())[:40]) + " 你好，世界 🌍 naïve \x00\x7f\n\n"
    ids = world.encode(text)
    assert ids == ref.encode(text)
    assert world.decode(ids) == text and world.vocab_size == 65530
    [(arr, sizes)] = world.encode_batch([text])
    assert list(arr) == ids and int(sizes.sum()) == len(text.encode("utf-8"))
    stream = world.stream_decoder()
    assert "".join(stream([i]) for i in ids) == text  # multi-byte characters split over tokens included


def test_world_tokenizer_by_name_and_default_for_world_models(world, tmp_path):
    assert isinstance(get_tokenizer("world"), WorldTokenizer)
    from rwkv_wkv.tokenizer import tokenizer_for

    assert isinstance(tokenizer_for(None, str(tmp_path / "m.pth"), 65536), WorldTokenizer)


def test_bad_world_vocabularies(tmp_path):
    bad = tmp_path / "rwkv_vocab_bad.txt"
    bad.write_text("1 '\\x00' 1\n2 'ab' 3\n")
    with pytest.raises(UsageError, match=r":2: not a World vocabulary line"):
        WorldTokenizer(bad)
    bad.write_text("1 '\\x00' 1\n")
    with pytest.raises(UsageError, match="byte 1 has no token of its own"):
        WorldTokenizer(bad)
    bad.write_text("1 __import__('os') 1\n")  # parsed as a literal, never evaluated
    with pytest.raises(UsageError, match="not a World vocabulary line"):
        WorldTokenizer(bad)


# ---- the generate CLI on RWKV-7 --------------------------------------------------------------
@pytest.fixture(scope="module")
def model7(tmp_path_factory):
    torch.manual_seed(0)
    model = RWKV7(RWKV7Config(vocab_size=256, n_layer=2, n_embd=32, head_size=16)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    path = tmp_path_factory.mktemp("gen7") / "model.pth"
    model.save_rwkv_lm(path)
    return path, model


def streamed(ids):
    """The text the CLI streams for byte ids: an incomplete last UTF-8 character is held back."""
    import codecs

    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(bytes(ids.tolist()))


def test_generate_greedy_equals_model_generate(model7, capsys):
    path, model = model7
    assert generate_main([str(path), "--prompt", "hello", "--temperature", "0", "--max-new-tokens", "12",
                          "--tokenizer", "bytes", "--device", "cpu"]) == 0
    out = capsys.readouterr()
    want = model.generate(torch.tensor(list(b"hello")), 12, temperature=0)
    assert out.out == streamed(want) + "\n"
    assert "RWKV-7 L2-d32" in out.err


def test_generate_batched_prompts_equal_single_runs(model7, capsys):
    path, model = model7
    prompts = ["hello", "a much longer prompt"]
    assert generate_main([str(path), *sum((["--prompt", p] for p in prompts), []), "--temperature", "0",
                          "--max-new-tokens", "10", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for i, p in enumerate(prompts, 1):
        want = model.generate(torch.tensor(list(p.encode())), 10, temperature=0)
        assert f"--- {i} ---\n{bytes(want.tolist()).decode('utf-8', errors='replace')}\n" in out


def test_generate_with_a_tuned_state(model7, tmp_path, capsys):
    path, model = model7
    tuned = RWKV7(model.config).eval()
    tuned.load_state_dict(model.state_dict())
    tuned.enable_state_tuning()
    with torch.no_grad():
        tuned.initial_state.normal_()
    tuned.save_tuned_state(tmp_path / "state.pth")
    assert generate_main([str(path), "--prompt", "hi", "--temperature", "0", "--max-new-tokens", "12",
                          "--state", str(tmp_path / "state.pth"), "--device", "cpu"]) == 0
    want = tuned.generate(torch.tensor(list(b"hi")), 12, temperature=0)
    assert capsys.readouterr().out == streamed(want) + "\n"
    assert generate_main([str(path), "--prompt", "hi", "--state", str(tmp_path / "nope.pth")]) == 2
    assert "error: --state: state file not found" in capsys.readouterr().err


def test_state_tune_a_world_model_on_token_data(world, tmp_path):
    """The advertised use: a World-vocabulary RWKV-7, chat documents in a .jsonl, the World
    tokenizer (documents tokenized into the cache), state tuning; generation reads the state."""
    torch.manual_seed(0)
    model = RWKV7(RWKV7Config(vocab_size=65536, n_layer=1, n_embd=32, head_size=16))
    with torch.no_grad():  # as a trained model (a new one's zero output projection hides the state)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_rwkv_lm(tmp_path / "world.pth")
    rng = np.random.default_rng(0)
    words = ["User:", "Assistant:", "hello", "state", "tuning", "你好", "RWKV", "goose"]
    docs = [{"text": " ".join(words[i] for i in rng.integers(0, len(words), 30))} for _ in range(300)]
    (tmp_path / "chats.jsonl").write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in docs))
    result = train(["--init-from", str(tmp_path / "world.pth"), "--tokenizer", str(world.path), "--data",
                    str(tmp_path / "chats.jsonl"), "--cache-dir", str(tmp_path / "cache"), "--state-tune",
                    "--out-dir", str(tmp_path / "tune"), "--max-steps", "4", "--lr", "1e-2", "--ctx-len", "16",
                    "--batch-size", "2", "--eval-interval", "2", "--ckpt-interval", "2", "--eval-tokens", "256",
                    "--test-tokens", "256", "--sample-len", "4", "--device", "cpu"])
    assert (tmp_path / "tune" / "state.pth").is_file() and result["model"].initial_state.abs().max() > 0
    assert list((tmp_path / "cache").glob("*.tokens"))  # tokenized once, into the cache
    assert generate_main([str(tmp_path / "world.pth"), "--tokenizer", "world", "--state",
                          str(tmp_path / "tune" / "state.pth"), "--prompt", "User: hello", "--max-new-tokens", "3",
                          "--device", "cpu", "--seed", "0"]) == 0


def test_rwkv4_trainer_checkpoint_is_refused_by_rwkv7(tmp_path, corpus_file):
    args = run_args(corpus_file, tmp_path / "four", 2)
    args[args.index("--generation") + 1] = "4"
    args.remove("--head-size")
    args.remove("16")
    train(args)
    assert isinstance(rwkv_wkv.from_checkpoint(tmp_path / "four" / "ckpt"), rwkv_wkv.RWKV)
    with pytest.raises(ValueError, match="an RWKV-4 checkpoint, not RWKV-7"):
        RWKV7.from_checkpoint(tmp_path / "four" / "ckpt")
