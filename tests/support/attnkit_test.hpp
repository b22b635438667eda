// Shared helpers of attnkit's Catch2 tests.
//
//   - ISA loop: ATTNKIT_TEST_FOR_EACH_ISA() runs the rest of a test case once per ISA that
//     this binary carries and the CPU supports (runtime-dispatch builds), or once for the
//     compile-time ISA (static builds), and records the ISA in every failure message.
//   - toy_pool / toy_parallel_for: a minimal host thread pool for attention_options::exec.
//   - tensors: owning buffers with views in [B,H,S,D] or [B,S,H,D] layout, optional padded
//     rows (row stride > dim) and a misaligned base pointer; padding and guard zones hold a
//     NaN sentinel, so a kernel that reads them produces NaN and one that writes them is
//     caught by `untouched()`.
//   - plain_fp32(): the accuracy yardstick, attention as a user writes it by hand in float
//     (materialised score matrix, softmax with max subtraction, P.V), with its own mask
//     definition (independent of attnkit's mask policies).
//   - compare(): max |out - ref| for attnkit and the yardstick against the double
//     reference, lse errors, -inf agreement of fully masked rows, NaN counts.
//   - dense_case / check_dense_case(): one attention problem run end to end with every
//     check of the accuracy criterion.
#pragma once

#include <attnkit/attnkit.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace attnkit_test {

using attnkit::index_t;
using attnkit::tensor_view;

// -----------------------------------------------------------------------------------------
// ISA loop

/// ISAs the tests exercise: in a runtime-dispatch build every ISA up to supported_isa()
/// (which honours the ATTNKIT_ISA cap); in a static build a single entry (the compile-time
/// ISA; set_isa() has no effect there).
inline std::vector<attnkit::isa> isas_under_test() {
#if ATTNKIT_RUNTIME_DISPATCH
  std::vector<attnkit::isa> r;
  for (attnkit::isa i : {attnkit::isa::sse2, attnkit::isa::avx2, attnkit::isa::avx512})
    if (int(i) <= int(attnkit::supported_isa())) r.push_back(i);
  return r;
#else
  return {attnkit::supported_isa()};
#endif
}

/// Human-readable name of the code path the tests run for `i`.
inline std::string isa_label(attnkit::isa i) {
#if ATTNKIT_RUNTIME_DISPATCH
  return attnkit::isa_name(i);
#else
  (void)i;
  return std::string(attnkit::backend_name()) + " (static)";
#endif
}

/// Selects an ISA for the lifetime of the object (runtime dispatch), then resets it.
class isa_scope {
 public:
  explicit isa_scope(attnkit::isa i) : which_(i), label_(isa_label(i)) {
#if ATTNKIT_RUNTIME_DISPATCH
    attnkit::set_isa(i);
    warn_missing_once();
#endif
  }
  ~isa_scope() {
#if ATTNKIT_RUNTIME_DISPATCH
    attnkit::reset_isa();
#endif
  }
  isa_scope(const isa_scope&) = delete;
  isa_scope& operator=(const isa_scope&) = delete;

  attnkit::isa which() const { return which_; }
  const std::string& label() const { return label_; }

 private:
  static void warn_missing_once() {
    static bool warned = false;
    if (warned) return;
    warned = true;
    for (attnkit::isa i : {attnkit::isa::sse2, attnkit::isa::avx2, attnkit::isa::avx512})
      if (int(i) > int(attnkit::supported_isa()))
        WARN("ISA " << attnkit::isa_name(i) << " is compiled in but not tested: this CPU (or ATTNKIT_ISA) "
                    << "supports only up to " << attnkit::isa_name(attnkit::supported_isa()));
  }
  attnkit::isa which_;
  std::string label_;
};

// GENERATE must be expanded at test-case scope; the rest of the test case runs once per ISA.
#define ATTNKIT_TEST_FOR_EACH_ISA()                                                                 \
  const ::attnkit_test::isa_scope attnkit_isa_scope_(                                              \
      GENERATE(from_range(::attnkit_test::isas_under_test())));                                    \
  const std::string isa = attnkit_isa_scope_.label();                                              \
  CAPTURE(isa)

