// Linear attention (attnkit::linear_attention, linear_attention_step, efficient_attention,
// mala_attention) against the double references of reference/linear.hpp.
//
// Accuracy criterion for every case: max|out - naive double reference| <= 2 * max(plain
// fp32 error, 1e-6 * max(1, max|ref|)), where "plain fp32" is the quadratic masked form
// written here by hand in float (its own feature maps; taylor2 through its kernel
// 1 + q.k/sqrt(d) + (q.k)^2/(2d), not through features). The naive and the recurrent
// double references must agree to 1e-9 relative. Chunk boundaries: the sweeps use chunk 16
// (and the default 64) with lengths on both sides of multiples of it.
#include "support/attnkit_test.hpp"

#include <atomic>
#include <thread>

using namespace attnkit_test;
using attnkit::index_t;

namespace {

enum class fmap { elu, relu, identity, taylor2, custom };
const char* to_string(fmap m) {
  switch (m) {
    case fmap::elu: return "elu_plus_one";
    case fmap::relu: return "relu_map";
    case fmap::identity: return "identity_map";
    case fmap::taylor2: return "taylor2";
    default: return "feature_fn(signed relu)";
  }
}
constexpr fmap kMaps[] = {fmap::elu, fmap::relu, fmap::identity, fmap::taylor2, fmap::custom};

// The user feature map of the tests: [max(x, 0), max(-x, 0)] (2d features).
struct signed_relu {
  void operator()(const float* x, std::int64_t d, float* y) const {
    for (std::int64_t i = 0; i < d; ++i) {
      y[i] = x[i] > 0.f ? x[i] : 0.f;
      y[d + i] = x[i] < 0.f ? -x[i] : 0.f;
    }
  }
};

struct lcase {
  index_t batch = 1, q_heads = 2, kv_heads = 1, q_len = 1, kv_len = 0 /* 0: = q_len */, dim = 8, v_dim = 5;
  fmap map = fmap::elu;
  bool causal = true, decay = false, normalize = true;
  index_t chunk = 0;
  tensor_spec spec;
  float lo = -1.f, hi = 1.f;
  // One thread unless a test says otherwise: results do not depend on it (tested below),
  // and OpenMP teams are slow on a loaded two-core machine.
  int num_threads = 1;
  std::uint32_t seed = 1;

