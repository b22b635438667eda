// MLA weight helpers (need Eigen; include only where Eigen is available, like core/eigen.hpp):
//
//   mla_absorb_query   q_lat = W_UK_h^T q_nope, per head            (the query side of absorption)
//   mla_project_out    out   = W_UV_h out_lat, per head             (the value side)
//   mla_absorbed_attention   absorb + mla_attention + project       (decode, short chunks)
//   mla_expanded_attention   materialise K_h = W_UK_h c, V_h = W_UV_h c, then attention()
//
// Weight layout: w_uk is a view [1, H, dn, r] (K_nope_h = W_UK_h c, dn x r per head) and w_uv
// [1, H, dv, r] (V_h = W_UV_h c). DeepSeek's kv_b_proj.weight, [H * (dn + dv), r] row-major,
// is both at once: w_uk = tensor_view<const float>(w, {{1, H, dn, r}}, {{0, (dn + dv) * r, r, 1}})
// and w_uv the same from w + dn * r with extents {{1, H, dv, r}}.
//
// Which path is faster (bench/README.md, "The latent suite", measured crossover): the
// absorbed path does (r + d_rope) + r multiply-adds per (query, head, key) and reads the
// latent cache once; the expanded path first spends (dn + dv) * r per (head, key) on the
// up-projections, then (dn + d_rope) + dv per (query, head, key). Absorbed wins for decode
// and short chunks, expanded for long prefill chunks, where its projection cost is shared
// by many queries.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include <Eigen/Core>
#if defined(_OPENMP)
#include <omp.h>
#endif

#include "latent.hpp"

