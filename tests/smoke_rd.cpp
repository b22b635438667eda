#include <attnkit/attnkit.hpp>
#include <cstdio>
#include <vector>
int main() {
  using namespace attnkit;
  std::vector<float> q(2 * 4 * 9 * 20, 0.5f), k(2 * 2 * 11 * 20, 0.25f), v(2 * 2 * 11 * 7, 1.f), o(2 * 4 * 9 * 7);
  for (isa i : {isa::sse2, isa::avx2, isa::avx512}) {
    set_isa(i);
    attention(make_bhsd(q.data(), 2, 4, 9, 20), make_bhsd(k.data(), 2, 2, 11, 20), make_bhsd(v.data(), 2, 2, 11, 7),
              make_bhsd(o.data(), 2, 4, 9, 7), causal{});
    std::printf("%s -> %s out=%g\n", isa_name(i), backend_name(), o[5]);
  }
}
