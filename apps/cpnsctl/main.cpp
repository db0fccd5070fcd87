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
#include <thread>

#include "api/admin.hpp"
#include "api/client.hpp"
#include "api/tokens.hpp"
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
using api::time_text;

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

// Refuses to go on when a key file to be written exists (before the API is asked to make the
// key, which it returns only once).
void require_absent(const std::string& path) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0)
        throw ConfigError(path + " exists already; not overwriting a key file");
}

// Ends cpnsctl after a refusal: status 1 for "no such entity/PN", 2 for anything else, with the
// same message whether it came from the store or from the API.
// How long `cpnsctl rekey` waits for the outcome of the re-key it ordered, and how often it
// looks at the audit log meanwhile.
constexpr std::int64_t kRekeyWaitTimeout = 30'000;
constexpr int kRekeyPollMs = 200;

[[noreturn]] void refused(const std::string& message, bool not_found) {
    std::cerr << "cpnsctl: " << message << "\n";
    std::exit(not_found ? 1 : 2);
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
    std::string api_url, token_file, api_ca;
    app.add_option("--api", api_url,
                   "work through a server's management API instead of the database, e.g. "
                   "https://127.0.0.1:8443 (list, show, provision, rotate, disable, enable, "
                   "revoke, pns, pn delete, audit; the output is the same)");
    app.add_option("--token-file", token_file,
                   "with --api: file holding the API token (64 hex digits, mode 0600)");
    app.add_option("--api-ca", api_ca,
                   "with --api over HTTPS: CA certificate (PEM) to verify the server with, e.g. "
                   "its self-signed certificate (default: the system's CAs)");

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
    auto* rekey = app.add_subcommand(
        "rekey",
        "give a PNE a new LocalEUKey in a PN: the order is recorded, a running server sends it to "
        "the PN's PN GW, which re-keys the PNE as in an establishment; prints the outcome");
    std::string rekey_pn, rekey_pne, rekey_gw;
    bool rekey_no_wait = false;
    rekey->add_option("--pn", rekey_pn, "PN ID")->required();
    rekey->add_option("--pne", rekey_pne, "PNE ID")->required();
    rekey->add_option("--gw", rekey_gw, "its PN GW (needed when two PN GWs use the PN ID)");
    rekey->add_flag("--no-wait", rekey_no_wait,
                    "only record the order (the outcome goes to the audit log)");
    auto* exp = app.add_subcommand("export", "export the PN Inventory as JSON");
    std::string export_out;
    exp->add_option("--out", export_out, "file to write (default stdout)");
    auto* audit = app.add_subcommand("audit", "show the newest establishment records");
    std::size_t audit_limit = 50;
    audit->add_option("--limit", audit_limit, "how many");
    auto* check = app.add_subcommand(
        "check",
        "check the store's consistency and the integrity of every entity row (exit 1 if not)");
    auto* token = app.add_subcommand("token", "management API tokens");
    token->require_subcommand(1);
    auto* token_new = token->add_subcommand(
        "new",
        "make a random API token, print it once (64 hex digits) and append its hash to the token "
        "file (created with mode 0600)");
    std::string token_name, token_role, token_tokens;
    token_new->add_option("--name", token_name, "the token's name (who uses it)")->required();
    token_new->add_option("--role", token_role, "admin or read")
        ->required()
        ->check(CLI::IsMember({"admin", "read"}));
    token_new->add_option("--tokens", token_tokens, "the server's api_tokens file")->required();
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
        if (*token_new) {
            if (!api::valid_token_name(token_name))
                throw ConfigError("--name '" + token_name +
                                  "': 1 to 64 letters, digits, '-', '_', '.' or '@'");
            // Refuse a name the file has already (the server would refuse the file).
            if (const auto f = read_file_if_exists(token_tokens, "token file", 256 * 1024,
                                                   FileSecrecy::kSecret)) {
                const api::TokenFile existing = api::TokenFile::parse(f->content, token_tokens);
                for (const auto& e : existing.entries())
                    if (e.name == token_name)
                        throw ConfigError("token name '" + token_name + "' is in " + token_tokens +
                                          " already");
            }
            OsRandom rnd;
            std::array<std::uint8_t, api::kTokenOctets> raw{};
            rnd.fill(raw);
            std::string tok = to_hex(raw);
            wipe(raw.data(), raw.size());
            api::append_token_line(token_tokens,
                                   api::token_line(token_name, *api::parse_role(token_role), tok));
            std::cout << tok << "\n";
            wipe(tok.data(), tok.size());
            std::cerr << "token '" << token_name << "' (" << token_role << ") added to "
                      << token_tokens
                      << "; it is shown only this once (the file keeps its SHA-256)\n";
            return 0;
        }
        const std::string actor = "cpnsctl";
        std::unique_ptr<api::ApiClient> client;
        std::unique_ptr<store::Store> store;
        if (!api_url.empty()) {
            if (*imp || *exp || *check || *rekey)
                throw ConfigError("this subcommand works on the database only, not with --api");
            if (token_file.empty()) throw ConfigError("--api needs --token-file");
            client =
                std::make_unique<api::ApiClient>(api_url, api::read_token_file(token_file), api_ca);
        } else {
            store = store::open_store(url, store::load_master_key(master_key_file));
        }
        const std::string v1 = "/api/v1";
        // The PNs as the printers take them, from either source.
        const auto pn_views = [&](const std::optional<std::string>& gw, bool only_orphaned) {
            if (!client) return api::list_pns(*store, gw, only_orphaned);
            std::string q;
            if (gw) q += "gw=" + api::url_encode(*gw);
            if (only_orphaned) q += std::string(q.empty() ? "" : "&") + "orphaned=true";
            std::vector<api::PnView> out;
            const auto answer = client->get(v1 + "/pns" + (q.empty() ? "" : "?" + q));
            for (const auto& j : answer.at("pns")) out.push_back(api::pn_from_json(j));
            return out;
        };
        try {
            if (*prov) {
                const auto k = parse_entity_kind(kind).value();  // --kind is checked by CLI11
                const std::string out = key_out.empty() ? id + ".key" : key_out;
                if (client) {
                    require_absent(out);
                    api::ApiClient& c = *client;
                    const auto j =
                        c.post(v1 + "/entities",
                               {{"id", id}, {"kind", kind}, {"device_type", device_type}});
                    std::string hex = j.at("key").get<std::string>();
                    const auto key = SecretKey::from_hex(hex);
                    wipe(hex.data(), hex.size());
                    if (!key) throw std::runtime_error("the API returned no usable key");
                    write_key_file(out, *key);
                } else {
                    OsRandom rnd;
                    const SecretKey key = rnd.key();
                    (void)api::provision(*store, id, k, device_type, key, actor,
                                         [&] { write_key_file(out, key); });
                }
                std::cout << "provisioned " << kind << " " << id << "; its EUKey is in " << out
                          << " (give it to the device as eukey_file; mode 0600)\n";
            } else if (*rotate) {
                const Millis grace = api::parse_duration(grace_text);
                const std::string out = rotate_out.empty() ? rotate_id + ".key" : rotate_out;
                EntityKind k = EntityKind::kPne;
                std::int64_t version = 0, until = 0;
                if (client) {
                    require_absent(out);
                    const auto j =
                        client->post(v1 + "/entities/" + api::url_encode(rotate_id) + "/rotate",
                                     {{"grace", grace_text}});
                    std::string hex = j.at("key").get<std::string>();
                    const auto key = SecretKey::from_hex(hex);
                    wipe(hex.data(), hex.size());
                    if (!key) throw std::runtime_error("the API returned no usable key");
                    write_key_file(out, *key);
                    k = api::entity_from_json(j.at("entity")).kind;
                    version = j.at("key_version").get<std::int64_t>();
                    until = j.at("previous_key_valid_until_ms").get<std::int64_t>();
                } else {
                    OsRandom rnd;
                    const SecretKey fresh = rnd.key();
                    // The key file first (refusing to replace one): the device can be given the
                    // key only if the store then takes it; a failed store write removes it.
                    bool written = false;
                    try {
                        const auto r = api::rotate(*store, rotate_id, fresh, grace, actor, [&] {
                            write_key_file(out, fresh);
                            written = true;
                        });
                        k = r.entity.kind;
                        version = r.key_version;
                        until = r.previous_valid_until_ms;
                    } catch (...) {
                        if (written) ::unlink(out.c_str());
                        throw;
                    }
                }
                std::cout << "rotated the EUKey of " << kind_name(k) << " " << rotate_id
                          << ": key version " << version << ", new EUKey in " << out
                          << " (mode 0600); the previous EUKey is valid until " << time_text(until)
                          << " (" << grace / 1000 << " s), then refused with 'key expired'\n";
            } else if (*imp) {
                std::size_t added = 0, replaced = 0, kept = 0;
                api::require_master_key_matches(*store);
                for (auto e : read_entities(import_file)) {
                    const auto old = store->get_entity(e.id);
                    if (old && !replace) {
                        ++kept;
                        continue;
                    }
                    if (old && old->status == EntityStatus::kRevoked)
                        e.status = EntityStatus::kRevoked;
                    store->put_entity(e);
                    ++(old ? replaced : added);
                }
                std::cout << "imported into " << store->backend() << ": " << added << " added, "
                          << replaced << " replaced, " << kept
                          << " already stored and kept (use --replace to change their keys)\n";
            } else if (*list) {
                std::optional<EntityKind> k;
                if (!list_kind.empty()) k = parse_entity_kind(list_kind);
                std::vector<store::StoredEntity> all;
                if (client) {
                    const auto answer =
                        client->get(v1 + "/entities" + (k ? "?kind=" + list_kind : ""));
                    for (const auto& j : answer.at("entities"))
                        all.push_back(api::entity_from_json(j));
                } else {
                    all = store->list_entities(k);
                }
                std::cout << std::left << std::setw(24) << "ID" << std::setw(6) << "KIND"
                          << std::setw(10) << "STATUS"
                          << "CREATED\n";
                for (const auto& e : all)
                    std::cout << std::setw(24) << e.id << std::setw(6) << kind_name(e.kind)
                              << std::setw(10) << status_name(e.status)
                              << time_text(e.created_at_ms) << "\n";
                std::cerr << all.size() << " entit" << (all.size() == 1 ? "y" : "ies") << "\n";
            } else if (*show) {
                std::optional<store::StoredEntity> e;
                if (client)
                    e = api::entity_from_json(
                        client->get(v1 + "/entities/" + api::url_encode(show_id)));
                else
                    e = store->get_entity(show_id);
                if (!e) refused("no entity " + show_id, true);
                std::cout << "id:       " << e->id << "\nkind:     " << kind_name(e->kind)
                          << "\nstatus:   " << status_name(e->status)
                          << "\ncreated:  " << time_text(e->created_at_ms)
                          << "\nupdated:  " << time_text(e->updated_at_ms)
                          << "\ndevice:   " << e->capabilities.device_type()
                          << "\nEUKey:    (sealed in the store), key version " << e->key_version
                          << "\n";
                if (e->previous) {
                    const std::int64_t now_ms = api::wall_now_ms();
                    std::cout << "previous: EUKey of key version " << e->key_version - 1
                              << (now_ms < e->previous->expires_at_ms ? ", valid until "
                                                                      : ", expired at ")
                              << time_text(e->previous->expires_at_ms) << "\n";
                }
                const auto all = pn_views(std::nullopt, false);
                std::size_t own = 0;
                for (const auto& p : all) {
                    if (p.inventory.gw_id() == show_id) ++own;
                    for (const auto& m : p.inventory.members())
                        if (m.pne_id() == show_id)
                            std::cout << "member of " << p.inventory.pn_id() << " at "
                                      << p.inventory.gw_id() << "\n";
                }
                if (e->kind == EntityKind::kGw) std::cout << "PNs:      " << own << "\n";
            } else if (*disable || *revoke || *enable) {
                const auto st = *enable   ? EntityStatus::kActive
                                : *revoke ? EntityStatus::kRevoked
                                          : EntityStatus::kDisabled;
                if (client) {
                    const std::string action = *enable ? "enable" : *revoke ? "revoke" : "disable";
                    (void)client->post(
                        v1 + "/entities/" + api::url_encode(status_id) + "/" + action,
                        nlohmann::json::object());
                } else {
                    (void)api::set_status(*store, status_id, st, actor);
                }
                std::cout << status_id << " is now " << status_name(st)
                          << (st == EntityStatus::kActive
                                  ? ""
                                  : "; its next authentication fails with 'revoked'")
                          << "\n";
            } else if (*pns) {
                const auto shown =
                    pn_views(pns_gw.empty() ? std::nullopt : std::optional(pns_gw), pns_orphaned);
                for (const auto& p : shown) {
                    const auto& inv = p.inventory;
                    std::cout << inv.pn_id() << "  " << inv.gw_id() << "  "
                              << time_text(static_cast<std::int64_t>(inv.registered_at_ms()))
                              << "  revision " << inv.revision() << "  members:";
                    for (const auto& m : inv.members()) std::cout << " " << m.pne_id();
                    if (p.orphaned) std::cout << "  ORPHANED (PN GW " << p.gw_status << ")";
                    std::cout << "\n";
                }
                std::cerr << shown.size() << " PN(s)\n";
            } else if (*rekey) {
                std::string gw;
                const std::int64_t ordered_ms = api::wall_now_ms();
                try {
                    gw = api::order_rekey(*store, rekey_gw, rekey_pn, rekey_pne, actor);
                } catch (const api::AdminError& e) {
                    refused(e.what(), e.code() != api::AdminError::Code::kInvalid);
                }
                if (rekey_no_wait) {
                    std::cout << "rekey PN " << rekey_pn << " (" << rekey_pne
                              << "): ordered; the outcome goes to the audit log\n";
                    return 0;
                }
                // The server records the PN GW's report (or why there is none) in the audit
                // log, under the operation, naming the PNE first.
                const std::string mark = "rekey: " + rekey_pne + ": ";
                for (std::int64_t waited = 0; waited < kRekeyWaitTimeout; waited += kRekeyPollMs) {
                    for (const auto& r : store->audit_log(100)) {
                        if (r.at_ms < ordered_ms - 1000 || r.gw_id != gw || r.pn_id != rekey_pn ||
                            !r.pne_id.empty() || r.detail.rfind(mark, 0) != 0)
                            continue;
                        const std::string what = r.detail.substr(mark.size());
                        if (r.success) {
                            std::cout << "rekey PN " << rekey_pn << " (" << rekey_pne << "): done, "
                                      << what << "\n";
                            return 0;
                        }
                        std::cout << "rekey PN " << rekey_pn << " (" << rekey_pne
                                  << "): failed: " << r.reason << " (" << what << ")\n";
                        return 1;
                    }
                    std::this_thread::sleep_for(std::chrono::milliseconds(kRekeyPollMs));
                }
                std::cout << "rekey PN " << rekey_pn << " (" << rekey_pne
                          << "): failed: timeout (no outcome within " << kRekeyWaitTimeout / 1000
                          << " s; is a CPNS Server running? see cpnsctl audit)\n";
                return 1;
            } else if (*pn_delete)
                try {
                    std::string gw;
                    std::size_t members = 0;
                    if (client) {
                        gw = pn_delete_gw;
                        if (gw.empty()) {
                            std::vector<std::string> gws;
                            for (const auto& p : pn_views(std::nullopt, false))
                                if (p.inventory.pn_id() == pn_delete_id)
                                    gws.push_back(p.inventory.gw_id());
                            if (gws.size() > 1)
                                refused("PN " + pn_delete_id +
                                            " is registered by several PN GWs; name one with --gw",
                                        false);
                            if (gws.empty())
                                refused("PN " + pn_delete_id + " not deleted: unknown pn", true);
                            gw = gws.front();
                        }
                        const auto j = client->del(v1 + "/pns/" + api::url_encode(gw) + "/" +
                                                   api::url_encode(pn_delete_id));
                        members = j.at("members").get<std::size_t>();
                    } else {
                        const auto d = api::delete_pn(*store, pn_delete_gw, pn_delete_id, actor);
                        gw = d.gw_id;
                        members = d.members;
                    }
                    std::cout << "PN " << pn_delete_id << " of " << gw << " deleted (" << members
                              << " member(s) told through the PN GW by the running servers)\n";
                } catch (const api::AdminError& e) {
                    // A deletion the store refused: status 1; an ambiguous PN ID: 2.
                    refused(e.what(), e.code() != api::AdminError::Code::kInvalid);
                } catch (const api::ApiError& e) {
                    refused(e.what(), true);
                }
            else if (*exp) {
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
                std::vector<store::AuditRecord> records;
                if (client) {
                    const auto answer =
                        client->get(v1 + "/audit?limit=" + std::to_string(audit_limit));
                    for (const auto& j : answer.at("records"))
                        records.push_back(api::audit_from_json(j));
                } else {
                    records = store->audit_log(audit_limit);
                }
                for (const auto& r : records)
                    std::cout << time_text(r.at_ms) << "  " << r.server_id << "  " << r.gw_id
                              << "  " << r.pn_id << "  "
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
        } catch (const api::AdminError& e) {
            refused(e.what(), e.code() == api::AdminError::Code::kNotFound);
        } catch (const api::ApiError& e) {
            refused(e.what(), e.status() == 404);
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
