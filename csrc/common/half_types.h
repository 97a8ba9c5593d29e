// Storage of 16-bit inputs for the CPU kernels, layout-compatible with c10::BFloat16 / c10::Half
// (data only: the conversions live in half_convert.h, with internal linkage).
#pragma once

#include <cstdint>

namespace wkv {

struct Bf16 {
  uint16_t bits;
};
struct Half16 {
  uint16_t bits;
};

}  // namespace wkv
