// Tests of the latent family (issue 6): MLA absorbed (mla_attention, mla_attention_paged,
// mla_absorbed_attention) and expanded (mla_expanded_attention) against the un-absorbed
// double reference from the weights, within 2x the error of a plain fp32 expanded
// implementation; latent-query routing (latent_attention) against its double reference
// within 2x a plain fp32 two-step; errors.
#include <attnkit/latent_eigen.hpp>

#include "support/attnkit_test.hpp"
#include "support/sparse_test.hpp"

#include <numeric>

namespace {

using namespace attnkit_test;
using attnkit::bf16;
using attnkit::fp16;
using attnkit::make_bhsd;

enum class storage { f32, bf16, f16 };
const char* to_string(storage s) { return s == storage::f32 ? "fp32" : s == storage::bf16 ? "bf16" : "fp16"; }

/// One MLA problem: shapes, options and how the cache is stored.
struct mla_case {
  index_t B = 1, H = 4, Lq = 1, Lk = 100, r = 64, dr = 16, dn = 32, dv = 24;
  storage st = storage::f32;
  bool sinks = false, lse = true;
  float softcap = 0.f, scale = 0.f;  // scale 0: from qk_nope_head_dim
  index_t page_size = 0;             // > 0: also run mla_attention_paged (ragged, shuffled pages)
  int threads = 0;
  std::uint32_t seed = 1;
  std::string what = "no_mask";

