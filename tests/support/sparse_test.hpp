// Helpers of the sparse-attention tests (masks, sinks, score hooks, top-k, block top-k),
// on top of attnkit_test.hpp.
//
//   - plain_fp32_general(): the plain fp32 yardstick of attnkit_test.hpp generalised: the
//     mask is a test-side callable `bool(b, h, q, k)` (absolute positions), with an optional
//     test-side score modifier, learned sink logits and a top-k selection (stable by score,
//     so ties go to the lower key). None of attnkit's policy code is used.
//   - d_causal, d_sliding, d_streaming, ...: test-side mask definitions (allowed_fn).
//   - sparse_case / sparse_run: a dense_case plus sink logits and quantised inputs (values
//     on a grid of multiples of 1/8, so that every q . k is exact in float and in double:
//     the reference, the yardstick and the kernels then agree bit for bit on scores, which
//     selections (top-k, block gates) and exact ties need).
//   - check_sparse_case(): one problem run through a kernel (a callable), the double
//     reference (a callable) and the yardstick, with every check of the accuracy criterion
//     of check_dense_case (<= 2 x plain fp32 error with the 1e-6 floor), plus: rows with no
//     allowed key give out exactly 0 and lse -inf, or lse equal to the sink logit.
//   - blocks: random block-mask bitmaps with forced all-zero and all-one rows.
#pragma once

#include "attnkit_test.hpp"

#include <functional>
#include <numeric>
#include <utility>

namespace attnkit_test {

using allowed_fn = std::function<bool(index_t b, index_t h, index_t q, index_t k)>;
using score_fn_t = std::function<float(float s, index_t b, index_t h, index_t q, index_t k)>;

/// The test-side definition of one problem: which pairs are allowed, the score modifier,
/// sink logits and top-k. Independent of attnkit's masks.
struct yard_spec {
  allowed_fn allowed;        // required
  score_fn_t score;          // empty: none
  const float* sinks = nullptr;
  index_t topk = 0;          // 0: all allowed keys
};

/// Plain fp32 attention (as in plain_fp32) with a test-side mask, score modifier, sinks and
/// top-k. Rows with no allowed key: out 0 and lse -inf, or lse = sink logit.
inline plain_result plain_fp32_general(const tensor_view<const float>& q, const tensor_view<const float>& k,
                                       const tensor_view<const float>& v, const yard_spec& y, float scale = 0.f,
                                       float softcap = 0.f) {
  plain_result r;
  r.B = q.extent(0), r.H = q.extent(1), r.Lq = q.extent(2), r.Dv = v.extent(3);
  const index_t Lk = k.extent(2), D = q.extent(3), group = r.H / k.extent(1), offset = Lk - r.Lq;
  if (scale == 0.f) scale = 1.f / std::sqrt(float(D));
  const float inf = std::numeric_limits<float>::infinity();
  r.out.assign(std::size_t(r.B * r.H * r.Lq * r.Dv), 0.f);
  r.lse.assign(std::size_t(r.B * r.H * r.Lq), -inf);
  std::vector<float> s;
  std::vector<index_t> keys;
  std::vector<std::size_t> order;
  for (index_t b = 0; b < r.B; ++b)
    for (index_t h = 0; h < r.H; ++h) {
      const index_t hk = h / group;
      for (index_t i = 0; i < r.Lq; ++i) {
        const index_t qpos = i + offset;
        s.clear();
        keys.clear();
        for (index_t j = 0; j < Lk; ++j) {
          if (!y.allowed(b, h, qpos, j)) continue;
          float dot = 0.f;
          for (index_t d = 0; d < D; ++d) dot += q(b, h, i, d) * k(b, hk, j, d);
          float x = dot * scale;
          if (y.score) x = y.score(x, b, h, qpos, j);
          if (softcap != 0.f) x = softcap * std::tanh(x / softcap);
          s.push_back(x);
          keys.push_back(j);
        }
        if (y.topk > 0 && index_t(s.size()) > y.topk) {
          order.resize(s.size());
          std::iota(order.begin(), order.end(), std::size_t(0));
          std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t c) { return s[a] > s[c]; });
          order.resize(std::size_t(y.topk));
          std::sort(order.begin(), order.end());
          std::vector<float> s2;
          std::vector<index_t> k2;
          for (std::size_t t : order) s2.push_back(s[t]), k2.push_back(keys[t]);
          s.swap(s2);
          keys.swap(k2);
        }
        float mx = -inf;
        for (float x : s) mx = std::max(mx, x);
        const bool sink = y.sinks != nullptr;
        if (sink) mx = std::max(mx, y.sinks[h]);
        if (mx == -inf) continue;
        float sum = sink ? std::exp(y.sinks[h] - mx) : 0.f;
        for (float& x : s) sum += (x = std::exp(x - mx));
        float* o = r.out.data() + ((b * r.H + h) * r.Lq + i) * r.Dv;
        for (std::size_t t = 0; t < s.size(); ++t)
          for (index_t c = 0; c < r.Dv; ++c) o[c] += (s[t] / sum) * v(b, hk, keys[t], c);
        r.lse[std::size_t((b * r.H + h) * r.Lq + i)] = mx + std::log(sum);
      }
    }
  return r;
}

