// Public entries of the flash-style family: attention, topk_attention, block_topk_attention.
#pragma once

#include <type_traits>

#include "core/args.hpp"
#include "core/options.hpp"
#include "core/tensor_view.hpp"
#include "core/validate.hpp"
#include "dispatch/isa.hpp"
#include "mask/check.hpp"
#include "mask/masks.hpp"
#include "mask/policy.hpp"
#include "mask/score.hpp"

#if ATTNKIT_RUNTIME_DISPATCH
#include "dispatch/entries.hpp"
#else
#include "kernels/decode.hpp"
#include "kernels/topk.hpp"
#include "kernels/block_topk.hpp"
#endif

namespace attnkit {
inline namespace ATTNKIT_ISA_NS {

/// Which code path the kernels run in this translation unit, e.g. "avx512 (runtime
/// dispatch)" or "avx512bw" (static: the compile-time ISA).
inline const char* backend_name() noexcept {
#if ATTNKIT_RUNTIME_DISPATCH
  switch (active_isa()) {
    case isa::avx512: return "avx512 (runtime dispatch)";
    case isa::avx2: return "avx2 (runtime dispatch)";
    default: return "sse2 (runtime dispatch)";
  }
#else
  return xsimd::default_arch::name();
#endif
}

namespace detail {

// One runtime-dispatched call: pick the entry of the active ISA; the mask travels as a
// mask_ref whose per-tile functions were compiled here.
#if ATTNKIT_RUNTIME_DISPATCH
#define ATTNKIT_DISPATCH(NAME, ARGS, MASK)                                    \
  do {                                                                        \
    const mask_ref ref_ = ::attnkit::ATTNKIT_ISA_NS::detail::make_mask_ref(MASK); \
    switch (active_isa()) {                                                   \
      case isa::avx512: ::attnkit::isa_entry_avx512::NAME(ARGS, ref_); break; \
      case isa::avx2: ::attnkit::isa_entry_avx2::NAME(ARGS, ref_); break;     \
      default: ::attnkit::isa_entry_sse2::NAME(ARGS, ref_); break;            \
    }                                                                         \
  } while (0)
#else
#define ATTNKIT_DISPATCH(NAME, ARGS, MASK) ::attnkit::ATTNKIT_ISA_NS::detail::NAME<xsimd::default_arch>(ARGS, MASK)
#endif

/// Flattens validated views into dense_args: pointers and strides of q, k, v, out and lse
/// (when it has elements), the sizes and scale of `p`, and the options the kernels read.
template <class TQ, class TK, class TV>
dense_args dense_args_of(const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
                         const tensor_view<float>& out, const tensor_view<float>& lse, const dense_problem& p,
                         const attention_options& options) {
  dense_args a;
  a.q = q.data_handle();
  a.q_sb = q.stride(0), a.q_sh = q.stride(1), a.q_ss = q.stride(2);
  a.k = k.data_handle();
  a.k_sb = k.stride(0), a.k_sh = k.stride(1), a.k_ss = k.stride(2);
  a.v = v.data_handle();
  a.v_sb = v.stride(0), a.v_sh = v.stride(1), a.v_ss = v.stride(2);
  a.kv_type = dtype_of<std::remove_cv_t<TK>>::value;
  a.out = out.data_handle();
  a.o_sb = out.stride(0), a.o_sh = out.stride(1), a.o_ss = out.stride(2);
  if (lse.size() > 0) {
    a.lse = lse.data_handle();
    a.l_sb = lse.stride(0), a.l_sh = lse.stride(1), a.l_ss = lse.stride(2);
  }
  a.batch = p.batch, a.q_heads = p.q_heads, a.kv_heads = p.kv_heads;
  a.q_len = p.q_len, a.kv_len = p.kv_len, a.qk_dim = p.qk_dim, a.v_dim = p.v_dim;
  a.scale = p.scale;
  a.softcap = options.softcap;
  a.sinks = options.sink_logits.data;
  a.bf16_dot = options.bf16_dot;
  a.num_threads = options.num_threads;
  a.exec = options.exec;
  return a;
}

/// Validates a flash-style call (views, mask, options) and flattens it into dense_args.
template <class TQ, class TK, class TV, class Mask>
dense_args flash_args(const char* fn, const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
                      const tensor_view<float>& out, const Mask& mask, const attention_options& options,
                      const tensor_view<float>& lse) {
  using K = std::remove_cv_t<TK>;
  static_assert(std::is_same<std::remove_cv_t<TQ>, float>::value, "attnkit: q must be a float view");
  static_assert(std::is_same<K, std::remove_cv_t<TV>>::value, "attnkit: k and v must have the same storage type");
  static_assert(std::is_same<K, float>::value || std::is_same<K, bf16>::value || std::is_same<K, fp16>::value,
                "attnkit: k and v must be float, attnkit::bf16 or attnkit::fp16 views");
  static_assert(is_mask<Mask>::value, "attnkit: argument 'mask' must be a mask (see mask/masks.hpp)");
  const auto p = check_dense(fn, q, k, v, &out, lse, options);
  check_mask(fn, mask, mask_problem{p.batch, p.q_heads, p.kv_heads, p.q_len, p.kv_len});
  return dense_args_of(q, k, v, out, lse, p, options);
}

}  // namespace detail

/// Dense attention: out = softmax(mask(softcap(score_fn(scale * q k^T)))) v, per batch and
/// query head.
///
///   q   [batch, q_heads, Lq, d]      k [batch, kv_heads, Lk, d]   v [batch, kv_heads, Lk, dv]
///   out [batch, q_heads, Lq, dv]     lse (optional) [batch, q_heads, Lq, 1], natural log
///
/// q_heads must be a multiple of kv_heads (grouped-query / multi-query attention: query
/// head h reads kv head h / (q_heads / kv_heads)). Query row i sits at position
/// i + (Lk - Lq) (bottom-right alignment). A row whose keys are all masked gets output 0 and
/// lse -inf. Views may have any non-negative strides with unit stride along dim. Throws
/// attnkit::error on invalid arguments before doing any work.
///
/// K and V may be stored as float, attnkit::bf16 or attnkit::fp16 (both the same); they are
/// widened exactly to fp32 and all arithmetic is fp32.
template <class TQ, class TK, class TV, class Mask = no_mask>
void attention(const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
               const tensor_view<float>& out, const Mask& mask = {}, const attention_options& options = {},
               const tensor_view<float>& lse = {}) {
  const dense_args a = detail::flash_args("attention", q, k, v, out, mask, options, lse);
  ATTNKIT_DISPATCH(dense_forward, a, mask);
}

/// Top-k attention: like attention(), but each query's softmax runs over only its `topk`
/// largest allowed scores (after scale, score modifier and softcap); ties go to the lower
/// key index, and a query with fewer allowed keys than topk uses all of them. Exact. Extra
/// memory is O(threads x 64 x topk), never O(Lq x Lk).
template <class TQ, class TK, class TV, class Mask = no_mask>
void topk_attention(const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
                    const tensor_view<float>& out, std::int64_t topk, const Mask& mask = {},
                    const attention_options& options = {}, const tensor_view<float>& lse = {}) {
  static_assert(std::is_same<std::remove_cv_t<TK>, float>::value, "attnkit: topk_attention takes float k and v");
  dense_args a = detail::flash_args("topk_attention", q, k, v, out, mask, options, lse);
  if (topk < 1) detail::fail("topk_attention", detail::message() << "argument 'topk' must be >= 1, got " << topk);
  if (topk >= a.kv_len) {  // every allowed key is kept: exactly dense attention
    ATTNKIT_DISPATCH(dense_forward, a, mask);
    return;
  }
  a.topk = topk;
  ATTNKIT_DISPATCH(topk_forward, a, mask);
}

/// Block top-k attention (MoBA), causal: keys form blocks of `block` keys; each query scores
/// every fully past block by q . mean(K_block), keeps the `topk_blocks` best (ties to the
/// lower block) and attends causally to its own block plus those. Scale, softcap and sink
/// logits apply as in attention(). Work is proportional to the selected pairs; extra
/// memory is O(Lq * topk_blocks) per thread plus the mean-pooled keys, computed once per call.
template <class TQ, class TK, class TV>
void block_topk_attention(const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
                          const tensor_view<float>& out, std::int64_t block, std::int64_t topk_blocks,
                          const attention_options& options = {}, const tensor_view<float>& lse = {}) {
  static_assert(std::is_same<std::remove_cv_t<TK>, float>::value, "attnkit: block_topk_attention takes float k and v");
  dense_args a = detail::flash_args("block_topk_attention", q, k, v, out, causal{}, options, lse);
  if (block < 1) detail::fail("block_topk_attention", detail::message() << "argument 'block' must be >= 1, got " << block);
  if (topk_blocks < 0)
    detail::fail("block_topk_attention", detail::message() << "argument 'topk_blocks' must be >= 0, got " << topk_blocks);
  a.block = block;
  const std::int64_t past_max = a.kv_len / block;  // no query can select more blocks than this
  a.topk = topk_blocks < past_max ? topk_blocks : past_max;
  ATTNKIT_DISPATCH(block_topk_forward, a, causal{});
}

}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
