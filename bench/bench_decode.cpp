// Decode benchmarks (attnkit_bench_decode): one query token per sequence against a long KV
// cache, where the time is the time to read the cache. Speed acceptance of the decode issue
// (bench/README.md, "The decode suite").
//
// Shape: batch 1, 32 query heads, 8 KV heads, head_dim 128, KV length 65536: 512 MiB of fp32
// K and V. Every case reports the bytes of K/V it must read per second (GB/s, 1e9) and
// tokens/s (calls per second). The ceiling is a streaming sum over the same fp32 K and V
// buffers in the same run: vectorised, 8 independent accumulators per thread, the same
// threads, so it reaches the machine's read bandwidth (a scalar sum is latency-bound and
// would understate it).
//
// Cases: fp32, bf16 and fp16 K/V, and bf16 with attention_options::bf16_dot; paged fp32
// caches in vLLM's [pages, page_size, kv_heads, dim] layout (the acceptance) and the
// head-major [pages, kv_heads, page_size, dim] layout,
// with pages of 16 and 128 rows in shuffled order; 4 query tokens (speculative
// decoding); a sliding window of 4096 keys (reads only the window); and what a user would
// write with Eigen (per KV head: scores = K Q_group^T, softmax, V^T P). The cache buffers
// ask for 2 MiB pages (big_buffer).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <sys/mman.h>

#include <Eigen/Dense>
#include <benchmark/benchmark.h>
#include <omp.h>
#include <xsimd/xsimd.hpp>

#include <attnkit/attnkit.hpp>

#include "bench_ceilings.hpp"
#include "bench_common.hpp"
#include "bench_report.hpp"

namespace attnkit_bench {
namespace {

constexpr std::int64_t hq = 32, hkv = 8, dim = 128, kv_len = 65536;
constexpr std::int64_t window = 4096;

enum class kind { fp32, bf16, bf16_dot, fp16, paged16, paged128, paged16_hnd, paged128_hnd, spec4, window, eigen };

struct decode_case {
  std::string name, what;
  kind k = kind::fp32;
  std::int64_t q_len = 1;
  double bytes = 0;  // K/V bytes the call must read
};

/// A large buffer on 2 MiB pages where the kernel grants them (madvise), as a serving
/// engine allocates its KV cache: with 4 KiB pages the paged layout, whose rows of one head
/// are 4 KiB apart, would pay a TLB miss per row that no real deployment pays.
template <class T>
class big_buffer {
 public:
  void resize(std::size_t n) {
    constexpr std::size_t huge = std::size_t(2) << 20;
    const std::size_t bytes = (n * sizeof(T) + huge - 1) / huge * huge;
    p_.reset(static_cast<T*>(std::aligned_alloc(huge, bytes)));
    if (!p_) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    madvise(p_.get(), bytes, MADV_HUGEPAGE);  // a hint: ignored where unsupported
#endif
    n_ = n;
  }
  std::size_t size() const { return n_; }
  T* data() { return p_.get(); }
  const T* data() const { return p_.get(); }
  T& operator[](std::size_t i) { return p_.get()[i]; }
  const T& operator[](std::size_t i) const { return p_.get()[i]; }

