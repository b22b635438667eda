// Decode against a KV cache (issue 4): attention() with short queries (Lq <= 16 takes the
// split-KV decode driver, kernels/decode.hpp), bf16/fp16 K/V storage, attention_paged and
// merge_partials.
//
// Accuracy criterion as in test_dense.cpp / test_sparse.cpp (support/sparse_test.hpp,
// check_sparse_case): max|out - ref| <= 2 x max(max|plain fp32 - ref|, 1e-6) and <= 1e-4
// for inputs in [-1, 1]; rows without an allowed key give out exactly 0 and lse -inf (or
// the sink logit); nothing outside the output views is written. Masks are given to the
// reference and the yardstick as test-side lambdas (attnkit::mask_fn), never as attnkit's
// policies. bf16/fp16 cases round the float K/V to the storage type first, so the reference
// (which widens storage types exactly) and the yardstick read the same values.
//
// The decode driver splits each sequence into chunks of decode_plan::chunk(len) =
// max(256, roundup(ceil(len / 32), 64)) keys, visited in tiles on a grid of 256 keys (rows
// read in place) or of 64 (rows padded or gathered first) and clipped to the chunk; the
// lengths below sit on both sides of those boundaries (1, 2, 63..65, 255..257, 8192,
// 10239..10241 (chunks of 320 keys, tiles of 256 and 64 or 192 and 128), ...).
// Properties: bitwise identical output and lse for 1, 2, 3 and all threads and with a host
// executor; attention_paged bitwise equal to attention() per sequence; merge_partials of
// disjoint key ranges equal to one call; a sliding window reads only the window (keys
// outside it hold NaN, which any read would spread into the output).
#include "support/sparse_test.hpp"

#include <array>
#include <numeric>

using namespace attnkit_test;
using attnkit::bf16;
using attnkit::fp16;
using attnkit::index_t;

namespace {

// ------------------------------------------------------------------------------------------
// K/V storage types

enum class kv_type { f32, bf16, f16 };
constexpr kv_type kKvTypes[] = {kv_type::f32, kv_type::bf16, kv_type::f16};

const char* to_string(kv_type t) { return t == kv_type::f32 ? "fp32" : t == kv_type::bf16 ? "bf16" : "fp16"; }

/// Rounds a float tensor's logical elements to the values of storage type `t`.
void round_to(tensor& x, kv_type t) {
  if (t == kv_type::f32) return;
  x.for_each([&](index_t b, index_t h, index_t s, index_t d) {
    float& f = x(b, h, s, d);
    f = t == kv_type::bf16 ? float(bf16(f)) : float(fp16(f));
  });
}

/// A float buffer converted element by element to T, viewed with the same layout (so the
/// padding and guards hold NaN in T too).
template <class T>
struct stored {
  std::vector<T> buf;
  tensor_view<const T> view;
  stored(const std::vector<float>& src, const float* base, const tensor_view<float>& like) : buf(src.size()) {
    for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = T(src[i]);
    view = tensor_view<const T>(buf.data() + (base - src.data()), like.extents(), like.strides());
  }
  explicit stored(const tensor& t) : stored(t.buf, t.view.data_handle(), t.view) {}
};

/// Calls f(k, v) with K and V viewed in storage type `t` (the float values must already be
/// rounded to it).
template <class F>
auto with_kv(kv_type t, const tensor& k, const tensor& v, F&& f) {
  switch (t) {
    case kv_type::bf16: {
      const stored<bf16> sk(k), sv(v);
      return f(sk.view, sv.view);
    }
    case kv_type::f16: {
      const stored<fp16> sk(k), sv(v);
      return f(sk.view, sv.view);
    }
    default: return f(k.cview(), v.cview());
  }
}

// ------------------------------------------------------------------------------------------
// Cases

tensor_spec spec_for(int i) {
  static const tensor_spec specs[] = {{layout::bhsd, padding::none, false},
                                      {layout::bshd, padding::none, false},  // make_bshd strides
                                      {layout::bshd, padding::plus3, true},
                                      {layout::bhsd, padding::odd_lines, false}};
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

/// The test-side chunk length of the decode driver (kernels/decode.hpp).
index_t chunk_of(index_t len) {
  const index_t c = ((len + 31) / 32 + 63) / 64 * 64;
  return std::max<index_t>(c, 256);
}

/// Sets the K and V rows that no query row of the case may see (test-side mask) to NaN: a
/// kernel that reads any of them, even masked, spreads NaN into the output (0 x NaN).
std::function<void(sparse_run&)> poison_unseen(const sparse_case& c, const allowed_fn& def) {
  return [c, def](sparse_run& r) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const index_t offset = c.kv_len - c.q_len;
    index_t poisoned = 0;
    for (index_t b = 0; b < c.batch; ++b)
      for (index_t j = 0; j < c.kv_len; ++j) {
        bool seen = false;
        for (index_t h = 0; h < c.q_heads && !seen; ++h)
          for (index_t i = 0; i < c.q_len && !seen; ++i) seen = def(b, h, i + offset, j);
        if (seen) continue;
        ++poisoned;
        for (index_t h = 0; h < c.kv_heads; ++h) {
          for (index_t d = 0; d < c.dim; ++d) r.k(b, h, j, d) = nan;
          for (index_t d = 0; d < c.dv(); ++d) r.v(b, h, j, d) = nan;
        }
      }
    CHECK(poisoned > 0);  // the case really has unseen keys
  };
}

/// attention() with `mask` and K/V in storage type `t` against the reference with
/// mask_fn(def). `prepare` may change the inputs after rounding (e.g. poison unseen keys).
template <class M>
sparse_accuracy check_decode(sparse_case c, kv_type t, const std::string& isa, const M& mask,
                             const allowed_fn& def, const std::function<void(sparse_run&)>& prepare = {}) {
  c.what += std::string(" kv=") + to_string(t);
  yard_spec y;
  y.allowed = def;
  return check_sparse_case(
      c, isa, y,
      [&](sparse_run& r) {
        with_kv(t, r.k, r.v, [&](const auto& k, const auto& v) {
          attnkit::attention(r.q.cview(), k, v, r.out.view, mask, r.opts, r.lse_view(c));
        });
      },
      [&](const sparse_run& r) {
        return with_kv(t, r.k, r.v, [&](const auto& k, const auto& v) {
          return attnkit::reference::attention(r.q.cview(), k, v, attnkit::mask_fn(def), r.opts);
        });
      },
      [&](sparse_run& r) {
        round_to(r.k, t);
        round_to(r.v, t);
        if (prepare) prepare(r);
      });
}

/// Runs attention() on the case's inputs (rounded to `t`) and returns them with out and lse.
template <class M>
sparse_run run_decode(const sparse_case& c, kv_type t, const M& mask) {
  sparse_run r = make_sparse_inputs(c);
  round_to(r.k, t);
  round_to(r.v, t);
  with_kv(t, r.k, r.v, [&](const auto& k, const auto& v) {
    attnkit::attention(r.q.cview(), k, v, r.out.view, mask, r.opts, r.lse_view(c));
  });
  return r;
}

}  // namespace

