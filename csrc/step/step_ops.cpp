// The fused single-token step's op (a fragment of the wkv library): checks, the weight lists
// turned into pointers, and the run-time choice of instruction set (csrc/common/cpu_isa).
//
//   rwkv4_step(x, state!, vectors, matrices, scales, eps, eps_out) -> logits
//
// x: (B, C) float32, the tokens' embedding rows (not modified); state: (B, L, 5, C) float32,
// updated in place (RWKV-4's layout: time-mix shift, aa, bb, pp, channel-mix shift).
// vectors (float32, (C,) each): ln0.weight, ln0.bias; per layer ln1.weight, ln1.bias,
// ln2.weight, ln2.bias, w = -exp(time_decay), u = time_first, att.time_mix_k, _v, _r,
// ffn.time_mix_k, _r; ln_out.weight, ln_out.bias. matrices (rows = outputs, row-major; float32,
// bfloat16, float16 or int8): per layer att.key, att.value, att.receptance, att.output,
// ffn.key (F, C), ffn.receptance, ffn.value (C, F); head (V, C); or uint8: 4-bit packed (step.h
// Format::Q4). scales: one per matrix, (rows,) float32 for an int8 matrix, (rows, 2 * ceil(cols /
// 64)) for a 4-bit one, an empty tensor otherwise. Python builds the lists
// (src/rwkv_wkv/fused_step.py); every check here runs before any pointer is read.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <cstring>
#include <vector>

#include "common/args.h"
#include "common/cpu_isa.h"
#include "step/step.h"

