// Dense attention (attnkit::attention) against the double reference, and its properties.
//
// Accuracy criterion for every case (support/attnkit_test.hpp, check_dense_case):
//   max|out - ref| <= 2 * max(max|plain fp32 - ref|, 1e-6), and <= 1e-4 for inputs in [-1, 1].
// The kernel's blocking (kernels/dense.hpp): a work unit holds 64 query lanes on AVX-512
// (16 x 4), 24 on AVX2 (8 x 3) and 12 on SSE2 (4 x 3), shared by the query heads of one KV
// group; keys are visited in tiles of 128. The sweeps put sequence lengths on both sides of
// those boundaries.
#include "support/attnkit_test.hpp"

#include <atomic>
#include <thread>

#include <Eigen/Core>

#include <attnkit/core/eigen.hpp>

using namespace attnkit_test;
using attnkit::index_t;

namespace {

constexpr mask_kind kMasks[] = {mask_kind::none, mask_kind::causal};

// Runs attnkit on a case and returns the output tensor (and lse when the case asks).
dense_run run_only(const dense_case& c) {
  dense_run r = make_inputs(c);
  run_attnkit(c, r);
  return r;
}

}  // namespace

// ------------------------------------------------------------------------------------------
// Sweeps against the reference

TEST_CASE("dense: Lq x Lk around the query-block and key-tile boundaries", "[dense][sweep]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (index_t lk : {1, 2, 5, 127, 128, 129, 257})
    for (index_t lq : {1, 3, 16, 17, 63, 64, 65, 130})
      for (mask_kind m : kMasks) {
        dense_case c;
        c.q_len = lq, c.kv_len = lk, c.dim = 20, c.mask = m;
        c.seed = std::uint32_t(lq * 1000 + lk);
        check_dense_case(c, isa);
      }
}

TEST_CASE("dense: query blocks shared by the heads of a GQA group, at this ISA's block size", "[dense][sweep]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  const index_t lanes = dense_block_lanes(attnkit_isa_scope_.which());
  for (index_t g : {1, 2, 3, 4, 6, 8, 13}) {
    const index_t rows = std::max<index_t>(1, lanes / g);  // query rows per work unit
    for (index_t lq : {rows - 1, rows, rows + 1, 2 * rows + 1})
      for (index_t lk : {lq, index_t(129)})
        for (mask_kind m : kMasks) {
          if (lq < 1) continue;
          dense_case c;
          c.q_heads = g, c.kv_heads = 1, c.q_len = lq, c.kv_len = lk, c.dim = 12, c.mask = m;
          c.seed = std::uint32_t(g * 7919 + lq * 31 + lk);
          check_dense_case(c, isa);
        }
  }
}

TEST_CASE("dense: head dims 1..33 and 64, 80, 96, 128, 256", "[dense][sweep]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (index_t d : {1, 2, 3, 7, 8, 15, 16, 17, 31, 32, 33, 64, 80, 96, 128, 256})
    for (mask_kind m : kMasks) {
      dense_case c;
      c.q_heads = 2, c.kv_heads = 1, c.q_len = 17, c.kv_len = 131, c.dim = d, c.mask = m;
      c.seed = std::uint32_t(d);
      check_dense_case(c, isa);
    }
}

TEST_CASE("dense: dim of v differs from dim of q and k", "[dense]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  const std::pair<index_t, index_t> dims[] = {{40, 72}, {72, 40}, {1, 33}, {33, 1}, {128, 64}, {16, 7}};
  for (auto dd : dims)
    for (mask_kind m : kMasks) {
      dense_case c;
      c.q_heads = 2, c.kv_heads = 2, c.q_len = 29, c.kv_len = 140, c.dim = dd.first, c.v_dim = dd.second, c.mask = m;
      c.seed = std::uint32_t(dd.first * 100 + dd.second);
      check_dense_case(c, isa);
    }
}

