// Linear attention benchmarks (attnkit_bench_linear): the chunked causal form at 4k, 16k and
// 64k tokens, the dense causal kernel on the 16k shape, the chunk-size sweep that chose the
// default chunk, the decode step at two positions, and the Eigen GEMM ceiling, all in one
// run, with the speed acceptance of the linear-attention issue (bench/README.md).
//
// Shape: fp32, batch 1, 8 query heads, 8 KV heads, head_dim 64 (q, k and v), elu_plus_one,
// causal, normalised.
//
// FLOPs of the chunked form, per (batch, head) and chunk of n rows (d' = d = 64 here): the
// masked score tile n(n+1)/2 pairs x 2d', its product with V n(n+1)/2 x 2dv, the query rows
// against the running state 2 n d' dv, and the state update 2 n d' dv. Feature maps,
// normalisers and masking are not counted. The dense kernel is credited as in
// attnkit_bench: 4 * head_dim per allowed pair.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>
#include <omp.h>

#include <Eigen/Core>

#include <attnkit/attnkit.hpp>

#include "bench_ceilings.hpp"
#include "bench_common.hpp"
#include "bench_report.hpp"

namespace attnkit_bench {
namespace {

constexpr std::int64_t heads = 8, head_dim = 64;
constexpr std::int64_t step_batch = 64;  // decode steps per timed iteration

/// FLOPs of one chunked causal call (file comment).
double linear_flops(std::int64_t seq, std::int64_t chunk) {
  const double dp = double(head_dim), dv = double(head_dim);
  double f = 0;
  for (std::int64_t c0 = 0; c0 < seq; c0 += chunk) {
    const double n = double(std::min(chunk, seq - c0));
    f += n * (n + 1) / 2 * 2 * (dp + dv) + 4 * n * dp * dv;
  }
  return f * double(heads);
}

shape bench_shape(std::int64_t seq) {
  shape s;
  s.batch = 1, s.q_heads = heads, s.kv_heads = heads, s.q_len = s.kv_len = seq, s.dim = head_dim;
  s.mask = mask_kind::causal;
  return s;
}

attnkit::tensor_view<const float> view(const std::vector<float>& x, std::int64_t seq) {
  return attnkit::make_bhsd(x.data(), 1, heads, seq, head_dim);
}

/// Max |kernel - double recurrent reference| over every output of a call (small shapes
/// only: the reference is O(seq d^2) per head in double).
double linear_error(std::int64_t seq, const inputs& in, const std::vector<float>& out) {
  const auto ref = attnkit::reference::linear_attention_recurrent(view(in.q, seq), view(in.k, seq), view(in.v, seq),
                                                                  attnkit::elu_plus_one{});
  double e = 0;
  for (std::size_t i = 0; i < out.size(); ++i) e = std::max(e, std::abs(double(out[i]) - ref.out[i]));
  return e;
}

// ---------------------------------------------------------------------------------------
void bm_gemm_eigen(benchmark::State& state, int n, int threads) {
  time_gemm_eigen(state, n, threads);
  set_flops_counter(state, 2.0 * double(n) * double(n) * double(n));
}

void bm_linear(benchmark::State& state, std::int64_t seq, std::int64_t chunk, int threads) {
  const inputs& in = inputs_for(bench_shape(seq));
  std::vector<float> out(static_cast<std::size_t>(heads * seq * head_dim), 0.f);
  attnkit::linear_options opt;
  opt.num_threads = threads;
  opt.chunk = chunk;
  for (auto _ : state) {
    attnkit::linear_attention(view(in.q, seq), view(in.k, seq), view(in.v, seq),
                              attnkit::make_bhsd(out.data(), 1, heads, seq, head_dim), attnkit::elu_plus_one{}, true, opt);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  static std::map<std::int64_t, double> err;  // once per length, outside the timing
  if (chunk == 0 && seq <= 16384 && !err.count(seq)) err[seq] = linear_error(seq, in, out);
  state.counters["err_tail"] = chunk == 0 && err.count(seq) ? err[seq] : -1.0;
  state.counters["seq"] = double(seq);
  set_flops_counter(state, linear_flops(seq, chunk > 0 ? chunk : attnkit::detail::linear_default_chunk));
}

void bm_dense(benchmark::State& state, std::int64_t seq, int threads) {
  const shape s = bench_shape(seq);
  const inputs& in = inputs_for(s);
  std::vector<float> out(static_cast<std::size_t>(heads * seq * head_dim), 0.f);
  attnkit::attention_options opt;
  opt.num_threads = threads;
  for (auto _ : state) {
    attnkit::attention(view(in.q, seq), view(in.k, seq), view(in.v, seq),
                       attnkit::make_bhsd(out.data(), 1, heads, seq, head_dim), attnkit::causal{}, opt);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.counters["seq"] = double(seq);
  set_flops_counter(state, attention_flops(s));
}

/// step_batch decode steps starting at `pos`: the state of a causal prefill of pos tokens
/// is restored (untimed) before each batch, so every batch runs at positions pos .. pos + 63.
void bm_step(benchmark::State& state, std::int64_t pos, int threads) {
  const inputs& in = inputs_for(bench_shape(pos));
  attnkit::linear_options opt;
  opt.num_threads = threads;
  attnkit::linear_state prefilled;
  {
    std::vector<float> out(static_cast<std::size_t>(heads * pos * head_dim));
    attnkit::linear_attention(view(in.q, pos), view(in.k, pos), view(in.v, pos),
                              attnkit::make_bhsd(out.data(), 1, heads, pos, head_dim), attnkit::elu_plus_one{}, true, opt,
                              &prefilled);
  }
  std::vector<float> q(static_cast<std::size_t>(step_batch * heads * head_dim)), k(q.size()), v(q.size()), o(q.size());
  fill_uniform(q, q.size(), 11u), fill_uniform(k, k.size(), 12u), fill_uniform(v, v.size(), 13u);
  attnkit::linear_state st = prefilled;
  for (auto _ : state) {
    state.PauseTiming();
    st = prefilled;
    state.ResumeTiming();
    for (std::int64_t t = 0; t < step_batch; ++t) {
      const std::size_t at = std::size_t(t * heads * head_dim);
      attnkit::linear_attention_step(attnkit::make_bhsd(q.data() + at, 1, heads, 1, head_dim),
                                     attnkit::make_bhsd(k.data() + at, 1, heads, 1, head_dim),
                                     attnkit::make_bhsd(v.data() + at, 1, heads, 1, head_dim),
                                     attnkit::make_bhsd(o.data() + at, 1, heads, 1, head_dim), attnkit::elu_plus_one{},
                                     st, opt);
    }
    benchmark::DoNotOptimize(o.data());
    benchmark::ClobberMemory();
  }
  state.counters["pos"] = double(pos);
  state.counters["us_per_step"] = benchmark::Counter(double(step_batch) * double(state.iterations()),
                                                     benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  set_flops_counter(state, double(step_batch) * 4.0 * head_dim * head_dim * heads);
}

const char* const gemm_name = "BM_gemm_eigen_2048";
std::string linear_name(std::int64_t seq) { return "BM_linear_causal/s" + std::to_string(seq); }
std::string chunk_name(std::int64_t c) { return "BM_linear_chunk/c" + std::to_string(c); }
const std::int64_t chunks[] = {16, 32, 64, 128, 256};

void describe_summary(suite& su, const config& cfg) {
  su.program = "attnkit_bench_linear";
  su.title = "attnkit linear-attention benchmark";
  su.legend =
      "fp32, batch 1, 8 query heads, 8 KV heads, head_dim 64, elu_plus_one, causal. Time and GFLOP/s are medians"
      " over repetitions (real time), interleaved. GFLOP/s of the linear rows counts the chunked form's products"
      " (bench_linear.cpp); the dense row counts 4 * head_dim per allowed pair. Chunk sweep at seq 16384. Step rows:"
      " 64 decode steps per iteration (us/step column). max err: max |out - double recurrent reference| over all rows.";
  su.columns.push_back({"x GEMM", [](const std::string&, const entry& e, const results& r) {
                          const double g = r.gflops(gemm_name);
                          return g > 0 ? fmt("%.2f", e.gflops_value() / g) : std::string("n/a");
                        }});
  su.columns.push_back({"us/step", [](const std::string&, const entry& e, const results&) {
                          const double us = e.counter("us_per_step");
                          return us > 0 ? fmt("%.2f", us * 1e6) : std::string("-");
                        }});
  const int threads = cfg.threads;
  su.checks.push_back([threads](acceptance& acc, const results& r) {
    acc.heading("Acceptance (linear-attention issue: fp32, " + std::to_string(threads) +
                " threads, 8 heads, head_dim 64, elu_plus_one, causal; medians of the same run):");
    auto ratio = [](double a, double b) { return a > 0 && b > 0 ? a / b : 0.0; };
    const double t4 = r.ms(linear_name(4096)), t64 = r.ms(linear_name(65536));
    const double scal = ratio(t64, t4);
    acc.at_least("time(65536) / time(4096)", scal, 16 * 0.85, "linear: 16 x (1 - 0.15)");
    acc.at_most("time(65536) / time(4096)", scal, 16 * 1.15, "linear: 16 x (1 + 0.15)");
    acc.at_least("dense causal / linear causal at 16384 (time)",
                 ratio(r.ms("BM_dense_causal/s16384"), r.ms(linear_name(16384))), 10.0, "at least 10x faster");
    const double s100 = r.ms("BM_linear_step/pos100"), s60k = r.ms("BM_linear_step/pos60000");
    acc.at_most("decode step cost, max(pos 60000 / pos 100, pos 100 / pos 60000)",
                std::max(ratio(s60k, s100), ratio(s100, s60k)), 1.10, "position-independent within 10%");
    const double g = r.gflops(gemm_name);
    for (std::int64_t seq : {4096, 16384, 65536}) {
      const double lg = r.gflops(linear_name(seq));
      if (lg > 0 && g > 0)
        acc.line("chunked form at " + std::to_string(seq) + ": " + fmt("%.1f", lg) + " GFLOP/s = " +
                 fmt("%.2f", lg / g) + " x Eigen GEMM 2048^3 (" + fmt("%.1f", g) + " GFLOP/s, same run)");
    }
    std::int64_t best = 0;
    double best_ms = 0;
    for (std::int64_t c : chunks) {
      const double ms = r.ms(chunk_name(c));
      if (ms > 0 && (best == 0 || ms < best_ms)) best = c, best_ms = ms;
    }
    if (best > 0)
      acc.line("fastest chunk at 16384: " + std::to_string(best) + " (" + fmt("%.2f", best_ms) +
               " ms); the library default is " + std::to_string(attnkit::detail::linear_default_chunk));
  });
}

}  // namespace

void define_suite(const config& cfg, suite& su) {
  describe_summary(su, cfg);
  su.interleave = true;
  su.repetitions = 5;
  const int t = cfg.threads;
  auto timing = [&cfg](benchmark::internal::Benchmark* b, double min_time) {
    b->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(cfg.quick ? 0.05 : min_time);
  };
  timing(su.add(gemm_name, bm_gemm_eigen, 2048, t), 0.5);
  for (std::int64_t seq : {4096, 16384, 65536}) timing(su.add(linear_name(seq), bm_linear, seq, std::int64_t(0), t), 0.5);
  timing(su.add("BM_dense_causal/s16384", bm_dense, std::int64_t(16384), t), 0.1);
  for (std::int64_t c : chunks) timing(su.add(chunk_name(c), bm_linear, std::int64_t(16384), c, t), 0.3);
  for (std::int64_t pos : {100, 60000}) timing(su.add("BM_linear_step/pos" + std::to_string(pos), bm_step, pos, t), 0.3);
}

}  // namespace attnkit_bench
