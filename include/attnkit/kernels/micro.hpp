// Micro-kernels of the flash-style drivers: register tiles on queries-in-lanes layouts.
//
// Note [Queries in lanes]: every tile is laid out with *queries along the SIMD lanes*.
// Q is packed once per query block, transposed and pre-scaled, into Qt [dim][bq]; scores
// live in St [keys][bq]; the output accumulates in Ot [v_dim][bq]. Then
//   - Q.K^T is an outer-product GEMM that broadcasts K[k][d] straight from the caller's K
//     rows (unit dim stride) and loads Qt vectors: no K packing, no tails in `dim`;
//   - the online softmax is purely element-wise across keys: the running max, sum and
//     rescale factor of each query are a lane of a vector, no horizontal reductions;
//   - P.V broadcasts V[k][j] straight from V rows and loads P vectors: no V packing and no
//     tails in `v_dim`.
// Micro-kernels know nothing about masks, heads or threads; they never allocate.
#pragma once

#include <cstdint>
#include <limits>

#include "../simd/math.hpp"
#include "../simd/simd.hpp"

namespace attnkit {
inline namespace ATTNKIT_ISA_NS {
namespace kernels {

// ---------------------------------------------------------------------------------------
// qk_tile: St[r][lane] = sum_d K[r][d] * Qt[d][lane]  for r < KR, lane < NV * lanes.
//   Qt: [dim][ld_q] (ld_q >= NV*lanes, aligned), K rows at k + r * k_stride (unit stride),
//   St: [KR][ld_s], written (not read). Scale is already folded into Qt.
template <class Arch, int KR, int NV>
ATTNKIT_ALWAYS_INLINE void qk_tile(const float* ATTNKIT_RESTRICT qt, std::int64_t ld_q,
                                   const float* ATTNKIT_RESTRICT k, std::int64_t k_stride,
                                   std::int64_t dim, float* ATTNKIT_RESTRICT st,
                                   std::int64_t ld_s) noexcept {
  using B = simd::vfloat<Arch>;
  constexpr int W = int(B::size);
  B acc[KR][NV];
  for (int r = 0; r < KR; ++r)
    for (int n = 0; n < NV; ++n) acc[r][n] = B(0.f);
  const float* kp[KR];
  for (int r = 0; r < KR; ++r) kp[r] = k + r * k_stride;
  for (std::int64_t d = 0; d < dim; ++d) {
    B qv[NV];
    for (int n = 0; n < NV; ++n) qv[n] = B::load_aligned(qt + d * ld_q + n * W);
    for (int r = 0; r < KR; ++r) {
      const B kb(kp[r][d]);
      for (int n = 0; n < NV; ++n) acc[r][n] = xsimd::fma(kb, qv[n], acc[r][n]);
    }
  }
  for (int r = 0; r < KR; ++r)
    for (int n = 0; n < NV; ++n) acc[r][n].store_aligned(st + r * ld_s + n * W);
}

// pv_tile: Ot[j][lane] = alpha[lane] * Ot[j][lane] + sum_k V[k][j] * P[k][lane]
//   for j < JR, k < nk. Ot: [JR][ld_o] (read and written), P: [nk][ld_p], V rows at
//   v + k * v_stride (unit stride, columns j0..j0+JR-1 already offset into v).
template <class Arch, int JR, int NV>
ATTNKIT_ALWAYS_INLINE void pv_tile(float* ATTNKIT_RESTRICT ot, std::int64_t ld_o,
                                   const float* ATTNKIT_RESTRICT alpha,
                                   const float* ATTNKIT_RESTRICT p, std::int64_t ld_p,
                                   const float* ATTNKIT_RESTRICT v, std::int64_t v_stride,
                                   std::int64_t nk) noexcept {
  using B = simd::vfloat<Arch>;
  constexpr int W = int(B::size);
  // The tile's sum starts from zero and joins the running output only at the end: a
  // two-level summation (within a tile, then across tiles), so the rounding error does not
  // grow with the sequence length as one running accumulator's would.
  B acc[JR][NV];
  for (int j = 0; j < JR; ++j)
    for (int n = 0; n < NV; ++n) acc[j][n] = B(0.f);
  for (std::int64_t kk = 0; kk < nk; ++kk) {
    B pv[NV];
    for (int n = 0; n < NV; ++n) pv[n] = B::load_aligned(p + kk * ld_p + n * W);
    const float* vr = v + kk * v_stride;
    for (int j = 0; j < JR; ++j) {
      const B vb(vr[j]);
      for (int n = 0; n < NV; ++n) acc[j][n] = xsimd::fma(vb, pv[n], acc[j][n]);
    }
  }
  B a[NV];
  for (int n = 0; n < NV; ++n) a[n] = B::load_aligned(alpha + n * W);
  for (int j = 0; j < JR; ++j)
    for (int n = 0; n < NV; ++n)
      xsimd::fma(B::load_aligned(ot + j * ld_o + n * W), a[n], acc[j][n]).store_aligned(ot + j * ld_o + n * W);
}

// Runs qk_tile over `nk` keys with remainder tiles; NV is fixed per call.
template <class Arch, int NV>
inline void qk_block(const float* qt, std::int64_t ld_q, const float* k, std::int64_t k_stride,
                     std::int64_t dim, std::int64_t nk, float* st, std::int64_t ld_s) noexcept {
  constexpr int KR = simd::tile_config<Arch>::kr;
  std::int64_t r = 0;
  for (; r + KR <= nk; r += KR)
    qk_tile<Arch, KR, NV>(qt, ld_q, k + r * k_stride, k_stride, dim, st + r * ld_s, ld_s);
  for (; r < nk; ++r) qk_tile<Arch, 1, NV>(qt, ld_q, k + r * k_stride, k_stride, dim, st + r * ld_s, ld_s);
}

template <class Arch, int NV>
inline void pv_block(float* ot, std::int64_t ld_o, const float* alpha, const float* p,
                     std::int64_t ld_p, const float* v, std::int64_t v_stride, std::int64_t v_dim,
                     std::int64_t nk) noexcept {
  constexpr int JR = simd::tile_config<Arch>::jr;
  std::int64_t j = 0;
  for (; j + JR <= v_dim; j += JR)
    pv_tile<Arch, JR, NV>(ot + j * ld_o, ld_o, alpha, p, ld_p, v + j, v_stride, nk);
  for (; j < v_dim; ++j) pv_tile<Arch, 1, NV>(ot + j * ld_o, ld_o, alpha, p, ld_p, v + j, v_stride, nk);
}

// Asks for `bytes` from p into L2 (a hint: never faults, reads nothing into registers).
ATTNKIT_ALWAYS_INLINE void prefetch_l2(const void* p, std::int64_t bytes) noexcept {
  const char* c = static_cast<const char*>(p);
  for (std::int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b, 0, 2);
}

// Rows to ask for (prefetch_l2) while a step that reads nothing from memory runs: the online
// softmax between decode's Q.K^T and P.V (Note [Prefetch ahead] in micro_rows.hpp). n rows
// of `bytes` each, spread evenly over the step's iterations. no_rows_ahead: none, at no cost
// (the flash driver's softmax).
struct no_rows_ahead {
  ATTNKIT_ALWAYS_INLINE void step(std::int64_t) noexcept {}
};
struct rows_ahead {
  const char* const* rows = nullptr;
  std::int64_t n = 0, bytes = 0;
  std::int64_t asked = 0, credit = 0;
  /// Once per iteration of `of`: after iteration i, (i + 1) n / of rows were asked for
  /// (counted without a division, which would cost more than the prefetch per iteration).
  ATTNKIT_ALWAYS_INLINE void step(std::int64_t of) noexcept {
    for (credit += n; credit >= of && asked < n; credit -= of) prefetch_l2(rows[asked++], bytes);
  }
};

// online_softmax: for keys [0, nk) of St (in place, St becomes P):
//   m_new = max(m, max_k St[k]); base = m_new, or 0 where m_new = -inf (fully masked so far);
//   alpha = exp(m - base); P = exp(St - base); l = alpha * l + sum_k P; m = m_new.
// Note [Minus infinity]: with base = 0 for all-masked lanes, exp(-inf - 0) = 0 and no
// -inf - -inf (NaN) is ever formed; such lanes keep l = 0 and finish as output 0, lse -inf.
// `next`: rows asked for while it runs.
template <class Arch, int NV, class Next = no_rows_ahead>
inline void online_softmax(float* st, std::int64_t ld_s, std::int64_t nk, float* m, float* l, float* alpha,
                           Next next = {}) noexcept {
  using B = simd::vfloat<Arch>;
  constexpr int W = int(B::size);
  const B minus_inf(-std::numeric_limits<float>::infinity());
  // C independent chains per lane vector for the max and the sum, so that few lane vectors
  // (decode: NV = 1) are not bound by the latency of one dependent chain.
  constexpr int C = NV >= 4 ? 1 : 4 / NV;
  B base[NV];
  for (int n = 0; n < NV; ++n) {
    B mx[C];
    for (int c = 0; c < C; ++c) mx[c] = B::load_aligned(m + n * W);
    std::int64_t kk = 0;
    for (; kk + C <= nk; kk += C)
      for (int c = 0; c < C; ++c) mx[c] = simd::max<Arch>(mx[c], B::load_aligned(st + (kk + c) * ld_s + n * W));
    for (int c = 0; c < C && kk < nk; ++c, ++kk) mx[c] = simd::max<Arch>(mx[c], B::load_aligned(st + kk * ld_s + n * W));
    for (int c = 1; c < C; ++c) mx[0] = simd::max<Arch>(mx[0], mx[c]);
    base[n] = xsimd::select(mx[0] == minus_inf, B(0.f), mx[0]);
    const B a = simd::exp<Arch>(B::load_aligned(m + n * W) - base[n]);
    a.store_aligned(alpha + n * W);
    mx[0].store_aligned(m + n * W);
  }
  B sum[NV][C];
  for (int n = 0; n < NV; ++n)
    for (int c = 0; c < C; ++c) sum[n][c] = B(0.f);
  std::int64_t kk = 0;
  auto step = [&](std::int64_t key, int c) {
    next.step(nk);
    for (int n = 0; n < NV; ++n) {
      const B p = simd::exp<Arch>(B::load_aligned(st + key * ld_s + n * W) - base[n]);
      p.store_aligned(st + key * ld_s + n * W);
      sum[n][c] += p;
    }
  };
  for (; kk + C <= nk; kk += C)
    for (int c = 0; c < C; ++c) step(kk + c, c);
  for (int c = 0; c < C && kk < nk; ++c, ++kk) step(kk, c);
  for (int n = 0; n < NV; ++n) {
    for (int c = 1; c < C; ++c) sum[n][0] += sum[n][c];
    xsimd::fma(B::load_aligned(l + n * W), B::load_aligned(alpha + n * W), sum[n][0]).store_aligned(l + n * W);
  }
}

// softcap: St <- c * tanh(St / c) for keys [0, nk).
template <class Arch, int NV>
inline void softcap_tile(float* st, std::int64_t ld_s, std::int64_t nk, float cap) noexcept {
  using B = simd::vfloat<Arch>;
  constexpr int W = int(B::size);
  const B c(cap), inv(1.f / cap);
  for (std::int64_t kk = 0; kk < nk; ++kk)
    for (int n = 0; n < NV; ++n) {
      float* s = st + kk * ld_s + n * W;
      (c * simd::tanh<Arch>(B::load_aligned(s) * inv)).store_aligned(s);
    }
}

// axpy: y[0:n] = (overwrite ? 0 : y) + alpha * x[0:n]. y is scratch (may be unaligned), x
// any row; the tail is scalar.
template <class Arch>
ATTNKIT_ALWAYS_INLINE void axpy(float alpha, const float* ATTNKIT_RESTRICT x, float* ATTNKIT_RESTRICT y,
                                std::int64_t n, bool overwrite) noexcept {
  using B = simd::vfloat<Arch>;
  constexpr std::int64_t W = B::size;
  const B av(alpha);
  std::int64_t i = 0;
  if (overwrite) {
    for (; i + W <= n; i += W) (av * B::load_unaligned(x + i)).store_unaligned(y + i);
    for (; i < n; ++i) y[i] = alpha * x[i];
  } else {
    for (; i + W <= n; i += W) xsimd::fma(av, B::load_unaligned(x + i), B::load_unaligned(y + i)).store_unaligned(y + i);
    for (; i < n; ++i) y[i] += alpha * x[i];
  }
}

// dot: sum_i x[i] * y[i] over n floats (any alignment; scalar tail).
template <class Arch>
ATTNKIT_ALWAYS_INLINE float dot(const float* ATTNKIT_RESTRICT x, const float* ATTNKIT_RESTRICT y,
                                std::int64_t n) noexcept {
  using B = simd::vfloat<Arch>;
  constexpr std::int64_t W = B::size;
  B acc(0.f);
  std::int64_t i = 0;
  for (; i + W <= n; i += W) acc = xsimd::fma(B::load_unaligned(x + i), B::load_unaligned(y + i), acc);
  float s = xsimd::hadd(acc);
  for (; i < n; ++i) s += x[i] * y[i];
  return s;
}

}  // namespace kernels
}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
