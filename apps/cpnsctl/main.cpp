// cpnsctl: the operator's tool for the CPNS Server's store (SQLite or PostgreSQL).
#include <CLI/CLI.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>

#include <chrono>
#include <fstream>
#include <iomanip>
#include <iostream>

#include "common/version.hpp"
#include "daemon/common.hpp"
#include "daemon/server_daemon.hpp"
#include "store/store.hpp"

using namespace cpns;
using namespace cpns::daemon;

namespace {

std::string kind_name(EntityKind k) {
    return std::string(to_string(k));
}
// The kind words --kind accepts (core's words).
std::vector<std::string> kind_words() {
    return {kind_name(EntityKind::kPne), kind_name(EntityKind::kGw)};
}
std::string status_name(EntityStatus s) {
    return std::string(to_string(s));
}
std::string time_text(std::int64_t ms) {
    if (ms <= 0) return "-";
    const std::time_t t = static_cast<std::time_t>(ms / 1000);
    std::tm tm{};
    gmtime_r(&t, &tm);
    std::ostringstream o;
    o << std::put_time(&tm, "%Y-%m-%dT%H:%M:%SZ");
    return o.str();
}

// Writes a key file readable by its owner only (created 0600, never world-readable even
// for a moment). Refuses to replace an existing file.
void write_key_file(const std::string& path, const SecretKey& key) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        throw ConfigError(errno == EEXIST ? path + " exists already; not overwriting a key file"
                                          : "cannot create " + path + ": " + std::strerror(errno));
    std::string line = key.to_hex() + "\n";
    const bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()) &&
                    ::fsync(fd) == 0;
    wipe(line.data(), line.size());
    ::close(fd);
    if (!ok) throw std::runtime_error("cannot write " + path);
}

// A duration for --grace: a non-negative integer with a unit (ms, s, m, h, d), e.g. "24h",
// "3s"; at most kMaxRotationGrace.
Millis parse_duration(const std::string& text) {
    std::size_t digits = 0;
    while (digits < text.size() && digits < 12 &&
           std::isdigit(static_cast<unsigned char>(text[digits])))
        ++digits;
    const std::string unit = text.substr(digits);
    Millis scale = 0;
    if (unit == "ms")
        scale = 1;
    else if (unit == "s")
        scale = 1000;
    else if (unit == "m")
        scale = 60'000;
    else if (unit == "h")
        scale = 3'600'000;
    else if (unit == "d")
        scale = 86'400'000;
    if (digits == 0 || scale == 0)
        throw ConfigError("--grace '" + text +
                          "': want a number and a unit (ms, s, m, h or d), e.g. 24h");
    const Millis value = std::stoll(text.substr(0, digits));
    if (value > kMaxRotationGrace / scale)
        throw ConfigError("--grace '" + text + "': longer than the maximum of " +
                          std::to_string(kMaxRotationGrace / 86'400'000) + " days");
    return value * scale;
}

