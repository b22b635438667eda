// Linear attention, prefill then decode: a 64k-token causal prefill that hands its state to
// a token-by-token decode loop, with the time per token of each phase.
//
//   linear_prefill_decode [seq=65536] [decode_steps=512] [decay=1]
//
// The state is per (batch, kv head): a feature_dim x v_dim matrix and a feature_dim
// normaliser, whatever the position, so a decode step costs the same at token 100 and at
// token 100000. Inputs are random; the last decode output is checked against the double
// reference's token-by-token recurrence over the whole sequence.
#include <attnkit/attnkit.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

int main(int argc, char** argv) {
  const std::int64_t seq = argc > 1 ? std::atoll(argv[1]) : 65536;
  const std::int64_t steps = argc > 2 ? std::atoll(argv[2]) : 512;
  const float lambda = argc > 3 ? float(std::atof(argv[3])) : 1.f;
  const std::int64_t batch = 1, q_heads = 8, kv_heads = 8, dim = 64;
  const std::int64_t total = seq + steps;

  // q, k, v for all prompt and generated tokens, [batch, heads, total, dim].
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> q(static_cast<std::size_t>(batch * q_heads * total * dim)), k(static_cast<std::size_t>(batch * kv_heads * total * dim)),
      v(k.size()), out(q.size());
  for (auto* x : {&q, &k, &v})
    for (float& e : *x) e = u(rng);
  auto rows = [&](std::vector<float>& x, std::int64_t heads, std::int64_t t0, std::int64_t n) {
    return attnkit::tensor_view<float>(x.data() + t0 * dim, {{batch, heads, n, dim}},
                                       {{heads * total * dim, total * dim, dim, 1}});
  };

  std::vector<float> decay(static_cast<std::size_t>(kv_heads), lambda);
  attnkit::linear_options opt;
  if (lambda != 1.f) opt.decay = {decay.data(), kv_heads};
  attnkit::linear_state state;  // sized by the first call

  using clock = std::chrono::steady_clock;
  auto t0 = clock::now();
  attnkit::linear_attention(attnkit::tensor_view<const float>(rows(q, q_heads, 0, seq)),
                            attnkit::tensor_view<const float>(rows(k, kv_heads, 0, seq)),
                            attnkit::tensor_view<const float>(rows(v, kv_heads, 0, seq)), rows(out, q_heads, 0, seq),
                            attnkit::elu_plus_one{}, true, opt, &state);
  const double prefill_s = std::chrono::duration<double>(clock::now() - t0).count();

  t0 = clock::now();
  for (std::int64_t t = seq; t < total; ++t)
    attnkit::linear_attention_step(attnkit::tensor_view<const float>(rows(q, q_heads, t, 1)),
                                   attnkit::tensor_view<const float>(rows(k, kv_heads, t, 1)),
                                   attnkit::tensor_view<const float>(rows(v, kv_heads, t, 1)), rows(out, q_heads, t, 1),
                                   attnkit::elu_plus_one{}, state, opt);
  const double decode_s = std::chrono::duration<double>(clock::now() - t0).count();

  std::printf("linear attention (%s), batch %lld, %lld heads, head_dim %lld, elu_plus_one, decay %g\n",
              attnkit::backend_name(), (long long)batch, (long long)q_heads, (long long)dim, double(lambda));
  std::printf("prefill: %lld tokens in %.1f ms (%.2f us/token)\n", (long long)seq, prefill_s * 1e3,
              prefill_s * 1e6 / double(seq));
  std::printf("decode:  %lld steps in %.2f ms (%.2f us/token), state %lld x %lld per kv head, position %lld\n",
              (long long)steps, decode_s * 1e3, decode_s * 1e6 / double(steps > 0 ? steps : 1),
              (long long)state.feature_dim(), (long long)state.v_dim(), (long long)state.position());

  // Check: the last token of each head against the double recurrence over everything.
  if (total <= 1 << 17) {
    attnkit::linear_options ref_opt = opt;
    const auto ref = attnkit::reference::linear_attention_recurrent(
        attnkit::tensor_view<const float>(rows(q, q_heads, 0, total)),
        attnkit::tensor_view<const float>(rows(k, kv_heads, 0, total)),
        attnkit::tensor_view<const float>(rows(v, kv_heads, 0, total)), attnkit::elu_plus_one{}, ref_opt);
    double err = 0;
    for (std::int64_t h = 0; h < q_heads; ++h)
      for (std::int64_t j = 0; j < dim; ++j)
        err = std::fmax(err, std::fabs(double(out[std::size_t((h * total + total - 1) * dim + j)]) - ref.o(0, h, total - 1, j)));
    std::printf("last token vs double reference: max abs error %.3g\n", err);
    return err < 1e-4 ? 0 : 1;
  }
  return 0;
}
