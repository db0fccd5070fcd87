// The store's logic, written once over the Db surface (db.hpp) for both backends, and
// open_store, which picks the backend from the URL.
#include <google/protobuf/util/message_differencer.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <limits>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <utility>

#include "store/db.hpp"
#include "store/sealed.hpp"
#include "store/store.hpp"

namespace cpns::store {
namespace {

using detail::Cell;
using detail::Db;
using detail::Param;
using detail::Row;
using detail::Transaction;

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// The words the store keeps for kinds and statuses are core's (to_string / parse_entity_*).
std::string word(EntityKind kind) {
    return std::string(to_string(kind));
}

std::string word(EntityStatus status) {
    if (!parse_entity_status(to_string(status))) throw StoreError("invalid entity status");
    return std::string(to_string(status));
}

const std::string& text(const Cell& cell) {
    if (!cell) throw StoreError("unexpected NULL in a NOT NULL column");
    return *cell;
}

std::int64_t integer(const Cell& cell) {
    const std::string& s = text(cell);
    std::int64_t value = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
    if (ec != std::errc() || end != s.data() + s.size()) {
        throw StoreError("not an integer in an integer column: '" + s + "'");
    }
    return value;
}

bool boolean(const Cell& cell) {
    const std::string& s = text(cell);
    return s == "1" || s == "t" || s == "true";
}

ByteView bytes_of(const std::string& s) {
    return as_bytes(s);
}

std::string_view as_text(const Bytes& b) {
    return {reinterpret_cast<const char*>(b.data()), b.size()};
}

template <typename Message>
std::string serialize(const Message& m, const char* what) {
    std::string out;
    if (!m.SerializeToString(&out)) throw StoreError(std::string("cannot serialize ") + what);
    return out;
}

std::string pn_name(const std::string& gw_id, const std::string& pn_id) {
    return gw_id + "/" + pn_id;
}

// An entity row with its version record (columns in the order of RawEntity).
constexpr const char* kEntityColumns =
    "SELECT e.id, e.kind, e.sealed_eukey, e.status, e.capabilities, e.created_at_ms,"
    " e.updated_at_ms, e.key_version, e.revision, e.row_mac, v.key_version, v.revision, v.mac,"
    " e.previous_sealed_eukey, e.previous_expires_at_ms"
    " FROM entities e LEFT JOIN entity_versions v ON v.id = e.id";

// The schema version whose migration re-seals the rows of schema version 1 (see migrate).
constexpr int kIntegrityMigration = 2;

constexpr std::string_view kRowLabel = "cpns-entity-row-v1";
// The row MAC of a row that holds a previous EUKey (after a rotation): the fields of
// kRowLabel, then the sealed previous EUKey and its expiry (decimal ms).
constexpr std::string_view kRotatedRowLabel = "cpns-entity-row-v2";
constexpr std::string_view kVersionLabel = "cpns-entity-version-v1";

// Key version: +1 on every EUKey replacement. Revision: +1 on every change of the row.
struct Versions {
    std::int64_t key = 0;
    std::int64_t revision = 0;
    bool operator==(const Versions&) const = default;
};

// An entity row as stored, not yet verified.
struct RawEntity {
    std::string id, kind, sealed, status, capabilities;
    std::int64_t created_at_ms = 0, updated_at_ms = 0;
    Versions versions;
    Cell row_mac;
    std::optional<Versions> recorded;  // the version record, if any
    Cell recorded_mac;
    // After a rotation: the previous EUKey, sealed for key version versions.key - 1, and the
    // end of its grace period. Both or neither.
    Cell previous_sealed;
    Cell previous_expires;
};

// The previous EUKey columns of a row as they are written: sealed blob and expiry.
struct PreviousColumns {
    std::string sealed;
    std::int64_t expires_at_ms = 0;
};

RawEntity raw_entity(const Row& row) {
    RawEntity r;
    r.id = text(row.at(0));
    r.kind = text(row[1]);
    r.sealed = text(row[2]);
    r.status = text(row[3]);
    r.capabilities = text(row[4]);
    r.created_at_ms = integer(row[5]);
    r.updated_at_ms = integer(row[6]);
    r.versions = {integer(row[7]), integer(row[8])};
    r.row_mac = row[9];
    if (row.at(12)) r.recorded = Versions{integer(row[10]), integer(row[11])};
    r.recorded_mac = row[12];
    r.previous_sealed = row.at(13);
    r.previous_expires = row.at(14);
    return r;
}

std::string versions_text(const Versions& v) {
    return "key version " + std::to_string(v.key) + ", revision " + std::to_string(v.revision);
}

bool same_mac(const RowMac& expected, const Cell& stored) {
    return stored && ct_equal(expected, as_bytes(*stored));
}

// A verified row: its EUKey, or why it is refused.
struct Opened {
    std::optional<SecretKey> eukey;
    std::optional<PreviousEuKey> previous;
    std::string problem;     // empty: authentic
    bool wrong_key = false;  // the EUKey does not open and nothing shows the master key right
};

class SqlStore final : public Store {
  public:
    SqlStore(std::unique_ptr<Db> db, const SecretKey& master_key)
        : db_(std::move(db)), sealer_(master_key) {
        migrate();
    }

    std::string backend() const override { return db_->backend(); }

    void put_entity(const StoredEntity& e) override {
        if (e.id.empty()) throw StoreError("put_entity: empty entity id");
        if (e.eukey.is_zero()) {
            throw StoreError("put_entity: refusing an all-zero EUKey for " + e.id);
        }
        Transaction txn(*db_, Transaction::Kind::kWrite);
        const Versions v = next_versions(e.id, true);
        const Bytes sealed = sealer_.seal({e.id, e.kind, v.key}, e.eukey);
        const std::string caps = serialize(e.capabilities, "capabilities");
        const RowMac mac = row_mac(e.id, e.kind, e.status, v, as_text(sealed), caps, nullptr);
        const std::int64_t now = now_ms();
        db_->run(
            "INSERT INTO entities (id, kind, sealed_eukey, status, capabilities, created_at_ms,"
            " updated_at_ms, key_version, revision, row_mac)"
            " VALUES ($1, $2, $3, $4, $5, COALESCE(CAST($6 AS BIGINT), CAST($7 AS BIGINT)),"
            " CAST($8 AS BIGINT), $9, $10, $11)"
            " ON CONFLICT (id) DO UPDATE SET kind = excluded.kind,"
            " sealed_eukey = excluded.sealed_eukey, status = excluded.status,"
            " capabilities = excluded.capabilities,"
            " created_at_ms = COALESCE(CAST($6 AS BIGINT), entities.created_at_ms),"
            " updated_at_ms = excluded.updated_at_ms, key_version = excluded.key_version,"
            " revision = excluded.revision, row_mac = excluded.row_mac,"
            " previous_sealed_eukey = NULL, previous_expires_at_ms = NULL",
            {Param::of(e.id), Param::of(word(e.kind)), Param::blob(sealed),
             Param::of(word(e.status)), Param::blob(caps),
             e.created_at_ms != 0 ? Param::of(e.created_at_ms) : Param::null(), Param::of(now),
             Param::of(e.updated_at_ms != 0 ? e.updated_at_ms : now), Param::of(v.key),
             Param::of(v.revision), Param::blob(ByteView(mac))});
        record_versions(e.id, v);
        txn.commit();
    }

