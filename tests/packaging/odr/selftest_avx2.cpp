#include "selftest.hpp"
void selftest_avx2(float* x, int n) { selftest_scale(x, n, 2.f); }
