// The linear-attention driver: linear_attention (non-causal and chunked causal, decay,
// recurrent state), efficient_attention and mala_attention. The arithmetic lives in
// kernels/linear_micro.hpp and the feature maps in linear_features.hpp.
//
// Work unit = (batch, kv head, sub-group of that kv head's query heads). The key side
// (features of K, the state phi(K)^T V and the normaliser sum phi(K)) belongs to the KV
// head and is computed once per unit; every query head of the unit reads it. A unit's
// result does not depend on how the query heads are split into sub-groups (each sub-group
// recomputes the same key side with the same operations), so the split may follow the
// thread count and results stay bitwise identical for any thread count.
//
// Causal, chunked (Lightning Attention's tiling). With C rows per chunk, chunk-local row
// r, decay lambda (1 without decay) and S, z the state before the chunk:
//   A      = (phi(Q_c) phi(K_c)^T) .* D,   D[r][j] = lambda^(r-j) for j <= r, else 0
//   num_r  = lambda^(r+1) phi(q_r) S + (A V_c)_r
//   den_r  = lambda^(r+1) phi(q_r) . z + sum_j A[r][j]
//   out_r  = num_r / guard(den_r)  (normalize) or num_r
//   S     <- lambda^n S + sum_j lambda^(n-1-j) phi(k_j) v_j^T,  z likewise (n rows in the chunk)
// which is the recurrence S_t = lambda S_{t-1} + phi(k_t) v_t^T, out_t = phi(q_t) S_t / ...
// regrouped: cost O(L (C d' + d' dv)) and only non-negative powers of lambda (no overflow).
// guard(x) = x + eps for x >= 0, x - eps otherwise (|guard(x)| >= eps).
//
// Assumptions (checked by the public entries): unit dim stride, q_heads a multiple of
// kv_heads, Lq == Lk when causal, decay in (0, 1], eps > 0, chunk > 0.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../core/args.hpp"
#include "../core/linear_args.hpp"
#include "../linear_features.hpp"
#include "../simd/math.hpp"
#include "../simd/simd.hpp"
#include "dense.hpp"  // run_units: the one threading machinery
#include "linear_micro.hpp"
#include "micro.hpp"  // dot

