// attnkit::reference: naive, materialised attention in double precision.
//
// Public so users can validate their own models and kernels against it. It follows the
// same semantics as attnkit::attention: scale (0 = 1/sqrt(dim)), score modifier, softcap,
// bottom-right aligned positions, grouped-query heads, masks (only `allowed` is used, never
// the tile answers), learned sink logits; fully-masked rows give output 0 and lse = -inf
// (or the sink logit when there is one). Inputs of any storage type are widened exactly to
// double. Cost is O(batch * heads * Lq * Lk * dim) time and O(Lk) extra memory per row.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../core/dtypes.hpp"
#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../core/validate.hpp"
#include "../mask/check.hpp"
#include "../mask/masks.hpp"
#include "../mask/score.hpp"

namespace attnkit {
inline namespace ATTNKIT_ISA_NS {
namespace reference {

/// Output [batch, heads, q_len, v_dim] and lse [batch, heads, q_len], contiguous, double.
struct result {
  index_t batch = 0, heads = 0, q_len = 0, v_dim = 0;
  std::vector<double> out;
  std::vector<double> lse;

  double& o(index_t b, index_t h, index_t i, index_t j) { return out[std::size_t(((b * heads + h) * q_len + i) * v_dim + j)]; }
  double o(index_t b, index_t h, index_t i, index_t j) const {
    return out[std::size_t(((b * heads + h) * q_len + i) * v_dim + j)];
  }
  double& l(index_t b, index_t h, index_t i) { return lse[std::size_t((b * heads + h) * q_len + i)]; }
  double l(index_t b, index_t h, index_t i) const { return lse[std::size_t((b * heads + h) * q_len + i)]; }
};

namespace detail {

// Shared body: for every row, the allowed keys and their final scores go to `select`, which
// may drop keys (top-k); then softmax (with the sink logit) and the weighted sum of V.
template <class TQ, class TK, class TV, class Mask, class Select>
result attend(const char* fn, const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
              const Mask& mask, const attention_options& opt, Select&& select) {
  const auto p = attnkit::detail::check_dense(fn, q, k, v, nullptr, tensor_view<float>{}, opt);
  attnkit::detail::check_mask(fn, mask, mask_problem{p.batch, p.q_heads, p.kv_heads, p.q_len, p.kv_len});
  result r;
  r.batch = p.batch;
  r.heads = p.q_heads;
  r.q_len = p.q_len;
  r.v_dim = p.v_dim;
  r.out.assign(std::size_t(p.batch * p.q_heads * p.q_len * p.v_dim), 0.0);
  r.lse.assign(std::size_t(p.batch * p.q_heads * p.q_len), -std::numeric_limits<double>::infinity());
  const index_t group = p.q_heads / p.kv_heads;
  const index_t offset = p.kv_len - p.q_len;
  const double scale = p.scale;  // the float the kernels use, widened
  std::vector<double> s;
  std::vector<index_t> keys;
  for (index_t b = 0; b < p.batch; ++b)
    for (index_t h = 0; h < p.q_heads; ++h) {
      const index_t hk = h / group;
      for (index_t i = 0; i < p.q_len; ++i) {
        const index_t qpos = i + offset;
        keys.clear();
        s.clear();
        for (index_t j = 0; j < p.kv_len; ++j) {
          if (!mask.allowed(b, h, qpos, j)) continue;
          double dot = 0;
          for (index_t d = 0; d < p.qk_dim; ++d)
            dot += double(to_float(q(b, h, i, d))) * double(to_float(k(b, hk, j, d)));
          double x = dot * scale;
          if constexpr (has_score<Mask>::value) x = mask.score(float(x), b, h, qpos, j);
          if (opt.softcap != 0.f) x = double(opt.softcap) * std::tanh(x / double(opt.softcap));
          keys.push_back(j);
          s.push_back(x);
        }
        select(keys, s);
        double mx = -std::numeric_limits<double>::infinity();
        for (double x : s) mx = std::max(mx, x);
        const bool sink = opt.sink_logits.data != nullptr;
        const double sink_logit = sink ? double(opt.sink_logits.data[h]) : 0.0;
        if (sink && sink_logit > mx) mx = sink_logit;
        if (mx == -std::numeric_limits<double>::infinity()) continue;  // fully masked: 0, -inf
        double sum = sink ? std::exp(sink_logit - mx) : 0.0;
        for (double& x : s) {
          x = std::exp(x - mx);
          sum += x;
        }
        for (std::size_t t = 0; t < keys.size(); ++t) {
          const double w = s[t] / sum;
          for (index_t d = 0; d < p.v_dim; ++d) r.o(b, h, i, d) += w * double(to_float(v(b, hk, keys[t], d)));
        }
        r.l(b, h, i) = mx + std::log(sum);
      }
    }
  return r;
}

}  // namespace detail

/// Reference of attnkit::attention.
template <class TQ, class TK, class TV, class Mask = no_mask>
result attention(const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
                 const Mask& mask = {}, const attention_options& opt = {}) {
  return detail::attend("reference::attention", q, k, v, mask, opt,
                        [](std::vector<index_t>&, std::vector<double>&) {});
}

/// Reference of attnkit::topk_attention: keeps each row's `topk` largest allowed scores,
/// ties to the lower key index.
template <class TQ, class TK, class TV, class Mask = no_mask>
result topk_attention(const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
                      index_t topk, const Mask& mask = {}, const attention_options& opt = {}) {
  if (topk < 1)
    attnkit::detail::fail("reference::topk_attention", attnkit::detail::message() << "argument 'topk' must be >= 1, got " << topk);
  return detail::attend("reference::topk_attention", q, k, v, mask, opt,
                        [topk](std::vector<index_t>& keys, std::vector<double>& s) {
                          if (index_t(keys.size()) <= topk) return;
                          std::vector<std::size_t> order(keys.size());
                          for (std::size_t t = 0; t < order.size(); ++t) order[t] = t;
                          std::stable_sort(order.begin(), order.end(),
                                           [&](std::size_t x, std::size_t y) { return s[x] > s[y]; });
                          order.resize(std::size_t(topk));
                          std::sort(order.begin(), order.end());
                          std::vector<index_t> k2;
                          std::vector<double> s2;
                          for (std::size_t t : order) {
                            k2.push_back(keys[t]);
                            s2.push_back(s[t]);
                          }
                          keys.swap(k2);
                          s.swap(s2);
                        });
}

/// Reference of attnkit::block_topk_attention (MoBA): gates q . mean(K_block) in double over
/// fully past blocks, keeps the topk_blocks best (ties to the lower block), then causal
/// attention over the own block and the selected ones.
template <class TQ, class TK, class TV>
result block_topk_attention(const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
                            index_t block, index_t topk_blocks, const attention_options& opt = {}) {
  const auto p = attnkit::detail::check_dense("reference::block_topk_attention", q, k, v, nullptr,
                                              tensor_view<float>{}, opt);
  if (block < 1 || topk_blocks < 0)
    attnkit::detail::fail("reference::block_topk_attention", attnkit::detail::message()
                                                                 << "arguments 'block' >= 1 and 'topk_blocks' >= 0 required, got block "
                                                                 << block << ", topk_blocks " << topk_blocks);
  const index_t group = p.q_heads / p.kv_heads, offset = p.kv_len - p.q_len, n_full = p.kv_len / block;
  // selected[(b * H + h) * Lq + i] holds the chosen blocks of that query
  std::vector<std::vector<index_t>> selected(std::size_t(p.batch * p.q_heads * p.q_len));
  std::vector<double> mean(std::size_t(p.qk_dim));
  for (index_t b = 0; b < p.batch; ++b)
    for (index_t h = 0; h < p.q_heads; ++h)
      for (index_t i = 0; i < p.q_len; ++i) {
        const index_t pos = i + offset;
        if (pos < 0) continue;
        const index_t past = std::min(pos / block, n_full);
        std::vector<std::pair<double, index_t>> gates;
        for (index_t j = 0; j < past; ++j) {
          double g = 0;
          for (index_t d = 0; d < p.qk_dim; ++d) {
            double m = 0;
            for (index_t r = j * block; r < (j + 1) * block; ++r) m += double(to_float(k(b, h / group, r, d)));
            g += double(to_float(q(b, h, i, d))) * (m / double(block));
          }
          gates.push_back({g, j});
        }
        std::stable_sort(gates.begin(), gates.end(), [](const auto& x, const auto& y) { return x.first > y.first; });
        auto& s = selected[std::size_t((b * p.q_heads + h) * p.q_len + i)];
        for (index_t t = 0; t < std::min<index_t>(topk_blocks, index_t(gates.size())); ++t) s.push_back(gates[std::size_t(t)].second);
      }
  const auto mask = mask_fn([&](std::int64_t b, std::int64_t h, std::int64_t qpos, std::int64_t key) {
    if (key > qpos) return false;
    if (key / block == qpos / block) return true;
    const auto& s = selected[std::size_t((b * p.q_heads + h) * p.q_len + (qpos - offset))];
    return std::find(s.begin(), s.end(), key / block) != s.end();
  });
  return detail::attend("reference::block_topk_attention", q, k, v, mask, opt,
                        [](std::vector<index_t>&, std::vector<double>&) {});
}

}  // namespace reference
}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
