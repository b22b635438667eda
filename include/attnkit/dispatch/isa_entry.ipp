// Body of one per-ISA translation unit of a runtime-dispatch build. The including file
// defines ATTNKIT_ENTRY_NS (isa_entry_sse2 | isa_entry_avx2 | isa_entry_avx512) and
// ATTNKIT_ENTRY_ARCH (the xsimd arch), and is compiled with that ISA's -march flags.
// Nothing but Arch-templated code and ISA-namespaced code may be emitted here
// (Note [ISA namespaces] in config.hpp).
#include "../kernels/decode.hpp"
#include "../kernels/topk.hpp"
#include "../kernels/block_topk.hpp"
#include "../kernels/linear.hpp"
#include "entries.hpp"

namespace attnkit {
namespace ATTNKIT_ENTRY_NS {
#define ATTNKIT_ENTRY(NAME)                                                 \
  void NAME(const dense_args& a, const mask_ref& policy) noexcept {         \
    ::attnkit::ATTNKIT_ISA_NS::detail::NAME<ATTNKIT_ENTRY_ARCH>(a, policy); \
  }
#include "variants.def"
#undef ATTNKIT_ENTRY
#define ATTNKIT_LINEAR_ENTRY(NAME) \
  void NAME(const linear_args& a) noexcept { ::attnkit::ATTNKIT_ISA_NS::detail::NAME<ATTNKIT_ENTRY_ARCH>(a); }
#include "linear_variants.def"
#undef ATTNKIT_LINEAR_ENTRY
}  // namespace ATTNKIT_ENTRY_NS
}  // namespace attnkit
