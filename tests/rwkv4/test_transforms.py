"""The conformance table: every PyTorch transform x every entry point, exact or a named error.

Entry points: ``wkv``, ``wkv_with_state`` (state in and out), ``WKVFunction.apply``, RWKV-LM's
ops (through RWKV-LM's own ``WKV`` class, tests/rwkv4/test_rwkv_lm_compat.py) and the RWKV model (its
loss as a function of some of its parameters). Each cell runs float64 on the CPU against an
independent float64 reference (``reference.wkv_exact``, differentiated by autograd / torch.func;
for the model, the same model with ``wkv_exact`` in place of the op), and either matches it
(``TOL``) or raises the exception the table names. No cell may return something else: that
would be a silent wrong answer. ``EXPECTED`` is also the table of docs/op.md
(``test_readme_table``), so the two cannot drift apart.
"""

from __future__ import annotations

import functools

import pytest
import rwkv_wkv.model as model_mod
import torch
import torch.autograd.forward_ad as fwAD
import torch.func as tf_
from conftest import make_inputs, reset_backend, select_backend
from rwkv_wkv.reference import wkv_exact
from test_rwkv_lm_compat import RWKVLM_WKV

import rwkv_wkv
from rwkv_wkv import RWKV, RWKVConfig

B, T, C = 2, 5, 3
ENTRIES = ["wkv", "wkv_with_state", "WKVFunction", "rwkv_lm", "model"]
TRANSFORMS = [
    "eager", "grad", "gradgrad", "gradcheck_fwd_batched", "dual", "jvp", "jacfwd", "jacrev",
    "hessian", "vmap", "vmap_grad", "grad_grad", "compile", "export", "export_strict",
    "export_grad", "export_strict_grad", "autocast_bf16", "meta", "empty",
]
# Cells that are not "exact": (exception type, what its message says).
_LM_NOT_DIFF = (RuntimeError, "is not differentiable")
# RWKV-LM's WKV class is torch's old-style autograd.Function without a jvp: torch itself refuses
# forward-mode AD and torch.func on it.
_LM_FUNCTORCH = (RuntimeError, "must override the setup_context")
_LM_NO_JVP = (RuntimeError, "must implement the jvp function")
ERRORS = {
    ("rwkv_lm", "gradgrad"): _LM_NOT_DIFF,
    ("rwkv_lm", "gradcheck_fwd_batched"): _LM_NO_JVP,
    ("rwkv_lm", "dual"): _LM_NO_JVP,
    **{("rwkv_lm", t): _LM_FUNCTORCH for t in ("jvp", "jacfwd", "jacrev", "hessian", "vmap", "vmap_grad", "grad_grad")},
    # RWKV-LM's contract passes B, T, C as Python ints: export specialises them (torch raises for
    # a dynamic B or T); with static shapes the exported program is exact.
    **{
        ("rwkv_lm", t): "exact, static shapes only"
        for t in ("export", "export_strict", "export_grad", "export_strict_grad")
    },
}
EXPECTED = {(e, t): ERRORS.get((e, t), "exact") for e in ENTRIES for t in TRANSFORMS}
# What each column does (docs/op.md).
COLUMNS = {
    "eager": "forward values",
    "grad": "first-order gradients (`torch.autograd.grad`)",
    "gradgrad": "double backward: `gradgradcheck`, and Hessian-vector products vs the reference",
    "gradcheck_fwd_batched": "`gradcheck(check_forward_ad=True, check_batched_grad=True)`",
    "dual": "`torch.autograd.forward_ad` dual tensors",
    "jvp": "`torch.func.jvp`", "jacfwd": "`torch.func.jacfwd`", "jacrev": "`torch.func.jacrev`",
    "hessian": "`torch.func.hessian`", "vmap": "`torch.func.vmap`",
    "vmap_grad": "`vmap(grad(f))`", "grad_grad": "`grad(grad(f))` (torch.func)",
    "compile": "`torch.compile(fullgraph=True, dynamic=True)`, forward and backward",
    "export": "`torch.export` non-strict, no grad, dynamic B and T (run at other T)",
    "export_strict": "`torch.export` strict, no grad, dynamic B and T",
    "export_grad": "`torch.export` non-strict with grad enabled (Parameters), dynamic B and T",
    "export_strict_grad": "`torch.export` strict with grad enabled, dynamic B and T",
    "autocast_bf16": "under `torch.autocast(\"cpu\", torch.bfloat16)` (model: its bf16 matmuls)",
    "meta": "meta tensors (shapes only); the model: built on meta, `to_empty`, `reset_parameters()`",
    "empty": "B = 0 and T = 0 (T = 0 with a state: the state passes through, gradient included)",
}
TOL = dict(rtol=1e-8, atol=1e-10)  # float64; RWKV-LM's class computes in float32:
TOL_F32 = dict(rtol=2e-5, atol=2e-6)


