// Bad input to attention_paged and merge_partials raises attnkit::error naming the argument,
// before any page is read or any output written: page ids out of range (negative, >=
// num_pages), lengths beyond the pages or negative, seq_lens of the wrong size, a page table
// with the wrong number of rows, K and V pools that disagree (pages, page size, heads),
// query heads that are not a multiple of the KV heads, merge_partials with n < 1 or
// partials of the wrong shape.
#include "support/attnkit_test.hpp"

using attnkit::index_t;
using attnkit::tensor_view;
using attnkit_test::message_of;
using Catch::Matchers::Contains;

namespace {

constexpr float kUntouched = 7.f;

/// q [2, 4, 3, 8]; pools of 6 pages of 4 rows, 2 KV heads, dim 8 ([pages, page_size, heads,
/// dim]); sequence lengths 9 and 5 on pages {4, 0, 2} and {5, 1}; out [2, 4, 3, 8], lse.
struct problem {
  index_t B = 2, Hq = 4, Hkv = 2, Lq = 3, D = 8, pages = 6, ps = 4;
  std::vector<float> qb, kb, vb, ob, lb;
  tensor_view<float> q, k, v, out, lse;
  std::vector<std::int32_t> table = {4, 0, 2, 5, 1, -1};
  std::vector<std::int32_t> lens = {9, 5};
  attnkit::attention_options opt;

  problem() {
    qb.assign(std::size_t(B * Hq * Lq * D), 0.5f);
    kb.assign(std::size_t(pages * ps * Hkv * D), 0.25f);
    vb.assign(kb.size(), 1.f);
    ob.assign(std::size_t(B * Hq * Lq * D), kUntouched);
    lb.assign(std::size_t(B * Hq * Lq), kUntouched);
    q = attnkit::make_bhsd(qb.data(), B, Hq, Lq, D);
    k = attnkit::make_bshd(kb.data(), pages, ps, Hkv, D);
    v = attnkit::make_bshd(vb.data(), pages, ps, Hkv, D);
    out = attnkit::make_bhsd(ob.data(), B, Hq, Lq, D);
    lse = attnkit::make_bhsd(lb.data(), B, Hq, Lq, 1);
  }
  attnkit::page_table_view pt() const { return {table.data(), 2, 3, 3}; }
  attnkit::int32_span sl() const { return {lens.data(), 2}; }
  bool outputs_untouched() const {
    return attnkit_test::holds_only(ob, kUntouched) && attnkit_test::holds_only(lb, kUntouched);
  }
};

/// The message of the error attention_paged raises with these arguments; also checks that
/// nothing was written.
std::string paged_error(problem& p, const tensor_view<float>& k, const tensor_view<float>& v,
                        const attnkit::page_table_view& pt, const attnkit::int32_span& sl,
                        const tensor_view<float>* q = nullptr) {
  const tensor_view<float> qq = q ? *q : p.q;
  CHECK_THROWS_AS(attnkit::attention_paged(qq, k, v, pt, sl, p.out, attnkit::causal{}, p.opt, p.lse),
                  attnkit::error);
  const std::string msg =
      message_of([&] { attnkit::attention_paged(qq, k, v, pt, sl, p.out, attnkit::causal{}, p.opt, p.lse); });
  CHECK(p.outputs_untouched());
  return msg;
}

}  // namespace

TEST_CASE("decode errors: a valid paged call does not throw and writes the outputs", "[errors][decode]") {
  problem p;
  CHECK_NOTHROW(
      attnkit::attention_paged(p.q, p.k, p.v, p.pt(), p.sl(), p.out, attnkit::causal{}, p.opt, p.lse));
  CHECK(!p.outputs_untouched());
  // ids past the ceil(len / page_size) pages of a row are never read, so never checked
  problem p2;
  p2.table = {4, 0, 2, 5, 1, 99};
  CHECK_NOTHROW(
      attnkit::attention_paged(p2.q, p2.k, p2.v, p2.pt(), p2.sl(), p2.out, attnkit::no_mask{}, p2.opt));
}

TEST_CASE("decode errors: page ids out of range", "[errors][decode]") {
  for (std::int32_t bad : {-1, -2147483647 - 1, 6, 7, 2147483647}) {
    CAPTURE(bad);
    problem p;
    p.table[4] = bad;  // sequence 1, page 1
    const std::string msg = paged_error(p, p.k, p.v, p.pt(), p.sl());
    CHECK_THAT(msg, Contains("page_table[1][1]"));
    CHECK_THAT(msg, Contains(std::to_string(bad)));
    CHECK_THAT(msg, Contains("k_pages"));
  }
}

