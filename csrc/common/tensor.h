// Tensors through the LibTorch stable ABI (torch::stable::Tensor): allocation and raw pointers,
// for every generation's op layer.
#pragma once

#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/HeaderOnlyArrayRef.h>

namespace wkv {

using torch::headeronly::IntHeaderOnlyArrayRef;
using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// A new uninitialised contiguous tensor of `dtype` on `like`'s device. Through the stable C
// shim's aoti_torch_empty_strided: a direct call, several times cheaper than the boxed
// dispatcher call of torch::stable::empty, and this is on every op's path.
Tensor new_tensor(IntHeaderOnlyArrayRef sizes, ScalarType dtype, const Tensor& like);

// The data of an optional tensor: nullptr when undefined.
template <class T>
T* ptr_or_null(const Tensor& t) {
  return t.defined() ? static_cast<T*>(t.data_ptr()) : nullptr;
}

}  // namespace wkv
