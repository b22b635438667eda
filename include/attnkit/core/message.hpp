// Error messages without std::string code in the caller's translation unit.
//
// Note [Messages and ISA flags]: std::to_string, std::ostringstream and std::string's
// operator+ are inline templates that every translation unit including attnkit would emit
// as weak code compiled with its own flags; a program whose translation units use
// different -m flags would then run one copy for all of them (a baseline caller could get
// the AVX2 copy). So messages are built into a fixed buffer with snprintf, and thrown as
// attnkit::error(const char*), whose std::invalid_argument constructor lives in libstdc++.
#pragma once

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "../config.hpp"
#include "error.hpp"

namespace attnkit {
inline namespace ATTNKIT_ISA_NS {
namespace detail {

class message {
 public:
  message& operator<<(const char* s) noexcept {
    append("%s", s);
    return *this;
  }
  message& operator<<(std::int64_t v) noexcept {
    append("%lld", static_cast<long long>(v));
    return *this;
  }
  message& operator<<(int v) noexcept { return *this << std::int64_t(v); }
  message& operator<<(double v) noexcept {
    append("%g", v);
    return *this;
  }
  message& operator<<(const std::array<std::int64_t, 4>& a) noexcept {
    return *this << "[" << a[0] << ", " << a[1] << ", " << a[2] << ", " << a[3] << "]";
  }
  const char* c_str() const noexcept { return buf_; }

 private:
  template <class T>
  void append(const char* fmt, T v) noexcept {
    if (n_ + 1 >= sizeof buf_) return;  // truncate very long messages
    const int w = std::snprintf(buf_ + n_, sizeof buf_ - n_, fmt, v);
    if (w > 0) n_ = n_ + std::size_t(w) < sizeof buf_ ? n_ + std::size_t(w) : sizeof buf_ - 1;
  }
  char buf_[1024] = {};
  std::size_t n_ = 0;
};

/// Throws attnkit::error("attnkit::<fn>: <msg>").
[[noreturn]] inline void fail(const char* fn, const message& msg) {
  message m;
  m << "attnkit::" << fn << ": " << msg.c_str();
  throw error(m.c_str());
}

}  // namespace detail
}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