// Every entity must load under the master key given (its sealed EUKey opens and its row is
// authentic), before anything new is sealed under it: a wrong key would otherwise seal new
// entries the server cannot read. A row refused by the integrity check stops it too: run
// `cpnsctl check`, then revoke that entity (which destroys its EUKey).
void require_master_key_matches(store::Store& st) {
    try {
        (void)st.list_entities();
    } catch (const store::StoreError& e) {
        throw ConfigError(std::string("the store does not load under this master key (") +
                          e.what() + "); nothing written. Run `cpnsctl check`");
    }
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{
        "cpnsctl: provision and inspect the CPNS Server's store. Works on SQLite "
        "(sqlite:PATH) and PostgreSQL (postgresql://...) alike. EUKeys are sealed at rest under "
        "the master key (--master-key-file or $CPNS_MASTER_KEY); cpnsctl never prints one."};
    app.require_subcommand(1);
    std::string url =
        std::getenv("CPNS_STORE") ? std::getenv("CPNS_STORE") : "sqlite:cpns-server.db";
    std::string master_key_file;
    app.add_option("--store", url, "the store (default $CPNS_STORE, else sqlite:cpns-server.db)");
    app.add_option("--master-key-file", master_key_file, "master key file (else $CPNS_MASTER_KEY)");

    auto* gen_master = app.add_subcommand("new-master-key", "write a fresh master key file (0600)");
    std::string master_out;
    gen_master->add_option("file", master_out, "where to write it")->required();

    auto* prov = app.add_subcommand(
        "provision", "create an entity with a fresh EUKey and write the device's key file");
    std::string id, kind = "pne", key_out, device_type;
    prov->add_option("id", id, "entity ID")->required();
    prov->add_option("--kind", kind, "pne or gw")->check(CLI::IsMember(kind_words()));
    prov->add_option("--key-out", key_out, "device key file to write (default <id>.key)");
    prov->add_option("--device-type", device_type, "device type recorded with the entity");

    auto* rotate = app.add_subcommand(
        "rotate",
        "give an entity a fresh EUKey and write the device's new key file; the old EUKey stays "
        "valid for the grace period, then fails with 'key expired'");
    std::string rotate_id, rotate_out, grace_text = "24h";
    rotate->add_option("id", rotate_id, "entity ID")->required();
    rotate->add_option("--grace", grace_text,
                       "how long the old EUKey stays valid (ms, s, m, h, d; default 24h; 0s: "
                       "refused at once)");
    rotate->add_option("--key-out", rotate_out,
                       "new device key file to write (default <id>.key; never overwritten)");

    auto* imp = app.add_subcommand("import",
                                   "import an entities file ([[entity]] id, kind, eukey, status)");
    std::string import_file;
    bool replace = false;
    imp->add_option("file", import_file, "entities TOML file")
        ->required()
        ->check(CLI::ExistingFile);
    imp->add_flag("--replace", replace,
                  "replace the EUKey of entities already stored (a revoked one stays revoked)");

    auto* list = app.add_subcommand("list", "list entities");
    std::string list_kind;
    list->add_option("--kind", list_kind, "pne or gw")->check(CLI::IsMember(kind_words()));
    auto* show = app.add_subcommand("show", "show one entity (never its key)");
    std::string show_id;
    show->add_option("id", show_id, "entity ID")->required();

    std::string status_id;
    auto* disable =
        app.add_subcommand("disable", "disable an entity: it fails authentication with 'revoked'");
    disable->add_option("id", status_id, "entity ID")->required();
    auto* revoke = app.add_subcommand(
        "revoke", "revoke an entity for good: it fails authentication with 'revoked'");
    revoke->add_option("id", status_id, "entity ID")->required();
    auto* enable = app.add_subcommand("enable", "make a disabled entity active again");
    enable->add_option("id", status_id, "entity ID")->required();

    auto* pns = app.add_subcommand("pns", "list the registered PNs");
    std::string pns_gw;
    bool pns_orphaned = false;
    pns->add_option("--gw", pns_gw, "only the PNs of this PN GW");
    pns->add_flag("--orphaned", pns_orphaned,
                  "only the PNs whose PN GW is disabled, revoked or no longer provisioned");
    auto* pn = app.add_subcommand("pn", "act on one registered PN");
    pn->require_subcommand(1);
    auto* pn_delete = pn->add_subcommand(
        "delete",
        "delete a PN: it is dissolved in the store at once, and the running servers tell its PN "
        "GW (which tells its members)");
    std::string pn_delete_id, pn_delete_gw;
    pn_delete->add_option("id", pn_delete_id, "PN ID")->required();
    pn_delete->add_option("--gw", pn_delete_gw, "its PN GW (needed when two PN GWs use the ID)");
    auto* exp = app.add_subcommand("export", "export the PN Inventory as JSON");
    std::string export_out;
    exp->add_option("--out", export_out, "file to write (default stdout)");
    auto* audit = app.add_subcommand("audit", "show the newest establishment records");
    std::size_t audit_limit = 50;
    audit->add_option("--limit", audit_limit, "how many");
    auto* check = app.add_subcommand(
        "check",
        "check the store's consistency and the integrity of every entity row (exit 1 if not)");
    app.set_version_flag("--version", cpns::version_text("cpnsctl"),
                         "print the version and the OpenSSL version, and exit");
    CLI11_PARSE(app, argc, argv);

    try {
        if (*gen_master) {
            OsRandom rnd;
            write_key_file(master_out, rnd.key());
            std::cout << "master key written to " << master_out
                      << " (mode 0600); keep it apart from the database\n";
            return 0;
        }
        auto store = store::open_store(url, store::load_master_key(master_key_file));
        if (*prov || *imp || *rotate) require_master_key_matches(*store);
        if (*prov) {
            if (!valid_id(id)) throw ConfigError("'" + id + "' is not a valid entity ID");
            if (store->get_entity(id))
                throw ConfigError(id + " exists already; choose another ID (IDs are never reused)");
            OsRandom rnd;
            store::StoredEntity e;
            e.id = id;
            e.kind = parse_entity_kind(kind).value();  // --kind is checked by CLI11
            e.eukey = rnd.key();
            e.capabilities.set_device_type(device_type);
            const std::string out = key_out.empty() ? id + ".key" : key_out;
            write_key_file(out, e.eukey);
            store->put_entity(e);
            std::cout << "provisioned " << kind << " " << id << "; its EUKey is in " << out
                      << " (give it to the device as eukey_file; mode 0600)\n";
        } else if (*rotate) {
            const Millis grace = parse_duration(grace_text);
            const auto e = store->get_entity(rotate_id);
            if (!e) {
                std::cerr << "cpnsctl: no entity " << rotate_id << "\n";
                return 1;
            }
            if (e->status == EntityStatus::kRevoked)
                throw ConfigError(rotate_id +
                                  " is revoked; revocation is final (provision a new entity)");
            OsRandom rnd;
            const SecretKey fresh = rnd.key();
            const std::string out = rotate_out.empty() ? rotate_id + ".key" : rotate_out;
            // The key file first (refusing to replace one): the device can be given the key
            // only if the store then takes it; a failed store write leaves a file to delete.
            write_key_file(out, fresh);
            const std::int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                                         std::chrono::system_clock::now().time_since_epoch())
                                         .count();
            std::optional<std::int64_t> version;
            try {
                version = store->rotate_eukey(rotate_id, fresh, now + grace);
            } catch (...) {
                ::unlink(out.c_str());
                throw;
            }
            if (!version) {
                ::unlink(out.c_str());
                std::cerr << "cpnsctl: no entity " << rotate_id << "\n";
                return 1;
            }
            store::AuditRecord rec;
            rec.server_id = "cpnsctl";
            (e->kind == EntityKind::kGw ? rec.gw_id : rec.pne_id) = rotate_id;
            rec.success = true;
            rec.reason = "key rotated";
            rec.detail = "EUKey rotated: key version " + std::to_string(*version) +
                         "; the previous EUKey is valid until " + time_text(now + grace);
            store->audit(rec);
            std::cout << "rotated the EUKey of " << kind_name(e->kind) << " " << rotate_id
                      << ": key version " << *version << ", new EUKey in " << out
                      << " (mode 0600); the previous EUKey is valid until "
                      << time_text(now + grace) << " (" << grace / 1000
                      << " s), then refused with 'key expired'\n";
        } else if (*imp) {
            std::size_t added = 0, replaced = 0, kept = 0;
            for (auto e : read_entities(import_file)) {
                const auto old = store->get_entity(e.id);
                if (old && !replace) {
                    ++kept;
                    continue;
                }
                if (old && old->status == EntityStatus::kRevoked) e.status = EntityStatus::kRevoked;
                store->put_entity(e);
                ++(old ? replaced : added);
            }
            std::cout << "imported into " << store->backend() << ": " << added << " added, "
                      << replaced << " replaced, " << kept
                      << " already stored and kept (use --replace to change their keys)\n";
        } else if (*list) {
            std::optional<EntityKind> k;
            if (!list_kind.empty()) k = parse_entity_kind(list_kind);
            const auto all = store->list_entities(k);
            std::cout << std::left << std::setw(24) << "ID" << std::setw(6) << "KIND"
                      << std::setw(10) << "STATUS"
                      << "CREATED\n";
            for (const auto& e : all)
                std::cout << std::setw(24) << e.id << std::setw(6) << kind_name(e.kind)
                          << std::setw(10) << status_name(e.status) << time_text(e.created_at_ms)
                          << "\n";
            std::cerr << all.size() << " entit" << (all.size() == 1 ? "y" : "ies") << "\n";
        } else if (*show) {
            auto e = store->get_entity(show_id);
            if (!e) {
                std::cerr << "cpnsctl: no entity " << show_id << "\n";
                return 1;
            }
            std::cout << "id:       " << e->id << "\nkind:     " << kind_name(e->kind)
                      << "\nstatus:   " << status_name(e->status)
                      << "\ncreated:  " << time_text(e->created_at_ms)
                      << "\nupdated:  " << time_text(e->updated_at_ms)
                      << "\ndevice:   " << e->capabilities.device_type()
                      << "\nEUKey:    (sealed in the store), key version " << e->key_version
                      << "\n";
            if (e->previous) {
                const std::int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                                std::chrono::system_clock::now().time_since_epoch())
                                                .count();
                std::cout << "previous: EUKey of key version " << e->key_version - 1
                          << (now_ms < e->previous->expires_at_ms ? ", valid until "
                                                                  : ", expired at ")
                          << time_text(e->previous->expires_at_ms) << "\n";
            }
            int member_of = 0;
            for (const auto& inv : store->list_pns())
                for (const auto& m : inv.members())
                    if (m.pne_id() == show_id) {
                        std::cout << "member of " << inv.pn_id() << " at " << inv.gw_id() << "\n";
                        ++member_of;
                    }
            if (e->kind == EntityKind::kGw)
                std::cout << "PNs:      " << store->list_pns(show_id).size() << "\n";
            (void)member_of;
        } else if (*disable || *revoke || *enable) {
            const auto st = *enable   ? EntityStatus::kActive
                            : *revoke ? EntityStatus::kRevoked
                                      : EntityStatus::kDisabled;
            if (*enable) {
                auto e = store->get_entity(status_id);
                if (e && e->status == EntityStatus::kRevoked)
                    throw ConfigError(status_id +
                                      " is revoked; revocation is final (provision a new entity)");
            }
            if (!store->set_status(status_id, st)) {
                std::cerr << "cpnsctl: no entity " << status_id << "\n";
                return 1;
            }
            std::cout << status_id << " is now " << status_name(st)
                      << (st == EntityStatus::kActive
                              ? ""
                              : "; its next authentication fails with 'revoked'")
                      << "\n";
        } else if (*pns) {
            const auto all = pns_gw.empty() ? store->list_pns() : store->list_pns(pns_gw);
            // A PN is orphaned when its PN GW is no longer active (disabled, revoked, gone):
            // nobody keeps it; `cpnsctl pn delete` removes it.
            std::map<std::string, std::string> gw_state;
            std::size_t shown = 0;
            for (const auto& inv : all) {
                auto it = gw_state.find(inv.gw_id());
                if (it == gw_state.end()) {
                    std::string state = "gone";
                    try {
                        if (const auto gw = store->get_entity(inv.gw_id()))
                            state = std::string(to_string(gw->status));
                    } catch (const store::StoreError&) {
                        state = "refused";
                    }
                    it = gw_state.emplace(inv.gw_id(), state).first;
                }
                const bool orphaned = it->second != "active";
                if (pns_orphaned && !orphaned) continue;
                ++shown;
                std::cout << inv.pn_id() << "  " << inv.gw_id() << "  "
                          << time_text(static_cast<std::int64_t>(inv.registered_at_ms()))
                          << "  revision " << inv.revision() << "  members:";
                for (const auto& m : inv.members()) std::cout << " " << m.pne_id();
                if (orphaned) std::cout << "  ORPHANED (PN GW " << it->second << ")";
                std::cout << "\n";
            }
            std::cerr << shown << " PN(s)\n";
        } else if (*pn_delete) {
            std::string gw = pn_delete_gw;
            if (gw.empty()) {
                std::vector<std::string> gws;
                for (const auto& inv : store->list_pns())
                    if (inv.pn_id() == pn_delete_id) gws.push_back(inv.gw_id());
                if (gws.size() > 1)
                    throw std::runtime_error(
                        "PN " + pn_delete_id +
                        " is registered by several PN GWs; name one with --gw");
                if (!gws.empty()) gw = gws.front();
            }
            const ChangeResult r = gw.empty() ? ChangeResult{pb::UNKNOWN_PN, {}, false, {}}
                                              : store->delete_pn(gw, pn_delete_id);
            if (r.reason != pb::REASON_NONE) {
                std::cerr << "cpnsctl: PN " << pn_delete_id
                          << " not deleted: " << reason_name(r.reason) << "\n";
                return 1;
            }
            store->audit({0, "cpnsctl", gw, pn_delete_id, "", true, "none",
                          "pn delete: dissolved by the operator"});
            std::cout << "PN " << pn_delete_id << " of " << gw << " deleted (" << r.before.size()
                      << " member(s) told through the PN GW by the running servers)\n";
        } else if (*exp) {
            const auto all = store->list_pns();
            std::ostringstream o;
            o << "[";
            for (std::size_t i = 0; i < all.size(); ++i)
                o << (i ? ",\n " : "\n ") << message_json(all[i]);
            o << "\n]\n";
            if (export_out.empty()) {
                std::cout << o.str();
            } else {
                std::ofstream f(export_out);
                f << o.str();
                if (!f) throw std::runtime_error("cannot write " + export_out);
                std::cerr << "exported " << all.size() << " PN(s) to " << export_out << "\n";
            }
        } else if (*audit) {
            for (const auto& r : store->audit_log(audit_limit))
                std::cout << time_text(r.at_ms) << "  " << r.server_id << "  " << r.gw_id << "  "
                          << r.pn_id << "  "
                          << (!r.pne_id.empty() ? r.pne_id
                              : r.pn_id.empty() ? "-"
                                                : "(PN)")
                          << "  " << (r.success ? "ok" : "FAILED: " + r.reason)
                          << (r.detail.empty() ? "" : "  " + r.detail) << "\n";
        } else if (*check) {
            std::vector<std::string> problems;
            try {
                problems = store->check();
            } catch (const store::StoreError& e) {
                problems.push_back(e.what());
            }
            for (const auto& p : problems) std::cout << "problem: " << p << "\n";
            if (!problems.empty()) {
                std::cout << problems.size() << " problem(s)\n";
                return 1;
            }
            std::cout << "consistent (" << store->list_pns().size() << " PN(s), "
                      << store->list_entities().size() << " entities)\n";
            return 0;
        }
        return 0;
    } catch (const ConfigError& e) {
        std::cerr << "cpnsctl: " << e.what() << "\n";
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "cpnsctl: " << e.what() << "\n";
        return 2;
    }
}
