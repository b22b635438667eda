// Top-k attention: for every query, softmax over its `topk` largest allowed scores only.
//
// Shares the flash tile walk (dense.hpp): the same units, key ranges, mask tiles and score
// modifier. Instead of an online softmax, each lane (query) collects candidates: a tile row
// is compared against every lane's threshold in one vector compare, and only scores above it
// are filed into the lane's buffer; a full buffer is cut back to its best `topk` by a
// selection, which raises the threshold. The epilogue takes the softmax over the selected
// scores and gathers their V rows.
//
// Ties go to the lower key index: keys arrive in increasing order, a key must beat the
// threshold strictly, and the selection keeps the first of equal scores. Extra memory:
// 64 lanes x (4 topk) candidates per thread, never O(Lq x Lk).
#pragma once

#include <cmath>
#include <cstring>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "dense.hpp"

namespace attnkit {
inline namespace ATTNKIT_ISA_NS {
namespace detail {

struct topk_consumer {
  static constexpr int max_rank = 13;  // depth of the per-lane sample network (see unit())
  static constexpr int pass_rows = 16;  // St rows compared before their candidates are filed

  // A lane's buffer holds up to topk + slack candidates (padded to whole vectors); when it
  // fills, a selection keeps the best topk and the threshold becomes the worst kept score.
  // The sampled threshold admits about 3.25 topk keys (see unit()), so the slack of 3 topk
  // lets most lanes finish without a selection during the walk.
  template <class Arch>
  static std::int64_t capacity(std::int64_t topk) noexcept {
    constexpr std::int64_t W = dense_plan<Arch>::W;
    const std::int64_t c = topk + (topk > 32 ? 3 * topk : 96);
    return (c + W - 1) / W * W;
  }

  template <class Arch>
  static std::int64_t scratch_floats(const dense_args& a, const dense_plan<Arch>&) noexcept {
    // scores [BQ][cap], keys [BQ][cap] (int64), counts [BQ] (int64), thresholds [BQ],
    // sampled flags [BQ], sample network [max_rank][BQ], and one pass's candidates
    // [pass_rows + 1][BQ] (int32; the extra row takes full-vector stores past the end)
    return dense_plan<Arch>::BQ * (3 * capacity<Arch>(a.topk) + 4 + max_rank + pass_rows + 1);
  }

  template <class Arch, int NV>
  struct unit {
    static constexpr int BQ = dense_plan<Arch>::BQ;
    static constexpr int W = dense_plan<Arch>::W;
    using B = simd::vfloat<Arch>;
    const dense_args& a;
    const unit_coords& c;
    const std::int64_t cap;
    const int lanes;
    float* sc;            // [BQ][cap] candidate scores, in key order
    std::int64_t* key;    // [BQ][cap] candidate keys, increasing
    std::int64_t* count;  // [BQ]
    float* thr;           // [BQ]: a score must exceed this to become a candidate
    bool* sampled;        // [BQ]: the lane's threshold came from samples
    float* top;           // [max_rank][BQ]: best sampled scores per lane, descending
    std::int32_t* pl;     // one pass's candidates in row order, as offsets into St
    std::int64_t stride = 0;
    std::int64_t target = 0;  // keys the sampled threshold should admit per lane
    bool rerun = false;

    unit(const dense_args& a_, const unit_coords& c_, float* ws) noexcept
        : a(a_), c(c_), cap(capacity<Arch>(a_.topk)), lanes(int(c_.nh * c_.nq)), sc(ws),
          key(reinterpret_cast<std::int64_t*>(ws + BQ * cap)),
          count(reinterpret_cast<std::int64_t*>(ws + 3 * BQ * cap)), thr(ws + 3 * BQ * cap + 2 * BQ),
          sampled(reinterpret_cast<bool*>(thr + BQ)), top(thr + 2 * BQ),
          pl(reinterpret_cast<std::int32_t*>(top + max_rank * BQ)) {
      constexpr float inf = std::numeric_limits<float>::infinity();
      for (int x = 0; x < BQ; ++x) {
        thr[x] = x < lanes ? -inf : inf;  // padded lanes never take candidates
        count[x] = 0;
        sampled[x] = false;
      }
      // Sample every `stride`-th key (stride topk / 4) and start each lane's threshold at
      // the sampled score that about 3.25 topk of all its keys should beat (rank max_rank =
      // 13 of the samples of fully sampled keys; partly sampled walks aim at the same
      // count): far fewer candidates than a threshold that starts at -inf. The threshold
      // fails (admits fewer than topk keys, and the unit is walked again) when 13 samples
      // land among the lane's topk best keys: about 1.4e-4 per lane for random scores, 1%
      // of 64-lane units. A lower rank admits fewer candidates but fails more often; a
      // shorter stride costs more Q.K. Short walks skip sampling.
      stride = a.topk / 4;
      target = max_rank * stride;
      if (stride < 2 || a.kv_len_of(c.b) < 16 * a.topk) stride = 0;
      for (int j = 0; j < max_rank; ++j)
        for (int x = 0; x < BQ; ++x) top[j * BQ + x] = -inf;
    }

    std::int64_t sample_stride() const noexcept { return stride; }

    // Insertion network: keeps the `max_rank` largest sampled scores of every lane, one
    // lane vector at a time in registers.
    void sample(float* st, std::int64_t rows) noexcept {
      for (int n = 0; n < NV; ++n) {
        B t[max_rank];
        for (int j = 0; j < max_rank; ++j) t[j] = B::load_aligned(top + j * BQ + n * W);
        for (std::int64_t kk = 0; kk < rows; ++kk) {
          B x = B::load_aligned(st + kk * BQ + n * W);
          for (int j = 0; j < max_rank; ++j) {
            const auto up = t[j] < x;
            const B cur = t[j];
            t[j] = xsimd::select(up, x, cur);
            x = xsimd::select(up, cur, x);
          }
        }
        for (int j = 0; j < max_rank; ++j) t[j].store_aligned(top + j * BQ + n * W);
      }
    }

    // `n_sampled` of the `keys` walked were sampled: the rank-th best sample is beaten by
    // about rank * keys / n_sampled keys; aim at `target`. Tiles cut by range ends or off
    // the stride's grid can hold one sample more than their share, which would ask for a
    // rank just past the network: those walks take its last rank (a little tighter).
    void end_sample(std::int64_t n_sampled, std::int64_t keys) noexcept {
      if (n_sampled == 0) return;
      std::int64_t rank = (target * n_sampled + keys - 1) / keys;
      if (rank > max_rank) rank = max_rank;
      for (int x = 0; x < lanes; ++x) {
        thr[x] = top[(rank - 1) * BQ + x];
        sampled[x] = thr[x] > -std::numeric_limits<float>::infinity();
      }
    }

    // Order-preserving maps between floats and uint32 (larger float, larger integer).
    static std::uint32_t to_ordered(float f) noexcept {
      std::uint32_t u;
      std::memcpy(&u, &f, sizeof u);
      return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    }
    static float from_ordered(std::uint32_t u) noexcept {
      const std::uint32_t bits = (u & 0x80000000u) ? (u ^ 0x80000000u) : ~u;
      float f;
      std::memcpy(&f, &bits, sizeof f);
      return f;
    }

    // Keeps the best topk of a lane's n candidates, in key order. The topk-th largest score t
    // is bracketed by bisection on the order-preserving integer image of the floats (each
    // step one vector counting pass) until at most `few` candidates remain inside the
    // bracket; ranking those picks t. Then every score > t stays, and of the scores == t
    // the first ones (lowest keys) fill the rest.
    void select(int lane) noexcept {
      constexpr int few = 8;
      constexpr float inf = std::numeric_limits<float>::infinity();
      float* s = sc + lane * cap;
      std::int64_t* k = key + lane * cap;
      const std::int64_t n = count[lane], need = a.topk;
      const std::int64_t nvec = (n + W - 1) / W;
      for (std::int64_t i = n; i < nvec * W; ++i) s[i] = std::numeric_limits<float>::quiet_NaN();  // never counts
      B lo_v(inf), hi_v(-inf);
      for (std::int64_t v = 0; v < nvec; ++v) {
        const B x = B::load_aligned(s + v * W);
        lo_v = xsimd::select(x < lo_v, x, lo_v);  // NaN padding never wins either way
        hi_v = xsimd::select(x > hi_v, x, hi_v);
      }
      alignas(64) float lo_a[W], hi_a[W];
      lo_v.store_aligned(lo_a);
      hi_v.store_aligned(hi_a);
      float mn = lo_a[0], mx = hi_a[0];
      for (int i = 1; i < W; ++i) {
        mn = lo_a[i] < mn ? lo_a[i] : mn;
        mx = hi_a[i] > mx ? hi_a[i] : mx;
      }
      auto count_ge = [&](float t) {
        const B tv(t);
        std::int64_t cnt = 0;
        for (std::int64_t v = 0; v < nvec; ++v) cnt += __builtin_popcount(simd::bitmask<Arch>(B::load_aligned(s + v * W) >= tv));
        return cnt;
      };
      // t's image u is the largest with count_ge(from_ordered(u)) >= need: in [lo, hi).
      // (hi = image of mx + 1 may be a NaN image when mx = +inf: "s >= it" is then false for
      // every s, which is what count 0 means.)
      std::uint32_t lo = to_ordered(mn), hi = to_ordered(mx) + 1u;
      std::int64_t c_lo = n, c_hi = 0;
      while (hi - lo > 1 && c_lo - c_hi > few) {
        const std::uint32_t mid = lo + (hi - lo) / 2;
        const std::int64_t cm = count_ge(from_ordered(mid));
        if (cm >= need) lo = mid, c_lo = cm;
        else hi = mid, c_hi = cm;
      }
      // A bracket of one value is t itself, and the c_hi scores above it are the greater
      // ones. (Adjacent images of equal floats, -0 and +0, cannot bracket: their counts agree.)
      float t = from_ordered(lo);
      std::int64_t greater = c_hi;
      if (hi - lo > 1) {
        // t is the (need - c_hi)-th largest of the c_lo - c_hi <= few scores in the bracket:
        // the one with at most need - c_hi - 1 of them above it and more at or above it.
        const B flo(from_ordered(lo)), fhi(from_ordered(hi));
        alignas(64) float in[few + W];
        int m = 0;
        for (std::int64_t v = 0; v < nvec; ++v) {
          const B x = B::load_aligned(s + v * W);
          unsigned bits = simd::bitmask<Arch>(x >= flo) & ~simd::bitmask<Arch>(x >= fhi);
#if XSIMD_WITH_AVX512F
          if constexpr (std::is_base_of<xsimd::avx512f, Arch>::value) {
            _mm512_storeu_ps(in + m, _mm512_maskz_compress_ps(static_cast<__mmask16>(bits), x));  // m + W <= few + W
            m += __builtin_popcount(bits);
            continue;
          }
#endif
          for (; bits != 0; bits &= bits - 1) in[m++] = s[v * W + __builtin_ctz(bits)];
        }
        const int nin = (m + W - 1) / W;
        for (int i = m; i < nin * W; ++i) in[i] = std::numeric_limits<float>::quiet_NaN();
        const std::int64_t idx = need - c_hi - 1;
        for (int i = 0; i < m; ++i) {
          const B xi(in[i]);
          std::int64_t gt = 0, ge = 0;
          for (int v = 0; v < nin; ++v) {
            const B y = B::load_aligned(in + v * W);
            gt += __builtin_popcount(simd::bitmask<Arch>(y > xi));
            ge += __builtin_popcount(simd::bitmask<Arch>(y >= xi));
          }
          if (gt <= idx && idx < ge) {
            t = in[i];
            greater += gt;
            break;
          }
        }
      }
      compact(s, k, nvec, t, need - greater);
      count[lane] = need;
      thr[lane] = t;
    }

    // Keeps, in order, the candidates > t and the first `equal` of those == t.
    void compact(float* s, std::int64_t* k, std::int64_t nvec, float t, std::int64_t equal) noexcept {
      const B tv(t);
      std::int64_t m = 0;
      for (std::int64_t v = 0; v < nvec; ++v) {
        const B x = B::load_aligned(s + v * W);
        unsigned keep = simd::bitmask<Arch>(x > tv);
        for (unsigned eq = simd::bitmask<Arch>(x == tv); eq != 0 && equal > 0; eq &= eq - 1, --equal) keep |= eq & (0u - eq);
#if XSIMD_WITH_AVX512F
        if constexpr (std::is_base_of<xsimd::avx512f, Arch>::value) {
          // Compressed full-vector stores: they end at or before this vector's end, whose
          // scores and keys are already loaded.
          const __m512i k_lo = _mm512_load_si512(k + v * W), k_hi = _mm512_load_si512(k + v * W + 8);
          const __mmask16 mk = static_cast<__mmask16>(keep);
          const int n_lo = __builtin_popcount(keep & 0xffu);
          _mm512_storeu_ps(s + m, _mm512_maskz_compress_ps(mk, x));
          _mm512_storeu_si512(k + m, _mm512_maskz_compress_epi64(static_cast<__mmask8>(keep), k_lo));
          _mm512_storeu_si512(k + m + n_lo, _mm512_maskz_compress_epi64(static_cast<__mmask8>(keep >> 8), k_hi));
          m += __builtin_popcount(keep);
          continue;
        }
#endif
        for (int i = 0; i < W; ++i)
          if (keep >> i & 1u) {
            s[m] = s[v * W + i];
            k[m] = k[v * W + i];
            ++m;
          }
      }
    }

    // Compares St rows [r0, r1) with the thresholds and lists the candidates in row order
    // as offsets into St (row * BQ + lane). Returns how many.
    std::int64_t collect(const float* st, std::int64_t r0, std::int64_t r1) noexcept {
      std::int64_t p = 0;
#if XSIMD_WITH_AVX512F
      if constexpr (std::is_base_of<xsimd::avx512f, Arch>::value) {
        // Branch-free: compressed full-vector stores (the list has a spare row at the end),
        // so a row's unpredictable number of candidates costs no mispredictions.
        __m512 t[NV];
        for (int n = 0; n < NV; ++n) t[n] = _mm512_load_ps(thr + n * W);
        const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for (std::int64_t kk = r0; kk < r1; ++kk)
          for (int n = 0; n < NV; ++n) {
            const std::int32_t off = std::int32_t(kk * BQ + n * W);
            const __mmask16 m = _mm512_cmp_ps_mask(_mm512_load_ps(st + off), t[n], _CMP_GT_OQ);
            _mm512_storeu_si512(pl + p, _mm512_maskz_compress_epi32(m, _mm512_add_epi32(iota, _mm512_set1_epi32(off))));
            p += __builtin_popcount(unsigned(m));
          }
        return p;
      }
#endif
      for (std::int64_t kk = r0; kk < r1; ++kk)
        for (int n = 0; n < NV; ++n) {
          const std::int32_t off = std::int32_t(kk * BQ + n * W);
          for (unsigned bits = simd::bitmask<Arch>(B::load_aligned(st + off) > B::load_aligned(thr + n * W)); bits != 0;
               bits &= bits - 1)
            pl[p++] = off + __builtin_ctz(bits);
        }
      return p;
    }

    void tile(float* st, std::int64_t k0, std::int64_t nk) noexcept {
      float* const scores = sc;
      std::int64_t* const keys = key;
      std::int64_t* const counts = count;
      const std::int64_t c_ = cap;
      for (std::int64_t r0 = 0; r0 < nk; r0 += pass_rows) {
        const std::int64_t np = collect(st, r0, r0 + pass_rows < nk ? r0 + pass_rows : nk);
        for (std::int64_t i = 0; i < np; ++i) {
          const std::uint32_t off = std::uint32_t(pl[i]);
          const std::uint32_t x = off % unsigned(BQ);
          const std::int64_t j = counts[x];
          scores[x * c_ + j] = st[off];
          keys[x * c_ + j] = k0 + off / unsigned(BQ);
          counts[x] = j + 1;
          if (j + 1 == c_) select(int(x));
        }
      }
    }

    // A lane that started from a sampled threshold and found fewer than topk candidates may
    // have dropped keys it needed (or simply have fewer allowed keys): it is walked again
    // with no threshold; other lanes keep their results. Thresholds raised by select() are
    // exact and never cause this.
    bool finish() noexcept {
      constexpr float inf = std::numeric_limits<float>::infinity();
      if (!rerun) {
        bool again = false;
        for (int x = 0; x < BQ; ++x) {
          const bool fail = x < lanes && count[x] < a.topk && sampled[x];
          if (fail) count[x] = 0;
          thr[x] = fail ? -inf : inf;
          again = again || fail;
        }
        if (again) {
          rerun = true;
          return false;
        }
      }
      write_out();
      return true;
    }

    // out[d0 + j] = inv * sum_i p[i] * V[k[i]][d0 + j] for j < NA vectors, in registers.
    // (Software prefetch of the V rows measured slower: the rows' loads are independent
    // and the core overlaps them well enough.)
    template <int NA>
    ATTNKIT_ALWAYS_INLINE void gather(const float* p, const std::int64_t* k, std::int64_t n, const float* vb,
                                      std::int64_t d0, float inv, float* orow) const noexcept {
      B acc[NA];
      for (int j = 0; j < NA; ++j) acc[j] = B(0.f);
      for (std::int64_t i = 0; i < n; ++i) {
        const float* vr = vb + k[i] * a.v_ss + d0;
        const B pi(p[i]);
        for (int j = 0; j < NA; ++j) acc[j] = xsimd::fma(pi, B::load_unaligned(vr + j * W), acc[j]);
      }
      for (int j = 0; j < NA; ++j) (acc[j] * B(inv)).store_unaligned(orow + d0 + j * W);
    }

    void write_out() noexcept {
      constexpr float minus_inf = -std::numeric_limits<float>::infinity();
      constexpr int NA = 8;  // V columns in registers: NA vectors per gather pass
      const std::int64_t dv = a.v_dim;
      const float* vb = a.v_as<float>() + c.b * a.v_sb + c.kvh * a.v_sh;
      for (int lane = 0; lane < lanes; ++lane)
        if (count[lane] > a.topk) select(lane);
      for (std::int64_t hi = 0; hi < c.nh; ++hi) {
        const std::int64_t h = c.h0 + hi;
        for (std::int64_t r = 0; r < c.nq; ++r) {
          const int lane = int(hi * c.nq + r);
          const std::int64_t n = count[lane], nvec = (n + W - 1) / W;
          float* s = sc + lane * cap;
          const std::int64_t* k = key + lane * cap;
          for (std::int64_t i = n; i < nvec * W; ++i) s[i] = minus_inf;  // exp gives 0
          B mv(minus_inf);
          for (std::int64_t v = 0; v < nvec; ++v) mv = simd::max<Arch>(mv, B::load_aligned(s + v * W));
          alignas(64) float m_a[W];
          mv.store_aligned(m_a);
          float mx = minus_inf;
          for (int i = 0; i < W; ++i) mx = m_a[i] > mx ? m_a[i] : mx;
          B sv(0.f);
          for (std::int64_t v = 0; v < nvec; ++v) {
            const B e = simd::exp<Arch>(B::load_aligned(s + v * W) - B(mx));
            e.store_aligned(s + v * W);  // s now holds the softmax numerators
            sv += e;
          }
          float sum = n > 0 ? xsimd::hadd(sv) : 0.f;
          float keep = 1.f;
          if (a.sinks) fold_sink(a.sinks[h], mx, sum, keep);
          const float inv = n > 0 ? keep / sum : 0.f;
          float* orow = a.out + c.b * a.o_sb + h * a.o_sh + (c.i0 + r) * a.o_ss;
          std::int64_t d = 0;
          for (; d + NA * W <= dv; d += NA * W) gather<NA>(s, k, n, vb, d, inv, orow);
          for (; d + W <= dv; d += W) gather<1>(s, k, n, vb, d, inv, orow);
          for (; d < dv; ++d) {
            float acc = 0.f;
            for (std::int64_t i = 0; i < n; ++i) acc += s[i] * vb[k[i] * a.v_ss + d];
            orow[d] = acc * inv;
          }
          if (a.lse)
            a.lse[c.b * a.l_sb + h * a.l_sh + (c.i0 + r) * a.l_ss] = sum > 0.f ? mx + std::log(sum) : minus_inf;
        }
      }
    }
  };
};

template <class Arch, class Mask>
void topk_forward(const dense_args& a, const Mask& mask) noexcept {
  flash_run<Arch, topk_consumer>(a, policy_of(mask));
}

}  // namespace detail
}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