 private:
  struct freer {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, freer> p_;
  std::size_t n_ = 0;
};

/// Keys and values of the cache in every storage the cases need, built once.
struct cache_data {
  std::vector<float> q;           // [1, hq, 16, dim]
  big_buffer<float> k, v;         // [1, hkv, kv_len, dim]
  big_buffer<attnkit::bf16> kb, vb;
  big_buffer<attnkit::fp16> kh, vh;
  big_buffer<float> kp, vp;       // pools [kv_len / 16 pages of 16][16][hkv][dim]
  std::vector<std::int32_t> table16, table128;
  std::int32_t len = std::int32_t(kv_len);
};

// xorshift: 512 MiB of uniform [-1, 1) in well under a second.
void fill_fast(float* x, std::size_t n, std::uint32_t seed) {
  std::uint32_t s = seed * 2654435761u + 1u;
  for (std::size_t i = 0; i < n; ++i) {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    x[i] = float(s >> 8) * (2.0f / 16777216.0f) - 1.0f;
  }
}

std::vector<std::int32_t> shuffled_pages(std::int64_t n, std::uint32_t seed) {
  std::vector<std::int32_t> t(std::size_t(n), 0);
  std::iota(t.begin(), t.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(t.begin(), t.end(), rng);
  return t;
}

const cache_data& data() {
  static const std::unique_ptr<cache_data> d = [] {
    auto c = std::make_unique<cache_data>();
    const std::size_t n = std::size_t(hkv * kv_len * dim);
    c->q.resize(std::size_t(hq * 16 * dim));
    fill_fast(c->q.data(), c->q.size(), 1);
    c->k.resize(n);
    c->v.resize(n);
    fill_fast(c->k.data(), n, 2);
    fill_fast(c->v.data(), n, 3);
    c->kb.resize(n);
    c->vb.resize(n);
    c->kh.resize(n);
    c->vh.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      c->kb[i] = attnkit::bf16(c->k[i]);
      c->vb[i] = attnkit::bf16(c->v[i]);
      c->kh[i] = attnkit::fp16(c->k[i]);
      c->vh[i] = attnkit::fp16(c->v[i]);
    }
    // One pool serves both page sizes: in [page][row][head][dim] a 128-row page is 8
    // consecutive 16-row pages. Each table shuffles its own pages; the pool's contents are
    // the cache's rows in table order for page 16 (the paged16 output is checked), and only
    // the bytes matter for page 128.
    c->kp.resize(n);
    c->vp.resize(n);
    c->table16 = shuffled_pages(kv_len / 16, 16);
    c->table128 = shuffled_pages(kv_len / 128, 128);
    for (std::int64_t t = 0; t < kv_len; ++t)
      for (std::int64_t h = 0; h < hkv; ++h) {
        const std::size_t src = std::size_t((h * kv_len + t) * dim);
        const std::size_t dst = std::size_t(((std::int64_t(c->table16[std::size_t(t / 16)]) * 16 + t % 16) * hkv + h) * dim);
        std::memcpy(&c->kp[dst], &c->k[src], sizeof(float) * dim);
        std::memcpy(&c->vp[dst], &c->v[src], sizeof(float) * dim);
      }
    return c;
  }();
  return *d;
}

void bm_stream(benchmark::State& state, int threads) {
  const cache_data& d = data();
  const std::int64_t n = std::int64_t(d.k.size());
  float sink = 0.f;
  for (auto _ : state) {
    sink += stream_sum(d.k.data(), n, threads);
    sink += stream_sum(d.v.data(), n, threads);
    benchmark::DoNotOptimize(sink);
  }
  const double bytes = 2.0 * double(n) * sizeof(float);
  state.counters["GBps"] = benchmark::Counter(bytes / 1e9 * double(state.iterations()), benchmark::Counter::kIsRate);
  state.SetLabel("vectorised sum over the fp32 K and V buffers (512 MiB)");
}

/// The streaming sum over the page pools in a page table's order (pages of `page_size`
/// tokens, each page's rows of every KV head contiguous, as paged16 and paged128 read them):
/// what the page order costs a plain reader (no software prefetch), next to what it costs
/// attention_paged.
void bm_stream_paged(benchmark::State& state, std::int64_t page_size, int threads) {
  const cache_data& d = data();
  const auto& table = page_size == 16 ? d.table16 : d.table128;
  const std::int64_t pages = std::int64_t(table.size()), page = page_size * hkv * dim;
  float sink = 0.f;
  for (auto _ : state) {
    sink += stream_sum_blocks(d.kp.data(), table.data(), pages, page, threads);
    sink += stream_sum_blocks(d.vp.data(), table.data(), pages, page, threads);
    benchmark::DoNotOptimize(sink);
  }
  const double bytes = 2.0 * double(pages * page) * sizeof(float);
  state.counters["GBps"] = benchmark::Counter(bytes / 1e9 * double(state.iterations()), benchmark::Counter::kIsRate);
  state.SetLabel("the same sum over the page pools in page-table order, pages of " + std::to_string(page_size) +
                 " tokens (" + std::to_string(page * sizeof(float) / 1024) + " KiB)");
}

using view = attnkit::tensor_view<const float>;

/// The Eigen baseline: per KV head, the group's 4 query rows as one GEMM against K, a
/// softmax per row, and V^T P; the score matrix is materialised (kv_len x 4).
void eigen_decode(const cache_data& d, std::vector<float>& out, int threads) {
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const std::int64_t g = hq / hkv;
  const float scale = 1.f / std::sqrt(float(dim));
#pragma omp parallel for num_threads(threads) schedule(static)
  for (std::int64_t h = 0; h < hkv; ++h) {
    Eigen::Map<const Mat> K(d.k.data() + h * kv_len * dim, kv_len, dim), V(d.v.data() + h * kv_len * dim, kv_len, dim);
    Mat Q(g, dim);
    for (std::int64_t i = 0; i < g; ++i)
      for (std::int64_t j = 0; j < dim; ++j) Q(i, j) = d.q[std::size_t((h * g + i) * 16 * dim + j)] * scale;
    Mat S = K * Q.transpose();  // kv_len x g
    for (std::int64_t i = 0; i < g; ++i) {
      const float mx = S.col(i).maxCoeff();
      S.col(i) = (S.col(i).array() - mx).exp();
      S.col(i) /= S.col(i).sum();
    }
    Mat O = S.transpose() * V;  // g x dim
    for (std::int64_t i = 0; i < g; ++i)
      for (std::int64_t j = 0; j < dim; ++j) out[std::size_t((h * g + i) * dim + j)] = O(i, j);
  }
}

void run_case(const decode_case& c, std::vector<float>& out, int threads) {
  const cache_data& d = data();
  attnkit::attention_options opt;
  opt.num_threads = threads;
  // Query rows: the first q_len of 16 stored per head.
  const view q(d.q.data(), {{1, hq, c.q_len, dim}}, {{hq * 16 * dim, 16 * dim, dim, 1}});
  const auto o = attnkit::make_bhsd(out.data(), 1, hq, c.q_len, dim);
  auto contiguous = [&](const auto& kbuf, const auto& vbuf) {
    return std::make_pair(attnkit::make_bhsd(kbuf.data(), 1, hkv, kv_len, dim),
                          attnkit::make_bhsd(vbuf.data(), 1, hkv, kv_len, dim));
  };
  switch (c.k) {
    case kind::fp32:
    case kind::spec4: {
      const auto kv = contiguous(d.k, d.v);
      attnkit::attention(q, kv.first, kv.second, o, attnkit::causal{}, opt);
      break;
    }
    case kind::window: {
      const auto kv = contiguous(d.k, d.v);
      attnkit::attention(q, kv.first, kv.second, o, attnkit::sliding_window{window}, opt);
      break;
    }
    case kind::bf16:
    case kind::bf16_dot: {
      opt.bf16_dot = c.k == kind::bf16_dot;
      const auto kv = contiguous(d.kb, d.vb);
      attnkit::attention(q, kv.first, kv.second, o, attnkit::causal{}, opt);
      break;
    }
    case kind::fp16: {
      const auto kv = contiguous(d.kh, d.vh);
      attnkit::attention(q, kv.first, kv.second, o, attnkit::causal{}, opt);
      break;
    }
    case kind::paged16:
    case kind::paged128:
    case kind::paged16_hnd:
    case kind::paged128_hnd: {
      const bool p16 = c.k == kind::paged16 || c.k == kind::paged16_hnd;
      const bool hnd = c.k == kind::paged16_hnd || c.k == kind::paged128_hnd;
      const std::int64_t ps = p16 ? 16 : 128;
      const auto& table = p16 ? d.table16 : d.table128;
      // vLLM's [pages, page_size, kv_heads, dim] (a head's rows 4 KiB apart), or the
      // head-major [pages, kv_heads, page_size, dim] (a head's rows of a page contiguous).
      const auto kp = hnd ? attnkit::make_bhsd(d.kp.data(), kv_len / ps, hkv, ps, dim)
                          : attnkit::make_bshd(d.kp.data(), kv_len / ps, ps, hkv, dim);
      const auto vp = hnd ? attnkit::make_bhsd(d.vp.data(), kv_len / ps, hkv, ps, dim)
                          : attnkit::make_bshd(d.vp.data(), kv_len / ps, ps, hkv, dim);
      attnkit::attention_paged(q, kp, vp, attnkit::page_table_view{table.data(), 1, kv_len / ps, 0},
                               attnkit::int32_span{&d.len, 1}, o, attnkit::causal{}, opt);
      break;
    }
    case kind::eigen: eigen_decode(d, out, threads); break;
  }
}

/// Max |out - reference| over all query heads (decode output is small: the reference over
/// 65536 keys costs about a second per case, once).
double error_of(const decode_case& c, const std::vector<float>& out) {
  // Only the page-16 vLLM-layout pool holds the cache's keys in table order.
  if (c.k == kind::paged128 || c.k == kind::paged16_hnd || c.k == kind::paged128_hnd) return -1;
  const cache_data& d = data();
  const view q(d.q.data(), {{1, hq, c.q_len, dim}}, {{hq * 16 * dim, 16 * dim, dim, 1}});
  namespace ref = attnkit::reference;
  const auto k = attnkit::make_bhsd(d.k.data(), 1, hkv, kv_len, dim);
  const auto v = attnkit::make_bhsd(d.v.data(), 1, hkv, kv_len, dim);
  ref::result r;
  switch (c.k) {
    case kind::bf16:
    case kind::bf16_dot:
      r = ref::attention(q, attnkit::make_bhsd(d.kb.data(), 1, hkv, kv_len, dim),
                         attnkit::make_bhsd(d.vb.data(), 1, hkv, kv_len, dim), attnkit::causal{});
      break;
    case kind::fp16:
      r = ref::attention(q, attnkit::make_bhsd(d.kh.data(), 1, hkv, kv_len, dim),
                         attnkit::make_bhsd(d.vh.data(), 1, hkv, kv_len, dim), attnkit::causal{});
      break;
    case kind::window: r = ref::attention(q, k, v, attnkit::sliding_window{window}); break;
    default: r = ref::attention(q, k, v, attnkit::causal{}); break;
  }
  double e = 0;
  for (std::int64_t h = 0; h < hq; ++h)
    for (std::int64_t i = 0; i < c.q_len; ++i)
      for (std::int64_t j = 0; j < dim; ++j) {
        const double di = std::abs(double(out[std::size_t((h * c.q_len + i) * dim + j)]) - r.o(0, h, i, j));
        if (!(di <= e)) e = di;
      }
  return e;
}

void bm_case(benchmark::State& state, const decode_case& c, int threads) {
  std::vector<float> out(std::size_t(hq * c.q_len * dim), 0.f);
  data();  // built once, outside the timed loop of whichever case runs first
  for (auto _ : state) {
    run_case(c, out, threads);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  static std::map<std::string, double> err_cache;
  auto it = err_cache.find(c.name);
  if (it == err_cache.end()) it = err_cache.emplace(c.name, error_of(c, out)).first;
  if (it->second >= 0) state.counters["err_tail"] = it->second;
  state.counters["GBps"] = benchmark::Counter(c.bytes / 1e9 * double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["tokens_per_s"] = benchmark::Counter(double(state.iterations()), benchmark::Counter::kIsRate);
  const double keys = c.k == kind::window ? double(window) : double(kv_len);
  state.counters["GFLOPS"] = benchmark::Counter(4.0 * hq * double(c.q_len) * keys * dim / 1e9 * double(state.iterations()),
                                                benchmark::Counter::kIsRate);
  state.SetLabel(c.what);
}

const std::map<std::string, decode_case>& cases() {
  static const std::map<std::string, decode_case> all = [] {
    std::map<std::string, decode_case> m;
    const double f32 = 2.0 * hkv * kv_len * dim * 4.0;
    auto add = [&m](const std::string& name, const std::string& what, kind k, std::int64_t q_len, double bytes) {
      decode_case c;
      c.name = name;
      c.what = what;
      c.k = k;
      c.q_len = q_len;
      c.bytes = bytes;
      m[name] = c;
    };
    add("BM_decode/fp32", "attention, Lq 1, fp32 K/V", kind::fp32, 1, f32);
    add("BM_decode/bf16", "attention, Lq 1, bf16 K/V", kind::bf16, 1, f32 / 2);
    add("BM_decode/bf16_dot", "attention, Lq 1, bf16 K/V, bf16_dot (Q and P rounded to bf16, vdpbf16ps)",
        kind::bf16_dot, 1, f32 / 2);
    add("BM_decode/fp16", "attention, Lq 1, fp16 K/V", kind::fp16, 1, f32 / 2);
    add("BM_decode/paged16", "attention_paged, Lq 1, fp32, pages of 16 (shuffled)", kind::paged16, 1, f32);
    add("BM_decode/paged128", "attention_paged, Lq 1, fp32, pages of 128 (shuffled)", kind::paged128, 1, f32);
    add("BM_decode/paged16_hnd", "attention_paged, Lq 1, fp32, pages of 16 (shuffled), [pages, kv_heads, 16, dim]",
        kind::paged16_hnd, 1, f32);
    add("BM_decode/paged128_hnd", "attention_paged, Lq 1, fp32, pages of 128 (shuffled), [pages, kv_heads, 128, dim]",
        kind::paged128_hnd, 1, f32);
    add("BM_decode/spec4", "attention, Lq 4 (speculative), fp32", kind::spec4, 4, f32);
    add("BM_decode/window4096", "attention, Lq 1, sliding_window{4096}, fp32", kind::window, 1,
        f32 * double(window) / double(kv_len));
    add("BM_eigen/decode", "Eigen: K Q^T, softmax, V^T P per KV head, fp32", kind::eigen, 1, f32);
    return m;
  }();
  return all;
}

const decode_case* case_of(const std::string& name) {
  const auto it = cases().find(name);
  return it == cases().end() ? nullptr : &it->second;
}

void describe_summary(suite& su, const config& cfg) {
  su.program = "attnkit_bench_decode";
  su.title = "attnkit decode benchmark";
  su.legend =
      "batch 1, 32 query heads, 8 KV heads, head_dim 128, KV length 65536 (512 MiB of fp32 K/V). Time is the"
      " median over repetitions (real time), repetitions randomly interleaved. GB/s: bytes of K/V the call must"
      " read (fp32 4 bytes, bf16/fp16 2; the window case only the window) per second. BM_stream/sum: vectorised sum"
      " over the same fp32 K and V buffers, same threads: the machine's read bandwidth; BM_stream/paged16 and /paged128:"
      " the same sum over the page pools in page-table order (pages of 64 and 512 KiB). max err: max |output - double"
      " reference| over every query row (bf16/fp16 against the reference on the same rounded values).";
  su.columns.push_back(gbps_column());
  su.columns.push_back({"x stream GB/s", [](const std::string&, const entry& e, const results& r) {
                          const entry* s = r.ok("BM_stream/sum");
                          const double g = e.counter("GBps"), base = s ? s->counter("GBps") : 0.0;
                          return g > 0 && base > 0 ? fmt("%.2f", g / base) : std::string("n/a");
                        }});
  su.columns.push_back({"tokens/s", [](const std::string& name, const entry& e, const results&) {
                          return case_of(name) && e.ms_value() > 0 ? fmt("%.1f", 1000.0 / e.ms_value()) : std::string("-");
                        }});
  su.columns.push_back({"x fp32 tokens/s", [](const std::string& name, const entry& e, const results& r) {
                          const double base = r.ms("BM_decode/fp32");
                          return case_of(name) && base > 0 && e.ms_value() > 0 ? fmt("%.2f", base / e.ms_value())
                                                                              : std::string("n/a");
                        }});
  const int threads = cfg.threads;
  su.checks.push_back([threads](acceptance& acc, const results& r) {
    acc.heading("Acceptance (decode issue: batch 1, 32/8 heads, head_dim 128, KV 65536, " + std::to_string(threads) +
                " threads; medians, same run):");
    const entry* s = r.ok("BM_stream/sum");
    const entry* f = r.ok("BM_decode/fp32");
    const double stream = s ? s->counter("GBps") : 0.0, fp32 = f ? f->counter("GBps") : 0.0;
    acc.line("streaming-sum read bandwidth: " + fmt("%.1f", stream) + " GB/s (must itself exceed 20 GB/s)");
    acc.at_least("fp32 decode K/V GB/s / streaming sum GB/s", stream > 0 ? fp32 / stream : 0.0, 0.8);
    auto speed = [&r](const char* name) { return r.ms(name) > 0 ? 1.0 / r.ms(name) : 0.0; };
    const double base = speed("BM_decode/fp32");
    acc.at_least("bf16 tokens/s / fp32 tokens/s", base > 0 ? speed("BM_decode/bf16") / base : 0.0, 1.7);
    acc.line("bf16 with bf16_dot tokens/s / fp32 tokens/s: " +
             (base > 0 && speed("BM_decode/bf16_dot") > 0 ? fmt("%.3f", speed("BM_decode/bf16_dot") / base)
                                                          : std::string("n/a")) +
             " (informational: Q and P rounded to bf16)");
    acc.at_least("paged (page 16) tokens/s / contiguous", base > 0 ? speed("BM_decode/paged16") / base : 0.0, 0.9,
                 "within 10%");
    acc.at_least("paged (page 128) tokens/s / contiguous", base > 0 ? speed("BM_decode/paged128") / base : 0.0, 0.9,
                 "within 10%");
    // What the page order costs a plain reader: the streaming sum over the pools in
    // page-table order against the sum in order (informational).
    for (const char* ps : {"16", "128"}) {
      const entry* sp = r.ok(std::string("BM_stream/paged") + ps);
      const double g = sp ? sp->counter("GBps") : 0.0;
      acc.line(std::string("streaming sum in page-") + ps + " order / in order: " +
               (g > 0 && stream > 0 ? fmt("%.3f", g / stream) : std::string("n/a")) +
               " (informational: what the page order costs a plain reader)");
    }
  });
}

}  // namespace

void define_suite(const config& cfg, suite& su) {
  describe_summary(su, cfg);
  su.interleave = true;
  su.repetitions = 7;
  const double min_time = cfg.quick ? 0.05 : 0.3;
  su.add("BM_stream/sum", bm_stream, cfg.threads)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(min_time);
  for (const std::int64_t ps : {16, 128})
    su.add("BM_stream/paged" + std::to_string(ps), bm_stream_paged, ps, cfg.threads)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond)
        ->MinTime(min_time);
  for (const char* name : {"BM_decode/fp32", "BM_decode/bf16", "BM_decode/bf16_dot", "BM_decode/fp16", "BM_decode/paged16",
                           "BM_decode/paged128", "BM_decode/paged16_hnd", "BM_decode/paged128_hnd", "BM_decode/spec4", "BM_decode/window4096", "BM_eigen/decode"})
    su.add(name, bm_case, *case_of(name), cfg.threads)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(min_time);
}

}  // namespace attnkit_bench
