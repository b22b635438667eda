// Negative control for check_weak_symbols.sh: an inline function outside any ISA namespace,
// kept out of line, emitted by a baseline and an AVX2 object. The checker must flag it.
#pragma once

__attribute__((noinline)) inline void selftest_scale(float* x, int n, float s) {
  for (int i = 0; i < n; ++i) x[i] *= s;
}
