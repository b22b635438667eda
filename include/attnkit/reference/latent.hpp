// attnkit::reference for the latent family, in double precision:
//   - mla_expanded: MLA from the model's own weights, un-absorbed (per head K = W_UK c,
//     V = W_UV c, scores over [q_nope | q_rope] . [K | k_rope]), the ground truth that the
//     absorbed kernel plus projections and the expanded kernel path must both match;
//   - mla_attention: the absorbed form over the latent cache (out_lat), as the kernel sees it;
//   - latent_attention: FLARE-style two-step routing, with Z kept in double.
// Inputs of any storage type are widened exactly to double. Cost is that of the naive math
// (mla_expanded: O(B H Lk r (dn + dv)) for the projections).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "../latent.hpp"
#include "reference.hpp"

namespace attnkit {
inline namespace ATTNKIT_ISA_NS {
namespace reference {
namespace detail {

/// One softmax row in double: scores of the allowed keys (already scaled, modified and
/// capped) with an optional sink logit. Returns lse (-inf when nothing is allowed) and leaves
/// the weights in s (all 0 then).
inline double softmax_row(std::vector<double>& s, bool sink, double sink_logit) {
  double mx = -std::numeric_limits<double>::infinity();
  for (double x : s) mx = std::max(mx, x);
  if (sink && sink_logit > mx) mx = sink_logit;
  if (mx == -std::numeric_limits<double>::infinity()) {
    std::fill(s.begin(), s.end(), 0.0);
    return mx;
  }
  double sum = sink ? std::exp(sink_logit - mx) : 0.0;
  for (double& x : s) sum += (x = std::exp(x - mx));
  for (double& x : s) x /= sum;
  return mx + std::log(sum);
}

/// One output row (b, h, i) of the MLA references: the scores of the allowed keys, where
/// dot(j) is key j's unscaled dot product with the query, softmax with the head's sink
/// logit, and the sum of the weighted value rows value(j, d), d < res.v_dim. s and keys are
/// scratch.
template <class Mask, class Dot, class Value>
void mla_row(result& res, index_t b, index_t h, index_t i, index_t Lk, double scale, const Mask& mask,
             const mla_options& opt, const Dot& dot, const Value& value, std::vector<double>& s,
             std::vector<index_t>& keys) {
  const index_t qpos = i + Lk - res.q_len;
  s.clear();
  keys.clear();
  for (index_t j = 0; j < Lk; ++j) {
    if (!mask.allowed(b, h, qpos, j)) continue;
    double x = dot(j) * scale;  // scale: the float the kernels use, widened
    if constexpr (has_score<Mask>::value) x = mask.score(float(x), b, h, qpos, j);
    if (opt.softcap != 0.f) x = double(opt.softcap) * std::tanh(x / double(opt.softcap));
    s.push_back(x);
    keys.push_back(j);
  }
  const bool sink = opt.sink_logits.data != nullptr;
  res.l(b, h, i) = softmax_row(s, sink, sink ? double(opt.sink_logits.data[h]) : 0.0);
  for (std::size_t t = 0; t < keys.size(); ++t)
    for (index_t d = 0; d < res.v_dim; ++d) res.o(b, h, i, d) += s[t] * value(keys[t], d);
}

}  // namespace detail

/// Reference of attnkit::mla_attention (absorbed form): out_lat [B, H, Lq, r] and lse.
template <class TQ, class TQR, class TC, class TR, class Mask = no_mask>
result mla_attention(const tensor_view<TQ>& q_lat, const tensor_view<TQR>& q_rope, const tensor_view<TC>& c_kv,
                     const tensor_view<TR>& k_rope, const Mask& mask = {}, const mla_options& opt = {}) {
  const char* fn = "reference::mla_attention";
  // The kernel's own validation, on a scratch output of the right shape (never written).
  const index_t B = q_lat.batch(), H = q_lat.heads(), Lq = q_lat.seq(), r = q_lat.dim(), dr = q_rope.dim();
  std::vector<float> scratch(std::size_t(std::max<index_t>(B * H * Lq * r, 1)));
  const auto a = attnkit::detail::mla_args(fn, q_lat, q_rope, c_kv, k_rope, make_bhsd(scratch.data(), B, H, Lq, r),
                                           mask, opt, tensor_view<float>{}, false);
  const index_t Lk = a.kv_len;
  // The convention written out again rather than taken from the kernel's validation.
  const double scale = opt.scale != 0.f ? double(opt.scale)
                                        : double(1.f / std::sqrt(float(opt.qk_nope_head_dim + dr)));
  result res;
  res.batch = B, res.heads = H, res.q_len = Lq, res.v_dim = r;
  res.out.assign(std::size_t(B * H * Lq * r), 0.0);
  res.lse.assign(std::size_t(B * H * Lq), -std::numeric_limits<double>::infinity());
  std::vector<double> s;
  std::vector<index_t> keys;
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t i = 0; i < Lq; ++i) {
        const auto dot = [&](index_t j) {
          double x = 0;
          for (index_t d = 0; d < r; ++d) x += double(q_lat(b, h, i, d)) * double(to_float(c_kv(b, 0, j, d)));
          for (index_t d = 0; d < dr; ++d) x += double(q_rope(b, h, i, d)) * double(to_float(k_rope(b, 0, j, d)));
          return x;
        };
        const auto value = [&](index_t j, index_t d) { return double(to_float(c_kv(b, 0, j, d))); };
        detail::mla_row(res, b, h, i, Lk, scale, mask, opt, dot, value, s, keys);
      }
  return res;
}

/// MLA from the weights, un-absorbed, in double:
///
///   q_nope [B, H, Lq, dn], q_rope [B, H, Lq, dr], c_kv [B, 1, Lk, r], k_rope [B, 1, Lk, dr]
///   w_uk [1, H, dn, r]: K_h = W_UK_h c (dn x r per head);  w_uv [1, H, dv, r]: V_h = W_UV_h c
///   out [B, H, Lq, dv] = softmax(scale * ([q_nope | q_rope] . [K_h | k_rope])) V_h
///
/// Scale as in the weight helpers of latent_eigen.hpp: options.scale, else
/// 1 / sqrt(dn + dr) (options.qk_nope_head_dim, when set, must equal dn).
template <class TQ, class TQR, class TC, class TR, class TW, class TV, class Mask = no_mask>
result mla_expanded(const tensor_view<TQ>& q_nope, const tensor_view<TQR>& q_rope, const tensor_view<TC>& c_kv,
                    const tensor_view<TR>& k_rope, const tensor_view<TW>& w_uk, const tensor_view<TV>& w_uv,
                    const Mask& mask = {}, const mla_options& opt = {}) {
  const char* fn = "reference::mla_expanded";
  using attnkit::detail::fail;
  using attnkit::detail::message;
  const index_t B = q_nope.batch(), H = q_nope.heads(), Lq = q_nope.seq(), dn = q_nope.dim(), dr = q_rope.dim();
  const index_t Lk = c_kv.seq(), r = c_kv.dim(), dv = w_uv.seq();
  if (w_uk.batch() != 1 || w_uk.heads() != H || w_uk.seq() != dn || w_uk.dim() != r)
    fail(fn, message() << "argument 'w_uk' has shape " << w_uk.extents() << ", expected [1, " << H << ", " << dn
                       << ", " << r << "] (heads of q_nope, dim of q_nope, dim of c_kv)");
  if (w_uv.batch() != 1 || w_uv.heads() != H || w_uv.dim() != r)
    fail(fn, message() << "argument 'w_uv' has shape " << w_uv.extents() << ", expected [1, " << H << ", dv, " << r
                       << "]");
  mla_options o = opt;
  if (o.qk_nope_head_dim != 0 && o.qk_nope_head_dim != dn)
    fail(fn, message() << "options.qk_nope_head_dim = " << o.qk_nope_head_dim << " but dim of 'q_nope' is " << dn);
  o.qk_nope_head_dim = dn;
  (void)attnkit::detail::mla_scale(fn, o, dr);  // the same errors as the kernels
  // The convention written out again rather than taken from the kernel's helpers.
  const double scale = opt.scale != 0.f ? double(opt.scale) : double(1.f / std::sqrt(float(dn + dr)));
  if (c_kv.heads() != 1 || k_rope.heads() != 1 || c_kv.batch() != B || k_rope.batch() != B || k_rope.seq() != Lk ||
      k_rope.dim() != dr || q_rope.batch() != B || q_rope.heads() != H || q_rope.seq() != Lq)
    fail(fn, message() << "shapes do not match: q_nope " << q_nope.extents() << ", q_rope " << q_rope.extents()
                       << ", c_kv " << c_kv.extents() << ", k_rope " << k_rope.extents());
  attnkit::detail::check_mask(fn, mask, mask_problem{B, H, H, Lq, Lk});
  result res;
  res.batch = B, res.heads = H, res.q_len = Lq, res.v_dim = dv;
  res.out.assign(std::size_t(B * H * Lq * dv), 0.0);
  res.lse.assign(std::size_t(B * H * Lq), -std::numeric_limits<double>::infinity());
  std::vector<double> K(std::size_t(Lk * dn)), V(std::size_t(Lk * dv)), s;
  std::vector<index_t> keys;
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h) {
      for (index_t j = 0; j < Lk; ++j) {
        for (index_t d = 0; d < dn; ++d) {
          double x = 0;
          for (index_t t = 0; t < r; ++t) x += double(w_uk(0, h, d, t)) * double(to_float(c_kv(b, 0, j, t)));
          K[std::size_t(j * dn + d)] = x;
        }
        for (index_t d = 0; d < dv; ++d) {
          double x = 0;
          for (index_t t = 0; t < r; ++t) x += double(w_uv(0, h, d, t)) * double(to_float(c_kv(b, 0, j, t)));
          V[std::size_t(j * dv + d)] = x;
        }
      }
      for (index_t i = 0; i < Lq; ++i) {
        const auto dot = [&](index_t j) {
          double x = 0;
          for (index_t d = 0; d < dn; ++d) x += double(q_nope(b, h, i, d)) * K[std::size_t(j * dn + d)];
          for (index_t d = 0; d < dr; ++d) x += double(q_rope(b, h, i, d)) * double(to_float(k_rope(b, 0, j, d)));
          return x;
        };
        const auto value = [&](index_t j, index_t d) { return V[std::size_t(j * dv + d)]; };
        detail::mla_row(res, b, h, i, Lk, scale, mask, opt, dot, value, s, keys);
      }
    }
  return res;
}

/// Reference of attnkit::latent_attention: Z = softmax(scale Q_L K^T) V, then
/// out = softmax(scale K Q_L^T) Z, per head, Z in double. Output [B, H, N, dv].
template <class TL, class TK, class TV>
result latent_attention(const tensor_view<TL>& q_latent, const tensor_view<TK>& k, const tensor_view<TV>& v,
                        const attention_options& opt = {}) {
  const char* fn = "reference::latent_attention";
  const index_t B = k.batch(), H = q_latent.heads(), Hkv = k.heads(), M = q_latent.seq(), N = k.seq(),
                d = k.dim(), dv = v.dim();
  if (M < 1 || Hkv < 1 || H % Hkv != 0 || q_latent.dim() != d || (q_latent.batch() != 1 && q_latent.batch() != B) ||
      v.batch() != B || v.heads() != Hkv || v.seq() != N)
    attnkit::detail::fail(fn, attnkit::detail::message()
                                  << "shapes do not match (M >= 1 latents, heads of q_latent a multiple of heads of"
                                     " k): q_latent "
                                  << q_latent.extents() << ", k " << k.extents() << ", v " << v.extents());
  const double scale = opt.scale != 0.f ? double(opt.scale) : double(1.f / std::sqrt(float(d)));
  auto cap = [&](double x) { return opt.softcap != 0.f ? double(opt.softcap) * std::tanh(x / double(opt.softcap)) : x; };
  const index_t g = H / Hkv;
  result res;
  res.batch = B, res.heads = H, res.q_len = N, res.v_dim = dv;
  res.out.assign(std::size_t(B * H * N * dv), 0.0);
  res.lse.assign(std::size_t(B * H * N), -std::numeric_limits<double>::infinity());
  std::vector<double> z(std::size_t(M * dv)), s;
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h) {
      const index_t hk = h / g, bl = q_latent.batch() == 1 ? 0 : b;
      std::fill(z.begin(), z.end(), 0.0);
      for (index_t m = 0; m < M; ++m) {  // encode
        s.assign(std::size_t(N), 0.0);
        for (index_t j = 0; j < N; ++j) {
          double dot = 0;
          for (index_t t = 0; t < d; ++t) dot += double(q_latent(bl, h, m, t)) * double(to_float(k(b, hk, j, t)));
          s[std::size_t(j)] = cap(dot * scale);
        }
        detail::softmax_row(s, false, 0.0);
        for (index_t j = 0; j < N; ++j)
          for (index_t c = 0; c < dv; ++c) z[std::size_t(m * dv + c)] += s[std::size_t(j)] * double(to_float(v(b, hk, j, c)));
      }
      for (index_t j = 0; j < N; ++j) {  // decode
        s.assign(std::size_t(M), 0.0);
        for (index_t m = 0; m < M; ++m) {
          double dot = 0;
          for (index_t t = 0; t < d; ++t) dot += double(to_float(k(b, hk, j, t))) * double(q_latent(bl, h, m, t));
          s[std::size_t(m)] = cap(dot * scale);
        }
        res.l(b, h, j) = detail::softmax_row(s, false, 0.0);
        for (index_t m = 0; m < M; ++m)
          for (index_t c = 0; c < dv; ++c) res.o(b, h, j, c) += s[std::size_t(m)] * z[std::size_t(m * dv + c)];
      }
    }
  return res;
}

}  // namespace reference
}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