  std::string str() const {
    std::ostringstream s;
    s << what << " | B=" << B << " H=" << H << " Lq=" << Lq << " Lk=" << Lk << " r=" << r << " dr=" << dr
      << " dn=" << dn << " dv=" << dv << " " << to_string(st) << (sinks ? " sinks" : "") << (lse ? " lse" : "");
    if (softcap != 0.f) s << " softcap=" << softcap;
    if (scale != 0.f) s << " scale=" << scale;
    if (page_size) s << " paged/" << page_size;
    if (threads) s << " threads=" << threads;
    s << " seed=" << seed;
    return s.str();
  }
};

/// Inputs of an mla_case: the cache in its storage type plus its fp32 values (the rounded
/// ones), the un-absorbed query, the absorbed query (through mla_absorb_query) and weights.
struct mla_inputs {
  tensor q_nope, q_rope, w_uk, w_uv, c32, kr32;
  std::vector<bf16> cb, krb;
  std::vector<fp16> ch, krh;
  std::vector<float> sink_values;
  attnkit::mla_options opt;
};

mla_inputs make_mla(const mla_case& c) {
  mla_inputs in;
  in.q_nope = tensor(c.B, c.H, c.Lq, c.dn);
  in.q_rope = tensor(c.B, c.H, c.Lq, c.dr);
  in.w_uk = tensor(1, c.H, c.dn, c.r);
  in.w_uv = tensor(1, c.H, c.dv, c.r);
  in.c32 = tensor(c.B, 1, c.Lk, c.r);
  in.kr32 = tensor(c.B, 1, c.Lk, c.dr);
  in.q_nope.fill_uniform(c.seed * 8 + 0);
  in.q_rope.fill_uniform(c.seed * 8 + 1);
  // Weights of the size a trained model has: K and V entries of order 1.
  const float w = std::sqrt(3.f / float(c.r));
  in.w_uk.fill_uniform(c.seed * 8 + 2, -w, w);
  in.w_uv.fill_uniform(c.seed * 8 + 3, -w, w);
  in.c32.fill_uniform(c.seed * 8 + 4);
  in.kr32.fill_uniform(c.seed * 8 + 5);
  // 16-bit caches: the fp32 copies hold the rounded values (what the kernels read).
  auto round = [&](tensor& t, auto& vec, auto conv) {
    vec.clear();
    t.for_each([&](index_t b, index_t h, index_t s, index_t d) {
      vec.push_back(conv(t(b, h, s, d)));
      t(b, h, s, d) = attnkit::to_float(vec.back());
    });
  };
  if (c.st == storage::bf16) {
    round(in.c32, in.cb, [](float x) { return bf16(x); });
    round(in.kr32, in.krb, [](float x) { return bf16(x); });
  } else if (c.st == storage::f16) {
    round(in.c32, in.ch, [](float x) { return fp16(x); });
    round(in.kr32, in.krh, [](float x) { return fp16(x); });
  }
  if (c.sinks) {
    std::mt19937 gen(c.seed * 8 + 6);
    std::uniform_real_distribution<float> u(-2.f, 2.f);
    for (index_t h = 0; h < c.H; ++h) in.sink_values.push_back(u(gen));
    in.opt.sink_logits = {in.sink_values.data(), c.H};
  }
  in.opt.qk_nope_head_dim = c.dn;
  in.opt.scale = c.scale;
  in.opt.softcap = c.softcap;
  in.opt.num_threads = c.threads;
  return in;
}

/// Runs f(c_view, k_rope_view) with the cache views in the case's storage type
/// ([B, 1, Lk, r] contiguous; the fp32 case uses the padded test tensors).
template <class F>
void with_cache(const mla_case& c, const mla_inputs& in, F&& f) {
  if (c.st == storage::f32) {
    f(in.c32.cview(), in.kr32.cview());
  } else if (c.st == storage::bf16) {
    f(make_bhsd(in.cb.data(), c.B, 1, c.Lk, c.r), make_bhsd(in.krb.data(), c.B, 1, c.Lk, c.dr));
  } else {
    f(make_bhsd(in.ch.data(), c.B, 1, c.Lk, c.r), make_bhsd(in.krh.data(), c.B, 1, c.Lk, c.dr));
  }
}

/// Plain fp32 MLA, expanded, as a user writes it by hand: K_h = W_UK_h c and V_h = W_UV_h c
/// in float, materialised scores, softmax in float (plain_fp32_general).
plain_result plain_expanded(const mla_case& c, const mla_inputs& in, const allowed_fn& allowed, float scale) {
  tensor q(c.B, c.H, c.Lq, c.dn + c.dr), k(c.B, c.H, c.Lk, c.dn + c.dr), v(c.B, c.H, c.Lk, c.dv);
  q.for_each([&](index_t b, index_t h, index_t i, index_t d) {
    q(b, h, i, d) = d < c.dn ? in.q_nope(b, h, i, d) : in.q_rope(b, h, i, d - c.dn);
  });
  for (index_t b = 0; b < c.B; ++b)
    for (index_t h = 0; h < c.H; ++h)
      for (index_t j = 0; j < c.Lk; ++j) {
        for (index_t d = 0; d < c.dn; ++d) {
          float x = 0.f;
          for (index_t t = 0; t < c.r; ++t) x += in.w_uk(0, h, d, t) * in.c32(b, 0, j, t);
          k(b, h, j, d) = x;
        }
        for (index_t d = 0; d < c.dr; ++d) k(b, h, j, c.dn + d) = in.kr32(b, 0, j, d);
        for (index_t d = 0; d < c.dv; ++d) {
          float x = 0.f;
          for (index_t t = 0; t < c.r; ++t) x += in.w_uv(0, h, d, t) * in.c32(b, 0, j, t);
          v(b, h, j, d) = x;
        }
      }
  yard_spec y;
  y.allowed = allowed;
  y.sinks = in.sink_values.empty() ? nullptr : in.sink_values.data();
  return plain_fp32_general(q.cview(), k.cview(), v.cview(), y, scale, c.softcap);
}

/// Plain fp32 absorbed MLA on the kernel's own q_lat: concatenated [q_lat | q_rope] and
/// [c | k_rope], value c.
plain_result plain_absorbed(const mla_case& c, const mla_inputs& in, const tensor& q_lat, const allowed_fn& allowed,
                            float scale) {
  tensor q(c.B, c.H, c.Lq, c.r + c.dr), k(c.B, 1, c.Lk, c.r + c.dr);
  q.for_each([&](index_t b, index_t h, index_t i, index_t d) {
    q(b, h, i, d) = d < c.r ? q_lat(b, h, i, d) : in.q_rope(b, h, i, d - c.r);
  });
  k.for_each([&](index_t b, index_t, index_t j, index_t d) {
    k(b, 0, j, d) = d < c.r ? in.c32(b, 0, j, d) : in.kr32(b, 0, j, d - c.r);
  });
  yard_spec y;
  y.allowed = allowed;
  y.sinks = in.sink_values.empty() ? nullptr : in.sink_values.data();
  return plain_fp32_general(q.cview(), k.cview(), in.c32.cview(), y, scale, c.softcap);
}

float scale_of(const mla_case& c) { return c.scale != 0.f ? c.scale : 1.f / std::sqrt(float(c.dn + c.dr)); }

/// Max |out - ref| and the plain yardstick's, as check_accuracy's accuracy.
accuracy compare_out(const tensor& out, const lse_buffer* lse, const attnkit::reference::result& ref,
                     const plain_result& plain) {
  return compare(out, lse, ref, plain);
}

void check_acc(const accuracy& a, const std::string& what) {
  INFO(what << ": err " << a.err << " plain fp32 err " << a.plain_err << " (ratio " << a.ratio() << ")");
  CHECK(a.nonfinite_out == 0);
  CHECK(a.masked_nonzero == 0);
  CHECK(a.err <= a.bound());
  CHECK(a.lse_mismatch == 0);
  if (a.lse_checked) CHECK(a.lse_err <= a.lse_bound());
}

/// Runs one case end to end:
///   absorbed   mla_absorbed_attention (absorb, mla_attention, project) vs the un-absorbed
///              reference, <= 2 x plain fp32 expanded
///   expanded   mla_expanded_attention, same criterion
///   latent     mla_attention's out_lat and lse vs reference::mla_attention on the same
///              q_lat, <= 2 x plain fp32 absorbed; rows with no allowed key give exactly 0
///   paged      mla_attention_paged, bitwise equal to mla_attention (when page_size > 0)
template <class Mask>
void check_mla(const mla_case& c, const std::string& isa, const Mask& mask, const allowed_fn& allowed) {
  INFO("case: " << c.str());
  const mla_inputs in = make_mla(c);
  const float scale = scale_of(c);
  const auto ref = attnkit::reference::mla_expanded(in.q_nope.cview(), in.q_rope.cview(), in.c32.cview(),
                                                    in.kr32.cview(), in.w_uk.cview(), in.w_uv.cview(), mask, in.opt);
  const plain_result plain = plain_expanded(c, in, allowed, scale);
  tensor out_abs(c.B, c.H, c.Lq, c.dv), out_exp(c.B, c.H, c.Lq, c.dv), q_lat(c.B, c.H, c.Lq, c.r),
      out_lat(c.B, c.H, c.Lq, c.r);
  lse_buffer lse_abs(c.B, c.H, c.Lq), lse_exp(c.B, c.H, c.Lq), lse_lat(c.B, c.H, c.Lq);
  auto lse_or_none = [&](lse_buffer& l) { return c.lse ? l.view : tensor_view<float>{}; };
  with_cache(c, in, [&](const auto& cv, const auto& rv) {
    attnkit::mla_absorbed_attention(in.q_nope.cview(), in.q_rope.cview(), cv, rv, in.w_uk.cview(), in.w_uv.cview(),
                                    out_abs.view, mask, in.opt, lse_or_none(lse_abs));
    attnkit::mla_expanded_attention(in.q_nope.cview(), in.q_rope.cview(), cv, rv, in.w_uk.cview(), in.w_uv.cview(),
                                    out_exp.view, mask, in.opt, lse_or_none(lse_exp));
    attnkit::mla_absorb_query(in.q_nope.cview(), in.w_uk.cview(), q_lat.view, c.threads);
    attnkit::mla_attention(q_lat.cview(), in.q_rope.cview(), cv, rv, out_lat.view, mask, in.opt,
                           lse_or_none(lse_lat));
  });
  const accuracy a_abs = compare_out(out_abs, c.lse ? &lse_abs : nullptr, ref, plain);
  const accuracy a_exp = compare_out(out_exp, c.lse ? &lse_exp : nullptr, ref, plain);
  ratio_registry::get().record(isa, a_abs, "mla absorbed " + c.str());
  ratio_registry::get().record(isa, a_exp, "mla expanded " + c.str());
  check_acc(a_abs, "absorbed vs un-absorbed reference");
  check_acc(a_exp, "expanded vs un-absorbed reference");
  CHECK(out_abs.touched_outside() == 0);
  CHECK(out_exp.touched_outside() == 0);

  const auto ref_lat = attnkit::reference::mla_attention(q_lat.cview(), in.q_rope.cview(), in.c32.cview(),
                                                         in.kr32.cview(), mask, in.opt);
  const plain_result plain_lat = plain_absorbed(c, in, q_lat, allowed, scale);
  const accuracy a_lat = compare_out(out_lat, c.lse ? &lse_lat : nullptr, ref_lat, plain_lat);
  ratio_registry::get().record(isa, a_lat, "mla_attention " + c.str());
  check_acc(a_lat, "mla_attention out_lat vs absorbed reference");
  CHECK(out_lat.touched_outside() == 0);
  if (c.lse) CHECK(lse_lat.touched_outside() == 0);
  // Rows without an allowed key (test-side mask): exactly 0, lse -inf or the sink logit.
  for (index_t b = 0; b < c.B; ++b)
    for (index_t h = 0; h < c.H; ++h)
      for (index_t i = 0; i < c.Lq; ++i) {
        bool any = false;
        for (index_t j = 0; j < c.Lk && !any; ++j) any = allowed(b, h, i + c.Lk - c.Lq, j);
        if (any) continue;
        for (index_t d = 0; d < c.r; ++d) CHECK(out_lat(b, h, i, d) == 0.f);
        if (c.lse) {
          if (c.sinks)
            CHECK(lse_lat(b, h, i) == Approx(in.sink_values[std::size_t(h)]));
          else
            CHECK(lse_lat(b, h, i) == -std::numeric_limits<float>::infinity());
        }
      }

  if (c.page_size > 0) {
    // A batch of one sequence per batch entry, all of length Lk, in shuffled pages of a
    // pool [pages, page_size, r] (and its rope pool), plus one spare page never referenced.
    const index_t ps = c.page_size, per = (c.Lk + ps - 1) / ps, pages = c.B * per + 1;
    std::vector<std::int32_t> table(std::size_t(c.B * per));
    std::iota(table.begin(), table.end(), 0);
    std::mt19937 rng(c.seed);
    std::shuffle(table.begin(), table.end(), rng);
    std::vector<std::int32_t> lens(std::size_t(c.B), std::int32_t(c.Lk));
    tensor out_p(c.B, c.H, c.Lq, c.r);
    lse_buffer lse_p(c.B, c.H, c.Lq);
    auto run_paged = [&](auto zero) {
      using T = decltype(zero);
      std::vector<T> cp(std::size_t(pages * ps * c.r), T(std::nanf(""))), rp(std::size_t(pages * ps * c.dr), T(std::nanf("")));
      for (index_t b = 0; b < c.B; ++b)
        for (index_t t = 0; t < c.Lk; ++t) {
          const index_t row = index_t(table[std::size_t(b * per + t / ps)]) * ps + t % ps;
          for (index_t d = 0; d < c.r; ++d) cp[std::size_t(row * c.r + d)] = T(in.c32(b, 0, t, d));
          for (index_t d = 0; d < c.dr; ++d) rp[std::size_t(row * c.dr + d)] = T(in.kr32(b, 0, t, d));
        }
      attnkit::mla_attention_paged(q_lat.cview(), in.q_rope.cview(), attnkit::make_bshd(cp.data(), pages, ps, 1, c.r),
                                   attnkit::make_bshd(rp.data(), pages, ps, 1, c.dr),
                                   attnkit::page_table_view{table.data(), c.B, per, 0},
                                   attnkit::int32_span{lens.data(), c.B}, out_p.view, mask, in.opt,
                                   lse_or_none(lse_p));
    };
    if (c.st == storage::f32) run_paged(0.f);
    else if (c.st == storage::bf16) run_paged(bf16(0.f));
    else run_paged(fp16(0.f));
    INFO("paged vs contiguous mla_attention");
    CHECK(out_p.same_bits(out_lat));
    if (c.lse) CHECK(std::memcmp(lse_p.buf.data(), lse_lat.buf.data(), lse_p.buf.size() * sizeof(float)) == 0);
  }
}

mla_case make_case(index_t B, index_t H, index_t Lq, index_t Lk, std::uint32_t seed) {
  mla_case c;
  c.B = B, c.H = H, c.Lq = Lq, c.Lk = Lk, c.seed = seed;
  return c;
}

}  // namespace

