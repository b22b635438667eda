// Sparse attention against the double reference: mask policies and compositions in
// attnkit::attention, learned sink logits, score modifiers (ALiBi, relative-position bias),
// softcap with masks, topk_attention and block_topk_attention, their properties, and
// determinism across thread counts.
//
// The reference and the plain fp32 yardstick never see attnkit's policy code: every case
// writes the pattern as its own `bool(b, h, q, k)` lambda (absolute positions, query row i
// at i + Lk - Lq) and passes attnkit::mask_fn(lambda) to attnkit::reference::attention;
// only attnkit::attention gets the real policy. Accuracy criterion as in test_dense.cpp:
// max|out - ref| <= 2 x max(max|plain fp32 - ref|, 1e-6) (support/sparse_test.hpp).
//
// Selections (top-k scores, block gates) are only comparable when the kernel, the
// reference and the yardstick agree on every score bit for bit; those cases quantise q and
// k to a 1/8 grid with a power-of-two scale, so every score is exact in float and double
// and exact ties (which go to the lower key / block) are common.
#include "support/sparse_test.hpp"

#include <set>

using namespace attnkit_test;
using attnkit::index_t;

namespace {

// Packed documents whose lengths depend on the batch: keys allowed within the query's
// document, causally. The tile answer is exact (documents are intervals).
index_t doc_len(index_t b) { return 17 + 13 * b; }
bool doc_allowed(index_t b, index_t, index_t q, index_t k) {
  return q >= 0 && k <= q && q / doc_len(b) == k / doc_len(b);
}
attnkit::tile_kind doc_tile(index_t b, index_t, index_t q0, index_t q1, index_t k0, index_t k1) {
  // Exact: count the allowed pairs in closed form per query.
  const index_t L = doc_len(b);
  long n = 0;
  for (index_t q = std::max<index_t>(q0, 0); q < q1; ++q) {
    const index_t lo = std::max(k0, q / L * L), hi = std::min(k1 - 1, q);
    n += hi >= lo ? long(hi - lo + 1) : 0;
  }
  return n == 0 ? attnkit::tile_kind::empty
                : n == long((q1 - q0) * (k1 - k0)) ? attnkit::tile_kind::full : attnkit::tile_kind::partial;
}
// A per-head dilated pattern without a tile answer: head h sees every (h + 2)-th key
// back from the query, causally.
bool dilated_allowed(index_t, index_t h, index_t q, index_t k) { return k <= q && (q - k) % (h % 3 + 2) == 0; }

// ------------------------------------------------------------------------------------------
// Cases

tensor_spec spec_for(int i) {
  static const tensor_spec specs[] = {{layout::bhsd, padding::none, false},
                                      {layout::bshd, padding::plus3, false},
                                      {layout::bhsd, padding::odd_lines, true},
                                      {layout::bshd, padding::none, true}};
  return specs[i % 4];
}

sparse_case make_case(index_t batch, index_t q_heads, index_t kv_heads, index_t lq, index_t lk, index_t dim,
                      std::uint32_t seed, int layout_index = 0) {
  sparse_case c;
  c.batch = batch, c.q_heads = q_heads, c.kv_heads = kv_heads, c.q_len = lq, c.kv_len = lk, c.dim = dim;
  c.seed = seed;
  c.all_specs(spec_for(layout_index));
  return c;
}

const std::pair<index_t, index_t> kShapes[] = {{130, 130}, {37, 250}, {200, 77}, {1, 300}};

/// attnkit::attention with `mask` against the reference with mask_fn(def) (and the score
/// modifier `score`, test-side, when given).
template <class M>
sparse_accuracy check_masked(const sparse_case& c, const std::string& isa, const M& mask, const allowed_fn& def,
                             const score_fn_t& score = {}) {
  yard_spec y;
  y.allowed = def;
  y.score = score;
  return check_sparse_case(
      c, isa, y,
      [&](sparse_run& r) {
        attnkit::attention(r.q.cview(), r.k.cview(), r.v.cview(), r.out.view, mask, r.opts, r.lse_view(c));
      },
      [&](const sparse_run& r) {
        if (score)
          return attnkit::reference::attention(r.q.cview(), r.k.cview(), r.v.cview(),
                                               attnkit::with_score(attnkit::mask_fn(def), attnkit::score_fn(score)),
                                               r.opts);
        return attnkit::reference::attention(r.q.cview(), r.k.cview(), r.v.cview(), attnkit::mask_fn(def), r.opts);
      });
}

template <class M>
sparse_accuracy check_topk(const sparse_case& c, const std::string& isa, index_t topk, const M& mask,
                           const allowed_fn& def, const score_fn_t& score = {}) {
  INFO("topk " << topk);
  yard_spec y;
  y.allowed = def;
  y.score = score;
  y.topk = topk;
  return check_sparse_case(
      c, isa, y,
      [&](sparse_run& r) {
        attnkit::topk_attention(r.q.cview(), r.k.cview(), r.v.cview(), r.out.view, topk, mask, r.opts, r.lse_view(c));
      },
      [&](const sparse_run& r) {
        if (score)
          return attnkit::reference::topk_attention(
              r.q.cview(), r.k.cview(), r.v.cview(), topk,
              attnkit::with_score(attnkit::mask_fn(def), attnkit::score_fn(score)), r.opts);
        return attnkit::reference::topk_attention(r.q.cview(), r.k.cview(), r.v.cview(), topk, attnkit::mask_fn(def),
                                                  r.opts);
      });
}

/// Runs attnkit::attention with `mask` and returns the run (inputs, out, lse).
template <class M>
sparse_run run_masked(const sparse_case& c, const M& mask) {
  sparse_run r = make_sparse_inputs(c);
  attnkit::attention(r.q.cview(), r.k.cview(), r.v.cview(), r.out.view, mask, r.opts, r.lse_view(c));
  return r;
}

}  // namespace

// ------------------------------------------------------------------------------------------
// Policies one by one

TEST_CASE("sparse: sliding_window{w}, w = 1, 2, 37, 128 and wider than Lk", "[sparse][masks]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (auto s : kShapes)
    for (index_t w : {index_t(1), index_t(2), index_t(37), index_t(128), s.second + 9}) {
      sparse_case c = make_case(2, 6, 2, s.first, s.second, 20, std::uint32_t(1000 + i), i);
      c.what = "sliding_window{" + std::to_string(w) + "}";
      const sparse_accuracy a = check_masked(c, isa, attnkit::sliding_window{w}, d_sliding(w));
      // Bottom-right alignment: with Lq > Lk the first Lq - Lk rows see no key.
      CHECK(a.empty_rows == std::max<index_t>(0, s.first - s.second) * c.batch * c.q_heads);
      ++i;
    }
}

TEST_CASE("sparse: local_window{left, right}, including {0, 0}", "[sparse][masks]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  const std::pair<index_t, index_t> lr[] = {{0, 0}, {3, 5}, {0, 40}, {40, 0}, {130, 7}, {1, 300}};
  int i = 0;
  for (auto s : kShapes)
    for (auto p : lr) {
      sparse_case c = make_case(1 + i % 2, 4, 2, s.first, s.second, 20, std::uint32_t(2000 + i), i);
      c.what = "local_window{" + std::to_string(p.first) + ", " + std::to_string(p.second) + "}";
      check_masked(c, isa, attnkit::local_window{p.first, p.second}, d_local(p.first, p.second));
      ++i;
    }
}

