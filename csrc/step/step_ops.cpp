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
// ffn.key (F, C), ffn.receptance, ffn.value (C, F); head (V, C). scales: one per matrix, (rows,)
// float32 for an int8 matrix, an empty tensor otherwise. Python builds the lists
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

const float* vector_ptr(const Tensor& t, int64_t C, const std::string& name) {
  check_defined(kOp, t, name.c_str());
  WKV_CHECK(t.is_cpu(), kOp, ": ", name, " must be on the CPU (the fused step is a CPU kernel), got ",
            device_name(t.device()));
  check_dtype(kOp, t, name.c_str(), kFloat, "the fused step's vectors are float32");
  check_shape(kOp, t, name.c_str(), "(C,)", {C});
  check_contiguous(kOp, t, name.c_str());
  return static_cast<const float*>(t.data_ptr());
}

Matrix matrix(const Tensor& t, const Tensor& scale, int64_t rows, int64_t cols, const std::string& name) {
  check_defined(kOp, t, name.c_str());
  WKV_CHECK(t.is_cpu(), kOp, ": ", name, " must be on the CPU (the fused step is a CPU kernel), got ",
            device_name(t.device()));
  check_shape(kOp, t, name.c_str(), "(rows, cols)", {rows, cols});
  check_contiguous(kOp, t, name.c_str());
  Matrix m;
  m.w = t.data_ptr();
  m.rows = rows;
  m.cols = cols;
  switch (t.scalar_type()) {
    case ScalarType::Float: m.format = Format::F32; break;
    case ScalarType::BFloat16: m.format = Format::BF16; break;
    case ScalarType::Half: m.format = Format::F16; break;
    case ScalarType::Char: m.format = Format::I8; break;
    default:
      WKV_CHECK_VALUE(false, kOp, ": ", name, " must have dtype torch.float32, torch.bfloat16, torch.float16 or ",
                      "torch.int8, got ", dtype_name(t.scalar_type()));
  }
  if (m.format == Format::I8) {
    const std::string sname = name + "'s scale";
    check_dtype(kOp, scale, sname.c_str(), kFloat, "one float32 per row of an int8 matrix");
    check_shape(kOp, scale, sname.c_str(), "(rows,)", {rows});
    check_contiguous(kOp, scale, sname.c_str());
    m.scale = static_cast<const float*>(scale.data_ptr());
  } else {
    WKV_CHECK_VALUE(!scale.defined() || scale.numel() == 0, kOp, ": ", name,
                    " is not int8, so its scale must be an empty tensor, got shape ", scale.sizes());
  }
  return m;
}