    std::optional<StoredEntity> get_entity(const std::string& id) override {
        const detail::Result r =
            db_->run(std::string(kEntityColumns) + " WHERE e.id = $1", {Param::of(id)});
        if (r.rows.empty()) return std::nullopt;
        return decode_entity(r.rows.front());
    }

    std::vector<StoredEntity> list_entities(std::optional<EntityKind> kind) override {
        const detail::Result r = kind ? db_->run(std::string(kEntityColumns) + " WHERE e.kind = $1",
                                                 {Param::of(word(*kind))})
                                      : db_->run(kEntityColumns);
        std::vector<StoredEntity> out;
        out.reserve(r.rows.size());
        for (const Row& row : r.rows) out.push_back(decode_entity(row));
        // Sorted here, byte-wise: the databases' collations may differ.
        std::sort(out.begin(), out.end(),
                  [](const StoredEntity& a, const StoredEntity& b) { return a.id < b.id; });
        return out;
    }

    // The row is verified first: a status change never authenticates a row altered outside
    // the store. A refused row takes only a revocation, which also destroys its EUKey.
    bool set_status(const std::string& id, EntityStatus status) override {
        // The row is rewritten only if it is still the one verified (its revision): a
        // concurrent put_entity on PostgreSQL (READ COMMITTED) makes this attempt start over.
        for (int attempt = 0; attempt < 5; ++attempt) {
            if (const std::optional<bool> done = try_set_status(id, status)) return *done;
        }
        throw StoreError("set_status: entity " + id + " keeps changing concurrently; try again");
    }

    std::optional<std::int64_t> rotate_eukey(const std::string& id, const SecretKey& eukey,
                                             std::int64_t expires_at_ms) override {
        if (eukey.is_zero()) throw StoreError("rotate_eukey: refusing an all-zero EUKey for " + id);
        for (int attempt = 0; attempt < 5; ++attempt) {
            Transaction txn(*db_, Transaction::Kind::kWrite);
            const detail::Result r =
                db_->run(std::string(kEntityColumns) + " WHERE e.id = $1", {Param::of(id)});
            if (r.rows.empty()) return std::nullopt;
            const RawEntity raw = raw_entity(r.rows.front());
            const Opened opened = open_row(raw);
            if (!opened.problem.empty())
                throw StoreError(refusal(raw.id, opened) + "; nothing changed");
            const EntityStatus status = *parse_entity_status(raw.status);
            if (status == EntityStatus::kRevoked)
                throw StoreError("entity " + id + " is revoked; its EUKey is not rotated");
            if (ct_equal(eukey.view(), opened.eukey->view()))
                throw StoreError("rotate_eukey: the new EUKey of " + id +
                                 " equals the current one");
            // The current sealed EUKey moves as it is (sealed for its own key version, which
            // becomes versions.key - 1); an older previous EUKey is dropped.
            const Versions v{raw.versions.key + 1, raw.versions.revision + 1};
            const PreviousColumns previous{raw.sealed, expires_at_ms};
            if (!reseal(raw, *parse_entity_kind(raw.kind), status, eukey, v, true, &previous))
                continue;  // changed meanwhile (rolled back); read it again
            txn.commit();
            return v.key;
        }
        throw StoreError("rotate_eukey: entity " + id + " keeps changing concurrently; try again");
    }

    PutResult register_pn(const pb::PnInventory& inv) override {
        if (!registrable(inv)) return PutResult::kError;
        Transaction txn(*db_, Transaction::Kind::kWrite);
        const PutResult r = insert_pn(inv);
        if (r == PutResult::kOk) txn.commit();  // else rolled back: nothing written
        return r;
    }

    // Group commit: one transaction for all, and a handful of statements for the whole group
    // rather than several per PN (each statement is a round trip to PostgreSQL): which PNs
    // exist already, the PN GWs' and the members' PN counts, the members' entity rows, then
    // one insert of the PN rows and one of the member rows (chunked, kGroupRowsPerStatement).
    // Each PN gets the result register_pn would give it, in the same order of checks;
    // duplicates, limits and refused members are decided before anything is written, the
    // limits counting the PNs accepted earlier in the same group. A PN that another
    // connection inserts meanwhile is found by ON CONFLICT DO NOTHING RETURNING and is a
    // duplicate like any other.
    static constexpr std::size_t kGroupRowsPerStatement = 500;

    // "$k, $k+1, ..." for n placeholders starting after `used`.
    static std::string placeholders(std::size_t used, std::size_t n) {
        std::string out;
        for (std::size_t i = 0; i < n; ++i) out += (i ? ", $" : "$") + std::to_string(used + i + 1);
        return out;
    }

    // Runs `sql_head + " (" placeholders ")" + sql_tail` over `ids` in chunks; all rows.
    std::vector<detail::Row> run_in(const std::string& sql_head, const std::string& sql_tail,
                                    const std::vector<std::string>& ids) {
        std::vector<detail::Row> rows;
        for (std::size_t at = 0; at < ids.size(); at += kGroupRowsPerStatement) {
            const std::size_t n = std::min(kGroupRowsPerStatement, ids.size() - at);
            std::vector<Param> params;
            params.reserve(n);
            for (std::size_t i = 0; i < n; ++i) params.push_back(Param::of(ids[at + i]));
            detail::Result r =
                db_->run(sql_head + " (" + placeholders(0, n) + ")" + sql_tail, params);
            for (auto& row : r.rows) rows.push_back(std::move(row));
        }
        return rows;
    }

