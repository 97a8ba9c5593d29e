// CUDA launcher: every pass of csrc/rwkv4/wkv_chunked.h becomes one kernel through the one-line
// wrapper below; csrc/rwkv4/wkv_cuda_driver.h decides which passes run (serial or T-chunked) and
// allocates their small buffers. The same driver runs on the CPU in csrc/rwkv4/cpu/wkv_emulate.cpp.
#include <torch/csrc/inductor/aoti_torch/c/shim.h>  // aoti_torch_get_current_cuda_stream
#include <torch/csrc/stable/accelerator.h>
#include <cuda_runtime.h>

#include <mutex>
#include <vector>

#include "wkv_cuda_driver.h"

namespace wkv {
namespace {

// A CUDA runtime error as a RuntimeError naming the call.
void check_cuda(cudaError_t err, const char* what) {
  WKV_CHECK(err == cudaSuccess, "wkv: CUDA error in ", what, ": ", cudaGetErrorString(err));
}

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
    check_cuda(cudaDeviceGetAttribute(&counts[device], cudaDevAttrMultiProcessorCount, device),
               "cudaDeviceGetAttribute");
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
    WKV_CHECK(blocks <= 0x7fffffff, "wkv: ", threads, " threads are too many for one CUDA grid");
    pass_kernel<Body, TIn, S><<<static_cast<unsigned>(blocks), block, 0, stream>>>(threads, args);
    check_cuda(cudaGetLastError(), "a kernel launch");
  }
};

// The multiprocessor count and torch's current stream of k's device (the stream through the
// stable C shim: torch::stable::accelerator::Stream::nativeHandle() is 2.13+ only).
Gpu gpu_for(const Tensor& k) {
  const int32_t device = k.get_device_index();
  void* stream = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(device, &stream));
  return Gpu{cuda_sm_count(device), static_cast<cudaStream_t>(stream)};
}

}  // namespace

void forward_cuda(const Launch& a) {
  const torch::stable::accelerator::DeviceGuard guard(a.k.get_device_index());
  Gpu gpu = gpu_for(a.k);
  scan_forward(a, gpu);
}

void backward_cuda(const Launch& a) {
  const torch::stable::accelerator::DeviceGuard guard(a.k.get_device_index());
  Gpu gpu = gpu_for(a.k);
  scan_backward(a, gpu);
}

}  // namespace wkv
