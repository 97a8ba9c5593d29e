// What the op layer (wkv_ops.cpp) hands a kernel launcher: validated, contiguous tensors on one
// device. One launcher per backend: csrc/rwkv4/cpu/wkv_cpu.cpp and csrc/rwkv4/wkv_kernel.cu. Tensors are
// the LibTorch stable ABI's (torch::stable::Tensor), so the built library calls no libtorch C++
// symbol and one build loads under every torch from TORCH_TARGET_VERSION on (CMakeLists.txt).
#pragma once

#include <torch/csrc/stable/tensor.h>

#include <cstdint>
#include <string>

#include "common/check.h"
#include "common/tensor.h"
#include "rwkv4/wkv_io.h"

namespace wkv {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

// (w: float32 -exp(time_decay), or time_decay itself when w_is_log: the kernel forms w. gw, gu:
// (B, C) accumulated per row, or, if sum_rows, (C,) written, summed over rows.)
struct Launch : WkvIo<Tensor, Tensor, Tensor, Tensor> {
  bool w_is_log = false;
  bool sum_rows = false;
};

void forward_cpu(const Launch& a);
void backward_cpu(const Launch& a);
// The CUDA kernels' chunk length: 0 = chosen per call (plan_chunk), -1 = one chunk (serial),
// else that length rounded up to a multiple of kCheckpointSteps. Also used by the emulation.
int64_t chunk_setting();
// The CUDA kernels run on the CPU (csrc/rwkv4/cpu/wkv_emulate.cpp), planned for `sms` multiprocessors.
void forward_emulated(const Launch& a);
void backward_emulated(const Launch& a);
constexpr int64_t kEmulatedSms = 132;  // an H100 / H200

#ifdef WKV_WITH_CUDA
void forward_cuda(const Launch& a);
void backward_cuda(const Launch& a);
int64_t cuda_sm_count(int device);
#endif

}  // namespace wkv
