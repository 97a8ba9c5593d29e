// The pool behind wkv::parallel::run (parallel.h says why and what it promises).
//
// A region lives in one 64-bit word, so a worker can never act on a region that has ended:
//   bits 0-23 the next chunk to hand out, 24-47 the region's chunk count, 48-55 its thread
//   count, 56-63 a region number (for the counters only).
// A worker claims chunk i with a compare-and-swap of that word (next -> next + 1, only while
// next < count and its id < the thread count). A successful claim is a chunk of the region the
// word held at that moment, and that region cannot end (so its function and context, written
// before the word was published, cannot change) until the chunk is done and counted. A worker
// that finds next == count has nothing to do, whichever region that was.
#include "common/parallel.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <mutex>
#include <thread>

#if defined(__linux__)
#include <sched.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "common/check.h"

namespace wkv::parallel {
namespace {

using Clock = std::chrono::steady_clock;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Sleep until *word != expected (or a wake-up); wake every sleeper on word.
void wait_on(std::atomic<uint32_t>& word, uint32_t expected) {
#if defined(__linux__)
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
#else
  word.wait(expected);
#endif
}
void wake_all(std::atomic<uint32_t>& word) {
#if defined(__linux__)
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
#else
  word.notify_all();
#endif
}

constexpr uint64_t kMask24 = (uint64_t(1) << 24) - 1;
struct Word {
  uint64_t next, count, threads, number;
  static Word of(uint64_t s) { return {s & kMask24, (s >> 24) & kMask24, (s >> 48) & 0xff, s >> 56}; }
  uint64_t pack() const { return next | (count << 24) | (threads << 48) | ((number & 0xff) << 56); }
};

// What the caller may need of a worker that holds a chunk while it waits (Linux).
struct Slot {
  std::atomic<int> tid{0};        // the worker's thread id
  std::atomic<int> busy{0};       // it runs a chunk now
  std::atomic<int> cpu{-1};       // the CPU it took its first chunk of region `region` on
  std::atomic<uint64_t> region{0};
#if defined(__linux__)
  cpu_set_t allowed;  // its CPUs when it started (written before tid)
  cpu_set_t current;  // the CPUs the pool lets it use now (the caller's, under `region`)
#endif
  Clock::time_point last_move{};  // (the caller's, under `region`)
};

struct Pool {
  std::mutex region;                   // held by the thread running a region
  std::atomic<uint64_t> word{0};       // the region (see the top of this file)
  std::atomic<uint32_t> published{0};  // futex: bumped when a region is published
  std::atomic<uint32_t> done{0};       // futex: chunks of the current region finished
  std::atomic<int> sleepers{0};        // workers asleep (or about to be) on `published`
  std::atomic<int> caller_asleep{0};   // the caller sleeps on `done`
  ChunkFn fn = nullptr;                // the current region's job (stable while it runs)
  void* ctx = nullptr;
  uint64_t number = 0;
  int workers = 0;  // threads started (ids 1..workers); grown under `region`
  std::atomic<int64_t> spin_ns{100000};
  std::atomic<int64_t> delay_us{0};
  std::atomic<int64_t> caller_spin_ns{-1};  // < 0: twice the caller's own chunk time (see run)
  std::atomic<int> handoff{1};               // lend the caller's CPU to a stalled worker (see run)
  std::atomic<int> spread{1};                // keep workers off the caller's CPU (see run)
  Slot slots[kMaxThreads + 1];
  // counters (relaxed: for tests and benchmarks)
  std::atomic<int64_t> regions{0}, serial_runs{0}, busy_runs{0}, chunks_by_workers{0}, caller_sleeps{0},
      worker_sleeps{0}, caller_wait_ns{0}, long_waits{0}, handoffs{0}, spreads{0};
};

std::atomic<Pool*> g_pool{nullptr};
thread_local bool t_in_region = false;  // this thread runs a region, or a chunk of one
std::once_flag g_atfork;

Pool& pool() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p) return *p;
  static std::mutex m;
  std::lock_guard<std::mutex> lock(m);
  p = g_pool.load(std::memory_order_relaxed);
  if (!p) {
    std::call_once(g_atfork, [] {
      // The child has none of the parent's workers: it gets a fresh pool (the old one, whose
      // locks may be held by threads that no longer exist, is left behind).
      pthread_atfork(nullptr, nullptr, [] { g_pool.store(new Pool, std::memory_order_release); });
    });
    p = new Pool;  // never deleted: workers may outlive every static destructor
    g_pool.store(p, std::memory_order_release);
  }
  return *p;
}

