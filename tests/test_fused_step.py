"""The fused single-token step (torch.ops.wkv.rwkv4_step / rwkv7_step, rwkv_wkv.fused_step)
against the Python step it replaces, for both generations: every instruction set, batch sizes
around the kernel's groups of 4, widths that are no multiple of a SIMD vector, each weight format
within its stated error, generation identical in fp32, and clear errors."""

import copy

import pytest
import torch

import rwkv_wkv
from rwkv_wkv import RWKV, RWKV7, RWKV7Config, RWKVConfig
from rwkv_wkv.fused_step import FusedStep, dequantize_q4, quantize_q4, quantize_rows

ISAS = [isa for isa in ("avx512", "avx2", "scalar") if isa in rwkv_wkv.build_info()["cpu_kernels"]]
# the largest |logit difference| / max |logit| against the float32 Python step (measured: bf16 ~8e-3,
# fp16 ~1e-3, int8 ~3e-2 on these random models; the bounds leave room, and still fail on a wrong kernel)
FORMAT_ERROR = {"fp32": 1e-5, "bf16": 3e-2, "fp16": 5e-3, "int8": 1e-1, "q4": 6e-1}
# q4's error against fp32 (measured ~0.4 on these random models) is loose; its kernels are tested
# against the Python step on the q4 values themselves (test_q4_equals_the_python_step_on_its_values)


