// Mask policies (mask/masks.hpp, mask/score.hpp) on their own, without a kernel: every
// policy and composition against a test-side definition of its pattern, exhaustively on
// small shapes.
//
// For every (batch, query head), every query range [q0, q1) with -3 <= q0 < q1 <= L and
// every key range [k0, k1) with 0 <= k0 < k1 <= L:
//   - classify() never says empty when some pair of the tile is allowed, nor full when some
//     pair is not (the count of allowed pairs comes from 2-D prefix sums of the test-side
//     definition);
//   - keys(q0, q1, kv_len) is sorted, disjoint, inside [0, kv_len), at most
//     key_ranges::capacity ranges, and holds every allowed key of those queries;
//   - allowed() agrees with the definition on every pair.
// The primitives (no_mask, causal, windows, sinks, block masks) are also exact: they call a
// tile empty or full whenever it is, and their key ranges hold no key that no query of the
// range may see (so the kernels never visit work the pattern skips).
#include "support/sparse_test.hpp"

using namespace attnkit_test;
using attnkit::index_t;
using attnkit::key_range;
using attnkit::key_ranges;
using attnkit::tile_kind;

namespace {

using def_fn = std::function<bool(index_t b, index_t h, index_t q, index_t k)>;

constexpr index_t kQmin = -3;  // lowest query position tried (Lq > Lk: rows before the keys)

struct tile_report {
  long tiles = 0, key_calls = 0;
  long allowed_mismatch = 0;
  long empty_wrong = 0, full_wrong = 0;       // unsound answers
  long not_exact = 0;                          // sound but conservative (only counted)
  long keys_malformed = 0, keys_missing = 0;   // unsound key ranges
  long keys_loose = 0;                         // ranges holding a key no query may see, when
                                               // the allowed keys form <= capacity runs
  std::string first;                           // the first unsound finding, for the log

