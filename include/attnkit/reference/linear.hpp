// attnkit::reference for the linear-attention family: naive double-precision forms.
//
//   linear_attention            the quadratic masked form: for each query, the weights
//                               w_ij = phi(q_i) . phi(k_j) * lambda^(i-j) over its visible
//                               keys, out_i = sum_j w_ij v_j / guard(sum_j w_ij) (or the
//                               un-normalised sum), plus the contribution of an initial state.
//   linear_attention_recurrent  the token-by-token recurrence S_t = lambda S_{t-1} +
//                               phi(k_t) v_t^T (causal only), optionally returning the state.
//   efficient_attention         softmax_row(Q) (softmax_col(K)^T V), materialised.
//   mala_attention              sum_j (beta_i phi(q_i).phi(k_j) - gamma_i) v_j, materialised.
// Same semantics, argument checks and errors as the kernels (linear.hpp). Features of the
// built-in maps are computed in double from the float inputs; a feature_fn runs in float
// and is widened. The results' lse is empty (the family has none).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../linear.hpp"
#include "../linear_features.hpp"
#include "reference.hpp"

namespace attnkit {
inline namespace ATTNKIT_ISA_NS {
namespace reference {

/// A state in double: kv [batch][kv_heads][feature_dim][v_dim], z [batch][kv_heads][feature_dim].
struct linear_state_d {
  index_t batch = 0, kv_heads = 0, feature_dim = 0, v_dim = 0;
  std::vector<double> kv, z;
};

namespace detail {

/// phi of every row of x[b, h] (seq x d) in double: [seq][d'].
template <class T>
std::vector<double> features(const feature_ref& f, const tensor_view<T>& x, index_t b, index_t h) {
  const index_t n = x.seq(), d = x.dim(), dp = f.out_dim;
  std::vector<double> out(static_cast<std::size_t>(n * dp)), xd(static_cast<std::size_t>(d));
  std::vector<float> xf(static_cast<std::size_t>(d)), tmp(static_cast<std::size_t>(dp));
  for (index_t i = 0; i < n; ++i) {
    for (index_t c = 0; c < d; ++c) {
      xf[std::size_t(c)] = float(x(b, h, i, c));
      xd[std::size_t(c)] = double(xf[std::size_t(c)]);
    }
    attnkit::detail::feature_row_ref(f, xd.data(), d, out.data() + i * dp, xf.data(), tmp.data());
  }
  return out;
}

inline double guard(double den, double eps) { return den >= 0 ? den + eps : den - eps; }

inline double lambda_of(const linear_args& a, index_t kvh) { return a.decay ? double(a.decay[kvh]) : 1.0; }

template <class TQ, class TK, class TV, class FM>
linear_args checked(const char* fn, const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
                    const FM& fm, bool causal, const linear_options& opt, const linear_state* initial) {
  linear_args a = attnkit::detail::linear_args_of(fn, q, k, v, nullptr, opt);
  a.phi = attnkit::detail::checked_feature(fn, fm, a.qk_dim);
  a.causal = causal;
  if (causal && a.q_len != a.kv_len)
    attnkit::detail::fail(fn, attnkit::detail::message() << "causal linear attention needs seq of 'q' equal to seq of 'k' (q is "
                                                         << q.extents() << ", k is " << k.extents() << ")");
  attnkit::detail::check_decay(fn, opt, a.kv_heads, causal);
  a.decay = opt.decay.size > 0 ? opt.decay.data : nullptr;
  if (initial && !initial->empty()) {
    const std::array<std::int64_t, 4> want{{a.batch, a.kv_heads, a.phi.out_dim, a.v_dim}};
    if (initial->shape() != want)
      attnkit::detail::fail(fn, attnkit::detail::message() << "argument 'state' has shape " << initial->shape()
                                                           << ", expected " << want);
  }
  return a;
}

inline result make_result(const linear_args& a) {
  result r;
  r.batch = a.batch, r.heads = a.q_heads, r.q_len = a.q_len, r.v_dim = a.v_dim;
  r.out.assign(std::size_t(a.batch * a.q_heads * a.q_len * a.v_dim), 0.0);
  return r;
}

}  // namespace detail

/// The naive quadratic form of linear attention (see the file comment); `initial` is an
/// optional state the call starts from (as the kernel's `state` argument).
template <class TQ, class TK, class TV, class FM>
result linear_attention(const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
                        const FM& feature_map, bool causal, const linear_options& options = {},
                        const linear_state* initial = nullptr) {
  const linear_args a = detail::checked("reference::linear_attention", q, k, v, feature_map, causal, options, initial);
  result r = detail::make_result(a);
  const index_t group = a.q_heads / a.kv_heads, dp = a.phi.out_dim, dv = a.v_dim;
  const bool init = initial && !initial->empty();
  std::vector<double> num(static_cast<std::size_t>(dv));
  for (index_t b = 0; b < a.batch; ++b)
    for (index_t hk = 0; hk < a.kv_heads; ++hk) {
      const std::vector<double> fk = detail::features(a.phi, k, b, hk);
      const double lambda = detail::lambda_of(a, hk);
      for (index_t h = hk * group; h < (hk + 1) * group; ++h) {
        const std::vector<double> fq = detail::features(a.phi, q, b, h);
        for (index_t i = 0; i < a.q_len; ++i) {
          const double* pq = fq.data() + i * dp;
          std::fill(num.begin(), num.end(), 0.0);
          double den = 0;
          const index_t nk = causal ? i + 1 : a.kv_len;
          for (index_t j = 0; j < nk; ++j) {
            double w = 0;
            for (index_t f = 0; f < dp; ++f) w += pq[f] * fk[std::size_t(j * dp + f)];
            if (causal) w *= std::pow(lambda, double(i - j));
            for (index_t c = 0; c < dv; ++c) num[std::size_t(c)] += w * double(v(b, hk, j, c));
            den += w;
          }
          if (init) {
            const double keep = causal ? std::pow(lambda, double(i + 1)) : 1.0;
            const float* S = initial->kv(b, hk);
            const float* z = initial->normaliser(b, hk);
            for (index_t f = 0; f < dp; ++f) {
              for (index_t c = 0; c < dv; ++c) num[std::size_t(c)] += keep * pq[f] * double(S[f * dv + c]);
              den += keep * pq[f] * double(z[f]);
            }
          }
          const double m = a.normalize ? 1.0 / detail::guard(den, double(a.eps)) : 1.0;
          for (index_t c = 0; c < dv; ++c) r.o(b, h, i, c) = num[std::size_t(c)] * m;
        }
      }
    }
  return r;
}

/// The token-by-token recurrent form (causal only): S_t = lambda S_{t-1} + phi(k_t) v_t^T,
/// z_t = lambda z_{t-1} + phi(k_t), out_t = phi(q_t) S_t / guard(phi(q_t) . z_t). Starts
/// from `initial` when given; writes the final state to `final_state` when given.
template <class TQ, class TK, class TV, class FM>
result linear_attention_recurrent(const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
                                  const FM& feature_map, const linear_options& options = {},
                                  const linear_state* initial = nullptr, linear_state_d* final_state = nullptr) {
  const linear_args a =
      detail::checked("reference::linear_attention_recurrent", q, k, v, feature_map, true, options, initial);
  result r = detail::make_result(a);
  const index_t group = a.q_heads / a.kv_heads, dp = a.phi.out_dim, dv = a.v_dim;
  if (final_state) {
    final_state->batch = a.batch, final_state->kv_heads = a.kv_heads, final_state->feature_dim = dp;
    final_state->v_dim = dv;
    final_state->kv.assign(std::size_t(a.batch * a.kv_heads * dp * dv), 0.0);
    final_state->z.assign(std::size_t(a.batch * a.kv_heads * dp), 0.0);
  }
  std::vector<double> S(static_cast<std::size_t>(dp * dv)), z(static_cast<std::size_t>(dp));
  for (index_t b = 0; b < a.batch; ++b)
    for (index_t hk = 0; hk < a.kv_heads; ++hk) {
      const std::vector<double> fk = detail::features(a.phi, k, b, hk);
      std::vector<std::vector<double>> fq;
      for (index_t h = hk * group; h < (hk + 1) * group; ++h) fq.push_back(detail::features(a.phi, q, b, h));
      const double lambda = detail::lambda_of(a, hk);
      const bool init = initial && !initial->empty();
      for (index_t f = 0; f < dp; ++f) {
        for (index_t c = 0; c < dv; ++c) S[std::size_t(f * dv + c)] = init ? double(initial->kv(b, hk)[f * dv + c]) : 0.0;
        z[std::size_t(f)] = init ? double(initial->normaliser(b, hk)[f]) : 0.0;
      }
      for (index_t t = 0; t < a.q_len; ++t) {
        for (index_t f = 0; f < dp; ++f) {
          const double pk = fk[std::size_t(t * dp + f)];
          for (index_t c = 0; c < dv; ++c)
            S[std::size_t(f * dv + c)] = lambda * S[std::size_t(f * dv + c)] + pk * double(v(b, hk, t, c));
          z[std::size_t(f)] = lambda * z[std::size_t(f)] + pk;
        }
        for (index_t g = 0; g < group; ++g) {
          const index_t h = hk * group + g;
          const double* pq = fq[std::size_t(g)].data() + t * dp;
          double den = 0;
          for (index_t f = 0; f < dp; ++f) den += pq[f] * z[std::size_t(f)];
          const double m = a.normalize ? 1.0 / detail::guard(den, double(a.eps)) : 1.0;
          for (index_t c = 0; c < dv; ++c) {
            double s = 0;
            for (index_t f = 0; f < dp; ++f) s += pq[f] * S[std::size_t(f * dv + c)];
            r.o(b, h, t, c) = s * m;
          }
        }
      }
      if (final_state) {
        const index_t at = b * a.kv_heads + hk;
        for (index_t i = 0; i < dp * dv; ++i) final_state->kv[std::size_t(at * dp * dv + i)] = S[std::size_t(i)];
        for (index_t f = 0; f < dp; ++f) final_state->z[std::size_t(at * dp + f)] = z[std::size_t(f)];
      }
    }
  return r;
}

/// Efficient attention (Shen et al.), materialised in double: out = softmax_row(Q)
/// (softmax_col(K)^T V).
template <class TQ, class TK, class TV>
result efficient_attention(const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v) {
  const char* fn = "reference::efficient_attention";
  const linear_args a = attnkit::detail::linear_args_of(fn, q, k, v, nullptr, linear_options{});
  result r = detail::make_result(a);
  const index_t group = a.q_heads / a.kv_heads, d = a.qk_dim, dv = a.v_dim;
  std::vector<double> G(static_cast<std::size_t>(d * dv)), row(static_cast<std::size_t>(d));
  for (index_t b = 0; b < a.batch; ++b)
    for (index_t hk = 0; hk < a.kv_heads; ++hk) {
      std::fill(G.begin(), G.end(), 0.0);
      for (index_t f = 0; f < d; ++f) {
        double mx = -std::numeric_limits<double>::infinity(), sum = 0;
        for (index_t j = 0; j < a.kv_len; ++j) mx = std::max(mx, double(k(b, hk, j, f)));
        for (index_t j = 0; j < a.kv_len; ++j) sum += std::exp(double(k(b, hk, j, f)) - mx);
        for (index_t j = 0; j < a.kv_len; ++j) {
          const double w = std::exp(double(k(b, hk, j, f)) - mx) / sum;
          for (index_t c = 0; c < dv; ++c) G[std::size_t(f * dv + c)] += w * double(v(b, hk, j, c));
        }
      }
      for (index_t h = hk * group; h < (hk + 1) * group; ++h)
        for (index_t i = 0; i < a.q_len; ++i) {
          double mx = -std::numeric_limits<double>::infinity(), sum = 0;
          for (index_t f = 0; f < d; ++f) mx = std::max(mx, double(q(b, h, i, f)));
          for (index_t f = 0; f < d; ++f) sum += (row[std::size_t(f)] = std::exp(double(q(b, h, i, f)) - mx));
          for (index_t c = 0; c < dv; ++c) {
            double s = 0;
            for (index_t f = 0; f < d; ++f) s += row[std::size_t(f)] / sum * G[std::size_t(f * dv + c)];
            r.o(b, h, i, c) = s;
          }
        }
    }
  return r;
}

/// MALA, materialised in double: out_i = sum_j (beta_i phi(q_i).phi(k_j) - gamma_i) v_j with
/// s_i = sum_j phi(q_i).phi(k_j), beta_i = 1 + 1 / guard(s_i), gamma_i = s_i / Lk.
template <class TQ, class TK, class TV, class FM = elu_plus_one>
result mala_attention(const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
                      const FM& feature_map = {}, const linear_options& options = {}) {
  const linear_args a = detail::checked("reference::mala_attention", q, k, v, feature_map, false, options, nullptr);
  result r = detail::make_result(a);
  const index_t group = a.q_heads / a.kv_heads, dp = a.phi.out_dim, dv = a.v_dim;
  std::vector<double> w(static_cast<std::size_t>(a.kv_len));
  for (index_t b = 0; b < a.batch; ++b)
    for (index_t hk = 0; hk < a.kv_heads; ++hk) {
      const std::vector<double> fk = detail::features(a.phi, k, b, hk);
      for (index_t h = hk * group; h < (hk + 1) * group; ++h) {
        const std::vector<double> fq = detail::features(a.phi, q, b, h);
        for (index_t i = 0; i < a.q_len; ++i) {
          double s = 0;
          for (index_t j = 0; j < a.kv_len; ++j) {
            double x = 0;
            for (index_t f = 0; f < dp; ++f) x += fq[std::size_t(i * dp + f)] * fk[std::size_t(j * dp + f)];
            w[std::size_t(j)] = x;
            s += x;
          }
          const double beta = 1.0 + 1.0 / detail::guard(s, double(a.eps));
          const double gamma = a.kv_len > 0 ? s / double(a.kv_len) : 0.0;
          for (index_t c = 0; c < dv; ++c) {
            double o = 0;
            for (index_t j = 0; j < a.kv_len; ++j) o += (beta * w[std::size_t(j)] - gamma) * double(v(b, hk, j, c));
            r.o(b, h, i, c) = o;
          }
        }
      }
    }
  return r;
}

}  // namespace reference
}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
