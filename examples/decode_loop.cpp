// Decode loop of a grouped-query attention layer (32 query heads, 8 KV heads, head_dim 128)
// over a growing attnkit::kv_cache: append the prompt's K/V, then generate tokens one at a
// time (append the new token's k and v, attend its query over the whole cache).
//
//   decode_loop [prompt=4096] [tokens=64] [window=1024]
//
// Runs fp32 and bf16 caches, contiguous and paged (16-token pages), then a StreamingLLM
// cache (4 sinks + `window` recent tokens) whose cost per token stays O(window) however
// long the sequence gets. Prints tokens/s (whole step: append + attention) and the GB/s of
// K/V that attention reads per step (held tokens x kv_heads x (k + v dims) x bytes), the
// number to hold against the machine's memory bandwidth: decode reads every cached byte
// once per token and does little arithmetic on it. Inputs are random (a real model would
// project them and apply RoPE at the positions kv_cache reports); the prompt's own
// attention (prefill) is not part of this example.
//
// A step lasts milliseconds, so on a machine shared with other busy processes OpenMP's
// spinning barriers (a worker descheduled while the others wait) can cost more than the
// attention itself; OMP_WAIT_POLICY=passive avoids that.
#include <attnkit/attnkit.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

namespace {

using attnkit::index_t;
using clock_type = std::chrono::steady_clock;

constexpr index_t q_heads = 32, kv_heads = 8, head_dim = 128;

struct inputs {
  index_t prompt, tokens;
  std::vector<float> k, v, q;  // [prompt + tokens, kv_heads or q_heads, head_dim]: bshd

  // Token t's rows as [1, heads, n, head_dim] views into the [seq, heads, dim] buffers.
  attnkit::tensor_view<const float> keys(index_t t, index_t n) const {
    return attnkit::make_bshd(k.data() + t * kv_heads * head_dim, 1, n, kv_heads, head_dim);
  }
  attnkit::tensor_view<const float> values(index_t t, index_t n) const {
    return attnkit::make_bshd(v.data() + t * kv_heads * head_dim, 1, n, kv_heads, head_dim);
  }
  attnkit::tensor_view<const float> query(index_t t) const {
    return attnkit::make_bshd(q.data() + t * q_heads * head_dim, 1, 1, q_heads, head_dim);
  }
};

struct run_result {
  double tokens_per_s, attend_gb_per_s, ms_per_token;
  index_t held;
  std::vector<float> last_out;
};

template <class T>
run_result run(const inputs& in, attnkit::kv_cache_config cfg) {
  attnkit::kv_cache<T> cache(cfg);
  cache.append(in.keys(0, in.prompt), in.values(0, in.prompt));
  std::vector<float> out(std::size_t(q_heads * head_dim));
  const auto out_view = attnkit::make_bshd(out.data(), 1, 1, q_heads, head_dim);

  double attend_s = 0, bytes = 0;
  const auto t0 = clock_type::now();
  for (index_t t = in.prompt; t < in.prompt + in.tokens; ++t) {
    cache.append(in.keys(t, 1), in.values(t, 1));
    const auto a0 = clock_type::now();
    // The newest token's query over every held key: no mask needed (a single query row at
    // the last position sees everything, ring order included).
    cache.attend(in.query(t), out_view);
    attend_s += std::chrono::duration<double>(clock_type::now() - a0).count();
    bytes += double(cache.size() * kv_heads * (head_dim + head_dim)) * double(sizeof(T));
  }
  const double total_s = std::chrono::duration<double>(clock_type::now() - t0).count();
  return {double(in.tokens) / total_s, bytes / attend_s / 1e9, total_s * 1e3 / double(in.tokens),
          cache.size(), out};
}

}  // namespace

int main(int argc, char** argv) {
  inputs in;
  in.prompt = argc > 1 ? std::atoll(argv[1]) : 4096;
  in.tokens = argc > 2 ? std::atoll(argv[2]) : 64;
  const index_t window = argc > 3 ? std::atoll(argv[3]) : 1024;
  if (in.prompt < 0 || in.tokens < 1 || window < 1) {
    std::fprintf(stderr, "usage: decode_loop [prompt >= 0] [tokens >= 1] [window >= 1]\n");
    return 2;
  }
  const index_t total = in.prompt + in.tokens;
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  in.k.resize(std::size_t(total * kv_heads * head_dim));
  in.v.resize(in.k.size());
  in.q.resize(std::size_t(total * q_heads * head_dim));
  for (auto* x : {&in.k, &in.v, &in.q})
    for (float& e : *x) e = u(rng);

  std::printf(
      "attnkit %s: GQA decode, %lld query heads / %lld kv heads, head_dim %lld, prompt %lld + %lld tokens\n",
      attnkit::backend_name(), (long long)q_heads, (long long)kv_heads, (long long)head_dim,
      (long long)in.prompt, (long long)in.tokens);
  std::printf("  %-34s %10s %10s %12s %8s\n", "cache", "tokens/s", "ms/token", "attn GB/s", "held");

  attnkit::kv_cache_config cfg;
  cfg.batch = 1;
  cfg.kv_heads = kv_heads;
  cfg.head_dim = head_dim;
  cfg.capacity = total;
  auto print = [](const char* name, const run_result& r) {
    std::printf("  %-34s %10.1f %10.3f %12.1f %8lld\n", name, r.tokens_per_s, r.ms_per_token,
                r.attend_gb_per_s, (long long)r.held);
  };

  const run_result f32 = run<float>(in, cfg);
  print("fp32, contiguous", f32);
  const run_result b16 = run<attnkit::bf16>(in, cfg);
  print("bf16, contiguous", b16);
  cfg.layout = attnkit::kv_layout::paged;
  cfg.page_size = 16;
  const run_result f32p = run<float>(in, cfg);
  print("fp32, paged (16-token pages)", f32p);
  const run_result b16p = run<attnkit::bf16>(in, cfg);
  print("bf16, paged (16-token pages)", b16p);

  attnkit::kv_cache_config stream = cfg;
  stream.layout = attnkit::kv_layout::contiguous;
  stream.capacity = 0;  // sink + window
  stream.sink = 4;
  stream.window = window;
  char name[64];
  std::snprintf(name, sizeof name, "bf16, StreamingLLM 4 + %lld", (long long)window);
  const run_result s16 = run<attnkit::bf16>(in, stream);
  print(name, s16);

  // The same keys give the same output whatever the layout (bitwise); the bf16 cache rounds
  // K/V, so it differs from fp32 by about bf16's precision.
  auto same_bits = [](const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
  };
  const bool paged_same = same_bits(f32.last_out, f32p.last_out) && same_bits(b16.last_out, b16p.last_out);
  double bf16_diff = 0;
  for (std::size_t i = 0; i < f32.last_out.size(); ++i)
    bf16_diff = std::max(bf16_diff, double(std::fabs(f32.last_out[i] - b16.last_out[i])));
  std::printf("  bf16 vs fp32 speed-up %.2fx; paged == contiguous bitwise: %s; max |bf16 - fp32| %.2g\n",
              b16.tokens_per_s / f32.tokens_per_s, paged_same ? "yes" : "NO", bf16_diff);
  return paged_same ? 0 : 1;
}
