// Entry points of the two static-mode translation units (static_tu.ipp).
#pragma once

#include "sizes.hpp"

const char* static_tu_sse2(const float* q, const float* k, const float* v, float* out, float* lse);
const char* static_tu_avx2(const float* q, const float* k, const float* v, float* out, float* lse);
