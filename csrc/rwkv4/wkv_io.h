// The one field list of a WKV-4 call: sizes and every input and output, written once and
// instantiated three times: with tensors for the op layer (Launch, wkv_launch.h), and with raw
// pointers for the CPU kernels (CpuArgs, cpu/wkv_cpu_args.h) and the CUDA passes (ScanArgs,
// wkv_chunked.h). Free of torch types, so the kernels compile without them.
//
// MathIn / MathOut: (read-only / written) math-dtype data, SeqIn / SeqOut: the (B, T, C)
// sequences' (k's dtype). Optional entries are undefined tensors / null pointers.
#pragma once

#include <cstdint>

namespace wkv {

template <class MathIn, class MathOut, class SeqIn, class SeqOut>
struct WkvIo {
  int64_t B = 0, T = 0, C = 0;
  MathIn w{};            // (C,) the decay w = -exp(time_decay) (ScanArgs / Launch: see w_is_log)
  MathIn u{};            // (C,) time_first
  SeqIn k{}, v{};        // (B, T, C)
  MathIn state_in{};     // (B, 3, C), or none: the empty state
  // forward
  SeqOut y{};            // (B, T, C)
  MathOut state_out{};   // (B, 3, C), or none
  // (B, ceil(T / kCheckpointSteps), 3, C), or none: the state before every kCheckpointSteps-th
  // step. Forward: written if given. Backward: read if given (saved by the forward), else
  // recomputed.
  MathOut checkpoints{};
  // backward
  SeqIn gy{};            // (B, T, C)
  MathIn gstate_out{};   // (B, 3, C), or none: no gradient reaches the returned state
  SeqOut gk{}, gv{};     // (B, T, C), written
  MathOut gw{}, gu{};    // (B, C) += dL/dtime_decay, dL/dtime_first per row (or (C,): sum_rows)
  MathOut gstate_in{};   // (B, 3, C), or none: written
};

}  // namespace wkv
