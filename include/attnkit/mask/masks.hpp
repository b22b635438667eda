// Mask policies: which (query, key) pairs may attend.
//
// A mask is a small value type. Positions are absolute: with Lq queries and Lk keys, query
// row i sits at position i + (Lk - Lq) (bottom-right alignment, as in decode and chunked
// prefill), key j at position j. A mask answers three questions:
//
//   bool allowed(b, h, q, k)                  the definition, for one pair;
//   tile_kind classify(b, h, q0, q1, k0, k1)  for the tile [q0, q1) x [k0, k1): empty (no
//                                             pair allowed), full (every pair allowed) or
//                                             partial; must never say empty or full wrongly;
//   key_range keys(b, h, q0, q1, kv_len)      a range of keys containing every allowed key
//                                             of the queries [q0, q1).
//
// Drivers visit only `keys(...)`, skip empty tiles, run full tiles without any per-element
// test and call `allowed` only inside partial tiles. `h` is the query head.
#pragma once

#include <cstdint>

#include "../config.hpp"

namespace attnkit {

enum class tile_kind : int { empty = 0, partial = 1, full = 2 };

struct key_range {
  std::int64_t begin = 0;
  std::int64_t end = 0;  // exclusive
};

/// Every pair is allowed.
struct no_mask {
  ATTNKIT_ALWAYS_INLINE bool allowed(std::int64_t, std::int64_t, std::int64_t, std::int64_t) const noexcept {
    return true;
  }
  ATTNKIT_ALWAYS_INLINE tile_kind classify(std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                                           std::int64_t, std::int64_t) const noexcept {
    return tile_kind::full;
  }
  ATTNKIT_ALWAYS_INLINE key_range keys(std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                                       std::int64_t kv_len) const noexcept {
    return {0, kv_len};
  }
};

/// Key k is allowed for query q when k <= q (absolute positions).
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
  ATTNKIT_ALWAYS_INLINE key_range keys(std::int64_t, std::int64_t, std::int64_t, std::int64_t q1,
                                       std::int64_t kv_len) const noexcept {
    return {0, q1 <= 0 ? 0 : (q1 < kv_len ? q1 : kv_len)};
  }
};

}  // namespace attnkit