/// Query lanes of one work unit of the dense kernel for an ISA (16 x 4 on AVX-512, 8 x 3 on
/// AVX2, 4 x 3 on SSE2); used to put sequence lengths on the kernel's block boundaries.
inline index_t dense_block_lanes(attnkit::isa i) {
#if ATTNKIT_RUNTIME_DISPATCH
  return i == attnkit::isa::avx512 ? 64 : i == attnkit::isa::avx2 ? 24 : 12;
#else
  (void)i;
#if defined(__AVX512F__)
  return 64;
#elif defined(__AVX2__)
  return 24;
#else
  return 12;
#endif
#endif
}

// -----------------------------------------------------------------------------------------
// A host executor for the attention_options::exec hook

// A minimal host thread pool: `threads` std::threads pull task indices from a counter.
struct toy_pool {
  int threads = 3;
  std::atomic<long> calls{0};
  std::vector<std::atomic<int>>* seen = nullptr;  // per-index call counts, when wanted
};

inline void toy_parallel_for(void* p, std::int64_t n, void (*task)(void*, std::int64_t), void* ctx) {
  auto* pool = static_cast<toy_pool*>(p);
  std::atomic<std::int64_t> next{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < pool->threads; ++t)
    ts.emplace_back([&] {
      for (std::int64_t i; (i = next.fetch_add(1)) < n;) {
        if (pool->seen && i < std::int64_t(pool->seen->size())) ++(*pool->seen)[std::size_t(i)];
        pool->calls.fetch_add(1);
        task(ctx, i);
      }
    });
  for (auto& t : ts) t.join();
}

// -----------------------------------------------------------------------------------------
// Tensors

enum class layout { bhsd, bshd };
/// Row padding: none (row stride = dim), dim + 3, or an odd number of 64-byte cache lines.
enum class padding { none, plus3, odd_lines };

inline const char* to_string(layout l) { return l == layout::bhsd ? "bhsd" : "bshd"; }
inline const char* to_string(padding p) {
  return p == padding::none ? "packed" : p == padding::plus3 ? "dim+3" : "odd-lines";
}

inline index_t row_stride(index_t dim, padding p) {
  switch (p) {
    case padding::none: return dim;
    case padding::plus3: return dim + 3;
    default: {
      index_t lines = (dim + 1 + 15) / 16;  // strictly more than dim
      if (lines % 2 == 0) ++lines;
      return lines * 16;
    }
  }
}

