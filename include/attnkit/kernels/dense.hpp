// The flash-style driver: dense attention, and the tile walk that top-k attention shares.
//
// Work unit = (batch, kv head, head sub-group, query block). The lanes of a unit hold `nh`
// query heads of one KV group times `nq` consecutive query rows (lane = hi * nq + r,
// nh * nq <= block lanes; see Note [Queries in lanes] in micro.hpp). All query heads of a
// group share the lanes, so every K/V row read serves every query head of the group
// (GQA / MQA) and every query of the block; K and V are read in place, never copied.
// Units are independent, so results do not depend on the thread count or the schedule.
//
// For each unit the walker visits only the key ranges the mask reports (policy.keys), in
// tiles on a fixed grid of `bk` keys (so tiles line up with a block mask's blocks), skips
// empty tiles, computes S = scale * Q K^T for the others, applies the score modifier,
// softcap and (partial tiles only) the mask, and hands the tile to a consumer:
//   dense_consumer  online softmax and P.V (this file);
//   topk_consumer   per-query top-k selection (topk.hpp).
//
// Assumptions (checked by the public API before dispatch): unit dim stride; q_heads is a
// multiple of kv_heads; non-negative strides; outputs do not alias inputs.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../core/args.hpp"
#include "../mask/masks.hpp"
#include "../mask/policy.hpp"
#include "../simd/simd.hpp"
#include "kv_rows.hpp"
#include "micro.hpp"