  index_t lk() const { return kv_len > 0 ? kv_len : q_len; }
  std::string str() const {
    std::ostringstream s;
    s << to_string(map) << (causal ? " causal" : " non-causal") << (decay ? " decay" : "")
      << (normalize ? "" : " unnormalised") << " B=" << batch << " Hq=" << q_heads << " Hkv=" << kv_heads
      << " Lq=" << q_len << " Lk=" << lk() << " D=" << dim << " Dv=" << v_dim << " chunk=" << chunk << " "
      << attnkit_test::to_string(spec.lay) << "/" << attnkit_test::to_string(spec.pad)
      << (spec.misalign ? "/misaligned" : "") << " x~U[" << lo << "," << hi << "] threads=" << num_threads
      << " seed=" << seed;
    return s.str();
  }
};

/// Per-kv-head decays covering slow, fast and no decay.
std::vector<float> decays(index_t kv_heads) {
  const float pool[] = {0.9f, 0.5f, 1.0f, 0.99f, 0.75f, 0.97f, 0.3f, 0.8f};
  std::vector<float> d;
  for (index_t h = 0; h < kv_heads; ++h) d.push_back(pool[h % 8]);
  return d;
}

struct lrun {
  tensor q, k, v, out;
  std::vector<float> decay;
  attnkit::linear_options opt;
};

lrun make_run(const lcase& c) {
  lrun r;
  r.q = tensor(c.batch, c.q_heads, c.q_len, c.dim, c.spec);
  r.k = tensor(c.batch, c.kv_heads, c.lk(), c.dim, c.spec);
  r.v = tensor(c.batch, c.kv_heads, c.lk(), c.v_dim, c.spec);
  r.out = tensor(c.batch, c.q_heads, c.q_len, c.v_dim, c.spec);
  r.q.fill_uniform(c.seed * 4 + 0, c.lo, c.hi);
  r.k.fill_uniform(c.seed * 4 + 1, c.lo, c.hi);
  r.v.fill_uniform(c.seed * 4 + 2, -1.f, 1.f);
  r.opt.normalize = c.normalize;
  r.opt.chunk = c.chunk;
  r.opt.num_threads = c.num_threads;
  if (c.decay) {
    r.decay = decays(c.kv_heads);
    r.opt.decay = attnkit::float_span{r.decay.data(), index_t(r.decay.size())};
  }
  return r;
}

/// Calls f(feature map object) with the case's map.
template <class F>
void with_map(fmap m, index_t dim, F&& f) {
  switch (m) {
    case fmap::elu: f(attnkit::elu_plus_one{}); break;
    case fmap::relu: f(attnkit::relu_map{}); break;
    case fmap::identity: f(attnkit::identity_map{}); break;
    case fmap::taylor2: f(attnkit::taylor2{}); break;
    default: f(attnkit::feature_fn(signed_relu{}, 2 * dim)); break;
  }
}

void run_kernel(const lcase& c, lrun& r, attnkit::linear_state* state = nullptr) {
  with_map(c.map, c.dim, [&](const auto& fm) {
    attnkit::linear_attention(r.q.cview(), r.k.cview(), r.v.cview(), r.out.view, fm, c.causal, r.opt, state);
  });
}

attnkit::reference::result run_naive(const lcase& c, const lrun& r, const attnkit::linear_state* init = nullptr) {
  attnkit::reference::result res;
  with_map(c.map, c.dim, [&](const auto& fm) {
    res = attnkit::reference::linear_attention(r.q.cview(), r.k.cview(), r.v.cview(), fm, c.causal, r.opt, init);
  });
  return res;
}

attnkit::reference::result run_recurrent(const lcase& c, const lrun& r, const attnkit::linear_state* init = nullptr,
                                         attnkit::reference::linear_state_d* fin = nullptr) {
  attnkit::reference::result res;
  with_map(c.map, c.dim, [&](const auto& fm) {
    res = attnkit::reference::linear_attention_recurrent(r.q.cview(), r.k.cview(), r.v.cview(), fm, r.opt, init, fin);
  });
  return res;
}

// ---- the plain fp32 yardstick ----------------------------------------------------------

float phi_dot(fmap m, const float* x, const float* y, index_t d) {
  float s = 0.f;
  switch (m) {
    case fmap::elu:
      for (index_t i = 0; i < d; ++i)
        s += (x[i] > 0.f ? x[i] + 1.f : std::exp(x[i])) * (y[i] > 0.f ? y[i] + 1.f : std::exp(y[i]));
      return s;
    case fmap::relu:
      for (index_t i = 0; i < d; ++i) s += std::max(x[i], 0.f) * std::max(y[i], 0.f);
      return s;
    case fmap::identity:
      for (index_t i = 0; i < d; ++i) s += x[i] * y[i];
      return s;
    case fmap::taylor2: {
      for (index_t i = 0; i < d; ++i) s += x[i] * y[i];
      const float t = s / std::sqrt(float(d));
      return 1.f + t + 0.5f * t * t;
    }
    default:
      for (index_t i = 0; i < d; ++i)
        s += std::max(x[i], 0.f) * std::max(y[i], 0.f) + std::max(-x[i], 0.f) * std::max(-y[i], 0.f);
      return s;
  }
}

float guard(float den, float eps) { return den >= 0.f ? den + eps : den - eps; }

/// out [b][h][i][c] of the quadratic masked form in float (no initial state).
std::vector<float> plain_fp32(const lcase& c, const lrun& r) {
  const index_t Lq = c.q_len, Lk = c.lk(), D = c.dim, Dv = c.v_dim, group = c.q_heads / c.kv_heads;
  std::vector<float> out(static_cast<std::size_t>(c.batch * c.q_heads * Lq * Dv), 0.f), qr(static_cast<std::size_t>(D)), kr(static_cast<std::size_t>(D)),
      num(static_cast<std::size_t>(Dv));
  for (index_t b = 0; b < c.batch; ++b)
    for (index_t h = 0; h < c.q_heads; ++h) {
      const index_t hk = h / group;
      const float lambda = c.decay ? r.decay[std::size_t(hk)] : 1.f;
      for (index_t i = 0; i < Lq; ++i) {
        for (index_t d = 0; d < D; ++d) qr[std::size_t(d)] = r.q(b, h, i, d);
        std::fill(num.begin(), num.end(), 0.f);
        float den = 0.f;
        const index_t nk = c.causal ? i + 1 : Lk;
        for (index_t j = 0; j < nk; ++j) {
          for (index_t d = 0; d < D; ++d) kr[std::size_t(d)] = r.k(b, hk, j, d);
          float w = phi_dot(c.map, qr.data(), kr.data(), D);
          if (c.causal && lambda != 1.f) w *= std::pow(lambda, float(i - j));
          for (index_t x = 0; x < Dv; ++x) num[std::size_t(x)] += w * r.v(b, hk, j, x);
          den += w;
        }
        const float m = c.normalize ? 1.f / guard(den, r.opt.eps) : 1.f;
        for (index_t x = 0; x < Dv; ++x) out[std::size_t(((b * c.q_heads + h) * Lq + i) * Dv + x)] = num[std::size_t(x)] * m;
      }
    }
  return out;
}

struct lacc {
  double err = 0, plain = 0, scale = 1, rec = 0;
  index_t nonfinite = 0;
  double bound() const { return 2.0 * std::max(plain, 1e-6 * scale); }
};

double max_ref(const attnkit::reference::result& ref) {
  double m = 0;
  for (double x : ref.out) m = std::max(m, std::fabs(x));
  return m;
}

double err_vs(const tensor& out, const attnkit::reference::result& ref) {
  double e = 0;
  for (index_t b = 0; b < ref.batch; ++b)
    for (index_t h = 0; h < ref.heads; ++h)
      for (index_t i = 0; i < ref.q_len; ++i)
        for (index_t j = 0; j < ref.v_dim; ++j) {
          const double d = std::fabs(double(out(b, h, i, j)) - ref.o(b, h, i, j));
          e = std::isnan(d) ? std::numeric_limits<double>::infinity() : std::max(e, d);
        }
  return e;
}

double err_vs(const std::vector<float>& out, const attnkit::reference::result& ref) {
  double e = 0;
  for (std::size_t i = 0; i < out.size(); ++i) {
    const double d = std::fabs(double(out[i]) - ref.out[i]);
    e = std::isnan(d) ? std::numeric_limits<double>::infinity() : std::max(e, d);
  }
  return e;
}

double ref_diff(const attnkit::reference::result& a, const attnkit::reference::result& b) {
  double e = 0;
  for (std::size_t i = 0; i < a.out.size(); ++i) e = std::max(e, std::fabs(a.out[i] - b.out[i]));
  return e;
}

/// One case end to end: kernel vs naive and recurrent references, plain fp32 yardstick,
/// finite outputs, nothing written outside `out`, inputs unchanged.
lacc check_linear_case(const lcase& c) {
  INFO("case: " << c.str());
  lrun r = make_run(c);
  const lrun before = r;
  run_kernel(c, r);
  const auto ref = run_naive(c, r);
  lacc a;
  a.scale = std::max(1.0, max_ref(ref));
  a.err = err_vs(r.out, ref);
  a.plain = err_vs(plain_fp32(c, r), ref);
  a.nonfinite = r.out.nonfinite();
  if (c.causal) {
    const auto rec = run_recurrent(c, r);
    a.rec = ref_diff(rec, ref);
    CHECK(a.rec <= 1e-9 * a.scale);
    CHECK(err_vs(r.out, rec) <= a.bound());
  }
  INFO("err " << a.err << ", plain fp32 err " << a.plain << ", bound " << a.bound() << ", max|ref| " << a.scale);
  CHECK(a.nonfinite == 0);
  CHECK(a.err <= a.bound());
  CHECK(r.out.touched_outside() == 0);
  CHECK(r.q.same_bits(before.q));
  CHECK(r.k.same_bits(before.k));
  CHECK(r.v.same_bits(before.v));
  return a;
}

}  // namespace

