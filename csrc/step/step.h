// The fused single-token step for CPU generation (python: rwkv_wkv/fused_step.py): every layer
// of one token per batch row in one call — layer norms, token-shift mixes, the matrix-vector
// products (threads split each product's rows through common/parallel.h; SIMD dot products over
// the weight's own format),
// the WKV step, the channel mix and the head — with no per-op dispatch. What the op layer
// (step_ops.cpp) hands the per-instruction-set kernels (cpu/step_<isa>.cpp, one template:
// step_kernel.h). The matrix machinery (Matrix, gemv) is generation-agnostic: RWKV-7's step can
// use it as RWKV-4's does.
#pragma once

#include <cstdint>

namespace wkv::step {

// A weight matrix (rows = outputs, cols = inputs, row-major), in one of the formats generation
// reads: float32, bfloat16, float16 (converted to float32 as they are loaded), int8 with one
// float32 scale per row (w = q * scale[row]), or Q4: 4-bit values q in [-8, 7] with one float32
// scale per block of 32 inputs (w = q * scale[row][block]), packed per block of 64 inputs into 32
// bytes: byte i holds q + 8 of input i (low nibble) and of input 32 + i (high nibble). A row is
// padded with zeros to a multiple of 64 inputs: (rows, ceil(cols / 64) * 32) bytes, scales
// (rows, 2 * ceil(cols / 64)).
enum class Format : int { F32 = 0, BF16 = 1, F16 = 2, I8 = 3, Q4 = 4 };

// Q4's layout: bytes per row and scales per row for `cols` inputs.
inline int64_t q4_row_bytes(int64_t cols) { return (cols + 63) / 64 * 32; }
inline int64_t q4_row_scales(int64_t cols) { return (cols + 63) / 64 * 2; }

struct Matrix {
  const void* w = nullptr;
  const float* scale = nullptr;  // I8: (rows,); Q4: (rows, q4_row_scales(cols))
  Format format = Format::F32;
  int64_t rows = 0, cols = 0;
};

// RWKV-4: the per-layer vectors (float32, (C,)) and matrices; w is the decay -exp(time_decay).
struct Rwkv4Layer {
  const float *ln1_w, *ln1_b, *ln2_w, *ln2_b, *w, *u, *att_mix_k, *att_mix_v, *att_mix_r, *ffn_mix_k,
      *ffn_mix_r;
  Matrix att_key, att_value, att_receptance, att_output, ffn_key, ffn_receptance, ffn_value;
};

struct Rwkv4Model {
  int64_t C = 0, F = 0, V = 0, L = 0;
  int nthreads = 1;       // threads for the products (torch.get_num_threads())
  float eps = 1e-5f;      // the blocks' LayerNorm epsilon
  float eps_out = 1e-5f;  // ln_out's
  const float *ln0_w = nullptr, *ln0_b = nullptr, *ln_out_w = nullptr, *ln_out_b = nullptr;
  const Rwkv4Layer* layers = nullptr;
  Matrix head;
};

// RWKV-7: per layer the vectors (float32, (C,): r_k flattened to H * N) and matrices, the
// low-rank ones transposed to (out, in) row-major like the rest (w1t = w1.T: (Dw, C), w2t: (C, Dw)).
struct Rwkv7Layer {
  const float *ln1_w, *ln1_b, *ln2_w, *ln2_b, *x_r, *x_w, *x_k, *x_v, *x_a, *x_g, *w0, *a0, *v0, *k_k, *k_a,
      *r_k, *ln_x_w, *ln_x_b, *ffn_x_k;
  Matrix receptance, key, value, output, w1t, w2t, a1t, a2t, v1t, v2t, g1t, g2t, ffn_key, ffn_value;
};

struct Rwkv7Model {
  int64_t C = 0, F = 0, V = 0, L = 0, N = 0;  // N: head size (H = C / N)
  int nthreads = 1;                            // threads for the products (torch.get_num_threads())
  float eps = 1e-5f, eps_out = 1e-5f, eps_ln_x = 64e-5f;
  const float *ln0_w = nullptr, *ln0_b = nullptr, *ln_out_w = nullptr, *ln_out_b = nullptr;
  const Rwkv7Layer* layers = nullptr;
  Matrix head;
};

// x: (B, C) the tokens' embeddings (overwritten: scratch); state: updated in place, RWKV-4's
// (B, L, 5, C) (rows: time-mix shift, aa, bb, pp, channel-mix shift) or RWKV-7's (B, L, 2 + N, C)
// (time-mix shift, channel-mix shift, then the WKV state (H, N, N) in its memory order);
// logits: (B, V).
#define WKV_DECLARE_STEP(isa)                                                                     \
  void rwkv4_step_##isa(const Rwkv4Model& m, float* x, float* state, float* logits, int64_t B); \
  void rwkv7_step_##isa(const Rwkv7Model& m, float* x, float* state, float* logits, int64_t B);
WKV_DECLARE_STEP(avx512)
WKV_DECLARE_STEP(avx2)
WKV_DECLARE_STEP(scalar)
#undef WKV_DECLARE_STEP

}  // namespace wkv::step
