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
//     gets exactly what it gets alone. When the KV heads of a token lie side by side, a
//     work item walks the units of all KV heads over one chunk in lock step (Note [Heads in
//     lock step]);
//   - the micro-kernels put the head dimension in the lanes (Note [Rows in registers] in
//     micro_rows.hpp) and read K/V through kv_rows (fp32 in place, bf16/fp16 widened, pages
//     gathered); rows read in place are read once, whole and in order, in long tiles, so
//     the hardware prefetcher streams them (Note [Rows read once, in order]);
//   - masks work as in the flash driver: only the key ranges the mask reports are visited,
//     so a sliding window reads only the window.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "../dispatch/isa.hpp"
#include "dense.hpp"
#include "kv_rows.hpp"
#include "merge.hpp"
#include "micro_bf16.hpp"
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
  // Keys per tile when the rows are read in place (walk::streaming): the online softmax
  // and the tile's bookkeeping are paid once per tile, and the micro-kernels' working set
  // does not grow with it (Note [Rows read once, in order]). Measured on Zen 4 against 64:
  // 0.72 vs 0.55 x the streaming sum (fp32, 2 threads, synthetic driver).
  static constexpr std::int64_t bk_stream = 256;
  static constexpr std::int64_t bk_max = bk_stream > bk ? bk_stream : bk;
  static constexpr std::int64_t max_ahead = 64;  // rows prefetched past a tile (kernels::ahead)

  static constexpr std::int64_t max_members = 16;

  dense_plan<Arch> rows;  // heads and queries per unit, as in the flash driver
  std::int64_t dp = 0, dvp = 0;   // dims padded to whole vectors
  std::int64_t n_split = 1;  // chunks of the sequence with the most
  std::int64_t groups = 0, units = 0;
  std::int64_t members = 1;  // groups walked in lock step per work item
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
    // Note [Heads in lock step]: when the KV heads of a token lie side by side (vLLM's
    // [pages, page_size, kv_heads, dim], or [batch, seq, kv_heads, dim]), one head's rows
    // are a head-row apart from the next token's: reading a head alone takes a few hundred
    // bytes from each 4 KiB page, which the hardware prefetchers do not stream (and what
    // they fetch past the row is another head's, evicted before its unit runs). So a work
    // item then walks all KV heads of a batch entry (one group each; whole groups only)
    // over the same chunk in lock step, and the micro-kernels take a tile's tokens in order
    // with every member's head of each token (or of each 8-token P.V sub-tile) together
    // (kernels::heads): the pages are read whole, front to back (Note [Rows read once, in
    // order] in micro_rows.hpp). Each group's arithmetic is unchanged, so the output is
    // bitwise the same either way.
    const auto far = [](std::int64_t x) { return x < 0 ? -x : x; };
    if (a.kv_heads > 1 && rows.n_hsub == 1 && rows.n_qblk == 1 && far(a.k_sh) < far(a.k_ss) &&
        far(a.v_sh) < far(a.v_ss))
      for (std::int64_t m = max_members; m > 1; --m)
        if (a.kv_heads % m == 0) {
          members = m;
          break;
        }
    units = groups / members * n_split;
    slot = rows.nh * rows.nq * (a.v_dim + 1);
  }

  /// Keys per chunk of a sequence of `len` keys: up to 32 chunks (work for many cores even
  /// with one KV head), at least 256 keys each so that a chunk's fixed costs stay small, on
  /// the tile grid. Depends on the length only.
  static std::int64_t chunk(std::int64_t len) noexcept {
    const std::int64_t c = ((len + 31) / 32 + bk - 1) / bk * bk;
    return c > 256 ? c : 256;
  }

  /// Floats of the score tile: [bk][BQ] for the queries-in-lanes kernels, up to
  /// [bk_stream][2W] for the dim-in-lanes ones (fewer than two vectors of rows).
  static constexpr std::int64_t st_floats = bk * BQ > bk_stream * 2 * W ? bk * BQ : bk_stream * 2 * W;

  /// Scratch of one group's walk: Q rows [BQ][dp], O rows [BQ][dvp], P.V sums [BQ][dvp],
  /// St, m, l, alpha, and K and V tiles [bk][dp], [bk][dvp] (whole cache lines).
  std::int64_t unit_floats() const noexcept {
    return (BQ * (dp + 2 * dvp + 3) + st_floats + bk * (dp + dvp) + 15) / 16 * 16;
  }
  std::int64_t scratch_floats() const noexcept { return members * unit_floats(); }
};

