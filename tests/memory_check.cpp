// memory_check: attnkit::attention must not allocate O(seq^2) memory.
//
// Runs dense attention over a long sequence (default seq 32768, 2 heads, head_dim 128,
// batch 1; no mask, then causal) on 2 threads and compares the growth of the peak
// resident set (getrusage ru_maxrss) against the bytes of the inputs and outputs:
//
//   peak RSS - baseline RSS (before allocating)  <=  inputs + outputs + 64 MiB
//
// A materialised score matrix for this shape would be 32768^2 * 4 B = 4 GiB per head.
// Not a Catch2 test: ru_maxrss is a process-wide high-water mark, so this check needs a
// process of its own. Usage: attnkit_memory_check [seq] (exit 0 pass, 1 fail, 77 skipped).
#include <attnkit/attnkit.hpp>

#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define ATTNKIT_MEMCHECK_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
#define ATTNKIT_MEMCHECK_SANITIZED 1
#endif
#endif

namespace {

constexpr double kMiB = 1024.0 * 1024.0;

double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_maxrss) * 1024.0 / kMiB;  // ru_maxrss is in KiB on Linux
}

}  // namespace

int main(int argc, char** argv) {
#ifdef ATTNKIT_MEMCHECK_SANITIZED
  std::printf("memory_check: skipped (sanitizer build: shadow memory distorts RSS)\n");
  return 77;
#endif
  const std::int64_t B = 1, H = 2, D = 128;
  const std::int64_t S = argc > 1 ? std::atoll(argv[1]) : 32768;
  if (S < 1) {
    std::fprintf(stderr, "usage: %s [seq >= 1]\n", argv[0]);
    return 2;
  }
  const double baseline = peak_rss_mib();

  const std::size_t n = std::size_t(B * H * S * D);
  std::vector<float> q(n), k(n), v(n), out(n);
  std::vector<float> lse(std::size_t(B * H * S));
  std::mt19937 gen(42);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (auto* buf : {&q, &k, &v})
    for (auto& x : *buf) x = u(gen);
  const double io_mib = double((4 * n + lse.size()) * sizeof(float)) / kMiB;

  attnkit::attention_options opt;
  opt.num_threads = 2;
  const auto qv = attnkit::make_bhsd<const float>(q.data(), B, H, S, D);
  const auto kv = attnkit::make_bhsd<const float>(k.data(), B, H, S, D);
  const auto vv = attnkit::make_bhsd<const float>(v.data(), B, H, S, D);
  const auto ov = attnkit::make_bhsd(out.data(), B, H, S, D);
  const auto lv = attnkit::make_bhsd(lse.data(), B, H, S, std::int64_t(1));

  std::printf("memory_check: seq %lld, heads %lld, head_dim %lld, batch %lld, 2 threads, %s\n",
              (long long)S, (long long)H, (long long)D, (long long)B, attnkit::backend_name());
  bool ok = true;
  for (int pass = 0; pass < 2; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    if (pass == 0)
      attnkit::attention(qv, kv, vv, ov, attnkit::no_mask{}, opt, lv);
    else
      attnkit::attention(qv, kv, vv, ov, attnkit::causal{}, opt, lv);
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // Sanity: outputs are finite (a kernel that skipped the work would not prove anything).
    std::size_t bad = 0;
    for (float x : out) bad += !std::isfinite(x);
    for (float x : lse) bad += !std::isfinite(x);
    const double pairs = pass == 0 ? double(S) * double(S) : double(S) * double(S + 1) / 2;
    const double peak = peak_rss_mib();
    const double extra = peak - baseline - io_mib;
    const bool pass_ok = bad == 0 && peak - baseline <= io_mib + 64.0;
    std::printf("  %-8s %.2f s (%.1f GFLOP/s): peak RSS %.1f MiB (baseline %.1f MiB), inputs+outputs %.1f MiB, "
                "extra %.1f MiB (limit 64 MiB), non-finite outputs %zu -> %s\n",
                pass == 0 ? "no_mask" : "causal", sec, 4.0 * pairs * double(D * H * B) / sec / 1e9, peak, baseline,
                io_mib, extra, bad, pass_ok ? "ok" : "FAIL");
    ok = ok && pass_ok;
  }
  return ok ? 0 : 1;
}
