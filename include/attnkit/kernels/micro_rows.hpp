// Micro-kernels of the decode driver: few query rows against many keys, dim in the lanes.
//
// Note [Rows in registers]: decode has few query rows per K/V row (the heads of a group
// times a handful of queries), so the queries-in-lanes kernels of micro.hpp would leave most
// lanes empty and broadcast every K and V element. Here the head dimension runs along the
// lanes instead: Q.K^T accumulates RB rows x KB keys (RB * KB = W) partial dot products and
// folds them with one horizontal pass (hsum_rows); P.V broadcasts each probability and
// streams whole V vectors. Both read K and V rows as whole vectors, so rows must be padded
// to the vector width (kv_rows::tile with `padded`). K and V may be bf16/fp16 rows: the
// loads widen them in registers (simd/convert.hpp), so 16-bit caches are read in place. The
// score tile keeps the queries-in-lanes layout St[key][row] of the flash driver, so masks,
// score modifiers, softcap and the online softmax are shared with it.
//
// Note [Rows read once, in order]: decode's speed is the speed of reading the cache, and
// what reads it fastest is the hardware prefetcher, which follows a stream of addresses
// that advances steadily. So both kernels read each K/V row from memory once, whole and in
// address order, with their arithmetic spread along the stream:
//   - Q.K^T goes key by key (each key's row against every query row; Q comes from L1),
//     not dimension block by dimension block over several keys at once;
//   - P.V cannot hold every row's accumulators in registers (4 rows x 128 floats fill all
//     32 zmm), so it takes the tile in sub-tiles of `pv_sub` keys (4-8 KiB): every group of rows
//     passes over a sub-tile while it is in L1, the accumulators waiting in L1 between
//     sub-tiles; memory sees one pass over the tile.
// Measured on Zen 4 (fp32, 2 threads, a 512 MiB cache, no software prefetch): a synthetic
// kernel with this access order and decode's arithmetic read at 0.91-0.97 x a streaming sum;
// with Q.K^T in dimension blocks over 4 keys 0.61, with P.V in two passes over a 64-key tile
// 0.81.
//
// Note [Prefetch ahead]: on top of the hardware streams, each row is asked for into L2
// (prefetcht1) 8 KiB of its head's rows ahead of its use (16 rows at head dim 128, fp32),
// one row per row read, never in bursts: the row arrives while the rows before it are
// computed on, and the jumps between pages of a paged cache are crossed ahead of time.
// Heads read together (lock step) keep the same distance in rows, so in vLLM's layout the
// prefetches run 16 tokens (64 KiB for 8 heads) ahead. Measured on Zen 4 (decode, 2
// threads, interleaved runs): contiguous fp32 ~0.77 -> ~0.82 x the streaming sum at 33-36
// GB/s, 14.5 vs 16-17 ms at 55 GB/s; vLLM-layout pages of 16, 0.50 x contiguous without,
// 0.67 at 2 tokens ahead, 0.9 at 16; head-major pages of 16, 0.5 -> 0.9. 4, 16 and 32 KiB
// measured no better than 8 with slow memory; with fast memory (~55 GB/s) 16 KiB took fp32
// from 12.9-13.3 to 12.3-12.4 ms, but it costs as much when the memory is slow (16.8 ->
// 17.4-18.2 ms at 33 GB/s), so 8 KiB stays. Into L1 (prefetcht0, prefetchnta) it was slower than no
// prefetch: the core has few outstanding-miss slots for L1 and drops what does not fit.
// For the same reason the prefetches are spread evenly over the work: P.V passes over each
// sub-tile once per group of rows, and each group asks for its share of every row's cache
// lines (with 4 rows at head dim 128, lines 0-3 by the first pass, 4-7 by the second), not
// the first pass all 8 lines in a burst: fp32 decode, 1 thread, 64Ki keys x 8 KV heads,
// 58 -> 46 ns per key and KV head; 2 threads 14.3 -> 13.3 ms at 61 GB/s, 17.6 -> 15.8 at
// 36 GB/s; bf16 9.0-9.5 -> 8.6-8.8 ms. Asking for every other line only (the core fetches
// 128-byte pairs) measured 30 -> 28.6 ms for all 8 lines in one pass, but 38 ms when split.
// The online softmax between the two kernels reads nothing from memory; it asks for the V
// rows that P.V's first prefetches would (rows_ahead in micro.hpp), spread over its loop:
// bf16 decode 29.3 -> 28.7 ns per key and KV head (1 thread), 32.3 -> 30.8 per thread (2
// threads); fp32 unchanged (45.8 vs 46.0; 45.1 vs 45.0 with two concurrent copies).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include <limits>

