// Argument checks and conversions shared by every generation's op layer (csrc/<gen>/*_ops.cpp):
// each names the op and the argument and says what was expected (csrc/common/check.h: how the
// exceptions reach Python).
#pragma once

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <initializer_list>
#include <string>

#include "common/check.h"
#include "common/tensor.h"

namespace wkv {

using torch::headeronly::IntHeaderOnlyArrayRef;
using torch::stable::Device;
using torch::stable::DeviceType;
constexpr ScalarType kFloat = ScalarType::Float, kDouble = ScalarType::Double;

inline bool is_input_dtype(ScalarType t) {
  return t == kFloat || t == kDouble || t == ScalarType::BFloat16 || t == ScalarType::Half;
}

// float64 inputs are computed in float64, everything else in float32.
inline ScalarType math_dtype(const Tensor& k) { return k.scalar_type() == kDouble ? kDouble : kFloat; }

// Names as Python prints them.
inline const char* dtype_name(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return "torch.float32";
    case ScalarType::Double: return "torch.float64";
    case ScalarType::BFloat16: return "torch.bfloat16";
    case ScalarType::Half: return "torch.float16";
    case ScalarType::Int: return "torch.int32";
    case ScalarType::Long: return "torch.int64";
    case ScalarType::Short: return "torch.int16";
    case ScalarType::Char: return "torch.int8";
    case ScalarType::Byte: return "torch.uint8";
    case ScalarType::Bool: return "torch.bool";
    default: return torch::headeronly::toString(t);
  }
}

inline std::string device_name(const Device& d) {
  std::string name;
  switch (d.type()) {
    case DeviceType::CPU: name = "cpu"; break;
    case DeviceType::CUDA: name = "cuda"; break;
    case DeviceType::Meta: name = "meta"; break;
    default: name = message("device type ", static_cast<int>(d.type()));
  }
  return d.index() >= 0 && d.type() != DeviceType::CPU ? message(name, ":", d.index()) : name;
}

inline bool same_device(const Tensor& a, const Tensor& b) {
  const Device da = a.device(), db = b.device();
  return da.type() == db.type() && da.index() == db.index();
}

inline void check_defined(const char* op, const Tensor& x, const char* name) {
  WKV_CHECK_VALUE(x.defined(), op, ": ", name, " must be a tensor, got None");
}

inline void check_shape(const char* op, const Tensor& x, const char* name, const char* symbolic,
                 std::initializer_list<int64_t> expected) {
  bool ok = x.dim() == static_cast<int64_t>(expected.size());
  if (ok) {
    int64_t i = 0;
    for (auto d : expected) ok = ok && x.size(i++) == d;
  }
  WKV_CHECK_VALUE(ok, op, ": ", name, " must have shape ", symbolic, " = ",
                  IntHeaderOnlyArrayRef(expected), ", got ", x.sizes());
}

inline void check_dtype(const char* op, const Tensor& x, const char* name, ScalarType want,
                 const char* why) {
  WKV_CHECK_VALUE(x.scalar_type() == want, op, ": ", name, " must have dtype ", dtype_name(want),
                  " (", why, "), got ", dtype_name(x.scalar_type()));
}

inline void check_device(const char* op, const Tensor& x, const char* name, const Tensor& k,
                         const char* k_name = "k") {
  WKV_CHECK(same_device(x, k), op, ": ", name, " is on ", device_name(x.device()), " but ", k_name,
            " is on ", device_name(k.device()), "; all tensors must be on one device");
}

inline void check_contiguous(const char* op, const Tensor& x, const char* name) {
  WKV_CHECK_VALUE(x.is_contiguous(), op, ": ", name,
                  " must be contiguous (this op writes through raw pointers; call "
                  ".contiguous() first), got strides ",
                  x.strides());
}

// x in `dtype` and contiguous; x itself (no dispatcher call) when it already is.
inline Tensor as_contiguous(const Tensor& x, ScalarType dtype) {
  const Tensor t = x.scalar_type() == dtype ? x : torch::stable::to(x, dtype);
  return t.is_contiguous() ? t : torch::stable::contiguous(t);
}

}  // namespace wkv