// ------------------------------------------------------------------------------------------
// Against the reference

TEST_CASE("decode: Lq 1..16 with every GQA ratio 1..8 and 1..3 KV heads", "[decode][gqa]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  const index_t lengths[] = {1, 2, 63, 65, 130, 257, 200};
  const index_t dims[] = {3, 17, 20, 8};
  int i = 0;
  for (index_t lq = 1; lq <= 16; ++lq)
    for (index_t ratio = 1; ratio <= 8; ++ratio) {
      const index_t kv_heads = 1 + (lq + ratio) % 3;
      sparse_case c = make_case(1 + i / 2 % 2, ratio * kv_heads, kv_heads, lq, lengths[i % 7], dims[i % 4],
                                std::uint32_t(100 + i), i);
      const bool causal = (i + i / 8) % 2 == 0;  // both masks for every ratio
      c.what = causal ? "causal" : "no_mask";
      if (causal) check_decode(c, kv_type::f32, isa, attnkit::causal{}, d_causal());
      else check_decode(c, kv_type::f32, isa, attnkit::no_mask{}, d_all());
      ++i;
    }
}

TEST_CASE("decode: key lengths around the tile (64), the chunk (256, 320, ...) and several chunks",
          "[decode][lengths]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  // chunk(len): 256 up to 8192 keys, then 320 (8193..10240), 384 (10241..)
  const index_t lengths[] = {0, 1, 2, 63, 64, 65, 127, 255, 256, 257, 511, 513, 1000, 2049};
  int i = 0;
  for (index_t lk : lengths)
    for (index_t lq : {1, 3, 16}) {
      sparse_case c = make_case(2, 4, 2, lq, lk, 16, std::uint32_t(200 + i), i);
      const bool causal = i % 2 == 1;
      c.what = causal ? "causal" : "no_mask";
      const kv_type t = kKvTypes[(i + i / 3) % 3];
      if (causal) check_decode(c, t, isa, attnkit::causal{}, d_causal());
      else check_decode(c, t, isa, attnkit::no_mask{}, d_all());
      ++i;
    }
}

TEST_CASE("decode: long caches with 25..32 chunks, on and off the chunk grid", "[decode][lengths]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  REQUIRE(chunk_of(8192) == 256);
  REQUIRE(chunk_of(10240) == 320);
  REQUIRE(chunk_of(10241) == 384);
  int i = 0;
  for (index_t lk : {8191, 8192, 8193, 10239, 10240, 10241}) {
    CAPTURE(lk, chunk_of(lk), (lk + chunk_of(lk) - 1) / chunk_of(lk));
    for (index_t lq : {1, 16}) {
      sparse_case c = make_case(1, 2, 1, lq, lk, 8, std::uint32_t(300 + i), i);
      c.lse_seq_stride = 2;
      const bool stream = (i + i / 2) % 2 == 1;
      c.what = stream ? "(sliding_window{300} | sink_tokens{4}) & causal" : "no_mask";
      const kv_type t = kKvTypes[i % 3];
      if (stream)
        check_decode(c, t, isa, (attnkit::sliding_window{300} | attnkit::sink_tokens{4}) & attnkit::causal{},
                     d_streaming(300, 4));
      else check_decode(c, t, isa, attnkit::no_mask{}, d_all());
      ++i;
    }
  }
}

TEST_CASE("decode: head dims 1, 3, 17, 64, 128, and v_dim != qk_dim", "[decode][dims]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  const std::pair<index_t, index_t> dims[] = {{1, 1},  {3, 3},  {17, 17},  {64, 64}, {128, 128},
                                              {17, 5}, {3, 64}, {64, 128}, {128, 1}, {1, 33}};
  int i = 0;
  for (auto d : dims)
    for (index_t lq : {1, 7, 16}) {
      // 4 query heads on 1 KV head (rows 4..64), 8 on 2 alternately
      const index_t kv_heads = 1 + i % 2;
      sparse_case c = make_case(1, 4 * kv_heads, kv_heads, lq, 333, d.first, std::uint32_t(400 + i), i);
      c.v_dim = d.second;
      c.what = "causal";
      check_decode(c, kKvTypes[(i + i / 3) % 3], isa, attnkit::causal{}, d_causal());
      ++i;
    }
}

TEST_CASE("decode: bf16 and fp16 K/V storage (the reference reads the same rounded values)",
          "[decode][dtypes]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (kv_type t : {kv_type::bf16, kv_type::f16})
    for (index_t d : {17, 64, 128})
      for (index_t lq : {1, 4, 16}) {
        sparse_case c = make_case(2, 8, 2, lq, 700, d, std::uint32_t(500 + i), i);
        switch ((i + i / 3) % 3) {
          case 0:
            c.what = "no_mask";
            check_decode(c, t, isa, attnkit::no_mask{}, d_all());
            break;
          case 1:
            c.what = "causal";
            check_decode(c, t, isa, attnkit::causal{}, d_causal());
            break;
          default:
            c.what = "streaming";
            c.sinks = true;
            check_decode(c, t, isa,
                         (attnkit::sliding_window{100} | attnkit::sink_tokens{4}) & attnkit::causal{},
                         d_streaming(100, 4));
        }
        ++i;
      }
}

TEST_CASE("decode: bf16/fp16 rounding is visible (K/V not rounded first differ from fp32 K/V)",
          "[decode][dtypes]") {
  // Guards the rounding above: if the kernel read bf16 K/V as something else than the
  // rounded values, or the test rounded nothing, these would agree.
  ATTNKIT_TEST_FOR_EACH_ISA();
  sparse_case c = make_case(1, 4, 2, 2, 300, 32, 17);
  const sparse_run f = run_decode(c, kv_type::f32, attnkit::no_mask{});
  const sparse_run b = run_decode(c, kv_type::bf16, attnkit::no_mask{});
  CHECK(f.out.max_abs_diff(b.out) > 1e-4);
  CHECK(f.out.max_abs_diff(b.out) < 5e-2);
}

