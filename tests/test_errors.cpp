// Argument validation of attnkit::attention and attnkit::reference::attention
// (core/validate.hpp): one test per error path. Every error must
//   - be an attnkit::error, which is a std::invalid_argument;
//   - be thrown before any work (out and lse keep their contents);
//   - name the entry point and the argument, and print the shapes involved;
//   - be the same for the reference, apart from the entry name (where the reference takes
//     that argument at all: it has no out or lse).
#include "support/attnkit_test.hpp"

#include <functional>

using attnkit::index_t;
using attnkit_test::message_of;
using attnkit::tensor_view;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;
using shape = std::array<index_t, 4>;

namespace {

constexpr float kUntouched = 7.f;

/// A valid problem q [2, 4, 9, 20], k [2, 2, 11, 20], v [2, 2, 11, 7], out [2, 4, 9, 7],
/// lse [2, 4, 9, 1] in contiguous storage; each test breaks one thing.
struct problem {
  std::vector<float> qb, kb, vb, ob, lb;
  tensor_view<float> q, k, v, out, lse;
  attnkit::attention_options opt;

  explicit problem(shape qs = {{2, 4, 9, 20}}, shape ks = {{2, 2, 11, 20}}, shape vs = {{2, 2, 11, 7}})
      : problem(qs, ks, vs, {{qs[0], qs[1], qs[2], vs[3]}}, {{qs[0], qs[1], qs[2], 1}}) {}
  problem(shape qs, shape ks, shape vs, shape os, shape ls) {
    q = alloc(qb, qs, 0.5f);
    k = alloc(kb, ks, 0.25f);
    v = alloc(vb, vs, 1.f);
    out = alloc(ob, os, kUntouched);
    lse = alloc(lb, ls, kUntouched);
  }
  static tensor_view<float> alloc(std::vector<float>& buf, const shape& s, float x) {
    index_t n = 1;
    for (index_t e : s) n *= e > 0 ? e : 1;
    buf.assign(std::size_t(n + 64), x);
    return attnkit::make_bhsd(buf.data(), s[0], s[1], s[2], s[3]);
  }
  bool outputs_untouched() const {
    return attnkit_test::holds_only(ob, kUntouched) && attnkit_test::holds_only(lb, kUntouched);
  }
};

std::string without_entry(const std::string& msg, const std::string& entry) {
  return msg.compare(0, entry.size(), entry) == 0 ? msg.substr(entry.size()) : msg;
}

enum class also_reference { yes, no };

/// Checks that attention() (with both masks) rejects `p` with a message containing every
/// fragment, and, when asked, that the reference rejects it with the same message.
void expect_error(problem& p, const std::vector<std::string>& fragments, also_reference ref = also_reference::yes) {
  const auto run = [&] { attnkit::attention(p.q, p.k, p.v, p.out, attnkit::no_mask{}, p.opt, p.lse); };
  const auto run_causal = [&] { attnkit::attention(p.q, p.k, p.v, p.out, attnkit::causal{}, p.opt, p.lse); };
  CHECK_THROWS_AS(run(), attnkit::error);
  CHECK_THROWS_AS(run(), std::invalid_argument);
  const std::string msg = message_of(run);
  INFO("message: " << msg);
  CHECK_THAT(msg, StartsWith("attnkit::attention: "));
  for (const auto& f : fragments) CHECK_THAT(msg, Contains(f));
  CHECK(message_of(run_causal) == msg);
  CHECK(p.outputs_untouched());
  if (ref == also_reference::yes) {
    const std::string rmsg = message_of([&] { (void)attnkit::reference::attention(p.q, p.k, p.v, attnkit::no_mask{}, p.opt); });
    INFO("reference message: " << rmsg);
    CHECK_THAT(rmsg, StartsWith("attnkit::reference::attention: "));
    CHECK(without_entry(rmsg, "attnkit::reference::attention: ") == without_entry(msg, "attnkit::attention: "));
    CHECK_THROWS_AS(attnkit::reference::attention(p.q, p.k, p.v, attnkit::no_mask{}, p.opt), std::invalid_argument);
  }
}

}  // namespace