Tensor rwkv4_step(const Tensor& x, Tensor state, const std::vector<Tensor>& vectors,
                  const std::vector<Tensor>& matrices, const std::vector<Tensor>& scales, double eps,
                  double eps_out) {
  check_defined(kOp, x, "x");
  check_defined(kOp, state, "state");
  WKV_CHECK_VALUE(x.dim() == 2, kOp, ": x must have shape (B, C), got ", x.sizes());
  check_dtype(kOp, x, "x", kFloat, "the embedding rows in float32");
  WKV_CHECK(x.is_cpu() && state.is_cpu(), kOp, ": x and state must be on the CPU, got ", device_name(x.device()),
            " and ", device_name(state.device()));
  const int64_t B = x.size(0), C = x.size(1);
  WKV_CHECK_VALUE(matrices.size() >= 1 && (matrices.size() - 1) % kLayerMatrices == 0, kOp,
                  ": matrices must hold 7 per layer and the head, got ", matrices.size());
  const int64_t L = int64_t(matrices.size() - 1) / kLayerMatrices;
  WKV_CHECK_VALUE(int64_t(vectors.size()) == 4 + kLayerVectors * L, kOp, ": vectors must hold ",
                  4 + kLayerVectors * L, " tensors for ", L, " layers, got ", vectors.size());
  WKV_CHECK_VALUE(scales.size() == matrices.size(), kOp, ": scales must hold one tensor per matrix (",
                  matrices.size(), "), got ", scales.size());
  check_dtype(kOp, state, "state", kFloat, "the recurrent state in float32");
  check_shape(kOp, state, "state", "(B, L, 5, C)", {B, L, 5, C});
  check_contiguous(kOp, state, "state");
  const int64_t F = matrices[4].defined() && matrices[4].dim() == 2 ? matrices[4].size(0) : 0;
  const int64_t V = matrices.back().defined() && matrices.back().dim() == 2 ? matrices.back().size(0) : 0;
  WKV_CHECK_VALUE(F > 0 && V > 0, kOp, ": ffn.key and head must be 2-D with at least one row");

  Rwkv4Model m;
  m.C = C;
  m.F = F;
  m.V = V;
  m.L = L;
  m.eps = float(eps);
  m.eps_out = float(eps_out);
  m.ln0_w = vector_ptr(vectors[0], C, "ln0.weight");
  m.ln0_b = vector_ptr(vectors[1], C, "ln0.bias");
  std::vector<Rwkv4Layer> layers(L);
  for (int64_t l = 0; l < L; ++l) {
    const float* p[kLayerVectors];
    for (int i = 0; i < kLayerVectors; ++i) {
      p[i] = vector_ptr(vectors[2 + l * kLayerVectors + i], C, message("layer ", l, " ", kVectorNames[i]));
    }
    Rwkv4Layer& ly = layers[l];
    ly.ln1_w = p[0], ly.ln1_b = p[1], ly.ln2_w = p[2], ly.ln2_b = p[3], ly.w = p[4], ly.u = p[5];
    ly.att_mix_k = p[6], ly.att_mix_v = p[7], ly.att_mix_r = p[8], ly.ffn_mix_k = p[9], ly.ffn_mix_r = p[10];
    const int64_t shapes[kLayerMatrices][2] = {{C, C}, {C, C}, {C, C}, {C, C}, {F, C}, {C, C}, {C, F}};
    Matrix* out[kLayerMatrices] = {&ly.att_key, &ly.att_value, &ly.att_receptance, &ly.att_output,
                                   &ly.ffn_key, &ly.ffn_receptance, &ly.ffn_value};
    for (int i = 0; i < kLayerMatrices; ++i) {
      const size_t j = size_t(l * kLayerMatrices + i);
      *out[i] = matrix(matrices[j], scales[j], shapes[i][0], shapes[i][1], message("layer ", l, " ", kMatrixNames[i]));
    }
  }
  m.layers = layers.data();
  m.ln_out_w = vector_ptr(vectors[2 + kLayerVectors * L], C, "ln_out.weight");
  m.ln_out_b = vector_ptr(vectors[3 + kLayerVectors * L], C, "ln_out.bias");
  m.head = matrix(matrices.back(), scales.back(), V, C, "head");

  Tensor logits = new_tensor({B, V}, kFloat, x);
  if (B == 0) return logits;
  // the residual stream: a scratch copy of x
  std::vector<float> xs(size_t(B * C));
  const Tensor xc = as_contiguous(x, kFloat);
  std::memcpy(xs.data(), xc.data_ptr(), sizeof(float) * size_t(B * C));
  float* xp = xs.data();
  float* sp = static_cast<float*>(state.data_ptr());
  float* lp = static_cast<float*>(logits.data_ptr());
  switch (current_isa()) {
#if defined(WKV_HAVE_X86_KERNELS)
    case Isa::Avx512: rwkv4_step_avx512(m, xp, sp, lp, B); break;
    case Isa::Avx2: rwkv4_step_avx2(m, xp, sp, lp, B); break;
#endif
    default: rwkv4_step_scalar(m, xp, sp, lp, B); break;
  }
  return logits;
}

}  // namespace

STABLE_TORCH_LIBRARY_FRAGMENT(wkv, m) {
  m.def("rwkv4_step(Tensor x, Tensor(a!) state, Tensor[] vectors, Tensor[] matrices, Tensor[] scales, "
        "float eps, float eps_out) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(wkv, CPU, m) { m.impl("rwkv4_step", TORCH_BOX(&rwkv4_step)); }

}  // namespace wkv::step
