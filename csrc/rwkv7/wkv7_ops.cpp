// RWKV-7's op schemas (a fragment of the wkv library), argument checks, and the CPU / CUDA
// registrations. Functional ops (no mutation), so torch.compile, export and opcheck see them;
// Python registers their fake kernels and autograd (src/rwkv_wkv/rwkv7/ops.py).
//
//   wkv7_forward(r, w, k, v, a, b, state?, save_checkpoints) -> (y, state_out, checkpoints)
//   wkv7_backward(r, w, k, v, a, b, state?, gy, gstate_out?, checkpoints?)
//       -> (gr, gw, gk, gv, ga, gb, gstate_in)
//
// r, w, k, v, a, b, y: (B, T, H, N), one dtype (float32, float64, bfloat16, float16), any
// strides (copied when not contiguous). state: (B, H, N, N) in the math dtype (float32; float64
// for float64 inputs), S[i][j] with i the value index. The decay d = exp(-exp(w)) is formed by
// the kernels as they load w, in the math dtype (rwkv7/wkv7.h has the recurrence). checkpoints:
// (B, H, ceil(T / 32), N, N) when saved, else (B, H, 0, N, N); the backward recomputes them
// when given none. Every check runs before any pointer is touched (csrc/common/args.h).
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <optional>
#include <tuple>

#include "common/args.h"
#include "rwkv7/wkv7_launch.h"