// ------------------------------------------------------------------------------------------

TEST_CASE("linear: every feature map, causal and not, with and without decay, lengths around the chunk",
          "[linear][sweep]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (fmap m : kMaps)
    for (int form = 0; form < 3; ++form)  // non-causal, causal, causal + decay
      for (index_t L : {1, 2, 15, 16, 17, 33, 64, 65, 130}) {
        lcase c;
        c.map = m, c.causal = form > 0, c.decay = form == 2, c.q_len = L, c.chunk = 16;
        c.kv_heads = 2, c.q_heads = 4;
        c.dim = m == fmap::taylor2 ? 6 : 8;
        // identity features make the normaliser change sign: un-normalised, or non-negative inputs.
        if (m == fmap::identity) c.lo = 0.f;
        c.seed = std::uint32_t(int(m) * 1000 + form * 100 + L);
        check_linear_case(c);
      }
}

TEST_CASE("linear: un-normalised forms (identity with decay, every map) at the default chunk", "[linear][sweep]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (fmap m : kMaps)
    for (bool decay : {false, true})
      for (index_t L : {63, 64, 65, 200}) {
        lcase c;
        c.map = m, c.causal = true, c.decay = decay, c.normalize = false, c.q_len = L;
        c.dim = m == fmap::taylor2 ? 5 : 12, c.v_dim = 9;
        c.seed = std::uint32_t(7 + L + 31 * int(m) + (decay ? 5000 : 0));
        check_linear_case(c);
      }
}

