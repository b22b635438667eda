// Plain argument structs that cross the ISA dispatch boundary: pointers, strides, sizes.
// No SIMD types, no templates, so every translation unit agrees on their layout.
#pragma once

#include <cstdint>

#include "dtypes.hpp"
#include "options.hpp"

namespace attnkit {

/// Plain description of one dense attention call, the argument that crosses the ISA
/// dispatch boundary. Strides are in elements; the dim stride is 1.
///
/// K and V are untyped: both hold `kv_type` elements. Paged K/V (attention_paged): k and v
/// point at page pools [num_pages, page_size, kv_heads, dim]; k_sb / v_sb are then the
/// strides between pages, k_ss / v_ss between the rows of a page, and sequence b's key t
/// lives in page page_table[b * pt_sb + t / page_size].
struct dense_args {
  const float* q = nullptr;
  std::int64_t q_sb = 0, q_sh = 0, q_ss = 0;
  const void* k = nullptr;
  std::int64_t k_sb = 0, k_sh = 0, k_ss = 0;
  const void* v = nullptr;
  std::int64_t v_sb = 0, v_sh = 0, v_ss = 0;
  dtype kv_type = dtype::f32;
  const std::int32_t* page_table = nullptr;  // paged only
  std::int64_t pt_sb = 0, page_size = 0;
  const std::int32_t* seq_lens = nullptr;  // ragged batch: keys of each sequence (kv_len = the most)
  // Keys in two parts (MLA: the latent c_kv, then the decoupled rope key): key row t is
  // [k row t (qk_dim - k2_dim elements) | k2 row t (k2_dim)], and query rows likewise
  // [q | q2]. k2 has k's storage type and, when paged, its own pool under the same table.
  const void* k2 = nullptr;
  std::int64_t k2_sb = 0, k2_sh = 0, k2_ss = 0, k2_dim = 0;
  const float* q2 = nullptr;
  std::int64_t q2_sb = 0, q2_sh = 0, q2_ss = 0;
  float* out = nullptr;
  std::int64_t o_sb = 0, o_sh = 0, o_ss = 0;
  float* lse = nullptr;  // optional
  std::int64_t l_sb = 0, l_sh = 0, l_ss = 0;
  std::int64_t batch = 0, q_heads = 0, kv_heads = 0, q_len = 0, kv_len = 0, qk_dim = 0, v_dim = 0;
  float scale = 1.f;    // already resolved (never 0)
  float softcap = 0.f;  // 0 = off
  const float* sinks = nullptr;  // optional learned sink logit per query head
  bool bf16_dot = false;  // attention_options::bf16_dot
  int num_threads = 0;
  executor exec = {};
  int kv_block = 0;  // keys per tile; 0 = default (a tuning knob for benchmarks)
  std::int64_t topk = 0;  // top-k: keys kept per query; block top-k: blocks kept per query
  std::int64_t block = 0;  // block top-k: keys per block

  /// K and V as T (the caller knows kv_type; fp32-only kernels use float).
  template <class T>
  const T* k_as() const noexcept {
    return static_cast<const T*>(k);
  }
  template <class T>
  const T* v_as() const noexcept {
    return static_cast<const T*>(v);
  }

  /// Keys of sequence b (ragged batches differ).
  std::int64_t kv_len_of(std::int64_t b) const noexcept { return seq_lens ? seq_lens[b] : kv_len; }
};

}  // namespace attnkit
