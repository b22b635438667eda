// Mask policies: which (query, key) pairs may attend.
//
// A mask is a small value type. Positions are absolute: with Lq queries and Lk keys, query
// row i sits at position i + (Lk - Lq) (bottom-right alignment, as in decode and chunked
// prefill), key j at position j. `h` is always the query head. A mask answers:
//
//   bool allowed(b, h, q, k)                  the definition, for one pair;
//   tile_kind classify(b, h, q0, q1, k0, k1)  for the tile [q0, q1) x [k0, k1): empty (no
//                                             pair allowed), full (every pair allowed) or
//                                             partial; it may say partial when unsure, but
//                                             never empty or full wrongly;
//   key_ranges keys(b, h, q0, q1, kv_len)     sorted disjoint key ranges within [0, kv_len)
//                                             that contain every allowed key of the queries
//                                             [q0, q1);
//   index_t tile_hint()                       a preferred key-tile size (a block size whose
//                                             boundaries the tiles should follow), 0 if none;
// and optionally
//   void check(const mask_problem&)           throws attnkit::error if the mask does not fit
//                                             the problem (called before any work; the
//                                             built-in masks are checked in mask/check.hpp).
//
// Drivers visit only `keys(...)`, skip empty tiles, run full tiles without any per-element
// test and call `allowed` only inside partial tiles. Masks compose with `&` and `|`; the
// composed answers follow from the parts. To add a mask: a struct with these members (see
// sliding_window below); nothing else in the library changes. Member functions here are
// trivial and forced inline: masks are vocabulary types shared by translation units built
// with different ISA flags (Note [ISA namespaces] in config.hpp).
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

#include "../config.hpp"

namespace attnkit {

enum class tile_kind : int { empty = 0, partial = 1, full = 2 };

struct key_range {
  std::int64_t begin = 0;
  std::int64_t end = 0;  // exclusive
};

/// Sorted, disjoint key ranges, at most `capacity`; adding beyond that merges the last ones
/// (still a cover of the allowed keys, only coarser).
struct key_ranges {
  static constexpr int capacity = 4;
  int count = 0;
  key_range r[capacity];

