// The WKV recurrence of RWKV-4, written once.
//
// Both kernels include this header: the CUDA kernel instantiates the step functions with a
// scalar `float`/`double` per thread, the CPU kernels with a SIMD vector type (csrc/common/vec_*.h)
// or a scalar lane. A lane type V needs: + - * / and unary -, construction from a scalar,
// `x >= y` returning a mask, and the free functions wkv_abs, wkv_select(mask, a, b) and
// wkv_exp_nonpos (exp of an argument <= 0, which is all the recurrence ever needs).
//
// Notation (one batch row b, one channel c): w = -exp(time_decay) < 0, u = time_first.
// The state before step t is (aa, bb, pp): numerator and denominator sums scaled by exp(-pp).
//
//   forward:  y_t = (e^{pp} aa + e^{u+k_t} v_t) / (e^{pp} bb + e^{u+k_t})
//             (aa, bb, pp) <- state after decaying by e^w and adding e^{k_t} (v_t, 1)
//
// Of each exponential pair (exp(x - q), exp(z - q)) with q = max(x, z), one is exp(0) = 1, so
// each max-branch costs one exp: exp(-|x - z|).
//
// Backward (derivation: docs/op.md, "Backward"): going from t = T-1 down
// to 0 we carry the adjoints of the unscaled sums A_t = aa_t e^{pp_t}, B_t = bb_t e^{pp_t} in
// scaled form ga = dL/dA_t * e^{pp_t}, gb = dL/dB_t * e^{pp_t}. They stay bounded (|ga| <=
// sum|g| / bb_t, and bb_t >= 1 once a token has been seen), so no step overflows. `gcarry` is
// the gradient reaching the exponent pp of the *returned* state: pp_T is the max of the
// log-weights, so it flows back along the max-branches to the k_i (or input pp) that set it.
#pragma once

// Every function here has internal linkage (`static`): the CPU kernels are compiled several
// times with different instruction sets, and a shared weak symbol could hand AVX-512 code to a
// machine without it.
#if defined(__CUDACC__)
#define WKV_HD static __host__ __device__ __forceinline__
#else
#include <cmath>
#define WKV_HD static inline
#endif

namespace wkv {

// The exponent of the empty state: e^{-1e38} underflows to exactly 0 in float32 and float64.
constexpr float kEmptyExponent = -1e38f;

// The forward can save the state before every kCheckpointSteps-th step ("checkpoints", shape
// (B, ceil(T / kCheckpointSteps), 3, C)); every backward (CPU, CUDA serial and chunked)
// recomputes at most this many steps from one of them. CUDA chunk lengths are multiples of it.
constexpr int kCheckpointSteps = 32;

// Scalar lanes (CUDA threads, scalar CPU tails, float64). On a GPU, float32 uses the fast
// hardware exponential and division (__expf: ~2 ulp near 1, which is where the recurrence's
// weights matter; __fdividef: the denominators here are >= 1 after the first token, far below
// its 2^126 limit). Host code, including the CPU emulation of the CUDA kernels, uses the
// accurate library functions.
#if defined(__CUDACC__)
WKV_HD float wkv_abs(float x) { return fabsf(x); }
WKV_HD double wkv_abs(double x) { return fabs(x); }
WKV_HD float wkv_exp_nonpos(float x) {
#if defined(__CUDA_ARCH__)
  return __expf(x);
#else
  return expf(x);
#endif
}
WKV_HD double wkv_exp_nonpos(double x) { return exp(x); }
WKV_HD float wkv_div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdividef(a, b);
#else
  return a / b;
#endif
}
WKV_HD float wkv_exp(float x) { return expf(x); }  // accurate, any sign (w = -exp(time_decay))
WKV_HD double wkv_exp(double x) { return exp(x); }
#else
WKV_HD float wkv_abs(float x) { return std::fabs(x); }
WKV_HD double wkv_abs(double x) { return std::fabs(x); }
WKV_HD float wkv_exp_nonpos(float x) { return std::exp(x); }
WKV_HD double wkv_exp_nonpos(double x) { return std::exp(x); }
WKV_HD float wkv_exp(float x) { return std::exp(x); }
WKV_HD double wkv_exp(double x) { return std::exp(x); }
#endif
// Division for any lane type (the float overload above is preferred where it exists).
template <class V>
WKV_HD V wkv_div(V a, V b) {
  return a / b;
}
WKV_HD float wkv_select(bool m, float a, float b) { return m ? a : b; }
WKV_HD double wkv_select(bool m, double a, double b) { return m ? a : b; }