TEST_CASE("decode errors: seq_lens beyond the pages, negative, of the wrong size or null",
          "[errors][decode]") {
  problem p;
  for (std::int32_t bad : {13, 100, -1}) {  // 3 pages of 4 keys hold 12
    CAPTURE(bad);
    p.lens = {9, bad};
    const std::string msg = paged_error(p, p.k, p.v, p.pt(), p.sl());
    CHECK_THAT(msg, Contains("seq_lens[1]"));
    CHECK_THAT(msg, Contains(std::to_string(bad)));
  }
  p.lens = {9, 5};
  for (std::int64_t n : {0, 1, 3}) {
    CAPTURE(n);
    CHECK_THAT(paged_error(p, p.k, p.v, p.pt(), {p.lens.data(), n}), Contains("seq_lens"));
  }
  CHECK_THAT(paged_error(p, p.k, p.v, p.pt(), {nullptr, 2}), Contains("seq_lens"));
}

TEST_CASE("decode errors: page_table rows != batch, or null", "[errors][decode]") {
  problem p;
  for (std::int64_t rows : {0, 1, 3}) {
    CAPTURE(rows);
    const std::string msg = paged_error(p, p.k, p.v, {p.table.data(), rows, 3, 3}, p.sl());
    CHECK_THAT(msg, Contains("page_table"));
  }
  CHECK_THAT(paged_error(p, p.k, p.v, {nullptr, 2, 3, 3}, p.sl()), Contains("page_table"));
  CHECK_THAT(paged_error(p, p.k, p.v, {p.table.data(), 2, -1, 3}, p.sl()), Contains("page_table"));
}

TEST_CASE("decode errors: k and v pools that disagree on pages, page size or heads", "[errors][decode]") {
  problem p;
  std::vector<float> other(std::size_t(8 * 8 * 3 * 8), 1.f);
  const auto fewer_pages = attnkit::make_bshd(p.vb.data(), 5, 4, 2, 8);
  const auto other_size = attnkit::make_bshd(other.data(), 6, 2, 2, 8);
  const auto other_heads = attnkit::make_bshd(other.data(), 6, 4, 1, 8);
  for (const auto& v : {fewer_pages, other_size, other_heads}) {
    const std::string msg = paged_error(p, p.k, v, p.pt(), p.sl());
    CHECK_THAT(msg, Contains("k_pages"));
    CHECK_THAT(msg, Contains("v_pages"));
  }
}

TEST_CASE("decode errors: query heads not a multiple of the KV heads, q of the wrong batch",
          "[errors][decode]") {
  problem p;
  std::vector<float> qb(std::size_t(2 * 3 * 3 * 8), 0.5f);
  const auto q3 = attnkit::make_bhsd(qb.data(), 2, 3, 3, 8);  // 3 heads on 2 KV heads
  const std::string msg = paged_error(p, p.k, p.v, p.pt(), p.sl(), &q3);
  CHECK_THAT(msg, Contains("heads of 'q'"));
  CHECK_THAT(msg, Contains("multiple"));
  // the same problem through attention(): the message names 'k'
  std::vector<float> kc(std::size_t(2 * 2 * 9 * 8), 0.25f);
  const auto k = attnkit::make_bhsd(kc.data(), 2, 2, 9, 8);
  CHECK_THAT(message_of([&] { attnkit::attention(q3, k, k, p.out, attnkit::no_mask{}, p.opt); }),
             Contains("multiple of heads of 'k'"));
  // q with one sequence while seq_lens and the page table have two
  const auto q1 = attnkit::make_bhsd(p.qb.data(), 1, 4, 3, 8);
  CHECK_THAT(paged_error(p, p.k, p.v, p.pt(), p.sl(), &q1), Contains("seq_lens"));
}

