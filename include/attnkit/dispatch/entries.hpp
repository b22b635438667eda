// Declarations of the per-ISA entry points of a runtime-dispatch build.
//
// Each entry namespace (isa_entry_sse2, isa_entry_avx2, isa_entry_avx512) is defined in one
// translation unit compiled with that ISA's flags (see dispatch/isa_entry.ipp and
// cmake/AttnkitRuntimeDispatch.cmake). These are plain functions over plain structs, so the
// baseline translation unit can call them without seeing any SIMD type.
#pragma once

#include "../core/args.hpp"
#include "../mask/masks.hpp"

#include <type_traits>

namespace attnkit {
#define ATTNKIT_DENSE_MASK(M) void dense_forward(const dense_args& a, const M& mask) noexcept;
namespace isa_entry_sse2 {
#include "variants.def"
}
namespace isa_entry_avx2 {
#include "variants.def"
}
namespace isa_entry_avx512 {
#include "variants.def"
}
#undef ATTNKIT_DENSE_MASK

namespace internal {
template <class Mask>
struct is_dispatched_mask : std::false_type {};
#define ATTNKIT_DENSE_MASK(M) \
  template <>                 \
  struct is_dispatched_mask<M> : std::true_type {};
#include "variants.def"
#undef ATTNKIT_DENSE_MASK
}  // namespace internal
}  // namespace attnkit