TEST_CASE("errors: a valid problem does not throw", "[errors]") {
  problem p;
  CHECK_NOTHROW(attnkit::attention(p.q, p.k, p.v, p.out, attnkit::no_mask{}, p.opt, p.lse));
  CHECK_NOTHROW(attnkit::attention(p.q, p.k, p.v, p.out, attnkit::causal{}, p.opt));
  CHECK_NOTHROW(attnkit::reference::attention(p.q, p.k, p.v));
  SECTION("views into disjoint parts of one buffer do not alias") {
    std::vector<float> buf(4000, 0.5f);
    const auto q = attnkit::make_bhsd(buf.data(), 2, 4, 9, 20);           // [0, 1440)
    const auto k = attnkit::make_bhsd(buf.data() + 1440, 2, 2, 11, 20);   // [1440, 2320)
    const auto v = attnkit::make_bhsd(buf.data() + 2320, 2, 2, 11, 7);    // [2320, 2628)
    const auto out = attnkit::make_bhsd(buf.data() + 2628, 2, 4, 9, 7);   // [2628, 3132)
    const auto lse = attnkit::make_bhsd(buf.data() + 3132, 2, 4, 9, 1);   // [3132, 3204)
    CHECK_NOTHROW(attnkit::attention(q, k, v, out, attnkit::no_mask{}, {}, lse));
  }
  SECTION("lse may have any stride along its extent-1 dim axis") {
    std::vector<float> l(2 * 4 * 9 * 5);
    const tensor_view<float> lse(l.data(), {{2, 4, 9, 1}}, {{4 * 9 * 5, 9 * 5, 5, 3}});
    CHECK_NOTHROW(attnkit::attention(p.q, p.k, p.v, p.out, attnkit::no_mask{}, p.opt, lse));
  }
}

TEST_CASE("errors: batch of k differs from batch of q", "[errors]") {
  problem p({{2, 4, 9, 20}}, {{3, 2, 11, 20}}, {{3, 2, 11, 7}});
  expect_error(p, {"batch", "'k'", "'q'", "[2, 4, 9, 20]", "[3, 2, 11, 20]", "[3, 2, 11, 7]"});
}

TEST_CASE("errors: batch of v differs from batch of q", "[errors]") {
  problem p({{2, 4, 9, 20}}, {{2, 2, 11, 20}}, {{1, 2, 11, 7}});
  expect_error(p, {"batch", "'v'", "[2, 4, 9, 20]", "[1, 2, 11, 7]"});
}

TEST_CASE("errors: heads of q not a multiple of heads of k", "[errors]") {
  problem p({{2, 3, 9, 20}}, {{2, 2, 11, 20}}, {{2, 2, 11, 7}});
  expect_error(p, {"heads", "multiple", "'q'", "'k'", "[2, 3, 9, 20]", "[2, 2, 11, 20]"});
}

TEST_CASE("errors: heads of k and v differ", "[errors]") {
  problem p({{2, 4, 9, 20}}, {{2, 2, 11, 20}}, {{2, 4, 11, 7}});
  expect_error(p, {"heads", "'k'", "'v'", "[2, 2, 11, 20]", "[2, 4, 11, 7]"});
}

TEST_CASE("errors: k and v without heads", "[errors]") {
  problem p({{2, 4, 9, 20}}, {{2, 0, 11, 20}}, {{2, 0, 11, 7}});
  expect_error(p, {"'k'", "at least one head", "[2, 0, 11, 20]"});
}

TEST_CASE("errors: dim of k differs from dim of q", "[errors]") {
  problem p({{2, 4, 9, 20}}, {{2, 2, 11, 16}}, {{2, 2, 11, 7}});
  expect_error(p, {"dim", "'k'", "'q'", "[2, 4, 9, 20]", "[2, 2, 11, 16]"});
}

