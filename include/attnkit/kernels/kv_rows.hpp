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
  // A row is one segment, or two (MLA keys: latent, then rope key) laid end to end.
  struct segment {
    const void* base = nullptr;  // row 0 (contiguous), or the page pool at this kv head
    std::int64_t stride = 0;     // elements between rows (inside a page when paged)
    std::int64_t page_stride = 0;
  };
  segment seg[2];
  int nseg = 1;
  std::int64_t dim0 = 0;                // elements of segment 0 when nseg == 2
  dtype type = dtype::f32;
  const std::int32_t* pages = nullptr;  // paged: this sequence's page ids
  std::int64_t page_size = 0;

  /// K (`key` = true) or V rows of batch b, kv head kvh.
  static kv_rows of(const dense_args& a, bool key, std::int64_t b, std::int64_t kvh) noexcept {
    kv_rows r;
    r.type = a.kv_type;
    r.pages = a.page_table ? a.page_table + b * a.pt_sb : nullptr;
    r.page_size = a.page_size;
    const std::int64_t elem = a.kv_type == dtype::f32 ? 4 : 2;
    auto make = [&](const void* p, std::int64_t sb, std::int64_t sh, std::int64_t ss) {
      segment s;
      s.stride = ss;
      s.page_stride = a.page_table ? sb : 0;
      s.base = static_cast<const char*>(p) + ((a.page_table ? 0 : b * sb) + kvh * sh) * elem;
      return s;
    };
    if (key) {
      r.seg[0] = make(a.k, a.k_sb, a.k_sh, a.k_ss);
      if (a.k2) {
        r.seg[1] = make(a.k2, a.k2_sb, a.k2_sh, a.k2_ss);
        r.nseg = 2;
        r.dim0 = a.qk_dim - a.k2_dim;
      }
    } else {
      r.seg[0] = make(a.v, a.v_sb, a.v_sh, a.v_ss);
    }
    return r;
  }

  /// Elements from segment s's base to its row t.
  std::int64_t offset(std::int64_t t, int s) const noexcept {
    if (!pages) return t * seg[s].stride;
    return std::int64_t(pages[t / page_size]) * seg[s].page_stride + (t % page_size) * seg[s].stride;
  }

  /// Calls f(i, offset of row t0 + i) for i < n, walking pages without a division per row
  /// (decode computes a tile's row addresses for every tile it reads).
  template <class F>
  void for_rows(std::int64_t t0, std::int64_t n, int s, F&& f) const noexcept {
    if (!pages) {
      for (std::int64_t i = 0; i < n; ++i) f(i, (t0 + i) * seg[s].stride);
      return;
    }
    std::int64_t p = t0 / page_size, r = t0 % page_size;
    std::int64_t base = std::int64_t(pages[p]) * seg[s].page_stride;
    for (std::int64_t i = 0; i < n; ++i, ++r) {
      if (r == page_size) {  // only pages that hold a row of the range are read
        r = 0;
        base = std::int64_t(pages[++p]) * seg[s].page_stride;
      }
      f(i, base + r * seg[s].stride);
    }
  }

  /// Row t of segment s (T is the storage type).
  template <class T>
  const T* row(std::int64_t t, int s = 0) const noexcept {
    return static_cast<const T*>(seg[s].base) + offset(t, s);
  }

  /// Asks for rows [t0, t0 + n) of `dim` elements to be brought into cache: decode asks for
  /// the next tile of rows it gathers (padded, or MLA's two-segment keys) before copying
  /// this one. (Rows read in place are prefetched by the micro-kernels instead, Note
  /// [Prefetch ahead] in micro_rows.hpp.)
  void prefetch(std::int64_t t0, std::int64_t n, std::int64_t dim) const noexcept {
    const std::int64_t elem = type == dtype::f32 ? 4 : 2;
    for (int s = 0; s < nseg; ++s) {
      const std::int64_t bytes = (nseg == 1 ? dim : s == 0 ? dim0 : dim - dim0) * elem;
      const char* b = static_cast<const char*>(seg[s].base);
      for_rows(t0, n, s, [&](std::int64_t, std::int64_t off) {
        for (std::int64_t x = 0; x < bytes; x += 64) __builtin_prefetch(b + off * elem + x, 0, 3);
      });
    }
  }

  /// Row pointers of rows [t0, t0 + n) as stored (T is the storage type), for kernels that
  /// read rows in place wherever they are (pages included).
  template <class T>
  void row_ptrs(std::int64_t t0, std::int64_t n, const T** out) const noexcept {
    const T* b = static_cast<const T*>(seg[0].base);
    for_rows(t0, n, 0, [&](std::int64_t i, std::int64_t off) { out[i] = b + off; });
  }

  /// fp32 rows [t0, t0 + n) of `dim` elements: returns the first row and sets `ld` to the
  /// distance between rows. In place when possible; else widened/gathered into `buf`
  /// ([n][ld_buf], rows zero-padded to ld_buf). `padded` asks for rows that can be read in
  /// whole vectors up to ld_buf (only in place when dim == ld_buf).
  template <class Arch>
  const float* tile(std::int64_t t0, std::int64_t n, std::int64_t dim, float* buf, std::int64_t ld_buf, bool padded,
                    std::int64_t& ld) const noexcept {
    const bool one_stride = !pages || t0 / page_size == (t0 + n - 1) / page_size;
    if (type == dtype::f32 && nseg == 1 && one_stride && (!padded || dim == ld_buf)) {
      ld = seg[0].stride;
      return row<float>(t0);
    }
    ld = ld_buf;
    switch (type) {
      case dtype::bf16: gather<Arch, bf16>(t0, n, dim, buf, ld_buf); break;
      case dtype::f16: gather<Arch, fp16>(t0, n, dim, buf, ld_buf); break;
      default: gather<Arch, float>(t0, n, dim, buf, ld_buf); break;
    }
    return buf;
  }

  template <class Arch, class T>
  void gather(std::int64_t t0, std::int64_t n, std::int64_t dim, float* buf, std::int64_t ld_buf) const noexcept {
    for (std::int64_t r = 0; r < n; ++r) {
      float* dst = buf + r * ld_buf;
      if (nseg == 1) {
        simd::widen_row<Arch>(row<T>(t0 + r), dst, dim, ld_buf);
      } else {
        simd::widen_row<Arch>(row<T>(t0 + r, 0), dst, dim0, dim0);
        simd::widen_row<Arch>(row<T>(t0 + r, 1), dst + dim0, dim - dim0, ld_buf - dim0);
      }
    }
  }
};

}  // namespace detail
}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
