"""The build switch: forcing the CUDA kernel on without a toolchain fails clearly at configure."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def configure(tmp_path, *defines):
    cmake = shutil.which("cmake", path=str(Path(sys.executable).parent)) or shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake not found")
    r = subprocess.run(
        [cmake, "-S", str(ROOT), "-B", str(tmp_path / "b"), f"-DPython_EXECUTABLE={sys.executable}", *defines],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return r.returncode, " ".join((r.stdout + r.stderr).split())  # cmake wraps long messages


@pytest.mark.skipif(torch.version.cuda is not None, reason="needs a CPU-only torch")
def test_forcing_cuda_on_a_cpu_torch_fails_clearly(tmp_path):
    rc, out = configure(tmp_path, "-DWKV_CUDA=ON")
    assert rc != 0 and "WKV_CUDA=ON but the installed torch" in out and "is a CPU-only build" in out


def test_bad_switch_value_fails_clearly(tmp_path):
    rc, out = configure(tmp_path, "-DWKV_CUDA=maybe")
    assert rc != 0 and "WKV_CUDA must be AUTO, ON or OFF" in out


def test_cpu_only_configure_succeeds(tmp_path):
    rc, out = configure(tmp_path, "-DWKV_CUDA=OFF")
    assert rc == 0, out[-2000:]