TEST_CASE("errors: dims of q and k, or of v, are zero", "[errors]") {
  SECTION("q and k") {
    problem p({{2, 4, 9, 0}}, {{2, 2, 11, 0}}, {{2, 2, 11, 7}});
    expect_error(p, {"dims", "'q'", "at least 1", "[2, 4, 9, 0]"});
  }
  SECTION("v") {
    problem p({{2, 4, 9, 20}}, {{2, 2, 11, 20}}, {{2, 2, 11, 0}});
    expect_error(p, {"dims", "'v'", "at least 1", "[2, 2, 11, 0]"});
  }
}

TEST_CASE("errors: dim of out differs from dim of v", "[errors]") {
  problem p({{2, 4, 9, 20}}, {{2, 2, 11, 20}}, {{2, 2, 11, 7}}, {{2, 4, 9, 8}}, {{2, 4, 9, 1}});
  expect_error(p, {"'out'", "[2, 4, 9, 8]", "expected [2, 4, 9, 7]"}, also_reference::no);
}

TEST_CASE("errors: seq of k differs from seq of v", "[errors]") {
  problem p({{2, 4, 9, 20}}, {{2, 2, 11, 20}}, {{2, 2, 12, 7}});
  expect_error(p, {"seq", "'k'", "'v'", "[2, 2, 11, 20]", "[2, 2, 12, 7]"});
}

TEST_CASE("errors: out has the wrong batch, heads or seq", "[errors]") {
  for (shape os : {shape{{1, 4, 9, 7}}, shape{{2, 2, 9, 7}}, shape{{2, 4, 11, 7}}, shape{{2, 4, 9, 0}}}) {
    problem p({{2, 4, 9, 20}}, {{2, 2, 11, 20}}, {{2, 2, 11, 7}}, os, {{2, 4, 9, 1}});
    const std::string got = "[" + std::to_string(os[0]) + ", " + std::to_string(os[1]) + ", " +
                            std::to_string(os[2]) + ", " + std::to_string(os[3]) + "]";
    expect_error(p, {"'out'", got, "expected [2, 4, 9, 7]"}, also_reference::no);
  }
}

TEST_CASE("errors: lse has the wrong shape", "[errors]") {
  for (shape ls : {shape{{2, 4, 9, 2}}, shape{{2, 4, 8, 1}}, shape{{2, 1, 9, 1}}, shape{{1, 4, 9, 1}}}) {
    problem p({{2, 4, 9, 20}}, {{2, 2, 11, 20}}, {{2, 2, 11, 7}}, {{2, 4, 9, 7}}, ls);
    expect_error(p, {"'lse'", "expected [2, 4, 9, 1]"}, also_reference::no);
  }
}

TEST_CASE("errors: non-unit stride along dim", "[errors]") {
  problem p;
  std::vector<float> big(2 * 4 * 9 * 20 * 2, 0.5f);
  const tensor_view<float> strided(big.data(), {{2, 4, 9, 20}}, {{4 * 9 * 40, 9 * 40, 40, 2}});
  SECTION("q") {
    p.q = strided;
    expect_error(p, {"'q'", "unit stride", "dim", "got stride 2", "[2, 4, 9, 20]"});
  }
  SECTION("k") {
    p.k = tensor_view<float>(big.data(), {{2, 2, 11, 20}}, {{2 * 11 * 40, 11 * 40, 40, 2}});
    expect_error(p, {"'k'", "unit stride", "[2, 2, 11, 20]"});
  }
  SECTION("v") {
    p.v = tensor_view<float>(big.data(), {{2, 2, 11, 7}}, {{2 * 11 * 14, 11 * 14, 14, 2}});
    expect_error(p, {"'v'", "unit stride", "[2, 2, 11, 7]"});
  }
  SECTION("out") {
    p.out = tensor_view<float>(p.ob.data(), {{2, 4, 9, 7}}, {{0, 0, 0, 0}});  // broadcast output
    expect_error(p, {"'out'", "unit stride", "got stride 0"}, also_reference::no);
  }
}

