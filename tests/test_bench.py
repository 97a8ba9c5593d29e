"""benchmarks/bench_wkv.py runs end to end on a tiny shape and writes its JSON and PNG."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

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