  void note(const std::string& s) {
    if (first.empty()) first = s;
  }
};

std::string tile_str(index_t b, index_t h, index_t q0, index_t q1, index_t k0, index_t k1) {
  std::ostringstream s;
  s << "b=" << b << " h=" << h << " q[" << q0 << "," << q1 << ") k[" << k0 << "," << k1 << ")";
  return s.str();
}

std::string ranges_str(const key_ranges& r) {
  std::ostringstream s;
  s << "{";
  for (int i = 0; i < r.count && i < key_ranges::capacity; ++i) s << (i ? " " : "") << "[" << r.r[i].begin << "," << r.r[i].end << ")";
  s << "} count " << r.count;
  return s.str();
}

/// Checks one mask over positions q in [-3, L), k in [0, L), for `batches` x `heads`, and
/// key ranges for kv_len in {0, 1, L / 2, L}.
template <class M>
tile_report check_tiles(const M& m, const def_fn& def, index_t L, index_t batches, index_t heads) {
  tile_report rep;
  const index_t NQ = L - kQmin;  // query positions kQmin .. L - 1
  std::vector<int> A(std::size_t(NQ * L)), P(std::size_t((NQ + 1) * (L + 1)), 0);
  for (index_t b = 0; b < batches; ++b)
    for (index_t h = 0; h < heads; ++h) {
      for (index_t qi = 0; qi < NQ; ++qi)
        for (index_t k = 0; k < L; ++k) {
          const bool d = def(b, h, qi + kQmin, k);
          A[std::size_t(qi * L + k)] = d;
          if (bool(m.allowed(b, h, qi + kQmin, k)) != d) {
            ++rep.allowed_mismatch;
            rep.note("allowed() differs from the definition at b=" + std::to_string(b) + " h=" + std::to_string(h) +
                     " q=" + std::to_string(qi + kQmin) + " k=" + std::to_string(k));
          }
        }
      // P[(qi) * (L + 1) + k] = allowed pairs with query index < qi and key < k
      for (index_t qi = 0; qi < NQ; ++qi)
        for (index_t k = 0; k < L; ++k)
          P[std::size_t((qi + 1) * (L + 1) + k + 1)] = A[std::size_t(qi * L + k)] + P[std::size_t(qi * (L + 1) + k + 1)] +
                                                       P[std::size_t((qi + 1) * (L + 1) + k)] -
                                                       P[std::size_t(qi * (L + 1) + k)];
      auto count = [&](index_t q0, index_t q1, index_t k0, index_t k1) {
        const index_t a = q0 - kQmin, c = q1 - kQmin;
        return P[std::size_t(c * (L + 1) + k1)] - P[std::size_t(a * (L + 1) + k1)] - P[std::size_t(c * (L + 1) + k0)] +
               P[std::size_t(a * (L + 1) + k0)];
      };
      for (index_t q0 = kQmin; q0 < L; ++q0)
        for (index_t q1 = q0 + 1; q1 <= L; ++q1) {
          for (index_t k0 = 0; k0 < L; ++k0)
            for (index_t k1 = k0 + 1; k1 <= L; ++k1) {
              ++rep.tiles;
              const long n = count(q0, q1, k0, k1), total = long((q1 - q0) * (k1 - k0));
              const tile_kind t = m.classify(b, h, q0, q1, k0, k1);
              if (t == tile_kind::empty && n > 0) {
                ++rep.empty_wrong;
                rep.note("classify says empty, " + std::to_string(n) + " pairs allowed: " + tile_str(b, h, q0, q1, k0, k1));
              }
              if (t == tile_kind::full && n < total) {
                ++rep.full_wrong;
                rep.note("classify says full, " + std::to_string(total - n) + " pairs masked: " +
                         tile_str(b, h, q0, q1, k0, k1));
              }
              if (t != tile_kind::empty && t != tile_kind::full && t != tile_kind::partial) {
                ++rep.empty_wrong;
                rep.note("classify returns no tile_kind: " + tile_str(b, h, q0, q1, k0, k1));
              }
              rep.not_exact += (n == 0 && t != tile_kind::empty) || (n == total && t != tile_kind::full);
            }
          // key ranges for several kv_len (the allowed keys are those below kv_len)
          for (index_t kv_len : {index_t(0), index_t(1), L / 2, L}) {
            ++rep.key_calls;
            const key_ranges r = m.keys(b, h, q0, q1, kv_len);
            const std::string where = tile_str(b, h, q0, q1, 0, kv_len) + " kv_len=" + std::to_string(kv_len) +
                                      " ranges " + ranges_str(r);
            bool ok = r.count >= 0 && r.count <= key_ranges::capacity;
            for (int i = 0; ok && i < r.count; ++i) {
              ok = ok && r.r[i].begin >= 0 && r.r[i].begin < r.r[i].end && r.r[i].end <= kv_len;
              if (i > 0) ok = ok && r.r[i - 1].end <= r.r[i].begin;
            }
            if (!ok) {
              ++rep.keys_malformed;
              rep.note("keys() not sorted, disjoint and inside [0, kv_len): " + where);
              continue;
            }
            long loose = 0;
            int needed_runs = 0;
            bool prev_needed = false;
            for (index_t k = 0; k < kv_len; ++k) {
              const bool needed = count(q0, q1, k, k + 1) > 0;
              needed_runs += needed && !prev_needed;
              prev_needed = needed;
              bool in = false;
              for (int i = 0; i < r.count; ++i) in = in || (k >= r.r[i].begin && k < r.r[i].end);
              if (needed && !in) {
                ++rep.keys_missing;
                rep.note("keys() misses allowed key " + std::to_string(k) + ": " + where);
              }
              loose += in && !needed;
            }
            // More runs of allowed keys than key_ranges holds are merged (a coarser cover).
            if (needed_runs <= key_ranges::capacity) rep.keys_loose += loose;
          }
        }
    }
  return rep;
}

/// Runs check_tiles and asserts soundness (and exactness when `exact`).
template <class M>
void expect_sound(const std::string& name, const M& m, const def_fn& def, index_t L, index_t batches = 2,
                  index_t heads = 3, bool exact = false) {
  const tile_report r = check_tiles(m, def, L, batches, heads);
  INFO("mask: " << name << ", L = " << L << " (" << r.tiles << " tiles, " << r.key_calls << " key-range calls)");
  INFO("first finding: " << (r.first.empty() ? std::string("none") : r.first));
  CHECK(r.tiles > 0);
  CHECK(r.allowed_mismatch == 0);
  CHECK(r.empty_wrong == 0);
  CHECK(r.full_wrong == 0);
  CHECK(r.keys_malformed == 0);
  CHECK(r.keys_missing == 0);
  if (exact) {
    INFO("exactness: " << r.not_exact << " tiles answered partial when empty or full, " << r.keys_loose
                       << " keys in ranges that no query of the range may see");
    CHECK(r.not_exact == 0);
    CHECK(r.keys_loose == 0);
  }
}

// Test-side definitions (absolute positions; q may be negative, k never is).
bool def_causal(index_t q, index_t k) { return k <= q; }
bool def_sliding(index_t w, index_t q, index_t k) { return 0 <= q - k && q - k < w; }
// (written on the distance q - k, which never overflows, so huge sides work too)
bool def_local(index_t left, index_t right, index_t q, index_t k) { return q - k <= left && k - q <= right; }
bool def_sink(index_t n, index_t k) { return k < n; }

// A document mask: positions belong to documents of varying length that depend on the batch
// and head; keys are allowed within the query's document, causally.
index_t doc_of(index_t b, index_t h, index_t pos) {
  if (pos < 0) return -1 - pos;  // every negative position is its own document
  return (pos + 2 * b + h) / (3 + (b + h) % 3);
}
bool def_doc(index_t b, index_t h, index_t q, index_t k) { return k <= q && doc_of(b, h, q) == doc_of(b, h, k); }
// Exact tile answer for the document mask, by brute force over the pairs (a user's tile
// answer may do anything it likes; this one is exact).
tile_kind doc_tile(index_t b, index_t h, index_t q0, index_t q1, index_t k0, index_t k1) {
  long n = 0;
  for (index_t q = q0; q < q1; ++q)
    for (index_t k = k0; k < k1; ++k) n += def_doc(b, h, q, k);
  return n == 0 ? tile_kind::empty : n == (q1 - q0) * (k1 - k0) ? tile_kind::full : tile_kind::partial;
}

}  // namespace

