"""The one parallel-for under every CPU kernel (csrc/common/parallel.h, rwkv_wkv.thread_pool).

What it promises, each tested here: the same bits at every thread count (a chunk's work does not
depend on who runs it); a call returns when every chunk is done, without waiting for a worker that
has not started (here one held asleep on purpose); torch.set_num_threads applies; work too small for
a region runs on the calling thread; calls from several Python threads at once, and after fork(),
are correct and do not hang.
"""

import hashlib
import multiprocessing
import threading
import time

import pytest
import torch

import rwkv_wkv
from rwkv_wkv import RWKV, RWKV7, RWKV7Config, RWKVConfig
from rwkv_wkv.fused_step import FusedStep


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    rwkv_wkv.thread_pool(worker_delay_us=0)


def wkv4_inputs(B=2, T=200, C=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(C, generator=g), torch.randn(C, generator=g), torch.randn(B, T, C, generator=g),
            torch.randn(B, T, C, generator=g))


def wkv7_inputs(B=2, T=40, H=6, N=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    r, w, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(4))
    kk = torch.nn.functional.normalize(torch.randn(B, T, H, N, generator=g), dim=-1)
    a = torch.sigmoid(torch.randn(B, T, H, N, generator=g))
    return r, -torch.nn.functional.softplus(w) - 0.5, k, v, -kk, kk * a


def wkv4_all(td, tf, k, v):
    """Forward (y, state) and every gradient of one call."""
    td, tf, k, v = (t.clone().requires_grad_() for t in (td, tf, k, v))
    y, state = rwkv_wkv.wkv_with_state(td, tf, k, v, None)
    (y.square().sum() + state[:, :2].sum()).backward()
    return [y, state, td.grad, tf.grad, k.grad, v.grad]


def wkv7_all(*inputs):
    inputs = [t.clone().requires_grad_() for t in inputs]
    y, state = rwkv_wkv.wkv7(*inputs, state=None)
    (y.square().sum() + state.sum()).backward()
    return [y, state] + [t.grad for t in inputs]


@pytest.mark.parametrize("threads", [2, 3, 5])
def test_wkv_same_bits_at_every_thread_count(threads):
    torch.set_num_threads(1)
    inputs4, inputs7 = wkv4_inputs(), wkv7_inputs()
    one4, one7 = wkv4_all(*inputs4), wkv7_all(*inputs7)
    torch.set_num_threads(threads)
    before = rwkv_wkv.thread_pool()["regions"]
    many4, many7 = wkv4_all(*inputs4), wkv7_all(*inputs7)
    assert rwkv_wkv.thread_pool()["regions"] > before, "the kernels ran no parallel region"
    for a, b in zip(one4 + one7, many4 + many7):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def mid_model(generation):
    """Large enough that the fused step's products run in parallel regions (over its grain)."""
    torch.manual_seed(0)
    if generation == 7:
        model = RWKV7(RWKV7Config(vocab_size=3000, n_layer=2, n_embd=192, head_size=32, dim_ffn=520))
    else:
        model = RWKV(RWKVConfig(vocab_size=3000, n_layer=2, n_embd=200, dim_ffn=520))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


@pytest.mark.parametrize("generation", [4, 7])
@pytest.mark.parametrize("weights", ["fp32", "bf16", "int8", "q4"])
def test_fused_step_same_bits_at_every_thread_count(generation, weights):
    model = mid_model(generation)
    plan = FusedStep(model, weights=weights)
    tokens = torch.tensor([5, 17, 2999, 0, 42])
    results = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        state = model.init_state(len(tokens))
        before = rwkv_wkv.thread_pool()["regions"]
        logits = [plan.step_(tokens, state) for _ in range(3)]
        if threads > 1:
            assert rwkv_wkv.thread_pool()["regions"] > before, "the fused step ran no parallel region"
        results.append((logits, state))
    for logits, state in results[1:]:
        for a, b in zip(results[0][0], logits):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(results[0][1], state, rtol=0, atol=0)


def test_a_worker_that_has_not_started_is_not_waited_for():
    # Every worker sleeps 2 s after it wakes before it looks for work: a thread the scheduler
    # does not run. The caller takes every chunk itself and returns long before.
    torch.set_num_threads(2)
    td, tf, k, v = wkv4_inputs(B=4, T=256, C=512)
    expected = rwkv_wkv.wkv(td, tf, k, v)  # (starts the worker)
    time.sleep(0.2)  # (it has gone to sleep)
    rwkv_wkv.thread_pool(worker_delay_us=2_000_000, reset=True)
    start = time.perf_counter()
    for _ in range(3):
        y = rwkv_wkv.wkv(td, tf, k, v)
    elapsed = time.perf_counter() - start
    info = rwkv_wkv.thread_pool(worker_delay_us=0)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    assert info["regions"] >= 3 and info["chunks_by_workers"] == 0, info
    assert elapsed < 1.5, f"3 calls took {elapsed:.2f} s: the caller waited for a worker that had not started"


def test_set_num_threads_applies():
    td, tf, k, v = wkv4_inputs(B=4, T=256, C=512)
    torch.set_num_threads(1)
    before = rwkv_wkv.thread_pool()
    rwkv_wkv.wkv(td, tf, k, v)
    after = rwkv_wkv.thread_pool()
    assert after["regions"] == before["regions"] and after["serial_runs"] > before["serial_runs"]
    torch.set_num_threads(3)
    rwkv_wkv.wkv(td, tf, k, v)
    info = rwkv_wkv.thread_pool()
    assert info["regions"] > after["regions"] and info["workers"] >= 2


def test_small_work_runs_on_the_calling_thread():
    torch.set_num_threads(2)
    td, tf, k, v = wkv4_inputs(B=1, T=4, C=128)
    before = rwkv_wkv.thread_pool()
    rwkv_wkv.wkv(td, tf, k, v)
    after = rwkv_wkv.thread_pool()
    assert after["regions"] == before["regions"] and after["serial_runs"] > before["serial_runs"]


def test_calls_from_several_threads_at_once():
    torch.set_num_threads(2)
    inputs = [wkv4_inputs(B=2, T=300, C=256, seed=s) for s in range(4)]
    expected = [rwkv_wkv.wkv(*x) for x in inputs]
    results, errors = {}, []

    def work(i):
        try:
            for _ in range(5):
                results[i] = rwkv_wkv.wkv(*inputs[i])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    for i in range(4):
        torch.testing.assert_close(results[i], expected[i], rtol=0, atol=0)


def digest(t):
    return hashlib.sha256(t.detach().numpy().tobytes()).hexdigest()


def _child(inputs, queue):
    # (nothing of torch's own threaded ops here: torch's OpenMP does not survive fork, ours must)
    y = rwkv_wkv.wkv(*inputs)
    queue.put((digest(y), rwkv_wkv.thread_pool()["regions"]))


def test_fork_after_use():
    torch.set_num_threads(2)
    inputs = wkv4_inputs(B=4, T=256, C=512)
    expected = digest(rwkv_wkv.wkv(*inputs))  # (the parent's pool has run)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(inputs, queue))
    child.start()
    child.join(timeout=120)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung in a parallel region")
    assert child.exitcode == 0
    result, regions = queue.get(timeout=10)
    assert result == expected and regions >= 1  # the child's fresh pool ran it in parallel
