// The machine ceilings that suites measure in the same run as their kernels: Eigen's fp32
// GEMM (compute) and a vectorised streaming sum (read bandwidth). Each suite keeps its own
// benchmark function, name, counters and label; only the measured loop is shared. Apart
// from bench_common.hpp because of the Eigen and xsimd includes.
#pragma once

#include <cstdint>

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

/// Sum of x[0, n) on `threads` threads, 8 vector accumulators each; x aligned for
/// xsimd's batch<float>, n a multiple of 8 batches (the remainder is not read).
inline float stream_sum(const float* x, std::int64_t n, int threads) {
  using B = xsimd::batch<float>;
  constexpr std::int64_t W = B::size, U = 8;
  float total = 0.f;
#pragma omp parallel num_threads(threads) reduction(+ : total)
  {
    B acc[U];
    for (auto& a : acc) a = B(0.f);
#pragma omp for schedule(static)
    for (std::int64_t i = 0; i < n / (W * U); ++i)
      for (std::int64_t u = 0; u < U; ++u) acc[u] += B::load_aligned(x + (i * U + u) * W);
    B s = acc[0];
    for (std::int64_t u = 1; u < U; ++u) s += acc[u];
    total += xsimd::hadd(s);
  }
  return total;
}

}  // namespace attnkit_bench
