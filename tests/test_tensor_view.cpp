// attnkit::tensor_view<T>, its factories, and view_of over Eigen matrices.
#include "support/attnkit_test.hpp"

#include <attnkit/core/eigen.hpp>

#include <Eigen/Core>

#include <type_traits>

using attnkit::index_t;
using attnkit::tensor_view;

static_assert(std::is_trivially_copyable<tensor_view<float>>::value, "");
static_assert(std::is_trivially_copyable<tensor_view<const float>>::value, "");
static_assert(std::is_trivially_copyable<tensor_view<attnkit::bf16>>::value, "");
static_assert(std::is_trivially_copyable<tensor_view<const attnkit::fp16>>::value, "");
static_assert(std::is_trivially_copyable<attnkit::attention_options>::value, "");
static_assert(std::is_trivially_copyable<attnkit::bf16>::value && sizeof(attnkit::bf16) == 2, "");
static_assert(std::is_trivially_copyable<attnkit::fp16>::value && sizeof(attnkit::fp16) == 2, "");
static_assert(std::is_standard_layout<attnkit::bf16>::value && std::is_standard_layout<attnkit::fp16>::value, "");
// Mutable converts to const, never the other way.
static_assert(std::is_convertible<tensor_view<float>, tensor_view<const float>>::value, "");
static_assert(!std::is_convertible<tensor_view<const float>, tensor_view<float>>::value, "");
static_assert(!std::is_convertible<tensor_view<float>, tensor_view<const attnkit::bf16>>::value, "");
static_assert(tensor_view<float>::rank == 4, "");
static_assert(std::is_same<tensor_view<const float>::value_type, float>::value, "");
static_assert(std::is_same<tensor_view<const float>::index_type, std::int64_t>::value, "");

// constexpr-usable: a view is a literal type.
constexpr float kConstData[2 * 3 * 4 * 5] = {};
constexpr auto kConstView = attnkit::make_bhsd(kConstData, 2, 3, 4, 5);
static_assert(kConstView.stride(0) == 60 && kConstView.stride(1) == 20 && kConstView.stride(2) == 5, "");
static_assert(kConstView.required_span_size() == 120, "");

TEST_CASE("tensor_view: make_bhsd strides and indexing", "[tensor_view]") {
  std::vector<float> buf(2 * 3 * 4 * 5);
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = float(i);
  const auto t = attnkit::make_bhsd(buf.data(), 2, 3, 4, 5);
  CHECK(t.extents() == std::array<index_t, 4>{{2, 3, 4, 5}});
  CHECK(t.strides() == std::array<index_t, 4>{{60, 20, 5, 1}});
  CHECK(t.batch() == 2);
  CHECK(t.heads() == 3);
  CHECK(t.seq() == 4);
  CHECK(t.dim() == 5);
  CHECK(t.size() == 120);
  CHECK_FALSE(t.empty());
  CHECK(t.required_span_size() == 120);
  CHECK(t.data_handle() == buf.data());
  for (index_t b = 0; b < 2; ++b)
    for (index_t h = 0; h < 3; ++h)
      for (index_t s = 0; s < 4; ++s) {
        CHECK(t.row(b, h, s) == buf.data() + ((b * 3 + h) * 4 + s) * 5);
        for (index_t d = 0; d < 5; ++d) {
          CHECK(t.offset(b, h, s, d) == ((b * 3 + h) * 4 + s) * 5 + d);
          CHECK(t(b, h, s, d) == float(((b * 3 + h) * 4 + s) * 5 + d));
        }
      }
  t(1, 2, 3, 4) = -1.f;  // operator() returns a reference into the buffer
  CHECK(buf.back() == -1.f);
}

TEST_CASE("tensor_view: make_bshd strides and indexing", "[tensor_view]") {
  // Physical order [B, S, H, D]; logical order of the view [B, H, S, D].
  std::vector<float> buf(2 * 4 * 3 * 5);
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = float(i);
  const auto t = attnkit::make_bshd(buf.data(), 2, 4, 3, 5);  // batch 2, seq 4, heads 3, dim 5
  CHECK(t.extents() == std::array<index_t, 4>{{2, 3, 4, 5}});
  CHECK(t.strides() == std::array<index_t, 4>{{60, 5, 15, 1}});
  CHECK(t.required_span_size() == 120);
  for (index_t b = 0; b < 2; ++b)
    for (index_t s = 0; s < 4; ++s)
      for (index_t h = 0; h < 3; ++h) {
        CHECK(t.row(b, h, s) == buf.data() + ((b * 4 + s) * 3 + h) * 5);
        for (index_t d = 0; d < 5; ++d) CHECK(t(b, h, s, d) == float(((b * 4 + s) * 3 + h) * 5 + d));
      }
}

