// The CPNS Server's durable store: entities with their EUKeys (sealed at rest under a key
// derived from the master key), the PN Inventory and an audit log. Two backends behind one
// interface: SQLite (embedded default; one file in WAL mode) and PostgreSQL (libpq), which lets
// several server instances share one database.
//
// Integrity at rest (sealed.hpp has the exact formats; docs/operations.md the operator's view):
// an entity's kind, status and key version are authenticated under the master key, so that
// someone who can write the database but lacks the master key cannot reactivate a revoked or
// disabled entity, change its kind or copy an older (replaced) EUKey back unnoticed.
//  - The EUKey is sealed with AES-256-GCM, AAD = "cpns-eukey-v2|" id "|" kind "|" key_version.
//  - Every row carries row_mac = HMAC-SHA-256 under a key derived from the master key (HKDF,
//    its own info label) over id, kind, status, key_version, revision, sealed EUKey and
//    capabilities. The key version grows by one on every EUKey replacement, the revision on
//    every change of the row (status changes re-MAC the row: the master key is loaded by every
//    writer, cpnsctl and the server).
//  - The table entity_versions records, MACed, each entity's latest (key_version, revision);
//    a row whose versions differ from the record (an older row copied back) is refused.
// A refused row is never returned: get_entity / list_entities throw StoreError naming the
// entity, check() reports it, set_status applies only a revocation to it (and then destroys
// its EUKey). Limit: restoring BOTH an entity's row and its version record from the same older
// state (for instance from a backup of the whole database) is not detectable from inside the
// database; that needs a monotonic counter kept outside it. Creation and update timestamps are
// not authenticated.
//
// Errors: every method throws StoreError when the database cannot be reached or a statement
// fails, and when a stored row cannot be read back (for instance an EUKey sealed under another
// master key, or a row refused by the integrity check). A Store is used by one thread at a
// time: open one instance per thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/crypto.hpp"
#include "core/server.hpp"

namespace cpns::store {

struct StoredEntity {
    std::string id;
    EntityKind kind = EntityKind::kPne;
    SecretKey eukey;
    EntityStatus status = EntityStatus::kActive;
    pb::DeviceCapabilities capabilities;
    // Milliseconds since the Unix epoch. put_entity fills 0 with the current time and, when an
    // entity is replaced, keeps the stored created_at_ms if the new record's is 0.
    std::int64_t created_at_ms = 0;
    std::int64_t updated_at_ms = 0;
    // Read back: 1 for the first EUKey, +1 for each replacement. put_entity ignores it (it
    // gives the next version itself).
    std::int64_t key_version = 0;
    // Read back: the EUKey before the last rotate_eukey and the end of its grace period
    // (sealed for key version key_version - 1 and covered by the row MAC). put_entity ignores
    // it and drops any previous EUKey (a replaced key has no grace).
    std::optional<PreviousEuKey> previous;
};

struct AuditRecord {
    std::int64_t at_ms = 0;
    std::string server_id, gw_id, pn_id, pne_id;
    bool success = false;
    std::string reason;
    std::string detail;
};

// Change-log rows kept (older ones are pruned as new ones are added): far more than the servers'
// polls ever lag behind.
inline constexpr std::int64_t kChangeLogKeep = 100'000;

// One row of the change log (Store::change_log_after): what the servers must act on that
// someone else wrote — an entity's status changed (kind "status", payload the new status word),
// or the operator deleted a PN (kind "pn_deleted", payload the PN as it was, serialized).
struct ChangeEvent {
    std::int64_t seq = 0;
    std::int64_t at_ms = 0;
    std::string kind;
    std::string entity_id;
    std::string gw_id, pn_id;
    std::string payload;
};

enum class PutResult {
    kOk,         // registered, and durable
    kDuplicate,  // (gw_id, pn_id) is registered already; nothing was written
    kError,      // the inventory was refused (see register_pn); nothing was written
    kLimit,  // the PN GW already has kMaxPnsPerGw PNs, or a member kMaxPnsPerPne; nothing written
};

// Connection and SQL failures, unreadable rows, bad configuration (URL, master key).
// kind() tells a caller what it may do about it:
//  - kUnavailable: the database could not be reached or the connection broke (PostgreSQL
//    connection lost, SQLSTATE classes 08 and 57P, a read-only standby; SQLite I/O, lock and
//    busy errors, a file it cannot open). Nothing of the failed call is known to be committed;
//    the same call may succeed later (the PostgreSQL backend reconnects by itself).
//  - kFull: the database has no space left (SQLite SQLITE_FULL, PostgreSQL class 53).
//    Nothing was written; it may succeed once space returns.
//  - kOther: anything else (a bad row, a constraint, a corrupted file, configuration).
class StoreError : public std::runtime_error {
  public:
    enum class Kind { kOther, kUnavailable, kFull };
    explicit StoreError(const std::string& what, Kind kind = Kind::kOther)
        : std::runtime_error(what), kind_(kind) {}
    Kind kind() const { return kind_; }

