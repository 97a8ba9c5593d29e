"""The RWKV-7 conformance table: every PyTorch transform x every entry point, exact or a named
error (as tests/rwkv4/test_transforms.py for RWKV-4).

Entry points: ``wkv7`` (state in and out), ``WKV7Function.apply`` and RWKV-LM's drop-in
``RUN_CUDA_RWKV7g`` ((B, T, C), y only). Each cell runs float64 on the CPU against an independent
differentiable reference, the *transition form* of the recurrence (S_t = S_{t-1} M_t + v_t k_t^T
with M_t = diag(d_t) + a_t b_t^T, a matrix product per step: neither the kernels' arithmetic nor
wkv7_naive's), and matches it (``TOL``). No cell may return something else. ``EXPECTED`` is also
the table of docs/op7.md (``test_docs_table``).
"""

from __future__ import annotations

import pathlib

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.func as tf_
from wkv7_helpers import BACKENDS7, inputs, select7, state

import rwkv_wkv

B, T, H, N = 1, 4, 1, 3
ENTRIES = ["wkv7", "WKV7Function", "RUN_CUDA_RWKV7g"]
TRANSFORMS = [
    "eager", "grad", "gradgrad", "gradcheck_fwd_batched", "dual", "jvp", "jacfwd", "jacrev",
    "hessian", "vmap", "vmap_grad", "grad_grad", "compile", "export", "export_strict",
    "export_grad", "export_strict_grad", "autocast_bf16", "meta", "empty",
]
ERRORS: dict = {}  # every cell is exact
EXPECTED = {(e, t): ERRORS.get((e, t), "exact") for e in ENTRIES for t in TRANSFORMS}
COLUMNS = {
    "eager": "forward values",
    "grad": "first-order gradients (`torch.autograd.grad`), the state's included",
    "gradgrad": "double backward: `gradgradcheck`, and Hessian-vector products vs the reference",
    "gradcheck_fwd_batched": "`gradcheck(check_forward_ad=True, check_batched_grad=True)`",
    "dual": "`torch.autograd.forward_ad` dual tensors",
    "jvp": "`torch.func.jvp`", "jacfwd": "`torch.func.jacfwd`", "jacrev": "`torch.func.jacrev`",
    "hessian": "`torch.func.hessian`", "vmap": "`torch.func.vmap`",
    "vmap_grad": "`vmap(grad(f))`", "grad_grad": "`grad(grad(f))` (torch.func)",
    "compile": "`torch.compile(fullgraph=True, dynamic=True)`, forward and backward",
    "export": "`torch.export` non-strict, no grad, dynamic B and T (run at other T)",
    "export_strict": "`torch.export` strict, no grad, dynamic B and T",
    "export_grad": "`torch.export` non-strict with grad enabled (w a Parameter), dynamic B and T",
    "export_strict_grad": "`torch.export` strict with grad enabled, dynamic B and T",
    "autocast_bf16": "under `torch.autocast(\"cpu\", torch.bfloat16)` (no autocast policy: float64 stays)",
    "meta": "meta tensors (shapes only)",
    "empty": "B = 0 and T = 0 (T = 0 with a state: the state passes through, gradient included)",
}
TOL = dict(rtol=1e-8, atol=1e-10)


def transition_form(r, w, k, v, a, b, s0=None):
    """The reference: y_t = S_t r_t with S_t = S_{t-1} (diag(d_t) + a_t b_t^T) + v_t k_t^T."""
    Bn, Tn, Hn, Nn = r.shape
    S = r.new_zeros((Bn, Hn, Nn, Nn)) if s0 is None else s0
    d = torch.exp(-torch.exp(w))
    eye = torch.eye(Nn, dtype=r.dtype)
    ys = []
    for t in range(Tn):
        M = eye * d[:, t, :, None, :] + a[:, t, :, :, None] * b[:, t, :, None, :]
        S = S @ M + v[:, t, :, :, None] * k[:, t, :, None, :]
        ys.append(torch.einsum("bhij,bhj->bhi", S, r[:, t]))
    y = torch.stack(ys, 1) if ys else r.new_zeros(r.shape)
    return y, S


def _inputs(entry, batch=B, length=T, seed=0):
    xs = inputs(batch, length, H, N, seed=seed)
    if entry == "RUN_CUDA_RWKV7g":
        return tuple(x.reshape(batch, length, H * N) for x in xs)
    return (*xs, state(batch, H, N, seed=seed + 1))