TEST_CASE("sparse: sink_tokens{n}, n = 0, 1, 4 and more than Lk, alone and with windows", "[sparse][masks]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (auto s : kShapes)
    for (index_t n : {index_t(0), index_t(1), index_t(4), s.second + 3}) {
      sparse_case c = make_case(2, 4, 4, s.first, s.second, 20, std::uint32_t(3000 + i), i);
      c.what = "sink_tokens{" + std::to_string(n) + "}";
      const sparse_accuracy a = check_masked(c, isa, attnkit::sink_tokens{n}, d_sink(n));
      if (n == 0) CHECK(a.empty_rows == c.batch * c.q_heads * c.q_len);  // nothing allowed at all
      c.what = "(sliding_window{16} | sink_tokens{" + std::to_string(n) + "}) & causal{}";
      check_masked(c, isa, (attnkit::sliding_window{16} | attnkit::sink_tokens{n}) & attnkit::causal{},
                   d_streaming(16, n));
      ++i;
    }
}

TEST_CASE("sparse: StreamingLLM (sliding_window{w} | sink_tokens{4}) & causal{}", "[sparse][masks][compose]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (auto s : kShapes)
    for (index_t w : {1, 8, 64, 129}) {
      sparse_case c = make_case(2, 8, 2, s.first, s.second, 33, std::uint32_t(4000 + i), i);
      c.what = "StreamingLLM w=" + std::to_string(w);
      check_masked(c, isa, (attnkit::sliding_window{w} | attnkit::sink_tokens{4}) & attnkit::causal{},
                   d_streaming(w));
      ++i;
    }
}

TEST_CASE("sparse: block_mask, block sizes 1, 7, 16, 64, 100 for q and k, shared and per head",
          "[sparse][masks][block]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  const index_t sizes[] = {1, 7, 16, 64, 100};
  const std::pair<index_t, index_t> shapes[] = {{230, 230}, {50, 230}, {260, 230}};
  const double densities[] = {0.15, 0.5, 0.85};
  int i = 0;
  for (index_t bq : sizes)
    for (index_t bk : sizes)
      for (index_t heads : {1, 4}) {
        const auto s = shapes[i % 3];
        sparse_case c = make_case(1, 4, 2, s.first, s.second, 20, std::uint32_t(5000 + i), i);
        bitmap bm(heads, s.second, bq, bk);
        // query block 1 allows nothing (its queries are fully masked), block 0 everything
        bm.random(std::uint32_t(7000 + i), densities[(i / 3) % 3], /*zero_row=*/1, /*one_row=*/0);
        c.what = bm.str();
        const sparse_accuracy a = check_masked(c, isa, bm.mask(), d_bitmap(bm));
        // every query of block 1 is fully masked (and those before the first key)
        index_t in_block1 = 0;
        for (index_t p = s.second - s.first; p < s.second; ++p) in_block1 += p < 0 || p / bq == 1;
        CHECK(a.empty_rows >= in_block1 * c.batch * c.q_heads);
        ++i;
      }
}

TEST_CASE("sparse: block_mask all ones, all zeros, and with zero rows and columns", "[sparse][masks][block]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  const std::pair<index_t, index_t> blocks[] = {{1, 1}, {7, 16}, {64, 64}, {100, 7}, {16, 100}};
  int i = 0;
  for (auto bb : blocks)
    for (index_t heads : {1, 6}) {
      sparse_case c = make_case(2, 6, 3, 140, 140, 17, std::uint32_t(6000 + i), i);
      bitmap bm(heads, c.kv_len, bb.first, bb.second);
      bm.fill(1);
      c.what = bm.str() + " all ones";
      check_masked(c, isa, bm.mask(), d_all());
      bm.fill(0);
      c.what = bm.str() + " all zeros";
      const sparse_accuracy a = check_masked(c, isa, bm.mask(), d_bitmap(bm));
      CHECK(a.empty_rows == c.batch * c.q_heads * c.q_len);
      // every other key block column empty, every third query block empty
      bm.random(std::uint32_t(8000 + i), 0.6);
      for (index_t h = 0; h < heads; ++h)
        for (index_t q = 0; q < bm.qb; ++q)
          for (index_t k = 0; k < bm.kb; ++k)
            if (k % 2 == 1 || q % 3 == 2) bm.at(h, q, k) = 0;
      c.what = bm.str() + " zero rows and columns";
      check_masked(c, isa, bm.mask(), d_bitmap(bm));
      ++i;
    }
}

TEST_CASE("sparse: mask_fn without a tile answer, and with an exact one", "[sparse][masks][fn]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (auto s : kShapes) {
    sparse_case c = make_case(2, 6, 2, s.first, s.second, 24, std::uint32_t(9000 + i), i);
    c.what = "mask_fn(dilated, per head)";
    check_masked(c, isa, attnkit::mask_fn(dilated_allowed), allowed_fn(dilated_allowed));
    c.what = "mask_fn(documents)";
    check_masked(c, isa, attnkit::mask_fn(doc_allowed), allowed_fn(doc_allowed));
    c.what = "mask_fn(documents, exact tile answer)";
    check_masked(c, isa, attnkit::mask_fn(doc_allowed, doc_tile), allowed_fn(doc_allowed));
    c.what = "mask_fn(documents, tile answer 'partial')";
    check_masked(c, isa,
                 attnkit::mask_fn(doc_allowed, [](index_t, index_t, index_t, index_t, index_t, index_t) {
                   return attnkit::tile_kind::partial;
                 }),
                 allowed_fn(doc_allowed));
    // A capturing lambda with state (key padding per batch).
    const std::vector<index_t> valid = {s.second, s.second * 2 / 3};
    c.what = "mask_fn(key padding per batch) & causal{}";
    check_masked(c, isa,
                 attnkit::mask_fn([valid](index_t b, index_t, index_t, index_t k) { return k < valid[std::size_t(b)]; }) &
                     attnkit::causal{},
                 allowed_fn([valid](index_t b, index_t, index_t q, index_t k) { return k <= q && k < valid[std::size_t(b)]; }));
    ++i;
  }
}

