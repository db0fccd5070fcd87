// cpns-load links: opens many real PSK-TLS links to one daemon, holds them idle, and reports.
// As provisioned PN GWs to a cpns-server (identity = the PN GW's ID, PSK derived from its
// EUKey), or as PNEs to a cpns-gw PAN endpoint (identity "pre:<pne>", the pre-assigned key).
// For the per-link memory and per-handshake CPU figures (docs/benchmarks.md, rows e and f).
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace cpns::load {

struct LinksOptions {
    std::string as = "gw";   // "gw" (to a cpns-server) or "pne" (to a cpns-gw PAN endpoint)
    std::string entities;    // gw: an entities file; pne: a file with [[pne]] tables
    std::string to;          // host:port of the daemon
    int count = 0;           // links to open; 0 = one per identity in the file
    int concurrency = 64;    // handshakes in flight at once
    int time_limit_s = 120;  // opening all of them, bounded
    int hold_s = 0;          // then hold them this long; 0 = until SIGINT/SIGTERM (or the limit)
    std::string log_level = "warn";
};

// The `links` and `provision-pan` subcommands, on `app`.
CLI::App* add_links_command(CLI::App& app, LinksOptions& options);
CLI::App* add_provision_pan_command(CLI::App& app, int& pnes, std::string& out);

int run_links(const LinksOptions& options);
// Writes [[pne]] tables (IDs lpne-00001..., pan_secure = false, a random pre-assigned key
// each) to append to a cpns-gw configuration; `links --as pne` reads the same file.
int provision_pan(int pnes, const std::string& out);

}  // namespace cpns::load
