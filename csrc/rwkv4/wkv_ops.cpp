// RWKV-4's op schemas (a fragment of the wkv library), argument checks, and the CPU/CUDA
// registrations.
//
// Two families of ops:
//   wkv::forward / wkv::backward   RWKV-LM's wkv_op.cpp contract: sizes passed explicitly,
//                                  outputs preallocated and written in place (annotated (a!)
//                                  in the schema). Every tensor must be contiguous: these ops
//                                  write through raw pointers and never copy behind your back.
//   wkv::wkv_forward / wkv_backward functional: shapes from the tensors, optional state, no
//                                  mutation; any strides (non-contiguous inputs are copied).
//                                  Python registers their fake kernels and autograd
//                                  (src/rwkv_wkv/rwkv4/ops.py), so torch.compile and opcheck work.
// Every check runs before any pointer is touched and raises ValueError (bad dtype, shape,
// size or layout) or RuntimeError (device), naming the argument and what was expected
// (csrc/common/check.h: how those exceptions cross the stable ABI).
//
// Only the LibTorch stable ABI is used (torch/csrc/stable, torch/headeronly), compiled for
// TORCH_TARGET_VERSION (CMakeLists.txt): the library calls no libtorch C++ symbol, so one build
// loads under every torch release from that version on.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <atomic>
#include <initializer_list>
#include <optional>
#include <string>
#include <tuple>

#ifdef WKV_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#include "common/args.h"
#include "wkv_chunked.h"
#include "wkv_launch.h"

