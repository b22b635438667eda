// The SIMD layer: the only place that includes xsimd and names register tiles per ISA.
//
// xsimd 8.1 API notes (toolchain.md): no reduce_add/reduce_max (only hadd), no masked
// loads; both are hidden here so an xsimd upgrade touches this file only. Everything is a
// template on Arch or lives in the ISA namespace (Note [ISA namespaces] in config.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <type_traits>

#include <xsimd/xsimd.hpp>

#include "../config.hpp"

namespace attnkit {
inline namespace ATTNKIT_ISA_NS {
namespace simd {

template <class Arch>
using vfloat = xsimd::batch<float, Arch>;

/// Register tiles of the dense micro-kernels (see kernels/dense.hpp).
///   nv: query vectors per tile (queries live in SIMD lanes: nv * lanes queries);
///   kr: keys per Q.K^T micro-tile; jr: value columns per P.V micro-tile.
/// Accumulators kr * nv and jr * nv, plus nv loads and one broadcast, fit the register file.
template <class Arch, class = void>
struct tile_config {  // 16 registers (SSE2, AVX2)
  static constexpr int lanes = int(vfloat<Arch>::size);
  static constexpr int nv = 3;
  static constexpr int kr = 4;
  static constexpr int jr = 4;
};

#if XSIMD_WITH_AVX512F
template <class Arch>
struct tile_config<Arch, std::enable_if_t<std::is_base_of<xsimd::avx512f, Arch>::value>> {  // 32 zmm
  static constexpr int lanes = int(vfloat<Arch>::size);
  static constexpr int nv = 4;
  static constexpr int kr = 6;
  static constexpr int jr = 6;
};
#endif

// Note [g++ 12 AVX-512 warnings]: xsimd's max/min/round on AVX-512 go through intrinsics
// built on _mm512_undefined_ps, which g++ 12 reports as -Wuninitialized at the caller
// (GCC bug 105593). Users compile these headers with -Wall -Werror, so we use
// compare + select instead, which compile to the same vmaxps-class code paths.
template <class Arch>
ATTNKIT_ALWAYS_INLINE vfloat<Arch> max(const vfloat<Arch>& a, const vfloat<Arch>& b) noexcept {
  return xsimd::select(a < b, b, a);
}
template <class Arch>
ATTNKIT_ALWAYS_INLINE vfloat<Arch> clamp(const vfloat<Arch>& x, const vfloat<Arch>& lo,
                                         const vfloat<Arch>& hi) noexcept {
  return xsimd::select(x < lo, lo, xsimd::select(x > hi, hi, x));
}

// Note [Loads kept in registers]: g++ folds a vector load into every FMA that uses it as a
// memory operand, even when the value feeds several FMAs and registers are free: a Q.K^T
// step meant to load 4 Q and 4 K vectors for 16 FMAs then issues 16 + 4 loads. Zen 4 takes
// one 512-bit load per cycle, so such a loop runs at the load rate, not the FMA rate.
// keep_in_register() hides the value behind an empty asm that claims to change it, so the
// compiler must hold it in a register; it emits no instruction. Measured on Zen 4 (bf16
// decode, 1 thread, 64Ki keys x 8 KV heads): 35.3 -> 33.2 ns per key and KV head.
template <class Arch>
ATTNKIT_ALWAYS_INLINE void keep_in_register(vfloat<Arch>& x) noexcept {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  typename vfloat<Arch>::register_type r = x;
  __asm__("" : "+v"(r));
  x = vfloat<Arch>(r);
#else
  (void)x;
#endif
}

/// The lanes of a comparison as bits (lane i -> bit i); xsimd 8.1 has no batch_bool::mask().
template <class Arch>
ATTNKIT_ALWAYS_INLINE unsigned bitmask(const xsimd::batch_bool<float, Arch>& b) noexcept {
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_base_of<xsimd::avx512f, Arch>::value) {
    return unsigned(static_cast<__mmask16>(b));
  } else
#endif
#if XSIMD_WITH_AVX
  if constexpr (std::is_base_of<xsimd::avx, Arch>::value) {
    return unsigned(_mm256_movemask_ps(static_cast<__m256>(b)));
  } else
#endif
  {
    static_assert(vfloat<Arch>::size == 4, "attnkit: bitmask needs an SSE, AVX or AVX-512 arch");
    return unsigned(_mm_movemask_ps(static_cast<__m128>(b)));
  }
}

/// Name of an xsimd arch, for logs and benchmark output.
template <class Arch>
inline const char* arch_name() noexcept {
  return Arch::name();
}

/// 64-byte aligned float scratch owned by one thread of one call.
class scratch {
 public:
  scratch() = default;
  explicit scratch(std::size_t n) : p_(n ? static_cast<float*>(::operator new(n * sizeof(float), std::align_val_t(64))) : nullptr) {}
  scratch(const scratch&) = delete;
  scratch& operator=(const scratch&) = delete;
  ~scratch() {
    if (p_) ::operator delete(p_, std::align_val_t(64));
  }
  float* get() const noexcept { return p_; }

 private:
  float* p_ = nullptr;
};

}  // namespace simd
}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
