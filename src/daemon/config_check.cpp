#include "daemon/config_check.hpp"

#include <algorithm>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace cpns::daemon {

namespace {

using Keys = std::vector<std::string_view>;

struct Schema {
    Keys top;
    std::map<std::string_view, Keys> tables;  // [name]: its keys
    std::map<std::string_view, Keys> arrays;  // [[name]]: the keys of each entry
};

const Keys kDeviceKeys = {"id",
                          "eukey",
                          "eukey_file",
                          "previous_eukey",
                          "previous_eukey_file",
                          "discovery_group",
                          "discovery_interface",
                          "pan_tls",
                          "neighbour_ttl_ms",
                          "log_level",
                          "log_format",
                          "state_file",
                          "metrics",
                          "trace_file",
                          "keylog",
                          "control",
                          "control_token_file",
                          "control_listen"};  // deprecated alias of 'control' (TCP)
const Keys kCapabilities = {"device_type", "manufacturer", "model", "pan_technologies", "services"};

Keys with(Keys base, const Keys& more) {
    base.insert(base.end(), more.begin(), more.end());
    return base;
}

const Schema& schema(Program p) {
    static const Schema server{
        {"id", "listen", "store", "master_key_file", "entities", "log_level", "log_format",
         "max_connections", "max_connections_per_source", "control_listen", "metrics", "ready_file",
         "trace_file", "keylog", "api", "api_cert", "api_key", "api_tokens", "api_insecure_http"},
        {},
        {}};
    static const Schema gw{
        with(kDeviceKeys, {"server", "server_id", "pan_listen",
                           "control_max_connections_per_source", "default_pan_secure",
                           "pan_max_connections", "pan_max_connections_per_source", "ready_file"}),
        {{"capabilities", kCapabilities}, {"subscription", {"subscriber_id", "service_plan"}}},
        {{"pne", {"id", "pan_secure", "preassigned_key"}}}};
    static const Schema pne{
        with(kDeviceKeys, {"preassigned_key", "preassigned_key_file", "enough_ui", "pan_secure",
                           "gw", "accept_invitations"}),
        {{"capabilities", kCapabilities}},
        {{"content", {"id", "media_type", "title", "size_bytes"}}}};
    switch (p) {
        case Program::kServer:
            return server;
        case Program::kGw:
            return gw;
        case Program::kPne:
            return pne;
    }
    return server;
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
        std::size_t diag = row[0];
        row[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            const std::size_t up = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
            diag = up;
        }
    }
    return row[b.size()];
}

struct Unknown {
    toml::source_position at;
    std::string key;   // as written, with its table: "capabilities.modle"
    std::string hint;  // the closest known key, "" if none is close
};

bool before(const toml::source_position& a, const toml::source_position& b) {
    return a.line != b.line ? a.line < b.line : a.column < b.column;
}

void keep_first(std::optional<Unknown>& first, Unknown u) {
    if (!first || before(u.at, first->at)) first = std::move(u);
}

std::string closest(std::string_view key, const Keys& known) {
    std::string best;
    std::size_t best_d = std::max<std::size_t>(2, key.size() / 3) + 1;
    for (auto k : known)
        if (const std::size_t d = edit_distance(key, k); d < best_d) {
            best_d = d;
            best = k;
        }
    return best;
}

void scan(const toml::table& t, const Keys& known, const std::string& prefix,
          std::optional<Unknown>& first, const Schema* nested) {
    for (const auto& [k, node] : t) {
        const std::string_view key = k.str();
        const bool ok = std::find(known.begin(), known.end(), key) != known.end();
        if (nested) {
            if (auto it = nested->tables.find(key); it != nested->tables.end()) {
                if (const auto* sub = node.as_table())
                    scan(*sub, it->second, std::string(key) + ".", first, nullptr);
                continue;
            }
            if (auto it = nested->arrays.find(key); it != nested->arrays.end()) {
                if (const auto* arr = node.as_array())
                    for (std::size_t i = 0; i < arr->size(); ++i)
                        if (const auto* e = (*arr)[i].as_table())
                            scan(*e, it->second, std::string(key) + "[" + std::to_string(i) + "].",
                                 first, nullptr);
                continue;
            }
        }
        if (ok) continue;
        Keys candidates = known;
        if (nested) {
            for (const auto& [name, keys] : nested->tables) candidates.push_back(name);
            for (const auto& [name, keys] : nested->arrays) candidates.push_back(name);
        }
        keep_first(first,
                   Unknown{k.source().begin, prefix + std::string(key), closest(key, candidates)});
    }
}

}  // namespace

void check_known_keys(const Config& c, Program program) {
    const Schema& s = schema(program);
    std::optional<Unknown> first;
    scan(c.table(), s.top, "", first, &s);
    if (!first) return;
    std::string text = c.path() + ":" + std::to_string(first->at.line) + ":" +
                       std::to_string(first->at.column) + ": unknown key '" + first->key + "'";
    if (!first->hint.empty()) text += " (did you mean '" + first->hint + "'?)";
    throw ConfigError(text);
}

}  // namespace cpns::daemon