TEST_CASE("decode: masks (causal, sliding_window, StreamingLLM, sink_tokens, block_mask, mask_fn)",
          "[decode][masks]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (index_t lq : {1, 5, 16}) {
    const index_t lk = lq == 1 ? 2000 : lq == 5 ? 1000 : 1500;
    auto next = [&](const char* what) {
      sparse_case c = make_case(1 + i % 2, 6, 2, lq, lk, 24, std::uint32_t(600 + i), i);
      c.what = what;
      ++i;
      return c;
    };
    const kv_type t = kKvTypes[i % 3];
    check_decode(next("causal"), t, isa, attnkit::causal{}, d_causal());
    for (index_t w : {index_t(1), index_t(7), index_t(100), index_t(700), lk + 5}) {
      sparse_case c = next("sliding_window");
      c.what += "{" + std::to_string(w) + "}";
      check_decode(c, t, isa, attnkit::sliding_window{w}, d_sliding(w));
    }
    check_decode(next("(sliding_window{64} | sink_tokens{4}) & causal"), t, isa,
                 (attnkit::sliding_window{64} | attnkit::sink_tokens{4}) & attnkit::causal{},
                 d_streaming(64, 4));
    check_decode(next("sink_tokens{4} | sliding_window{32}"), t, isa,
                 attnkit::sink_tokens{4} | attnkit::sliding_window{32}, d_or(d_sink(4), d_sliding(32)));
    check_decode(next("sink_tokens{300}"), t, isa, attnkit::sink_tokens{300}, d_sink(300));
    for (index_t bs : {16, 64, 100}) {
      bitmap bm(bs == 64 ? 6 : 1, lk, bs, bs);
      bm.random(std::uint32_t(650 + i), 0.4, (lk - 1) / bs);  // the last query block sees nothing
      sparse_case c = next("block_mask");
      c.what += " " + bm.str();
      const sparse_accuracy a = check_decode(c, t, isa, bm.mask(), d_bitmap(bm));
      if (lk - lq >= (lk - 1) / bs * bs) CHECK(a.empty_rows == c.batch * c.q_heads * c.q_len);
    }
    // a per-head dilated pattern (no tile answer) and a mask_fn with an exact tile answer
    auto dilated = [](index_t, index_t h, index_t q, index_t k) {
      return k <= q && (q - k) % (h % 3 + 2) == 0;
    };
    check_decode(next("mask_fn dilated"), t, isa, attnkit::mask_fn(dilated), allowed_fn(dilated));
    auto band = [](index_t, index_t, index_t q, index_t k) { return k <= q && q - k < 150; };
    auto band_tile = [](index_t, index_t, index_t q0, index_t q1, index_t k0, index_t k1) {
      if (k0 > q1 - 1 || k1 - 1 < q0 - 149) return attnkit::tile_kind::empty;
      if (k1 - 1 <= q0 && q1 - 1 - k0 < 150) return attnkit::tile_kind::full;
      return attnkit::tile_kind::partial;
    };
    check_decode(next("mask_fn band with tiles"), t, isa, attnkit::mask_fn(band, band_tile),
                 allowed_fn(band));
  }
}

TEST_CASE("decode: a sliding window reads only the window (keys outside it hold NaN)",
          "[decode][masks][window]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (index_t lq : {1, 4, 16})
    for (index_t lk : {index_t(700), index_t(3000)}) {
      const kv_type t = kKvTypes[i % 3];
      sparse_case c = make_case(2, 8, 2, lq, lk, 40, std::uint32_t(700 + i), i);
      c.what = "sliding_window{100}";
      check_decode(c, t, isa, attnkit::sliding_window{100}, d_sliding(100), poison_unseen(c, d_sliding(100)));
      c.what = "StreamingLLM (sliding_window{77} | sink_tokens{4}) & causal";
      c.sinks = (i + i / 2) % 2 == 0;
      check_decode(c, t, isa, (attnkit::sliding_window{77} | attnkit::sink_tokens{4}) & attnkit::causal{},
                   d_streaming(77, 4), poison_unseen(c, d_streaming(77, 4)));
      ++i;
    }
}

TEST_CASE("decode: learned sink logits, softcap, scale, lse strides", "[decode][sinks]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (index_t lq : {1, 3, 16})
    for (index_t lk : {index_t(1), index_t(65), index_t(900)}) {
      sparse_case c = make_case(2, 8, 4, lq, lk, 20, std::uint32_t(800 + i), i);
      c.sinks = true;
      c.sink_lo = -3.f, c.sink_hi = 6.f;  // sinks that dominate short rows too
      c.softcap = i % 2 ? 0.f : 0.7f;     // bends the unit-range scores noticeably
      c.scale = (i + i / 3) % 3 == 0 ? 0.5f : 0.f;
      c.lse_seq_stride = 1 + i % 3;
      c.what = "causal";
      check_decode(c, kKvTypes[(i + i / 3) % 3], isa, attnkit::causal{}, d_causal());
      c.what = "sliding_window{40}";
      check_decode(c, kKvTypes[(i + i / 3 + 1) % 3], isa, attnkit::sliding_window{40}, d_sliding(40));
      ++i;
    }
}

TEST_CASE("decode: fully masked rows give out 0 and lse -inf, or the sink logit", "[decode][masked]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (bool sinks : {false, true})
    for (kv_type t : kKvTypes) {
      // no key at all
      sparse_case c = make_case(2, 4, 1, 9, 0, 16, std::uint32_t(900 + i), i);
      c.sinks = sinks;
      c.what = "no keys";
      sparse_accuracy a = check_decode(c, t, isa, attnkit::no_mask{}, d_all());
      CHECK(a.empty_rows == 2 * 4 * 9);
      // every key masked
      c.kv_len = 1000;
      c.what = "sink_tokens{0}";
      a = check_decode(c, t, isa, attnkit::sink_tokens{0}, d_sink(0));
      CHECK(a.empty_rows == 2 * 4 * 9);
      // causal with Lq > Lk: the first Lq - Lk rows see nothing
      c.q_len = 16, c.kv_len = 3;
      c.what = "causal, Lq > Lk";
      a = check_decode(c, t, isa, attnkit::causal{}, d_causal());
      CHECK(a.empty_rows == 2 * 4 * 13);
      // a window whose rows only partly see keys, over several chunks: no row empty, but
      // most chunks of every row are
      c.q_len = 4, c.kv_len = 3000;
      c.what = "sliding_window{2}";
      a = check_decode(c, t, isa, attnkit::sliding_window{2}, d_sliding(2));
      CHECK(a.empty_rows == 0);
      ++i;
    }
}

