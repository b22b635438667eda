// Shared pieces of attnkit's benchmark executables: run configuration, shapes, FLOP
// counting, cached random inputs and the tail-row accuracy check.
//
// FLOPs count only the (query, key) pairs a mask allows (style.md F): one pair costs
// 2 * qk_dim FLOPs for the score (multiply + add) and 2 * v_dim for P.V, i.e.
// 4 * head_dim with qk_dim == v_dim. Softmax work (exp, max, sum, divide) and work on
// masked pairs are not counted, so a kernel that computes masked pairs anyway (the
// materialised Eigen baseline) is charged for them in time, not credited in FLOPs.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <attnkit/attnkit.hpp>

namespace attnkit_bench {

/// Options our own main() parses before Google Benchmark sees argv.
struct config {
  int threads = 2;     // --threads=N: OpenMP threads for every threaded benchmark
  bool quick = false;  // --quick or ATTNKIT_BENCH_QUICK=1: fewer repetitions and iterations
};

enum class mask_kind { none, causal };

struct shape {
  std::int64_t batch = 1, q_heads = 32, kv_heads = 8, q_len = 4096, kv_len = 4096, dim = 128;
  mask_kind mask = mask_kind::causal;

  /// Benchmark-name suffix, identical for every kernel run on this shape, e.g.
  /// "causal_b1_hq32_hkv8_s4096_d128" (or "..._q512_k1024_..." when q_len != kv_len).
  std::string label() const {
    std::string s = mask == mask_kind::causal ? "causal" : "nomask";
    s += "_b" + std::to_string(batch) + "_hq" + std::to_string(q_heads) + "_hkv" + std::to_string(kv_heads);
    if (q_len == kv_len)
      s += "_s" + std::to_string(q_len);
    else
      s += "_q" + std::to_string(q_len) + "_k" + std::to_string(kv_len);
    s += "_d" + std::to_string(dim);
    return s;
  }
};

/// The acceptance shape (a): batch 1, 32 query heads, 8 KV heads, head_dim 128, seq 4096,
/// causal.
inline shape headline_shape() { return shape{}; }

/// Allowed (query, key) pairs of one (batch, head): query row i sits at absolute position
/// i + (Lk - Lq) (bottom-right alignment, as in attnkit) and, under causal, sees keys
/// 0 .. position, clipped to [0, Lk].
inline double allowed_pairs(const shape& s) {
  if (s.mask == mask_kind::none) return double(s.q_len) * double(s.kv_len);
  double pairs = 0;
  for (std::int64_t i = 0; i < s.q_len; ++i) {
    std::int64_t n = i + (s.kv_len - s.q_len) + 1;
    if (n < 0) n = 0;
    if (n > s.kv_len) n = s.kv_len;
    pairs += double(n);
  }
  return pairs;
}

/// FLOPs of one attention call: 4 * allowed pairs * head_dim * q_heads * batch.
inline double attention_flops(const shape& s) {
  return 2.0 * allowed_pairs(s) * double(s.dim + s.dim) * double(s.q_heads) * double(s.batch);
}

/// Contiguous [B, H, S, D] inputs, uniform in [-1, 1], fixed seed.
struct inputs {
  std::vector<float> q, k, v;
};

inline void fill_uniform(std::vector<float>& x, std::size_t n, std::uint32_t seed) {
  x.resize(n);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (auto& e : x) e = u(rng);
}

/// Inputs depend on the shape's sizes only (not on its mask) and are generated once per
/// process, so repetitions and kernels on the same shape read identical data.
inline const inputs& inputs_for(const shape& s) {
  using key_t = std::tuple<std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t>;
  static std::map<key_t, std::unique_ptr<inputs>> cache;
  const key_t key{s.batch, s.q_heads, s.kv_heads, s.q_len, s.kv_len, s.dim};
  auto& slot = cache[key];
  if (!slot) {
    slot = std::make_unique<inputs>();
    fill_uniform(slot->q, std::size_t(s.batch * s.q_heads * s.q_len * s.dim), 1u);
    fill_uniform(slot->k, std::size_t(s.batch * s.kv_heads * s.kv_len * s.dim), 2u);
    fill_uniform(slot->v, std::size_t(s.batch * s.kv_heads * s.kv_len * s.dim), 3u);
  }
  return *slot;
}

/// The last `rows` query rows of every (batch, query head) as a view with Lq = rows. With
/// bottom-right alignment they keep their absolute positions (i + Lk - Lq), so a mask or a
/// top-k selection sees them exactly as in the full call: the reference run on this view
/// gives those rows of the full output, at a fraction of the cost.
inline attnkit::tensor_view<const float> tail_queries(const shape& s, const inputs& in, std::int64_t rows) {
  const std::int64_t first = s.q_len - rows, d = s.dim;
  return attnkit::tensor_view<const float>(in.q.data() + first * d, {{s.batch, s.q_heads, rows, d}},
                                           {{s.q_heads * s.q_len * d, s.q_len * d, d, 1}});
}

/// Max abs difference between the last ref.q_len query rows of `out` (contiguous
/// [batch, q_heads, q_len, dim] of shape s) and a reference run on tail_queries(). NaN wins.
inline double tail_error(const shape& s, const std::vector<float>& out, const attnkit::reference::result& ref) {
  const std::int64_t rows = ref.q_len, first = s.q_len - rows, d = s.dim;
  double e = 0;
  for (std::int64_t b = 0; b < s.batch; ++b)
    for (std::int64_t h = 0; h < s.q_heads; ++h)
      for (std::int64_t i = 0; i < rows; ++i)
        for (std::int64_t j = 0; j < d; ++j) {
          const double x = out[std::size_t(((b * s.q_heads + h) * s.q_len + first + i) * d + j)];
          const double di = std::abs(x - ref.o(b, h, i, j));
          if (!(di <= e)) e = di;  // NaN propagates as the error
        }
  return e;
}

/// Median of a sample (0 if empty).
inline double median_of(std::vector<double> x) {
  if (x.empty()) return 0;
  std::sort(x.begin(), x.end());
  const std::size_t n = x.size();
  return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

}  // namespace attnkit_bench
