"""The byte data pipeline and the trainer (rwkv_wkv.train, as examples/train_enwik8.py runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from rwkv_wkv import RWKV, checkpoint
from rwkv_wkv import data as D
from rwkv_wkv.errors import UsageError
from rwkv_wkv.train import train

ROOT = Path(__file__).resolve().parents[1]
TRAINER = ROOT / "examples" / "train_enwik8.py"


TINY = ["--n-layer", "2", "--n-embd", "32", "--ctx-len", "32", "--batch-size", "4", "--lr", "3e-3",
        "--lr-final", "1e-3", "--warmup-steps", "2", "--eval-bytes", "2048", "--test-bytes", "2048",
        "--sample-len", "16", "--device", "cpu", "--seed", "7"]


def short_run(corpus_file, out, steps):
    """A TINY run of `steps` steps, validating and checkpointing every 2."""
    return ["--data", str(corpus_file), "--out-dir", str(out), "--max-steps", str(steps), "--ckpt-interval", "2",
            "--eval-interval", "2", *TINY]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    """A small synthetic corpus with structure to learn."""
    rng = np.random.default_rng(0)
    words = [b"alpha ", b"beta ", b"gamma ", b"delta ", b"wkv ", b"rwkv ", b"state "]
    text = b"".join(words[i] for i in rng.integers(0, len(words), 12000))
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_bytes(text)
    return path


# ---- data -------------------------------------------------------------------------------------
def test_enwik8_split_sizes():
    assert D.split_bounds(100_000_000) == (90_000_000, 95_000_000)
    data = np.arange(1000, dtype=np.int64).astype(np.uint8)
    c = D.make_corpus("x", data)
    assert (len(c.train), len(c.val), len(c.test)) == (900, 50, 50)
    # contiguous, in order, covering everything
    assert c.train[-1] == data[899] and c.val[0] == data[900] and c.test[0] == data[950]
    assert np.array_equal(np.concatenate([c.train, c.val, c.test]), data)


def test_builtin_corpus():
    c = D.load_corpus(None)
    assert "builtin" in c.name and len(c.data) > 300_000
    assert len(c.train) == len(c.data) * 9 // 10
    assert 3.0 < D.unigram_entropy_bits(c.val) < 6.0


def test_any_file_and_zip(tmp_path, corpus_file):
    c = D.load_corpus(str(corpus_file))
    assert len(c.data) == corpus_file.stat().st_size and isinstance(c.data, np.memmap)
    z = tmp_path / "c.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.write(corpus_file, "c")
    assert len(D.load_corpus(str(z)).data) == corpus_file.stat().st_size


def test_bad_data_files(tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(D.DataError, match="empty"):
        D.load_corpus(str(empty))
    with pytest.raises(D.DataError, match="does not exist"):
        D.load_corpus(str(tmp_path / "missing"))
    fake = tmp_path / "enwik8"
    fake.write_bytes(b"x" * 1000)
    with pytest.raises(D.DataError, match="100,000,000 bytes"):
        D.load_corpus(str(fake))
    bad_zip = tmp_path / "bad.zip"
    bad_zip.write_bytes(b"not a zip")
    with pytest.raises(D.DataError, match="not a valid zip"):
        D.load_corpus(str(bad_zip))


def test_enwik8_download_offline_fails_clearly(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(D.urllib.request, "urlopen", offline)
    with pytest.raises(D.DataError, match="could not download .*enwik8.zip"):
        D.load_corpus("enwik8", data_dir=tmp_path)
    assert not (tmp_path / "enwik8.zip").exists() and not (tmp_path / "enwik8.zip.part").exists()


def test_enwik8_checksum_is_checked(tmp_path):
    bad = tmp_path / "enwik8"
    with open(bad, "wb") as f:
        f.truncate(D.ENWIK8_SIZE)  # right size, wrong content
    with pytest.raises(D.DataError, match="md5"):
        D.load_corpus("enwik8", data_dir=tmp_path)


def test_eval_windows_cover_split():
    split = np.arange(100, dtype=np.uint8)
    ws = list(D.eval_windows(split, 32))
    assert [len(x) for x, _ in ws] == [32, 32, 32, 3]
    xs = torch.cat([x for x, _ in ws])
    ys = torch.cat([y for _, y in ws])
    assert torch.equal(xs, torch.arange(99)) and torch.equal(ys, torch.arange(1, 100))


# ---- trainer ----------------------------------------------------------------------------------
def test_training_loss_falls(tmp_path, corpus_file):
    res = train(["--data", str(corpus_file), "--out-dir", str(tmp_path), "--max-steps", "60",
                   "--eval-interval", "30", "--ckpt-interval", "30", *TINY])
    losses = [r["train_loss"] for r in res["records"] if "train_loss" in r]
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5])
    assert res["test_bpb"] < D.unigram_entropy_bits(np.fromfile(corpus_file, dtype=np.uint8))
    for name in ["ckpt/trainer_state.pt", "log.jsonl", "loss.png", "sample.txt", "model.pth"]:
        assert (tmp_path / name).exists(), name
    assert checkpoint.read_state(tmp_path / "ckpt")["step"] == 60
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    # before training, then every 30 steps; the test over the whole split last
    assert [r["step"] for r in log if "val_bpb" in r] == [0, 30, 60] and "test_bpb" in log[-1]


def test_builtin_corpus_training_runs(tmp_path, capsys):
    train(["--out-dir", str(tmp_path), "--max-steps", "3", "--eval-interval", "3", "--ckpt-interval", "3", *TINY])
    out = capsys.readouterr().out
    assert "BUILT-IN corpus" in out and "test:" in out


def test_resume_is_bit_identical(tmp_path, corpus_file):
    common = ["--data", str(corpus_file), "--max-steps", "20", "--eval-interval", "5", "--ckpt-interval", "5", *TINY]
    full = train(["--out-dir", str(tmp_path / "full"), *common])
    train(["--out-dir", str(tmp_path / "split"), "--stop-after", "12", *common])  # killed after step 12
    resumed = train(["--out-dir", str(tmp_path / "split"), "--resume", *common])  # resumes at 10
    a = [r.get("train_loss") for r in full["records"]]
    b = [r.get("train_loss") for r in resumed["records"]]
    assert a == b  # bit-identical on CPU
    for (n, p), q in zip(full["model"].state_dict().items(), resumed["model"].state_dict().values()):
        assert torch.equal(p, q), n
    assert full["test_bpb"] == resumed["test_bpb"]
    log = [json.loads(x) for x in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "train_loss" in r] == list(range(1, 21))


def test_corrupt_checkpoint_is_refused(tmp_path, corpus_file):
    args = short_run(corpus_file, tmp_path, 4)
    train(args)
    shard = next((tmp_path / "ckpt").glob("*.distcp"))
    blob = shard.read_bytes()
    shard.write_bytes(blob[: len(blob) // 2])  # the weights truncated
    with pytest.raises(UsageError, match="corrupt or truncated"):
        train(args + ["--resume"])
    state = tmp_path / "ckpt" / "trainer_state.pt"
    blob = state.read_bytes()
    state.write_bytes(blob[: len(blob) // 2])  # the trainer state truncated
    with pytest.raises(UsageError, match="corrupt or truncated.*refusing to start fresh"):
        train(args + ["--resume"])
    state.write_bytes(b"")
    with pytest.raises(UsageError, match="corrupt or truncated"):
        train(args + ["--resume"])


@pytest.mark.parametrize("bad,message", [
    (["--ctx-len", "0"], "ctx-len must be >= 1"),
    (["--lr", "-1"], "lr must be a positive"),
    (["--batch-size", "0"], "batch-size must be >= 1"),
])
def test_bad_settings_fail_before_training(tmp_path, bad, message):
    with pytest.raises(UsageError, match=message):
        train(["--out-dir", str(tmp_path), *TINY, *bad])


def test_checkpoint_from_other_config_is_refused(tmp_path, corpus_file):
    args = short_run(corpus_file, tmp_path, 2)
    train(args)
    with pytest.raises(UsageError, match="does not match"):
        train(args + ["--n-embd", "48", "--resume"])


def test_ddp_two_processes_match_single(tmp_path, corpus_file):
    """torchrun with 2 gloo processes x batch 2 == one process x batch 4."""
    common = ["--data", str(corpus_file), "--max-steps", "6", "--eval-interval", "3", "--ckpt-interval", "3",
              *[x for x in TINY if x not in ()]]
    common[common.index("--batch-size") + 1] = "2"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(TRAINER),
           "--out-dir", str(tmp_path / "ddp"), *common]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    single = common.copy()
    single[single.index("--batch-size") + 1] = "4"
    ref = train(["--out-dir", str(tmp_path / "single"), *single])
    ddp_log = [json.loads(x) for x in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    ddp_losses = [r["train_loss"] for r in ddp_log if "train_loss" in r]
    ref_losses = [r["train_loss"] for r in ref["records"] if "train_loss" in r]
    np.testing.assert_allclose(ddp_losses, ref_losses, rtol=1e-4, atol=1e-5)
    ddp_val = [r["val_bpb"] for r in ddp_log if "val_bpb" in r]
    np.testing.assert_allclose(ddp_val, [r["val_bpb"] for r in ref["records"] if "val_bpb" in r], rtol=1e-4)
    saved = RWKV.from_checkpoint(tmp_path / "ddp" / "ckpt").state_dict()
    for n, p in ref["model"].state_dict().items():
        torch.testing.assert_close(saved[n], p, rtol=1e-3, atol=1e-5, msg=n)


def test_trainer_checkpoint_loads_into_model_and_vocab_mismatch_is_refused(tmp_path, corpus_file):
    args = short_run(corpus_file, tmp_path, 2)
    res = train(args)
    model = RWKV.from_checkpoint(tmp_path / "ckpt")
    for (n, p), q in zip(res["model"].state_dict().items(), model.state_dict().values()):
        assert torch.equal(p, q), n
    file = tmp_path / "ckpt" / "trainer_state.pt"
    st = torch.load(file, weights_only=True)
    st["config"]["vocab_size"] = 300
    torch.save(st, file)
    with pytest.raises(UsageError, match="does not match"):
        train(args + ["--resume"])
    with pytest.raises(ValueError, match="do not fit"):
        RWKV.from_checkpoint(tmp_path / "ckpt")
