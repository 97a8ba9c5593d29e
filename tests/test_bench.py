"""benchmarks/bench_wkv.py runs end to end on a tiny shape and writes its JSON and PNG."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_bench_runs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_wkv", ROOT / "benchmarks" / "bench_wkv.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
    bench.main(["--shapes", "2x40x24,1x17x5", "--repeats", "2", "--json", str(out_json), "--plot", str(out_png)])
    records = json.loads(out_json.read_text())
    assert {r["impl"] for r in records} == {"kernel", "naive", "floor"}
    for r in records:
        assert {"shape", "device", "dtype", "impl", "fwd_ms", "fwdbwd_ms"} <= set(r)
        assert r["fwd_ms"] > 0 and r["fwdbwd_ms"] > 0
    assert out_png.stat().st_size > 1000
    table = capsys.readouterr().out
    assert "| (2, 40, 24) | kernel |" in table and "speedup vs naive" in table


def test_bench_rejects_a_kernel_faster_than_its_floor(tmp_path, monkeypatch):
    """A kernel timed below what no implementation can beat means the run was disturbed: the
    benchmark says so and writes nothing, instead of printing ratios below 1."""
    from rwkv_wkv.errors import UsageError

    bench = _load_bench()
    monkeypatch.setattr(bench, "floor_ms", lambda *a, **k: {"fwd_ms": 1e4, "fwdbwd_ms": 1e4})
    out_json = tmp_path / "b.json"
    with pytest.raises(UsageError, match="unmeasurable run"):
        bench.main(["--shapes", "1x17x5", "--repeats", "1", "--skip-naive", "--json", str(out_json)])
    assert not out_json.exists()


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_wkv", ROOT / "benchmarks" / "bench_wkv.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_rwkv_lm_sources_found_and_namespace_dropped(tmp_path):
    """--rwkv-lm DIR: RWKV-LM's files are found from its root, and the op file's
    TORCH_LIBRARY(wkv, m) block (a second registration of our namespace) is removed."""
    import pytest

    bench = _load_bench()
    cuda = tmp_path / "RWKV-LM" / "RWKV-v4neo" / "cuda"
    cuda.mkdir(parents=True)
    (cuda / "wkv_op.cpp").write_text(
        "#include <torch/extension.h>\nvoid forward() {}\n"
        "PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {\n  m.def(\"forward\", &forward);\n}\n"
        "TORCH_LIBRARY(wkv, m) {\n    m.def(\"forward\", forward);\n    m.def(\"backward\", backward);\n}\n")
    (cuda / "wkv_cuda.cu").write_text("// kernel\n")
    build = tmp_path / "build"
    build.mkdir()
    (op, cu), found = bench.RWKVLMKernel.sources(str(tmp_path / "RWKV-LM"), "fp32", str(build))
    text = open(op).read()
    assert found == str(cuda)
    assert "TORCH_LIBRARY" not in text and "PYBIND11_MODULE" in text and open(cu).read() == "// kernel\n"
    from rwkv_wkv.errors import UsageError

    with pytest.raises(UsageError, match="no wkv_cuda_bf16.cu"):
        bench.RWKVLMKernel.sources(str(tmp_path / "RWKV-LM"), "bf16", str(build))
    with pytest.raises(UsageError, match="needs --device cuda"):
        bench.main(["--shapes", "1x8x4", "--rwkv-lm", str(tmp_path)])


def test_bench_generate_runs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_generate", ROOT / "benchmarks" / "bench_generate.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "g.json"
    bench.main(["--shapes", "L1-d16", "--prefill", "8", "--tokens", "3", "--repeats", "1", "--no-chatrwkv",
                "--formats", "fp32,int8", "--batch", "1,3", "--json", str(out)])
    records = json.loads(out.read_text())
    got = {(r["impl"], r["format"], r["batch"]) for r in records}
    assert got == {("ours (fused)", "fp32", 1), ("ours (fused)", "fp32", 3), ("ours (fused)", "int8", 1),
                   ("ours (fused)", "int8", 3), ("ours (python step)", "fp32", 1), ("ours (python step)", "fp32", 3)}
    for r in records:
        assert r["shape"] == "L1-d16" and r["token_ms"] > 0 and r["floor_token_ms"] > 0 and r["ours_prefill_s"] > 0
    int8 = next(r for r in records if r["format"] == "int8")
    fp32 = next(r for r in records if r["format"] == "fp32" and r["impl"] == "ours (fused)")
    assert int8["weight_mb"] < fp32["weight_mb"] / 3 and 0 < int8["logit_rel_err_vs_fp32"] < 0.2
    assert "| L1-d16" in capsys.readouterr().out


def test_bench_transformers_runs(tmp_path, capsys):
    pytest.importorskip("transformers")
    spec = importlib.util.spec_from_file_location("bench_transformers", ROOT / "benchmarks" / "bench_transformers.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "t.json"
    bench.main(["--layers", "2", "--hidden", "16", "--vocab", "20", "--batch", "1", "--ctx", "12", "--repeats", "1",
                "--json", str(out)])
    rec = json.loads(out.read_text())
    assert rec["median"]["patched"] > 0 and rec["median"]["transformers"] > 0 and rec["speedup"] > 0
    printed = capsys.readouterr().out
    assert "# validate: loss" in printed and "| rwkv_wkv.patch_transformers() |" in printed
    import rwkv_wkv
    assert not rwkv_wkv.is_transformers_patched()  # the benchmark leaves transformers as it found it


def test_bench_train_runs(tmp_path, capsys):
    """1 process, DDP x2 and FSDP2 x2 on a tiny shape: FSDP holds half per rank, DDP all of it."""
    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "benchmarks" / "bench_train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "train.json"
    bench.main(["--layers", "2", "--hidden", "32", "--ctx", "8", "--steps", "1", "--json", str(out)])
    rec = json.loads(out.read_text())
    one, ddp, fsdp = (sum(r["held_bytes"].values()) for r in rec["records"])
    assert ddp == one and 0.45 <= fsdp / one <= 0.55
    assert rec["largest"]["fsdp8"] == "14B" and "| FSDP2 x2 |" in capsys.readouterr().out


def test_gpu_table_format():
    """The CUDA table (formatted here from synthetic records, as no GPU is needed to check it):
    kernel rows name their plan, RWKV-LM gets a ratio column, the memory floor's ratio shows only
    where it binds."""
    bench = _load_bench()
    rec = lambda impl, f, fb, **kw: {"shape": [1, 1024, 512], "device": "cuda", "dtype": "fp32", "impl": impl,  # noqa: E731
                                     "fwd_ms": f, "fwdbwd_ms": fb, **kw}
    records = [
        rec("kernel", 0.03, 0.1, chunk=32),
        rec("rwkv-lm", 0.09, 0.3),
        rec("serial", 0.08, 0.2),
        rec("floor", 0.005, 0.08, mem_fwd_ms=0.005, mem_fwdbwd_ms=0.08),
    ]
    table = bench.format_table(records)
    assert "vs RWKV-LM" in table
    kernel = next(line for line in table.splitlines() if "kernel (chunk 32)" in line)
    assert "3.00x / 3.00x" in kernel and "latency-bound / 1.25" in kernel
    assert "floor (mem)" in table
    serial = next(line for line in table.splitlines() if "| serial |" in line)
    assert "1.12x / 1.50x" in serial


def test_bench_wkv7_runs(tmp_path, capsys):
    """benchmarks/bench_wkv7.py validates, times kernel / naive / floor, writes JSON and PNG."""
    spec = importlib.util.spec_from_file_location("bench_wkv7", ROOT / "benchmarks" / "bench_wkv7.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out_json, out_png = tmp_path / "b7.json", tmp_path / "b7.png"
    bench.main(["--shapes", "2x40x2x16,1x17x1x5", "--repeats", "2", "--json", str(out_json), "--plot", str(out_png)])
    records = json.loads(out_json.read_text())
    assert {r["impl"] for r in records} == {"kernel", "naive", "floor"}
    assert all(r["fwd_ms"] > 0 and r["fwdbwd_ms"] > r["fwd_ms"] * 0 for r in records)
    assert out_png.stat().st_size > 1000
    out = capsys.readouterr().out
    assert "| (2, 40, 2, 16) | kernel |" in out and "kernel / floor" in out and "FMA rate" in out
    with pytest.raises(bench.UsageError, match="four positive sizes"):
        bench.main(["--shapes", "2x40x2"])
    with pytest.raises(bench.UsageError, match="--device"):
        bench.main(["--device", "cuda" if not torch.cuda.is_available() else "tpu"])


def test_bench_model7_runs(tmp_path, capsys):
    """The RWKV-7 model benchmark on a tiny shape: validated against ChatRWKV where installed."""
    spec = importlib.util.spec_from_file_location("bench_model7", ROOT / "benchmarks" / "bench_model7.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "m7.json"
    bench.main(["--shapes", "L1-d64", "--head-size", "32", "--vocab", "50", "--prefill", "8", "--tokens", "2",
                "--repeats", "1", "--train-ctx", "8", "--train-steps", "1", "--json", str(out)])
    (rec,) = json.loads(out.read_text())
    assert rec["ours_token_ms"] > 0 and rec["ours_prefill_s"] > 0 and rec["floor_token_ms"] > 0
    assert rec["ours_train_tok_s"] > 0 and rec["naive_train_tok_s"] > 0 and rec["ours_fused_token_ms"] > 0
    if importlib.util.find_spec("rwkv") is not None:
        assert rec["max_rel_diff_vs_chatrwkv"] < 1e-3 and rec["chatrwkv_token_ms"] > 0
    printed = capsys.readouterr().out
    assert "| L1-d64" in printed and "naive loop over T" in printed


def test_bench_generate_quality(tmp_path, capsys):
    """--quality: each format's held-out loss through the fused step, against the Python step."""
    spec = importlib.util.spec_from_file_location("bench_generate", ROOT / "benchmarks" / "bench_generate.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from rwkv_wkv import RWKV, RWKVConfig

    torch.manual_seed(0)
    RWKV(RWKVConfig(vocab_size=256, n_layer=1, n_embd=32)).save_rwkv_lm(tmp_path / "m.pth")
    rows = bench.main(["--quality", str(tmp_path / "m.pth"), "--quality-tokens", "20", "--formats", "fp32,int8"])
    assert [r["format"] for r in rows] == ["python step fp32", "fused fp32", "fused int8"]
    assert abs(rows[1]["rel_vs_fp32"]) < 1e-5 and all(r["nll"] > 0 for r in rows)
    assert "| fused int8 |" in capsys.readouterr().out


def test_bench_deploy_runs(tmp_path, capsys):
    """benchmarks/bench_deploy.py (ONNX part; --aoti compiles and is left to the measured run):
    validates the exported programs against eager, times them, writes its records."""
    pytest.importorskip("onnxruntime")
    spec = importlib.util.spec_from_file_location("bench_deploy", ROOT / "benchmarks" / "bench_deploy.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "d.json"
    bench.main(["--shapes", "L1-d32", "--prefill", "8", "--tokens", "2", "--repeats", "1", "--json", str(out)])
    records = json.loads(out.read_text())["records"]
    assert {r["impl"] for r in records} == {"ours (eager; fused step)", "ours (eager; Python step)",
                                            "ours (eager; fused int8 step)", "onnxruntime"}
    assert all(r["per_token_ms"] > 0 for r in records)
    assert next(r for r in records if r["impl"] == "onnxruntime")["prefill_tokens_per_s"] > 0
    assert "| L1-d32 | onnxruntime" in capsys.readouterr().out
