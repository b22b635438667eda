// Baseline x86-64 flags (namespace attnkit::isa_sse2).
#define STATIC_TU_FN static_tu_sse2
#include "static_tu.ipp"
