// Storage types attnkit::bf16 and attnkit::fp16.
//
// Both are 16-bit storage wrappers (arithmetic happens in fp32). Conversion from float
// rounds to nearest, ties to even; NaN stays NaN (quiet), infinities and fp16 subnormals
// are exact. They are trivially copyable standard-layout types with the size of
// uint16_t, so a buffer of uint16_t bits (e.g. from a checkpoint) may be viewed as them.
#pragma once

#include <cstdint>
#include <cstring>

#include "../config.hpp"

namespace attnkit {

namespace internal {
ATTNKIT_ALWAYS_INLINE float bits_to_float(std::uint32_t u) noexcept {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
ATTNKIT_ALWAYS_INLINE std::uint32_t float_to_bits(float f) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
}  // namespace internal

struct bf16 {
  std::uint16_t bits = 0;

  bf16() = default;
  ATTNKIT_ALWAYS_INLINE explicit bf16(float f) noexcept : bits(from_float(f)) {}
  ATTNKIT_ALWAYS_INLINE explicit operator float() const noexcept { return to_float(bits); }

  static ATTNKIT_ALWAYS_INLINE bf16 from_bits(std::uint16_t b) noexcept {
    bf16 r;
    r.bits = b;
    return r;
  }
  static ATTNKIT_ALWAYS_INLINE float to_float(std::uint16_t b) noexcept {
    return internal::bits_to_float(std::uint32_t(b) << 16);
  }
  static ATTNKIT_ALWAYS_INLINE std::uint16_t from_float(float f) noexcept {
    std::uint32_t u = internal::float_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((u >> 16) | 0x40u);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
    return std::uint16_t(u >> 16);
  }
};

struct fp16 {
  std::uint16_t bits = 0;

  fp16() = default;
  ATTNKIT_ALWAYS_INLINE explicit fp16(float f) noexcept : bits(from_float(f)) {}
  ATTNKIT_ALWAYS_INLINE explicit operator float() const noexcept { return to_float(bits); }

  static ATTNKIT_ALWAYS_INLINE fp16 from_bits(std::uint16_t b) noexcept {
    fp16 r;
    r.bits = b;
    return r;
  }

  static ATTNKIT_ALWAYS_INLINE float to_float(std::uint16_t h) noexcept {
    const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
    const std::uint32_t exp = (h >> 10) & 0x1fu;
    std::uint32_t mant = h & 0x3ffu;
    if (exp == 0x1fu) return internal::bits_to_float(sign | 0x7f800000u | (mant << 13));  // inf/NaN
    if (exp != 0) return internal::bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
    if (mant == 0) return internal::bits_to_float(sign);
    // subnormal: value = mant * 2^-24, exact in float
    const float v = float(mant) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }

  static ATTNKIT_ALWAYS_INLINE std::uint16_t from_float(float f) noexcept {
    const std::uint32_t u = internal::float_to_bits(f);
    const std::uint16_t sign = std::uint16_t((u >> 16) & 0x8000u);
    const std::uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return std::uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // quiet NaN
    if (a >= 0x477ff000u) return std::uint16_t(sign | 0x7c00u);  // rounds to >= 65520: inf
    if (a < 0x38800000u) {
      // result is subnormal or zero: value / 2^-24 rounded to nearest even integer.
      if (a < 0x33000000u) return sign;  // below half the smallest subnormal
      const std::uint32_t e = a >> 23;
      const std::uint32_t m = (a & 0x7fffffu) | 0x800000u;
      const std::uint32_t shift = 126u - e;  // bits dropped to land on the 2^-24 grid
      std::uint32_t r = m >> shift;
      const std::uint32_t rem = m & ((1u << shift) - 1u);
      const std::uint32_t half = 1u << (shift - 1u);
      if (rem > half || (rem == half && (r & 1u))) ++r;
      return std::uint16_t(sign | r);
    }
    // normal: rebias exponent, round mantissa from 23 to 10 bits (carry may bump exp).
    std::uint32_t r = a - 0x38000000u;  // exponent bias 127 -> 15
    r += 0xfffu + ((r >> 13) & 1u);
    return std::uint16_t(sign | (r >> 13));
  }
};

static_assert(sizeof(bf16) == 2 && sizeof(fp16) == 2, "storage types must be 16 bits");

/// Storage type of a buffer that crosses the ISA dispatch boundary untyped (K/V caches).
enum class dtype : std::uint8_t { f32, bf16, f16 };

template <class T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr dtype value = dtype::f32;
};
template <>
struct dtype_of<bf16> {
  static constexpr dtype value = dtype::bf16;
};
template <>
struct dtype_of<fp16> {
  static constexpr dtype value = dtype::f16;
};

/// Widen any supported storage type to float.
ATTNKIT_ALWAYS_INLINE float to_float(float x) noexcept { return x; }
ATTNKIT_ALWAYS_INLINE float to_float(bf16 x) noexcept { return bf16::to_float(x.bits); }
ATTNKIT_ALWAYS_INLINE float to_float(fp16 x) noexcept { return fp16::to_float(x.bits); }

}  // namespace attnkit
