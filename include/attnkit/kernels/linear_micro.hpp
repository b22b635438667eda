// Micro-kernels of the linear-attention driver (kernels/linear.hpp): one register-blocked
// GEMM tile and the row operations around it. They know nothing about heads, chunks,
// decay or threads, and never allocate.
//
// Note [Linear GEMM layout]: every product of the driver is C (+)= A B with A read by
// broadcast (any row stride: feature rows, the transposed key features, the score tile)
// and B and C row-major with 64-byte aligned rows whose width is a multiple of the SIMD
// width (the driver pads them), so the inner loop is MR broadcasts, NV aligned loads and
// MR * NV FMAs with no tails.
#pragma once

#include <cstdint>
#include <type_traits>

#include "../simd/simd.hpp"

namespace attnkit {
inline namespace ATTNKIT_ISA_NS {
namespace kernels {

/// Register tile of the linear GEMM: MR rows of C times NV vectors. MR * NV accumulators,
/// NV loads and one broadcast fit 16 registers (6 x 2) or 32 (6 x 4, AVX-512).
template <class Arch, class = void>
struct linear_tile {
  static constexpr int mr = 6;
  static constexpr int nv = 2;
};
#if XSIMD_WITH_AVX512F
template <class Arch>
struct linear_tile<Arch, std::enable_if_t<std::is_base_of<xsimd::avx512f, Arch>::value>> {
  static constexpr int mr = 6;
  static constexpr int nv = 4;
};
#endif

// gemm_tile: for r < MR, C[r][0 : NV*W) = beta[r] * C[r] + sum_{p < K} A[r][p] * B[p][0 : NV*W)
// (beta == nullptr: C is overwritten, never read). The tile's sum starts from zero and
// joins C at the end (a two-level sum: the chunked state stays as accurate as the
// recurrent one).
template <class Arch, int MR, int NV>
ATTNKIT_ALWAYS_INLINE void gemm_tile(const float* ATTNKIT_RESTRICT a, std::int64_t lda,
                                     const float* ATTNKIT_RESTRICT b, std::int64_t ldb, std::int64_t K,
                                     float* ATTNKIT_RESTRICT c, std::int64_t ldc,
                                     const float* ATTNKIT_RESTRICT beta) noexcept {
  using B = simd::vfloat<Arch>;
  constexpr int W = int(B::size);
  B acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int n = 0; n < NV; ++n) acc[r][n] = B(0.f);
  for (std::int64_t p = 0; p < K; ++p) {
    B bv[NV];
    for (int n = 0; n < NV; ++n) bv[n] = B::load_aligned(b + p * ldb + n * W);
    for (int r = 0; r < MR; ++r) {
      const B ab(a[r * lda + p]);
      for (int n = 0; n < NV; ++n) acc[r][n] = xsimd::fma(ab, bv[n], acc[r][n]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int n = 0; n < NV; ++n) {
      float* cp = c + r * ldc + n * W;
      if (beta)
        xsimd::fma(B::load_aligned(cp), B(beta[r]), acc[r][n]).store_aligned(cp);
      else
        acc[r][n].store_aligned(cp);
    }
}

template <class Arch, int MR>
ATTNKIT_ALWAYS_INLINE void gemm_rows(int nv, const float* a, std::int64_t lda, const float* b, std::int64_t ldb,
                                     std::int64_t K, float* c, std::int64_t ldc, const float* beta) noexcept {
  constexpr int NVMAX = linear_tile<Arch>::nv;
  switch (nv) {
    case 1: gemm_tile<Arch, MR, 1>(a, lda, b, ldb, K, c, ldc, beta); break;
    case 2: gemm_tile<Arch, MR, (2 <= NVMAX ? 2 : NVMAX)>(a, lda, b, ldb, K, c, ldc, beta); break;
    case 3: gemm_tile<Arch, MR, (3 <= NVMAX ? 3 : NVMAX)>(a, lda, b, ldb, K, c, ldc, beta); break;
    default: gemm_tile<Arch, MR, NVMAX>(a, lda, b, ldb, K, c, ldc, beta); break;
  }
}

/// C[0:M][0:N) = beta_i * C[i] + A[0:M][0:K) B[0:K][0:N), N a multiple of the SIMD width;
/// layouts as in Note [Linear GEMM layout]. beta == nullptr overwrites C.
template <class Arch>
inline void gemm(std::int64_t M, std::int64_t N, std::int64_t K, const float* a, std::int64_t lda, const float* b,
                 std::int64_t ldb, float* c, std::int64_t ldc, const float* beta) noexcept {
  constexpr int W = int(simd::vfloat<Arch>::size);
  constexpr int MR = linear_tile<Arch>::mr, NVMAX = linear_tile<Arch>::nv;
  const std::int64_t nvec = N / W;
  for (std::int64_t i0 = 0; i0 < M; i0 += MR) {
    const std::int64_t rows = M - i0 < MR ? M - i0 : MR;
    const float* ai = a + i0 * lda;
    float* ci = c + i0 * ldc;
    const float* bi = beta ? beta + i0 : nullptr;
    for (std::int64_t j = 0; j < nvec; j += NVMAX) {
      const int nv = int(nvec - j < NVMAX ? nvec - j : NVMAX);
      const float* bj = b + j * W;
      float* cj = ci + j * W;
      switch (rows) {
        case 1: gemm_rows<Arch, 1>(nv, ai, lda, bj, ldb, K, cj, ldc, bi); break;
        case 2: gemm_rows<Arch, 2>(nv, ai, lda, bj, ldb, K, cj, ldc, bi); break;
        case 3: gemm_rows<Arch, 3>(nv, ai, lda, bj, ldb, K, cj, ldc, bi); break;
        case 4: gemm_rows<Arch, 4>(nv, ai, lda, bj, ldb, K, cj, ldc, bi); break;
        case 5: gemm_rows<Arch, 5>(nv, ai, lda, bj, ldb, K, cj, ldc, bi); break;
        default: gemm_rows<Arch, MR>(nv, ai, lda, bj, ldb, K, cj, ldc, bi); break;
      }
    }
  }
}

/// x[0:n) *= m[0:n) and returns the sum of the products; both aligned, n a multiple of W.
template <class Arch>
ATTNKIT_ALWAYS_INLINE float mul_sum(float* ATTNKIT_RESTRICT x, const float* ATTNKIT_RESTRICT m,
                                    std::int64_t n) noexcept {
  using B = simd::vfloat<Arch>;
  constexpr std::int64_t W = B::size;
  B s(0.f);
  for (std::int64_t i = 0; i < n; i += W) {
    const B p = B::load_aligned(x + i) * B::load_aligned(m + i);
    p.store_aligned(x + i);
    s += p;
  }
  return xsimd::hadd(s);
}

/// Sum of x[0:n), any alignment (scalar tail).
template <class Arch>
ATTNKIT_ALWAYS_INLINE float sum(const float* x, std::int64_t n) noexcept {
  using B = simd::vfloat<Arch>;
  constexpr std::int64_t W = B::size;
  B s(0.f);
  std::int64_t i = 0;
  for (; i + W <= n; i += W) s += B::load_unaligned(x + i);
  float t = xsimd::hadd(s);
  for (; i < n; ++i) t += x[i];
  return t;
}

/// y[0:n) = x[0:n) * s, y any row (unaligned), x aligned scratch; scalar tail.
template <class Arch>
ATTNKIT_ALWAYS_INLINE void scale_row(const float* ATTNKIT_RESTRICT x, float s, float* ATTNKIT_RESTRICT y,
                                     std::int64_t n) noexcept {
  using B = simd::vfloat<Arch>;
  constexpr std::int64_t W = B::size;
  const B sv(s);
  std::int64_t i = 0;
  for (; i + W <= n; i += W) (B::load_aligned(x + i) * sv).store_unaligned(y + i);
  for (; i < n; ++i) y[i] = x[i] * s;
}

/// y[0:n) = alpha * x[0:n) - gamma * w[0:n) (MALA's epilogue); x, w aligned, y any row.
template <class Arch>
ATTNKIT_ALWAYS_INLINE void axpby_row(float alpha, const float* ATTNKIT_RESTRICT x, float gamma,
                                     const float* ATTNKIT_RESTRICT w, float* ATTNKIT_RESTRICT y,
                                     std::int64_t n) noexcept {
  using B = simd::vfloat<Arch>;
  constexpr std::int64_t W = B::size;
  const B av(alpha), gv(gamma);
  std::int64_t i = 0;
  for (; i + W <= n; i += W)
    xsimd::fms(av, B::load_aligned(x + i), gv * B::load_aligned(w + i)).store_unaligned(y + i);
  for (; i < n; ++i) y[i] = alpha * x[i] - gamma * w[i];
}

/// y[0:n) += x[0:n) (x any row, y aligned); scalar tail.
template <class Arch>
ATTNKIT_ALWAYS_INLINE void add_row(const float* ATTNKIT_RESTRICT x, float* ATTNKIT_RESTRICT y,
                                   std::int64_t n) noexcept {
  using B = simd::vfloat<Arch>;
  constexpr std::int64_t W = B::size;
  std::int64_t i = 0;
  for (; i + W <= n; i += W) (B::load_aligned(y + i) + B::load_unaligned(x + i)).store_aligned(y + i);
  for (; i < n; ++i) y[i] += x[i];
}

}  // namespace kernels
}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