# ---- the entry points as functions of float64 tensors, and their references ------------------


def _state0():
    td, tfirst, k, v = make_inputs(B, 4, C, seed=71)
    return wkv_exact(td, tfirst, k, v, return_state=True)[1]


def _inputs(entry):
    td, tfirst, k, v = make_inputs(B, T, C, seed=70)
    if entry == "model":
        return _model_params()
    if entry == "wkv_with_state":
        return (td, tfirst, k, v, _state0())
    return (td, tfirst, k, v)


def _entry_fn(entry):
    """(f, reference f): functions of _inputs(entry) returning a tensor or a tuple of tensors."""
    if entry == "wkv":
        return rwkv_wkv.wkv, wkv_exact
    if entry == "wkv_with_state":
        return rwkv_wkv.wkv_with_state, _exact_with_state
    if entry == "WKVFunction":
        return (lambda td, tf, k, v: rwkv_wkv.WKVFunction.apply(*k.shape, td, tf, k, v)), wkv_exact
    if entry == "rwkv_lm":
        return (lambda td, tf, k, v: RWKVLM_WKV.apply(*k.shape, td, tf, k, v)), wkv_exact
    if entry == "model":
        return _model_loss, _model_loss_reference
    raise KeyError(entry)


def _exact_with_state(td, tf, k, v, state):
    return wkv_exact(td, tf, k, v, state=state, return_state=True)


# The model: its loss (training mode: L2Wrap on) as a function of three of its parameters, so
# Jacobians and Hessians stay small. float64 throughout.
_MODEL_CFG = RWKVConfig(vocab_size=11, n_layer=2, n_embd=4, ctx_len=16)
_MODEL_PARAMS = ("blocks.0.att.time_decay", "blocks.1.att.time_first", "blocks.0.att.value.weight")


_MODELS = {}


def _model():
    if "m" not in _MODELS:  # (a dict, not lru_cache: torch.compile then reads, not rebuilds)
        torch.manual_seed(5)
        m = RWKV(_MODEL_CFG).double()
        with torch.no_grad():  # the init zeroes some matrices: make every path carry signal
            for p in m.parameters():
                p.add_(0.3 * torch.randn_like(p))
        _MODELS["m"] = m
    return _MODELS["m"]


@functools.lru_cache(maxsize=None)
def _model_data(batch=B, length=T):
    g = torch.Generator().manual_seed(9)
    idx = torch.randint(0, _MODEL_CFG.vocab_size, (batch, length + 1), generator=g)
    return idx[:, :-1].clone(), idx[:, 1:].clone()


def _model_params():
    named = dict(_model().named_parameters())
    return tuple(named[n].detach().clone() for n in _MODEL_PARAMS)


def _model_loss(*params, data=None):
    idx, targets = _model_data() if data is None else data
    return tf_.functional_call(_model(), dict(zip(_MODEL_PARAMS, params)), (idx, targets))[1]


def _reference_wkv_with_state(td, tfirst, k, v, state=None):
    y, s = wkv_exact(td, tfirst, k, v, state=state, return_state=True)
    return y.to(k.dtype), s.to(torch.float64 if k.dtype == torch.float64 else torch.float32)


def _model_loss_reference(*params, data=None):
    orig = model_mod.wkv_with_state
    model_mod.wkv_with_state = _reference_wkv_with_state
    try:
        return _model_loss(*params, data=data)
    finally:
        model_mod.wkv_with_state = orig


# ---- comparison helpers ----------------------------------------------------------------------


def _tol(entry):
    return TOL_F32 if entry == "rwkv_lm" else TOL


def _flat(x):
    if isinstance(x, torch.Tensor):
        return [x]
    return [t for item in x for t in _flat(item)]


def _close(got, want, entry):
    got, want = _flat(got), _flat(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape, (g.shape, w.shape)
        torch.testing.assert_close(g.double(), w.double(), **_tol(entry))


def _loss(out):
    """A scalar of an entry point's outputs in which every output (the state too) matters."""
    return sum((o.double() * (1.0 + 0.1 * i)).sin().sum() for i, o in enumerate(_flat(out)))


def _scalar(f):
    return lambda *xs: _loss(f(*xs))


def _req(xs):
    return tuple(x.detach().clone().requires_grad_() for x in xs)


def _tangents(xs, seed=3):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(x.shape, generator=g, dtype=x.dtype) for x in xs)