TEST_CASE("decode: batch > 1 with bshd (make_bshd), padded and misaligned views", "[decode][layouts]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (int layout_index = 0; layout_index < 4; ++layout_index)
    for (index_t lq : {1, 2, 16}) {
      sparse_case c = make_case(3, 12, 3, lq, 400 + 37 * i, 33, std::uint32_t(1000 + i), layout_index);
      c.q_spec = spec_for(layout_index + i);  // mixed layouts between q, k, v and out
      c.o_spec = spec_for(layout_index + 2 * i + 1);
      c.lse_seq_stride = 1 + i % 2;
      c.what = "causal";
      check_decode(c, kKvTypes[(i + i / 3) % 3], isa, attnkit::causal{}, d_causal());
      ++i;
    }
}

// ------------------------------------------------------------------------------------------
// Threads

TEST_CASE("decode property: bitwise identical out and lse for 1, 2, 3 and all threads, and a host executor",
          "[decode][property][threads]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (kv_type t : {kv_type::f32, kv_type::bf16})
    for (index_t lq : {1, 16})
      for (bool stream : {false, true}) {
        // 3000 keys: 12 chunks of 256 keys per sequence, batch 2, GQA 4
        sparse_case c = make_case(2, 8, 2, lq, 3000, 32, std::uint32_t(1100 + i), i);
        c.sinks = stream;
        CAPTURE(c.str(), to_string(t), stream);
        const auto mask =
            (attnkit::sliding_window{stream ? index_t(1500) : index_t(1) << 40} | attnkit::sink_tokens{4}) &
            attnkit::causal{};
        c.num_threads = 1;
        const sparse_run one = run_decode(c, t, mask);
        CHECK(one.out.nonfinite() == 0);
        for (int n : {2, 3, 0}) {
          CAPTURE(n);
          c.num_threads = n;
          const sparse_run r = run_decode(c, t, mask);
          CHECK(r.out.same_bits(one.out));
          CHECK(same_lse(r, one));
        }
        toy_pool pool;
        sparse_run ex = make_sparse_inputs(c);
        round_to(ex.k, t);
        round_to(ex.v, t);
        ex.opts.exec = attnkit::executor{&toy_parallel_for, &pool};
        with_kv(t, ex.k, ex.v, [&](const auto& k, const auto& v) {
          attnkit::attention(ex.q.cview(), k, v, ex.out.view, mask, ex.opts, ex.lse_view(c));
        });
        CHECK(pool.calls.load() > 1);  // the hook was used (for the chunks and for the merge)
        CHECK(ex.out.same_bits(one.out));
        CHECK(same_lse(ex, one));
        ++i;
      }
}

// ------------------------------------------------------------------------------------------
// Paged KV cache

namespace {

/// A ragged batch stored in a page pool. Each sequence's K/V are also kept contiguous
/// ([1, kv_heads, len, dim] tensors) for attention() and the reference. Pages are handed
/// out in a shuffled order; spare pages and the rows past a sequence's end hold NaN; the
/// page table has a spare column with invalid ids (never read) and a row stride > cols.
struct paged_problem {
  index_t B = 0, Hq = 0, Hkv = 0, Lq = 0, D = 0, Dv = 0, ps = 1, num_pages = 0, cols = 0, stride = 0;
  bool vllm =
      true;  // pool layout [num_pages, page_size, kv_heads, dim]; else [num_pages, kv_heads, page_size, dim]
  kv_type type = kv_type::f32;
  std::vector<std::int32_t> lens, table;
  tensor q;
  std::vector<tensor> k, v;         // per sequence, rounded to `type`
  std::vector<float> kpool, vpool;  // float pools
  tensor_view<float> kview, vview;  // over the float pools
  std::vector<float> sinks;
  attnkit::attention_options opts;

  std::string str() const {
    std::ostringstream s;
    s << "B=" << B << " Hq=" << Hq << " Hkv=" << Hkv << " Lq=" << Lq << " D=" << D << " Dv=" << Dv
      << " page_size=" << ps << " pages=" << num_pages
      << (vllm ? " [pages,ps,heads,d]" : " [pages,heads,ps,d]") << " kv=" << to_string(type)
      << (sinks.empty() ? "" : " sinks") << " lens=";
    for (auto l : lens) s << l << ",";
    return s.str();
  }

  paged_problem(std::vector<std::int32_t> lens_, index_t hq, index_t hkv, index_t lq, index_t d, index_t dv,
                index_t page_size, kv_type t, bool vllm_layout, std::uint32_t seed, bool with_sinks = false)
      : B(index_t(lens_.size())), Hq(hq), Hkv(hkv), Lq(lq), D(d), Dv(dv), ps(page_size), vllm(vllm_layout),
        type(t), lens(std::move(lens_)) {
    q = tensor(B, Hq, Lq, D, {layout::bshd, padding::none, false});
    q.fill_uniform(seed);
    index_t needed = 0;
    for (auto l : lens) {
      needed += (l + ps - 1) / ps;
      cols = std::max(cols, (l + ps - 1) / ps);
    }
    cols += 1;  // a spare column of invalid ids
    stride = cols + 2;
    num_pages = needed + 3;  // spare pages stay NaN
    std::vector<std::int32_t> order(static_cast<std::size_t>(num_pages));
    std::iota(order.begin(), order.end(), 0);
    std::mt19937 gen(seed + 7);
    std::shuffle(order.begin(), order.end(), gen);
    const float nan = std::numeric_limits<float>::quiet_NaN();
    kpool.assign(std::size_t(num_pages * ps * Hkv * D), nan);
    vpool.assign(std::size_t(num_pages * ps * Hkv * Dv), nan);
    kview = vllm ? attnkit::make_bshd(kpool.data(), num_pages, ps, Hkv, D)
                 : attnkit::make_bhsd(kpool.data(), num_pages, Hkv, ps, D);
    vview = vllm ? attnkit::make_bshd(vpool.data(), num_pages, ps, Hkv, Dv)
                 : attnkit::make_bhsd(vpool.data(), num_pages, Hkv, ps, Dv);
    table.assign(std::size_t(B * stride), -1000);
    std::size_t next = 0;
    for (index_t b = 0; b < B; ++b) {
      const index_t len = lens[std::size_t(b)];
      for (index_t j = 0; j < (len + ps - 1) / ps; ++j) table[std::size_t(b * stride + j)] = order[next++];
      table[std::size_t(b * stride + cols - 1)] = std::int32_t(num_pages + 5);  // invalid, never read
      tensor kb(1, Hkv, len, D), vb(1, Hkv, len, Dv);
      kb.fill_uniform(seed * 31 + std::uint32_t(b) * 2 + 1);
      vb.fill_uniform(seed * 31 + std::uint32_t(b) * 2 + 2);
      round_to(kb, t);
      round_to(vb, t);
      for (index_t h = 0; h < Hkv; ++h)
        for (index_t s = 0; s < len; ++s) {
          const index_t page = table[std::size_t(b * stride + s / ps)];
          for (index_t x = 0; x < D; ++x) kview(page, h, s % ps, x) = kb(0, h, s, x);
          for (index_t x = 0; x < Dv; ++x) vview(page, h, s % ps, x) = vb(0, h, s, x);
        }
      k.push_back(kb);
      v.push_back(vb);
    }
    if (with_sinks) {
      std::uniform_real_distribution<float> u(-2.f, 3.f);
      for (index_t h = 0; h < Hq; ++h) sinks.push_back(u(gen));
      opts.sink_logits = {sinks.data(), Hq};
    }
  }

