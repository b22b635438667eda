// Sparse attention benchmarks (attnkit_bench_sparse): sliding window, StreamingLLM sinks, a
// random block-sparse layout, MoBA block top-k and top-k attention, each against dense
// attention on the same inputs in the same run, with the speed acceptance of the sparse
// issue (bench/README.md, "The sparse suite").
//
// Shape: fp32, batch 1, 8 query heads, 8 KV heads, head_dim 128, Lq = Lk = 16384 (top-k
// and its dense baseline: 4096).
//
// FLOPs: only pairs that are attended count, 4 * head_dim per pair (bench_common.hpp), and
// the pair counts below are computed here row by row from each pattern's definition, never
// through attnkit's mask code (a startup self-check compares every formula with a brute
// force count over all pairs on small shapes). Top-k is the one kernel that must score
// more pairs than it attends: it is credited 2 * head_dim for every causal pair it scores
// plus 2 * head_dim for every pair it attends (min(i + 1, topk) per row). The block top-k
// gate (q . mean(K_block), per query and past block) is not credited.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include <attnkit/attnkit.hpp>

#include "bench_common.hpp"
#include "bench_report.hpp"

namespace attnkit_bench {
namespace {

// The acceptance problem (issue 3).
constexpr std::int64_t long_seq = 16384;   // every pattern but top-k
constexpr std::int64_t topk_seq = 4096;    // top-k and its dense baseline
constexpr std::int64_t window = 1024;      // sliding_window{1024}
constexpr std::int64_t sinks = 4;          // sink_tokens{4}
constexpr std::int64_t mask_block = 64;    // block_mask block size (queries and keys)
constexpr double mask_density = 0.10;      // share of set blocks
constexpr std::uint32_t mask_seed = 20240607u;
constexpr std::int64_t moba_block = 512;   // block_topk_attention block
constexpr std::int64_t moba_topk = 3;      // block_topk_attention topk_blocks
constexpr std::int64_t topk_keys = 64;     // topk_attention topk

shape sparse_shape(std::int64_t seq) {
  shape s;
  s.batch = 1;
  s.q_heads = 8;
  s.kv_heads = 8;
  s.q_len = s.kv_len = seq;
  s.dim = 128;
  return s;
}

// ---------------------------------------------------------------------------------------
// Allowed pairs of one (batch, head) with Lq = Lk = L (query row i at position i), from each
// pattern's definition, one row at a time.

/// causal: keys 0..i.
double pairs_causal(std::int64_t L) {
  double n = 0;
  for (std::int64_t i = 0; i < L; ++i) n += double(i + 1);
  return n;
}

/// sliding_window{w}: keys i - w + 1 .. i, clipped at 0.
double pairs_window(std::int64_t L, std::int64_t w) {
  double n = 0;
  for (std::int64_t i = 0; i < L; ++i) n += double(std::min(i + 1, w));
  return n;
}

/// (sliding_window{w} | sink_tokens{s}) & causal: the window plus the sinks before it (keys
/// 0 .. min(s, i - w + 1) - 1 are outside the window and allowed).
double pairs_streaming(std::int64_t L, std::int64_t w, std::int64_t s) {
  double n = 0;
  for (std::int64_t i = 0; i < L; ++i) n += double(std::min(i + 1, w) + std::max<std::int64_t>(0, std::min(s, i - w + 1)));
  return n;
}

/// A block layout shared by all heads: nb x nb blocks of `block` positions (the last ones
/// clipped at L); exactly `set` of them chosen uniformly at random from a fixed seed.
struct block_layout {
  std::int64_t L = 0, block = 1, nb = 0, set = 0;
  std::vector<std::uint8_t> bits;  // [qb * nb + kb]
};

block_layout random_layout(std::int64_t L, std::int64_t block, double density, std::uint32_t seed) {
  block_layout lay;
  lay.L = L;
  lay.block = block;
  lay.nb = (L + block - 1) / block;
  const std::int64_t total = lay.nb * lay.nb;
  lay.set = std::llround(density * double(total));
  lay.bits.assign(std::size_t(total), 0);
  // Partial Fisher-Yates on the block indices with mt19937's own (standard) output, so the
  // layout is the same with every standard library.
  std::vector<std::int64_t> idx(static_cast<std::size_t>(total));
  for (std::int64_t i = 0; i < total; ++i) idx[std::size_t(i)] = i;
  std::mt19937 rng(seed);
  for (std::int64_t i = 0; i < lay.set; ++i) {
    const std::int64_t j = i + std::int64_t(rng() % std::uint32_t(total - i));
    std::swap(idx[std::size_t(i)], idx[std::size_t(j)]);
    lay.bits[std::size_t(idx[std::size_t(i)])] = 1;
  }
  return lay;
}

/// Block layout: per row, the keys of every set block of the row's query block.
double pairs_block(const block_layout& lay) {
  double n = 0;
  for (std::int64_t i = 0; i < lay.L; ++i) {
    const std::int64_t qb = i / lay.block;
    for (std::int64_t kb = 0; kb < lay.nb; ++kb)
      if (lay.bits[std::size_t(qb * lay.nb + kb)]) n += double(std::min(lay.L, (kb + 1) * lay.block) - kb * lay.block);
  }
  return n;
}

/// block_topk_attention(block, topk): a query in block c attends causally to its own block
/// (keys c * block .. i) plus min(c, topk) whole past blocks.
double pairs_block_topk(std::int64_t L, std::int64_t block, std::int64_t topk) {
  double n = 0;
  for (std::int64_t i = 0; i < L; ++i) {
    const std::int64_t c = i / block;
    n += double(i - c * block + 1) + double(std::min(c, topk) * block);
  }
  return n;
}

/// topk_attention(topk) under causal: min(i + 1, topk) attended keys per row.
double pairs_topk(std::int64_t L, std::int64_t topk) {
  double n = 0;
  for (std::int64_t i = 0; i < L; ++i) n += double(std::min(i + 1, topk));
  return n;
}

/// The formulas above against a brute-force count over every (q, k) pair of small shapes
/// (L not a multiple of the block sizes, windows wider and narrower than L). Block top-k's
/// count does not depend on which blocks are chosen, so the brute force takes the latest.
void self_check_pair_counts() {
  int bad = 0;
  auto expect = [&bad](const char* what, std::int64_t L, double formula, double brute) {
    if (formula != brute) {
      std::fprintf(stderr, "attnkit_bench_sparse: pair count of %s at L %lld: formula %.0f, brute force %.0f\n", what,
                   static_cast<long long>(L), formula, brute);
      ++bad;
    }
  };
  for (std::int64_t L : {1, 5, 37, 300, 517}) {
    for (std::int64_t w : {1, 4, 37, 64, 1000}) {
      double causal = 0, win = 0, stream = 0;
      for (std::int64_t q = 0; q < L; ++q)
        for (std::int64_t k = 0; k < L; ++k) {
          causal += k <= q ? 1 : 0;
          win += (k <= q && q - k < w) ? 1 : 0;
          stream += (k <= q && (q - k < w || k < sinks)) ? 1 : 0;
        }
      expect("causal", L, pairs_causal(L), causal);
      expect("sliding_window", L, pairs_window(L, w), win);
      expect("streaming", L, pairs_streaming(L, w, sinks), stream);
    }
    for (std::int64_t block : {1, 16, 64}) {
      const block_layout lay = random_layout(L, block, 0.3, 7u);
      double bl = 0;
      for (std::int64_t q = 0; q < L; ++q)
        for (std::int64_t k = 0; k < L; ++k) bl += lay.bits[std::size_t((q / block) * lay.nb + k / block)];
      expect("block_mask", L, pairs_block(lay), bl);
      for (std::int64_t topk : {0, 1, 3}) {
        double bt = 0;
        for (std::int64_t q = 0; q < L; ++q)
          for (std::int64_t k = 0; k <= q; ++k) bt += (k / block == q / block || k / block >= q / block - topk) ? 1 : 0;
        expect("block_topk", L, pairs_block_topk(L, block, topk), bt);
      }
    }
    for (std::int64_t topk : {1, 5, 64}) {
      double tk = 0;
      for (std::int64_t q = 0; q < L; ++q) tk += double(std::min<std::int64_t>(q + 1, topk));
      expect("topk", L, pairs_topk(L, topk), tk);
    }
  }
  // The 10% layout has exactly round(0.1 * blocks) blocks set.
  const block_layout lay = random_layout(long_seq, mask_block, mask_density, mask_seed);
  std::int64_t set = 0;
  for (std::uint8_t b : lay.bits) set += b;
  if (set != lay.set) ++bad;
  if (bad) {
    std::fprintf(stderr, "attnkit_bench_sparse: %d pair-count self-checks failed; FLOP counts would be wrong\n", bad);
    std::exit(2);
  }
}

// ---------------------------------------------------------------------------------------
// The benchmarked calls.

enum class kind { dense_causal, dense_nomask, window, streaming, block, block_topk, topk };

struct sparse_case {
  std::string name;         // benchmark name
  std::string what;         // label and acceptance text
  kind k = kind::dense_causal;
  shape s;
  double attended = 0;      // pairs attended, per (batch, head)
  double scored = 0;        // pairs scored, per (batch, head): = attended except top-k
  std::shared_ptr<const block_layout> layout;  // block only