namespace wkv {
namespace {

// min = 0 for the ops (an empty batch, sequence or channel set is nothing to do), 1 for plans.
void check_sizes(const char* op, int64_t B, int64_t T, int64_t C, int64_t min = 0) {
  WKV_CHECK_VALUE(B >= min, op, ": B must be >= ", min, ", got ", B);
  WKV_CHECK_VALUE(T >= min, op, ": T must be >= ", min, ", got ", T);
  WKV_CHECK_VALUE(C >= min, op, ": C must be >= ", min, ", got ", C);
}

bool is_empty(const Launch& a) { return a.B == 0 || a.T == 0 || a.C == 0; }

// Checks the parameters (C,) and the sequences (B, T, C) shared by every op.
void check_common(const char* op, int64_t B, int64_t T, int64_t C, const Tensor& w,
                  const char* w_name, const Tensor& u, const char* u_name, const Tensor& k,
                  const Tensor& v) {
  check_defined(op, k, "k");
  check_defined(op, v, "v");
  check_defined(op, w, w_name);
  check_defined(op, u, u_name);
  WKV_CHECK_VALUE(is_input_dtype(k.scalar_type()), op,
                  ": k must have dtype float32, float64, bfloat16 or float16, got ",
                  dtype_name(k.scalar_type()));
  check_dtype(op, v, "v", k.scalar_type(), "the same as k");
  WKV_CHECK_VALUE(w.scalar_type() == kFloat || w.scalar_type() == kDouble, op, ": ", w_name,
                  " must have dtype float32 or float64, got ", dtype_name(w.scalar_type()));
  check_dtype(op, u, u_name, w.scalar_type(), w_name);
  WKV_CHECK(k.is_cpu() || k.is_cuda(), op, ": tensors must be on a CPU or CUDA device, got ",
            device_name(k.device()));
  check_device(op, v, "v", k);
  check_device(op, w, w_name, k);
  check_device(op, u, u_name, k);
  check_shape(op, k, "k", "(B, T, C)", {B, T, C});
  check_shape(op, v, "v", "(B, T, C)", {B, T, C});
  check_shape(op, w, w_name, "(C,)", {C});
  check_shape(op, u, u_name, "(C,)", {C});
}

// A (B, 3, C) state tensor in the math dtype (optional).
void check_state(const char* op, const std::optional<Tensor>& s, const char* name,
                 const Tensor& k, int64_t B, int64_t C) {
  if (!s.has_value() || !s->defined()) return;
  const auto math = math_dtype(k);
  check_dtype(op, *s, name, math,
              math == kDouble ? "the math dtype for float64 k" : "the math dtype, float32");
  check_device(op, *s, name, k);
  check_shape(op, *s, name, "(B, 3, C)", {B, 3, C});
}

void launch_forward(const Launch& a) {
  if (a.k.is_cuda()) {
#ifdef WKV_WITH_CUDA
    return forward_cuda(a);
#else
    WKV_CHECK(false, "rwkv_wkv was built without CUDA support");
#endif
  }
  forward_cpu(a);
}

void launch_backward(const Launch& a) {
  if (a.k.is_cuda()) {
#ifdef WKV_WITH_CUDA
    return backward_cuda(a);
#else
    WKV_CHECK(false, "rwkv_wkv was built without CUDA support");
#endif
  }
  backward_cpu(a);
}

// ---- RWKV-LM contract -----------------------------------------------------------------------

// An output or extra input of the legacy ops: present, of `dtype`, on k's device, of `shape`.
void check_buffer(const char* op, const Tensor& x, const char* name, ScalarType dtype,
                  const char* why, const Tensor& k, const char* symbolic,
                  std::initializer_list<int64_t> shape) {
  check_defined(op, x, name);
  check_dtype(op, x, name, dtype, why);
  check_device(op, x, name, k);
  check_shape(op, x, name, symbolic, shape);
}

// The part of a legacy call shared by forward and backward: sizes, parameters, sequences.
Launch legacy_launch(const char* op, int64_t B, int64_t T, int64_t C, const Tensor& w,
                     const Tensor& u, const Tensor& k, const Tensor& v) {
  check_sizes(op, B, T, C);
  check_common(op, B, T, C, w, "w", u, "u", k, v);
  for (auto [x, name] : {std::pair{&w, "w"}, {&u, "u"}, {&k, "k"}, {&v, "v"}}) {
    check_contiguous(op, *x, name);
  }
  const auto math = math_dtype(k);
  Launch a;
  a.B = B;
  a.T = T;
  a.C = C;
  a.w = as_contiguous(w, math);
  a.u = as_contiguous(u, math);
  a.k = k;
  a.v = v;
  return a;
}

void legacy_forward(int64_t B, int64_t T, int64_t C, const Tensor& w, const Tensor& u,
                    const Tensor& k, const Tensor& v, const Tensor& y) {
  const char* op = "wkv.forward";
  Launch a = legacy_launch(op, B, T, C, w, u, k, v);
  check_buffer(op, y, "y", k.scalar_type(), "the same as k", k, "(B, T, C)", {B, T, C});
  check_contiguous(op, y, "y");
  a.y = y;
  if (!is_empty(a)) launch_forward(a);
}

void legacy_backward(int64_t B, int64_t T, int64_t C, const Tensor& w, const Tensor& u,
                     const Tensor& k, const Tensor& v, const Tensor& gy, const Tensor& gw,
                     const Tensor& gu, const Tensor& gk, const Tensor& gv) {
  const char* op = "wkv.backward";
  Launch a = legacy_launch(op, B, T, C, w, u, k, v);
  const auto math = a.w.scalar_type();
  const char* why = math == kDouble ? "gradients of float64 k accumulate in float64"
                                    : "gradients accumulate in float32";
  for (auto [x, name] : {std::pair{&gy, "gy"}, {&gk, "gk"}, {&gv, "gv"}}) {
    check_buffer(op, *x, name, k.scalar_type(), "the same as k", k, "(B, T, C)", {B, T, C});
    check_contiguous(op, *x, name);
  }
  for (auto [x, name] : {std::pair{&gw, "gw"}, {&gu, "gu"}}) {
    check_buffer(op, *x, name, math, why, k, "(B, C)", {B, C});
    check_contiguous(op, *x, name);
  }
  a.gy = gy;
  a.gk = gk;
  a.gv = gv;
  a.gw = gw;
  a.gu = gu;
  if (!is_empty(a)) launch_backward(a);  // empty: nothing to write, nothing to accumulate
}

// ---- functional ops -------------------------------------------------------------------------

// Validates the functional inputs and fills the shared part of a Launch.
Launch functional_launch(const char* op, const Tensor& time_decay, const Tensor& time_first,
                         const Tensor& k, const Tensor& v, const std::optional<Tensor>& state) {
  check_defined(op, k, "k");
  WKV_CHECK_VALUE(k.dim() == 3, op, ": k must have 3 dimensions (B, T, C), got shape ",
                  k.sizes());
  const int64_t B = k.size(0), T = k.size(1), C = k.size(2);
  check_common(op, B, T, C, time_decay, "time_decay", time_first, "time_first", k, v);
  check_state(op, state, "state", k, B, C);
  const auto math = math_dtype(k);
  Launch a;
  a.B = B;
  a.T = T;
  a.C = C;
  // The kernels form w = -exp(time_decay) themselves (in the math dtype, as RWKV-LM's Python
  // does): on a GPU that saves two small launches per call.
  a.w = as_contiguous(time_decay, math);
  a.w_is_log = true;
  a.u = as_contiguous(time_first, math);
  a.k = as_contiguous(k, k.scalar_type());
  a.v = as_contiguous(v, v.scalar_type());
  if (state.has_value() && state->defined()) a.state_in = as_contiguous(*state, math);
  return a;
}

int64_t num_checkpoints(int64_t T) { return (T + kCheckpointSteps - 1) / kCheckpointSteps; }

std::tuple<Tensor, Tensor, Tensor> wkv_forward(const Tensor& time_decay,
                                               const Tensor& time_first, const Tensor& k,
                                               const Tensor& v, const std::optional<Tensor>& state,
                                               bool save_checkpoints) {
  Launch a = functional_launch("wkv.wkv_forward", time_decay, time_first, k, v, state);
  const auto math = a.w.scalar_type();
  a.y = new_tensor({a.B, a.T, a.C}, a.k.scalar_type(), a.k);
  a.state_out = new_tensor({a.B, 3, a.C}, math, a.k);
  // Always returned (the schema has three outputs); (B, 0, 3, C) when not asked for.
  const Tensor checkpoints = new_tensor(
      {a.B, save_checkpoints ? num_checkpoints(a.T) : 0, 3, a.C}, math, a.k);
  if (save_checkpoints) a.checkpoints = checkpoints;
  if (!is_empty(a)) {
    launch_forward(a);
  } else if (a.state_in.defined()) {  // T = 0: the state passes through unchanged
    torch::stable::copy_(a.state_out, a.state_in);
  } else {  // the empty state: aa = bb = 0, pp = kEmptyExponent
    torch::stable::zero_(a.state_out);
    torch::stable::fill_(torch::stable::select(a.state_out, 1, 2), kEmptyExponent);
  }
  return {a.y, a.state_out, checkpoints};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> wkv_backward(
    const Tensor& time_decay, const Tensor& time_first, const Tensor& k, const Tensor& v,
    const std::optional<Tensor>& state, const Tensor& gy, const std::optional<Tensor>& gstate_out,
    const std::optional<Tensor>& checkpoints) {
  const char* op = "wkv.wkv_backward";
  Launch a = functional_launch(op, time_decay, time_first, k, v, state);
  const auto math = a.w.scalar_type();
  check_buffer(op, gy, "gy", k.scalar_type(), "the same as k", k, "(B, T, C)", {a.B, a.T, a.C});
  check_state(op, gstate_out, "gstate_out", k, a.B, a.C);
  a.gy = as_contiguous(gy, gy.scalar_type());
  if (gstate_out.has_value() && gstate_out->defined()) {
    a.gstate_out = as_contiguous(*gstate_out, math);
  }
  // Checkpoints saved by wkv_forward(..., save_checkpoints=True); an empty (B, 0, 3, C) tensor
  // (none saved) or None means: recompute them.
  if (checkpoints.has_value() && checkpoints->defined() &&
      !(checkpoints->dim() == 4 && checkpoints->size(1) == 0)) {
    check_buffer(op, *checkpoints, "checkpoints", math, "the math dtype", k,
                 "(B, ceil(T / 32), 3, C)", {a.B, num_checkpoints(a.T), 3, a.C});
    a.checkpoints = as_contiguous(*checkpoints, math);
  }
  a.gk = new_tensor({a.B, a.T, a.C}, a.k.scalar_type(), a.k);
  a.gv = new_tensor({a.B, a.T, a.C}, a.k.scalar_type(), a.k);
  a.gw = new_tensor({a.C}, math, a.k);
  a.gu = new_tensor({a.C}, math, a.k);
  a.sum_rows = true;
  a.gstate_in = new_tensor({a.B, 3, a.C}, math, a.k);
  if (!is_empty(a)) {
    launch_backward(a);
  } else {  // no step: zero parameter gradients, the state's gradient passes through
    torch::stable::zero_(a.gw);
    torch::stable::zero_(a.gu);
    if (a.gstate_out.defined()) {
      torch::stable::copy_(a.gstate_in, a.gstate_out);
    } else {
      torch::stable::zero_(a.gstate_in);
    }
  }
  const auto back = [](const Tensor& g, const Tensor& like) {
    return g.scalar_type() == like.scalar_type() ? g : torch::stable::to(g, like.scalar_type());
  };
  return {back(a.gw, time_decay), back(a.gu, time_first), a.gk, a.gv, a.gstate_in};
}

// ---- chunking of the CUDA kernels -----------------------------------------------------------

std::atomic<int64_t>& chunk_setting_ref() {
  static std::atomic<int64_t> setting{0};
  return setting;
}

int64_t cuda_chunk_op(std::optional<int64_t> set) {
  if (set.has_value()) {
    WKV_CHECK_VALUE(*set >= -1, "chunk length must be 0 (auto), -1 (serial) or positive, got ",
                    *set);
    chunk_setting_ref().store(*set);
  }
  return chunk_setting_ref().load();
}

// The chunk length the CUDA kernels (sms = 0: of the current GPU, or the emulated one) would use.
int64_t cuda_plan_op(int64_t B, int64_t T, int64_t C, int64_t sms) {
  check_sizes("wkv.cuda_plan", B, T, C, 1);
  if (sms <= 0) {
    sms = kEmulatedSms;
#ifdef WKV_WITH_CUDA
    int count = 0;
    if (cudaGetDeviceCount(&count) == cudaSuccess && count > 0) {
      int device = 0;
      if (cudaGetDevice(&device) == cudaSuccess) sms = cuda_sm_count(device);
    }
#endif
  }
  return plan_chunk(B, T, C, sms, chunk_setting());
}

// ---- build facts ----------------------------------------------------------------------------

}  // namespace

int64_t chunk_setting() { return chunk_setting_ref().load(); }

STABLE_TORCH_LIBRARY_FRAGMENT(wkv, m) {  // the library itself: csrc/library.cpp
  m.def(
      "forward(int B, int T, int C, Tensor w, Tensor u, Tensor k, Tensor v, Tensor(a!) y) -> ()");
  m.def(
      "backward(int B, int T, int C, Tensor w, Tensor u, Tensor k, Tensor v, Tensor gy, "
      "Tensor(a!) gw, Tensor(b!) gu, Tensor(c!) gk, Tensor(d!) gv) -> ()");
  // wkv_forward returns (y, state_out, checkpoints); checkpoints is (B, ceil(T/32), 3, C) if
  // save_checkpoints, else (B, 0, 3, C). wkv_backward uses them if given, else recomputes them.
  m.def(
      "wkv_forward(Tensor time_decay, Tensor time_first, Tensor k, Tensor v, "
      "Tensor? state=None, bool save_checkpoints=False) -> (Tensor, Tensor, Tensor)");
  m.def(
      "wkv_backward(Tensor time_decay, Tensor time_first, Tensor k, Tensor v, Tensor? state, "
      "Tensor gy, Tensor? gstate_out, Tensor? checkpoints=None) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Tensor-free settings of the CUDA kernels (CompositeExplicitAutograd: no tensor to dispatch on).
  m.def("cuda_chunk(int? set=None) -> int");
  m.def("cuda_plan(int B, int T, int C, int sms=0) -> int");
}

STABLE_TORCH_LIBRARY_IMPL(wkv, CompositeExplicitAutograd, m) {
  m.impl("cuda_chunk", TORCH_BOX(&cuda_chunk_op));
  m.impl("cuda_plan", TORCH_BOX(&cuda_plan_op));
}

STABLE_TORCH_LIBRARY_IMPL(wkv, CPU, m) {
  m.impl("forward", TORCH_BOX(&legacy_forward));
  m.impl("backward", TORCH_BOX(&legacy_backward));
  m.impl("wkv_forward", TORCH_BOX(&wkv_forward));
  m.impl("wkv_backward", TORCH_BOX(&wkv_backward));
}

#ifdef WKV_WITH_CUDA
STABLE_TORCH_LIBRARY_IMPL(wkv, CUDA, m) {
  m.impl("forward", TORCH_BOX(&legacy_forward));
  m.impl("backward", TORCH_BOX(&legacy_backward));
  m.impl("wkv_forward", TORCH_BOX(&wkv_forward));
  m.impl("wkv_backward", TORCH_BOX(&wkv_backward));
}
#endif

}  // namespace wkv
