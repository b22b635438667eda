// attnkit::error: the one exception type of the library.
//
// Every public entry validates its arguments before any work starts and throws
// attnkit::error whose message names the entry, the argument, and the expected and actual
// values or shapes. Kernels themselves never throw.
#pragma once

#include <stdexcept>
#include <string>

namespace attnkit {

class error : public std::invalid_argument {
 public:
  // The const char* constructor is the one attnkit uses (see core/message.hpp).
  explicit error(const char* what) : std::invalid_argument(what) {}
  explicit error(const std::string& what) : std::invalid_argument(what) {}
};

}  // namespace attnkit