  ATTNKIT_ALWAYS_INLINE static key_ranges all(std::int64_t kv_len) noexcept { return one(0, kv_len, kv_len); }
  /// The single range [begin, end) clipped to [0, kv_len) (none if it is empty).
  ATTNKIT_ALWAYS_INLINE static key_ranges one(std::int64_t begin, std::int64_t end, std::int64_t kv_len) noexcept {
    key_ranges k;
    k.add(begin, end, kv_len);
    return k;
  }
  /// Adds [begin, end) clipped to [0, kv_len), keeping the list sorted and disjoint.
  ATTNKIT_ALWAYS_INLINE void add(std::int64_t begin, std::int64_t end, std::int64_t kv_len) noexcept {
    if (begin < 0) begin = 0;
    if (end > kv_len) end = kv_len;
    if (begin >= end) return;
    // insert in order, then merge touching neighbours
    key_range tmp[capacity + 1];
    int n = 0;
    bool placed = false;
    for (int i = 0; i < count; ++i) {
      if (!placed && begin < r[i].begin) {
        tmp[n++] = {begin, end};
        placed = true;
      }
      tmp[n++] = r[i];
    }
    if (!placed) tmp[n++] = {begin, end};
    int m = 0;
    for (int i = 0; i < n; ++i) {
      if (m > 0 && tmp[i].begin <= tmp[m - 1].end) {
        if (tmp[i].end > tmp[m - 1].end) tmp[m - 1].end = tmp[i].end;
      } else {
        tmp[m++] = tmp[i];
      }
    }
    if (m > capacity) {  // merge the two last ranges: a coarser but valid cover
      tmp[capacity - 1].end = tmp[m - 1].end;
      m = capacity;
    }
    count = m;
    for (int i = 0; i < m; ++i) r[i] = tmp[i];
  }
  ATTNKIT_ALWAYS_INLINE void add(const key_ranges& o, std::int64_t kv_len) noexcept {
    for (int i = 0; i < o.count; ++i) add(o.r[i].begin, o.r[i].end, kv_len);
  }
  ATTNKIT_ALWAYS_INLINE static key_ranges intersect(const key_ranges& a, const key_ranges& b,
                                                    std::int64_t kv_len) noexcept {
    key_ranges k;
    for (int i = 0; i < a.count; ++i)
      for (int j = 0; j < b.count; ++j) {
        const std::int64_t lo = a.r[i].begin > b.r[j].begin ? a.r[i].begin : b.r[j].begin;
        const std::int64_t hi = a.r[i].end < b.r[j].end ? a.r[i].end : b.r[j].end;
        k.add(lo, hi, kv_len);
      }
    return k;
  }
  ATTNKIT_ALWAYS_INLINE std::int64_t size() const noexcept {
    std::int64_t s = 0;
    for (int i = 0; i < count; ++i) s += r[i].end - r[i].begin;
    return s;
  }
};

namespace internal {
// Window sizes are clamped to 2^62 before any arithmetic with positions, so a window "as
// wide as anything" (e.g. INT64_MAX) cannot overflow; positions stay far below 2^62.
ATTNKIT_ALWAYS_INLINE std::int64_t clamp_span(std::int64_t w) noexcept {
  constexpr std::int64_t cap = std::int64_t(1) << 62;
  return w < cap ? w : cap;
}
}  // namespace internal

/// What a mask may check against: the problem's sizes.
struct mask_problem {
  std::int64_t batch = 0, q_heads = 0, kv_heads = 0, q_len = 0, kv_len = 0;
};

/// Every pair is allowed.
struct no_mask {
  ATTNKIT_ALWAYS_INLINE bool allowed(std::int64_t, std::int64_t, std::int64_t, std::int64_t) const noexcept {
    return true;
  }
  ATTNKIT_ALWAYS_INLINE tile_kind classify(std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                                           std::int64_t) const noexcept {
    return tile_kind::full;
  }
  ATTNKIT_ALWAYS_INLINE key_ranges keys(std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                                        std::int64_t kv_len) const noexcept {
    return key_ranges::all(kv_len);
  }
  ATTNKIT_ALWAYS_INLINE std::int64_t tile_hint() const noexcept { return 0; }
};

/// Key k is allowed for query q when k <= q.
struct causal {
  ATTNKIT_ALWAYS_INLINE bool allowed(std::int64_t, std::int64_t, std::int64_t q, std::int64_t k) const noexcept {
    return k <= q;
  }
  ATTNKIT_ALWAYS_INLINE tile_kind classify(std::int64_t, std::int64_t, std::int64_t q0, std::int64_t q1,
                                           std::int64_t k0, std::int64_t k1) const noexcept {
    if (q1 <= q0 || k1 <= k0 || k0 > q1 - 1) return tile_kind::empty;
    if (k1 - 1 <= q0) return tile_kind::full;
    return tile_kind::partial;
  }
  ATTNKIT_ALWAYS_INLINE key_ranges keys(std::int64_t, std::int64_t, std::int64_t, std::int64_t q1,
                                        std::int64_t kv_len) const noexcept {
    return key_ranges::one(0, q1, kv_len);
  }
  ATTNKIT_ALWAYS_INLINE std::int64_t tile_hint() const noexcept { return 0; }
};

/// Mistral-style sliding window: key k is allowed for query q when 0 <= q - k < width
/// (the query itself and the width - 1 keys before it).
struct sliding_window {
  std::int64_t width = 1;

  ATTNKIT_ALWAYS_INLINE bool allowed(std::int64_t, std::int64_t, std::int64_t q, std::int64_t k) const noexcept {
    return k <= q && q - k < internal::clamp_span(width);
  }
  ATTNKIT_ALWAYS_INLINE tile_kind classify(std::int64_t, std::int64_t, std::int64_t q0, std::int64_t q1,
                                           std::int64_t k0, std::int64_t k1) const noexcept {
    const std::int64_t w = internal::clamp_span(width);
    if (q1 <= q0 || k1 <= k0 || k0 > q1 - 1 || k1 - 1 < q0 - w + 1) return tile_kind::empty;
    if (k1 - 1 <= q0 && q1 - 1 - k0 < w) return tile_kind::full;
    return tile_kind::partial;
  }
  ATTNKIT_ALWAYS_INLINE key_ranges keys(std::int64_t, std::int64_t, std::int64_t q0, std::int64_t q1,
                                        std::int64_t kv_len) const noexcept {
    return key_ranges::one(q0 - internal::clamp_span(width) + 1, q1, kv_len);
  }
  ATTNKIT_ALWAYS_INLINE std::int64_t tile_hint() const noexcept { return 0; }
};

/// Local (bidirectional) window: key k is allowed for query q when q - left <= k <= q + right.
struct local_window {
  std::int64_t left = 0;
  std::int64_t right = 0;

