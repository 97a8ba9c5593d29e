"""The data pipeline and the enwik8 trainer (examples/train_enwik8.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from rwkv_wkv import data as D

ROOT = Path(__file__).resolve().parents[1]
TRAINER = ROOT / "examples" / "train_enwik8.py"


def load_trainer():
    spec = importlib.util.spec_from_file_location("train_enwik8", TRAINER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TINY = ["--n-layer", "2", "--n-embd", "32", "--ctx-len", "32", "--batch-size", "4", "--lr", "3e-3",
        "--lr-final", "1e-3", "--warmup-steps", "2", "--eval-bytes", "2048", "--test-bytes", "2048",
        "--sample-len", "16", "--device", "cpu", "--seed", "7"]


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
    tr = load_trainer()
    res = tr.main(["--data", str(corpus_file), "--out-dir", str(tmp_path), "--max-steps", "60",
                   "--eval-interval", "30", "--ckpt-interval", "30", *TINY])
    losses = [r["train_loss"] for r in res["records"]]
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5])
    assert res["test_bpc"] < D.unigram_entropy_bits(np.fromfile(corpus_file, dtype=np.uint8))
    for name in ["ckpt.pt", "log.jsonl", "loss.png", "sample.txt", "model.pth"]:
        assert (tmp_path / name).exists(), name
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ck["step"] == 60
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert sum("val_bpc" in r for r in log) == 2 and "test_bpc" in log[-1]


def test_builtin_corpus_training_runs(tmp_path, capsys):
    tr = load_trainer()
    tr.main(["--out-dir", str(tmp_path), "--max-steps", "3", "--eval-interval", "3", "--ckpt-interval", "3", *TINY])
    out = capsys.readouterr().out
    assert "BUILT-IN corpus" in out and "test:" in out


def test_resume_is_bit_identical(tmp_path, corpus_file):
    tr = load_trainer()
    common = ["--data", str(corpus_file), "--max-steps", "20", "--eval-interval", "5", "--ckpt-interval", "5", *TINY]
    full = tr.main(["--out-dir", str(tmp_path / "full"), *common])
    tr.main(["--out-dir", str(tmp_path / "split"), "--stop-after", "12", *common])  # killed after step 12
    resumed = tr.main(["--out-dir", str(tmp_path / "split"), "--resume", *common])  # resumes at 10
    a = [r["train_loss"] for r in full["records"]]
    b = [r["train_loss"] for r in resumed["records"]]
    assert a == b  # bit-identical on CPU
    for (n, p), q in zip(full["model"].state_dict().items(), resumed["model"].state_dict().values()):
        assert torch.equal(p, q), n
    assert full["test_bpc"] == resumed["test_bpc"]
    log = [json.loads(x) for x in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "train_loss" in r] == list(range(1, 21))


def test_corrupt_checkpoint_is_refused(tmp_path, corpus_file):
    tr = load_trainer()
    args = ["--data", str(corpus_file), "--out-dir", str(tmp_path), "--max-steps", "4", "--ckpt-interval", "2", "--eval-interval", "2", *TINY]
    tr.main(args)
    ck = tmp_path / "ckpt.pt"
    blob = ck.read_bytes()
    ck.write_bytes(blob[: len(blob) // 2])  # truncated mid-write
    with pytest.raises(tr.CheckpointError, match="corrupt or truncated"):
        tr.main(args + ["--resume"])
    ck.write_bytes(b"")
    with pytest.raises(tr.CheckpointError, match="corrupt or truncated"):
        tr.main(args + ["--resume"])


@pytest.mark.parametrize("bad,message", [
    (["--ctx-len", "0"], "ctx-len must be >= 1"),
    (["--lr", "-1"], "lr must be a positive"),
    (["--batch-size", "0"], "batch-size must be >= 1"),
])
def test_bad_settings_fail_before_training(tmp_path, bad, message):
    tr = load_trainer()
    with pytest.raises(SystemExit, match=message):
        tr.main(["--out-dir", str(tmp_path), *TINY, *bad])


def test_checkpoint_from_other_config_is_refused(tmp_path, corpus_file):
    tr = load_trainer()
    args = ["--data", str(corpus_file), "--out-dir", str(tmp_path), "--max-steps", "2", "--ckpt-interval", "2", "--eval-interval", "2", *TINY]
    tr.main(args)
    with pytest.raises(SystemExit, match="does not match"):
        tr.main(args + ["--n-embd", "48", "--resume"])


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
    tr = load_trainer()
    ref = tr.main(["--out-dir", str(tmp_path / "single"), *single])
    ddp_log = [json.loads(x) for x in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    ddp_losses = [r["train_loss"] for r in ddp_log if "train_loss" in r]
    ref_losses = [r["train_loss"] for r in ref["records"]]
    np.testing.assert_allclose(ddp_losses, ref_losses, rtol=1e-4, atol=1e-5)
    ddp_val = [r["val_bpc"] for r in ddp_log if "val_bpc" in r]
    np.testing.assert_allclose(ddp_val, [r["val_bpc"] for r in ref["records"] if "val_bpc" in r], rtol=1e-4)
    ck = torch.load(tmp_path / "ddp" / "ckpt.pt", weights_only=True)
    for n, p in ref["model"].state_dict().items():
        torch.testing.assert_close(ck["model"][n], p, rtol=1e-3, atol=1e-5, msg=n)


def test_trainer_checkpoint_loads_into_model_and_vocab_mismatch_is_refused(tmp_path, corpus_file):
    from rwkv_wkv import RWKV

    tr = load_trainer()
    args = ["--data", str(corpus_file), "--out-dir", str(tmp_path), "--max-steps", "2", "--ckpt-interval", "2",
            "--eval-interval", "2", *TINY]
    res = tr.main(args)
    model = RWKV.from_checkpoint(tmp_path / "ckpt.pt")
    for (n, p), q in zip(res["model"].state_dict().items(), model.state_dict().values()):
        assert torch.equal(p, q), n
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    ck["config"]["vocab_size"] = 300
    torch.save(ck, tmp_path / "ckpt.pt")
    with pytest.raises(SystemExit, match="does not match"):
        tr.main(args + ["--resume"])
