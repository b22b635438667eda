// Dense attention benchmarks: attnkit against the naive double reference, a materialised
// fp32 Eigen implementation (what a user writes by hand) and the machine's practical
// ceiling, an Eigen fp32 GEMM of 2048^3, all in one binary and one run.
//
// Note [Eigen threading]: EIGEN_DONT_PARALLELIZE is deliberately *not* defined. It changes
// the body of Eigen's GEMM templates (parallelize_gemm), so defining it in one translation
// unit and not in another would give two different definitions of the same weak symbols,
// and the linker would keep one of them (toolchain.md, ODR/COMDAT pitfalls). Instead:
// the GEMM ceiling runs outside any parallel region with Eigen::setNbThreads(threads), and
// the materialised baseline runs its own `omp parallel for` over heads with
// Eigen::setNbThreads(1) for its duration (Eigen 3.4 also stays serial when it sees
// omp_get_num_threads() > 1, Eigen/src/Core/products/Parallelizer.h, but not in a team of
// one thread, where it would start a nested team of its own).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>
#include <omp.h>

#include <Eigen/Core>
#include <xsimd/xsimd.hpp>

#include <attnkit/attnkit.hpp>

#include "bench_ceilings.hpp"
#include "bench_common.hpp"
#include "bench_report.hpp"

