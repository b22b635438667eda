// One MLA (multi-head latent attention) decode step of a DeepSeek-V2-Lite-like layer, and
// what the latent cache saves against a grouped-query cache:
//
//   mla_decode [cache=32768] [steps=20]
//
// Layer: 16 heads, kv_lora_rank r = 512, decoupled rope dim 64, per-head no-rope q/k dim 128,
// value dim 128. The cache holds, per token, one latent c (512) shared by every head plus
// one rope key (64). A decode step in absorbed form:
//   q_lat   = W_UK_h^T q_nope            (per head; mla_absorb_query)
//   out_lat = mla_attention(q_lat, q_rope, c_kv, k_rope)  (one pass over the cache, all heads)
//   out     = W_UV_h out_lat             (per head; mla_project_out)
// The score scale is 1/sqrt(128 + 64), the model's, given through
// mla_options::qk_nope_head_dim (not 1/sqrt(512 + 64)).
//
// It compares against a GQA layer with the same 16 query heads, head_dim 128 and 4 KV heads
// (and the MHA cache DeepSeek-V2-Lite's heads would need un-compressed: 16 x (192 + 128)):
// bytes per token of cache, and tokens/s of one attention step over the same cache length.
// Inputs are random; the projections of the rest of the layer are not part of this example.
#include <attnkit/attnkit.hpp>
#include <attnkit/latent_eigen.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

