// Block top-k attention (MoBA): gated selection of key blocks, causal.
//
// Keys are split into blocks of `block` keys by absolute position. A query at position p
// (current block c = p / block) scores every fully past block j < c by q . mean(K_j), keeps
// the `topk_blocks` best (ties to the lower block), and attends causally to its own block
// plus the selected ones.
//
// Different queries select different blocks, so lanes cannot simply hold consecutive
// queries (their union of blocks would approach causal attention). The driver works per
// (batch, query head) and per key block instead: the queries that selected block j are
// gathered into lanes and attend to all of block j; the queries of block c then attend
// causally within c. Each query's online-softmax state (running max, sum and output row)
// lives in the output row itself plus two floats, and is gathered into lanes and scattered
// back around each block. So the work is exactly the selected pairs, plus
// O(Lq * topk_blocks) selection lists and O(Lq) state per thread.
//
// Assumptions: as for dense attention (validated by the public API); block >= 1,
// topk_blocks >= 0.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "dense.hpp"
#include "micro.hpp"

namespace attnkit {
inline namespace ATTNKIT_ISA_NS {
namespace detail {

template <class Arch>
struct block_topk_driver {
  static constexpr int W = simd::tile_config<Arch>::lanes;
  static constexpr int NV = simd::tile_config<Arch>::nv;
  static constexpr int BQ = W * NV;
  static constexpr std::int64_t BK = 128;  // keys per tile inside a block

  const dense_args& a;
  std::int64_t block, topk, n_full;  // n_full: complete key blocks
  const float* kbar;                 // [batch][kv_heads][n_full][qk_dim] mean-pooled keys

  // Scratch of one (batch, head) task, in floats.
  std::int64_t scratch_floats() const noexcept {
    const std::int64_t nb = n_full + 1;
    return BQ * (a.qk_dim + BK + a.v_dim + 3)  // Qt, St, Ot, m, l, alpha of a lane group
           + 2 * a.q_len                        // running max and sum per query
           + a.q_len * topk                     // selected blocks per query (as int32 bits)
           + 2 * nb + 1                         // list offsets and fill pointers per block
           + a.q_len * topk + BQ                // queries per block, lane -> query map
           + topk;                              // gate scores of one query's selection
  }

  // One lane group: `n` queries (rows[x]) attend to keys [k0, k1) of kv head kvh, masked
  // causally when `causal`; their state is gathered from / scattered to (out, m, l).
  void attend(std::int64_t b, std::int64_t h, const std::int32_t* rows, int n, std::int64_t k0, std::int64_t k1,
              bool causal, float* qt, float* st, float* ot, float* lm, float* ll, float* alpha, float* qm,
              float* ql) const noexcept {
    constexpr float minus_inf = -std::numeric_limits<float>::infinity();
    const std::int64_t D = a.qk_dim, DV = a.v_dim, kvh = h / (a.q_heads / a.kv_heads);
    const std::int64_t offset = a.kv_len - a.q_len;
    float* orow0 = a.out + b * a.o_sb + h * a.o_sh;
    for (std::int64_t d = 0; d < D; ++d)
      for (int x = 0; x < BQ; ++x) qt[d * BQ + x] = 0.f;
    for (int x = 0; x < BQ; ++x) {
      lm[x] = x < n ? qm[rows[x]] : minus_inf;
      ll[x] = x < n ? ql[rows[x]] : 0.f;
    }
    for (int x = 0; x < n; ++x) {
      const float* qrow = a.q + b * a.q_sb + h * a.q_sh + rows[x] * a.q_ss;
      for (std::int64_t d = 0; d < D; ++d) qt[d * BQ + x] = qrow[d] * a.scale;
      const float* orow = orow0 + rows[x] * a.o_ss;
      for (std::int64_t j = 0; j < DV; ++j) ot[j * BQ + x] = orow[j];
    }
    for (std::int64_t j = 0; j < DV; ++j)
      for (int x = n; x < BQ; ++x) ot[j * BQ + x] = 0.f;

    const float* kbase = a.k_as<float>() + b * a.k_sb + kvh * a.k_sh;
    const float* vbase = a.v_as<float>() + b * a.v_sb + kvh * a.v_sh;
    for (std::int64_t t0 = k0; t0 < k1; t0 += BK) {
      const std::int64_t nk = t0 + BK < k1 ? BK : k1 - t0;
      kernels::qk_block<Arch, NV>(qt, BQ, kbase + t0 * a.k_ss, a.k_ss, D, nk, st, BQ);
      if (a.softcap != 0.f) kernels::softcap_tile<Arch, NV>(st, BQ, nk, a.softcap);
      if (causal)
        for (std::int64_t kk = 0; kk < nk; ++kk)
          for (int x = 0; x < n; ++x)
            if (t0 + kk > rows[x] + offset) st[kk * BQ + x] = minus_inf;
      kernels::online_softmax<Arch, NV>(st, BQ, nk, lm, ll, alpha);
      kernels::pv_block<Arch, NV>(ot, BQ, alpha, st, BQ, vbase + t0 * a.v_ss, a.v_ss, DV, nk);
    }

    for (int x = 0; x < n; ++x) {
      qm[rows[x]] = lm[x];
      ql[rows[x]] = ll[x];
      float* orow = orow0 + rows[x] * a.o_ss;
      for (std::int64_t j = 0; j < DV; ++j) orow[j] = ot[j * BQ + x];
    }
  }

  void operator()(std::int64_t task, float* ws) const noexcept {
    constexpr float minus_inf = -std::numeric_limits<float>::infinity();
    const std::int64_t b = task / a.q_heads, h = task % a.q_heads;
    const std::int64_t kvh = h / (a.q_heads / a.kv_heads);
    const std::int64_t D = a.qk_dim, DV = a.v_dim, Lq = a.q_len, offset = a.kv_len - a.q_len;
    const std::int64_t nb = n_full + 1;

    float* qt = ws;
    float* st = qt + BQ * D;
    float* ot = st + BQ * BK;
    float* lm = ot + BQ * DV;
    float* ll = lm + BQ;
    float* alpha = ll + BQ;
    float* qm = alpha + BQ;  // [Lq]
    float* ql = qm + Lq;     // [Lq]
    std::int32_t* sel = reinterpret_cast<std::int32_t*>(ql + Lq);  // [Lq][topk], -1 = none
    std::int32_t* start = sel + Lq * topk;                          // [nb + 1]
    std::int32_t* fill = start + nb + 1;                            // [nb]
    std::int32_t* list = fill + nb;                                 // [Lq * topk]
    std::int32_t* rows = list + Lq * topk;                          // [BQ]
    float* best = reinterpret_cast<float*>(rows + BQ);              // [topk]

    // Gate and select: per query, the topk_blocks best fully past blocks.
    const float* kb = kbar + (b * a.kv_heads + kvh) * n_full * D;
    for (std::int64_t i = 0; i < Lq; ++i) {
      std::int32_t* s = sel + i * topk;
      for (std::int64_t t = 0; t < topk; ++t) s[t] = -1;
      const std::int64_t p = i + offset;
      if (p < 0 || topk == 0) continue;
      const std::int64_t c = p / block;
      const std::int64_t past = c < n_full ? c : n_full;
      const float* qrow = a.q + b * a.q_sb + h * a.q_sh + i * a.q_ss;
      std::int64_t count = 0;
      for (std::int64_t j = 0; j < past; ++j) {
        const float g = kernels::dot<Arch>(qrow, kb + j * D, D);
        // insertion into the sorted (descending) selection; ties keep the lower block first
        if (count == topk && !(g > best[topk - 1])) continue;
        std::int64_t pos = count < topk ? count++ : topk - 1;
        while (pos > 0 && g > best[pos - 1]) {
          best[pos] = best[pos - 1];
          s[pos] = s[pos - 1];
          --pos;
        }
        best[pos] = g;
        s[pos] = std::int32_t(j);
      }
    }

    // Queries per selected block (counting sort keeps query order within a block).
    for (std::int64_t j = 0; j <= nb; ++j) start[j] = 0;
    for (std::int64_t e = 0; e < Lq * topk; ++e)
      if (sel[e] >= 0) ++start[sel[e] + 1];
    for (std::int64_t j = 0; j < nb; ++j) start[j + 1] += start[j];
    for (std::int64_t j = 0; j < nb; ++j) fill[j] = start[j];
    for (std::int64_t i = 0; i < Lq; ++i)
      for (std::int64_t t = 0; t < topk; ++t)
        if (sel[i * topk + t] >= 0) list[fill[sel[i * topk + t]]++] = std::int32_t(i);

    // State: output rows accumulate unnormalised, with running max and sum per query.
    for (std::int64_t i = 0; i < Lq; ++i) {
      qm[i] = minus_inf;
      ql[i] = 0.f;
      float* orow = a.out + b * a.o_sb + h * a.o_sh + i * a.o_ss;
      for (std::int64_t j = 0; j < DV; ++j) orow[j] = 0.f;
    }

    // Selected past blocks, in block order: whole blocks, no mask.
    for (std::int64_t j = 0; j < n_full; ++j)
      for (std::int32_t e = start[j]; e < start[j + 1]; e += BQ) {
        const int n = int(start[j + 1] - e < BQ ? start[j + 1] - e : BQ);
        attend(b, h, list + e, n, j * block, (j + 1) * block, false, qt, st, ot, lm, ll, alpha, qm, ql);
      }

    // Own blocks, causally: consecutive queries of one block share a lane group.
    std::int64_t i = offset < 0 ? -offset : 0;
    while (i < Lq) {
      const std::int64_t c = (i + offset) / block;
      std::int64_t e = i;
      while (e < Lq && e - i < BQ && (e + offset) / block == c) ++e;
      for (std::int64_t x = i; x < e; ++x) rows[x - i] = std::int32_t(x);
      const std::int64_t k1 = e - 1 + offset + 1;
      attend(b, h, rows, int(e - i), c * block, k1, true, qt, st, ot, lm, ll, alpha, qm, ql);
      i = e;
    }

    // Normalise; fully-masked rows (p < 0) stay 0 with lse -inf; sink logits fold in.
    for (std::int64_t r = 0; r < Lq; ++r) {
      float mx = qm[r], sum = ql[r], keep = 1.f;
      if (a.sinks) fold_sink(a.sinks[h], mx, sum, keep);
      const float inv = ql[r] > 0.f ? keep / sum : 0.f;
      float* orow = a.out + b * a.o_sb + h * a.o_sh + r * a.o_ss;
      for (std::int64_t j = 0; j < DV; ++j) orow[j] *= inv;
      if (a.lse) a.lse[b * a.l_sb + h * a.l_sh + r * a.l_ss] = sum > 0.f ? mx + std::log(sum) : minus_inf;
    }
  }
};

// The mask argument is the causal mask the public entry validated with; MoBA is causal by
// definition, so the driver applies it itself.
template <class Arch, class Mask>
void block_topk_forward(const dense_args& a, const Mask&) noexcept {
  if (a.batch == 0 || a.q_heads == 0 || a.q_len == 0) return;
  const std::int64_t block = a.block, D = a.qk_dim;
  const std::int64_t n_full = a.kv_len / block;
  // Mean-pooled keys of the complete blocks, once per call.
  simd::scratch kbar(static_cast<std::size_t>(a.batch * a.kv_heads * n_full * D + 1));
  for (std::int64_t b = 0; b < a.batch; ++b)
    for (std::int64_t hk = 0; hk < a.kv_heads; ++hk)
      for (std::int64_t j = 0; j < n_full; ++j) {
        float* m = kbar.get() + ((b * a.kv_heads + hk) * n_full + j) * D;
        for (std::int64_t d = 0; d < D; ++d) m[d] = 0.f;
        for (std::int64_t r = j * block; r < (j + 1) * block; ++r)
          kernels::axpy<Arch>(1.f, a.k_as<float>() + b * a.k_sb + hk * a.k_sh + r * a.k_ss, m, D, false);
        const float inv = 1.f / float(block);
        for (std::int64_t d = 0; d < D; ++d) m[d] *= inv;
      }
  const block_topk_driver<Arch> drv{a, block, a.topk, n_full, kbar.get()};
  run_units(a, a.batch * a.q_heads, drv.scratch_floats(), drv);
}

}  // namespace detail
}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