  private:
    Kind kind_;
};

class Store {  // one instance per thread; not thread-safe
  public:
    virtual ~Store() = default;
    virtual std::string backend() const = 0;  // "sqlite" / "postgresql"

    // Insert or replace (provisioning), under the next key version and revision. StoreError
    // for an empty id or an all-zero EUKey.
    virtual void put_entity(const StoredEntity& e) = 0;
    // StoreError "cannot unseal EUKey of <id>: wrong master key?" when the sealed key does not
    // open under this store's master key (and nothing shows the key right); StoreError
    // "entity <id> refused: integrity check failed: ..." when the row was altered.
    virtual std::optional<StoredEntity> get_entity(const std::string& id) = 0;
    // Ordered by id. Throws (naming it) on the first refused row.
    virtual std::vector<StoredEntity> list_entities(
        std::optional<EntityKind> kind = std::nullopt) = 0;
    // false: no such entity. The row is verified first; a refused row takes only kRevoked
    // (its EUKey is then replaced by a fresh random one nobody holds), else StoreError.
    // The change log records each applied status change (kind "status").
    virtual bool set_status(const std::string& id, EntityStatus status) = 0;
    // EUKey rotation: `eukey` becomes the entity's EUKey under the next key version, and the
    // EUKey it replaces its previous EUKey until `expires_at_ms` (wall clock, ms since the Unix
    // epoch); the previous EUKey of an earlier rotation is dropped. Status and capabilities stay.
    // Returns the new key version; nullopt: no such entity. StoreError (nothing changed) for a
    // revoked entity, a row refused by the integrity check, an all-zero EUKey or the current one.
    // A revocation (set_status) destroys the previous EUKey with the entity's.
    virtual std::optional<std::int64_t> rotate_eukey(const std::string& id, const SecretKey& eukey,
                                                     std::int64_t expires_at_ms) = 0;

