// Consumer built with attnkit_enable_runtime_dispatch(): checks every ISA path this CPU runs.
#include "check.hpp"

int main() {
#if !ATTNKIT_RUNTIME_DISPATCH
#error "attnkit_enable_runtime_dispatch() did not define ATTNKIT_RUNTIME_DISPATCH"
#endif
  int failures = 0;
  const attnkit::isa best = attnkit::supported_isa();
  for (attnkit::isa i : {attnkit::isa::sse2, attnkit::isa::avx2, attnkit::isa::avx512}) {
    if (int(i) > int(best)) {
      std::printf("runtime dispatch %s: not supported by this CPU, skipped\n", attnkit::isa_name(i));
      continue;
    }
    attnkit::set_isa(i);
    if (attnkit::active_isa() != i) {
      std::printf("runtime dispatch: set_isa(%s) gave %s\n", attnkit::isa_name(i),
                  attnkit::isa_name(attnkit::active_isa()));
      ++failures;
    }
    char label[64];
    std::snprintf(label, sizeof label, "consumer (runtime dispatch, %s)", attnkit::isa_name(i));
    failures += pkgtest::check_attention(label);
  }
  attnkit::reset_isa();
  return failures == 0 ? 0 : 1;
}
