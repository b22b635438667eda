// attention_options and the host thread-pool hook.
#pragma once

#include <cstdint>

namespace attnkit {

/// Hands attnkit's parallel work to the host's own thread pool instead of OpenMP.
///
/// `parallel_for(pool, n, task, ctx)` must call `task(ctx, i)` exactly once for every i in
/// [0, n), on any threads, and return only when all calls have returned. Tasks are
/// independent and never throw. Results do not depend on which thread runs which task.
struct executor {
  void (*parallel_for)(void* pool, std::int64_t n, void (*task)(void* ctx, std::int64_t i),
                       void* ctx) = nullptr;
  void* pool = nullptr;
};

/// A read-only array of floats (pointer and length), e.g. per-head parameters.
struct float_span {
  const float* data = nullptr;
  std::int64_t size = 0;
};

struct attention_options {
  /// Multiplies q . k. 0 means 1 / sqrt(dim of q).
  float scale = 0.f;
  /// Soft-capping of scores: s -> softcap * tanh(s / softcap), applied after scaling.
  /// 0 means off.
  float softcap = 0.f;
  /// Threads for OpenMP (when the including code is built with it). 0 means all available
  /// (omp_get_max_threads()). Ignored when `exec` is set. Output is bitwise identical for
  /// any value.
  int num_threads = 0;
  /// Optional host thread pool; see attnkit::executor.
  executor exec = {};
  /// Learned attention-sink logits (gpt-oss), one per query head, or empty for none. Each
  /// joins its rows' softmax denominator as exp(sink) without contributing a value, so
  /// out = sum_j exp(s_j) v_j / (exp(sink) + sum_j exp(s_j)); lse includes it. Same units as
  /// the scaled scores.
  float_span sink_logits = {};
  /// bf16 K/V in decode (Lq <= 16): multiply in bf16, as GPU flash-attention kernels and
  /// ggml do. Q (scaled) and the softmax weights are rounded to bf16 (8 significant bits),
  /// products are exact and sums fp32; with AVX-512 BF16 (vdpbf16ps) that is half the
  /// arithmetic of widening K/V to fp32, elsewhere the same rounding with fp32 FMAs. Off:
  /// every product in fp32 on the stored K/V (exact against the double reference). Ignored
  /// for fp32 and fp16 K/V and by the prefill path.
  bool bf16_dot = false;
};

}  // namespace attnkit