  attnkit::page_table_view page_table() const { return {table.data(), B, cols, stride}; }
  attnkit::int32_span seq_lens() const { return {lens.data(), B}; }

  /// Sequence b's slice [1, ...] of a [B, ...] view.
  template <class T>
  static tensor_view<T> slice(const tensor_view<T>& t, index_t b) {
    return tensor_view<T>(t.data_handle() + b * t.stride(0), {{1, t.extent(1), t.extent(2), t.extent(3)}},
                          t.strides());
  }

  template <class M>
  void run_paged(const M& mask, const tensor_view<float>& out, const tensor_view<float>& lse) const {
    switch (type) {
      case kv_type::bf16: {
        const stored<bf16> sk(kpool, kview.data_handle(), kview), sv(vpool, vview.data_handle(), vview);
        attnkit::attention_paged(q.cview(), sk.view, sv.view, page_table(), seq_lens(), out, mask, opts, lse);
        break;
      }
      case kv_type::f16: {
        const stored<fp16> sk(kpool, kview.data_handle(), kview), sv(vpool, vview.data_handle(), vview);
        attnkit::attention_paged(q.cview(), sk.view, sv.view, page_table(), seq_lens(), out, mask, opts, lse);
        break;
      }
      default:
        attnkit::attention_paged(q.cview(), tensor_view<const float>(kview), tensor_view<const float>(vview),
                                 page_table(), seq_lens(), out, mask, opts, lse);
    }
  }

  /// attention() per sequence on its contiguous K/V, into the slices of out and lse.
  template <class M>
  void run_contiguous(const M& mask, const tensor_view<float>& out, const tensor_view<float>& lse) const {
    for (index_t b = 0; b < B; ++b)
      with_kv(type, k[std::size_t(b)], v[std::size_t(b)], [&](const auto& kk, const auto& vv) {
        attnkit::attention(slice(q.cview(), b), kk, vv, slice(out, b), mask, opts, slice(lse, b));
      });
  }
};

/// Paged vs contiguous bitwise, and both against the reference (per sequence, test-side mask).
template <class M>
void check_paged(const paged_problem& p, const M& mask, const allowed_fn& def) {
  INFO(p.str());
  tensor out_p(p.B, p.Hq, p.Lq, p.Dv), out_c(p.B, p.Hq, p.Lq, p.Dv, {layout::bshd, padding::plus3, false});
  lse_buffer lse_p(p.B, p.Hq, p.Lq, 1), lse_c(p.B, p.Hq, p.Lq, 2);
  p.run_paged(mask, out_p.view, lse_p.view);
  p.run_contiguous(mask, out_c.view, lse_c.view);
  CHECK(out_p.same_bits(out_c));
  index_t lse_diff = 0;
  for (index_t b = 0; b < p.B; ++b)
    for (index_t h = 0; h < p.Hq; ++h)
      for (index_t i = 0; i < p.Lq; ++i) {
        const float x = lse_p(b, h, i), y = lse_c(b, h, i);
        lse_diff += std::memcmp(&x, &y, sizeof x) != 0;
      }
  CHECK(lse_diff == 0);
  CHECK(out_p.touched_outside() == 0);
  CHECK(lse_p.touched_outside() == 0);
  CHECK(out_p.nonfinite() == 0);
  // Against the reference, sequence by sequence (inputs in [-1, 1]).
  yard_spec y;
  y.allowed = def;
  y.sinks = p.sinks.empty() ? nullptr : p.sinks.data();
  double err = 0, plain_err = 0, lse_err = 0;
  index_t lse_bad = 0;
  for (index_t b = 0; b < p.B; ++b) {
    const auto qb = paged_problem::slice(p.q.cview(), b);
    const auto& kb = p.k[std::size_t(b)];
    const auto& vb = p.v[std::size_t(b)];
    const auto ref = with_kv(p.type, kb, vb, [&](const auto& kk, const auto& vv) {
      return attnkit::reference::attention(qb, kk, vv, attnkit::mask_fn(def), p.opts);
    });
    const plain_result plain = plain_fp32_general(qb, kb.cview(), vb.cview(), y);
    for (index_t h = 0; h < p.Hq; ++h)
      for (index_t i = 0; i < p.Lq; ++i) {
        for (index_t d = 0; d < p.Dv; ++d) {
          err = std::max(err, std::fabs(double(out_p(b, h, i, d)) - ref.o(0, h, i, d)));
          plain_err = std::max(plain_err, std::fabs(double(plain.o(0, h, i, d)) - ref.o(0, h, i, d)));
        }
        const double rl = ref.l(0, h, i), l = lse_p(b, h, i);
        if (std::isinf(rl) || std::isinf(l)) lse_bad += !(rl == l);
        else lse_err = std::max(lse_err, std::fabs(l - rl) / std::max(1.0, std::fabs(rl)));
      }
  }
  INFO("err " << err << ", plain fp32 err " << plain_err << ", lse rel err " << lse_err);
  CHECK(err <= 2 * std::max(plain_err, 1e-6));
  CHECK(err <= 1e-4);
  CHECK(lse_bad == 0);
  CHECK(lse_err <= 1e-5);
}

}  // namespace

