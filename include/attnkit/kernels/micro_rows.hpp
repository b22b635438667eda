// Micro-kernels of the decode driver: few query rows against many keys, dim in the lanes.
//
// Note [Rows in registers]: decode has few query rows per K/V row (the heads of a group
// times a handful of queries), so the queries-in-lanes kernels of micro.hpp would leave most
// lanes empty and broadcast every K and V element. Here the head dimension runs along the
// lanes instead: Q.K^T accumulates RB rows x KB keys (RB * KB = W) partial dot products and
// folds them with one horizontal pass (xsimd::haddp); P.V broadcasts each probability and
// streams whole V vectors. Both read K and V rows as whole vectors, so rows must be padded
// to the vector width (kv_rows::tile with `padded`). K and V may be bf16/fp16 rows: the
// loads widen them in registers (simd/convert.hpp), so 16-bit caches are read in place. The score tile keeps the
// queries-in-lanes layout St[key][row] of the flash driver, so masks, score modifiers,
// softcap and the online softmax are shared with it.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include <limits>

#include "../simd/convert.hpp"
#include "../simd/math.hpp"
#include "../simd/simd.hpp"

namespace attnkit {
inline namespace ATTNKIT_ISA_NS {
namespace kernels {

// hsum_rows: lane i of the result = the sum of the lanes of acc[i], for W accumulators.
// AVX-512 has its own reduction tree: xsimd::haddp there uses _mm512_shuffle_f32x4, which
// trips g++ 12's -Wuninitialized (Note [Masked conversion intrinsics] in simd/convert.hpp);
// the maskz forms below are the same instructions.
template <class Arch>
ATTNKIT_ALWAYS_INLINE simd::vfloat<Arch> hsum_rows(const simd::vfloat<Arch>* acc) noexcept {
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_base_of<xsimd::avx512f, Arch>::value) {
    constexpr __mmask16 all = 0xffff;
    __m512 x[8], y[4], z[2];
    // x[i]: 128-bit blocks 0-1 hold 8 partial sums of acc[i], blocks 2-3 those of acc[i + 8]
    for (int i = 0; i < 8; ++i) {
      const __m512 a = acc[i], b = acc[i + 8];
      x[i] = _mm512_add_ps(_mm512_maskz_shuffle_f32x4(all, a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                           _mm512_maskz_shuffle_f32x4(all, a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    // y[i]: blocks hold 4 partial sums of acc[i], acc[i + 8], acc[i + 4], acc[i + 12]
    for (int i = 0; i < 4; ++i)
      y[i] = _mm512_add_ps(_mm512_maskz_shuffle_f32x4(all, x[i], x[i + 4], _MM_SHUFFLE(2, 0, 2, 0)),
                           _mm512_maskz_shuffle_f32x4(all, x[i], x[i + 4], _MM_SHUFFLE(3, 1, 3, 1)));
    // z[0] block 0: 2 partial sums each of acc[0], acc[1]; z[1] block 0: of acc[2], acc[3]; ...
    for (int i = 0; i < 2; ++i)
      z[i] = _mm512_add_ps(_mm512_maskz_shuffle_ps(all, y[2 * i], y[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                           _mm512_maskz_shuffle_ps(all, y[2 * i], y[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    // blocks now hold the sums of acc[0-3], acc[8-11], acc[4-7], acc[12-15]: swap the middle two
    const __m512 w = _mm512_add_ps(_mm512_maskz_shuffle_ps(all, z[0], z[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_maskz_shuffle_ps(all, z[0], z[1], _MM_SHUFFLE(3, 1, 3, 1)));
    return simd::vfloat<Arch>(_mm512_maskz_shuffle_f32x4(all, w, w, _MM_SHUFFLE(3, 1, 2, 0)));
  } else
#endif
  {
    return xsimd::haddp(acc);
  }
}

// Rows to bring into cache while a kernel computes (decode: Note [Fetch order] in
// decode.hpp). The kernel calls touch() at each of its `steps` steps; each call asks for the
// next share of the rows' cache lines, in address order, so the memory keeps streaming
// during the arithmetic (a burst of prefetches before it would stall the core until they
// drained). No division per call: the kernels call it per key.
class prefetch_rows {
 public:
  prefetch_rows() = default;
  prefetch_rows(const void* const* rows, std::int64_t n, std::int64_t bytes, std::int64_t steps) noexcept
      : rows_(rows), row_bytes_((bytes + 63) / 64 * 64), left_(n * ((bytes + 63) / 64)) {
    per_ = steps > 0 ? (left_ + steps - 1) / steps : left_;
  }

  ATTNKIT_ALWAYS_INLINE void touch() const noexcept {
    for (std::int64_t k = per_ < left_ ? per_ : left_; k > 0; --k) {
      // Into L1: measured faster here than into L2 only (prefetcht1/t2), and than touching
      // the lines with loads.
      __builtin_prefetch(static_cast<const char*>(rows_[r_]) + off_, 0, 3);
      off_ += 64;
      if (off_ == row_bytes_) off_ = 0, ++r_;
      --left_;
    }
  }

 private:
  const void* const* rows_ = nullptr;
  std::int64_t row_bytes_ = 0, per_ = 0;
  mutable std::int64_t left_ = 0, r_ = 0, off_ = 0;  // the cursor
};

// qk_rows: St[t][r] = sum_{d < dp} Q[r][d] * K[t][d] for r < RB, t < nk.
//   Q: RB rows at q + r * ld_q (aligned, zero-padded to dp, a multiple of W);
//   K row t at k[t] (any address: contiguous or paged), readable up to dp;
//   St: [nk][ld_s], only lanes [0, RB) written.
template <class Arch, int RB, class KT>
inline void qk_rows(const float* ATTNKIT_RESTRICT q, std::int64_t ld_q, const KT* const* k, std::int64_t dp,
                    std::int64_t nk, float* ATTNKIT_RESTRICT st, std::int64_t ld_s, const prefetch_rows& pf = {}) noexcept {
  using B = simd::vfloat<Arch>;
  constexpr int W = int(B::size);
  static_assert(RB >= 1 && W % RB == 0, "RB must divide the vector width");
  constexpr int KB = W / RB;
  alignas(64) float tmp[W];
  for (std::int64_t t0 = 0; t0 < nk; t0 += KB) {
    const int kn = nk - t0 < KB ? int(nk - t0) : KB;
    // Past the last key the kernel re-reads the last row; those sums are never stored.
    const KT* kp[KB];
    for (int j = 0; j < KB; ++j) kp[j] = k[t0 + (j < kn ? j : kn - 1)];
    for (int j = 0; j < KB; ++j) pf.touch();
    B acc[W];
    for (int i = 0; i < W; ++i) acc[i] = B(0.f);
    for (std::int64_t d = 0; d < dp; d += W) {
      B qv[RB], kv[KB];
      for (int r = 0; r < RB; ++r) qv[r] = B::load_aligned(q + r * ld_q + d);
      for (int j = 0; j < KB; ++j) kv[j] = simd::load_widen<Arch>(kp[j] + d);
      for (int j = 0; j < KB; ++j)
        for (int r = 0; r < RB; ++r) acc[j * RB + r] = xsimd::fma(qv[r], kv[j], acc[j * RB + r]);
    }
    const B s = hsum_rows<Arch>(acc);  // lane j * RB + r = row r . key t0 + j
    if (RB == W || (ld_s == RB && kn == KB)) {  // lanes already in St's order
      s.store_unaligned(st + t0 * ld_s);
    } else {
      s.store_aligned(tmp);
      for (int j = 0; j < kn; ++j) std::memcpy(st + (t0 + j) * ld_s, tmp + j * RB, RB * sizeof(float));
    }
  }
}

// pv_rows: O[r][0:dvp] = alpha[r] * O[r] + sum_{t < nk} P[t][r] * V[t][0:dvp] for r < RB.
//   O: RB rows at o + r * ld_o (aligned, dvp a multiple of W); P: [nk][ld_p] (lanes = rows);
//   V row t at v[t], readable up to dvp. Like pv_tile, the tile's sum starts at zero
//   and joins the running output once (two-level summation).
template <class Arch, int RB, int CV, class VT>
ATTNKIT_ALWAYS_INLINE void pv_rows_cols(float* ATTNKIT_RESTRICT o, std::int64_t ld_o, const float* ATTNKIT_RESTRICT alpha,
                                        const float* ATTNKIT_RESTRICT p, std::int64_t ld_p,
                                        const VT* const* v, std::int64_t j0, std::int64_t nk,
                                        const prefetch_rows& pf) noexcept {
  using B = simd::vfloat<Arch>;
  constexpr int W = int(B::size);
  B acc[RB][CV];
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < CV; ++c) acc[r][c] = B(0.f);
  for (std::int64_t t = 0; t < nk; ++t) {
    B vv[CV];
    for (int c = 0; c < CV; ++c) vv[c] = simd::load_widen<Arch>(v[t] + j0 + c * W);
    pf.touch();
    for (int r = 0; r < RB; ++r) {
      const B pb(p[t * ld_p + r]);
      for (int c = 0; c < CV; ++c) acc[r][c] = xsimd::fma(pb, vv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < RB; ++r) {
    const B a(alpha[r]);
    for (int c = 0; c < CV; ++c) {
      float* op = o + r * ld_o + c * W;
      xsimd::fma(B::load_aligned(op), a, acc[r][c]).store_aligned(op);
    }
  }
}

// Compact score tiles: with at most 4 rows (rp in {1, 2, 4}, dividing the vector width) St
// is stored as St[t][r] with leading dimension rp, W / rp keys per vector, so the softmax
// works on whole vectors instead of mostly empty lanes.

// softcap over n consecutive scores: s <- cap * tanh(s / cap).
template <class Arch>
inline void softcap_flat(float* st, std::int64_t n, float cap) noexcept {
  using B = simd::vfloat<Arch>;
  constexpr std::int64_t W = B::size;
  const B c(cap), inv(1.f / cap);
  std::int64_t i = 0;
  for (; i + W <= n; i += W) (c * simd::tanh<Arch>(B::load_unaligned(st + i) * inv)).store_unaligned(st + i);
  if (i < n) {
    alignas(64) float t[W] = {};
    for (std::int64_t j = i; j < n; ++j) t[j - i] = st[j];
    (c * simd::tanh<Arch>(B::load_aligned(t) * inv)).store_aligned(t);
    for (std::int64_t j = i; j < n; ++j) st[j] = t[j - i];
  }
}

// online_softmax_rows: online_softmax (micro.hpp) on a compact tile St[nk][rp]: per row r,
// m_new = max(m, max_t St[t][r]), base = m_new or 0 where it is -inf (Note [Minus
// infinity] in micro.hpp), alpha = exp(m - base), P = exp(St - base), l = alpha l + sum P.
// St must have room for whole vectors past nk * rp (padded with -inf here).
template <class Arch>
inline void online_softmax_rows(float* st, std::int64_t nk, int rp, float* m, float* l, float* alpha) noexcept {
  using B = simd::vfloat<Arch>;
  constexpr int W = int(B::size);
  constexpr float minus_inf = -std::numeric_limits<float>::infinity();
  const std::int64_t n = nk * rp, nvec = (n + W - 1) / W;
  for (std::int64_t i = n; i < nvec * W; ++i) st[i] = minus_inf;
  B mx[4] = {B(minus_inf), B(minus_inf), B(minus_inf), B(minus_inf)};
  std::int64_t v = 0;
  for (; v + 4 <= nvec; v += 4)
    for (int c = 0; c < 4; ++c) mx[c] = simd::max<Arch>(mx[c], B::load_aligned(st + (v + c) * W));
  for (int c = 0; v < nvec; ++v, ++c) mx[c] = simd::max<Arch>(mx[c], B::load_aligned(st + v * W));
  alignas(64) float t[W], pat[W];
  simd::max<Arch>(simd::max<Arch>(mx[0], mx[1]), simd::max<Arch>(mx[2], mx[3])).store_aligned(t);
  float base[4];
  for (int r = 0; r < rp; ++r) {
    float tm = m[r];
    for (int j = r; j < W; j += rp) tm = t[j] > tm ? t[j] : tm;
    base[r] = tm == minus_inf ? 0.f : tm;
    alpha[r] = std::exp(m[r] - base[r]);
    m[r] = tm;
  }
  for (int j = 0; j < W; ++j) pat[j] = base[j % rp];
  const B bp = B::load_aligned(pat);
  B sum[2] = {B(0.f), B(0.f)};
  for (v = 0; v < nvec; ++v) {
    const B p = simd::exp<Arch>(B::load_aligned(st + v * W) - bp);
    p.store_aligned(st + v * W);
    sum[v & 1] += p;
  }
  (sum[0] + sum[1]).store_aligned(t);
  for (int r = 0; r < rp; ++r) {
    float s = 0.f;
    for (int j = r; j < W; j += rp) s += t[j];
    l[r] = alpha[r] * l[r] + s;
  }
}

// Note [Rows read in order]: the hardware prefetchers of the machines we measured stream a
// tile well only when its rows are read front to back. Column blocks (the first half of every
// V row, then the second half) read the same bytes at ~0.75 x the streaming rate on one core
// (Zen 5). So when a whole row of accumulators fits the registers, pv_rows makes passes over
// groups of rows instead, each reading the tile's rows whole and in order; the first pass
// streams from memory and the later ones find the tile in cache.
template <class Arch, int RB, int CV, class VT>
ATTNKIT_ALWAYS_INLINE void pv_rows_whole(float* o, std::int64_t ld_o, const float* alpha, const float* p, std::int64_t ld_p,
                                         const VT* const* v, std::int64_t nk, const prefetch_rows& pf) noexcept {
  constexpr int W = int(simd::vfloat<Arch>::size);
  constexpr int regs = W == 16 ? 16 : 8;  // accumulators that leave room for a row of loads
  constexpr int fit = regs / CV < RB ? regs / CV : RB;
  constexpr int RG = fit >= 4 ? 4 : fit >= 2 ? 2 : 1;  // rows per pass, dividing RB
  for (int r0 = 0; r0 < RB; r0 += RG)
    pv_rows_cols<Arch, RG, CV, VT>(o + r0 * ld_o, ld_o, alpha + r0, p + r0, ld_p, v, 0, nk, r0 == 0 ? pf : prefetch_rows{});
}

template <class Arch, int RB, class VT>
inline void pv_rows(float* o, std::int64_t ld_o, const float* alpha, const float* p, std::int64_t ld_p,
                    const VT* const* v, std::int64_t dvp, std::int64_t nk, const prefetch_rows& pf = {}) noexcept {
  constexpr int W = int(simd::vfloat<Arch>::size);
  // Whole rows (Note [Rows read in order]) for the common head dims (AVX-512: 16, 32, 64,
  // 128 floats; each width is another instantiation of every decode kernel), else column
  // blocks: accumulators RB x CV plus CV loads fit the register file (32 zmm, else 16).
  if constexpr (W == 16) {
    switch (dvp / W) {
      case 1: return pv_rows_whole<Arch, RB, 1, VT>(o, ld_o, alpha, p, ld_p, v, nk, pf);
      case 2: return pv_rows_whole<Arch, RB, 2, VT>(o, ld_o, alpha, p, ld_p, v, nk, pf);
      case 4: return pv_rows_whole<Arch, RB, 4, VT>(o, ld_o, alpha, p, ld_p, v, nk, pf);
      case 8: return pv_rows_whole<Arch, RB, 8, VT>(o, ld_o, alpha, p, ld_p, v, nk, pf);
      default: break;
    }
  }
  constexpr int regs = W == 16 ? 16 : 8;
  constexpr int CV = regs / RB > 4 ? 4 : regs / RB;
  std::int64_t j = 0;
  // The first column block issues the prefetches.
  for (; j + CV * W <= dvp; j += CV * W)
    pv_rows_cols<Arch, RB, CV, VT>(o + j, ld_o, alpha, p, ld_p, v, j, nk, j == 0 ? pf : prefetch_rows{});
  for (; j < dvp; j += W) pv_rows_cols<Arch, RB, 1, VT>(o + j, ld_o, alpha, p, ld_p, v, j, nk, j == 0 ? pf : prefetch_rows{});
}

}  // namespace kernels
}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