  ATTNKIT_ALWAYS_INLINE bool allowed(std::int64_t, std::int64_t, std::int64_t q, std::int64_t k) const noexcept {
    return k >= q - internal::clamp_span(left) && k <= q + internal::clamp_span(right);
  }
  ATTNKIT_ALWAYS_INLINE tile_kind classify(std::int64_t, std::int64_t, std::int64_t q0, std::int64_t q1,
                                           std::int64_t k0, std::int64_t k1) const noexcept {
    const std::int64_t l = internal::clamp_span(left), r = internal::clamp_span(right);
    if (q1 <= q0 || k1 <= k0 || k0 > q1 - 1 + r || k1 - 1 < q0 - l) return tile_kind::empty;
    if (k0 >= q1 - 1 - l && k1 - 1 <= q0 + r) return tile_kind::full;
    return tile_kind::partial;
  }
  ATTNKIT_ALWAYS_INLINE key_ranges keys(std::int64_t, std::int64_t, std::int64_t q0, std::int64_t q1,
                                        std::int64_t kv_len) const noexcept {
    return key_ranges::one(q0 - internal::clamp_span(left), q1 + internal::clamp_span(right), kv_len);
  }
  ATTNKIT_ALWAYS_INLINE std::int64_t tile_hint() const noexcept { return 0; }
};

/// Attention sinks (StreamingLLM): the first `count` keys are allowed for every query.
/// Usually combined: (sliding_window{w} | sink_tokens{4}) & causal{}.
struct sink_tokens {
  std::int64_t count = 4;

  ATTNKIT_ALWAYS_INLINE bool allowed(std::int64_t, std::int64_t, std::int64_t, std::int64_t k) const noexcept {
    return k < count;
  }
  ATTNKIT_ALWAYS_INLINE tile_kind classify(std::int64_t, std::int64_t, std::int64_t q0, std::int64_t q1,
                                           std::int64_t k0, std::int64_t k1) const noexcept {
    if (q1 <= q0 || k1 <= k0 || k0 >= count) return tile_kind::empty;
    return k1 <= count ? tile_kind::full : tile_kind::partial;
  }
  ATTNKIT_ALWAYS_INLINE key_ranges keys(std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                                        std::int64_t kv_len) const noexcept {
    return key_ranges::one(0, count, kv_len);
  }
  ATTNKIT_ALWAYS_INLINE std::int64_t tile_hint() const noexcept { return 0; }
};

/// Block-sparse layout (Longformer / BigBird / FlexAttention BlockMask style): a bitmap over
/// query blocks x key blocks, per query head or shared by all heads.
///
/// bits[(h * q_blocks + qb) * k_blocks + kb] != 0 allows every pair whose query position is
/// in [qb * block_q, (qb + 1) * block_q) and key in [kb * block_k, (kb + 1) * block_k). With
/// heads == 1 one layout serves every query head. Positions are absolute, so q_blocks must
/// be ceil(Lk / block_q) and k_blocks ceil(Lk / block_k). Non-owning: `bits` must outlive
/// the calls that use the mask.
struct block_mask {
  const std::uint8_t* bits = nullptr;
  std::int64_t heads = 1, q_blocks = 0, k_blocks = 0, block_q = 1, block_k = 1;

  block_mask() = default;
  block_mask(const std::uint8_t* bitmap, std::int64_t heads_, std::int64_t q_blocks_, std::int64_t k_blocks_,
             std::int64_t block_q_, std::int64_t block_k_) noexcept
      : bits(bitmap), heads(heads_), q_blocks(q_blocks_), k_blocks(k_blocks_), block_q(block_q_), block_k(block_k_) {}