// ------------------------------------------------------------------------------------------
// key_ranges

namespace {

/// The union of ranges as a bool per key in [0, n).
std::vector<char> cover_of(const key_ranges& r, index_t n) {
  std::vector<char> c(std::size_t(n), 0);
  for (int i = 0; i < r.count; ++i)
    for (index_t k = std::max<index_t>(0, r.r[i].begin); k < std::min(n, r.r[i].end); ++k) c[std::size_t(k)] = 1;
  return c;
}

bool well_formed(const key_ranges& r, index_t kv_len) {
  if (r.count < 0 || r.count > key_ranges::capacity) return false;
  for (int i = 0; i < r.count; ++i) {
    if (r.r[i].begin < 0 || r.r[i].begin >= r.r[i].end || r.r[i].end > kv_len) return false;
    if (i > 0 && r.r[i - 1].end > r.r[i].begin) return false;
  }
  return true;
}

/// Number of maximal runs of set keys.
int runs(const std::vector<char>& c) {
  int n = 0;
  for (std::size_t k = 0; k < c.size(); ++k) n += c[k] && (k == 0 || !c[k - 1]);
  return n;
}

}  // namespace

TEST_CASE("key_ranges: add keeps ranges sorted, disjoint and clipped", "[masks][key_ranges]") {
  SECTION("examples") {
    key_ranges r;
    r.add(10, 20, 100);
    r.add(0, 5, 100);
    CHECK(r.count == 2);
    CHECK((r.r[0].begin == 0 && r.r[0].end == 5 && r.r[1].begin == 10 && r.r[1].end == 20));
    r.add(5, 10, 100);  // touching both: one range
    CHECK(r.count == 1);
    CHECK((r.r[0].begin == 0 && r.r[0].end == 20));
    r.add(-7, 3, 100);  // clipped at 0, inside
    r.add(90, 130, 100);  // clipped at kv_len
    CHECK(r.count == 2);
    CHECK((r.r[1].begin == 90 && r.r[1].end == 100));
    r.add(50, 50, 100);  // empty: nothing
    r.add(120, 140, 100);  // beyond kv_len: nothing
    r.add(-9, -1, 100);  // before 0: nothing
    CHECK(r.count == 2);
    CHECK(r.size() == 20 + 10);
    CHECK(key_ranges::all(0).count == 0);
    CHECK(key_ranges::one(3, 2, 10).count == 0);
    const key_ranges a = key_ranges::all(7);
    CHECK((a.count == 1 && a.r[0].begin == 0 && a.r[0].end == 7));
  }
  SECTION("more ranges than the capacity merge into a cover") {
    key_ranges r;
    for (index_t s : {60, 0, 40, 20, 80, 100})  // six disjoint ranges [s, s + 5)
      r.add(s, s + 5, 200);
    INFO(ranges_str(r));
    CHECK(r.count == key_ranges::capacity);
    CHECK(well_formed(r, 200));
    const auto c = cover_of(r, 200);
    for (index_t s : {60, 0, 40, 20, 80, 100})
      for (index_t k = s; k < s + 5; ++k) CHECK(c[std::size_t(k)]);
    CHECK(r.r[0].begin == 0);
    CHECK(r.r[r.count - 1].end == 105);
  }
  SECTION("random additions, exhaustively checked") {
    std::mt19937 gen(7);
    const index_t kv_len = 64;
    std::uniform_int_distribution<index_t> pos(-10, kv_len + 10), len(0, 12), nadd(0, 10);
    long bad_form = 0, missing = 0, inexact = 0, merged = 0;
    for (int trial = 0; trial < 20000; ++trial) {
      key_ranges r;
      std::vector<char> want(std::size_t(kv_len), 0);
      int max_runs = 0;
      const index_t n = nadd(gen);
      for (index_t i = 0; i < n; ++i) {
        const index_t b = pos(gen), e = b + len(gen) - 2;  // sometimes empty or reversed
        r.add(b, e, kv_len);
        for (index_t k = std::max<index_t>(0, b); k < std::min(kv_len, e); ++k) want[std::size_t(k)] = 1;
        max_runs = std::max(max_runs, runs(want));
        // after every addition: well formed and a cover of everything added so far
        bad_form += !well_formed(r, kv_len);
        const auto got = cover_of(r, kv_len);
        for (index_t k = 0; k < kv_len; ++k) missing += want[std::size_t(k)] && !got[std::size_t(k)];
      }
      // Never more runs than the capacity: nothing was merged, so exactly the union.
      if (max_runs <= key_ranges::capacity)
        inexact += cover_of(r, kv_len) != want;
      else
        ++merged;
    }
    CHECK(bad_form == 0);
    CHECK(missing == 0);
    CHECK(inexact == 0);
    CHECK(merged > 1000);  // the merging path ran often
  }
  SECTION("add(key_ranges) adds every range of the other list") {
    key_ranges a, b;
    a.add(0, 3, 50), a.add(10, 12, 50);
    b.add(2, 6, 50), b.add(20, 30, 50), b.add(40, 60, 50);
    a.add(b, 50);
    CHECK(well_formed(a, 50));
    CHECK(a.count == 4);
    const auto c = cover_of(a, 50);
    std::vector<char> want(50, 0);
    for (auto rr : {std::pair<int, int>{0, 6}, {10, 12}, {20, 30}, {40, 50}})
      for (int k = rr.first; k < rr.second; ++k) want[std::size_t(k)] = 1;
    CHECK(c == want);
  }
}

