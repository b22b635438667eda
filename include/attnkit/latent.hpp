// Public entries of the latent family: multi-head latent attention (MLA, DeepSeek-V2/V3)
// over a compressed cache shared by all heads, contiguous and paged, and latent-query
// routing (FLARE-style encode / decode through M learned latents).
//
// Both run on the flash and split-KV drivers of attention(): MLA through the two-part key
// of dense_args (k = the latent c_kv, k2 = the rope key), latent routing as two dense calls.
// The weight helpers (absorption, output projection, the expanded path) need Eigen and live
// in latent_eigen.hpp.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "attention.hpp"
#include "paged.hpp"

namespace attnkit {

/// Options of mla_attention / mla_attention_paged.
///
/// The score scale is the one the model was trained with, 1 / sqrt(qk_nope_head_dim +
/// d_rope) (DeepSeek-V2: 1 / sqrt(128 + 64)), NOT 1 / sqrt(r + d_rope) as the latent query
/// width r + d_rope would suggest: absorption (q_lat = W_UK^T q_nope) leaves the dot products
/// unchanged, so the scale stays that of the un-absorbed heads. attnkit cannot see
/// qk_nope_head_dim in the latent shapes, so one of the two must be given:
///   - `qk_nope_head_dim` > 0: scale = 1 / sqrt(qk_nope_head_dim + d_rope);
///   - `scale` != 0: used as is (e.g. DeepSeek's YaRN mscale^2 / sqrt(192)); it wins over
///     qk_nope_head_dim when both are set.
/// Default-constructed options (both 0) are an error rather than a silent wrong scale.
struct mla_options {
  /// Per-head dimension of the un-absorbed, non-rope query/key part (DeepSeek-V2: 128).
  std::int64_t qk_nope_head_dim = 0;
  /// Explicit score scale; 0 means 1 / sqrt(qk_nope_head_dim + d_rope).
  float scale = 0.f;
  /// As in attention_options.
  float softcap = 0.f;
  int num_threads = 0;
  executor exec = {};
  float_span sink_logits = {};
};

/// Options of latent_attention are those of attention() (scale 0 = 1 / sqrt(d); softcap
/// applies to both steps; sink_logits are not supported there).

inline namespace ATTNKIT_ISA_NS {
namespace detail {

/// The scale of an MLA call (see mla_options), or an error naming both options.
inline float mla_scale(const char* fn, const mla_options& o, index_t d_rope) {
  if (!std::isfinite(o.scale)) fail(fn, message() << "options.scale must be finite, got " << double(o.scale));
  if (o.qk_nope_head_dim < 0)
    fail(fn, message() << "options.qk_nope_head_dim must be >= 0, got " << o.qk_nope_head_dim);
  if (o.scale != 0.f) return o.scale;
  if (o.qk_nope_head_dim == 0)
    fail(fn, message() << "the score scale is not known: set options.qk_nope_head_dim (the model's per-head"
                          " no-rope q/k dim, e.g. 128 for DeepSeek-V2; scale = 1/sqrt(qk_nope_head_dim + d_rope"
                          " = "
                       << d_rope << ")) or options.scale; it is not 1/sqrt(r + d_rope)");
  return 1.f / std::sqrt(static_cast<float>(o.qk_nope_head_dim + d_rope));
}

inline attention_options mla_attention_options(const mla_options& o, float scale) {
  attention_options a;
  a.scale = scale;
  a.softcap = o.softcap;
  a.num_threads = o.num_threads;
  a.exec = o.exec;
  a.sink_logits = o.sink_logits;
  return a;
}

/// Validates an MLA call and fills dense_args. `c` and `kr` are the cache (contiguous) or
/// stand-ins for the longest sequence of a paged cache (`paged`: their aliasing is then
/// checked by the caller against the pools).
template <class TQ, class TQR, class TC, class TR, class Mask>
dense_args mla_args(const char* fn, const tensor_view<TQ>& q_lat, const tensor_view<TQR>& q_rope,
                    const tensor_view<TC>& c, const tensor_view<TR>& kr, const tensor_view<float>& out,
                    const Mask& mask, const mla_options& options, const tensor_view<float>& lse, bool paged) {
  using C = std::remove_cv_t<TC>;
  static_assert(std::is_same<std::remove_cv_t<TQ>, float>::value, "attnkit: q_lat must be a float view");
  static_assert(std::is_same<std::remove_cv_t<TQR>, float>::value, "attnkit: q_rope must be a float view");
  static_assert(std::is_same<C, std::remove_cv_t<TR>>::value,
                "attnkit: the latent cache and the rope keys must have the same storage type");
  static_assert(std::is_same<C, float>::value || std::is_same<C, bf16>::value || std::is_same<C, fp16>::value,
                "attnkit: the latent cache must be float, attnkit::bf16 or attnkit::fp16");
  static_assert(is_mask<Mask>::value, "attnkit: argument 'mask' must be a mask (see mask/masks.hpp)");
  const char* c_name = paged ? "c_pages" : "c_kv";
  const char* r_name = paged ? "rope_pages" : "k_rope";
  check_view(fn, "q_lat", q_lat);
  check_view(fn, "q_rope", q_rope);
  check_view(fn, c_name, c);
  check_view(fn, r_name, kr);
  check_view(fn, "out_lat", out);
  auto shapes = [&](const char* what) {
    return message() << what << " (q_lat is " << q_lat.extents() << ", q_rope is " << q_rope.extents() << ", "
                     << c_name << " is " << c.extents() << ", " << r_name << " is " << kr.extents() << ")";
  };
  const index_t B = q_lat.batch(), H = q_lat.heads(), Lq = q_lat.seq(), r = q_lat.dim(), dr = q_rope.dim();
  if (c.heads() != 1)
    fail(fn, shapes(paged ? "'c_pages' must have exactly one head (axis 1): the latent cache is shared by all heads"
                          : "'c_kv' must have exactly one head: the latent cache is shared by all heads"));
  if (kr.heads() != 1)
    fail(fn, shapes(paged ? "'rope_pages' must have exactly one head (axis 1): the rope key is shared by all heads"
                          : "'k_rope' must have exactly one head: the rope key is shared by all heads"));
  if (q_rope.batch() != B || q_rope.heads() != H || q_rope.seq() != Lq)
    fail(fn, shapes("'q_rope' must have the batch, heads and seq of 'q_lat'"));
  if (!paged && (c.batch() != B || kr.batch() != B))
    fail(fn, shapes("batch of 'c_kv' and 'k_rope' must equal batch of 'q_lat'"));
  if (kr.seq() != c.seq()) fail(fn, shapes(paged ? "page size (axis 2) of 'rope_pages' must equal that of 'c_pages'"
                                                 : "seq of 'k_rope' must equal seq of 'c_kv'"));
  if (c.dim() != r)
    fail(fn, shapes(paged ? "latent rank r mismatch: dim of 'c_pages' must equal dim of 'q_lat'"
                          : "latent rank r mismatch: dim of 'c_kv' must equal dim of 'q_lat'"));
  if (kr.dim() != dr)
    fail(fn, shapes(paged ? "rope dim mismatch: dim of 'rope_pages' must equal dim of 'q_rope'"
                          : "rope dim mismatch: dim of 'k_rope' must equal dim of 'q_rope'"));
  if (r < 1) fail(fn, shapes("latent rank r (dim of 'q_lat') must be at least 1"));
  check_shape(fn, "out_lat", out, {{B, H, Lq, r}}, "batch, heads and seq of q_lat, latent rank r");
  check_unique(fn, "out_lat", out);
  check_no_alias(fn, "out_lat", out, "q_lat", q_lat);
  check_no_alias(fn, "out_lat", out, "q_rope", q_rope);
  if (!paged) {
    check_no_alias(fn, "out_lat", out, "c_kv", c);
    check_no_alias(fn, "out_lat", out, "k_rope", kr);
  }
  const bool want_lse = !lse.empty() || lse.data_handle() != nullptr;
  if (want_lse) {
    check_view(fn, "lse", lse);
    check_shape(fn, "lse", lse, {{B, H, Lq, 1}}, "batch, heads and seq of q_lat, then 1");
    check_unique(fn, "lse", lse);
    check_no_alias(fn, "lse", lse, "q_lat", q_lat);
    check_no_alias(fn, "lse", lse, "q_rope", q_rope);
    check_no_alias(fn, "lse", lse, "out_lat", out);
    if (!paged) {
      check_no_alias(fn, "lse", lse, "c_kv", c);
      check_no_alias(fn, "lse", lse, "k_rope", kr);
    }
  }
  const float scale = mla_scale(fn, options, dr);
  check_softmax_options(fn, options.softcap, options.num_threads, options.sink_logits, H);
  const index_t Lk = c.seq();
  check_mask(fn, mask, mask_problem{B, H, 1, Lq, Lk});

  // Query rows [q_lat | q_rope] against key rows [c_kv | k_rope]; the value is c_kv itself.
  dense_args a = dense_args_of(q_lat, c, c, out, lse, dense_problem{B, H, 1, Lq, Lk, r + dr, r, scale},
                               mla_attention_options(options, scale));
  if (dr > 0) {
    a.q2 = q_rope.data_handle();
    a.q2_sb = q_rope.stride(0), a.q2_sh = q_rope.stride(1), a.q2_ss = q_rope.stride(2);
    a.k2 = kr.data_handle();
    a.k2_sb = kr.stride(0), a.k2_sh = kr.stride(1), a.k2_ss = kr.stride(2);
    a.k2_dim = dr;
  }
  return a;
}

}  // namespace detail

/// Multi-head latent attention (MLA, DeepSeek-V2/V3) in absorbed form, over a latent cache
/// shared by all heads:
///
///   q_lat   [B, H, Lq, r]       float   (q_lat = W_UK^T q_nope per head, see latent_eigen.hpp)
///   q_rope  [B, H, Lq, d_rope]  float   (the decoupled rope part of the query)
///   c_kv    [B, 1, Lk, r]       float, bf16 or fp16 (the compressed KV cache)
///   k_rope  [B, 1, Lk, d_rope]  same storage type as c_kv (the shared rope key)
///   out_lat [B, H, Lq, r]       float   (out = W_UV out_lat per head)
///   lse     optional [B, H, Lq, 1]
///
///   s_j     = scale * (q_lat . c_j + q_rope . k_rope_j)
///   out_lat = softmax_j(mask(softcap(s_j))) c_j
///
/// It is attention() with key [c | k_rope] (dim r + d_rope), value c (dim r) and one KV head
/// for all H query heads: every cache row is read once per call for all heads and all Lq
/// queries. d_rope may be 0 (views with dim 0: no rope part). Masks (positions bottom-right
/// aligned as in attention()), sink logits, softcap and lse behave as in attention(). The
/// scale must be given (see mla_options): it is 1 / sqrt(qk_nope_head_dim + d_rope), not
/// 1 / sqrt(r + d_rope). Throws attnkit::error on invalid arguments before any work.
template <class TQ, class TQR, class TC, class TR, class Mask = no_mask>
void mla_attention(const tensor_view<TQ>& q_lat, const tensor_view<TQR>& q_rope, const tensor_view<TC>& c_kv,
                   const tensor_view<TR>& k_rope, const tensor_view<float>& out_lat, const Mask& mask = {},
                   const mla_options& options = {}, const tensor_view<float>& lse = {}) {
  const dense_args a =
      detail::mla_args("mla_attention", q_lat, q_rope, c_kv, k_rope, out_lat, mask, options, lse, false);
  ATTNKIT_DISPATCH(dense_forward, a, mask);
}

/// mla_attention over a paged latent cache (vLLM-style), with a ragged batch:
///
///   c_pages     the latent page pool, extents [num_pages, 1, page_size, r]; the usual
///               [num_pages, page_size, r] buffer is make_bshd(ptr, num_pages, page_size, 1, r)
///   rope_pages  the rope-key pool [num_pages, 1, page_size, d_rope], same storage type,
///               addressed by the same page table
///   page_table  [batch, pages per sequence]; seq_lens [batch], as in attention_paged
///
/// Other arguments as in mla_attention. Sequence b's query row i sits at position
/// i + seq_lens[b] - Lq. The result is bitwise identical to mla_attention on the same rows
/// stored contiguously.
template <class TQ, class TQR, class TC, class TR, class Mask = no_mask>
void mla_attention_paged(const tensor_view<TQ>& q_lat, const tensor_view<TQR>& q_rope,
                         const tensor_view<TC>& c_pages, const tensor_view<TR>& rope_pages,
                         const page_table_view& page_table, const int32_span& seq_lens,
                         const tensor_view<float>& out_lat, const Mask& mask = {}, const mla_options& options = {},
                         const tensor_view<float>& lse = {}) {
  const char* fn = "mla_attention_paged";
  using detail::fail;
  using detail::message;
  detail::check_view(fn, "c_pages", c_pages);
  detail::check_view(fn, "rope_pages", rope_pages);
  const index_t num_pages = c_pages.batch(), page_size = c_pages.seq(), batch = q_lat.batch();
  if (rope_pages.batch() != num_pages || rope_pages.seq() != page_size)
    fail(fn, message() << "'c_pages' " << c_pages.extents() << " and 'rope_pages' " << rope_pages.extents()
                       << " must have the same pages and page size");
  if (page_size < 1 && num_pages > 0) fail(fn, message() << "page size (axis 2 of 'c_pages') must be >= 1");
  const index_t longest =
      detail::check_pages(fn, "q_lat", "c_pages", batch, num_pages, page_size, page_table, seq_lens);
  const index_t pt_stride = page_table.stride > 0 ? page_table.stride : page_table.cols;
  // Stand-ins for the longest sequence carry the shapes through mla_args; the pools' own
  // aliasing is checked here.
  const tensor_view<TC> c_like(c_pages.data_handle(), {{batch, c_pages.heads(), longest, c_pages.dim()}},
                               {{0, c_pages.stride(1), c_pages.stride(2), 1}});
  const tensor_view<TR> r_like(rope_pages.data_handle(), {{batch, rope_pages.heads(), longest, rope_pages.dim()}},
                               {{0, rope_pages.stride(1), rope_pages.stride(2), 1}});
  dense_args a = detail::mla_args(fn, q_lat, q_rope, c_like, r_like, out_lat, mask, options, lse, true);
  detail::check_no_alias(fn, "out_lat", out_lat, "c_pages", c_pages);
  detail::check_no_alias(fn, "out_lat", out_lat, "rope_pages", rope_pages);
  if (!lse.empty()) {
    detail::check_no_alias(fn, "lse", lse, "c_pages", c_pages);
    detail::check_no_alias(fn, "lse", lse, "rope_pages", rope_pages);
  }
  a.k_sb = c_pages.stride(0);
  a.v_sb = c_pages.stride(0);
  if (a.k2) a.k2_sb = rope_pages.stride(0);
  a.page_table = page_table.data;
  a.pt_sb = pt_stride;
  a.page_size = page_size;
  a.seq_lens = seq_lens.data;
  ATTNKIT_DISPATCH(dense_forward, a, mask);
}

/// Latent-query routing (FLARE; Perceiver-style), non-causal, with M learned latent
/// queries per head:
///
///   q_latent [1 or B, H, M, d]   float (batch 1 is shared by every sequence)
///   k        [B, Hkv, N, d]      float;   v [B, Hkv, N, dv] float
///   out      [B, H, N, dv]       float
///
///   encode  Z = softmax(scale * Q_L K^T) V          [B, H, M, dv]
///   decode  Y = softmax(scale * K Q_L^T) Z          [B, H, N, dv] = out
///
/// per head h, with K, V of kv head h / (H / Hkv) (grouped heads: H a multiple of Hkv).
/// Token mixing costs O(N M) instead of O(N^2). Both steps are flash calls of the dense
/// driver (no N x M score matrix beyond a tile); only Z (B x H x M x dv floats) is
/// allocated. scale 0 means 1 / sqrt(d); softcap applies to both steps; sink_logits are
/// not supported. Throws attnkit::error on invalid arguments (M < 1 included).
template <class TL, class TK, class TV>
void latent_attention(const tensor_view<TL>& q_latent, const tensor_view<TK>& k, const tensor_view<TV>& v,
                      const tensor_view<float>& out, const attention_options& options = {}) {
  const char* fn = "latent_attention";
  using detail::fail;
  using detail::message;
  // The decode step reads the keys as queries, which the drivers take in fp32 only.
  static_assert(std::is_same<std::remove_cv_t<TL>, float>::value && std::is_same<std::remove_cv_t<TK>, float>::value &&
                    std::is_same<std::remove_cv_t<TV>, float>::value,
                "attnkit: latent_attention takes float q_latent, k and v");
  detail::check_view(fn, "q_latent", q_latent);
  detail::check_view(fn, "k", k);
  detail::check_view(fn, "v", v);
  detail::check_view(fn, "out", out);
  const index_t B = k.batch(), H = q_latent.heads(), Hkv = k.heads(), M = q_latent.seq(), N = k.seq();
  auto shapes = [&](const char* what) {
    return message() << what << " (q_latent is " << q_latent.extents() << ", k is " << k.extents() << ", v is "
                     << v.extents() << ")";
  };
  if (M < 1) fail(fn, shapes("argument 'q_latent' must hold at least one latent query per head (M = seq >= 1)"));
  if (q_latent.batch() != 1 && q_latent.batch() != B)
    fail(fn, shapes("batch of 'q_latent' must be 1 (shared) or the batch of 'k'"));
  if (v.batch() != B || v.heads() != Hkv || v.seq() != N)
    fail(fn, shapes("'v' must have the batch, heads and seq of 'k'"));
  if (Hkv < 1 || H < 1 || H % Hkv != 0)
    fail(fn, shapes("heads of 'q_latent' must be a positive multiple of heads of 'k'"));
  if (q_latent.dim() != k.dim() || k.dim() < 1)
    fail(fn, shapes("dim of 'q_latent' must equal dim of 'k' (at least 1)"));
  if (v.dim() < 1) fail(fn, shapes("dim of 'v' must be at least 1"));
  if (options.sink_logits.data != nullptr || options.sink_logits.size != 0)
    fail(fn, message() << "options.sink_logits are not supported by latent_attention");
  const index_t dv = v.dim();
  detail::check_shape(fn, "out", out, {{B, H, N, dv}}, "batch and seq of k, heads of q_latent, dim of v");
  detail::check_unique(fn, "out", out);
  detail::check_no_alias(fn, "out", out, "q_latent", q_latent);
  detail::check_no_alias(fn, "out", out, "k", k);
  detail::check_no_alias(fn, "out", out, "v", v);
  if (B == 0 || N == 0) return;  // nothing to route (out is empty)

  // Z, and the latent queries broadcast over the batch when shared.
  std::vector<float> z(std::size_t(B * H * M * dv));
  const tensor_view<float> zv = make_bhsd(z.data(), B, H, M, dv);
  const tensor_view<const float> ql(q_latent.data_handle(), {{B, H, M, q_latent.dim()}},
                                    {{q_latent.batch() == 1 ? 0 : q_latent.stride(0), q_latent.stride(1),
                                      q_latent.stride(2), 1}});
  // Encode: the latents are the queries; positions only matter to masks, and there is none.
  {
    const dense_args a = detail::flash_args(fn, ql, k, v, zv, no_mask{}, options, tensor_view<float>{});
    ATTNKIT_DISPATCH(dense_forward, a, no_mask{});
  }
  // Decode, one call per kv head: the group's g query heads all read that head's keys as
  // queries (a head stride of 0) and attend over their own latents and Z.
  const index_t g = H / Hkv;
  for (index_t hk = 0; hk < Hkv; ++hk) {
    const tensor_view<const float> qk(k.data_handle() + hk * k.stride(1), {{B, g, N, k.dim()}},
                                  {{k.stride(0), 0, k.stride(2), 1}});
    const tensor_view<const float> lk(ql.data_handle() + hk * g * ql.stride(1), {{B, g, M, ql.dim()}},
                                      {{ql.stride(0), ql.stride(1), ql.stride(2), 1}});
    const tensor_view<const float> lz(z.data() + hk * g * M * dv, {{B, g, M, dv}}, {{H * M * dv, M * dv, dv, 1}});
    const tensor_view<float> o(out.data_handle() + hk * g * out.stride(1), {{B, g, N, dv}},
                               {{out.stride(0), out.stride(1), out.stride(2), 1}});
    const dense_args a = detail::flash_args(fn, qk, lk, lz, o, no_mask{}, options, tensor_view<float>{});
    ATTNKIT_DISPATCH(dense_forward, a, no_mask{});
  }
}

}  // namespace ATTNKIT_ISA_NS
}  // namespace attnkit