    std::vector<PutResult> register_pns(const std::vector<const pb::PnInventory*>& invs) override {
        std::vector<PutResult> results(invs.size(), PutResult::kError);
        if (invs.empty()) return results;
        std::set<std::string> gws;
        std::set<std::string> pnes;
        std::set<std::pair<std::string, std::string>> keys;
        for (const pb::PnInventory* inv : invs) {
            if (!registrable(*inv)) continue;
            gws.insert(inv->gw_id());
            keys.emplace(inv->gw_id(), inv->pn_id());
            for (const pb::PnMember& m : inv->members()) pnes.insert(m.pne_id());
        }
        if (keys.empty()) return results;  // none registrable: nothing to write
        const std::vector<std::string> gw_ids(gws.begin(), gws.end());
        const std::vector<std::string> pne_ids(pnes.begin(), pnes.end());

        Transaction txn(*db_, Transaction::Kind::kWrite);
        // The PN GWs' PN counts, and which PNs of the group are registered already.
        std::map<std::string, std::int64_t> gw_count;
        for (const detail::Row& row :
             run_in("SELECT gw_id, COUNT(*) FROM pns WHERE gw_id IN", " GROUP BY gw_id", gw_ids))
            gw_count[row.at(0).value_or("")] = integer(row.at(1));
        std::set<std::pair<std::string, std::string>> existing;
        const std::vector<std::pair<std::string, std::string>> key_list(keys.begin(), keys.end());
        for (std::size_t at = 0; at < key_list.size(); at += kGroupRowsPerStatement) {
            const std::size_t n = std::min(kGroupRowsPerStatement, key_list.size() - at);
            std::string pairs;
            std::vector<Param> params;
            params.reserve(2 * n);
            for (std::size_t j = 0; j < n; ++j) {
                pairs += (j ? ", (" : "(") + placeholders(params.size(), 2) + ")";
                params.push_back(Param::of(key_list[at + j].first));
                params.push_back(Param::of(key_list[at + j].second));
            }
            const detail::Result r = db_->run(
                "SELECT gw_id, pn_id FROM pns WHERE (gw_id, pn_id) IN (VALUES " + pairs + ")",
                params);
            for (const detail::Row& row : r.rows)
                existing.emplace(row.at(0).value_or(""), row.at(1).value_or(""));
        }
        std::map<std::string, std::int64_t> pne_count;
        for (const detail::Row& row :
             run_in("SELECT pne_id, COUNT(*) FROM pn_members WHERE pne_id IN", " GROUP BY pne_id",
                    pne_ids))
            pne_count[row.at(0).value_or("")] = integer(row.at(1));
        // The kind as authenticated: a refused member row throws (nothing written).
        std::set<std::string> known_pnes;
        for (const detail::Row& row :
             run_in(std::string(kEntityColumns) + " WHERE e.id IN", "", pne_ids)) {
            const StoredEntity e = decode_entity(row);
            if (e.kind == EntityKind::kPne) known_pnes.insert(e.id);
        }

        // register_pn's checks, in its order, PN by PN.
        std::vector<std::size_t> accepted;
        for (std::size_t i = 0; i < invs.size(); ++i) {
            const pb::PnInventory& inv = *invs[i];
            if (!registrable(inv)) continue;  // kError
            const auto key = std::make_pair(inv.gw_id(), inv.pn_id());
            if (existing.count(key) != 0) {
                results[i] = PutResult::kDuplicate;
                continue;
            }
            if (gw_count[inv.gw_id()] + 1 > static_cast<std::int64_t>(kMaxPnsPerGw) ||
                std::any_of(inv.members().begin(), inv.members().end(), [&](const auto& m) {
                    return pne_count[m.pne_id()] >= static_cast<std::int64_t>(kMaxPnsPerPne);
                })) {
                results[i] = PutResult::kLimit;
                continue;
            }
            if (std::any_of(inv.members().begin(), inv.members().end(),
                            [&](const auto& m) { return known_pnes.count(m.pne_id()) == 0; }))
                continue;  // kError
            results[i] = PutResult::kOk;
            existing.insert(key);  // a second entry for this PN in the group is a duplicate
            ++gw_count[inv.gw_id()];
            for (const pb::PnMember& m : inv.members()) ++pne_count[m.pne_id()];
            accepted.push_back(i);
        }

        // The PN rows; those another connection registered meanwhile come back as duplicates.
        std::set<std::pair<std::string, std::string>> inserted;
        for (std::size_t at = 0; at < accepted.size(); at += kGroupRowsPerStatement) {
            const std::size_t n = std::min(kGroupRowsPerStatement, accepted.size() - at);
            std::string values;
            std::vector<Param> params;
            params.reserve(4 * n);
            for (std::size_t j = 0; j < n; ++j) {
                const pb::PnInventory& inv = *invs[accepted[at + j]];
                pb::PnInventory header = inv;
                header.clear_members();
                values += (j ? ", (" : "(") + placeholders(params.size(), 4) + ")";
                params.push_back(Param::of(inv.gw_id()));
                params.push_back(Param::of(inv.pn_id()));
                params.push_back(Param::of(static_cast<std::int64_t>(inv.registered_at_ms())));
                params.push_back(Param::blob(serialize(header, "the PN Inventory")));
            }
            const detail::Result r = db_->run(
                "INSERT INTO pns (gw_id, pn_id, registered_at_ms, inventory) VALUES " + values +
                    " ON CONFLICT (gw_id, pn_id) DO NOTHING RETURNING gw_id, pn_id",
                params);
            for (const detail::Row& row : r.rows)
                inserted.emplace(row.at(0).value_or(""), row.at(1).value_or(""));
        }
        // The member rows of the PNs inserted.
        std::string values;
        std::vector<Param> params;
        std::size_t rows = 0;
        auto flush = [&] {
            if (rows == 0) return;
            db_->run("INSERT INTO pn_members (gw_id, pn_id, pne_id, member_index, member) VALUES " +
                         values,
                     params);
            values.clear();
            params.clear();
            rows = 0;
        };
        for (const std::size_t i : accepted) {
            const pb::PnInventory& inv = *invs[i];
            if (inserted.count({inv.gw_id(), inv.pn_id()}) == 0) {
                results[i] = PutResult::kDuplicate;
                continue;
            }
            std::int64_t index = 0;
            for (const pb::PnMember& m : inv.members()) {
                values += (rows ? ", (" : "(") + placeholders(params.size(), 5) + ")";
                params.push_back(Param::of(inv.gw_id()));
                params.push_back(Param::of(inv.pn_id()));
                params.push_back(Param::of(m.pne_id()));
                params.push_back(Param::of(index++));
                params.push_back(Param::blob(serialize(m, "a PN member")));
                if (++rows == kGroupRowsPerStatement) flush();
            }
        }
        flush();
        txn.commit();
        return results;
    }

    static bool registrable(const pb::PnInventory& inv) {
        if (inv.gw_id().empty() || inv.pn_id().empty() || inv.members().empty()) return false;
        std::set<std::string> seen;
        for (const pb::PnMember& m : inv.members()) {
            if (m.pne_id().empty() || !seen.insert(m.pne_id()).second) return false;
        }
        return true;
    }