// Claims the next chunk for worker `id`; false when the region (whichever it is) has none left
// for it. On success `w` is the region's word as claimed.
inline bool claim(Pool& p, uint64_t id, Word& w, int64_t& chunk) {
  uint64_t s = p.word.load(std::memory_order_acquire);
  for (;;) {
    w = Word::of(s);
    if (w.next >= w.count || id >= w.threads) return false;
    if (p.word.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
      chunk = static_cast<int64_t>(w.next);
      return true;
    }
  }
}

void worker_main(Pool* pp, int id) {
  Pool& p = *pp;
  Slot& slot = p.slots[id];
#if defined(__linux__)
  if (sched_getaffinity(0, sizeof(cpu_set_t), &slot.allowed) == 0) {
    slot.current = slot.allowed;
    slot.tid.store(static_cast<int>(syscall(SYS_gettid)), std::memory_order_release);
  }
#endif
  for (;;) {
    const uint32_t seen = p.published.load(std::memory_order_acquire);
    if (const int64_t d = p.delay_us.load(std::memory_order_relaxed); d > 0)
      std::this_thread::sleep_for(std::chrono::microseconds(d));
    Word w;
    int64_t chunk;
    bool first = true;
    t_in_region = true;
    while (claim(p, static_cast<uint64_t>(id), w, chunk)) {
      slot.busy.store(1, std::memory_order_relaxed);
      if (first) {
#if defined(__linux__)
        slot.cpu.store(sched_getcpu(), std::memory_order_relaxed);
#endif
        slot.region.store(w.number, std::memory_order_release);
        first = false;
      }
      p.fn(p.ctx, chunk, id);
      slot.busy.store(0, std::memory_order_relaxed);
      p.chunks_by_workers.fetch_add(1, std::memory_order_relaxed);
      const uint32_t finished = p.done.fetch_add(1, std::memory_order_seq_cst) + 1;
      if (finished == w.count && p.caller_asleep.load(std::memory_order_seq_cst)) wake_all(p.done);
    }
    t_in_region = false;
    // Wait for the next region: spin a while (the next region of a token comes within
    // microseconds), then sleep. Time spent descheduled does not count as spinning: a worker
    // that another program held off its core spins its full while once it runs again.
    auto last = Clock::now();
    auto deadline = last + std::chrono::nanoseconds(p.spin_ns.load(std::memory_order_relaxed));
    for (int n = 0;; ++n) {
      if (p.published.load(std::memory_order_acquire) != seen) break;
      if ((n & 63) != 63) {
        cpu_relax();
        continue;
      }
      const auto now = Clock::now();
      if (now - last > std::chrono::microseconds(50)) deadline += now - last;  // it was descheduled
      last = now;
      if (now >= deadline) {
        p.sleepers.fetch_add(1, std::memory_order_seq_cst);
        if (p.published.load(std::memory_order_seq_cst) == seen) {
          p.worker_sleeps.fetch_add(1, std::memory_order_relaxed);
          wait_on(p.published, seen);
        }
        p.sleepers.fetch_sub(1, std::memory_order_seq_cst);
        if (p.published.load(std::memory_order_acquire) != seen) break;
        last = Clock::now();
        deadline = last;  // (woken without a region: sleep again at once)
      }
    }
  }
}

void run_serial(int64_t nchunks, ChunkFn fn, void* ctx) {
  for (int64_t i = 0; i < nchunks; ++i) fn(ctx, i, 0);
}

}  // namespace

int threads_for(int64_t work, int64_t grain, int nthreads) {
  if (nthreads <= 1 || grain <= 0 || work < 2 * grain) return 1;
  const int64_t most = work / grain;
  return most < nthreads ? static_cast<int>(most) : nthreads;
}