TEST_CASE("sparse: compositions with & and |, nested", "[sparse][masks][compose]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  using attnkit::causal;
  using attnkit::local_window;
  using attnkit::sink_tokens;
  using attnkit::sliding_window;
  int i = 0;
  for (auto s : kShapes) {
    sparse_case c = make_case(2, 4, 2, s.first, s.second, 20, std::uint32_t(10000 + i), i);
    bitmap ph(4, s.second, 16, 7), sh(1, s.second, 7, 64);
    ph.random(std::uint32_t(11000 + i), 0.4, 2, 0);
    sh.random(std::uint32_t(12000 + i), 0.5, 1);
    c.what = "local_window{8, 8} & causal{}";
    check_masked(c, isa, local_window{8, 8} & causal{}, d_and(d_local(8, 8), d_causal()));
    c.what = "(per-head block | sink_tokens{3}) & causal{}";
    check_masked(c, isa, (ph.mask() | sink_tokens{3}) & causal{}, d_and(d_or(d_bitmap(ph), d_sink(3)), d_causal()));
    c.what = "shared block & sliding_window{40}";
    check_masked(c, isa, sh.mask() & sliding_window{40}, d_and(d_bitmap(sh), d_sliding(40)));
    c.what = "((sw{20} | sink{2}) & (shared block | local{0, 3})) | per-head block";
    check_masked(c, isa, ((sliding_window{20} | sink_tokens{2}) & (sh.mask() | local_window{0, 3})) | ph.mask(),
                 d_or(d_and(d_or(d_sliding(20), d_sink(2)), d_or(d_bitmap(sh), d_local(0, 3))), d_bitmap(ph)));
    c.what = "mask_fn(documents, tile) | sliding_window{5}";
    check_masked(c, isa, attnkit::mask_fn(doc_allowed, doc_tile) | sliding_window{5},
                 d_or(allowed_fn(doc_allowed), d_sliding(5)));
    c.what = "mask_fn(dilated) & local_window{30, 0}";
    check_masked(c, isa, attnkit::mask_fn(dilated_allowed) & local_window{30, 0},
                 d_and(allowed_fn(dilated_allowed), d_local(30, 0)));
    c.what = "separated bands (more than 4 key ranges): local{0,0} | (sw{40} & local{35,0}) | sink{1} | per-head block";
    check_masked(c, isa, local_window{0, 0} | (sliding_window{41} & local_window{35, 0}) | sink_tokens{1} | ph.mask(),
                 d_or(d_or(d_or(d_local(0, 0), d_and(d_sliding(41), d_local(35, 0))), d_sink(1)), d_bitmap(ph)));
    ++i;
  }
}

TEST_CASE("sparse: GQA ratios 1..8, batch 2, odd head_dim, both layouts", "[sparse][masks][gqa]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  const index_t lanes = dense_block_lanes(attnkit_isa_scope_.which());
  int i = 0;
  for (index_t g : {1, 2, 3, 4, 5, 6, 7, 8}) {
    const index_t rows = std::max<index_t>(1, lanes / g);
    for (index_t lq : {rows + 1, index_t(150)}) {
      sparse_case c = make_case(2, 2 * g, 2, lq, 150, g % 2 ? 13 : 40, std::uint32_t(13000 + i), i);
      c.v_dim = g % 3 == 0 ? 7 : 0;
      c.what = "StreamingLLM w=24, GQA " + std::to_string(g);
      check_masked(c, isa, (attnkit::sliding_window{24} | attnkit::sink_tokens{4}) & attnkit::causal{},
                   d_streaming(24));
      bitmap bm(c.q_heads, c.kv_len, 16, 16);
      bm.random(std::uint32_t(14000 + i), 0.3, 3);
      c.what = "per-head block_mask 16x16, GQA " + std::to_string(g);
      check_masked(c, isa, bm.mask() & attnkit::causal{}, d_and(d_bitmap(bm), d_causal()));
      ++i;
    }
  }
}

TEST_CASE("sparse: head_dim 1..33 with masks", "[sparse][masks]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (index_t d : {1, 3, 5, 15, 17, 31, 33}) {
    sparse_case c = make_case(1, 2, 1, 70, 140, d, std::uint32_t(15000 + i), i);
    c.what = "sliding_window{33}";
    check_masked(c, isa, attnkit::sliding_window{33}, d_sliding(33));
    c.what = "local_window{5, 9}";
    check_masked(c, isa, attnkit::local_window{5, 9}, d_local(5, 9));
    ++i;
  }
}

TEST_CASE("sparse: windows as wide as INT64_MAX (unbounded) equal causal or no mask", "[sparse][masks]") {
  // Regression (fixed in 7507d4e): window arithmetic overflowed for sides close to
  // INT64_MAX; local_window{0, INT64_MAX} gave every row 0 even with Lq == Lk, and
  // sliding_window{INT64_MAX} dropped the keys of rows in a work unit that starts before
  // position 0 (Lq > Lk).
  ATTNKIT_TEST_FOR_EACH_ISA();
  const index_t M = std::numeric_limits<index_t>::max();
  int i = 0;
  for (auto s : {std::pair<index_t, index_t>{40, 40}, {12, 9}, {130, 77}}) {
    sparse_case c = make_case(1, 2, 1, s.first, s.second, 8, std::uint32_t(19500 + i), i);
    c.what = "sliding_window{INT64_MAX}";
    check_masked(c, isa, attnkit::sliding_window{M}, d_causal());
    c.what = "local_window{INT64_MAX, 0}";
    check_masked(c, isa, attnkit::local_window{M, 0}, d_causal());
    c.what = "local_window{0, INT64_MAX}";
    check_masked(c, isa, attnkit::local_window{0, M}, d_local(0, M));
    c.what = "local_window{INT64_MAX, INT64_MAX}";
    check_masked(c, isa, attnkit::local_window{M, M}, d_all());
    ++i;
  }
}

// ------------------------------------------------------------------------------------------
// Learned sink logits, score modifiers, softcap

TEST_CASE("sparse: learned sink logits with no mask, causal, windows and block masks", "[sparse][sinks]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (auto s : kShapes) {
    sparse_case c = make_case(2, 4, 2, s.first, s.second, 20, std::uint32_t(16000 + i), i);
    c.sinks = true;
    c.what = "no_mask + sinks";
    check_masked(c, isa, attnkit::no_mask{}, d_all());
    c.what = "causal + sinks";
    const sparse_accuracy a = check_masked(c, isa, attnkit::causal{}, d_causal());
    CHECK(a.empty_rows == std::max<index_t>(0, s.first - s.second) * c.batch * c.q_heads);
    c.what = "sliding_window{10} + sinks";
    check_masked(c, isa, attnkit::sliding_window{10}, d_sliding(10));
    c.what = "local_window{3, 3} + sinks";
    check_masked(c, isa, attnkit::local_window{3, 3}, d_local(3, 3));
    c.what = "StreamingLLM w=32 + sinks";
    check_masked(c, isa, (attnkit::sliding_window{32} | attnkit::sink_tokens{4}) & attnkit::causal{}, d_streaming(32));
    bitmap bm(4, s.second, 16, 32);
    bm.random(std::uint32_t(17000 + i), 0.5, /*zero_row=*/0);
    c.what = "per-head block_mask with an empty query block + sinks";
    const sparse_accuracy b = check_masked(c, isa, bm.mask(), d_bitmap(bm));
    if (s.first >= s.second) CHECK(b.empty_rows > 0);  // rows of block 0 see nothing: out 0, lse = sink
    ++i;
  }
  SECTION("large and very negative sink logits") {
    for (float lo : {-30.f, 8.f}) {
      sparse_case c = make_case(1, 4, 4, 50, 90, 16, 18000, 1);
      c.sinks = true, c.sink_lo = lo, c.sink_hi = lo + 1.f;
      c.what = "causal + sinks in [" + std::to_string(lo) + ", +1]";
      check_masked(c, isa, attnkit::causal{}, d_causal());
    }
  }
}

