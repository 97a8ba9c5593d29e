"""Every public name of the package keeps working across its reorganisation into rooms per
generation: the ops, the functions, the classes, the old module paths, and the commands."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rwkv_wkv

ROOT = Path(__file__).resolve().parents[1]


def test_ops_are_registered():
    for name in ("forward", "backward", "wkv_forward", "wkv_backward", "build_info", "cpu_isa", "cuda_chunk",
                 "cuda_plan"):
        assert hasattr(torch.ops.wkv, name), name


def test_package_names():
    from rwkv_wkv import (  # noqa: F401
        RWKV,
        RWKV7,
        RWKV7Config,
        RWKVConfig,
        WKVFunction,
        build_info,
        empty_state,
        from_checkpoint,
        patch_transformers,
        reference,
        wkv,
        wkv_with_state,
    )

    assert rwkv_wkv.RWKV is rwkv_wkv.rwkv4.model.RWKV and rwkv_wkv.RWKVConfig is rwkv_wkv.rwkv4.config.RWKVConfig
    assert rwkv_wkv.wkv is rwkv_wkv.rwkv4.ops.wkv and rwkv_wkv.reference is rwkv_wkv.rwkv4.reference


@pytest.mark.parametrize("old,new", [("model", "rwkv4.model"), ("ops", "rwkv4.ops"), ("reference", "rwkv4.reference"),
                                     ("hf", "rwkv4.hf"), ("transformers_patch", "rwkv4.transformers_patch")])
def test_old_module_paths_are_the_new_modules(old, new):
    assert importlib.import_module(f"rwkv_wkv.{old}") is importlib.import_module(f"rwkv_wkv.{new}")


def test_old_names_in_old_modules():
    from rwkv_wkv.model import RWKV, L2Wrap, RWKVConfig, decode_bytes, encode_bytes, sample  # noqa: F401
    from rwkv_wkv.ops import WKVFunction, empty_state, wkv, wkv_with_state  # noqa: F401
    from rwkv_wkv.reference import EMPTY_EXPONENT, wkv_exact, wkv_naive  # noqa: F401

    assert decode_bytes(encode_bytes("héllo")) == "héllo"


@pytest.mark.parametrize("command", [["-m", "rwkv_wkv.generate"], ["-m", "rwkv_wkv.train"],
                                     [str(ROOT / "examples" / "train_enwik8.py")]])
def test_commands_answer_help(command):
    r = subprocess.run([sys.executable, *command, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr[-2000:]