TEST_CASE("linear: GQA ratios 1..8, causal with decay, normalised or not", "[linear]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (index_t g = 1; g <= 8; ++g)
    for (bool norm : {true, false}) {
      lcase c;
      c.batch = 2, c.kv_heads = 2, c.q_heads = 2 * g, c.q_len = 70, c.chunk = 32, c.decay = true, c.normalize = norm;
      c.dim = 10, c.v_dim = 6;
      c.num_threads = g % 2 ? 0 : 1;  // 0: all threads (and sub-groups of query heads per unit)
      c.seed = std::uint32_t(300 + g);
      check_linear_case(c);
      c.causal = false, c.decay = false;  // and the non-causal form
      check_linear_case(c);
    }
}

TEST_CASE("linear: head and value dims not multiples of the SIMD width", "[linear]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  const std::pair<index_t, index_t> dims[] = {{1, 1}, {3, 7}, {17, 16}, {33, 19}, {64, 65}, {16, 33}};
  for (auto dd : dims)
    for (bool causal : {true, false}) {
      lcase c;
      c.dim = dd.first, c.v_dim = dd.second, c.causal = causal, c.decay = causal, c.q_len = 41, c.chunk = 16;
      c.seed = std::uint32_t(dd.first * 100 + dd.second);
      check_linear_case(c);
    }
  lcase t;  // taylor2's d' = 1 + d + d(d+1)/2 at an odd d
  t.map = fmap::taylor2, t.dim = 9, t.v_dim = 3, t.q_len = 37, t.decay = true, t.chunk = 8;
  check_linear_case(t);
}

TEST_CASE("linear: non-causal with Lq != Lk both ways", "[linear]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  const std::pair<index_t, index_t> lens[] = {{1, 100}, {100, 1}, {7, 300}, {129, 65}};
  for (auto ll : lens)
    for (fmap m : {fmap::elu, fmap::relu, fmap::taylor2}) {
      lcase c;
      c.map = m, c.causal = false, c.q_len = ll.first, c.kv_len = ll.second, c.q_heads = 3, c.kv_heads = 1;
      c.dim = m == fmap::taylor2 ? 4 : 8;
      c.seed = std::uint32_t(ll.first * 7 + ll.second);
      check_linear_case(c);
    }
}

TEST_CASE("linear: strided layouts, padded and misaligned rows", "[linear]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (layout lay : {layout::bhsd, layout::bshd})
    for (padding pad : {padding::none, padding::plus3, padding::odd_lines})
      for (bool mis : {false, true}) {
        lcase c;
        c.spec = tensor_spec{lay, pad, mis};
        c.batch = 2, c.q_heads = 4, c.kv_heads = 2, c.q_len = 50, c.chunk = 16, c.decay = true, c.dim = 11, c.v_dim = 13;
        c.seed = std::uint32_t(int(lay) * 10 + int(pad) * 2 + mis);
        check_linear_case(c);
      }
}

TEST_CASE("linear: chunk sizes 1 .. 4096 give the same answer", "[linear]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (index_t ch : {1, 3, 7, 16, 64, 100, 4096})
    for (bool decay : {false, true}) {
      lcase c;
      c.chunk = ch, c.decay = decay, c.q_len = 150, c.dim = 9, c.v_dim = 7;
      c.seed = 77;
      check_linear_case(c);
    }
}

