// Declarations of the per-ISA entry points of a runtime-dispatch build.
//
// Each entry namespace (isa_entry_sse2, isa_entry_avx2, isa_entry_avx512) is defined in one
// translation unit compiled with that ISA's flags (see dispatch/isa_entry.ipp and
// cmake/AttnkitRuntimeDispatch.cmake). These are plain functions over plain structs, so the
// baseline translation unit can call them without seeing any SIMD type.
#pragma once

#include "../core/args.hpp"
#include "../core/linear_args.hpp"
#include "../mask/policy.hpp"

namespace attnkit {
#define ATTNKIT_ENTRY(NAME) void NAME(const dense_args& a, const mask_ref& policy) noexcept;
namespace isa_entry_sse2 {
#include "variants.def"
}
namespace isa_entry_avx2 {
#include "variants.def"
}
namespace isa_entry_avx512 {
#include "variants.def"
}
#undef ATTNKIT_ENTRY
#define ATTNKIT_LINEAR_ENTRY(NAME) void NAME(const linear_args& a) noexcept;
namespace isa_entry_sse2 {
#include "linear_variants.def"
}
namespace isa_entry_avx2 {
#include "linear_variants.def"
}
namespace isa_entry_avx512 {
#include "linear_variants.def"
}
#undef ATTNKIT_LINEAR_ENTRY
}  // namespace attnkit
