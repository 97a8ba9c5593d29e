"""The RWKV-7 language model: against ChatRWKV's ``rwkv`` package (an implementation nobody here
wrote), RNN mode = GPT mode, segments = one pass, gradients (state included), dtypes,
initialisation, meta-device construction, state tuning."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from model7_helpers import TINY, random_model, rel  # noqa: E402

import rwkv_wkv
from rwkv_wkv import RWKV7, RWKV7Config
from rwkv_wkv.rwkv7.model import wkv_state

RUNNER = Path(__file__).parent / "chatrwkv7_runner.py"
# ---- against ChatRWKV's rwkv package ---------------------------------------------------------
@pytest.fixture(scope="module")
def chatrwkv(tmp_path_factory):
    pytest.importorskip("rwkv", reason="ChatRWKV's rwkv package (pip install 'rwkv_wkv[test]')")
    d = tmp_path_factory.mktemp("chatrwkv7")
    model = random_model()
    model.save_rwkv_lm(d / "model.pth")
    g = torch.Generator().manual_seed(1)
    ids = {"prompt": torch.randint(0, 97, (37,), generator=g).tolist(),
           "decode": torch.randint(0, 97, (9,), generator=g).tolist()}
    (d / "ids.json").write_text(json.dumps(ids))
    r = subprocess.run([sys.executable, str(RUNNER), str(d / "model.pth"), str(d / "ids.json"), str(d / "out.pt")],
                       env={**os.environ, "RWKV_V7_ON": "1", "RWKV_JIT_ON": "1", "RWKV_CUDA_ON": "0"},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return model, ids, torch.load(d / "out.pt")


def test_prompt_logits_match_chatrwkv(chatrwkv):
    model, ids, ref = chatrwkv
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids["prompt"]]))
    assert rel(logits[0], ref["prompt"]) < 1e-4


def test_step_by_step_decoding_matches_chatrwkv(chatrwkv):
    model, ids, ref = chatrwkv
    with torch.no_grad():
        _, _, state = model(torch.tensor([ids["prompt"]]), return_state=True)
        got = [model.step_(torch.tensor([t]), state)[0] for t in ids["decode"]]
    assert rel(torch.stack(got), ref["decode"]) < 1e-4


def test_the_check_can_fail(chatrwkv):
    """A one-parameter change in the last block moves the logits well beyond the tolerance."""
    model, ids, ref = chatrwkv
    other = random_model()
    with torch.no_grad():
        other.blocks[2].att.r_k.mul_(1.5)
        logits, _ = other(torch.tensor([ids["prompt"]]))
    assert rel(logits[0], ref["prompt"]) > 1e-3


# ---- the model's own consistency ---------------------------------------------------------------
def test_rnn_mode_equals_gpt_mode():
    model = random_model()
    idx = torch.randint(0, 97, (3, 21))
    with torch.no_grad():
        logits, _, final = model(idx, return_state=True)
        state = model.init_state(3)
        steps = [model.step_(idx[:, t], state) for t in range(idx.shape[1])]
    assert rel(torch.stack(steps, 1), logits) < 1e-5
    assert rel(state, final) < 1e-5


def test_functional_step_leaves_the_state():
    model = random_model()
    state = model.init_state(2)
    with torch.no_grad():
        model.step_(torch.tensor([1, 2]), state)
        before = state.clone()
        _, new = model.step(torch.tensor([3, 4]), state)
    assert torch.equal(state, before) and not torch.equal(new, before)


@pytest.mark.parametrize("split", [1, 7, 16])
def test_segments_equal_one_pass_values_and_gradients(split):
    model = random_model(dtype=torch.float64)
    idx = torch.randint(0, 97, (2, 24))
    targets = torch.randint(0, 97, (2, 24))
    model.train()
    _, loss_one = model(idx, targets)
    grads_one = torch.autograd.grad(loss_one, list(model.parameters()))
    _, _, s = model(idx[:, :split], return_state=True)
    l1, _ = model(idx[:, :split])
    l2, _ = model(idx[:, split:], state=s)
    logits = torch.cat([l1, l2], 1)
    loss_two = torch.nn.functional.cross_entropy(logits.view(-1, 97), targets.view(-1))
    model.config.l2wrap = False
    _, loss_plain = model(idx, targets)
    grads_two = torch.autograd.grad(loss_two, list(model.parameters()))
    grads_plain = torch.autograd.grad(loss_plain, list(model.parameters()))
    assert abs(loss_two.item() - loss_one.item()) < 1e-12
    for a, b in zip(grads_two, grads_plain):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    assert any((a - b).abs().max() > 0 for a, b in zip(grads_one, grads_plain))  # L2Wrap adds its part


def _state_gradcheck(fast_mode):
    """The gradient of the logits with respect to the incoming state (shifts and WKV state)."""
    model = random_model(dtype=torch.float64, n_layer=2, n_embd=32, head_size=16, dim_ffn=64, decay_lora=8,
                         a_lora=8, v_lora=8, gate_lora=8, vocab_size=11)
    idx = torch.randint(0, 11, (2, 5))
    with torch.no_grad():
        _, _, s0 = model(torch.randint(0, 11, (2, 4)), return_state=True)
    s0.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: model(idx, state=s, return_state=True)[::2], (s0,), eps=1e-6,
                                    atol=1e-6, fast_mode=fast_mode)


def test_state_gradient_gradcheck_fast():
    """Every entry of the state's gradient, through random projections (gradcheck's fast mode: a
    few model calls instead of two per state entry); the entry-by-entry check is the slow sibling."""
    _state_gradcheck(fast_mode=True)


@pytest.mark.slow
def test_state_gradient_gradcheck():
    """Entry by entry: two model calls per state entry (2 304 entries), minutes on a busy machine."""
    _state_gradcheck(fast_mode=False)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 0.1), (torch.float16, 2e-2), (torch.float64, 1e-5)])
def test_dtypes(dtype, tol):
    ref = random_model()
    model = random_model(dtype=dtype)
    idx = torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        want, _ = ref(idx)
        got, _, state = model(idx, return_state=True)
        s = model.init_state(2)
        steps = torch.stack([model.step_(idx[:, t], s) for t in range(idx.shape[1])], 1)
    assert got.dtype == dtype and state.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert rel(got, want) < tol
    assert rel(steps, want) < tol


def test_long_and_odd_lengths_and_empty_batch():
    model = random_model()
    with torch.no_grad():
        for T in (1, 33, 300):
            logits, _ = model(torch.randint(0, 97, (1, T)))
            assert logits.shape == (1, T, 97) and torch.isfinite(logits).all()
        logits, _, state = model(torch.zeros(0, 5, dtype=torch.long), return_state=True)
    assert logits.shape == (0, 5, 97) and state.shape == (0, 3, 66, 128)


def test_wkv_state_is_a_view_of_the_state():
    state = torch.zeros(2, 3, 66, 128)
    wkv_state(state[:, 1]).fill_(1.0)
    assert state[:, 1, 2:].eq(1).all() and state[:, 1, :2].eq(0).all() and state[:, 0].eq(0).all()
    assert wkv_state(state).shape == (2, 3, 2, 64, 64)


def test_generate_greedy_equals_argmax_of_gpt_mode():
    model = random_model()
    prompt = torch.randint(0, 97, (2, 6))
    out = model.generate(prompt, 8, temperature=0.0)
    with torch.no_grad():
        logits, _ = model(out[:, :-1])
    assert torch.equal(out[:, 6:], logits[:, 5:].argmax(-1))


def test_bad_ids_and_config():
    model = random_model()
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 97\)"):
        model(torch.tensor([[0, 97]]))
    with pytest.raises(ValueError, match="multiple of head_size"):
        RWKV7Config(n_embd=100, head_size=64)
    with pytest.raises(ValueError, match="n_layer must be a positive integer"):
        RWKV7Config(n_layer=0)


# ---- initialisation --------------------------------------------------------------------------
def test_rwkv_lm_initialisation():
    torch.manual_seed(0)
    model = RWKV7(RWKV7Config(**{**TINY, "n_layer": 4}))
    b = model.blocks
    assert b[1].att.output.weight.eq(0).all() and b[1].ffn.value.weight.eq(0).all()
    assert b[0].att.w1.eq(0).all() and not b[0].att.w2.eq(0).all()
    torch.testing.assert_close(b[3].att.ln_x.weight, torch.ones(128))
    torch.testing.assert_close(b[0].att.ln_x.weight, torch.full((128,), 0.25 ** 0.7))
    assert model.emb.weight.abs().max() <= 1e-4
    # the key matrix: orthogonal with gain 0.1
    k = b[2].att.key.weight
    torch.testing.assert_close(k @ k.T, 0.01 * torch.eye(128), atol=1e-5, rtol=0)
    # block 0's value residual: buffers (in the state dict, not trained)
    names = dict(model.named_parameters())
    assert "blocks.0.att.v1" not in names and "blocks.1.att.v1" in names
    assert "blocks.0.att.v1" in model.state_dict()


def test_meta_construction_then_reset_equals_normal_construction():
    torch.manual_seed(3)
    normal = RWKV7(RWKV7Config(**TINY))
    with torch.device("meta"):
        meta = RWKV7(RWKV7Config(**TINY))
    assert all(p.device.type == "meta" for p in meta.parameters())
    meta.to_empty(device="cpu")
    torch.manual_seed(3)
    meta.reset_parameters()
    for (n, a), (_, b) in zip(normal.state_dict().items(), meta.state_dict().items()):
        assert torch.equal(a, b), n


# ---- state tuning ----------------------------------------------------------------------------
def test_state_tuning_trains_only_the_state_and_lowers_the_loss(tmp_path):
    model = random_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.enable_state_tuning().train()
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["initial_state"]
    opt = model.configure_optimizers(1e-2)
    idx = torch.randint(0, 97, (4, 16))
    losses = []
    for _ in range(15):
        opt.zero_grad()
        _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert after["initial_state"].abs().max() > 0
    # the state file, loaded into a fresh model, gives the same logits; generation starts from it
    model.eval()
    model.save_tuned_state(tmp_path / "state.pth")
    fresh = random_model().load_tuned_state(tmp_path / "state.pth")
    # loading a state is not a request to train it: the others keep their requires_grad
    assert all(p.requires_grad == (n != "initial_state") for n, p in fresh.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(fresh(idx)[0], model(idx)[0])
        state = fresh.init_state(4)
        torch.testing.assert_close(wkv_state(state)[0], model.initial_state)
        torch.testing.assert_close(fresh.step_(idx[:, 0], state), model(idx[:, :1])[0][:, 0])
    # the state file is small: the WKV state only
    assert os.path.getsize(tmp_path / "state.pth") < 3 * 64 * 64 * 2 * 4 + 4096
    # the RWKV-LM file has no tuned state in it
    model.save_rwkv_lm(tmp_path / "m.pth")
    assert "initial_state" not in torch.load(tmp_path / "m.pth")


def test_tuned_state_file_errors(tmp_path):
    model = random_model()
    with pytest.raises(FileNotFoundError):
        model.load_tuned_state(tmp_path / "none.pth")
    torch.save({"x": 1}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a tuned-state file"):
        model.load_tuned_state(tmp_path / "bad.pth")
    other = random_model(n_layer=2).enable_state_tuning()
    other.save_tuned_state(tmp_path / "two.pth")
    with pytest.raises(ValueError, match=r"needs \(3, 2, 64, 64\)"):
        model.load_tuned_state(tmp_path / "two.pth")
    with pytest.raises(ValueError, match="no tuned state"):
        model.save_tuned_state(tmp_path / "x.pth")


def test_public_names():
    assert rwkv_wkv.RWKV7 is RWKV7 and rwkv_wkv.RWKV7Config is RWKV7Config
    assert callable(rwkv_wkv.from_checkpoint)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_equals_cpu_and_the_graphed_step_equals_eager():
    model = random_model()
    idx = torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        want, _, state = model(idx, return_state=True)
        cuda = random_model().cuda()
        got, _, state_cuda = cuda(idx.cuda(), return_state=True)
    assert rel(got.cpu(), want) < 1e-4 and rel(state_cuda.cpu(), state) < 1e-4
    prompt = idx[:, :7].cuda()
    graphed = cuda.generate(prompt, 12, temperature=0, cuda_graph=True)
    eager = cuda.generate(prompt, 12, temperature=0, cuda_graph=False)
    assert torch.equal(graphed, eager)
