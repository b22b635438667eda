// attnkit::tensor_view<T>: non-owning rank-4 strided view, logical [batch, heads, seq, dim].
//
// The mdspan vocabulary with a fixed rank: extent(r), stride(r), data_handle(), operator().
// Strides are in elements (not bytes), signed 64-bit and non-negative; a zero stride
// broadcasts along that axis. The physical order ([B,H,S,D], [B,S,H,D], ...) is described by
// the strides alone. Kernels require stride(3) == 1 (the API checks it).
// A default-constructed view is empty and means "not wanted" for optional outputs.
#pragma once

#include <array>
#include <cstdint>
#include <type_traits>

#include "../config.hpp"
#include "dtypes.hpp"

namespace attnkit {

using index_t = std::int64_t;

template <class T>
class tensor_view {
 public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;
  using index_type = index_t;
  using extents_type = std::array<index_t, 4>;
  static constexpr int rank = 4;

  static_assert(std::is_same<value_type, float>::value || std::is_same<value_type, bf16>::value ||
                    std::is_same<value_type, fp16>::value,
                "tensor_view<T>: T must be float, attnkit::bf16 or attnkit::fp16 (possibly const)");

  constexpr tensor_view() noexcept = default;

  /// General constructor: shape {batch, heads, seq, dim} and element strides per axis.
  constexpr tensor_view(T* data, const extents_type& extents, const extents_type& strides) noexcept
      : data_(data), extents_(extents), strides_(strides) {}

  /// A view of T converts to a view of const T.
  template <class U, class = std::enable_if_t<std::is_same<const U, T>::value && !std::is_same<U, T>::value>>
  constexpr tensor_view(const tensor_view<U>& other) noexcept  // NOLINT(google-explicit-constructor)
      : data_(other.data_handle()), extents_(other.extents()), strides_(other.strides()) {}

  constexpr T* data_handle() const noexcept { return data_; }
  constexpr index_t extent(int r) const noexcept { return extents_[static_cast<std::size_t>(r)]; }
  constexpr index_t stride(int r) const noexcept { return strides_[static_cast<std::size_t>(r)]; }
  constexpr const extents_type& extents() const noexcept { return extents_; }
  constexpr const extents_type& strides() const noexcept { return strides_; }

  constexpr index_t batch() const noexcept { return extents_[0]; }
  constexpr index_t heads() const noexcept { return extents_[1]; }
  constexpr index_t seq() const noexcept { return extents_[2]; }
  constexpr index_t dim() const noexcept { return extents_[3]; }

  /// Number of elements in the logical shape.
  constexpr index_t size() const noexcept { return extents_[0] * extents_[1] * extents_[2] * extents_[3]; }
  /// True for a default (absent) view or any zero extent.
  constexpr bool empty() const noexcept { return size() == 0; }

  /// One past the largest element offset the view can touch (0 if it has no elements).
  constexpr index_t required_span_size() const noexcept {
    if (size() == 0) return 0;
    index_t s = 1;
    for (int r = 0; r < 4; ++r) s += (extents_[r] - 1) * strides_[r];
    return s;
  }

  constexpr index_t offset(index_t b, index_t h, index_t s, index_t d) const noexcept {
    return b * strides_[0] + h * strides_[1] + s * strides_[2] + d * strides_[3];
  }
  constexpr T& operator()(index_t b, index_t h, index_t s, index_t d) const noexcept {
    return data_[offset(b, h, s, d)];
  }
  /// Pointer to the start of row (b, h, s).
  constexpr T* row(index_t b, index_t h, index_t s) const noexcept { return data_ + offset(b, h, s, 0); }

 private:
  T* data_ = nullptr;
  extents_type extents_{{0, 0, 0, 0}};
  extents_type strides_{{0, 0, 0, 0}};
};

/// Contiguous [batch, heads, seq, dim] (PyTorch's default SDPA layout).
template <class T>
constexpr tensor_view<T> make_bhsd(T* data, index_t batch, index_t heads, index_t seq, index_t dim) noexcept {
  return tensor_view<T>(data, {{batch, heads, seq, dim}}, {{heads * seq * dim, seq * dim, dim, 1}});
}

/// Contiguous [batch, seq, heads, dim] (the layout a fused QKV projection produces).
template <class T>
constexpr tensor_view<T> make_bshd(T* data, index_t batch, index_t seq, index_t heads, index_t dim) noexcept {
  return tensor_view<T>(data, {{batch, heads, seq, dim}}, {{seq * heads * dim, dim, heads * dim, 1}});
}

static_assert(std::is_trivially_copyable<tensor_view<float>>::value, "views are passed by value");

}  // namespace attnkit