TEST_CASE("dense: Lq != Lk both ways, including rows with no key under causal", "[dense]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  const std::pair<index_t, index_t> lens[] = {{1, 300}, {7, 300}, {100, 257}, {300, 7}, {300, 1}, {200, 129}, {65, 64}};
  for (auto ll : lens)
    for (mask_kind m : kMasks) {
      dense_case c;
      c.q_heads = 3, c.kv_heads = 1, c.q_len = ll.first, c.kv_len = ll.second, c.dim = 24, c.mask = m;
      c.seed = std::uint32_t(ll.first * 1000 + ll.second);
      const accuracy a = check_dense_case(c, isa);
      // Bottom-right alignment: with causal and Lq > Lk the first Lq - Lk rows see no key.
      const index_t want_masked = m == mask_kind::causal && ll.first > ll.second ? (ll.first - ll.second) * 3 : 0;
      CHECK(a.masked_rows == want_masked);
    }
}

TEST_CASE("dense: batch 2, GQA ratios 1, 2, 3, 4, 6, 8 and MQA with 32 query heads", "[dense]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (index_t g : {1, 2, 3, 4, 6, 8})
    for (mask_kind m : kMasks) {
      dense_case c;
      c.batch = 2, c.kv_heads = 2, c.q_heads = 2 * g, c.q_len = 37, c.kv_len = 150, c.dim = 32, c.mask = m;
      c.seed = std::uint32_t(100 + g);
      check_dense_case(c, isa);
    }
  for (mask_kind m : kMasks) {
    dense_case c;
    c.batch = 2, c.kv_heads = 1, c.q_heads = 32, c.q_len = 20, c.kv_len = 140, c.dim = 64, c.mask = m;
    c.seed = 32;
    check_dense_case(c, isa);
  }
}

TEST_CASE("dense: layouts, padded rows and misaligned base pointers", "[dense]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  dense_case base;
  base.batch = 2, base.q_heads = 4, base.kv_heads = 2, base.q_len = 33, base.kv_len = 70, base.dim = 40, base.v_dim = 24;
  std::uint32_t seed = 1;
  SECTION("the same layout for all four tensors") {
    for (layout lay : {layout::bhsd, layout::bshd})
      for (padding pad : {padding::none, padding::plus3, padding::odd_lines})
        for (bool mis : {false, true})
          for (mask_kind m : kMasks) {
            dense_case c = base;
            c.all_specs({lay, pad, mis});
            c.mask = m;
            c.seed = seed++;
            check_dense_case(c, isa);
          }
  }
  SECTION("mixed layouts and paddings") {
    const tensor_spec a{layout::bshd, padding::plus3, false}, b{layout::bhsd, padding::odd_lines, true},
        d{layout::bhsd, padding::none, false}, e{layout::bshd, padding::odd_lines, true};
    const tensor_spec combos[][4] = {{a, b, d, e}, {b, a, e, d}, {d, e, a, b}, {e, d, b, a}, {a, a, b, b}};
    for (const auto& s : combos)
      for (mask_kind m : kMasks) {
        dense_case c = base;
        c.q_spec = s[0], c.k_spec = s[1], c.v_spec = s[2], c.o_spec = s[3];
        c.mask = m;
        c.seed = seed++;
        check_dense_case(c, isa);
      }
  }
}

TEST_CASE("dense: large logits (scores around +-100) do not overflow", "[dense][numerics]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  const index_t D = 64;
  // Default scale 1/8; q and k near c: scores near 8 * c^2 = 100 with a spread of a few units.
  const float c = std::sqrt(100.f / 8.f);
  struct range {
    const char* what;
    float q_lo, q_hi, k_lo, k_hi;
  };
  const range ranges[] = {{"scores near +100", 0.9f * c, 1.1f * c, 0.9f * c, 1.1f * c},
                          {"scores near -100", 0.9f * c, 1.1f * c, -1.1f * c, -0.9f * c},
                          {"scores in [-100, 100]", 0.9f * c, 1.1f * c, -1.1f * c, 1.1f * c},
                          {"scores spread +-400", -4 * c, 4 * c, -c, c}};
  for (const auto& r : ranges)
    for (mask_kind m : kMasks) {
      INFO(r.what);
      dense_case k;
      k.q_heads = 2, k.kv_heads = 1, k.q_len = 70, k.kv_len = 200, k.dim = D, k.mask = m;
      k.q_lo = r.q_lo, k.q_hi = r.q_hi, k.k_lo = r.k_lo, k.k_hi = r.k_hi;
      k.seed = 77;
      check_dense_case(k, isa);
    }
}

