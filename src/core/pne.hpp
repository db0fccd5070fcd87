// The PNE role (a device joining a Personal Network), I/O-free.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/role.hpp"

namespace cpns {

struct PneConfig {
    std::string pne_id;
    SecretKey eukey;                           // shared with the CPNS Server
    std::optional<SecretKey> preassigned_key;  // shared with its PN GW (devices without UI)
    pb::DeviceCapabilities capabilities;       // capabilities.enough_ui drives LocalEUKey
    std::vector<pb::ContentInfo> contents;
    bool pan_secure = false;         // the PAN to the PN GW protects the CPNS messages itself
    bool accept_invitations = true;  // answer PN Setup Notify / Invite with accept
    pb::EntityMode mode = pb::MODE_PNE;
    // How long a neighbour not held by a PAN link stays without being heard again (clamped to
    // kMinNeighbourTtl..kMaxNeighbourTtl).
    Millis neighbour_ttl = kNeighbourTtl;
    LogSink log;
};

// What a PNE keeps of a PN it joined.
struct PneMembership {
    std::string pn_id;
    std::string gw_id;
    pb::PnInventory inventory;
    std::optional<SecretKey> local_eukey;  // shared with the PN GW, when one was assigned
    SecretKey sk_pne;                      // shared with the CPNS Server
};

class Pne {
  public:
    Pne(PneConfig config, Random& random);

    // Step 0: broadcast an Entity Discovery Request on the PAN.
    PneEffects discover(Millis now);
    // 5.2.1.1 step 1: ask `gw_id` for a PN. `invited` is used with SETUP_INVITE_LIST.
    PneEffects start_setup(const std::string& gw_id, pb::SetupType type,
                           std::vector<std::string> invited, Millis now);

    // `origin`: how and from which address it came (discovery bounds only; may be left empty).
    PneEffects on_message(const std::string& from, const pb::Envelope& env, Protection protection,
                          Millis now, const Origin& origin = {});
    PneEffects on_tls_established(const std::string& peer, Millis now);
    PneEffects on_tls_failed(const std::string& peer, Millis now);
    PneEffects on_link_down(const std::string& peer, Millis now);
    PneEffects on_timer(Millis now);
    // The next wait of an establishment that ends (kNever: none).
    Millis next_deadline() const;
    // When the next neighbour not held by a link ages out (kNoExpiry: none); see
    // Gateway::neighbour_expiry().
    Millis neighbour_expiry() const { return neighbours_.next_expiry(); }

    // PN lifecycle (docs/protocol.md, "PN lifecycle"): leave a PN this PNE is a member of. The
    // outcome (operation "leave") comes when the server's proven answer arrives through the PN
    // GW, or after kLeaveResponseTimeout. One leave at a time.
    PneEffects leave(const std::string& pn_id, Millis now);
    bool leaving() const { return leave_.has_value(); }

    const std::string& id() const { return cfg_.pne_id; }
    bool busy() const { return state_ != State::kIdle; }
    bool requests_local_eukey() const { return cfg_.capabilities.enough_ui(); }
    bool pan_secure() const { return cfg_.pan_secure; }
    // Entities discovered; an endpoint learned once is never replaced by a datagram (see
    // core/neighbours.hpp), so a PN GW's entry keeps the endpoint first heard or reached over
    // a PSK-TLS link.
    const std::map<std::string, Neighbour>& neighbours() const { return neighbours_.entries(); }
    const NeighbourTable& neighbour_table() const { return neighbours_; }
    const std::map<std::string, PneMembership>& memberships() const { return memberships_; }
    const Counters& counters() const { return counters_; }
    // What survives a restart: the PNs joined, with their LocalEUKey and SK_PNE. The caller
    // seals it at rest. import_state() returns false (nothing changed) for another PNE's state.
    pb::PneState export_state() const;
    bool import_state(const pb::PneState& state);

    // The PNE's states; each run goes kIdle -> ... -> kIdle. to_string gives the names used
    // in transitions ("idle", "tls_before_join", ...).
    enum class State {
        kIdle,
        kTlsBeforeJoin,      // pre-assigned PSK-TLS before the first message
        kWaitAuthRequest,    // asked / accepted; waiting for the relayed Authentication Request
        kTlsBeforeAuthResp,  // LocalEUKey PSK-TLS before sending hash_PNE
        kWaitResult,         // hash_PNE sent; waiting for hash_server_PNE
    };
    static std::string_view to_string(State s);
    State state() const { return state_; }