TEST_CASE("key_ranges: intersect holds every key of both lists", "[masks][key_ranges]") {
  SECTION("examples") {
    key_ranges a, b;
    a.add(0, 10, 100), a.add(20, 30, 100);
    b.add(5, 25, 100);
    const key_ranges c = key_ranges::intersect(a, b, 100);
    CHECK(c.count == 2);
    CHECK((c.r[0].begin == 5 && c.r[0].end == 10 && c.r[1].begin == 20 && c.r[1].end == 25));
    CHECK(key_ranges::intersect(a, key_ranges{}, 100).count == 0);
    CHECK(key_ranges::intersect(a, key_ranges::one(10, 20, 100), 100).count == 0);  // touching only
  }
  SECTION("random lists, exhaustively checked") {
    std::mt19937 gen(11);
    const index_t kv_len = 80;
    std::uniform_int_distribution<index_t> pos(-5, kv_len + 5), len(1, 15), nadd(0, 8);
    long bad_form = 0, missing = 0, inexact = 0;
    for (int trial = 0; trial < 20000; ++trial) {
      key_ranges a, b;
      for (index_t i = nadd(gen); i > 0; --i) {
        const index_t s = pos(gen);
        a.add(s, s + len(gen), kv_len);
      }
      for (index_t i = nadd(gen); i > 0; --i) {
        const index_t s = pos(gen);
        b.add(s, s + len(gen), kv_len);
      }
      const key_ranges c = key_ranges::intersect(a, b, kv_len);
      bad_form += !well_formed(c, kv_len);
      const auto ca = cover_of(a, kv_len), cb = cover_of(b, kv_len), cc = cover_of(c, kv_len);
      std::vector<char> want(static_cast<std::size_t>(kv_len));
      for (index_t k = 0; k < kv_len; ++k) want[std::size_t(k)] = ca[std::size_t(k)] && cb[std::size_t(k)];
      for (index_t k = 0; k < kv_len; ++k) missing += want[std::size_t(k)] && !cc[std::size_t(k)];
      if (runs(want) <= key_ranges::capacity) inexact += cc != want;
    }
    CHECK(bad_form == 0);
    CHECK(missing == 0);
    CHECK(inexact == 0);
  }
}

