// What the RWKV-7 op layer (wkv7_ops.cpp) hands a kernel launcher: validated, contiguous
// tensors on one device (torch::stable::Tensor: the stable ABI). One launcher per backend:
// cpu/wkv7_cpu.cpp, wkv7_kernel.cu, and the CUDA kernels' CPU emulation (cpu/wkv7_emulate.cpp).
#pragma once

#include <torch/csrc/stable/tensor.h>

#include "common/check.h"
#include "common/tensor.h"
#include "rwkv7/wkv7.h"

namespace wkv::v7 {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

struct Launch : Wkv7Io<Tensor, Tensor, Tensor, Tensor> {};

// forward: y, state_out, checkpoints (each if defined). backward: every gradient; reads
// checkpoints (always defined: the op layer runs a forward for them when none were saved).
void forward_cpu(const Launch& a);
void backward_cpu(const Launch& a);
void forward_emulated(const Launch& a);
void backward_emulated(const Launch& a);
#ifdef WKV_WITH_CUDA
void forward_cuda(const Launch& a);
void backward_cuda(const Launch& a);
#endif

}  // namespace wkv::v7