namespace {

using attnkit::index_t;
using clock_type = std::chrono::steady_clock;

constexpr index_t heads = 16, rank = 512, d_rope = 64, d_nope = 128, d_v = 128;
constexpr index_t gqa_kv_heads = 4, gqa_dim = 128;

std::vector<float> random_vector(std::size_t n, std::uint32_t seed, float scale = 1.f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<float> x(n);
  for (float& e : x) e = u(gen);
  return x;
}

/// Median time in seconds of `steps` calls of f (after one warm-up call).
template <class F>
double median_seconds(int steps, F&& f) {
  f();
  std::vector<double> t;
  for (int i = 0; i < steps; ++i) {
    const auto t0 = clock_type::now();
    f();
    t.push_back(std::chrono::duration<double>(clock_type::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const index_t cache = argc > 1 ? std::atol(argv[1]) : 32768;
  const int steps = argc > 2 ? std::atoi(argv[2]) : 20;
  if (cache < 1 || steps < 1) {
    std::fprintf(stderr, "usage: mla_decode [cache >= 1] [steps >= 1]\n");
    return 1;
  }
  std::printf("MLA decode step, DeepSeek-V2-Lite-like layer: %ld heads, r %ld, d_rope %ld, qk_nope %ld, v %ld; "
              "cache %ld tokens; backend %s\n\n",
              long(heads), long(rank), long(d_rope), long(d_nope), long(d_v), long(cache), attnkit::backend_name());

  // The latent cache (fp32 and bf16 copies) and the layer's up-projection weights.
  const std::vector<float> c = random_vector(std::size_t(cache * rank), 1), k_rope = random_vector(std::size_t(cache * d_rope), 2);
  const std::vector<attnkit::bf16> c16(c.begin(), c.end()), k_rope16(k_rope.begin(), k_rope.end());
  const float w = std::sqrt(3.f / float(rank));
  const std::vector<float> w_uk = random_vector(std::size_t(heads * d_nope * rank), 3, w);
  const std::vector<float> w_uv = random_vector(std::size_t(heads * d_v * rank), 4, w);
  const std::vector<float> q_nope = random_vector(std::size_t(heads * d_nope), 5);
  const std::vector<float> q_rope = random_vector(std::size_t(heads * d_rope), 6);
  std::vector<float> q_lat(std::size_t(heads * rank)), out_lat(q_lat.size()), out(std::size_t(heads * d_v));

  attnkit::mla_options opt;
  opt.qk_nope_head_dim = d_nope;  // scale 1/sqrt(128 + 64)
  const auto wk = attnkit::make_bhsd(w_uk.data(), 1, heads, d_nope, rank);
  const auto wv = attnkit::make_bhsd(w_uv.data(), 1, heads, d_v, rank);
  auto mla_step = [&](const auto& cv, const auto& rv) {
    attnkit::mla_absorb_query(attnkit::make_bhsd(q_nope.data(), 1, heads, 1, d_nope), wk,
                              attnkit::make_bhsd(q_lat.data(), 1, heads, 1, rank));
    attnkit::mla_attention(attnkit::make_bhsd(static_cast<const float*>(q_lat.data()), 1, heads, 1, rank),
                           attnkit::make_bhsd(q_rope.data(), 1, heads, 1, d_rope), cv, rv,
                           attnkit::make_bhsd(out_lat.data(), 1, heads, 1, rank), attnkit::causal{}, opt);
    attnkit::mla_project_out(attnkit::make_bhsd(static_cast<const float*>(out_lat.data()), 1, heads, 1, rank), wv,
                             attnkit::make_bhsd(out.data(), 1, heads, 1, d_v));
  };
  const double t_mla32 = median_seconds(steps, [&] {
    mla_step(attnkit::make_bhsd(c.data(), 1, 1, cache, rank), attnkit::make_bhsd(k_rope.data(), 1, 1, cache, d_rope));
  });
  const double t_mla16 = median_seconds(steps, [&] {
    mla_step(attnkit::make_bhsd(c16.data(), 1, 1, cache, rank), attnkit::make_bhsd(k_rope16.data(), 1, 1, cache, d_rope));
  });

  // Sanity: the absorbed step equals the expanded (un-absorbed) computation on a short cache.
  {
    const index_t n = std::min<index_t>(cache, 512);
    std::vector<float> expanded(out.size()), absorbed(out.size());
    const auto qn = attnkit::make_bhsd(q_nope.data(), 1, heads, 1, d_nope);
    const auto qr = attnkit::make_bhsd(q_rope.data(), 1, heads, 1, d_rope);
    const auto cv = attnkit::make_bhsd(c.data(), 1, 1, n, rank);
    const auto rv = attnkit::make_bhsd(k_rope.data(), 1, 1, n, d_rope);
    attnkit::mla_expanded_attention(qn, qr, cv, rv, wk, wv, attnkit::make_bhsd(expanded.data(), 1, heads, 1, d_v),
                                    attnkit::causal{}, opt);
    attnkit::mla_absorbed_attention(qn, qr, cv, rv, wk, wv, attnkit::make_bhsd(absorbed.data(), 1, heads, 1, d_v),
                                    attnkit::causal{}, opt);
    double e = 0;
    for (std::size_t i = 0; i < out.size(); ++i) e = std::max(e, double(std::fabs(expanded[i] - absorbed[i])));
    std::printf("absorbed vs expanded output over %ld tokens: max |diff| = %.2g\n\n", long(n), e);
  }

  // The GQA layer it is compared with: 16 query heads over 4 KV heads of dim 128.
  const std::vector<float> gk = random_vector(std::size_t(gqa_kv_heads * cache * gqa_dim), 7);
  const std::vector<float> gv = random_vector(gk.size(), 8);
  const std::vector<float> gq = random_vector(std::size_t(heads * gqa_dim), 9);
  std::vector<float> gout(gq.size());
  const double t_gqa = median_seconds(steps, [&] {
    attnkit::attention(attnkit::make_bhsd(gq.data(), 1, heads, 1, gqa_dim),
                       attnkit::make_bhsd(gk.data(), 1, gqa_kv_heads, cache, gqa_dim),
                       attnkit::make_bhsd(gv.data(), 1, gqa_kv_heads, cache, gqa_dim),
                       attnkit::make_bhsd(gout.data(), 1, heads, 1, gqa_dim), attnkit::causal{});
  });

  const double mla_elems = double(rank + d_rope), gqa_elems = 2.0 * gqa_kv_heads * gqa_dim,
               mha_elems = double(heads) * double(d_nope + d_rope + d_v);
  std::printf("KV cache per token per layer:\n");
  std::printf("  MLA  (latent 512 + rope 64)            %6.0f elements  %6.0f B fp32  %6.0f B bf16\n", mla_elems,
              4 * mla_elems, 2 * mla_elems);
  std::printf("  GQA  (4 KV heads x (k 128 + v 128))     %6.0f elements  %6.0f B fp32  %6.0f B bf16  (%.2f x MLA)\n",
              gqa_elems, 4 * gqa_elems, 2 * gqa_elems, gqa_elems / mla_elems);
  std::printf("  MHA  (16 heads x (k 192 + v 128))       %6.0f elements  %6.0f B fp32  %6.0f B bf16  (%.2f x MLA)\n\n",
              mha_elems, 4 * mha_elems, 2 * mha_elems, mha_elems / mla_elems);

  const double flops = 2.0 * heads * double(cache) * double(rank + d_rope + rank);
  auto row = [&](const char* what, double t, double bytes, double fl) {
    std::printf("  %-44s %8.2f ms  %8.1f tokens/s  %6.1f GB/s  %6.1f GFLOP/s\n", what, t * 1e3, 1.0 / t,
                bytes / t / 1e9, fl / t / 1e9);
  };
  std::printf("One attention step over %ld cached tokens (median of %d):\n", long(cache), steps);
  row("MLA absorbed, fp32 cache (+ absorb/project)", t_mla32, 4 * mla_elems * double(cache), flops);
  row("MLA absorbed, bf16 cache (+ absorb/project)", t_mla16, 2 * mla_elems * double(cache), flops);
  row("GQA 16/4 heads, dim 128, fp32 cache", t_gqa, 4 * gqa_elems * double(cache),
      4.0 * heads * double(cache) * gqa_dim);
  std::printf("\nMLA reads %.2f x fewer cache bytes than GQA-4 but does %.1f x the FLOPs per token: with 16 heads\n"
              "sharing one cache row it is compute-bound on a CPU, where GQA decode is bandwidth-bound.\n",
              gqa_elems / mla_elems, flops / (4.0 * heads * double(cache) * gqa_dim));
  return 0;
}