    // register_pn's writes inside the caller's write transaction. kDuplicate writes nothing;
    // kLimit and kError have written the PN row and no member (every check comes before the
    // members' insert): the caller rolls back or deletes that row.
    PutResult insert_pn(const pb::PnInventory& inv) {
        pb::PnInventory header = inv;
        header.clear_members();
        // The UNIQUE (gw_id, pn_id) constraint decides: a concurrent registration of the same
        // PN (another connection, another server) either commits first and this insert does
        // nothing, or waits for this one.
        const detail::Result inserted = db_->run(
            "INSERT INTO pns (gw_id, pn_id, registered_at_ms, inventory) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (gw_id, pn_id) DO NOTHING",
            {Param::of(inv.gw_id()), Param::of(inv.pn_id()),
             Param::of(static_cast<std::int64_t>(inv.registered_at_ms())),
             Param::blob(serialize(header, "the PN Inventory"))});
        if (inserted.changed == 0) return PutResult::kDuplicate;  // nothing written
        // Bounded state: PNs per PN GW and per PNE (this PN included), counted in the same
        // transaction; over the bound nothing is written.
        if (count("SELECT COUNT(*) FROM pns WHERE gw_id = $1", inv.gw_id()) >
            static_cast<std::int64_t>(kMaxPnsPerGw))
            return PutResult::kLimit;
        // The members take one statement each for all of them (not one per member): their PN
        // counts, their entity rows, their insert. Placeholders $1..$n are the member IDs.
        std::string in;
        std::vector<Param> ids;
        for (const pb::PnMember& m : inv.members()) {
            in += (ids.empty() ? "$" : ", $") + std::to_string(ids.size() + 1);
            ids.push_back(Param::of(m.pne_id()));
        }
        const detail::Result counts = db_->run(
            "SELECT pne_id, COUNT(*) FROM pn_members WHERE pne_id IN (" + in + ") GROUP BY pne_id",
            ids);
        for (const detail::Row& row : counts.rows)
            if (integer(row.at(1)) >= static_cast<std::int64_t>(kMaxPnsPerPne))
                return PutResult::kLimit;
        // The kind as authenticated: a refused member row throws (nothing written).
        const detail::Result found =
            db_->run(std::string(kEntityColumns) + " WHERE e.id IN (" + in + ")", ids);
        std::set<std::string> pnes;
        for (const detail::Row& row : found.rows) {
            const StoredEntity e = decode_entity(row);
            if (e.kind == EntityKind::kPne) pnes.insert(e.id);
        }
        std::string values;
        std::vector<Param> params;
        params.reserve(5 * static_cast<std::size_t>(inv.members_size()));
        std::int64_t index = 0;
        for (const pb::PnMember& m : inv.members()) {
            if (pnes.count(m.pne_id()) == 0) return PutResult::kError;
            const std::size_t at = params.size();
            values += std::string(index == 0 ? "" : ", ") + "($" + std::to_string(at + 1) + ", $" +
                      std::to_string(at + 2) + ", $" + std::to_string(at + 3) + ", $" +
                      std::to_string(at + 4) + ", $" + std::to_string(at + 5) + ")";
            params.push_back(Param::of(inv.gw_id()));
            params.push_back(Param::of(inv.pn_id()));
            params.push_back(Param::of(m.pne_id()));
            params.push_back(Param::of(index++));
            params.push_back(Param::blob(serialize(m, "a PN member")));
        }
        db_->run(
            "INSERT INTO pn_members (gw_id, pn_id, pne_id, member_index, member) VALUES " + values,
            params);
        return PutResult::kOk;
    }

    // A PN update's new members, after the PN's last one; false (the caller rolls back) when a
    // PNE would be in more than kMaxPnsPerPne PNs. A member that is not a known PNE throws.
    bool insert_members(const std::string& gw_id, const std::string& pn_id,
                        const std::vector<pb::PnMember>& added) {
        const detail::Result last = db_->run(
            "SELECT COALESCE(MAX(member_index) + 1, 0) FROM pn_members WHERE gw_id = $1 AND "
            "pn_id = $2",
            {Param::of(gw_id), Param::of(pn_id)});
        std::int64_t index = last.rows.empty() ? 0 : integer(last.rows[0][0]);
        for (const pb::PnMember& m : added) {
            if (count("SELECT COUNT(*) FROM pn_members WHERE pne_id = $1", m.pne_id()) >=
                static_cast<std::int64_t>(kMaxPnsPerPne))
                return false;
            const detail::Result found =
                db_->run(std::string(kEntityColumns) + " WHERE e.id = $1", {Param::of(m.pne_id())});
            if (found.rows.empty() || decode_entity(found.rows[0]).kind != EntityKind::kPne)
                throw StoreError("PN update: " + m.pne_id() + " is not a known PNE");
            db_->run(
                "INSERT INTO pn_members (gw_id, pn_id, pne_id, member_index, member)"
                " VALUES ($1, $2, $3, $4, $5)",
                {Param::of(gw_id), Param::of(pn_id), Param::of(m.pne_id()), Param::of(index++),
                 Param::blob(serialize(m, "a PN member"))});
        }
        return true;
    }

    std::int64_t count(const char* sql, const std::string& id) {
        const detail::Result r = db_->run(sql, {Param::of(id)});
        return r.rows.empty() ? 0 : integer(r.rows[0][0]);
    }

    bool pn_exists(const std::string& gw_id, const std::string& pn_id) override {
        const detail::Result r = db_->run("SELECT 1 FROM pns WHERE gw_id = $1 AND pn_id = $2",
                                          {Param::of(gw_id), Param::of(pn_id)});
        return !r.rows.empty();
    }

    bool withdraw_pn(const pb::PnInventory& inv) override {
        Transaction txn(*db_, Transaction::Kind::kWrite);
        const std::vector<pb::PnInventory> found =
            read_pns(" WHERE p.gw_id = $1 AND p.pn_id = $2",
                     {Param::of(inv.gw_id()), Param::of(inv.pn_id())});
        if (found.empty() ||
            !google::protobuf::util::MessageDifferencer::Equals(found.front(), inv))
            return false;
        // Members go with the PN (ON DELETE CASCADE), in the same transaction.
        db_->run("DELETE FROM pns WHERE gw_id = $1 AND pn_id = $2",
                 {Param::of(inv.gw_id()), Param::of(inv.pn_id())});
        txn.commit();
        return true;
    }

    ChangeResult change_pn(const std::string& gw_id, const std::string& pn_id, pb::ChangeOp op,
                           const std::string& pne_id, std::uint64_t revision,
                           const std::vector<pb::PnMember>& added = {}) override {
        // A resynchronisation only reads the PN (no write transaction, no row held).
        if (op == pb::CHANGE_SYNC)
            return change_inventory(get_pn(gw_id, pn_id), op, pne_id, revision, added);
        Transaction txn(*db_, Transaction::Kind::kWrite);
        // The PN's row is held until the commit: on PostgreSQL by the row lock, on SQLite by the
        // write transaction itself (one writer at a time).
        if (db_->backend() == "postgresql")
            db_->run("SELECT 1 FROM pns WHERE gw_id = $1 AND pn_id = $2 FOR UPDATE",
                     {Param::of(gw_id), Param::of(pn_id)});
        std::vector<pb::PnInventory> found =
            read_pns(" WHERE p.gw_id = $1 AND p.pn_id = $2", {Param::of(gw_id), Param::of(pn_id)});
        std::optional<pb::PnInventory> current;
        if (!found.empty()) current = std::move(found.front());
        ChangeResult r = change_inventory(current, op, pne_id, revision, added);
        if (r.reason != pb::REASON_NONE) return r;  // rolled back: nothing written
        if (r.dissolved) {
            db_->run("DELETE FROM pn_members WHERE gw_id = $1 AND pn_id = $2",
                     {Param::of(gw_id), Param::of(pn_id)});
            db_->run("DELETE FROM pns WHERE gw_id = $1 AND pn_id = $2",
                     {Param::of(gw_id), Param::of(pn_id)});
        } else {
            pb::PnInventory header = r.inventory;
            header.clear_members();
            db_->run("UPDATE pns SET inventory = $3 WHERE gw_id = $1 AND pn_id = $2",
                     {Param::of(gw_id), Param::of(pn_id),
                      Param::blob(serialize(header, "the PN Inventory"))});
            if (op == pb::CHANGE_ADD) {
                // Over a PNE's bound of PNs the add is refused whole (rolled back).
                if (!insert_members(gw_id, pn_id, added)) {
                    ChangeResult limit;
                    limit.reason = pb::LIMIT_EXCEEDED;
                    limit.inventory = *current;
                    return limit;
                }
            } else if (op != pb::CHANGE_REKEY) {  // a re-key changes the revision only
                db_->run("DELETE FROM pn_members WHERE gw_id = $1 AND pn_id = $2 AND pne_id = $3",
                         {Param::of(gw_id), Param::of(pn_id), Param::of(pne_id)});
            }
        }
        txn.commit();
        return r;
    }

