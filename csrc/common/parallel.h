// The one parallel-for under every CPU kernel (WKV-4, WKV-7, the fused step): a small pool of
// our own whose regions never wait for a thread that has not started.
//
// Why not OpenMP: every `omp parallel` region ends in a barrier that waits for each of its
// threads. On a machine where another program holds a core, one of them is often descheduled,
// and the region then waits a whole scheduler time slice (milliseconds) for a few microseconds
// of work; the fused step runs dozens of regions per token. Here a region is a count of chunks:
// the calling thread publishes it and takes chunks itself, pool workers take chunks as they
// come, and the region ends when every chunk is done, whoever did it. A worker that wakes late
// finds no work and touches nothing of the region. The caller waits only for chunks already
// claimed: it spins about twice as long as one of its own chunks took, then (Linux) lends its CPU
// to the worker still holding a chunk and sleeps until the chunk is counted. A worker seen taking
// chunks on the caller's own CPU is kept off that CPU (the scheduler wakes a thread beside its
// waker and, with the other cores busy, keeps the two sharing one). docs/performance.md, "On a
// busy machine", has the measurements.
//
// Threads: a region uses at most `nthreads` (the caller's torch.get_num_threads(), so
// torch.set_num_threads applies) including the caller; the pool grows to the largest count
// asked for and workers beyond a region's count sit it out. Between regions a worker spins
// briefly (100 µs of its own running time: regions of one token follow each other within
// microseconds), then sleeps on a futex, so it holds no core while torch's own threads run. One region at a time: a call made while
// another thread (or a chunk) runs one, runs its chunks serially on its own thread instead of
// waiting. After fork() the child starts with a fresh, empty pool.
//
// Chunks must not throw (the kernels report failures through flags).
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>

namespace wkv::parallel {

using ChunkFn = void (*)(void* ctx, int64_t chunk, int worker);

// The most chunks one region has (the rest of the region's word holds its thread count); run()
// splits a larger count into several regions.
constexpr int64_t kMaxChunks = (int64_t(1) << 24) - 1;
// The most threads one region may use.
constexpr int kMaxThreads = 255;

// Runs fn(ctx, i, worker) once for every chunk i in [0, nchunks), on up to nthreads threads;
// worker in [0, min(nthreads, nchunks)) names the thread (0: the caller), for per-thread
// scratch. Returns when every chunk has run.
void run(int64_t nchunks, int nthreads, ChunkFn fn, void* ctx);

// The same with a callable f(chunk, worker).
template <class F>
void for_each_chunk(int64_t nchunks, int nthreads, F&& f) {
  using Fn = std::remove_reference_t<F>;
  run(nchunks, nthreads, [](void* ctx, int64_t i, int w) { (*static_cast<Fn*>(ctx))(i, w); },
      const_cast<void*>(static_cast<const void*>(&f)));
}

// How many threads `work` units are worth when a thread should get at least `grain` of them
// (at::parallel_for's grain size): 1 for work too small to pay for a region. (Defined out of
// line, as run(): this header is included by units compiled for AVX-512, and an inline function
// with external linkage compiled there could be the copy the linker keeps for every unit.)
int threads_for(int64_t work, int64_t grain, int nthreads);

// Counters and settings, for tests and benchmarks (torch.ops.wkv.parallel_info): "key=value;...".
std::string info();

// A negative value leaves a setting as it is.
struct Settings {
  int64_t spin_us = -1;          // how long an idle worker spins before it sleeps (default 100)
  int64_t caller_spin_us = -2;   // how long the caller spins for chunks still running before it
                                 // sleeps; -1: twice its own chunks' time (the default); < -1: unchanged
  int64_t handoff = -1;          // 1: a caller about to sleep lends its CPU to a worker holding a chunk
  int64_t spread = -1;           // 1: a worker seen on the caller's CPU is kept off it
  int64_t worker_delay_us = -1;  // test hook: each worker sleeps this long after it wakes, before it
                                 // looks for work (a thread the scheduler has not run yet, on demand)
  bool reset = false;            // zero the counters
};
void configure(const Settings& s);

}  // namespace wkv::parallel