TEST_CASE("errors: negative strides and extents", "[errors]") {
  problem p;
  SECTION("negative seq stride of q") {
    p.q = tensor_view<float>(p.qb.data() + 8 * 20, {{2, 4, 9, 20}}, {{720, 180, -20, 1}});
    expect_error(p, {"'q'", "negative", "strides [720, 180, -20, 1]"});
  }
  SECTION("negative head stride of v") {
    p.v = tensor_view<float>(p.vb.data() + 77, {{2, 2, 11, 7}}, {{154, -77, 7, 1}});
    expect_error(p, {"'v'", "negative"});
  }
  SECTION("negative extent of k") {
    p.k = tensor_view<float>(p.kb.data(), {{2, 2, -11, 20}}, {{440, 220, 20, 1}});
    expect_error(p, {"'k'", "negative", "[2, 2, -11, 20]"});
  }
  SECTION("negative batch stride of out") {
    p.out = tensor_view<float>(p.ob.data() + 252, {{2, 4, 9, 7}}, {{-252, 63, 7, 1}});
    expect_error(p, {"'out'", "negative"}, also_reference::no);
  }
  SECTION("negative seq stride of lse") {
    p.lse = tensor_view<float>(p.lb.data() + 8, {{2, 4, 9, 1}}, {{36, 9, -1, 1}});
    expect_error(p, {"'lse'", "negative"}, also_reference::no);
  }
}

TEST_CASE("errors: null data with a non-zero extent", "[errors]") {
  problem p;
  SECTION("q") {
    p.q = attnkit::make_bhsd<float>(nullptr, 2, 4, 9, 20);
    expect_error(p, {"'q'", "null", "[2, 4, 9, 20]"});
  }
  SECTION("k") {
    p.k = attnkit::make_bhsd<float>(nullptr, 2, 2, 11, 20);
    expect_error(p, {"'k'", "null", "[2, 2, 11, 20]"});
  }
  SECTION("v") {
    p.v = attnkit::make_bhsd<float>(nullptr, 2, 2, 11, 7);
    expect_error(p, {"'v'", "null", "[2, 2, 11, 7]"});
  }
  SECTION("out") {
    p.out = attnkit::make_bhsd<float>(nullptr, 2, 4, 9, 7);
    expect_error(p, {"'out'", "null", "[2, 4, 9, 7]"}, also_reference::no);
  }
  SECTION("lse with a shape but no data") {
    p.lse = attnkit::make_bhsd<float>(nullptr, 2, 4, 9, 1);
    expect_error(p, {"'lse'", "null", "[2, 4, 9, 1]"}, also_reference::no);
  }
}

TEST_CASE("errors: out aliases q, k or v", "[errors]") {
  problem p;
  SECTION("q") {
    p.out = attnkit::make_bhsd(p.qb.data() + 3, 2, 4, 9, 7);
    expect_error(p, {"'out'", "overlaps", "'q'", "[2, 4, 9, 7]", "[2, 4, 9, 20]"}, also_reference::no);
  }
  SECTION("k") {
    p.out = attnkit::make_bhsd(p.kb.data(), 2, 4, 9, 7);
    expect_error(p, {"'out'", "overlaps", "'k'", "[2, 2, 11, 20]"}, also_reference::no);
  }
  SECTION("v, overlapping only its tail") {
    std::vector<float> buf(2000, 1.f);
    p.v = attnkit::make_bhsd(buf.data(), 2, 2, 11, 7);          // [0, 308)
    p.out = attnkit::make_bhsd(buf.data() + 307, 2, 4, 9, 7);   // [307, 811)
    expect_error(p, {"'out'", "overlaps", "'v'", "[2, 2, 11, 7]"}, also_reference::no);
  }
}

