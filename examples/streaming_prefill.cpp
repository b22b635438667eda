// A 32k-token StreamingLLM-style prefill: each token attends to the 4 attention-sink tokens
// and a window of the last 1024 tokens, against dense causal attention on the same inputs.
// Run: ./streaming_prefill [seq] [window]
#include <attnkit/attnkit.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

int main(int argc, char** argv) {
  const std::int64_t seq = argc > 1 ? std::atoll(argv[1]) : 32768;
  const std::int64_t window = argc > 2 ? std::atoll(argv[2]) : 1024;
  const std::int64_t q_heads = 8, kv_heads = 2, dim = 64;

  std::mt19937 rng(0);
  std::uniform_real_distribution<float> uni(-1.f, 1.f);
  std::vector<float> q(std::size_t(seq * q_heads * dim)), k(std::size_t(seq * kv_heads * dim)),
      v(std::size_t(seq * kv_heads * dim)), out_stream(q.size()), out_dense(q.size());
  for (auto* buf : {&q, &k, &v})
    for (float& x : *buf) x = uni(rng);
  // [seq, heads, dim]: the layout a fused QKV projection produces.
  auto qv = attnkit::make_bshd(q.data(), 1, seq, q_heads, dim);
  auto kv = attnkit::make_bshd(k.data(), 1, seq, kv_heads, dim);
  auto vv = attnkit::make_bshd(v.data(), 1, seq, kv_heads, dim);

  const auto streaming = (attnkit::sliding_window{window} | attnkit::sink_tokens{4}) & attnkit::causal{};
  auto time = [](auto&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  const double t_stream = time([&] {
    attnkit::attention(qv, kv, vv, attnkit::make_bshd(out_stream.data(), 1, seq, q_heads, dim), streaming);
  });
  const double t_dense = time([&] {
    attnkit::attention(qv, kv, vv, attnkit::make_bshd(out_dense.data(), 1, seq, q_heads, dim), attnkit::causal{});
  });

  // Allowed pairs of each pattern (a query at position p sees min(p + 1, window) window keys
  // plus the sinks that lie before the window).
  double pairs_stream = 0, pairs_dense = 0;
  for (std::int64_t p = 0; p < seq; ++p) {
    const std::int64_t w = p + 1 < window ? p + 1 : window;
    const std::int64_t sinks_outside = p + 1 - w < 4 ? p + 1 - w : 4;
    pairs_stream += double(w + sinks_outside);
    pairs_dense += double(p + 1);
  }
  std::printf("attnkit %s, seq %lld, %lld query heads / %lld kv heads, head_dim %lld\n", attnkit::backend_name(),
              (long long)seq, (long long)q_heads, (long long)kv_heads, (long long)dim);
  std::printf("  StreamingLLM (4 sinks + window %lld): %8.1f ms  (%.1f%% of the causal pairs)\n", (long long)window,
              t_stream * 1e3, 100.0 * pairs_stream / pairs_dense);
  std::printf("  dense causal                        : %8.1f ms\n", t_dense * 1e3);
  std::printf("  speed-up %.1fx\n", t_dense / t_stream);
  return 0;
}