/// Bit pattern written to every element a view does not cover: a quiet NaN with a payload.
inline float sentinel() {
  const std::uint32_t bits = 0x7fc0beefu;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline bool is_sentinel(float f) {
  std::uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits == 0x7fc0beefu;
}

struct tensor_spec {
  layout lay = layout::bhsd;
  padding pad = padding::none;
  bool misalign = false;  // base pointer one float past a 64-byte boundary
};

/// An owning buffer and its logical [B, H, S, D] view. Elements outside the view (row
/// padding and 16-float guard zones at both ends) hold sentinel().
struct tensor {
  static constexpr index_t guard = 16;
  std::vector<float> buf;
  tensor_view<float> view;
  index_t B = 0, H = 0, S = 0, D = 0, ld = 0;
  tensor_spec spec;

  tensor() = default;
  tensor(index_t b, index_t h, index_t s, index_t d, tensor_spec sp = {}) : B(b), H(h), S(s), D(d), spec(sp) {
    ld = row_stride(d, sp.pad);
    const index_t front = guard + (sp.misalign ? 1 : 0);
    buf.assign(std::size_t(front + b * h * s * ld + guard), sentinel());
    float* base = buf.data() + front;
    if (sp.lay == layout::bhsd)
      view = tensor_view<float>(base, {{b, h, s, d}}, {{h * s * ld, s * ld, ld, 1}});
    else
      view = tensor_view<float>(base, {{b, h, s, d}}, {{s * h * ld, ld, h * ld, 1}});
  }
  tensor(const tensor& o) : buf(o.buf), B(o.B), H(o.H), S(o.S), D(o.D), ld(o.ld), spec(o.spec) {
    view = tensor_view<float>(buf.data() + (o.view.data_handle() - o.buf.data()), o.view.extents(), o.view.strides());
  }
  tensor& operator=(const tensor& o) {
    if (this != &o) {
      tensor t(o);
      swap(t);
    }
    return *this;
  }
  void swap(tensor& o) noexcept {
    buf.swap(o.buf);
    std::swap(view, o.view);
    std::swap(B, o.B), std::swap(H, o.H), std::swap(S, o.S), std::swap(D, o.D), std::swap(ld, o.ld);
    std::swap(spec, o.spec);
  }

  tensor_view<const float> cview() const { return view; }
  float& operator()(index_t b, index_t h, index_t s, index_t d) const { return view(b, h, s, d); }

  template <class F>
  void for_each(F&& f) const {
    for (index_t b = 0; b < B; ++b)
      for (index_t h = 0; h < H; ++h)
        for (index_t s = 0; s < S; ++s)
          for (index_t d = 0; d < D; ++d) f(b, h, s, d);
  }

  /// Fills the logical elements with uniform values in [lo, hi] from a fixed seed.
  void fill_uniform(std::uint32_t seed, float lo = -1.f, float hi = 1.f) {
    std::mt19937 gen(seed);
    std::uniform_real_distribution<float> u(lo, hi);
    for_each([&](index_t b, index_t h, index_t s, index_t d) { view(b, h, s, d) = u(gen); });
  }
  void fill(float x) {
    for_each([&](index_t b, index_t h, index_t s, index_t d) { view(b, h, s, d) = x; });
  }

  /// Number of elements outside the view that no longer hold the sentinel.
  index_t touched_outside() const {
    std::vector<char> inside(buf.size(), 0);
    const index_t base = view.data_handle() - buf.data();
    for_each([&](index_t b, index_t h, index_t s, index_t d) {
      inside[std::size_t(base + view.offset(b, h, s, d))] = 1;
    });
    index_t n = 0;
    for (std::size_t i = 0; i < buf.size(); ++i) n += !inside[i] && !is_sentinel(buf[i]);
    return n;
  }
  /// Number of non-finite values inside the view.
  index_t nonfinite() const {
    index_t n = 0;
    for_each([&](index_t b, index_t h, index_t s, index_t d) { n += !std::isfinite(view(b, h, s, d)); });
    return n;
  }
  /// Bitwise equality of the logical elements.
  bool same_bits(const tensor& o) const {
    if (B != o.B || H != o.H || S != o.S || D != o.D) return false;
    bool same = true;
    for_each([&](index_t b, index_t h, index_t s, index_t d) {
      same = same && std::memcmp(&view(b, h, s, d), &o.view(b, h, s, d), sizeof(float)) == 0;
    });
    return same;
  }
  double max_abs_diff(const tensor& o) const {
    double m = 0;
    for_each([&](index_t b, index_t h, index_t s, index_t d) {
      const double e = std::fabs(double(view(b, h, s, d)) - double(o.view(b, h, s, d)));
      m = std::isnan(e) ? std::numeric_limits<double>::infinity() : std::max(m, e);
    });
    return m;
  }
};

/// lse output buffer of shape [B, H, S, 1], with seq stride `ss` (1 = contiguous); gaps and
/// guards hold sentinel().
struct lse_buffer {
  std::vector<float> buf;
  tensor_view<float> view;
  index_t B = 0, H = 0, S = 0;
  lse_buffer() = default;
  lse_buffer(index_t b, index_t h, index_t s, index_t ss = 1) : B(b), H(h), S(s) {
    buf.assign(std::size_t(2 * tensor::guard + b * h * s * ss), sentinel());
    view = tensor_view<float>(buf.data() + tensor::guard, {{b, h, s, 1}}, {{h * s * ss, s * ss, ss, 1}});
  }
  lse_buffer(const lse_buffer& o) : buf(o.buf), B(o.B), H(o.H), S(o.S) {
    if (!buf.empty()) view = tensor_view<float>(buf.data() + tensor::guard, o.view.extents(), o.view.strides());
  }
  lse_buffer& operator=(const lse_buffer& o) {
    if (this != &o) {
      buf = o.buf;
      B = o.B, H = o.H, S = o.S;
      view = buf.empty() ? tensor_view<float>{}
                         : tensor_view<float>(buf.data() + tensor::guard, o.view.extents(), o.view.strides());
    }
    return *this;
  }
  float operator()(index_t b, index_t h, index_t s) const { return view(b, h, s, 0); }
  index_t touched_outside() const {
    std::vector<char> inside(buf.size(), 0);
    for (index_t b = 0; b < B; ++b)
      for (index_t h = 0; h < H; ++h)
        for (index_t s = 0; s < S; ++s) inside[std::size_t(tensor::guard + view.offset(b, h, s, 0))] = 1;
    index_t n = 0;
    for (std::size_t i = 0; i < buf.size(); ++i) n += !inside[i] && !is_sentinel(buf[i]);
    return n;
  }
};

// -----------------------------------------------------------------------------------------
// The plain fp32 yardstick

enum class mask_kind { none, causal };
inline mask_kind kind_of(attnkit::no_mask) { return mask_kind::none; }
inline mask_kind kind_of(attnkit::causal) { return mask_kind::causal; }
inline const char* to_string(mask_kind m) { return m == mask_kind::none ? "no_mask" : "causal"; }

/// Test-side definition of the masks (not attnkit's policy code): absolute positions,
/// query row i at i + (Lk - Lq).
inline bool allowed(mask_kind m, index_t qpos, index_t kpos) { return m == mask_kind::none || kpos <= qpos; }

struct plain_result {
  index_t B = 0, H = 0, Lq = 0, Dv = 0;
  std::vector<float> out, lse;
  float o(index_t b, index_t h, index_t i, index_t j) const {
    return out[std::size_t(((b * H + h) * Lq + i) * Dv + j)];
  }
  float l(index_t b, index_t h, index_t i) const { return lse[std::size_t((b * H + h) * Lq + i)]; }
};

/// Attention as a user writes it by hand in float: for each (batch, head) the full
/// Lq x Lk score matrix (float dot products, times scale, optional softcap), masked entries
/// -inf, row softmax with max subtraction in float, then P.V in float.
inline plain_result plain_fp32(const tensor_view<const float>& q, const tensor_view<const float>& k,
                               const tensor_view<const float>& v, mask_kind mask, float scale = 0.f,
                               float softcap = 0.f) {
  plain_result r;
  r.B = q.extent(0), r.H = q.extent(1), r.Lq = q.extent(2), r.Dv = v.extent(3);
  const index_t Lk = k.extent(2), D = q.extent(3), group = r.H / k.extent(1);
  if (scale == 0.f) scale = 1.f / std::sqrt(float(D));
  const float inf = std::numeric_limits<float>::infinity();
  r.out.assign(std::size_t(r.B * r.H * r.Lq * r.Dv), 0.f);
  r.lse.assign(std::size_t(r.B * r.H * r.Lq), -inf);
  std::vector<float> s(std::size_t(r.Lq * Lk));
  for (index_t b = 0; b < r.B; ++b)
    for (index_t h = 0; h < r.H; ++h) {
      const index_t hk = h / group;
      for (index_t i = 0; i < r.Lq; ++i)
        for (index_t j = 0; j < Lk; ++j) {
          float& x = s[std::size_t(i * Lk + j)];
          if (!allowed(mask, i + Lk - r.Lq, j)) {
            x = -inf;
            continue;
          }
          float dot = 0.f;
          for (index_t d = 0; d < D; ++d) dot += q(b, h, i, d) * k(b, hk, j, d);
          x = dot * scale;
          if (softcap != 0.f) x = softcap * std::tanh(x / softcap);
        }
      for (index_t i = 0; i < r.Lq; ++i) {
        float* row = s.data() + i * Lk;  // (s may be empty when Lk = 0)
        float mx = -inf;
        for (index_t j = 0; j < Lk; ++j) mx = std::max(mx, row[j]);
        if (mx == -inf) continue;  // no allowed key: out 0, lse -inf
        float sum = 0.f;
        for (index_t j = 0; j < Lk; ++j) sum += (row[j] = std::exp(row[j] - mx));
        for (index_t j = 0; j < Lk; ++j) row[j] /= sum;
        float* o = r.out.data() + ((b * r.H + h) * r.Lq + i) * r.Dv;
        for (index_t j = 0; j < Lk; ++j)
          for (index_t c = 0; c < r.Dv; ++c) o[c] += row[j] * v(b, hk, j, c);
        r.lse[std::size_t((b * r.H + h) * r.Lq + i)] = mx + std::log(sum);
      }
    }
  return r;
}

// -----------------------------------------------------------------------------------------
// Comparison against the double reference

struct accuracy {
  double err = 0;            // max |attnkit out - ref|
  double plain_err = 0;      // max |plain fp32 out - ref|
  double lse_err = 0;        // max |attnkit lse - ref| over rows with finite ref lse
  double plain_lse_err = 0;  // same for the yardstick
  double max_abs_lse = 0;    // max |ref lse| over finite rows
  index_t nonfinite_out = 0;     // NaN or inf in attnkit's out
  index_t masked_rows = 0;       // rows the reference reports fully masked (lse -inf)
  index_t masked_nonzero = 0;    // elements of such rows that are not exactly +-0 in attnkit's out
  index_t lse_mismatch = 0;      // rows where attnkit's lse is -inf xor ref's is, or NaN
  index_t plain_mismatch = 0;    // rows where the yardstick disagrees with ref on -inf
  bool lse_checked = false;

  double bound() const { return 2.0 * std::max(plain_err, 1e-6); }
  double ratio() const { return err / std::max(plain_err, 1e-6); }
  double lse_bound() const { return 2.0 * std::max(plain_lse_err, 1e-6 * std::max(1.0, max_abs_lse)); }
};

inline accuracy compare(const tensor& out, const lse_buffer* lse, const attnkit::reference::result& ref,
                        const plain_result& plain) {
  accuracy a;
  a.lse_checked = lse != nullptr;
  const double ninf = -std::numeric_limits<double>::infinity();
  for (index_t b = 0; b < ref.batch; ++b)
    for (index_t h = 0; h < ref.heads; ++h)
      for (index_t i = 0; i < ref.q_len; ++i) {
        const double rl = ref.l(b, h, i);
        const bool masked = rl == ninf;
        a.masked_rows += masked;
        a.plain_mismatch += (double(plain.l(b, h, i)) == ninf) != masked;
        for (index_t j = 0; j < ref.v_dim; ++j) {
          const float o = out(b, h, i, j);
          a.nonfinite_out += !std::isfinite(o);
          if (masked) a.masked_nonzero += o != 0.f;
          const double e = std::fabs(double(o) - ref.o(b, h, i, j));
          a.err = std::isnan(e) ? std::numeric_limits<double>::infinity() : std::max(a.err, e);
          const double pe = std::fabs(double(plain.o(b, h, i, j)) - ref.o(b, h, i, j));
          a.plain_err = std::isnan(pe) ? std::numeric_limits<double>::infinity() : std::max(a.plain_err, pe);
        }
        if (!masked) {
          a.max_abs_lse = std::max(a.max_abs_lse, std::fabs(rl));
          a.plain_lse_err = std::max(a.plain_lse_err, std::fabs(double(plain.l(b, h, i)) - rl));
        }
        if (lse) {
          const float l = (*lse)(b, h, i);
          if (std::isnan(l) || (double(l) == ninf) != masked) {
            ++a.lse_mismatch;
          } else if (!masked) {
            a.lse_err = std::max(a.lse_err, std::fabs(double(l) - rl));
          }
        }
      }
  return a;
}

/// Largest error ratio (attnkit / plain fp32) seen per ISA label in this process. Printed
/// at exit when the environment variable ATTNKIT_TEST_REPORT is set (run the binary
/// directly, not through ctest, to see one summary over all test cases).
class ratio_registry {
 public:
  static ratio_registry& get() {
    static ratio_registry r;
    return r;
  }
  void record(const std::string& isa, const accuracy& a, const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    auto& e = max_[isa];
    ++e.cases;
    if (a.ratio() > e.ratio) {
      e.ratio = a.ratio();
      e.err = a.err;
      e.plain_err = a.plain_err;
      e.what = what;
    }
    if (a.plain_err > 0 && a.err / a.plain_err > e.raw) {  // without the 1e-6 floor
      e.raw = a.err / a.plain_err;
      e.raw_err = a.err;
      e.raw_plain = a.plain_err;
      e.raw_what = what;
    }
  }
  ~ratio_registry() {
    if (!std::getenv("ATTNKIT_TEST_REPORT") || max_.empty()) return;
    std::printf("\nLargest error ratio (attnkit max|out-ref| / max(plain fp32 max|out-ref|, 1e-6)) per ISA:\n");
    for (const auto& kv : max_)
      std::printf("  %-24s ratio %.3f (err %.3g, plain fp32 err %.3g) over %ld cases; worst: %s\n"
                  "  %-24s without the floor: %.3f (err %.3g, plain fp32 err %.3g); worst: %s\n",
                  kv.first.c_str(), kv.second.ratio, kv.second.err, kv.second.plain_err, long(kv.second.cases),
                  kv.second.what.c_str(), "", kv.second.raw, kv.second.raw_err, kv.second.raw_plain,
                  kv.second.raw_what.c_str());
  }

 private:
  struct entry {
    double ratio = 0, err = 0, plain_err = 0;
    double raw = 0, raw_err = 0, raw_plain = 0;
    long cases = 0;
    std::string what, raw_what;
  };
  std::mutex mu_;
  std::map<std::string, entry> max_;
};

// -----------------------------------------------------------------------------------------
// One dense attention problem, end to end

struct dense_case {
  index_t batch = 1, q_heads = 1, kv_heads = 1, q_len = 1, kv_len = 1, dim = 16, v_dim = 0;  // 0: = dim
  mask_kind mask = mask_kind::none;
  tensor_spec q_spec, k_spec, v_spec, o_spec;
  bool lse = true;
  index_t lse_seq_stride = 1;
  float scale = 0.f, softcap = 0.f;
  int num_threads = 0;
  float q_lo = -1.f, q_hi = 1.f, k_lo = -1.f, k_hi = 1.f, v_lo = -1.f, v_hi = 1.f;
  std::uint32_t seed = 1;

  index_t dv() const { return v_dim > 0 ? v_dim : dim; }
  bool unit_range() const {
    return q_lo >= -1.f && q_hi <= 1.f && k_lo >= -1.f && k_hi <= 1.f && v_lo >= -1.f && v_hi <= 1.f;
  }
  /// Same layout, padding and alignment for q, k, v and out.
  dense_case& all_specs(tensor_spec s) {
    q_spec = k_spec = v_spec = o_spec = s;
    return *this;
  }
  std::string str() const {
    std::ostringstream s;
    s << "B=" << batch << " Hq=" << q_heads << " Hkv=" << kv_heads << " Lq=" << q_len << " Lk=" << kv_len
      << " D=" << dim << " Dv=" << dv() << " " << to_string(mask);
    auto sp = [&](const char* n, const tensor_spec& t) {
      s << " " << n << ":" << to_string(t.lay) << "/" << to_string(t.pad) << (t.misalign ? "/misaligned" : "");
    };
    sp("q", q_spec), sp("k", k_spec), sp("v", v_spec), sp("out", o_spec);
    if (scale != 0.f) s << " scale=" << scale;
    if (softcap != 0.f) s << " softcap=" << softcap;
    if (num_threads) s << " threads=" << num_threads;
    if (lse) s << " lse(ss=" << lse_seq_stride << ")";
    s << " q~U[" << q_lo << "," << q_hi << "] k~U[" << k_lo << "," << k_hi << "] v~U[" << v_lo << "," << v_hi
      << "] seed=" << seed;
    return s.str();
  }
};

/// Inputs and outputs of one dense_case run through attnkit::attention.
struct dense_run {
  tensor q, k, v, out;
  lse_buffer lse;
  attnkit::attention_options opts;
};

inline dense_run make_inputs(const dense_case& c) {
  dense_run r;
  r.q = tensor(c.batch, c.q_heads, c.q_len, c.dim, c.q_spec);
  r.k = tensor(c.batch, c.kv_heads, c.kv_len, c.dim, c.k_spec);
  r.v = tensor(c.batch, c.kv_heads, c.kv_len, c.dv(), c.v_spec);
  r.out = tensor(c.batch, c.q_heads, c.q_len, c.dv(), c.o_spec);  // sentinel (NaN) everywhere
  r.q.fill_uniform(c.seed * 4 + 0, c.q_lo, c.q_hi);
  r.k.fill_uniform(c.seed * 4 + 1, c.k_lo, c.k_hi);
  r.v.fill_uniform(c.seed * 4 + 2, c.v_lo, c.v_hi);
  if (c.lse) r.lse = lse_buffer(c.batch, c.q_heads, c.q_len, c.lse_seq_stride);
  r.opts.scale = c.scale;
  r.opts.softcap = c.softcap;
  r.opts.num_threads = c.num_threads;
  return r;
}

/// Runs attnkit::attention on `r` with the case's mask.
inline void run_attnkit(const dense_case& c, dense_run& r) {
  const tensor_view<float> lse = c.lse ? r.lse.view : tensor_view<float>{};
  if (c.mask == mask_kind::causal)
    attnkit::attention(r.q.cview(), r.k.cview(), r.v.cview(), r.out.view, attnkit::causal{}, r.opts, lse);
  else
    attnkit::attention(r.q.cview(), r.k.cview(), r.v.cview(), r.out.view, attnkit::no_mask{}, r.opts, lse);
}

inline attnkit::reference::result run_reference(const dense_case& c, const dense_run& r) {
  if (c.mask == mask_kind::causal)
    return attnkit::reference::attention(r.q.cview(), r.k.cview(), r.v.cview(), attnkit::causal{}, r.opts);
  return attnkit::reference::attention(r.q.cview(), r.k.cview(), r.v.cview(), attnkit::no_mask{}, r.opts);
}

/// True if every element of `buf` is still `x`: error paths must throw before writing any
/// output.
inline bool holds_only(const std::vector<float>& buf, float x) {
  return std::all_of(buf.begin(), buf.end(), [x](float e) { return e == x; });
}

/// The message of the attnkit::error that f throws; fails the test if f throws nothing or
/// another exception.
inline std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const attnkit::error& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("not an attnkit::error: " << e.what());
  }
  FAIL("no attnkit::error was thrown");
  return {};
}

