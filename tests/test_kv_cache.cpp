// attnkit::kv_cache (kv_cache.hpp): storage after appends in pieces, attend() against
// attention() on the same keys held as one tensor (bitwise for fp32, contiguous and paged),
// StreamingLLM eviction (held positions, and decode against the double reference over the
// surviving rows gathered independently), 16-bit storage rounding, errors.
//
// The yardsticks hold K/V as plain [batch, kv_heads, seq, dim] float vectors indexed by
// absolute position, so they do not share the cache's slot or page arithmetic.
#include "support/attnkit_test.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <set>
#include <vector>

using attnkit::bf16;
using attnkit::fp16;
using attnkit::index_t;
using attnkit::kv_cache;
using attnkit::kv_cache_config;
using attnkit::kv_layout;
using attnkit::tensor_view;
using attnkit_test::message_of;

namespace {

/// A dense float tensor [b, h, s, d] in bhsd order with a view.
struct dense {
  index_t b = 0, h = 0, s = 0, d = 0;
  std::vector<float> x;
  dense(index_t b_, index_t h_, index_t s_, index_t d_)
      : b(b_), h(h_), s(s_), d(d_), x(std::size_t(b * h * s * d)) {}
  float& at(index_t i, index_t j, index_t t, index_t k) {
    return x[std::size_t(((i * h + j) * s + t) * d + k)];
  }
  float at(index_t i, index_t j, index_t t, index_t k) const {
    return x[std::size_t(((i * h + j) * s + t) * d + k)];
  }
  tensor_view<float> view() { return attnkit::make_bhsd(x.data(), b, h, s, d); }
  tensor_view<const float> view() const { return attnkit::make_bhsd(x.data(), b, h, s, d); }
  void fill(std::mt19937& rng) {
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    for (float& v : x) v = u(rng);
  }
};

/// Tokens [t0, t0 + n) of `src` as a strided view into a copy laid out [b, n, h, d] with the
/// dim padded by 3 (rows not packed, heads interleaved), so append() sees odd strides.
struct piece {
  std::vector<float> buf;
  tensor_view<const float> view;
  piece(const dense& src, index_t t0, index_t n) {
    const index_t row = src.d + 3;
    buf.assign(std::size_t(src.b * n * src.h * row), std::nanf(""));
    for (index_t i = 0; i < src.b; ++i)
      for (index_t j = 0; j < src.h; ++j)
        for (index_t t = 0; t < n; ++t)
          for (index_t k = 0; k < src.d; ++k)
            buf[std::size_t(((i * n + t) * src.h + j) * row + k)] = src.at(i, j, t0 + t, k);
    view = tensor_view<const float>(buf.data(), {{src.b, src.h, n, src.d}},
                                    {{n * src.h * row, row, src.h * row, 1}});
  }
};

/// Keys at the given absolute positions, in that order, rounded through T.
template <class T>
dense gather(const dense& src, const std::vector<index_t>& positions) {
  dense g(src.b, src.h, index_t(positions.size()), src.d);
  for (index_t i = 0; i < src.b; ++i)
    for (index_t j = 0; j < src.h; ++j)
      for (std::size_t t = 0; t < positions.size(); ++t)
        for (index_t k = 0; k < src.d; ++k)
          g.at(i, j, index_t(t), k) = float(T(src.at(i, j, positions[t], k)));
  return g;
}

/// What slot s of sequence b of the cache holds, widened: through keys()/values() or the
/// page table, as a user would read it.
template <class T>
float held(const kv_cache<T>& c, bool values, index_t b, index_t h, index_t s, index_t k) {
  if (c.config().layout == kv_layout::contiguous) {
    const auto v = values ? c.values() : c.keys();
    return attnkit::to_float(v(b, h, s, k));
  }
  const auto pool = values ? c.v_pages() : c.k_pages();
  const auto pt = c.page_table();
  const std::int32_t page = pt.data[b * pt.stride + s / pool.seq()];
  REQUIRE(page >= 0);
  REQUIRE(page < pool.batch());
  return attnkit::to_float(pool(page, h, s % pool.seq(), k));
}

/// Every held slot equals T(source row at position_of(slot)), bitwise.
template <class T>
void check_holds(const kv_cache<T>& c, const dense& k, const dense& v) {
  for (index_t b = 0; b < c.batch(); ++b)
    for (index_t s = 0; s < c.size(); ++s) {
      const index_t p = c.position_of(b, s);
      for (index_t h = 0; h < c.kv_heads(); ++h) {
        for (index_t j = 0; j < k.d; ++j) {
          const float want = float(T(k.at(b, h, p, j))), got = held(c, false, b, h, s, j);
          if (std::memcmp(&want, &got, 4) != 0) FAIL("key slot " << s << " (position " << p << ") differs");
        }
        for (index_t j = 0; j < v.d; ++j) {
          const float want = float(T(v.at(b, h, p, j))), got = held(c, true, b, h, s, j);
          if (std::memcmp(&want, &got, 4) != 0) FAIL("value slot " << s << " (position " << p << ") differs");
        }
      }
    }
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

kv_cache_config config(kv_layout layout, index_t page_size, index_t capacity, index_t sink = 0,
                       index_t window = 0) {
  kv_cache_config c;
  c.batch = 2;
  c.kv_heads = 3;
  c.head_dim = 24;
  c.v_dim = 16;
  c.capacity = capacity;
  c.layout = layout;
  c.page_size = page_size;
  c.sink = sink;
  c.window = window;
  return c;
}

struct layout_case {
  kv_layout layout;
  index_t page_size;
};
const layout_case layouts[] = {{kv_layout::contiguous, 16}, {kv_layout::paged, 16}, {kv_layout::paged, 5}};

template <class T>
void check_pieces(const layout_case& lc) {
  CAPTURE(int(lc.layout), lc.page_size);
  std::mt19937 rng(11);
  dense k(2, 3, 37, 24), v(2, 3, 37, 16);
  k.fill(rng);
  v.fill(rng);
  kv_cache<T> c(config(lc.layout, lc.page_size, 40));
  index_t t = 0;
  for (index_t n : {1, 7, 16, 0, 13}) {
    const piece pk(k, t, n), pv(v, t, n);
    c.append(pk.view, pv.view);
    t += n;
    REQUIRE(c.position() == t);
    REQUIRE(c.size() == t);
    check_holds(c, k, v);
  }
  std::vector<index_t> pos(std::size_t(c.size()));
  c.slot_positions(1, pos.data());
  for (index_t s = 0; s < c.size(); ++s) REQUIRE(pos[std::size_t(s)] == s);
  if (lc.layout == kv_layout::paged) {
    REQUIRE(c.pages_in_use() == 2 * ((37 + lc.page_size - 1) / lc.page_size));
    REQUIRE(c.seq_lens().data[0] == 37);
    REQUIRE(c.seq_lens().data[1] == 37);
  }
}

}  // namespace

TEST_CASE("kv_cache: appending in pieces holds the tokens as one tensor, rounded like the storage type",
          "[kv_cache]") {
  for (const auto& lc : layouts) {
    check_pieces<float>(lc);
    check_pieces<bf16>(lc);
    check_pieces<fp16>(lc);
  }
  // The rounding itself: bf16 storage keeps exactly attnkit::bf16(x), ties to even included.
  kv_cache_config c1 = config(kv_layout::contiguous, 16, 4);
  c1.batch = 1, c1.kv_heads = 1, c1.head_dim = 4, c1.v_dim = 4;
  kv_cache<bf16> c(c1);
  const float xs[4] = {1.00390625f /* tie, rounds down to 1 */, 1.01171875f /* tie, rounds up */, -3.3e-3f,
                       65504.f};
  const auto x = attnkit::make_bhsd(xs, 1, 1, 1, 4);
  c.append(x, x);
  for (int j = 0; j < 4; ++j) {
    CAPTURE(j);
    REQUIRE(c.keys()(0, 0, 0, j).bits == bf16(xs[j]).bits);
    REQUIRE(c.values()(0, 0, 0, j).bits == bf16(xs[j]).bits);
  }
  REQUIRE(float(c.keys()(0, 0, 0, 0)) == 1.f);
  REQUIRE(float(c.keys()(0, 0, 0, 1)) == 1.015625f);
}

TEST_CASE("kv_cache: attend() equals attention() on the same keys as one tensor", "[kv_cache]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  std::mt19937 rng(5);
  const index_t len = 45, q_heads = 6;
  dense k(2, 3, len, 24), v(2, 3, len, 16);
  k.fill(rng);
  v.fill(rng);
  for (const auto& lc : layouts) {
    CAPTURE(int(lc.layout), lc.page_size);
    kv_cache<float> c(config(lc.layout, lc.page_size, 64));
    kv_cache<bf16> cb(config(lc.layout, lc.page_size, 64));
    index_t t = 0;
    for (index_t n : {29, 1, 15}) {
      const piece pk(k, t, n), pv(v, t, n);
      c.append(pk.view, pv.view);
      cb.append(pk.view, pv.view);
      t += n;
      // The same keys as plain tensors: the fp32 source and its bf16 rounding.
      std::vector<index_t> all(static_cast<std::size_t>(t));
      for (index_t p = 0; p < t; ++p) all[std::size_t(p)] = p;
      const dense kt = gather<float>(k, all), vt = gather<float>(v, all);
      std::vector<bf16> kb(kt.x.size()), vb(vt.x.size());
      for (std::size_t i = 0; i < kb.size(); ++i) kb[i] = bf16(kt.x[i]);
      for (std::size_t i = 0; i < vb.size(); ++i) vb[i] = bf16(vt.x[i]);
      const auto kbv = attnkit::make_bhsd(kb.data(), 2, 3, t, 24);
      const auto vbv = attnkit::make_bhsd(vb.data(), 2, 3, t, 16);
      for (index_t lq : {index_t(1), index_t(4), index_t(16), index_t(20)}) {
        CAPTURE(t, lq);
        dense q(2, q_heads, lq, 24);
        q.fill(rng);
        dense out(2, q_heads, lq, 16), want(2, q_heads, lq, 16), lse(2, q_heads, lq, 1),
            want_lse(2, q_heads, lq, 1);
        // fp32, causal: bitwise. Mostly one thread: these calls last microseconds, and on a
        // loaded machine each parallel region can cost a scheduler time slice. The output
        // does not depend on the thread count, so one and two threads must agree as well.
        attnkit::attention_options one, two;
        one.num_threads = 1;
        two.num_threads = 2;
        c.attend(q.view(), out.view(), attnkit::causal{}, one, lse.view());
        attnkit::attention(q.view(), kt.view(), vt.view(), want.view(), attnkit::causal{}, one,
                           want_lse.view());
        REQUIRE(same_bits(out.x, want.x));
        REQUIRE(same_bits(lse.x, want_lse.x));
        // fp32, no mask, two threads against one (after the last append only: time).
        if (t == len) {
          c.attend(q.view(), out.view(), attnkit::no_mask{}, two);
          attnkit::attention(q.view(), kt.view(), vt.view(), want.view(), attnkit::no_mask{}, one);
          REQUIRE(same_bits(out.x, want.x));
        }
        // bf16 storage against attention() over a packed bf16 tensor of the same values.
        const auto window = attnkit::sliding_window{7} | attnkit::sink_tokens{2};
        cb.attend(q.view(), out.view(), window, one);
        attnkit::attention(q.view(), kbv, vbv, want.view(), window, one);
        REQUIRE(same_bits(out.x, want.x));
      }
    }
  }
}

TEST_CASE("kv_cache: eviction keeps the sinks and the last window tokens, with their positions",
          "[kv_cache]") {
  std::mt19937 rng(3);
  const index_t total = 80;
  dense k(2, 3, total, 24), v(2, 3, total, 16);
  k.fill(rng);
  v.fill(rng);
  struct evict_case {
    index_t sink, window;
    std::vector<index_t> steps;
  };
  const evict_case cases[] = {{4, 10, {3, 1, 1, 5, 2, 1, 1, 1, 9, 1, 12, 1, 1}},
                              {4, 10, {25, 1, 1, 30}},  // prefill longer than the window
                              {0, 8, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 17, 3}},
                              {3, 1, {2, 1, 1, 1, 7, 1}},
                              {6, 5, {3, 2, 1, 1, 4}}};  // sinks filled across appends
  for (const auto& lc : layouts)
    for (const auto& ec : cases) {
      CAPTURE(int(lc.layout), lc.page_size, ec.sink, ec.window);
      kv_cache<bf16> c(config(lc.layout, lc.page_size, 0, ec.sink, ec.window));
      REQUIRE(c.capacity() == ec.sink + ec.window);
      REQUIRE(c.evicting());
      index_t t = 0;
      for (index_t n : ec.steps) {
        const piece pk(k, t, n), pv(v, t, n);
        c.append(pk.view, pv.view);
        t += n;
        CAPTURE(t);
        REQUIRE(c.position() == t);
        REQUIRE(c.size() == std::min(t, ec.sink + ec.window));
        // Held positions: exactly {0..sink-1} and the last `window` of the sequence.
        std::set<index_t> want;
        for (index_t p = 0; p < t; ++p)
          if (p < ec.sink || p >= t - ec.window) want.insert(p);
        for (index_t b = 0; b < 2; ++b) {
          std::vector<index_t> pos(std::size_t(c.size()));
          c.slot_positions(b, pos.data());
          REQUIRE(std::set<index_t>(pos.begin(), pos.end()) == want);
          for (index_t s = 0; s < std::min(ec.sink, c.size()); ++s) REQUIRE(pos[std::size_t(s)] == s);
        }
        check_holds(c, k, v);
        if (lc.layout == kv_layout::paged)
          REQUIRE(c.pages_in_use() <= 2 * ((ec.sink + ec.window + lc.page_size - 1) / lc.page_size));
      }
    }
}

