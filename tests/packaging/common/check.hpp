// Shared by the packaging tests: a tiny causal grouped-query attention problem, run through
// attnkit::attention and compared with attnkit::reference::attention.
#pragma once

#include <attnkit/attnkit.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <vector>

#include "sizes.hpp"

namespace pkgtest {

struct problem {
  std::vector<float> q, k, v;
  problem() : q(B * HQ * LQ * D), k(B * HK * LK * D), v(B * HK * LK * DV) {
    std::uint32_t s = 12345u;
    auto next = [&s] {
      s = s * 1664525u + 1013904223u;
      return float(s >> 8) / float(1u << 24) * 2.f - 1.f;
    };
    for (auto& x : q) x = next();
    for (auto& x : k) x = next();
    for (auto& x : v) x = next();
  }
};

/// Max abs error of output and lse, against the double reference.
inline double max_error(const problem& p, const std::vector<float>& out, const std::vector<float>& lse) {
  const auto ref = attnkit::reference::attention(
      attnkit::make_bhsd(p.q.data(), B, HQ, LQ, D), attnkit::make_bhsd(p.k.data(), B, HK, LK, D),
      attnkit::make_bhsd(p.v.data(), B, HK, LK, DV), attnkit::causal{});
  double err = 0;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < HQ; ++h)
      for (int i = 0; i < LQ; ++i) {
        for (int j = 0; j < DV; ++j) {
          const double e =
              std::fabs(double(out[std::size_t(((b * HQ + h) * LQ + i) * DV + j)]) - ref.o(b, h, i, j));
          err = e > err || std::isnan(e) ? e : err;
        }
        const double e = std::fabs(double(lse[std::size_t((b * HQ + h) * LQ + i)]) - ref.l(b, h, i));
        err = e > err || std::isnan(e) ? e : err;
      }
  return err;
}

/// Runs attnkit::attention on the problem; returns 0 when it matches the reference.
inline int check_attention(const char* label) {
  const problem p;
  std::vector<float> out(std::size_t(B * HQ * LQ * DV), std::numeric_limits<float>::quiet_NaN());
  std::vector<float> lse(std::size_t(B * HQ * LQ), std::numeric_limits<float>::quiet_NaN());
  attnkit::attention(
      attnkit::make_bhsd(p.q.data(), B, HQ, LQ, D), attnkit::make_bhsd(p.k.data(), B, HK, LK, D),
      attnkit::make_bhsd(p.v.data(), B, HK, LK, DV), attnkit::make_bhsd(out.data(), B, HQ, LQ, DV),
      attnkit::causal{}, attnkit::attention_options{}, attnkit::make_bhsd(lse.data(), B, HQ, LQ, 1));
  const double err = max_error(p, out, lse);
  const bool ok = err <= 1e-5;
  std::printf("%s: backend=%s max_abs_err=%.3g %s\n", label, attnkit::backend_name(), err,
              ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}

}  // namespace pkgtest
