// The web console's files (web/console/), embedded at build time by
// src/api/embed_console.cmake into a generated console_files.cpp.
#pragma once

#include <cstddef>

namespace cpns::api {

struct ConsoleFile {
    const char* path;  // relative to web/console/, e.g. "index.html"
    const char* type;  // Content-Type
    const unsigned char* data;
    std::size_t size;
};
extern const ConsoleFile kConsoleFiles[];
extern const std::size_t kConsoleFileCount;

}  // namespace cpns::api
