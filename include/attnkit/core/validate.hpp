// Argument checks shared by attnkit::attention and attnkit::reference.
//
// Every public entry calls these before any work, so kernels can assume valid shapes.
// Messages name the entry, the argument, and the expected and actual shapes.
#pragma once

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>

#include "error.hpp"
#include "options.hpp"
#include "tensor_view.hpp"

namespace attnkit {
inline namespace ATTNKIT_ISA_NS {
namespace detail {

template <class T>
std::string shape_str(const tensor_view<T>& t) {
  std::ostringstream s;
  s << '[' << t.extent(0) << ", " << t.extent(1) << ", " << t.extent(2) << ", " << t.extent(3) << ']';
  return s.str();
}

[[noreturn]] inline void fail(const char* fn, const std::string& msg) {
  throw error(std::string("attnkit::") + fn + ": " + msg);
}

/// Extents and strides non-negative, data present when non-empty, unit dim stride.
template <class T>
void check_view(const char* fn, const char* name, const tensor_view<T>& t) {
  for (int r = 0; r < 4; ++r) {
    if (t.extent(r) < 0 || t.stride(r) < 0) {
      std::ostringstream s;
      s << "argument '" << name << "' has a negative extent or stride: shape " << shape_str(t)
        << ", strides [" << t.stride(0) << ", " << t.stride(1) << ", " << t.stride(2) << ", "
        << t.stride(3) << "]";
      fail(fn, s.str());
    }
  }
  if (t.size() > 0 && t.data_handle() == nullptr)
    fail(fn, std::string("argument '") + name + "' has null data but shape " + shape_str(t));
  if (t.extent(3) > 1 && t.stride(3) != 1)
    fail(fn, std::string("argument '") + name + "' must have unit stride along dim (axis 3), got stride " +
                 std::to_string(t.stride(3)) + " for shape " + shape_str(t));
}

/// Expects `t` to have exactly `want` as its shape.
template <class T>
void check_shape(const char* fn, const char* name, const tensor_view<T>& t, const std::array<index_t, 4>& want,
                 const char* why) {
  if (t.extents() != want) {
    std::ostringstream s;
    s << "argument '" << name << "' has shape " << shape_str(t) << ", expected [" << want[0] << ", " << want[1]
      << ", " << want[2] << ", " << want[3] << "] (" << why << ")";
    fail(fn, s.str());
  }
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
  if (!is_unique(t)) {
    std::ostringstream s;
    s << "output '" << name << "' " << shape_str(t) << " with strides [" << t.stride(0) << ", " << t.stride(1) << ", "
      << t.stride(2) << ", " << t.stride(3) << "] maps several elements to the same memory";
    fail(fn, s.str());
  }
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
    fail(fn, std::string("output '") + out_name + "' " + shape_str(out) + " overlaps input '" + in_name + "' " +
                 shape_str(in) + " in memory; outputs must not alias inputs");
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
  const std::string qs = " (q is " + shape_str(q) + ", k is " + shape_str(k) + ", v is " + shape_str(v) + ")";
  if (k.batch() != q.batch() || v.batch() != q.batch())
    fail(fn, "batch of 'k' and 'v' must equal batch of 'q'" + qs);
  if (k.heads() != v.heads()) fail(fn, "heads of 'k' and 'v' must be equal" + qs);
  if (k.heads() < 1 && q.heads() > 0) fail(fn, "'k' must have at least one head" + qs);
  if (k.heads() > 0 && q.heads() % k.heads() != 0)
    fail(fn, "heads of 'q' must be a multiple of heads of 'k' (grouped-query attention)" + qs);
  if (k.seq() != v.seq()) fail(fn, "seq of 'k' and 'v' must be equal" + qs);
  if (k.dim() != q.dim()) fail(fn, "dim of 'k' must equal dim of 'q'" + qs);
  if (q.dim() < 1 || v.dim() < 1) fail(fn, "dims of 'q' and 'v' must be at least 1" + qs);
  if (!std::isfinite(opt.scale)) fail(fn, "options.scale must be finite, got " + std::to_string(opt.scale));
  if (!(opt.softcap >= 0.f) || !std::isfinite(opt.softcap))
    fail(fn, "options.softcap must be >= 0 and finite (0 = off), got " + std::to_string(opt.softcap));
  if (opt.num_threads < 0)
    fail(fn, "options.num_threads must be >= 0 (0 = all), got " + std::to_string(opt.num_threads));
  if (opt.sink_logits.data != nullptr || opt.sink_logits.size != 0) {
    if (opt.sink_logits.size != q.heads() || opt.sink_logits.data == nullptr)
      fail(fn, "options.sink_logits must hold one logit per query head: expected " + std::to_string(q.heads()) +
                   ", got " + std::to_string(opt.sink_logits.size) +
                   (opt.sink_logits.data ? "" : " with null data"));
    for (index_t h = 0; h < q.heads(); ++h)
      if (!std::isfinite(opt.sink_logits.data[h]))
        fail(fn, "options.sink_logits[" + std::to_string(h) + "] is not finite");
  }
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