# ---- the cells ---------------------------------------------------------------------------------


def _cell(entry, transform):
    f, ref = _entry_fn(entry)
    xs = _inputs(entry)
    fs, refs = _scalar(f), _scalar(ref)
    argnums = tuple(range(len(xs)))

    if transform == "eager":
        _close(f(*xs), ref(*xs), entry)
    elif transform == "grad":
        a, b = _req(xs), _req(xs)
        _close(torch.autograd.grad(fs(*a), a), torch.autograd.grad(refs(*b), b), entry)
    elif transform == "gradgrad":
        if entry != "model":  # finite differences of the gradient (the model: HVPs only, below)
            assert torch.autograd.gradgradcheck(f, _req(xs))
        vec = _tangents(xs)
        hv = []
        for fn in (fs, refs):
            a = _req(xs)
            g = torch.autograd.grad(fn(*a), a, create_graph=True)
            hv.append(torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, vec)), a))
        _close(hv[0], hv[1], entry)
    elif transform == "gradcheck_fwd_batched":
        # RWKV-LM's class computes in float32: finite differences at float32's scale
        tol = dict(eps=1e-3, atol=1e-3, rtol=1e-2) if entry == "rwkv_lm" else {}
        assert torch.autograd.gradcheck(f, _req(xs), check_forward_ad=True, check_batched_grad=True, **tol)
    elif transform == "dual":
        t = _tangents(xs)
        outs = []
        for fn in (fs, refs):
            with fwAD.dual_level():
                out = fn(*[fwAD.make_dual(x, ti) for x, ti in zip(xs, t)])
                tangent = fwAD.unpack_dual(out).tangent
                assert tangent is not None, "forward AD dropped the tangent"
                outs.append(tangent)
        _close(outs[0], outs[1], entry)
    elif transform == "jvp":
        t = _tangents(xs)
        _close(tf_.jvp(f, xs, t), tf_.jvp(ref, xs, t), entry)
    elif transform == "jacfwd":
        # against the reference's forward mode (the model's L2Wrap adds to reverse mode only)
        _close(tf_.jacfwd(fs, argnums=argnums)(*xs), tf_.jacfwd(refs, argnums=argnums)(*xs), entry)
    elif transform == "jacrev":
        _close(tf_.jacrev(f, argnums=argnums)(*xs), tf_.jacrev(ref, argnums=argnums)(*xs), entry)
    elif transform == "hessian":
        _close(tf_.hessian(fs, argnums=argnums)(*xs), tf_.hessian(refs, argnums=argnums)(*xs), entry)
    elif transform == "vmap":
        if entry == "model":
            stacked = [torch.stack([x, 1.1 * x]) for x in xs]
            got = tf_.vmap(f)(*stacked)
            want = torch.stack([ref(*xs), ref(*[1.1 * x for x in xs])])
        else:  # a batch of (k, v) sequences against one (time_decay, time_first)
            k2, v2 = torch.stack([xs[2], -xs[2]]), torch.stack([xs[3], 0.5 * xs[3]])
            rest = xs[4:]
            got = tf_.vmap(lambda k, v: f(xs[0], xs[1], k, v, *rest))(k2, v2)
            want = [ref(xs[0], xs[1], k2[i], v2[i], *rest) for i in range(2)]
            want = [torch.stack(w) for w in zip(*[_flat(w) for w in want])]
        _close(got, want, entry)
    elif transform == "vmap_grad":
        if entry == "model":
            stacked = [torch.stack([x, 1.1 * x]) for x in xs]
            got = tf_.vmap(tf_.grad(fs, argnums=argnums))(*stacked)
            want = [
                torch.stack(g)
                for g in zip(*[tf_.grad(refs, argnums=argnums)(*[x[i] for x in stacked]) for i in range(2)])
            ]
        else:
            k2 = torch.stack([xs[2], -xs[2]])
            rest = xs[3:]
            got = tf_.vmap(tf_.grad(lambda k: fs(xs[0], xs[1], k, *rest)))(k2)
            want = torch.stack([tf_.grad(lambda k: refs(xs[0], xs[1], k, *rest))(k2[i]) for i in range(2)])
        _close(got, want, entry)
    elif transform == "grad_grad":
        def second(fn):
            return tf_.grad(lambda *a: tf_.grad(fn, argnums=argnums)(*a)[0].sin().sum(), argnums=argnums)
        _close(second(fs)(*xs), second(refs)(*xs), entry)
    elif transform == "compile":
        _compile_cell(entry, f, ref, xs)
    elif transform.startswith("export"):
        _export_cell(entry, f, ref, strict="strict" in transform, grad=transform.endswith("grad"))
    elif transform == "autocast_bf16":
        _autocast_cell(entry, f, ref, xs)
    elif transform == "meta":
        _meta_cell(entry, f, xs)
    elif transform == "empty":
        _empty_cell(entry, f, ref)
    else:
        raise KeyError(transform)


