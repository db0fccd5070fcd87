// What --check-config and --print-default-config need: the commented default configuration
// of each daemon (config/*.toml, embedded at build time) and the keys each daemon knows.
#pragma once

#include <string_view>

#include "daemon/common.hpp"

namespace cpns::daemon {

enum class Program { kServer, kGw, kPne };

// The file config/cpns-server.toml, config/cpns-gw.toml or config/cpns-pne.toml as it was when
// the program was built.
std::string_view default_config(Program program);

// ConfigError for the first key (in file order) that `program` does not know, in tables and
// arrays of tables too: "FILE:LINE:COL: unknown key 'contol' (did you mean 'control'?)".
void check_known_keys(const Config& c, Program program);

}  // namespace cpns::daemon
