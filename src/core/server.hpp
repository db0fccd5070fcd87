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

#include "core/lifecycle.hpp"
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

// EUKey rotation (docs/operations.md, "EUKey rotation"): how long the previous EUKey of an
// entity stays valid after `cpnsctl rotate`, unless --grace says otherwise, and the longest
// grace accepted.
inline constexpr Millis kDefaultRotationGrace = 24LL * 60 * 60 * 1000;   // 24 h
inline constexpr Millis kMaxRotationGrace = 30LL * 24 * 60 * 60 * 1000;  // 30 days

// The EUKey an entity had before its last rotation. It authenticates until expires_at_ms
// (wall clock, ms since the Unix epoch); after that it authenticates nothing and is only
// recognised, so that a device still using it fails with KEY_EXPIRED instead of a bare
// authentication failure.
struct PreviousEuKey {
    SecretKey eukey;
    std::int64_t expires_at_ms = 0;
};

struct EntityRecord {
    EntityRecord() = default;
    // (A constructor, not an aggregate: callers that predate `previous` give three values.)
    EntityRecord(EntityKind k, SecretKey key, EntityStatus st,
                 std::optional<PreviousEuKey> prev = std::nullopt)
        : kind(k), eukey(std::move(key)), status(st), previous(std::move(prev)) {}

    EntityKind kind = EntityKind::kPne;
    SecretKey eukey;
    EntityStatus status = EntityStatus::kActive;
    std::optional<PreviousEuKey> previous;  // set after a rotation (sealed in the store)

    // The previous EUKey if it is still within its grace period at `wall_ms`, else nullptr.
    const SecretKey* previous_in_grace(std::int64_t wall_ms) const {
        return previous && wall_ms < previous->expires_at_ms ? &previous->eukey : nullptr;
    }
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
    // Forgets an entity, and every PN of a PN GW (the simulator frees a finished wave).
    void remove(const std::string& id) { entities_.erase(id); }
    std::size_t remove_pns_of(const std::string& gw_id);
    std::optional<EntityRecord> find(const std::string& id) const override;
    bool pn_registered(const std::string& gw_id, const std::string& pn_id) const override;
    // Registers a PN; false when (gw, pn) is already registered.
    bool register_pn(const std::string& gw_id, const pb::PnInventory& inv);
    // Applies a lifecycle change as the store does (core/lifecycle.hpp, change_inventory).
    ChangeResult change_pn(const std::string& gw_id, const std::string& pn_id, pb::ChangeOp op,
                           const std::string& pne_id, std::uint64_t revision,
                           const std::vector<pb::PnMember>& added = {});
    const std::map<std::string, pb::PnInventory>& pns() const { return pns_; }

  private:
    std::map<std::string, EntityRecord> entities_;
    std::map<std::string, pb::PnInventory> pns_;  // key: gw_id + "/" + pn_id
};

// Deliberate weaknesses, for tests only: each opens one hole so that a test can show the
// security explorer finds it (docs/security.md). No daemon, tool or configuration file sets
// them; the server logs an error at construction when one is on.
struct Weakening {
    bool skip_hash_pne_check = false;         // accept any hash_PNE
    bool skip_invitation_list_check = false;  // register invitees outside the list
    bool leak_sk_to_gw = false;           // hand SK_PNE out as the LocalEUKey (the PN GW gets it)
    bool skip_leave_proof_check = false;  // accept a leave whatever its proof
    bool any() const {
        return skip_hash_pne_check || skip_invitation_list_check || leak_sk_to_gw ||
               skip_leave_proof_check;
    }
};

struct ServerConfig {
    std::string server_id = "cpns-server";
    LogSink log;
    // Wall-clock time (ms since the Unix epoch) for the PN Inventory's timestamps. Injected
    // like everything else; unset: the monotonic `now` is recorded instead.
    std::function<std::uint64_t()> wall_clock_ms;
    Weakening weaken;  // tests only
};

class Server {
  public:
    Server(ServerConfig config, const Directory& directory, Random& random);

