// The summary every attnkit benchmark executable prints after Google Benchmark's own output,
// and the hook through which a suite describes it.
//
// One main() (bench_main.cpp) serves every executable. Each executable links exactly one
// suite file that defines define_suite(): it registers its benchmarks (through add(), so
// the table keeps their order) and describes its summary: a legend, extra table columns
// and acceptance sections. The reporter, the Markdown table and the PASS/FAIL formatting
// are shared; a suite only says which numbers it compares and against which bound.
//
// Table: | benchmark | time (ms) | GFLOP/s | <suite columns> | runs | cv % | max err |
// Time and GFLOP/s are medians over repetitions (real time); max err is the counter
// `err_tail` when a benchmark sets it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include <benchmark/benchmark.h>

#include "bench_common.hpp"

namespace attnkit_bench {

/// What the summary keeps of one benchmark (all its repetitions).
struct entry {
  std::vector<double> ms, gflops;  // per repetition (only if the display reporter saw them)
  bool has_median = false;
  double median_ms = 0, median_gflops = 0;
  double cv_percent = -1;  // coefficient of variation of the real time, -1 if unknown
  std::int64_t repetitions = 1;
  std::string error;
  std::map<std::string, double> counters;  // medians (or single-run values) of the counters

  bool ok() const { return error.empty(); }
  double ms_value() const;      // median time in ms
  double gflops_value() const;  // median GFLOP/s (counter "GFLOPS")
  std::int64_t runs() const { return has_median ? repetitions : std::int64_t(ms.size()); }
  /// A counter's median (or single-run value), or `fallback` if the benchmark did not set it.
  double counter(const std::string& key, double fallback = -1) const {
    const auto it = counters.find(key);
    return it == counters.end() ? fallback : it->second;
  }
};

/// The benchmarks that ran, by name.
class results {
 public:
  /// Names in the order the summary lists them: the suite's registration order, then any
  /// other benchmark in the order it was reported.
  const std::vector<std::string>& order() const { return order_; }
  /// Null if the benchmark did not run.
  const entry* find(const std::string& name) const {
    const auto it = entries_.find(name);
    return it == entries_.end() ? nullptr : &it->second;
  }
  /// Null if the benchmark did not run or reported an error.
  const entry* ok(const std::string& name) const {
    const entry* e = find(name);
    return e && e->ok() ? e : nullptr;
  }
  /// Median time in ms / GFLOP/s, or 0 if the benchmark did not run or failed.
  double ms(const std::string& name) const {
    const entry* e = ok(name);
    return e ? e->ms_value() : 0.0;
  }
  double gflops(const std::string& name) const {
    const entry* e = ok(name);
    return e ? e->gflops_value() : 0.0;
  }

  entry& slot(const std::string& name) {
    if (!entries_.count(name)) order_.push_back(name);
    return entries_[name];
  }
  void sort_by(const std::vector<std::string>& preferred);

 private:
  std::vector<std::string> order_;
  std::map<std::string, entry> entries_;
};

/// printf-style formatting of one number.
std::string fmt(const char* f, double x);

/// Writes acceptance lines, each
///   "- <what>: <value> <= <bound> PASS|FAIL[ (<note>)]"     (or >=),
/// or "- <what>: n/a (not run)" when a number it needs is missing (0, negative or not
/// finite: a benchmark left out by a filter or one that failed).
class acceptance {
 public:
  explicit acceptance(std::ostream& os) : os_(os) {}
  /// "\n<text>\n\n": starts a section.
  void heading(const std::string& text) { os_ << "\n" << text << "\n\n"; }
  void at_least(const std::string& what, double value, double bound, const std::string& note = {}) {
    check(what, value, ">=", bound, note);
  }
  void at_most(const std::string& what, double value, double bound, const std::string& note = {}) {
    check(what, value, "<=", bound, note);
  }
  /// A free-form line "- <text>" (informational, or a check the suite formats itself).
  void line(const std::string& text) { os_ << "- " << text << "\n"; }
  /// Counts a PASS or FAIL that the suite decided itself (shown in the final tally).
  void count(bool pass) { ++(pass ? passed_ : failed_); }

  int passed() const { return passed_; }
  int failed() const { return failed_; }
  int missing() const { return missing_; }

 private:
  void check(const std::string& what, double value, const char* op, double bound, const std::string& note);

  std::ostream& os_;
  int passed_ = 0, failed_ = 0, missing_ = 0;
};

/// A table column after GFLOP/s: its header and the cell of each benchmark.
struct column {
  std::string header;
  std::function<std::string(const std::string& name, const entry& e, const results& r)> cell;
};

/// "GB/s": the benchmark's "GBps" counter, "-" where it has none.
inline column gbps_column() {
  return {"GB/s", [](const std::string&, const entry& e, const results&) {
            const double g = e.counter("GBps");
            return g > 0 ? fmt("%.1f", g) : std::string("-");
          }};
}

/// What one executable runs and how its summary reads (filled by define_suite).
struct suite {
  std::string program = "attnkit_bench";   // name in messages
  std::string title = "attnkit benchmark"; // "## <title> summary"
  std::string legend;                      // printed under the machine line
  int repetitions = 3;                     // default --benchmark_repetitions (1 with --quick)
  bool interleave = false;                 // default --benchmark_enable_random_interleaving
  std::vector<column> columns;
  std::vector<std::function<void(acceptance&, const results&)>> checks;  // acceptance sections, in order
  std::vector<std::string> registered;     // filled by add(): the table's row order

  /// RegisterBenchmark(name, fn, args...) and remember the name.
  template <class Fn, class... Args>
  benchmark::internal::Benchmark* add(const std::string& name, Fn&& fn, Args&&... args) {
    registered.push_back(name);
    return benchmark::RegisterBenchmark(name.c_str(), std::forward<Fn>(fn), std::forward<Args>(args)...);
  }
};

/// Defined by exactly one suite file per executable (bench_dense.cpp for attnkit_bench,
/// bench_sparse.cpp for attnkit_bench_sparse). Called once, after our own options are
/// parsed and before Google Benchmark reads the command line.
void define_suite(const config& cfg, suite& s);

}  // namespace attnkit_bench
