// Dense (flash-style) attention: micro-kernels and the driver.
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
// All query heads of a KV group share the lanes of one block, so each K/V row that is read
// serves every query head of the group (GQA / MQA) and every query of the block.
//
// Assumptions (checked by the public API before dispatch): unit dim stride; q_heads is a
// multiple of kv_heads; non-negative strides; no aliasing between out/lse and inputs.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../core/args.hpp"
#include "../mask/masks.hpp"
#include "../mask/policy.hpp"
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
  B acc[JR][NV];
  {
    B a[NV];
    for (int n = 0; n < NV; ++n) a[n] = B::load_aligned(alpha + n * W);
    for (int j = 0; j < JR; ++j)
      for (int n = 0; n < NV; ++n) acc[j][n] = B::load_aligned(ot + j * ld_o + n * W) * a[n];
  }
  for (std::int64_t kk = 0; kk < nk; ++kk) {
    B pv[NV];
    for (int n = 0; n < NV; ++n) pv[n] = B::load_aligned(p + kk * ld_p + n * W);
    const float* vr = v + kk * v_stride;
    for (int j = 0; j < JR; ++j) {
      const B vb(vr[j]);
      for (int n = 0; n < NV; ++n) acc[j][n] = xsimd::fma(vb, pv[n], acc[j][n]);
    }
  }
  for (int j = 0; j < JR; ++j)
    for (int n = 0; n < NV; ++n) acc[j][n].store_aligned(ot + j * ld_o + n * W);
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

// online_softmax: for keys [0, nk) of St (in place, St becomes P):
//   m_new = max(m, max_k St[k]); base = m_new, or 0 where m_new = -inf (fully masked so far);
//   alpha = exp(m - base); P = exp(St - base); l = alpha * l + sum_k P; m = m_new.
// Note [Minus infinity]: with base = 0 for all-masked lanes, exp(-inf - 0) = 0 and no
// -inf - -inf (NaN) is ever formed; such lanes keep l = 0 and finish as output 0, lse -inf.
template <class Arch, int NV>
inline void online_softmax(float* st, std::int64_t ld_s, std::int64_t nk, float* m, float* l,
                           float* alpha) noexcept {
  using B = simd::vfloat<Arch>;
  constexpr int W = int(B::size);
  const B minus_inf(-std::numeric_limits<float>::infinity());
  B base[NV];
  for (int n = 0; n < NV; ++n) {
    B mx = B::load_aligned(m + n * W);
    for (std::int64_t kk = 0; kk < nk; ++kk) mx = simd::max<Arch>(mx, B::load_aligned(st + kk * ld_s + n * W));
    base[n] = xsimd::select(mx == minus_inf, B(0.f), mx);
    const B a = simd::exp<Arch>(B::load_aligned(m + n * W) - base[n]);
    a.store_aligned(alpha + n * W);
    mx.store_aligned(m + n * W);
  }
  B sum[NV];
  for (int n = 0; n < NV; ++n) sum[n] = B(0.f);
  for (std::int64_t kk = 0; kk < nk; ++kk) {
    for (int n = 0; n < NV; ++n) {
      const B p = simd::exp<Arch>(B::load_aligned(st + kk * ld_s + n * W) - base[n]);
      p.store_aligned(st + kk * ld_s + n * W);
      sum[n] += p;
    }
  }
  for (int n = 0; n < NV; ++n)
    xsimd::fma(B::load_aligned(l + n * W), B::load_aligned(alpha + n * W), sum[n]).store_aligned(l + n * W);
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

}  // namespace kernels

namespace detail {

// ---------------------------------------------------------------------------------------
// The dense driver.
//
// Work unit = (batch, kv head, head sub-group, query block). The lanes of a unit hold
// `nh` query heads of one KV group times `nq` consecutive query rows (lane = hi * nq + r),
// nh * nq <= block lanes. Units are independent, so results do not depend on the thread
// count or the schedule. For each unit the driver walks only the key ranges the mask
// reports (policy.keys), in tiles that follow a fixed grid of `bk` keys (so tiles line up
// with a block mask's blocks), skips empty tiles, and tests pairs only in partial ones.
//
// Policy: a static_policy<Mask> or a mask_ref (mask/policy.hpp).
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
  std::int64_t scratch_floats = 0;

  dense_plan(const dense_args& a, std::int64_t tile_hint) {
    group = a.q_heads / a.kv_heads;
    nh = group < BQ ? group : BQ;
    n_hsub = (group + nh - 1) / nh;
    nq = BQ / nh;
    if (nq > a.q_len) nq = a.q_len > 0 ? a.q_len : 1;
    n_qblk = (a.q_len + nq - 1) / nq;
    bk = a.kv_block > 0 ? a.kv_block : key_tile(tile_hint);
    units = a.batch * a.kv_heads * n_hsub * n_qblk;
    scratch_floats = BQ * (a.qk_dim + bk + a.v_dim + 3);  // Qt, St, Ot, m, l, alpha
  }