TEST_CASE("latent: absorbed MLA == expanded MLA == un-absorbed double reference, Lq 1..16 (decode path)",
          "[latent][mla]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (index_t lq = 1; lq <= 16; ++lq) {
    // 16 heads (one whole query-row tile of 16 x Lq) on a few lengths; fewer elsewhere
    mla_case c = make_case(1 + lq % 2, lq == 1 || lq == 9 || lq == 16 ? 16 : 3, lq, 37 + 23 * lq,
                           std::uint32_t(100 + lq));
    c.what = "causal";
    check_mla(c, isa, attnkit::causal{}, d_causal());
    if (lq % 3 != 1) continue;
    c.what = "no_mask";
    c.seed += 50;
    check_mla(c, isa, attnkit::no_mask{}, d_all());
  }
}

TEST_CASE("latent: longer Lq through the flash driver (prefill chunks), causal and unmasked", "[latent][mla]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (index_t lq : {17, 40, 97}) {
    mla_case c = make_case(1, 3, lq, lq + 60 * i, std::uint32_t(200 + i));
    c.what = "causal";
    check_mla(c, isa, attnkit::causal{}, d_causal());
    c.what = "no_mask";
    c.Lk = lq;  // square
    check_mla(c, isa, attnkit::no_mask{}, d_all());
    ++i;
  }
}