TEST_CASE("dense: huge scores (about 1e28) give no NaN and pick the top key", "[dense][numerics]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (mask_kind m : kMasks) {
    dense_case c;
    c.q_heads = 2, c.kv_heads = 2, c.q_len = 40, c.kv_len = 150, c.dim = 16, c.mask = m;
    c.q_lo = 0.5e14f, c.q_hi = 1.5e14f, c.k_lo = 0.5e14f, c.k_hi = 1.5e14f;  // q.k ~ 1.6e29, x 1/4
    c.seed = 5;
    check_dense_case(c, isa);
  }
}

TEST_CASE("dense: softcap and explicit scale", "[dense]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  struct opt {
    float scale, softcap, range;
  };
  // range 4 with scale 0.5 and D 64: raw scores have a spread of about +-20, so a cap of 30
  // bends them noticeably; range 1 keeps the [-1, 1] criterion in force.
  const opt opts[] = {{0.3f, 0.f, 1.f}, {2.f, 0.f, 1.f},  {-0.5f, 0.f, 1.f}, {0.f, 30.f, 1.f},
                      {1.f, 5.f, 1.f},  {0.5f, 30.f, 4.f}, {1.f, 1.f, 4.f},   {-1.f, 3.f, 2.f}};
  for (const auto& o : opts)
    for (mask_kind m : kMasks) {
      dense_case c;
      c.q_heads = 4, c.kv_heads = 2, c.q_len = 45, c.kv_len = 133, c.dim = 64, c.mask = m;
      c.scale = o.scale, c.softcap = o.softcap;
      c.q_lo = c.k_lo = -o.range, c.q_hi = c.k_hi = o.range;
      c.seed = 11;
      check_dense_case(c, isa);
    }
}

TEST_CASE("dense: scale 0 means 1/sqrt(dim of q)", "[dense]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (index_t d : {16, 40}) {
    dense_case c;
    c.q_heads = 2, c.q_len = 33, c.kv_len = 70, c.dim = d, c.v_dim = 8, c.seed = 4;
    const dense_run implicit = run_only(c);
    c.scale = 1.f / std::sqrt(float(d));
    const dense_run explicit_ = run_only(c);
    CHECK(implicit.out.same_bits(explicit_.out));
    c.scale = 1.f;  // and a different scale really changes the result
    CHECK(run_only(c).out.max_abs_diff(implicit.out) > 1e-3);
  }
}

TEST_CASE("dense: softcap bends large scores (a kernel that ignores it fails)", "[dense]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  dense_case c;
  c.q_len = 20, c.kv_len = 50, c.dim = 32, c.scale = 1.f, c.softcap = 2.f, c.q_lo = c.k_lo = -3, c.q_hi = c.k_hi = 3;
  dense_run capped = run_only(c);
  c.softcap = 0.f;
  dense_run plain = run_only(c);
  CHECK(capped.out.max_abs_diff(plain.out) > 0.05);
}

TEST_CASE("dense: lse output, contiguous and strided, and absent", "[dense]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (index_t ss : {1, 3, 17})
    for (mask_kind m : kMasks) {
      dense_case c;
      c.batch = 2, c.q_heads = 4, c.kv_heads = 1, c.q_len = 70, c.kv_len = 60, c.dim = 24, c.mask = m;
      c.lse = true, c.lse_seq_stride = ss;
      c.seed = std::uint32_t(ss);
      check_dense_case(c, isa);
    }
  for (mask_kind m : kMasks) {
    dense_case c;
    c.q_len = 19, c.kv_len = 19, c.dim = 8, c.mask = m, c.lse = false;
    check_dense_case(c, isa);
  }
}