namespace attnkit {
inline namespace ATTNKIT_ISA_NS {
namespace detail {

using mla_row_mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using mla_cmap = Eigen::Map<const mla_row_mat, Eigen::Unaligned, Eigen::OuterStride<>>;
using mla_map = Eigen::Map<mla_row_mat, Eigen::Unaligned, Eigen::OuterStride<>>;

/// Rows [.., seq, dim] of view (b, h) as a strided row-major matrix.
template <class T>
mla_cmap mla_rows(const tensor_view<T>& t, index_t b, index_t h) {
  return mla_cmap(t.data_handle() + b * t.stride(0) + h * t.stride(1), Eigen::Index(t.seq()), Eigen::Index(t.dim()),
                  Eigen::OuterStride<>(t.seq() > 1 ? Eigen::Index(t.stride(2)) : Eigen::Index(t.dim())));
}
inline mla_map mla_rows_out(const tensor_view<float>& t, index_t b, index_t h) {
  return mla_map(t.data_handle() + b * t.stride(0) + h * t.stride(1), Eigen::Index(t.seq()), Eigen::Index(t.dim()),
                 Eigen::OuterStride<>(t.seq() > 1 ? Eigen::Index(t.stride(2)) : Eigen::Index(t.dim())));
}

/// Checks a per-head weight view [1, H, rows, cols].
template <class T>
void check_weight(const char* fn, const char* name, const tensor_view<T>& w, index_t heads, index_t rows,
                  index_t cols, const char* why) {
  static_assert(std::is_same<std::remove_cv_t<T>, float>::value, "attnkit: MLA weights must be float views");
  check_view(fn, name, w);
  if (w.batch() != 1 || w.heads() != heads || (rows >= 0 && w.seq() != rows) || w.dim() != cols)
    fail(fn, message() << "argument '" << name << "' has shape " << w.extents() << ", expected [1, " << heads << ", "
                       << (rows >= 0 ? rows : w.seq()) << ", " << cols << "] (" << why << ")");
}

/// Runs f(b, h) for every (batch, head), on OpenMP threads when the including code has it.
/// Eigen stays serial inside a team of more than one thread.
template <class F>
void mla_for_heads(index_t batch, index_t heads, int num_threads, F&& f) {
  const index_t n = batch * heads;
#if defined(_OPENMP)
  const int nt = num_threads > 0 ? num_threads : omp_get_max_threads();
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && n > 1)
  for (index_t i = 0; i < n; ++i) f(i / heads, i % heads);
#else
  (void)num_threads;
  for (index_t i = 0; i < n; ++i) f(i / heads, i % heads);
#endif
}

/// scale of the weight helpers: options.scale, else 1 / sqrt(dn + dr) with dn from the
/// weights (options.qk_nope_head_dim, when set, must agree).
inline mla_options mla_weight_options(const char* fn, const mla_options& o, index_t dn) {
  if (o.qk_nope_head_dim != 0 && o.qk_nope_head_dim != dn)
    fail(fn, message() << "options.qk_nope_head_dim = " << o.qk_nope_head_dim << " but the weights say dn = " << dn
                       << " (rows of 'w_uk', dim of 'q_nope')");
  mla_options r = o;
  r.qk_nope_head_dim = dn;
  return r;
}

}  // namespace detail

/// q_lat = W_UK_h^T q_nope for every (batch, head, query): q_nope [B, H, Lq, dn], w_uk
/// [1, H, dn, r], q_lat [B, H, Lq, r]. Then q_lat . c = q_nope . (W_UK_h c) exactly in real
/// arithmetic.
template <class TQ, class TW>
void mla_absorb_query(const tensor_view<TQ>& q_nope, const tensor_view<TW>& w_uk, const tensor_view<float>& q_lat,
                      int num_threads = 0) {
  const char* fn = "mla_absorb_query";
  detail::check_view(fn, "q_nope", q_nope);
  detail::check_view(fn, "q_lat", q_lat);
  const index_t B = q_nope.batch(), H = q_nope.heads(), Lq = q_nope.seq(), dn = q_nope.dim();
  detail::check_weight(fn, "w_uk", w_uk, H, dn, q_lat.dim(), "heads and dim of q_nope, dim of q_lat");
  detail::check_shape(fn, "q_lat", q_lat, {{B, H, Lq, w_uk.dim()}}, "batch, heads and seq of q_nope, r of w_uk");
  detail::check_unique(fn, "q_lat", q_lat);
  detail::check_no_alias(fn, "q_lat", q_lat, "q_nope", q_nope);
  detail::check_no_alias(fn, "q_lat", q_lat, "w_uk", w_uk);
  detail::mla_for_heads(B, H, num_threads, [&](index_t b, index_t h) {
    detail::mla_rows_out(q_lat, b, h).noalias() = detail::mla_rows(q_nope, b, h) * detail::mla_rows(w_uk, 0, h);
  });
}

/// out = W_UV_h out_lat for every (batch, head, query): out_lat [B, H, Lq, r], w_uv
/// [1, H, dv, r], out [B, H, Lq, dv].
template <class TO, class TW>
void mla_project_out(const tensor_view<TO>& out_lat, const tensor_view<TW>& w_uv, const tensor_view<float>& out,
                     int num_threads = 0) {
  const char* fn = "mla_project_out";
  detail::check_view(fn, "out_lat", out_lat);
  detail::check_view(fn, "out", out);
  const index_t B = out_lat.batch(), H = out_lat.heads(), Lq = out_lat.seq(), r = out_lat.dim();
  detail::check_weight(fn, "w_uv", w_uv, H, out.dim(), r, "heads of out_lat, dim of out, r = dim of out_lat");
  detail::check_shape(fn, "out", out, {{B, H, Lq, w_uv.seq()}}, "batch, heads and seq of out_lat, dv of w_uv");
  detail::check_unique(fn, "out", out);
  detail::check_no_alias(fn, "out", out, "out_lat", out_lat);
  detail::check_no_alias(fn, "out", out, "w_uv", w_uv);
  detail::mla_for_heads(B, H, num_threads, [&](index_t b, index_t h) {
    detail::mla_rows_out(out, b, h).noalias() =
        detail::mla_rows(out_lat, b, h) * detail::mla_rows(w_uv, 0, h).transpose();
  });
}

/// MLA from the un-absorbed query and the weights, absorbed: q_lat = W_UK^T q_nope, then
/// mla_attention over the latent cache, then out = W_UV out_lat. Shapes as in
/// mla_expanded_attention. Allocates q_lat and out_lat (B x H x Lq x r floats each).
template <class TQ, class TQR, class TC, class TR, class TW, class TV, class Mask = no_mask>
void mla_absorbed_attention(const tensor_view<TQ>& q_nope, const tensor_view<TQR>& q_rope,
                            const tensor_view<TC>& c_kv, const tensor_view<TR>& k_rope,
                            const tensor_view<TW>& w_uk, const tensor_view<TV>& w_uv, const tensor_view<float>& out,
                            const Mask& mask = {}, const mla_options& options = {},
                            const tensor_view<float>& lse = {}) {
  const char* fn = "mla_absorbed_attention";
  detail::check_view(fn, "q_nope", q_nope);
  const index_t B = q_nope.batch(), H = q_nope.heads(), Lq = q_nope.seq(), r = c_kv.dim();
  detail::check_weight(fn, "w_uk", w_uk, H, q_nope.dim(), r, "heads and dim of q_nope, r = dim of c_kv");
  detail::check_weight(fn, "w_uv", w_uv, H, out.dim(), r, "heads of q_nope, dim of out, r = dim of c_kv");
  const mla_options o = detail::mla_weight_options(fn, options, q_nope.dim());
  std::vector<float> ql(std::size_t(B * H * Lq * r)), ol(ql.size());
  const auto qv = make_bhsd(ql.data(), B, H, Lq, r);
  const auto ov = make_bhsd(ol.data(), B, H, Lq, r);
  mla_absorb_query(q_nope, w_uk, qv, o.num_threads);
  mla_attention(tensor_view<const float>(qv), q_rope, c_kv, k_rope, ov, mask, o, lse);
  mla_project_out(tensor_view<const float>(ov), w_uv, out, o.num_threads);
}

/// MLA expanded (not absorbed), as a prefill implementation would run it: per head,
/// K_h = W_UK_h c (dn) and V_h = W_UV_h c (dv) are materialised for every cache row, then
/// attention() runs with query [q_nope | q_rope] (dim dn + dr) against key [K_h | k_rope]
/// (the shared rope key is not copied per head) and value V_h.
///
///   q_nope [B, H, Lq, dn] float     q_rope [B, H, Lq, dr] float
///   c_kv   [B, 1, Lk, r]            k_rope [B, 1, Lk, dr]   float, bf16 or fp16 (same type)
///   w_uk   [1, H, dn, r] float      w_uv   [1, H, dv, r] float
///   out    [B, H, Lq, dv]           lse    optional [B, H, Lq, 1]
///
/// Scale: options.scale, else 1 / sqrt(dn + dr) (dn is known from the weights here;
/// options.qk_nope_head_dim, when set, must equal it). Allocates B x H x Lk x (dn + dv)
/// floats for K and V (plus an fp32 copy of a 16-bit cache).
template <class TQ, class TQR, class TC, class TR, class TW, class TV, class Mask = no_mask>
void mla_expanded_attention(const tensor_view<TQ>& q_nope, const tensor_view<TQR>& q_rope,
                            const tensor_view<TC>& c_kv, const tensor_view<TR>& k_rope,
                            const tensor_view<TW>& w_uk, const tensor_view<TV>& w_uv, const tensor_view<float>& out,
                            const Mask& mask = {}, const mla_options& options = {},
                            const tensor_view<float>& lse = {}) {
  using C = std::remove_cv_t<TC>;
  static_assert(std::is_same<std::remove_cv_t<TQR>, float>::value, "attnkit: q_rope must be a float view");
  static_assert(std::is_same<C, std::remove_cv_t<TR>>::value,
                "attnkit: the latent cache and the rope keys must have the same storage type");
  const char* fn = "mla_expanded_attention";
  detail::check_view(fn, "q_nope", q_nope);
  detail::check_view(fn, "q_rope", q_rope);
  detail::check_view(fn, "c_kv", c_kv);
  detail::check_view(fn, "k_rope", k_rope);
  const index_t B = q_nope.batch(), H = q_nope.heads(), Lq = q_nope.seq(), dn = q_nope.dim(), dr = q_rope.dim();
  const index_t Lk = c_kv.seq(), r = c_kv.dim();
  detail::check_weight(fn, "w_uk", w_uk, H, dn, r, "heads and dim of q_nope, r = dim of c_kv");
  detail::check_weight(fn, "w_uv", w_uv, H, out.dim(), r, "heads of q_nope, dim of out, r = dim of c_kv");
  const index_t dv = w_uv.seq();
  if (c_kv.heads() != 1 || k_rope.heads() != 1)
    detail::fail(fn, detail::message() << "'c_kv' " << c_kv.extents() << " and 'k_rope' " << k_rope.extents()
                                       << " must have exactly one head: the latent cache is shared by all heads");
  auto shapes = [&](const char* what) {
    return detail::message() << what << " (q_nope is " << q_nope.extents() << ", q_rope is " << q_rope.extents()
                             << ", c_kv is " << c_kv.extents() << ", k_rope is " << k_rope.extents() << ")";
  };
  if (k_rope.dim() != dr) detail::fail(fn, shapes("rope dim mismatch: dim of 'k_rope' must equal dim of 'q_rope'"));
  if (q_rope.batch() != B || q_rope.heads() != H || q_rope.seq() != Lq)
    detail::fail(fn, shapes("'q_rope' must have the batch, heads and seq of 'q_nope'"));
  if (c_kv.batch() != B || k_rope.batch() != B)
    detail::fail(fn, shapes("batch of 'c_kv' and 'k_rope' must equal batch of 'q_nope'"));
  if (k_rope.seq() != Lk) detail::fail(fn, shapes("seq of 'k_rope' must equal seq of 'c_kv'"));
  const mla_options o = detail::mla_weight_options(fn, options, dn);
  const float scale = detail::mla_scale(fn, o, dr);
  detail::check_view(fn, "out", out);
  detail::check_no_alias(fn, "out", out, "q_rope", q_rope);
  detail::check_no_alias(fn, "out", out, "c_kv", c_kv);
  detail::check_no_alias(fn, "out", out, "k_rope", k_rope);

  // fp32 cache rows for Eigen (a copy only for 16-bit storage).
  std::vector<float> cbuf, rbuf;
  tensor_view<const float> c32, r32;
  if constexpr (std::is_same<C, float>::value) {
    c32 = c_kv;
    r32 = k_rope;
  } else {
    cbuf.resize(std::size_t(B * Lk * r));
    rbuf.resize(std::size_t(B * Lk * dr));
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < Lk; ++t) {
        for (index_t d = 0; d < r; ++d) cbuf[std::size_t((b * Lk + t) * r + d)] = to_float(c_kv(b, 0, t, d));
        for (index_t d = 0; d < dr; ++d) rbuf[std::size_t((b * Lk + t) * dr + d)] = to_float(k_rope(b, 0, t, d));
      }
    c32 = make_bhsd(static_cast<const float*>(cbuf.data()), B, 1, Lk, r);
    r32 = make_bhsd(static_cast<const float*>(rbuf.data()), B, 1, Lk, dr);
  }
  std::vector<float> kbuf(std::size_t(B * H * Lk * dn)), vbuf(std::size_t(B * H * Lk * dv));
  const auto kv = make_bhsd(kbuf.data(), B, H, Lk, dn);
  const auto vv = make_bhsd(vbuf.data(), B, H, Lk, dv);
  if (Lk > 0)
    detail::mla_for_heads(B, H, o.num_threads, [&](index_t b, index_t h) {
      const auto c = detail::mla_rows(c32, b, 0);
      detail::mla_rows_out(kv, b, h).noalias() = c * detail::mla_rows(w_uk, 0, h).transpose();
      detail::mla_rows_out(vv, b, h).noalias() = c * detail::mla_rows(w_uv, 0, h).transpose();
    });

  // attention() on [q_nope | q_rope] . [K_h | k_rope] through the two-part key of the
  // drivers; flash_args validates the nope part, mask, lse and options.
  const attention_options ao = detail::mla_attention_options(o, scale);
  dense_args a = detail::flash_args(fn, q_nope, tensor_view<const float>(kv), tensor_view<const float>(vv), out, mask,
                                    ao, lse);
  if (dr > 0) {
    a.q2 = q_rope.data_handle();
    a.q2_sb = q_rope.stride(0), a.q2_sh = q_rope.stride(1), a.q2_ss = q_rope.stride(2);
    a.k2 = r32.data_handle();
    a.k2_sb = r32.stride(0), a.k2_sh = 0, a.k2_ss = r32.stride(2);  // one rope key for every head
    a.k2_dim = dr;
    a.qk_dim = dn + dr;
  }
  ATTNKIT_DISPATCH(dense_forward, a, mask);
}

}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