  double flops() const {
    return 2.0 * double(s.dim) * (attended + scored) * double(s.q_heads * s.batch);
  }
  double density() const { return attended / (double(s.q_len) * double(s.kv_len)); }
};

attnkit::block_mask mask_of(const block_layout& lay) {
  return attnkit::block_mask(lay.bits.data(), 1, lay.nb, lay.nb, lay.block, lay.block);
}

void run_case(const sparse_case& c, const inputs& in, std::vector<float>& out, int threads) {
  const shape& s = c.s;
  const auto q = attnkit::make_bhsd(in.q.data(), s.batch, s.q_heads, s.q_len, s.dim);
  const auto k = attnkit::make_bhsd(in.k.data(), s.batch, s.kv_heads, s.kv_len, s.dim);
  const auto v = attnkit::make_bhsd(in.v.data(), s.batch, s.kv_heads, s.kv_len, s.dim);
  const auto o = attnkit::make_bhsd(out.data(), s.batch, s.q_heads, s.q_len, s.dim);
  attnkit::attention_options opt;
  opt.num_threads = threads;
  switch (c.k) {
    case kind::dense_causal: attnkit::attention(q, k, v, o, attnkit::causal{}, opt); break;
    case kind::dense_nomask: attnkit::attention(q, k, v, o, attnkit::no_mask{}, opt); break;
    case kind::window: attnkit::attention(q, k, v, o, attnkit::sliding_window{window}, opt); break;
    case kind::streaming:
      attnkit::attention(q, k, v, o, (attnkit::sliding_window{window} | attnkit::sink_tokens{sinks}) & attnkit::causal{},
                         opt);
      break;
    case kind::block: attnkit::attention(q, k, v, o, mask_of(*c.layout), opt); break;
    case kind::block_topk: attnkit::block_topk_attention(q, k, v, o, moba_block, moba_topk, opt); break;
    case kind::topk: attnkit::topk_attention(q, k, v, o, topk_keys, attnkit::causal{}, opt); break;
  }
}

/// The double reference on the last 64 query rows of every head (tail_queries).
attnkit::reference::result reference_tail(const sparse_case& c, const inputs& in) {
  const shape& s = c.s;
  const auto q = tail_queries(s, in, std::min<std::int64_t>(s.q_len, 64));
  const auto k = attnkit::make_bhsd(in.k.data(), s.batch, s.kv_heads, s.kv_len, s.dim);
  const auto v = attnkit::make_bhsd(in.v.data(), s.batch, s.kv_heads, s.kv_len, s.dim);
  namespace ref = attnkit::reference;
  switch (c.k) {
    case kind::dense_causal: return ref::attention(q, k, v, attnkit::causal{});
    case kind::dense_nomask: return ref::attention(q, k, v, attnkit::no_mask{});
    case kind::window: return ref::attention(q, k, v, attnkit::sliding_window{window});
    case kind::streaming:
      return ref::attention(q, k, v, (attnkit::sliding_window{window} | attnkit::sink_tokens{sinks}) & attnkit::causal{});
    case kind::block: return ref::attention(q, k, v, mask_of(*c.layout));
    case kind::block_topk: return ref::block_topk_attention(q, k, v, moba_block, moba_topk);
    case kind::topk: return ref::topk_attention(q, k, v, topk_keys, attnkit::causal{});
  }
  return {};
}

void bm_case(benchmark::State& state, const sparse_case& c, int threads) {
  const inputs& in = inputs_for(c.s);
  std::vector<float> out(std::size_t(c.s.batch * c.s.q_heads * c.s.q_len * c.s.dim), 0.f);
  for (auto _ : state) {
    run_case(c, in, out, threads);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  // Once per benchmark, outside the timing: the last rows against the double reference.
  static std::map<std::string, double> err_cache;
  auto it = err_cache.find(c.name);
  if (it == err_cache.end()) it = err_cache.emplace(c.name, tail_error(c.s, out, reference_tail(c, in))).first;
  state.counters["err_tail"] = it->second;
  state.counters["seq"] = double(c.s.q_len);
  state.counters["allowed_pairs"] = c.attended * double(c.s.q_heads * c.s.batch);
  state.counters["density"] = c.density();
  state.counters["GFLOPS"] = benchmark::Counter(c.flops() / 1e9 * double(state.iterations()), benchmark::Counter::kIsRate);
  state.SetLabel(c.what);
}

// ---------------------------------------------------------------------------------------
// The cases, by name; the summary's columns and checks look them up here.

const std::map<std::string, sparse_case>& cases() {
  static const std::map<std::string, sparse_case> all = [] {
    std::map<std::string, sparse_case> m;
    const shape big = sparse_shape(long_seq), mid = sparse_shape(topk_seq);
    const double causal_big = pairs_causal(long_seq), causal_mid = pairs_causal(topk_seq);
    auto add = [&m](const std::string& name, const std::string& what, kind k, const shape& s, double attended,
                    double scored) {
      sparse_case c;
      c.name = name;
      c.what = what;
      c.k = k;
      c.s = s;
      c.attended = attended;
      c.scored = scored;
      m[name] = c;
    };
    add("BM_dense/causal", "causal, seq 16384", kind::dense_causal, big, causal_big, causal_big);
    add("BM_dense/nomask", "no mask, seq 16384", kind::dense_nomask, big, double(long_seq) * double(long_seq),
        double(long_seq) * double(long_seq));
    const double win = pairs_window(long_seq, window);
    add("BM_sparse/window1024", "sliding_window{1024}, seq 16384", kind::window, big, win, win);
    const double stream = pairs_streaming(long_seq, window, sinks);
    add("BM_sparse/streaming", "(sliding_window{1024} | sink_tokens{4}) & causal, seq 16384", kind::streaming, big,
        stream, stream);
    auto lay = std::make_shared<const block_layout>(random_layout(long_seq, mask_block, mask_density, mask_seed));
    const double blk = pairs_block(*lay);
    add("BM_sparse/block10",
        "block_mask " + std::to_string(lay->set) + " of " + std::to_string(lay->nb * lay->nb) + " blocks of 64x64, seq 16384",
        kind::block, big, blk, blk);
    m["BM_sparse/block10"].layout = lay;
    const double moba = pairs_block_topk(long_seq, moba_block, moba_topk);
    add("BM_sparse/block_topk", "block_topk_attention block 512, topk_blocks 3, seq 16384", kind::block_topk, big, moba,
        moba);
    add("BM_dense/causal_s4096", "causal, seq 4096", kind::dense_causal, mid, causal_mid, causal_mid);
    add("BM_sparse/topk64", "topk_attention topk 64, causal, seq 4096", kind::topk, mid, pairs_topk(topk_seq, topk_keys),
        causal_mid);
    return m;
  }();
  return all;
}

const sparse_case* case_of(const std::string& name) {
  const auto it = cases().find(name);
  return it == cases().end() ? nullptr : &it->second;
}

/// The dense causal benchmark at the same sequence length.
std::string causal_of(const sparse_case& c) {
  return c.s.q_len == topk_seq ? "BM_dense/causal_s4096" : "BM_dense/causal";
}

void describe_summary(suite& su, const config& cfg) {
  su.program = "attnkit_bench_sparse";
  su.title = "attnkit sparse benchmark";
  su.legend =
      "fp32, batch 1, 8 query heads, 8 KV heads, head_dim 128, Lq = Lk = seq. Time and GFLOP/s are medians over"
      " repetitions (real time), repetitions randomly interleaved across benchmarks. GFLOP/s counts attended"
      " query-key pairs only, 4 * head_dim each (top-k: 2 * head_dim per scored causal pair plus 2 * head_dim per"
      " attended pair). allowed %: attended pairs / (Lq * Lk). x causal: time and GFLOP/s relative to BM_dense/causal"
      " at the same seq. max err: max |output - double reference| over the last 64 query rows of every head.";
  su.columns.push_back({"seq", [](const std::string& name, const entry&, const results&) {
                          const sparse_case* c = case_of(name);
                          return c ? std::to_string(c->s.q_len) : std::string("-");
                        }});
  su.columns.push_back({"allowed %", [](const std::string& name, const entry&, const results&) {
                          const sparse_case* c = case_of(name);
                          return c ? fmt("%.2f", 100.0 * c->density()) : std::string("-");
                        }});
  su.columns.push_back({"x causal time", [](const std::string& name, const entry& e, const results& r) {
                          const sparse_case* c = case_of(name);
                          const double base = c ? r.ms(causal_of(*c)) : 0.0;
                          return base > 0 ? fmt("%.3f", e.ms_value() / base) : std::string("n/a");
                        }});
  su.columns.push_back({"x causal GFLOP/s", [](const std::string& name, const entry& e, const results& r) {
                          const sparse_case* c = case_of(name);
                          const double base = c ? r.gflops(causal_of(*c)) : 0.0;
                          return base > 0 ? fmt("%.2f", e.gflops_value() / base) : std::string("n/a");
                        }});

  const int threads = cfg.threads;
  su.checks.push_back([threads](acceptance& acc, const results& r) {
    acc.heading("Acceptance (sparse issue: fp32, " + std::to_string(threads) +
                " threads, 8 heads, head_dim 128, seq 16384; time ratios of medians, same run):");
    auto t = [&r](const char* name) { return r.ms(name); };
    auto ratio = [](double num, double den) { return num > 0 && den > 0 ? num / den : 0.0; };
    const sparse_case& causal = *case_of("BM_dense/causal");

    const sparse_case& win = *case_of("BM_sparse/window1024");
    const double win_share = win.attended / causal.attended;
    acc.at_most("sliding_window{1024} / causal", ratio(t("BM_sparse/window1024"), t("BM_dense/causal")),
                1.25 * win_share, "bound 1.25 x allowed-pair share " + fmt("%.4f", win_share));

    acc.at_most("StreamingLLM (window 1024 + 4 sinks) / sliding_window{1024}",
                ratio(t("BM_sparse/streaming"), t("BM_sparse/window1024")), 1.10, "at most 10% slower");

    const sparse_case& blk = *case_of("BM_sparse/block10");
    acc.at_most("block_mask 10% (block 64) / no mask", ratio(t("BM_sparse/block10"), t("BM_dense/nomask")),
                1.25 * blk.density(), "bound 1.25 x density " + fmt("%.4f", blk.density()));

    const sparse_case& moba = *case_of("BM_sparse/block_topk");
    const double moba_share = moba.attended / causal.attended;
    acc.at_most("block_topk (block 512, 3 blocks) / causal", ratio(t("BM_sparse/block_topk"), t("BM_dense/causal")),
                1.5 * moba_share, "bound 1.5 x allowed-pair share " + fmt("%.4f", moba_share));

    acc.at_most("topk 64 / causal, seq 4096", ratio(t("BM_sparse/topk64"), t("BM_dense/causal_s4096")), 0.7);
  });
}

}  // namespace

// ---------------------------------------------------------------------------------------
void define_suite(const config& cfg, suite& su) {
  self_check_pair_counts();
  describe_summary(su, cfg);
  // Repetitions are randomly interleaved across benchmarks, so a slow spell of the shared
  // machine spreads over all of them instead of biasing one ratio; five of them, because
  // the checks compare medians of two benchmarks against bounds only ~10% away.
  su.interleave = true;
  su.repetitions = 5;
  // An iteration of the 16k dense runs takes longer than the minimum time, so they run one
  // iteration per repetition; the sparse ones a few.
  const double min_time = cfg.quick ? 0.05 : 0.5;
  for (const char* name : {"BM_dense/causal", "BM_dense/nomask", "BM_sparse/window1024", "BM_sparse/streaming",
                           "BM_sparse/block10", "BM_sparse/block_topk", "BM_dense/causal_s4096", "BM_sparse/topk64"})
    su.add(name, bm_case, *case_of(name), cfg.threads)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(min_time);
}

}  // namespace attnkit_bench