TEST_CASE("latent: MLA with masks (sliding_window, StreamingLLM, sink_tokens, block_mask, mask_fn)",
          "[latent][mla][masks]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (index_t lq : {1, 6, 40}) {
    const index_t lk = lq == 40 ? 170 : 300;
    auto next = [&](const char* what) {
      mla_case c = make_case(1 + i % 2, 4, lq, lk, std::uint32_t(300 + i));
      c.what = what;
      c.st = i % 3 == 0 ? storage::f32 : i % 3 == 1 ? storage::bf16 : storage::f16;
      ++i;
      return c;
    };
    check_mla(next("sliding_window{1}"), isa, attnkit::sliding_window{1}, d_sliding(1));
    check_mla(next("sliding_window{50}"), isa, attnkit::sliding_window{50}, d_sliding(50));
    check_mla(next("StreamingLLM (sliding_window{32} | sink_tokens{4}) & causal"), isa,
              (attnkit::sliding_window{32} | attnkit::sink_tokens{4}) & attnkit::causal{}, d_streaming(32, 4));
    check_mla(next("sink_tokens{5}"), isa, attnkit::sink_tokens{5}, d_sink(5));
    bitmap bm(4, lk, 16, 16);
    bm.random(std::uint32_t(350 + i), 0.4, (lk - 1) / 16);  // the last query block sees nothing
    mla_case c = next("block_mask");
    c.what += " " + bm.str();
    check_mla(c, isa, bm.mask(), d_bitmap(bm));
    auto dilated = [](index_t, index_t h, index_t q, index_t k) { return k <= q && (q - k) % (h % 3 + 2) == 0; };
    check_mla(next("mask_fn dilated per head"), isa, attnkit::mask_fn(dilated), allowed_fn(dilated));
  }
}

TEST_CASE("latent: MLA with sink logits, softcap, an explicit scale, batch 2, no lse", "[latent][mla][sinks]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (index_t lq : {1, 4, 33}) {
    mla_case c = make_case(2, 5, lq, 150, std::uint32_t(400 + lq));
    c.sinks = true;
    c.what = "causal + sinks";
    check_mla(c, isa, attnkit::causal{}, d_causal());
    c.sinks = false;
    c.softcap = 2.5f;
    c.scale = 0.3f;
    c.what = "causal, softcap 2.5, scale 0.3";
    check_mla(c, isa, attnkit::causal{}, d_causal());
    c.softcap = 0.f, c.scale = 0.f, c.lse = false, c.sinks = true;
    c.what = "sliding_window{20} + sinks, no lse (rows without keys give the sink logit)";
    check_mla(c, isa, attnkit::sliding_window{20}, d_sliding(20));
  }
}

TEST_CASE("latent: MLA over bf16 and fp16 caches (the reference reads the same rounded values)",
          "[latent][mla][storage]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (storage st : {storage::bf16, storage::f16})
    for (index_t lq : {1, 3, 16, 24}) {
      mla_case c = make_case(1, 8, lq, 260, std::uint32_t(500 + lq));
      c.st = st;
      c.what = "causal";
      check_mla(c, isa, attnkit::causal{}, d_causal());
    }
}

TEST_CASE("latent: mla_attention_paged == mla_attention bitwise (shuffled pages), fp32/bf16/fp16",
          "[latent][mla][paged]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (index_t ps : {1, 7, 16, 64})
    for (index_t lq : {1, 5, 20}) {
      mla_case c = make_case(2, 4, lq, 90 + 13 * i, std::uint32_t(600 + i));
      c.page_size = ps;
      c.st = i % 3 == 0 ? storage::f32 : i % 3 == 1 ? storage::bf16 : storage::f16;
      c.sinks = i % 2 == 1;
      c.what = "causal";
      check_mla(c, isa, attnkit::causal{}, d_causal());
      ++i;
    }
}

TEST_CASE("latent: MLA shapes at the edges (d_rope 0, H 1, r 1, Lk 1, Lk < Lq, threads 1 and 3)",
          "[latent][mla][edges]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  mla_case c = make_case(1, 4, 3, 50, 700);
  c.dr = 0;
  c.what = "d_rope 0";
  check_mla(c, isa, attnkit::causal{}, d_causal());
  c = make_case(1, 1, 2, 1, 701);
  c.what = "H 1, Lk 1 < Lq 2 (row 0 sees no key)";
  check_mla(c, isa, attnkit::causal{}, d_causal());
  c = make_case(2, 3, 4, 33, 702);
  c.r = 1, c.dn = 1, c.dv = 1, c.dr = 1;
  c.what = "r 1, dn 1, dv 1, dr 1";
  check_mla(c, isa, attnkit::causal{}, d_causal());
  for (int t : {1, 3}) {
    c = make_case(1, 16, 2, 2000, 703);
    c.threads = t;
    c.what = "threads";
    check_mla(c, isa, attnkit::causal{}, d_causal());
  }
}

TEST_CASE("latent: DeepSeek-like sizes (r 512, d_rope 64, dn 128, 16 heads), Lq 1 and 4", "[latent][mla][slow]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (index_t lq : {1, 4}) {
    mla_case c = make_case(1, 16, lq, 700, std::uint32_t(800 + lq));
    c.r = 512, c.dr = 64, c.dn = 128, c.dv = 128;
    c.what = "causal";
    check_mla(c, isa, attnkit::causal{}, d_causal());
  }
}