#include "../simd/convert.hpp"
#include "../simd/math.hpp"
#include "../simd/simd.hpp"
#include "micro.hpp"

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

/// Rows `prefetch_bytes` of the stream ahead (Note [Prefetch ahead]).
constexpr std::int64_t prefetch_bytes = 8192;

// Heads walked together (Note [Heads in lock step] in decode.hpp): `n` heads whose K/V rows
// lie `kv` elements apart (a token's heads side by side) and whose Q, St, O, P.V sums and
// alpha lie `ws` floats apart. The kernels take the tile's tokens in order and, for each
// token (group), every head, so a token's heads are read together, in address order.
struct heads {
  int n = 1;
  std::int64_t ws = 0, kv = 0;
};

// Rows to prefetch ahead of a kernel's reads (Note [Prefetch ahead]): row t + dist of the
// kernel's row pointers while it reads row t, for t + dist < n (the pointer array holds n
// rows, those of the tile and up to `dist` more after it), `bytes` of each.
struct ahead {
  std::int64_t n = 0, dist = 0, bytes = 0;
  /// dist for rows of `row_bytes`: prefetch_bytes of one head's rows, whatever the number
  /// of heads read together (Note [Prefetch ahead]).
  static std::int64_t distance(std::int64_t row_bytes) noexcept {
    const std::int64_t d = (prefetch_bytes + row_bytes - 1) / row_bytes;
    return d < 64 ? d : 64;
  }
};

// Rows of 16-bit type T and length n that the kernels read in pair order (Note [bf16 pairs]
// in simd/convert.hpp): bf16 rows of whole 2W blocks. The Q rows they multiply must then be
// in pair order too (to_pair_order), and pv_rows turns its sums back as they join O.
template <class Arch, class T>
constexpr bool pair_order(std::int64_t n) noexcept {
  return std::is_same<T, bf16>::value && n % (2 * std::int64_t(simd::vfloat<Arch>::size)) == 0;
}

/// x[0, n), n a multiple of 2W: each block of 2W floats as its even elements, then its odd.
template <class Arch>
inline void to_pair_order(float* x, std::int64_t n) noexcept {
  constexpr int W = int(simd::vfloat<Arch>::size);
  for (std::int64_t b = 0; b < n; b += 2 * W) {
    float t[2 * W];
    for (int i = 0; i < W; ++i) t[i] = x[b + 2 * i], t[W + i] = x[b + 2 * i + 1];
    for (int i = 0; i < 2 * W; ++i) x[b + i] = t[i];
  }
}

// Stores the sums of hsum_rows (lane j * RB + r = row r, key t0 + j) into St[t][r] (sb is
// St at the block's first row), for the kn keys of the block.
template <class Arch, int RB>
ATTNKIT_ALWAYS_INLINE void store_scores(const simd::vfloat<Arch>& s, float* sb, std::int64_t t0, int kn,
                                        std::int64_t ld_s) noexcept {
  constexpr int W = int(simd::vfloat<Arch>::size), KB = W / RB;
  if (RB == W || (ld_s == RB && kn == KB)) {  // lanes already in St's order
    s.store_unaligned(sb + t0 * ld_s);
  } else {
    alignas(64) float tmp[W];
    s.store_aligned(tmp);
    for (int j = 0; j < kn; ++j) std::memcpy(sb + (t0 + j) * ld_s, tmp + j * RB, RB * sizeof(float));
  }
}