    // Atomic and durable when it returns kOk (one transaction: the PN row and all member rows,
    // or nothing). kDuplicate when (gw_id, pn_id) exists already — decided by a UNIQUE
    // constraint, so that two servers racing on one PostgreSQL register a PN exactly once.
    // kError (nothing written) when the inventory is not registrable: empty gw_id or pn_id, no
    // members, a member without pne_id, a PNE listed twice, or a member that is not a PNE
    // entity of this store. Database failures throw StoreError (nothing written either).
    virtual PutResult register_pn(const pb::PnInventory& inv) = 0;
    // Group commit: each inventory as register_pn would register it, all in ONE transaction
    // (one commit, one WAL flush for the group), each with its own result: one refused
    // (kDuplicate, kError, kLimit; also a second entry for the same PN) writes nothing and
    // does not affect the others. Every kOk is durable when it returns. A database failure
    // throws StoreError for the whole group: nothing of it is known to be committed (and with
    // kUnavailable during the COMMIT, all of it may be), so the caller tries each one again
    // alone. The default implementation (for other Store implementations) registers them one
    // by one.
    virtual std::vector<PutResult> register_pns(const std::vector<const pb::PnInventory*>& invs) {
        std::vector<PutResult> results;
        results.reserve(invs.size());
        for (const pb::PnInventory* inv : invs) results.push_back(register_pn(*inv));
        return results;
    }
    virtual bool pn_exists(const std::string& gw_id, const std::string& pn_id) = 0;
    // Removes the PN (inv.gw_id, inv.pn_id) with its members, in one transaction, if it is
    // stored with exactly this content (the header and every member, in order); false, and
    // nothing changed, when it is absent or differs. For a registration whose COMMIT outcome
    // was lost with the connection and whose PN GW was then told it failed: the server takes
    // back what it never acknowledged.
    virtual bool withdraw_pn(const pb::PnInventory& inv) = 0;
    // A lifecycle change (core/lifecycle.hpp): applies `op` to the PN (gw_id, pn_id) if it is at
    // `revision`, in one transaction holding the PN's row, durable when it returns an applied
    // result. A refused change (UNKNOWN_PN, STALE_REVISION, NOT_A_MEMBER) writes nothing. A PN
    // left without members is deleted. Database failures throw StoreError (nothing written).
    // CHANGE_ADD inserts the members `added` (each a known PNE, else StoreError).
    virtual ChangeResult change_pn(const std::string& gw_id, const std::string& pn_id,
                                   pb::ChangeOp op, const std::string& pne_id,
                                   std::uint64_t revision,
                                   const std::vector<pb::PnMember>& added = {}) = 0;
    // The operator deletes a PN (cpnsctl pn delete): dissolved at its current revision, and a
    // "pn_deleted" row in the change log (with the PN as it was) in the same transaction, so
    // that the servers tell its PN GW. UNKNOWN_PN when there is no such PN.
    virtual ChangeResult delete_pn(const std::string& gw_id, const std::string& pn_id) = 0;
    // The operator orders a LocalEUKey re-key (cpnsctl rekey): if the PN (gw_id, pn_id) lists
    // `pne_id` with a LocalEUKey, a "rekey" row goes into the change log (entity `pne_id`, the
    // PN's revision as the payload, in decimal) for the servers to send to its PN GW. Refused
    // (UNKNOWN_PN, NOT_A_MEMBER, NO_LOCAL_EUKEY; inventory: the PN as it is) writes nothing.
    virtual ChangeResult order_rekey(const std::string& gw_id, const std::string& pn_id,
                                     const std::string& pne_id) = 0;
    // The PNs that list `pne_id` as a member (at most kMaxPnsPerPne), ordered by (gw_id, pn_id).
    virtual std::vector<pb::PnInventory> pns_of(const std::string& pne_id) = 0;
    // Change log: the newest seq (0 when empty), and the rows after `seq`, oldest first, at most
    // `limit`. Rows older than kChangeLogKeep entries are pruned as new ones are added.
    virtual std::int64_t change_log_head() = 0;
    virtual std::vector<ChangeEvent> change_log_after(std::int64_t seq, std::size_t limit) = 0;
    // The inventory as registered, members in their original order.
    virtual std::optional<pb::PnInventory> get_pn(const std::string& gw_id,
                                                  const std::string& pn_id) = 0;
    // Ordered by (gw_id, pn_id).
    virtual std::vector<pb::PnInventory> list_pns(
        std::optional<std::string> gw_id = std::nullopt) = 0;

    // How many PNs, and how many entities (of `kind`), are stored: the server's gauges, counted
    // without reading (or holding) the rows. The default implementations (for other Store
    // implementations) read them.
    virtual std::size_t count_pns() { return list_pns().size(); }
    virtual std::size_t count_entities(std::optional<EntityKind> kind = std::nullopt) {
        return list_entities(kind).size();
    }

    virtual void audit(const AuditRecord& r) = 0;
    // Several records in one transaction (one commit, not one per record).
    virtual void audit_many(const std::vector<AuditRecord>& records) {
        for (const auto& r : records) audit(r);
    }
    virtual std::vector<AuditRecord> audit_log(std::size_t limit) = 0;  // newest first

    // Consistency check over the whole store (one snapshot): returns problems found (empty =
    // consistent): a PN without members, members referencing unknown PNs, members that are not
    // PNE entities, duplicate members, unreadable sealed keys, entity rows refused by the
    // integrity check (one problem per entity; unreadable rows in general).
    virtual std::vector<std::string> check() = 0;
};

// url: "sqlite:/path/to/file.db" (or a plain path) or "postgresql://..." / "postgres://..." /
// "host=... dbname=..." (libpq conninfo). Applies the schema migrations; the migration to
// schema version 2 re-seals and MACs the rows of a version 1 database with this master key
// (StoreError, nothing changed, when one does not open under it). StoreError when the
// database cannot be opened or migrated, or the master key is all zeros.
std::unique_ptr<Store> open_store(const std::string& url, const SecretKey& master_key);

// The master key: from the file named by `path` if non-empty (64 hex digits, optional trailing
// newline; a file readable by group/others is refused), else from env CPNS_MASTER_KEY (hex).
// Never from the database. StoreError with a clear message if neither is available or the key
// is malformed.
SecretKey load_master_key(const std::string& path);

}  // namespace cpns::store
