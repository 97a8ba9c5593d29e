// What the op layer (wkv_ops.cpp) hands a kernel launcher: validated, contiguous tensors on one
// device. One launcher per backend: csrc/cpu/wkv_cpu.cpp and csrc/wkv_kernel.cu.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace wkv {

struct Launch {
  int64_t B = 0, T = 0, C = 0;
  at::Tensor w, u;        // (C,) math dtype: w = -exp(time_decay) (or time_decay itself when
  bool w_is_log = false;  // w_is_log: the kernel forms w), u = time_first
  at::Tensor k, v;        // (B, T, C), any supported dtype
  at::Tensor state_in;    // (B, 3, C) math dtype, or undefined: the empty state
  // forward
  at::Tensor y;           // (B, T, C), k's dtype
  at::Tensor state_out;   // (B, 3, C) math dtype, or undefined
  // (B, ceil(T / kCheckpointSteps), 3, C) math dtype: the state before every 32nd step. Forward:
  // written if defined. Backward: read if defined (saved by the forward), else recomputed.
  at::Tensor checkpoints;
  // backward
  at::Tensor gy;          // (B, T, C), k's dtype
  at::Tensor gstate_out;  // (B, 3, C) math dtype, or undefined
  at::Tensor gk, gv;      // (B, T, C), k's dtype: written
  at::Tensor gw, gu;      // (B, C) math dtype: += dL/dtime_decay, dL/dtime_first per row;
  bool sum_rows = false;  // or, if sum_rows, (C,): written, summed over rows
  at::Tensor gstate_in;   // (B, 3, C) math dtype, or undefined: written
};

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