template <class Arch, class Policy>
struct decode_runner {
  const dense_args& a;
  const Policy& policy;
  const decode_plan<Arch>& plan;
  float* parts;  // [groups][n_split][slot]

  static constexpr int W = decode_plan<Arch>::W;
  static constexpr int BQ = decode_plan<Arch>::BQ;

  unit_coords coords(std::int64_t g) const noexcept { return plan.rows.coords(a, g); }

  // A work item is `plan.members` groups (consecutive group ids) over one chunk, walked in
  // lock step (Note [Heads in lock step]); one group otherwise.
  // Few rows (under two vectors of lanes): dim-in-lanes kernels (micro_rows.hpp) in blocks
  // of RB rows, with a compact score tile up to 4 rows. From two full vectors of rows on,
  // the flash driver's queries-in-lanes kernels use the lanes well and win (RB = 0).
  void operator()(std::int64_t item, float* ws) const noexcept {
    const std::int64_t g0 = item / plan.n_split * plan.members, split = item % plan.n_split;
    const unit_coords c = coords(g0);  // every member has this many rows
    const int rows = int(c.nh * c.nq);
    if (rows == 1)
      run_typed<1, 1>(g0, split, ws);
    else if (rows == 2)
      run_typed<1, 2>(g0, split, ws);
    else if (rows <= W)
      run_typed<1, 4>(g0, split, ws);
    else if (rows < 2 * W)
      run_typed<nv_cap(2), 4>(g0, split, ws);
    else if (rows <= 2 * W)  // the flash kernels read fp32 tiles
      run<nv_cap(2), 0, float>(g0, split, ws);
    else if (rows <= 3 * W)
      run<nv_cap(3), 0, float>(g0, split, ws);
    else
      run<nv_cap(4), 0, float>(g0, split, ws);
  }

  static constexpr int nv_cap(int n) noexcept {
    return n <= dense_plan<Arch>::NVMAX ? n : dense_plan<Arch>::NVMAX;
  }

  // The dim-in-lanes kernels read 16-bit K/V in place, widening in registers.
  template <int NV, int RB>
  void run_typed(std::int64_t g0, std::int64_t split, float* ws) const noexcept {
    switch (a.kv_type) {
      case dtype::bf16: run<NV, RB, bf16>(g0, split, ws); break;
      case dtype::f16: run<NV, RB, fp16>(g0, split, ws); break;
      default: run<NV, RB, float>(g0, split, ws); break;
    }
  }

  template <int NV, int RB, class KV>
  void run(std::int64_t g0, std::int64_t split, float* ws) const noexcept {
    constexpr int cap = decode_plan<Arch>::max_members;
    walk<NV, RB, KV> w[cap];
    const int n = int(plan.members);
    for (int i = 0; i < n; ++i) w[i].begin(*this, g0 + i, split, ws + i * plan.unit_floats());
    // Each step: Q.K^T of every member's tile, then P.V of every member's tile. When every
    // member has the same tile of rows read in place, the kernels take all members' heads
    // together, token by token (Note [Heads in lock step]); the arithmetic of each head is
    // the same either way.
    bool has[cap] = {};
    const kernels::heads one;
    for (bool any = true; any;) {
      any = false;
      bool together = n > 1;
      for (int i = 0; i < n; ++i) {
        has[i] = w[i].next_tile(*this);
        any = any || has[i];
        together = together && has[i] && w[i].stream && w[i].tk0 == w[0].tk0 && w[i].nk == w[0].nk;
      }
      if (together) {
        w[0].qk_keys(*this, kernels::heads{n, plan.unit_floats(), a.k_sh});
      } else {
        for (int i = 0; i < n; ++i)
          if (has[i]) w[i].qk_keys(*this, one);
      }
      for (int i = 0; i < n; ++i)
        if (has[i]) w[i].scores_done(*this);
      if (together) {
        w[0].pv(*this, kernels::heads{n, plan.unit_floats(), a.v_sh});
      } else {
        for (int i = 0; i < n; ++i)
          if (has[i]) w[i].pv(*this, one);
      }
    }
    for (int i = 0; i < n; ++i) w[i].finish(*this);
  }