TEST_CASE("linear: prefill state handed to the step gives the outputs of a longer prefill", "[linear][state]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (fmap m : {fmap::elu, fmap::taylor2, fmap::identity})
    for (bool decay : {false, true}) {
      // One causal call over P + N tokens ...
      lcase full;
      full.map = m, full.decay = decay, full.normalize = m != fmap::identity;
      full.batch = 2, full.q_heads = 6, full.kv_heads = 2, full.q_len = 45, full.chunk = 16;
      // v_dim 16 (a multiple of every SIMD width): the kernel updates the state in place;
      // 7: through its scratch copy.
      full.dim = m == fmap::taylor2 ? 5 : 12, full.v_dim = m == fmap::elu ? 16 : 7;
      full.seed = std::uint32_t(900 + int(m) * 2 + decay);
      full.num_threads = decay ? 0 : 1;
      INFO("case: " << full.str());
      lrun whole = make_run(full);
      run_kernel(full, whole);
      const auto ref = run_naive(full, whole);
      const double scale = std::max(1.0, max_ref(ref));
      const double plain = err_vs(plain_fp32(full, whole), ref);
      const double bound = 2.0 * std::max(plain, 1e-6 * scale);
      CHECK(err_vs(whole.out, ref) <= bound);

      // ... against a prefill of P tokens (state out), then N steps, for P on and off the chunk grid.
      for (index_t P : {index_t(0), index_t(1), index_t(16), index_t(29)}) {
        const index_t N = full.q_len - P;
        INFO("prefill " << P << " then " << N << " steps");
        attnkit::linear_state st;
        if (P > 0) {
          auto sub = [&](const tensor& t, index_t s0, index_t n) {
            return tensor_view<float>(t.view.data_handle() + s0 * t.view.stride(2),
                                      {{t.view.extent(0), t.view.extent(1), n, t.view.extent(3)}}, t.view.strides());
          };
          with_map(m, full.dim, [&](const auto& fm) {
            attnkit::linear_attention(tensor_view<const float>(sub(whole.q, 0, P)),
                                      tensor_view<const float>(sub(whole.k, 0, P)),
                                      tensor_view<const float>(sub(whole.v, 0, P)), sub(whole.out, 0, P), fm, true,
                                      whole.opt, &st);
          });
          CHECK(st.position() == P);
        }
        std::vector<float> step_out(static_cast<std::size_t>(full.batch * full.q_heads * N * full.v_dim));
        for (index_t t = P; t < full.q_len; ++t) {
          auto row = [&](const tensor& x) {
            return tensor_view<const float>(x.view.data_handle() + t * x.view.stride(2),
                                            {{x.view.extent(0), x.view.extent(1), 1, x.view.extent(3)}}, x.view.strides());
          };
          std::vector<float> o(static_cast<std::size_t>(full.batch * full.q_heads * full.v_dim), std::nanf(""));
          with_map(m, full.dim, [&](const auto& fm) {
            attnkit::linear_attention_step(row(whole.q), row(whole.k), row(whole.v),
                                           attnkit::make_bhsd(o.data(), full.batch, full.q_heads, 1, full.v_dim), fm, st,
                                           whole.opt);
          });
          for (index_t b = 0; b < full.batch; ++b)
            for (index_t h = 0; h < full.q_heads; ++h)
              for (index_t x = 0; x < full.v_dim; ++x)
                step_out[std::size_t(((b * full.q_heads + h) * N + (t - P)) * full.v_dim + x)] =
                    o[std::size_t((b * full.q_heads + h) * full.v_dim + x)];
        }
        CHECK(st.position() == full.q_len);
        double e_ref = 0, e_full = 0;
        for (index_t b = 0; b < full.batch; ++b)
          for (index_t h = 0; h < full.q_heads; ++h)
            for (index_t i = P; i < full.q_len; ++i)
              for (index_t x = 0; x < full.v_dim; ++x) {
                const float s = step_out[std::size_t(((b * full.q_heads + h) * N + (i - P)) * full.v_dim + x)];
                const double dr = std::fabs(double(s) - ref.o(b, h, i, x));
                const double df = std::fabs(double(s) - double(whole.out(b, h, i, x)));
                e_ref = std::isnan(dr) ? 1e300 : std::max(e_ref, dr);
                e_full = std::isnan(df) ? 1e300 : std::max(e_full, df);
              }
        INFO("steps vs reference " << e_ref << ", steps vs one long prefill " << e_full << ", bound " << bound);
        CHECK(e_ref <= bound);
        CHECK(e_full <= 2 * bound);
      }
    }
}

TEST_CASE("linear: the state after a prefill equals the recurrent reference's, and prefill in pieces equals one call",
          "[linear][state]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (bool decay : {false, true})
    for (bool causal : {true, false}) {
      if (!causal && decay) continue;
      lcase c;
      c.causal = causal, c.decay = decay, c.batch = 2, c.q_heads = 4, c.kv_heads = 2, c.q_len = 57, c.chunk = 16;
      c.dim = 7, c.v_dim = 6;
      INFO("case: " << c.str());
      lrun r = make_run(c);
      attnkit::linear_state st;
      run_kernel(c, r, &st);
      REQUIRE(st.shape() == (std::array<std::int64_t, 4>{{2, 2, 7, 6}}));
      CHECK(st.position() == 57);
      // The final state against the recurrent reference (causal; non-causal sums the same terms).
      attnkit::reference::linear_state_d fin;
      lcase cc = c;
      cc.causal = true;
      run_recurrent(cc, r, nullptr, &fin);
      double e = 0, m = 0;
      for (index_t b = 0; b < 2; ++b)
        for (index_t h = 0; h < 2; ++h) {
          for (index_t i = 0; i < 7 * 6; ++i) {
            const double x = fin.kv[std::size_t((b * 2 + h) * 42 + i)];
            e = std::max(e, std::fabs(double(st.kv(b, h)[i]) - x));
            m = std::max(m, std::fabs(x));
          }
          for (index_t f = 0; f < 7; ++f) {
            const double x = fin.z[std::size_t((b * 2 + h) * 7 + f)];
            e = std::max(e, std::fabs(double(st.normaliser(b, h)[f]) - x));
            m = std::max(m, std::fabs(x));
          }
        }
      INFO("state error " << e << ", max |state| " << m);
      CHECK(e <= 1e-5 * std::max(1.0, m));

      // A second causal piece continues from the state: equal to the naive reference over
      // the piece with the state as its initial value.
      if (causal) {
        lcase c2 = c;
        c2.seed = 4242, c2.q_len = 23;
        lrun r2 = make_run(c2);
        const attnkit::linear_state init = st;
        run_kernel(c2, r2, &st);
        const auto ref2 = run_naive(c2, r2, &init);
        const auto rec2 = run_recurrent(c2, r2, &init);
        CHECK(ref_diff(ref2, rec2) <= 1e-9 * std::max(1.0, max_ref(ref2)));
        CHECK(err_vs(r2.out, ref2) <= 1e-5);
        CHECK(st.position() == 57 + 23);
      }
    }
}