TEST_CASE("sparse: fully masked rows with sink logits give out 0 and lse = the sink logit", "[sparse][sinks]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  const index_t H = 3, Lq = 40, Lk = 30;
  sparse_case c = make_case(1, H, 1, Lq, Lk, 8, 19000);
  c.sinks = true;
  sparse_run r = make_sparse_inputs(c);
  attnkit::attention(r.q.cview(), r.k.cview(), r.v.cview(), r.out.view, attnkit::sliding_window{4}, r.opts, r.lse.view);
  // rows 0 .. Lq - Lk - 1 sit before the first key
  index_t bad = 0;
  for (index_t h = 0; h < H; ++h)
    for (index_t i = 0; i < Lq - Lk; ++i) {
      bad += r.lse(0, h, i) != r.sink_values[std::size_t(h)];
      for (index_t d = 0; d < 8; ++d) bad += r.out(0, h, i, d) != 0.f;
    }
  CHECK(bad == 0);
  // A visible row attending to exactly one key: out = v * e^s / (e^s + e^sink).
  const index_t i = Lq - Lk;  // position 0: key 0 only
  double dot = 0;
  for (index_t d = 0; d < 8; ++d) dot += double(r.q(0, 1, i, d)) * double(r.k(0, 0, 0, d));
  const double s = dot * double(1.f / std::sqrt(8.f));
  const double sink = r.sink_values[1], w = 1.0 / (1.0 + std::exp(sink - s));
  CHECK(double(r.out(0, 1, i, 3)) == Approx(w * double(r.v(0, 0, 0, 3))).margin(1e-6));
  CHECK(double(r.lse(0, 1, i)) == Approx(std::max(s, sink) + std::log1p(std::exp(-std::fabs(s - sink)))).margin(1e-5));
}

namespace {

/// Slopes of ALiBi computed here, not by attnkit::alibi_slopes (powers of two only).
std::vector<float> my_alibi_slopes(index_t heads) {
  std::vector<float> s;
  for (index_t i = 1; i <= heads; ++i) s.push_back(float(std::pow(2.0, -8.0 * double(i) / double(heads))));
  return s;
}

}  // namespace

TEST_CASE("sparse: score_fn relative-position bias and ALiBi, with masks and softcap", "[sparse][score]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (auto s : kShapes) {
    const index_t H = 8;
    sparse_case c = make_case(2, H, 2, s.first, s.second, 20, std::uint32_t(20000 + i), i);
    // ALiBi via the library helper; the reference gets slope[h] * (k - q) written here.
    const std::vector<float> lib = attnkit::alibi_slopes(H), mine = my_alibi_slopes(H);
    const score_fn_t alibi_def = [mine](float x, index_t, index_t h, index_t q, index_t k) {
      return x + mine[std::size_t(h)] * float(k - q);
    };
    c.what = "with_score(causal, alibi)";
    check_masked(c, isa, attnkit::with_score(attnkit::causal{}, attnkit::alibi(lib.data())), d_causal(), alibi_def);
    c.what = "with_score(StreamingLLM w=50, alibi)";
    check_masked(c, isa,
                 attnkit::with_score((attnkit::sliding_window{50} | attnkit::sink_tokens{4}) & attnkit::causal{},
                                     attnkit::alibi(lib.data())),
                 d_streaming(50), alibi_def);
    c.what = "with_score(no_mask, alibi) (keys after the query get a bonus)";
    check_masked(c, isa, attnkit::with_score(attnkit::no_mask{}, attnkit::alibi(lib.data())), d_all(), alibi_def);
    // A relative-position bias through score_fn (bucketed distance, per head and batch).
    auto rel = [](float x, index_t b, index_t h, index_t q, index_t k) {
      const index_t dist = q - k;
      const float bucket = float(dist < 0 ? -1 : dist < 8 ? dist : 8 + (dist > 64));
      return x + 0.05f * bucket * float(h % 3 - 1) + 0.1f * float(b);
    };
    c.what = "with_score(local_window{20, 20}, relative bias)";
    check_masked(c, isa, attnkit::with_score(attnkit::local_window{20, 20}, attnkit::score_fn(rel)), d_local(20, 20),
                 score_fn_t(rel));
    bitmap bm(H, s.second, 16, 16);
    bm.random(std::uint32_t(21000 + i), 0.5, 1);
    c.what = "with_score(block_mask, relative bias)";
    check_masked(c, isa, attnkit::with_score(bm.mask(), attnkit::score_fn(rel)), d_bitmap(bm), score_fn_t(rel));
    // softcap after the modifier, with a mask
    c.softcap = 2.f, c.scale = 1.f, c.q_lo = c.k_lo = -1.5f, c.q_hi = c.k_hi = 1.5f;
    c.what = "with_score(sliding_window{64}, alibi) + softcap 2";
    check_masked(c, isa, attnkit::with_score(attnkit::sliding_window{64}, attnkit::alibi(lib.data())),
                 d_sliding(64), alibi_def);
    c.what = "with_score(block_mask, relative bias) + softcap 2 + sinks";
    c.sinks = true;
    check_masked(c, isa, attnkit::with_score(bm.mask(), attnkit::score_fn(rel)), d_bitmap(bm), score_fn_t(rel));
    ++i;
  }
}

TEST_CASE("sparse: a score modifier really changes the result", "[sparse][score]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  sparse_case c = make_case(1, 4, 4, 60, 60, 16, 22000);
  const std::vector<float> slopes = attnkit::alibi_slopes(4);
  const sparse_run plain = run_masked(c, attnkit::causal{});
  const sparse_run biased = run_masked(c, attnkit::with_score(attnkit::causal{}, attnkit::alibi(slopes.data())));
  const sparse_run ident =
      run_masked(c, attnkit::with_score(attnkit::causal{}, attnkit::score_fn([](float x, index_t, index_t, index_t, index_t) {
                                          return x;
                                        })));
  CHECK(plain.out.max_abs_diff(biased.out) > 1e-3);
  CHECK(ident.out.same_bits(plain.out));  // identity modifier: the same result
}

TEST_CASE("sparse: softcap combined with masks", "[sparse][softcap]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (float cap : {1.f, 5.f, 30.f}) {
    sparse_case c = make_case(1, 4, 2, 90, 200, 32, std::uint32_t(23000 + i), i);
    c.softcap = cap, c.scale = 0.5f, c.q_lo = c.k_lo = -2.f, c.q_hi = c.k_hi = 2.f;
    c.what = "sliding_window{50}, softcap " + std::to_string(cap);
    check_masked(c, isa, attnkit::sliding_window{50}, d_sliding(50));
    bitmap bm(1, c.kv_len, 7, 16);
    bm.random(std::uint32_t(24000 + i), 0.4, 2);
    c.what = "block_mask | sink_tokens{4}, softcap " + std::to_string(cap);
    check_masked(c, isa, bm.mask() | attnkit::sink_tokens{4}, d_or(d_bitmap(bm), d_sink(4)));
    ++i;
  }
}

// ------------------------------------------------------------------------------------------
// Properties

TEST_CASE("sparse property: a window wider than the sequence equals causal", "[sparse][property]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (auto s : kShapes) {
    sparse_case c = make_case(2, 4, 2, s.first, s.second, 24, std::uint32_t(25000 + i), i);
    CAPTURE(s.first, s.second);
    const sparse_run causal = run_masked(c, attnkit::causal{});
    for (index_t w : {s.second, s.second + 1, index_t(1) << 40}) {
      CAPTURE(w);
      const sparse_run wide = run_masked(c, attnkit::sliding_window{w});
      CHECK(wide.out.max_abs_diff(causal.out) <= 1e-7);
      CHECK(wide.out.same_bits(causal.out));
      CHECK(same_lse(wide, causal));
    }
    const sparse_run local = run_masked(c, attnkit::local_window{s.second, 0});
    CHECK(local.out.max_abs_diff(causal.out) <= 1e-7);
    CHECK(local.out.same_bits(causal.out));
    CHECK(same_lse(local, causal));
    ++i;
  }
}

