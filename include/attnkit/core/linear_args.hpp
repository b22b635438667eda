// Plain argument structs of the linear-attention family that cross the ISA dispatch
// boundary (see core/args.hpp for the dense family): pointers, strides, sizes, enums and
// one function pointer. No SIMD types and no templates, so every translation unit agrees on
// their layout.
#pragma once

#include <cstdint>

#include "options.hpp"

namespace attnkit {

/// The built-in feature maps, and `custom` for a user callable (linear_features.hpp).
enum class feature_kind : int { elu_plus_one = 0, relu = 1, identity = 2, taylor2 = 3, custom = 4 };

/// A feature map as the kernels see it. For `custom`, fn(ctx, x, d, y) writes the out_dim
/// features of the row x[0..d) to y; it was compiled in the caller's translation unit.
struct feature_ref {
  feature_kind kind = feature_kind::elu_plus_one;
  std::int64_t out_dim = 0;  // d', resolved by the public entry
  void (*fn)(const void* ctx, const float* x, std::int64_t d, float* y) = nullptr;
  const void* ctx = nullptr;
};

/// Which member of the family one call computes.
enum class linear_mode : int {
  linear = 0,     // linear_attention / linear_attention_step (causal or not, decay, state)
  efficient = 1,  // efficient_attention (Shen et al.): row softmax of Q, column softmax of K
  mala = 2        // mala_attention (Fan et al.), non-causal
};

/// Plain description of one linear-attention call. Strides are in elements; dim stride 1.
struct linear_args {
  const float* q = nullptr;
  std::int64_t q_sb = 0, q_sh = 0, q_ss = 0;
  const float* k = nullptr;
  std::int64_t k_sb = 0, k_sh = 0, k_ss = 0;
  const float* v = nullptr;
  std::int64_t v_sb = 0, v_sh = 0, v_ss = 0;
  float* out = nullptr;
  std::int64_t o_sb = 0, o_sh = 0, o_ss = 0;
  std::int64_t batch = 0, q_heads = 0, kv_heads = 0, q_len = 0, kv_len = 0, qk_dim = 0, v_dim = 0;
  linear_mode mode = linear_mode::linear;
  bool causal = false;
  bool normalize = true;
  float eps = 1e-6f;
  feature_ref phi = {};
  const float* decay = nullptr;  // one lambda per kv head, or null (lambda = 1)
  // Optional recurrent state, read at the start and overwritten with the final state:
  // kv [batch][kv_heads][phi.out_dim][v_dim] and normaliser [batch][kv_heads][phi.out_dim].
  float* state_kv = nullptr;
  float* state_z = nullptr;
  std::int64_t chunk = 0;  // rows per chunk, resolved (> 0)
  int num_threads = 0;
  executor exec = {};
};

}  // namespace attnkit