def _compile_cell(entry, f, ref, xs):
    torch._dynamo.reset()
    if entry == "model":  # (the data made outside: a Generator cannot be traced)
        data = _model_data()
        f, ref = functools.partial(f, data=data), functools.partial(ref, data=data)
    cf = torch.compile(f, fullgraph=True, dynamic=True)
    if entry == "model":
        got, want = [], []
        for fn, out in ((cf, got), (ref, want)):
            a = _req(xs)
            loss = fn(*a)
            out.extend([loss, *torch.autograd.grad(loss, a)])
        _close(got, want, entry)
        return
    for length in (T, 37):  # a second length: dynamic T, no recompile needed to be exact
        td, tfirst, k, v = make_inputs(B, length, C, seed=72)
        args = (td, tfirst, k, v, *xs[4:])
        got, want = [], []
        for fn, out in ((cf, got), (ref, want)):
            a = _req(args)
            y = fn(*a)
            out.extend([*_flat(y), *torch.autograd.grad(_loss(y), a)])
        _close(got, want, entry)


class _OpModule(torch.nn.Module):
    """An entry point with time_decay / time_first as Parameters (as in a model)."""

    def __init__(self, f, td, tfirst, grad):
        super().__init__()
        self.f = f
        self.td = torch.nn.Parameter(td.clone(), requires_grad=grad)
        self.tf = torch.nn.Parameter(tfirst.clone(), requires_grad=grad)

    def forward(self, k, v, state=None):
        return self.f(self.td, self.tf, k, v) if state is None else self.f(self.td, self.tf, k, v, state)