def random_model(C=40, F=72, L=3, V=301, seed=0, generation=4):
    torch.manual_seed(seed)
    if generation == 7:  # head size 8 and low-rank sizes 8 / 5 / 12: no multiple of a SIMD vector
        model = RWKV7(RWKV7Config(vocab_size=V, n_layer=L, n_embd=C, head_size=8, dim_ffn=F, decay_lora=8,
                                  a_lora=5, v_lora=12, gate_lora=8)).eval()
    else:
        model = RWKV(RWKVConfig(vocab_size=V, n_layer=L, n_embd=C, dim_ffn=F)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.fixture(autouse=True)
def restore_isa():
    yield
    rwkv_wkv.cpu_isa("auto")


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("generation", [4, 7])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("B", [1, 3, 4, 6])
def test_fused_equals_python_step(isa, B, generation):
    rwkv_wkv.cpu_isa(isa)
    model = random_model(generation=generation)
    plan = FusedStep(model)
    ref_state = model.init_state(B)
    state = ref_state.clone()
    g = torch.Generator().manual_seed(B)
    for _ in range(6):
        tokens = torch.randint(0, 301, (B,), generator=g)
        with torch.no_grad():
            want = model.step_(tokens, ref_state)
        got = plan.step_(tokens, state)
        assert got.dtype == torch.float32 and got.shape == (B, 301)
        assert rel(got, want) < 1e-5
    assert rel(state, ref_state) < 1e-5


@pytest.mark.parametrize("shape", [(16, 64, 1, 17, 4), (33, 50, 2, 5, 4), (128, 512, 2, 1000, 4), (40, 24, 2, 9, 4),
                                   (16, 64, 1, 17, 7), (128, 512, 2, 1000, 7), (40, 24, 2, 9, 7)])
# int8 / q4: the integer dot product's 64-blocks and their tails (q4: its padded last block)
@pytest.mark.parametrize("weights", ["fp32", "int8", "q4"])
def test_shapes(shape, weights):
    C, F, L, V, generation = shape
    model = random_model(C, F, L, V, generation=generation)
    plan = FusedStep(model, weights=weights)
    state, ref_state = model.init_state(2), model.init_state(2)
    tokens = torch.tensor([1, V - 1])
    with torch.no_grad():
        want = model.step_(tokens, ref_state)
    assert rel(plan.step_(tokens, state), want) < FORMAT_ERROR[weights]


@pytest.mark.parametrize("generation", [4, 7])
@pytest.mark.parametrize("weights", ["bf16", "fp16", "int8", "q4"])
def test_weight_formats_within_their_error(weights, generation):
    model = random_model(C=128, F=512, L=2, V=500, generation=generation)
    plan = FusedStep(model, weights=weights)
    shrink = {"bf16": 1.9, "fp16": 1.9, "int8": 3.5, "q4": 5.5}[weights]
    assert plan.weight_bytes < FusedStep(model).weight_bytes / shrink
    state, ref_state = model.init_state(3), model.init_state(3)
    worst = 0.0
    for t in range(5):
        tokens = torch.tensor([t, 2 * t + 1, 499 - t])
        with torch.no_grad():
            want = model.step_(tokens, ref_state)
        worst = max(worst, rel(plan.step_(tokens, state), want))
    assert 0 < worst < FORMAT_ERROR[weights]


def test_int8_quantisation_is_per_row():
    w = torch.randn(5, 33) * torch.tensor([1e-3, 1.0, 10.0, 0.0, 5.0])[:, None]
    q, s = quantize_rows(w)
    assert q.dtype == torch.int8 and s.shape == (5,)
    assert q.abs().max() == 127
    torch.testing.assert_close(q.float() * s[:, None], w, atol=(s / 2 + 1e-12)[:, None].expand_as(w).max(), rtol=0)
    assert torch.equal(q[3], torch.zeros(33, dtype=torch.int8))


def test_q4_quantisation():
    w = torch.randn(4, 100) * torch.tensor([1e-3, 1.0, 0.0, 5.0])[:, None]
    packed, scales = quantize_q4(w)
    assert packed.dtype == torch.uint8 and packed.shape == (4, 64) and scales.shape == (4, 4)
    back = dequantize_q4(packed, scales, 100)
    blocks = torch.nn.functional.pad(w, (0, 28)).view(4, 4, 32)
    extreme = blocks.abs().amax(-1)
    # each block's largest magnitude is exactly -8 d; the rest within half a step (a value of the
    # other sign near that magnitude clamps to 7: within one step)
    assert torch.equal(back.abs().amax(-1), w.abs().amax(-1))
    err = torch.nn.functional.pad(back - w, (0, 28)).view(4, 4, 32).abs().amax(-1)
    assert (err <= extreme / 8 + 1e-12).all()
    assert torch.equal(back[2], torch.zeros(100))
    assert (packed[:, 48:] >> 4 == 8).all()  # the padded inputs 112-127 are q = 0 (nibble 8)


def q4_values(model):
    """A copy of the model whose matrices hold the values the q4 format stands for."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(dequantize_q4(*quantize_q4(m.weight), m.weight.shape[1]))
        if model.generation == 7:  # the low-rank pairs, which the fused step reads transposed
            for b in ref.blocks:
                for name in ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2"):
                    p = getattr(b.att, name)
                    p.copy_(dequantize_q4(*quantize_q4(p.t()), p.shape[0]).t())
    return ref


@pytest.mark.parametrize("generation", [4, 7])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("B", [1, 3, 5])
def test_q4_equals_the_python_step_on_its_values(isa, B, generation):
    """The q4 kernels against the Python step on the dequantized weights: exact in float32 (AVX2,
    scalar; AVX-512 without VNNI), within the inputs' 8-bit quantization with VNNI (measured 1-3e-2)."""
    rwkv_wkv.cpu_isa(isa)
    model = random_model(generation=generation)
    plan, ref = FusedStep(model, "q4"), q4_values(model)
    with torch.no_grad():
        _, _, ref_state = model(torch.randint(0, 301, (B, 5)), return_state=True)
    state = ref_state.clone()
    vnni = isa == "avx512" and "avx512_vnni" in open("/proc/cpuinfo").read()  # (Linux names the flag so)
    bound = 6e-2 if vnni else 1e-5
    for t in range(3):
        tokens = torch.randint(0, 301, (B,), generator=torch.Generator().manual_seed(t))
        with torch.no_grad():
            want = ref.step_(tokens, ref_state)
        assert rel(plan.step_(tokens, state), want) < bound
    assert rel(state, ref_state) < bound


@pytest.mark.parametrize("generation", [4, 7])
def test_fp32_generation_is_identical_to_the_python_step(generation):
    model = random_model(C=64, F=128, L=2, V=200, generation=generation)
    prompt = torch.randint(0, 200, (2, 5))
    want = model.generate(prompt, 30, temperature=1.0, top_p=0.9, seed=3)
    got = model.generate(prompt, 30, temperature=1.0, top_p=0.9, seed=3, fused_step=FusedStep(model))
    assert torch.equal(got, want)
    assert torch.equal(model.generate(prompt, 30, temperature=1.0, top_p=0.9, seed=3, fused_step=True), want)
    int8 = model.generate(prompt, 30, temperature=0, fused_step="int8")
    assert int8.shape == want.shape and isinstance(model.fused_step("int8"), FusedStep)


def test_clear_errors():
    model = random_model()
    with pytest.raises(ValueError, match="weights must be one of fp32, bf16, fp16, int8, q4"):
        FusedStep(model, weights="int4")
    with pytest.raises(ValueError, match="the fused step runs RWKV-4 and RWKV-7 models, got Linear"):
        FusedStep(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="the fused step computes in float32"):
        FusedStep(random_model().double())
    plan = FusedStep(model)
    state = model.init_state(1)
    x = model.emb.weight[:1].detach()
    vectors = list(plan.vectors)
    vectors[3] = vectors[3].double()
    with pytest.raises(ValueError, match=r"layer 0 ln1.bias must have dtype torch.float32"):
        torch.ops.wkv.rwkv4_step(x, state, vectors, plan.matrices, plan.scales, 1e-5, 1e-5)
    matrices = list(plan.matrices)
    matrices[0] = matrices[0].to(torch.int8)
    with pytest.raises(ValueError, match=r"layer 0 att.key's scale must have shape \(rows,\) = \(40,\), got \(0,\)"):
        torch.ops.wkv.rwkv4_step(x, state, plan.vectors, matrices, plan.scales, 1e-5, 1e-5)
    matrices[0] = quantize_q4(plan.matrices[0])[0]
    with pytest.raises(ValueError, match=r"layer 0 att.key's scale must have shape \(rows, 2 \* ceil\(cols / 64\)\)"):
        torch.ops.wkv.rwkv4_step(x, state, plan.vectors, matrices, plan.scales, 1e-5, 1e-5)
    matrices[0] = plan.matrices[0].to(torch.uint8)
    with pytest.raises(ValueError, match=r"layer 0 att.key must have shape \(rows, ceil\(cols / 64\) \* 32\)"):
        torch.ops.wkv.rwkv4_step(x, state, plan.vectors, matrices, plan.scales, 1e-5, 1e-5)
    with pytest.raises(ValueError, match=r"state must have shape \(B, L, 5, C\)"):
        torch.ops.wkv.rwkv4_step(x, model.init_state(2), plan.vectors, plan.matrices, plan.scales, 1e-5, 1e-5)
    with pytest.raises(ValueError, match="matrices must hold 7 per layer and the head"):
        torch.ops.wkv.rwkv4_step(x, state, plan.vectors, plan.matrices[:-2], plan.scales[:-2], 1e-5, 1e-5)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="the fused step is a CPU kernel"):
            FusedStep(random_model().cuda())