TEST_CASE("dense: long key sequence (4096 keys, head_dim 128)", "[dense][slow]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (mask_kind m : kMasks) {
    dense_case c;
    c.q_heads = 2, c.kv_heads = 1, c.q_len = 64, c.kv_len = 4096, c.dim = 128, c.mask = m;
    c.seed = 4096;
    check_dense_case(c, isa);
  }
}

TEST_CASE("dense: query groups wider than a work unit, and head_dim 512", "[dense]") {
  // 40 query heads per KV head: more heads than lanes on SSE2 and AVX2 (12 and 24), so a
  // group is split into head sub-groups with a ragged last one.
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (mask_kind m : kMasks) {
    dense_case c;
    c.q_heads = 80, c.kv_heads = 2, c.q_len = 3, c.kv_len = 150, c.dim = 24, c.mask = m, c.seed = 40;
    check_dense_case(c, isa);
    dense_case d;
    d.q_heads = 2, d.kv_heads = 1, d.q_len = 13, d.kv_len = 140, d.dim = 512, d.v_dim = 300, d.mask = m, d.seed = 512;
    check_dense_case(d, isa);
  }
}

// [slow]: the sanitizer stage skips it (25 s under ASan); test_decode.cpp runs the same
// driver over 8192- and 10240-key caches there.
TEST_CASE("dense: decode-like shapes over a long cache (1 and 2 queries, 20000 keys)", "[dense][slow]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (index_t lq : {1, 2})
    for (mask_kind m : kMasks) {
      dense_case c;
      c.batch = 2, c.q_heads = 8, c.kv_heads = 2, c.q_len = lq, c.kv_len = 20000, c.dim = 64, c.mask = m;
      c.seed = std::uint32_t(lq);
      check_dense_case(c, isa);
    }
}

TEST_CASE("dense: empty problems", "[dense][edge]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  SECTION("no keys: every row is fully masked") {
    for (mask_kind m : kMasks) {
      dense_case c;
      c.q_heads = 2, c.q_len = 5, c.kv_len = 0, c.dim = 8, c.mask = m;
      const accuracy a = check_dense_case(c, isa);
      CHECK(a.masked_rows == 2 * 5);
    }
  }
  SECTION("no queries or no batch: nothing is written") {
    for (index_t b : {0, 1}) {
      dense_case c;
      c.batch = b, c.q_len = 1 - b, c.kv_len = 9, c.dim = 8;
      dense_run r = run_only(c);
      CHECK(r.out.touched_outside() == 0);
      CHECK(r.lse.touched_outside() == 0);
    }
  }
}

TEST_CASE("dense: K and V broadcast over the batch by a zero batch stride", "[dense]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  const index_t B = 3, Hq = 4, Hk = 2, Lq = 21, Lk = 77, D = 16;
  tensor q(B, Hq, Lq, D), k(1, Hk, Lk, D), v(1, Hk, Lk, D), out(B, Hq, Lq, D);
  q.fill_uniform(1), k.fill_uniform(2), v.fill_uniform(3);
  auto bcast = [&](const tensor& t) {
    auto s = t.view.strides();
    s[0] = 0;
    return tensor_view<const float>(t.view.data_handle(), {{B, t.H, t.S, t.D}}, s);
  };
  for (mask_kind m : kMasks) {
    INFO(to_string(m));
    const auto ref = m == mask_kind::causal
                         ? attnkit::reference::attention(q.cview(), bcast(k), bcast(v), attnkit::causal{})
                         : attnkit::reference::attention(q.cview(), bcast(k), bcast(v), attnkit::no_mask{});
    if (m == mask_kind::causal)
      attnkit::attention(q.cview(), bcast(k), bcast(v), out.view, attnkit::causal{});
    else
      attnkit::attention(q.cview(), bcast(k), bcast(v), out.view, attnkit::no_mask{});
    const auto plain = plain_fp32(q.cview(), bcast(k), bcast(v), m);
    const accuracy a = compare(out, nullptr, ref, plain);
    ratio_registry::get().record(isa, a, "zero batch stride K/V");
    CHECK(a.err <= a.bound());
    CHECK(a.err <= 1e-4);
  }
}

