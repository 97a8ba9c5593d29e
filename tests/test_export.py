"""Deployment (rwkv_wkv.export): torch.export programs, ONNX through onnxruntime, AOTInductor
packages in Python and from the C++ runner (examples/aoti_runner), for both generations.

The AOTInductor tests compile (about 25 s per tiny model here) and build the C++ runner: they are
marked ``slow`` and run by ``pytest -m slow`` (.ci/run does); everything else is in the default run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rwkv_wkv
from rwkv_wkv import RWKV, RWKV7, RWKV7Config, RWKVConfig
from rwkv_wkv.export import export_model, library_path, load_package, onnx_translation_table
from rwkv_wkv.export import main as export_main

ROOT = Path(__file__).resolve().parents[1]
GENERATIONS = (4, 7)


def random_model(generation, seed=0, V=97):
    torch.manual_seed(seed)
    if generation == 7:
        model = RWKV7(RWKV7Config(vocab_size=V, n_layer=2, n_embd=64, head_size=16, dim_ffn=128, decay_lora=8,
                                  a_lora=8, v_lora=8, gate_lora=16))
    else:
        model = RWKV(RWKVConfig(vocab_size=V, n_layer=2, n_embd=64, dim_ffn=128))
    with torch.no_grad():  # away from the initialisation's zeros and identities
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def rel(a, b):
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return ((a - b).abs().max() / b.abs().max()).item()


def eager(model, mode, *inputs):
    with torch.no_grad():
        if mode == "gpt":
            logits, _, state = model(inputs[0], return_state=True)
            return logits, state
        return model.step(*inputs)


def saved_checkpoint(model, directory):
    path = Path(directory) / f"rwkv{model.generation}.pth"
    model.save_rwkv_lm(path)
    return path


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "rwkv_wkv.export", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def greedy(model, ids, new):
    return model.generate(torch.tensor(ids), new, temperature=0).tolist()


# ---- torch.export (.pt2) ------------------------------------------------------------------------
@pytest.mark.parametrize("generation", GENERATIONS)
@pytest.mark.parametrize("mode", ["gpt", "step"])
def test_pt2_round_trip_at_other_shapes(tmp_path, generation, mode):
    model = random_model(generation)
    path = export_model(model, "pt2", mode, tmp_path / "m.pt2")
    program = torch.export.load(path).module()
    for B, T in ((1, 1), (3, 17)):
        if mode == "gpt":
            inputs = (torch.randint(0, 97, (B, T)),)
        else:
            _, state = eager(model, "gpt", torch.randint(0, 97, (B, 5)))
            inputs = (torch.randint(0, 97, (B,)), state)
        want = eager(model, mode, *inputs)
        got = program(*inputs)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            assert rel(g, w) < 1e-6


# the fused step's stated error per weight format (tests/test_fused_step.py FORMAT_ERROR)
FUSED_ERROR = {"fp32": 1e-5, "int8": 1e-1}


@pytest.mark.parametrize("generation", GENERATIONS)
@pytest.mark.parametrize("weights", FUSED_ERROR)
def test_pt2_fused_step(tmp_path, generation, weights):
    """--fused: the step program runs the fused CPU kernel, within its format's error of eager."""
    model = random_model(generation)
    program = torch.export.load(export_model(model, "pt2", "step", tmp_path / "s.pt2", fused=weights)).module()
    for B in (1, 5):
        _, state = eager(model, "gpt", torch.randint(0, 97, (B, 6)))
        tokens = torch.randint(0, 97, (B,))
        before = state.clone()
        got = program(tokens, state)
        assert torch.equal(state, before)  # the input state is not modified
        for g, w in zip(got, eager(model, "step", tokens, state)):
            assert rel(g, w) < FUSED_ERROR[weights]