TEST_CASE("kv_cache: decode with eviction equals attention over the surviving tokens", "[kv_cache]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  std::mt19937 rng(9);
  const index_t sink = 4, window = 16, prompt = 41, steps = 12, q_heads = 6;
  const index_t total = prompt + steps + 3;
  dense k(2, 3, total, 24), v(2, 3, total, 16), qs(2, q_heads, total, 24);
  k.fill(rng);
  v.fill(rng);
  qs.fill(rng);
  auto survivors = [&](index_t t) {
    std::vector<index_t> p;
    for (index_t i = 0; i < t; ++i)
      if (i < sink || i >= t - window) p.push_back(i);
    return p;
  };
  // out against the double reference of the gathered rows: the fp32 criterion of the dense
  // tests, atol scaled by max|v| (<= 1 here).
  auto check_close = [](const dense& out, const attnkit::reference::result& ref) {
    double err = 0;
    for (index_t b = 0; b < out.b; ++b)
      for (index_t h = 0; h < out.h; ++h)
        for (index_t i = 0; i < out.s; ++i)
          for (index_t j = 0; j < out.d; ++j) {
            const double r = ref.o(b, h, i, j);
            err = std::max(err, std::fabs(out.at(b, h, i, j) - r) / (1e-5 + 5e-6 * std::fabs(r)));
          }
    REQUIRE(err <= 1.0);
  };
  attnkit::attention_options one;  // see the attend() test on threads
  one.num_threads = 1;
  for (const auto& lc : layouts) {
    CAPTURE(int(lc.layout), lc.page_size);
    kv_cache<float> c(config(lc.layout, lc.page_size, 0, sink, window));
    kv_cache<fp16> ch(config(lc.layout, lc.page_size, 0, sink, window));
    const piece pk(k, 0, prompt), pv(v, 0, prompt);
    c.append(pk.view, pv.view);
    ch.append(pk.view, pv.view);
    index_t t = prompt;
    for (index_t step = 0; step < steps; ++step, ++t) {
      CAPTURE(t);
      const piece sk(k, t, 1), sv(v, t, 1);
      c.append(sk.view, sv.view);
      ch.append(sk.view, sv.view);
      // The query of the newest token: row t of qs.
      dense q(2, q_heads, 1, 24), out(2, q_heads, 1, 16);
      for (index_t b = 0; b < 2; ++b)
        for (index_t h = 0; h < q_heads; ++h)
          for (index_t j = 0; j < 24; ++j) q.at(b, h, 0, j) = qs.at(b, h, t, j);
      const auto keep = survivors(t + 1);
      c.attend(q.view(), out.view(), attnkit::no_mask{}, one);
      const dense kg = gather<float>(k, keep), vg = gather<float>(v, keep);
      check_close(out, attnkit::reference::attention(q.view(), kg.view(), vg.view()));
      // fp16 storage: the reference reads the same rounded values.
      ch.attend(q.view(), out.view(), attnkit::no_mask{}, one);
      const dense kh = gather<fp16>(k, keep), vh = gather<fp16>(v, keep);
      check_close(out, attnkit::reference::attention(q.view(), kh.view(), vh.view()));
    }
    // A chunk of 3 tokens after eviction with the position-causal mask of kv_cache.hpp's
    // comment: row i sees the survivors up to its own position.
    const piece ck(k, t, 3), cv(v, t, 3);
    c.append(ck.view, cv.view);
    t += 3;
    dense q(2, q_heads, 3, 24), out(2, q_heads, 3, 16);
    for (index_t b = 0; b < 2; ++b)
      for (index_t h = 0; h < q_heads; ++h)
        for (index_t i = 0; i < 3; ++i)
          for (index_t j = 0; j < 24; ++j) q.at(b, h, i, j) = qs.at(b, h, t - 3 + i, j);
    const index_t shift = c.position() - c.size();
    c.attend(q.view(), out.view(), attnkit::mask_fn([&c, shift](index_t b, index_t, index_t qp, index_t kp) {
               return c.position_of(b, kp) <= qp + shift;
             }),
             one);
    // Gathered in position order the queries are the last three rows, so plain causal
    // (bottom-right) over the gathered rows is causal over positions.
    const auto keep = survivors(t);
    const dense kg = gather<float>(k, keep), vg = gather<float>(v, keep);
    check_close(out, attnkit::reference::attention(q.view(), kg.view(), vg.view(), attnkit::causal{}));
  }
}