namespace attnkit_bench {
namespace {

using row_mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using cmap = Eigen::Map<const row_mat>;
using map = Eigen::Map<row_mat>;

void set_shape_counters(benchmark::State& state, const shape& s) {
  state.counters["allowed_pairs"] = allowed_pairs(s) * double(s.q_heads * s.batch);
  state.SetLabel(s.mask == mask_kind::causal ? "causal" : "no mask");
}

// ---------------------------------------------------------------------------------------
// Ceiling: C = A * B, 2048^3 fp32, Eigen's own OpenMP parallel GEMM.
void bm_gemm_eigen(benchmark::State& state, int n, int threads) {
  time_gemm_eigen(state, n, threads);
  state.counters["threads"] = double(Eigen::nbThreads());
  set_flops_counter(state, 2.0 * double(n) * double(n) * double(n));
}

// ---------------------------------------------------------------------------------------
// Peak: independent FMA chains in registers on every thread (xsimd, the ISA of this
// translation unit). Not a practical ceiling, but it says how far the GEMM is from the
// hardware: on CPUs with two 512-bit FMA pipes, Eigen 3.4's GEMM reaches well under peak.
void bm_peak_fma(benchmark::State& state, int threads) {
  using B = xsimd::batch<float>;
  constexpr int chains = 16;
  constexpr std::int64_t steps = std::int64_t(1) << 22;
  float sink = 0;
  for (auto _ : state) {
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
      B acc[chains];
      for (int c = 0; c < chains; ++c) acc[c] = B(1.f + 1e-3f * float(c + omp_get_thread_num()));
      const B mul(0.999999f), add(1e-7f);  // converges to 0.1: no overflow, no denormals
      for (std::int64_t i = 0; i < steps; ++i)
        for (int c = 0; c < chains; ++c) acc[c] = xsimd::fma(acc[c], mul, add);
      B total = acc[0];
      for (int c = 1; c < chains; ++c) total += acc[c];
      sink += xsimd::hadd(total);
    }
    benchmark::DoNotOptimize(sink);
  }
  state.counters["threads"] = double(threads);
  set_flops_counter(state, 2.0 * double(B::size) * chains * double(steps) * threads);
}

// ---------------------------------------------------------------------------------------
// Correctness guard for the big shapes, where the reference is too slow to run whole: the
// last `rows` query rows of every (batch, head) through the reference (bottom-right
// alignment keeps their positions, so causal masking is the same), compared with the same
// rows of a kernel's output. Computed once per (benchmark, shape) and cached.
double cached_tail_error(const std::string& key, const shape& s, const inputs& in, const std::vector<float>& out);

// ---------------------------------------------------------------------------------------
// attnkit::attention, static build (the ISA of this translation unit).
template <class Mask>
void run_attnkit(const shape& s, const inputs& in, std::vector<float>& out, int threads, const Mask& mask) {
  attnkit::attention_options opt;
  opt.num_threads = threads;
  attnkit::attention(attnkit::make_bhsd(in.q.data(), s.batch, s.q_heads, s.q_len, s.dim),
                     attnkit::make_bhsd(in.k.data(), s.batch, s.kv_heads, s.kv_len, s.dim),
                     attnkit::make_bhsd(in.v.data(), s.batch, s.kv_heads, s.kv_len, s.dim),
                     attnkit::make_bhsd(out.data(), s.batch, s.q_heads, s.q_len, s.dim), mask, opt);
}

void run_attnkit(const shape& s, const inputs& in, std::vector<float>& out, int threads) {
  if (s.mask == mask_kind::causal)
    run_attnkit(s, in, out, threads, attnkit::causal{});
  else
    run_attnkit(s, in, out, threads, attnkit::no_mask{});
}

void bm_attnkit(benchmark::State& state, shape s, int threads) {
  const inputs& in = inputs_for(s);
  std::vector<float> out(std::size_t(s.batch * s.q_heads * s.q_len * s.dim), 0.f);
  for (auto _ : state) {
    run_attnkit(s, in, out, threads);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.counters["err_tail"] = cached_tail_error("attnkit", s, in, out);
  set_shape_counters(state, s);
  set_flops_counter(state, attention_flops(s));
}

// ---------------------------------------------------------------------------------------
// What a user writes by hand: per (batch, query head), in parallel over heads,
//   S = scale * Q_h K_h^T      (Lq x Lk, materialised, Eigen GEMM)
//   causal: S(i, j) = -inf for keys j after the query's position (bottom-right aligned)
//   P = softmax_rows(S)        (max subtraction, exp, sum, divide; Eigen array ops, in place)
//   O_h = P V_h                (Eigen GEMM)
// Each thread owns one Lq x Lk score buffer, allocated once outside the timed loop.
// Fully-masked rows (only possible when Lq > Lk under causal) are not handled, as in a
// typical hand-written version.
struct eigen_workspace {
  std::vector<row_mat> s;
  eigen_workspace(int threads, std::int64_t q_len, std::int64_t kv_len) {
    s.resize(std::size_t(threads));
    for (auto& m : s) m = row_mat::Zero(q_len, kv_len);  // touch the pages now
  }
};

void run_eigen_materialized(const shape& s, const inputs& in, std::vector<float>& out, int threads,
                            eigen_workspace& ws) {
  const std::int64_t lq = s.q_len, lk = s.kv_len, d = s.dim, group = s.q_heads / s.kv_heads;
  const std::int64_t offset = lk - lq;
  const float scale = 1.f / std::sqrt(float(d));
  const float minus_inf = -std::numeric_limits<float>::infinity();
  const bool is_causal = s.mask == mask_kind::causal;
  const std::int64_t units = s.batch * s.q_heads;
  // Eigen single-threaded inside our region, also when threads == 1: a team of one is not
  // an active parallel region, so Eigen would otherwise start its own nested team.
  const int eigen_threads = Eigen::nbThreads();
  Eigen::setNbThreads(1);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (std::int64_t u = 0; u < units; ++u) {
    const std::int64_t b = u / s.q_heads, h = u % s.q_heads, hk = h / group;
    row_mat& sm = ws.s[std::size_t(omp_get_thread_num())];
    const cmap q(in.q.data() + ((b * s.q_heads + h) * lq) * d, lq, d);
    const cmap k(in.k.data() + ((b * s.kv_heads + hk) * lk) * d, lk, d);
    const cmap v(in.v.data() + ((b * s.kv_heads + hk) * lk) * d, lk, d);
    map o(out.data() + ((b * s.q_heads + h) * lq) * d, lq, d);

    sm.noalias() = scale * (q * k.transpose());
    if (is_causal)
      for (std::int64_t i = 0; i < lq; ++i) {
        const std::int64_t first_masked = std::max<std::int64_t>(0, std::min<std::int64_t>(lk, i + offset + 1));
        sm.row(i).tail(lk - first_masked).setConstant(minus_inf);
      }
    const Eigen::VectorXf row_max = sm.rowwise().maxCoeff();
    sm.array().colwise() -= row_max.array();
    sm = sm.array().exp().matrix();
    const Eigen::VectorXf row_sum = sm.rowwise().sum();
    sm.array().colwise() /= row_sum.array();
    o.noalias() = sm * v;
  }
  Eigen::setNbThreads(eigen_threads);
}

void bm_eigen_materialized(benchmark::State& state, shape s, int threads) {
  const inputs& in = inputs_for(s);
  std::vector<float> out(std::size_t(s.batch * s.q_heads * s.q_len * s.dim), 0.f);
  eigen_workspace ws(threads, s.q_len, s.kv_len);
  for (auto _ : state) {
    run_eigen_materialized(s, in, out, threads, ws);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.counters["err_tail"] = cached_tail_error("eigen", s, in, out);
  set_shape_counters(state, s);
  set_flops_counter(state, attention_flops(s));
}

// ---------------------------------------------------------------------------------------
// attnkit::reference::attention: naive, double precision, single-threaded by design.
// After the timed loop it also measures, on the same inputs, the max abs error against
// it of attnkit and of the Eigen fp32 baseline (counters err_attnkit, err_eigen;
// design.md section 5 asks err_attnkit <= 2 x err_eigen).
template <class Mask>
attnkit::reference::result run_reference(const shape& s, const inputs& in, const Mask& mask) {
  return attnkit::reference::attention(attnkit::make_bhsd(in.q.data(), s.batch, s.q_heads, s.q_len, s.dim),
                                       attnkit::make_bhsd(in.k.data(), s.batch, s.kv_heads, s.kv_len, s.dim),
                                       attnkit::make_bhsd(in.v.data(), s.batch, s.kv_heads, s.kv_len, s.dim), mask);
}

double max_abs_error(const std::vector<float>& x, const attnkit::reference::result& ref) {
  double e = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double di = std::abs(double(x[i]) - ref.out[i]);
    if (!(di <= e)) e = di;  // NaN propagates as the error
  }
  return e;
}

double cached_tail_error(const std::string& key, const shape& s, const inputs& in, const std::vector<float>& out) {
  static std::map<std::string, double> cache;
  const std::string k = key + "/" + s.label();
  const auto it = cache.find(k);
  if (it != cache.end()) return it->second;
  const auto q = tail_queries(s, in, std::min<std::int64_t>(s.q_len, 64));
  const auto kv = attnkit::make_bhsd(in.k.data(), s.batch, s.kv_heads, s.kv_len, s.dim);
  const auto vv = attnkit::make_bhsd(in.v.data(), s.batch, s.kv_heads, s.kv_len, s.dim);
  const attnkit::reference::result ref = s.mask == mask_kind::causal
                                             ? attnkit::reference::attention(q, kv, vv, attnkit::causal{})
                                             : attnkit::reference::attention(q, kv, vv, attnkit::no_mask{});
  return cache[k] = tail_error(s, out, ref);
}

void bm_reference(benchmark::State& state, shape s, int threads) {
  const inputs& in = inputs_for(s);
  attnkit::reference::result ref;
  for (auto _ : state) {
    ref = s.mask == mask_kind::causal ? run_reference(s, in, attnkit::causal{}) : run_reference(s, in, attnkit::no_mask{});
    benchmark::DoNotOptimize(ref.out.data());
    benchmark::ClobberMemory();
  }
  std::vector<float> out(std::size_t(s.batch * s.q_heads * s.q_len * s.dim), 0.f);
  run_attnkit(s, in, out, threads);
  state.counters["err_attnkit"] = max_abs_error(out, ref);
  eigen_workspace ws(threads, s.q_len, s.kv_len);
  run_eigen_materialized(s, in, out, threads, ws);
  state.counters["err_eigen"] = max_abs_error(out, ref);
  set_shape_counters(state, s);
  set_flops_counter(state, attention_flops(s));
}

// ---------------------------------------------------------------------------------------
// Summary: two columns (ratio to the GEMM ceiling and to the Eigen baseline of the same
// shape) and the acceptance of the foundation issue on the headline shape.

std::string shape_of(const std::string& name) {
  const auto slash = name.find('/');
  return slash == std::string::npos ? std::string() : name.substr(slash + 1);
}
std::string family_of(const std::string& name) { return name.substr(0, name.find('/')); }

const char* const gemm_name = "BM_gemm_eigen_2048";

void describe_summary(suite& su) {
  su.program = "attnkit_bench";
  su.title = "attnkit benchmark";
  su.legend =
      "Time and GFLOP/s are medians over repetitions (real time); GFLOP/s counts allowed"
      " query-key pairs only (4 * pairs * head_dim * q_heads * batch). max err: max |output - double"
      " reference| over the last 64 query rows of every head.";
  su.columns.push_back({"x GEMM 2048", [](const std::string&, const entry& e, const results& r) {
                          const double g = r.gflops(gemm_name);
                          return g > 0 ? fmt("%.2f", e.gflops_value() / g) : std::string("n/a");
                        }});
  su.columns.push_back({"x Eigen materialised", [](const std::string& name, const entry& e, const results& r) {
                          const std::string fam = family_of(name);
                          if (fam != "BM_attnkit" && fam != "BM_reference") return std::string("-");
                          const double g = r.gflops("BM_eigen_materialized/" + shape_of(name));
                          return g > 0 ? fmt("%.2f", e.gflops_value() / g) : std::string("n/a");
                        }});

  // Acceptance of the foundation issue, on the headline shape.
  su.checks.push_back([](acceptance& acc, const results& r) {
    const std::string head = headline_shape().label();
    const double ak = r.gflops("BM_attnkit/" + head), gemm = r.gflops(gemm_name),
                 eigen = r.gflops("BM_eigen_materialized/" + head);
    acc.heading("Acceptance (headline shape " + head + ", same run):");
    acc.at_least("attnkit / Eigen GEMM 2048^3", gemm > 0 ? ak / gemm : 0.0, 0.6);
    acc.at_least("attnkit / Eigen materialised", eigen > 0 ? ak / eigen : 0.0, 2.0);

    // Accuracy on the reference shape (design.md section 5: attnkit's error <= 2 x fp32's).
    for (const std::string& name : r.order()) {
      if (family_of(name) != "BM_reference" || !r.ok(name)) continue;
      const entry& e = *r.ok(name);
      const double a = e.counter("err_attnkit"), b = e.counter("err_eigen");
      if (a < 0 || b < 0) continue;
      const bool pass = a <= 2.0 * b;
      acc.line("accuracy on " + shape_of(name) + ": max |attnkit - reference| = " + fmt("%.3g", a) +
               ", max |Eigen fp32 - reference| = " + fmt("%.3g", b) + ": " + (pass ? "PASS" : "FAIL") +
               " (attnkit <= 2 x Eigen)");
      acc.count(pass);
    }
    // The same comparison on the last 64 query rows of every shape both kernels ran.
    for (const std::string& name : r.order()) {
      if (family_of(name) != "BM_attnkit") continue;
      const entry* a = r.ok(name);
      const entry* b = r.ok("BM_eigen_materialized/" + shape_of(name));
      if (!a || !b) continue;
      const double ea = a->counter("err_tail"), eb = b->counter("err_tail");
      if (ea < 0 || eb < 0) continue;
      acc.line("accuracy, last 64 rows of " + shape_of(name) + ": attnkit " + fmt("%.3g", ea) + ", Eigen fp32 " +
               fmt("%.3g", eb) + ", ratio " + fmt("%.2f", eb > 0 ? ea / eb : 0.0) + ": " +
               (ea <= 2.0 * eb ? "PASS" : "FAIL") + " (design bound 2x; informational)");
    }
  });
}

}  // namespace

// ---------------------------------------------------------------------------------------
void define_suite(const config& cfg, suite& su) {
  describe_summary(su);
  const int t = cfg.threads;
  // The minimum time decides how many iterations one repetition runs: an iteration that
  // already takes longer runs once. --quick shortens it, so the big shapes run once and
  // the small ones a few times.
  auto timing = [&cfg](benchmark::internal::Benchmark* b, double min_time) {
    b->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(cfg.quick ? 0.05 : min_time);
  };

  timing(su.add("BM_peak_fma", bm_peak_fma, t), 0.2);
  timing(su.add(gemm_name, bm_gemm_eigen, 2048, t), 1.0);

  const shape headline = headline_shape();  // (a) batch 1, 32 q heads, 8 kv heads, d 128, seq 4096, causal
  shape nomask = headline;  // (b)
  nomask.mask = mask_kind::none;
  shape d64 = headline;  // (c)
  d64.dim = 64;
  shape small;  // (d) also run by the naive reference
  small.q_heads = 8;
  small.kv_heads = 2;
  small.q_len = small.kv_len = 512;

  for (const shape& s : {headline, nomask, d64, small}) {
    timing(su.add("BM_attnkit/" + s.label(), bm_attnkit, s, t), 0.5);
    timing(su.add("BM_eigen_materialized/" + s.label(), bm_eigen_materialized, s, t), 0.5);
  }
  timing(su.add("BM_reference/" + small.label(), bm_reference, small, t), 0.1);
}

}  // namespace attnkit_bench