TEST_CASE("dense: attention over Eigen row-major matrices via view_of", "[dense][eigen]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const index_t S = 50, Hq = 4, Hk = 2, D = 16;
  // A fused QKV projection output [S, (Hq + 2 Hk) * D]; q, k and v are column blocks of it,
  // so their views carry the outer stride of the big matrix.
  Mat qkv(S, (Hq + 2 * Hk) * D);
  std::mt19937 gen(9);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (index_t i = 0; i < qkv.size(); ++i) qkv.data()[i] = u(gen);
  Mat out(S, Hq * D);
  out.setConstant(sentinel());
  const auto q = attnkit::view_of(qkv.middleCols(0, Hq * D), Hq);
  const auto k = attnkit::view_of(qkv.middleCols(Hq * D, Hk * D), Hk);
  const auto v = attnkit::view_of(qkv.middleCols((Hq + Hk) * D, Hk * D), Hk);
  const auto o = attnkit::view_of(out, Hq);
  attnkit::attention(q, k, v, o, attnkit::causal{});
  const auto ref = attnkit::reference::attention(q, k, v, attnkit::causal{});
  const auto plain = plain_fp32(q, k, v, mask_kind::causal);
  tensor got(1, Hq, S, D);
  got.for_each([&](index_t b, index_t h, index_t s, index_t d) { got(b, h, s, d) = o(b, h, s, d); });
  const accuracy a = compare(got, nullptr, ref, plain);
  CHECK(a.err <= a.bound());
  CHECK(a.err <= 1e-4);
  CHECK(got.nonfinite() == 0);
}

// ------------------------------------------------------------------------------------------
// Properties

TEST_CASE("dense property: GQA equals MHA with the K/V heads repeated", "[dense][property]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (index_t g : {2, 3, 8})
    for (mask_kind m : kMasks) {
      dense_case c;
      c.batch = 2, c.kv_heads = 2, c.q_heads = 2 * g, c.q_len = 50, c.kv_len = 140, c.dim = 24, c.v_dim = 20, c.mask = m;
      c.seed = std::uint32_t(g);
      CAPTURE(g, c.str());
      dense_run gqa = make_inputs(c);
      run_attnkit(c, gqa);

      dense_case mc = c;
      mc.kv_heads = c.q_heads;
      dense_run mha = make_inputs(mc);
      mha.q = gqa.q;
      mha.k.for_each([&](index_t b, index_t h, index_t s, index_t d) { mha.k(b, h, s, d) = gqa.k(b, h / g, s, d); });
      mha.v.for_each([&](index_t b, index_t h, index_t s, index_t d) { mha.v(b, h, s, d) = gqa.v(b, h / g, s, d); });
      run_attnkit(mc, mha);
      const double diff = gqa.out.max_abs_diff(mha.out);
      CHECK(diff <= 1e-6);
      if (!gqa.out.same_bits(mha.out)) WARN("GQA and repeated-head MHA differ (not bitwise), max diff " << diff);
      // And the reference agrees with both (the property alone would pass a kernel that
      // is wrong the same way in both configurations).
      const auto ref = run_reference(c, gqa);
      const accuracy a = compare(gqa.out, nullptr, ref,
                                 plain_fp32(gqa.q.cview(), gqa.k.cview(), gqa.v.cview(), m));
      CHECK(a.err <= a.bound());
    }
}

