// Latent-attention benchmarks (attnkit_bench_latent): MLA decode over a shared latent cache
// and latent-query routing. Speed acceptance of issue 6 (bench/README.md, "The latent suite").
//
// MLA shape (DeepSeek-V2-Lite-like): batch 1, 16 query heads, latent rank r 512, rope dim 64,
// per-head no-rope q/k dim 128 and value dim 128, cache of 32768 rows, fp32. Absorbed decode
// (mla_attention, Lq 1) reads the 72 MiB latent + rope cache once for all 16 heads and does
// 16 x (576 + 512) multiply-adds per cache row, 15 FLOP per fp32 byte read, so it is
// compute-bound here, not memory-bound: it reports GB/s against a streaming sum over a
// buffer of the cache size and GFLOP/s against the Eigen GEMM ceiling, both measured in this
// run. The expanded path (mla_expanded_attention: K_h = W_UK_h c, V_h = W_UV_h c for every
// row and head, then attention()) does (128 + 128) x 512 multiply-adds per (head, row) first.
//
// Crossover sweep: both paths, from q_nope / q_rope and the weights to the projected
// output (mla_absorbed_attention includes the absorption and the output projection), for
// Lq in 1..1024 query rows of a causal prefill chunk at the end of a 4096-row cache (the
// crossover in Lq does not depend on the cache length while Lq << Lk: both costs grow with
// it linearly).
//
// Routing: latent_attention with M 64 latents per head, N 16384 tokens, 8 heads, head_dim 64,
// against attention() (dense, no mask) on q = k = v of the same shape.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <Eigen/Core>
#include <benchmark/benchmark.h>
#include <omp.h>
#include <xsimd/xsimd.hpp>

#include <attnkit/attnkit.hpp>
#include <attnkit/latent_eigen.hpp>

#include "bench_ceilings.hpp"
#include "bench_common.hpp"
#include "bench_report.hpp"

