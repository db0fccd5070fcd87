// The operator's actions on the store, shared by cpnsctl (on the database) and the management
// API (src/api/server.cpp): both check the same things, make the same change and write the same
// audit record (actor: "cpnsctl", or the API token's name). Also the JSON form of entities, PNs
// and audit records that the API answers with and cpnsctl --api reads back.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/crypto.hpp"
#include "core/lifecycle.hpp"
#include "core/server.hpp"
#include "store/store.hpp"

namespace cpns::api {

// Why an action was refused (nothing changed). The API maps them to NOT_FOUND, CONFLICT and
// MALFORMED_REQUEST; cpnsctl prints the message.
class AdminError : public std::runtime_error {
  public:
    enum class Code { kNotFound, kConflict, kInvalid };
    AdminError(Code code, const std::string& what) : std::runtime_error(what), code_(code) {}
    Code code() const { return code_; }

  private:
    Code code_;
};

std::int64_t wall_now_ms();
// RFC 3339 UTC to the second ("2026-12-07T23:18:10Z"); "-" for 0 or less.
std::string time_text(std::int64_t ms);
// A rotation grace period: a non-negative integer and a unit (ms, s, m, h, d), e.g. "24h"; at
// most kMaxRotationGrace. AdminError kInvalid otherwise.
Millis parse_duration(const std::string& text);

// Every entity must load under the master key before anything new is sealed under it.
void require_master_key_matches(store::Store& st);

// Creates entity `id` with EUKey `key`. `before_write` runs after the checks and before the
// store write (cpnsctl writes the device's key file there). Returns the entity as stored.
store::StoredEntity provision(store::Store& st, const std::string& id, EntityKind kind,
                              const std::string& device_type, const SecretKey& key,
                              const std::string& actor,
                              const std::function<void()>& before_write = {});

struct Rotation {
    store::StoredEntity entity;  // as stored after the rotation
    std::int64_t key_version = 0;
    std::int64_t previous_valid_until_ms = 0;
    Millis grace = 0;
};
// Gives `id` the EUKey `fresh`; the old one stays valid for `grace`. `before_write` as above.
Rotation rotate(store::Store& st, const std::string& id, const SecretKey& fresh, Millis grace,
                const std::string& actor, const std::function<void()>& before_write = {});

// disable / enable / revoke. Enabling a revoked entity is a kConflict.
store::StoredEntity set_status(store::Store& st, const std::string& id, EntityStatus status,
                               const std::string& actor);

struct PnView {
    pb::PnInventory inventory;
    bool orphaned = false;
    std::string gw_status;  // active, disabled, revoked, gone, refused
};
std::vector<PnView> list_pns(store::Store& st, const std::optional<std::string>& gw,
                             bool only_orphaned);
std::optional<PnView> get_pn(store::Store& st, const std::string& gw, const std::string& pn_id);

struct Deleted {
    std::string gw_id;
    std::size_t members = 0;
};
// Deletes PN `pn_id` of `gw` (empty: the one PN GW that has it; kConflict when several do).
Deleted delete_pn(store::Store& st, const std::string& gw, const std::string& pn_id,
                  const std::string& actor);

// Orders a LocalEUKey re-key of `pne_id` in PN `pn_id` of `gw` (empty: the one PN GW that has
// it): the store records the order for the servers (Store::order_rekey) and the audit log the
// order. AdminError (kNotFound: unknown PN; kConflict: not a member, no LocalEUKey) otherwise.
// Returns the PN GW's ID.
std::string order_rekey(store::Store& st, const std::string& gw, const std::string& pn_id,
                        const std::string& pne_id, const std::string& actor);

// The JSON forms (docs/api.yaml: Entity, Pn, AuditRecord). Never a key.
nlohmann::json entity_json(const store::StoredEntity& e);
nlohmann::json pn_json(const PnView& p);
nlohmann::json audit_json(const store::AuditRecord& r);
// And back (cpnsctl --api): what the printers need. std::runtime_error on a wrong shape.
store::StoredEntity entity_from_json(const nlohmann::json& j);
PnView pn_from_json(const nlohmann::json& j);
store::AuditRecord audit_from_json(const nlohmann::json& j);

}  // namespace cpns::api