  // One group's walk over its chunk, a tile per step.
  template <int NV, int RB, class KV>
  struct walk {
    static constexpr bool lanes = RB == 0;  // queries-in-lanes kernels
    unit_coords c;
    float* part = nullptr;
    float *qr = nullptr, *o = nullptr, *acc = nullptr, *st = nullptr, *m = nullptr, *l = nullptr, *alpha = nullptr,
          *kbuf = nullptr, *vbuf = nullptr;
    int rows = 0, rp = 0;
    bool compact = false, packed = false, stream = false;
    // bf16 products (attention_options::bf16_dot, Note [bf16 products] in micro_bf16.hpp):
    // Q and P rounded to bf16; `dot_native`: by vdpbf16ps, with Q as bf16 bits in kbuf.
    bool dot = false, dot_native = false;
    std::int64_t ld_s = 0, p0 = 0, p1 = 0, kv_len = 0, k0 = 0, bk = 0;
    std::int64_t tk0 = 0, nk = 0, after = 0;  // the tile of the current step; keys of its range after it
    bool all_full = true;
    int ri = 0;
    key_ranges ranges;
    kv_rows krows, vrows;

    void begin(const decode_runner& R, std::int64_t g, std::int64_t split, float* ws) noexcept {
      const dense_args& a = R.a;
      c = R.coords(g);
      part = R.parts + (g * R.plan.n_split + split) * R.plan.slot;
      const std::int64_t dp = R.plan.dp, dvp = R.plan.dvp;
      rows = int(c.nh * c.nq);
      rp = lanes ? rows : (rows + RB - 1) / RB * RB;
      // Up to 4 rows: compact score tile St[t][rp] (micro_rows.hpp), else St[t][NV * W]
      // (the queries-in-lanes layout, with only the vectors the rows use).
      compact = !lanes && rp <= 4;
      ld_s = compact ? rp : lanes ? BQ : NV * W;
      qr = ws;                    // [BQ][dp] rows, or Qt [D][BQ]
      o = qr + BQ * dp;           // [BQ][dvp] rows, or Ot [DV][BQ]
      acc = o + BQ * dvp;         // [BQ][dvp] P.V sums of a tile
      st = acc + BQ * dvp;        // [bk][ld_s]
      m = st + decode_plan<Arch>::st_floats;
      l = m + BQ;
      alpha = l + BQ;
      kbuf = alpha + BQ;          // [bk][dp]
      vbuf = kbuf + R.plan.bk * dp;  // [bk][dvp]

      // The chunk's keys any row may see: the mask's ranges clipped to the chunk.
      kv_len = a.kv_len_of(c.b), p0 = c.p0, p1 = c.p0 + c.nq;
      const std::int64_t chunk = decode_plan<Arch>::chunk(kv_len);
      const std::int64_t kb = split * chunk, ke = kb + chunk < kv_len ? kb + chunk : kv_len;
      if (kb < ke)
        for (std::int64_t hi = 0; hi < c.nh; ++hi) {
          const key_ranges r = R.policy.keys(c.b, c.h0 + hi, p0, p1, kv_len);
          for (int i = 0; i < r.count; ++i)
            ranges.add(r.r[i].begin > kb ? r.r[i].begin : kb, r.r[i].end < ke ? r.r[i].end : ke, kv_len);
        }
      ri = 0;
      k0 = ranges.count > 0 ? ranges.r[0].begin : 0;
      krows = kv_rows::of(a, true, c.b, c.kvh);
      vrows = kv_rows::of(a, false, c.b, c.kvh);
      // Rows read in place by whole vectors (the streaming case that decides decode speed)
      // come in long tiles; rows gathered into kbuf/vbuf in tiles of the grid.
      stream = !lanes && a.qk_dim == dp && a.v_dim == dvp && krows.nseg == 1;
      bk = stream ? decode_plan<Arch>::bk_stream : R.plan.bk;
      dot = a.bf16_dot && a.kv_type == dtype::bf16;
#if ATTNKIT_HAS_BF16_DOT
      dot_native = dot && W == 16 && std::is_same<KV, bf16>::value && stream && dp % 32 == 0 && dvp % 32 == 0 &&
                   rp <= kernels::bf16_max_rows && has_avx512_bf16();
#endif
    }