def test_pt2_runs_without_importing_the_package(tmp_path):
    """The library alone (torch.ops.load_library(rwkv_wkv.library_path())) runs a program."""
    model = random_model(4)
    export_model(model, "pt2", "gpt", tmp_path / "gpt.pt2")
    idx = torch.randint(0, 97, (2, 9))
    torch.save({"idx": idx, "logits": eager(model, "gpt", idx)[0]}, tmp_path / "io.pt")
    script = (
        "import sys, torch\n"
        "torch.ops.load_library(sys.argv[1])\n"
        "io = torch.load(sys.argv[3])\n"
        "logits, state = torch.export.load(sys.argv[2]).module()(io['idx'])\n"
        "assert 'rwkv_wkv' not in sys.modules, 'the package was imported'\n"
        "print(((logits - io['logits']).abs().max() / io['logits'].abs().max()).item())\n"
    )
    out = subprocess.run([sys.executable, "-c", script, library_path(), tmp_path / "gpt.pt2", tmp_path / "io.pt"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) < 1e-6


def test_library_path():
    path = Path(rwkv_wkv.library_path())
    assert path.is_file() and path.name.startswith("_C")
    assert rwkv_wkv.library_path() == library_path()


def test_export_keeps_the_callers_model(tmp_path):
    """Another dtype, or a model in training mode: exported from a copy, the caller's unchanged."""
    model = random_model(4).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_model(model, "pt2", "step", tmp_path / "s.pt2", dtype="bf16")
    assert model.training and model.emb.weight.dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    state = model.init_state(2)
    logits, new_state = torch.export.load(tmp_path / "s.pt2").module()(torch.tensor([1, 2]), state)
    assert logits.dtype == torch.bfloat16 and new_state.dtype == torch.float32
    assert rel(logits.float(), eager(model.eval(), "step", torch.tensor([1, 2]), state)[0]) < 3e-2


# ---- ONNX ---------------------------------------------------------------------------------------
def onnx_session(path):
    onnxruntime = pytest.importorskip("onnxruntime")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module", params=GENERATIONS)
def onnx_models(request, tmp_path_factory):
    pytest.importorskip("onnxscript")
    directory = tmp_path_factory.mktemp(f"onnx{request.param}")
    model = random_model(request.param)
    for mode in ("gpt", "step"):
        export_model(model, "onnx", mode, directory / f"{mode}.onnx")
    return model, onnx_session(directory / "gpt.onnx"), onnx_session(directory / "step.onnx")


@pytest.mark.parametrize("T", [1, 7, 100, 1000])
def test_onnx_gpt_equals_eager(onnx_models, T):
    model, gpt, _ = onnx_models
    idx = torch.randint(0, 97, (2, T), generator=torch.Generator().manual_seed(T))
    logits, state = eager(model, "gpt", idx)
    got_logits, got_state = gpt.run(None, {"idx": idx.numpy()})
    assert rel(got_logits, logits) < 1e-5
    assert rel(got_state, state) < 1e-5


@pytest.mark.parametrize("B", [1, 3])
def test_onnx_step_equals_eager(onnx_models, B):
    model, gpt, step = onnx_models
    _, state = eager(model, "gpt", torch.randint(0, 97, (B, 11)))
    tokens = torch.randint(0, 97, (B,))
    logits, new_state = eager(model, "step", tokens, state)
    got_logits, got_state = step.run(None, {"tokens": tokens.numpy(), "state": state.numpy()})
    assert rel(got_logits, logits) < 1e-5
    assert rel(got_state, new_state) < 1e-5
    # from the empty state too (the model's init_state: RWKV-4's -1e38 exponent row)
    empty = model.init_state(B)
    assert rel(step.run(None, {"tokens": tokens.numpy(), "state": empty.numpy()})[0],
               eager(model, "step", tokens, empty)[0]) < 1e-5


def test_onnx_greedy_generation_gives_our_tokens(onnx_models):
    model, gpt, step = onnx_models
    prompt = [5, 17, 3, 88, 41, 2, 60]
    want = greedy(model, prompt, 24)
    logits, state = gpt.run(None, {"idx": torch.tensor([prompt]).numpy()})
    ids = list(prompt)
    token = torch.from_numpy(logits[:, -1]).argmax(-1)
    for _ in range(24):
        ids.append(int(token))
        logits, state = step.run(None, {"tokens": token.numpy(), "state": state})
        token = torch.from_numpy(logits).argmax(-1)
    assert ids == want


def test_onnx_metadata(onnx_models):
    model, gpt, step = onnx_models
    meta = step.get_modelmeta().custom_metadata_map
    assert meta["rwkv_wkv.generation"] == str(model.generation)
    assert meta["rwkv_wkv.mode"] == "step" and gpt.get_modelmeta().custom_metadata_map["rwkv_wkv.mode"] == "gpt"
    assert meta["rwkv_wkv.inputs"] == "tokens,state"


class _WKVState(torch.nn.Module):
    def __init__(self, C, scale):
        super().__init__()
        self.time_decay = torch.nn.Parameter(torch.linspace(-4, 2, C))
        self.time_first = torch.nn.Parameter(torch.linspace(-1, 1, C))
        self.scale = scale

    def forward(self, k, v, state):
        return rwkv_wkv.wkv_with_state(self.time_decay, self.time_first, k * self.scale, v, state)


@pytest.mark.parametrize("T", [1, 50])
def test_onnx_wkv_translation_without_overflow(tmp_path, T):
    """The translation on its own (any module calling the op): k up to +-1000 stays finite and
    equal to the kernel, from a given state."""
    pytest.importorskip("onnxscript")
    C = 16
    module = _WKVState(C, 1000.0).eval()
    k = torch.rand(2, T, C) * 2 - 1  # k * 1000 in [-1000, 1000]
    v = torch.randn(2, T, C)
    _, state = rwkv_wkv.wkv_with_state(module.time_decay.detach(), module.time_first.detach(), torch.randn(2, 4, C),
                                       torch.randn(2, 4, C))
    with torch.no_grad():
        y, new_state = module(k, v, state)
        program = torch.onnx.export(module, (k, v, state), dynamo=True, input_names=["k", "v", "state"],
                                    custom_translation_table=onnx_translation_table(), verbose=False)
    program.save(str(tmp_path / "wkv.onnx"))
    got_y, got_state = onnx_session(tmp_path / "wkv.onnx").run(None, {"k": k.numpy(), "v": v.numpy(),
                                                                      "state": state.numpy()})
    assert torch.isfinite(torch.from_numpy(got_y)).all()
    assert rel(got_y, y) < 1e-5
    assert rel(got_state[:, :2], new_state[:, :2]) < 1e-5 and rel(got_state[:, 2], new_state[:, 2]) < 1e-6


def test_onnx_translation_refuses_other_dtypes(tmp_path):
    pytest.importorskip("onnxscript")
    C = 8
    module = _WKVState(C, 1.0).eval()
    k = torch.randn(1, 4, C, dtype=torch.float16)
    state = rwkv_wkv.empty_state(1, C)
    with torch.no_grad(), pytest.raises(Exception, match="float32 only"):
        torch.onnx.export(module, (k, k, state), dynamo=True, custom_translation_table=onnx_translation_table(),
                          verbose=False)


# ---- the command ------------------------------------------------------------------------------------
def test_cli_writes_pt2_and_onnx(tmp_path):
    path = saved_checkpoint(random_model(7), tmp_path)
    out = run_cli(path, "--format", "pt2", "--mode", "gpt", "--out", tmp_path / "gpt.pt2")
    assert out.returncode == 0, out.stderr
    idx = torch.randint(0, 97, (2, 5))
    model = rwkv_wkv.from_checkpoint(path).eval()
    assert rel(torch.export.load(tmp_path / "gpt.pt2").module()(idx)[0], eager(model, "gpt", idx)[0]) < 1e-6
    pytest.importorskip("onnxruntime")  # (the onnx extra; in the test extra)
    out = run_cli(path, "--format", "onnx", "--mode", "step", "--out", tmp_path / "step.onnx")
    assert out.returncode == 0, out.stderr
    state = model.init_state(2)
    tokens = torch.tensor([1, 2])
    got = onnx_session(tmp_path / "step.onnx").run(None, {"tokens": tokens.numpy(), "state": state.numpy()})
    assert rel(got[0], eager(model, "step", tokens, state)[0]) < 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["gpt.pt2", "step.onnx", path.name])


