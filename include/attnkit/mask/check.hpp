// Validation of masks against a problem, before any work (see masks.hpp).
//
// The built-in masks are checked here, in the ISA namespace, rather than in member
// functions of the (shared) mask types, so that message formatting is never emitted as
// weak code shared between translation units built with different flags. A user mask may
// have its own `void check(const mask_problem&) const` member; it is called too.
#pragma once

#include <type_traits>
#include <utility>

#include "../core/message.hpp"
#include "masks.hpp"
#include "score.hpp"

namespace attnkit {
inline namespace ATTNKIT_ISA_NS {
namespace detail {

template <class T, class = void>
struct has_check : std::false_type {};
template <class T>
struct has_check<T, std::void_t<decltype(std::declval<const T&>().check(std::declval<const mask_problem&>()))>>
    : std::true_type {};

// Declarations first: the composed overloads recurse into any of them.
template <class M>
void check_mask(const char* fn, const M& m, const mask_problem& p);
template <class A, class B>
void check_mask(const char* fn, const mask_and<A, B>& m, const mask_problem& p);
template <class A, class B>
void check_mask(const char* fn, const mask_or<A, B>& m, const mask_problem& p);
template <class M, class F>
void check_mask(const char* fn, const scored_mask<M, F>& m, const mask_problem& p);

inline void check_mask(const char* fn, const sliding_window& m, const mask_problem&) {
  if (m.width < 1) fail(fn, message() << "sliding_window: argument 'width' must be >= 1, got " << m.width);
}

inline void check_mask(const char* fn, const local_window& m, const mask_problem&) {
  if (m.left < 0 || m.right < 0)
    fail(fn, message() << "local_window: arguments 'left' and 'right' must be >= 0, got left " << m.left
                       << ", right " << m.right);
}

inline void check_mask(const char* fn, const sink_tokens& m, const mask_problem&) {
  if (m.count < 0) fail(fn, message() << "sink_tokens: argument 'count' must be >= 0, got " << m.count);
}

inline void check_mask(const char* fn, const block_mask& m, const mask_problem& p) {
  if (m.block_q < 1 || m.block_k < 1)
    fail(fn, message() << "block_mask: block sizes must be >= 1, got block_q " << m.block_q << ", block_k "
                       << m.block_k);
  // ceil(Lk / block) without Lk + block - 1, which overflows for huge blocks
  const std::int64_t want_q = p.kv_len / m.block_q + (p.kv_len % m.block_q != 0);
  const std::int64_t want_k = p.kv_len / m.block_k + (p.kv_len % m.block_k != 0);
  if (m.q_blocks != want_q || m.k_blocks != want_k)
    fail(fn, message() << "block_mask: bitmap is " << m.q_blocks << " x " << m.k_blocks << " blocks, expected "
                       << want_q << " x " << want_k << " (ceil(Lk / block_q) x ceil(Lk / block_k) for Lk "
                       << p.kv_len << ", block_q " << m.block_q << ", block_k " << m.block_k << ")");
  if (m.heads != 1 && m.heads != p.q_heads)
    fail(fn, message() << "block_mask: bitmap has " << m.heads << " heads, expected 1 (shared) or " << p.q_heads
                       << " (one per query head)");
  if (!m.bits && m.q_blocks * m.k_blocks > 0) fail(fn, message() << "block_mask: argument 'bits' is null");
}

template <class M>
void check_mask(const char*, const M& m, const mask_problem& p) {
  if constexpr (has_check<M>::value) m.check(p);
}
template <class A, class B>
void check_mask(const char* fn, const mask_and<A, B>& m, const mask_problem& p) {
  check_mask(fn, m.a, p);
  check_mask(fn, m.b, p);
}
template <class A, class B>
void check_mask(const char* fn, const mask_or<A, B>& m, const mask_problem& p) {
  check_mask(fn, m.a, p);
  check_mask(fn, m.b, p);
}
template <class M, class F>
void check_mask(const char* fn, const scored_mask<M, F>& m, const mask_problem& p) {
  check_mask(fn, static_cast<const M&>(m), p);
}

}  // namespace detail
}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