namespace attnkit {
inline namespace ATTNKIT_ISA_NS {
namespace detail {

/// K/V tiles are not always fp32 rows on one stride: bf16/fp16 storage or pages.
inline bool gathers(const dense_args& a) noexcept {
  return a.kv_type != dtype::f32 || a.page_table != nullptr || a.k2 != nullptr;
}

/// Query row (b, h, i), scaled, to dst[d * stride] for d < qk_dim (both parts of a split
/// query, see dense_args::k2).
inline void load_q_row(const dense_args& a, std::int64_t b, std::int64_t h, std::int64_t i, float* dst,
                       std::int64_t stride) noexcept {
  const std::int64_t d1 = a.qk_dim - (a.q2 ? a.k2_dim : 0);
  const float* q = a.q + b * a.q_sb + h * a.q_sh + i * a.q_ss;
  for (std::int64_t d = 0; d < d1; ++d) dst[d * stride] = q[d] * a.scale;
  if (a.q2) {
    const float* q2 = a.q2 + b * a.q2_sb + h * a.q2_sh + i * a.q2_ss;
    for (std::int64_t d = d1; d < a.qk_dim; ++d) dst[d * stride] = q2[d - d1] * a.scale;
  }
}

/// Which queries a unit holds.
struct unit_coords {
  std::int64_t b, kvh, h0, nh, i0, nq;
  std::int64_t p0;  // absolute position of row i0
};

template <class Arch>
struct dense_plan {
  static constexpr int W = simd::tile_config<Arch>::lanes;
  static constexpr int NVMAX = simd::tile_config<Arch>::nv;
  static constexpr int BQ = W * NVMAX;  // lanes per unit

  std::int64_t group = 1;      // query heads per kv head
  std::int64_t nh = 1;         // query heads per unit
  std::int64_t n_hsub = 1;     // head sub-groups per kv head
  std::int64_t nq = 1;         // query rows per unit
  std::int64_t n_qblk = 1;     // query blocks
  std::int64_t bk = 128;       // keys per tile (the grid)
  std::int64_t units = 0;

  dense_plan(const dense_args& a, std::int64_t tile_hint) {
    group = a.q_heads / a.kv_heads;
    nh = group < BQ ? group : BQ;
    n_hsub = (group + nh - 1) / nh;
    nq = BQ / nh;
    if (nq > a.q_len) nq = a.q_len > 0 ? a.q_len : 1;
    n_qblk = (a.q_len + nq - 1) / nq;
    bk = a.kv_block > 0 ? a.kv_block : key_tile(tile_hint);
    units = a.batch * a.kv_heads * n_hsub * n_qblk;
  }

  // 128 keys per tile by default. A mask with blocks (tile_hint) gets tiles on its block
  // grid: the block size itself when it is between 32 and 256 keys, a multiple of it up to
  // 128 keys when smaller, and 128-key tiles (aligned when the block is a multiple of 128)
  // when larger.
  static std::int64_t key_tile(std::int64_t hint) noexcept {
    if (hint <= 0) return 128;
    if (hint < 32) return (128 / hint) * hint;
    return hint <= 256 ? hint : 128;
  }

  /// Floats of walker scratch: Qt [dim][BQ], St [bk][BQ], and a K tile [bk][dim] when K
  /// must be widened or gathered (kv_rows.hpp).
  std::int64_t walker_floats(const dense_args& a) const noexcept {
    return BQ * (a.qk_dim + bk) + (gathers(a) ? bk * a.qk_dim : 0);
  }

  /// Unit (or decode group) g: batch, KV head, its query heads and rows. Heaviest units
  /// first for causal-like masks: the query block index runs backwards.
  unit_coords coords(const dense_args& a, std::int64_t g) const noexcept {
    const std::int64_t qb = n_qblk - 1 - (g % n_qblk);
    g /= n_qblk;
    const std::int64_t hs = g % n_hsub;
    g /= n_hsub;
    unit_coords c;
    c.kvh = g % a.kv_heads;
    c.b = g / a.kv_heads;
    c.h0 = c.kvh * group + hs * nh;
    c.nh = group - hs * nh < nh ? group - hs * nh : nh;
    c.i0 = qb * nq;
    c.nq = a.q_len - c.i0 < nq ? a.q_len - c.i0 : nq;
    c.p0 = c.i0 + a.kv_len_of(c.b) - a.q_len;  // bottom-right alignment
    return c;
  }
};

/// Adds a sink logit s to a row's softmax state (max mx, sum): afterwards mx is the new
/// max, sum includes exp(s - mx), and `keep` is the factor the row's accumulated output
/// must be multiplied by (0 when the row had no allowed key).
ATTNKIT_ALWAYS_INLINE void fold_sink(float s, float& mx, float& sum, float& keep) noexcept {
  const float mf = (sum > 0.f && mx > s) ? mx : s;
  keep = sum > 0.f ? std::exp(mx - mf) : 0.f;
  sum = sum * keep + std::exp(s - mf);
  mx = mf;
}

// The dense consumer: online softmax across tiles, P.V, and the epilogue.
struct dense_consumer {
  template <class Arch>
  static std::int64_t scratch_floats(const dense_args& a, const dense_plan<Arch>& plan) noexcept {
    // Ot [v_dim][BQ], m, l, alpha, and a V tile [bk][v_dim] when V must be widened/gathered
    return dense_plan<Arch>::BQ * (a.v_dim + 3) + (gathers(a) ? plan.bk * a.v_dim : 0);
  }

  template <class Arch, int NV>
  struct unit {
    static constexpr int BQ = dense_plan<Arch>::BQ;
    static constexpr int W = dense_plan<Arch>::W;
    const dense_args& a;
    const unit_coords& c;
    float* ot;
    float* m;
    float* l;
    float* alpha;
    float* vbuf;
    const kv_rows vrows;

    unit(const dense_args& a_, const unit_coords& c_, float* ws) noexcept
        : a(a_), c(c_), ot(ws), m(ws + BQ * a_.v_dim), l(m + BQ), alpha(l + BQ), vbuf(alpha + BQ),
          vrows(kv_rows::of(a_, false, c_.b, c_.kvh)) {
      constexpr float minus_inf = -std::numeric_limits<float>::infinity();
      for (std::int64_t j = 0; j < a.v_dim; ++j)
        for (int x = 0; x < NV * W; ++x) ot[j * BQ + x] = 0.f;
      for (int x = 0; x < NV * W; ++x) {
        m[x] = minus_inf;
        l[x] = 0.f;
      }
    }

    static constexpr std::int64_t sample_stride() noexcept { return 0; }
    void sample(float*, std::int64_t) noexcept {}
    void end_sample(std::int64_t, std::int64_t) noexcept {}

    void tile(float* st, std::int64_t k0, std::int64_t nk) noexcept {
      kernels::online_softmax<Arch, NV>(st, BQ, nk, m, l, alpha);
      std::int64_t ldv = 0;
      const float* vt = vrows.tile<Arch>(k0, nk, a.v_dim, vbuf, a.v_dim, false, ldv);
      kernels::pv_block<Arch, NV>(ot, BQ, alpha, st, BQ, vt, ldv, a.v_dim, nk);
    }

    // Epilogue: fold in the learned sink logit (an extra softmax term with no value), then
    // normalise and write out and lse. Fully-masked lanes (l = 0) give 0 and -inf (or the
    // sink logit as lse: the sink then holds all the mass). Returns true: one walk is enough.
    bool finish() noexcept {
      constexpr float minus_inf = -std::numeric_limits<float>::infinity();
      for (std::int64_t hi = 0; hi < c.nh; ++hi) {
        const std::int64_t h = c.h0 + hi;
        float* oh = a.out + c.b * a.o_sb + h * a.o_sh;
        for (std::int64_t r = 0; r < c.nq; ++r) {
          const std::int64_t lane = hi * c.nq + r;
          float mx = m[lane], sum = l[lane], keep = 1.f;
          if (a.sinks) fold_sink(a.sinks[h], mx, sum, keep);
          const float inv = l[lane] > 0.f ? keep / sum : 0.f;
          float* orow = oh + (c.i0 + r) * a.o_ss;
          for (std::int64_t j = 0; j < a.v_dim; ++j) orow[j] = ot[j * BQ + lane] * inv;
          if (a.lse)
            a.lse[c.b * a.l_sb + h * a.l_sh + (c.i0 + r) * a.l_ss] = sum > 0.f ? mx + std::log(sum) : minus_inf;
        }
      }
      return true;
    }
  };
};

template <class Arch, class Policy, class Consumer>
struct unit_runner {
  const dense_args& a;
  const Policy& policy;
  const dense_plan<Arch>& plan;

  static constexpr int W = dense_plan<Arch>::W;
  static constexpr int BQ = dense_plan<Arch>::BQ;

  void operator()(std::int64_t unit, float* ws) const noexcept {
    const unit_coords c = coords(unit);
    // Queries in this unit decide how many lane vectors the micro-kernels touch.
    const int nv = int((c.nh * c.nq + W - 1) / W);
    switch (nv) {
      case 1: run<1>(c, ws); break;
      case 2: run<nv_cap(2)>(c, ws); break;
      case 3: run<nv_cap(3)>(c, ws); break;
      default: run<nv_cap(4)>(c, ws); break;
    }
  }

  // Only NV <= NVMAX can occur (a unit has at most BQ lanes); the cap keeps the
  // unreachable cases of the switch compilable for narrower register tiles.
  static constexpr int nv_cap(int n) noexcept {
    return n <= dense_plan<Arch>::NVMAX ? n : dense_plan<Arch>::NVMAX;
  }

  unit_coords coords(std::int64_t unit) const noexcept { return plan.coords(a, unit); }

  template <int NV>
  void run(const unit_coords& c, float* ws) const noexcept {
    const std::int64_t D = a.qk_dim, bk = plan.bk;
    float* qt = ws;           // [D][BQ]
    float* st = qt + D * BQ;  // [bk][BQ]
    float* kbuf = st + bk * BQ;  // [bk][D] when K is widened or gathered
    typename Consumer::template unit<Arch, NV> consumer(a, c, kbuf + (gathers(a) ? bk * D : 0));

    // Pack Q transposed and scaled; padded lanes are zero (finite scores, never stored).
    for (std::int64_t d = 0; d < D; ++d)
      for (int x = 0; x < NV * W; ++x) qt[d * BQ + x] = 0.f;
    for (std::int64_t hi = 0; hi < c.nh; ++hi)
      for (std::int64_t r = 0; r < c.nq; ++r) load_q_row(a, c.b, c.h0 + hi, c.i0 + r, qt + hi * c.nq + r, BQ);

    // Keys any query of the unit may see: the union over its heads of the mask's ranges.
    const std::int64_t p0 = c.p0, p1 = c.p0 + c.nq, kv_len = a.kv_len_of(c.b);
    key_ranges ranges;
    for (std::int64_t hi = 0; hi < c.nh; ++hi) ranges.add(policy.keys(c.b, c.h0 + hi, p0, p1, kv_len), kv_len);

    tile_desc td;
    td.b = c.b, td.h0 = c.h0, td.nh = c.nh, td.nq = c.nq, td.p0 = p0;
    const kv_rows krows = kv_rows::of(a, true, c.b, c.kvh);
    // Walks the non-empty tiles and hands each, scored and masked, to on_tile(st, k0, nk).
    // With sample > 1 it only samples: every `sample`-th key of the full tiles (no mask
    // needed there), handed over as on_tile(st, -1, rows); returns the keys of all
    // non-empty tiles and the number sampled.
    struct walk_count {
      std::int64_t keys = 0, sampled = 0;
    };
    auto walk = [&](std::int64_t sample, auto&& on_tile) -> walk_count {
      walk_count n;
      for (int ri = 0; ri < ranges.count; ++ri) {
        for (std::int64_t k0 = ranges.r[ri].begin; k0 < ranges.r[ri].end;) {
          const std::int64_t cell_end = (k0 / bk + 1) * bk;
          const std::int64_t k1 = cell_end < ranges.r[ri].end ? cell_end : ranges.r[ri].end;
          const std::int64_t tk0 = k0, nk = k1 - k0;
          k0 = k1;
          bool any = false, all_full = true;
          for (std::int64_t hi = 0; hi < c.nh; ++hi) {
            const tile_kind t = policy.classify(c.b, c.h0 + hi, p0, p1, tk0, k1);
            any = any || t != tile_kind::empty;
            all_full = all_full && t == tile_kind::full;
          }
          if (!any) continue;
          n.keys += nk;
          if (sample > 1) {
            if (!all_full) continue;
            const std::int64_t first = tk0 + (sample - tk0 % sample) % sample;
            const std::int64_t rows = first < k1 ? (k1 - first + sample - 1) / sample : 0;
            if (rows == 0) continue;
            kernels::qk_block<Arch, NV>(qt, BQ, krows.row<float>(first), sample * krows.seg[0].stride, D, rows, st, BQ);
            if (policy.has_score())
              for (std::int64_t r = 0; r < rows; ++r) {
                td.k0 = first + r * sample;
                td.nk = 1;
                policy.score_tile(td, st + r * BQ, BQ);
              }
            if (a.softcap != 0.f) kernels::softcap_tile<Arch, NV>(st, BQ, rows, a.softcap);
            n.sampled += rows;
            on_tile(st, std::int64_t(-1), rows);
            continue;
          }

          td.k0 = tk0;
          td.nk = nk;
          std::int64_t ldk = 0;
          const float* kt = krows.tile<Arch>(tk0, nk, D, kbuf, D, false, ldk);
          kernels::qk_block<Arch, NV>(qt, BQ, kt, ldk, D, nk, st, BQ);
          if (policy.has_score()) policy.score_tile(td, st, BQ);
          if (a.softcap != 0.f) kernels::softcap_tile<Arch, NV>(st, BQ, nk, a.softcap);
          if (!all_full) policy.mask_tile(td, st, BQ);
          on_tile(st, tk0, nk);
        }
      }
      return n;
    };
    // A consumer may first look at a sample of the keys (top-k estimates its thresholds),
    // and may ask for the walk again after finish() (top-k when an estimate was too high).
    // Sampling reads strided fp32 rows in place: only top-k asks, and it takes only those.
    if (consumer.sample_stride() > 1 && !gathers(a)) {
      const walk_count n = walk(consumer.sample_stride(),
                                [&](float* s, std::int64_t, std::int64_t rows) { consumer.sample(s, rows); });
      consumer.end_sample(n.sampled, n.keys);
    }
    do {
      walk(1, [&](float* s, std::int64_t k0, std::int64_t nk) { consumer.tile(s, k0, nk); });
    } while (!consumer.finish());
  }
};

/// Runs the units of a flash-style problem on OpenMP, the host's executor, or serially.
/// `Runner` is called as runner(unit, scratch) with `floats` floats of 64-byte aligned
/// scratch per thread.
template <class Runner>
void run_units(const dense_args& a, std::int64_t units, std::int64_t floats, const Runner& runner) noexcept {
  if (a.exec.parallel_for) {
    struct ctx_t {
      const Runner* runner;
      std::int64_t floats;
    } ctx{&runner, floats};
    a.exec.parallel_for(
        a.exec.pool, units,
        [](void* p, std::int64_t u) {
          const ctx_t* c = static_cast<const ctx_t*>(p);
          simd::scratch ws(static_cast<std::size_t>(c->floats));
          (*c->runner)(u, ws.get());
        },
        &ctx);
    return;
  }
#ifdef _OPENMP
  int nt = a.num_threads > 0 ? a.num_threads : omp_get_max_threads();
  if (nt > units) nt = int(units);
  if (nt > 1) {
#pragma omp parallel num_threads(nt)
    {
      simd::scratch ws(static_cast<std::size_t>(floats));
#pragma omp for schedule(dynamic, 1)
      for (std::int64_t u = 0; u < units; ++u) runner(u, ws.get());
    }
    return;
  }
#endif
  simd::scratch ws(static_cast<std::size_t>(floats));
  for (std::int64_t u = 0; u < units; ++u) runner(u, ws.get());
}

/// The walker over all units with a given consumer.
template <class Arch, class Consumer, class Policy>
void flash_run(const dense_args& a, const Policy& policy) noexcept {
  if (a.batch == 0 || a.q_heads == 0 || a.q_len == 0) return;
  const dense_plan<Arch> plan(a, policy.tile_hint());
  const unit_runner<Arch, Policy, Consumer> runner{a, policy, plan};
  run_units(a, plan.units, plan.walker_floats(a) + Consumer::scratch_floats(a, plan), runner);
}

}  // namespace detail
}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
