// The CPNS Server role, I/O-free: authenticates each PNE of a PN (hash_PNE), hands out the
// LocalEUKeys, registers the PN in the PN Inventory once at least one PNE authenticated, and
// proves itself to each PNE (hash_server_PNE).
#pragma once

#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/role.hpp"

namespace cpns {

enum class EntityKind { kPne, kGw };
enum class EntityStatus { kActive, kDisabled, kRevoked };

// "pne" / "gw", and "active" / "disabled" / "revoked": the words used in provisioning files,
// the store and cpnsctl.
std::string_view to_string(EntityKind kind);
std::string_view to_string(EntityStatus status);
// The inverse of to_string: nullopt for any other word. The only parser of these words.
std::optional<EntityKind> parse_entity_kind(std::string_view word);
std::optional<EntityStatus> parse_entity_status(std::string_view word);

struct EntityRecord {
    EntityKind kind = EntityKind::kPne;
    SecretKey eukey;
    EntityStatus status = EntityStatus::kActive;
};

// Read access to the server's entity database (EUKeys) and PN Inventory. Lookups are
// synchronous and must be cheap (a cache in front of the store); writes go out as effects.
class Directory {
  public:
    virtual ~Directory() = default;
    virtual std::optional<EntityRecord> find(const std::string& id) const = 0;
    virtual bool pn_registered(const std::string& gw_id, const std::string& pn_id) const = 0;
};

// In-memory directory (simulator, tests).
class MemoryDirectory final : public Directory {
  public:
    void add(const std::string& id, EntityRecord rec) { entities_[id] = std::move(rec); }
    void set_status(const std::string& id, EntityStatus st) { entities_.at(id).status = st; }
    std::optional<EntityRecord> find(const std::string& id) const override;
    bool pn_registered(const std::string& gw_id, const std::string& pn_id) const override;
    // Registers a PN; false when (gw, pn) is already registered.
    bool register_pn(const std::string& gw_id, const pb::PnInventory& inv);
    const std::map<std::string, pb::PnInventory>& pns() const { return pns_; }

  private:
    std::map<std::string, EntityRecord> entities_;
    std::map<std::string, pb::PnInventory> pns_;  // key: gw_id + "/" + pn_id
};

struct ServerConfig {
    std::string server_id = "cpns-server";
    LogSink log;
    // Wall-clock time (ms since the Unix epoch) for the PN Inventory's timestamps. Injected
    // like everything else; unset: the monotonic `now` is recorded instead.
    std::function<std::uint64_t()> wall_clock_ms;
};

class Server {
  public:
    Server(ServerConfig config, const Directory& directory, Random& random);

    // `from` is the PN GW ID the transport authenticated (PSK-TLS identity).
    Effects on_message(const std::string& from, const pb::Envelope& env, Millis now);
    // The store made (or failed to make) a PersistPnEffect durable. REASON_NONE = durable.
    Effects on_persisted(const std::string& gw_id, const std::string& pn_id,
                         pb::FailureReason result, Millis now);
    Effects on_timer(Millis now);
    Millis next_deadline() const;

    std::size_t active_sessions() const { return sessions_.size(); }
    const Counters& counters() const { return counters_; }

  private:
    struct PneState {
        pb::PneJoin join;
        PneRole role = PneRole::kInvitee;
        bool pending = false;  // asked to authenticate
        bool authenticated = false;
        pb::FailureReason reason = pb::REASON_NONE;
        SecretKey sk;
        Hash hash_server{};
    };
    enum class Phase { kWaitAuthResponse, kWaitPersist };
    struct Session {
        std::string gw_id;
        std::string pn_id;
        pb::PnRegistrationRequest request;
        Bytes rand_server;
        std::map<std::string, PneState> pnes;
        Phase phase = Phase::kWaitAuthResponse;
        Millis deadline = kNever;
        pb::PnInventory inventory;
    };
    using Key = std::pair<std::string, std::string>;  // (gw_id, pn_id)

    void log(LogLevel level, const std::string& text) const;
    void send(Effects& out, const std::string& to, pb::Envelope env);
    void send_error(Effects& out, const std::string& to, const std::string& pn_id,
                    pb::FailureReason reason, const std::string& detail);
    void set_deadline(Session& s, Millis deadline);
    void finish(Effects& out, Session& s, bool registered, pb::FailureReason reason,
                const std::string& detail, Millis now);
    void remember(const Key& key, Millis now);
    PneContext context(const Session& s, const std::string& pne_id, const PneState& p) const;

    void handle_registration(Effects& out, const std::string& from,
                             const pb::PnRegistrationRequest& m, Millis now);
    void handle_auth_response(Effects& out, const std::string& from,
                              const pb::AuthenticationResponse& m, Millis now);

    ServerConfig cfg_;
    const Directory& dir_;
    Random& random_;
    std::map<Key, Session> sessions_;
    std::set<std::pair<Millis, Key>> timers_;
    std::map<Key, Millis> finished_;  // recently ended establishments (replay detection)
    std::deque<std::pair<Millis, Key>> finished_order_;
    Counters counters_;
};

}  // namespace cpns
