// attnkit::bf16 and attnkit::fp16 (core/dtypes.hpp): exact widening, round-to-nearest-even
// narrowing, NaN, infinities, signed zeros and subnormals.
//
// The yardsticks are written independently of the library: decode in double from the
// IEEE field definitions, and round in double (exact for these formats) with ties to even.
// Where the CPU has F16C the hardware conversions are compared as well.
#include "support/attnkit_test.hpp"

#include <cfenv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#define ATTNKIT_TEST_HAVE_F16C_TARGET 1
#endif

using attnkit::bf16;
using attnkit::fp16;

namespace {

std::uint32_t bits_of(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float float_of(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

/// Value of an fp16 code from the field definitions (1 sign, 5 exponent bits with bias 15,
/// 10 mantissa bits), in double.
double fp16_value(std::uint16_t h) {
  const int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  double v;
  if (e == 31)
    v = m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else if (e == 0)
    v = std::ldexp(double(m), -24);
  else
    v = std::ldexp(1024.0 + m, e - 25);
  return s ? -v : v;
}

/// x rounded to nearest, ties to even, into a binary format with `mant` stored mantissa
/// bits, smallest normal exponent `emin` and largest finite value `maxf` (inf beyond).
/// Exact for float inputs: x / quantum has at most 24 significant bits.
double round_to_format(double x, int mant, int emin, double maxf) {
  if (std::isnan(x) || std::isinf(x) || x == 0) return x;
  int e;
  (void)std::frexp(std::fabs(x), &e);  // |x| = f * 2^e, f in [0.5, 1)
  e = std::max(e - 1, emin);            // exponent of the binade (subnormals share emin)
  const double quantum = std::ldexp(1.0, e - mant);
  const double n = x / quantum;  // exact
  double r = std::floor(n);
  const double frac = n - r;
  if (frac > 0.5 || (frac == 0.5 && std::fmod(r, 2.0) != 0)) r += 1;
  const double v = r * quantum;
  if (std::fabs(v) > maxf) return std::copysign(std::numeric_limits<double>::infinity(), x);
  return v == 0 ? std::copysign(0.0, x) : v;
}

double fp16_round(float f) { return round_to_format(f, 10, -14, 65504.0); }
double bf16_round(float f) { return round_to_format(f, 7, -126, std::ldexp(255.0, 120)); }

/// Same value, including the sign of zero, or both NaN.
bool same_value(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return a == b && std::signbit(a) == std::signbit(b);
}

/// Float inputs that exercise fp16 rounding: every fp16 value, every midpoint between
/// neighbours (ties) and one float ulp either side, values around the subnormal and
/// overflow thresholds, specials, and a stride through all float bit patterns.
std::vector<float> fp16_probe_floats() {
  std::vector<float> xs;
  for (std::uint32_t h = 0; h < 0x7c00u; ++h) {  // non-negative finite codes
    const double a = fp16_value(std::uint16_t(h));
    const double b = h + 1 < 0x7c00u ? fp16_value(std::uint16_t(h + 1)) : 65536.0;  // 65536: the "next" past max
    const float mid = float((a + b) / 2);  // exact: 12 significant bits at most
    for (float x : {float(a), mid, std::nextafter(mid, 0.f), std::nextafter(mid, 1e30f)}) {
      xs.push_back(x);
      xs.push_back(-x);
    }
  }
  const float inf = std::numeric_limits<float>::infinity();
  for (float x : {0.f, -0.f, inf, -inf, 65504.f, 65519.f, 65519.996f, 65520.f, 65535.f, 65536.f, 1e5f, 3.4e38f,
                  5.9604645e-8f /*2^-24*/, 2.9802322e-8f /*2^-25, tie to 0*/, 2.9802326e-8f, 4.4703484e-8f /*1.5 x 2^-25*/,
                  8.940697e-8f /*1.5 x 2^-24, tie to 2 x 2^-24*/, 6.1035156e-5f /*2^-14*/, 6.1032e-5f, 1e-45f, 1e-40f,
                  std::numeric_limits<float>::min(), std::numeric_limits<float>::denorm_min()}) {
    xs.push_back(x);
    xs.push_back(-x);
  }
  for (std::uint64_t u = 0; u < (1ull << 32); u += 65521)  // a prime stride through all patterns
    xs.push_back(float_of(std::uint32_t(u)));
  return xs;
}

#ifdef ATTNKIT_TEST_HAVE_F16C_TARGET
// CPUID.1:ECX: F16C (bit 29) and AVX (28) with OS-enabled YMM state (OSXSAVE 27, XCR0 bits
// 1 and 2): F16C instructions are VEX-encoded. (clang 14's __builtin_cpu_supports has no
// "f16c".)
bool cpu_has_f16c() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  const unsigned need = (1u << 27) | (1u << 28) | (1u << 29);
  if ((c & need) != need) return false;
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (lo & 6u) == 6u;
}
__attribute__((target("f16c"))) std::uint16_t hw_float_to_half(float f) { return _cvtss_sh(f, 0); }
__attribute__((target("f16c"))) float hw_half_to_float(std::uint16_t h) { return _cvtsh_ss(h); }
#endif

}  // namespace

TEST_CASE("fp16: the decoder of this test agrees with known values", "[dtypes]") {
  // Guards the yardstick itself.
  CHECK(fp16_value(0x3c00) == 1.0);
  CHECK(fp16_value(0xc000) == -2.0);
  CHECK(fp16_value(0x7bff) == 65504.0);
  CHECK(fp16_value(0x0001) == std::ldexp(1.0, -24));
  CHECK(fp16_value(0x03ff) == std::ldexp(1023.0, -24));
  CHECK(fp16_value(0x0400) == std::ldexp(1.0, -14));
  CHECK(fp16_value(0x3555) == std::ldexp(1024.0 + 0x155, -12));  // 0.333251953125
  CHECK(std::isinf(fp16_value(0xfc00)));
  CHECK(std::isnan(fp16_value(0x7e00)));
  CHECK(fp16_round(1.f + 1.f / 2048) == 1.0);                          // tie, even is 1.0
  CHECK(fp16_round(1.f + 3.f / 2048) == 1.0 + 2.0 / 1024);             // tie, rounds up to even
  CHECK(std::isinf(fp16_round(65520.f)));
  CHECK(fp16_round(65519.f) == 65504.0);
}

TEST_CASE("fp16: every code widens exactly and narrows back to itself", "[dtypes]") {
  long bad_value = 0, bad_roundtrip = 0, bad_nan = 0, nan_codes = 0;
  for (std::uint32_t c = 0; c < 65536; ++c) {
    const auto h = std::uint16_t(c);
    const float f = fp16::to_float(h);
    const double want = fp16_value(h);
    if (!same_value(f, want)) ++bad_value;
    const std::uint16_t back = fp16::from_float(f);
    if (std::isnan(want)) {
      ++nan_codes;
      // NaN stays NaN (exponent all ones, mantissa non-zero) and keeps its sign.
      if (!((back & 0x7c00u) == 0x7c00u && (back & 0x3ffu) != 0 && (back & 0x8000u) == (h & 0x8000u))) ++bad_nan;
    } else if (back != h) {
      ++bad_roundtrip;
    }
    // The wrapper type agrees with the static functions.
    if (!same_value(float(fp16::from_bits(h)), f)) ++bad_value;
    if (attnkit::to_float(fp16::from_bits(h)) != f && !std::isnan(f)) ++bad_value;
  }
  CHECK(nan_codes == 2 * 1023);
  CHECK(bad_value == 0);
  CHECK(bad_roundtrip == 0);
  CHECK(bad_nan == 0);
}

TEST_CASE("fp16: narrowing rounds to nearest, ties to even", "[dtypes]") {
  const auto xs = fp16_probe_floats();
  INFO(xs.size() << " probe floats");
  long bad = 0;
  for (float x : xs) {
    const std::uint16_t h = fp16::from_float(x);
    const double want = fp16_round(x);
    if (!same_value(fp16_value(h), want)) {
      if (bad < 10) FAIL_CHECK("fp16(" << x << " = 0x" << std::hex << bits_of(x) << ") = 0x" << h << std::dec
                                      << " = " << fp16_value(h) << ", expected " << want);
      ++bad;
    }
    if (fp16(x).bits != h) ++bad;  // constructor = from_float
  }
  CHECK(bad == 0);
  // Spot checks of the rules.
  CHECK(fp16::from_float(65520.f) == 0x7c00);           // tie between 65504 and 65536: even, i.e. overflow
  CHECK(fp16::from_float(-65520.f) == 0xfc00);
  CHECK(fp16::from_float(65519.996f) == 0x7bff);
  CHECK(fp16::from_float(2.9802322e-8f) == 0x0000);     // 2^-25: tie between 0 and 2^-24, even is 0
  CHECK(fp16::from_float(2.9802326e-8f) == 0x0001);     // just above the tie
  CHECK(fp16::from_float(8.940697e-8f) == 0x0002);      // 1.5 x 2^-24: tie, even is 2
  CHECK(fp16::from_float(-0.f) == 0x8000);
  CHECK(fp16::from_float(1e-40f) == 0x0000);
  CHECK(fp16::from_float(std::numeric_limits<float>::infinity()) == 0x7c00);
  const std::uint16_t qnan = fp16::from_float(std::numeric_limits<float>::quiet_NaN());
  CHECK((qnan & 0x7c00) == 0x7c00);
  CHECK((qnan & 0x03ff) != 0);
  const std::uint16_t snan = fp16::from_float(float_of(0xff800001u));  // signalling NaN, payload in low bits
  CHECK((snan & 0x7c00) == 0x7c00);
  CHECK((snan & 0x03ff) != 0);  // still NaN: the payload must not truncate to infinity
  CHECK((snan & 0x8000) != 0);
}

TEST_CASE("fp16: matches the F16C hardware conversions", "[dtypes]") {
#ifdef ATTNKIT_TEST_HAVE_F16C_TARGET
  if (!cpu_has_f16c()) {
    WARN("this CPU has no F16C: hardware comparison skipped");
    return;
  }
  long bad_widen = 0, bad_narrow = 0, nan_payload_diff = 0;
  for (std::uint32_t c = 0; c < 65536; ++c) {
    const float sw = fp16::to_float(std::uint16_t(c)), hw = hw_half_to_float(std::uint16_t(c));
    if (std::isnan(hw) ? !std::isnan(sw) : bits_of(sw) != bits_of(hw)) ++bad_widen;
  }
  for (float x : fp16_probe_floats()) {
    const std::uint16_t sw = fp16::from_float(x), hw = hw_float_to_half(x);
    if (sw != hw) {
      const bool both_nan = (sw & 0x7c00) == 0x7c00 && (sw & 0x3ff) && (hw & 0x7c00) == 0x7c00 && (hw & 0x3ff);
      if (both_nan)
        ++nan_payload_diff;
      else
        ++bad_narrow;
    }
  }
  CHECK(bad_widen == 0);
  CHECK(bad_narrow == 0);
  CHECK(nan_payload_diff == 0);  // quieting keeps the payload's top bits, as the hardware does
#else
  WARN("not an x86 GCC/Clang build: F16C comparison not compiled");
#endif
}

TEST_CASE("bf16: every code widens exactly and narrows back to itself", "[dtypes]") {
  long bad = 0, bad_nan = 0;
  for (std::uint32_t c = 0; c < 65536; ++c) {
    const auto h = std::uint16_t(c);
    const float f = bf16::to_float(h);
    if (bits_of(f) != (c << 16)) ++bad;
    const std::uint16_t back = bf16::from_float(f);
    if (std::isnan(f)) {
      if (!((back & 0x7f80u) == 0x7f80u && (back & 0x7fu) != 0 && (back & 0x8000u) == (h & 0x8000u))) ++bad_nan;
    } else if (back != h) {
      ++bad;
    }
    if (attnkit::to_float(bf16::from_bits(h)) != f && !std::isnan(f)) ++bad;
  }
  CHECK(bad == 0);
  CHECK(bad_nan == 0);
}

TEST_CASE("bf16: narrowing rounds to nearest, ties to even", "[dtypes]") {
  // Ties: the low 16 bits are exactly 0x8000.
  CHECK(bf16::from_float(float_of(0x3f808000u)) == 0x3f80);  // 1 + 2^-8: tie, even is 1.0
  CHECK(bf16::from_float(float_of(0x3f818000u)) == 0x3f82);  // tie, rounds up to even
  CHECK(bf16::from_float(float_of(0x3f808001u)) == 0x3f81);  // just above the tie
  CHECK(bf16::from_float(float_of(0x3f817fffu)) == 0x3f81);  // just below
  CHECK(bf16::from_float(float_of(0xbf818000u)) == 0xbf82);  // negative tie
  CHECK(bf16::from_float(float_of(0x007f8000u)) == 0x0080);  // subnormal tie rounding into the normals
  CHECK(bf16::from_float(float_of(0x00008000u)) == 0x0000);  // smallest subnormal tie: even is 0
  CHECK(bf16::from_float(float_of(0x00018000u)) == 0x0002);
  CHECK(bf16::from_float(float_of(0x7f7f8000u)) == 0x7f80);  // tie above the largest finite: inf
  CHECK(bf16::from_float(std::numeric_limits<float>::max()) == 0x7f80);
  CHECK(bf16::from_float(float_of(0x7f7f7fffu)) == 0x7f7f);
  CHECK(bf16::from_float(-std::numeric_limits<float>::infinity()) == 0xff80);
  CHECK(bf16::from_float(-0.f) == 0x8000);
  // NaN stays NaN, quiet, with its sign, even when the payload sits in the dropped bits.
  for (std::uint32_t n : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu, 0xffc00001u}) {
    const std::uint16_t b = bf16::from_float(float_of(n));
    CAPTURE(n, b);
    CHECK((b & 0x7f80u) == 0x7f80u);
    CHECK((b & 0x0040u) != 0);  // quiet
    CHECK((b & 0x8000u) == ((n >> 16) & 0x8000u));
  }
  // Against the double yardstick over a stride through all float bit patterns.
  long bad = 0, n = 0;
  for (std::uint64_t u = 0; u < (1ull << 32); u += 4093) {
    const float x = float_of(std::uint32_t(u));
    for (float y : {x, float_of(std::uint32_t(u & 0xffff0000u) | 0x8000u)}) {  // and the tie of its binade
      ++n;
      const std::uint16_t b = bf16::from_float(y);
      if (!same_value(bf16::to_float(b), bf16_round(y))) {
        if (bad < 10) FAIL_CHECK("bf16(0x" << std::hex << bits_of(y) << ") = 0x" << b);
        ++bad;
      }
      if (bf16(y).bits != b) ++bad;
    }
  }
  INFO(n << " floats");
  CHECK(bad == 0);
}

