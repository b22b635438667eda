// Public entries of the linear-attention family: linear_attention, linear_attention_step,
// efficient_attention, mala_attention, with linear_options and linear_state.
//
// Semantics (README, "Linear attention"). Per batch b and query head h, with kv head
// g = h / (q_heads / kv_heads), feature map phi and decay lambda_g (1 without decay):
//   causal:      S_t = lambda S_{t-1} + phi(k_t) v_t^T,  z_t = lambda z_{t-1} + phi(k_t),
//                out_t = phi(q_t) S_t / guard(phi(q_t) . z_t)        (normalize = true)
//                out_t = phi(q_t) S_t                                (normalize = false)
//   non-causal:  the same with S, z summed over all keys (no decay).
//   guard(x) = x + eps for x >= 0 and x - eps for x < 0, so |guard(x)| >= eps > 0: a query
//   whose features see no key mass (relu with all-negative scores, an empty prefix) gets
//   0 instead of NaN, and for non-negative maps it is the usual x + eps.
// The state (S, z) belongs to the kv head: the query heads of a GQA group share it.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>

#include "config.hpp"
#include "core/error.hpp"
#include "core/linear_args.hpp"
#include "core/message.hpp"
#include "core/options.hpp"
#include "core/tensor_view.hpp"
#include "core/validate.hpp"
#include "dispatch/isa.hpp"
#include "linear_features.hpp"

#if ATTNKIT_RUNTIME_DISPATCH
#include "dispatch/entries.hpp"
#else
#include "kernels/linear.hpp"
#endif

namespace attnkit {

/// Options of the linear-attention family.
struct linear_options {
  /// Guard of the normaliser (see the file comment); must be > 0 and finite.
  float eps = 1e-6f;
  /// false: out = phi(q) S, un-normalised (the form used with decay, e.g. RetNet-style).
  bool normalize = true;
  /// Per-KV-head decay lambda in (0, 1], one per kv head (heads(k)); empty means no decay.
  /// Causal linear_attention / linear_attention_step only.
  float_span decay = {};
  /// Rows per chunk of the causal form (and per block of the other passes). 0 = default
  /// (64, the fastest measured on AVX-512 at head_dim 64, bench/bench_linear.cpp). At most 4096.
  std::int64_t chunk = 0;
  /// Threads for OpenMP; 0 = all available. Output is bitwise identical for any value.
  int num_threads = 0;
  /// Optional host thread pool (see attnkit::executor).
  executor exec = {};
};

/// The recurrent state of linear attention, per batch and kv head: S (feature_dim x v_dim),
/// the normaliser z (feature_dim), and the decay it was built with. A default-constructed
/// state is empty: the first call that receives it sizes it and starts from zero. Every
/// call that receives a state starts from it and leaves the final state in it, so prefill
/// in pieces, then decode token by token, gives the outputs of one long causal call.
class linear_state {
 public:
  linear_state() = default;
  /// A zero state (position 0) for the given sizes.
  linear_state(std::int64_t batch, std::int64_t kv_heads, std::int64_t feature_dim, std::int64_t v_dim)
      : batch_(batch), kv_heads_(kv_heads), feature_dim_(feature_dim), v_dim_(v_dim) {
    if (batch < 0 || kv_heads < 0 || feature_dim < 0 || v_dim < 0)
      throw error("attnkit::linear_state: sizes must be non-negative");
    allocate();
  }
  linear_state(const linear_state& o)
      : batch_(o.batch_), kv_heads_(o.kv_heads_), feature_dim_(o.feature_dim_), v_dim_(o.v_dim_),
        position_(o.position_) {
    allocate();
    if (o.data_) std::memcpy(data_.get(), o.data_.get(), sizeof(float) * std::size_t(floats()));
  }
  linear_state& operator=(const linear_state& o) {
    if (this != &o) {
      linear_state t(o);
      *this = std::move(t);
    }
    return *this;
  }
  linear_state(linear_state&&) noexcept = default;
  linear_state& operator=(linear_state&&) noexcept = default;

  std::int64_t batch() const noexcept { return batch_; }
  std::int64_t kv_heads() const noexcept { return kv_heads_; }
  std::int64_t feature_dim() const noexcept { return feature_dim_; }
  std::int64_t v_dim() const noexcept { return v_dim_; }
  /// {batch, kv_heads, feature_dim, v_dim}, as error messages print it.
  std::array<std::int64_t, 4> shape() const noexcept { return {{batch_, kv_heads_, feature_dim_, v_dim_}}; }
  /// Keys absorbed so far.
  std::int64_t position() const noexcept { return position_; }
  bool empty() const noexcept { return !data_; }