TEST_CASE("decode errors: merge_partials with n < 1 or mismatched shapes", "[errors][decode][merge]") {
  const index_t B = 1, H = 2, S = 3, D = 4;
  std::vector<float> o1(B * H * S * D, 0.5f), o2(o1), l1(B * H * S, 0.f), l2(l1), ob(o1.size(), kUntouched),
      lb(l1.size(), kUntouched), wide(B * H * S * (D + 1), 0.5f), tall(B * H * (S + 1), 0.f);
  const tensor_view<const float> outs[2] = {attnkit::make_bhsd<const float>(o1.data(), B, H, S, D),
                                            attnkit::make_bhsd<const float>(o2.data(), B, H, S, D)};
  const tensor_view<const float> lses[2] = {attnkit::make_bhsd<const float>(l1.data(), B, H, S, 1),
                                            attnkit::make_bhsd<const float>(l2.data(), B, H, S, 1)};
  const auto out = attnkit::make_bhsd(ob.data(), B, H, S, D);
  const auto lse = attnkit::make_bhsd(lb.data(), B, H, S, 1);
  auto untouched = [&] {
    return attnkit_test::holds_only(ob, kUntouched) && attnkit_test::holds_only(lb, kUntouched);
  };
  CHECK_NOTHROW(attnkit::merge_partials(outs, lses, 2, out, lse));
  std::fill(ob.begin(), ob.end(), kUntouched);
  std::fill(lb.begin(), lb.end(), kUntouched);

  for (std::int64_t n : {0, -1}) {
    CAPTURE(n);
    const std::string msg = message_of([&] { attnkit::merge_partials(outs, lses, n, out, lse); });
    CHECK_THAT(msg, Contains("merge_partials"));
    CHECK_THAT(msg, Contains("n = " + std::to_string(n)));
  }
  CHECK_THAT(message_of([&] { attnkit::merge_partials<const float>(nullptr, lses, 2, out, lse); }),
             Contains("outs"));
  // a partial output of another dim, an lse of another length
  const tensor_view<const float> bad_outs[2] = {outs[0],
                                                attnkit::make_bhsd<const float>(wide.data(), B, H, S, D + 1)};
  CHECK_THAT(message_of([&] { attnkit::merge_partials(bad_outs, lses, 2, out, lse); }), Contains("outs[s]"));
  const tensor_view<const float> bad_lses[2] = {attnkit::make_bhsd<const float>(tall.data(), B, H, S + 1, 1),
                                                lses[1]};
  CHECK_THAT(message_of([&] { attnkit::merge_partials(outs, bad_lses, 2, out, lse); }), Contains("lses[s]"));
  // the merged lse of the wrong shape
  const auto bad_lse = attnkit::make_bhsd(tall.data(), B, H, S + 1, 1);
  CHECK_THAT(message_of([&] { attnkit::merge_partials(outs, lses, 2, out, bad_lse); }), Contains("lse"));
  // NaN or +inf partial lse
  l2[1] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THAT(message_of([&] { attnkit::merge_partials(outs, lses, 2, out, lse); }), Contains("lses[1]"));
  l2[1] = std::numeric_limits<float>::infinity();
  CHECK_THAT(message_of([&] { attnkit::merge_partials(outs, lses, 2, out, lse); }), Contains("lses[1]"));
  CHECK(untouched());
}

TEST_CASE("decode errors: an empty pool (no pages, page size 0) with empty sequences does not crash",
          "[errors][decode]") {
  // attention_paged accepts page size 0 when there are no pages (its check is `page_size < 1
  // && num_pages > 0`); the page-id loop must then not divide by the page size.
  problem p;
  std::vector<float> none(1, 0.f);
  const tensor_view<float> empty(none.data(), {{0, 2, 0, 8}}, {{16, 8, 8, 1}});
  const std::vector<std::int32_t> zeros = {0, 0};
  try {
    attnkit::attention_paged(p.q, empty, empty, {zeros.data(), 2, 0, 0}, {zeros.data(), 2}, p.out,
                             attnkit::no_mask{}, p.opt, p.lse);
    // no keys: every row is fully masked
    for (float x : p.ob) CHECK(x == 0.f);
    for (float x : p.lb) CHECK(x == -std::numeric_limits<float>::infinity());
  } catch (const attnkit::error& e) {
    CHECK_THAT(std::string(e.what()), Contains("k_pages"));  // rejecting it is fine too
  }
}

TEST_CASE("decode errors: shape errors of attention_paged name 'k_pages', not the internal stand-in 'k'",
          "[errors][decode]") {
  // attention_paged validates q, out and the mask through attention()'s checks on a stand-in
  // view [batch, kv_heads, longest, dim] of the pool; head and dim mismatches are checked
  // before it, so messages name the pools the caller passed, not the stand-in 'k'.
  problem p;
  std::vector<float> qb(std::size_t(2 * 3 * 3 * 8), 0.5f), q6(std::size_t(2 * 4 * 3 * 6), 0.5f);
  const auto q3 = attnkit::make_bhsd(qb.data(), 2, 3, 3, 8);  // 3 heads on 2 KV heads
  CHECK_THAT(paged_error(p, p.k, p.v, p.pt(), p.sl(), &q3), Contains("k_pages"));
  const auto qd = attnkit::make_bhsd(q6.data(), 2, 4, 3, 6);  // dim 6, pools dim 8
  CHECK_THAT(paged_error(p, p.k, p.v, p.pt(), p.sl(), &qd), Contains("k_pages"));
}
