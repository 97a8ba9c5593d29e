// The CUDA launcher's logic, written once for two executors: the GPU (csrc/rwkv4/wkv_kernel.cu:
// every pass a kernel launch) and the CPU emulation (csrc/rwkv4/cpu/wkv_emulate.cpp: every pass a
// loop over its grid). It chooses the chunk length, allocates the small per-chunk buffers and
// runs the passes of csrc/rwkv4/wkv_chunked.h in order. An executor provides
//   int64_t sms;                                    multiprocessors the plan is made for
//   template <class Body, class TIn, class S>
//   void run(int64_t threads, const ScanArgs<TIn, S>& args);   Body::run(i, args) for every i
#pragma once

#include <torch/csrc/stable/ops.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <cstdint>

#include "wkv_chunked.h"
#include "wkv_launch.h"

namespace wkv {

// Calls fn.template operator()<TIn, S>() for the sequence type TIn and math type S of a launch.
template <class Fn>
void dispatch_scan_types(const Launch& a, Fn fn) {
  switch (a.k.scalar_type()) {
    case ScalarType::Double: return fn.template operator()<double, double>();
    case ScalarType::BFloat16: return fn.template operator()<torch::headeronly::BFloat16, float>();
    case ScalarType::Half: return fn.template operator()<torch::headeronly::Half, float>();
    case ScalarType::Float: return fn.template operator()<float, float>();
    default: WKV_CHECK(false, "wkv: unsupported dtype ", torch::headeronly::toString(a.k.scalar_type()));
  }
}

// A new uninitialised buffer of the math dtype on the launch's device.
inline Tensor math_buffer(const Launch& a, torch::headeronly::IntHeaderOnlyArrayRef sizes) {
  return new_tensor(sizes, a.w.scalar_type(), a.w);
}

template <class TIn, class S>
ScanArgs<TIn, S> scan_args(const Launch& a, int64_t sms) {
  // In-segment offsets are 32-bit: kCheckpointSteps rows of C channels must fit.
  WKV_CHECK_VALUE(a.C < (int64_t(1) << 31) / kCheckpointSteps, "wkv: C must be < ", (int64_t(1) << 31) / kCheckpointSteps,
                  " for the CUDA kernels, got ", a.C);
  ScanArgs<TIn, S> s;
  s.B = a.B;
  s.T = a.T;
  s.C = a.C;
  s.chunk = plan_chunk(a.B, a.T, a.C, sms, chunk_setting());
  s.nchunks = (a.T + s.chunk - 1) / s.chunk;
  s.nckpt = (a.T + kCheckpointSteps - 1) / kCheckpointSteps;
  s.w = ptr_or_null<const S>(a.w);
  s.w_is_log = a.w_is_log;
  s.u = ptr_or_null<const S>(a.u);
  s.k = ptr_or_null<const TIn>(a.k);
  s.v = ptr_or_null<const TIn>(a.v);
  s.state_in = ptr_or_null<const S>(a.state_in);
  return s;
}

// y (if defined), state_out (if defined) and checkpoints (if defined) from k, v, state_in.
template <class Exec>
void scan_forward(const Launch& a, Exec& ex) {
  dispatch_scan_types(a, [&]<class TIn, class S>() {
    ScanArgs<TIn, S> s = scan_args<TIn, S>(a, ex.sms);
    s.y = ptr_or_null<TIn>(a.y);
    s.state_out = ptr_or_null<S>(a.state_out);
    s.checkpoints = ptr_or_null<S>(a.checkpoints);
    Tensor starts;
    const int64_t lanes = a.B * a.C;
    if (s.nchunks > 1) {
      starts = math_buffer(a, {a.B, s.nchunks, 3, a.C});
      s.starts = static_cast<S*>(starts.data_ptr());
      ex.template run<FwdFold>(lanes * s.nchunks, s);
      ex.template run<FwdScan>(lanes, s);
    }
    ex.template run<FwdEmit>(lanes * s.nchunks, s);
  });
}

// gk, gv, gw/gu (sum_rows: (C,) written; else (B, C) accumulated), gstate_in (if defined).
// Uses a.checkpoints when the forward saved them, else recomputes them first.
template <class Exec>
void scan_backward(const Launch& a, Exec& ex) {
  Tensor checkpoints = a.checkpoints;
  if (!checkpoints.defined()) {
    Launch f = a;  // a backward launch has no y or state_out: this forward writes checkpoints only
    f.checkpoints = checkpoints = math_buffer(a, {a.B, (a.T + kCheckpointSteps - 1) / kCheckpointSteps, 3, a.C});
    scan_forward(f, ex);
  }
  dispatch_scan_types(a, [&]<class TIn, class S>() {
    ScanArgs<TIn, S> s = scan_args<TIn, S>(a, ex.sms);
    s.checkpoints = static_cast<S*>(checkpoints.data_ptr());
    s.gy = ptr_or_null<const TIn>(a.gy);
    s.gstate_out = ptr_or_null<const S>(a.gstate_out);
    s.gk = ptr_or_null<TIn>(a.gk);
    s.gv = ptr_or_null<TIn>(a.gv);
    s.gstate_in = ptr_or_null<S>(a.gstate_in);
    s.gw = ptr_or_null<S>(a.gw);
    s.gu = ptr_or_null<S>(a.gu);
    s.sum_rows = a.sum_rows;
    const int64_t lanes = a.B * a.C, per_chunk = lanes * s.nchunks;
    // One buffer: parts (2 per chunk-lane), then local (4) and adjoint (3) when chunked.
    const Tensor scratch = math_buffer(a, {per_chunk * (s.nchunks > 1 ? 9 : 2)});
    S* p = static_cast<S*>(scratch.data_ptr());
    s.parts = p;
    if (s.nchunks > 1) {
      s.local = p + 2 * per_chunk;
      s.adjoint = p + 6 * per_chunk;
      ex.template run<BwdLocal>(per_chunk, s);
      ex.template run<BwdScan>(lanes, s);
    }
    ex.template run<BwdEmit>(per_chunk, s);
    ex.template run<BwdReduce>(a.sum_rows ? a.C : lanes, s);
  });
}

}  // namespace wkv
