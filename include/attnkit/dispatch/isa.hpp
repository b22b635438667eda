// ISA detection and selection.
//
// attnkit::isa names the three code paths a runtime-dispatch build carries: baseline SSE2,
// AVX2+FMA (x86-64-v3) and AVX-512 (x86-64-v4). Detection uses cpuid and XCR0 directly
// (xsimd 8.1 reads no XCR0 and mis-detects AVX, toolchain.md), so an OS or VM that
// disables YMM/ZMM state is respected. The environment variable ATTNKIT_ISA
// (sse2 | avx2 | avx512) caps the choice; set_isa() does the same from code (tests).
#pragma once

#include <atomic>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "../config.hpp"

namespace attnkit {

enum class isa : int { sse2 = 0, avx2 = 1, avx512 = 2 };

ATTNKIT_ALWAYS_INLINE const char* isa_name(isa i) noexcept {
  return i == isa::avx512 ? "avx512" : i == isa::avx2 ? "avx2" : "sse2";
}

namespace internal {
// -1: no override. Shared by every translation unit (an inline variable is data only).
inline std::atomic<int> isa_override{-1};
}  // namespace internal

inline namespace ATTNKIT_ISA_NS {
namespace detail {

#if defined(__x86_64__) || defined(__i386__)
inline unsigned long long read_xcr0() noexcept {
  unsigned eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<unsigned long long>(edx) << 32) | eax;
}
#endif

/// The best ISA this CPU and OS can run, ignoring overrides.
inline isa detect_isa() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return isa::sse2;
  const bool osxsave = c & (1u << 27), fma = c & (1u << 12), f16c = c & (1u << 29), movbe = c & (1u << 22);
  if (!osxsave) return isa::sse2;
  const unsigned long long xcr0 = read_xcr0();
  if ((xcr0 & 0x6) != 0x6) return isa::sse2;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return isa::sse2;
  const bool avx2 = b & (1u << 5), bmi1 = b & (1u << 3), bmi2 = b & (1u << 8);
  unsigned a8, b8, c8, d8;
  const bool lzcnt = __get_cpuid(0x80000001u, &a8, &b8, &c8, &d8) && (c8 & (1u << 5));
  // x86-64-v3 code may use any of these (the compiler picks BMI/LZCNT/MOVBE freely).
  if (!(avx2 && fma && f16c && bmi1 && bmi2 && lzcnt && movbe)) return isa::sse2;
  const bool v4 = (b & (1u << 16)) && (b & (1u << 17)) && (b & (1u << 28)) && (b & (1u << 30)) && (b & (1u << 31));
  if (v4 && (xcr0 & 0xe6) == 0xe6) return isa::avx512;  // F, DQ, CD, BW, VL and ZMM state
  return isa::avx2;
#else
  return isa::sse2;
#endif
}

/// Whether the CPU and OS run AVX-512 BF16 (vdpbf16ps): decode's bf16 products
/// (attention_options::bf16_dot) use it, and round to bf16 with fp32 FMAs elsewhere.
inline bool detect_avx512_bf16() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  if (detect_isa() != isa::avx512) return false;
  unsigned a, b, c, d;
  return __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 5));
#else
  return false;
#endif
}

inline bool has_avx512_bf16() noexcept {
  static const bool yes = detect_avx512_bf16();
  return yes;
}

inline isa env_cap(isa best) noexcept {
  const char* e = std::getenv("ATTNKIT_ISA");
  if (!e) return best;
  isa want = best;
  if (!std::strcmp(e, "sse2")) want = isa::sse2;
  else if (!std::strcmp(e, "avx2")) want = isa::avx2;
  else if (!std::strcmp(e, "avx512")) want = isa::avx512;
  return int(want) < int(best) ? want : best;
}

}  // namespace detail

/// Best ISA of this machine, after the ATTNKIT_ISA environment cap (read once).
inline isa supported_isa() noexcept {
  static const isa best = detail::env_cap(detail::detect_isa());
  return best;
}

/// The ISA runtime dispatch uses now: supported_isa(), capped by set_isa().
inline isa active_isa() noexcept {
  const int o = attnkit::internal::isa_override.load(std::memory_order_relaxed);
  const isa best = supported_isa();
  return (o >= 0 && o < int(best)) ? isa(o) : best;
}

/// Caps runtime dispatch at `i` (never above what the CPU supports). For tests and
/// benchmarks; not meant to be changed while kernels run on other threads.
inline void set_isa(isa i) noexcept { attnkit::internal::isa_override.store(int(i), std::memory_order_relaxed); }
/// Removes the cap of set_isa().
inline void reset_isa() noexcept { attnkit::internal::isa_override.store(-1, std::memory_order_relaxed); }

}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
