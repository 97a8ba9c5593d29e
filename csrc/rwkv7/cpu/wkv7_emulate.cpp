// The RWKV-7 CUDA kernels on the CPU: every block's schedule (rwkv7/wkv7_cuda.h) with its
// threads run one after another between barriers, blocks in parallel, through the same driver
// as the GPU (rwkv7/wkv7_cuda_driver.h). Selected with rwkv_wkv.cpu_isa("cuda_emulation"); the
// test suite runs the RWKV-7 op tests this way too. (Host arithmetic: no fast-math intrinsics.)
#include <torch/csrc/stable/ops.h>

#include <memory>
#include <vector>

#include "rwkv7/wkv7_cuda_driver.h"

namespace wkv::v7 {
namespace {

template <class Body, class TIn, class S>
struct EmulatedBlock {
  int64_t blk;
  const CudaArgs<TIn, S>& args;
  typename Body::Shared& sh;
  std::vector<typename Body::Thread>& threads;
  void operator()(int which, int64_t t) {
    for (int tid = 0; tid < static_cast<int>(threads.size()); ++tid) {
      Body::phase(which, tid, blk, t, threads[tid], sh, args);
    }
  }
};


struct EmulatedGpu {
  template <class Body, class TIn, class S>
  void run(int64_t blocks, const CudaArgs<TIn, S>& args) {
    torch::stable::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      auto sh = std::make_unique<typename Body::Shared>();
      std::vector<typename Body::Thread> th(Body::kThreads);
      for (int64_t blk = begin; blk < end; ++blk) {
        EmulatedBlock<Body, TIn, S> run{blk, args, *sh, th};
        Body::schedule(args.T, run);
      }
    });
  }
};

}  // namespace

void forward_emulated(const Launch& a) {
  EmulatedGpu gpu;
  cuda_forward(a, gpu);
}

void backward_emulated(const Launch& a) {
  EmulatedGpu gpu;
  cuda_backward(a, gpu);
}

}  // namespace wkv::v7