TEST_CASE("linear: bitwise identical for any thread count and with a host executor", "[linear][threads]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (index_t g : {1, 4}) {
    lcase c;
    c.batch = 2, c.kv_heads = 2, c.q_heads = 2 * g, c.q_len = 90, c.chunk = 16, c.decay = true, c.dim = 16, c.v_dim = 16;
    c.num_threads = 1;
    lrun base = make_run(c);
    attnkit::linear_state s1;
    run_kernel(c, base, &s1);
    for (int t : {2, 3, 5}) {
      c.num_threads = t;
      lrun r = make_run(c);
      attnkit::linear_state s2;
      run_kernel(c, r, &s2);
      CHECK(r.out.same_bits(base.out));
      CHECK(std::memcmp(s1.kv(0, 0), s2.kv(0, 0), sizeof(float) * 2 * 2 * 16 * 17) == 0);
    }
    // A host executor that runs tasks on two std::threads.
    lrun r = make_run(c);
    attnkit::executor ex;
    ex.parallel_for = [](void*, std::int64_t n, void (*task)(void*, std::int64_t), void* ctx) {
      std::atomic<std::int64_t> next{0};
      auto work = [&] {
        for (std::int64_t i; (i = next.fetch_add(1)) < n;) task(ctx, i);
      };
      std::thread t1(work);
      work();
      t1.join();
    };
    r.opt.exec = ex;
    run_kernel(c, r);
    CHECK(r.out.same_bits(base.out));
  }
}

TEST_CASE("linear: normaliser guard: no key mass gives 0, huge values stay finite and accurate", "[linear][guard]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  SECTION("relu with all-negative keys: phi(q) . z = 0, out = 0 exactly") {
    lcase c;
    c.map = fmap::relu, c.q_len = 40, c.chunk = 16;
    lrun r = make_run(c);
    r.k.fill(-1.f);
    run_kernel(c, r);
    double m = 0;
    r.out.for_each([&](index_t b, index_t h, index_t s, index_t d) { m = std::max(m, double(std::fabs(r.out(b, h, s, d)))); });
    CHECK(r.out.nonfinite() == 0);
    CHECK(m == 0.0);
  }
  SECTION("elu and taylor2 with inputs in [-30, 30] and [-1000, 1000]") {
    for (float big : {30.f, 1000.f})
      for (fmap m : {fmap::elu, fmap::relu, fmap::taylor2})
        for (bool causal : {true, false}) {
          lcase c;
          c.map = m, c.causal = causal, c.lo = -big, c.hi = big, c.q_len = 70, c.chunk = 16;
          c.dim = m == fmap::taylor2 ? 4 : 8;
          c.seed = std::uint32_t(big) + int(m);
          const lacc a = check_linear_case(c);
          CHECK(a.nonfinite == 0);
        }
  }
  SECTION("identity map, normalised, inputs of both signs: the guard keeps outputs finite") {
    lcase c;
    c.map = fmap::identity, c.q_len = 100, c.chunk = 16;
    lrun r = make_run(c);
    run_kernel(c, r);
    CHECK(r.out.nonfinite() == 0);
  }
}

