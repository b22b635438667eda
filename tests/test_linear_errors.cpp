// Linear-attention argument errors: each raises attnkit::error naming the argument and the
// shapes or values involved, before any work (outputs and state stay untouched).
#include "support/attnkit_test.hpp"

using namespace attnkit_test;
using attnkit::index_t;

namespace {

struct inputs {
  tensor q{1, 4, 10, 8}, k{1, 2, 10, 8}, v{1, 2, 10, 6}, out{1, 4, 10, 6};
  inputs() {
    q.fill_uniform(1), k.fill_uniform(2), v.fill_uniform(3), out.fill(7.f);
  }
};

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("linear errors: eps must be > 0 and finite", "[linear][errors]") {
  inputs in;
  for (float eps : {0.f, -1e-6f, std::numeric_limits<float>::infinity(), std::nanf("")}) {
    attnkit::linear_options opt;
    opt.eps = eps;
    const std::string m = message_of([&] {
      attnkit::linear_attention(in.q.cview(), in.k.cview(), in.v.cview(), in.out.view, attnkit::elu_plus_one{}, true, opt);
    });
    CHECK(contains(m, "attnkit::linear_attention"));
    CHECK(contains(m, "options.eps"));
    const std::string m2 = message_of([&] { attnkit::mala_attention(in.q.cview(), in.k.cview(), in.v.cview(), in.out.view, attnkit::elu_plus_one{}, opt); });
    CHECK(contains(m2, "options.eps"));
  }
  CHECK(in.out(0, 0, 0, 0) == 7.f);  // nothing written
}

TEST_CASE("linear errors: decay outside (0, 1], wrong count, or without the causal form", "[linear][errors]") {
  inputs in;
  for (float bad : {0.f, -0.5f, 1.0001f, 2.f, std::nanf("")}) {
    float d[2] = {0.9f, bad};
    attnkit::linear_options opt;
    opt.decay = {d, 2};
    const std::string m = message_of([&] {
      attnkit::linear_attention(in.q.cview(), in.k.cview(), in.v.cview(), in.out.view, attnkit::elu_plus_one{}, true, opt);
    });
    CHECK(contains(m, "options.decay[1]"));
    CHECK(contains(m, "(0, 1]"));
  }
  float d4[4] = {0.9f, 0.9f, 0.9f, 0.9f};
  attnkit::linear_options opt;
  opt.decay = {d4, 4};  // one per query head instead of one per kv head
  std::string m = message_of([&] {
    attnkit::linear_attention(in.q.cview(), in.k.cview(), in.v.cview(), in.out.view, attnkit::elu_plus_one{}, true, opt);
  });
  CHECK(contains(m, "one lambda per kv head: expected 2, got 4"));
  opt.decay = {d4, 2};
  m = message_of([&] {
    attnkit::linear_attention(in.q.cview(), in.k.cview(), in.v.cview(), in.out.view, attnkit::elu_plus_one{}, false, opt);
  });
  CHECK(contains(m, "options.decay needs the causal form"));
  m = message_of([&] { attnkit::efficient_attention(in.q.cview(), in.k.cview(), in.v.cview(), in.out.view, opt); });
  CHECK(contains(m, "attnkit::efficient_attention"));
  CHECK(contains(m, "options.decay"));
  opt.decay = {nullptr, 2};
  m = message_of([&] {
    attnkit::linear_attention(in.q.cview(), in.k.cview(), in.v.cview(), in.out.view, attnkit::elu_plus_one{}, true, opt);
  });
  CHECK(contains(m, "null data"));
}

TEST_CASE("linear errors: state of the wrong shape, or built with another decay", "[linear][errors]") {
  inputs in;
  // feature dim 8 (elu), v dim 6, 2 kv heads, batch 1 are right; change one at a time.
  const std::array<std::int64_t, 4> bad[] = {{{2, 2, 8, 6}}, {{1, 4, 8, 6}}, {{1, 2, 9, 6}}, {{1, 2, 8, 5}}};
  for (const auto& s : bad) {
    attnkit::linear_state st(s[0], s[1], s[2], s[3]);
    const std::string m = message_of([&] {
      attnkit::linear_attention(in.q.cview(), in.k.cview(), in.v.cview(), in.out.view, attnkit::elu_plus_one{}, true, {}, &st);
    });
    CHECK(contains(m, "argument 'state' has shape"));
    CHECK(contains(m, "expected [1, 2, 8, 6]"));
    CHECK(st.position() == 0);
  }
  // taylor2 needs feature dim 1 + 8 + 36 = 45: a state sized for elu does not fit.
  attnkit::linear_state st;
  attnkit::linear_attention(in.q.cview(), in.k.cview(), in.v.cview(), in.out.view, attnkit::elu_plus_one{}, true, {}, &st);
  std::string m = message_of([&] {
    attnkit::linear_attention(in.q.cview(), in.k.cview(), in.v.cview(), in.out.view, attnkit::taylor2{}, true, {}, &st);
  });
  CHECK(contains(m, "expected [1, 2, 45, 6]"));
  // The step checks the same, and the decay the state was built with.
  tensor q1(1, 4, 1, 8), k1(1, 2, 1, 8), v1(1, 2, 1, 6), o1(1, 4, 1, 6);
  q1.fill_uniform(5), k1.fill_uniform(6), v1.fill_uniform(7);
  float d[2] = {0.5f, 0.5f};
  attnkit::linear_options opt;
  opt.decay = {d, 2};
  m = message_of([&] { attnkit::linear_attention_step(q1.cview(), k1.cview(), v1.cview(), o1.view, attnkit::elu_plus_one{}, st, opt); });
  CHECK(contains(m, "attnkit::linear_attention_step"));
  CHECK(contains(m, "built with decay 1"));
  CHECK(st.position() == 10);
}

TEST_CASE("linear errors: mismatched heads, dims, lengths and outputs", "[linear][errors]") {
  inputs in;
  auto call = [](const tensor& q, const tensor& k, const tensor& v, const tensor& o, bool causal) {
    return message_of(
        [&] { attnkit::linear_attention(q.cview(), k.cview(), v.cview(), o.view, attnkit::elu_plus_one{}, causal); });
  };
  // q heads not a multiple of kv heads
  std::string m = call(tensor(1, 3, 10, 8), in.k, in.v, tensor(1, 3, 10, 6), true);
  CHECK(contains(m, "heads of 'q' must be a multiple of heads of 'k'"));
  CHECK(contains(m, "q is [1, 3, 10, 8]"));
  // dims of q and k differ
  m = call(in.q, tensor(1, 2, 10, 7), in.v, in.out, true);
  CHECK(contains(m, "dim of 'k' must equal dim of 'q'"));
  // k and v lengths differ
  m = call(in.q, in.k, tensor(1, 2, 11, 6), in.out, false);
  CHECK(contains(m, "seq of 'k' and 'v' must be equal"));
  // causal with Lq != Lk
  m = call(tensor(1, 4, 5, 8), in.k, in.v, tensor(1, 4, 5, 6), true);
  CHECK(contains(m, "causal linear attention needs seq of 'q' equal to seq of 'k'"));
  CHECK(contains(m, "q is [1, 4, 5, 8], k is [1, 2, 10, 8]"));
  // out of the wrong shape
  m = call(in.q, in.k, in.v, tensor(1, 4, 10, 5), true);
  CHECK(contains(m, "argument 'out' has shape [1, 4, 10, 5], expected [1, 4, 10, 6]"));
  // step with more than one token
  attnkit::linear_state st;
  m = message_of([&] {
    attnkit::linear_attention_step(in.q.cview(), in.k.cview(), in.v.cview(), in.out.view, attnkit::elu_plus_one{}, st);
  });
  CHECK(contains(m, "one token per call"));
  CHECK(st.empty());
  // chunk out of range, custom map without features, negative threads
  attnkit::linear_options opt;
  opt.chunk = -1;
  m = message_of([&] {
    attnkit::linear_attention(in.q.cview(), in.k.cview(), in.v.cview(), in.out.view, attnkit::elu_plus_one{}, true, opt);
  });
  CHECK(contains(m, "options.chunk"));
  m = message_of([&] {
    attnkit::linear_attention(in.q.cview(), in.k.cview(), in.v.cview(), in.out.view,
                              attnkit::feature_fn([](const float*, std::int64_t, float*) {}, 0), true);
  });
  CHECK(contains(m, "argument 'feature_map' must produce at least 1 feature"));
  opt.chunk = 0;
  opt.num_threads = -2;
  m = message_of([&] { attnkit::efficient_attention(in.q.cview(), in.k.cview(), in.v.cview(), in.out.view, opt); });
  CHECK(contains(m, "num_threads"));
  // The reference checks the same arguments.
  m = message_of([&] {
    attnkit::reference::linear_attention(tensor(1, 4, 5, 8).cview(), in.k.cview(), in.v.cview(), attnkit::relu_map{}, true);
  });
  CHECK(contains(m, "attnkit::reference::linear_attention"));
  CHECK(in.out(0, 0, 0, 0) == 7.f);
}