TEST_CASE("dense property: causal with a single query equals no mask", "[dense][property]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (index_t lk : {1, 127, 128, 300}) {
    dense_case c;
    c.q_heads = 4, c.kv_heads = 2, c.q_len = 1, c.kv_len = lk, c.dim = 32, c.seed = std::uint32_t(lk);
    CAPTURE(lk);
    dense_run a = run_only(c);
    c.mask = mask_kind::causal;
    dense_run b = run_only(c);
    CHECK(a.out.max_abs_diff(b.out) <= 1e-6);
    CHECK(a.out.same_bits(b.out));
    CHECK(a.out.nonfinite() == 0);
  }
}

// [slow]: the sanitizer stage skips it (22 s under ASan): it checks the order of the
// arithmetic, which the sanitizers do not see; every other test runs the threaded driver
// there (all threads by default), and "more threads than work units" and the host executor
// below still run.
TEST_CASE("dense property: output is bitwise identical for 1, 2, 3 and all threads", "[dense][property][threads][slow]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (mask_kind m : kMasks)
    for (index_t kv_heads : {8, 2}) {
      dense_case c;
      c.batch = 2, c.q_heads = 8, c.kv_heads = kv_heads, c.q_len = 300, c.kv_len = 300, c.dim = 64, c.mask = m;
      c.seed = 3;
      CAPTURE(c.str());
      c.num_threads = 1;
      const dense_run one = run_only(c);
      CHECK(one.out.nonfinite() == 0);
      for (int t : {2, 3, 0}) {
        CAPTURE(t);
        c.num_threads = t;
        const dense_run r = run_only(c);
        CHECK(r.out.same_bits(one.out));
        CHECK(std::memcmp(r.lse.buf.data(), one.lse.buf.data(), one.lse.buf.size() * sizeof(float)) == 0);
      }
    }
}

TEST_CASE("dense property: more threads than work units", "[dense][property][threads]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  dense_case c;
  c.q_len = 5, c.kv_len = 300, c.dim = 32, c.mask = mask_kind::causal, c.seed = 12;  // a single work unit
  c.num_threads = 1;
  const dense_run one = run_only(c);
  c.num_threads = 16;
  const accuracy a = check_dense_case(c, isa);
  CHECK(a.err <= a.bound());
  CHECK(run_only(c).out.same_bits(one.out));
}

TEST_CASE("dense property: a host executor gives bitwise the OpenMP result", "[dense][property][threads]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (mask_kind m : kMasks) {
    dense_case c;
    c.batch = 2, c.q_heads = 8, c.kv_heads = 4, c.q_len = 300, c.kv_len = 257, c.dim = 48, c.mask = m, c.seed = 8;
    CAPTURE(c.str());
    const dense_run omp = run_only(c);

    toy_pool pool;
    std::vector<std::atomic<int>> seen(100000);
    pool.seen = &seen;
    dense_run ex = make_inputs(c);
    ex.opts.exec = attnkit::executor{&toy_parallel_for, &pool};
    run_attnkit(c, ex);
    CHECK(pool.calls.load() > 1);  // the hook was used
    std::int64_t once = 0, other = 0;
    for (std::size_t i = 0; i < seen.size(); ++i) {
      if (std::int64_t(i) < pool.calls.load())
        once += seen[i].load() == 1, other += seen[i].load() != 1;
      else
        other += seen[i].load() != 0;
    }
    CHECK(other == 0);
    CHECK(once == pool.calls.load());
    CHECK(ex.out.same_bits(omp.out));
    CHECK(std::memcmp(ex.lse.buf.data(), omp.lse.buf.data(), omp.lse.buf.size() * sizeof(float)) == 0);
    CHECK(ex.out.touched_outside() == 0);
  }
}