namespace wkv::v7 {
namespace {

constexpr const char* kNames[6] = {"r", "w", "k", "v", "a", "b"};

void check_inputs(const char* op, const Tensor* x[6]) {
  for (int i = 0; i < 6; ++i) check_defined(op, *x[i], kNames[i]);
  const Tensor& r = *x[0];
  WKV_CHECK_VALUE(r.dim() == 4, op, ": r must have 4 dimensions (B, T, H, N), got shape ",
                  r.sizes());
  WKV_CHECK_VALUE(is_input_dtype(r.scalar_type()), op,
                  ": r must have dtype float32, float64, bfloat16 or float16, got ",
                  dtype_name(r.scalar_type()));
  WKV_CHECK(r.is_cpu() || r.is_cuda(), op, ": tensors must be on a CPU or CUDA device, got ",
            device_name(r.device()));
  const int64_t B = r.size(0), T = r.size(1), H = r.size(2), N = r.size(3);
  for (int i = 1; i < 6; ++i) {
    check_dtype(op, *x[i], kNames[i], r.scalar_type(), "the same as r");
    check_device(op, *x[i], kNames[i], r, "r");
    check_shape(op, *x[i], kNames[i], "(B, T, H, N) as r", {B, T, H, N});
  }
}

// An optional (B, H, N, N) tensor in the math dtype.
void check_state(const char* op, const std::optional<Tensor>& s, const char* name, const Tensor& r) {
  if (!s.has_value() || !s->defined()) return;
  const auto math = math_dtype(r);
  check_dtype(op, *s, name, math, math == kDouble ? "the math dtype for float64 r" : "the math dtype, float32");
  check_device(op, *s, name, r, "r");
  check_shape(op, *s, name, "(B, H, N, N)", {r.size(0), r.size(2), r.size(3), r.size(3)});
}

bool defined(const std::optional<Tensor>& t) { return t.has_value() && t->defined(); }

// The shared part of both ops: checks, contiguous inputs, sizes.
Launch make_launch(const char* op, const Tensor& r, const Tensor& w, const Tensor& k, const Tensor& v,
                   const Tensor& a, const Tensor& b, const std::optional<Tensor>& state) {
  const Tensor* x[6] = {&r, &w, &k, &v, &a, &b};
  check_inputs(op, x);
  check_state(op, state, "state", r);
  Launch l;
  l.B = r.size(0);
  l.T = r.size(1);
  l.H = r.size(2);
  l.N = r.size(3);
  const auto dt = r.scalar_type(), math = math_dtype(r);
  l.r = as_contiguous(r, dt);
  l.w = as_contiguous(w, dt);
  l.k = as_contiguous(k, dt);
  l.v = as_contiguous(v, dt);
  l.a = as_contiguous(a, dt);
  l.b = as_contiguous(b, dt);
  if (defined(state)) l.state_in = as_contiguous(*state, math);
  return l;
}

bool is_empty(const Launch& l) { return l.B * l.T * l.H * l.N == 0; }

void launch_forward(const Launch& l) {
  if (l.r.is_cuda()) {
#ifdef WKV_WITH_CUDA
    return forward_cuda(l);
#else
    WKV_CHECK(false, "rwkv_wkv was built without CUDA support");
#endif
  }
  forward_cpu(l);
}

void launch_backward(const Launch& l) {
  if (l.r.is_cuda()) {
#ifdef WKV_WITH_CUDA
    return backward_cuda(l);
#else
    WKV_CHECK(false, "rwkv_wkv was built without CUDA support");
#endif
  }
  backward_cpu(l);
}

Tensor math_tensor(const Launch& l, IntHeaderOnlyArrayRef sizes) {
  return new_tensor(sizes, math_dtype(l.r), l.r);
}

std::tuple<Tensor, Tensor, Tensor> wkv7_forward(const Tensor& r, const Tensor& w, const Tensor& k,
                                                const Tensor& v, const Tensor& a, const Tensor& b,
                                                const std::optional<Tensor>& state,
                                                bool save_checkpoints) {
  Launch l = make_launch("wkv.wkv7_forward", r, w, k, v, a, b, state);
  l.y = new_tensor({l.B, l.T, l.H, l.N}, l.r.scalar_type(), l.r);
  l.state_out = math_tensor(l, {l.B, l.H, l.N, l.N});
  const Tensor checkpoints =
      math_tensor(l, {l.B, l.H, save_checkpoints ? num_checkpoints(l.T) : 0, l.N, l.N});
  if (save_checkpoints) l.checkpoints = checkpoints;
  if (!is_empty(l)) {
    launch_forward(l);
  } else if (l.state_in.defined()) {  // T = 0: the state passes through
    torch::stable::copy_(l.state_out, l.state_in);
  } else {
    torch::stable::zero_(l.state_out);
  }
  return {l.y, l.state_out, checkpoints};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> wkv7_backward(
    const Tensor& r, const Tensor& w, const Tensor& k, const Tensor& v, const Tensor& a,
    const Tensor& b, const std::optional<Tensor>& state, const Tensor& gy,
    const std::optional<Tensor>& gstate_out, const std::optional<Tensor>& checkpoints) {
  const char* op = "wkv.wkv7_backward";
  Launch l = make_launch(op, r, w, k, v, a, b, state);
  const auto dt = l.r.scalar_type(), math = math_dtype(l.r);
  check_defined(op, gy, "gy");
  check_dtype(op, gy, "gy", dt, "the same as r");
  check_device(op, gy, "gy", r, "r");
  check_shape(op, gy, "gy", "(B, T, H, N)", {l.B, l.T, l.H, l.N});
  check_state(op, gstate_out, "gstate_out", r);
  l.gy = as_contiguous(gy, dt);
  if (defined(gstate_out)) l.gstate_out = as_contiguous(*gstate_out, math);
  const int64_t nckpt = num_checkpoints(l.T);
  if (defined(checkpoints) && !(checkpoints->dim() == 5 && checkpoints->size(2) == 0)) {
    check_dtype(op, *checkpoints, "checkpoints", math, "the math dtype");
    check_device(op, *checkpoints, "checkpoints", r, "r");
    check_shape(op, *checkpoints, "checkpoints", "(B, H, ceil(T / 32), N, N)", {l.B, l.H, nckpt, l.N, l.N});
    l.checkpoints = as_contiguous(*checkpoints, math);
  }
  for (Tensor* g : {&l.gr, &l.gw, &l.gk, &l.gv, &l.ga, &l.gb}) {
    *g = new_tensor({l.B, l.T, l.H, l.N}, dt, l.r);
  }
  l.gstate_in = math_tensor(l, {l.B, l.H, l.N, l.N});
  if (!is_empty(l)) {
    if (!l.checkpoints.defined()) {  // none saved: a forward writes them first
      Launch f;
      static_cast<Wkv7Io<Tensor, Tensor, Tensor, Tensor>&>(f) = l;
      f.gy = f.gstate_out = f.gr = f.gw = f.gk = f.gv = f.ga = f.gb = f.gstate_in = Tensor();
      f.checkpoints = l.checkpoints = math_tensor(l, {l.B, l.H, nckpt, l.N, l.N});
      launch_forward(f);
    }
    launch_backward(l);
  } else {
    for (Tensor* g : {&l.gr, &l.gw, &l.gk, &l.gv, &l.ga, &l.gb}) torch::stable::zero_(*g);
    if (l.gstate_out.defined()) {
      torch::stable::copy_(l.gstate_in, l.gstate_out);
    } else {
      torch::stable::zero_(l.gstate_in);
    }
  }
  return {l.gr, l.gw, l.gk, l.gv, l.ga, l.gb, l.gstate_in};
}

}  // namespace

STABLE_TORCH_LIBRARY_FRAGMENT(wkv, m) {  // the library itself: csrc/library.cpp
  m.def(
      "wkv7_forward(Tensor r, Tensor w, Tensor k, Tensor v, Tensor a, Tensor b, Tensor? state=None, "
      "bool save_checkpoints=False) -> (Tensor, Tensor, Tensor)");
  m.def(
      "wkv7_backward(Tensor r, Tensor w, Tensor k, Tensor v, Tensor a, Tensor b, Tensor? state, "
      "Tensor gy, Tensor? gstate_out, Tensor? checkpoints=None) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

STABLE_TORCH_LIBRARY_IMPL(wkv, CPU, m) {
  m.impl("wkv7_forward", TORCH_BOX(&wkv7_forward));
  m.impl("wkv7_backward", TORCH_BOX(&wkv7_backward));
}

#ifdef WKV_WITH_CUDA
STABLE_TORCH_LIBRARY_IMPL(wkv, CUDA, m) {
  m.impl("wkv7_forward", TORCH_BOX(&wkv7_forward));
  m.impl("wkv7_backward", TORCH_BOX(&wkv7_backward));
}
#endif

}  // namespace wkv::v7