// qk_rows: St[t][r] = sum_{d < dp} Q[r][d] * K[t][d] for r < rows, t < nk (Note [Rows read
// once, in order]), for each head of `hs`.
//   Q: `rows` rows at q + r * ld_q (aligned, zero-padded to dp, a multiple of W); rows is a
//      multiple of RB; in pair order (to_pair_order) when pair_order<Arch, KT>(dp), as the
//      K rows are then widened (Note [bf16 pairs] in simd/convert.hpp);
//   K row t at k[t] (any address: contiguous or paged), readable up to dp;
//   St: [nk][ld_s], only lanes [0, rows) written.
// Each dot product sums its dimension blocks in order from zero, so the scores do not
// depend on how many rows, keys or heads are taken together.
template <class Arch, int RB, class KT>
inline void qk_rows(const float* ATTNKIT_RESTRICT q, std::int64_t ld_q, const KT* const* k, std::int64_t dp,
                    std::int64_t nk, int rows, float* ATTNKIT_RESTRICT st, std::int64_t ld_s,
                    const heads& hs = {}, const ahead& pf = {}) noexcept {
  using B = simd::vfloat<Arch>;
  constexpr int W = int(B::size);
  static_assert(RB >= 1 && W % RB == 0, "RB must divide the vector width");
  constexpr int KB = W / RB;
  // Keys whose rows are read together, each Q vector loaded once for all of them. fp32:
  // one (whole rows in order; Q comes from L1 for every key). 16-bit rows: four, which
  // saves Q loads where widening K already takes issue slots. Measured on Zen 4 (decode,
  // 2 threads, 55 GB/s): fp32 13.7-14.3 ms with one key, 15.7 with 2 or 4; bf16 10.5 ms
  // with one, 10.0 with 2, 9.6 with 4. With Note [Loads kept in registers], 4 fp32 keys
  // run faster in L2 (15.4 -> 10.8 ns per key and head, one core) but slower from memory
  // (17.7-17.9 vs 16.7-17.2 ms at 36 GB/s).
  constexpr int P = std::is_same<KT, float>::value ? 1 : KB < 4 ? KB : 4;
  const bool pairs = pair_order<Arch, KT>(dp);
  for (std::int64_t t0 = 0; t0 < nk; t0 += KB) {
    const int kn = nk - t0 < KB ? int(nk - t0) : KB;
    for (int h = 0; h < hs.n; ++h) {
      // Past the last key the kernel re-reads the last row; those sums are never stored.
      const KT* kp[KB];
      for (int j = 0; j < KB; ++j) kp[j] = k[t0 + (j < kn ? j : kn - 1)] + h * hs.kv;
      for (int r0 = 0; r0 < rows; r0 += RB) {  // later row blocks find the KB rows in L1
        const float* qb = q + h * hs.ws + r0 * ld_q;
        float* sb = st + h * hs.ws + r0;
        B acc[W];
        // P keys at a time; their own accumulators keep the loop over the (run-time)
        // dimension free of indexing by j, so they stay in registers.
        for (int j = 0; j < KB; j += P) {
          B a[P][RB];
          for (int x = 0; x < P; ++x)
            for (int r = 0; r < RB; ++r) a[x][r] = B(0.f);
          for (int x = 0; x < P; ++x)
            if (r0 == 0 && j + x < kn && t0 + j + x + pf.dist < pf.n)
              prefetch_l2(k[t0 + j + x + pf.dist] + h * hs.kv, pf.bytes);
          std::int64_t d = 0;
          if constexpr (std::is_same<KT, bf16>::value)
            if (pairs)  // Note [bf16 pairs]: Q is in pair order too
              for (; d < dp; d += 2 * W) {
                B ke[P], ko[P];
                for (int x = 0; x < P; ++x) {
                  simd::load_widen_pairs<Arch>(kp[j + x] + d, ke[x], ko[x]);
                  if (P > 1) simd::keep_in_register<Arch>(ke[x]), simd::keep_in_register<Arch>(ko[x]);
                }
                for (int r = 0; r < RB; ++r) {
                  B qe = B::load_aligned(qb + r * ld_q + d), qo = B::load_aligned(qb + r * ld_q + d + W);
                  if (P > 1) simd::keep_in_register<Arch>(qe), simd::keep_in_register<Arch>(qo);
                  for (int x = 0; x < P; ++x) a[x][r] = xsimd::fma(qo, ko[x], xsimd::fma(qe, ke[x], a[x][r]));
                }
              }
          for (; d < dp; d += W) {
            B kv[P];
            for (int x = 0; x < P; ++x) {
              kv[x] = simd::load_widen<Arch>(kp[j + x] + d);
              if (P > 1) simd::keep_in_register<Arch>(kv[x]);  // Note [Loads kept in registers]
            }
            for (int r = 0; r < RB; ++r) {
              B qv = B::load_aligned(qb + r * ld_q + d);
              if (P > 1) simd::keep_in_register<Arch>(qv);
              for (int x = 0; x < P; ++x) a[x][r] = xsimd::fma(qv, kv[x], a[x][r]);
            }
          }
          for (int x = 0; x < P; ++x)
            for (int r = 0; r < RB; ++r) acc[(j + x) * RB + r] = a[x][r];
        }
        store_scores<Arch, RB>(hsum_rows<Arch>(acc), sb, t0, kn, ld_s);
      }
    }
  }
}