// -----------------------------------------------------------------------------------------
// Cases

/// A dense_case (its `mask` field is unused) plus sink logits and quantised inputs.
struct sparse_case : dense_case {
  bool sinks = false;
  float sink_lo = -2.f, sink_hi = 2.f;
  // Quantisation steps (0: none): q, k and v are rounded to multiples of the step (after
  // the uniform fill, so the ranges still hold approximately).
  float q_step = 0.f, k_step = 0.f, v_step = 0.f;
  std::string what;  // the mask, in words

  sparse_case() = default;
  explicit sparse_case(const dense_case& d) : dense_case(d) {}
  /// q and k on the 1/8 grid in [-1, 1]: every q . k is exact (with a power-of-two scale).
  sparse_case& quantised(float step = 0.125f) {
    q_step = k_step = step;
    return *this;
  }
  std::string str() const {
    std::ostringstream s;
    // dense_case::str() names its own (unused) mask field: drop it, `what` names the mask
    std::string d = dense_case::str();
    const std::string unused = std::string(" ") + to_string(mask) + " ";
    const std::size_t at = d.find(unused);
    if (at != std::string::npos) d.replace(at, unused.size(), " ");
    s << what << " | " << d;
    if (sinks) s << " sinks~U[" << sink_lo << "," << sink_hi << "]";
    if (q_step != 0.f || k_step != 0.f) s << " quantised q/" << q_step << " k/" << k_step;
    if (v_step != 0.f) s << " v/" << v_step;
    return s.str();
  }
};

struct sparse_run : dense_run {
  std::vector<float> sink_values;  // one per query head, when the case asks
  sparse_run() = default;
  sparse_run(const sparse_run& o) : dense_run(o), sink_values(o.sink_values) {
    if (!sink_values.empty()) opts.sink_logits = {sink_values.data(), index_t(sink_values.size())};
  }
  sparse_run& operator=(const sparse_run&) = delete;
  const float* sinks() const { return sink_values.empty() ? nullptr : sink_values.data(); }
  tensor_view<float> lse_view(const dense_case& c) const { return c.lse ? lse.view : tensor_view<float>{}; }
};

/// Bitwise equality of two runs' lse buffers (gaps and guards included).
inline bool same_lse(const sparse_run& a, const sparse_run& b) {
  return a.lse.buf.size() == b.lse.buf.size() &&
         std::memcmp(a.lse.buf.data(), b.lse.buf.data(), a.lse.buf.size() * sizeof(float)) == 0;
}

inline void quantise(tensor& t, float step) {
  if (step == 0.f) return;
  t.for_each([&](index_t b, index_t h, index_t s, index_t d) {
    float& x = t(b, h, s, d);
    x = std::nearbyint(x / step) * step;
  });
}

