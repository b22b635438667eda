// Plain argument structs that cross the ISA dispatch boundary: pointers, strides, sizes.
// No SIMD types, no templates, so every translation unit agrees on their layout.
#pragma once

#include <cstdint>

#include "options.hpp"

namespace attnkit {

/// Plain description of one dense attention call, the argument that crosses the ISA
/// dispatch boundary. Strides are in elements; the dim stride is 1.
struct dense_args {
  const float* q = nullptr;
  std::int64_t q_sb = 0, q_sh = 0, q_ss = 0;
  const float* k = nullptr;
  std::int64_t k_sb = 0, k_sh = 0, k_ss = 0;
  const float* v = nullptr;
  std::int64_t v_sb = 0, v_sh = 0, v_ss = 0;
  float* out = nullptr;
  std::int64_t o_sb = 0, o_sh = 0, o_ss = 0;
  float* lse = nullptr;  // optional
  std::int64_t l_sb = 0, l_sh = 0, l_ss = 0;
  std::int64_t batch = 0, q_heads = 0, kv_heads = 0, q_len = 0, kv_len = 0, qk_dim = 0, v_dim = 0;
  float scale = 1.f;    // already resolved (never 0)
  float softcap = 0.f;  // 0 = off
  const float* sinks = nullptr;  // optional learned sink logit per query head
  int num_threads = 0;
  executor exec = {};
  int kv_block = 0;  // keys per tile; 0 = default (a tuning knob for benchmarks)
  std::int64_t topk = 0;  // top-k: keys kept per query; block top-k: blocks kept per query
  std::int64_t block = 0;  // block top-k: keys per block
};

}  // namespace attnkit
