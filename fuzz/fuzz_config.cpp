// libFuzzer target: the daemons' configuration readers (src/daemon/common.*, *_options_from
// and load_entities) on fuzzed TOML text. The first byte picks the reader: 0 a PNE's file
// (pne_options_from), 1 a PN GW's (gw_options_from), 2 the server's settings (as
// cpns-server reads them), 3 a provisioning file (load_entities). The text goes through a
// file, as Config::load() reads one.
//
// Invariants, besides no crash, UB or leak: every refusal is a ConfigError (the daemons turn
// it into a message and exit status 2; anything else would be a "fatal" internal error), no
// error message repeats a key given in the file, and a configuration that loads gives a role
// whose first messages are valid (an accepted file must not make a device that cannot join).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <variant>
#include <vector>

#include "daemon/common.hpp"
#include "daemon/gw_daemon.hpp"
#include "daemon/pne_daemon.hpp"
#include "daemon/server_daemon.hpp"
#include "fuzz/roles.hpp"

namespace {

using namespace cpns;
using namespace cpns::daemon;
constexpr const char* kTarget = "cpns-fuzz-config";

const std::string& scratch_path() {
    static const std::string p = [] {
        const char* dir = std::getenv("TMPDIR");
        return std::string(dir && *dir ? dir : "/tmp") + "/cpns-fuzz-config-" +
               std::to_string(getpid()) + ".toml";
    }();
    return p;
}

// Key-like strings of the file (values of settings whose name contains "key"), which no error
// message may repeat.
// The string values of key settings (`out`) and of every other setting (`others`).
void collect_keys(const toml::node& node, const std::string& name, std::vector<std::string>& out,
                  std::vector<std::string>& others) {
    if (const auto* t = node.as_table()) {
        for (const auto& [k, v] : *t) collect_keys(v, std::string(k.str()), out, others);
    } else if (const auto* a = node.as_array()) {
        for (const auto& v : *a) collect_keys(v, name, out, others);
    } else if (const auto s = node.value<std::string>()) {
        // A secret is hex (64 digits when valid); text that is not hex, or too short to be
        // more than a fragment, may well occur in a message's own wording.
        const bool hex = s->find_first_not_of("0123456789abcdefABCDEF") == std::string::npos;
        if (name.find("key") != std::string::npos && name.find("file") == std::string::npos &&
            s->size() >= 32 && hex)
            out.push_back(*s);
        else
            others.push_back(*s);
    }
}

void check_pne(const PneOptions& o) {
    DeterministicRandom random(1);
    Pne pne(o.role, random);
    const fuzz::EffectChecker check(kTarget);
    for (const auto& fx : {pne.discover(0), pne.start_setup("gw-1", pb::SETUP_ALL, {}, 0)})
        for (const auto& e : fx)
            if (const auto* s = std::get_if<SendEffect>(&e)) check.send(*s);
}

void check_gw(const GwOptions& o) {
    DeterministicRandom random(1);
    Gateway gw(o.role, random);
    const fuzz::EffectChecker check(kTarget);
    for (const auto& fx : {gw.discover(0), gw.invite({"pne-a"}, 0)})
        for (const auto& e : fx)
            if (const auto* s = std::get_if<SendEffect>(&e)) check.send(*s);
}

void read(std::uint8_t which, const std::string& path) {
    switch (which % 4) {
        case 0:
            check_pne(pne_options_from(Config::load(path)));
            break;
        case 1:
            check_gw(gw_options_from(Config::load(path)));
            break;
        case 2: {
            const Config c = Config::load(path);
            (void)c.str("id", "cpns-server");
            (void)parse_address(c.str("listen", "127.0.0.1:7000"), "listen");
            (void)c.str("entities");
            (void)c.str("store", "sqlite:cpns-server.db");
            (void)c.str("master_key_file");
            (void)c.str("log_level", "info");
            break;
        }
        default: {
            MemoryDirectory dir;
            load_entities(path, dir);
            break;
        }
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    spdlog::set_level(spdlog::level::off);  // load_entities logs what it loaded
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0 || size > 64 * 1024) return 0;
    const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
    {
        std::ofstream f(scratch_path(), std::ios::binary | std::ios::trunc);
        f << text;
    }
    try {
        read(data[0], scratch_path());
    } catch (const ConfigError& e) {
        const std::string what = e.what();
        if (what.empty()) fuzz::fail(kTarget, "an empty configuration error");
        std::vector<std::string> keys, others;
        try {
            collect_keys(toml::parse(text), "", keys, others);
        } catch (const toml::parse_error&) {
        }
        // An error may quote a setting that is not a key (e.g. a bad address) even when the
        // input repeats a key's text inside it; only a key that no other setting holds counts.
        const auto quoted_elsewhere = [&](const std::string& k) {
            for (const auto& v : others)
                if (v.find(k) != std::string::npos) return true;
            return false;
        };
        for (const auto& k : keys)
            if (!quoted_elsewhere(k) && what.find(k) != std::string::npos)
                fuzz::fail(kTarget, "a configuration error repeats a key: " + what);
    }
    return 0;
}
