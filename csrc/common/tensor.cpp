#include "tensor.h"

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/tensor.h>

#include <array>

#include "check.h"

namespace wkv {

Tensor new_tensor(IntHeaderOnlyArrayRef sizes, ScalarType dtype, const Tensor& like) {
  int64_t strides[8];
  const int64_t ndim = static_cast<int64_t>(sizes.size());
  WKV_CHECK(ndim <= 8, "wkv: internal error: a ", ndim, "-dimensional buffer");
  int64_t stride = 1;
  for (int64_t i = ndim - 1; i >= 0; --i) {
    strides[i] = stride;
    stride *= sizes[i] > 1 ? sizes[i] : 1;
  }
  int32_t device_type = 0;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_type(like.get(), &device_type));
  const int32_t shim_dtype =
      torch::stable::detail::to<int32_t>(torch::stable::detail::from(dtype));
  AtenTensorHandle handle = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_empty_strided(ndim, sizes.data(), strides, shim_dtype,
                                                         device_type, like.get_device_index(),
                                                         &handle));
  return Tensor(handle);
}

}  // namespace wkv