class _ModelLoss(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.m = _model()

    def forward(self, idx, targets):
        return self.m(idx, targets)[1]


def _export_cell(entry, f, ref, strict, grad, static=False):
    from torch.export import Dim, export

    Bd, Td = Dim("B", min=1, max=64), Dim("T", min=2, max=4096)
    with torch.set_grad_enabled(grad):
        if static:  # dynamic B and T raise (torch's error); the example's shapes are exact
            td, tfirst, k, v = make_inputs(2, 20, C, seed=73)
            m = _OpModule(f, td, tfirst, grad)
            with pytest.raises(Exception, match="Constraints violated|LazyProxy"):
                export(m, (k, v), dynamic_shapes=({0: Bd, 1: Td}, {0: Bd, 1: Td}), strict=strict)
            ep = export(m, (k, v), strict=strict)
            _, _, k2, v2 = make_inputs(2, 20, C, seed=74)
            with torch.no_grad():  # the program holds no backward of RWKV-LM's op (it raises)
                _close(ep.module()(k2, v2), ref(td, tfirst, k2, v2), entry)
            return
        if entry == "model":
            m = _ModelLoss().train(grad)
            ep = export(m, _model_data(2, 20), dynamic_shapes=({0: Bd, 1: Td}, {0: Bd, 1: Td}), strict=strict)
            for batch, length in ((3, 37), (1, 100)):
                data = _model_data(batch, length)
                _close(ep.module()(*data), m(*data), entry)
            return
        td, tfirst, k, v = make_inputs(2, 20, C, seed=73)
        state = (_state0(),) if entry == "wkv_with_state" else ()
        m = _OpModule(f, td, tfirst, grad)
        dyn = [{0: Bd, 1: Td}, {0: Bd, 1: Td}] + ([{0: Bd}] if state else [])
        ep = export(m, (k, v, *state), dynamic_shapes=tuple(dyn), strict=strict)
        for length in (37, 100, 1000):
            _, _, k2, v2 = make_inputs(2, length, C, seed=74)
            _close(ep.module()(k2, v2, *state), ref(td, tfirst, k2, v2, *state), entry)


def _autocast_cell(entry, f, ref, xs):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if entry != "model":  # no autocast policy for WKV: float64 inputs stay float64, exact
            got = f(*xs)
    if entry != "model":
        _close(got, ref(*xs), entry)
        return
    # The model's matmuls run in bf16 and feed bf16 k, v to the op: the loss must agree with
    # the reference model under the same autocast to bf16 rounding, and backward must run.
    a, b = _req(xs), _req(xs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        la, lb = f(*a), ref(*b)
    ga, gb = torch.autograd.grad(la, a), torch.autograd.grad(lb, b)
    torch.testing.assert_close(la, lb, rtol=2e-2, atol=2e-2)
    for x, y in zip(ga, gb):
        assert torch.isfinite(x).all()
        torch.testing.assert_close(x, y, rtol=0.1, atol=0.1 * y.abs().max().item())


def _meta_cell(entry, f, xs):
    if entry == "model":
        torch.manual_seed(11)
        normal = RWKV(_MODEL_CFG)
        with torch.device("meta"):
            m = RWKV(_MODEL_CFG)
        assert all(p.is_meta for p in m.parameters())
        with pytest.raises(RuntimeError, match="meta device"):
            m.reset_parameters()
        m.to_empty(device="cpu")
        torch.manual_seed(11)
        m.reset_parameters()
        sd, want = m.state_dict(), normal.state_dict()
        assert sd.keys() == want.keys()
        for key in sd:
            assert torch.equal(sd[key], want[key]), key
        idx, targets = _model_data()
        loss = m(idx, targets)[1]
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in m.parameters())
        return
    meta = [x.to("meta") for x in xs]
    want = [o for o in _flat(f(*xs))]
    got = _flat(f(*meta))
    assert [g.shape for g in got] == [w.shape for w in want] and all(g.is_meta for g in got)


def _empty_cell(entry, f, ref):
    if entry == "model":
        m = _model()
        for batch, length in ((0, 5), (2, 0)):
            idx = torch.zeros((batch, length), dtype=torch.long)
            state = m.init_state(batch).double() + 0.25
            logits, _, new_state = m(idx, state=state, return_state=True)
            assert logits.shape == (batch, length, _MODEL_CFG.vocab_size)
            if length == 0:
                assert torch.equal(new_state, state)
        return
    for batch, length in ((0, 4), (2, 0)):
        td, tfirst, k, v = make_inputs(max(batch, 1), max(length, 1), C, seed=75)
        k, v = k[:batch, :length], v[:batch, :length]
        state = (_state0()[:batch],) if entry == "wkv_with_state" else ()
        a = _req((td, tfirst, k, v, *state))
        out = f(*a)
        _close(out, ref(td, tfirst, k, v, *state), entry)
        outs = _flat(out)
        if entry == "wkv_with_state" and length == 0:
            assert torch.equal(outs[1], state[0])  # the identity on the state
            (gs,) = torch.autograd.grad((outs[1] * 3).sum(), a[4], retain_graph=True)
            assert torch.equal(gs, torch.full_like(gs, 3.0))
        grads = torch.autograd.grad(sum(o.sum() for o in outs), a[:4], allow_unused=True)
        assert all(g is None or (g == 0).all() for g in grads)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("entry", ENTRIES)
def test_conformance(entry, transform):
    expected = EXPECTED[(entry, transform)]
    if expected == "exact":
        _cell(entry, transform)
    elif expected == "exact, static shapes only":
        _export_cell(
            entry, *_entry_fn(entry), strict="strict" in transform, grad=transform.endswith("grad"), static=True
        )
    else:
        exc, match = expected
        with pytest.raises(exc, match=match):
            _cell(entry, transform)


@pytest.mark.parametrize("backend", ["cpu-emu-chunk32"])
@pytest.mark.parametrize("transform", ["eager", "grad", "gradgrad", "jvp", "vmap_grad", "empty"])
@pytest.mark.parametrize("entry", ["wkv", "wkv_with_state"])
def test_conformance_cuda_emulation(entry, transform, backend):
    """The same cells on the CUDA kernels' bodies, emulated on the CPU."""
    select_backend(backend)
    try:
        _cell(entry, transform)
    finally:
        reset_backend()


def render_table():
    """The conformance table of docs/op.md (markdown), from EXPECTED."""
    short = {RuntimeError: "RuntimeError"}
    lines = ["| transform | " + " | ".join(f"`{e}`" for e in ENTRIES) + " |",
             "|---|" + "---|" * len(ENTRIES)]
    for t in TRANSFORMS:
        cells = []
        for e in ENTRIES:
            x = EXPECTED[(e, t)]
            cells.append(x if isinstance(x, str) else f"{short[x[0]]}: {x[1]}")
        lines.append(f"| {COLUMNS[t]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_docs_table():
    import pathlib

    readme = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "op.md").read_text()
    assert render_table() in readme, (
        "docs/op.md's conformance table differs from tests/rwkv4/test_transforms.py:\n" + render_table()
    )
