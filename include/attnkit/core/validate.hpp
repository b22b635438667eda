// Argument checks shared by attnkit::attention and attnkit::reference.
//
// Every public entry calls these before any work, so kernels can assume valid shapes.
// Messages name the entry, the argument, and the expected and actual shapes. They are
// built without std::string (see Note [Messages and ISA flags] in core/message.hpp).
#pragma once

#include <cmath>
#include <cstdint>

#include "error.hpp"
#include "message.hpp"
#include "options.hpp"
#include "tensor_view.hpp"

namespace attnkit {
inline namespace ATTNKIT_ISA_NS {
namespace detail {

/// Extents and strides non-negative, data present when non-empty, unit dim stride.
template <class T>
void check_view(const char* fn, const char* name, const tensor_view<T>& t) {
  for (int r = 0; r < 4; ++r) {
    if (t.extent(r) < 0 || t.stride(r) < 0)
      fail(fn, message() << "argument '" << name << "' has a negative extent or stride: shape " << t.extents()
                         << ", strides " << t.strides());
  }
  if (t.size() > 0 && t.data_handle() == nullptr)
    fail(fn, message() << "argument '" << name << "' has null data but shape " << t.extents());
  if (t.extent(3) > 1 && t.stride(3) != 1)
    fail(fn, message() << "argument '" << name << "' must have unit stride along dim (axis 3), got stride "
                       << t.stride(3) << " for shape " << t.extents());
}

/// Expects `t` to have exactly `want` as its shape.
template <class T>
void check_shape(const char* fn, const char* name, const tensor_view<T>& t, const std::array<index_t, 4>& want,
                 const char* why) {
  if (t.extents() != want)
    fail(fn, message() << "argument '" << name << "' has shape " << t.extents() << ", expected " << want << " ("
                       << why << ")");
}

/// True when no two elements of the view share memory (a sufficient test: ordered by
/// stride, each axis with more than one element steps past the whole extent of the
/// previous ones).
template <class T>
bool is_unique(const tensor_view<T>& t) {
  index_t stride[4], extent[4];
  int n = 0;
  for (int r = 0; r < 4; ++r)
    if (t.extent(r) > 1) {
      int i = n++;
      while (i > 0 && stride[i - 1] > t.stride(r)) {
        stride[i] = stride[i - 1];
        extent[i] = extent[i - 1];
        --i;
      }
      stride[i] = t.stride(r);
      extent[i] = t.extent(r);
    }
  index_t span = 1;  // elements covered by the axes so far
  for (int i = 0; i < n; ++i) {
    if (stride[i] < span) return false;
    span = stride[i] * (extent[i] - 1) + span;
  }
  return true;
}

template <class T>
void check_unique(const char* fn, const char* name, const tensor_view<T>& t) {
  if (!is_unique(t))
    fail(fn, message() << "output '" << name << "' " << t.extents() << " with strides " << t.strides()
                       << " maps several elements to the same memory");
}

template <class T, class U>
bool overlaps(const tensor_view<T>& a, const tensor_view<U>& b) {
  if (a.size() == 0 || b.size() == 0) return false;
  const auto lo_a = reinterpret_cast<std::uintptr_t>(a.data_handle());
  const auto hi_a = lo_a + std::uintptr_t(a.required_span_size()) * sizeof(T);
  const auto lo_b = reinterpret_cast<std::uintptr_t>(b.data_handle());
  const auto hi_b = lo_b + std::uintptr_t(b.required_span_size()) * sizeof(U);
  return lo_a < hi_b && lo_b < hi_a;
}

template <class T, class U>
void check_no_alias(const char* fn, const char* out_name, const tensor_view<T>& out, const char* in_name,
                    const tensor_view<U>& in) {
  if (overlaps(out, in))
    fail(fn, message() << "output '" << out_name << "' " << out.extents() << " overlaps input '" << in_name << "' "
                       << in.extents() << " in memory; outputs must not alias inputs");
}

/// The options of the softmax families other than the scale (whose default differs between
/// attention_options and mla_options): softcap, thread count, one sink logit per query head.
inline void check_softmax_options(const char* fn, float softcap, int num_threads, const float_span& sinks,
                                  index_t q_heads) {
  if (!(softcap >= 0.f) || !std::isfinite(softcap))
    fail(fn, message() << "options.softcap must be >= 0 and finite (0 = off), got " << double(softcap));
  if (num_threads < 0) fail(fn, message() << "options.num_threads must be >= 0 (0 = all), got " << num_threads);
  if (sinks.data != nullptr || sinks.size != 0) {
    if (sinks.size != q_heads || sinks.data == nullptr)
      fail(fn, message() << "options.sink_logits must hold one logit per query head: expected " << q_heads
                         << ", got " << sinks.size << (sinks.data ? "" : " with null data"));
    for (index_t h = 0; h < q_heads; ++h)
      if (!std::isfinite(sinks.data[h])) fail(fn, message() << "options.sink_logits[" << h << "] is not finite");
  }
}

/// Sizes of a dense attention problem after validation.
struct dense_problem {
  index_t batch, q_heads, kv_heads, q_len, kv_len, qk_dim, v_dim;
  float scale;
};

/// Validates q, k, v (and out, lse when given) for dense attention.
template <class TQ, class TK, class TV>
dense_problem check_dense(const char* fn, const tensor_view<TQ>& q, const tensor_view<TK>& k,
                          const tensor_view<TV>& v, const tensor_view<float>* out, const tensor_view<float>& lse,
                          const attention_options& opt) {
  check_view(fn, "q", q);
  check_view(fn, "k", k);
  check_view(fn, "v", v);
  // Each shape error names the three inputs' shapes.
  auto shapes = [&](const char* what) {
    return message() << what << " (q is " << q.extents() << ", k is " << k.extents() << ", v is " << v.extents()
                     << ")";
  };
  if (k.batch() != q.batch() || v.batch() != q.batch()) fail(fn, shapes("batch of 'k' and 'v' must equal batch of 'q'"));
  if (k.heads() != v.heads()) fail(fn, shapes("heads of 'k' and 'v' must be equal"));
  if (k.heads() < 1 && q.heads() > 0) fail(fn, shapes("'k' must have at least one head"));
  if (k.heads() > 0 && q.heads() % k.heads() != 0)
    fail(fn, shapes("heads of 'q' must be a multiple of heads of 'k' (grouped-query attention)"));
  if (k.seq() != v.seq()) fail(fn, shapes("seq of 'k' and 'v' must be equal"));
  if (k.dim() != q.dim()) fail(fn, shapes("dim of 'k' must equal dim of 'q'"));
  if (q.dim() < 1 || v.dim() < 1) fail(fn, shapes("dims of 'q' and 'v' must be at least 1"));
  if (!std::isfinite(opt.scale)) fail(fn, message() << "options.scale must be finite, got " << double(opt.scale));
  check_softmax_options(fn, opt.softcap, opt.num_threads, opt.sink_logits, q.heads());
  if (out) {
    check_view(fn, "out", *out);
    check_shape(fn, "out", *out, {{q.batch(), q.heads(), q.seq(), v.dim()}}, "batch, heads and seq of q, dim of v");
    check_unique(fn, "out", *out);
    check_no_alias(fn, "out", *out, "q", q);
    check_no_alias(fn, "out", *out, "k", k);
    check_no_alias(fn, "out", *out, "v", v);
  }
  if (!lse.empty() || lse.data_handle() != nullptr) {
    check_view(fn, "lse", lse);
    check_shape(fn, "lse", lse, {{q.batch(), q.heads(), q.seq(), 1}}, "batch, heads and seq of q, then 1");
    check_unique(fn, "lse", lse);
    check_no_alias(fn, "lse", lse, "q", q);
    check_no_alias(fn, "lse", lse, "k", k);
    check_no_alias(fn, "lse", lse, "v", v);
    if (out) check_no_alias(fn, "lse", lse, "out", *out);
  }
  dense_problem p{q.batch(), q.heads(), k.heads(), q.seq(), k.seq(), q.dim(), v.dim(), opt.scale};
  if (p.scale == 0.f) p.scale = 1.f / std::sqrt(static_cast<float>(q.dim()));
  return p;
}

}  // namespace detail
}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
