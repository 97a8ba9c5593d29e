// Errors that reach Python as the right exception, through the LibTorch stable ABI.
//
// The stable ABI has no c10::Error: a C++ exception thrown by an op crosses into Python through
// torch's and pybind11's translators. std::invalid_argument arrives as ValueError (a bad dtype,
// shape, size or layout), std::runtime_error as RuntimeError (device mismatch, out of memory,
// a CUDA error). Messages are built only when a check fails.
#pragma once

#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/HeaderOnlyArrayRef.h>

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

namespace wkv {

inline void append(std::ostringstream& os, const torch::headeronly::IntHeaderOnlyArrayRef& s) {
  os << "(";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << (s.size() == 1 ? ",)" : ")");
}
template <class X>
void append(std::ostringstream& os, const X& x) {
  os << x;
}

template <class... Parts>
std::string message(const Parts&... parts) {
  std::ostringstream os;
  (append(os, parts), ...);
  return os.str();
}

}  // namespace wkv

// A failed check raises ValueError in Python (bad dtype, shape, size or layout).
#define WKV_CHECK_VALUE(cond, ...) \
  do {                             \
    if (!(cond)) [[unlikely]]      \
      throw std::invalid_argument(::wkv::message(__VA_ARGS__)); \
  } while (0)

// A failed check raises RuntimeError in Python (device, resources, internal).
#define WKV_CHECK(cond, ...)  \
  do {                        \
    if (!(cond)) [[unlikely]] \
      throw std::runtime_error(::wkv::message(__VA_ARGS__)); \
  } while (0)
