// Score modifiers: a hook that changes each score before the softmax.
//
// score_fn(f) wraps any `float(float s, b, h, q, k)` callable; it is applied after scaling
// and before softcap and masking (q, k absolute positions, h the query head). A modifier
// travels with a mask: with_score(mask, score_fn(f)) is a mask that also modifies scores
// (use with_score(no_mask{}, ...) for none). Compose masks first, then attach the modifier:
// `&` and `|` refuse operands that carry one, so a modifier is never dropped silently.
// Without a modifier the kernels contain no call at all.
#pragma once

#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "masks.hpp"

namespace attnkit {

template <class F>
struct score_mod {
  F f;
  ATTNKIT_ALWAYS_INLINE float operator()(float s, std::int64_t b, std::int64_t h, std::int64_t q,
                                         std::int64_t k) const {
    return f(s, b, h, q, k);
  }
};

template <class F>
score_mod<F> score_fn(F f) {
  return score_mod<F>{std::move(f)};
}

/// A mask plus a score modifier; the driver calls `score` on every computed score.
template <class Mask, class F>
struct scored_mask : Mask {
  score_mod<F> mod;
  scored_mask(const Mask& m, score_mod<F> s) : Mask(m), mod(std::move(s)) {}
  ATTNKIT_ALWAYS_INLINE float score(float s, std::int64_t b, std::int64_t h, std::int64_t q,
                                    std::int64_t k) const {
    return mod(s, b, h, q, k);
  }
};

template <class Mask, class F>
scored_mask<Mask, F> with_score(const Mask& mask, score_mod<F> mod) {
  static_assert(is_mask<Mask>::value, "attnkit::with_score: the first argument must be a mask");
  return scored_mask<Mask, F>(mask, std::move(mod));
}

/// ALiBi: adds slope[h] * (k - q) to each score (a linear penalty on distance for keys
/// before the query). `slopes` holds one value per query head and must outlive the calls.
struct alibi_bias {
  const float* slopes = nullptr;
  ATTNKIT_ALWAYS_INLINE float operator()(float s, std::int64_t, std::int64_t h, std::int64_t q,
                                         std::int64_t k) const noexcept {
    return s + slopes[h] * float(k - q);
  }
};
inline score_mod<alibi_bias> alibi(const float* slopes) { return score_mod<alibi_bias>{alibi_bias{slopes}}; }

inline namespace ATTNKIT_ISA_NS {
/// The standard ALiBi slopes for `heads` heads (Press et al.): 2^(-8 i / n) for i = 1..n,
/// with the interleaving rule for heads that are not a power of two.
inline std::vector<float> alibi_slopes(std::int64_t heads) {
  auto pow2_slopes = [](std::int64_t n) {
    std::vector<float> s;
    const double start = std::pow(2.0, -8.0 / double(n));
    for (std::int64_t i = 0; i < n; ++i) s.push_back(float(std::pow(start, double(i + 1))));
    return s;
  };
  std::int64_t p = 1;
  while (p * 2 <= heads) p *= 2;
  std::vector<float> s = pow2_slopes(p);
  if (p < heads) {
    const std::vector<float> extra = pow2_slopes(2 * p);
    for (std::int64_t i = 0; i < heads - p; ++i) s.push_back(extra[std::size_t(2 * i)]);
  }
  return s;
}
}  // namespace ATTNKIT_ISA_NS

}  // namespace attnkit