    std::optional<pb::PnInventory> get_pn(const std::string& gw_id,
                                          const std::string& pn_id) override {
        std::vector<pb::PnInventory> found =
            read_pns(" WHERE p.gw_id = $1 AND p.pn_id = $2", {Param::of(gw_id), Param::of(pn_id)});
        if (found.empty()) return std::nullopt;
        return std::move(found.front());
    }

    std::vector<pb::PnInventory> list_pns(std::optional<std::string> gw_id) override {
        if (gw_id) return read_pns(" WHERE p.gw_id = $1", {Param::of(*gw_id)});
        return read_pns("", {});
    }

    std::size_t count_pns() override {
        const detail::Result r = db_->run("SELECT COUNT(*) FROM pns", {});
        return r.rows.empty() ? 0 : static_cast<std::size_t>(integer(r.rows[0][0]));
    }

    std::size_t count_entities(std::optional<EntityKind> kind) override {
        const detail::Result r = kind ? db_->run("SELECT COUNT(*) FROM entities WHERE kind = $1",
                                                 {Param::of(word(*kind))})
                                      : db_->run("SELECT COUNT(*) FROM entities", {});
        return r.rows.empty() ? 0 : static_cast<std::size_t>(integer(r.rows[0][0]));
    }

    void audit(const AuditRecord& r) override {
        db_->run(
            "INSERT INTO audit (at_ms, server_id, gw_id, pn_id, pne_id, success, reason, detail)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            {Param::of(r.at_ms != 0 ? r.at_ms : now_ms()), Param::of(r.server_id),
             Param::of(r.gw_id), Param::of(r.pn_id), Param::of(r.pne_id),
             Param::of(std::int64_t{r.success ? 1 : 0}), Param::of(r.reason), Param::of(r.detail)});
    }

    // Rows of one multi-row audit INSERT, at most; a batch is written in statements of
    // kAuditRowsPerStatement, then of halves of it (64, 32, ... 1 rows) for the rest, so that
    // at most 8 statement texts exist (SQLite keeps each prepared) whatever the batch sizes.
    static constexpr std::size_t kAuditRowsPerStatement = 128;

    // One statement per chunk instead of one per record: on PostgreSQL each statement is a
    // round trip, and a batch carries three records per registered PN of two PNEs.
    void audit_many(const std::vector<AuditRecord>& records) override {
        if (records.empty()) return;
        const std::int64_t now = now_ms();
        Transaction txn(*db_, Transaction::Kind::kWrite);
        std::vector<Param> params;
        for (std::size_t at = 0; at < records.size();) {
            std::size_t n = kAuditRowsPerStatement;
            while (n > records.size() - at) n /= 2;
            std::string sql =
                "INSERT INTO audit (at_ms, server_id, gw_id, pn_id, pne_id, success, reason, "
                "detail)"
                " VALUES ";
            params.clear();
            params.reserve(8 * n);
            for (std::size_t j = 0; j < n; ++j) {
                const AuditRecord& r = records[at + j];
                sql += (j ? ", (" : "(") + placeholders(params.size(), 8) + ")";
                params.push_back(Param::of(r.at_ms != 0 ? r.at_ms : now));
                params.push_back(Param::of(r.server_id));
                params.push_back(Param::of(r.gw_id));
                params.push_back(Param::of(r.pn_id));
                params.push_back(Param::of(r.pne_id));
                params.push_back(Param::of(std::int64_t{r.success ? 1 : 0}));
                params.push_back(Param::of(r.reason));
                params.push_back(Param::of(r.detail));
            }
            db_->run(sql, params);
            at += n;
        }
        txn.commit();
    }

    std::vector<AuditRecord> audit_log(std::size_t limit) override {
        if (limit == 0) return {};
        const auto max = static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max());
        const detail::Result r = db_->run(
            "SELECT at_ms, server_id, gw_id, pn_id, pne_id, success, reason, detail FROM audit"
            " ORDER BY at_ms DESC, id DESC LIMIT $1",
            {Param::of(static_cast<std::int64_t>(std::min(limit, max)))});
        std::vector<AuditRecord> out;
        out.reserve(r.rows.size());
        for (const Row& row : r.rows) {
            AuditRecord a;
            a.at_ms = integer(row[0]);
            a.server_id = text(row[1]);
            a.gw_id = text(row[2]);
            a.pn_id = text(row[3]);
            a.pne_id = text(row[4]);
            a.success = boolean(row[5]);
            a.reason = text(row[6]);
            a.detail = text(row[7]);
            out.push_back(std::move(a));
        }
        return out;
    }

    std::vector<std::string> check() override {
        std::vector<std::string> problems;
        Transaction txn(*db_, Transaction::Kind::kRead);  // one snapshot for all reads
        const auto kinds = check_entities(problems);
        const auto pns = check_pns(problems);
        check_members(problems, kinds, pns);
        txn.commit();
        return problems;
    }

  private:
    using PnKey = std::pair<std::string, std::string>;  // (PN GW ID, PN ID)

    // Entities: every row readable and authentic (sealed EUKey, row MAC, version record).
    // At most one problem per entity. Their kinds as stored, by ID.
    std::map<std::string, std::optional<EntityKind>> check_entities(
        std::vector<std::string>& problems) const {
        std::map<std::string, std::optional<EntityKind>> kinds;
        for (const Row& row : db_->run(kEntityColumns).rows) {
            const RawEntity raw = raw_entity(row);
            kinds[raw.id] = parse_entity_kind(raw.kind);
            const Opened opened = open_row(raw);
            pb::DeviceCapabilities caps;
            if (!opened.problem.empty()) {
                problems.push_back("entity " + raw.id + ": " + opened.problem);
            } else if (!caps.ParseFromString(raw.capabilities)) {
                problems.push_back("entity " + raw.id + ": unreadable capabilities");
            }
        }
        return kinds;
    }

    // PNs: readable, naming themselves, registered once. How often each is registered.
    std::map<PnKey, int> check_pns(std::vector<std::string>& problems) const {
        std::map<PnKey, int> pns;
        for (const Row& row : db_->run("SELECT gw_id, pn_id, inventory FROM pns").rows) {
            const PnKey key{text(row[0]), text(row[1])};
            const std::string name = pn_name(key.first, key.second);
            if (++pns[key] == 2) problems.push_back("PN " + name + ": registered more than once");
            pb::PnInventory header;
            if (!header.ParseFromString(text(row[2]))) {
                problems.push_back("PN " + name + ": unreadable inventory");
            } else if (header.gw_id() != key.first || header.pn_id() != key.second) {
                problems.push_back("PN " + name + ": inventory names PN " +
                                   pn_name(header.gw_id(), header.pn_id()));
            }
        }
        return pns;
    }