TEST_CASE("paged: equals contiguous attention() bitwise, and the reference (ragged batch, shuffled pages)",
          "[decode][paged]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (index_t ps : {1, 16, 128})
    for (kv_type t : {kv_type::f32, kv_type::bf16})
      for (index_t lq : {1, 16, 40}) {  // 40: the flash driver
        // lengths 0, 1, off the page grid, on it, and long enough for several chunks
        std::vector<std::int32_t> lens = {0,
                                          1,
                                          std::int32_t(3 * ps + 1),
                                          std::int32_t(2 * ps),
                                          555,
                                          std::int32_t(ps == 1 ? 300 : 700 + ps / 2)};
        if (i % 2) std::reverse(lens.begin(), lens.end());
        const paged_problem p(lens, 8, 2, lq, 24, i % 3 == 0 ? 24 : 40, ps, t, i % 4 != 3,
                              std::uint32_t(1200 + i), i % 2 == 0);
        switch ((i + i / 3) % 3) {  // every mask with every Lq
          case 0: check_paged(p, attnkit::causal{}, d_causal()); break;
          case 1: check_paged(p, attnkit::no_mask{}, d_all()); break;
          default:
            check_paged(p, (attnkit::sliding_window{200} | attnkit::sink_tokens{4}) & attnkit::causal{},
                        d_streaming(200, 4));
        }
        ++i;
      }
}

TEST_CASE("paged: fp16 pools, GQA 1..8, head dims 1 and 128, a single sequence", "[decode][paged]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (index_t ratio : {1, 3, 6, 8})
    for (index_t d : {1, 128}) {
      const paged_problem p({std::int32_t(500 + 61 * i)}, ratio * 2, 2, 1 + i % 16, d, d, 16, kKvTypes[i % 3],
                            i % 2 == 0, std::uint32_t(1300 + i));
      check_paged(p, attnkit::causal{}, d_causal());
      ++i;
    }
}

namespace {

/// attention_paged(causal) on 1 thread into `one` and `lone`, then on 2 and 3 threads:
/// out and lse bitwise equal to the 1-thread run.
void check_paged_threads(paged_problem& p, tensor& one, lse_buffer& lone) {
  p.opts.num_threads = 1;
  p.run_paged(attnkit::causal{}, one.view, lone.view);
  for (int n : {2, 3}) {
    CAPTURE(n);
    p.opts.num_threads = n;
    tensor out(p.B, p.Hq, p.Lq, p.Dv);
    lse_buffer lse(p.B, p.Hq, p.Lq, 1);
    p.run_paged(attnkit::causal{}, out.view, lse.view);
    CHECK(out.same_bits(one));
    CHECK(std::memcmp(lse.buf.data(), lone.buf.data(), lse.buf.size() * sizeof(float)) == 0);
  }
}

}  // namespace

TEST_CASE("paged: bitwise identical for 1, 2 and 3 threads", "[decode][paged][threads]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  paged_problem p({3000, 17, 0, 4100}, 8, 2, 3, 32, 32, 16, kv_type::bf16, true, 1400, true);
  tensor one(p.B, p.Hq, p.Lq, p.Dv);
  lse_buffer lone(p.B, p.Hq, p.Lq, 1);
  check_paged_threads(p, one, lone);
}

// ------------------------------------------------------------------------------------------
// merge_partials

namespace {

/// Keys [k0, k1) of a [B, H, Lk, D] view.
tensor_view<const float> key_range(const tensor& t, index_t k0, index_t k1) {
  return tensor_view<const float>(t.view.data_handle() + k0 * t.view.stride(2), {{t.B, t.H, k1 - k0, t.D}},
                                  t.view.strides());
}

struct partial {
  tensor out;
  lse_buffer lse;
};

/// attention() over keys [k0, k1) of the run's K/V, with a causal mask on absolute
/// positions when `causal` (query row i at i + Lk - Lq of the whole sequence).
partial run_partial(const sparse_run& r, index_t k0, index_t k1, bool causal,
                    const attnkit::attention_options& opts) {
  partial p;
  p.out = tensor(r.q.B, r.q.H, r.q.S, r.v.D, {layout::bshd, padding::none, false});
  p.lse = lse_buffer(r.q.B, r.q.H, r.q.S, 1);
  const index_t lk = r.k.S, len = k1 - k0;
  const auto k = key_range(r.k, k0, k1), v = key_range(r.v, k0, k1);
  if (causal) {
    // local query position qp = i + len - Lq; absolute i + Lk - Lq; local key kp is k0 + kp
    auto m = [=](index_t, index_t, index_t qp, index_t kp) { return kp + k0 <= qp - len + lk; };
    attnkit::attention(r.q.cview(), k, v, p.out.view, attnkit::mask_fn(m), opts, p.lse.view);
  } else {
    attnkit::attention(r.q.cview(), k, v, p.out.view, attnkit::no_mask{}, opts, p.lse.view);
  }
  return p;
}

struct merged {
  tensor out;
  lse_buffer lse;
};

merged merge(const std::vector<const partial*>& parts, index_t B, index_t H, index_t Lq, index_t Dv) {
  std::vector<tensor_view<const float>> outs, lses;
  for (const partial* p : parts) {
    outs.push_back(p->out.cview());
    lses.push_back(p->lse.view);
  }
  merged m;
  m.out = tensor(B, H, Lq, Dv, {layout::bhsd, padding::plus3, true});
  m.lse = lse_buffer(B, H, Lq, 3);
  attnkit::merge_partials(outs.data(), lses.data(), index_t(parts.size()), m.out.view, m.lse.view);
  return m;
}

double lse_rel_diff(const lse_buffer& a, const lse_buffer& b, index_t* mismatch) {
  double e = 0;
  for (index_t x = 0; x < a.B; ++x)
    for (index_t h = 0; h < a.H; ++h)
      for (index_t i = 0; i < a.S; ++i) {
        const double p = a(x, h, i), q = b(x, h, i);
        if (std::isinf(p) || std::isinf(q) || std::isnan(p) || std::isnan(q)) *mismatch += !(p == q);
        else e = std::max(e, std::fabs(p - q) / std::max(1.0, std::fabs(q)));
      }
  return e;
}

}  // namespace

