// Top-k attention: for every query, softmax over its `topk` largest allowed scores only.
//
// Shares the flash tile walk (dense.hpp): the same units, key ranges, mask tiles and score
// modifier. Instead of an online softmax, each lane (query) collects candidates: a tile row
// is compared against every lane's threshold in one vector compare, and only scores above it
// are appended to the lane's buffer; a full buffer is cut back to its best `topk` by a
// selection, which raises the threshold. The epilogue takes the softmax over the selected
// scores and gathers their V rows.
//
// Ties go to the lower key index: keys arrive in increasing order, a key must beat the
// threshold strictly, and the selection keeps the first of equal scores. Extra memory:
// 64 lanes x (3 topk) candidates per thread, never O(Lq x Lk).
#pragma once

#include <cmath>
#include <cstring>
#include <cstdint>
#include <limits>

#include "dense.hpp"

namespace attnkit {
inline namespace ATTNKIT_ISA_NS {
namespace detail {

struct topk_consumer {
  static constexpr int max_rank = 16;  // depth of the per-lane sample network

  // A lane's buffer holds up to topk + slack candidates (padded to whole vectors); when it
  // fills, a selection keeps the best topk and the threshold becomes the worst kept score.
  template <class Arch>
  static std::int64_t capacity(std::int64_t topk) noexcept {
    constexpr std::int64_t W = dense_plan<Arch>::W;
    const std::int64_t c = topk + (topk > 32 ? 2 * topk : 64);
    return (c + W - 1) / W * W;
  }

  template <class Arch>
  static std::int64_t scratch_floats(const dense_args& a, const dense_plan<Arch>&) noexcept {
    // scores [BQ][cap], keys [BQ][cap] (int64), counts [BQ] (int64), thresholds [BQ],
    // sampled flags [BQ], sample network [max_rank][BQ] (reused as one output row [v_dim])
    return dense_plan<Arch>::BQ * (3 * capacity<Arch>(a.topk) + 4 + max_rank) + a.v_dim;
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
    std::int64_t stride = 0;
    bool rerun = false;

    unit(const dense_args& a_, const unit_coords& c_, float* ws) noexcept
        : a(a_), c(c_), cap(capacity<Arch>(a_.topk)), lanes(int(c_.nh * c_.nq)), sc(ws),
          key(reinterpret_cast<std::int64_t*>(ws + BQ * cap)),
          count(reinterpret_cast<std::int64_t*>(ws + 3 * BQ * cap)), thr(ws + 3 * BQ * cap + 2 * BQ),
          sampled(reinterpret_cast<bool*>(thr + BQ)), top(thr + 2 * BQ) {
      constexpr float inf = std::numeric_limits<float>::infinity();
      for (int x = 0; x < BQ; ++x) {
        thr[x] = x < lanes ? -inf : inf;  // padded lanes never take candidates
        count[x] = 0;
        sampled[x] = false;
      }
      // Sample every `stride`-th key and start each lane's threshold at a sampled score
      // that about 2 topk of all its keys should beat: far fewer candidates (and
      // selections) than a threshold that starts at -inf. Short walks skip sampling.
      stride = (2 * a.topk) / max_rank;
      if (stride < 2 || a.kv_len < 16 * a.topk) stride = 0;
      for (int j = 0; j < max_rank; ++j)
        for (int x = 0; x < BQ; ++x) top[j * BQ + x] = -inf;
    }

    std::int64_t sample_stride() const noexcept { return stride; }

    // Insertion network: keeps the `rank` largest sampled scores of every lane.
    void sample(float* st, std::int64_t rows) noexcept {
      for (std::int64_t kk = 0; kk < rows; ++kk)
        for (int n = 0; n < NV; ++n) {
          B x = B::load_aligned(st + kk * BQ + n * W);
          for (int j = 0; j < max_rank; ++j) {
            float* t = top + j * BQ + n * W;
            const B cur = B::load_aligned(t);
            simd::max<Arch>(cur, x).store_aligned(t);
            x = xsimd::select(cur < x, cur, x);
          }
        }
    }

    // `sampled` of the `keys` walked were sampled: the rank-th best sample is beaten by
    // about rank * keys / sampled keys; aim at 2 topk (no threshold if out of reach).
    void end_sample(std::int64_t n_sampled, std::int64_t keys) noexcept {
      if (n_sampled == 0) return;
      const std::int64_t rank = (2 * a.topk * n_sampled + keys - 1) / keys;
      if (rank < 1 || rank > max_rank) return;
      for (int x = 0; x < lanes; ++x) {
        thr[x] = top[(rank - 1) * BQ + x];
        sampled[x] = thr[x] > -std::numeric_limits<float>::infinity();
      }
    }

    // Keeps the best topk of a lane's n candidates, in key order. The topk-th largest score t
    // is found bit by bit on the order-preserving integer image of the floats (32 vector
    // counting passes, no data-dependent branches); then every score > t stays, and of the
    // scores == t the first ones (lowest keys) fill the rest.
    void select(int lane) noexcept {
      float* s = sc + lane * cap;
      std::int64_t* k = key + lane * cap;
      const std::int64_t n = count[lane], need = a.topk;
      const std::int64_t nvec = (n + W - 1) / W;
      for (std::int64_t i = n; i < nvec * W; ++i) s[i] = std::numeric_limits<float>::quiet_NaN();  // never >= t
      auto count_ge = [&](float t) {
        const B tv(t);
        std::int64_t cnt = 0;
        for (std::int64_t v = 0; v < nvec; ++v) cnt += __builtin_popcount(simd::bitmask<Arch>(B::load_unaligned(s + v * W) >= tv));
        return cnt;
      };
      std::uint32_t u = 0;  // image of t: the largest value with count_ge(t) >= need
      for (int bit = 31; bit >= 0; --bit) {
        const std::uint32_t trial = u | (1u << bit);
        if (count_ge(from_ordered(trial)) >= need) u = trial;
      }
      const float t = from_ordered(u);
      std::int64_t greater = 0;
      for (std::int64_t i = 0; i < n; ++i) greater += s[i] > t;
      std::int64_t equal_left = need - greater, m = 0;
      for (std::int64_t i = 0; i < n; ++i) {
        const bool keep = s[i] > t || (s[i] == t && equal_left-- > 0);
        s[m] = s[i];
        k[m] = k[i];
        m += keep;
      }
      count[lane] = need;
      thr[lane] = t;
    }

    // Order-preserving map between floats and uint32 (larger float, larger integer).
    static float from_ordered(std::uint32_t u) noexcept {
      const std::uint32_t bits = (u & 0x80000000u) ? (u ^ 0x80000000u) : ~u;
      float f;
      std::memcpy(&f, &bits, sizeof f);
      return f;
    }

    void tile(float* st, std::int64_t k0, std::int64_t nk) noexcept {
      for (std::int64_t kk = 0; kk < nk; ++kk) {
        const float* row = st + kk * BQ;
        for (int n = 0; n < NV; ++n) {
          const B s = B::load_aligned(row + n * W);
          unsigned bits = simd::bitmask<Arch>(s > B::load_aligned(thr + n * W));
          while (bits) {
            const int x = n * W + __builtin_ctz(bits);
            bits &= bits - 1;
            sc[x * cap + count[x]] = row[x];
            key[x * cap + count[x]] = k0 + kk;
            if (++count[x] == cap) select(x);
          }
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

    void write_out() noexcept {
      constexpr float minus_inf = -std::numeric_limits<float>::infinity();
      const std::int64_t dv = a.v_dim;
      const float* vbase = a.v_as<float>() + c.b * a.v_sb + c.kvh * a.v_sh;
      float* acc = top;  // the sample network is done with: one output row of scratch
      for (std::int64_t hi = 0; hi < c.nh; ++hi) {
        const std::int64_t h = c.h0 + hi;
        for (std::int64_t r = 0; r < c.nq; ++r) {
          const int lane = int(hi * c.nq + r);
          if (count[lane] > a.topk) select(lane);
          const std::int64_t n = count[lane];
          const float* s = sc + lane * cap;
          const std::int64_t* k = key + lane * cap;
          float mx = minus_inf;
          for (std::int64_t j = 0; j < n; ++j) mx = s[j] > mx ? s[j] : mx;
          float* orow = a.out + c.b * a.o_sb + h * a.o_sh + (c.i0 + r) * a.o_ss;
          float sum = 0.f;
          for (std::int64_t j = 0; j < n; ++j) {
            const float p = std::exp(s[j] - mx);
            sum += p;
            kernels::axpy<Arch>(p, vbase + k[j] * a.v_ss, acc, dv, j == 0);
          }
          float keep = 1.f;
          if (a.sinks) fold_sink(a.sinks[h], mx, sum, keep);
          const float inv = n > 0 ? keep / sum : 0.f;
          for (std::int64_t d = 0; d < dv; ++d) orow[d] = n > 0 ? acc[d] * inv : 0.f;
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