  /// S of (b, kv head h): feature_dim rows of v_dim floats.
  float* kv(std::int64_t b, std::int64_t h) noexcept { return data_.get() + (b * kv_heads_ + h) * feature_dim_ * v_dim_; }
  const float* kv(std::int64_t b, std::int64_t h) const noexcept {
    return data_.get() + (b * kv_heads_ + h) * feature_dim_ * v_dim_;
  }
  /// z of (b, kv head h): feature_dim floats.
  float* normaliser(std::int64_t b, std::int64_t h) noexcept { return z_base() + (b * kv_heads_ + h) * feature_dim_; }
  const float* normaliser(std::int64_t b, std::int64_t h) const noexcept {
    return const_cast<linear_state*>(this)->z_base() + (b * kv_heads_ + h) * feature_dim_;
  }
  /// The decay per kv head this state was built with (1 = none); meaningful once position() > 0.
  const float* decay() const noexcept { return const_cast<linear_state*>(this)->decay_base(); }

  /// Back to zero at position 0 (the sizes stay).
  void reset() noexcept {
    if (data_) std::memset(data_.get(), 0, sizeof(float) * std::size_t(floats()));
    position_ = 0;
  }

  // For the entries: all floats, and the position after a call.
  float* kv_data() noexcept { return data_.get(); }
  float* z_data() noexcept { return z_base(); }
  float* decay_data() noexcept { return decay_base(); }
  void advance(std::int64_t n) noexcept { position_ += n; }

 private:
  std::int64_t floats() const noexcept {
    return batch_ * kv_heads_ * feature_dim_ * (v_dim_ + 1) + kv_heads_;
  }
  float* z_base() noexcept { return data_ ? data_.get() + batch_ * kv_heads_ * feature_dim_ * v_dim_ : nullptr; }
  float* decay_base() noexcept {
    return data_ ? data_.get() + batch_ * kv_heads_ * feature_dim_ * (v_dim_ + 1) : nullptr;
  }
  // 64-byte aligned, so that with v_dim a multiple of the SIMD width the kernels update
  // the state in place (no copy in and out per call: that would dominate a decode step).
  struct aligned_delete {
    void operator()(float* p) const noexcept { ::operator delete(p, std::align_val_t(64)); }
  };
  void allocate() {
    const std::size_t n = std::size_t(floats() > 0 ? floats() : 1);
    data_.reset(static_cast<float*>(::operator new(n * sizeof(float), std::align_val_t(64))));
    std::memset(data_.get(), 0, n * sizeof(float));
  }