// ------------------------------------------------------------------------------------------
// Primitives: sound and exact

TEST_CASE("masks: no_mask and causal tile answers", "[masks][tiles]") {
  for (index_t L : {1, 8, 21}) {
    expect_sound("no_mask", attnkit::no_mask{}, [](index_t, index_t, index_t, index_t) { return true; }, L, 2, 3, true);
    expect_sound("causal", attnkit::causal{}, [](index_t, index_t, index_t q, index_t k) { return def_causal(q, k); }, L,
                 2, 3, true);
  }
}

TEST_CASE("masks: sliding_window tile answers, widths 1 .. beyond the sequence", "[masks][tiles]") {
  for (index_t L : {1, 8, 21})
    for (index_t w : {1, 2, 3, 5, 8, 20, 21, 22, 37, 128}) {
      expect_sound("sliding_window{" + std::to_string(w) + "}", attnkit::sliding_window{w},
                   [w](index_t, index_t, index_t q, index_t k) { return def_sliding(w, q, k); }, L, 1, 2, true);
    }
}

TEST_CASE("masks: local_window tile answers", "[masks][tiles]") {
  const std::pair<index_t, index_t> lr[] = {{0, 0}, {1, 0}, {0, 1}, {2, 3}, {5, 0}, {0, 7}, {20, 20}, {40, 2}, {3, 40}};
  for (index_t L : {1, 8, 21})
    for (auto p : lr) {
      const index_t l = p.first, r = p.second;
      expect_sound("local_window{" + std::to_string(l) + ", " + std::to_string(r) + "}", attnkit::local_window{l, r},
                   [l, r](index_t, index_t, index_t q, index_t k) { return def_local(l, r, q, k); }, L, 1, 2, true);
    }
}

TEST_CASE("masks: sink_tokens tile answers", "[masks][tiles]") {
  for (index_t L : {1, 8, 21})
    for (index_t n : {0, 1, 2, 4, 20, 21, 30}) {
      expect_sound("sink_tokens{" + std::to_string(n) + "}", attnkit::sink_tokens{n},
                   [n](index_t, index_t, index_t, index_t k) { return def_sink(n, k); }, L, 1, 2, true);
    }
}

TEST_CASE("masks: block_mask tile answers, block sizes and layouts", "[masks][tiles]") {
  const index_t heads = 3;
  std::uint32_t seed = 1;
  for (index_t L : {1, 8, 21})
    for (index_t bq : {1, 2, 3, 7, 16, 64, 100})
      for (index_t bk : {1, 2, 3, 7, 16, 64, 100})
        for (index_t hb : {index_t(1), heads})
          for (double density : {0.0, 0.3, 0.7, 1.0}) {
            bitmap bm(hb, L, bq, bk);
            bm.random(seed++, density, /*zero_row=*/density > 0 && density < 1 ? 1 : -1);
            const auto m = bm.mask();
            expect_sound(bm.str() + " density " + std::to_string(density), m,
                         [&bm](index_t, index_t h, index_t q, index_t k) { return bm.allowed(h, q, k); }, L, 1, heads,
                         true);
          }
}

