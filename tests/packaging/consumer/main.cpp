// Consumer of an installed (find_package) or vendored (add_subdirectory) attnkit, static
// (compile-time ISA) mode.
#include "check.hpp"

int main() { return pkgtest::check_attention("consumer (static ISA)"); }