void run(int64_t nchunks, int nthreads, ChunkFn fn, void* ctx) {
  if (nchunks <= 0) return;
  if (nchunks > kMaxChunks) {  // more chunks than a region's word holds: regions of kMaxChunks
    struct Offset {
      ChunkFn fn;
      void* ctx;
      int64_t first;
    };
    for (int64_t first = 0; first < nchunks; first += kMaxChunks) {
      Offset o{fn, ctx, first};
      run(std::min(kMaxChunks, nchunks - first), nthreads,
          [](void* c, int64_t i, int w) {
            const Offset& o = *static_cast<Offset*>(c);
            o.fn(o.ctx, o.first + i, w);
          },
          &o);
    }
    return;
  }
  const int threads = static_cast<int>(std::min<int64_t>({nthreads, nchunks, kMaxThreads}));
  Pool& p = pool();
  if (threads <= 1) {
    p.serial_runs.fetch_add(1, std::memory_order_relaxed);
    return run_serial(nchunks, fn, ctx);
  }
  // A chunk calling in (t_in_region), or another thread's region: run serially, never wait.
  std::unique_lock<std::mutex> lock(p.region, std::defer_lock);
  if (t_in_region || !lock.try_lock()) {
    p.busy_runs.fetch_add(1, std::memory_order_relaxed);
    return run_serial(nchunks, fn, ctx);
  }
  while (p.workers < threads - 1) {
    try {
      std::thread(worker_main, &p, p.workers + 1).detach();
      ++p.workers;
    } catch (...) {  // no more threads to be had (a limit of the system): fewer workers
      break;
    }
  }
  if (p.workers == 0) {
    p.serial_runs.fetch_add(1, std::memory_order_relaxed);
    return run_serial(nchunks, fn, ctx);
  }
  struct Inside {  // (also a chunk of ours that calls run() runs serially)
    Inside() { t_in_region = true; }
    ~Inside() { t_in_region = false; }
  } inside;
  p.regions.fetch_add(1, std::memory_order_relaxed);
  p.fn = fn;
  p.ctx = ctx;
  p.done.store(0, std::memory_order_relaxed);
  const Word w{0, static_cast<uint64_t>(nchunks), static_cast<uint64_t>(threads), ++p.number};
  p.word.store(w.pack(), std::memory_order_release);
  p.published.fetch_add(1, std::memory_order_seq_cst);
  if (p.sleepers.load(std::memory_order_seq_cst) > 0) wake_all(p.published);

  // The caller's share: chunks until none is left.
  const auto t0 = Clock::now();
  int64_t mine = 0, chunk;
  Word claimed;
  while (claim(p, 0, claimed, chunk)) {
    fn(ctx, chunk, 0);
    ++mine;
    p.done.fetch_add(1, std::memory_order_seq_cst);
  }
  // Chunks still running on workers: spin about twice as long as one chunk of ours took (a worker
  // on a core of its own finishes within that), then sleep until the last one is counted.
  const uint32_t count = static_cast<uint32_t>(nchunks);
  if (p.done.load(std::memory_order_acquire) != count) {
    const auto t1 = Clock::now();
    const auto per_chunk = mine > 0 ? (t1 - t0) / mine : std::chrono::nanoseconds(20000);
    auto limit = std::clamp<Clock::duration>(2 * per_chunk, std::chrono::microseconds(5),
                                             std::chrono::microseconds(200));
    if (const int64_t fixed = p.caller_spin_ns.load(std::memory_order_relaxed); fixed >= 0)
      limit = std::chrono::nanoseconds(fixed);
    const auto deadline = t1 + limit;
    for (int n = 0; p.done.load(std::memory_order_acquire) != count; ++n) {
      if ((n & 63) == 63 && Clock::now() >= deadline) break;
      cpu_relax();
    }
    // A worker still holding a chunk now is most likely waiting for a core (descheduled by
    // another program): the caller is about to sleep, so it lends its own CPU to that worker
    // (Linux migrates a runnable thread at once when its allowed CPUs change; the scheduler
    // would not pull a thread that ran a moment ago), and gives the worker its CPUs back after.
    int lent[kMaxThreads + 1];
    int nlent = 0;
#if defined(__linux__)
    if (p.handoff.load(std::memory_order_relaxed) && p.done.load(std::memory_order_acquire) != count) {
      const int cpu = sched_getcpu();
      cpu_set_t here;
      CPU_ZERO(&here);
      if (cpu >= 0 && cpu < CPU_SETSIZE) CPU_SET(cpu, &here);
      for (int id = 1; cpu >= 0 && cpu < CPU_SETSIZE && id < threads; ++id) {
        Slot& slot = p.slots[id];
        const int tid = slot.tid.load(std::memory_order_acquire);
        if (tid == 0 || !slot.busy.load(std::memory_order_relaxed) || !CPU_ISSET(cpu, &slot.allowed)) continue;
        if (sched_setaffinity(tid, sizeof(cpu_set_t), &here) == 0) lent[nlent++] = id;
      }
      p.handoffs.fetch_add(nlent, std::memory_order_relaxed);
    }
#endif
    uint32_t d;
    while ((d = p.done.load(std::memory_order_seq_cst)) != count) {
      p.caller_asleep.store(1, std::memory_order_seq_cst);
      if (p.done.load(std::memory_order_seq_cst) == d) {
        p.caller_sleeps.fetch_add(1, std::memory_order_relaxed);
        wait_on(p.done, d);
      }
    }
    p.caller_asleep.store(0, std::memory_order_relaxed);
#if defined(__linux__)
    for (int i = 0; i < nlent; ++i) {
      Slot& slot = p.slots[lent[i]];
      sched_setaffinity(slot.tid.load(std::memory_order_relaxed), sizeof(cpu_set_t), &slot.current);
    }
#endif
    const int64_t waited = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t1).count();
    p.caller_wait_ns.fetch_add(waited, std::memory_order_relaxed);
    if (waited > 1000000) p.long_waits.fetch_add(1, std::memory_order_relaxed);
  }
  std::atomic_thread_fence(std::memory_order_acquire);  // every chunk's writes are visible