// ------------------------------------------------------------------------------------------
// mask_fn, with and without a tile answer

TEST_CASE("masks: mask_fn without a tile answer is partial everywhere and visits every key", "[masks][tiles]") {
  const auto m = attnkit::mask_fn([](index_t b, index_t h, index_t q, index_t k) { return def_doc(b, h, q, k); });
  for (index_t L : {1, 8, 21}) expect_sound("mask_fn(doc)", m, def_doc, L);
  CHECK(m.classify(0, 0, 0, 4, 0, 4) == tile_kind::partial);
  CHECK(m.classify(0, 0, 3, 3, 0, 4) == tile_kind::empty);
  CHECK(m.classify(0, 0, 0, 4, 5, 5) == tile_kind::empty);
  const key_ranges r = m.keys(0, 0, 3, 4, 17);
  CHECK((r.count == 1 && r.r[0].begin == 0 && r.r[0].end == 17));
  CHECK(m.tile_hint() == 0);
}

TEST_CASE("masks: mask_fn with a tile answer uses it", "[masks][tiles]") {
  const auto exact = attnkit::mask_fn(def_doc, doc_tile);
  for (index_t L : {1, 8, 21}) expect_sound("mask_fn(doc, exact tile answer)", exact, def_doc, L, 2, 3);
  // Its answers are the callable's (checked exact on one shape: no tile is partial by default).
  const tile_report r = check_tiles(exact, def_doc, 21, 2, 3);
  CHECK(r.not_exact == 0);
  // A tile answer that is always partial is sound too.
  const auto unsure = attnkit::mask_fn(def_doc, [](index_t, index_t, index_t, index_t, index_t, index_t) {
    return tile_kind::partial;
  });
  expect_sound("mask_fn(doc, always partial)", unsure, def_doc, 21);
  // Empty tiles are empty without asking the callable.
  int calls = 0;
  const auto counting = attnkit::mask_fn(def_doc, [&calls](index_t, index_t, index_t, index_t, index_t, index_t) {
    ++calls;
    return tile_kind::full;
  });
  CHECK(counting.classify(0, 0, 5, 5, 0, 3) == tile_kind::empty);
  CHECK(counting.classify(0, 0, 0, 3, 7, 2) == tile_kind::empty);
  CHECK(calls == 0);
  CHECK(counting.classify(0, 0, 0, 3, 0, 3) == tile_kind::full);
  CHECK(calls == 1);
}

// ------------------------------------------------------------------------------------------
// Compositions

