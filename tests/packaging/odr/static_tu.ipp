// Body of static_tu_sse2.cpp and static_tu_avx2.cpp: the same call to attnkit::attention in
// two translation units of one program, compiled with different ISA flags (static mode).
// Only raw pointers cross the boundary, so the objects hold nothing but attnkit's code.
#include <attnkit/attnkit.hpp>

#include "static_tu.hpp"

const char* STATIC_TU_FN(const float* q, const float* k, const float* v, float* out, float* lse) {
  using namespace pkgtest;
  attnkit::attention(attnkit::make_bhsd(q, B, HQ, LQ, D), attnkit::make_bhsd(k, B, HK, LK, D),
                     attnkit::make_bhsd(v, B, HK, LK, DV), attnkit::make_bhsd(out, B, HQ, LQ, DV),
                     attnkit::causal{}, attnkit::attention_options{}, attnkit::make_bhsd(lse, B, HQ, LQ, 1));
  return attnkit::backend_name();
}