TEST_CASE("latent: mla_attention bitwise identical for 1, 2, 3 threads and a host executor", "[latent][threads]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (index_t lq : {1, 40}) {
    mla_case c = make_case(1, 8, lq, 1500, 900);
    const mla_inputs in = make_mla(c);
    tensor q_lat(c.B, c.H, c.Lq, c.r);
    q_lat.fill_uniform(901);
    std::vector<tensor> outs;
    for (int t : {1, 2, 3, -1}) {
      attnkit::mla_options o = in.opt;
      toy_pool pool;
      if (t > 0)
        o.num_threads = t;
      else
        o.exec = {toy_parallel_for, &pool};
      tensor out(c.B, c.H, c.Lq, c.r);
      attnkit::mla_attention(q_lat.cview(), in.q_rope.cview(), in.c32.cview(), in.kr32.cview(), out.view,
                             attnkit::causal{}, o);
      outs.push_back(out);
    }
    for (std::size_t k = 1; k < outs.size(); ++k) CHECK(outs[k].same_bits(outs[0]));
  }
}

TEST_CASE("latent: the scale comes from qk_nope_head_dim + d_rope, not r + d_rope", "[latent][scale]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  mla_case c = make_case(1, 4, 2, 80, 950);
  const mla_inputs in = make_mla(c);
  tensor q_lat(c.B, c.H, c.Lq, c.r), a(c.B, c.H, c.Lq, c.r), b(c.B, c.H, c.Lq, c.r), wrong(c.B, c.H, c.Lq, c.r);
  q_lat.fill_uniform(951, -3.f, 3.f);
  auto run = [&](const tensor& out, attnkit::mla_options o) {
    attnkit::mla_attention(q_lat.cview(), in.q_rope.cview(), in.c32.cview(), in.kr32.cview(), out.view,
                           attnkit::no_mask{}, o);
  };
  attnkit::mla_options o;
  o.qk_nope_head_dim = c.dn;
  run(a, o);
  o = {};
  o.scale = 1.f / std::sqrt(float(c.dn + c.dr));
  run(b, o);
  CHECK(a.same_bits(b));
  o.scale = 1.f / std::sqrt(float(c.r + c.dr));
  run(wrong, o);
  CHECK(a.max_abs_diff(wrong) > 1e-3);
  o.qk_nope_head_dim = c.dn;  // an explicit scale wins
  tensor w2(c.B, c.H, c.Lq, c.r);
  run(w2, o);
  CHECK(w2.same_bits(wrong));
}

// ---------------------------------------------------------------------------------------
// Latent-query routing

namespace {

/// Plain fp32 routing: both steps materialised in float, Z in float.
std::vector<float> plain_routing(const tensor& ql, const tensor& k, const tensor& v, float scale, float softcap) {
  const index_t B = k.B, H = ql.H, Hkv = k.H, M = ql.S, N = k.S, d = k.D, dv = v.D, g = H / Hkv;
  if (scale == 0.f) scale = 1.f / std::sqrt(float(d));
  std::vector<float> out(std::size_t(B * H * N * dv), 0.f), z(std::size_t(M * dv)), s;
  auto cap = [&](float x) { return softcap != 0.f ? softcap * std::tanh(x / softcap) : x; };
  auto softmax = [](std::vector<float>& x) {
    float mx = -std::numeric_limits<float>::infinity(), sum = 0.f;
    for (float e : x) mx = std::max(mx, e);
    for (float& e : x) sum += (e = std::exp(e - mx));
    for (float& e : x) e /= sum;
  };
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h) {
      const index_t hk = h / g, bl = ql.B == 1 ? 0 : b;
      std::fill(z.begin(), z.end(), 0.f);
      for (index_t m = 0; m < M; ++m) {
        s.assign(std::size_t(N), 0.f);
        for (index_t j = 0; j < N; ++j) {
          float dot = 0.f;
          for (index_t t = 0; t < d; ++t) dot += ql(bl, h, m, t) * k(b, hk, j, t);
          s[std::size_t(j)] = cap(dot * scale);
        }
        softmax(s);
        for (index_t j = 0; j < N; ++j)
          for (index_t c = 0; c < dv; ++c) z[std::size_t(m * dv + c)] += s[std::size_t(j)] * v(b, hk, j, c);
      }
      for (index_t j = 0; j < N; ++j) {
        s.assign(std::size_t(M), 0.f);
        for (index_t m = 0; m < M; ++m) {
          float dot = 0.f;
          for (index_t t = 0; t < d; ++t) dot += k(b, hk, j, t) * ql(bl, h, m, t);
          s[std::size_t(m)] = cap(dot * scale);
        }
        softmax(s);
        for (index_t m = 0; m < M; ++m)
          for (index_t c = 0; c < dv; ++c)
            out[std::size_t(((b * H + h) * N + j) * dv + c)] += s[std::size_t(m)] * z[std::size_t(m * dv + c)];
      }
    }
  return out;
}

struct routing_case {
  index_t B = 1, H = 2, Hkv = 1, M = 8, N = 100, d = 16, dv = 16;
  bool shared_latents = true;  // q_latent batch 1
  float scale = 0.f, softcap = 0.f, q_range = 1.f;
  int threads = 0;
  tensor_spec spec;
  std::uint32_t seed = 1;
  std::string str() const {
    std::ostringstream s;
    s << "B=" << B << " H=" << H << " Hkv=" << Hkv << " M=" << M << " N=" << N << " d=" << d << " dv=" << dv
      << (shared_latents ? " shared latents" : " per-batch latents") << " q~U[-" << q_range << "," << q_range << "]"
      << " " << to_string(spec.lay) << "/" << to_string(spec.pad) << (spec.misalign ? "/misaligned" : "");
    if (scale != 0.f) s << " scale=" << scale;
    if (softcap != 0.f) s << " softcap=" << softcap;
    if (threads) s << " threads=" << threads;
    return s.str();
  }
};

