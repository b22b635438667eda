// Top-k attention: for every query, softmax over its `topk` largest allowed scores only.
//
// Shares the flash tile walk (dense.hpp): the same units, key ranges, mask tiles and score
// modifier. Instead of an online softmax, each lane keeps a min-heap of its best `topk`
// (score, key) pairs; a tile row is compared against every lane's current threshold in one
// vector compare, and only lanes whose score beats it touch their heap (about
// topk * (1 + ln(Lk / topk)) insertions per query for random scores). The epilogue takes the
// softmax over the selected scores and gathers their V rows.
//
// Ties go to the lower key index: keys arrive in increasing order and a key enters a full
// heap only with a strictly larger score. Extra memory: lanes x topk (score, index) per
// thread, never O(Lq x Lk).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "dense.hpp"

namespace attnkit {
inline namespace ATTNKIT_ISA_NS {
namespace detail {

struct topk_consumer {
  template <class Arch>
  static std::int64_t scratch_floats(const dense_args& a, const dense_plan<Arch>&) noexcept {
    // scores [BQ][topk], indices (int64 = 2 floats) [BQ][topk], sizes + thresholds [BQ]
    return dense_plan<Arch>::BQ * (3 * a.topk + 2);
  }

  template <class Arch, int NV>
  struct unit {
    static constexpr int BQ = dense_plan<Arch>::BQ;
    static constexpr int W = dense_plan<Arch>::W;
    using B = simd::vfloat<Arch>;
    const dense_args& a;
    const unit_coords& c;
    std::int64_t* idx;  // [BQ][topk]
    float* sc;          // [BQ][topk]
    float* thr;         // [BQ]: a score must exceed this to enter the lane's heap
    float* count;       // [BQ]: heap sizes (exact small integers)

    unit(const dense_args& a_, const unit_coords& c_, float* ws) noexcept
        : a(a_), c(c_), idx(reinterpret_cast<std::int64_t*>(ws)), sc(ws + 2 * BQ * a_.topk),
          thr(sc + BQ * a_.topk), count(thr + BQ) {
      for (int x = 0; x < BQ; ++x) {
        thr[x] = -std::numeric_limits<float>::infinity();
        count[x] = 0.f;
      }
    }

    // Heap order: the root is the worst entry (lowest score; on equal scores the higher key).
    static bool worse(float sa, std::int64_t ia, float sb, std::int64_t ib) noexcept {
      return sa < sb || (sa == sb && ia > ib);
    }

    void push(int lane, float s, std::int64_t k) noexcept {
      const std::int64_t cap = a.topk;
      float* hs = sc + lane * cap;
      std::int64_t* hk = idx + lane * cap;
      std::int64_t n = std::int64_t(count[lane]);
      std::int64_t i;
      if (n < cap) {  // sift up from the end
        i = n++;
        while (i > 0) {
          const std::int64_t parent = (i - 1) / 2;
          if (!worse(s, k, hs[parent], hk[parent])) break;
          hs[i] = hs[parent];
          hk[i] = hk[parent];
          i = parent;
        }
      } else {  // replace the root, sift down
        i = 0;
        for (;;) {
          std::int64_t child = 2 * i + 1;
          if (child >= n) break;
          if (child + 1 < n && worse(hs[child + 1], hk[child + 1], hs[child], hk[child])) ++child;
          if (!worse(hs[child], hk[child], s, k)) break;
          hs[i] = hs[child];
          hk[i] = hk[child];
          i = child;
        }
      }
      hs[i] = s;
      hk[i] = k;
      count[lane] = float(n);
      if (n == cap) thr[lane] = hs[0];
    }

    void tile(float* st, std::int64_t k0, std::int64_t nk) noexcept {
      const int lanes = int(c.nh * c.nq);
      for (std::int64_t kk = 0; kk < nk; ++kk) {
        const float* row = st + kk * BQ;
        for (int n = 0; n < NV; ++n) {
          // Padded lanes hold score 0 and would pass; they are excluded below.
          if (!xsimd::any(B::load_aligned(row + n * W) > B::load_aligned(thr + n * W))) continue;
          for (int x = n * W; x < (n + 1) * W && x < lanes; ++x)
            if (row[x] > thr[x]) push(x, row[x], k0 + kk);
        }
      }
    }

    void finish() noexcept {
      constexpr float minus_inf = -std::numeric_limits<float>::infinity();
      const std::int64_t cap = a.topk, dv = a.v_dim;
      const float* vbase = a.v + c.b * a.v_sb + c.kvh * a.v_sh;
      for (std::int64_t hi = 0; hi < c.nh; ++hi) {
        const std::int64_t h = c.h0 + hi;
        for (std::int64_t r = 0; r < c.nq; ++r) {
          const std::int64_t lane = hi * c.nq + r;
          const std::int64_t n = std::int64_t(count[lane]);
          const float* hs = sc + lane * cap;
          const std::int64_t* hk = idx + lane * cap;
          float mx = minus_inf;
          for (std::int64_t j = 0; j < n; ++j) mx = hs[j] > mx ? hs[j] : mx;
          float* orow = a.out + c.b * a.o_sb + h * a.o_sh + (c.i0 + r) * a.o_ss;
          for (std::int64_t j = 0; j < dv; ++j) orow[j] = 0.f;
          float sum = 0.f;
          for (std::int64_t j = 0; j < n; ++j) {
            const float p = std::exp(hs[j] - mx);
            sum += p;
            const float* vrow = vbase + hk[j] * a.v_ss;
            for (std::int64_t d = 0; d < dv; ++d) orow[d] += p * vrow[d];
          }
          float keep = 1.f;
          if (a.sinks) fold_sink(a.sinks[h], mx, sum, keep);
          const float inv = n > 0 ? keep / sum : 0.f;
          for (std::int64_t d = 0; d < dv; ++d) orow[d] *= inv;
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