#if defined(__linux__)
  // A worker that took chunks on the caller's own CPU halved the caller's time there: the
  // scheduler places a woken worker beside the thread that woke it, and on a machine whose other
  // cores are busy it keeps them together. Such a worker is kept off the caller's CPU from then
  // on (its CPUs less that one; at most once a millisecond per worker).
  if (p.spread.load(std::memory_order_relaxed)) {
    const int cpu = sched_getcpu();
    const auto now = Clock::now();
    for (int id = 1; cpu >= 0 && cpu < CPU_SETSIZE && id < threads; ++id) {
      Slot& slot = p.slots[id];
      if (slot.region.load(std::memory_order_acquire) != (w.number & 0xff) ||
          slot.cpu.load(std::memory_order_relaxed) != cpu || now - slot.last_move < std::chrono::milliseconds(1))
        continue;
      const int tid = slot.tid.load(std::memory_order_acquire);
      cpu_set_t away = slot.allowed;
      CPU_CLR(cpu, &away);
      if (tid == 0 || CPU_COUNT(&away) == 0) continue;
      if (sched_setaffinity(tid, sizeof(cpu_set_t), &away) == 0) {
        slot.current = away;
        slot.last_move = now;
        p.spreads.fetch_add(1, std::memory_order_relaxed);
      }
    }
  }
#endif
}

std::string info() {
  Pool& p = pool();
  return message("workers=", p.workers, ";regions=", p.regions.load(), ";serial_runs=", p.serial_runs.load(),
                 ";busy_runs=", p.busy_runs.load(), ";chunks_by_workers=", p.chunks_by_workers.load(),
                 ";caller_sleeps=", p.caller_sleeps.load(), ";caller_wait_us=", p.caller_wait_ns.load() / 1000,
                 ";long_waits=", p.long_waits.load(), ";handoffs=", p.handoffs.load(), ";handoff=", p.handoff.load(), ";spreads=", p.spreads.load(), ";spread=", p.spread.load(), ";worker_sleeps=", p.worker_sleeps.load(),
                 ";spin_us=", p.spin_ns.load() / 1000, ";caller_spin_us=", p.caller_spin_ns.load() < 0 ? -1 : p.caller_spin_ns.load() / 1000, ";worker_delay_us=", p.delay_us.load());
}

void configure(const Settings& s) {
  Pool& p = pool();
  if (s.handoff >= 0) p.handoff.store(s.handoff ? 1 : 0);
  if (s.spread >= 0) p.spread.store(s.spread ? 1 : 0);
  if (s.caller_spin_us >= -1) p.caller_spin_ns.store(s.caller_spin_us < 0 ? -1 : s.caller_spin_us * 1000);
  const int64_t spin_us = s.spin_us, worker_delay_us = s.worker_delay_us;
  const bool reset = s.reset;
  if (spin_us >= 0) p.spin_ns.store(spin_us * 1000);
  if (worker_delay_us >= 0) p.delay_us.store(worker_delay_us);
  if (reset) {
    for (auto* c : {&p.regions, &p.serial_runs, &p.busy_runs, &p.chunks_by_workers, &p.caller_sleeps,
                    &p.worker_sleeps, &p.caller_wait_ns, &p.long_waits, &p.handoffs, &p.spreads})
      c->store(0);
  }
}

}  // namespace wkv::parallel
