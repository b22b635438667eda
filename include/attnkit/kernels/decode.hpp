// The decode driver: short queries (Lq <= decode_max_q) against a long KV cache.
//
// Decode is a stream over the cache: the time is the time to read K and V once. So
//   - a unit holds every query row of a KV group (all its query heads times all Lq queries,
//     when they fit the lanes, as in the flash driver), so each K/V row is read once per step
//     for all of them;
//   - each sequence's keys are split into chunks that depend on its length only; units are
//     (batch, kv head, head sub-group, query block, chunk), processed in any order on any
//     number of threads, each writing a partial result (output normalised over its chunk,
//     and lse); a second pass merges the partials in chunk order (merge.hpp). So the output
//     is bitwise identical for any thread count, and a sequence of a ragged (paged) batch
//     gets exactly what it gets alone;
//   - the micro-kernels put the head dimension in the lanes (Note [Rows in registers] in
//     micro_rows.hpp) and read K/V through kv_rows (fp32 in place, bf16/fp16 widened, pages
//     gathered);
//   - masks work as in the flash driver: only the key ranges the mask reports are visited,
//     so a sliding window reads only the window.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "dense.hpp"
#include "kv_rows.hpp"
#include "merge.hpp"
#include "micro_rows.hpp"

namespace attnkit {
inline namespace ATTNKIT_ISA_NS {
namespace detail {

/// attention() takes the decode path for Lq up to this many query rows.
constexpr std::int64_t decode_max_q = 16;

template <class Arch>
struct decode_plan {
  static constexpr int W = dense_plan<Arch>::W;
  static constexpr int BQ = dense_plan<Arch>::BQ;
  static constexpr std::int64_t bk = 64;  // keys per tile (the grid)

  dense_plan<Arch> rows;  // heads and queries per unit, as in the flash driver
  std::int64_t dp = 0, dvp = 0;   // dims padded to whole vectors
  std::int64_t n_split = 1;  // chunks of the sequence with the most
  std::int64_t groups = 0, units = 0;
  std::int64_t slot = 0;  // floats of one unit's partial result: rows x (v_dim + 1)

  explicit decode_plan(const dense_args& a) : rows(a, 0) {
    dp = (a.qk_dim + W - 1) / W * W;
    dvp = (a.v_dim + W - 1) / W * W;
    groups = a.batch * a.kv_heads * rows.n_hsub * rows.n_qblk;
    n_split = 1;
    for (std::int64_t b = 0; b < (a.seq_lens ? a.batch : 1); ++b) {
      const std::int64_t len = a.kv_len_of(b), n = (len + chunk(len) - 1) / chunk(len);
      n_split = n > n_split ? n : n_split;
    }
    units = groups * n_split;
    slot = rows.nh * rows.nq * (a.v_dim + 1);
  }

  /// Keys per chunk of a sequence of `len` keys: up to 32 chunks (work for many cores even
  /// with one KV head), at least 256 keys each so that a chunk's fixed costs stay small, on
  /// the tile grid. Depends on the length only.
  static std::int64_t chunk(std::int64_t len) noexcept {
    const std::int64_t c = ((len + 31) / 32 + bk - 1) / bk * bk;
    return c > 256 ? c : 256;
  }

  /// Per-thread scratch: Q rows [BQ][dp], O rows [BQ][dvp], St [bk][BQ], m, l, alpha, and
  /// K and V tiles [bk][dp], [bk][dvp].
  std::int64_t scratch_floats() const noexcept { return BQ * (dp + dvp + bk + 3) + bk * (dp + dvp); }
};

template <class Arch, class Policy>
struct decode_runner {
  const dense_args& a;
  const Policy& policy;
  const decode_plan<Arch>& plan;
  float* parts;  // [units][slot]

  static constexpr int W = decode_plan<Arch>::W;
  static constexpr int BQ = decode_plan<Arch>::BQ;

  unit_coords coords(std::int64_t g) const noexcept {
    const dense_plan<Arch>& p = plan.rows;
    const std::int64_t qb = g % p.n_qblk;
    g /= p.n_qblk;
    const std::int64_t hs = g % p.n_hsub;
    g /= p.n_hsub;
    unit_coords c;
    c.kvh = g % a.kv_heads;
    c.b = g / a.kv_heads;
    c.h0 = c.kvh * p.group + hs * p.nh;
    c.nh = p.group - hs * p.nh < p.nh ? p.group - hs * p.nh : p.nh;
    c.i0 = qb * p.nq;
    c.nq = a.q_len - c.i0 < p.nq ? a.q_len - c.i0 : p.nq;
    c.p0 = c.i0 + a.kv_len_of(c.b) - a.q_len;
    return c;
  }

  // Few rows (under two vectors of lanes): dim-in-lanes kernels (micro_rows.hpp) in blocks
  // of RB rows, with a compact score tile up to 4 rows. From two full vectors of rows on,
  // the flash driver's queries-in-lanes kernels use the lanes well and win (RB = 0).
  void operator()(std::int64_t unit, float* ws) const noexcept {
    const unit_coords c = coords(unit / plan.n_split);
    const std::int64_t split = unit % plan.n_split;
    float* part = parts + unit * plan.slot;
    const int rows = int(c.nh * c.nq);
    if (rows == 1)
      run_typed<1, 1>(c, split, ws, part);
    else if (rows == 2)
      run_typed<1, 2>(c, split, ws, part);
    else if (rows <= W)
      run_typed<1, 4>(c, split, ws, part);
    else if (rows < 2 * W)
      run_typed<nv_cap(2), 4>(c, split, ws, part);
    else if (rows <= 2 * W)  // the flash kernels read fp32 tiles
      run<nv_cap(2), 0, float>(c, split, ws, part);
    else if (rows <= 3 * W)
      run<nv_cap(3), 0, float>(c, split, ws, part);
    else
      run<nv_cap(4), 0, float>(c, split, ws, part);
  }

  static constexpr int nv_cap(int n) noexcept {
    return n <= dense_plan<Arch>::NVMAX ? n : dense_plan<Arch>::NVMAX;
  }

  // The dim-in-lanes kernels read 16-bit K/V in place, widening in registers.
  template <int NV, int RB>
  void run_typed(const unit_coords& c, std::int64_t split, float* ws, float* part) const noexcept {
    switch (a.kv_type) {
      case dtype::bf16: run<NV, RB, bf16>(c, split, ws, part); break;
      case dtype::f16: run<NV, RB, fp16>(c, split, ws, part); break;
      default: run<NV, RB, float>(c, split, ws, part); break;
    }
  }

  template <int NV, int RB, class KV>
  void run(const unit_coords& c, std::int64_t split, float* ws, float* part) const noexcept {
    constexpr float minus_inf = -std::numeric_limits<float>::infinity();
    const std::int64_t D = a.qk_dim, DV = a.v_dim, dp = plan.dp, dvp = plan.dvp, bk = plan.bk;
    constexpr bool lanes = RB == 0;  // queries-in-lanes kernels
    const int rows = int(c.nh * c.nq);
    const int rp = lanes ? rows : (rows + RB - 1) / RB * RB;
    // Up to 4 rows: compact score tile St[t][rp] (micro_rows.hpp), else St[t][BQ].
    const bool compact = !lanes && rp <= 4;
    const std::int64_t ld_s = compact ? rp : BQ;
    float* qr = ws;              // [BQ][dp] rows, or Qt [D][BQ]
    float* o = qr + BQ * dp;     // [BQ][dvp] rows, or Ot [DV][BQ]
    float* st = o + BQ * dvp;    // [bk][BQ]
    float* m = st + bk * BQ;
    float* l = m + BQ;
    float* alpha = l + BQ;
    float* kbuf = alpha + BQ;    // [bk][dp]
    float* vbuf = kbuf + bk * dp;  // [bk][dvp]

    // The chunk's keys any row may see: the mask's ranges clipped to the chunk.
    const std::int64_t kv_len = a.kv_len_of(c.b), p0 = c.p0, p1 = c.p0 + c.nq;
    const std::int64_t chunk = decode_plan<Arch>::chunk(kv_len);
    const std::int64_t kb = split * chunk, ke = kb + chunk < kv_len ? kb + chunk : kv_len;
    key_ranges ranges;
    if (kb < ke)
      for (std::int64_t hi = 0; hi < c.nh; ++hi) {
        const key_ranges r = policy.keys(c.b, c.h0 + hi, p0, p1, kv_len);
        for (int i = 0; i < r.count; ++i)
          ranges.add(r.r[i].begin > kb ? r.r[i].begin : kb, r.r[i].end < ke ? r.r[i].end : ke, kv_len);
      }

    bool packed = false;
    tile_desc td;
    td.b = c.b, td.h0 = c.h0, td.nh = c.nh, td.nq = c.nq, td.p0 = p0;
    const kv_rows krows = kv_rows::of(a, true, c.b, c.kvh), vrows = kv_rows::of(a, false, c.b, c.kvh);
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
        if (!packed) {  // only units that see a key pay for packing
          pack<lanes>(c, rp, qr, o, st, m, l);
          packed = true;
        }
        // The next tile of this range is fetched while this one computes: spread over the
        // dim-in-lanes kernels' steps when they read rows in place (the streaming case that
        // decides decode speed), else asked for up front.
        const std::int64_t nn = ranges.r[ri].end - k1 < bk ? ranges.r[ri].end - k1 : bk;
        const bool spread = !lanes && D == dp && DV == dvp && krows.nseg == 1;
        const std::int64_t elem = a.kv_type == dtype::f32 ? 4 : 2;
        const void* next_k[bk];
        const void* next_v[bk];
        kernels::prefetch_rows pk, pv;
        if (nn > 0 && spread) {
          krows.row_addrs(k1, nn, next_k);
          vrows.row_addrs(k1, nn, next_v);
          pk = kernels::prefetch_rows{next_k, nn, D * elem};
          pv = kernels::prefetch_rows{next_v, nn, DV * elem};
        } else if (nn > 0) {
          krows.prefetch(k1, nn, D);
          vrows.prefetch(k1, nn, DV);
        }
        std::int64_t ldk = 0, ldv = 0;
        if constexpr (lanes) {
          const float* kt = krows.tile<Arch>(tk0, nk, D, kbuf, D, false, ldk);
          kernels::qk_block<Arch, NV>(qr, BQ, kt, ldk, D, nk, st, BQ);
        } else {
          // Rows are read in place (any storage, pages too) when whole vectors fit them.
          if (D == dp && krows.nseg == 1) {
            const KV* kp[bk];
            krows.row_ptrs<KV>(tk0, nk, kp);
            for (int r0 = 0; r0 < rp; r0 += RB)
              kernels::qk_rows<Arch, RB>(qr + r0 * dp, dp, kp, dp, nk, st + r0, ld_s, r0 == 0 ? pk : kernels::prefetch_rows{});
          } else {
            const float* kt = krows.tile<Arch>(tk0, nk, D, kbuf, dp, true, ldk);
            const float* kp[bk];
            for (std::int64_t t = 0; t < nk; ++t) kp[t] = kt + t * ldk;
            for (int r0 = 0; r0 < rp; r0 += RB) kernels::qk_rows<Arch, RB>(qr + r0 * dp, dp, kp, dp, nk, st + r0, ld_s);
          }
        }
        td.k0 = tk0;
        td.nk = nk;
        if (policy.has_score()) policy.score_tile(td, st, ld_s);
        if (a.softcap != 0.f) {
          if (compact)
            kernels::softcap_flat<Arch>(st, nk * rp, a.softcap);
          else
            kernels::softcap_tile<Arch, NV>(st, BQ, nk, a.softcap);
        }
        if (!all_full) policy.mask_tile(td, st, ld_s);
        if (compact)
          kernels::online_softmax_rows<Arch>(st, nk, rp, m, l, alpha);
        else
          kernels::online_softmax<Arch, NV>(st, BQ, nk, m, l, alpha);
        if constexpr (lanes) {
          const float* vt = vrows.tile<Arch>(tk0, nk, DV, vbuf, DV, false, ldv);
          kernels::pv_block<Arch, NV>(o, BQ, alpha, st, BQ, vt, ldv, DV, nk);
        } else {
          auto pv_all = [&](const auto* const* vp) {
            for (int r0 = 0; r0 < rp; r0 += RB)
              kernels::pv_rows<Arch, RB>(o + r0 * dvp, dvp, alpha + r0, st + r0, ld_s, vp, dvp, nk,
                                         r0 == 0 ? pv : kernels::prefetch_rows{});
          };
          if (DV == dvp) {
            const KV* vp[bk];
            vrows.row_ptrs<KV>(tk0, nk, vp);
            pv_all(vp);
          } else {
            const float* vt = vrows.tile<Arch>(tk0, nk, DV, vbuf, dvp, true, ldv);
            const float* vp[bk];
            for (std::int64_t t = 0; t < nk; ++t) vp[t] = vt + t * ldv;
            pv_all(vp);
          }
        }
      }
    }

    // Partial result per row: output normalised over this chunk, and its lse.
    for (int r = 0; r < rows; ++r) {
      float* pr = part + r * (DV + 1);
      const bool seen = packed && l[r] > 0.f;
      const float inv = seen ? 1.f / l[r] : 0.f;
      for (std::int64_t j = 0; j < DV; ++j) pr[j] = seen ? (lanes ? o[j * BQ + r] : o[r * dvp + j]) * inv : 0.f;
      pr[DV] = seen ? m[r] + std::log(l[r]) : minus_inf;
    }
  }

  // Q scaled: rows zero-padded (rows up to rp, dims up to dp), or transposed Qt [D][BQ]
  // with zero lanes past the rows; O = 0; St lanes past the rows stay 0 (finite) for the
  // vector softmax; m = -inf, l = 0.
  template <bool lanes>
  void pack(const unit_coords& c, int rp, float* qr, float* o, float* st, float* m, float* l) const noexcept {
    const std::int64_t D = a.qk_dim, dp = plan.dp, dvp = plan.dvp;
    const std::int64_t nq = lanes ? D * BQ : std::int64_t(rp) * dp, no = lanes ? a.v_dim * BQ : std::int64_t(rp) * dvp;
    for (std::int64_t i = 0; i < nq; ++i) qr[i] = 0.f;
    for (std::int64_t i = 0; i < no; ++i) o[i] = 0.f;
    const std::int64_t used = (rp + W - 1) / W * W;  // lanes the vector softmax reads
    for (std::int64_t t = 0; t < plan.bk; ++t)
      for (std::int64_t x = 0; x < used; ++x) st[t * BQ + x] = 0.f;
    for (int x = 0; x < BQ; ++x) {
      m[x] = -std::numeric_limits<float>::infinity();
      l[x] = 0.f;
    }
    for (std::int64_t hi = 0; hi < c.nh; ++hi)
      for (std::int64_t r = 0; r < c.nq; ++r) {
        const std::int64_t row = hi * c.nq + r;
        load_q_row(a, c.b, c.h0 + hi, c.i0 + r, lanes ? qr + row : qr + row * dp, lanes ? BQ : 1);
      }
  }

  // Merges the chunks of group g, row by row, into out and lse (sink logits join here).
  void merge(std::int64_t g) const noexcept {
    const unit_coords c = coords(g);
    const std::int64_t DV = a.v_dim;
    const float* first = parts + g * plan.n_split * plan.slot;
    for (std::int64_t hi = 0; hi < c.nh; ++hi) {
      const std::int64_t h = c.h0 + hi;
      for (std::int64_t r = 0; r < c.nq; ++r) {
        const float* row0 = first + (hi * c.nq + r) * (DV + 1);
        auto out_of = [&](std::int64_t s) { return row0 + s * plan.slot; };
        auto lse_of = [&](std::int64_t s) { return row0[s * plan.slot + DV]; };
        float* orow = a.out + c.b * a.o_sb + h * a.o_sh + (c.i0 + r) * a.o_ss;
        const float lse = merge_row(plan.n_split, lse_of, out_of, a.sinks ? a.sinks + h : nullptr, orow, DV);
        if (a.lse) a.lse[c.b * a.l_sb + h * a.l_sh + (c.i0 + r) * a.l_ss] = lse;
      }
    }
  }
};

template <class Arch, class Policy>
void decode_run(const dense_args& a, const Policy& policy) noexcept {
  if (a.batch == 0 || a.q_heads == 0 || a.q_len == 0) return;
  const decode_plan<Arch> plan(a);
  simd::scratch parts(static_cast<std::size_t>(plan.units * plan.slot));
  const decode_runner<Arch, Policy> runner{a, policy, plan, parts.get()};
  run_units(a, plan.units, plan.scratch_floats(), runner);
  run_units(a, plan.groups, 0, [&](std::int64_t g, float*) { runner.merge(g); });
}

/// Dense attention with a mask (or a mask_ref from the runtime-dispatch entry): the decode
/// driver for short queries, the flash driver otherwise.
template <class Arch, class Mask>
void dense_forward(const dense_args& a, const Mask& mask) noexcept {
  if (a.q_len <= decode_max_q)
    decode_run<Arch>(a, policy_of(mask));
  else
    flash_run<Arch, dense_consumer>(a, policy_of(mask));
}

}  // namespace detail
}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
