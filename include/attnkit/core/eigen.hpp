// Views over Eigen row-major matrices (optional: include only where Eigen is available).
//
// A projection output is usually a row-major matrix [seq, heads * dim] (one sequence):
//   RowMatrixXf Q(seq, 32 * 128);
//   auto q = attnkit::view_of(Q, 32);   // tensor_view<float> of shape [1, 32, seq, 128]
// The matrix's outer stride becomes the seq stride, so blocks and Maps with an outer stride
// work as well. The matrix must outlive the view.
#pragma once

#include <type_traits>

#include "error.hpp"
#include "message.hpp"
#include "tensor_view.hpp"

namespace attnkit {

template <class Matrix>
auto view_of(Matrix&& m, index_t heads) {
  using M = std::remove_reference_t<Matrix>;
  static_assert(M::IsRowMajor || M::ColsAtCompileTime == 1 || M::RowsAtCompileTime == 1,
                "attnkit::view_of: the Eigen matrix must be row-major");
  using scalar = std::remove_pointer_t<decltype(m.data())>;
  static_assert(std::is_same<std::remove_cv_t<scalar>, float>::value,
                "attnkit::view_of: only float matrices are supported");
  const index_t cols = static_cast<index_t>(m.cols());
  if (heads < 1 || cols % heads != 0)
    detail::fail("view_of", detail::message() << "argument 'heads' (" << heads
                                              << ") must be >= 1 and divide the matrix's columns (" << cols << ")");
  const index_t dim = cols / heads;
  const index_t rows = static_cast<index_t>(m.rows());
  const index_t ld = static_cast<index_t>(m.outerStride());
  return tensor_view<scalar>(m.data(), {{1, heads, rows, dim}}, {{rows * ld, dim, ld, 1}});
}

}  // namespace attnkit