    // Members: of a known PN, PNE entities, readable, each PNE once per PN.
    void check_members(std::vector<std::string>& problems,
                       const std::map<std::string, std::optional<EntityKind>>& kinds,
                       const std::map<PnKey, int>& pns) const {
        std::map<PnKey, std::map<std::string, int>> members;
        for (const Row& row :
             db_->run("SELECT gw_id, pn_id, pne_id, member FROM pn_members").rows) {
            const PnKey key{text(row[0]), text(row[1])};
            const std::string& pne_id = text(row[2]);
            const std::string where =
                "member " + pne_id + " of PN " + pn_name(key.first, key.second) + ": ";
            if (pns.count(key) == 0) problems.push_back(where + "no such PN");
            const auto entity = kinds.find(pne_id);
            if (entity == kinds.end()) {
                problems.push_back(where + "no such entity (not a PNE)");
            } else if (entity->second != EntityKind::kPne) {
                problems.push_back(where + "the entity is not a PNE");
            }
            pb::PnMember member;
            std::string listed = pne_id;
            if (!member.ParseFromString(text(row[3]))) {
                problems.push_back(where + "unreadable member record");
            } else if (member.pne_id() != pne_id) {
                problems.push_back(where + "the record names PNE " + member.pne_id());
                listed = member.pne_id();
            }
            ++members[key][listed];
        }
        for (const auto& [key, count] : pns) {
            if (members.count(key) == 0) {
                problems.push_back("PN " + pn_name(key.first, key.second) + ": no members");
            }
        }
        for (const auto& [key, listed] : members) {
            for (const auto& [pne_id, count] : listed) {
                if (count > 1) {
                    problems.push_back("PN " + pn_name(key.first, key.second) + ": PNE " + pne_id +
                                       " is a member " + std::to_string(count) + " times");
                }
            }
        }
    }

    void migrate() {
        const std::vector<detail::Migration>& migrations = db_->migrations();
        const int latest = migrations.empty() ? 0 : migrations.back().version;
        Transaction txn(*db_, Transaction::Kind::kMigration);
        db_->run(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL PRIMARY KEY,"
            " applied_at_ms BIGINT NOT NULL)");
        const std::int64_t current = integer(
            db_->run("SELECT COALESCE(MAX(version), 0) FROM schema_version").rows.at(0).at(0));
        if (current > latest) {
            throw StoreError("the database's schema version " + std::to_string(current) +
                             " is newer than this program's (" + std::to_string(latest) + ")");
        }
        bool legacy_rows = false;
        for (const detail::Migration& m : migrations) {
            if (m.version <= current) continue;
            for (const std::string& statement : m.statements) db_->run(statement);
            legacy_rows = legacy_rows || m.version == kIntegrityMigration;
            db_->run("INSERT INTO schema_version (version, applied_at_ms) VALUES ($1, $2)",
                     {Param::of(std::int64_t{m.version}), Param::of(now_ms())});
        }
        // After every migration's statements (the rows are written with today's columns),
        // in the same transaction.
        if (legacy_rows) seal_legacy_rows();
        txn.commit();
    }

    // Part of the migration to schema version 2 (same transaction, which the migration lock
    // serialises): every row of schema version 1 is re-sealed under key version 1 and gets
    // its row MAC and version record. A row whose EUKey does not open under this master key
    // aborts the migration: nothing changes until the store is opened with its master key.
    void seal_legacy_rows() {
        const detail::Result r =
            db_->run("SELECT id, kind, sealed_eukey, status, capabilities FROM entities");
        for (const Row& row : r.rows) {
            RawEntity raw;  // versions 0: as migration 2 added them
            raw.id = text(row.at(0));
            raw.kind = text(row[1]);
            raw.capabilities = text(row.at(4));
            const std::optional<EntityKind> kind = parse_entity_kind(raw.kind);
            const std::optional<EntityStatus> status = parse_entity_status(text(row[3]));
            std::optional<SecretKey> eukey = sealer_.unseal_v1(raw.id, bytes_of(text(row[2])));
            if (!kind || !status || !eukey) {
                throw StoreError("schema migration " + std::to_string(kIntegrityMigration) +
                                 " (integrity at rest): the EUKey of " + raw.id +
                                 " does not open under this master key, or its row is "
                                 "unreadable; nothing was changed (open the store with its "
                                 "master key)");
            }
            if (!reseal(raw, *kind, *status, *eukey, Versions{1, 1}, false)) {
                throw StoreError("schema migration " + std::to_string(kIntegrityMigration) +
                                 ": entity " + raw.id + " changed while it was re-sealed");
            }
        }
    }

    // One attempt of set_status: false if there is no such entity, nullopt if the row
    // changed between reading and writing it (nothing written).
    std::optional<bool> try_set_status(const std::string& id, EntityStatus status) {
        Transaction txn(*db_, Transaction::Kind::kWrite);
        const detail::Result r =
            db_->run(std::string(kEntityColumns) + " WHERE e.id = $1", {Param::of(id)});
        if (r.rows.empty()) return false;
        const RawEntity raw = raw_entity(r.rows.front());
        const Opened opened = open_row(raw);
        bool written = false;
        if (opened.problem.empty()) {
            const Versions v{raw.versions.key, raw.versions.revision + 1};
            std::optional<PreviousColumns> previous;
            if (opened.previous)
                previous = PreviousColumns{*raw.previous_sealed, opened.previous->expires_at_ms};
            // A revocation destroys a previous EUKey too; other changes keep it.
            if (status == EntityStatus::kRevoked) previous.reset();
            written = reseal(raw, *parse_entity_kind(raw.kind), status, *opened.eukey, v, true,
                             previous ? &*previous : nullptr);
        } else if (opened.wrong_key || status != EntityStatus::kRevoked) {
            throw StoreError(refusal(raw.id, opened) +
                             "; nothing changed (only a revocation, which destroys its EUKey, "
                             "is applied to a refused entity)");
        } else {
            // Revoke and destroy: a fresh random EUKey nobody holds, under new versions.
            const Versions next = next_versions(id, true);
            const std::optional<EntityKind> kind = parse_entity_kind(raw.kind);
            written = reseal(raw, kind.value_or(EntityKind::kPne), status, OsRandom().key(), next);
        }
        if (!written) return std::nullopt;  // rolled back
        log_change("status", id, "", "", std::string(to_string(status)));
        txn.commit();
        return true;
    }

