// Compiled with -mavx2 -mfma (namespace attnkit::isa_fma3_avx2).
#if !defined(__AVX2__) || !defined(__FMA__)
#error "static_tu_avx2.cpp must be compiled with -mavx2 -mfma"
#endif
#define STATIC_TU_FN static_tu_avx2
#include "static_tu.ipp"
