// --version of every program.
#pragma once

#include <string>
#include <string_view>

namespace cpns {

// "PROGRAM VERSION\nOpenSSL X.Y.Z ...": the project version (with `git describe` when built
// from a git checkout) and the OpenSSL library this process runs with.
std::string version_text(std::string_view program);

}  // namespace cpns