TEST_CASE("merge_partials: 2..4 disjoint key ranges merge to one call", "[decode][merge]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (index_t lq : {1, 20})
    for (bool causal : {false, true})
      for (index_t n = 2; n <= 4; ++n) {
        sparse_case c = make_case(2, 6, 2, lq, 700, 32, std::uint32_t(1500 + i), i % 2);
        c.v_dim = 24;
        CAPTURE(c.str(), causal, n);
        const sparse_run r = make_sparse_inputs(c);
        // cut points: random, and once an empty range at the start (all its rows -inf)
        std::mt19937 gen(static_cast<std::uint32_t>(i));
        std::vector<index_t> cuts = {0, c.kv_len};
        for (index_t s = 1; s < n; ++s) cuts.push_back(i % 3 == 0 && s == 1 ? 0 : index_t(gen() % 700));
        std::sort(cuts.begin(), cuts.end());
        CAPTURE(cuts);
        std::vector<partial> parts;
        for (index_t s = 0; s < n; ++s)
          parts.push_back(run_partial(r, cuts[std::size_t(s)], cuts[std::size_t(s + 1)], causal, r.opts));
        std::vector<const partial*> ptrs;
        for (const auto& p : parts) ptrs.push_back(&p);
        const merged m = merge(ptrs, c.batch, c.q_heads, c.q_len, c.dv());
        const partial whole = run_partial(r, 0, c.kv_len, causal, r.opts);
        CHECK(m.out.max_abs_diff(whole.out) <= 2e-6);
        index_t mismatch = 0;
        CHECK(lse_rel_diff(m.lse, whole.lse, &mismatch) <= 2e-6);
        CHECK(mismatch == 0);
        CHECK(m.out.touched_outside() == 0);
        CHECK(m.lse.touched_outside() == 0);
        CHECK(m.out.nonfinite() == 0);
        // and the reference
        const auto ref = causal ? attnkit::reference::attention(r.q.cview(), r.k.cview(), r.v.cview(),
                                                                attnkit::causal{}, r.opts)
                                : attnkit::reference::attention(r.q.cview(), r.k.cview(), r.v.cview(),
                                                                attnkit::no_mask{}, r.opts);
        double err = 0;
        m.out.for_each([&](index_t b, index_t h, index_t q, index_t d) {
          err = std::max(err, std::fabs(double(m.out(b, h, q, d)) - ref.o(b, h, q, d)));
        });
        CHECK(err <= 1e-5);
        ++i;
      }
}

TEST_CASE("merge_partials: partials with lse -inf carry no weight and are not read", "[decode][merge]") {
  sparse_case c = make_case(2, 4, 2, 3, 500, 16, 1600);
  const sparse_run r = make_sparse_inputs(c);
  const partial a = run_partial(r, 0, 200, false, r.opts), b = run_partial(r, 200, 500, false, r.opts);
  partial dead = a;
  dead.out.fill(std::numeric_limits<float>::quiet_NaN());
  for (index_t x = 0; x < c.batch; ++x)
    for (index_t h = 0; h < c.q_heads; ++h)
      for (index_t i = 0; i < c.q_len; ++i)
        dead.lse.view(x, h, i, 0) = -std::numeric_limits<float>::infinity();
  const merged two = merge({&a, &b}, c.batch, c.q_heads, c.q_len, c.dv());
  for (const auto& parts :
       std::vector<std::vector<const partial*>>{{&dead, &a, &b}, {&a, &dead, &b}, {&a, &b, &dead}}) {
    const merged m = merge(parts, c.batch, c.q_heads, c.q_len, c.dv());
    CHECK(m.out.same_bits(two.out));
    index_t mismatch = 0;
    CHECK(lse_rel_diff(m.lse, two.lse, &mismatch) == 0);
    CHECK(mismatch == 0);
  }
  // only dead partials: out exactly 0, lse -inf
  const merged none = merge({&dead, &dead}, c.batch, c.q_heads, c.q_len, c.dv());
  CHECK(none.out.nonfinite() == 0);
  double mx = 0;
  none.out.for_each([&](index_t x, index_t h, index_t i, index_t d) {
    mx = std::max(mx, double(std::fabs(none.out(x, h, i, d))));
  });
  CHECK(mx == 0);
  for (index_t x = 0; x < c.batch; ++x)
    for (index_t h = 0; h < c.q_heads; ++h)
      for (index_t i = 0; i < c.q_len; ++i)
        CHECK(none.lse(x, h, i) == -std::numeric_limits<float>::infinity());
  // a single partial passes through
  const merged one = merge({&a}, c.batch, c.q_heads, c.q_len, c.dv());
  CHECK(one.out.max_abs_diff(a.out) <= 1e-7);
}

TEST_CASE("merge_partials: learned sinks are not part of the merge", "[decode][merge][sinks]") {
  sparse_case c = make_case(1, 4, 2, 2, 600, 16, 1700);
  c.sinks = true;
  c.sink_lo = 5.f, c.sink_hi = 7.f;  // exp(sink) comparable to the sum over 600 keys
  const sparse_run r = make_sparse_inputs(c);
  attnkit::attention_options no_sinks = r.opts;
  no_sinks.sink_logits = {};
  const partial a = run_partial(r, 0, 250, false, no_sinks), b = run_partial(r, 250, 600, false, no_sinks);
  const merged m = merge({&a, &b}, c.batch, c.q_heads, c.q_len, c.dv());
  const partial plain = run_partial(r, 0, 600, false, no_sinks), with = run_partial(r, 0, 600, false, r.opts);
  CHECK(m.out.max_abs_diff(plain.out) <= 2e-6);
  CHECK(m.out.max_abs_diff(with.out) > 1e-2);  // the sink is not applied by merge_partials
  // The sink joins afterwards by hand: lse' = log(exp(lse) + exp(sink)), out' = out exp(lse - lse').
  double e = 0;
  for (index_t h = 0; h < c.q_heads; ++h)
    for (index_t i = 0; i < c.q_len; ++i) {
      const double l = m.lse(0, h, i), s = r.sink_values[std::size_t(h)];
      const double l2 =
          std::max(l, s) + std::log(std::exp(l - std::max(l, s)) + std::exp(s - std::max(l, s)));
      CHECK(std::fabs(l2 - with.lse(0, h, i)) <= 1e-5);
      for (index_t d = 0; d < c.dv(); ++d)
        e = std::max(e, std::fabs(m.out(0, h, i, d) * std::exp(l - l2) - with.out(0, h, i, d)));
    }
  CHECK(e <= 2e-6);
}