def _entry_fn(entry):
    if entry == "wkv7":
        return rwkv_wkv.wkv7, transition_form
    if entry == "WKV7Function":
        return rwkv_wkv.WKV7Function.apply, transition_form
    if entry == "RUN_CUDA_RWKV7g":
        def ref(*xs):
            Bn, Tn, C = xs[0].shape
            return transition_form(*[x.reshape(Bn, Tn, C // N, N) for x in xs])[0].reshape(Bn, Tn, C)
        return (lambda *xs: rwkv_wkv.RUN_CUDA_RWKV7g(*xs, head_size=N)), ref
    raise KeyError(entry)


def _flat(x):
    return [x] if isinstance(x, torch.Tensor) else [t for item in x for t in _flat(item)]


def _close(got, want):
    got, want = _flat(got), _flat(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape, (g.shape, w.shape)
        torch.testing.assert_close(g.double(), w.double(), **TOL)


def _loss(out):
    return sum((o.double() * (1.0 + 0.1 * i)).sin().sum() for i, o in enumerate(_flat(out)))


def _scalar(f):
    return lambda *xs: _loss(f(*xs))


def _req(xs):
    return tuple(x.detach().clone().requires_grad_() for x in xs)


def _tangents(xs, seed=3):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(x.shape, generator=g, dtype=x.dtype) for x in xs)


class _OpModule(torch.nn.Module):
    """An entry point with w as a Parameter (as a model's decay would be)."""

    def __init__(self, f, w, grad):
        super().__init__()
        self.f = f
        self.w = torch.nn.Parameter(w.clone(), requires_grad=grad)

    def forward(self, r, k, v, a, b, state=None):
        rest = () if state is None else (state,)
        return self.f(r, self.w.expand_as(r), k, v, a, b, *rest)


def _export_cell(entry, f, ref, strict, grad):
    from torch.export import Dim, export

    Bd, Td = Dim("B", min=1, max=64), Dim("T", min=2, max=4096)
    xs = _inputs(entry, 2, 20, seed=5)
    w = xs[1][:1, :1].clone()  # one decay per channel, broadcast over (B, T)
    m = _OpModule(f, w, grad)
    args = (xs[0], *xs[2:6], *xs[6:])
    dyn = [{0: Bd, 1: Td}] * 5 + ([{0: Bd}] if len(xs) > 6 else [])
    with torch.set_grad_enabled(grad):
        ep = export(m, args, dynamic_shapes=tuple(dyn), strict=strict)
        for batch, length in ((3, 37), (1, 100)):
            x2 = _inputs(entry, batch, length, seed=6)
            a2 = (x2[0], *x2[2:6], *x2[6:])
            want = ref(x2[0], w.expand_as(x2[0]), *x2[2:])
            _close(ep.module()(*a2), want)


def _cell(entry, transform):
    f, ref = _entry_fn(entry)
    xs = _inputs(entry)
    fs, refs = _scalar(f), _scalar(ref)
    argnums = tuple(range(len(xs)))
    if transform == "eager":
        _close(f(*xs), ref(*xs))
    elif transform == "grad":
        a, b = _req(xs), _req(xs)
        _close(torch.autograd.grad(fs(*a), a), torch.autograd.grad(refs(*b), b))
    elif transform == "gradgrad":
        assert torch.autograd.gradgradcheck(f, _req(xs))
        vec = _tangents(xs)
        hv = []
        for fn in (fs, refs):
            a = _req(xs)
            g = torch.autograd.grad(fn(*a), a, create_graph=True)
            hv.append(torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, vec)), a))
        _close(hv[0], hv[1])
    elif transform == "gradcheck_fwd_batched":
        assert torch.autograd.gradcheck(f, _req(xs), check_forward_ad=True, check_batched_grad=True)
    elif transform == "dual":
        t = _tangents(xs)
        outs = []
        for fn in (fs, refs):
            with fwAD.dual_level():
                out = fn(*[fwAD.make_dual(x, ti) for x, ti in zip(xs, t)])
                tangent = fwAD.unpack_dual(out).tangent
                assert tangent is not None, "forward AD dropped the tangent"
                outs.append(tangent)
        _close(outs[0], outs[1])
    elif transform == "jvp":
        t = _tangents(xs)
        _close(tf_.jvp(f, xs, t), tf_.jvp(ref, xs, t))
    elif transform == "jacfwd":
        _close(tf_.jacfwd(fs, argnums=argnums)(*xs), tf_.jacfwd(refs, argnums=argnums)(*xs))
    elif transform == "jacrev":
        _close(tf_.jacrev(f, argnums=argnums)(*xs), tf_.jacrev(ref, argnums=argnums)(*xs))
    elif transform == "hessian":
        _close(tf_.hessian(fs, argnums=argnums)(*xs), tf_.hessian(refs, argnums=argnums)(*xs))
    elif transform == "vmap":
        # a batch of (k, v) sequences against the same other inputs
        k2, v2 = torch.stack([xs[2], -xs[2]]), torch.stack([xs[3], 0.5 * xs[3]])
        got = tf_.vmap(lambda k, v: f(xs[0], xs[1], k, v, *xs[4:]))(k2, v2)
        want = [ref(xs[0], xs[1], k2[i], v2[i], *xs[4:]) for i in range(2)]
        want = [torch.stack(w) for w in zip(*[_flat(w) for w in want])]
        _close(got, want)
    elif transform == "vmap_grad":
        k2 = torch.stack([xs[2], -xs[2]])
        got = tf_.vmap(tf_.grad(lambda k: fs(xs[0], xs[1], k, *xs[3:])))(k2)
        want = torch.stack([tf_.grad(lambda k: refs(xs[0], xs[1], k, *xs[3:]))(k2[i]) for i in range(2)])
        _close(got, want)
    elif transform == "grad_grad":
        def second(fn):
            return tf_.grad(lambda *a: tf_.grad(fn, argnums=argnums)(*a)[0].sin().sum(), argnums=argnums)
        _close(second(fs)(*xs), second(refs)(*xs))
    elif transform == "compile":
        torch._dynamo.reset()
        cf = torch.compile(f, fullgraph=True, dynamic=True)
        for length in (T, 37):
            args = _inputs(entry, 2, length, seed=7)
            got, want = [], []
            for fn, out in ((cf, got), (ref, want)):
                a = _req(args)
                y = fn(*a)
                out.extend([*_flat(y), *torch.autograd.grad(_loss(y), a)])
            _close(got, want)
    elif transform.startswith("export"):
        _export_cell(entry, f, ref, strict="strict" in transform, grad=transform.endswith("grad"))
    elif transform == "autocast_bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = f(*xs)
        _close(got, ref(*xs))
    elif transform == "meta":
        want = _flat(f(*xs))
        got = _flat(f(*[x.to("meta") for x in xs]))
        assert [g.shape for g in got] == [w.shape for w in want] and all(g.is_meta for g in got)
    elif transform == "empty":
        for batch, length in ((0, 4), (2, 0)):
            full = _inputs(entry, max(batch, 1), max(length, 1), seed=8)
            seqs = [x[:batch, :length] for x in full[:6]]
            st0 = [x[:batch] for x in full[6:]]
            a = _req((*seqs, *st0))
            out = f(*a)
            _close(out, ref(*seqs, *st0))
            outs = _flat(out)
            if st0 and length == 0:
                assert torch.equal(outs[1], st0[0])
                (gs,) = torch.autograd.grad((outs[1] * 3).sum(), a[6], retain_graph=True)
                assert torch.equal(gs, torch.full_like(gs, 3.0))
            if any(o.requires_grad for o in outs):
                grads = torch.autograd.grad(sum(o.sum() for o in outs), a[:6], allow_unused=True)
                assert all(g is None or (g == 0).all() for g in grads)
    else:
        raise KeyError(transform)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("entry", ENTRIES)
