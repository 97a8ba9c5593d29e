// RWKV-7 CUDA launcher: one block per (batch row, head) runs its body's schedule
// (rwkv7/wkv7_cuda.h) with a __syncthreads() after every phase; rwkv7/wkv7_cuda_driver.h picks
// the types, the block size and the workspace. The same driver runs on the CPU in
// cpu/wkv7_emulate.cpp, which is how these bodies are tested on machines without a GPU.
#include <torch/csrc/inductor/aoti_torch/c/shim.h>  // aoti_torch_get_current_cuda_stream
#include <torch/csrc/stable/accelerator.h>
#include <cuda_runtime.h>

#include "rwkv7/wkv7_cuda_driver.h"

namespace wkv::v7 {
namespace {

void check_cuda(cudaError_t err, const char* what) {
  WKV_CHECK(err == cudaSuccess, "wkv7: CUDA error in ", what, ": ", cudaGetErrorString(err));
}

template <class Body, class TIn, class S>
__global__ void block_kernel(CudaArgs<TIn, S> a) {
  extern __shared__ __align__(16) unsigned char smem[];
  auto& sh = *reinterpret_cast<typename Body::Shared*>(smem);
  typename Body::Thread th;
  const int tid = threadIdx.x;
  const int64_t blk = blockIdx.x;
  struct Run {
    int tid;
    int64_t blk;
    typename Body::Thread& th;
    typename Body::Shared& sh;
    const CudaArgs<TIn, S>& a;
    __device__ void operator()(int which, int64_t t) {
      Body::phase(which, tid, blk, t, th, sh, a);
      __syncthreads();
    }
  } run{tid, blk, th, sh, a};
  Body::schedule(a.T, run);
}

struct Gpu {
  cudaStream_t stream;
  template <class Body, class TIn, class S>
  void run(int64_t blocks, const CudaArgs<TIn, S>& args) {
    WKV_CHECK(blocks <= 0x7fffffff, "wkv7: B * H = ", blocks, " is too many blocks for one CUDA grid");
    const size_t shared = sizeof(typename Body::Shared);
    if (shared > 48 * 1024) {  // above the default: opt in (up to the device's limit)
      check_cuda(cudaFuncSetAttribute(block_kernel<Body, TIn, S>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(shared)),
                 "cudaFuncSetAttribute");
    }
    block_kernel<Body, TIn, S><<<static_cast<unsigned>(blocks), Body::kThreads, shared, stream>>>(args);
    check_cuda(cudaGetLastError(), "a kernel launch");
  }
};

Gpu gpu_for(const Tensor& x) {
  void* stream = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(x.get_device_index(), &stream));
  return Gpu{static_cast<cudaStream_t>(stream)};
}

}  // namespace

void forward_cuda(const Launch& a) {
  const torch::stable::accelerator::DeviceGuard guard(a.r.get_device_index());
  Gpu gpu = gpu_for(a.r);
  cuda_forward(a, gpu);
}

void backward_cuda(const Launch& a) {
  const torch::stable::accelerator::DeviceGuard guard(a.r.get_device_index());
  Gpu gpu = gpu_for(a.r);
  cuda_backward(a, gpu);
}

}  // namespace wkv::v7