TEST_CASE("sparse property: a block mask with every block set equals no mask", "[sparse][property][block]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (auto s : kShapes)
    for (auto bb : {std::pair<index_t, index_t>{1, 1}, {16, 64}, {100, 7}, {7, 300}}) {
      sparse_case c = make_case(1, 4, 2, s.first, s.second, 20, std::uint32_t(26000 + i), i);
      CAPTURE(s.first, s.second, bb.first, bb.second);
      const sparse_run dense = run_masked(c, attnkit::no_mask{});
      bitmap bm(1, s.second, bb.first, bb.second);
      bm.fill(1);
      const sparse_run all = run_masked(c, bm.mask());
      // The tile grid follows the blocks, so the summation order may differ: not bitwise.
      // With Lq > Lk the rows before the first key (negative positions) are outside every
      // block: fully masked, unlike no_mask.
      const index_t first = std::max<index_t>(0, s.first - s.second);
      double diff = 0;
      index_t clipped_nonzero = 0;
      for (index_t b = 0; b < c.batch; ++b)
        for (index_t h = 0; h < c.q_heads; ++h)
          for (index_t r = 0; r < c.q_len; ++r)
            for (index_t d = 0; d < c.dv(); ++d) {
              if (r < first)
                clipped_nonzero += all.out(b, h, r, d) != 0.f;
              else
                diff = std::max(diff, std::fabs(double(all.out(b, h, r, d)) - double(dense.out(b, h, r, d))));
            }
      CHECK(diff <= 2e-6);
      CHECK(clipped_nonzero == 0);
      CHECK(all.out.nonfinite() == 0);
      ++i;
    }
}

TEST_CASE("sparse property: a mask_fn with exact tile answers equals the same mask_fn without", "[sparse][property][fn]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (auto s : kShapes) {
    sparse_case c = make_case(2, 4, 2, s.first, s.second, 20, std::uint32_t(27000 + i), i);
    CAPTURE(s.first, s.second);
    const sparse_run without = run_masked(c, attnkit::mask_fn(doc_allowed));
    const sparse_run with = run_masked(c, attnkit::mask_fn(doc_allowed, doc_tile));
    CHECK(with.out.max_abs_diff(without.out) <= 1e-6);
    CHECK(with.out.same_bits(without.out));
    CHECK(same_lse(with, without));
    // and the policy equals the mask_fn of its own definition
    const sparse_run sw = run_masked(c, attnkit::sliding_window{33});
    const sparse_run sw_fn = run_masked(c, attnkit::mask_fn([](index_t, index_t, index_t q, index_t k) {
                                          return k <= q && q - k < 33;
                                        }));
    CHECK(sw.out.max_abs_diff(sw_fn.out) <= 1e-6);
    ++i;
  }
}

TEST_CASE("sparse property: topk_attention with topk >= Lk equals attention", "[sparse][property][topk]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (auto s : kShapes) {
    sparse_case c = make_case(2, 4, 2, s.first, s.second, 20, std::uint32_t(28000 + i), i);
    c.sinks = i % 2 == 1;
    CAPTURE(s.first, s.second, c.sinks);
    bitmap bm(4, s.second, 16, 16);
    bm.random(std::uint32_t(29000 + i), 0.5, 1);
    auto compare_with = [&](const auto& mask, const char* what) {
      INFO(what);
      const sparse_run dense = run_masked(c, mask);
      for (index_t topk : {s.second, s.second + 5}) {
        CAPTURE(topk);
        sparse_run r = make_sparse_inputs(c);
        attnkit::topk_attention(r.q.cview(), r.k.cview(), r.v.cview(), r.out.view, topk, mask, r.opts, r.lse.view);
        CHECK(r.out.same_bits(dense.out));
        CHECK(same_lse(r, dense));
      }
    };
    compare_with(attnkit::no_mask{}, "no_mask");
    compare_with(attnkit::causal{}, "causal");
    compare_with(attnkit::sliding_window{20}, "sliding_window{20}");
    compare_with(bm.mask(), "block_mask");
    ++i;
  }
}

// ------------------------------------------------------------------------------------------
// Top-k attention

TEST_CASE("topk: topk in {1, 2, 7, 64, Lk - 1, Lk, > Lk} with no_mask, causal, windows, block masks",
          "[sparse][topk]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  const std::pair<index_t, index_t> shapes[] = {{150, 150}, {20, 300}, {170, 90}, {1, 257}};
  int i = 0;
  for (auto s : shapes) {
    sparse_case c = make_case(2, 4, 2, s.first, s.second, 20, std::uint32_t(30000 + i), i);
    c.quantised();
    c.scale = 0.25f;
    bitmap bm(4, s.second, 16, 7);
    bm.random(std::uint32_t(31000 + i), 0.5, 1);
    for (index_t topk : {index_t(1), index_t(2), index_t(7), index_t(64), s.second - 1, s.second, s.second + 3}) {
      c.what = "topk no_mask";
      check_topk(c, isa, topk, attnkit::no_mask{}, d_all());
      c.what = "topk causal";
      check_topk(c, isa, topk, attnkit::causal{}, d_causal());
      c.what = "topk sliding_window{40}";
      check_topk(c, isa, topk, attnkit::sliding_window{40}, d_sliding(40));
      c.what = "topk per-head block_mask (an empty query block)";
      check_topk(c, isa, topk, bm.mask(), d_bitmap(bm));
    }
    ++i;
  }
}

TEST_CASE("topk: GQA, sinks, lse, odd head_dim, both layouts", "[sparse][topk]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (index_t g : {1, 3, 6, 8}) {
    sparse_case c = make_case(2, 2 * g, 2, 60, 200, 17, std::uint32_t(32000 + i), i);
    c.quantised();
    c.scale = 0.125f;
    c.sinks = true;
    for (index_t topk : {1, 5, 33}) {
      c.what = "topk StreamingLLM w=40 + sinks, GQA " + std::to_string(g);
      check_topk(c, isa, topk, (attnkit::sliding_window{40} | attnkit::sink_tokens{4}) & attnkit::causal{},
                 d_streaming(40));
    }
    ++i;
  }
}