TEST_CASE("linear: zero-sized problems write nothing", "[linear]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  lcase c;
  c.q_len = 0;
  c.kv_len = 0;
  // Empty views with non-zero strides (a zero stride on a head axis would read as aliasing).
  float dummy[8] = {};
  const tensor_view<const float> q(dummy, {{1, 2, 0, 8}}, {{16, 8, 8, 1}}), k(dummy, {{1, 1, 0, 8}}, {{8, 8, 8, 1}}),
      v(dummy, {{1, 1, 0, 5}}, {{5, 5, 5, 1}});
  std::vector<float> obuf(16, 7.f);
  const tensor_view<float> o(obuf.data(), {{1, 2, 0, 5}}, {{10, 5, 5, 1}});
  attnkit::linear_state st;
  attnkit::linear_attention(q, k, v, o, attnkit::elu_plus_one{}, true, {}, &st);
  CHECK(st.position() == 0);
  CHECK(st.shape() == (std::array<std::int64_t, 4>{{1, 1, 8, 5}}));
  CHECK(obuf[0] == 7.f);
  // Non-causal with no keys: every output 0.
  tensor q2(1, 2, 3, 8), o2(1, 2, 3, 5);
  q2.fill_uniform(1);
  attnkit::linear_attention(q2.cview(), k, v, o2.view, attnkit::elu_plus_one{}, false);
  double m = 0;
  o2.for_each([&](index_t b, index_t h, index_t s, index_t d) { m = std::max(m, double(std::fabs(o2(b, h, s, d)))); });
  CHECK(o2.nonfinite() == 0);
  CHECK(m == 0.0);
}

// ------------------------------------------------------------------------------------------
// efficient_attention and mala_attention

namespace {

// Shen et al. in float, as written by hand: row softmax of Q, column softmax of K, then
// Q' (K'^T V).
std::vector<float> plain_efficient(const lrun& r, index_t group) {
  const index_t B = r.q.B, Hq = r.q.H, Lq = r.q.S, Lk = r.k.S, D = r.q.D, Dv = r.v.D;
  std::vector<float> out(static_cast<std::size_t>(B * Hq * Lq * Dv), 0.f);
  for (index_t b = 0; b < B; ++b)
    for (index_t hk = 0; hk < r.k.H; ++hk) {
      std::vector<float> G(static_cast<std::size_t>(D * Dv), 0.f);
      for (index_t f = 0; f < D; ++f) {
        float mx = -std::numeric_limits<float>::infinity(), sum = 0.f;
        for (index_t j = 0; j < Lk; ++j) mx = std::max(mx, r.k(b, hk, j, f));
        for (index_t j = 0; j < Lk; ++j) sum += std::exp(r.k(b, hk, j, f) - mx);
        for (index_t j = 0; j < Lk; ++j)
          for (index_t c = 0; c < Dv; ++c) G[std::size_t(f * Dv + c)] += std::exp(r.k(b, hk, j, f) - mx) / sum * r.v(b, hk, j, c);
      }
      for (index_t h = hk * group; h < (hk + 1) * group; ++h)
        for (index_t i = 0; i < Lq; ++i) {
          float mx = -std::numeric_limits<float>::infinity(), sum = 0.f;
          for (index_t f = 0; f < D; ++f) mx = std::max(mx, r.q(b, h, i, f));
          for (index_t f = 0; f < D; ++f) sum += std::exp(r.q(b, h, i, f) - mx);
          for (index_t c = 0; c < Dv; ++c) {
            float s = 0.f;
            for (index_t f = 0; f < D; ++f) s += std::exp(r.q(b, h, i, f) - mx) / sum * G[std::size_t(f * Dv + c)];
            out[std::size_t(((b * Hq + h) * Lq + i) * Dv + c)] = s;
          }
        }
    }
  return out;
}

// MALA in float: weights beta phi(q).phi(k) - gamma, materialised.
std::vector<float> plain_mala(const lrun& r, index_t group, fmap m) {
  const index_t B = r.q.B, Hq = r.q.H, Lq = r.q.S, Lk = r.k.S, D = r.q.D, Dv = r.v.D;
  std::vector<float> out(static_cast<std::size_t>(B * Hq * Lq * Dv), 0.f), w(static_cast<std::size_t>(Lk)), qr(static_cast<std::size_t>(D)), kr(static_cast<std::size_t>(D));
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < Hq; ++h) {
      const index_t hk = h / group;
      for (index_t i = 0; i < Lq; ++i) {
        for (index_t d = 0; d < D; ++d) qr[std::size_t(d)] = r.q(b, h, i, d);
        float s = 0.f;
        for (index_t j = 0; j < Lk; ++j) {
          for (index_t d = 0; d < D; ++d) kr[std::size_t(d)] = r.k(b, hk, j, d);
          s += (w[std::size_t(j)] = phi_dot(m, qr.data(), kr.data(), D));
        }
        const float beta = 1.f + 1.f / guard(s, 1e-6f), gamma = Lk > 0 ? s / float(Lk) : 0.f;
        for (index_t c = 0; c < Dv; ++c) {
          float o = 0.f;
          for (index_t j = 0; j < Lk; ++j) o += (beta * w[std::size_t(j)] - gamma) * r.v(b, hk, j, c);
          out[std::size_t(((b * Hq + h) * Lq + i) * Dv + c)] = o;
        }
      }
    }
  return out;
}

}  // namespace

