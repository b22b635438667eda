// Log-sum-exp merge of partial attention results: the split-KV decode path and the public
// merge_partials share this one row combiner.
//
// A partial result over a key subset is (o_s, lse_s) with o_s normalised over that subset.
// Over the union: L = log(sum_s exp(lse_s)) and out = sum_s exp(lse_s - L) o_s. A learned
// sink logit is one more term with no value. Partials with lse = -inf (no allowed key) carry
// no weight and their outputs are never read, so they may hold anything.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "../config.hpp"

namespace attnkit {
inline namespace ATTNKIT_ISA_NS {
namespace detail {

/// Writes the merged row to out[0, dv) and returns its lse. lse_of(s) and out_of(s) give
/// partial s (s < n); `sink` may be null.
template <class LseOf, class OutOf>
inline float merge_row(std::int64_t n, const LseOf& lse_of, const OutOf& out_of, const float* sink, float* out,
                       std::int64_t dv) noexcept {
  constexpr float minus_inf = -std::numeric_limits<float>::infinity();
  float mx = sink ? *sink : minus_inf;
  for (std::int64_t s = 0; s < n; ++s) mx = lse_of(s) > mx ? lse_of(s) : mx;
  for (std::int64_t d = 0; d < dv; ++d) out[d] = 0.f;
  if (mx == minus_inf) return minus_inf;  // no allowed key anywhere (and no sink)
  float sum = sink ? std::exp(*sink - mx) : 0.f;
  for (std::int64_t s = 0; s < n; ++s) sum += std::exp(lse_of(s) - mx);
  const float inv = 1.f / sum;
  for (std::int64_t s = 0; s < n; ++s) {
    const float l = lse_of(s);
    if (l == minus_inf) continue;
    const float w = std::exp(l - mx) * inv;
    const float* o = out_of(s);
    for (std::int64_t d = 0; d < dv; ++d) out[d] += w * o[d];
  }
  return mx + std::log(sum);
}

}  // namespace detail
}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