  ATTNKIT_ALWAYS_INLINE bool bit(std::int64_t h, std::int64_t qb, std::int64_t kb) const noexcept {
    return bits[((heads == 1 ? 0 : h) * q_blocks + qb) * k_blocks + kb] != 0;
  }
  ATTNKIT_ALWAYS_INLINE bool allowed(std::int64_t, std::int64_t h, std::int64_t q, std::int64_t k) const noexcept {
    if (q < 0 || k < 0) return false;
    return bit(h, q / block_q, k / block_k);
  }
  ATTNKIT_ALWAYS_INLINE tile_kind classify(std::int64_t, std::int64_t h, std::int64_t q0, std::int64_t q1,
                                           std::int64_t k0, std::int64_t k1) const noexcept {
    // Queries at negative positions (Lq > Lk) allow nothing: such a tile is never full.
    const bool clipped = q0 < 0;
    if (clipped) q0 = 0;
    if (q1 <= q0 || k1 <= k0) return tile_kind::empty;
    const std::int64_t qb0 = q0 / block_q, qb1 = (q1 - 1) / block_q;
    const std::int64_t kb0 = k0 / block_k, kb1 = (k1 - 1) / block_k;
    bool any = false, all = true;
    for (std::int64_t qb = qb0; qb <= qb1; ++qb)
      for (std::int64_t kb = kb0; kb <= kb1; ++kb) {
        const bool b = bit(h, qb, kb);
        any = any || b;
        all = all && b;
      }
    return !any ? tile_kind::empty : (all && !clipped) ? tile_kind::full : tile_kind::partial;
  }
  ATTNKIT_ALWAYS_INLINE key_ranges keys(std::int64_t, std::int64_t h, std::int64_t q0, std::int64_t q1,
                                        std::int64_t kv_len) const noexcept {
    key_ranges r;
    if (q0 < 0) q0 = 0;
    if (q1 <= q0) return r;
    const std::int64_t qb0 = q0 / block_q, qb1 = (q1 - 1) / block_q;
    for (std::int64_t kb = 0; kb < k_blocks; ++kb) {
      bool any = false;
      for (std::int64_t qb = qb0; qb <= qb1 && !any; ++qb) any = bit(h, qb, kb);
      if (any) r.add(kb * block_k, (kb + 1) * block_k, kv_len);
    }
    return r;
  }
  ATTNKIT_ALWAYS_INLINE std::int64_t tile_hint() const noexcept { return block_k; }
};

/// Any `bool(b, h, q, k)` callable as a mask. Every tile is partial (the callable is asked
/// for every pair of the keys it may see) unless a tile answer
/// `tile_kind(b, h, q0, q1, k0, k1)` is given too.
template <class F>
struct fn_mask {
  F f;
  ATTNKIT_ALWAYS_INLINE bool allowed(std::int64_t b, std::int64_t h, std::int64_t q, std::int64_t k) const {
    return f(b, h, q, k);
  }
  ATTNKIT_ALWAYS_INLINE tile_kind classify(std::int64_t, std::int64_t, std::int64_t q0, std::int64_t q1,
                                           std::int64_t k0, std::int64_t k1) const noexcept {
    return (q1 <= q0 || k1 <= k0) ? tile_kind::empty : tile_kind::partial;
  }
  ATTNKIT_ALWAYS_INLINE key_ranges keys(std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                                        std::int64_t kv_len) const noexcept {
    return key_ranges::all(kv_len);
  }
  ATTNKIT_ALWAYS_INLINE std::int64_t tile_hint() const noexcept { return 0; }
};

template <class F, class Tile>
struct fn_mask_with_tiles {
  F f;
  Tile tile;
  ATTNKIT_ALWAYS_INLINE bool allowed(std::int64_t b, std::int64_t h, std::int64_t q, std::int64_t k) const {
    return f(b, h, q, k);
  }
  ATTNKIT_ALWAYS_INLINE tile_kind classify(std::int64_t b, std::int64_t h, std::int64_t q0, std::int64_t q1,
                                           std::int64_t k0, std::int64_t k1) const {
    if (q1 <= q0 || k1 <= k0) return tile_kind::empty;
    return tile(b, h, q0, q1, k0, k1);
  }
  ATTNKIT_ALWAYS_INLINE key_ranges keys(std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                                        std::int64_t kv_len) const noexcept {
    return key_ranges::all(kv_len);
  }
  ATTNKIT_ALWAYS_INLINE std::int64_t tile_hint() const noexcept { return 0; }
};

template <class F>
fn_mask<F> mask_fn(F f) {
  return fn_mask<F>{std::move(f)};
}
template <class F, class Tile>
fn_mask_with_tiles<F, Tile> mask_fn(F f, Tile tile) {
  return fn_mask_with_tiles<F, Tile>{std::move(f), std::move(tile)};
}

// ---------------------------------------------------------------------------------------
// Composition.

template <class T, class = void>
struct is_mask : std::false_type {};
template <class T>
struct is_mask<T, std::void_t<decltype(std::declval<const T&>().classify(0, 0, 0, 0, 0, 0)),
                              decltype(std::declval<const T&>().keys(0, 0, 0, 0, 0))>> : std::true_type {};

/// Both masks allow the pair.
template <class A, class B>
struct mask_and {
  A a;
  B b;
  ATTNKIT_ALWAYS_INLINE bool allowed(std::int64_t bi, std::int64_t h, std::int64_t q, std::int64_t k) const {
    return a.allowed(bi, h, q, k) && b.allowed(bi, h, q, k);
  }
  ATTNKIT_ALWAYS_INLINE tile_kind classify(std::int64_t bi, std::int64_t h, std::int64_t q0, std::int64_t q1,
                                           std::int64_t k0, std::int64_t k1) const {
    const tile_kind x = a.classify(bi, h, q0, q1, k0, k1);
    if (x == tile_kind::empty) return x;
    const tile_kind y = b.classify(bi, h, q0, q1, k0, k1);
    if (y == tile_kind::empty) return y;
    return (x == tile_kind::full && y == tile_kind::full) ? tile_kind::full : tile_kind::partial;
  }
  ATTNKIT_ALWAYS_INLINE key_ranges keys(std::int64_t bi, std::int64_t h, std::int64_t q0, std::int64_t q1,
                                        std::int64_t kv_len) const {
    return key_ranges::intersect(a.keys(bi, h, q0, q1, kv_len), b.keys(bi, h, q0, q1, kv_len), kv_len);
  }
  ATTNKIT_ALWAYS_INLINE std::int64_t tile_hint() const {
    return a.tile_hint() ? a.tile_hint() : b.tile_hint();
  }
};

/// Either mask allows the pair.
template <class A, class B>
struct mask_or {
  A a;
  B b;
  ATTNKIT_ALWAYS_INLINE bool allowed(std::int64_t bi, std::int64_t h, std::int64_t q, std::int64_t k) const {
    return a.allowed(bi, h, q, k) || b.allowed(bi, h, q, k);
  }
  ATTNKIT_ALWAYS_INLINE tile_kind classify(std::int64_t bi, std::int64_t h, std::int64_t q0, std::int64_t q1,
                                           std::int64_t k0, std::int64_t k1) const {
    const tile_kind x = a.classify(bi, h, q0, q1, k0, k1);
    if (x == tile_kind::full) return x;
    const tile_kind y = b.classify(bi, h, q0, q1, k0, k1);
    if (y == tile_kind::full) return y;
    return (x == tile_kind::empty && y == tile_kind::empty) ? tile_kind::empty : tile_kind::partial;
  }
  ATTNKIT_ALWAYS_INLINE key_ranges keys(std::int64_t bi, std::int64_t h, std::int64_t q0, std::int64_t q1,
                                        std::int64_t kv_len) const {
    key_ranges r = a.keys(bi, h, q0, q1, kv_len);
    r.add(b.keys(bi, h, q0, q1, kv_len), kv_len);
    return r;
  }
  ATTNKIT_ALWAYS_INLINE std::int64_t tile_hint() const {
    return a.tile_hint() ? a.tile_hint() : b.tile_hint();
  }
};

template <class T, class = void>
struct has_score : std::false_type {};
template <class T>
struct has_score<T, std::void_t<decltype(std::declval<const T&>().score(0.f, 0, 0, 0, 0))>> : std::true_type {};

template <class A, class B, class = std::enable_if_t<is_mask<A>::value && is_mask<B>::value>>
mask_and<A, B> operator&(const A& a, const B& b) {
  static_assert(!has_score<A>::value && !has_score<B>::value,
                "attnkit: compose masks first, then attach a score modifier with with_score()");
  return {a, b};
}
template <class A, class B, class = std::enable_if_t<is_mask<A>::value && is_mask<B>::value>>
mask_or<A, B> operator|(const A& a, const B& b) {
  static_assert(!has_score<A>::value && !has_score<B>::value,
                "attnkit: compose masks first, then attach a score modifier with with_score()");
  return {a, b};
}

}  // namespace attnkit