inline sparse_run make_sparse_inputs(const sparse_case& c) {
  sparse_run r;
  static_cast<dense_run&>(r) = make_inputs(c);
  quantise(r.q, c.q_step);
  quantise(r.k, c.k_step);
  quantise(r.v, c.v_step);
  if (c.sinks) {
    std::mt19937 gen(c.seed * 4 + 3);
    std::uniform_real_distribution<float> u(c.sink_lo, c.sink_hi);
    for (index_t h = 0; h < c.q_heads; ++h) r.sink_values.push_back(u(gen));
    r.opts.sink_logits = {r.sink_values.data(), c.q_heads};
  }
  return r;
}

/// Accuracy of a sparse problem plus the rows the test-side mask leaves without any key.
struct sparse_accuracy : accuracy {
  index_t empty_rows = 0;       // rows with no allowed key (test-side definition)
  index_t empty_bad_out = 0;    // elements of such rows that are not exactly +0 / -0
  index_t empty_bad_lse = 0;    // such rows whose lse is not -inf (no sinks) / the sink logit
};

/// Runs `run(sparse_run&)` (the kernel under test, writing r.out and r.lse), `ref(const
/// sparse_run&)` (the double reference, built with the test-side mask) and the yardstick
/// of `y`, and checks the criterion of check_dense_case. `y.sinks` is filled in here.
/// `prepare(sparse_run&)` may reshape the inputs first (e.g. repeat keys to force ties).
template <class Run, class Ref, class Prepare>
sparse_accuracy check_sparse_case(const sparse_case& c, const std::string& isa, yard_spec y, Run&& run, Ref&& ref,
                                  Prepare&& prepare) {
  INFO("case: " << c.str());
  sparse_run r = make_sparse_inputs(c);
  prepare(r);
  const sparse_run before = r;
  run(r);
  const attnkit::reference::result rr = ref(static_cast<const sparse_run&>(r));
  y.sinks = r.sinks();
  const plain_result plain = plain_fp32_general(r.q.cview(), r.k.cview(), r.v.cview(), y, c.scale, c.softcap);
  sparse_accuracy a;
  static_cast<accuracy&>(a) = compare(r.out, c.lse ? &r.lse : nullptr, rr, plain);
  ratio_registry::get().record(isa, a, c.str());
  // Rows without any allowed key (test-side mask): exactly 0, lse -inf or the sink logit.
  const index_t offset = c.kv_len - c.q_len;
  for (index_t b = 0; b < c.batch; ++b)
    for (index_t h = 0; h < c.q_heads; ++h)
      for (index_t i = 0; i < c.q_len; ++i) {
        bool any = false;
        for (index_t j = 0; j < c.kv_len && !any; ++j) any = y.allowed(b, h, i + offset, j);
        if (any) continue;
        ++a.empty_rows;
        for (index_t d = 0; d < c.dv(); ++d) a.empty_bad_out += r.out(b, h, i, d) != 0.f;
        if (c.lse) {
          const float l = r.lse(b, h, i);
          const bool ok = c.sinks ? l == r.sink_values[std::size_t(h)] : (std::isinf(l) && l < 0);
          a.empty_bad_lse += !ok;
        }
      }
  INFO("attnkit err " << a.err << ", plain fp32 err " << a.plain_err << " (ratio " << a.ratio() << "), lse err "
                      << a.lse_err << ", plain lse err " << a.plain_lse_err << ", rows without keys "
                      << a.empty_rows);
  CHECK(a.empty_bad_out == 0);
  CHECK(a.empty_bad_lse == 0);
  check_accuracy(a, c, r, before);
  return a;
}

template <class Run, class Ref>
sparse_accuracy check_sparse_case(const sparse_case& c, const std::string& isa, yard_spec y, Run&& run, Ref&& ref) {
  return check_sparse_case(c, isa, std::move(y), std::forward<Run>(run), std::forward<Ref>(ref), [](sparse_run&) {});
}

// -----------------------------------------------------------------------------------------
// Block-mask bitmaps

/// An owning bitmap for attnkit::block_mask: heads x q_blocks x k_blocks bytes.
struct bitmap {
  index_t heads = 1, qb = 0, kb = 0, block_q = 1, block_k = 1;
  std::vector<std::uint8_t> bits;