    // bf16 products: Q rounded to bf16 where the kernels read it (and as bits for vdpbf16ps).
    void round_q(const decode_runner& R) noexcept {
      const std::int64_t dp = R.plan.dp, n = lanes ? R.a.qk_dim * BQ : std::int64_t(rp) * dp;
      for (std::int64_t i = 0; i < n; ++i) qr[i] = kernels::bf16_round(qr[i]);
      if (dot_native) {
        auto* qb = reinterpret_cast<std::uint16_t*>(kbuf);
        for (std::int64_t i = 0; i < n; ++i) qb[i] = std::uint16_t(kernels::bf16_round_bits(qr[i]));
      }
    }

    // A step: next_tile() finds the next tile that any row sees (false when none is left),
    // qk_keys() computes its scores, scores_done() applies the score modifiers, the mask
    // and the softmax update, pv() adds P V. In lock step every member computes its scores
    // before any adds P V.
    bool next_tile(const decode_runner& R) noexcept {
      const dense_args& a = R.a;
      const Policy& policy = R.policy;
      const std::int64_t D = a.qk_dim, DV = a.v_dim;
      while (ri < ranges.count) {
        if (k0 >= ranges.r[ri].end) {
          if (++ri < ranges.count) k0 = ranges.r[ri].begin;
          continue;
        }
        const std::int64_t cell_end = (k0 / bk + 1) * bk;
        const std::int64_t k1 = cell_end < ranges.r[ri].end ? cell_end : ranges.r[ri].end;
        tk0 = k0, nk = k1 - k0;
        k0 = k1;
        bool any = false;
        all_full = true;
        for (std::int64_t hi = 0; hi < c.nh; ++hi) {
          const tile_kind t = policy.classify(c.b, c.h0 + hi, p0, p1, tk0, k1);
          any = any || t != tile_kind::empty;
          all_full = all_full && t == tile_kind::full;
        }
        if (!any) continue;
        if (!packed) {  // only units that see a key pay for packing
          R.template pack<lanes>(c, rp, ld_s, bk, qr, o, st, m, l);
          if (dot) round_q(R);
          // bf16 rows read in place come in pair order (Note [bf16 pairs] in simd/convert.hpp)
          if (!lanes && stream && !dot_native && kernels::pair_order<Arch, KV>(R.plan.dp))
            for (int r = 0; r < rp; ++r) kernels::to_pair_order<Arch>(qr + r * R.plan.dp, R.plan.dp);
          packed = true;
        }
        after = ranges.r[ri].end - k1;
        // Gathered tiles are copied before they are read: ask for the next one now.
        const std::int64_t next_n = after < bk ? after : bk;
        if (!stream && next_n > 0) {
          krows.prefetch(k1, next_n, D);
          vrows.prefetch(k1, next_n, DV);
        }
        return true;
      }
      return false;
    }

    // The tile's rows and those the kernels prefetch after it (Note [Prefetch ahead] in
    // micro_rows.hpp), for rows of `row_bytes`.
    kernels::ahead prefetch_plan(std::int64_t row_bytes) const noexcept {
      kernels::ahead pf;
      pf.dist = kernels::ahead::distance(row_bytes);
      pf.n = nk + (after < pf.dist ? after : pf.dist);
      pf.bytes = row_bytes;
      return pf;
    }

