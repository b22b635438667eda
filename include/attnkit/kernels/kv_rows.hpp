// Where the K (or V) rows of one (batch, kv head) live, and how the drivers read a tile of
// them as fp32: the one place that knows about storage types and pages.
//
// A tile of fp32 rows on one stride is used in place. Otherwise (bf16/fp16 storage, a tile
// that crosses a page boundary, or a kernel that needs rows padded to whole vectors) the
// rows are widened or gathered into a per-thread buffer first: the copy costs one pass over
// the tile, which the micro-kernels then reuse for every query lane of the unit. The same
// fp32 values reach the micro-kernels either way, so paged and contiguous K/V give bitwise
// identical results.
#pragma once

#include <cstdint>
#include <cstring>

#include "../core/args.hpp"
#include "../simd/convert.hpp"

namespace attnkit {
inline namespace ATTNKIT_ISA_NS {
namespace detail {

struct kv_rows {
  const void* base = nullptr;           // row 0 (contiguous), or the page pool at this kv head
  std::int64_t stride = 0;              // elements between rows (inside a page when paged)
  dtype type = dtype::f32;
  const std::int32_t* pages = nullptr;  // paged: this sequence's page ids
  std::int64_t page_size = 0, page_stride = 0;

  /// K (`key` = true) or V rows of batch b, kv head kvh.
  static kv_rows of(const dense_args& a, bool key, std::int64_t b, std::int64_t kvh) noexcept {
    kv_rows r;
    const std::int64_t sb = key ? a.k_sb : a.v_sb, sh = key ? a.k_sh : a.v_sh;
    const std::int64_t elem = a.kv_type == dtype::f32 ? 4 : 2;
    const char* p = static_cast<const char*>(key ? a.k : a.v);
    r.stride = key ? a.k_ss : a.v_ss;
    r.type = a.kv_type;
    if (a.page_table) {
      r.base = p + kvh * sh * elem;
      r.pages = a.page_table + b * a.pt_sb;
      r.page_size = a.page_size;
      r.page_stride = sb;
    } else {
      r.base = p + (b * sb + kvh * sh) * elem;
    }
    return r;
  }

  template <class T>
  const T* row(std::int64_t t) const noexcept {
    const T* b = static_cast<const T*>(base);
    if (!pages) return b + t * stride;
    return b + std::int64_t(pages[t / page_size]) * page_stride + (t % page_size) * stride;
  }

  /// Asks for rows [t0, t0 + n) of `bytes` each to be brought into cache. Decode streams
  /// the cache tile by tile; fetching the next tile while this one computes keeps the
  /// memory busy (the hardware prefetcher alone leaves gaps at every switch between the K
  /// and V streams).
  void prefetch(std::int64_t t0, std::int64_t n, std::int64_t bytes) const noexcept {
    const std::int64_t elem = type == dtype::f32 ? 4 : 2;
    for (std::int64_t t = t0; t < t0 + n; ++t) {
      const char* p = static_cast<const char*>(base) + (pages ? std::int64_t(pages[t / page_size]) * page_stride + (t % page_size) * stride
                                                              : t * stride) * elem;
      for (std::int64_t x = 0; x < bytes; x += 64) __builtin_prefetch(p + x, 0, 3);
    }
  }

  /// Row pointers of rows [t0, t0 + n) as stored (T is the storage type), for kernels that
  /// read rows in place wherever they are (pages included).
  template <class T>
  void row_ptrs(std::int64_t t0, std::int64_t n, const T** out) const noexcept {
    for (std::int64_t t = 0; t < n; ++t) out[t] = row<T>(t0 + t);
  }

  /// fp32 rows [t0, t0 + n) of `dim` elements: returns the first row and sets `ld` to the
  /// distance between rows. In place when possible; else widened/gathered into `buf`
  /// ([n][ld_buf], rows zero-padded to ld_buf). `padded` asks for rows that can be read in
  /// whole vectors up to ld_buf (only in place when dim == ld_buf).
  template <class Arch>
  const float* tile(std::int64_t t0, std::int64_t n, std::int64_t dim, float* buf, std::int64_t ld_buf, bool padded,
                    std::int64_t& ld) const noexcept {
    const bool one_stride = !pages || t0 / page_size == (t0 + n - 1) / page_size;
    if (type == dtype::f32 && one_stride && (!padded || dim == ld_buf)) {
      ld = stride;
      return row<float>(t0);
    }
    ld = ld_buf;
    switch (type) {
      case dtype::bf16:
        for (std::int64_t r = 0; r < n; ++r) simd::widen_row<Arch>(row<bf16>(t0 + r), buf + r * ld_buf, dim, ld_buf);
        break;
      case dtype::f16:
        for (std::int64_t r = 0; r < n; ++r) simd::widen_row<Arch>(row<fp16>(t0 + r), buf + r * ld_buf, dim, ld_buf);
        break;
      default:
        for (std::int64_t r = 0; r < n; ++r) simd::widen_row<Arch>(row<float>(t0 + r), buf + r * ld_buf, dim, ld_buf);
        break;
    }
    return buf;
  }
};

}  // namespace detail
}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