  // 128 keys per tile by default. A mask with blocks (tile_hint) gets tiles on its block
  // grid: the block size itself when it is large enough to amortise a tile's softmax
  // bookkeeping, else the largest multiple of it up to 128 keys.
  static std::int64_t key_tile(std::int64_t hint) noexcept {
    if (hint <= 0) return 128;
    if (hint >= 32) return hint <= 512 ? hint : 128;
    return (128 / hint) * hint;
  }
};

template <class Arch, class Policy>
struct dense_unit_runner {
  const dense_args& a;
  const Policy& policy;
  const dense_plan<Arch>& plan;

  static constexpr int W = dense_plan<Arch>::W;
  static constexpr int BQ = dense_plan<Arch>::BQ;

  template <int NV>
  void run(std::int64_t unit, float* ws) const noexcept;

  void operator()(std::int64_t unit, float* ws) const noexcept {
    // Queries in this unit decide how many lane vectors the micro-kernels touch.
    const std::int64_t lanes = lanes_of(unit);
    const int nv = int((lanes + W - 1) / W);
    switch (nv) {
      case 1: run<1>(unit, ws); break;
      case 2: run<nv_cap(2)>(unit, ws); break;
      case 3: run<nv_cap(3)>(unit, ws); break;
      default: run<nv_cap(4)>(unit, ws); break;
    }
  }

  // Only NV <= NVMAX can occur (a unit has at most BQ lanes); the cap keeps the
  // unreachable cases of the switch compilable for narrower register tiles.
  static constexpr int nv_cap(int n) noexcept {
    return n <= dense_plan<Arch>::NVMAX ? n : dense_plan<Arch>::NVMAX;
  }

  struct unit_coords {
    std::int64_t b, kvh, h0, nh, i0, nq;
  };

  unit_coords coords(std::int64_t unit) const noexcept {
    // Heaviest units first for causal-like masks: the query block index runs backwards.
    std::int64_t u = unit;
    const std::int64_t qb = plan.n_qblk - 1 - (u % plan.n_qblk);
    u /= plan.n_qblk;
    const std::int64_t hs = u % plan.n_hsub;
    u /= plan.n_hsub;
    const std::int64_t kvh = u % a.kv_heads;
    const std::int64_t b = u / a.kv_heads;
    unit_coords c;
    c.b = b;
    c.kvh = kvh;
    c.h0 = kvh * plan.group + hs * plan.nh;
    c.nh = plan.group - hs * plan.nh < plan.nh ? plan.group - hs * plan.nh : plan.nh;
    c.i0 = qb * plan.nq;
    c.nq = a.q_len - c.i0 < plan.nq ? a.q_len - c.i0 : plan.nq;
    return c;
  }

  std::int64_t lanes_of(std::int64_t unit) const noexcept {
    const unit_coords c = coords(unit);
    return c.nh * c.nq;
  }
};

