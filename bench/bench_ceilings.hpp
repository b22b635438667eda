// The machine ceilings that suites measure in the same run as their kernels: Eigen's fp32
// GEMM (compute) and a vectorised streaming sum (read bandwidth). Each suite keeps its own
// benchmark function, name, counters and label; only the measured loop is shared. Apart
// from bench_common.hpp because of the Eigen and xsimd includes.
#pragma once

#include <cstdint>

#include <omp.h>

#include <Eigen/Core>
#include <benchmark/benchmark.h>
#include <xsimd/xsimd.hpp>

namespace attnkit_bench {

/// Sets the "GFLOPS" rate counter from the FLOPs of one iteration.
inline void set_flops_counter(benchmark::State& state, double flops_per_iter) {
  state.counters["GFLOPS"] =
      benchmark::Counter(flops_per_iter / 1e9 * double(state.iterations()), benchmark::Counter::kIsRate);
}

/// Times C = A * B, n^3 fp32, with Eigen's own OpenMP GEMM on `threads` threads (Note
/// [Eigen threading] in bench_dense.cpp). Eigen's thread count stays at `threads`.
inline void time_gemm_eigen(benchmark::State& state, int n, int threads) {
  Eigen::setNbThreads(threads);
  Eigen::MatrixXf a = Eigen::MatrixXf::Random(n, n), b = Eigen::MatrixXf::Random(n, n);
  Eigen::MatrixXf c = Eigen::MatrixXf::Zero(n, n);
  for (auto _ : state) {
    c.noalias() = a * b;
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
}

/// Sum of `blocks` blocks of `block` floats, block i at x + order[i] * block (at x + i * block
/// when `order` is null), on `threads` threads, each taking an equal run of the blocks in
/// that order, 8 vector accumulators each. In order, the read bandwidth of the memory;
/// in a page table's order, what reading in pages costs a plain reader. x aligned for
/// xsimd's batch<float>, block a multiple of 8 batches (the remainder is not read).
inline float stream_sum_blocks(const float* x, const std::int32_t* order, std::int64_t blocks, std::int64_t block,
                               int threads) {
  using B = xsimd::batch<float>;
  constexpr std::int64_t W = B::size, U = 8;
  const std::int64_t per = block / (W * U), n = blocks * per;  // runs of U batches
  float total = 0.f;
#pragma omp parallel num_threads(threads) reduction(+ : total)
  {
    const std::int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const std::int64_t i1 = n * (t + 1) / nt;
    B acc[U];
    for (auto& a : acc) a = B(0.f);
    for (std::int64_t i = n * t / nt; i < i1;) {
      const std::int64_t b = i / per, c0 = i - b * per, c1 = per < c0 + (i1 - i) ? per : c0 + (i1 - i);
      const float* base = x + (order ? std::int64_t(order[b]) : b) * block;
      for (std::int64_t c = c0; c < c1; ++c)
        for (std::int64_t u = 0; u < U; ++u) acc[u] += B::load_aligned(base + (c * U + u) * W);
      i += c1 - c0;
    }
    B s = acc[0];
    for (std::int64_t u = 1; u < U; ++u) s += acc[u];
    total += xsimd::hadd(s);
  }
  return total;
}

/// Sum of x[0, n) on `threads` threads (stream_sum_blocks in order): the read bandwidth.
inline float stream_sum(const float* x, std::int64_t n, int threads) {
  return stream_sum_blocks(x, nullptr, 1, n, threads);
}

}  // namespace attnkit_bench
