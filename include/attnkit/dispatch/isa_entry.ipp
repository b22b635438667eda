// Body of one per-ISA translation unit of a runtime-dispatch build. The including file
// defines ATTNKIT_ENTRY_NS (isa_entry_sse2 | isa_entry_avx2 | isa_entry_avx512) and
// ATTNKIT_ENTRY_ARCH (the xsimd arch), and is compiled with that ISA's -march flags.
// Nothing but Arch-templated code and ISA-namespaced code may be emitted here
// (Note [ISA namespaces] in config.hpp).
#include "../kernels/dense.hpp"
#include "entries.hpp"

namespace attnkit {
namespace ATTNKIT_ENTRY_NS {
#define ATTNKIT_DENSE_MASK(M)                                              \
  void dense_forward(const dense_args& a, const M& mask) noexcept {        \
    ::attnkit::ATTNKIT_ISA_NS::detail::dense_forward<ATTNKIT_ENTRY_ARCH>(a, mask); \
  }
#include "variants.def"
#undef ATTNKIT_DENSE_MASK
}  // namespace ATTNKIT_ENTRY_NS
}  // namespace attnkit