// pv_sub_2x8: pv_sub_acc for 2 rows and 8 vectors of columns (AVX-512 at head dim 128, the
// common case), 16 accumulators in named variables, each column loaded where it is used, in
// a function of its own. In the array form inside pv_rows_by's loops, g++ 12 keeps some
// accumulators on the stack (storing and reloading them for every key) and issues a row's
// loads out of address order, and fp32 P.V is bound by its loads (bf16 rows, with fewer
// loads and more arithmetic, run faster from L2). Measured on Zen 4, 4 query rows, head dim
// 128: fp32 P.V over rows in L2 20.3-20.9 -> 14.6-14.8 ns per key; fp32 decode (Q.K^T,
// softmax, P.V over a 256 MiB stream per copy), two concurrent single-thread copies with
// the memory at ~55 GB/s, 49.8-49.9 -> 43.8-45.2 ns per key and KV head.
template <class Arch, class VT, bool Pairs>
ATTNKIT_NOINLINE void pv_sub_2x8(float* ATTNKIT_RESTRICT r0, std::int64_t ld_acc, bool zero,
                                 const float* ATTNKIT_RESTRICT p, std::int64_t ld_p, const VT* const* v,
                                 std::int64_t j0, std::int64_t t0, std::int64_t t1, const VT* const* pf,
                                 std::int64_t pf_from, std::int64_t pf_bytes) noexcept {
  using B = simd::vfloat<Arch>;
  constexpr int W = int(B::size);
  float* r1 = r0 + ld_acc;
  const auto first = [zero](const float* x) { return zero ? B(0.f) : B::load_aligned(x); };
  B a0 = first(r0), a1 = first(r0 + W), a2 = first(r0 + 2 * W), a3 = first(r0 + 3 * W);
  B a4 = first(r0 + 4 * W), a5 = first(r0 + 5 * W), a6 = first(r0 + 6 * W), a7 = first(r0 + 7 * W);
  B b0 = first(r1), b1 = first(r1 + W), b2 = first(r1 + 2 * W), b3 = first(r1 + 3 * W);
  B b4 = first(r1 + 4 * W), b5 = first(r1 + 5 * W), b6 = first(r1 + 6 * W), b7 = first(r1 + 7 * W);
  const float* pt = p + t0 * ld_p;
  for (std::int64_t t = t0; t < t1; ++t, pt += ld_p) {
    if (pf && pf[t]) prefetch_l2(reinterpret_cast<const char*>(pf[t]) + pf_from, pf_bytes);
    const VT* x = v[t] + j0;
    const B p0(pt[0]), p1(pt[1]);
    const auto add = [&p0, &p1](const B& y, B& a, B& b) {
      a = xsimd::fma(p0, y, a), b = xsimd::fma(p1, y, b);
    };
    if constexpr (Pairs) {  // Note [bf16 pairs]: one load gives two vectors
      B e, o;
      simd::load_widen_pairs<Arch>(x, e, o), add(e, a0, b0), add(o, a1, b1);
      simd::load_widen_pairs<Arch>(x + 2 * W, e, o), add(e, a2, b2), add(o, a3, b3);
      simd::load_widen_pairs<Arch>(x + 4 * W, e, o), add(e, a4, b4), add(o, a5, b5);
      simd::load_widen_pairs<Arch>(x + 6 * W, e, o), add(e, a6, b6), add(o, a7, b7);
    } else {  // each column loaded where it is used (g++ folds the loads into the FMAs)
      add(simd::load_widen<Arch>(x), a0, b0), add(simd::load_widen<Arch>(x + W), a1, b1);
      add(simd::load_widen<Arch>(x + 2 * W), a2, b2), add(simd::load_widen<Arch>(x + 3 * W), a3, b3);
      add(simd::load_widen<Arch>(x + 4 * W), a4, b4), add(simd::load_widen<Arch>(x + 5 * W), a5, b5);
      add(simd::load_widen<Arch>(x + 6 * W), a6, b6), add(simd::load_widen<Arch>(x + 7 * W), a7, b7);
    }
  }
  a0.store_aligned(r0), a1.store_aligned(r0 + W), a2.store_aligned(r0 + 2 * W);
  a3.store_aligned(r0 + 3 * W), a4.store_aligned(r0 + 4 * W), a5.store_aligned(r0 + 5 * W);
  a6.store_aligned(r0 + 6 * W), a7.store_aligned(r0 + 7 * W);
  b0.store_aligned(r1), b1.store_aligned(r1 + W), b2.store_aligned(r1 + 2 * W);
  b3.store_aligned(r1 + 3 * W), b4.store_aligned(r1 + 4 * W), b5.store_aligned(r1 + 5 * W);
  b6.store_aligned(r1 + 6 * W), b7.store_aligned(r1 + 7 * W);
}