void check_routing(const routing_case& c, const std::string& isa) {
  INFO("case: " << c.str());
  tensor ql(c.shared_latents ? 1 : c.B, c.H, c.M, c.d, c.spec), k(c.B, c.Hkv, c.N, c.d, c.spec),
      v(c.B, c.Hkv, c.N, c.dv, c.spec), out(c.B, c.H, c.N, c.dv, c.spec);
  ql.fill_uniform(c.seed * 4, -c.q_range, c.q_range);
  k.fill_uniform(c.seed * 4 + 1);
  v.fill_uniform(c.seed * 4 + 2);
  attnkit::attention_options o;
  o.scale = c.scale, o.softcap = c.softcap, o.num_threads = c.threads;
  const tensor ql0 = ql, k0 = k, v0 = v;
  attnkit::latent_attention(ql.cview(), k.cview(), v.cview(), out.view, o);
  const auto ref = attnkit::reference::latent_attention(ql.cview(), k.cview(), v.cview(), o);
  const std::vector<float> plain = plain_routing(ql, k, v, c.scale, c.softcap);
  double err = 0, perr = 0;
  index_t nonfinite = 0;
  out.for_each([&](index_t b, index_t h, index_t j, index_t x) {
    const double r = ref.o(b, h, j, x);
    nonfinite += !std::isfinite(out(b, h, j, x));
    const double e = std::fabs(double(out(b, h, j, x)) - r);
    err = std::isnan(e) ? 1e300 : std::max(err, e);
    perr = std::max(perr, std::fabs(double(plain[std::size_t(((b * c.H + h) * c.N + j) * c.dv + x)]) - r));
  });
  INFO("err " << err << " plain fp32 err " << perr);
  accuracy a;
  a.err = err, a.plain_err = perr;
  ratio_registry::get().record(isa, a, "latent_attention " + c.str());
  CHECK(nonfinite == 0);
  CHECK(err <= 2.0 * std::max(perr, 1e-6));
  CHECK(out.touched_outside() == 0);
  CHECK(ql.same_bits(ql0));
  CHECK(k.same_bits(k0));
  CHECK(v.same_bits(v0));
}

}  // namespace

TEST_CASE("latent routing: latent_attention == double two-step reference (M, N, GQA, layouts)",
          "[latent][routing]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  int i = 0;
  for (index_t m : {1, 7, 16, 64})
    for (index_t n : {1, 37, 300}) {
      routing_case c;
      c.M = m, c.N = n, c.seed = std::uint32_t(1000 + i);
      // heads cycle with period 4 and N with period 3: every GQA shape meets every N
      const index_t heads[4][2] = {{4, 2}, {2, 1}, {2, 2}, {6, 2}};
      c.H = heads[i % 4][0];
      c.Hkv = heads[i % 4][1];
      c.B = 1 + i % 2;
      c.shared_latents = i % 4 != 1;
      c.d = i % 2 ? 16 : 24;
      c.dv = i % 2 ? 32 : 8;
      c.spec.lay = i % 2 ? layout::bshd : layout::bhsd;
      c.spec.pad = i % 3 == 2 ? padding::plus3 : padding::none;
      c.spec.misalign = i % 5 == 3;
      check_routing(c, isa);
      ++i;
    }
}

TEST_CASE("latent routing: sharp scores, softcap, explicit scale, threads", "[latent][routing]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  routing_case c;
  c.M = 20, c.N = 200, c.H = 3, c.Hkv = 3, c.q_range = 4.f, c.seed = 1100;
  check_routing(c, isa);
  c.softcap = 3.f, c.scale = 0.5f, c.seed = 1101;
  check_routing(c, isa);
  c.softcap = 0.f, c.scale = 0.f, c.threads = 1, c.seed = 1102;
  check_routing(c, isa);
}

TEST_CASE("latent routing: a long sequence (N 4096, M 64, 4 heads)", "[latent][routing][slow]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  routing_case c;
  c.M = 64, c.N = 4096, c.H = 4, c.Hkv = 2, c.d = 32, c.dv = 32, c.B = 1, c.seed = 1200;
  check_routing(c, isa);
}

// ---------------------------------------------------------------------------------------
// Errors

