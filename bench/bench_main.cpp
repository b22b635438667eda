// attnkit_bench's main(): prints the machine context, runs the registered benchmarks
// through Google Benchmark (every --benchmark_* flag works as usual), and ends with a
// Markdown summary: per benchmark its median time and GFLOP/s, the ratio to the Eigen
// 2048^3 GEMM of the same run and to the Eigen materialised baseline of the same shape,
// plus the acceptance checks of the headline shape.
//
// Own options, removed from argv before Google Benchmark parses it:
//   --quick          (or ATTNKIT_BENCH_QUICK=1) one repetition, 0.05 s minimum time: CI smoke
//   --threads=N      threads for every threaded benchmark (default 2)
// Defaults injected unless given on the command line: --benchmark_repetitions=3 (1 with
// --quick) and --benchmark_display_aggregates_only=true.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>
#include <omp.h>

#include <attnkit/attnkit.hpp>

#include "bench_common.hpp"

namespace attnkit_bench {
namespace {

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon == std::string::npos) break;
      auto s = line.substr(colon + 1);
      s.erase(0, s.find_first_not_of(" \t"));
      return s;
    }
  }
  return "unknown";
}

double to_ms(double t, benchmark::TimeUnit unit) {
  switch (unit) {
    case benchmark::kNanosecond: return t * 1e-6;
    case benchmark::kMicrosecond: return t * 1e-3;
    case benchmark::kMillisecond: return t;
    case benchmark::kSecond: return t * 1e3;
  }
  return t;
}

double median_of(std::vector<double> x) {
  if (x.empty()) return 0;
  std::sort(x.begin(), x.end());
  const std::size_t n = x.size();
  return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

/// What the summary keeps of one benchmark (all its repetitions).
struct entry {
  std::vector<double> ms, gflops;        // per repetition (only if the display reporter saw them)
  bool has_median = false;
  double median_ms = 0, median_gflops = 0;
  double cv_percent = -1;                // coefficient of variation of the real time
  std::int64_t repetitions = 1;
  std::string error;
  std::map<std::string, double> counters;  // medians (or single-run values) of other counters

  double ms_value() const { return has_median ? median_ms : median_of(ms); }
  double gflops_value() const { return has_median ? median_gflops : median_of(gflops); }
};

/// Wraps the display reporter Google Benchmark would have used (console by default, or
/// whatever --benchmark_format asks for) and records every result it forwards.
class collecting_reporter : public benchmark::BenchmarkReporter {
 public:
  explicit collecting_reporter(benchmark::BenchmarkReporter* inner) : inner_(inner) {}

  bool ReportContext(const Context& context) override { return inner_->ReportContext(context); }

  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) record(r);
    inner_->ReportRuns(runs);
  }

  void Finalize() override { inner_->Finalize(); }

  const std::vector<std::string>& order() const { return order_; }
  const entry* find(const std::string& name) const {
    const auto it = entries_.find(name);
    return it == entries_.end() ? nullptr : &it->second;
  }

 private:
  void record(const Run& r) {
    const std::string name = r.run_name.function_name;
    if (name.empty() || r.report_big_o || r.report_rms) return;
    if (!entries_.count(name)) order_.push_back(name);
    entry& e = entries_[name];
    if (r.error_occurred) {
      e.error = r.error_message.empty() ? "error" : r.error_message;
      return;
    }
    e.repetitions = std::max<std::int64_t>(e.repetitions, r.repetitions);
    const auto g = r.counters.find("GFLOPS");
    const double gflops = g == r.counters.end() ? 0.0 : double(g->second);
    if (r.run_type == Run::RT_Iteration) {
      e.ms.push_back(to_ms(r.GetAdjustedRealTime(), r.time_unit));
      e.gflops.push_back(gflops);
      if (!e.has_median)
        for (const auto& c : r.counters) e.counters[c.first] = double(c.second);
    } else if (r.aggregate_name == "median") {
      e.has_median = true;
      e.median_ms = to_ms(r.GetAdjustedRealTime(), r.time_unit);
      e.median_gflops = gflops;
      for (const auto& c : r.counters) e.counters[c.first] = double(c.second);
    } else if (r.aggregate_name == "cv") {
      e.cv_percent = 100.0 * r.real_accumulated_time;  // a ratio, not a time (as ConsoleReporter prints it)
    }
  }

  benchmark::BenchmarkReporter* inner_;
  std::vector<std::string> order_;
  std::map<std::string, entry> entries_;
};