  bitmap() = default;
  /// Sized for `kv_len` keys (q_blocks = ceil(Lk / block_q), k_blocks = ceil(Lk / block_k)).
  bitmap(index_t heads_, index_t kv_len, index_t bq, index_t bk)
      : heads(heads_), qb((kv_len + bq - 1) / bq), kb((kv_len + bk - 1) / bk), block_q(bq), block_k(bk) {
    bits.assign(std::size_t(heads * qb * kb), 0);
  }
  std::uint8_t& at(index_t h, index_t q, index_t k) { return bits[std::size_t((h * qb + q) * kb + k)]; }
  std::uint8_t at(index_t h, index_t q, index_t k) const { return bits[std::size_t((h * qb + q) * kb + k)]; }

  /// Random bits of the given density; per head, query block `zero_row` (if in range) is
  /// all zero and `one_row` all one. Set bits are arbitrary non-zero bytes.
  bitmap& random(std::uint32_t seed, double density, index_t zero_row = -1, index_t one_row = -1) {
    std::mt19937 gen(seed);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::uniform_int_distribution<int> byte(1, 255);
    for (index_t h = 0; h < heads; ++h)
      for (index_t q = 0; q < qb; ++q)
        for (index_t k = 0; k < kb; ++k) {
          const bool on = q == one_row || (q != zero_row && u(gen) < density);
          at(h, q, k) = on ? std::uint8_t(byte(gen)) : 0;
        }
    return *this;
  }
  bitmap& fill(std::uint8_t x) {
    std::fill(bits.begin(), bits.end(), x);
    return *this;
  }
  attnkit::block_mask mask() const { return attnkit::block_mask(bits.data(), heads, qb, kb, block_q, block_k); }
  /// The test-side definition: query position q (of query head h) and key k are allowed
  /// when both are non-negative and the bit of their blocks is set.
  bool allowed(index_t h, index_t q, index_t k) const {
    if (q < 0 || k < 0) return false;
    return at(heads == 1 ? 0 : h, q / block_q, k / block_k) != 0;
  }
  std::string str() const {
    std::ostringstream s;
    s << "bitmap heads=" << heads << " " << qb << "x" << kb << " blocks of " << block_q << "x" << block_k;
    return s.str();
  }
};

// -----------------------------------------------------------------------------------------
// Test-side mask definitions (absolute positions, independent of mask/masks.hpp)

inline allowed_fn d_all() {
  return [](index_t, index_t, index_t, index_t) { return true; };
}
inline allowed_fn d_causal() {
  return [](index_t, index_t, index_t q, index_t k) { return k <= q; };
}
inline allowed_fn d_sliding(index_t w) {
  return [w](index_t, index_t, index_t q, index_t k) { return 0 <= q - k && q - k < w; };
}
inline allowed_fn d_local(index_t l, index_t r) {
  // on the distance q - k, which never overflows (huge sides work too)
  return [l, r](index_t, index_t, index_t q, index_t k) { return q - k <= l && k - q <= r; };
}
inline allowed_fn d_sink(index_t n) {
  return [n](index_t, index_t, index_t, index_t k) { return k < n; };
}
inline allowed_fn d_bitmap(const bitmap& bm) {
  return [&bm](index_t, index_t h, index_t q, index_t k) { return bm.allowed(h, q, k); };
}
inline allowed_fn d_and(allowed_fn a, allowed_fn b) {
  return [a, b](index_t bi, index_t h, index_t q, index_t k) { return a(bi, h, q, k) && b(bi, h, q, k); };
}
inline allowed_fn d_or(allowed_fn a, allowed_fn b) {
  return [a, b](index_t bi, index_t h, index_t q, index_t k) { return a(bi, h, q, k) || b(bi, h, q, k); };
}
inline allowed_fn d_streaming(index_t w, index_t sinks = 4) { return d_and(d_or(d_sliding(w), d_sink(sinks)), d_causal()); }

}  // namespace attnkit_test