  std::int64_t batch_ = 0, kv_heads_ = 0, feature_dim_ = 0, v_dim_ = 0, position_ = 0;
  std::unique_ptr<float, aligned_delete> data_;
};

inline namespace ATTNKIT_ISA_NS {
namespace detail {

/// Default rows per chunk (measured: bench/bench_linear.cpp, BM_linear_chunk).
constexpr std::int64_t linear_default_chunk = 64;
constexpr std::int64_t linear_max_chunk = 4096;

/// Validates what every member of the family shares and flattens it into linear_args.
template <class TQ, class TK, class TV>
linear_args linear_args_of(const char* fn, const tensor_view<TQ>& q, const tensor_view<TK>& k,
                           const tensor_view<TV>& v, const tensor_view<float>* out, const linear_options& opt) {
  static_assert(std::is_same<std::remove_cv_t<TQ>, float>::value && std::is_same<std::remove_cv_t<TK>, float>::value &&
                    std::is_same<std::remove_cv_t<TV>, float>::value,
                "attnkit: linear attention takes float views for q, k and v");
  attention_options ao;
  ao.num_threads = opt.num_threads;
  const auto p = check_dense(fn, q, k, v, out, tensor_view<float>{}, ao);
  if (!(opt.eps > 0.f) || !std::isfinite(opt.eps))
    fail(fn, message() << "options.eps must be > 0 and finite (it guards the normaliser), got " << double(opt.eps));
  if (opt.chunk < 0 || opt.chunk > linear_max_chunk)
    fail(fn, message() << "options.chunk must be in [0, " << linear_max_chunk << "] (0 = default), got " << opt.chunk);
  linear_args a;
  a.q = q.data_handle();
  a.q_sb = q.stride(0), a.q_sh = q.stride(1), a.q_ss = q.stride(2);
  a.k = k.data_handle();
  a.k_sb = k.stride(0), a.k_sh = k.stride(1), a.k_ss = k.stride(2);
  a.v = v.data_handle();
  a.v_sb = v.stride(0), a.v_sh = v.stride(1), a.v_ss = v.stride(2);
  if (out) {
    a.out = out->data_handle();
    a.o_sb = out->stride(0), a.o_sh = out->stride(1), a.o_ss = out->stride(2);
  }
  a.batch = p.batch, a.q_heads = p.q_heads, a.kv_heads = p.kv_heads;
  a.q_len = p.q_len, a.kv_len = p.kv_len, a.qk_dim = p.qk_dim, a.v_dim = p.v_dim;
  a.normalize = opt.normalize;
  a.eps = opt.eps;
  a.chunk = opt.chunk > 0 ? opt.chunk : linear_default_chunk;
  a.num_threads = opt.num_threads;
  a.exec = opt.exec;
  return a;
}

template <class FM>
feature_ref checked_feature(const char* fn, const FM& fm, std::int64_t d) {
  static_assert(is_feature_map<FM>::value,
                "attnkit: argument 'feature_map' must be elu_plus_one, relu_map, identity_map, taylor2 or feature_fn(f, n)");
  const feature_ref f = feature_of(fm, d);
  if (f.out_dim < 1)
    fail(fn, message() << "argument 'feature_map' must produce at least 1 feature, got out_dim " << f.out_dim);
  return f;
}

/// Decay: empty, or one value in (0, 1] per kv head; only where a causal recurrence exists.
inline void check_decay(const char* fn, const linear_options& opt, std::int64_t kv_heads, bool allowed) {
  if (opt.decay.data == nullptr && opt.decay.size == 0) return;
  if (!allowed)
    fail(fn, message() << "options.decay needs the causal form (the decay weighs keys by their distance to the query)");
  if (opt.decay.size != kv_heads || opt.decay.data == nullptr)
    fail(fn, message() << "options.decay must hold one lambda per kv head: expected " << kv_heads << ", got "
                       << opt.decay.size << (opt.decay.data ? "" : " with null data"));
  for (std::int64_t h = 0; h < kv_heads; ++h) {
    const float x = opt.decay.data[h];
    if (!(x > 0.f && x <= 1.f))
      fail(fn, message() << "options.decay[" << h << "] must be in (0, 1], got " << double(x));
  }
}

/// Sizes the state on first use, checks its shape and decay, and points the call at it.
inline void bind_state(const char* fn, linear_args& a, linear_state& st) {
  const std::array<std::int64_t, 4> want{{a.batch, a.kv_heads, a.phi.out_dim, a.v_dim}};
  if (st.empty()) st = linear_state(want[0], want[1], want[2], want[3]);
  if (st.shape() != want)
    fail(fn, message() << "argument 'state' has shape " << st.shape() << " (batch, kv heads, feature dim, v dim), expected "
                       << want << " for q " << std::array<std::int64_t, 4>{{a.batch, a.q_heads, a.q_len, a.qk_dim}}
                       << " and v " << std::array<std::int64_t, 4>{{a.batch, a.kv_heads, a.kv_len, a.v_dim}});
  float* dec = st.decay_data();
  for (std::int64_t h = 0; h < a.kv_heads; ++h) {
    const float want_d = a.decay ? a.decay[h] : 1.f;
    if (st.position() == 0) {
      dec[h] = want_d;
    } else if (dec[h] != want_d) {
      fail(fn, message() << "argument 'state' was built with decay " << double(dec[h]) << " for kv head " << h
                         << ", but options.decay gives " << double(want_d));
    }
  }
  a.state_kv = st.kv_data();
  a.state_z = st.z_data();
}

inline void run_linear(const linear_args& a) {
#if ATTNKIT_RUNTIME_DISPATCH
  switch (active_isa()) {
    case isa::avx512: ::attnkit::isa_entry_avx512::linear_forward(a); break;
    case isa::avx2: ::attnkit::isa_entry_avx2::linear_forward(a); break;
    default: ::attnkit::isa_entry_sse2::linear_forward(a); break;
  }
#else
  linear_forward<xsimd::default_arch>(a);
#endif
}

}  // namespace detail

/// Linear attention (Katharopoulos et al.; chunked causal form of Lightning Attention).
///
///   q   [batch, q_heads, Lq, d]      k [batch, kv_heads, Lk, d]   v [batch, kv_heads, Lk, dv]
///   out [batch, q_heads, Lq, dv]     feature_map: elu_plus_one{}, relu_map{}, identity_map{},
///                                    taylor2{} or feature_fn(f, n)
///
/// causal = true needs Lq == Lk (query t sees keys 0..t, plus whatever `state` holds);
/// causal = false lets every query see every key (Lq and Lk may differ). See the file
/// comment for the formulas, the eps guard and the decay. `state` (optional): the call
/// starts from it (an empty state starts from zero) and leaves the final state in it, for
/// linear_attention_step or a further chunk of prefill. Throws attnkit::error on invalid
/// arguments before any work.
template <class TQ, class TK, class TV, class FM>
void linear_attention(const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
                      const tensor_view<float>& out, const FM& feature_map, bool causal,
                      const linear_options& options = {}, linear_state* state = nullptr) {
  const char* fn = "linear_attention";
  linear_args a = detail::linear_args_of(fn, q, k, v, &out, options);
  a.phi = detail::checked_feature(fn, feature_map, a.qk_dim);
  a.mode = linear_mode::linear;
  a.causal = causal;
  if (causal && a.q_len != a.kv_len)
    detail::fail(fn, detail::message() << "causal linear attention needs seq of 'q' equal to seq of 'k' (q is "
                                       << q.extents() << ", k is " << k.extents()
                                       << "); earlier keys belong in 'state'");
  detail::check_decay(fn, options, a.kv_heads, causal);
  a.decay = options.decay.size > 0 ? options.decay.data : nullptr;
  if (state) detail::bind_state(fn, a, *state);
  detail::run_linear(a);
  if (state) state->advance(a.kv_len);
}

/// One decode step: q_t [batch, q_heads, 1, d], k_t and v_t [batch, kv_heads, 1, d / dv],
/// out_t [batch, q_heads, 1, dv]. Absorbs (k_t, v_t) into `state` (S <- lambda S +
/// phi(k) v^T), then out = phi(q_t) S / guard(phi(q_t) . z). Cost O(d' dv) per head,
/// whatever the position. Same feature map, options.decay and normalize as the prefill.
template <class TQ, class TK, class TV, class FM>
void linear_attention_step(const tensor_view<TQ>& q_t, const tensor_view<TK>& k_t, const tensor_view<TV>& v_t,
                           const tensor_view<float>& out_t, const FM& feature_map, linear_state& state,
                           const linear_options& options = {}) {
  const char* fn = "linear_attention_step";
  linear_args a = detail::linear_args_of(fn, q_t, k_t, v_t, &out_t, options);
  if (a.q_len != 1 || a.kv_len != 1)
    detail::fail(fn, detail::message() << "one token per call: seq of 'q_t' and 'k_t' must be 1 (q_t is "
                                       << q_t.extents() << ", k_t is " << k_t.extents() << ")");
  a.phi = detail::checked_feature(fn, feature_map, a.qk_dim);
  a.mode = linear_mode::linear;
  a.causal = true;
  detail::check_decay(fn, options, a.kv_heads, true);
  a.decay = options.decay.size > 0 ? options.decay.data : nullptr;
  detail::bind_state(fn, a, state);
  detail::run_linear(a);
  state.advance(1);
}

/// Efficient attention (Shen et al., "Efficient Attention: Attention with Linear
/// Complexities"), non-causal: out = softmax_row(Q) (softmax_col(K)^T V), where softmax_row
/// normalises each query row over its d features and softmax_col each key feature over the
/// Lk positions. No scale (as in the paper). GQA as in linear_attention. Uses
/// options.chunk, num_threads and exec only.
template <class TQ, class TK, class TV>
void efficient_attention(const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
                         const tensor_view<float>& out, const linear_options& options = {}) {
  const char* fn = "efficient_attention";
  linear_args a = detail::linear_args_of(fn, q, k, v, &out, options);
  detail::check_decay(fn, options, a.kv_heads, false);
  a.mode = linear_mode::efficient;
  detail::run_linear(a);
}

/// MALA, magnitude-aware linear attention (Fan et al., ICCV 2025), non-causal:
///   s_i = phi(q_i) . sum_j phi(k_j),  beta_i = 1 + 1 / guard(s_i),  gamma_i = s_i / Lk,
///   out_i = sum_j (beta_i phi(q_i) . phi(k_j) - gamma_i) v_j
///         = beta_i phi(q_i) (sum_j phi(k_j) v_j^T) - gamma_i sum_j v_j.
/// The scores beta_i phi(q_i).phi(k_j) - gamma_i sum to 1 over j and, unlike plain linear
/// attention, sharpen as |phi(q_i)| grows. The paper's phi is elu_plus_one (the default).
template <class TQ, class TK, class TV, class FM = elu_plus_one>
void mala_attention(const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
                    const tensor_view<float>& out, const FM& feature_map = {}, const linear_options& options = {}) {
  const char* fn = "mala_attention";
  linear_args a = detail::linear_args_of(fn, q, k, v, &out, options);
  a.phi = detail::checked_feature(fn, feature_map, a.qk_dim);
  detail::check_decay(fn, options, a.kv_heads, false);
  a.mode = linear_mode::mala;
  detail::run_linear(a);
}

}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