std::string fmt(const char* f, double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, x);
  return buf;
}

void print_summary(std::ostream& os, const collecting_reporter& rep, const config& cfg, double wall_s) {
  if (rep.order().empty()) return;
  const std::string gemm_name = "BM_gemm_eigen_2048";
  const entry* gemm = rep.find(gemm_name);
  const double gemm_gf = gemm && gemm->error.empty() ? gemm->gflops_value() : 0.0;

  auto shape_of = [](const std::string& name) {
    const auto slash = name.find('/');
    return slash == std::string::npos ? std::string() : name.substr(slash + 1);
  };
  auto family_of = [](const std::string& name) { return name.substr(0, name.find('/')); };
  auto eigen_gf = [&](const std::string& shape_label) -> double {
    const entry* e = rep.find("BM_eigen_materialized/" + shape_label);
    return e && e->error.empty() ? e->gflops_value() : 0.0;
  };

  os << "\n## attnkit benchmark summary\n\n";
  os << "ISA " << attnkit::backend_name() << ", " << cfg.threads << " threads, CPU " << cpu_model()
     << ". Time and GFLOP/s are medians over repetitions (real time); GFLOP/s counts allowed"
        " query-key pairs only (4 * pairs * head_dim * q_heads * batch). max err: max |output - double"
        " reference| over the last 64 query rows of every head.\n\n";
  os << "| benchmark | time (ms) | GFLOP/s | x GEMM 2048 | x Eigen materialised | runs | cv % | max err |\n";
  os << "|---|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const std::string& name : rep.order()) {
    const entry& e = *rep.find(name);
    if (!e.error.empty()) {
      os << "| " << name << " | error: " << e.error << " | | | | | | |\n";
      continue;
    }
    const double gf = e.gflops_value();
    const std::string fam = family_of(name);
    std::string vs_gemm = gemm_gf > 0 ? fmt("%.2f", gf / gemm_gf) : "n/a";
    std::string vs_eigen = "-";
    if (fam == "BM_attnkit" || fam == "BM_reference") {
      const double eg = eigen_gf(shape_of(name));
      vs_eigen = eg > 0 ? fmt("%.2f", gf / eg) : "n/a";
    }
    const std::int64_t runs = e.has_median ? e.repetitions : std::int64_t(e.ms.size());
    const auto err = e.counters.find("err_tail");
    os << "| " << name << " | " << fmt("%.2f", e.ms_value()) << " | " << fmt("%.1f", gf) << " | " << vs_gemm << " | "
       << vs_eigen << " | " << runs << " | " << (e.cv_percent >= 0 ? fmt("%.1f", e.cv_percent) : "-") << " | "
       << (err != e.counters.end() ? fmt("%.2g", err->second) : "-") << " |\n";
  }

  // Acceptance of the foundation issue, on the headline shape.
  const std::string head = headline_shape().label();
  const entry* ak = rep.find("BM_attnkit/" + head);
  const double ak_gf = ak && ak->error.empty() ? ak->gflops_value() : 0.0;
  const double eg = eigen_gf(head);
  os << "\nAcceptance (headline shape " << head << ", same run):\n\n";
  auto check = [&os](const char* what, double num, double den, double bound) {
    os << "- " << what << ": ";
    if (num > 0 && den > 0) {
      const double r = num / den;
      os << fmt("%.3f", r) << " >= " << fmt("%.1f", bound) << " " << (r >= bound ? "PASS" : "FAIL") << "\n";
    } else {
      os << "n/a (not run)\n";
    }
  };
  check("attnkit / Eigen GEMM 2048^3", ak_gf, gemm_gf, 0.6);
  check("attnkit / Eigen materialised", ak_gf, eg, 2.0);

  // Accuracy on the reference shape (design.md section 5: attnkit's error <= 2 x fp32's).
  for (const std::string& name : rep.order()) {
    if (family_of(name) != "BM_reference") continue;
    const entry& e = *rep.find(name);
    const auto a = e.counters.find("err_attnkit"), b = e.counters.find("err_eigen");
    if (a == e.counters.end() || b == e.counters.end()) continue;
    os << "- accuracy on " << shape_of(name) << ": max |attnkit - reference| = " << fmt("%.3g", a->second)
       << ", max |Eigen fp32 - reference| = " << fmt("%.3g", b->second) << ": "
       << (a->second <= 2.0 * b->second ? "PASS" : "FAIL") << " (attnkit <= 2 x Eigen)\n";
  }
  // The same comparison on the last 64 query rows of every shape both kernels ran.
  for (const std::string& name : rep.order()) {
    if (family_of(name) != "BM_attnkit") continue;
    const entry* a = rep.find(name);
    const entry* b = rep.find("BM_eigen_materialized/" + shape_of(name));
    if (!b || !a->error.empty() || !b->error.empty()) continue;
    const auto ea = a->counters.find("err_tail"), eb = b->counters.find("err_tail");
    if (ea == a->counters.end() || eb == b->counters.end()) continue;
    os << "- accuracy, last 64 rows of " << shape_of(name) << ": attnkit " << fmt("%.3g", ea->second) << ", Eigen fp32 "
       << fmt("%.3g", eb->second) << ", ratio " << fmt("%.2f", eb->second > 0 ? ea->second / eb->second : 0.0) << ": "
       << (ea->second <= 2.0 * eb->second ? "PASS" : "FAIL") << " (design bound 2x; informational)\n";
  }
  os << "\nTotal run time " << fmt("%.1f", wall_s) << " s.\n";
}