TEST_CASE("kv_cache: clear() forgets the tokens and reuses the pages", "[kv_cache]") {
  std::mt19937 rng(1);
  dense k(2, 3, 20, 24), v(2, 3, 20, 16);
  k.fill(rng);
  v.fill(rng);
  kv_cache<float> c(config(kv_layout::paged, 4, 20));
  const piece pk(k, 0, 20), pv(v, 0, 20);
  c.append(pk.view, pv.view);
  const float* pool = c.k_pages().data_handle();
  c.clear();
  REQUIRE(c.position() == 0);
  REQUIRE(c.size() == 0);
  REQUIRE(c.pages_in_use() == 0);
  // An empty cache is a problem with no keys: output 0, lse -inf.
  dense q(2, 3, 1, 24), out(2, 3, 1, 16), lse(2, 3, 1, 1);
  std::fill(out.x.begin(), out.x.end(), 1.f);
  c.attend(q.view(), out.view(), attnkit::no_mask{}, {}, lse.view());
  for (float x : out.x) REQUIRE(x == 0.f);
  for (float x : lse.x) REQUIRE(x == -std::numeric_limits<float>::infinity());
  c.append(pk.view, pv.view);
  REQUIRE(c.k_pages().data_handle() == pool);
  REQUIRE(c.pages_in_use() == 10);
  check_holds(c, k, v);
}

