// Two translation units with different ISA flags in one program (static mode): both must
// give the reference result, each with its own code path (toolchain.md, "ODR / COMDAT").
#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

#include "check.hpp"
#include "static_tu.hpp"

using entry = const char* (*)(const float*, const float*, const float*, float*, float*);

static int run(const char* label, entry fn, const char* expected_backend) {
  const pkgtest::problem p;
  std::vector<float> out(std::size_t(pkgtest::B * pkgtest::HQ * pkgtest::LQ * pkgtest::DV),
                         std::numeric_limits<float>::quiet_NaN());
  std::vector<float> lse(std::size_t(pkgtest::B * pkgtest::HQ * pkgtest::LQ),
                         std::numeric_limits<float>::quiet_NaN());
  const char* backend = fn(p.q.data(), p.k.data(), p.v.data(), out.data(), lse.data());
  const double err = pkgtest::max_error(p, out, lse);
  const bool ok = err <= 1e-5 && std::strstr(backend, expected_backend) != nullptr;
  std::printf("%s: backend=%s (expected %s) max_abs_err=%.3g %s\n", label, backend, expected_backend, err,
              ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}

int main() {
  int failures = run("TU built for baseline x86-64", static_tu_sse2, "sse2");
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    failures += run("TU built with -mavx2 -mfma", static_tu_avx2, "avx2");
  } else {
    std::printf("TU built with -mavx2 -mfma: CPU without AVX2/FMA, not run\n");
  }
  return failures == 0 ? 0 : 1;
}