// One max-branch: q = max(x, z); returns e^{x-q}, e^{z-q} and whether x won (x >= z).
template <class V, class M>
WKV_HD void wkv_max_pair(V x, V z, V& ex, V& ez, M& x_wins) {
  const V d = x - z;
  x_wins = d >= V(0);
  const V e = wkv_exp_nonpos(-wkv_abs(d));
  ex = wkv_select(x_wins, V(1), e);
  ez = wkv_select(x_wins, e, V(1));
}

// Advances the state (aa, bb, pp) past token t: decay by e^w, add e^{k_t} (v_t, 1). Also
// returns the branch weights f1 = e^{pp + w - pp'}, f2 = e^{k_t - pp'} (one of them is 1),
// which the backward can reuse instead of recomputing the exp.
template <class V>
WKV_HD void advance_state(V w, V k, V v, V& aa, V& bb, V& pp, V& f1, V& f2) {
  decltype(pp >= k) state_wins;
  const V decayed = pp + w;
  wkv_max_pair(decayed, k, f1, f2, state_wins);
  aa = f1 * aa + f2 * v;
  bb = f1 * bb + f2;
  pp = wkv_select(state_wins, decayed, k);
}

template <class V>
WKV_HD void advance_state(V w, V k, V v, V& aa, V& bb, V& pp) {
  V f1, f2;
  advance_state(w, k, v, aa, bb, pp, f1, f2);
}

// One forward step: returns y_t and advances the state past token t.
template <class V>
WKV_HD V forward_step(V w, V u, V k, V v, V& aa, V& bb, V& pp) {
  V e1, e2;
  decltype(pp >= k) state_wins;
  wkv_max_pair(pp, u + k, e1, e2, state_wins);
  const V y = wkv_div(e1 * aa + e2 * v, e1 * bb + e2);
  advance_state(w, k, v, aa, bb, pp);
  return y;
}

// One backward step at token t, given the state *before* t (aa, bb, pp), the decay-branch
// weights (f1, f2) of advance_state at t, the inputs and g = dL/dy_t. On entry (ga, gb) are the
// scaled adjoints of the state after t, on exit those of the state before t. Accumulates gw
// (gradient w.r.t. w) and gu; writes gk, gv.
template <class V>
WKV_HD void backward_step(V u, V k, V v, V g, V aa, V bb, V pp, V f1, V f2, V& ga, V& gb,
                          V& gcarry, V& gw, V& gu, V& gk, V& gv) {
  V e1, e2;
  decltype(pp >= k) bonus_loses;
  wkv_max_pair(pp, u + k, e1, e2, bonus_loses);
  const V inv_den = wkv_div(V(1), e1 * bb + e2);
  const V y = (e1 * aa + e2 * v) * inv_den;
  const V g_den = g * inv_den;
  const V g_bonus = g_den * e2;             // g e^{u+k_t} / D_t
  const V g_bonus_k = g_bonus * (v - y);    // d y_t / d k_t (direct), also d y_t / d u
  gu = gu + g_bonus_k;

  gv = g_bonus + ga * f2;
  gk = g_bonus_k + f2 * (ga * v + gb);
  gw = gw + f1 * (ga * aa + gb * bb);
  // pp_{t+1} = pp_t + w where the state won the max (f1 = 1 >= f2), else k_t. (At an exact tie
  // both branches are equal and the state's is taken, as in advance_state.)
  const auto state_wins = f1 >= f2;
  gk = gk + wkv_select(state_wins, V(0), gcarry);
  gw = gw + wkv_select(state_wins, gcarry, V(0));
  gcarry = wkv_select(state_wins, gcarry, V(0));

  ga = g_den * e1 + f1 * ga;
  gb = f1 * gb - g_den * y * e1;
}