TEST_CASE("kv_cache: errors name the argument and leave the cache unchanged", "[kv_cache]") {
  auto bad_config = [](kv_cache_config cfg) { return message_of([&] { kv_cache<float> c(cfg); }); };
  kv_cache_config cfg = config(kv_layout::contiguous, 16, 8);
  cfg.head_dim = 0;
  CHECK_THAT(bad_config(cfg), Catch::Contains("kv_cache") && Catch::Contains("head_dim 0"));
  cfg = config(kv_layout::contiguous, 16, 8, 4, 0);
  CHECK_THAT(bad_config(cfg), Catch::Contains("config.sink = 4 needs a window"));
  cfg = config(kv_layout::contiguous, 16, 8, 4, 16);
  CHECK_THAT(bad_config(cfg), Catch::Contains("config.capacity must be 0 or sink + window = 20"));
  cfg = config(kv_layout::paged, 0, 8);
  CHECK_THAT(bad_config(cfg), Catch::Contains("config.page_size must be >= 1"));
  cfg = config(kv_layout::contiguous, 16, 0);
  CHECK_THAT(bad_config(cfg), Catch::Contains("config.capacity must be >= 1"));
  cfg = config(kv_layout::paged, 1, index_t(1) << 31);
  CHECK_THAT(bad_config(cfg), Catch::Contains("int32"));

  std::mt19937 rng(2);
  dense k(2, 3, 10, 24), v(2, 3, 10, 16), k_heads(2, 2, 1, 24), v_dim(2, 3, 1, 8), k_one(2, 3, 1, 24);
  k.fill(rng);
  v.fill(rng);
  kv_cache<float> c(config(kv_layout::paged, 4, 9));
  const piece pk(k, 0, 8), pv(v, 0, 8);
  c.append(pk.view, pv.view);
  CHECK_THAT(message_of([&] { c.append(k_heads.view(), v_dim.view()); }),
             Catch::Contains("kv_cache::append") && Catch::Contains("'k_new' has shape [2, 2, 1, 24]") &&
                 Catch::Contains("expected [2, 3, n, 24]"));
  CHECK_THAT(message_of([&] { c.append(k_one.view(), v_dim.view()); }),
             Catch::Contains("'v_new' has shape [2, 3, 1, 8]") && Catch::Contains("expected [2, 3, n, 16]"));
  CHECK_THAT(message_of([&] { c.append(k_one.view(), pv.view); }),
             Catch::Contains("must hold the same number of tokens"));
  const piece pk2(k, 8, 2), pv2(v, 8, 2);
  CHECK_THAT(message_of([&] { c.append(pk2.view, pv2.view); }),
             Catch::Contains("appending 2 tokens to 8 overflows the capacity 9"));
  const tensor_view<const float> null_k(nullptr, {{2, 3, 1, 24}}, {{72, 24, 24, 1}});
  CHECK_THAT(message_of([&] { c.append(null_k, pv2.view); }), Catch::Contains("'k_new' has null data"));
  CHECK_THAT(message_of([&] { c.slot_positions(2, nullptr); }), Catch::Contains("argument 'b' = 2"));
  // Nothing of the failed appends stuck.
  REQUIRE(c.position() == 8);
  REQUIRE(c.size() == 8);
  check_holds(c, k, v);
  // The kernels' own checks still apply through attend().
  dense q(2, 4, 1, 24), out(2, 4, 1, 16);
  CHECK_THAT(message_of([&] { c.attend(q.view(), out.view()); }), Catch::Contains("attention_paged") &&
                                                                      Catch::Contains("[2, 4, 1, 24]") &&
                                                                      Catch::Contains("multiple of"));
}
