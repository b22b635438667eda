// attnkit::kv_cache<T>: an owning K/V cache for one attention layer, for decode loops.
//
// It stores keys and values as T (float, attnkit::bf16 or attnkit::fp16), converted from the
// float K/V the model projects, and runs attention() (contiguous layout) or
// attention_paged() (paged layout) over what it holds. Every sequence of the batch advances
// together: append() takes the same number of new tokens for each.
//
// Slots and positions. The kernels see the cache as `size()` key rows, "slots" 0..size()-1,
// and place query row i of Lq at slot position i + size() - Lq (bottom-right). Without
// eviction slot s holds the token at position s, so every positional mask (causal,
// sliding_window, sink_tokens) means what it says. With StreamingLLM eviction (`window` >
// 0) slots 0..sink-1 hold the first `sink` tokens and the remaining `window` slots form a
// ring over the latest tokens: the token at position p >= sink lives in slot
// sink + (p - sink) % window, so the ring is NOT in position order. position_of(b, slot)
// gives each slot's absolute position (for RoPE and for masks).
//
//   - Single-token decode (and any query that may see every held key) with no_mask is
//     exact after eviction: softmax over a set of keys does not depend on their order.
//   - Multi-token queries after eviction need a mask over absolute positions; slot-based
//     masks such as causal{} would compare ring slots. Build it on position_of: query row
//     q (kernel position) is absolute position q + position() - size(), so
//
//       const index_t shift = cache.position() - cache.size();
//       cache.attend(q, out, attnkit::mask_fn([&cache, shift](index_t b, index_t, index_t qp, index_t k) {
//         return cache.position_of(b, k) <= qp + shift;   // causal over positions
//       }));
//
//     A chunk of n tokens appended at once keeps only the survivors, so its earlier rows
//     see the window as it is after the whole chunk (StreamingLLM's semantics, not those of
//     a sliding window over the full sequence).
#pragma once

#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "attention.hpp"
#include "core/dtypes.hpp"
#include "core/message.hpp"
#include "core/tensor_view.hpp"
#include "paged.hpp"