TEST_CASE("reference accepts bf16 and fp16 inputs and widens them exactly", "[dtypes][reference]") {
  // The reference is templated on storage types: the same values in float and in 16-bit
  // storage give the same double result.
  const attnkit::index_t B = 1, H = 2, S = 9, D = 8;
  std::vector<float> qf(B * H * S * D), kf(qf.size()), vf(qf.size());
  std::vector<bf16> qb(qf.size()), kb(qf.size()), vb(qf.size());
  std::vector<fp16> qh(qf.size()), kh(qf.size()), vh(qf.size());
  std::mt19937 gen(3);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (std::size_t i = 0; i < qf.size(); ++i) {
    // Values exactly representable in both formats: 8 significant bits, small exponents.
    qf[i] = std::round(u(gen) * 128) / 128, kf[i] = std::round(u(gen) * 128) / 128, vf[i] = std::round(u(gen) * 128) / 128;
    qb[i] = bf16(qf[i]), kb[i] = bf16(kf[i]), vb[i] = bf16(vf[i]);
    qh[i] = fp16(qf[i]), kh[i] = fp16(kf[i]), vh[i] = fp16(vf[i]);
  }
  const auto rf = attnkit::reference::attention(attnkit::make_bhsd(qf.data(), B, H, S, D), attnkit::make_bhsd(kf.data(), B, H, S, D),
                                                attnkit::make_bhsd(vf.data(), B, H, S, D), attnkit::causal{});
  const auto rb = attnkit::reference::attention(attnkit::make_bhsd(qb.data(), B, H, S, D), attnkit::make_bhsd(kb.data(), B, H, S, D),
                                                attnkit::make_bhsd(vb.data(), B, H, S, D), attnkit::causal{});
  const auto rh = attnkit::reference::attention(attnkit::make_bhsd(qh.data(), B, H, S, D), attnkit::make_bhsd(kh.data(), B, H, S, D),
                                                attnkit::make_bhsd(vh.data(), B, H, S, D), attnkit::causal{});
  CHECK(rf.out == rb.out);
  CHECK(rf.out == rh.out);
  CHECK(rf.lse == rb.lse);
  CHECK(rf.lse == rh.lse);
}