    // `from` is the PN GW ID the transport authenticated (PSK-TLS identity).
    ServerEffects on_message(const std::string& from, const pb::Envelope& env, Millis now);
    // The store made (or failed to make) a PersistPnEffect durable. REASON_NONE = durable.
    ServerEffects on_persisted(const std::string& gw_id, const std::string& pn_id,
                               pb::FailureReason result, Millis now);
    ServerEffects on_timer(Millis now);
    Millis next_deadline() const;
    // The store applied (or refused) a ChangePnEffect (core/lifecycle.hpp). A result that comes
    // after kPersistTimeout, when the PN GW was already told STORE_UNAVAILABLE, is sent too: the
    // PN GW adopts any accepted change newer than what it holds.
    ServerEffects on_changed(const std::string& gw_id, const std::string& pn_id,
                             const ChangeResult& result, Millis now);
    // A change the server decides itself: a revoked or disabled PNE is removed from a PN
    // (op CHANGE_REMOVE, `why` REVOKED). It goes to the store like a PN GW's request, at
    // `revision`, and the PN GW is told with an unsolicited PnChangeResponse. When the store
    // finds it already done (by another server instance) the PN GW is sent the PN as it is.
    ServerEffects push_change(const std::string& gw_id, const std::string& pn_id, pb::ChangeOp op,
                              const std::string& pne_id, std::uint64_t revision,
                              pb::FailureReason why, Millis now);
    // A change already made in the store by someone else (cpnsctl pn delete): the PN GW is told.
    ServerEffects announce(const std::string& gw_id, pb::ChangeOp op, const std::string& pne_id,
                           const ChangeResult& result, const std::string& detail);

    // The operator ordered a LocalEUKey re-key (cpnsctl rekey; the daemon read it from its
    // store's change log): the PN GW, if `linked`, is sent the order (a PnChangeRequest with
    // CHANGE_REKEY) and runs the re-key; its report (PnChangeNotifyAck.rekeyed: done, or an
    // ErrorReport naming the PN) or kRekeyOrderTimeout ends the order with an OutcomeEffect
    // (operation "rekey", detail "PNE: ..."). Not linked: PEER_UNREACHABLE at once.
    ServerEffects order_rekey(const std::string& gw_id, const std::string& pn_id,
                              const std::string& pne_id, std::uint64_t revision, bool linked,
                              Millis now);
    std::size_t rekey_orders() const { return orders_.size(); }

    std::size_t active_sessions() const { return sessions_.size(); }
    std::size_t pending_changes() const { return changes_.size(); }
    const Counters& counters() const { return counters_; }

    // A session's states (none -> wait_auth_response -> wait_persist -> done) and each
    // PNE's within it (none -> pending -> authenticated | failed, or none -> refused).
    enum class Phase { kNone, kWaitAuthResponse, kWaitPersist, kDone };
    enum class PneAuth { kNone, kPending, kAuthenticated, kFailed, kRefused };
    static std::string_view to_string(Phase p);
    static std::string_view to_string(PneAuth a);
    // The state of an establishment in flight and of one PNE in it (nullopt: none; a finished
    // establishment has no session).
    std::optional<Phase> phase(const std::string& gw_id, const std::string& pn_id) const;
    std::optional<PneAuth> pne_auth(const std::string& gw_id, const std::string& pn_id,
                                    const std::string& pne_id) const;

  private:
    using Out = ServerEffects;
    struct PneState {
        pb::PneJoin join;
        PneRole role = PneRole::kInvitee;
        PneAuth auth = PneAuth::kNone;
        pb::FailureReason reason = pb::REASON_NONE;
        SecretKey sk;
        Hash join_digest{};
        Hash hash_pne{};
        Hash hash_server{};
        bool previous_key = false;  // proved with its previous EUKey, within the grace period
        // Its EUKey keyed once for this session's three or four KDF calls (the KEK of its
        // LocalEUKey copy, SK_PNE, hash_PNE, hash_server_PNE); dropped after the last one.
        std::optional<KeyedHmac> eukey_mac;
    };
    struct Session {
        std::string gw_id;
        std::string pn_id;
        pb::PnRegistrationRequest request;
        Bytes rand_server;
        std::map<std::string, PneState> pnes;
        Phase phase = Phase::kNone;
        Millis deadline = kNever;
        pb::PnInventory inventory;
        // A PN update (request.add): NOTICE_UPDATED for each earlier member, proven.
        std::vector<pb::PnChangeNotice> notices;
    };
    using Key = std::pair<std::string, std::string>;  // (gw_id, pn_id)

    // The only places a session's or a PNE's state changes: set it (and the session's
    // deadline), log and record the transition.
    void enter(Out& out, Session& s, Phase to, Millis deadline, const std::string& reason);
    void enter(Out& out, const Session& s, const std::string& pne_id, PneState& p, PneAuth to,
               pb::FailureReason reason);
    // (state of the addressed session, message) -> handled, or the one typed refusal.
    static bool accepts(Phase phase, pb::Envelope::BodyCase body);
    void refuse(Out& out, const std::string& from, const pb::Envelope& env, Phase phase,
                Millis now);
    // A finished establishment still within kReplayMemory.
    bool ended_recently(const Key& key, Millis now) const;

