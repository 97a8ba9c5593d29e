"""Real kill-and-resume: the trainer as a subprocess, SIGKILLed at random moments (once in the
middle of a checkpoint write), resumed each time; and bad input to the trainer and model."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import TINY, TRAINER

from rwkv_wkv import RWKV, RWKVConfig, checkpoint
from rwkv_wkv.train import train

CKPT_INTERVAL = 4
MAX_STEPS = 40


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(1)
    words = [b"kill ", b"resume ", b"state ", b"bytes ", b"wkv "]
    path = tmp_path_factory.mktemp("rel") / "corpus.txt"
    path.write_bytes(b"".join(words[i] for i in rng.integers(0, len(words), 8000)))
    return path


def args(corpus, out):
    return ["--data", str(corpus), "--out-dir", str(out), "--max-steps", str(MAX_STEPS),
            "--ckpt-interval", str(CKPT_INTERVAL), "--eval-interval", "10", *TINY]


def logged_steps(out: Path):
    p = out / "log.jsonl"
    if not p.exists():
        return []
    steps = []
    for line in p.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if "train_loss" in r:
            steps.append(r["step"])
    return steps


def ckpt_step(out: Path):
    p = checkpoint.find(out / "ckpt")  # ckpt/, or ckpt.old/ after a kill between the swap's renames
    if not p.exists():
        return 0
    return torch.load(p / checkpoint.STATE, weights_only=True)["step"]  # must always be readable


def test_sigkill_and_resume_matches_uninterrupted(tmp_path, corpus):
    # every run in a subprocess with the same thread count, so float sums agree bit for bit
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    ref_out = tmp_path / "ref"
    r = subprocess.run(
        [sys.executable, str(TRAINER), *args(corpus, ref_out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "killed"
    rng = random.Random(1234)
    kills = 0
    for attempt in range(3):
        resume = ["--resume"] if ckpt_step(out) else []
        start_ckpt = ckpt_step(out)
        marker = tmp_path / f"stall{attempt}"
        e = dict(env)
        in_write = attempt == 1
        if in_write:
            e["RWKV_WKV_TEST_STALL_IN_CHECKPOINT"] = str(marker)
        proc = subprocess.Popen([sys.executable, str(TRAINER), *args(corpus, out), *resume], env=e,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        target = start_ckpt + rng.randint(1, 2 * CKPT_INTERVAL)
        while time.time() < deadline and proc.poll() is None:
            if in_write and marker.exists():
                break  # stalled with ckpt.tmp/ written but not yet swapped in
            if not in_write and len(logged_steps(out)) >= target:
                break
            time.sleep(0.005)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        if in_write:
            assert (out / "ckpt.tmp" / checkpoint.STATE).exists()
        reached = max(logged_steps(out), default=0)
        saved = ckpt_step(out)  # readable after every kill
        assert reached - saved <= CKPT_INTERVAL, (reached, saved)  # at most one interval repeated
    assert kills >= 3
    r = subprocess.run(
        [sys.executable, str(TRAINER), *args(corpus, out), "--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]

    def history(o):
        return [
            (x["step"], x["train_loss"])
            for x in map(json.loads, (o / "log.jsonl").read_text().splitlines())
            if "train_loss" in x
        ]

    assert history(out) == history(ref_out)  # bit-identical losses, every step once
    assert [s for s, _ in history(out)] == list(range(1, MAX_STEPS + 1))
    a, b = RWKV.from_checkpoint(ref_out / "ckpt").state_dict(), RWKV.from_checkpoint(out / "ckpt").state_dict()
    for n, p in a.items():
        assert torch.equal(p, b[n]), n


def test_kill_between_the_swaps_renames_resumes_from_the_old_checkpoint(tmp_path, corpus, capsys):
    """ckpt/ moved to ckpt.old/ and the new one not yet renamed in: --resume finds the old one."""
    common = ["--data", str(corpus), "--out-dir", str(tmp_path), "--max-steps", "4", "--ckpt-interval", "2",
              "--eval-interval", "2", *TINY]
    train([*common, "--stop-after", "2"])
    os.replace(tmp_path / "ckpt", tmp_path / "ckpt.old")
    capsys.readouterr()
    train([*common, "--resume"])
    assert f"resumed from {tmp_path / 'ckpt.old'} at step 2" in capsys.readouterr().out
    assert ckpt_step(tmp_path) == 4 and not (tmp_path / "ckpt.old").exists()


# ---- bad input to the trainer and the model: clear errors before any training ---------------
def run_trainer(argv):
    return subprocess.run([sys.executable, str(TRAINER), *argv], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", ["empty", "directory", "missing", "ctx0", "neg_lr"])
def test_trainer_rejects_bad_input(tmp_path, case):
    out = ["--out-dir", str(tmp_path / "out"), *TINY]
    if case == "empty":
        (tmp_path / "e").write_bytes(b"")
        argv, msg = ["--data", str(tmp_path / "e")], "is empty"
    elif case == "directory":
        (tmp_path / "d").mkdir()
        argv, msg = ["--data", str(tmp_path / "d")], "holds no .txt files"
    elif case == "missing":
        argv, msg = ["--data", str(tmp_path / "nope")], "does not exist"
    elif case == "ctx0":
        argv, msg = ["--ctx-len", "0"], "ctx-len must be >= 1"
    else:
        argv, msg = ["--lr", "-0.001"], "lr must be a positive"
    r = run_trainer(out + argv)
    assert r.returncode != 0 and msg in r.stderr, r.stderr[-2000:]
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out").exists()


def test_trainer_rejects_checkpoint_of_other_config(tmp_path, corpus):
    train(["--data", str(corpus), "--out-dir", str(tmp_path), "--max-steps", "2", "--ckpt-interval", "2",
                         "--eval-interval", "2", *TINY])
    r = run_trainer(["--data", str(corpus), "--out-dir", str(tmp_path), "--resume", *TINY, "--n-layer", "3"])
    assert r.returncode != 0 and "does not match" in r.stderr


def test_model_rejects_vocab_mismatch(tmp_path):
    small = RWKV(RWKVConfig(vocab_size=50, n_layer=1, n_embd=8, ctx_len=8))
    with pytest.raises(ValueError, match="token ids must be in"):
        small(torch.tensor([[3, 200]]))
    big = RWKV(RWKVConfig(vocab_size=256, n_layer=1, n_embd=8, ctx_len=8))
    with pytest.raises(RuntimeError, match="size mismatch"):
        big.load_state_dict(small.state_dict())
