// The fused step on one float at a time: any CPU (and the reference the SIMD units are tested
// against through the same Python tests, with rwkv_wkv.cpu_isa("scalar")).
#include <cstdint>

#include "common/half_convert.h"
#include "common/half_types.h"

namespace {
struct StepScalarLane {
  using V = float;
  static constexpr int64_t W = 1;
  static V load(const float* p) { return *p; }
  static V load(const wkv::Bf16* p) { return bf16_to_float(p->bits); }
  static V load(const wkv::Half16* p) { return half_to_float(p->bits); }
};
inline float wkv_fma(float a, float b, float c) { return a * b + c; }
inline float wkv_hsum(float a) { return a; }
inline float load_i8(const int8_t* p) { return float(*p); }
}  // namespace

#include "step/step_kernel.h"

WKV_DEFINE_STEP(scalar, StepScalarLane)
