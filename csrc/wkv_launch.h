// What the op layer (wkv_ops.cpp) hands a kernel launcher: validated, contiguous tensors on one
// device. One launcher per backend: csrc/cpu/wkv_cpu.cpp and csrc/wkv_kernel.cu.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace wkv {

struct Launch {
  int64_t B = 0, T = 0, C = 0;
  at::Tensor w, u;        // (C,) math dtype: w = -exp(time_decay), u = time_first
  at::Tensor k, v;        // (B, T, C), any supported dtype
  at::Tensor state_in;    // (B, 3, C) math dtype, or undefined: the empty state
  // forward
  at::Tensor y;           // (B, T, C), k's dtype
  at::Tensor state_out;   // (B, 3, C) math dtype, or undefined
  // backward
  at::Tensor gy;          // (B, T, C), k's dtype
  at::Tensor gstate_out;  // (B, 3, C) math dtype, or undefined
  at::Tensor gk, gv;      // (B, T, C), k's dtype: written
  at::Tensor gw, gu;      // (B, C) math dtype: += dL/dtime_decay, dL/dtime_first per row
  at::Tensor gstate_in;   // (B, 3, C) math dtype, or undefined: written
};

void forward_cpu(const Launch& a);
void backward_cpu(const Launch& a);
std::string cpu_isa();               // the instruction set the CPU kernel uses now
std::string set_cpu_isa(const std::string& isa);  // "auto", "avx512", "avx2", "scalar"

#ifdef WKV_WITH_CUDA
void forward_cuda(const Launch& a);
void backward_cuda(const Launch& a);
#endif

}  // namespace wkv