TEST_CASE("topk: exact ties go to the lower key index", "[sparse][topk][ties]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  SECTION("identical keys, by hand") {
    // Every key equal: every score ties; the first topk keys win.
    const index_t Lk = 40, D = 8;
    tensor q(1, 1, 2, D), k(1, 1, Lk, D), v(1, 1, Lk, D), out(1, 1, 2, D);
    q.fill_uniform(1);
    k.fill(0.5f);
    v.fill_uniform(2);
    for (index_t topk : {1, 3, 10}) {
      CAPTURE(topk);
      attnkit::topk_attention(q.cview(), k.cview(), v.cview(), out.view, topk);
      for (index_t i = 0; i < 2; ++i)
        for (index_t d = 0; d < D; ++d) {
          double want = 0;
          for (index_t j = 0; j < topk; ++j) want += double(v(0, 0, j, d)) / double(topk);
          CHECK(double(out(0, 0, i, d)) == Approx(want).margin(1e-6));
        }
    }
  }
  SECTION("keys repeating with a short period, against the reference") {
    int i = 0;
    for (index_t period : {1, 3, 5, 16})
      for (auto s : {std::pair<index_t, index_t>{64, 64}, {7, 400}, {30, 2500}}) {
        sparse_case c = make_case(1, 4, 2, s.first, s.second, 16, std::uint32_t(33000 + i), i);
        c.quantised();
        c.what = "keys with period " + std::to_string(period);
        for (index_t topk : {1, 2, 8, 20, 64}) {
          INFO("topk " << topk);
          yard_spec y;
          y.allowed = d_causal();
          y.topk = topk;
          auto periodic = [&](sparse_run& r) {
            r.k.for_each([&](index_t b, index_t h, index_t j, index_t d) { r.k(b, h, j, d) = r.k(b, h, j % period, d); });
          };
          check_sparse_case(
              c, isa, y,
              [&](sparse_run& r) {
                attnkit::topk_attention(r.q.cview(), r.k.cview(), r.v.cview(), r.out.view, topk, attnkit::causal{},
                                        r.opts, r.lse.view);
              },
              [&](const sparse_run& r) {
                return attnkit::reference::topk_attention(r.q.cview(), r.k.cview(), r.v.cview(), topk,
                                                          attnkit::mask_fn(d_causal()), r.opts);
              },
              periodic);
        }
        ++i;
      }
  }
  SECTION("two equal scores straddle the cut: the lower key is kept") {
    // Keys 5, 30 and 31 tie at the best score, key 12 is next, all others tie at 0:
    // topk 2 keeps 5 and 30 (not 31), topk 5 adds 12 and then key 0 (the lowest of the zeros).
    const index_t Lk = 40, D = 4;
    tensor q(1, 1, 1, D), k(1, 1, Lk, D), v(1, 1, Lk, D), out(1, 1, 1, D);
    q.fill(0.f);
    q(0, 0, 0, 0) = 1.f;
    k.fill(0.f);
    k(0, 0, 5, 0) = 2.f, k(0, 0, 30, 0) = 2.f, k(0, 0, 12, 0) = 1.f;
    k(0, 0, 31, 0) = 2.f;
    v.fill(0.f);
    for (index_t j = 0; j < Lk; ++j) v(0, 0, j, 0) = float(j + 1);
    attnkit::attention_options o;
    o.scale = 1.f;
    const double e = std::exp(1.0);
    const double want[] = {6.0, (6.0 + 31.0) / 2.0, (6.0 + 31.0 + 32.0) / 3.0, (69.0 * e + 13.0) / (3.0 * e + 1.0),
                           (69.0 * e * e + 13.0 * e + 1.0) / (3.0 * e * e + e + 1.0)};
    for (index_t topk = 1; topk <= 5; ++topk) {
      CAPTURE(topk);
      attnkit::topk_attention(q.cview(), k.cview(), v.cview(), out.view, topk, attnkit::no_mask{}, o);
      CHECK(double(out(0, 0, 0, 0)) == Approx(want[topk - 1]).margin(1e-5));
    }
  }
}

// The kernel samples every (topk / 4)-th key when that stride is >= 2 and Lk >= 16 topk:
// topk 4 (stride 1) walks without sampling, 8 .. 100 sample. i0 numbers the cases (seeds).
static void check_sampled_path(const std::string& isa, index_t lk, int i0) {
  int i = i0;
  for (index_t topk : {4, 8, 16, 24, 64, 100}) {
    sparse_case c = make_case(1, 4, 2, 40, lk, 16, std::uint32_t(34000 + i), i);
    c.quantised();
    c.lse = true;
    c.what = "topk sampled path, no_mask";
    check_topk(c, isa, topk, attnkit::no_mask{}, d_all());
    c.what = "topk sampled path, causal";
    check_topk(c, isa, topk, attnkit::causal{}, d_causal());
    if (i % 2 == 0) {
      c.what = "topk sampled path, sliding_window{1000}";
      check_topk(c, isa, topk, attnkit::sliding_window{1000}, d_sliding(1000));
      bitmap bm(1, lk, 64, 64);
      bm.random(std::uint32_t(35000 + i), 0.6, 5);
      c.what = "topk sampled path, block_mask 64x64";
      check_topk(c, isa, topk, bm.mask(), d_bitmap(bm));
      c.what = "topk sampled path, sinks";
      c.sinks = true;
      check_topk(c, isa, topk, attnkit::no_mask{}, d_all());
    }
    ++i;
  }
}

TEST_CASE("topk: long key sequences run the sampled-threshold path (Lk >= 16 topk)", "[sparse][topk][sampled]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  check_sampled_path(isa, 2000, 0);
}

// [slow]: the sanitizer stage skips it (16 s under ASan), the same path at another length.
TEST_CASE("topk: the sampled-threshold path at Lk 2600", "[sparse][topk][sampled][slow]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  check_sampled_path(isa, 2600, 6);
}

TEST_CASE("topk: sampled thresholds that are too high fall back to a full re-walk", "[sparse][topk][sampled]") {
  // The kernel samples every (topk / 4)-th key (absolute key index a multiple of the
  // stride) and starts each lane's threshold at about the (3.25 topk)-th best score. Here
  // the sampled keys carry the largest scores of some lanes, so their threshold admits
  // fewer than topk keys and they must be walked again; other lanes (other heads) see the
  // sampled keys as ordinary and keep theirs. A few huge scores sit at non-sampled keys.
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (index_t topk : {16, 32, 64}) {
    const index_t stride = topk / 4, Lk = 20 * topk + 37, D = 16;
    for (index_t lq : {1, 30}) {
      sparse_case c = make_case(1, 4, 1, lq, Lk, D, std::uint32_t(36000 + i), i);
      c.quantised();
      c.what = "sampled keys strong for heads 0 and 2 (stride " + std::to_string(stride) + ")";
      auto shape_inputs = [&](sparse_run& r) {
        // dims 0..13 random on the grid; dim 14 marks sampled keys, dim 15 a few huge ones
        for (index_t j = 0; j < Lk; ++j) {
          r.k(0, 0, j, 14) = j % stride == 0 ? 1.f : 0.f;
          r.k(0, 0, j, 15) = (j % 97 == 13 && j % stride != 0) ? 1.f : 0.f;
        }
        for (index_t h = 0; h < 4; ++h)
          for (index_t t = 0; t < lq; ++t) {
            for (index_t d = 0; d < 14; ++d) r.q(0, h, t, d) *= 0.25f;  // small random part
            r.q(0, h, t, 14) = h % 2 == 0 ? 8.f : 0.f;
            r.q(0, h, t, 15) = 16.f;
          }
      };
      for (auto m : {0, 1}) {
        INFO((m ? "causal" : "no_mask"));
        yard_spec y;
        y.allowed = m ? d_causal() : d_all();
        y.topk = topk;
        check_sparse_case(
            c, isa, y,
            [&](sparse_run& r) {
              if (m)
                attnkit::topk_attention(r.q.cview(), r.k.cview(), r.v.cview(), r.out.view, topk, attnkit::causal{},
                                        r.opts, r.lse.view);
              else
                attnkit::topk_attention(r.q.cview(), r.k.cview(), r.v.cview(), r.out.view, topk, attnkit::no_mask{},
                                        r.opts, r.lse.view);
            },
            [&](const sparse_run& r) {
              return attnkit::reference::topk_attention(r.q.cview(), r.k.cview(), r.v.cview(), topk,
                                                        attnkit::mask_fn(y.allowed), r.opts);
            },
            shape_inputs);
      }
      ++i;
    }
  }
}