template <class Arch, class Policy>
template <int NV>
void dense_unit_runner<Arch, Policy>::run(std::int64_t unit, float* ws) const noexcept {
  const unit_coords c = coords(unit);
  const std::int64_t D = a.qk_dim, DV = a.v_dim, bk = plan.bk;
  const std::int64_t offset = a.kv_len - a.q_len;  // bottom-right alignment
  constexpr float minus_inf = -std::numeric_limits<float>::infinity();

  float* qt = ws;              // [D][BQ]
  float* st = qt + D * BQ;     // [bk][BQ]
  float* ot = st + bk * BQ;    // [DV][BQ]
  float* m = ot + DV * BQ;     // [BQ]
  float* l = m + BQ;           // [BQ]
  float* alpha = l + BQ;       // [BQ]

  // Pack Q transposed and scaled; padded lanes are zero (finite scores, never stored).
  for (std::int64_t d = 0; d < D; ++d)
    for (int x = 0; x < NV * W; ++x) qt[d * BQ + x] = 0.f;
  for (std::int64_t hi = 0; hi < c.nh; ++hi) {
    const float* qh = a.q + c.b * a.q_sb + (c.h0 + hi) * a.q_sh;
    for (std::int64_t r = 0; r < c.nq; ++r) {
      const float* qrow = qh + (c.i0 + r) * a.q_ss;
      const std::int64_t lane = hi * c.nq + r;
      for (std::int64_t d = 0; d < D; ++d) qt[d * BQ + lane] = qrow[d] * a.scale;
    }
  }
  for (std::int64_t j = 0; j < DV; ++j)
    for (int x = 0; x < NV * W; ++x) ot[j * BQ + x] = 0.f;
  for (int x = 0; x < NV * W; ++x) {
    m[x] = minus_inf;
    l[x] = 0.f;
  }

  // Keys any query of the unit may see: the union over its heads of the mask's ranges.
  const std::int64_t p0 = c.i0 + offset, p1 = c.i0 + c.nq + offset;
  key_ranges ranges;
  for (std::int64_t hi = 0; hi < c.nh; ++hi) ranges.add(policy.keys(c.b, c.h0 + hi, p0, p1, a.kv_len), a.kv_len);

  tile_desc td;
  td.b = c.b, td.h0 = c.h0, td.nh = c.nh, td.nq = c.nq, td.p0 = p0;
  const float* kbase = a.k + c.b * a.k_sb + c.kvh * a.k_sh;
  const float* vbase = a.v + c.b * a.v_sb + c.kvh * a.v_sh;
  for (int ri = 0; ri < ranges.count; ++ri) {
    for (std::int64_t k0 = ranges.r[ri].begin; k0 < ranges.r[ri].end;) {
      const std::int64_t cell_end = (k0 / bk + 1) * bk;
      const std::int64_t k1 = cell_end < ranges.r[ri].end ? cell_end : ranges.r[ri].end;
      const std::int64_t nk = k1 - k0;
      const std::int64_t tile_k0 = k0;
      k0 = k1;
      bool any = false, all_full = true;
      for (std::int64_t hi = 0; hi < c.nh; ++hi) {
        const tile_kind t = policy.classify(c.b, c.h0 + hi, p0, p1, tile_k0, k1);
        any = any || t != tile_kind::empty;
        all_full = all_full && t == tile_kind::full;
      }
      if (!any) continue;

      td.k0 = tile_k0;
      td.nk = nk;
      kernels::qk_block<Arch, NV>(qt, BQ, kbase + tile_k0 * a.k_ss, a.k_ss, D, nk, st, BQ);
      if (policy.has_score()) policy.score_tile(td, st, BQ);
      if (a.softcap != 0.f) kernels::softcap_tile<Arch, NV>(st, BQ, nk, a.softcap);
      if (!all_full) policy.mask_tile(td, st, BQ);
      kernels::online_softmax<Arch, NV>(st, BQ, nk, m, l, alpha);
      kernels::pv_block<Arch, NV>(ot, BQ, alpha, st, BQ, vbase + tile_k0 * a.v_ss, a.v_ss, DV, nk);
    }
  }

  // Epilogue: fold in the learned sink logit (an extra softmax term with no value), then
  // normalise and write out and lse. Fully-masked lanes (l = 0) give 0 and -inf (or the
  // sink logit as lse, since the sink then holds all the mass).
  for (std::int64_t hi = 0; hi < c.nh; ++hi) {
    const std::int64_t h = c.h0 + hi;
    float* oh = a.out + c.b * a.o_sb + h * a.o_sh;
    for (std::int64_t r = 0; r < c.nq; ++r) {
      const std::int64_t lane = hi * c.nq + r;
      float mx = m[lane], sum = l[lane], keep = 1.f;
      if (a.sinks) {
        const float s = a.sinks[h];
        const float mf = (sum > 0.f && mx > s) ? mx : s;
        keep = sum > 0.f ? std::exp(mx - mf) : 0.f;
        sum = sum * keep + std::exp(s - mf);
        mx = mf;
      }
      const float inv = l[lane] > 0.f ? keep / sum : 0.f;
      float* orow = oh + (c.i0 + r) * a.o_ss;
      for (std::int64_t j = 0; j < DV; ++j) orow[j] = ot[j * BQ + lane] * inv;
      if (a.lse) a.lse[c.b * a.l_sb + h * a.l_sh + (c.i0 + r) * a.l_ss] = sum > 0.f ? mx + std::log(sum) : minus_inf;
    }
  }
}

/// Runs dense attention for any policy (static_policy<Mask> or mask_ref).
template <class Arch, class Policy>
void dense_run(const dense_args& a, const Policy& policy) noexcept {
  if (a.batch == 0 || a.q_heads == 0 || a.q_len == 0) return;
  const dense_plan<Arch> plan(a, policy.tile_hint());
  const dense_unit_runner<Arch, Policy> runner{a, policy, plan};

  if (a.exec.parallel_for) {
    struct ctx_t {
      const dense_unit_runner<Arch, Policy>* runner;
      std::int64_t floats;
    } ctx{&runner, plan.scratch_floats};
    a.exec.parallel_for(
        a.exec.pool, plan.units,
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
  if (nt > plan.units) nt = int(plan.units);
  if (nt > 1) {
#pragma omp parallel num_threads(nt)
    {
      simd::scratch ws(static_cast<std::size_t>(plan.scratch_floats));
#pragma omp for schedule(dynamic, 1)
      for (std::int64_t u = 0; u < plan.units; ++u) runner(u, ws.get());
    }
    return;
  }
#endif
  simd::scratch ws(static_cast<std::size_t>(plan.scratch_floats));
  for (std::int64_t u = 0; u < plan.units; ++u) runner(u, ws.get());
}

/// Dense attention with a mask (or a mask_ref from the runtime-dispatch entry).
template <class Arch, class Mask>
void dense_forward(const dense_args& a, const Mask& mask) noexcept {
  dense_run<Arch>(a, policy_of(mask));
}

}  // namespace detail
}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