namespace attnkit {
inline namespace ATTNKIT_ISA_NS {
namespace detail {

ATTNKIT_ALWAYS_INLINE float linear_guard(float den, float eps) noexcept { return den >= 0.f ? den + eps : den - eps; }

/// Sizes of one call: chunk, padded widths, units, and the per-thread scratch layout.
template <class Arch>
struct linear_plan {
  static constexpr std::int64_t W = simd::vfloat<Arch>::size;
  static std::int64_t pad(std::int64_t n) noexcept { return (n + W - 1) / W * W; }

  std::int64_t C = 1, Cp = W;  // rows per chunk, padded
  std::int64_t dp = 1, dpp = W;  // features per row, padded
  std::int64_t dvp = W;          // value dim, padded
  std::int64_t group = 1, n_sub = 1, heads_per_sub = 1, units = 0;

  // Scratch offsets (floats, each 64-byte aligned) and total.
  std::int64_t o_S = 0, o_z = 0, o_phik = 0, o_kt = 0, o_kw = 0, o_wv = 0, o_vp = 0, o_fq = 0, o_A = 0, o_O = 0,
               o_dm = 0, o_pw = 0, o_beta = 0, o_rs = 0, o_vs = 0, o_cm = 0, floats = 0;

  explicit linear_plan(const linear_args& a) {
    const std::int64_t len = a.q_len > a.kv_len ? a.q_len : a.kv_len;
    C = a.chunk < len ? a.chunk : (len > 0 ? len : 1);
    Cp = pad(C);
    dp = a.mode == linear_mode::efficient ? a.qk_dim : a.phi.out_dim;
    dpp = pad(dp);
    dvp = pad(a.v_dim);
    group = a.q_heads / a.kv_heads;
    // Enough units for the threads (see the file comment: any split gives the same bits).
    const std::int64_t base = a.batch * a.kv_heads;
    std::int64_t want = 8;
    if (!a.exec.parallel_for) {
#ifdef _OPENMP
      want = a.num_threads > 0 ? a.num_threads : omp_get_max_threads();
#else
      want = 1;
#endif
    }
    n_sub = base > 0 ? (want + base - 1) / base : 1;
    if (n_sub > group) n_sub = group;
    if (n_sub < 1) n_sub = 1;
    heads_per_sub = (group + n_sub - 1) / n_sub;
    n_sub = (group + heads_per_sub - 1) / heads_per_sub;
    units = base * n_sub;

    auto carve = [this](std::int64_t n) {
      const std::int64_t at = floats;
      floats += (n + 15) / 16 * 16;
      return at;
    };
    o_S = carve(dp * dvp);
    o_z = carve(dp);
    o_phik = carve((C + 1) * dpp);  // + one row: the chunk's sum of features (absorb)
    o_kt = carve(dp * Cp);
    o_kw = carve(dp * Cp);
    o_wv = carve(Cp);
    o_vp = carve(C * dvp);
    o_fq = carve(C * dpp);
    o_A = carve(C * Cp);
    o_O = carve(C * dvp);
    o_dm = carve(C * Cp);
    o_pw = carve(C + 1);
    o_beta = carve(dp > C ? dp : C);
    o_rs = carve(C);
    o_vs = carve(dvp);
    o_cm = carve(dpp);
  }
};

template <class Arch>
struct linear_runner {
  using B = simd::vfloat<Arch>;
  static constexpr std::int64_t W = B::size;
  static constexpr std::int64_t MR = kernels::linear_tile<Arch>::mr;

  const linear_args& a;
  const linear_plan<Arch>& p;
  // The initial state; a copy of a.state_* when several units share a kv head, because the
  // unit that writes the final state may finish before another has read the initial one.
  const float* init_kv;
  const float* init_z;

  // One unit's scratch.
  struct bufs {
    float *S, *z, *phik, *kt, *kw, *wv, *vp, *fq, *A, *O, *dm, *pw, *beta, *rs, *vs, *cm;
  };

  void operator()(std::int64_t unit, float* ws) const noexcept {
    const std::int64_t sub = unit % p.n_sub, u = unit / p.n_sub;
    const std::int64_t kvh = u % a.kv_heads, b = u / a.kv_heads;
    const std::int64_t h0 = kvh * p.group + sub * p.heads_per_sub;
    const std::int64_t h1 = h0 + p.heads_per_sub < (kvh + 1) * p.group ? h0 + p.heads_per_sub : (kvh + 1) * p.group;
    bufs s{ws + p.o_S,  ws + p.o_z,  ws + p.o_phik, ws + p.o_kt,   ws + p.o_kw, ws + p.o_wv,
           ws + p.o_vp, ws + p.o_fq, ws + p.o_A,    ws + p.o_O,    ws + p.o_dm, ws + p.o_pw,
           ws + p.o_beta, ws + p.o_rs, ws + p.o_vs, ws + p.o_cm};
    const bool owner = sub == 0;  // the one unit of a kv head that writes the final state
    if (in_place(b, kvh)) {
      const std::int64_t at = b * a.kv_heads + kvh;
      s.S = a.state_kv + at * p.dp * a.v_dim;
      s.z = a.state_z + at * p.dp;
    }
    switch (a.mode) {
      case linear_mode::efficient: run_efficient(b, kvh, h0, h1, s); break;
      case linear_mode::mala: run_mala(b, kvh, h0, h1, s); break;
      default:
        if (a.causal)
          run_causal(b, kvh, h0, h1, s, owner);
        else
          run_noncausal(b, kvh, h0, h1, s, owner);
        break;
    }
  }

  // ---- loads ---------------------------------------------------------------------------

  const float* krow(std::int64_t b, std::int64_t kvh, std::int64_t j) const noexcept {
    return a.k + b * a.k_sb + kvh * a.k_sh + j * a.k_ss;
  }
  const float* vrow(std::int64_t b, std::int64_t kvh, std::int64_t j) const noexcept {
    return a.v + b * a.v_sb + kvh * a.v_sh + j * a.v_ss;
  }
  const float* qrow(std::int64_t b, std::int64_t h, std::int64_t i) const noexcept {
    return a.q + b * a.q_sb + h * a.q_sh + i * a.q_ss;
  }
  float* orow(std::int64_t b, std::int64_t h, std::int64_t i) const noexcept {
    return a.out + b * a.o_sb + h * a.o_sh + i * a.o_ss;
  }

  /// kt [dp][Cp] = features of keys j0..j0+n, transposed; columns n..Cp are zero.
  void load_keys(std::int64_t b, std::int64_t kvh, std::int64_t j0, std::int64_t n, const bufs& s) const noexcept {
    for (std::int64_t r = 0; r < n; ++r) feature_row<Arch>(a.phi, krow(b, kvh, j0 + r), a.qk_dim, s.phik + r * p.dpp);
    transpose_keys(n, s);
  }
  void transpose_keys(std::int64_t n, const bufs& s) const noexcept {
    const std::int64_t np = (n + W - 1) / W * W;  // the products read whole vectors up to here
    for (std::int64_t f = 0; f < p.dp; ++f) {
      float* kt = s.kt + f * p.Cp;
      for (std::int64_t r = 0; r < n; ++r) kt[r] = s.phik[r * p.dpp + f];
      for (std::int64_t r = n; r < np; ++r) kt[r] = 0.f;
    }
  }
  /// vp [C][dvp] = value rows j0..j0+n, zero-padded to dvp.
  void load_values(std::int64_t b, std::int64_t kvh, std::int64_t j0, std::int64_t n, const bufs& s) const noexcept {
    for (std::int64_t r = 0; r < n; ++r) {
      const float* v = vrow(b, kvh, j0 + r);
      float* d = s.vp + r * p.dvp;
      for (std::int64_t j = 0; j < a.v_dim; ++j) d[j] = v[j];
      for (std::int64_t j = a.v_dim; j < p.dvp; ++j) d[j] = 0.f;
    }
  }
  void load_queries(std::int64_t b, std::int64_t h, std::int64_t i0, std::int64_t n, const bufs& s) const noexcept {
    for (std::int64_t r = 0; r < n; ++r) feature_row<Arch>(a.phi, qrow(b, h, i0 + r), a.qk_dim, s.fq + r * p.dpp);
  }

  // ---- state ---------------------------------------------------------------------------

  /// The unit works on the caller's state directly when its rows have the scratch layout
  /// (v_dim padded to itself, 64-byte aligned) and no other unit reads that kv head's state.
  bool in_place(std::int64_t b, std::int64_t kvh) const noexcept {
    if (!a.state_kv || p.n_sub != 1 || p.dvp != a.v_dim || a.mode != linear_mode::linear) return false;
    const float* S = a.state_kv + (b * a.kv_heads + kvh) * p.dp * a.v_dim;
    return reinterpret_cast<std::uintptr_t>(S) % 64 == 0;
  }

  void state_in(std::int64_t b, std::int64_t kvh, const bufs& s) const noexcept {
    if (in_place(b, kvh)) return;
    const std::int64_t at = b * a.kv_heads + kvh;
    for (std::int64_t f = 0; f < p.dp; ++f) {
      float* row = s.S + f * p.dvp;
      const float* src = init_kv ? init_kv + (at * p.dp + f) * a.v_dim : nullptr;
      for (std::int64_t j = 0; j < a.v_dim; ++j) row[j] = src ? src[j] : 0.f;
      for (std::int64_t j = a.v_dim; j < p.dvp; ++j) row[j] = 0.f;
      s.z[f] = init_z ? init_z[at * p.dp + f] : 0.f;
    }
  }
  void state_out(std::int64_t b, std::int64_t kvh, const bufs& s) const noexcept {
    if (!a.state_kv || in_place(b, kvh)) return;
    const std::int64_t at = b * a.kv_heads + kvh;
    for (std::int64_t f = 0; f < p.dp; ++f) {
      float* dst = a.state_kv + (at * p.dp + f) * a.v_dim;
      for (std::int64_t j = 0; j < a.v_dim; ++j) dst[j] = s.S[f * p.dvp + j];
      a.state_z[at * p.dp + f] = s.z[f];
    }
  }

  /// S = lambda^n S + sum_j lambda^(n-1-j) phi(k_j) v_j^T, z likewise; kt, vp and phik hold
  /// the chunk's n keys. pw[t] = lambda^t.
  void absorb(std::int64_t n, float lambda, const bufs& s) const noexcept {
    const float* kk = s.kt;
    const std::int64_t np = (n + W - 1) / W * W;
    for (std::int64_t j = 0; j < np; ++j) s.wv[j] = j < n ? s.pw[n - 1 - j] : 0.f;
    if (lambda != 1.f) {
      for (std::int64_t f = 0; f < p.dp; ++f)
        for (std::int64_t j = 0; j < np; j += W)
          (B::load_aligned(s.kt + f * p.Cp + j) * B::load_aligned(s.wv + j)).store_aligned(s.kw + f * p.Cp + j);
      kk = s.kw;
    }
    const float keep = s.pw[n];
    for (std::int64_t f = 0; f < p.dp; ++f) s.beta[f] = keep;
    kernels::gemm<Arch>(p.dp, p.dvp, n, kk, p.Cp, s.vp, p.dvp, s.S, p.dvp, s.beta);
    // z: the chunk's weighted feature rows summed along the features (SIMD), then joined
    // to the running z once (the same two-level sum as S).
    float* zc = s.phik + p.C * p.dpp;  // one spare row after the chunk's features
    for (std::int64_t f = 0; f < p.dpp; f += W) B(0.f).store_aligned(zc + f);
    for (std::int64_t r = 0; r < n; ++r) {
      const B w(s.wv[r]);
      const float* row = s.phik + r * p.dpp;
      for (std::int64_t f = 0; f + W <= p.dp; f += W)
        xsimd::fma(w, B::load_aligned(row + f), B::load_aligned(zc + f)).store_aligned(zc + f);
      for (std::int64_t f = p.dp / W * W; f < p.dp; ++f) zc[f] += s.wv[r] * row[f];
    }
    for (std::int64_t f = 0; f < p.dp; ++f) s.z[f] = keep * s.z[f] + zc[f];
  }

  void powers(float lambda, const bufs& s) const noexcept {
    for (std::int64_t t = 0; t <= p.C; ++t) s.pw[t] = float(std::pow(double(lambda), double(t)));
  }

  /// out row i = num / guard(den) (or num), num = O row r.
  void emit(std::int64_t b, std::int64_t h, std::int64_t i, const float* num, float den) const noexcept {
    const float m = a.normalize ? 1.f / linear_guard(den, a.eps) : 1.f;
    kernels::scale_row<Arch>(num, m, orow(b, h, i), a.v_dim);
  }

  // ---- linear attention, causal (chunked) ----------------------------------------------

  void run_causal(std::int64_t b, std::int64_t kvh, std::int64_t h0, std::int64_t h1, const bufs& s,
                  bool owner) const noexcept {
    const float lambda = a.decay ? a.decay[kvh] : 1.f;
    powers(lambda, s);
    for (std::int64_t i = 0; i < p.C; ++i)
      for (std::int64_t j = 0; j < p.Cp; ++j) s.dm[i * p.Cp + j] = j <= i ? s.pw[i - j] : 0.f;
    state_in(b, kvh, s);
    const std::int64_t L = a.q_len;
    for (std::int64_t c0 = 0; c0 < L; c0 += p.C) {
      const std::int64_t n = L - c0 < p.C ? L - c0 : p.C;
      load_keys(b, kvh, c0, n, s);
      load_values(b, kvh, c0, n, s);
      for (std::int64_t h = h0; h < h1; ++h) {
        load_queries(b, h, c0, n, s);
        for (std::int64_t i0 = 0; i0 < n; i0 += MR) {
          const std::int64_t rows = n - i0 < MR ? n - i0 : MR, last = i0 + rows;
          const std::int64_t ncol = (last + W - 1) / W * W;
          const float* fq = s.fq + i0 * p.dpp;
          float* A = s.A + i0 * p.Cp;
          float* O = s.O + i0 * p.dvp;
          // Scores of the rows' visible keys (whole vectors; the mask zeroes the rest).
          kernels::gemm<Arch>(rows, ncol, p.dp, fq, p.dpp, s.kt, p.Cp, A, p.Cp, nullptr);
          for (std::int64_t r = 0; r < rows; ++r)
            s.rs[i0 + r] = kernels::mul_sum<Arch>(A + r * p.Cp, s.dm + (i0 + r) * p.Cp, ncol);
          // Past chunks through the state, then this chunk's keys.
          kernels::gemm<Arch>(rows, p.dvp, p.dp, fq, p.dpp, s.S, p.dvp, O, p.dvp, nullptr);
          kernels::gemm<Arch>(rows, p.dvp, last, A, p.Cp, s.vp, p.dvp, O, p.dvp, s.pw + i0 + 1);
        }
        for (std::int64_t r = 0; r < n; ++r) {
          const float den =
              a.normalize ? s.pw[r + 1] * kernels::dot<Arch>(s.fq + r * p.dpp, s.z, p.dp) + s.rs[r] : 0.f;
          emit(b, h, c0 + r, s.O + r * p.dvp, den);
        }
      }
      absorb(n, lambda, s);
    }
    if (owner) state_out(b, kvh, s);
  }

  // ---- linear attention, non-causal ----------------------------------------------------

  /// S += phi(K)^T V and z += sum phi(K) over all keys (lambda = 1), optionally also
  /// vs = sum V (MALA).
  void absorb_all(std::int64_t b, std::int64_t kvh, const bufs& s, bool value_sum) const noexcept {
    powers(1.f, s);
    if (value_sum)
      for (std::int64_t j = 0; j < p.dvp; ++j) s.vs[j] = 0.f;
    for (std::int64_t c0 = 0; c0 < a.kv_len; c0 += p.C) {
      const std::int64_t n = a.kv_len - c0 < p.C ? a.kv_len - c0 : p.C;
      load_keys(b, kvh, c0, n, s);
      load_values(b, kvh, c0, n, s);
      absorb(n, 1.f, s);
      if (value_sum)
        for (std::int64_t r = 0; r < n; ++r) kernels::add_row<Arch>(s.vp + r * p.dvp, s.vs, p.dvp);
    }
  }

  /// For each query head of the unit and each chunk of its rows: fq = phi(Q), O = phi(Q) S
  /// from the absorbed state, then row(h, i, r) for query row i (chunk-local row r of fq, O).
  template <class Row>
  void read_state(std::int64_t b, std::int64_t h0, std::int64_t h1, const bufs& s, Row&& row) const noexcept {
    for (std::int64_t h = h0; h < h1; ++h)
      for (std::int64_t c0 = 0; c0 < a.q_len; c0 += p.C) {
        const std::int64_t n = a.q_len - c0 < p.C ? a.q_len - c0 : p.C;
        load_queries(b, h, c0, n, s);
        kernels::gemm<Arch>(n, p.dvp, p.dp, s.fq, p.dpp, s.S, p.dvp, s.O, p.dvp, nullptr);
        for (std::int64_t r = 0; r < n; ++r) row(h, c0 + r, r);
      }
  }

  void run_noncausal(std::int64_t b, std::int64_t kvh, std::int64_t h0, std::int64_t h1, const bufs& s,
                     bool owner) const noexcept {
    state_in(b, kvh, s);
    absorb_all(b, kvh, s, false);
    if (owner) state_out(b, kvh, s);
    read_state(b, h0, h1, s, [&](std::int64_t h, std::int64_t i, std::int64_t r) {
      const float den = a.normalize ? kernels::dot<Arch>(s.fq + r * p.dpp, s.z, p.dp) : 0.f;
      emit(b, h, i, s.O + r * p.dvp, den);
    });
  }

  // ---- MALA (non-causal) ---------------------------------------------------------------
  // out_i = beta_i phi(q_i) S - gamma_i sum_j v_j, s_i = phi(q_i) . z,
  // beta_i = 1 + 1 / guard(s_i), gamma_i = s_i / N (N = Lk): weights sum to 1.

  void run_mala(std::int64_t b, std::int64_t kvh, std::int64_t h0, std::int64_t h1, const bufs& s) const noexcept {
    state_in(b, kvh, s);  // no state in MALA: zeros
    absorb_all(b, kvh, s, true);
    const float inv_n = a.kv_len > 0 ? float(1.0 / double(a.kv_len)) : 0.f;
    read_state(b, h0, h1, s, [&](std::int64_t h, std::int64_t i, std::int64_t r) {
      const float sc = kernels::dot<Arch>(s.fq + r * p.dpp, s.z, p.dp);
      const float beta = 1.f + 1.f / linear_guard(sc, a.eps), gamma = sc * inv_n;
      kernels::axpby_row<Arch>(beta, s.O + r * p.dvp, gamma, s.vs, orow(b, h, i), a.v_dim);
    });
  }

  // ---- efficient attention (Shen et al.) -----------------------------------------------
  // G = softmax_over_positions(K)^T V (d x dv) per kv head, out = softmax_over_features(Q) G.

  /// y[0:n) = exp(x[0:n) - m[0:n)) (m per element) or exp(x - m0) (m == nullptr); y aligned.
  static void exp_shifted(const float* x, const float* m, float m0, float* y, std::int64_t n) noexcept {
    std::int64_t j = 0;
    for (; j + W <= n; j += W) {
      const B mv = m ? B::load_aligned(m + j) : B(m0);
      simd::exp<Arch>(B::load_unaligned(x + j) - mv).store_aligned(y + j);
    }
    if (j < n) {
      alignas(64) float t[W];
      for (std::int64_t i = 0; i < W; ++i) t[i] = j + i < n ? x[j + i] - (m ? m[j + i] : m0) : 0.f;
      simd::exp<Arch>(B::load_aligned(t)).store_aligned(t);
      for (std::int64_t i = 0; j + i < n; ++i) y[j + i] = t[i];
    }
  }

  void run_efficient(std::int64_t b, std::int64_t kvh, std::int64_t h0, std::int64_t h1, const bufs& s) const noexcept {
    const std::int64_t d = a.qk_dim;
    state_in(b, kvh, s);  // zeros
    // Column maxima over all positions, for a softmax over positions without overflow.
    for (std::int64_t f = 0; f < d; ++f) s.cm[f] = -std::numeric_limits<float>::infinity();
    for (std::int64_t j = 0; j < a.kv_len; ++j) {
      const float* k = krow(b, kvh, j);
      std::int64_t f = 0;
      for (; f + W <= d; f += W)
        simd::max<Arch>(B::load_aligned(s.cm + f), B::load_unaligned(k + f)).store_aligned(s.cm + f);
      for (; f < d; ++f) s.cm[f] = k[f] > s.cm[f] ? k[f] : s.cm[f];
    }
    powers(1.f, s);
    for (std::int64_t c0 = 0; c0 < a.kv_len; c0 += p.C) {
      const std::int64_t n = a.kv_len - c0 < p.C ? a.kv_len - c0 : p.C;
      for (std::int64_t r = 0; r < n; ++r) exp_shifted(krow(b, kvh, c0 + r), s.cm, 0.f, s.phik + r * p.dpp, d);
      transpose_keys(n, s);
      load_values(b, kvh, c0, n, s);
      absorb(n, 1.f, s);  // S = sum exp(K - max)^T V, z = column sums (each >= 1)
    }
    for (std::int64_t f = 0; f < d; ++f) {
      const float inv = a.kv_len > 0 ? 1.f / s.z[f] : 0.f;
      for (std::int64_t j = 0; j < p.dvp; j += W)
        (B::load_aligned(s.S + f * p.dvp + j) * B(inv)).store_aligned(s.S + f * p.dvp + j);
    }
    for (std::int64_t h = h0; h < h1; ++h)
      for (std::int64_t c0 = 0; c0 < a.q_len; c0 += p.C) {
        const std::int64_t n = a.q_len - c0 < p.C ? a.q_len - c0 : p.C;
        for (std::int64_t r = 0; r < n; ++r) {
          const float* q = qrow(b, h, c0 + r);
          float mx = q[0];
          for (std::int64_t f = 1; f < d; ++f) mx = q[f] > mx ? q[f] : mx;
          float* fq = s.fq + r * p.dpp;
          exp_shifted(q, nullptr, mx, fq, d);
          const float inv = 1.f / kernels::sum<Arch>(fq, d);
          for (std::int64_t f = 0; f < d; ++f) fq[f] *= inv;
        }
        kernels::gemm<Arch>(n, p.dvp, d, s.fq, p.dpp, s.S, p.dvp, s.O, p.dvp, nullptr);
        for (std::int64_t r = 0; r < n; ++r) kernels::scale_row<Arch>(s.O + r * p.dvp, 1.f, orow(b, h, c0 + r), a.v_dim);
      }
  }
};

/// The family's one entry: validated arguments in, outputs (and state) out.
template <class Arch>
void linear_forward(const linear_args& a) noexcept {
  if (a.batch == 0 || a.kv_heads == 0 || a.q_heads == 0) return;
  const linear_plan<Arch> plan(a);
  const std::int64_t kv_floats = a.batch * a.kv_heads * plan.dp * a.v_dim, z_floats = a.batch * a.kv_heads * plan.dp;
  const bool copy = a.state_kv && plan.n_sub > 1;
  simd::scratch init(copy ? std::size_t(kv_floats + z_floats) : 0);
  if (copy) {
    for (std::int64_t i = 0; i < kv_floats; ++i) init.get()[i] = a.state_kv[i];
    for (std::int64_t i = 0; i < z_floats; ++i) init.get()[kv_floats + i] = a.state_z[i];
  }
  const linear_runner<Arch> runner{a, plan, copy ? init.get() : a.state_kv, copy ? init.get() + kv_floats : a.state_z};
  dense_args threads;  // run_units reads only the thread count and the executor
  threads.num_threads = a.num_threads;
  threads.exec = a.exec;
  // A decode step is a few microseconds of arithmetic: waking a team costs more than it
  // saves (and far more on a loaded machine), so small calls run on the calling thread.
  const double work = double(plan.units) * double(a.q_len + a.kv_len) * double(plan.dp) * double(plan.dvp);
  if (work < double(1 << 20)) {
    threads.num_threads = 1;
    threads.exec = executor{};
  }
  run_units(threads, plan.units, plan.floats, runner);
}

}  // namespace detail
}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