namespace attnkit {

enum class kv_layout : std::uint8_t { contiguous, paged };

struct kv_cache_config {
  std::int64_t batch = 1;
  std::int64_t kv_heads = 1;
  std::int64_t head_dim = 0;
  /// Dim of the values; 0 means head_dim.
  std::int64_t v_dim = 0;
  /// Tokens per sequence the cache can hold. With eviction it must be 0 or sink + window
  /// (it is set to sink + window).
  std::int64_t capacity = 0;
  kv_layout layout = kv_layout::contiguous;
  /// Tokens per page of the paged layout.
  std::int64_t page_size = 16;
  /// StreamingLLM eviction: keep the first `sink` tokens and a ring of the last `window`
  /// tokens. window == 0 means no eviction (append beyond capacity is an error).
  std::int64_t sink = 0;
  std::int64_t window = 0;
};

inline namespace ATTNKIT_ISA_NS {

/// Storage:
///   contiguous  keys [batch, kv_heads, capacity, head_dim] (v_dim for values), row-major;
///               keys()/values() view the first size() slots of every head.
///   paged       pools of pages [num_pages, kv_heads, page_size, dim] (a head's rows of a
///               page are adjacent, so a page is read in page_size-row runs); a sequence
///               gets a page the first time it writes a slot of it, so page ids interleave
///               across the batch. The pools' memory is reserved at construction for
///               batch * ceil(capacity / page_size) pages and initialised page by page.
template <class T>
class kv_cache {
  static_assert(std::is_same<T, float>::value || std::is_same<T, bf16>::value || std::is_same<T, fp16>::value,
                "attnkit::kv_cache<T>: T must be float, attnkit::bf16 or attnkit::fp16");

 public:
  using value_type = T;

  explicit kv_cache(const kv_cache_config& config) : c_(config) {
    const char* fn = "kv_cache";
    using detail::fail;
    using detail::message;
    if (c_.batch < 1 || c_.kv_heads < 1 || c_.head_dim < 1 || c_.v_dim < 0)
      fail(fn,
           message()
               << "config needs batch, kv_heads and head_dim >= 1 and v_dim >= 0 (0 = head_dim), got batch "
               << c_.batch << ", kv_heads " << c_.kv_heads << ", head_dim " << c_.head_dim << ", v_dim "
               << c_.v_dim);
    if (c_.v_dim == 0) c_.v_dim = c_.head_dim;
    if (c_.sink < 0 || c_.window < 0)
      fail(fn, message() << "config.sink and config.window must be >= 0, got " << c_.sink << " and "
                         << c_.window);
    if (c_.window > 0) {
      if (c_.capacity != 0 && c_.capacity != c_.sink + c_.window)
        fail(fn, message() << "with eviction config.capacity must be 0 or sink + window = "
                           << c_.sink + c_.window << ", got " << c_.capacity);
      c_.capacity = c_.sink + c_.window;
    } else if (c_.sink > 0) {
      fail(fn, message() << "config.sink = " << c_.sink
                         << " needs a window > 0 (eviction keeps sink + window tokens)");
    }
    if (c_.capacity < 1) fail(fn, message() << "config.capacity must be >= 1, got " << c_.capacity);
    if (c_.layout == kv_layout::paged) {
      if (c_.page_size < 1) fail(fn, message() << "config.page_size must be >= 1, got " << c_.page_size);
      // Page ids and sequence lengths cross into attention_paged as int32.
      pages_per_seq_ = (c_.capacity + c_.page_size - 1) / c_.page_size;
      constexpr index_t int32_max = std::numeric_limits<std::int32_t>::max();
      if (c_.capacity > int32_max || pages_per_seq_ > int32_max / c_.batch)
        fail(fn, message() << "paged layout: capacity " << c_.capacity << " x batch " << c_.batch
                           << " exceeds int32 page ids and lengths");
      table_.assign(std::size_t(c_.batch * pages_per_seq_), -1);
      // Reserved once, so data() never moves and pages are touched only when handed out.
      k_.reserve(std::size_t(c_.batch * pages_per_seq_ * k_page_elems()));
      v_.reserve(std::size_t(c_.batch * pages_per_seq_ * v_page_elems()));
    } else {
      k_.resize(std::size_t(c_.batch * c_.kv_heads * c_.capacity * c_.head_dim));
      v_.resize(std::size_t(c_.batch * c_.kv_heads * c_.capacity * c_.v_dim));
    }
    seq_lens_.assign(std::size_t(c_.batch), 0);
  }

  const kv_cache_config& config() const noexcept { return c_; }
  index_t batch() const noexcept { return c_.batch; }
  index_t kv_heads() const noexcept { return c_.kv_heads; }
  index_t head_dim() const noexcept { return c_.head_dim; }
  index_t v_dim() const noexcept { return c_.v_dim; }
  index_t capacity() const noexcept { return c_.capacity; }
  bool evicting() const noexcept { return c_.window > 0; }

  /// Tokens appended so far (per sequence): the position the next token will have.
  index_t position() const noexcept { return position_; }
  /// Tokens held (per sequence): min(position(), capacity()) with eviction.
  index_t size() const noexcept { return size_; }

  /// Absolute position of the token in slot `slot` of sequence b. Precondition (not
  /// checked: masks call it per pair): 0 <= b < batch(), 0 <= slot < size().
  index_t position_of(index_t b, index_t slot) const noexcept {
    (void)b;  // sequences advance together; b keeps the signature of a ragged cache
    if (slot < c_.sink || position_ <= c_.capacity) return slot;
    const index_t r = slot - c_.sink, last = position_ - 1 - c_.sink;  // ring index; last's offset
    const index_t r_last = last % c_.window;
    return c_.sink + last - (r_last - r + c_.window) % c_.window;
  }

  /// Writes the absolute positions of slots 0..size()-1 of sequence b to out[0..size()).
  void slot_positions(index_t b, index_t* out) const {
    if (b < 0 || b >= c_.batch)
      detail::fail("kv_cache::slot_positions", detail::message()
                                                   << "argument 'b' = " << b << " is not a sequence (batch "
                                                   << c_.batch << ")");
    if (size_ > 0 && out == nullptr)
      detail::fail("kv_cache::slot_positions", detail::message()
                                                   << "argument 'out' is null, size() = " << size_);
    for (index_t s = 0; s < size_; ++s) out[s] = position_of(b, s);
  }

  /// Appends n tokens to every sequence: k_new [batch, kv_heads, n, head_dim] and v_new
  /// [batch, kv_heads, n, v_dim], float, any non-negative strides; converted to T (round to
  /// nearest even). With eviction only the tokens that survive are written (n may exceed
  /// the window). Throws attnkit::error, leaving the cache unchanged, on a shape mismatch or
  /// (without eviction) when the tokens do not fit the capacity.
  void append(const tensor_view<const float>& k_new, const tensor_view<const float>& v_new) {
    check_new("k_new", k_new, c_.head_dim);
    check_new("v_new", v_new, c_.v_dim);
    const index_t n = k_new.seq();
    if (v_new.seq() != n)
      detail::fail("kv_cache::append", detail::message()
                                           << "'k_new' " << k_new.extents() << " and 'v_new' "
                                           << v_new.extents() << " must hold the same number of tokens");
    if (!evicting() && n > c_.capacity - position_)
      detail::fail("kv_cache::append", detail::message() << "appending " << n << " tokens to " << position_
                                                         << " overflows the capacity " << c_.capacity
                                                         << " (no eviction configured)");
    const index_t end = position_ + n;
    // Survivors among the new positions [position_, end): all without eviction; with it the
    // sinks and the last `window` positions overall.
    const index_t keep_from =
        evicting() ? (end - c_.window > c_.sink ? end - c_.window : c_.sink) : position_;
    for (index_t p = position_; p < end; ++p) {
      if (p >= c_.sink && p < keep_from) continue;
      const index_t slot = slot_of(p);
      for (index_t b = 0; b < c_.batch; ++b) {
        if (c_.layout == kv_layout::paged) ensure_page(b, slot);
        for (index_t h = 0; h < c_.kv_heads; ++h) {
          copy_row(k_row(b, h, slot), k_new, b, h, p - position_);
          copy_row(v_row(b, h, slot), v_new, b, h, p - position_);
        }
      }
    }
    position_ = end;
    size_ = end < c_.capacity ? end : c_.capacity;
    for (auto& len : seq_lens_) len = std::int32_t(size_);
  }

  /// Attention of q [batch, q_heads, Lq, head_dim] (q_heads a multiple of kv_heads) over the
  /// held keys; out [batch, q_heads, Lq, v_dim], lse optional. The query rows are the newest
  /// tokens (bottom-right). Arguments as in attention(); see the file comment for masks
  /// after eviction.
  template <class Mask = no_mask>
  void attend(const tensor_view<const float>& q, const tensor_view<float>& out, const Mask& mask = {},
              const attention_options& options = {}, const tensor_view<float>& lse = {}) const {
    if (c_.layout == kv_layout::paged)
      attention_paged(q, k_pages(), v_pages(), page_table(), seq_lens(), out, mask, options, lse);
    else attention(q, keys(), values(), out, mask, options, lse);
  }

  /// Contiguous layout: [batch, kv_heads, size(), head_dim] and [..., v_dim] (empty views in
  /// the paged layout).
  tensor_view<const T> keys() const noexcept {
    if (c_.layout != kv_layout::contiguous) return {};
    return tensor_view<const T>(
        k_.data(), {{c_.batch, c_.kv_heads, size_, c_.head_dim}},
        {{c_.kv_heads * c_.capacity * c_.head_dim, c_.capacity * c_.head_dim, c_.head_dim, 1}});
  }
  tensor_view<const T> values() const noexcept {
    if (c_.layout != kv_layout::contiguous) return {};
    return tensor_view<const T>(
        v_.data(), {{c_.batch, c_.kv_heads, size_, c_.v_dim}},
        {{c_.kv_heads * c_.capacity * c_.v_dim, c_.capacity * c_.v_dim, c_.v_dim, 1}});
  }

  /// Paged layout: the pools over the pages handed out so far, [pages_in_use(), kv_heads,
  /// page_size, dim]; the page table [batch, ceil(capacity / page_size)] (ids of pages not
  /// yet handed out are -1; attention_paged reads only the first ceil(size / page_size)); one
  /// length per sequence. Empty in the contiguous layout.
  tensor_view<const T> k_pages() const noexcept { return pool(k_, c_.head_dim); }
  tensor_view<const T> v_pages() const noexcept { return pool(v_, c_.v_dim); }
  page_table_view page_table() const noexcept {
    if (c_.layout != kv_layout::paged) return {};
    return page_table_view{table_.data(), c_.batch, pages_per_seq_, pages_per_seq_};
  }
  int32_span seq_lens() const noexcept {
    if (c_.layout != kv_layout::paged) return {};
    return int32_span{seq_lens_.data(), c_.batch};
  }
  index_t pages_in_use() const noexcept { return pages_used_; }

  /// Forgets every token; keeps the memory (paged: every page goes back to the pool).
  void clear() noexcept {
    position_ = size_ = 0;
    for (auto& len : seq_lens_) len = 0;
    for (auto& id : table_) id = -1;
    pages_used_ = 0;
    if (c_.layout == kv_layout::paged) {  // clear() keeps the reservation, so data() stays put
      k_.clear();
      v_.clear();
    }
  }

 private:
  index_t k_page_elems() const noexcept { return c_.kv_heads * c_.page_size * c_.head_dim; }
  index_t v_page_elems() const noexcept { return c_.kv_heads * c_.page_size * c_.v_dim; }

  index_t slot_of(index_t p) const noexcept {
    return (!evicting() || p < c_.sink) ? p : c_.sink + (p - c_.sink) % c_.window;
  }

  void check_new(const char* name, const tensor_view<const float>& t, index_t dim) const {
    for (int r = 0; r < 4; ++r)
      if (t.extent(r) < 0 || t.stride(r) < 0)
        detail::fail("kv_cache::append", detail::message() << "argument '" << name
                                                           << "' has a negative extent or stride: shape "
                                                           << t.extents() << ", strides " << t.strides());
    if (t.batch() != c_.batch || t.heads() != c_.kv_heads || t.dim() != dim)
      detail::fail("kv_cache::append", detail::message()
                                           << "argument '" << name << "' has shape " << t.extents()
                                           << ", expected [" << c_.batch << ", " << c_.kv_heads << ", n, "
                                           << dim << "] (batch, kv_heads, new tokens, dim)");
    if (t.size() > 0 && t.data_handle() == nullptr)
      detail::fail("kv_cache::append",
                   detail::message() << "argument '" << name << "' has null data but shape " << t.extents());
  }

  void ensure_page(index_t b, index_t slot) {
    std::int32_t& id = table_[std::size_t(b * pages_per_seq_ + slot / c_.page_size)];
    if (id >= 0) return;
    id = std::int32_t(pages_used_++);
    // Within the reservation: no reallocation, so views handed out earlier stay valid.
    k_.resize(std::size_t(pages_used_ * k_page_elems()));
    v_.resize(std::size_t(pages_used_ * v_page_elems()));
  }

  T* k_row(index_t b, index_t h, index_t slot) noexcept { return row(k_, c_.head_dim, b, h, slot); }
  T* v_row(index_t b, index_t h, index_t slot) noexcept { return row(v_, c_.v_dim, b, h, slot); }
  T* row(std::vector<T>& buf, index_t dim, index_t b, index_t h, index_t slot) noexcept {
    if (c_.layout == kv_layout::paged) {
      const index_t page = table_[std::size_t(b * pages_per_seq_ + slot / c_.page_size)];
      return buf.data() + ((page * c_.kv_heads + h) * c_.page_size + slot % c_.page_size) * dim;
    }
    return buf.data() + ((b * c_.kv_heads + h) * c_.capacity + slot) * dim;
  }

  static void copy_row(T* dst, const tensor_view<const float>& src, index_t b, index_t h,
                       index_t t) noexcept {
    const float* s = src.row(b, h, t);
    const index_t step = src.stride(3), dim = src.dim();
    for (index_t d = 0; d < dim; ++d) dst[d] = T(s[d * step]);
  }

  tensor_view<const T> pool(const std::vector<T>& buf, index_t dim) const noexcept {
    if (c_.layout != kv_layout::paged) return {};
    return tensor_view<const T>(buf.data(), {{pages_used_, c_.kv_heads, c_.page_size, dim}},
                                {{c_.kv_heads * c_.page_size * dim, c_.page_size * dim, dim, 1}});
  }

  kv_cache_config c_;
  index_t position_ = 0, size_ = 0;
  index_t pages_per_seq_ = 0, pages_used_ = 0;
  std::vector<T> k_, v_;
  std::vector<std::int32_t> table_, seq_lens_;
};

}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