  private:
    using Out = PneEffects;
    struct Session {
        std::string gw_id;
        std::string pn_id;  // empty for the initiator until the Authentication Request
        Flow flow = Flow::kPneInitiated;
        PneRole role = PneRole::kInitiator;
        pb::SetupType setup_type = pb::SETUP_UNSPECIFIED;
        std::vector<std::string> invited;
        Bytes rand_pne;
        Hash join_digest{};  // of the join this PNE sent
        Bytes rand_server;
        std::optional<SecretKey> local_eukey;
        SecretKey sk;
        Hash hash_pne{};
        // This PNE's EUKey keyed once for the session's KDF calls (the KEK of its LocalEUKey
        // copy, SK_PNE, hash_PNE, hash_server_PNE); wiped with the session.
        std::optional<KeyedHmac> eukey_mac;
        pb::Envelope pending;  // first message, held until TLS is up
        Millis deadline = kNever;
        // A LocalEUKey re-key of the membership in pn_id (docs/protocol.md, "LocalEUKey
        // re-key"): the membership keeps its old key unless the result verifies.
        bool rekey = false;
    };

    // The only place state_ changes: sets the state and its deadline, logs and records it.
    void enter(Out& out, State to, Millis deadline, const std::string& reason);
    // Whether `body` may be handled in `state`; everything else goes to refuse().
    static bool accepts(State state, pb::Envelope::BodyCase body);
    void refuse(Out& out, const std::string& from, const pb::Envelope& env);
    void dispatch(Out& out, const std::string& from, const pb::Envelope& env, Protection protection,
                  const Origin& origin, Millis now);

    void log(LogLevel level, const std::string& text) const;
    void send(Out& out, const std::string& to, pb::Envelope env);
    pb::PneJoin make_join();
    bool tls_needed() const { return !cfg_.pan_secure; }
    bool tls_up_with(const std::string& peer, const std::string& identity) const;
    bool can_protect_pan() const;
    std::optional<std::pair<pb::FailureReason, std::string>> check_setup(
        const std::string& gw_id, pb::SetupType type,
        const std::vector<std::string>& invited) const;
    void begin_join(Out& out, pb::Envelope first, Millis now, const std::string& why);
    void finish(Out& out, bool success, pb::FailureReason reason, std::string detail,
                const pb::PnInventory* inventory = nullptr);
    void abort(Out& out, pb::FailureReason reason, std::string detail, bool tell_gw);
    PneContext context() const;

    void handle_discovery(Out& out, const std::string& from, const pb::Envelope& env,
                          Protection protection, const Origin& origin, Millis now);
    void decline(Out& out, const std::string& to, const std::string& pn_id,
                 pb::FailureReason reason);
    void handle_invitation(Out& out, const std::string& from, const std::string& pn_id,
                           const std::string& gw_id, Flow flow, Millis now, bool rekey = false);
    void handle_auth_request(Out& out, const std::string& from,
                             const pb::PneAuthenticationRequest& m, Millis now);
    bool open_local_eukey(Out& out, const pb::PneAuthenticationRequest& m);
    void send_auth_response(Out& out, Millis now);
    KeyedHmac& eukey_mac();  // the session's, made at its first use
    void handle_result(Out& out, const std::string& from, const pb::PnResult& r,
                       Protection protection);
    void accept_result(Out& out, const pb::PnResult& r);
    std::optional<std::string> check_inventory(const pb::PnInventory& inv) const;
    void handle_error(Out& out, const std::string& from, const pb::ErrorReport& m);

    // Lifecycle (pne_lifecycle.cpp).
    struct PendingLeave {
        std::string pn_id;
        std::string gw_id;
        Bytes rand_pne;
        Millis deadline = kNever;
        bool retried = false;  // asked again once after a STALE_REVISION refusal
        // A withdrawal: this PNE sent hash_PNE for the PN but refused its result, or the result
        // never came, so the server may have registered it; it holds no membership.
        bool withdraw = false;
    };
    // Starts a withdrawal from `pn_id` (see PendingLeave::withdraw).
    void start_withdraw(Out& out, const std::string& pn_id, const std::string& gw_id, Millis now);
    // Checks a notice answering a withdrawal (no membership to check it against).
    bool withdraw_notice_ok(const std::string& from, const pb::PnChangeNotice& n,
                            pb::NoticeKind kind);
    Millis now_ = 0;  // of the call being handled (a withdrawal starts from finish())
    bool withdraw_on_failure_ = false;  // the next finish() after hash_PNE withdraws
    void send_leave(Out& out, const PneMembership& m, Millis now);
    void handle_leave_response(Out& out, const std::string& from, const pb::PnLeaveResponse& m,
                               Millis now);
    void handle_change_notify(Out& out, const std::string& from, const pb::PnChangeNotice& n);
    // Checks a notice (the server's proof, this PNE, the PN and PN GW of the membership, a newer
    // revision, what its kind implies) and applies it; false, nothing changed, if it fails.
    bool apply_notice(Out& out, const std::string& from, const pb::PnChangeNotice& n);
    void finish_leave(Out& out, const std::string& pn_id, bool left, pb::FailureReason reason,
                      const std::string& detail, bool withdraw = false);
    std::optional<PendingLeave> leave_;

    PneConfig cfg_;
    Random& random_;
    State state_ = State::kIdle;
    Session s_;
    std::string tls_peer_;
    std::string tls_identity_;
    NeighbourTable neighbours_;
    std::map<std::string, PneMembership> memberships_;
    Counters counters_;
};

}  // namespace cpns