TEST_CASE("dense property: fully masked rows are exactly 0 with lse -inf, never NaN", "[dense][property]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (index_t lk : {1, 50, 129}) {
    dense_case c;
    c.batch = 2, c.q_heads = 6, c.kv_heads = 2, c.q_len = 200, c.kv_len = lk, c.dim = 40, c.v_dim = 33;
    c.mask = mask_kind::causal, c.seed = std::uint32_t(lk);
    CAPTURE(c.str());
    dense_run r = run_only(c);  // out and lse start as NaN sentinels
    const index_t first_seen = c.q_len - c.kv_len;  // row i sees keys 0..i - first_seen
    index_t bad_zero = 0, bad_lse = 0, nonfinite = 0;
    for (index_t b = 0; b < c.batch; ++b)
      for (index_t h = 0; h < c.q_heads; ++h)
        for (index_t i = 0; i < c.q_len; ++i) {
          const bool masked = i < first_seen;
          const float l = r.lse(b, h, i);
          if (masked) {
            bad_lse += !(std::isinf(l) && l < 0);
            for (index_t j = 0; j < c.dv(); ++j) {
              const float o = r.out(b, h, i, j);
              std::uint32_t bits;
              std::memcpy(&bits, &o, 4);
              bad_zero += bits != 0u;  // +0.0 exactly
            }
          } else {
            nonfinite += !std::isfinite(l);
            for (index_t j = 0; j < c.dv(); ++j) nonfinite += !std::isfinite(r.out(b, h, i, j));
          }
        }
    CHECK(bad_zero == 0);
    CHECK(bad_lse == 0);
    CHECK(nonfinite == 0);
    // The first visible row attends to key 0 only: its output is v[0] exactly.
    CHECK(r.out(0, 0, first_seen, 0) == r.v(0, 0, 0, 0));
  }
}

#if ATTNKIT_RUNTIME_DISPATCH
TEST_CASE("dense: every ISA agrees with the others", "[dense][isa]") {
  dense_case c;
  c.batch = 2, c.q_heads = 6, c.kv_heads = 2, c.q_len = 77, c.kv_len = 300, c.dim = 40, c.v_dim = 24;
  c.mask = mask_kind::causal, c.seed = 99;
  std::vector<dense_run> runs;
  for (attnkit::isa i : isas_under_test()) {
    isa_scope s(i);
    runs.push_back(run_only(c));
  }
  for (std::size_t i = 1; i < runs.size(); ++i) {
    CAPTURE(isa_label(isas_under_test()[i]));
    CHECK(runs[i].out.max_abs_diff(runs[0].out) <= 2e-6);
  }
}

TEST_CASE("runtime dispatch: set_isa selects the code path, reset_isa restores it", "[isa]") {
  const attnkit::isa best = attnkit::supported_isa();
  INFO("supported_isa: " << attnkit::isa_name(best) << ", backend: " << attnkit::backend_name());
  for (attnkit::isa i : {attnkit::isa::sse2, attnkit::isa::avx2, attnkit::isa::avx512}) {
    attnkit::set_isa(i);
    const attnkit::isa got = int(i) <= int(best) ? i : best;  // never above the CPU
    CHECK(attnkit::active_isa() == got);
    CHECK(std::string(attnkit::backend_name()).find(attnkit::isa_name(got)) == 0);
    if (int(i) > int(best)) WARN("ISA " << attnkit::isa_name(i) << " not available here: its kernels are not tested");
  }
  attnkit::reset_isa();
  CHECK(attnkit::active_isa() == best);
  CHECK(std::string(attnkit::backend_name()).find("runtime dispatch") != std::string::npos);
}
#else
TEST_CASE("static build: backend is the compile-time ISA", "[isa]") {
  const std::string name = attnkit::backend_name();
  INFO(name);
  CHECK(!name.empty());
  CHECK(name.find("runtime") == std::string::npos);
#if defined(__AVX512F__)
  CHECK(name.find("avx512") == 0);
#elif defined(__AVX2__)
  CHECK(name.find("avx2") != std::string::npos);
#endif
}
#endif
