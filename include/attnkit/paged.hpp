// Public entries around decoding: attention over a paged KV cache, and the log-sum-exp
// merge of partial results.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "attention.hpp"
#include "kernels/merge.hpp"

namespace attnkit {

/// A read-only array of int32 (pointer and length), e.g. per-sequence lengths.
struct int32_span {
  const std::int32_t* data = nullptr;
  std::int64_t size = 0;
};

/// Page ids of a paged KV cache: row b lists sequence b's pages in order. `stride` is the
/// distance between rows (0 means `cols`). Only the first ceil(seq_len / page_size) ids of a
/// row are read.
struct page_table_view {
  const std::int32_t* data = nullptr;
  std::int64_t rows = 0, cols = 0, stride = 0;
};

inline namespace ATTNKIT_ISA_NS {
namespace detail {

/// Checks a page table and the sequence lengths against a pool of `num_pages` pages of
/// `page_size` rows, for `batch` sequences (the batch of argument `q_name`); every page id a
/// sequence uses must be a page of `pool_name`. Returns the longest sequence.
inline index_t check_pages(const char* fn, const char* q_name, const char* pool_name, index_t batch, index_t num_pages,
                           index_t page_size, const page_table_view& page_table, const int32_span& seq_lens) {
  if (seq_lens.size != batch || (batch > 0 && seq_lens.data == nullptr))
    fail(fn, message() << "argument 'seq_lens' must hold one length per sequence: batch of '" << q_name << "' is "
                       << batch << ", got " << seq_lens.size);
  const index_t pt_stride = page_table.stride > 0 ? page_table.stride : page_table.cols;
  if (page_table.rows != batch || page_table.cols < 0 || (batch > 0 && page_table.cols > 0 && !page_table.data))
    fail(fn, message() << "argument 'page_table' must have one row per sequence: batch of '" << q_name << "' is "
                       << batch << ", page_table is " << page_table.rows << " x " << page_table.cols);
  index_t longest = 0;
  for (index_t b = 0; b < batch; ++b) {
    const index_t len = seq_lens.data[b];
    if (len < 0 || len > page_table.cols * page_size)
      fail(fn, message() << "seq_lens[" << b << "] = " << len << " does not fit " << page_table.cols
                         << " pages of " << page_size << " keys");
    const index_t used = page_size > 0 ? (len + page_size - 1) / page_size : 0;  // page size 0: no pages, len 0
    for (index_t j = 0; j < used; ++j) {
      const std::int32_t id = page_table.data[b * pt_stride + j];
      if (id < 0 || id >= num_pages)
        fail(fn, message() << "page_table[" << b << "][" << j << "] = " << id << " is not a page of '" << pool_name
                           << "' (0.." << num_pages - 1 << ")");
    }
    longest = len > longest ? len : longest;
  }
  return longest;
}

}  // namespace detail


/// Attention against a paged KV cache (vLLM-style), with a ragged batch.
///
///   q        [batch, q_heads, Lq, d] float
///   k_pages  the page pool of keys, a view with extents [num_pages, kv_heads, page_size, d]:
///            page p holds rows k_pages(p, h, r, :). The usual [num_pages, page_size,
///            kv_heads, d] layout is make_bshd(ptr, num_pages, page_size, kv_heads, d).
///   v_pages  the same for values (dim dv); same storage type (float, bf16 or fp16).
///   page_table  [batch, pages per sequence]: sequence b's key t is row t % page_size of page
///            page_table[b][t / page_size].
///   seq_lens [batch]: keys of each sequence (any lengths, not multiples of page_size).
///   out      [batch, q_heads, Lq, dv]; lse optional [batch, q_heads, Lq, 1].
///
/// Sequence b's query row i sits at position i + seq_lens[b] - Lq (bottom-right, as in
/// attention()). Masks, options and GQA work as in attention(); block masks and masks with
/// a shape are checked against the longest sequence. The result for a sequence is bitwise
/// identical to attention() on the same keys stored contiguously. Throws attnkit::error on
/// invalid arguments (page ids out of range, lengths beyond the pages, mismatched heads)
/// before reading any page.
template <class TQ, class TK, class TV, class Mask = no_mask>
void attention_paged(const tensor_view<TQ>& q, const tensor_view<TK>& k_pages, const tensor_view<TV>& v_pages,
                     const page_table_view& page_table, const int32_span& seq_lens, const tensor_view<float>& out,
                     const Mask& mask = {}, const attention_options& options = {},
                     const tensor_view<float>& lse = {}) {
  const char* fn = "attention_paged";
  using detail::fail;
  using detail::message;
  detail::check_view(fn, "k_pages", k_pages);
  detail::check_view(fn, "v_pages", v_pages);
  const index_t num_pages = k_pages.batch(), page_size = k_pages.seq(), batch = q.batch();
  if (v_pages.batch() != num_pages || v_pages.seq() != page_size || v_pages.heads() != k_pages.heads())
    fail(fn, message() << "'k_pages' " << k_pages.extents() << " and 'v_pages' " << v_pages.extents()
                       << " must have the same pages, page size and heads");
  if (page_size < 1 && num_pages > 0) fail(fn, message() << "page size (axis 2 of 'k_pages') must be >= 1");
  // Checked here so that messages name the pools (the checks below see a stand-in 'k').
  detail::check_view(fn, "q", q);
  if (k_pages.heads() < 1 || q.heads() % k_pages.heads() != 0)
    fail(fn, message() << "heads of 'q' " << q.extents() << " must be a multiple of the kv heads (axis 1) of 'k_pages' "
                       << k_pages.extents());
  if (k_pages.dim() != q.dim())
    fail(fn, message() << "dim of 'k_pages' " << k_pages.extents() << " must equal dim of 'q' " << q.extents());
  const index_t longest = detail::check_pages(fn, "q", "k_pages", batch, num_pages, page_size, page_table, seq_lens);
  const index_t pt_stride = page_table.stride > 0 ? page_table.stride : page_table.cols;
  // Validate q, out, lse, options and the mask on a stand-in for the longest sequence: the
  // pools' own shapes are not [batch, kv_heads, seq, dim].
  const tensor_view<TK> k_like(k_pages.data_handle(), {{batch, k_pages.heads(), longest, k_pages.dim()}},
                               {{0, k_pages.stride(1), k_pages.stride(2), 1}});
  const tensor_view<TV> v_like(v_pages.data_handle(), {{batch, v_pages.heads(), longest, v_pages.dim()}},
                               {{0, v_pages.stride(1), v_pages.stride(2), 1}});
  dense_args a = detail::flash_args(fn, q, k_like, v_like, out, mask, options, lse);
  detail::check_no_alias(fn, "out", out, "k_pages", k_pages);
  detail::check_no_alias(fn, "out", out, "v_pages", v_pages);
  if (!lse.empty()) {
    detail::check_no_alias(fn, "lse", lse, "k_pages", k_pages);
    detail::check_no_alias(fn, "lse", lse, "v_pages", v_pages);
  }
  a.k_sb = k_pages.stride(0);
  a.v_sb = v_pages.stride(0);
  a.page_table = page_table.data;
  a.pt_sb = pt_stride;
  a.page_size = page_size;
  a.seq_lens = seq_lens.data;
  ATTNKIT_DISPATCH(dense_forward, a, mask);
}

/// Merges n partial attention results computed over disjoint key sets of the same queries
/// (split-KV, ring or context parallelism across devices or machines):
///   lse = log(sum_s exp(lse_s)),   out = sum_s exp(lse_s - lse) out_s.
/// outs[s] [batch, heads, Lq, dv] and lses[s] [batch, heads, Lq, 1] are partial s (its
/// output normalised over its own keys, as attention() returns it with lse). A partial with
/// lse = -inf (no allowed key) has no weight and its output is not read; all -inf gives 0
/// and -inf. This is the combiner attnkit's own split-KV decode uses. `lse` is optional.
template <class T>
void merge_partials(const tensor_view<T>* outs, const tensor_view<T>* lses, std::int64_t n,
                    const tensor_view<float>& out, const tensor_view<float>& lse = {}) {
  static_assert(std::is_same<std::remove_cv_t<T>, float>::value, "attnkit: partials must be float views");
  const char* fn = "merge_partials";
  using detail::fail;
  using detail::message;
  if (n < 1 || !outs || !lses) fail(fn, message() << "needs at least one partial (outs and lses), got n = " << n);
  detail::check_view(fn, "out", out);
  detail::check_unique(fn, "out", out);
  const std::array<index_t, 4> lse_shape{{out.batch(), out.heads(), out.seq(), 1}};
  if (!lse.empty() || lse.data_handle()) {
    detail::check_view(fn, "lse", lse);
    detail::check_shape(fn, "lse", lse, lse_shape, "batch, heads and seq of out, then 1");
    detail::check_unique(fn, "lse", lse);
    detail::check_no_alias(fn, "lse", lse, "out", out);
  }
  for (std::int64_t s = 0; s < n; ++s) {
    detail::check_view(fn, "outs[s]", outs[s]);
    detail::check_view(fn, "lses[s]", lses[s]);
    detail::check_shape(fn, "outs[s]", outs[s], out.extents(), "the shape of out");
    detail::check_shape(fn, "lses[s]", lses[s], lse_shape, "batch, heads and seq of out, then 1");
    detail::check_no_alias(fn, "out", out, "outs[s]", outs[s]);
    detail::check_no_alias(fn, "out", out, "lses[s]", lses[s]);
    if (!lse.empty()) {
      detail::check_no_alias(fn, "lse", lse, "outs[s]", outs[s]);
      detail::check_no_alias(fn, "lse", lse, "lses[s]", lses[s]);
    }
    for (index_t b = 0; b < out.batch(); ++b)
      for (index_t h = 0; h < out.heads(); ++h)
        for (index_t i = 0; i < out.seq(); ++i)
          if (std::isnan(lses[s](b, h, i, 0)) || lses[s](b, h, i, 0) == HUGE_VALF)
            fail(fn, message() << "lses[" << s << "] holds NaN or +inf at (" << b << ", " << h << ", " << i << ")");
  }
  for (index_t b = 0; b < out.batch(); ++b)
    for (index_t h = 0; h < out.heads(); ++h)
      for (index_t i = 0; i < out.seq(); ++i) {
        auto lse_of = [&](std::int64_t s) { return float(lses[s](b, h, i, 0)); };
        auto out_of = [&](std::int64_t s) { return &outs[s](b, h, i, 0); };
        const float l = detail::merge_row(n, lse_of, out_of, nullptr, &out(b, h, i, 0), out.dim());
        if (!lse.empty()) lse(b, h, i, 0) = l;
      }
}

}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
