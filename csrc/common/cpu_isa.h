// Which CPU kernels run: the widest instruction set this processor and build support, chosen at
// run time (AVX-512F, else AVX2+FMA+F16C, else scalar), or one the user sets (rwkv_wkv.cpu_isa),
// including "cuda_emulation" (the CUDA kernels' bodies on the CPU, for tests). One setting for
// every generation's CPU kernels.
#pragma once

#include <string>

namespace wkv {

enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2, CudaEmulation = 3 };

Isa current_isa();
std::string cpu_isa();                            // its name
std::string set_cpu_isa(const std::string& isa);  // "auto", "avx512", "avx2", "scalar",
                                                  // "cuda_emulation"; returns the name set

}  // namespace wkv