namespace wkv::step {
namespace {

constexpr const char* kOp = "wkv.rwkv4_step";
constexpr int kLayerVectors = 11, kLayerMatrices = 7;
constexpr const char* kVectorNames[kLayerVectors] = {
    "ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "w (-exp(time_decay))", "time_first",
    "att.time_mix_k", "att.time_mix_v", "att.time_mix_r", "ffn.time_mix_k", "ffn.time_mix_r"};
constexpr const char* kMatrixNames[kLayerMatrices] = {"att.key", "att.value", "att.receptance", "att.output",
                                                      "ffn.key", "ffn.receptance", "ffn.value"};

const float* vector_ptr(const char* op, const Tensor& t, int64_t C, const std::string& name) {
  check_defined(op, t, name.c_str());
  WKV_CHECK(t.is_cpu(), op, ": ", name, " must be on the CPU (the fused step is a CPU kernel), got ",
            device_name(t.device()));
  check_dtype(op, t, name.c_str(), kFloat, "the fused step's vectors are float32");
  check_shape(op, t, name.c_str(), "(C,)", {C});
  check_contiguous(op, t, name.c_str());
  return static_cast<const float*>(t.data_ptr());
}

Matrix matrix(const char* op, const Tensor& t, const Tensor& scale, int64_t rows, int64_t cols,
              const std::string& name) {
  check_defined(op, t, name.c_str());
  WKV_CHECK(t.is_cpu(), op, ": ", name, " must be on the CPU (the fused step is a CPU kernel), got ",
            device_name(t.device()));
  const bool q4 = t.scalar_type() == ScalarType::Byte;
  if (q4) {
    check_shape(op, t, name.c_str(), "(rows, ceil(cols / 64) * 32): packed 4-bit", {rows, q4_row_bytes(cols)});
  } else {
    check_shape(op, t, name.c_str(), "(rows, cols)", {rows, cols});
  }
  check_contiguous(op, t, name.c_str());
  Matrix m;
  m.w = t.data_ptr();
  m.rows = rows;
  m.cols = cols;
  switch (t.scalar_type()) {
    case ScalarType::Float: m.format = Format::F32; break;
    case ScalarType::BFloat16: m.format = Format::BF16; break;
    case ScalarType::Half: m.format = Format::F16; break;
    case ScalarType::Char: m.format = Format::I8; break;
    case ScalarType::Byte: m.format = Format::Q4; break;
    default:
      WKV_CHECK_VALUE(false, op, ": ", name, " must have dtype torch.float32, torch.bfloat16, torch.float16, ",
                      "torch.int8 or torch.uint8 (packed 4-bit), got ", dtype_name(t.scalar_type()));
  }
  if (m.format == Format::Q4) {
    const std::string sname = name + "'s scale";
    check_dtype(op, scale, sname.c_str(), kFloat, "one float32 per block of 32 inputs of a 4-bit matrix");
    check_shape(op, scale, sname.c_str(), "(rows, 2 * ceil(cols / 64))", {rows, q4_row_scales(cols)});
    check_contiguous(op, scale, sname.c_str());
    m.scale = static_cast<const float*>(scale.data_ptr());
  } else if (m.format == Format::I8) {
    const std::string sname = name + "'s scale";
    check_dtype(op, scale, sname.c_str(), kFloat, "one float32 per row of an int8 matrix");
    check_shape(op, scale, sname.c_str(), "(rows,)", {rows});
    check_contiguous(op, scale, sname.c_str());
    m.scale = static_cast<const float*>(scale.data_ptr());
  } else {
    WKV_CHECK_VALUE(!scale.defined() || scale.numel() == 0, op, ": ", name,
                    " is not int8, so its scale must be an empty tensor, got shape ", scale.sizes());
  }
  return m;
}

// The checks both ops share: x (B, C) float32 on the CPU, the list lengths for a whole number of
// layers (`per_layer` vectors and matrices each, plus the ends). Returns L.
int64_t check_lists(const char* op, const Tensor& x, const Tensor& state, const std::vector<Tensor>& vectors,
                    const std::vector<Tensor>& matrices, const std::vector<Tensor>& scales, int vectors_per_layer,
                    int matrices_per_layer) {
  check_defined(op, x, "x");
  check_defined(op, state, "state");
  WKV_CHECK_VALUE(x.dim() == 2, op, ": x must have shape (B, C), got ", x.sizes());
  check_dtype(op, x, "x", kFloat, "the embedding rows in float32");
  WKV_CHECK(x.is_cpu() && state.is_cpu(), op, ": x and state must be on the CPU, got ", device_name(x.device()),
            " and ", device_name(state.device()));
  WKV_CHECK_VALUE(matrices.size() > 1 && (matrices.size() - 1) % matrices_per_layer == 0, op, ": matrices must hold ",
                  matrices_per_layer, " per layer and the head, got ", matrices.size());
  const int64_t L = int64_t(matrices.size() - 1) / matrices_per_layer;
  WKV_CHECK_VALUE(int64_t(vectors.size()) == 4 + vectors_per_layer * L, op, ": vectors must hold ",
                  4 + vectors_per_layer * L, " tensors for ", L, " layers, got ", vectors.size());
  WKV_CHECK_VALUE(scales.size() == matrices.size(), op, ": scales must hold one tensor per matrix (",
                  matrices.size(), "), got ", scales.size());
  check_dtype(op, state, "state", kFloat, "the recurrent state in float32");
  check_contiguous(op, state, "state");
  return L;
}

// Layer l's `n` matrices (and their scales) in list order into out[0..n), each checked against
// its (rows, cols) in `shapes` and named in errors by `names`.
void layer_matrices(const char* op, const std::vector<Tensor>& matrices, const std::vector<Tensor>& scales,
                    int64_t l, int n, const int64_t (*shapes)[2], const char* const* names, Matrix* const* out) {
  for (int i = 0; i < n; ++i) {
    const size_t j = size_t(l * n + i);
    *out[i] = matrix(op, matrices[j], scales[j], shapes[i][0], shapes[i][1], message("layer ", l, " ", names[i]));
  }
}

// What both generations have around the layers: ln0 (the first two vectors), ln_out (the two after
// the layers' `layer_vectors`) and the head (the last matrix, (V, C)).
template <class Model>
void model_ends(const char* op, const std::vector<Tensor>& vectors, const std::vector<Tensor>& matrices,
                const std::vector<Tensor>& scales, int64_t layer_vectors, int64_t C, Model& m) {
  m.ln0_w = vector_ptr(op, vectors[0], C, "ln0.weight");
  m.ln0_b = vector_ptr(op, vectors[1], C, "ln0.bias");
  m.ln_out_w = vector_ptr(op, vectors[2 + layer_vectors], C, "ln_out.weight");
  m.ln_out_b = vector_ptr(op, vectors[3 + layer_vectors], C, "ln_out.bias");
  m.head = matrix(op, matrices.back(), scales.back(), m.V, C, "head");
}

int64_t rows_of(const std::vector<Tensor>& matrices, size_t i) {
  return matrices[i].defined() && matrices[i].dim() == 2 ? matrices[i].size(0) : 0;
}

// The three kernels of a step (the SIMD units exist on x86 builds only).
#if defined(WKV_HAVE_X86_KERNELS)
#define WKV_STEP_KERNELS(name) &name##_avx512, &name##_avx2, &name##_scalar
#else
#define WKV_STEP_KERNELS(name) nullptr, nullptr, &name##_scalar
#endif

// Runs the kernel of the current instruction set on a scratch copy of x (the residual stream).
template <class Model>
using Kernel = void (*)(const Model&, float* x, float* state, float* logits, int64_t B);

template <class Model>
Tensor run(const Tensor& x, Tensor& state, const Model& m, Kernel<Model> avx512, Kernel<Model> avx2,
           Kernel<Model> scalar) {
  const int64_t B = x.size(0), C = x.size(1);
  Tensor logits = new_tensor({B, m.V}, kFloat, x);
  if (B == 0) return logits;
  std::vector<float> xs(size_t(B * C));
  const Tensor xc = as_contiguous(x, kFloat);
  std::memcpy(xs.data(), xc.data_ptr(), sizeof(float) * size_t(B * C));
  float* sp = static_cast<float*>(state.data_ptr());
  float* lp = static_cast<float*>(logits.data_ptr());
  switch (current_isa()) {
#if defined(WKV_HAVE_X86_KERNELS)
    case Isa::Avx512: avx512(m, xs.data(), sp, lp, B); break;
    case Isa::Avx2: avx2(m, xs.data(), sp, lp, B); break;
#endif
    default: scalar(m, xs.data(), sp, lp, B); break;
  }
  return logits;
}

Tensor rwkv4_step(const Tensor& x, Tensor state, const std::vector<Tensor>& vectors,
                  const std::vector<Tensor>& matrices, const std::vector<Tensor>& scales, double eps,
                  double eps_out) {
  const int64_t L = check_lists(kOp, x, state, vectors, matrices, scales, kLayerVectors, kLayerMatrices);
  const int64_t B = x.size(0), C = x.size(1);
  check_shape(kOp, state, "state", "(B, L, 5, C)", {B, L, 5, C});
  const int64_t F = rows_of(matrices, 4), V = rows_of(matrices, matrices.size() - 1);
  WKV_CHECK_VALUE(F > 0 && V > 0, kOp, ": ffn.key and head must be 2-D with at least one row");

  Rwkv4Model m;
  m.C = C;
  m.F = F;
  m.V = V;
  m.L = L;
  m.nthreads = static_cast<int>(torch::stable::get_num_threads());
  m.eps = float(eps);
  m.eps_out = float(eps_out);
  std::vector<Rwkv4Layer> layers(L);
  for (int64_t l = 0; l < L; ++l) {
    const float* p[kLayerVectors];
    for (int i = 0; i < kLayerVectors; ++i) {
      p[i] = vector_ptr(kOp, vectors[2 + l * kLayerVectors + i], C, message("layer ", l, " ", kVectorNames[i]));
    }
    Rwkv4Layer& ly = layers[l];
    ly.ln1_w = p[0], ly.ln1_b = p[1], ly.ln2_w = p[2], ly.ln2_b = p[3], ly.w = p[4], ly.u = p[5];
    ly.att_mix_k = p[6], ly.att_mix_v = p[7], ly.att_mix_r = p[8], ly.ffn_mix_k = p[9], ly.ffn_mix_r = p[10];
    const int64_t shapes[kLayerMatrices][2] = {{C, C}, {C, C}, {C, C}, {C, C}, {F, C}, {C, C}, {C, F}};
    Matrix* out[kLayerMatrices] = {&ly.att_key, &ly.att_value, &ly.att_receptance, &ly.att_output,
                                   &ly.ffn_key, &ly.ffn_receptance, &ly.ffn_value};
    layer_matrices(kOp, matrices, scales, l, kLayerMatrices, shapes, kMatrixNames, out);
  }
  m.layers = layers.data();
  model_ends(kOp, vectors, matrices, scales, kLayerVectors * L, C, m);
  return run(x, state, m, WKV_STEP_KERNELS(rwkv4_step));
}

constexpr const char* kOp7 = "wkv.rwkv7_step";
constexpr int kLayerVectors7 = 19, kLayerMatrices7 = 14;
constexpr const char* kVectorNames7[kLayerVectors7] = {
    "ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "att.x_r", "att.x_w", "att.x_k", "att.x_v", "att.x_a",
    "att.x_g", "att.w0", "att.a0", "att.v0", "att.k_k", "att.k_a", "att.r_k", "att.ln_x.weight", "att.ln_x.bias",
    "ffn.x_k"};
constexpr const char* kMatrixNames7[kLayerMatrices7] = {
    "att.receptance", "att.key", "att.value", "att.output", "att.w1.T", "att.w2.T", "att.a1.T", "att.a2.T",
    "att.v1.T", "att.v2.T", "att.g1.T", "att.g2.T", "ffn.key", "ffn.value"};

// rwkv7_step(x, state!, vectors, matrices, scales, eps, eps_out, head_size) -> logits
// vectors (float32, (C,)): ln0.weight, ln0.bias; per layer the 19 of kVectorNames7 (r_k flattened);
// ln_out.weight, ln_out.bias. matrices: per layer the 14 of kMatrixNames7 (the low-rank ones
// transposed: (out, in)); head. state: (B, L, 2 + N, C) float32.
Tensor rwkv7_step(const Tensor& x, Tensor state, const std::vector<Tensor>& vectors,
                  const std::vector<Tensor>& matrices, const std::vector<Tensor>& scales, double eps,
                  double eps_out, int64_t head_size) {
  const char* op = kOp7;
  const int64_t L = check_lists(op, x, state, vectors, matrices, scales, kLayerVectors7, kLayerMatrices7);
  const int64_t B = x.size(0), C = x.size(1), N = head_size;
  WKV_CHECK_VALUE(N >= 1 && C % N == 0, op, ": head_size must divide C = ", C, ", got ", N);
  check_shape(op, state, "state", "(B, L, 2 + N, C)", {B, L, 2 + N, C});
  const int64_t Dw = rows_of(matrices, 4), Da = rows_of(matrices, 6), Dv = rows_of(matrices, 8),
                Dg = rows_of(matrices, 10), F = rows_of(matrices, 12), V = rows_of(matrices, matrices.size() - 1);
  WKV_CHECK_VALUE(Dw > 0 && Da > 0 && Dv > 0 && Dg > 0 && F > 0 && V > 0, op,
                  ": the low-rank matrices, ffn.key and head must be 2-D with at least one row");

  Rwkv7Model m;
  m.C = C, m.F = F, m.V = V, m.L = L, m.N = N;
  m.nthreads = static_cast<int>(torch::stable::get_num_threads());
  m.eps = float(eps), m.eps_out = float(eps_out);
  std::vector<Rwkv7Layer> layers(L);
  for (int64_t l = 0; l < L; ++l) {
    const float* p[kLayerVectors7];
    for (int i = 0; i < kLayerVectors7; ++i) {
      p[i] = vector_ptr(op, vectors[2 + l * kLayerVectors7 + i], C, message("layer ", l, " ", kVectorNames7[i]));
    }
    Rwkv7Layer& y = layers[l];
    const float** fields[kLayerVectors7] = {&y.ln1_w, &y.ln1_b, &y.ln2_w, &y.ln2_b, &y.x_r, &y.x_w, &y.x_k,
                                            &y.x_v, &y.x_a, &y.x_g, &y.w0, &y.a0, &y.v0, &y.k_k, &y.k_a,
                                            &y.r_k, &y.ln_x_w, &y.ln_x_b, &y.ffn_x_k};
    for (int i = 0; i < kLayerVectors7; ++i) *fields[i] = p[i];
    const int64_t shapes[kLayerMatrices7][2] = {{C, C}, {C, C}, {C, C}, {C, C}, {Dw, C}, {C, Dw}, {Da, C},
                                                {C, Da}, {Dv, C}, {C, Dv}, {Dg, C}, {C, Dg}, {F, C}, {C, F}};
    Matrix* out[kLayerMatrices7] = {&y.receptance, &y.key, &y.value, &y.output, &y.w1t, &y.w2t, &y.a1t,
                                    &y.a2t, &y.v1t, &y.v2t, &y.g1t, &y.g2t, &y.ffn_key, &y.ffn_value};
    layer_matrices(op, matrices, scales, l, kLayerMatrices7, shapes, kMatrixNames7, out);
  }
  m.layers = layers.data();
  model_ends(op, vectors, matrices, scales, kLayerVectors7 * L, C, m);
  return run(x, state, m, WKV_STEP_KERNELS(rwkv7_step));
}

}  // namespace

STABLE_TORCH_LIBRARY_FRAGMENT(wkv, m) {
  m.def("rwkv4_step(Tensor x, Tensor(a!) state, Tensor[] vectors, Tensor[] matrices, Tensor[] scales, "
        "float eps, float eps_out) -> Tensor");
  m.def("rwkv7_step(Tensor x, Tensor(a!) state, Tensor[] vectors, Tensor[] matrices, Tensor[] scales, "
        "float eps, float eps_out, int head_size) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(wkv, CPU, m) {
  m.impl("rwkv4_step", TORCH_BOX(&rwkv4_step));
  m.impl("rwkv7_step", TORCH_BOX(&rwkv7_step));
}

}  // namespace wkv::step
