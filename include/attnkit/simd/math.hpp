// exp and tanh for float batches: one algorithm and one set of constants on every ISA.
//
// Why not xsimd::exp: its AVX-512 path trips g++ 12's -Wuninitialized inside
// avx512fintrin.h (a false positive we cannot silence under -Werror without hiding real
// ones), and we want the same bits on every ISA and a defined underflow cutoff.
//
// exp: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then the Cephes degree-7
// polynomial; about 1 ulp over the normal range. Results below FLT_MIN flush to +0
// (x < -87.3365), so output never depends on FTZ/DAZ; exp(-inf) = 0; x > 88.3763 gives inf.
// Note [Minus infinity]: the softmax relies on exp(-inf) = 0 exactly.
#pragma once

#include <cstdint>
#include <limits>

#include "simd.hpp"

namespace attnkit {
inline namespace ATTNKIT_ISA_NS {
namespace simd {

template <class Arch>
ATTNKIT_ALWAYS_INLINE vfloat<Arch> exp(const vfloat<Arch>& x) noexcept {
  using B = vfloat<Arch>;
  using I = xsimd::batch<std::int32_t, Arch>;
  const B lo(-87.33654f), hi(88.37626f);
  const B xc = simd::clamp<Arch>(x, lo, hi);
  // n = round(x / ln2) with the 1.5 * 2^23 trick: n lands in the low mantissa bits of t.
  const B magic(12582912.f);
  const B t = xsimd::fma(xc, B(1.44269504088896341f), magic);
  const B n = t - magic;
  B r = xsimd::fnma(n, B(0.693359375f), xc);  // x - n * ln2_hi (exact)
  r = xsimd::fnma(n, B(-2.12194440e-4f), r);  // - n * ln2_lo
  B p(1.9875691500E-4f);
  p = xsimd::fma(p, r, B(1.3981999507E-3f));
  p = xsimd::fma(p, r, B(8.3334519073E-3f));
  p = xsimd::fma(p, r, B(4.1665795894E-2f));
  p = xsimd::fma(p, r, B(1.6666665459E-1f));
  p = xsimd::fma(p, r, B(5.0000001201E-1f));
  p = xsimd::fma(p, r * r, r) + B(1.f);
  // 2^n built in the exponent field; n is in [-126, 127] after the clamp.
  const I ni = xsimd::bitwise_cast<I>(t) - xsimd::bitwise_cast<I>(magic);
  // (n + 127) << 23 as a multiply: the AVX-512 shift intrinsic trips g++ 12 (see simd.hpp).
  const B scale = xsimd::bitwise_cast<B>((ni + I(127)) * I(1 << 23));
  B y = p * scale;
  y = xsimd::select(x < lo, B(0.f), y);
  y = xsimd::select(x > hi, B(std::numeric_limits<float>::infinity()), y);
  return y;
}

// tanh: Cephes tanhf. |x| < 0.625: x + x^3 P(x^2) (no cancellation near 0);
// otherwise 1 - 2 / (exp(2|x|) + 1) with the sign of x. About 2 ulp.
template <class Arch>
ATTNKIT_ALWAYS_INLINE vfloat<Arch> tanh(const vfloat<Arch>& x) noexcept {
  using B = vfloat<Arch>;
  const B ax = xsimd::abs(x);
  const B z = x * x;
  B p(-5.70498872745E-3f);
  p = xsimd::fma(p, z, B(2.06390887954E-2f));
  p = xsimd::fma(p, z, B(-5.37397155531E-2f));
  p = xsimd::fma(p, z, B(1.33314422036E-1f));
  p = xsimd::fma(p, z, B(-3.33332819422E-1f));
  const B small = xsimd::fma(p * z, x, x);
  const B e = simd::exp<Arch>(ax + ax);
  B big = B(1.f) - B(2.f) / (e + B(1.f));
  big = xsimd::select(x < B(0.f), -big, big);
  return xsimd::select(ax < B(0.625f), small, big);
}

}  // namespace simd
}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