TEST_CASE("efficient_attention against the reference (GQA, Lq != Lk, odd dims, large logits)", "[linear][efficient]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  struct shp {
    index_t hq, hk, lq, lk, d, dv;
    float big;
  };
  const shp shapes[] = {{1, 1, 1, 1, 1, 1, 1.f},      {2, 1, 17, 33, 7, 5, 1.f},   {4, 2, 100, 65, 16, 16, 1.f},
                        {3, 3, 20, 200, 33, 9, 1.f},  {2, 1, 40, 40, 8, 8, 30.f},  {8, 1, 5, 130, 64, 64, 1.f},
                        {2, 2, 31, 0, 8, 8, 1.f}};
  for (const shp& s : shapes) {
    lcase c;
    c.q_heads = s.hq, c.kv_heads = s.hk, c.q_len = s.lq, c.dim = s.d, c.v_dim = s.dv, c.lo = -s.big, c.hi = s.big;
    c.kv_len = s.lk;
    c.causal = false;
    c.chunk = 16;
    if (s.lk == 0) c.kv_len = 0;
    lrun r = make_run(c);
    if (s.lk == 0) {  // make_run treats kv_len 0 as Lq: rebuild empty keys
      r.k = tensor(1, s.hk, 0, s.d);
      r.v = tensor(1, s.hk, 0, s.dv);
    }
    INFO("Hq=" << s.hq << " Hk=" << s.hk << " Lq=" << s.lq << " Lk=" << s.lk << " D=" << s.d << " Dv=" << s.dv
               << " range " << s.big);
    attnkit::efficient_attention(r.q.cview(), r.k.cview(), r.v.cview(), r.out.view, r.opt);
    const auto ref = attnkit::reference::efficient_attention(r.q.cview(), r.k.cview(), r.v.cview());
    const double err = err_vs(r.out, ref), plain = err_vs(plain_efficient(r, s.hq / s.hk), ref);
    INFO("err " << err << ", plain fp32 " << plain);
    CHECK(r.out.nonfinite() == 0);
    CHECK(err <= 2.0 * std::max(plain, 1e-6));
    CHECK(r.out.touched_outside() == 0);
  }
}

TEST_CASE("mala_attention against the reference", "[linear][mala]") {
  ATTNKIT_TEST_FOR_EACH_ISA();
  for (fmap m : {fmap::elu, fmap::relu, fmap::taylor2})
    for (auto ll : {std::pair<index_t, index_t>{1, 1}, {9, 50}, {64, 64}, {130, 70}}) {
      lcase c;
      c.map = m, c.causal = false, c.q_heads = 4, c.kv_heads = 2, c.q_len = ll.first, c.kv_len = ll.second;
      c.dim = m == fmap::taylor2 ? 4 : 11, c.v_dim = 6, c.chunk = 16;
      c.seed = std::uint32_t(ll.first + 3 * ll.second + 50 * int(m));
      INFO("case: " << c.str());
      lrun r = make_run(c);
      attnkit::reference::result ref;
      with_map(m, c.dim, [&](const auto& fm) {
        attnkit::mala_attention(r.q.cview(), r.k.cview(), r.v.cview(), r.out.view, fm, r.opt);
        ref = attnkit::reference::mala_attention(r.q.cview(), r.k.cview(), r.v.cview(), fm, r.opt);
      });
      const double err = err_vs(r.out, ref), plain = err_vs(plain_mala(r, 2, m), ref);
      const double scale = std::max(1.0, max_ref(ref));
      INFO("err " << err << ", plain fp32 " << plain);
      CHECK(r.out.nonfinite() == 0);
      CHECK(err <= 2.0 * std::max(plain, 1e-6 * scale));
      CHECK(r.out.touched_outside() == 0);
    }
  // The weights sum to one: constant values come back unchanged (up to the cancellation in
  // beta s - s, s = phi(q) . sum phi(k) ~ 400 here: a few hundred ulps of 0.25).
  lcase c;
  c.causal = false, c.q_len = 20, c.kv_len = 30;
  lrun r = make_run(c);
  r.v.fill(0.25f);
  attnkit::mala_attention(r.q.cview(), r.k.cview(), r.v.cview(), r.out.view);
  double e = 0;
  r.out.for_each([&](index_t b, index_t h, index_t s, index_t d) { e = std::max(e, std::fabs(double(r.out(b, h, s, d)) - 0.25)); });
  CHECK(e <= 1e-4);
}