    // hs: the heads taken together (only when streaming; else one).
    void qk_keys(const decode_runner& R, const kernels::heads& hs) noexcept {
      const std::int64_t D = R.a.qk_dim, dp = R.plan.dp;
      std::int64_t ldk = 0;
      if constexpr (lanes) {
        const float* kt = krows.tile<Arch>(tk0, nk, D, kbuf, D, false, ldk);
        kernels::qk_block<Arch, NV>(qr, BQ, kt, ldk, D, nk, st, BQ);
      } else {
        const KV* kp[decode_plan<Arch>::bk_max + decode_plan<Arch>::max_ahead];
        if (stream) {  // in place, any storage, pages too
          const kernels::ahead pf = prefetch_plan(dp * std::int64_t(sizeof(KV)));
          krows.row_ptrs<KV>(tk0, pf.n, kp);
#if ATTNKIT_HAS_BF16_DOT
          if constexpr (W == 16 && std::is_same<KV, bf16>::value)
            if (dot_native) {
              kernels::qk_rows_bf16<Arch, RB>(reinterpret_cast<const std::uint16_t*>(kbuf), dp, kp, dp, nk, rp, st,
                                              ld_s, hs, pf);
              return;
            }
#endif
          kernels::qk_rows<Arch, RB>(qr, dp, kp, dp, nk, rp, st, ld_s, hs, pf);
        } else {
          const float* kt = krows.tile<Arch>(tk0, nk, D, kbuf, dp, true, ldk);
          const float* kf[decode_plan<Arch>::bk];
          for (std::int64_t t = 0; t < nk; ++t) kf[t] = kt + t * ldk;
          kernels::qk_rows<Arch, RB>(qr, dp, kf, dp, nk, rp, st, ld_s);
        }
      }
    }

    void scores_done(const decode_runner& R) noexcept {
      const dense_args& a = R.a;
      const Policy& policy = R.policy;
      tile_desc td;
      td.b = c.b, td.h0 = c.h0, td.nh = c.nh, td.nq = c.nq, td.p0 = p0, td.k0 = tk0, td.nk = nk;
      if (policy.has_score()) policy.score_tile(td, st, ld_s);
      if (a.softcap != 0.f) {
        if (compact)
          kernels::softcap_flat<Arch>(st, nk * rp, a.softcap);
        else
          kernels::softcap_tile<Arch, NV>(st, ld_s, nk, a.softcap);
      }
      if (!all_full) policy.mask_tile(td, st, ld_s);
      // Rows read in place: the softmax asks for the V rows that P.V's first prefetches would,
      // [dist, 2 dist) of the tile, so memory keeps streaming while it runs (Note [Prefetch
      // ahead] in micro_rows.hpp).
      kernels::rows_ahead next;
      const char* next_rows[decode_plan<Arch>::max_ahead];
      if (!lanes && stream) {
        const kernels::ahead pf = prefetch_plan(R.plan.dvp * std::int64_t(sizeof(KV)));
        const std::int64_t n = pf.n - pf.dist < pf.dist ? pf.n - pf.dist : pf.dist;
        if (n > 0) {
          const KV* vp[decode_plan<Arch>::max_ahead];
          vrows.row_ptrs<KV>(tk0 + pf.dist, n, vp);
          for (std::int64_t i = 0; i < n; ++i) next_rows[i] = reinterpret_cast<const char*>(vp[i]);
          next.rows = next_rows, next.n = n, next.bytes = pf.bytes;
        }
      }
      if (compact)
        kernels::online_softmax_rows<Arch>(st, nk, rp, m, l, alpha, next);
      else
        kernels::online_softmax<Arch, NV>(st, ld_s, nk, m, l, alpha, next);
      // bf16 products: P.V multiplies bf16 weights (the sums l keep fp32 weights, as GPU
      // flash attention does); the native kernel rounds as it packs them.
      if (dot && !dot_native)
        for (std::int64_t i = 0; i < nk * ld_s; ++i) st[i] = kernels::bf16_round(st[i]);
    }

