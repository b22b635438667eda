// Feature maps of linear attention: the one place that defines them.
//
// A feature map phi turns a query or key row x (dim d) into d' non-negative-or-not features;
// linear attention then scores a pair by phi(q) . phi(k). Each map appears here three
// times, side by side: its public tag, its output dimension, and its arithmetic, once with
// SIMD for the kernels (float) and once in double for the reference. To add a map: a tag,
// an enumerator in core/linear_args.hpp, and one case in each switch below.
//
//   elu_plus_one   phi(x)_i = x_i + 1 (x_i > 0), exp(x_i) otherwise       d' = d   (Katharopoulos et al.)
//   relu_map       phi(x)_i = max(x_i, 0)                                  d' = d
//   identity_map   phi(x)_i = x_i                                          d' = d
//   taylor2        [1, x / d^(1/4), the upper triangle of x x^T / sqrt(2d)] d' = 1 + d + d(d+1)/2
//                  (Based: phi(q) . phi(k) = 1 + q.k / sqrt(d) + (q.k)^2 / (2d), the
//                  2nd-order Taylor expansion of exp(q.k / sqrt(d)). The symmetric half
//                  stores x_i x_j once for i < j with weight sqrt(2) / sqrt(2d) = 1/sqrt(d),
//                  and x_i^2 with weight 1/sqrt(2d), which gives the same dot products.)
//   feature_fn(f, n)  any callable f(const float* x, std::int64_t d, float* y) writing n
//                  features; it may run on several threads at once.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "config.hpp"
#include "core/linear_args.hpp"
#include "simd/math.hpp"
#include "simd/simd.hpp"