// pv_sub_acc: for RG rows and CV vectors of columns from j0, acc[r][c] (rows of `acc` ld_acc
// apart, starting at zero when `zero`) += sum_{t0 <= t < t1} P[t][r] * V[t][j0 + c W].
// Pairs: V in pair order (Note [bf16 pairs]; CV even, j0 on a 2W block), sums too.
template <class Arch, int RG, int CV, class VT, bool Pairs = false>
ATTNKIT_ALWAYS_INLINE void pv_sub_acc(float* ATTNKIT_RESTRICT acc_rows, std::int64_t ld_acc, bool zero,
                                      const float* ATTNKIT_RESTRICT p, std::int64_t ld_p, const VT* const* v,
                                      std::int64_t j0, std::int64_t t0, std::int64_t t1,
                                      const VT* const* pf = nullptr, std::int64_t pf_from = 0,
                                      std::int64_t pf_bytes = 0) noexcept {
  using B = simd::vfloat<Arch>;
  constexpr int W = int(B::size);
  if constexpr (RG == 2 && CV == 8 && W == 16) {
    return pv_sub_2x8<Arch, VT, Pairs>(acc_rows, ld_acc, zero, p, ld_p, v, j0, t0, t1, pf, pf_from, pf_bytes);
  } else {
    B acc[RG][CV];
    for (int r = 0; r < RG; ++r)
      for (int c = 0; c < CV; ++c) acc[r][c] = zero ? B(0.f) : B::load_aligned(acc_rows + r * ld_acc + c * W);
    for (std::int64_t t = t0; t < t1; ++t) {
      if (pf && pf[t]) prefetch_l2(reinterpret_cast<const char*>(pf[t]) + pf_from, pf_bytes);
      B vv[CV];
      if constexpr (Pairs) {
        static_assert(CV % 2 == 0, "pair order reads 2W columns at a time");
        for (int c = 0; c < CV; c += 2) simd::load_widen_pairs<Arch>(v[t] + j0 + c * W, vv[c], vv[c + 1]);
      } else {
        for (int c = 0; c < CV; ++c) vv[c] = simd::load_widen<Arch>(v[t] + j0 + c * W);
      }
      for (int r = 0; r < RG; ++r) {
        const B pb(p[t * ld_p + r]);
        for (int c = 0; c < CV; ++c) acc[r][c] = xsimd::fma(pb, vv[c], acc[r][c]);
      }
    }
    for (int r = 0; r < RG; ++r)
      for (int c = 0; c < CV; ++c) acc[r][c].store_aligned(acc_rows + r * ld_acc + c * W);
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
// St must have room for whole vectors past nk * rp (padded with -inf here). `next`: rows
// asked for while it runs.
template <class Arch>
inline void online_softmax_rows(float* st, std::int64_t nk, int rp, float* m, float* l, float* alpha,
                                rows_ahead next = {}) noexcept {
  using B = simd::vfloat<Arch>;
  constexpr int W = int(B::size);
  constexpr float minus_inf = -std::numeric_limits<float>::infinity();
  const std::int64_t n = nk * rp, nvec = (n + W - 1) / W;
  for (std::int64_t i = n; i < nvec * W; ++i) st[i] = minus_inf;
  B mx[4] = {B(minus_inf), B(minus_inf), B(minus_inf), B(minus_inf)};
  std::int64_t v = 0;
  for (; v + 4 <= nvec; v += 4)
    for (int c = 0; c < 4; ++c) mx[c] = simd::max<Arch>(mx[c], B::load_aligned(st + (v + c) * W));
  // At most 3 vectors are left; c < 4 also tells g++ so (it warns otherwise,
  // -Waggressive-loop-optimizations, when it inlines this with a known tile length).
  for (int c = 0; v < nvec && c < 4; ++v, ++c) mx[c] = simd::max<Arch>(mx[c], B::load_aligned(st + v * W));
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
    next.step(nvec);
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

/// Keys per P.V sub-tile of rows of type VT (Note [Rows read once, in order]): at head dim
/// 128, 4 KiB of fp32 rows, 8 KiB of 16-bit rows, so a sub-tile stays in L1 while every
/// group of rows passes over it. Each sub-tile loads and stores the sums of every row, so
/// longer is cheaper in L1; measured on Zen 4 (decode, 1 thread, 64Ki keys x 8 KV heads,
/// with Note [Loads kept in registers]): bf16 33.2 ns per key and KV head at 8 keys, 31.7
/// at 16, 31.2 at 32, 32.3 at 64; fp32, which waits on memory, measured no better at 32.
template <class VT>
constexpr std::int64_t pv_sub = sizeof(VT) == 4 ? 8 : 32;

// pv_rows_by: pv_rows' sums into acc, RG rows per group (dividing `rows`), columns in blocks
// of CV vectors (whole rows when CV * W = dvp) and single vectors past the last whole block.
template <class Arch, int RG, int CV, class VT, bool Pairs>
inline void pv_rows_by(float* ATTNKIT_RESTRICT acc, const float* ATTNKIT_RESTRICT p, std::int64_t ld_p,
                       const VT* const* v, std::int64_t dvp, std::int64_t nk, int rows, const heads& hs,
                       const ahead& pf) noexcept {
  constexpr int W = int(simd::vfloat<Arch>::size);
  static_assert(!Pairs || CV % 2 == 0, "pair order reads 2W columns at a time");
  constexpr int tail = Pairs ? 2 : 1;  // vectors per step past the last whole block
  const std::int64_t blocks = dvp / (CV * W) * (CV * W);
  constexpr std::int64_t sub = pv_sub<VT>;
  const VT* vh[sub];
  const VT* ph[sub];  // rows to prefetch while the first group of rows reads vh
  for (std::int64_t t0 = 0; t0 < nk; t0 += sub) {
    const std::int64_t t1 = t0 + sub < nk ? t0 + sub : nk;
    for (int h = 0; h < hs.n; ++h) {
      for (std::int64_t t = t0; t < t1; ++t) {
        vh[t - t0] = v[t] + h * hs.kv;
        ph[t - t0] = t + pf.dist < pf.n ? v[t + pf.dist] + h * hs.kv : nullptr;
      }
      for (int r0 = 0; r0 < rows; r0 += RG) {
        float* ar = acc + h * hs.ws + r0 * dvp;
        const float* pr = p + h * hs.ws + t0 * ld_p + r0;
        // Each group of rows prefetches its share of the rows' cache lines (Note [Prefetch
        // ahead]): bytes [from, to) of each row.
        const std::int64_t lines = (pf.bytes + 63) / 64, ng = rows / RG, gi = r0 / RG;
        const std::int64_t from = lines * gi / ng * 64, to = lines * (gi + 1) / ng * 64;
        const VT* const* pfr = pf.dist > 0 && to > from ? ph : nullptr;
        std::int64_t j = 0;
        for (; j < blocks; j += CV * W)
          pv_sub_acc<Arch, RG, CV, VT, Pairs>(ar + j, dvp, t0 == 0, pr, ld_p, vh, j, 0, t1 - t0,
                                              j == 0 ? pfr : nullptr, from, to - from);
        for (; j < dvp; j += tail * W)
          pv_sub_acc<Arch, RG, tail, VT, Pairs>(ar + j, dvp, t0 == 0, pr, ld_p, vh, j, 0, t1 - t0,
                                                j == 0 ? pfr : nullptr, from, to - from);
      }
    }
  }
}

// pv_rows_sums: pv_rows' sums of the tile into acc (in pair order when Pairs). Accumulators
// RG x CV plus a row of CV loads fit the register file (32 zmm, else 16): whole rows for
// the common head dims (AVX-512: 16, 32, 64, 128 floats; each width is another
// instantiation), else column blocks of 4 vectors.
template <class Arch, int RB, class VT, bool Pairs>
inline void pv_rows_sums(float* ATTNKIT_RESTRICT acc, const float* ATTNKIT_RESTRICT p, std::int64_t ld_p,
                         const VT* const* v, std::int64_t dvp, std::int64_t nk, int rows, const heads& hs,
                         const ahead& pf) noexcept {
  constexpr int W = int(simd::vfloat<Arch>::size);
  constexpr int regs = W == 16 ? 16 : 8;
  constexpr int RG4 = RB < 4 ? RB : 4;
  if constexpr (W == 16) {
    switch (dvp / W) {
      case 1:
        if constexpr (!Pairs) return pv_rows_by<Arch, RG4, 1, VT, false>(acc, p, ld_p, v, dvp, nk, rows, hs, pf);
        break;
      case 2: return pv_rows_by<Arch, RG4, 2, VT, Pairs>(acc, p, ld_p, v, dvp, nk, rows, hs, pf);
      case 4: return pv_rows_by<Arch, RG4, 4, VT, Pairs>(acc, p, ld_p, v, dvp, nk, rows, hs, pf);
      case 8: return pv_rows_by<Arch, (RB < 2 ? RB : 2), 8, VT, Pairs>(acc, p, ld_p, v, dvp, nk, rows, hs, pf);
      default: break;
    }
  }
  pv_rows_by<Arch, RB, (regs / RB > 4 ? 4 : regs / RB), VT, Pairs>(acc, p, ld_p, v, dvp, nk, rows, hs, pf);
}

// pv_rows: O[r][0:dvp] = alpha[r] * O[r] + sum_{t < nk} P[t][r] * V[t][0:dvp] for r < rows,
// for each head of `hs`.
//   O: `rows` rows at o + r * ld_o (aligned, dvp a multiple of W); P: [nk][ld_p] (lanes =
//   rows); V row t at v[t], readable up to dvp; acc: scratch of rows x dvp floats (aligned).
// Like pv_tile, the tile's sum starts at zero and joins the running output once (two-level
// summation); each output element sums its keys in order, however the rows and columns are
// grouped.
template <class Arch, int RB, class VT>
inline void pv_rows(float* ATTNKIT_RESTRICT o, std::int64_t ld_o, const float* ATTNKIT_RESTRICT alpha,
                    const float* ATTNKIT_RESTRICT p, std::int64_t ld_p, const VT* const* v, std::int64_t dvp,
                    std::int64_t nk, int rows, float* ATTNKIT_RESTRICT acc, const heads& hs = {},
                    const ahead& pf = {}) noexcept {
  using B = simd::vfloat<Arch>;
  constexpr int W = int(B::size);
  if (nk <= 0) return;
  const bool pairs = pair_order<Arch, VT>(dvp);
  if (pairs)  // only ever true for bf16
    pv_rows_sums<Arch, RB, VT, std::is_same<VT, bf16>::value>(acc, p, ld_p, v, dvp, nk, rows, hs, pf);
  else
    pv_rows_sums<Arch, RB, VT, false>(acc, p, ld_p, v, dvp, nk, rows, hs, pf);
  for (int h = 0; h < hs.n; ++h)
    for (int r = 0; r < rows; ++r) {
      const B a(alpha[h * hs.ws + r]);
      const float* ar = acc + h * hs.ws + r * dvp;
      float* orow = o + h * hs.ws + r * ld_o;
      if (pairs) {  // sums in pair order (Note [bf16 pairs]) back to column order
        for (std::int64_t j = 0; j < dvp; j += 2 * W) {
          alignas(64) float t[2 * W];
          for (int i = 0; i < W; ++i) t[2 * i] = ar[j + i], t[2 * i + 1] = ar[j + W + i];
          for (int c = 0; c < 2; ++c)
            xsimd::fma(B::load_aligned(orow + j + c * W), a, B::load_aligned(t + c * W)).store_aligned(orow + j + c * W);
        }
      } else {
        for (std::int64_t j = 0; j < dvp; j += W)
          xsimd::fma(B::load_aligned(orow + j), a, B::load_aligned(ar + j)).store_aligned(orow + j);
      }
    }
}

}  // namespace kernels
}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