TEST_CASE("errors: an output whose elements share memory", "[errors]") {
  problem p;
  SECTION("out with a zero head stride") {
    p.out = tensor_view<float>(p.ob.data(), {{2, 4, 9, 7}}, {{4 * 9 * 7, 0, 7, 1}});
    expect_error(p, {"'out'", "[2, 4, 9, 7]", "strides [252, 0, 7, 1]", "same memory"}, also_reference::no);
  }
  SECTION("out rows closer than dim") {
    p.out = tensor_view<float>(p.ob.data(), {{2, 4, 9, 7}}, {{4 * 9 * 6, 9 * 6, 6, 1}});
    expect_error(p, {"'out'", "same memory"}, also_reference::no);
  }
  SECTION("lse with a zero seq stride") {
    p.lse = tensor_view<float>(p.lb.data(), {{2, 4, 9, 1}}, {{4 * 9, 9, 0, 1}});
    expect_error(p, {"'lse'", "same memory"}, also_reference::no);
  }
}

TEST_CASE("errors: lse aliases out, q, k or v", "[errors]") {
  problem p;
  SECTION("out") {
    p.lse = attnkit::make_bhsd(p.ob.data() + 100, 2, 4, 9, 1);
    expect_error(p, {"'lse'", "overlaps", "'out'", "[2, 4, 9, 1]", "[2, 4, 9, 7]"}, also_reference::no);
  }
  SECTION("q") {
    p.lse = attnkit::make_bhsd(p.qb.data(), 2, 4, 9, 1);
    expect_error(p, {"'lse'", "overlaps", "'q'"}, also_reference::no);
  }
  SECTION("k") {
    p.lse = attnkit::make_bhsd(p.kb.data() + 10, 2, 4, 9, 1);
    expect_error(p, {"'lse'", "overlaps", "'k'"}, also_reference::no);
  }
  SECTION("v") {
    p.lse = attnkit::make_bhsd(p.vb.data() + 1, 2, 4, 9, 1);
    expect_error(p, {"'lse'", "overlaps", "'v'"}, also_reference::no);
  }
}

TEST_CASE("errors: bad options", "[errors]") {
  problem p;
  const float inf = std::numeric_limits<float>::infinity();
  SECTION("scale inf") {
    p.opt.scale = inf;
    expect_error(p, {"options.scale", "finite", "inf"});
  }
  SECTION("scale -inf") {
    p.opt.scale = -inf;
    expect_error(p, {"options.scale", "finite"});
  }
  SECTION("scale NaN") {
    p.opt.scale = std::numeric_limits<float>::quiet_NaN();
    expect_error(p, {"options.scale", "finite"});
  }
  SECTION("softcap negative") {
    p.opt.softcap = -1.f;
    expect_error(p, {"options.softcap", ">= 0", "-1"});
  }
  SECTION("softcap inf") {
    p.opt.softcap = inf;
    expect_error(p, {"options.softcap"});
  }
  SECTION("softcap NaN") {
    p.opt.softcap = std::numeric_limits<float>::quiet_NaN();
    expect_error(p, {"options.softcap"});
  }
  SECTION("num_threads negative") {
    p.opt.num_threads = -1;
    expect_error(p, {"options.num_threads", ">= 0", "-1"});
  }
}

TEST_CASE("errors: learned sink logits of the wrong size, without data, or not finite", "[errors]") {
  problem p;  // 4 query heads
  const float sinks[4] = {0.f, 1.f, std::numeric_limits<float>::infinity(), 2.f};
  SECTION("one logit short") {
    p.opt.sink_logits = attnkit::float_span{sinks, 3};
    expect_error(p, {"options.sink_logits", "expected 4", "got 3"});
  }
  SECTION("a size but no data") {
    p.opt.sink_logits = attnkit::float_span{nullptr, 4};
    expect_error(p, {"options.sink_logits", "null data"});
  }
  SECTION("an infinite logit") {
    p.opt.sink_logits = attnkit::float_span{sinks, 4};
    expect_error(p, {"options.sink_logits[2]", "not finite"});
  }
}

TEST_CASE("errors: a negative explicit scale is allowed", "[errors]") {
  // Only non-finite scales are rejected; a negative scale flips the scores.
  problem p;
  p.opt.scale = -0.5f;
  CHECK_NOTHROW(attnkit::attention(p.q, p.k, p.v, p.out, attnkit::no_mask{}, p.opt, p.lse));
}