// ------------------------------------------------------------------------------------------
// bf16 products (attention_options::bf16_dot)
//
// With bf16_dot the kernels round the scaled Q and the softmax weights P to bf16 (Note [bf16
// products] in kernels/micro_bf16.hpp). The cases feed Q already on the bf16 grid with a
// power-of-two scale, so rounding the scaled Q changes nothing and the double reference on
// the same Q, K and V sees the same scores; what is left is P's rounding, at most 2^-9 of
// each weight: |out - ref| <= 2^-9 max|v| plus fp32 sums, checked against 2^-8 (inputs in
// [-1, 1]). A misplaced column, key or row is off by ~0.1. AVX-512 CPUs with BF16 take
// vdpbf16ps for head dims that are multiples of 32 (64, 128 below), every other case the
// widening kernels on rounded Q and P.

namespace {

template <class M>
void check_bf16_dot(sparse_case c, const std::string& isa, const M& mask, const allowed_fn& def) {
  CAPTURE(c.str(), isa);
  sparse_run r = make_sparse_inputs(c);
  round_to(r.q, kv_type::bf16);
  round_to(r.k, kv_type::bf16);
  round_to(r.v, kv_type::bf16);
  r.opts.scale = 0.125f;
  const stored<bf16> sk(r.k), sv(r.v);
  const auto ref = attnkit::reference::attention(r.q.cview(), sk.view, sv.view, attnkit::mask_fn(def), r.opts);
  sparse_run exact = r;
  r.opts.bf16_dot = true;
  attnkit::attention(r.q.cview(), sk.view, sv.view, r.out.view, mask, r.opts, r.lse_view(c));
  attnkit::attention(exact.q.cview(), sk.view, sv.view, exact.out.view, mask, exact.opts, exact.lse_view(c));
  double err = 0, exact_err = 0, lse_err = 0;
  index_t lse_bad = 0;
  for (index_t b = 0; b < c.batch; ++b)
    for (index_t h = 0; h < c.q_heads; ++h)
      for (index_t i = 0; i < c.q_len; ++i) {
        for (index_t d = 0; d < c.dv(); ++d) {
          err = std::max(err, std::fabs(double(r.out(b, h, i, d)) - ref.o(b, h, i, d)));
          exact_err = std::max(exact_err, std::fabs(double(exact.out(b, h, i, d)) - ref.o(b, h, i, d)));
        }
        if (!c.lse) continue;
        const double rl = ref.l(b, h, i), l = r.lse(b, h, i);
        if (std::isinf(rl) || std::isinf(l)) lse_bad += !(rl == l);
        else lse_err = std::max(lse_err, std::fabs(l - rl) / std::max(1.0, std::fabs(rl)));
      }
  INFO("bf16_dot err " << err << ", exact err " << exact_err << ", lse rel err " << lse_err);
  CHECK(r.out.nonfinite() == 0);
  CHECK(r.out.touched_outside() == 0);
  CHECK(err <= 1.0 / 256);
  CHECK(exact_err <= 1e-4);
  CHECK(lse_bad == 0);
  CHECK(lse_err <= 1e-5);
}

}  // namespace

TEST_CASE("decode: bf16_dot (Q and P rounded to bf16) against the reference", "[decode][dtypes][bf16_dot]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (index_t d : {17, 64, 128})
    for (index_t ratio : {1, 2, 4, 6, 8})
      for (index_t lq : {1, 3, 16}) {
        const index_t lk = i % 3 == 0 ? 1 : i % 3 == 1 ? 257 : 700;
        sparse_case c = make_case(2, 2 * ratio, 2, lq, std::max(lk, lq), d, std::uint32_t(1500 + i), i);
        switch (i % 3) {
          case 0:
            c.what = "no_mask";
            check_bf16_dot(c, isa, attnkit::no_mask{}, d_all());
            break;
          case 1:
            c.what = "causal";
            check_bf16_dot(c, isa, attnkit::causal{}, d_causal());
            break;
          default:
            c.what = "streaming";
            c.sinks = true;
            check_bf16_dot(c, isa, (attnkit::sliding_window{100} | attnkit::sink_tokens{4}) & attnkit::causal{},
                           d_streaming(100, 4));
        }
        ++i;
      }
}

TEST_CASE("decode: bf16_dot changes the result (P is rounded), and not for fp32 K/V", "[decode][dtypes][bf16_dot]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  sparse_case c = make_case(1, 8, 2, 1, 1000, 128, 1600);
  sparse_run a = run_decode(c, kv_type::bf16, attnkit::no_mask{});
  c.what = "bf16_dot";
  sparse_run b = make_sparse_inputs(c);
  round_to(b.k, kv_type::bf16);
  round_to(b.v, kv_type::bf16);
  b.opts.bf16_dot = true;
  with_kv(kv_type::bf16, b.k, b.v, [&](const auto& k, const auto& v) {
    attnkit::attention(b.q.cview(), k, v, b.out.view, attnkit::no_mask{}, b.opts, b.lse_view(c));
  });
  CHECK(a.out.max_abs_diff(b.out) > 1e-7);
  CHECK(a.out.max_abs_diff(b.out) < 1e-2);
  sparse_run f = run_decode(c, kv_type::f32, attnkit::no_mask{});
  sparse_run g = make_sparse_inputs(c);
  g.opts.bf16_dot = true;
  attnkit::attention(g.q.cview(), g.k.cview(), g.v.cview(), g.out.view, attnkit::no_mask{}, g.opts, g.lse_view(c));
  CHECK(f.out.same_bits(g.out));
}

TEST_CASE("decode: bf16_dot is bitwise identical for 1, 2, 3 threads, and paged equals contiguous",
          "[decode][paged][threads][bf16_dot]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (index_t d : {32, 128}) {
    paged_problem p({3000, 17, 0, 4100}, 8, 2, 3, d, d, 16, kv_type::bf16, d == 128, std::uint32_t(1700 + d), true);
    p.opts.bf16_dot = true;
    CAPTURE(d);
    tensor one(p.B, p.Hq, p.Lq, p.Dv), cont(p.B, p.Hq, p.Lq, p.Dv);
    lse_buffer lone(p.B, p.Hq, p.Lq, 1), lcont(p.B, p.Hq, p.Lq, 1);
    check_paged_threads(p, one, lone);
    p.opts.num_threads = 1;
    p.run_contiguous(attnkit::causal{}, cont.view, lcont.view);
    CHECK(one.same_bits(cont));
    CHECK(std::memcmp(lcont.buf.data(), lone.buf.data(), lone.buf.size() * sizeof(float)) == 0);
    CHECK(one.nonfinite() == 0);
  }
}
