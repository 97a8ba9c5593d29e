// What the op layer (wkv_ops.cpp) hands a kernel launcher: validated, contiguous tensors on one
// device. One launcher per backend: csrc/cpu/wkv_cpu.cpp and csrc/wkv_kernel.cu. Tensors are
// the LibTorch stable ABI's (torch::stable::Tensor), so the built library calls no libtorch C++
// symbol and one build loads under every torch from TORCH_TARGET_VERSION on (CMakeLists.txt).
#pragma once

#include <torch/csrc/stable/tensor.h>

#include <cstdint>
#include <string>

#include "wkv_check.h"

namespace wkv {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

struct Launch {
  int64_t B = 0, T = 0, C = 0;
  Tensor w, u;            // (C,) math dtype: w = -exp(time_decay) (or time_decay itself when
  bool w_is_log = false;  // w_is_log: the kernel forms w), u = time_first
  Tensor k, v;            // (B, T, C), any supported dtype
  Tensor state_in;        // (B, 3, C) math dtype, or undefined: the empty state
  // forward
  Tensor y;               // (B, T, C), k's dtype
  Tensor state_out;       // (B, 3, C) math dtype, or undefined
  // (B, ceil(T / kCheckpointSteps), 3, C) math dtype: the state before every 32nd step. Forward:
  // written if defined. Backward: read if defined (saved by the forward), else recomputed.
  Tensor checkpoints;
  // backward
  Tensor gy;              // (B, T, C), k's dtype
  Tensor gstate_out;      // (B, 3, C) math dtype, or undefined
  Tensor gk, gv;          // (B, T, C), k's dtype: written
  Tensor gw, gu;          // (B, C) math dtype: += dL/dtime_decay, dL/dtime_first per row;
  bool sum_rows = false;  // or, if sum_rows, (C,): written, summed over rows
  Tensor gstate_in;       // (B, 3, C) math dtype, or undefined: written
};

// A new uninitialised contiguous tensor of `dtype` on `like`'s device. Through the stable C
// shim's aoti_torch_empty_strided: a direct call, several times cheaper than the boxed
// dispatcher call of torch::stable::empty, and this is on every op's path.
Tensor new_tensor(torch::headeronly::IntHeaderOnlyArrayRef sizes, ScalarType dtype,
                  const Tensor& like);

// The data of an optional tensor: nullptr when undefined.
template <class T>
T* ptr_or_null(const Tensor& t) {
  return t.defined() ? static_cast<T*>(t.data_ptr()) : nullptr;
}

void forward_cpu(const Launch& a);
void backward_cpu(const Launch& a);
std::string cpu_isa();               // the instruction set the CPU kernel uses now
std::string set_cpu_isa(const std::string& isa);  // "auto", "avx512", "avx2", "scalar",
                                                  // "cuda_emulation"
// The CUDA kernels' chunk length: 0 = chosen per call (plan_chunk), -1 = one chunk (serial),
// else that length rounded up to a multiple of kCheckpointSteps. Also used by the emulation.
int64_t chunk_setting();
// The CUDA kernels run on the CPU (csrc/cpu/wkv_emulate.cpp), planned for `sms` multiprocessors.
void forward_emulated(const Launch& a);
void backward_emulated(const Launch& a);
constexpr int64_t kEmulatedSms = 132;  // an H100 / H200

#ifdef WKV_WITH_CUDA
void forward_cuda(const Launch& a);
void backward_cuda(const Launch& a);
int64_t cuda_sm_count(int device);
#endif

}  // namespace wkv