    // Appends a change-log row (inside the caller's write transaction) and prunes old ones.
    void log_change(const std::string& kind, const std::string& entity_id, const std::string& gw_id,
                    const std::string& pn_id, std::string payload) {
        db_->run(
            "INSERT INTO change_log (at_ms, kind, entity_id, gw_id, pn_id, payload)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            {Param::of(now_ms()), Param::of(kind), Param::of(entity_id), Param::of(gw_id),
             Param::of(pn_id), Param::blob(std::move(payload))});
        db_->run("DELETE FROM change_log WHERE seq <= (SELECT MAX(seq) FROM change_log) - $1",
                 {Param::of(kChangeLogKeep)});
    }

    ChangeResult delete_pn(const std::string& gw_id, const std::string& pn_id) override {
        Transaction txn(*db_, Transaction::Kind::kWrite);
        if (db_->backend() == "postgresql")
            db_->run("SELECT 1 FROM pns WHERE gw_id = $1 AND pn_id = $2 FOR UPDATE",
                     {Param::of(gw_id), Param::of(pn_id)});
        std::vector<pb::PnInventory> found =
            read_pns(" WHERE p.gw_id = $1 AND p.pn_id = $2", {Param::of(gw_id), Param::of(pn_id)});
        if (found.empty()) {
            ChangeResult r;
            r.reason = pb::UNKNOWN_PN;
            return r;
        }
        const pb::PnInventory before = found.front();
        ChangeResult r = change_inventory(before, pb::CHANGE_DISSOLVE, "", before.revision());
        if (r.reason != pb::REASON_NONE) return r;
        db_->run("DELETE FROM pn_members WHERE gw_id = $1 AND pn_id = $2",
                 {Param::of(gw_id), Param::of(pn_id)});
        db_->run("DELETE FROM pns WHERE gw_id = $1 AND pn_id = $2",
                 {Param::of(gw_id), Param::of(pn_id)});
        log_change("pn_deleted", "", gw_id, pn_id, serialize(before, "the PN Inventory"));
        txn.commit();
        return r;
    }

    ChangeResult order_rekey(const std::string& gw_id, const std::string& pn_id,
                             const std::string& pne_id) override {
        Transaction txn(*db_, Transaction::Kind::kWrite);
        std::vector<pb::PnInventory> found =
            read_pns(" WHERE p.gw_id = $1 AND p.pn_id = $2", {Param::of(gw_id), Param::of(pn_id)});
        std::optional<pb::PnInventory> current;
        if (!found.empty()) current = std::move(found.front());
        // The same checks as the change itself, at the PN's revision; nothing is changed here.
        ChangeResult r =
            change_inventory(current, pb::CHANGE_REKEY, pne_id, current ? current->revision() : 0);
        if (r.reason != pb::REASON_NONE) return r;
        r.inventory = *current;
        log_change("rekey", pne_id, gw_id, pn_id, std::to_string(current->revision()));
        txn.commit();
        return r;
    }

    std::vector<pb::PnInventory> pns_of(const std::string& pne_id) override {
        return read_pns(
            " WHERE (p.gw_id, p.pn_id) IN (SELECT gw_id, pn_id FROM pn_members WHERE pne_id = $1)",
            {Param::of(pne_id)});
    }

    std::int64_t change_log_head() override {
        const detail::Result r = db_->run("SELECT COALESCE(MAX(seq), 0) FROM change_log", {});
        return r.rows.empty() ? 0 : integer(r.rows[0][0]);
    }

    std::vector<ChangeEvent> change_log_after(std::int64_t seq, std::size_t limit) override {
        const detail::Result r = db_->run(
            "SELECT seq, at_ms, kind, entity_id, gw_id, pn_id, payload FROM change_log"
            " WHERE seq > $1 ORDER BY seq LIMIT $2",
            {Param::of(seq), Param::of(static_cast<std::int64_t>(limit))});
        std::vector<ChangeEvent> out;
        for (const Row& row : r.rows)
            out.push_back(ChangeEvent{integer(row[0]), integer(row[1]), text(row[2]), text(row[3]),
                                      text(row[4]), text(row[5]), text(row[6])});
        return out;
    }

    // Seals `eukey` for (id, kind, v.key) and writes sealed key, kind, status, versions and
    // row MAC (over the capabilities read in `raw`) into the row, if its revision is still
    // raw's, and then the version record. false: the row changed meanwhile (nothing written).
    // `previous`: the previous EUKey columns to write (nullptr: none, NULL in both).
    bool reseal(const RawEntity& raw, EntityKind kind, EntityStatus status, const SecretKey& eukey,
                const Versions& v, bool touch = true, const PreviousColumns* previous = nullptr) {
        const Bytes sealed = sealer_.seal({raw.id, kind, v.key}, eukey);
        const RowMac mac =
            row_mac(raw.id, kind, status, v, as_text(sealed), raw.capabilities, previous);
        const detail::Result r = db_->run(
            "UPDATE entities SET kind = $1, sealed_eukey = $2, status = $3, key_version = $4,"
            " revision = $5, row_mac = $6,"
            " updated_at_ms = COALESCE(CAST($7 AS BIGINT), updated_at_ms),"
            " previous_sealed_eukey = $11, previous_expires_at_ms = CAST($12 AS BIGINT)"
            " WHERE id = $8 AND revision = $9 AND capabilities = $10",
            {Param::of(word(kind)), Param::blob(sealed), Param::of(word(status)), Param::of(v.key),
             Param::of(v.revision), Param::blob(ByteView(mac)),
             touch ? Param::of(now_ms()) : Param::null(), Param::of(raw.id),
             Param::of(raw.versions.revision), Param::blob(raw.capabilities),
             previous ? Param::blob(previous->sealed) : Param::null(),
             previous ? Param::of(previous->expires_at_ms) : Param::null()});
        if (r.changed == 0) return false;
        record_versions(raw.id, v);
        return true;
    }

    // The versions of the next write of `id`: one more than the highest of its row and its
    // version record (authentic or not: they only grow). The key version grows with a new
    // EUKey.
    Versions next_versions(const std::string& id, bool new_key) {
        Versions high;
        for (const char* table : {"entities", "entity_versions"}) {
            const detail::Result r = db_->run(
                std::string("SELECT key_version, revision FROM ") + table + " WHERE id = $1",
                {Param::of(id)});
            if (r.rows.empty()) continue;
            high.key = std::max(high.key, integer(r.rows[0].at(0)));
            high.revision = std::max(high.revision, integer(r.rows[0].at(1)));
        }
        return {high.key + (new_key ? 1 : 0), high.revision + 1};
    }

    void record_versions(const std::string& id, const Versions& v) {
        const RowMac mac = version_mac(id, v);
        db_->run(
            "INSERT INTO entity_versions (id, key_version, revision, mac) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (id) DO UPDATE SET key_version = excluded.key_version,"
            " revision = excluded.revision, mac = excluded.mac",
            {Param::of(id), Param::of(v.key), Param::of(v.revision), Param::blob(ByteView(mac))});
    }

    RowMac row_mac(const std::string& id, EntityKind kind, EntityStatus status, const Versions& v,
                   std::string_view sealed, std::string_view caps,
                   const PreviousColumns* previous) const {
        const std::string kind_word = word(kind), status_word = word(status);
        const std::string key = std::to_string(v.key), revision = std::to_string(v.revision);
        if (!previous)
            return sealer_.mac(kRowLabel,
                               {id, kind_word, status_word, key, revision, sealed, caps});
        const std::string expires = std::to_string(previous->expires_at_ms);
        return sealer_.mac(kRotatedRowLabel, {id, kind_word, status_word, key, revision, sealed,
                                              caps, previous->sealed, expires});
    }

    RowMac version_mac(const std::string& id, const Versions& v) const {
        return sealer_.mac(kVersionLabel, {id, std::to_string(v.key), std::to_string(v.revision)});
    }

    // Verifies a row: its words, its sealed EUKey (bound to id, kind and key version), its
    // row MAC, and its versions against the version record.
    Opened open_row(const RawEntity& raw) const {
        Opened o;
        const std::optional<EntityKind> kind = parse_entity_kind(raw.kind);
        if (!kind) o.problem = "unknown kind '" + raw.kind + "'";
        if (!parse_entity_status(raw.status)) o.problem = "unknown status '" + raw.status + "'";
        if (!o.problem.empty()) return o;
        // An authentic version record shows that this master key is the store's.
        const bool key_shown_right =
            raw.recorded && same_mac(version_mac(raw.id, *raw.recorded), raw.recorded_mac);
        o.eukey = sealer_.unseal({raw.id, *kind, raw.versions.key}, bytes_of(raw.sealed));
        if (!o.eukey) {
            o.wrong_key = !key_shown_right;
            o.problem = key_shown_right
                            ? "integrity check failed: its sealed EUKey does not open for this "
                              "entity, kind and key version (altered, moved or copied back)"
                            : "unreadable sealed EUKey (wrong master key or corrupted)";
            return o;
        }
        std::optional<PreviousColumns> previous;
        if (raw.previous_sealed.has_value() != raw.previous_expires.has_value()) {
            o.problem = "integrity check failed: half of its previous EUKey is missing";
        } else if (raw.previous_sealed) {
            previous = PreviousColumns{*raw.previous_sealed, 0};
            try {
                previous->expires_at_ms = integer(raw.previous_expires);
            } catch (const StoreError&) {
                o.problem = "integrity check failed: unreadable expiry of its previous EUKey";
            }
            if (o.problem.empty()) {
                auto prev = sealer_.unseal({raw.id, *kind, raw.versions.key - 1},
                                           bytes_of(*raw.previous_sealed));
                if (!prev)
                    o.problem =
                        "integrity check failed: its previous EUKey does not open for this "
                        "entity, kind and key version";
                else
                    o.previous = PreviousEuKey{std::move(*prev), previous->expires_at_ms};
            }
        }
        if (o.problem.empty())
            o.problem =
                integrity_problem(raw, *kind, key_shown_right, previous ? &*previous : nullptr);
        if (!o.problem.empty()) {
            o.eukey.reset();
            o.previous.reset();
        }
        return o;
    }

    std::string integrity_problem(const RawEntity& raw, EntityKind kind, bool record_authentic,
                                  const PreviousColumns* previous) const {
        const std::optional<EntityStatus> status = parse_entity_status(raw.status);
        if (!same_mac(row_mac(raw.id, kind, *status, raw.versions, raw.sealed, raw.capabilities,
                              previous),
                      raw.row_mac)) {
            return "integrity check failed: its row MAC does not match (kind, status, key "
                   "version, sealed EUKey or capabilities changed outside the CPNS tools)";
        }
        if (!raw.recorded) return "integrity check failed: its version record is missing";
        if (!record_authentic) return "integrity check failed: its version record was altered";
        if (!(*raw.recorded == raw.versions)) {
            return "integrity check failed: the row has " + versions_text(raw.versions) +
                   " but the store recorded " + versions_text(*raw.recorded) +
                   " (an older row copied back?)";
        }
        return "";
    }

    static std::string refusal(const std::string& id, const Opened& opened) {
        if (opened.wrong_key) return "cannot unseal EUKey of " + id + ": wrong master key?";
        return "entity " + id + " refused: " + opened.problem;
    }

    StoredEntity decode_entity(const Row& row) const {
        const RawEntity raw = raw_entity(row);
        Opened opened = open_row(raw);
        if (!opened.problem.empty()) throw StoreError(refusal(raw.id, opened));
        StoredEntity e;
        e.id = raw.id;
        e.kind = *parse_entity_kind(raw.kind);
        e.eukey = std::move(*opened.eukey);
        e.status = *parse_entity_status(raw.status);
        if (!e.capabilities.ParseFromString(raw.capabilities)) {
            throw StoreError("entity " + e.id + " has unreadable capabilities");
        }
        e.created_at_ms = raw.created_at_ms;
        e.updated_at_ms = raw.updated_at_ms;
        e.key_version = raw.versions.key;
        e.previous = std::move(opened.previous);
        return e;
    }

    // One statement (one snapshot): PN rows with their members.
    std::vector<pb::PnInventory> read_pns(const std::string& where,
                                          const std::vector<Param>& params) {
        const detail::Result r = db_->run(
            "SELECT p.gw_id, p.pn_id, p.inventory, m.member_index, m.member"
            " FROM pns p LEFT JOIN pn_members m ON m.gw_id = p.gw_id AND m.pn_id = p.pn_id" +
                where,
            params);
        struct Collected {
            pb::PnInventory inventory;
            std::vector<std::pair<std::int64_t, pb::PnMember>> members;
        };
        std::map<std::pair<std::string, std::string>, Collected> pns;
        for (const Row& row : r.rows) {
            const std::pair<std::string, std::string> key{text(row[0]), text(row[1])};
            auto [it, fresh] = pns.try_emplace(key);
            if (fresh && !it->second.inventory.ParseFromString(text(row[2]))) {
                throw StoreError("unreadable PN Inventory of " + pn_name(key.first, key.second));
            }
            if (!row[4]) continue;  // a PN without members (check() reports it)
            pb::PnMember member;
            if (!member.ParseFromString(*row[4])) {
                throw StoreError("unreadable member of PN " + pn_name(key.first, key.second));
            }
            it->second.members.emplace_back(integer(row[3]), std::move(member));
        }
        std::vector<pb::PnInventory> out;
        out.reserve(pns.size());
        for (auto& [key, c] : pns) {
            std::stable_sort(c.members.begin(), c.members.end(),
                             [](const auto& a, const auto& b) { return a.first < b.first; });
            for (auto& [index, member] : c.members) {
                *c.inventory.add_members() = std::move(member);
            }
            out.push_back(std::move(c.inventory));
        }
        return out;
    }

    std::unique_ptr<Db> db_;
    Sealer sealer_;
};

bool starts_with(std::string_view s, std::string_view prefix) {
    return s.substr(0, prefix.size()) == prefix;
}

// "host=... dbname=...": a libpq keyword/value connection string.
bool is_conninfo(const std::string& url) {
    static const std::regex kKeyword(R"(^\s*[A-Za-z_]+\s*=)");
    return std::regex_search(url, kKeyword);
}

}  // namespace

std::unique_ptr<Store> open_store(const std::string& url, const SecretKey& master_key) {
    if (url.empty()) throw StoreError("empty store URL");
    if (master_key.is_zero()) throw StoreError("refusing an all-zero master key");
    std::unique_ptr<detail::Db> db;
    if (starts_with(url, "postgresql://") || starts_with(url, "postgres://") || is_conninfo(url)) {
        db = detail::open_postgresql(url);
    } else if (starts_with(url, "sqlite://")) {
        db = detail::open_sqlite(url.substr(std::string_view("sqlite://").size()));
    } else if (starts_with(url, "sqlite:")) {
        db = detail::open_sqlite(url.substr(std::string_view("sqlite:").size()));
    } else {
        db = detail::open_sqlite(url);
    }
    return std::make_unique<SqlStore>(std::move(db), master_key);
}

}  // namespace cpns::store