@pytest.mark.parametrize("args,message", [
    (["--format", "onnx", "--mode", "gpt", "--dtype", "bf16"], "float32 only"),
    (["--format", "tflite", "--mode", "gpt"], "--format"),
    (["--format", "pt2", "--mode", "prefill"], "--mode"),
    (["--format", "pt2", "--mode", "gpt", "--out", "{tmp}/no/such/dir/m.pt2"], "does not exist"),
    (["--format", "pt2", "--mode", "gpt", "--out", "{tmp}"], "is a directory"),
    (["--format", "onnx", "--mode", "step", "--fused", "int8"], "--mode step in the pt2 and aoti"),
    (["--format", "aoti", "--mode", "gpt", "--fused", "fp32"], "--mode step in the pt2 and aoti"),
    (["--format", "pt2", "--mode", "step", "--fused", "int4"], "--fused"),
    (["--format", "pt2", "--mode", "step", "--fused", "int8", "--dtype", "bf16"], "dtype must stay fp32"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    path = saved_checkpoint(random_model(4), tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "m.out")]
    assert export_main([str(path), *args]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_cli_bad_checkpoint(tmp_path, capsys):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    for checkpoint in (tmp_path / "missing.pth", tmp_path / "junk.pth"):
        assert export_main([str(checkpoint), "--format", "pt2", "--mode", "gpt", "--out", str(tmp_path / "m.pt2")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m.pt2").exists()


# ---- AOTInductor (slow: compiles) ------------------------------------------------------------------
@pytest.fixture(scope="module", params=GENERATIONS)
def aoti_packages(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"aoti{request.param}")
    model = random_model(request.param)
    checkpoint = saved_checkpoint(model, directory)
    for mode in ("gpt", "step"):
        out = run_cli(checkpoint, "--format", "aoti", "--mode", mode, "--out", directory / f"{mode}.pt2")
        assert out.returncode == 0, out.stderr
    out = run_cli(checkpoint, "--format", "aoti", "--mode", "step", "--fused", "fp32", "--out",
                  directory / "fused.pt2")
    assert out.returncode == 0, out.stderr
    return model, directory


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    """examples/aoti_runner built with CMake against the installed torch's libtorch."""
    assert shutil.which("cmake"), "building the C++ runner needs cmake (pip install 'cmake>=3.26')"
    build = tmp_path_factory.mktemp("runner")
    configure = ["cmake", "-S", ROOT / "examples" / "aoti_runner", "-B", build, "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"]
    for command in (configure, ["cmake", "--build", build]):
        out = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return build / "rwkv_aoti_generate"


@pytest.mark.slow
def test_aoti_in_python_equals_eager(aoti_packages):
    model, directory = aoti_packages
    gpt, step = load_package(directory / "gpt.pt2"), load_package(directory / "step.pt2")
    fused = load_package(directory / "fused.pt2")
    for B, T in ((1, 1), (3, 40)):
        idx = torch.randint(0, 97, (B, T))
        logits, state = eager(model, "gpt", idx)
        got_logits, got_state = gpt(idx)
        assert rel(got_logits, logits) < 1e-5 and rel(got_state, state) < 1e-5
        tokens = torch.randint(0, 97, (B,))
        want = eager(model, "step", tokens, state)
        for program in (step, fused):
            for g, w in zip(program(tokens, state), want):
                assert rel(g, w) < 1e-5


@pytest.mark.slow
def test_aoti_loads_with_the_library_alone(aoti_packages):
    model, directory = aoti_packages
    script = (
        "import sys, torch\n"
        "torch.ops.load_library(sys.argv[1])\n"
        "step = torch._inductor.aoti_load_package(sys.argv[2])\n"
        "logits, state = step(torch.tensor([4]), torch.load(sys.argv[3]))\n"
        "assert 'rwkv_wkv' not in sys.modules\n"
        "torch.save(logits, sys.argv[3] + '.out')\n"
    )
    state = model.init_state(1)
    torch.save(state, directory / "state.pt")
    out = subprocess.run([sys.executable, "-c", script, library_path(), directory / "step.pt2",
                          directory / "state.pt"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert rel(torch.load(directory / "state.pt.out"), eager(model, "step", torch.tensor([4]), state)[0]) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("step", ["step", "fused"])
def test_cpp_runner_generates_our_tokens(aoti_packages, runner, step):
    """examples/aoti_runner: no Python in the process; its greedy tokens are model.generate's,
    with the step package of the model's step and of the fused CPU step (--fused fp32)."""
    model, directory = aoti_packages
    prompt = [5, 17, 3, 88, 41, 2, 60]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    out = subprocess.run([runner, library_path(), directory / "gpt.pt2", directory / f"{step}.pt2", "30",
                          *map(str, prompt)], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert [int(i) for i in out.stdout.split()] == greedy(model, prompt, 30)
    ldd = subprocess.run(["ldd", str(runner)], capture_output=True, text=True).stdout
    assert "libpython" not in ldd


@pytest.mark.slow
@pytest.mark.parametrize("case,message", [
    ("swapped", "is not a --mode gpt package"),
    ("vocab", "outside the vocabulary"),
    ("library", "cannot load rwkv_wkv's library"),
    ("count", "MAX_NEW_TOKENS must be an integer"),
])
def test_cpp_runner_bad_input(aoti_packages, runner, case, message):
    _, directory = aoti_packages
    gpt, step, lib, count, ids = directory / "gpt.pt2", directory / "step.pt2", library_path(), "5", ["1", "2"]
    if case == "swapped":
        gpt, step = step, gpt
    elif case == "vocab":
        ids = ["1", "97"]
    elif case == "library":
        lib = str(directory / "missing.so")
    else:
        count = "five"
    out = subprocess.run([runner, lib, gpt, step, count, *ids], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.startswith("error:") and message in out.stderr, out.stderr
