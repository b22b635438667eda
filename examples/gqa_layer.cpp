// A causal grouped-query self-attention layer over Eigen matrices.
//
//   X [seq, d_model] --Wq--> Q [seq, 32 * 128]   --Wk--> K [seq, 8 * 128]   --Wv--> V [seq, 8 * 128]
//   O = attention(Q, K, V, causal)  [seq, 32 * 128]  --Wo--> Y [seq, d_model]
//
// The projections are row-major Eigen matrices; attnkit views them in place ([seq, heads *
// dim] is the [B=1, S, H, D] layout), so nothing is copied or transposed. Build with
// -O3 -march=native (and -fopenmp for threads). Run: ./gqa_layer [seq]
#include <attnkit/attnkit.hpp>
#include <attnkit/core/eigen.hpp>

#include <Eigen/Dense>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

int main(int argc, char** argv) {
  const int seq = argc > 1 ? std::atoi(argv[1]) : 2048;
  const int d_model = 1024, q_heads = 32, kv_heads = 8, head_dim = 128;

  Eigen::setNbThreads(1);  // our threads go to attention; keep the example's GEMMs simple
  const RowMatrix x = RowMatrix::Random(seq, d_model);
  const RowMatrix wq = RowMatrix::Random(d_model, q_heads * head_dim) / std::sqrt(float(d_model));
  const RowMatrix wk = RowMatrix::Random(d_model, kv_heads * head_dim) / std::sqrt(float(d_model));
  const RowMatrix wv = RowMatrix::Random(d_model, kv_heads * head_dim) / std::sqrt(float(d_model));
  const RowMatrix wo = RowMatrix::Random(q_heads * head_dim, d_model) / std::sqrt(float(q_heads * head_dim));

  const RowMatrix q = x * wq, k = x * wk, v = x * wv;
  RowMatrix o(seq, q_heads * head_dim);

  // The whole attention call: views over the matrices, causal mask, all threads.
  const auto t0 = std::chrono::steady_clock::now();
  attnkit::attention(attnkit::view_of(q, q_heads), attnkit::view_of(k, kv_heads), attnkit::view_of(v, kv_heads),
                     attnkit::view_of(o, q_heads), attnkit::causal{});
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const RowMatrix y = o * wo;

  const double flops = 4.0 * q_heads * head_dim * (double(seq) * (seq + 1) / 2);
  std::printf("attnkit %s: causal GQA attention, seq %d, %d query heads / %d kv heads, head_dim %d\n",
              attnkit::backend_name(), seq, q_heads, kv_heads, head_dim);
  std::printf("  attention %.2f ms, %.1f GFLOP/s; layer output y[0][0..3] = %.4f %.4f %.4f %.4f\n", secs * 1e3,
              flops / secs / 1e9, y(0, 0), y(0, 1), y(0, 2), y(0, 3));

  // Spot-check the first and last query rows of two heads against the double reference.
  const int rows = 1;
  double max_err = 0;
  for (int i : {0, seq - 1}) {
    const RowMatrix qi = q.middleRows(i, rows);
    const auto r = attnkit::reference::attention(attnkit::view_of(qi, q_heads),
                                                 attnkit::view_of(k.topRows(i + 1), kv_heads),
                                                 attnkit::view_of(v.topRows(i + 1), kv_heads), attnkit::causal{});
    for (int h : {0, q_heads - 1})
      for (int j = 0; j < head_dim; ++j)
        max_err = std::fmax(max_err, std::fabs(r.o(0, h, 0, j) - o(i, h * head_dim + j)));
  }
  std::printf("  max |attnkit - double reference| on spot-checked rows: %.3g\n", max_err);
  return max_err < 1e-4 ? 0 : 1;
}
