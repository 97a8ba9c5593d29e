// CUDA launcher: every pass of csrc/wkv_chunked.h becomes one kernel through the one-line
// wrapper below; csrc/wkv_cuda_driver.h decides which passes run (serial or T-chunked) and
// allocates their small buffers. The same driver runs on the CPU in csrc/cpu/wkv_emulate.cpp.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <mutex>
#include <vector>

#include "wkv_cuda_driver.h"

namespace wkv {
namespace {

template <class Body, class TIn, class S>
__global__ void pass_kernel(int64_t threads, ScanArgs<TIn, S> a) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < threads) Body::run(i, a);
}

}  // namespace

int64_t cuda_sm_count(int device) {
  static std::mutex mu;
  static std::vector<int> counts;
  std::lock_guard<std::mutex> lock(mu);
  if (device >= static_cast<int>(counts.size())) counts.resize(device + 1, 0);
  if (counts[device] == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&counts[device], cudaDevAttrMultiProcessorCount, device));
  }
  return counts[device];
}

namespace {

struct Gpu {
  int64_t sms;
  cudaStream_t stream;
  template <class Body, class TIn, class S>
  void run(int64_t threads, const ScanArgs<TIn, S>& args) {
    // 128 threads per block, fewer when that would leave multiprocessors idle (small B * C).
    int block = 128;
    while (block > 32 && (threads + block - 1) / block < sms) block /= 2;
    const int64_t blocks = (threads + block - 1) / block;
    TORCH_CHECK(blocks <= 0x7fffffff, "wkv: ", threads, " threads are too many for one CUDA grid");
    pass_kernel<Body, TIn, S><<<static_cast<unsigned>(blocks), block, 0, stream>>>(threads, args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

Gpu gpu_for(const at::Tensor& k) {
  return Gpu{cuda_sm_count(k.device().index()), c10::cuda::getCurrentCUDAStream(k.device().index())};
}

}  // namespace

void forward_cuda(const Launch& a) {
  const c10::cuda::CUDAGuard guard(a.k.device());
  Gpu gpu = gpu_for(a.k);
  scan_forward(a, gpu);
}

void backward_cuda(const Launch& a) {
  const c10::cuda::CUDAGuard guard(a.k.device());
  Gpu gpu = gpu_for(a.k);
  scan_backward(a, gpu);
}

}  // namespace wkv
