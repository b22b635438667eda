// Micro-kernels of decode's bf16 products (attention_options::bf16_dot): AVX-512 BF16's
// vdpbf16ps multiplies 32 bf16 pairs into 16 fp32 sums per instruction, twice the products
// of an fp32 FMA, with Q and the softmax weights rounded to bf16 (K and V are bf16 already).
//
// Note [bf16 products]: widening bf16 K/V to fp32 (micro_rows.hpp) keeps every product
// exact but costs the arithmetic of an fp32 cache: 64 zmm FMAs per key and KV head for 4
// query heads of dim 128; vdpbf16ps does the same key in 16 instructions for Q.K^T and 16
// for P.V. Measured on Zen 4 (4 query rows, d 128, rows in L2, one core): Q.K^T, softmax
// and P.V take 14.7-14.8 ns per key and KV head against 22-29 for the widening kernels; but
// from memory both read the cache at the same speed: a whole decode step (65536 keys, 8 KV
// heads, 2 threads, interleaved runs) 7.9-8.9 ms against 8.1-8.9. P.V packs its weights
// with vcvtne2ps2bf16 and reads whole V rows per pass (pv_rows_bf16); a scalar packing and
// passes over half rows took it to 9.3-9.9 ms.
// The rounding is the one GPU flash-attention kernels and ggml make for 16-bit caches: Q
// and P carry 8 significant bits, products are exact in fp32, sums are fp32. Where the CPU
// has no AVX-512 BF16 (or the head dims are not multiples of 32) the decode driver rounds Q
// and P to bf16 and uses the widening kernels, so every CPU computes the same products
// (sums may differ in order, as between ISAs anyway).
//
// Layouts: Q rows are bf16 bits [rows][dp] (dp a multiple of 32, zero-padded). In P.V a
// vector holds one column chunk of two keys interleaved (vpunpcklwd/hwd of rows t and t+1),
// so its sums come out in a fixed permutation of the columns within each 32-column chunk
// (`lo`: columns 8i..8i+3, `hi`: 8i+4..8i+7 of 128-bit block i); the P.V sums are kept in
// that order in the scratch and put back in column order when they join the output.
#pragma once

#include <cstdint>
#include <cstring>

#include "../simd/simd.hpp"
#include "micro_rows.hpp"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && XSIMD_WITH_AVX512F
#define ATTNKIT_HAS_BF16_DOT 1
#define ATTNKIT_TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#else
#define ATTNKIT_HAS_BF16_DOT 0
#endif