namespace attnkit {

/// phi(x) = elu(x) + 1, elementwise (Katharopoulos et al., "Transformers are RNNs").
struct elu_plus_one {};
/// phi(x) = max(x, 0), elementwise. A row with no positive feature scores 0 with every key.
struct relu_map {};
/// phi(x) = x: plain (un-normalised, usually with decay) linear attention.
struct identity_map {};
/// Based's second-order Taylor feature map (see the table at the top of this file).
struct taylor2 {};

/// A user feature map: f(x, d, y) writes out_dim features of the row x[0..d) to y.
template <class F>
struct custom_feature_map {
  F f;
  std::int64_t out_dim = 0;
};

/// Wraps a callable `void(const float* x, std::int64_t d, float* y)` producing out_dim
/// features per row. It is called concurrently from the kernel's threads.
template <class F>
custom_feature_map<F> feature_fn(F f, std::int64_t out_dim) {
  return custom_feature_map<F>{f, out_dim};
}

template <class T>
struct is_feature_map : std::false_type {};
template <>
struct is_feature_map<elu_plus_one> : std::true_type {};
template <>
struct is_feature_map<relu_map> : std::true_type {};
template <>
struct is_feature_map<identity_map> : std::true_type {};
template <>
struct is_feature_map<taylor2> : std::true_type {};
template <class F>
struct is_feature_map<custom_feature_map<F>> : std::true_type {};

inline namespace ATTNKIT_ISA_NS {
namespace detail {

/// d' of a built-in map for input dim d (custom maps carry their own).
inline std::int64_t feature_dim(feature_kind k, std::int64_t d) noexcept {
  switch (k) {
    case feature_kind::taylor2: return 1 + d + d * (d + 1) / 2;
    default: return d;
  }
}

template <class F>
void call_custom_feature(const void* ctx, const float* x, std::int64_t d, float* y) {
  static_cast<const custom_feature_map<F>*>(ctx)->f(x, d, y);
}

// Tag -> feature_ref. The custom map's ctx points at the caller's object, which outlives
// the call.
inline feature_ref feature_of(const elu_plus_one&, std::int64_t d) noexcept {
  return feature_ref{feature_kind::elu_plus_one, feature_dim(feature_kind::elu_plus_one, d), nullptr, nullptr};
}
inline feature_ref feature_of(const relu_map&, std::int64_t d) noexcept {
  return feature_ref{feature_kind::relu, feature_dim(feature_kind::relu, d), nullptr, nullptr};
}
inline feature_ref feature_of(const identity_map&, std::int64_t d) noexcept {
  return feature_ref{feature_kind::identity, feature_dim(feature_kind::identity, d), nullptr, nullptr};
}
inline feature_ref feature_of(const taylor2&, std::int64_t d) noexcept {
  return feature_ref{feature_kind::taylor2, feature_dim(feature_kind::taylor2, d), nullptr, nullptr};
}
template <class F>
feature_ref feature_of(const custom_feature_map<F>& m, std::int64_t) noexcept {
  return feature_ref{feature_kind::custom, m.out_dim, &call_custom_feature<F>, &m};
}

// Elementwise maps on SIMD registers; the one definition the kernels use.
template <class Arch>
ATTNKIT_ALWAYS_INLINE simd::vfloat<Arch> elementwise_feature(feature_kind k, const simd::vfloat<Arch>& x) noexcept {
  using B = simd::vfloat<Arch>;
  switch (k) {
    case feature_kind::elu_plus_one: return xsimd::select(x > B(0.f), x + B(1.f), simd::exp<Arch>(x));
    case feature_kind::relu: return xsimd::select(x > B(0.f), x, B(0.f));
    default: return x;
  }
}

/// y[0..d') = phi(x[0..d)) in float. y needs no alignment.
template <class Arch>
void feature_row(const feature_ref& f, const float* x, std::int64_t d, float* y) noexcept {
  using B = simd::vfloat<Arch>;
  constexpr std::int64_t W = B::size;
  switch (f.kind) {
    case feature_kind::custom: f.fn(f.ctx, x, d, y); return;
    case feature_kind::taylor2: {
      // Same order of operations as the tail loops: (x_i * c) * x_j, one rounding each.
      const float r4 = float(1.0 / std::sqrt(std::sqrt(double(d))));
      const float c1 = float(1.0 / std::sqrt(double(d)));
      const float c2 = float(1.0 / std::sqrt(2.0 * double(d)));
      y[0] = 1.f;
      float* lin = y + 1;
      std::int64_t j = 0;
      for (; j + W <= d; j += W) (B::load_unaligned(x + j) * B(r4)).store_unaligned(lin + j);
      for (; j < d; ++j) lin[j] = x[j] * r4;
      float* quad = y + 1 + d;
      for (std::int64_t i = 0; i < d; ++i) {
        const float xi = x[i];
        const float a = xi * c1;
        quad[0] = (xi * c2) * xi;
        std::int64_t jj = i + 1;
        for (; jj + W <= d; jj += W) (B(a) * B::load_unaligned(x + jj)).store_unaligned(quad + (jj - i));
        for (; jj < d; ++jj) quad[jj - i] = a * x[jj];
        quad += d - i;
      }
      return;
    }
    default: {
      std::int64_t j = 0;
      for (; j + W <= d; j += W) elementwise_feature<Arch>(f.kind, B::load_unaligned(x + j)).store_unaligned(y + j);
      if (j < d) {  // the tail through one padded register: the same arithmetic as the body
        alignas(64) float t[W];
        for (std::int64_t i = 0; i < W; ++i) t[i] = j + i < d ? x[j + i] : 0.f;
        elementwise_feature<Arch>(f.kind, B::load_aligned(t)).store_aligned(t);
        for (std::int64_t i = 0; j + i < d; ++i) y[j + i] = t[i];
      }
      return;
    }
  }
}

/// y[0..d') = phi(x[0..d)) in double, for the reference. A custom map runs in float on
/// `tmp` (out_dim floats) and is widened.
inline void feature_row_ref(const feature_ref& f, const double* x, std::int64_t d, double* y, const float* xf,
                            float* tmp) {
  switch (f.kind) {
    case feature_kind::elu_plus_one:
      for (std::int64_t i = 0; i < d; ++i) y[i] = x[i] > 0 ? x[i] + 1.0 : std::exp(x[i]);
      return;
    case feature_kind::relu:
      for (std::int64_t i = 0; i < d; ++i) y[i] = x[i] > 0 ? x[i] : 0.0;
      return;
    case feature_kind::identity:
      for (std::int64_t i = 0; i < d; ++i) y[i] = x[i];
      return;
    case feature_kind::taylor2: {
      const double r4 = 1.0 / std::sqrt(std::sqrt(double(d))), c1 = 1.0 / std::sqrt(double(d)),
                   c2 = 1.0 / std::sqrt(2.0 * double(d));
      y[0] = 1.0;
      for (std::int64_t i = 0; i < d; ++i) y[1 + i] = x[i] * r4;
      double* quad = y + 1 + d;
      for (std::int64_t i = 0; i < d; ++i) {
        quad[0] = x[i] * x[i] * c2;
        for (std::int64_t j = i + 1; j < d; ++j) quad[j - i] = x[i] * x[j] * c1;
        quad += d - i;
      }
      return;
    }
    case feature_kind::custom:
      f.fn(f.ctx, xf, d, tmp);
      for (std::int64_t i = 0; i < f.out_dim; ++i) y[i] = double(tmp[i]);
      return;
  }
}

}  // namespace detail
}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