TEST_CASE("latent errors: bad MLA shapes and options raise attnkit::error naming the argument", "[latent][errors]") {
  std::vector<float> buf(1 << 16, 0.f);
  float* p = buf.data();
  const index_t B = 1, H = 4, Lq = 2, Lk = 10, r = 16, dr = 4;
  auto qv = [&](index_t h, index_t d, index_t off = 0) { return make_bhsd(p + off, B, h, Lq, d); };
  std::vector<float> cache(4096, 0.f);  // c_kv views at 0, k_rope views at kr_off
  auto cv = [&](index_t b, index_t h, index_t d, index_t off) { return make_bhsd(cache.data() + off, b, h, Lk, d); };
  std::vector<float> outb(std::size_t(4 * H * Lq * r), 0.f);
  auto ov = [&](index_t h, index_t d) { return make_bhsd(outb.data(), B, h, Lq, d); };
  attnkit::mla_options o;
  o.qk_nope_head_dim = 8;
  const index_t qr_off = 4096, kr_off = 2048;
  auto call = [&](auto ql, auto qr, auto c, auto kr, auto out, attnkit::mla_options opt = {}) {
    return message_of([&] { attnkit::mla_attention(ql, qr, c, kr, out, attnkit::no_mask{}, opt); });
  };
  // the good call works
  attnkit::mla_attention(qv(H, r), qv(H, dr, qr_off), cv(B, 1, r, 0), cv(B, 1, dr, kr_off), ov(H, r),
                         attnkit::no_mask{}, o);
  std::string m = call(qv(H, r), qv(H, dr, qr_off), cv(B, 1, r + 1, 0), cv(B, 1, dr, kr_off), ov(H, r), o);
  CHECK_THAT(m, Catch::Contains("latent rank r") && Catch::Contains("'c_kv'") && Catch::Contains("'q_lat'"));
  m = call(qv(H, r), qv(H, dr, qr_off), cv(B, 1, r, 0), cv(B, 1, dr + 2, kr_off), ov(H, r), o);
  CHECK_THAT(m, Catch::Contains("rope dim") && Catch::Contains("'k_rope'") && Catch::Contains("'q_rope'"));
  m = call(qv(H, r), qv(H, dr, qr_off), cv(B, 2, r, 0), cv(B, 1, dr, kr_off), ov(H, r), o);
  CHECK_THAT(m, Catch::Contains("'c_kv' must have exactly one head") && Catch::Contains("[1, 2, 10, 16]"));
  m = call(qv(H, r), qv(H, dr, qr_off), cv(B, 1, r, 0), cv(B, 2, dr, kr_off), ov(H, r), o);
  CHECK_THAT(m, Catch::Contains("'k_rope' must have exactly one head"));
  m = call(qv(H, r), qv(H - 1, dr, qr_off), cv(B, 1, r, 0), cv(B, 1, dr, kr_off), ov(H, r), o);
  CHECK_THAT(m, Catch::Contains("'q_rope' must have the batch, heads and seq of 'q_lat'"));
  m = call(qv(H, r), qv(H, dr, qr_off), cv(B, 1, r, 0), cv(B, 1, dr, kr_off), ov(H, r + 1), o);
  CHECK_THAT(m, Catch::Contains("'out_lat'") && Catch::Contains("expected [1, 4, 2, 16]"));
  m = call(qv(H, r), qv(H, dr, qr_off), cv(B, 1, r, 0),
           tensor_view<const float>(cache.data() + kr_off, {{B, 1, Lk - 1, dr}}, {{0, 0, dr, 1}}), ov(H, r), o);
  CHECK_THAT(m, Catch::Contains("seq of 'k_rope' must equal seq of 'c_kv'"));
  m = call(qv(H, r), qv(H, dr, qr_off), cv(2, 1, r, 0), cv(B, 1, dr, kr_off), ov(H, r), o);
  CHECK_THAT(m, Catch::Contains("batch of 'c_kv'"));
  // the scale must be given
  m = call(qv(H, r), qv(H, dr, qr_off), cv(B, 1, r, 0), cv(B, 1, dr, kr_off), ov(H, r));
  CHECK_THAT(m, Catch::Contains("options.qk_nope_head_dim") && Catch::Contains("options.scale") &&
                    Catch::Contains("not 1/sqrt(r + d_rope)"));
  attnkit::mla_options bad = o;
  bad.qk_nope_head_dim = -1;
  m = call(qv(H, r), qv(H, dr, qr_off), cv(B, 1, r, 0), cv(B, 1, dr, kr_off), ov(H, r), bad);
  CHECK_THAT(m, Catch::Contains("options.qk_nope_head_dim must be >= 0"));
  bad = o;
  float sinks[3] = {0, 0, 0};
  bad.sink_logits = {sinks, 3};
  m = call(qv(H, r), qv(H, dr, qr_off), cv(B, 1, r, 0), cv(B, 1, dr, kr_off), ov(H, r), bad);
  CHECK_THAT(m, Catch::Contains("options.sink_logits") && Catch::Contains("expected 4"));
  // output aliasing an input
  m = message_of([&] {
    attnkit::mla_attention(qv(H, r), qv(H, dr, qr_off), cv(B, 1, r, 0), cv(B, 1, dr, kr_off),
                           make_bhsd(p + qr_off, B, H, Lq, r), attnkit::no_mask{}, o);
  });
  CHECK_THAT(m, Catch::Contains("'out_lat'") && Catch::Contains("overlaps input 'q_rope'"));
  // a mask checked against the MLA problem (block mask of the wrong heads)
  m = message_of([&] {
    const std::vector<std::uint8_t> bits(3 * 1 * 1, 1);
    attnkit::mla_attention(qv(H, r), qv(H, dr, qr_off), cv(B, 1, r, 0), cv(B, 1, dr, kr_off), ov(H, r),
                           attnkit::block_mask(bits.data(), 3, 1, 1, 16, 16), o);
  });
  CHECK_THAT(m, Catch::Contains("mla_attention"));
}