namespace attnkit {
inline namespace ATTNKIT_ISA_NS {
namespace kernels {

/// bf16 bits of x, rounded to nearest even (x finite: softmax weights and scaled queries).
ATTNKIT_ALWAYS_INLINE std::uint32_t bf16_round_bits(float x) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

/// x rounded to the nearest bf16 value, as a float.
ATTNKIT_ALWAYS_INLINE float bf16_round(float x) noexcept {
  const std::uint32_t u = bf16_round_bits(x) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

/// Rows (query heads x queries of a unit) pv_rows_bf16 packs weights for.
constexpr int bf16_max_rows = 64;

#if ATTNKIT_HAS_BF16_DOT

// qk_rows_bf16: qk_rows (micro_rows.hpp) with bf16 Q rows (bits, q + r * ld_q, zero-padded
// to dp, a multiple of 32) and vdpbf16ps; the same key order, prefetches and St layout.
template <class Arch, int RB>
ATTNKIT_TARGET_BF16 void qk_rows_bf16(const std::uint16_t* ATTNKIT_RESTRICT q, std::int64_t ld_q,
                                      const bf16* const* k, std::int64_t dp, std::int64_t nk, int rows,
                                      float* ATTNKIT_RESTRICT st, std::int64_t ld_s, const heads& hs,
                                      const ahead& pf) noexcept {
  using B = simd::vfloat<Arch>;
  constexpr int W = 16;
  static_assert(B::size == W, "AVX-512 only");
  constexpr int KB = W / RB;
  for (std::int64_t t0 = 0; t0 < nk; t0 += KB) {
    const int kn = nk - t0 < KB ? int(nk - t0) : KB;
    for (int h = 0; h < hs.n; ++h) {
      const bf16* kp[KB];
      for (int j = 0; j < KB; ++j) kp[j] = k[t0 + (j < kn ? j : kn - 1)] + h * hs.kv;
      for (int r0 = 0; r0 < rows; r0 += RB) {
        // Each member's bf16 Q lies at the same place in its scratch: hs.ws floats apart.
        const std::uint16_t* qb = q + 2 * h * hs.ws + r0 * ld_q;
        float* sb = st + h * hs.ws + r0;
        B acc[W];
        for (int j = 0; j < KB; ++j) {
          if (r0 == 0 && j < kn && t0 + j + pf.dist < pf.n) prefetch_l2(k[t0 + j + pf.dist] + h * hs.kv, pf.bytes);
          __m512 a[RB];
          for (int r = 0; r < RB; ++r) a[r] = _mm512_setzero_ps();
          for (std::int64_t d = 0; d < dp; d += 2 * W) {
            const __m512bh kv = (__m512bh)_mm512_loadu_si512(kp[j] + d);
            for (int r = 0; r < RB; ++r)
              a[r] = _mm512_dpbf16_ps(a[r], (__m512bh)_mm512_load_si512(qb + r * ld_q + d), kv);
          }
          for (int r = 0; r < RB; ++r) acc[j * RB + r] = B(a[r]);
        }
        store_scores<Arch, RB>(hsum_rows<Arch>(acc), sb, t0, kn, ld_s);
      }
    }
  }
}

// One P.V sub-tile for RG rows and CC column chunks of 32 from chunk c0: acc (permuted
// layout, rows ld_acc apart; from zero when `zero`) += sum over the key pairs of the
// sub-tile. pp[i * ld_pp + r]: the bf16 weights of row r for keys 2i (low half) and 2i + 1;
// vr[2i], vr[2i + 1]: the pair's V rows (the second may be null: a lone last key); pf[2i],
// pf[2i + 1] (when pf is not null): rows whose bytes [pf_from, pf_from + pf_bytes) are
// asked for as the pair is read, each may be null.
template <int RG, int CC>
ATTNKIT_TARGET_BF16 ATTNKIT_ALWAYS_INLINE void pv_pairs_acc(float* ATTNKIT_RESTRICT acc, std::int64_t ld_acc, bool zero,
                                                           const std::uint32_t* pp, int ld_pp, const bf16* const* vr,
                                                           int pairs, std::int64_t c0, const bf16* const* pf,
                                                           std::int64_t pf_from, std::int64_t pf_bytes) noexcept {
  __m512 s[RG][2 * CC];
  for (int r = 0; r < RG; ++r)
    for (int x = 0; x < 2 * CC; ++x)
      s[r][x] = zero ? _mm512_setzero_ps() : _mm512_load_ps(acc + r * ld_acc + (c0 * 2 + x) * 16);
  for (int i = 0; i < pairs; ++i) {
    if (pf) {
      if (pf[2 * i]) prefetch_l2(reinterpret_cast<const char*>(pf[2 * i]) + pf_from, pf_bytes);
      if (pf[2 * i + 1]) prefetch_l2(reinterpret_cast<const char*>(pf[2 * i + 1]) + pf_from, pf_bytes);
    }
    __m512i lo[CC], hi[CC];
    for (int c = 0; c < CC; ++c) {
      const __m512i a = _mm512_loadu_si512(vr[2 * i] + (c0 + c) * 32);
      const __m512i b = vr[2 * i + 1] ? _mm512_loadu_si512(vr[2 * i + 1] + (c0 + c) * 32) : _mm512_setzero_si512();
      lo[c] = _mm512_unpacklo_epi16(a, b);
      hi[c] = _mm512_unpackhi_epi16(a, b);
    }
    for (int r = 0; r < RG; ++r) {
      const __m512bh p = (__m512bh)_mm512_set1_epi32(int(pp[i * ld_pp + r]));
      for (int c = 0; c < CC; ++c) {
        s[r][2 * c] = _mm512_dpbf16_ps(s[r][2 * c], (__m512bh)lo[c], p);
        s[r][2 * c + 1] = _mm512_dpbf16_ps(s[r][2 * c + 1], (__m512bh)hi[c], p);
      }
    }
  }
  for (int r = 0; r < RG; ++r)
    for (int x = 0; x < 2 * CC; ++x) _mm512_store_ps(acc + r * ld_acc + (c0 * 2 + x) * 16, s[r][x]);
}

// pv_pairs_acc for a group of rg (1 or 2) rows.
template <int CC>
ATTNKIT_TARGET_BF16 ATTNKIT_ALWAYS_INLINE void pv_pairs_group(int rg, float* ATTNKIT_RESTRICT acc, std::int64_t ld_acc,
                                                             bool zero, const std::uint32_t* pp, int ld_pp,
                                                             const bf16* const* vr, int pairs, std::int64_t c0,
                                                             const bf16* const* pf, std::int64_t pf_from,
                                                             std::int64_t pf_bytes) noexcept {
  if (rg == 1)
    pv_pairs_acc<1, CC>(acc, ld_acc, zero, pp, ld_pp, vr, pairs, c0, pf, pf_from, pf_bytes);
  else
    pv_pairs_acc<2, CC>(acc, ld_acc, zero, pp, ld_pp, vr, pairs, c0, pf, pf_from, pf_bytes);
}

// Word permutation of 32 weights [key][row] (rows of 1, 2 or 4 lanes) that puts the two
// weights of a key pair for the same row side by side (one dword per pair and row).
ATTNKIT_TARGET_BF16 inline __m512i pair_perm(int rows) noexcept {
  alignas(64) std::int16_t idx[32];
  for (int j = 0; j < 16; ++j) {
    const int pair = j / rows, r = j % rows;
    idx[2 * j] = std::int16_t(2 * pair * rows + r);
    idx[2 * j + 1] = std::int16_t((2 * pair + 1) * rows + r);
  }
  return _mm512_load_si512(idx);
}

// pv_rows_bf16: pv_rows (micro_rows.hpp) with the weights rounded to bf16 and vdpbf16ps:
// O[r] = alpha[r] O[r] + sum_t P[t][r] V[t] for r < rows, dvp a multiple of 32, P as
// [nk][ld_p] floats (rounded here), the same sub-tiles, heads and prefetches.
template <class Arch>
ATTNKIT_TARGET_BF16 void pv_rows_bf16(float* ATTNKIT_RESTRICT o, std::int64_t ld_o, const float* ATTNKIT_RESTRICT alpha,
                                      const float* ATTNKIT_RESTRICT p, std::int64_t ld_p, const bf16* const* v,
                                      std::int64_t dvp, std::int64_t nk, int rows, float* ATTNKIT_RESTRICT acc,
                                      const heads& hs, const ahead& pf) noexcept {
  if (nk <= 0) return;
  // Groups of 2 rows over 4 column chunks (128 columns): 16 sums, 4 chunks of each key of
  // the pair and their 8 interleavings in registers, and each pass reads whole rows, in
  // order (Note [Rows read once, in order] in micro_rows.hpp). 4 rows over 2 chunks read
  // the first half of every row of the sub-tile, then the second: measured on Zen 4
  // (decode, 2 threads, interleaved runs) 8.9-11.1 ms against 7.9-9.0.
  constexpr int RG = 2, CC = 4;
  const std::int64_t chunks = dvp / 32;
  constexpr std::int64_t sub = pv_sub<bf16>;
  std::uint32_t pp[sub / 2 * bf16_max_rows];
  const bf16* vh[sub];
  const bf16* pfv[sub];
  // 32 weights (16 / rows pairs of keys) at a time: rounded by vcvtne2ps2bf16 (to nearest
  // even, as bf16_round_bits; subnormals become zero, which vdpbf16ps makes of them anyway),
  // then each pair's two weights of a row side by side. The permutation depends on rows only.
  const bool vector_pack = ld_p == rows && (rows == 1 || rows == 2 || rows == 4);
  const __m512i perm = vector_pack ? pair_perm(rows) : _mm512_setzero_si512();
  for (std::int64_t t0 = 0; t0 < nk; t0 += sub) {
    const int n = int(nk - t0 < sub ? nk - t0 : sub), pairs = (n + 1) / 2;
    for (int h = 0; h < hs.n; ++h) {
      for (int t = 0; t < n; ++t) {
        vh[t] = v[t0 + t] + h * hs.kv;
        pfv[t] = pf.bytes > 0 && t0 + t + pf.dist < pf.n ? v[t0 + t + pf.dist] + h * hs.kv : nullptr;
      }
      if (n & 1) vh[n] = nullptr, pfv[n] = nullptr;
      const float* ph = p + h * hs.ws + t0 * ld_p;
      int i = 0;
      if (vector_pack) {
        for (; 2 * (i + 16 / rows) <= n; i += 16 / rows) {
          const float* x = ph + 2 * i * ld_p;
          const __m512i w = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + 16), _mm512_loadu_ps(x));
          _mm512_storeu_si512(pp + i * rows, _mm512_permutexvar_epi16(perm, w));
        }
      }
      for (; i < pairs; ++i)
        for (int r = 0; r < rows; ++r) {
          const std::uint32_t b = 2 * i + 1 < n ? bf16_round_bits(ph[(2 * i + 1) * ld_p + r]) : 0u;
          pp[i * rows + r] = bf16_round_bits(ph[2 * i * ld_p + r]) | (b << 16);
        }
      float* ah = acc + h * hs.ws;
      for (int r0 = 0; r0 < rows; r0 += RG) {
        const int rg = rows - r0 < RG ? rows - r0 : RG;
        float* ar = ah + r0 * dvp;
        const std::uint32_t* pr = pp + r0;
        // Each group of rows prefetches its share of the rows' cache lines (Note [Prefetch
        // ahead] in micro_rows.hpp), spread over its first pass.
        const std::int64_t lines = (pf.bytes + 63) / 64, ng = (rows + RG - 1) / RG, gi = r0 / RG;
        const std::int64_t from = lines * gi / ng * 64, to = lines * (gi + 1) / ng * 64;
        const bf16* const* pfr = to > from ? pfv : nullptr;
        // Whole rows of 4, 2 or 1 chunks at a time (head dims 128, 64, 32), longer ones in
        // blocks of 4 chunks.
        std::int64_t c = 0;
        for (; c + CC <= chunks; c += CC)
          pv_pairs_group<CC>(rg, ar, dvp, t0 == 0, pr, rows, vh, pairs, c, c == 0 ? pfr : nullptr, from, to - from);
        for (; c + 2 <= chunks; c += 2)
          pv_pairs_group<2>(rg, ar, dvp, t0 == 0, pr, rows, vh, pairs, c, c == 0 ? pfr : nullptr, from, to - from);
        for (; c < chunks; ++c)
          pv_pairs_group<1>(rg, ar, dvp, t0 == 0, pr, rows, vh, pairs, c, c == 0 ? pfr : nullptr, from, to - from);
      }
    }
  }
  // Sums back in column order (the layout note above) as they join the output.
  alignas(64) static constexpr std::int32_t first[16] = {0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23};
  alignas(64) static constexpr std::int32_t second[16] = {8,  9,  10, 11, 24, 25, 26, 27,
                                                          12, 13, 14, 15, 28, 29, 30, 31};
  const __m512i i0 = _mm512_load_si512(first), i1 = _mm512_load_si512(second);
  for (int h = 0; h < hs.n; ++h)
    for (int r = 0; r < rows; ++r) {
      const __m512 a = _mm512_set1_ps(alpha[h * hs.ws + r]);
      const float* ar = acc + h * hs.ws + r * dvp;
      float* orow = o + h * hs.ws + r * ld_o;
      for (std::int64_t c = 0; c < dvp; c += 32) {
        const __m512 lo = _mm512_load_ps(ar + c), hi = _mm512_load_ps(ar + c + 16);
        _mm512_store_ps(orow + c, _mm512_fmadd_ps(_mm512_load_ps(orow + c), a, _mm512_permutex2var_ps(lo, i0, hi)));
        _mm512_store_ps(orow + c + 16,
                        _mm512_fmadd_ps(_mm512_load_ps(orow + c + 16), a, _mm512_permutex2var_ps(lo, i1, hi)));
      }
    }
}

#endif  // ATTNKIT_HAS_BF16_DOT

}  // namespace kernels
}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