    // Last part of the step that next_tile() found: O = alpha O + P V over the tile.
    void pv(const decode_runner& R, const kernels::heads& hs) noexcept {
      const dense_args& a = R.a;
      const std::int64_t DV = a.v_dim, dvp = R.plan.dvp;
      std::int64_t ldv = 0;
      if constexpr (lanes) {
        const float* vt = vrows.tile<Arch>(tk0, nk, DV, vbuf, DV, false, ldv);
        kernels::pv_block<Arch, NV>(o, BQ, alpha, st, BQ, vt, ldv, DV, nk);
      } else if (stream) {
        const KV* vp[decode_plan<Arch>::bk_max + decode_plan<Arch>::max_ahead];
        const kernels::ahead pf = prefetch_plan(dvp * std::int64_t(sizeof(KV)));
        vrows.row_ptrs<KV>(tk0, pf.n, vp);
#if ATTNKIT_HAS_BF16_DOT
        if constexpr (W == 16 && std::is_same<KV, bf16>::value)
          if (dot_native) {
            kernels::pv_rows_bf16<Arch>(o, dvp, alpha, st, ld_s, vp, dvp, nk, rp, acc, hs, pf);
            return;
          }
#endif
        kernels::pv_rows<Arch, RB>(o, dvp, alpha, st, ld_s, vp, dvp, nk, rp, acc, hs, pf);
      } else {
        const float* vt = vrows.tile<Arch>(tk0, nk, DV, vbuf, dvp, true, ldv);
        const float* vp[decode_plan<Arch>::bk];
        for (std::int64_t t = 0; t < nk; ++t) vp[t] = vt + t * ldv;
        kernels::pv_rows<Arch, RB>(o, dvp, alpha, st, ld_s, vp, dvp, nk, rp, acc);
      }
    }

    // Partial result per row: output normalised over this chunk, and its lse.
    void finish(const decode_runner& R) const noexcept {
      const std::int64_t DV = R.a.v_dim, dvp = R.plan.dvp;
      for (int r = 0; r < rows; ++r) {
        float* pr = part + r * (DV + 1);
        const bool seen = packed && l[r] > 0.f;
        const float inv = seen ? 1.f / l[r] : 0.f;
        for (std::int64_t j = 0; j < DV; ++j) pr[j] = seen ? (lanes ? o[j * BQ + r] : o[r * dvp + j]) * inv : 0.f;
        pr[DV] = seen ? m[r] + std::log(l[r]) : -std::numeric_limits<float>::infinity();
      }
    }
  };

  // Q scaled: rows zero-padded (rows up to rp, dims up to dp), or transposed Qt [D][BQ]
  // with zero lanes past the rows; O = 0; St ([bk][ld_s]) lanes past the rows stay 0
  // (finite) for the vector softmax; m = -inf, l = 0.
  template <bool lanes>
  void pack(const unit_coords& c, int rp, std::int64_t ld_s, std::int64_t bk, float* qr, float* o, float* st, float* m,
            float* l) const noexcept {
    const std::int64_t D = a.qk_dim, dp = plan.dp, dvp = plan.dvp;
    const std::int64_t nq = lanes ? D * BQ : std::int64_t(rp) * dp, no = lanes ? a.v_dim * BQ : std::int64_t(rp) * dvp;
    for (std::int64_t i = 0; i < nq; ++i) qr[i] = 0.f;
    for (std::int64_t i = 0; i < no; ++i) o[i] = 0.f;
    const std::int64_t used = (rp + W - 1) / W * W;  // lanes the vector softmax reads
    for (std::int64_t t = 0; t < bk; ++t)
      for (std::int64_t x = 0; x < used && x < ld_s; ++x) st[t * ld_s + x] = 0.f;
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
  simd::scratch parts(static_cast<std::size_t>(plan.groups * plan.n_split * plan.slot));
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
