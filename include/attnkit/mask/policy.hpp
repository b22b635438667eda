// How drivers talk to masks and score modifiers: tiles, the static adapter, and the
// type-erased mask_ref that crosses the runtime-dispatch boundary.
//
// A driver tile holds scores St[key][lane] (row stride `ld`) for nk keys starting at k0 and
// the lanes of a work unit: lane = hi * nq + r is query head h0 + hi at absolute position
// p0 + r. apply_mask_tile / apply_score_tile are the only loops over single (query, key)
// pairs; the static path inlines them, the runtime path calls them once per tile through
// mask_ref, compiled in the caller's translation unit with the caller's own flags — so any
// mask, including a user lambda, works with runtime dispatch without being listed anywhere.
#pragma once

#include <cstdint>
#include <limits>
#include <type_traits>

#include "../config.hpp"
#include "masks.hpp"
#include "score.hpp"

namespace attnkit {

struct tile_desc {
  std::int64_t b = 0, h0 = 0, nh = 0, nq = 0, p0 = 0, k0 = 0, nk = 0;
};

/// Type-erased view of a mask (and its score modifier): plain function pointers, no
/// templates, no SIMD types. The referenced mask must outlive the call.
struct mask_ref {
  const void* obj = nullptr;
  tile_kind (*classify_fn)(const void*, std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                           std::int64_t) = nullptr;
  key_ranges (*keys_fn)(const void*, std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                        std::int64_t) = nullptr;
  void (*mask_tile_fn)(const void*, const tile_desc&, float*, std::int64_t) = nullptr;
  void (*score_tile_fn)(const void*, const tile_desc&, float*, std::int64_t) = nullptr;  // null: none
  std::int64_t hint = 0;

  ATTNKIT_ALWAYS_INLINE tile_kind classify(std::int64_t b, std::int64_t h, std::int64_t q0, std::int64_t q1,
                                           std::int64_t k0, std::int64_t k1) const {
    return classify_fn(obj, b, h, q0, q1, k0, k1);
  }
  ATTNKIT_ALWAYS_INLINE key_ranges keys(std::int64_t b, std::int64_t h, std::int64_t q0, std::int64_t q1,
                                        std::int64_t kv_len) const {
    return keys_fn(obj, b, h, q0, q1, kv_len);
  }
  ATTNKIT_ALWAYS_INLINE std::int64_t tile_hint() const noexcept { return hint; }
  ATTNKIT_ALWAYS_INLINE void mask_tile(const tile_desc& t, float* st, std::int64_t ld) const {
    mask_tile_fn(obj, t, st, ld);
  }
  ATTNKIT_ALWAYS_INLINE bool has_score() const noexcept { return score_tile_fn != nullptr; }
  ATTNKIT_ALWAYS_INLINE void score_tile(const tile_desc& t, float* st, std::int64_t ld) const {
    score_tile_fn(obj, t, st, ld);
  }
};

inline namespace ATTNKIT_ISA_NS {
namespace detail {

/// Partial tile: -inf where the mask disallows the pair.
template <class Mask>
void apply_mask_tile(const Mask& m, const tile_desc& t, float* st, std::int64_t ld) {
  constexpr float minus_inf = -std::numeric_limits<float>::infinity();
  for (std::int64_t kk = 0; kk < t.nk; ++kk) {
    float* row = st + kk * ld;
    for (std::int64_t hi = 0; hi < t.nh; ++hi)
      for (std::int64_t r = 0; r < t.nq; ++r)
        if (!m.allowed(t.b, t.h0 + hi, t.p0 + r, t.k0 + kk)) row[hi * t.nq + r] = minus_inf;
  }
}

template <class Mask>
void apply_score_tile(const Mask& m, const tile_desc& t, float* st, std::int64_t ld) {
  for (std::int64_t kk = 0; kk < t.nk; ++kk) {
    float* row = st + kk * ld;
    for (std::int64_t hi = 0; hi < t.nh; ++hi)
      for (std::int64_t r = 0; r < t.nq; ++r) {
        float& s = row[hi * t.nq + r];
        s = m.score(s, t.b, t.h0 + hi, t.p0 + r, t.k0 + kk);
      }
  }
}

/// The static-dispatch policy: the mask's own members, fully inlined.
template <class Mask>
struct static_policy {
  const Mask& m;
  ATTNKIT_ALWAYS_INLINE tile_kind classify(std::int64_t b, std::int64_t h, std::int64_t q0, std::int64_t q1,
                                           std::int64_t k0, std::int64_t k1) const {
    return m.classify(b, h, q0, q1, k0, k1);
  }
  ATTNKIT_ALWAYS_INLINE key_ranges keys(std::int64_t b, std::int64_t h, std::int64_t q0, std::int64_t q1,
                                        std::int64_t kv_len) const {
    return m.keys(b, h, q0, q1, kv_len);
  }
  ATTNKIT_ALWAYS_INLINE std::int64_t tile_hint() const { return m.tile_hint(); }
  ATTNKIT_ALWAYS_INLINE void mask_tile(const tile_desc& t, float* st, std::int64_t ld) const {
    apply_mask_tile(m, t, st, ld);
  }
  static constexpr bool has_score() noexcept { return has_score_v; }
  ATTNKIT_ALWAYS_INLINE void score_tile(const tile_desc& t, float* st, std::int64_t ld) const {
    if constexpr (has_score_v) apply_score_tile(m, t, st, ld);
  }

 private:
  static constexpr bool has_score_v = attnkit::has_score<Mask>::value;
};

template <class Mask>
static_policy<Mask> policy_of(const Mask& m) {
  return static_policy<Mask>{m};
}
/// A mask_ref is already a policy (the runtime-dispatch entry instantiates drivers with it).
inline const mask_ref& policy_of(const mask_ref& m) { return m; }

template <class Mask>
mask_ref make_mask_ref(const Mask& m) {
  mask_ref r;
  r.obj = &m;
  r.classify_fn = [](const void* o, std::int64_t b, std::int64_t h, std::int64_t q0, std::int64_t q1,
                     std::int64_t k0, std::int64_t k1) {
    return static_cast<const Mask*>(o)->classify(b, h, q0, q1, k0, k1);
  };
  r.keys_fn = [](const void* o, std::int64_t b, std::int64_t h, std::int64_t q0, std::int64_t q1,
                 std::int64_t kv_len) { return static_cast<const Mask*>(o)->keys(b, h, q0, q1, kv_len); };
  r.mask_tile_fn = [](const void* o, const tile_desc& t, float* st, std::int64_t ld) {
    apply_mask_tile(*static_cast<const Mask*>(o), t, st, ld);
  };
  if constexpr (attnkit::has_score<Mask>::value)
    r.score_tile_fn = [](const void* o, const tile_desc& t, float* st, std::int64_t ld) {
      apply_score_tile(*static_cast<const Mask*>(o), t, st, ld);
    };
  r.hint = m.tile_hint();
  return r;
}

}  // namespace detail
}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
