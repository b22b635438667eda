// The load policy of 16-bit storage: bf16 and fp16 rows widened to fp32 registers.
//
// Widening is exact (every bf16 and fp16 value is a float), so the kernels accumulate in
// fp32 on the same values the reference reads. bf16 -> fp32 is a 16-bit shift on every ISA;
// fp16 uses F16C (AVX2 level) or AVX-512's conversion, and a scalar conversion on SSE2.
//
// Note [Masked conversion intrinsics]: the unmasked AVX-512 forms of vpmovzxwd, vpslld and
// vcvtph2ps are built on _mm512_undefined_* in g++ 12's headers and trip -Wuninitialized
// at the caller (GCC bug 105593, see simd.hpp); the maskz forms with an all-ones mask
// compile to the same instructions without it.
#pragma once

#include <cstdint>
#include <type_traits>

#include "../core/dtypes.hpp"
#include "simd.hpp"

namespace attnkit {
inline namespace ATTNKIT_ISA_NS {
namespace simd {

/// W consecutive elements at p (any alignment) as one fp32 register.
template <class Arch>
ATTNKIT_ALWAYS_INLINE vfloat<Arch> load_widen(const float* p) noexcept {
  return vfloat<Arch>::load_unaligned(p);
}

#if XSIMD_WITH_AVX
// AVX without AVX2 has no 256-bit integer shifts or unpacks: the bf16 loads below widen two
// 128-bit integer halves and join them into one fp32 register.
ATTNKIT_ALWAYS_INLINE __m256 join_halves(__m128i lo, __m128i hi) noexcept {
  return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_castsi128_ps(lo)), _mm_castsi128_ps(hi), 1);
}
#endif

template <class Arch>
ATTNKIT_ALWAYS_INLINE vfloat<Arch> load_widen(const bf16* p) noexcept {
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_base_of<xsimd::avx512f, Arch>::value) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m512i w = _mm512_maskz_cvtepu16_epi32(__mmask16(0xffff), h);
    return vfloat<Arch>(_mm512_castsi512_ps(_mm512_maskz_slli_epi32(__mmask16(0xffff), w, 16)));
  } else
#endif
#if XSIMD_WITH_AVX2
  if constexpr (std::is_base_of<xsimd::avx2, Arch>::value) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return vfloat<Arch>(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
  } else
#endif
#if XSIMD_WITH_AVX
  if constexpr (std::is_base_of<xsimd::avx, Arch>::value) {  // AVX without AVX2 (join_halves)
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), z = _mm_setzero_si128();
    return vfloat<Arch>(join_halves(_mm_unpacklo_epi16(z, h), _mm_unpackhi_epi16(z, h)));
  } else
#endif
  {
    static_assert(vfloat<Arch>::size == 4, "attnkit: load_widen needs an SSE2, AVX or AVX-512 arch");
    // Interleaving zeros below each 16-bit value builds the float's bit pattern directly.
    const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return vfloat<Arch>(_mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), h)));
  }
}

template <class Arch>
ATTNKIT_ALWAYS_INLINE vfloat<Arch> load_widen(const fp16* p) noexcept {
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_base_of<xsimd::avx512f, Arch>::value) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return vfloat<Arch>(_mm512_maskz_cvtph_ps(__mmask16(0xffff), h));
  } else
#endif
#if XSIMD_WITH_AVX2 && defined(__F16C__)
  if constexpr (std::is_base_of<xsimd::avx2, Arch>::value) {
    return vfloat<Arch>(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  } else
#endif
  {
    alignas(64) float f[vfloat<Arch>::size];
    for (std::size_t i = 0; i < vfloat<Arch>::size; ++i) f[i] = fp16::to_float(p[i].bits);
    return vfloat<Arch>::load_aligned(f);
  }
}

// Note [bf16 pairs]: a bf16 is the upper half of the fp32 with the same value, so 2W bf16
// loaded as W 32-bit lanes hold a float in their upper halves (the odd elements: mask the
// lower halves) and another in their lower halves (the even elements: shift them up). One
// plain load and two simple integer operations widen 2W elements, where load_widen takes a
// lane-crossing zero-extension and a shift for each W. The elements come out in pair
// order, evens then odds, so the kernels that use this keep the other operand (Q, or the
// P.V sums) in the same order (kernels::pair_order in micro_rows.hpp). Measured on Zen 4
// (bf16 decode, 1 thread, 64Ki keys x 8 KV heads): 30.8-31.1 -> 28.6-29.1 ns per key and
// KV head. (Before P.V spread its prefetches, Note [Prefetch ahead] in micro_rows.hpp, the
// same change measured slower: 31.6-31.9 -> 34.7-35.7.)

/// 2W bf16 at p (any alignment): even = elements 0, 2, 4, ..., odd = elements 1, 3, 5, ...
template <class Arch>
ATTNKIT_ALWAYS_INLINE void load_widen_pairs(const bf16* p, vfloat<Arch>& even, vfloat<Arch>& odd) noexcept {
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_base_of<xsimd::avx512f, Arch>::value) {
    const __m512i x = _mm512_loadu_si512(p);
    even = vfloat<Arch>(_mm512_castsi512_ps(_mm512_maskz_slli_epi32(__mmask16(0xffff), x, 16)));
    odd = vfloat<Arch>(_mm512_castsi512_ps(_mm512_maskz_and_epi32(__mmask16(0xffff), x, _mm512_set1_epi32(-65536))));
  } else
#endif
#if XSIMD_WITH_AVX2
  if constexpr (std::is_base_of<xsimd::avx2, Arch>::value) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    even = vfloat<Arch>(_mm256_castsi256_ps(_mm256_slli_epi32(x, 16)));
    odd = vfloat<Arch>(_mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32(-65536))));
  } else
#endif
#if XSIMD_WITH_AVX
  if constexpr (std::is_base_of<xsimd::avx, Arch>::value) {  // AVX without AVX2 (join_halves)
    const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p) + 1), m = _mm_set1_epi32(-65536);
    even = vfloat<Arch>(join_halves(_mm_slli_epi32(lo, 16), _mm_slli_epi32(hi, 16)));
    odd = vfloat<Arch>(join_halves(_mm_and_si128(lo, m), _mm_and_si128(hi, m)));
  } else
#endif
  {
    static_assert(vfloat<Arch>::size == 4, "attnkit: load_widen_pairs needs an SSE2, AVX or AVX-512 arch");
    const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    even = vfloat<Arch>(_mm_castsi128_ps(_mm_slli_epi32(x, 16)));
    odd = vfloat<Arch>(_mm_castsi128_ps(_mm_and_si128(x, _mm_set1_epi32(-65536))));
  }
}

/// dst[0, n) = src[0, n) widened to fp32, then dst[n, npad) = 0.
template <class Arch, class T>
ATTNKIT_ALWAYS_INLINE void widen_row(const T* ATTNKIT_RESTRICT src, float* ATTNKIT_RESTRICT dst, std::int64_t n,
                                    std::int64_t npad) noexcept {
  constexpr std::int64_t W = vfloat<Arch>::size;
  std::int64_t i = 0;
  for (; i + W <= n; i += W) load_widen<Arch>(src + i).store_unaligned(dst + i);
  for (; i < n; ++i) dst[i] = to_float(src[i]);
  for (; i < npad; ++i) dst[i] = 0.f;
}

}  // namespace simd
}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
