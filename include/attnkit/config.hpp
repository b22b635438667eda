// attnkit: configuration macros shared by every header.
//
// Note [ISA namespaces]: everything that is compiled into machine code lives in
// `attnkit::ATTNKIT_ISA_NS` (an inline namespace named after the ISA of the including
// translation unit). Two translation units built with different -m/-march flags then
// never share a weak symbol, so the linker cannot pick an AVX-512 copy of a helper for
// a baseline caller (toolchain.md, "ODR / COMDAT pitfalls"). Vocabulary types (views,
// options, masks, errors) stay in plain `attnkit::` so values pass between such
// translation units; their member functions are trivial and forced inline.
#pragma once

#define ATTNKIT_VERSION_MAJOR 0
#define ATTNKIT_VERSION_MINOR 1
#define ATTNKIT_VERSION_PATCH 0

#if defined(__FINITE_MATH_ONLY__) && __FINITE_MATH_ONLY__ && !defined(ATTNKIT_ALLOW_FAST_MATH)
// Note [Minus infinity]: fully-masked rows are detected through -inf scores and
// running maxima; -ffinite-math-only lets the compiler delete those tests.
#error "attnkit: -ffast-math / -ffinite-math-only breaks fully-masked-row handling; \
define ATTNKIT_ALLOW_FAST_MATH to build anyway"
#endif

#if defined(__GNUC__) || defined(__clang__)
#define ATTNKIT_ALWAYS_INLINE inline __attribute__((always_inline))
#define ATTNKIT_NOINLINE inline __attribute__((noinline))
#define ATTNKIT_RESTRICT __restrict__
#else
#define ATTNKIT_ALWAYS_INLINE inline
#define ATTNKIT_NOINLINE inline
#define ATTNKIT_RESTRICT
#endif

// The ISA tag of this translation unit, from the compiler's own feature macros (the
// same ones xsimd reads), most capable first.
#if defined(ATTNKIT_ISA_NS)
// set by a runtime-dispatch translation unit or by the user
#elif defined(__AVX512BW__) && defined(__AVX512F__)
#define ATTNKIT_ISA_NS isa_avx512bw
#elif defined(__AVX512F__)
#define ATTNKIT_ISA_NS isa_avx512f
#elif defined(__AVX2__) && defined(__FMA__)
#define ATTNKIT_ISA_NS isa_fma3_avx2
#elif defined(__AVX2__)
#define ATTNKIT_ISA_NS isa_avx2
#elif defined(__AVX__)
#define ATTNKIT_ISA_NS isa_avx
#elif defined(__SSE4_2__)
#define ATTNKIT_ISA_NS isa_sse4_2
#elif defined(__SSE2__) || defined(__x86_64__)
#define ATTNKIT_ISA_NS isa_sse2
#else
#define ATTNKIT_ISA_NS isa_generic
#endif