    void log(LogLevel level, const std::string& text) const;
    void send(Out& out, const std::string& to, pb::Envelope env);
    void send_error(Out& out, const std::string& to, const std::string& pn_id,
                    pb::FailureReason reason, const std::string& detail);
    void finish(Out& out, Session& s, bool registered, pb::FailureReason reason,
                const std::string& detail, Millis now);
    void remember(const Key& key, Millis now);
    PneContext context(const Session& s, const std::string& pne_id, const PneState& p) const;

    std::optional<std::pair<pb::FailureReason, std::string>> check_registration(
        const std::string& from, const pb::PnRegistrationRequest& m, Millis now) const;
    void handle_registration(Out& out, const std::string& from, const pb::PnRegistrationRequest& m,
                             Millis now);
    std::size_t admit_pnes(Out& out, Session& s, const EntityRecord& gw,
                           pb::AuthenticationRequest& a, Millis now);
    void handle_auth_response(Out& out, const std::string& from,
                              const pb::AuthenticationResponse& m, Millis now);
    void verify_pne(Out& out, Session& s, const std::string& id, PneState& p,
                    const pb::PneAuthResult* result, Millis now);
    // Wall-clock milliseconds for key expiry (cfg_.wall_clock_ms; unset: `now`).
    std::int64_t wall_ms(Millis now) const;
    void request_persist(Out& out, Session& s, Millis now);
    void prove_server(Session& s);
    // A PN update's store result (request.add): the PN with its new members, or the refusal.
    void finish_add(Out& out, Session& s, const ChangeResult& result, Millis now);
    const PneState* initiator(const Session& s) const;

    // Lifecycle (server_lifecycle.cpp).
    struct PendingChange {
        pb::ChangeOp op = pb::CHANGE_UNSPECIFIED;
        std::string pne_id;
        std::string rand_pne;  // a leave's, for the NOTICE_LEFT that answers it
        Millis deadline = kNever;
        pb::FailureReason pushed = pb::REASON_NONE;  // decided by the server: why
        int attempts = 0;
        pb::PnChangeRequest request;  // the PN GW's (not for the server's own changes)
    };
    // The answers to the PN GWs' changes, for their repeats (kChangeAnswerMemory, at most
    // kMaxServerChanges): a repeat of the same request gets the same answer.
    struct AnsweredChange {
        pb::PnChangeRequest request;
        pb::Envelope answer;
        Millis until = 0;
    };
    std::map<Key, AnsweredChange> answered_;
    std::deque<std::pair<Millis, Key>> answered_order_;
    static bool same_request(const pb::PnChangeRequest& a, const pb::PnChangeRequest& b);
    void respond(Out& out, const std::string& gw_id, const std::string& pn_id,
                 const PendingChange& p, const ChangeResult& result, const std::string& detail,
                 Millis now);
    void handle_change_request(Out& out, const std::string& from, const pb::PnChangeRequest& m,
                               Millis now);
    void refuse_change(Out& out, const std::string& gw_id, const pb::PnChangeRequest& m,
                       pb::FailureReason reason, const std::string& why);
    // Resynchronisation (docs/protocol.md): each PN the PN GW holds is read from the store
    // (ChangePnEffect CHANGE_SYNC, held revision in the PendingChange's request); the answer
    // goes out only for a PN whose revision differs or that is gone (finish_sync).
    void handle_sync_request(Out& out, const std::string& from, const pb::PnSyncRequest& m,
                             Millis now);
    void finish_sync(Out& out, const std::string& gw_id, const std::string& pn_id,
                     const PendingChange& p, const ChangeResult& result, Millis now);
    void expire_changes(Out& out, Millis now);
    std::map<Key, PendingChange> changes_;
    // The members a PN GW named for each PN of its sync being read (same keys as changes_): the
    // PNEs to tell, whether the store still lists them or not.
    std::map<Key, std::vector<std::string>> sync_held_;
    struct RekeyOrder {
        std::string pne_id;
        Millis deadline = kNever;
    };
    std::map<Key, RekeyOrder> orders_;  // at most kMaxServerChanges
    void end_order(Out& out, const Key& key, bool success, pb::FailureReason reason,
                   const std::string& detail);
    void handle_gw_report(Out& out, const std::string& from, const pb::Envelope& env);
    std::set<std::pair<Millis, Key>> change_timers_;

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