def test_conformance(entry, transform):
    expected = EXPECTED[(entry, transform)]
    if expected == "exact":
        _cell(entry, transform)
    else:
        exc, match = expected
        with pytest.raises(exc, match=match):
            _cell(entry, transform)


@pytest.mark.parametrize("backend", [b for b in BACKENDS7 if b != "cpu-avx512"])
@pytest.mark.parametrize("transform", ["eager", "grad", "gradgrad", "jvp", "vmap_grad", "empty"])
def test_conformance_other_kernels(transform, backend):
    """The same cells on the other CPU kernels and the CUDA kernels' emulated bodies."""
    select7(backend)
    try:
        _cell("wkv7", transform)
    finally:
        rwkv_wkv.cpu_isa("auto")


def render_table():
    """The RWKV-7 conformance table of docs/op7.md (markdown), from EXPECTED."""
    lines = ["| transform | " + " | ".join(f"`{e}`" for e in ENTRIES) + " |",
             "|---|" + "---|" * len(ENTRIES)]
    for t in TRANSFORMS:
        cells = [EXPECTED[(e, t)] if isinstance(EXPECTED[(e, t)], str) else f"{EXPECTED[(e, t)][0].__name__}: "
                 f"{EXPECTED[(e, t)][1]}" for e in ENTRIES]
        lines.append(f"| {COLUMNS[t]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_docs_table():
    doc = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "op7.md").read_text()
    assert render_table() in doc, "docs/op7.md's RWKV-7 conformance table differs from " \
        "tests/rwkv7/test_wkv7_transforms.py:\n" + render_table()