TEST_CASE("latent errors: paged MLA and the weight helpers", "[latent][errors]") {
  const index_t B = 2, H = 4, Lq = 1, r = 16, dr = 4, ps = 8, pages = 5;
  std::vector<float> q(std::size_t(B * H * Lq * r), 0.f), qr(std::size_t(B * H * Lq * dr), 0.f),
      cp(std::size_t(pages * ps * r), 0.f), rp(std::size_t(pages * ps * dr), 0.f), out(q.size(), 0.f);
  std::vector<std::int32_t> table{0, 1, 2, 3}, lens{16, 9};
  attnkit::mla_options o;
  o.qk_nope_head_dim = 8;
  auto run = [&](index_t r_pages, index_t dr_pages, index_t heads, std::vector<std::int32_t> t,
                 std::vector<std::int32_t> l) {
    return message_of([&] {
      attnkit::mla_attention_paged(make_bhsd(q.data(), B, H, Lq, r), make_bhsd(qr.data(), B, H, Lq, dr),
                                   attnkit::make_bshd(cp.data(), pages, ps, heads, r_pages),
                                   attnkit::make_bshd(rp.data(), pages, ps, 1, dr_pages),
                                   attnkit::page_table_view{t.data(), B, 2, 0}, attnkit::int32_span{l.data(), B},
                                   make_bhsd(out.data(), B, H, Lq, r), attnkit::causal{}, o);
    });
  };
  // the good call works
  attnkit::mla_attention_paged(make_bhsd(q.data(), B, H, Lq, r), make_bhsd(qr.data(), B, H, Lq, dr),
                               attnkit::make_bshd(cp.data(), pages, ps, 1, r),
                               attnkit::make_bshd(rp.data(), pages, ps, 1, dr),
                               attnkit::page_table_view{table.data(), B, 2, 0}, attnkit::int32_span{lens.data(), B},
                               make_bhsd(out.data(), B, H, Lq, r), attnkit::causal{}, o);
  CHECK_THAT(run(r + 1, dr, 1, table, lens), Catch::Contains("latent rank r") && Catch::Contains("'c_pages'"));
  CHECK_THAT(run(r, dr - 1, 1, table, lens), Catch::Contains("rope dim") && Catch::Contains("'rope_pages'"));
  CHECK_THAT(run(r / 2, dr, 2, table, lens), Catch::Contains("'c_pages' must have exactly one head"));
  CHECK_THAT(run(r, dr, 1, {0, 1, 2, 7}, lens), Catch::Contains("page_table[1][1] = 7"));
  CHECK_THAT(run(r, dr, 1, table, {17, 3}), Catch::Contains("seq_lens[0] = 17"));

  // weight helpers
  std::vector<float> w(std::size_t(H * 32 * r), 0.f), qn(std::size_t(B * H * Lq * 8), 0.f), o2(out.size(), 0.f);
  CHECK_THAT(message_of([&] {
               attnkit::mla_absorb_query(make_bhsd(qn.data(), B, H, Lq, 8), make_bhsd(w.data(), 1, H, 9, r),
                                         make_bhsd(out.data(), B, H, Lq, r));
             }),
             Catch::Contains("'w_uk'") && Catch::Contains("expected [1, 4, 8, 16]"));
  CHECK_THAT(message_of([&] {
               attnkit::mla_project_out(make_bhsd(q.data(), B, H, Lq, r), make_bhsd(w.data(), 1, H - 1, 8, r),
                                        make_bhsd(o2.data(), B, H, Lq, 8));
             }),
             Catch::Contains("'w_uv'"));
  std::vector<float> c(std::size_t(B * 10 * r), 0.f), kr(std::size_t(B * 10 * dr), 0.f);
  attnkit::mla_options wrong;
  wrong.qk_nope_head_dim = 7;
  CHECK_THAT(message_of([&] {
               attnkit::mla_expanded_attention(make_bhsd(qn.data(), B, H, Lq, 8), make_bhsd(qr.data(), B, H, Lq, dr),
                                               make_bhsd(c.data(), B, 1, 10, r), make_bhsd(kr.data(), B, 1, 10, dr),
                                               make_bhsd(w.data(), 1, H, 8, r), make_bhsd(w.data(), 1, H, 8, r),
                                               make_bhsd(o2.data(), B, H, Lq, 8), attnkit::causal{}, wrong);
             }),
             Catch::Contains("options.qk_nope_head_dim = 7") && Catch::Contains("dn = 8"));
  CHECK_THAT(message_of([&] {
               attnkit::mla_expanded_attention(make_bhsd(qn.data(), B, H, Lq, 8), make_bhsd(qr.data(), B, H, Lq, dr),
                                               make_bhsd(c.data(), B, 1, 10, r),
                                               make_bhsd(kr.data(), B, 1, 10, dr - 1), make_bhsd(w.data(), 1, H, 8, r),
                                               make_bhsd(w.data(), 1, H, 8, r), make_bhsd(o2.data(), B, H, Lq, 8));
             }),
             Catch::Contains("'k_rope'"));
}

TEST_CASE("latent errors: latent_attention (M < 1, heads, dims, batch)", "[latent][errors]") {
  std::vector<float> ql(4 * 8 * 16, 0.f), k(2 * 2 * 50 * 16, 0.f), v(k.size(), 0.f), out(2 * 4 * 50 * 16, 0.f);
  auto run = [&](index_t qb, index_t h, index_t m, index_t d, index_t hkv, index_t ob) {
    return message_of([&] {
      attnkit::latent_attention(make_bhsd(ql.data(), qb, h, m, d), make_bhsd(k.data(), 2, hkv, 50, 16),
                                make_bhsd(v.data(), 2, hkv, 50, 16), make_bhsd(out.data(), ob, h, 50, 16));
    });
  };
  attnkit::latent_attention(make_bhsd(ql.data(), 1, 4, 8, 16), make_bhsd(k.data(), 2, 2, 50, 16),
                            make_bhsd(v.data(), 2, 2, 50, 16), make_bhsd(out.data(), 2, 4, 50, 16));
  CHECK_THAT(run(1, 4, 0, 16, 2, 2), Catch::Contains("'q_latent'") && Catch::Contains("M = seq >= 1"));
  CHECK_THAT(run(1, 3, 8, 16, 2, 2), Catch::Contains("multiple of heads of 'k'"));
  CHECK_THAT(run(1, 4, 8, 8, 2, 2), Catch::Contains("dim of 'q_latent' must equal dim of 'k'"));
  CHECK_THAT(run(3, 4, 2, 16, 2, 2), Catch::Contains("batch of 'q_latent'"));
  CHECK_THAT(run(1, 4, 8, 16, 2, 1), Catch::Contains("'out'") && Catch::Contains("expected [2, 4, 50, 16]"));
  float s[4] = {0, 0, 0, 0};
  attnkit::attention_options o;
  o.sink_logits = {s, 4};
  CHECK_THAT(message_of([&] {
               attnkit::latent_attention(make_bhsd(ql.data(), 1, 4, 8, 16), make_bhsd(k.data(), 2, 2, 50, 16),
                                         make_bhsd(v.data(), 2, 2, 50, 16), make_bhsd(out.data(), 2, 4, 50, 16), o);
             }),
             Catch::Contains("sink_logits"));
}