TEST_CASE("masks: compositions with & and |, nested", "[masks][tiles][compose]") {
  using attnkit::causal;
  using attnkit::local_window;
  using attnkit::sink_tokens;
  using attnkit::sliding_window;
  const index_t heads = 3;
  for (index_t L : {1, 8, 21}) {
    bitmap per_head(heads, L, 3, 2), shared(1, L, 4, 5), fine(heads, L, 1, 1);
    per_head.random(100 + std::uint32_t(L), 0.4, 2);
    shared.random(200 + std::uint32_t(L), 0.5, 0, 1);
    fine.random(300 + std::uint32_t(L), 0.25);  // many short key ranges: more than 4 get merged
    const auto ph = per_head.mask(), sh = shared.mask(), fn = fine.mask();
    auto ph_def = [&](index_t h, index_t q, index_t k) { return per_head.allowed(h, q, k); };
    auto sh_def = [&](index_t h, index_t q, index_t k) { return shared.allowed(h, q, k); };
    auto fn_def = [&](index_t h, index_t q, index_t k) { return fine.allowed(h, q, k); };
    for (index_t w : {1, 3, 6, 30}) {
      const std::string ws = std::to_string(w);
      expect_sound("StreamingLLM (sliding_window{" + ws + "} | sink_tokens{4}) & causal{}",
                   (sliding_window{w} | sink_tokens{4}) & causal{},
                   [w](index_t, index_t, index_t q, index_t k) { return (def_sliding(w, q, k) || def_sink(4, k)) && def_causal(q, k); },
                   L);
      expect_sound("sliding_window{" + ws + "} | sink_tokens{2} (no causal)", sliding_window{w} | sink_tokens{2},
                   [w](index_t, index_t, index_t q, index_t k) { return def_sliding(w, q, k) || def_sink(2, k); }, L);
      expect_sound("sliding_window{" + ws + "} & causal{}", sliding_window{w} & causal{},
                   [w](index_t, index_t, index_t q, index_t k) { return def_sliding(w, q, k); }, L);
      expect_sound("local_window{" + ws + ", 2} & per-head block_mask", local_window{w, 2} & ph,
                   [&, w](index_t, index_t h, index_t q, index_t k) { return def_local(w, 2, q, k) && ph_def(h, q, k); }, L);
      expect_sound("(per-head block_mask | sink_tokens{1}) & causal{}", (ph | sink_tokens{1}) & causal{},
                   [&](index_t, index_t h, index_t q, index_t k) { return (ph_def(h, q, k) || def_sink(1, k)) && def_causal(q, k); },
                   L);
      expect_sound("((sliding_window{" + ws + "} | sink_tokens{3}) & (block_mask | local_window{0, 2}))",
                   (sliding_window{w} | sink_tokens{3}) & (sh | local_window{0, 2}),
                   [&, w](index_t, index_t h, index_t q, index_t k) {
                     return (def_sliding(w, q, k) || def_sink(3, k)) && (sh_def(h, q, k) || def_local(0, 2, q, k));
                   },
                   L);
      expect_sound("mask_fn(doc, tile) & sliding_window{" + ws + "}", attnkit::mask_fn(def_doc, doc_tile) & sliding_window{w},
                   [w](index_t b, index_t h, index_t q, index_t k) { return def_doc(b, h, q, k) && def_sliding(w, q, k); }, L);
      expect_sound("mask_fn(doc) | sliding_window{" + ws + "}", attnkit::mask_fn(def_doc) | sliding_window{w},
                   [w](index_t b, index_t h, index_t q, index_t k) { return def_doc(b, h, q, k) || def_sliding(w, q, k); }, L);
    }
    expect_sound("fine block_mask | local_window{0, 0} (more than 4 key ranges)", fn | local_window{0, 0},
                 [&](index_t, index_t h, index_t q, index_t k) { return fn_def(h, q, k) || def_local(0, 0, q, k); }, L);
    expect_sound("fine block_mask & shared block_mask", fn & sh,
                 [&](index_t, index_t h, index_t q, index_t k) { return fn_def(h, q, k) && sh_def(h, q, k); }, L);
    expect_sound("sink_tokens{2} | sink_tokens{5} | sliding_window{2}", sink_tokens{2} | sink_tokens{5} | sliding_window{2},
                 [](index_t, index_t, index_t q, index_t k) { return def_sink(5, k) || def_sliding(2, q, k); }, L);
    expect_sound("causal & no_mask, no_mask | causal", (causal{} & attnkit::no_mask{}) | (attnkit::no_mask{} & causal{}),
                 [](index_t, index_t, index_t q, index_t k) { return def_causal(q, k); }, L);
    expect_sound("((sw{4} & block) | (local{1,1} & sink{6})) & ((doc | causal) & sw{9})",
                 ((sliding_window{4} & ph) | (local_window{1, 1} & sink_tokens{6})) &
                     ((attnkit::mask_fn(def_doc, doc_tile) | causal{}) & sliding_window{9}),
                 [&](index_t b, index_t h, index_t q, index_t k) {
                   return ((def_sliding(4, q, k) && ph_def(h, q, k)) || (def_local(1, 1, q, k) && def_sink(6, k))) &&
                          (def_doc(b, h, q, k) || def_causal(q, k)) && def_sliding(9, q, k);
                 },
                 L);
    // Disjoint windows: gaps between key ranges, more than the capacity after the union.
    expect_sound("five separated bands", (local_window{0, 0} | (local_window{3, 0} & attnkit::mask_fn([](index_t, index_t, index_t q, index_t k) { return q - k == 3; }))) |
                                             (sink_tokens{1} | (sliding_window{9} & local_window{8, 0})),
                 [](index_t, index_t, index_t q, index_t k) {
                   return q == k || q - k == 3 || k < 1 || def_sliding(9, q, k);
                 },
                 L);
  }
}

