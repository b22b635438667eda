// The main() of every attnkit benchmark executable: prints the machine context, lets the
// suite linked into this executable register its benchmarks (define_suite, one suite file
// per executable), runs them through Google Benchmark (every --benchmark_* flag works as
// usual), and ends with the Markdown summary of bench_report.hpp: per benchmark its median
// time and GFLOP/s plus the suite's own columns, then the suite's acceptance checks.
//
// Own options, removed from argv before Google Benchmark parses it:
//   --quick          (or ATTNKIT_BENCH_QUICK=1) one repetition, short minimum time: CI smoke
//   --threads=N      threads for every threaded benchmark (default 2)
// Defaults injected unless given on the command line: --benchmark_repetitions=<the suite's,
// 3 for both suites> (1 with --quick), --benchmark_display_aggregates_only=true and, for
// suites that ask for it, --benchmark_enable_random_interleaving=true.
#include <algorithm>
#include <chrono>
#include <cmath>
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
#include "bench_report.hpp"

namespace attnkit_bench {

double entry::ms_value() const { return has_median ? median_ms : median_of(ms); }
double entry::gflops_value() const { return has_median ? median_gflops : median_of(gflops); }

void results::sort_by(const std::vector<std::string>& preferred) {
  std::vector<std::string> sorted;
  for (const std::string& name : preferred)
    if (entries_.count(name) && std::find(sorted.begin(), sorted.end(), name) == sorted.end()) sorted.push_back(name);
  for (const std::string& name : order_)
    if (std::find(sorted.begin(), sorted.end(), name) == sorted.end()) sorted.push_back(name);
  order_.swap(sorted);
}

std::string fmt(const char* f, double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, x);
  return buf;
}

namespace {

/// A bound as written by hand: 0.6, 2.0, 0.151, 1.25 (at most 3 decimals, at least 1).
std::string fmt_bound(double x) {
  std::string s = fmt("%.3f", x);
  while (s.size() > 1 && s.back() == '0' && s[s.size() - 2] != '.') s.pop_back();
  return s;
}

}  // namespace

void acceptance::check(const std::string& what, double value, const char* op, double bound, const std::string& note) {
  os_ << "- " << what << ": ";
  if (!(value > 0) || !std::isfinite(value) || !(bound > 0) || !std::isfinite(bound)) {
    os_ << "n/a (not run)\n";
    ++missing_;
    return;
  }
  const bool pass = op[0] == '<' ? value <= bound : value >= bound;
  os_ << fmt("%.3f", value) << " " << op << " " << fmt_bound(bound) << " " << (pass ? "PASS" : "FAIL");
  if (!note.empty()) os_ << " (" << note << ")";
  os_ << "\n";
  count(pass);
}

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

  results& collected() { return results_; }

 private:
  void record(const Run& r) {
    const std::string name = r.run_name.function_name;
    if (name.empty() || r.report_big_o || r.report_rms) return;
    entry& e = results_.slot(name);
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
  results results_;
};

void print_summary(std::ostream& os, const results& res, const suite& s, const config& cfg, double wall_s) {
  if (res.order().empty()) return;
  os << "\n## " << s.title << " summary\n\n";
  os << "ISA " << attnkit::backend_name() << ", " << cfg.threads << " threads, CPU " << cpu_model() << ".";
  if (!s.legend.empty()) os << " " << s.legend;
  os << "\n\n| benchmark | time (ms) | GFLOP/s |";
  for (const column& c : s.columns) os << " " << c.header << " |";
  os << " runs | cv % | max err |\n|---|---:|---:|";
  for (std::size_t i = 0; i < s.columns.size(); ++i) os << "---:|";
  os << "---:|---:|---:|\n";
  for (const std::string& name : res.order()) {
    const entry& e = *res.find(name);
    if (!e.ok()) {
      os << "| " << name << " | error: " << e.error << " |";
      for (std::size_t i = 0; i < 4 + s.columns.size(); ++i) os << " |";
      os << "\n";
      continue;
    }
    os << "| " << name << " | " << fmt("%.2f", e.ms_value()) << " | " << fmt("%.1f", e.gflops_value()) << " |";
    for (const column& c : s.columns) os << " " << c.cell(name, e, res) << " |";
    const double err = e.counter("err_tail");
    os << " " << e.runs() << " | " << (e.cv_percent >= 0 ? fmt("%.1f", e.cv_percent) : "-") << " | "
       << (err >= 0 ? fmt("%.2g", err) : "-") << " |\n";
  }

  acceptance acc(os);
  for (const auto& section : s.checks) section(acc, res);
  if (acc.passed() + acc.failed() + acc.missing() > 0)
    os << "\nAcceptance tally: " << acc.passed() << " PASS, " << acc.failed() << " FAIL, " << acc.missing()
       << " n/a.\n";
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
        std::fprintf(stderr, "%s: --threads must be >= 1\n", argv[0]);
        return 1;
      }
    } else {
      args.push_back(argv[i]);
    }
  }

  suite s;
  define_suite(cfg, s);

  // Defaults, unless given on the command line (strings must outlive Initialize).
  static std::string reps;
  reps = "--benchmark_repetitions=" + std::to_string(cfg.quick ? 1 : s.repetitions);
  static char aggregates_only[] = "--benchmark_display_aggregates_only=true";
  static char interleave[] = "--benchmark_enable_random_interleaving=true";
  if (!has_flag(args, "--benchmark_repetitions")) args.insert(args.begin() + 1, &reps[0]);
  if (!has_flag(args, "--benchmark_display_aggregates_only") && !has_flag(args, "--benchmark_report_aggregates_only"))
    args.insert(args.begin() + 1, aggregates_only);
  if (s.interleave && !has_flag(args, "--benchmark_enable_random_interleaving"))
    args.insert(args.begin() + 1, interleave);
  int bargc = int(args.size());
  args.push_back(nullptr);

  benchmark::Initialize(&bargc, args.data());
  if (benchmark::ReportUnrecognizedArguments(bargc, args.data())) return 1;
  benchmark::BenchmarkReporter* inner = benchmark::CreateDefaultDisplayReporter();
  // Our own text goes to stdout with the console format; machine-readable formats keep
  // stdout clean and get it on stderr.
  const bool console = dynamic_cast<benchmark::ConsoleReporter*>(inner) != nullptr;
  std::ostream& text = console ? std::cout : std::cerr;

  text << s.program << ": ISA " << attnkit::backend_name() << ", " << cfg.threads << " threads (OpenMP max "
       << omp_get_max_threads() << "), CPU " << cpu_model() << (cfg.quick ? ", quick mode" : "") << std::endl;
  benchmark::AddCustomContext("attnkit_isa", attnkit::backend_name());
  benchmark::AddCustomContext("attnkit_threads", std::to_string(cfg.threads));
  benchmark::AddCustomContext("cpu_model", cpu_model());

  collecting_reporter reporter(inner);
  benchmark::RunSpecifiedBenchmarks(&reporter);

  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  reporter.collected().sort_by(s.registered);
  print_summary(text, reporter.collected(), s, cfg, wall);
  benchmark::Shutdown();
  return 0;
}