/// The checks every case runner applies: accuracy bounds, no NaN/inf, masked rows exactly
/// zero, nothing written outside the output views, inputs unchanged. `Run` is the case's
/// buffers (dense_run or a type with the same members) before and after the call.
template <class Run>
void check_accuracy(const accuracy& a, const dense_case& c, const Run& r, const Run& before) {
  CHECK(a.nonfinite_out == 0);
  CHECK(a.masked_nonzero == 0);
  CHECK(a.lse_mismatch == 0);
  CHECK(a.plain_mismatch == 0);  // the yardstick and the reference agree on the mask
  CHECK(a.plain_err <= 1e-3 * std::max(1.0, double(std::max(std::fabs(c.v_lo), std::fabs(c.v_hi)))));
  CHECK(a.err <= a.bound());
  if (c.unit_range()) CHECK(a.err <= 1e-4);
  if (c.lse) {
    CHECK(a.lse_err <= a.lse_bound());
    CHECK(r.lse.touched_outside() == 0);
  }
  CHECK(r.out.touched_outside() == 0);
  CHECK(r.q.same_bits(before.q));
  CHECK(r.k.same_bits(before.k));
  CHECK(r.v.same_bits(before.v));
}

/// Runs one case through attnkit, the double reference and the plain fp32 yardstick and
/// checks the accuracy criterion:
///   max|out - ref| <= 2 * max(max|plain fp32 - ref|, 1e-6), and <= 1e-4 when all inputs
///   are in [-1, 1]; the same for lse (floor 1e-6 * max(1, |lse|)); fully masked rows give
///   out exactly 0 and lse -inf; no NaN or inf anywhere; nothing outside the output views
///   is written; inputs are not modified.
inline accuracy check_dense_case(const dense_case& c, const std::string& isa) {
  INFO("case: " << c.str());
  dense_run r = make_inputs(c);
  const dense_run before = r;
  run_attnkit(c, r);
  const auto ref = run_reference(c, r);
  const auto plain = plain_fp32(r.q.cview(), r.k.cview(), r.v.cview(), c.mask, c.scale, c.softcap);
  const accuracy a = compare(r.out, c.lse ? &r.lse : nullptr, ref, plain);
  ratio_registry::get().record(isa, a, c.str());
  INFO("attnkit err " << a.err << ", plain fp32 err " << a.plain_err << " (ratio " << a.ratio() << "), lse err "
                      << a.lse_err << ", plain lse err " << a.plain_lse_err);
  check_accuracy(a, c, r, before);
  return a;
}

}  // namespace attnkit_test