TEST_CASE("masks: a score modifier keeps the mask's answers", "[masks][tiles][score]") {
  using attnkit::causal;
  using attnkit::sink_tokens;
  using attnkit::sliding_window;
  const auto slopes = attnkit::alibi_slopes(3);
  const auto m = attnkit::with_score((sliding_window{5} | sink_tokens{2}) & causal{}, attnkit::alibi(slopes.data()));
  expect_sound("with_score(StreamingLLM, alibi)", m,
               [](index_t, index_t, index_t q, index_t k) { return (def_sliding(5, q, k) || def_sink(2, k)) && def_causal(q, k); },
               21);
  CHECK(m.score(1.5f, 0, 2, 10, 4) == 1.5f + slopes[2] * float(4 - 10));
}

TEST_CASE("masks: tile_hint follows a block mask, through compositions", "[masks]") {
  bitmap bm(1, 40, 8, 10);
  const auto b = bm.mask();
  CHECK(attnkit::no_mask{}.tile_hint() == 0);
  CHECK(attnkit::sliding_window{4}.tile_hint() == 0);
  CHECK(b.tile_hint() == 10);
  CHECK((attnkit::causal{} & b).tile_hint() == 10);
  CHECK((b | attnkit::sink_tokens{2}).tile_hint() == 10);
  CHECK(((attnkit::sliding_window{3} | attnkit::sink_tokens{2}) & b).tile_hint() == 10);
}

TEST_CASE("masks: ALiBi slopes follow Press et al.", "[masks][score]") {
  // Powers of two: 2^(-8 i / n), i = 1..n.
  for (index_t n : {1, 2, 4, 8, 16}) {
    const auto s = attnkit::alibi_slopes(n);
    REQUIRE(index_t(s.size()) == n);
    for (index_t i = 0; i < n; ++i) CHECK(s[std::size_t(i)] == Approx(std::pow(2.0, -8.0 * double(i + 1) / double(n))).epsilon(1e-6));
  }
  // Other counts (reference implementation of the paper's code): the slopes of the largest
  // power of two p below n, then every other slope of 2p.
  const std::vector<double> six = {std::pow(2.0, -2), std::pow(2.0, -4), std::pow(2.0, -6), std::pow(2.0, -8),
                                   std::pow(2.0, -1), std::pow(2.0, -3)};
  const auto s6 = attnkit::alibi_slopes(6);
  REQUIRE(s6.size() == 6);
  for (std::size_t i = 0; i < 6; ++i) CHECK(s6[i] == Approx(six[i]).epsilon(1e-6));
  const auto s12 = attnkit::alibi_slopes(12);
  REQUIRE(s12.size() == 12);
  for (std::size_t i = 0; i < 8; ++i) CHECK(s12[i] == Approx(std::pow(2.0, -double(i + 1))).epsilon(1e-6));
  for (std::size_t i = 0; i < 4; ++i) CHECK(s12[8 + i] == Approx(std::pow(2.0, -0.5 * double(2 * i + 1))).epsilon(1e-6));
}

// ------------------------------------------------------------------------------------------
// Regression (fixed in 7507d4e): windows whose sides are close to INT64_MAX (a natural way to
// say "unbounded") overflowed in keys() and classify() when the query range starts before
// position 0 (Lq > Lk) or, for local_window's right side, for any query range: tiles holding
// allowed pairs were called empty and their keys dropped.

TEST_CASE("masks: windows as wide as INT64_MAX keep sound tile answers", "[masks][tiles]") {
  constexpr index_t M = std::numeric_limits<index_t>::max();
  expect_sound("sliding_window{INT64_MAX}", attnkit::sliding_window{M},
               [](index_t, index_t, index_t q, index_t k) { return def_sliding(M, q, k); }, 21, 1, 1);
  expect_sound("local_window{INT64_MAX, 0}", attnkit::local_window{M, 0},
               [](index_t, index_t, index_t q, index_t k) { return def_local(M, 0, q, k); }, 21, 1, 1);
  expect_sound("local_window{0, INT64_MAX}", attnkit::local_window{0, M},
               [](index_t, index_t, index_t q, index_t k) { return def_local(0, M, q, k); }, 21, 1, 1);
  expect_sound("local_window{INT64_MAX, INT64_MAX}", attnkit::local_window{M, M},
               [](index_t, index_t, index_t, index_t) { return true; }, 21, 1, 1);
}