def test_generate_cli_formats(tmp_path, capsys):
    from rwkv_wkv.generate import main

    model = random_model(V=256)
    model.save_rwkv_lm(tmp_path / "m.pth")
    args = [str(tmp_path / "m.pth"), "--prompt", "hi", "--temperature", "0", "--max-new-tokens", "8", "--device",
            "cpu"]
    assert main(args) == 0
    fused = capsys.readouterr()
    assert "(fused step)" in fused.err
    assert main([*args, "--no-fused"]) == 0
    python = capsys.readouterr()
    assert "(python step)" in python.err and python.out == fused.out
    assert main([*args, "--dtype", "int8"]) == 0
    assert "cpu int8 (fused step)" in capsys.readouterr().err
    assert main([*args, "--dtype", "q4"]) == 0
    assert "cpu q4 (fused step)" in capsys.readouterr().err
    assert main([*args, "--dtype", "int8", "--no-fused"]) == 2
    assert "error: --dtype int8 is a format of the fused step" in capsys.readouterr().err
    random_model(C=16, F=32, L=1, V=256, generation=7).save_rwkv_lm(tmp_path / "m7.pth")
    assert main([str(tmp_path / "m7.pth"), "--prompt", "hi", "--dtype", "int8", "--device", "cpu"]) == 0
    assert "RWKV-7 L1-d16" in capsys.readouterr().err
    assert main([str(tmp_path / "m7.pth"), "--prompt", "hi", "--dtype", "fp64", "--device", "cpu"]) == 0
    assert "(python step)" in capsys.readouterr().err