TEST_CASE("tensor_view: general constructor, padded rows, broadcast and required_span_size", "[tensor_view]") {
  std::vector<float> buf(1000);
  SECTION("padded rows") {
    // Row stride 23 > dim 20 (dim + 3), heads and batch packed over padded rows.
    const tensor_view<float> t(buf.data(), {{2, 3, 4, 20}}, {{3 * 4 * 23, 4 * 23, 23, 1}});
    CHECK(t.required_span_size() == 1 + 1 * 276 + 2 * 92 + 3 * 23 + 19);
    CHECK(&t(1, 2, 3, 19) == buf.data() + t.required_span_size() - 1);
    CHECK(t.row(0, 1, 2) == buf.data() + 92 + 46);
  }
  SECTION("zero strides broadcast") {
    const tensor_view<float> t(buf.data(), {{4, 8, 10, 16}}, {{0, 0, 16, 1}});
    CHECK(t.required_span_size() == 160);
    CHECK(&t(3, 7, 9, 15) == &t(0, 0, 9, 15));
  }
  SECTION("empty views") {
    const tensor_view<float> none;
    CHECK(none.empty());
    CHECK(none.size() == 0);
    CHECK(none.data_handle() == nullptr);
    CHECK(none.required_span_size() == 0);
    const auto zero_seq = attnkit::make_bhsd(buf.data(), 2, 3, 0, 5);
    CHECK(zero_seq.empty());
    CHECK(zero_seq.required_span_size() == 0);
  }
  SECTION("extent-1 axes") {
    const auto t = attnkit::make_bhsd(buf.data(), 1, 1, 1, 7);
    CHECK(t.required_span_size() == 7);
  }
}

TEST_CASE("tensor_view: conversion to a const view keeps data, extents and strides", "[tensor_view]") {
  std::vector<float> buf(300);
  const tensor_view<float> t(buf.data(), {{2, 3, 4, 5}}, {{130, 40, 9, 1}});
  const tensor_view<const float> c = t;
  CHECK(c.data_handle() == t.data_handle());
  CHECK(c.extents() == t.extents());
  CHECK(c.strides() == t.strides());
  CHECK(&c(1, 2, 3, 4) == &t(1, 2, 3, 4));
  // The storage types have views too.
  std::vector<attnkit::bf16> hb(120);
  const auto vb = attnkit::make_bhsd(hb.data(), 2, 3, 4, 5);
  const tensor_view<const attnkit::bf16> cb = vb;
  CHECK(cb.data_handle() == hb.data());
  std::vector<attnkit::fp16> hf(120);
  const auto vf = attnkit::make_bshd(hf.data(), 2, 4, 3, 5);
  CHECK(vf.stride(2) == 15);
  CHECK(&vf(1, 2, 3, 4) == hf.data() + ((1 * 4 + 3) * 3 + 2) * 5 + 4);
}

TEST_CASE("view_of: Eigen row-major matrix [seq, heads * dim]", "[tensor_view][eigen]") {
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Mat m(7, 3 * 8);
  for (Eigen::Index i = 0; i < m.rows(); ++i)
    for (Eigen::Index j = 0; j < m.cols(); ++j) m(i, j) = float(i * 100 + j);
  const auto v = attnkit::view_of(m, 3);
  static_assert(std::is_same<std::remove_const_t<decltype(v)>, tensor_view<float>>::value, "");
  CHECK(v.extents() == std::array<index_t, 4>{{1, 3, 7, 8}});
  CHECK(v.stride(1) == 8);
  CHECK(v.stride(2) == 24);
  CHECK(v.stride(3) == 1);
  CHECK(v.data_handle() == m.data());
  for (index_t h = 0; h < 3; ++h)
    for (index_t s = 0; s < 7; ++s)
      for (index_t d = 0; d < 8; ++d) CHECK(v(0, h, s, d) == m(s, h * 8 + d));

  const Mat& cm = m;
  const auto cv = attnkit::view_of(cm, 2);
  static_assert(std::is_same<std::remove_const_t<decltype(cv)>, tensor_view<const float>>::value, "");
  CHECK(cv.dim() == 12);
  CHECK(cv(0, 1, 6, 11) == m(6, 23));

  CHECK_THROWS_AS(attnkit::view_of(m, 5), attnkit::error);
  CHECK_THROWS_AS(attnkit::view_of(m, 0), std::invalid_argument);
}

TEST_CASE("view_of: a Block and a Map with an outer stride", "[tensor_view][eigen]") {
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Mat qkv(10, 5 * 16);  // fused projection: q (2 heads) | k (2 heads) | v (1 head)
  for (Eigen::Index i = 0; i < qkv.size(); ++i) qkv.data()[i] = float(i);
  SECTION("Block") {
    auto kblock = qkv.block(2, 32, 6, 32);  // rows 2..7 of the k heads
    const auto k = attnkit::view_of(kblock, 2);
    CHECK(k.extents() == std::array<index_t, 4>{{1, 2, 6, 16}});
    CHECK(k.stride(2) == 80);  // the big matrix's outer stride
    CHECK(k.data_handle() == &qkv(2, 32));
    for (index_t h = 0; h < 2; ++h)
      for (index_t s = 0; s < 6; ++s)
        for (index_t d = 0; d < 16; ++d) CHECK(&k(0, h, s, d) == &qkv(2 + s, 32 + h * 16 + d));
    CHECK(k.required_span_size() == 5 * 80 + 32);
  }
  SECTION("Map with OuterStride") {
    Eigen::Map<Mat, Eigen::Unaligned, Eigen::OuterStride<>> v(qkv.data() + 64, 10, 16, Eigen::OuterStride<>(80));
    const auto vv = attnkit::view_of(v, 1);
    CHECK(vv.extents() == std::array<index_t, 4>{{1, 1, 10, 16}});
    CHECK(vv.stride(2) == 80);
    CHECK(vv(0, 0, 9, 15) == qkv(9, 79));
  }
  SECTION("row-major row vector") {
    Eigen::Matrix<float, 1, Eigen::Dynamic, Eigen::RowMajor> r(12);
    r.setZero();
    const auto rv = attnkit::view_of(r, 3);
    CHECK(rv.extents() == std::array<index_t, 4>{{1, 3, 1, 4}});
  }
}