TEST_CASE("topk: fully masked rows, sinks and lse", "[sparse][topk]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (bool sinks : {false, true}) {
    sparse_case c = make_case(2, 3, 1, 120, 80, 12, std::uint32_t(37000 + i), i);  // Lq > Lk
    c.quantised();
    c.scale = 0.5f;
    c.sinks = sinks;
    for (index_t topk : {1, 4, 79}) {
      c.what = std::string("topk causal, Lq > Lk") + (sinks ? " + sinks" : "");
      const sparse_accuracy a = check_topk(c, isa, topk, attnkit::causal{}, d_causal());
      CHECK(a.empty_rows == 40 * c.batch * c.q_heads);
      bitmap bm(1, c.kv_len, 8, 8);
      bm.random(std::uint32_t(38000 + i), 0.4, 4);
      c.what = std::string("topk block_mask with an empty query block") + (sinks ? " + sinks" : "");
      check_topk(c, isa, topk, bm.mask(), d_bitmap(bm));
      c.what = std::string("topk sink_tokens{0} (nothing allowed)") + (sinks ? " + sinks" : "");
      check_topk(c, isa, topk, attnkit::sink_tokens{0}, d_sink(0));
    }
    ++i;
  }
}

TEST_CASE("topk: with a score modifier and softcap", "[sparse][topk][score]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  const index_t H = 4;
  const std::vector<float> lib = attnkit::alibi_slopes(H), mine = my_alibi_slopes(H);  // powers of two: exact
  const score_fn_t alibi_def = [mine](float x, index_t, index_t h, index_t q, index_t k) {
    return x + mine[std::size_t(h)] * float(k - q);
  };
  int i = 0;
  for (index_t topk : {3, 20}) {
    sparse_case c = make_case(1, H, 2, 70, 300, 16, std::uint32_t(39000 + i), i);
    c.quantised();
    c.what = "topk with_score(causal, alibi)";
    check_topk(c, isa, topk, attnkit::with_score(attnkit::causal{}, attnkit::alibi(lib.data())), d_causal(), alibi_def);
    c.softcap = 4.f;
    c.what = "topk sliding_window{100} + softcap 4";
    check_topk(c, isa, topk, attnkit::sliding_window{100}, d_sliding(100));
    ++i;
  }
}

// ------------------------------------------------------------------------------------------
// Block top-k attention (MoBA)

namespace {

/// The MoBA selection written here: for query row i (position p = i + Lk - Lq >= 0), the
/// topk_blocks past blocks j < p / block with the largest q . mean(K_j) (exact in double on
/// quantised inputs; ties to the lower block); allowed keys: k <= p in the own block or in
/// a chosen block.
struct moba_selection {
  index_t H = 0, Lq = 0, Lk = 0, block = 1;
  std::vector<std::vector<char>> chosen;  // [(b * H + h) * Lq + i][block]

  bool allowed(index_t b, index_t h, index_t p, index_t k) const {
    if (p < 0 || k > p) return false;
    if (k / block == p / block) return true;
    return chosen[std::size_t((b * H + h) * Lq + (p - (Lk - Lq)))][std::size_t(k / block)] != 0;
  }
};

moba_selection select_blocks(const sparse_run& r, index_t block, index_t topk_blocks) {
  moba_selection s;
  const index_t B = r.q.B, H = r.q.H, Lq = r.q.S, Lk = r.k.S, D = r.q.D, group = H / r.k.H;
  s.H = H, s.Lq = Lq, s.Lk = Lk, s.block = block;
  const index_t nblocks = (Lk + block - 1) / block;
  s.chosen.assign(std::size_t(B * H * Lq), std::vector<char>(std::size_t(nblocks), 0));
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t i = 0; i < Lq; ++i) {
        const index_t p = i + Lk - Lq;
        if (p < 0) continue;
        std::vector<std::pair<double, index_t>> g;
        for (index_t j = 0; j < p / block; ++j) {
          double dot = 0;
          for (index_t d = 0; d < D; ++d) {
            double sum = 0;
            for (index_t t = j * block; t < (j + 1) * block; ++t) sum += double(r.k(b, h / group, t, d));
            dot += double(r.q(b, h, i, d)) * sum;
          }
          g.push_back({dot / double(block), j});
        }
        std::sort(g.begin(), g.end(), [](const std::pair<double, index_t>& x, const std::pair<double, index_t>& y) {
          return x.first > y.first || (x.first == y.first && x.second < y.second);
        });
        for (index_t t = 0; t < std::min<index_t>(topk_blocks, index_t(g.size())); ++t)
          s.chosen[std::size_t((b * H + h) * Lq + i)][std::size_t(g[std::size_t(t)].second)] = 1;
      }
  return s;
}

/// Quantisation making the mean-pooled keys exact in float: k on a grid of block/8 for
/// odd blocks (the kernel multiplies by float(1 / block)), 1/8 for powers of two.
float k_step_for(index_t block) { return (block & (block - 1)) == 0 ? 0.125f : 0.125f * float(block); }

template <class Prepare>
sparse_accuracy check_block_topk(sparse_case c, const std::string& isa, index_t block, index_t topk_blocks,
                                 Prepare&& prepare) {
  c.q_step = 0.125f;
  c.k_step = k_step_for(block);
  c.what += " block_topk block=" + std::to_string(block) + " topk_blocks=" + std::to_string(topk_blocks);
  sparse_run inputs = make_sparse_inputs(c);
  prepare(inputs);
  const moba_selection sel = select_blocks(inputs, block, topk_blocks);
  yard_spec y;
  y.allowed = [&sel](index_t b, index_t h, index_t q, index_t k) { return sel.allowed(b, h, q, k); };
  return check_sparse_case(
      c, isa, y,
      [&](sparse_run& r) {
        attnkit::block_topk_attention(r.q.cview(), r.k.cview(), r.v.cview(), r.out.view, block, topk_blocks, r.opts,
                                      r.lse_view(c));
      },
      [&](const sparse_run& r) {
        return attnkit::reference::block_topk_attention(r.q.cview(), r.k.cview(), r.v.cview(), block, topk_blocks,
                                                        r.opts);
      },
      prepare);
}

sparse_accuracy check_block_topk(const sparse_case& c, const std::string& isa, index_t block, index_t topk_blocks) {
  return check_block_topk(c, isa, block, topk_blocks, [](sparse_run&) {});
}

}  // namespace

TEST_CASE("block_topk: block 1, 3, 16, 64 and topk_blocks 0, 1, 3, more than the past blocks, Lq == Lk",
          "[sparse][block_topk]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (index_t block : {1, 3, 16, 64})
    for (index_t topk_blocks : {0, 1, 3, 1000}) {
      sparse_case c = make_case(2, 4, 2, 200, 200, 16, std::uint32_t(40000 + i), i);
      check_block_topk(c, isa, block, topk_blocks);
      ++i;
    }
}

TEST_CASE("block_topk: decode-like Lq 1..16 over longer keys, and Lq > Lk", "[sparse][block_topk]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (index_t block : {1, 3, 16, 64})
    for (index_t lq : {1, 2, 5, 16}) {
      sparse_case c = make_case(1, 4, 2, lq, 333, 16, std::uint32_t(41000 + i), i);
      for (index_t topk_blocks : {0, 2, 7}) check_block_topk(c, isa, block, topk_blocks);
      ++i;
    }
  for (index_t block : {1, 3, 16, 64})
    for (index_t topk_blocks : {0, 2, 50}) {
      sparse_case c = make_case(2, 2, 1, 150, 90, 16, std::uint32_t(42000 + i), i);  // 60 rows before the keys
      const sparse_accuracy a = check_block_topk(c, isa, block, topk_blocks);
      CHECK(a.empty_rows == 60 * c.batch * c.q_heads);
      ++i;
    }
}

