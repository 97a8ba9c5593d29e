// The op schemas (TORCH_LIBRARY(wkv)), argument checks, and the CPU/CUDA registrations.
//
// Two families of ops:
//   wkv::forward / wkv::backward   RWKV-LM's wkv_op.cpp contract: sizes passed explicitly,
//                                  outputs preallocated and written in place (annotated (a!)
//                                  in the schema). Every tensor must be contiguous: these ops
//                                  write through raw pointers and never copy behind your back.
//   wkv::wkv_forward / wkv_backward functional: shapes from the tensors, optional state, no
//                                  mutation; any strides (non-contiguous inputs are copied).
//                                  Python registers their fake kernels and autograd
//                                  (src/rwkv_wkv/ops.py), so torch.compile and opcheck work.
// Every check runs before any pointer is touched and raises ValueError (bad dtype, shape,
// size or layout) or RuntimeError (device), naming the argument and what was expected.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <torch/version.h>

#include <atomic>
#include <sstream>
#include <string>

#ifdef WKV_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#include "wkv_chunked.h"
#include "wkv_launch.h"

namespace wkv {
namespace {

bool is_input_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

// float64 inputs are computed in float64, everything else in float32.
at::ScalarType math_dtype(const at::Tensor& k) {
  return k.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

std::string shape_str(std::initializer_list<int64_t> s) {
  std::ostringstream os;
  os << "(";
  bool first = true;
  for (auto d : s) {
    os << (first ? "" : ", ") << d;
    first = false;
  }
  os << (s.size() == 1 ? ",)" : ")");
  return os.str();
}

void check_defined(const char* op, const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(x.defined(), op, ": ", name, " must be a tensor, got None");
}

void check_shape(const char* op, const at::Tensor& x, const char* name, const char* symbolic,
                 std::initializer_list<int64_t> expected) {
  bool ok = x.dim() == static_cast<int64_t>(expected.size());
  if (ok) {
    int64_t i = 0;
    for (auto d : expected) ok = ok && x.size(i++) == d;
  }
  TORCH_CHECK_VALUE(ok, op, ": ", name, " must have shape ", symbolic, " = ", shape_str(expected),
                    ", got ", x.sizes());
}

void check_dtype(const char* op, const at::Tensor& x, const char* name, at::ScalarType want,
                 const char* why) {
  TORCH_CHECK_VALUE(x.scalar_type() == want, op, ": ", name, " must have dtype ", want, " (", why,
                    "), got ", x.scalar_type());
}

void check_device(const char* op, const at::Tensor& x, const char* name, const at::Tensor& k) {
  TORCH_CHECK(x.device() == k.device(), op, ": ", name, " is on ", x.device(),
              " but k is on ", k.device(), "; all tensors must be on one device");
}

void check_contiguous(const char* op, const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(x.is_contiguous(), op, ": ", name,
                    " must be contiguous (this op writes through raw pointers; call "
                    ".contiguous() first), got strides ",
                    x.strides());
}

void check_sizes(const char* op, int64_t B, int64_t T, int64_t C) {
  TORCH_CHECK_VALUE(B >= 1, op, ": B must be >= 1, got ", B);
  TORCH_CHECK_VALUE(T >= 1, op, ": T must be >= 1, got ", T);
  TORCH_CHECK_VALUE(C >= 1, op, ": C must be >= 1, got ", C);
}

// Checks the parameters (C,) and the sequences (B, T, C) shared by every op.
void check_common(const char* op, int64_t B, int64_t T, int64_t C, const at::Tensor& w,
                  const char* w_name, const at::Tensor& u, const char* u_name,
                  const at::Tensor& k, const at::Tensor& v) {
  check_defined(op, k, "k");
  check_defined(op, v, "v");
  check_defined(op, w, w_name);
  check_defined(op, u, u_name);
  TORCH_CHECK_VALUE(is_input_dtype(k.scalar_type()), op,
                    ": k must have dtype float32, float64, bfloat16 or float16, got ",
                    k.scalar_type());
  check_dtype(op, v, "v", k.scalar_type(), "the same as k");
  TORCH_CHECK_VALUE(w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble, op, ": ",
                    w_name, " must have dtype float32 or float64, got ", w.scalar_type());
  check_dtype(op, u, u_name, w.scalar_type(), w_name);
  TORCH_CHECK(k.device().is_cpu() || k.device().is_cuda(), op,
              ": tensors must be on a CPU or CUDA device, got ", k.device());
  check_device(op, v, "v", k);
  check_device(op, w, w_name, k);
  check_device(op, u, u_name, k);
  check_shape(op, k, "k", "(B, T, C)", {B, T, C});
  check_shape(op, v, "v", "(B, T, C)", {B, T, C});
  check_shape(op, w, w_name, "(C,)", {C});
  check_shape(op, u, u_name, "(C,)", {C});
}

// A (B, 3, C) state tensor in the math dtype (optional).
void check_state(const char* op, const std::optional<at::Tensor>& s, const char* name,
                 const at::Tensor& k, int64_t B, int64_t C) {
  if (!s.has_value() || !s->defined()) return;
  const auto math = math_dtype(k);
  check_dtype(op, *s, name, math,
              math == at::kDouble ? "the math dtype for float64 k" : "the math dtype, float32");
  check_device(op, *s, name, k);
  check_shape(op, *s, name, "(B, 3, C)", {B, 3, C});
}

void launch_forward(const Launch& a) {
  if (a.k.is_cuda()) {
#ifdef WKV_WITH_CUDA
    return forward_cuda(a);
#else
    TORCH_CHECK(false, "rwkv_wkv was built without CUDA support");
#endif
  }
  forward_cpu(a);
}

void launch_backward(const Launch& a) {
  if (a.k.is_cuda()) {
#ifdef WKV_WITH_CUDA
    return backward_cuda(a);
#else
    TORCH_CHECK(false, "rwkv_wkv was built without CUDA support");
#endif
  }
  backward_cpu(a);
}

// ---- RWKV-LM contract -----------------------------------------------------------------------

// An output or extra input of the legacy ops: present, of `dtype`, on k's device, of `shape`.
void check_buffer(const char* op, const at::Tensor& x, const char* name, at::ScalarType dtype,
                  const char* why, const at::Tensor& k, const char* symbolic,
                  std::initializer_list<int64_t> shape) {
  check_defined(op, x, name);
  check_dtype(op, x, name, dtype, why);
  check_device(op, x, name, k);
  check_shape(op, x, name, symbolic, shape);
}

// The part of a legacy call shared by forward and backward: sizes, parameters, sequences.
Launch legacy_launch(const char* op, int64_t B, int64_t T, int64_t C, const at::Tensor& w,
                     const at::Tensor& u, const at::Tensor& k, const at::Tensor& v) {
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
  a.w = w.to(math);
  a.u = u.to(math);
  a.k = k;
  a.v = v;
  return a;
}

void legacy_forward(int64_t B, int64_t T, int64_t C, const at::Tensor& w, const at::Tensor& u,
                    const at::Tensor& k, const at::Tensor& v, const at::Tensor& y) {
  const char* op = "wkv.forward";
  Launch a = legacy_launch(op, B, T, C, w, u, k, v);
  check_buffer(op, y, "y", k.scalar_type(), "the same as k", k, "(B, T, C)", {B, T, C});
  check_contiguous(op, y, "y");
  a.y = y;
  launch_forward(a);
}

void legacy_backward(int64_t B, int64_t T, int64_t C, const at::Tensor& w, const at::Tensor& u,
                     const at::Tensor& k, const at::Tensor& v, const at::Tensor& gy,
                     const at::Tensor& gw, const at::Tensor& gu, const at::Tensor& gk,
                     const at::Tensor& gv) {
  const char* op = "wkv.backward";
  Launch a = legacy_launch(op, B, T, C, w, u, k, v);
  const auto math = a.w.scalar_type();
  const char* why = math == at::kDouble ? "gradients of float64 k accumulate in float64"
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
  launch_backward(a);
}

// ---- functional ops -------------------------------------------------------------------------

// Validates the functional inputs and fills the shared part of a Launch.
Launch functional_launch(const char* op, const at::Tensor& time_decay,
                         const at::Tensor& time_first, const at::Tensor& k, const at::Tensor& v,
                         const std::optional<at::Tensor>& state) {
  check_defined(op, k, "k");
  TORCH_CHECK_VALUE(k.dim() == 3, op, ": k must have 3 dimensions (B, T, C), got shape ",
                    k.sizes());
  const int64_t B = k.size(0), T = k.size(1), C = k.size(2);
  TORCH_CHECK_VALUE(B >= 1 && T >= 1 && C >= 1, op,
                    ": k must be non-empty, (B, T, C) with each >= 1, got shape ", k.sizes());
  check_common(op, B, T, C, time_decay, "time_decay", time_first, "time_first", k, v);
  check_state(op, state, "state", k, B, C);
  const auto math = math_dtype(k);
  Launch a;
  a.B = B;
  a.T = T;
  a.C = C;
  // The kernels form w = -exp(time_decay) themselves (in the math dtype, as RWKV-LM's Python
  // does): on a GPU that saves two small launches per call.
  a.w = time_decay.to(math).contiguous();
  a.w_is_log = true;
  a.u = time_first.to(math).contiguous();
  a.k = k.contiguous();
  a.v = v.contiguous();
  if (state.has_value() && state->defined()) a.state_in = state->contiguous();
  return a;
}

int64_t num_checkpoints(int64_t T) { return (T + kCheckpointSteps - 1) / kCheckpointSteps; }

std::tuple<at::Tensor, at::Tensor, at::Tensor> wkv_forward(
    const at::Tensor& time_decay, const at::Tensor& time_first, const at::Tensor& k,
    const at::Tensor& v, const std::optional<at::Tensor>& state, bool save_checkpoints) {
  Launch a = functional_launch("wkv.wkv_forward", time_decay, time_first, k, v, state);
  a.y = at::empty({a.B, a.T, a.C}, a.k.options());
  a.state_out = at::empty({a.B, 3, a.C}, a.w.options());
  // Always returned (the schema has three outputs); (B, 0, 3, C) when not asked for.
  const at::Tensor checkpoints =
      at::empty({a.B, save_checkpoints ? num_checkpoints(a.T) : 0, 3, a.C}, a.w.options());
  if (save_checkpoints) a.checkpoints = checkpoints;
  launch_forward(a);
  return {a.y, a.state_out, checkpoints};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> wkv_backward(
    const at::Tensor& time_decay, const at::Tensor& time_first, const at::Tensor& k,
    const at::Tensor& v, const std::optional<at::Tensor>& state, const at::Tensor& gy,
    const std::optional<at::Tensor>& gstate_out, const std::optional<at::Tensor>& checkpoints) {
  const char* op = "wkv.wkv_backward";
  Launch a = functional_launch(op, time_decay, time_first, k, v, state);
  check_buffer(op, gy, "gy", k.scalar_type(), "the same as k", k, "(B, T, C)", {a.B, a.T, a.C});
  check_state(op, gstate_out, "gstate_out", k, a.B, a.C);
  a.gy = gy.contiguous();
  if (gstate_out.has_value() && gstate_out->defined()) a.gstate_out = gstate_out->contiguous();
  // Checkpoints saved by wkv_forward(..., save_checkpoints=True); an empty (B, 0, 3, C) tensor
  // (none saved) or None means: recompute them.
  if (checkpoints.has_value() && checkpoints->defined() &&
      !(checkpoints->dim() == 4 && checkpoints->size(1) == 0)) {
    const auto math = math_dtype(k);
    check_buffer(op, *checkpoints, "checkpoints", math, "the math dtype", k,
                 "(B, ceil(T / 32), 3, C)", {a.B, num_checkpoints(a.T), 3, a.C});
    a.checkpoints = checkpoints->contiguous();
  }
  a.gk = at::empty({a.B, a.T, a.C}, a.k.options());
  a.gv = at::empty({a.B, a.T, a.C}, a.k.options());
  a.gw = at::empty({a.C}, a.w.options());
  a.gu = at::empty({a.C}, a.w.options());
  a.sum_rows = true;
  a.gstate_in = at::empty({a.B, 3, a.C}, a.w.options());
  launch_backward(a);
  return {a.gw.to(time_decay.scalar_type()), a.gu.to(time_first.scalar_type()), a.gk, a.gv,
          a.gstate_in};
}

// ---- chunking of the CUDA kernels -----------------------------------------------------------

std::atomic<int64_t>& chunk_setting_ref() {
  static std::atomic<int64_t> setting{0};
  return setting;
}

int64_t cuda_chunk_op(std::optional<int64_t> set) {
  if (set.has_value()) {
    TORCH_CHECK_VALUE(*set >= -1, "chunk length must be 0 (auto), -1 (serial) or positive, got ",
                      *set);
    chunk_setting_ref().store(*set);
  }
  return chunk_setting_ref().load();
}

// The chunk length the CUDA kernels (sms = 0: of the current GPU, or the emulated one) would use.
int64_t cuda_plan_op(int64_t B, int64_t T, int64_t C, int64_t sms) {
  check_sizes("wkv.cuda_plan", B, T, C);
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

std::string build_info() {
  std::ostringstream os;
#ifdef WKV_WITH_CUDA
  os << "cuda=1;";
#else
  os << "cuda=0;";
#endif
#ifdef _OPENMP
  os << "openmp=1;";
#else
  os << "openmp=0;";
#endif
  os << "torch=" << TORCH_VERSION << ";";
#ifdef WKV_HAVE_X86_KERNELS
  os << "cpu_kernels=avx512,avx2,scalar;";
#else
  os << "cpu_kernels=scalar;";
#endif
#ifdef WKV_CUDA_ARCHS
  os << "cuda_archs=" << WKV_CUDA_ARCHS << ";";
#endif
  os << "cpu_isa=" << cpu_isa();
  return os.str();
}

}  // namespace

int64_t chunk_setting() { return chunk_setting_ref().load(); }

namespace {

std::string cpu_isa_op(const std::optional<std::string>& set) {
  return set.has_value() ? set_cpu_isa(*set) : cpu_isa();
}

}  // namespace

TORCH_LIBRARY(wkv, m) {
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
  m.def("build_info() -> str", &build_info);
  m.def("cpu_isa(str? set=None) -> str", &cpu_isa_op);
  m.def("cuda_chunk(int? set=None) -> int", &cuda_chunk_op);
  m.def("cuda_plan(int B, int T, int C, int sms=0) -> int", &cuda_plan_op);
}

TORCH_LIBRARY_IMPL(wkv, CPU, m) {
  m.impl("forward", &legacy_forward);
  m.impl("backward", &legacy_backward);
  m.impl("wkv_forward", &wkv_forward);
  m.impl("wkv_backward", &wkv_backward);
}

#ifdef WKV_WITH_CUDA
TORCH_LIBRARY_IMPL(wkv, CUDA, m) {
  m.impl("forward", &legacy_forward);
  m.impl("backward", &legacy_backward);
  m.impl("wkv_forward", &wkv_forward);
  m.impl("wkv_backward", &wkv_backward);
}
#endif

}  // namespace wkv
