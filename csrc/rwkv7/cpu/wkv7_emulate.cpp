// The RWKV-7 CUDA kernels on the CPU: every block's schedule (rwkv7/wkv7_cuda.h) with its
// threads run one after another between barriers, blocks in parallel, through the same driver
// as the GPU (rwkv7/wkv7_cuda_driver.h). Selected with rwkv_wkv.cpu_isa("cuda_emulation"); the
// test suite runs the RWKV-7 op tests this way too. (Host arithmetic: no fast-math intrinsics.)
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "common/parallel.h"
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
    // one block's shared memory and threads per worker, allocated here (chunks must not throw)
    const int nthreads =
        static_cast<int>(std::min<int64_t>(torch::stable::get_num_threads(), parallel::kMaxThreads));
    std::vector<std::unique_ptr<typename Body::Shared>> sh(nthreads);
    std::vector<std::vector<typename Body::Thread>> th(nthreads);
    for (int w = 0; w < nthreads; ++w) {
      sh[w] = std::make_unique<typename Body::Shared>();
      th[w].resize(Body::kThreads);
    }
    parallel::for_each_chunk(blocks, nthreads, [&](int64_t blk, int w) {
      EmulatedBlock<Body, TIn, S> run{blk, args, *sh[w], th[w]};
      Body::schedule(args.T, run);
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