bool has_flag(const std::vector<char*>& args, const char* prefix) {
  const std::size_t n = std::strlen(prefix);
  for (char* a : args)
    if (std::strncmp(a, prefix, n) == 0) return true;
  return false;
}

}  // namespace
}  // namespace attnkit_bench

int main(int argc, char** argv) {
  using namespace attnkit_bench;
  const auto t0 = std::chrono::steady_clock::now();
  config cfg;
  if (const char* q = std::getenv("ATTNKIT_BENCH_QUICK")) cfg.quick = q[0] != '\0' && std::strcmp(q, "0") != 0;

  // Consume our own options; keep everything else for Google Benchmark.
  std::vector<char*> args;
  args.push_back(argv[0]);
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      cfg.quick = true;
    } else if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      cfg.threads = std::atoi(argv[i] + 10);
      if (cfg.threads < 1) {
        std::fprintf(stderr, "attnkit_bench: --threads must be >= 1\n");
        return 1;
      }
    } else {
      args.push_back(argv[i]);
    }
  }
  static char reps_default[] = "--benchmark_repetitions=3";
  static char reps_quick[] = "--benchmark_repetitions=1";
  static char aggregates_only[] = "--benchmark_display_aggregates_only=true";
  if (!has_flag(args, "--benchmark_repetitions")) args.insert(args.begin() + 1, cfg.quick ? reps_quick : reps_default);
  if (!has_flag(args, "--benchmark_display_aggregates_only") && !has_flag(args, "--benchmark_report_aggregates_only"))
    args.insert(args.begin() + 1, aggregates_only);
  int bargc = int(args.size());
  args.push_back(nullptr);

  benchmark::Initialize(&bargc, args.data());
  if (benchmark::ReportUnrecognizedArguments(bargc, args.data())) return 1;
  benchmark::BenchmarkReporter* inner = benchmark::CreateDefaultDisplayReporter();
  // Our own text goes to stdout with the console format; machine-readable formats keep
  // stdout clean and get it on stderr.
  const bool console = dynamic_cast<benchmark::ConsoleReporter*>(inner) != nullptr;
  std::ostream& text = console ? std::cout : std::cerr;

  text << "attnkit_bench: ISA " << attnkit::backend_name() << ", " << cfg.threads << " threads (OpenMP max "
       << omp_get_max_threads() << "), CPU " << cpu_model() << (cfg.quick ? ", quick mode" : "") << std::endl;
  benchmark::AddCustomContext("attnkit_isa", attnkit::backend_name());
  benchmark::AddCustomContext("attnkit_threads", std::to_string(cfg.threads));
  benchmark::AddCustomContext("cpu_model", cpu_model());
  register_dense_benchmarks(cfg);

  collecting_reporter reporter(inner);
  benchmark::RunSpecifiedBenchmarks(&reporter);

  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  print_summary(text, reporter, cfg, wall);
  benchmark::Shutdown();
  return 0;
}