namespace attnkit_bench {
namespace {

constexpr std::int64_t H = 16, R = 512, DR = 64, DN = 128, DV = 128, LK = 32768;
constexpr std::int64_t SWEEP_LK = 4096;
const std::int64_t sweep_lq[] = {1, 16, 64, 128, 256, 512, 1024};
constexpr std::int64_t RT_H = 8, RT_M = 64, RT_N = 16384, RT_D = 64;

// xorshift fill, uniform in [lo, hi)
void fill_fast(float* x, std::size_t n, std::uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::uint32_t s = seed * 2654435761u + 1u;
  for (std::size_t i = 0; i < n; ++i) {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    x[i] = lo + float(s >> 8) * ((hi - lo) / 16777216.0f);
  }
}

struct mla_data {
  std::vector<float> c, kr;              // [LK, R], [LK, DR]
  std::vector<attnkit::bf16> cb, krb;
  std::vector<float> q_nope, q_rope;     // [H, 1024, DN], [H, 1024, DR]
  std::vector<float> q_lat;              // [H, 1, R] (absorbed from q_nope row 0)
  std::vector<float> w_uk, w_uv;         // [H, DN, R], [H, DV, R]
  std::vector<float> rt_q, rt_k, rt_v;   // routing: latents [RT_H, RT_M, RT_D]; k, v [RT_H, RT_N, RT_D]
};

const mla_data& data() {
  static const std::unique_ptr<mla_data> d = [] {
    auto m = std::make_unique<mla_data>();
    m->c.resize(std::size_t(LK * R));
    m->kr.resize(std::size_t(LK * DR));
    fill_fast(m->c.data(), m->c.size(), 1);
    fill_fast(m->kr.data(), m->kr.size(), 2);
    for (float x : m->c) m->cb.push_back(attnkit::bf16(x));
    for (float x : m->kr) m->krb.push_back(attnkit::bf16(x));
    m->q_nope.resize(std::size_t(H * 1024 * DN));
    m->q_rope.resize(std::size_t(H * 1024 * DR));
    fill_fast(m->q_nope.data(), m->q_nope.size(), 3);
    fill_fast(m->q_rope.data(), m->q_rope.size(), 4);
    const float w = std::sqrt(3.f / float(R));
    m->w_uk.resize(std::size_t(H * DN * R));
    m->w_uv.resize(std::size_t(H * DV * R));
    fill_fast(m->w_uk.data(), m->w_uk.size(), 5, -w, w);
    fill_fast(m->w_uv.data(), m->w_uv.size(), 6, -w, w);
    m->q_lat.resize(std::size_t(H * R));
    attnkit::mla_absorb_query(attnkit::tensor_view<const float>(m->q_nope.data(), {{1, H, 1, DN}}, {{0, 1024 * DN, DN, 1}}),
                              attnkit::make_bhsd(static_cast<const float*>(m->w_uk.data()), 1, H, DN, R),
                              attnkit::make_bhsd(m->q_lat.data(), 1, H, 1, R), 1);
    m->rt_q.resize(std::size_t(RT_H * RT_M * RT_D));
    m->rt_k.resize(std::size_t(RT_H * RT_N * RT_D));
    m->rt_v.resize(m->rt_k.size());
    fill_fast(m->rt_q.data(), m->rt_q.size(), 7);
    fill_fast(m->rt_k.data(), m->rt_k.size(), 8);
    fill_fast(m->rt_v.data(), m->rt_v.size(), 9);
    return m;
  }();
  return *d;
}

attnkit::mla_options mla_opts(int threads) {
  attnkit::mla_options o;
  o.qk_nope_head_dim = DN;
  o.num_threads = threads;
  return o;
}

void set_rate(benchmark::State& state, const char* key, double per_iter) {
  state.counters[key] = benchmark::Counter(per_iter * double(state.iterations()), benchmark::Counter::kIsRate);
}

// ---------------------------------------------------------------------------------------
// Ceilings

/// Streaming sum over a buffer of the cache's size (latent + rope rows, fp32), 8 vector
/// accumulators per thread: the read bandwidth decode can hope for.
void bm_stream(benchmark::State& state, int threads) {
  static std::vector<float, xsimd::aligned_allocator<float, 64>> buf;
  const std::int64_t n = LK * (R + DR);
  if (buf.empty()) {
    buf.resize(std::size_t(n));
    fill_fast(buf.data(), buf.size(), 10);
  }
  float sink = 0.f;
  for (auto _ : state) {
    sink += stream_sum(buf.data(), n, threads);
    benchmark::DoNotOptimize(sink);
  }
  set_rate(state, "GBps", double(n) * 4.0 / 1e9);
  state.SetLabel("vectorised sum over a buffer of the cache size (72 MiB)");
}

/// C = A * B, 2048^3 fp32, Eigen's own OpenMP GEMM on `threads` threads (see Note [Eigen
/// threading] in bench_dense.cpp).
void bm_gemm(benchmark::State& state, int threads) {
  constexpr int n = 2048;
  time_gemm_eigen(state, n, threads);
  Eigen::setNbThreads(1);
  set_rate(state, "GFLOPS", 2.0 * n * double(n) * n / 1e9);
}

// ---------------------------------------------------------------------------------------
// MLA decode at Lq 1 over the 32768-row cache

double decode_flops(std::int64_t lq, std::int64_t keys) { return 2.0 * double(H * lq) * double(keys) * double(R + DR + R); }
constexpr double cache_bytes_f32 = double(LK) * (R + DR) * 4.0;

double& err_slot(const std::string& name) {
  static std::map<std::string, double> m;
  return m.emplace(name, -2.0).first->second;  // -2: not computed yet
}

void bm_absorbed_decode(benchmark::State& state, bool bf16, int threads) {
  const mla_data& d = data();
  std::vector<float> out(std::size_t(H * R));
  const auto q = attnkit::make_bhsd(d.q_lat.data(), 1, H, 1, R);
  const auto qr = attnkit::tensor_view<const float>(d.q_rope.data(), {{1, H, 1, DR}}, {{0, 1024 * DR, DR, 1}});
  const auto o = attnkit::make_bhsd(out.data(), 1, H, 1, R);
  const attnkit::mla_options opt = mla_opts(threads);
  auto run = [&] {
    if (bf16)
      attnkit::mla_attention(q, qr, attnkit::make_bhsd(d.cb.data(), 1, 1, LK, R), attnkit::make_bhsd(d.krb.data(), 1, 1, LK, DR),
                             o, attnkit::causal{}, opt);
    else
      attnkit::mla_attention(q, qr, attnkit::make_bhsd(d.c.data(), 1, 1, LK, R), attnkit::make_bhsd(d.kr.data(), 1, 1, LK, DR),
                             o, attnkit::causal{}, opt);
  };
  for (auto _ : state) {
    run();
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  // Accuracy once: out_lat against the double reference over the whole cache.
  double& e = err_slot(bf16 ? "bf16" : "fp32");
  if (e == -2.0) {
    const auto ref = bf16 ? attnkit::reference::mla_attention(q, qr, attnkit::make_bhsd(d.cb.data(), 1, 1, LK, R),
                                                              attnkit::make_bhsd(d.krb.data(), 1, 1, LK, DR),
                                                              attnkit::causal{}, opt)
                          : attnkit::reference::mla_attention(q, qr, attnkit::make_bhsd(d.c.data(), 1, 1, LK, R),
                                                              attnkit::make_bhsd(d.kr.data(), 1, 1, LK, DR),
                                                              attnkit::causal{}, opt);
    e = 0;
    for (std::size_t i = 0; i < out.size(); ++i) e = std::max(e, std::abs(double(out[i]) - ref.out[i]));
  }
  state.counters["err_tail"] = e;
  set_rate(state, "GBps", (bf16 ? 0.5 : 1.0) * cache_bytes_f32 / 1e9);
  set_rate(state, "GFLOPS", decode_flops(1, LK) / 1e9);
  state.SetLabel(bf16 ? "mla_attention, Lq 1, bf16 cache" : "mla_attention, Lq 1, fp32 cache");
}

/// Both full paths from q_nope/q_rope and the weights to out [1, H, lq, DV], over the last
/// `lk` rows of the cache, causal (the chunk's rows are the cache's last lq rows).
void run_full(bool expanded, std::int64_t lq, std::int64_t lk, std::vector<float>& out, int threads) {
  const mla_data& d = data();
  const auto qn = attnkit::tensor_view<const float>(d.q_nope.data(), {{1, H, lq, DN}}, {{0, 1024 * DN, DN, 1}});
  const auto qr = attnkit::tensor_view<const float>(d.q_rope.data(), {{1, H, lq, DR}}, {{0, 1024 * DR, DR, 1}});
  const auto c = attnkit::make_bhsd(d.c.data() + (LK - lk) * R, 1, 1, lk, R);
  const auto kr = attnkit::make_bhsd(d.kr.data() + (LK - lk) * DR, 1, 1, lk, DR);
  const auto wk = attnkit::make_bhsd(d.w_uk.data(), 1, H, DN, R);
  const auto wv = attnkit::make_bhsd(d.w_uv.data(), 1, H, DV, R);
  const auto o = attnkit::make_bhsd(out.data(), 1, H, lq, DV);
  if (expanded)
    attnkit::mla_expanded_attention(qn, qr, c, kr, wk, wv, o, attnkit::causal{}, mla_opts(threads));
  else
    attnkit::mla_absorbed_attention(qn, qr, c, kr, wk, wv, o, attnkit::causal{}, mla_opts(threads));
}

double causal_keys(std::int64_t lq, std::int64_t lk) {  // sum over the chunk's rows of the keys each sees
  return double(lq) * double(lk - lq) + double(lq) * double(lq + 1) / 2.0;
}

void bm_full(benchmark::State& state, bool expanded, std::int64_t lq, std::int64_t lk, int threads) {
  std::vector<float> out(std::size_t(H * lq * DV));
  for (auto _ : state) {
    run_full(expanded, lq, lk, out, threads);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  // FLOPs each path really does (softmax not counted): absorbed 2 (R + DR + R) per (head,
  // query, key) plus the projections of the queries; expanded 2 (DN + DV) R per (head, key)
  // for K and V plus 2 (DN + DR + DV) per (head, query, key).
  const double pairs = double(H) * causal_keys(lq, lk);
  const double flops = expanded ? 2.0 * double(H) * double(lk) * double(DN + DV) * R + 2.0 * pairs * double(DN + DR + DV)
                                : 2.0 * pairs * double(R + DR + R) + 2.0 * double(H * lq) * double(DN + DV) * R;
  set_rate(state, "GFLOPS", flops / 1e9);
  if (lq == 1 && lk == LK) {
    // The two paths agree (the absorbed output, computed once, as the yardstick).
    static std::vector<float> absorbed;
    if (absorbed.empty()) {
      absorbed.resize(out.size());
      run_full(false, lq, lk, absorbed, threads);
    }
    double e = 0;
    for (std::size_t i = 0; i < out.size(); ++i) e = std::max(e, std::abs(double(out[i]) - double(absorbed[i])));
    state.counters["vs_absorbed"] = e;
  }
  state.SetLabel(std::string(expanded ? "mla_expanded_attention" : "mla_absorbed_attention") + ", Lq " +
                 std::to_string(lq) + ", cache " + std::to_string(lk) + ", causal");
}

// ---------------------------------------------------------------------------------------
// Latent routing vs dense

void bm_routing(benchmark::State& state, bool dense, int threads) {
  const mla_data& d = data();
  std::vector<float> out(std::size_t(RT_H * RT_N * RT_D));
  attnkit::attention_options opt;
  opt.num_threads = threads;
  const auto k = attnkit::make_bhsd(d.rt_k.data(), 1, RT_H, RT_N, RT_D);
  const auto v = attnkit::make_bhsd(d.rt_v.data(), 1, RT_H, RT_N, RT_D);
  const auto o = attnkit::make_bhsd(out.data(), 1, RT_H, RT_N, RT_D);
  for (auto _ : state) {
    if (dense)
      attnkit::attention(k, k, v, o, attnkit::no_mask{}, opt);
    else
      attnkit::latent_attention(attnkit::make_bhsd(d.rt_q.data(), 1, RT_H, RT_M, RT_D), k, v, o, opt);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double flops = dense ? 4.0 * double(RT_N) * RT_N * RT_D * RT_H : 2.0 * 4.0 * double(RT_N) * RT_M * RT_D * RT_H;
  set_rate(state, "GFLOPS", flops / 1e9);
  state.SetLabel(dense ? "attention(), no mask, N x N" : "latent_attention, M 64 (encode + decode)");
}

// ---------------------------------------------------------------------------------------
// Summary

std::string full_name(bool expanded, std::int64_t lq, std::int64_t lk) {
  return std::string(expanded ? "BM_mla_expanded" : "BM_mla_absorbed") + "/lq" + std::to_string(lq) + "_cache" +
         std::to_string(lk);
}

void describe_summary(suite& su, const config& cfg) {
  su.program = "attnkit_bench_latent";
  su.title = "attnkit latent attention benchmark";
  su.legend =
      "MLA: batch 1, 16 heads, r 512, d_rope 64, qk_nope 128, v_head 128, fp32 cache of 32768 rows (72 MiB). GB/s:"
      " cache bytes read per second (latent + rope rows, once per step); GFLOP/s: 2 x (r + d_rope + r) per (head,"
      " key) for absorbed decode, the projections included for the full paths. BM_stream/sum: vectorised sum over a"
      " buffer of the cache size, BM_gemm/eigen2048: Eigen sgemm 2048^3, same threads, same run. Routing: 8 heads,"
      " head_dim 64, N 16384, M 64. max err: max |out_lat - double reference| (absorbed decode).";
  su.columns.push_back(gbps_column());
  su.columns.push_back({"x stream", [](const std::string& name, const entry& e, const results& r) {
                          const entry* s = r.ok("BM_stream/sum");
                          const double g = e.counter("GBps"), base = s ? s->counter("GBps") : 0.0;
                          return name != "BM_stream/sum" && g > 0 && base > 0 ? fmt("%.2f", g / base) : std::string("-");
                        }});
  su.columns.push_back({"x GEMM", [](const std::string& name, const entry& e, const results& r) {
                          const double g = r.gflops("BM_gemm/eigen2048");
                          return name != "BM_gemm/eigen2048" && g > 0 && e.gflops_value() > 0
                                     ? fmt("%.2f", e.gflops_value() / g)
                                     : std::string("-");
                        }});
  su.columns.push_back({"expanded / absorbed time", [](const std::string& name, const entry& e, const results& r) {
                          if (name.rfind("BM_mla_expanded/", 0) != 0) return std::string("-");
                          const std::string other = "BM_mla_absorbed/" + name.substr(16);
                          const double a = r.ms(other);
                          return a > 0 ? fmt("%.2f", e.ms_value() / a) : std::string("n/a");
                        }});
  const int threads = cfg.threads;
  su.checks.push_back([threads](acceptance& acc, const results& r) {
    acc.heading("Acceptance (issue 6: fp32, " + std::to_string(threads) +
                " threads, 16 heads, r 512, d_rope 64, cache 32768; medians, same run):");
    const entry* s = r.ok("BM_stream/sum");
    const entry* dec = r.ok("BM_mla/absorbed_decode_fp32");
    const double bw = s ? s->counter("GBps") : 0.0, gemm = r.gflops("BM_gemm/eigen2048");
    const double dec_bw = dec ? dec->counter("GBps") : 0.0, dec_gf = dec ? dec->gflops_value() : 0.0;
    acc.line("ceilings: streaming read " + fmt("%.1f", bw) + " GB/s, Eigen sgemm " + fmt("%.1f", gemm) + " GFLOP/s");
    acc.line("absorbed decode (Lq 1): " + fmt("%.2f", r.ms("BM_mla/absorbed_decode_fp32")) + " ms, " +
             fmt("%.1f", dec_bw) + " GB/s (" + fmt("%.2f", bw > 0 ? dec_bw / bw : 0.0) + " x stream), " +
             fmt("%.1f", dec_gf) + " GFLOP/s (" + fmt("%.2f", gemm > 0 ? dec_gf / gemm : 0.0) + " x GEMM)");
    // Roofline: the time the cache read alone takes at the streaming bandwidth and the time
    // the FLOPs alone take at the GEMM rate; the larger is the bound this shape hits.
    const double t_mem = bw > 0 ? cache_bytes_f32 / (bw * 1e9) : 0.0;
    const double t_cmp = gemm > 0 ? decode_flops(1, LK) / (gemm * 1e9) : 0.0;
    if (t_mem > 0 && t_cmp > 0) {
      const bool compute = t_cmp >= t_mem;
      acc.line(std::string("bound: ") + (compute ? "COMPUTE" : "MEMORY") + " (arithmetic intensity " +
               fmt("%.1f", decode_flops(1, LK) / cache_bytes_f32) + " FLOP/byte; reading the cache takes " +
               fmt("%.2f", t_mem * 1e3) + " ms at stream speed, its FLOPs " + fmt("%.2f", t_cmp * 1e3) +
               " ms at GEMM speed)");
      const double t = r.ms("BM_mla/absorbed_decode_fp32") / 1e3;
      acc.at_least(std::string("absorbed decode speed / its bound (") + (compute ? "GEMM GFLOP/s" : "stream GB/s") + ")",
                   t > 0 ? std::max(t_mem, t_cmp) / t : 0.0, 0.5, "our bar; the issue asks to report it");
    }
    const double exp1 = r.ms(full_name(true, 1, LK)), abs1 = r.ms(full_name(false, 1, LK));
    acc.at_least("expanded / absorbed time at Lq 1 (cache 32768, projections included)", abs1 > 0 ? exp1 / abs1 : 0.0,
                 4.0);
    if (const entry* e = r.ok(full_name(true, 1, LK)))
      acc.line("expanded vs absorbed output at Lq 1: max |diff| = " + fmt("%.2g", e->counter("vs_absorbed")));
    acc.at_least("routing: dense time / latent_attention time (M 64, N 16384, 8 heads, d 64)",
                 r.ms("BM_routing/latent") > 0 ? r.ms("BM_routing/dense") / r.ms("BM_routing/latent") : 0.0, 20.0);
    // Crossover: the first Lq of the sweep where expanded is faster, interpolated in log Lq.
    double prev_lq = 0, prev_ratio = 0, cross = -1;
    for (std::int64_t lq : sweep_lq) {
      const double a = r.ms(full_name(false, lq, SWEEP_LK)), e = r.ms(full_name(true, lq, SWEEP_LK));
      if (a <= 0 || e <= 0) continue;
      const double ratio = e / a;  // > 1: absorbed faster
      if (ratio <= 1.0 && cross < 0) {
        if (prev_lq > 0) {
          const double t = std::log(prev_ratio) / (std::log(prev_ratio) - std::log(ratio));
          cross = std::exp(std::log(prev_lq) + t * (std::log(double(lq)) - std::log(prev_lq)));
        } else {
          cross = double(lq);
        }
      }
      prev_lq = double(lq), prev_ratio = ratio;
    }
    acc.line(cross > 0 ? "crossover (cache 4096, causal chunk): expanded becomes faster at Lq ~ " + fmt("%.0f", cross)
                       : std::string("crossover: absorbed faster over the whole sweep (Lq <= 1024) or sweep not run"));
  });
}

}  // namespace

void define_suite(const config& cfg, suite& su) {
  describe_summary(su, cfg);
  su.interleave = false;
  su.repetitions = 3;
  const double min_time = cfg.quick ? 0.02 : 0.2;
  const int t = cfg.threads;
  auto timing = [](benchmark::internal::Benchmark* b, double mt) {
    b->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(mt);
  };
  timing(su.add("BM_stream/sum", bm_stream, t), min_time);
  timing(su.add("BM_gemm/eigen2048", bm_gemm, t), min_time);
  timing(su.add("BM_mla/absorbed_decode_fp32", bm_absorbed_decode, false, t), min_time);
  timing(su.add("BM_mla/absorbed_decode_bf16", bm_absorbed_decode, true, t), min_time);
  timing(su.add(full_name(false, 1, LK), bm_full, false, std::int64_t(1), LK, t), min_time);
  timing(su.add(full_name(true, 1, LK), bm_full, true, std::int64_t(1), LK, t), 0.01);
  for (std::int64_t lq : sweep_lq) {
    timing(su.add(full_name(false, lq, SWEEP_LK), bm_full, false, lq, SWEEP_LK, t), 0.01);
    timing(su.add(full_name(true, lq, SWEEP_LK), bm_full, true, lq, SWEEP_LK, t), 0.01);
  }
  timing(su.add("BM_routing/latent", bm_routing, false, t), min_time);
  timing(su.add("BM_routing/dense", bm_routing, true, t), 0.01);
}

}  // namespace attnkit_bench