// The same, recomputing the decay branch from w (when the forward's weights were not kept).
template <class V>
WKV_HD void backward_step(V w, V u, V k, V v, V g, V aa, V bb, V pp, V& ga, V& gb, V& gcarry,
                          V& gw, V& gu, V& gk, V& gv) {
  V f1, f2;
  decltype(pp >= k) state_wins;
  wkv_max_pair(pp + w, k, f1, f2, state_wins);
  backward_step(u, k, v, g, aa, bb, pp, f1, f2, ga, gb, gcarry, gw, gu, gk, gv);
}

// Seeds the reverse pass from the gradient of the returned state (gaa, gbb, gpp) and its value.
template <class V>
WKV_HD void backward_init(V gaa, V gbb, V gpp, V aa_T, V bb_T, V& ga, V& gb, V& gcarry) {
  ga = gaa;
  gb = gbb;
  gcarry = gpp - gaa * aa_T - gbb * bb_T;
}

// Gradient w.r.t. the input state, from the adjoints left after step 0.
template <class V>
WKV_HD void backward_finish(V ga, V gb, V gcarry, V aa_0, V bb_0, V& gaa, V& gbb, V& gpp) {
  gaa = ga;
  gbb = gb;
  gpp = ga * aa_0 + gb * bb_0 + gcarry;
}

// ---- chunks of T --------------------------------------------------------------------------
// The recurrence is associative, so T can be cut into chunks processed in parallel
// (csrc/rwkv4/wkv_chunked.h). With A = aa e^{pp}, B = bb e^{pp}, a chunk of n steps maps the state
// entering it to e^{n w} (A, B) + (the chunk's own fold from the empty state).

// Combines the state entering a chunk of n steps (aa, bb, pp; updated in place) with the
// chunk's fold from the empty state (aa_loc, bb_loc, pp_loc): one max-branch, one exp.
template <class V>
WKV_HD void combine_states(V w, V n, V& aa, V& bb, V& pp, V aa_loc, V bb_loc, V pp_loc) {
  V e_in, e_loc;
  decltype(pp >= pp_loc) in_wins;
  const V decayed = pp + n * w;
  wkv_max_pair(decayed, pp_loc, e_in, e_loc, in_wins);
  aa = e_in * aa + e_loc * aa_loc;
  bb = e_in * bb + e_loc * bb_loc;
  pp = wkv_select(in_wins, decayed, pp_loc);
}

// The adjoint recurrence is linear too. Walking a chunk backwards maps the scaled adjoints at
// its end to those at its start as (ga, gb) -> decay * (ga, gb) + (ga_loc, gb_loc), where
// (ga_loc, gb_loc) is the walk started from zero adjoints and decay = prod f1 over the chunk
// (= e^{n w + pp_start - pp_end} <= 1), and gcarry -> gcarry if the state branch won at every
// step of the chunk (keep = 1), else 0. backward_step accumulates both when asked:
template <class V>
WKV_HD void track_chunk_map(V f1, V f2, V& decay, V& keep) {
  decay = decay * f1;
  keep = wkv_select(f1 >= f2, keep, V(0));
}

template <class V>
WKV_HD void carry_adjoints(V decay, V keep, V ga_loc, V gb_loc, V& ga, V& gb, V& gcarry) {
  ga = decay * ga + ga_loc;
  gb = decay * gb + gb_loc;
  gcarry = wkv_select(keep >= V(1), gcarry, V(0));
}

}  // namespace wkv