TEST_CASE("block_topk: GQA, sinks, lse, odd head_dim, v_dim, layouts", "[sparse][block_topk]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (index_t g : {1, 3, 4, 8})
    for (index_t block : {3, 16}) {
      sparse_case c = make_case(2, 2 * g, 2, 97, 140, g % 2 ? 17 : 33, std::uint32_t(43000 + i), i);
      c.v_dim = 9;
      c.sinks = true;
      for (index_t topk_blocks : {1, 3}) check_block_topk(c, isa, block, topk_blocks);
      c.sinks = false;
      c.softcap = 3.f;
      c.scale = 0.7f;
      check_block_topk(c, isa, block, 2);
      ++i;
    }
}

TEST_CASE("block_topk and topk: edge shapes and strided lse", "[sparse][block_topk][topk][edge]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  SECTION("no keys, a block longer than the keys, one key") {
    for (auto s : {std::pair<index_t, index_t>{3, 0}, {5, 3}, {4, 7}, {1, 1}, {9, 8}})
      for (index_t block : {1, 8, 100})
        for (index_t topk_blocks : {0, 3}) {
          sparse_case c = make_case(1, 2, 1, s.first, s.second, 5, std::uint32_t(47000 + i), i);
          c.sinks = i % 2 == 1;
          check_block_topk(c, isa, block, topk_blocks);
          ++i;
        }
    for (auto s : {std::pair<index_t, index_t>{3, 0}, {5, 3}, {1, 1}})
      for (index_t topk : {1, 2, 50}) {
        sparse_case c = make_case(1, 2, 1, s.first, s.second, 5, std::uint32_t(47500 + i), i);
        c.quantised();
        c.scale = 0.5f;
        c.what = "topk causal, tiny";
        check_topk(c, isa, topk, attnkit::causal{}, d_causal());
        ++i;
      }
  }
  SECTION("lse with a sequence stride") {
    for (index_t ss : {2, 5}) {
      sparse_case c = make_case(2, 4, 2, 70, 150, 16, std::uint32_t(48000 + i), i);
      c.lse_seq_stride = ss;
      c.sinks = ss == 5;
      check_block_topk(c, isa, 16, 2);
      c.quantised();
      c.scale = 0.25f;
      c.what = "topk sliding_window{60}";
      check_topk(c, isa, 9, attnkit::sliding_window{60}, d_sliding(60));
      c.what = "topk no_mask";
      check_topk(c, isa, 8, attnkit::no_mask{}, d_all());
      ++i;
    }
  }
}

TEST_CASE("block_topk: equal blocks tie to the lower block", "[sparse][block_topk][ties]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  SECTION("every block the same: the lowest past blocks are chosen") {
    for (index_t block : {1, 4, 16}) {
      sparse_case c = make_case(1, 2, 1, 100, 100, 8, std::uint32_t(44000 + i), i);
      c.q_step = c.k_step = 0.125f;
      yard_spec y;
      const index_t topk_blocks = 2;
      y.allowed = [block](index_t, index_t, index_t p, index_t k) {
        return p >= 0 && k <= p && (k / block == p / block || k / block < topk_blocks);
      };
      c.what = "block_topk with identical blocks, block " + std::to_string(block);
      auto periodic = [&](sparse_run& r) {
        r.k.for_each([&](index_t b, index_t h, index_t j, index_t d) { r.k(b, h, j, d) = r.k(b, h, j % block, d); });
      };
      check_sparse_case(
          c, isa, y,
          [&](sparse_run& r) {
            attnkit::block_topk_attention(r.q.cview(), r.k.cview(), r.v.cview(), r.out.view, block, topk_blocks, r.opts,
                                          r.lse.view);
          },
          [&](const sparse_run& r) {
            return attnkit::reference::block_topk_attention(r.q.cview(), r.k.cview(), r.v.cview(), block, topk_blocks,
                                                            r.opts);
          },
          periodic);
      ++i;
    }
  }
  SECTION("blocks repeating with a period of 2..5 blocks: ties among blocks, then better ones") {
    // Block j holds the keys of block j % period, so every gate value recurs; a selection
    // that is full must evict the later of equal blocks, never the earlier one.
    for (index_t block : {1, 3, 16})
      for (index_t period : {2, 3, 5})
        for (index_t topk_blocks : {1, 2, 3, 4}) {
          sparse_case c = make_case(1, 4, 2, 60, 96 * 2, 8, std::uint32_t(44100 + i), i);
          c.what = "period " + std::to_string(period) + " blocks";
          check_block_topk(c, isa, block, topk_blocks, [&](sparse_run& r) {
            r.k.for_each([&](index_t b, index_t h, index_t j, index_t d) {
              r.k(b, h, j, d) = r.k(b, h, (j / block) % period * block + j % block, d);
            });
          });
          ++i;
        }
  }
}

// ------------------------------------------------------------------------------------------
// Determinism

TEST_CASE("sparse property: bitwise identical output for 1, 2 and 3 threads", "[sparse][property][threads]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  sparse_case c = make_case(2, 8, 2, 300, 300, 32, 45000);
  c.sinks = true;
  c.quantised();
  bitmap bm(8, c.kv_len, 16, 32);
  bm.random(46000, 0.3, 2);
  struct variant {
    const char* what;
    std::function<void(sparse_run&)> run;
  };
  const variant variants[] = {
      {"StreamingLLM w=50",
       [&](sparse_run& r) {
         attnkit::attention(r.q.cview(), r.k.cview(), r.v.cview(), r.out.view,
                            (attnkit::sliding_window{50} | attnkit::sink_tokens{4}) & attnkit::causal{}, r.opts,
                            r.lse.view);
       }},
      {"block_mask",
       [&](sparse_run& r) {
         attnkit::attention(r.q.cview(), r.k.cview(), r.v.cview(), r.out.view, bm.mask(), r.opts, r.lse.view);
       }},
      {"topk 5 causal",
       [&](sparse_run& r) {
         attnkit::topk_attention(r.q.cview(), r.k.cview(), r.v.cview(), r.out.view, 5, attnkit::causal{}, r.opts,
                                 r.lse.view);
       }},
      {"topk 16 sliding_window{200} (sampled thresholds)",
       [&](sparse_run& r) {
         attnkit::topk_attention(r.q.cview(), r.k.cview(), r.v.cview(), r.out.view, 16, attnkit::sliding_window{200},
                                 r.opts, r.lse.view);
       }},
      {"block_topk 16, 3",
       [&](sparse_run& r) {
         attnkit::block_topk_attention(r.q.cview(), r.k.cview(), r.v.cview(), r.out.view, 16, 3, r.opts, r.lse.view);
       }},
  };
  for (const auto& var : variants) {
    INFO(var.what);
    sparse_run one = make_sparse_inputs(c);
    one.opts.num_threads = 1;
    var.run(one);
    CHECK(one.out.nonfinite() == 0);
    for (int t : {2, 3}) {
      CAPTURE(t);
      sparse_run r = make_sparse_inputs(c);
      r.opts.num_threads = t;
      var.run(r);
      CHECK(r.out.same_bits(one.out));
      CHECK(same_lse(r, one));
    }
  }
}
