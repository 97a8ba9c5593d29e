"""rwkv_wkv.patch_transformers(): transformers' RwkvForCausalLM on our kernel equals itself on
its own WKV (logits, every gradient, cached greedy generation), runs past context_length, and
is undone by unpatch_transformers()."""

from __future__ import annotations

import pytest
import torch

import rwkv_wkv

transformers = pytest.importorskip("transformers")
modeling = pytest.importorskip("transformers.models.rwkv.modeling_rwkv")

CONTEXT = 16


def make_model(seed=0, dtype=torch.float32, layers=2, hidden=32, vocab=50):
    torch.manual_seed(seed)
    config = transformers.RwkvConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                     attention_hidden_size=hidden, intermediate_size=2 * hidden,
                                     context_length=CONTEXT, rescale_every=0)
    model = transformers.RwkvForCausalLM(config)
    with torch.no_grad():  # spread the decays and bonuses so every channel behaves differently
        for block in model.rwkv.blocks:
            block.attention.time_decay.copy_(torch.linspace(-3, 1, hidden) + 0.3 * torch.randn(hidden))
            block.attention.time_first.copy_(0.5 * torch.randn(hidden))
    return model.to(dtype)


@pytest.fixture(autouse=True)
def always_unpatch():
    yield
    rwkv_wkv.unpatch_transformers()


def logits_and_grads(model, ids, patched):
    (rwkv_wkv.patch_transformers if patched else rwkv_wkv.unpatch_transformers)()
    model.zero_grad()
    out = model(ids, labels=ids)
    out.loss.backward()
    # No gradient = a zero one (T = 1 without a state: transformers' loop never uses time_decay).
    grads = {n: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for n, p in model.named_parameters()}
    return out.logits.detach(), grads


def assert_close_rel(a, b, rel, what):
    scale = b.abs().max().clamp_min(1e-12)
    err = (a.float() - b.float()).abs().max() / scale
    assert err <= rel, f"{what}: relative error {err:.3g} > {rel}"


@pytest.mark.parametrize("T", [1, 7, 40])  # 40 > context_length
def test_logits_and_every_gradient_equal(T):
    model = make_model()
    model.train()
    ids = torch.randint(0, 50, (2, T), generator=torch.Generator().manual_seed(T))
    ref_logits, ref_grads = logits_and_grads(model, ids, patched=False)
    logits, grads = logits_and_grads(model, ids, patched=True)
    assert_close_rel(logits, ref_logits, 1e-5, "logits")
    for name in ref_grads:
        if ref_grads[name].abs().max() == 0:
            assert grads[name].abs().max() == 0, name
        else:
            assert_close_rel(grads[name], ref_grads[name], 1e-5, name)


def test_the_patched_model_really_calls_the_kernel(monkeypatch):
    """A test that could not tell the two paths apart would prove nothing."""
    calls = []
    real = rwkv_wkv.transformers_patch.wkv_with_state
    monkeypatch.setattr(rwkv_wkv.transformers_patch, "wkv_with_state", lambda *a: calls.append(1) or real(*a))
    model = make_model().eval()
    rwkv_wkv.patch_transformers()
    assert rwkv_wkv.is_transformers_patched()
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))
    assert len(calls) == 2  # one per layer
    rwkv_wkv.unpatch_transformers()
    assert not rwkv_wkv.is_transformers_patched()
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))
    assert len(calls) == 2


def test_cached_greedy_generation_gives_the_same_tokens():
    model = make_model(seed=1, layers=3).eval()
    prompt = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    kwargs = dict(max_new_tokens=30, do_sample=False, use_cache=True, pad_token_id=0)
    with torch.no_grad():
        rwkv_wkv.unpatch_transformers()
        expected = model.generate(prompt, **kwargs)
        rwkv_wkv.patch_transformers()
        got = model.generate(prompt, **kwargs)
    assert got.shape[1] == prompt.shape[1] + 30  # past context_length (16) too
    assert torch.equal(got, expected)


def test_state_in_and_out_matches_one_pass():
    """Two cached segments give the logits of one pass (the state crosses the patched op)."""
    model = make_model(seed=2).eval()
    rwkv_wkv.patch_transformers()
    ids = torch.randint(0, 50, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = model(ids).logits
        first = model(ids[:, :10], use_cache=True)
        second = model(ids[:, 10:], state=first.state, use_cache=True)
    assert_close_rel(torch.cat([first.logits, second.logits], dim=1), whole, 1e-5, "segments")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_models(dtype):
    model32 = make_model(seed=3).eval()
    model16 = make_model(seed=3, dtype=dtype).eval()
    ids = torch.randint(0, 50, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        rwkv_wkv.unpatch_transformers()
        ref16 = model16(ids).logits.float()
        ref32 = model32(ids).logits
        rwkv_wkv.patch_transformers()
        got = model16(ids).logits
    assert got.dtype == dtype
    # both 16-bit paths are as far from the float32 model as 16-bit rounding makes them
    tol = 3 * (ref16 - ref32).abs().max().item() + 1e-2
    assert (got.float() - ref32).abs().max().item() <= tol
    model16.train()
    model16(ids, labels=ids).loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model16.parameters())


def test_patch_is_idempotent_and_undone():
    original = modeling.rwkv_linear_attention
    rwkv_wkv.patch_transformers()
    rwkv_wkv.patch_transformers()
    assert modeling.rwkv_linear_attention is rwkv_wkv.transformers_patch.rwkv_linear_attention
    rwkv_wkv.unpatch_transformers()
    assert modeling.rwkv_linear_attention is original
    rwkv_wkv.unpatch_transformers()  # a no-op
    assert modeling.rwkv_linear_attention is original


def test_unexpected_transformers_code_is_refused(monkeypatch):
    original = modeling.rwkv_linear_attention

    def other(time_decay, time_first, key, value, state=None):  # a different signature
        raise AssertionError("never called")

    monkeypatch.setattr(modeling, "rwkv_linear_attention", other)
    with pytest.raises(RuntimeError, match="nothing was patched"):
        rwkv_wkv.patch_transformers()
    assert modeling.rwkv_linear_attention is other
    monkeypatch.delattr(modeling, "rwkv_linear_attention")
    with pytest.raises(RuntimeError, match="has no rwkv_linear_attention"):
        rwkv_wkv.patch_transformers()
    monkeypatch.setattr(modeling, "rwkv_linear_attention", original, raising=False)
    monkeypatch.setattr(modeling.RwkvSelfAttention, "forward", lambda self, hidden, state=None, use_cache=False: None)
    with pytest.raises(RuntimeError, match="does not call"):
        rwkv_wkv.patch_transformers()
    assert not rwkv_wkv.is_transformers_patched()


def test_empty_batch_works_patched_as_unpatched():
    """A batch of size 0 gives what transformers gives unpatched (logits and gradients' shapes)."""
    model = make_model().train()
    ids = torch.zeros((0, 5), dtype=torch.long)
    shapes = []
    for patched in (False, True):
        (rwkv_wkv.patch_transformers if patched else rwkv_wkv.unpatch_transformers)()
        out = model(ids, use_cache=False)
        out.logits.sum().backward()
        shapes.append(out.logits.shape)
    assert shapes == [(0, 5, 50), (0, 5, 50)]
