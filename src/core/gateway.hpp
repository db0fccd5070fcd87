// The PN GW role, I/O-free: relays between the PNEs on its PAN and the CPNS Server, keeps the
// PN Inventory and the routing table, and holds the LocalEUKeys it shares with PNEs. It never
// sees a PNE's EUKey or SK_PNE.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/pne.hpp"
#include "core/role.hpp"

namespace cpns {

// The PAN link to one PNE, as configured on the PN GW.
struct PanLinkConfig {
    std::optional<SecretKey> preassigned_key;  // for PNEs without enough UI
    bool pan_secure = false;
};

struct GatewayConfig {
    std::string gw_id;
    SecretKey eukey;  // shared with the CPNS Server
    pb::DeviceCapabilities capabilities;
    pb::SubscriptionInfo subscription;
    std::string server_id = "cpns-server";
    std::map<std::string, PanLinkConfig> pan_links;  // by PNE ID
    bool default_pan_secure = false;                 // for PNEs not listed
    pb::EntityMode mode = pb::MODE_PN_GW;
    // How long a neighbour not held by a PAN link stays without being heard again (clamped to
    // kMinNeighbourTtl..kMaxNeighbourTtl).
    Millis neighbour_ttl = kNeighbourTtl;
    LogSink log;
};

class Gateway {
  public:
    Gateway(GatewayConfig config, Random& random);

    // Step 0: broadcast an Entity Discovery Request on the PAN.
    GatewayEffects discover(Millis now);
    // 5.2.1.2 step 1-2: invite PNEs into a new PN. Empty list: every PNE discovered.
    // last_pn_id() names the PN it allocated (empty if it refused at once).
    GatewayEffects invite(std::vector<std::string> pne_ids, Millis now);
    const std::string& last_pn_id() const { return last_pn_id_; }

    // `origin` (how and from which address it came) only bounds admission and the neighbour
    // table; a caller that cannot tell leaves it empty.
    GatewayEffects on_message(const std::string& from, const pb::Envelope& env,
                              Protection protection, Millis now, const Origin& origin = {});
    GatewayEffects on_tls_established(const std::string& peer, const std::string& identity,
                                      Millis now);
    GatewayEffects on_tls_failed(const std::string& peer, Millis now);
    // The transport to `peer` is up. For the server (its first link and every reconnect) the PN
    // GW sends a resynchronisation (PnSyncRequest) naming every PN it holds with its revision
    // (docs/protocol.md, "Resynchronisation").
    GatewayEffects on_link_up(const std::string& peer, Millis now);
    // The transport to `peer` is gone (or, for the server, could not be authenticated:
    // reason GATEWAY_AUTHENTICATION_FAILED).
    GatewayEffects on_link_down(const std::string& peer, Millis now,
                                pb::FailureReason reason = pb::PEER_UNREACHABLE);
    GatewayEffects on_timer(Millis now);
    // The next wait of an establishment that ends (kNever: none).
    Millis next_deadline() const;
    // When the next neighbour not held by a link ages out (kNoExpiry: none). Not a wait of the
    // protocol, so not in next_deadline(): a caller that lists neighbours also calls
    // on_timer() then, which drops them.
    Millis neighbour_expiry() const { return neighbours_.next_expiry(); }

    // PN lifecycle (docs/protocol.md, "PN lifecycle"): remove a PNE from a registered PN, or
    // dissolve it. The server records the change before anyone is told; the outcome
    // (operation "remove" / "dissolve") comes when it answers, or after kChangeResponseTimeout.
    GatewayEffects remove(const std::string& pn_id, const std::string& pne_id, Millis now);
    GatewayEffects dissolve(const std::string& pn_id, Millis now);
    // PN update (docs/protocol.md, "Adding PNEs to a PN"): invite PNEs into the registered PN
    // `pn_id`, through the same authentication as 5.2.1.2; the server adds those that
    // authenticate at the PN's current revision, and the earlier members are told. Empty list:
    // every live neighbour not yet in the PN. Outcome operation "add".
    GatewayEffects add(const std::string& pn_id, std::vector<std::string> pne_ids, Millis now);
    // LocalEUKey re-key (docs/protocol.md, "LocalEUKey re-key"): `pne_id`, a member of the
    // registered PN `pn_id` with a LocalEUKey, authenticates again as in 5.2.1.2 and gets a new
    // LocalEUKey; the server records it at the PN's revision (+1, membership unchanged) and the
    // other members are told. This PN GW keeps the old LocalEUKey in force until the PNE
    // confirms that it checked the server's proof and took the new one (within
    // kRekeyConfirmTimeout), then drops the old one and closes a PSK-TLS session made with it.
    // Outcome operation "rekey".
    GatewayEffects rekey(const std::string& pn_id, const std::string& pne_id, Millis now);
    bool change_pending(const std::string& pn_id) const {
        return changes_.count(pn_id) != 0 || rekeys_.count(pn_id) != 0;
    }
    // Re-keys whose new LocalEUKey waits for its PNE's confirmation.
    std::size_t rekeys_pending() const { return rekeys_.size(); }
    // Change notices sent and not yet acknowledged by their PNE (repeated until they are).
    std::size_t notices_pending() const { return notices_.size(); }
    // Lifecycle changes asked of the server and not yet answered.
    std::size_t changes_pending() const { return changes_.size(); }
    // The PAN endpoint announced in discovery ("host:port"), set by the transport.
    void set_endpoint(std::string endpoint) { endpoint_ = std::move(endpoint); }

    // The PSK for a PNE's TLS ClientHello identity (see docs/protocol.md, "PSK identities").
    std::optional<SecretKey> tls_psk_for(std::string_view identity) const;

    const std::string& id() const { return cfg_.gw_id; }
    const std::map<std::string, pb::PnInventory>& inventory() const { return inventory_; }
    // Routing table of the PNs: PN ID -> PNE IDs reachable in it.
    const std::map<std::string, std::vector<std::string>>& routing_table() const {
        return routing_;
    }
    // The entities discovered on the PAN (entries not held by a link age out after
    // neighbour_table().ttl(); see core/neighbours.hpp). Entries past their time may remain
    // until the next on_timer(); live_pnes() and invitations never count them.
    const std::map<std::string, Neighbour>& neighbours() const { return neighbours_.entries(); }
    const NeighbourTable& neighbour_table() const { return neighbours_; }
    std::uint64_t neighbours_evicted() const { return neighbours_.evicted(); }
    std::optional<SecretKey> local_eukey(const std::string& pn_id, const std::string& pne_id) const;
    std::size_t active_sessions() const { return sessions_.size(); }
    const Counters& counters() const { return counters_; }
    // Every byte of state this PN GW holds (keys included), for inspection by tests.
    Bytes snapshot() const;
    // What survives a restart: the PN Inventory (and so the routing table) and the
    // LocalEUKeys of established PNs. The caller seals it at rest.
    pb::GwState export_state() const;
    // Restores an exported state; false (nothing changed) if it belongs to another PN GW or
    // is malformed.
    bool import_state(const pb::GwState& state);

    // A PN session's states (none -> collect_joins -> wait_auth_request -> collect_auth ->
    // wait_registration -> done) and each member's within it (none -> invited -> joined ->
    // auth_pending -> answered -> member, or -> failed from any).
    enum class Phase {
        kNone,
        kCollectJoins,
        kWaitAuthRequest,
        kCollectAuth,
        kWaitRegistration,
        kDone
    };
    enum class MemberState { kNone, kInvited, kJoined, kAuthPending, kAnswered, kMember, kFailed };
    static std::string_view to_string(Phase p);
    static std::string_view to_string(MemberState m);
    // The state of a PN being established here and of one of its members (nullopt: no such
    // session or member; a finished PN has no session).
    std::optional<Phase> phase(const std::string& pn_id) const;
    std::optional<MemberState> member_state(const std::string& pn_id,
                                            const std::string& pne_id) const;

  private:
    using Out = GatewayEffects;
    struct Member {
        std::string pne_id;
        PneRole role = PneRole::kInvitee;
        MemberState state = MemberState::kNone;
        pb::PneJoin join;
        std::optional<SecretKey> local_eukey;
        std::string hash_pne;
        pb::FailureReason reason = pb::REASON_NONE;
        bool reachable = true;  // a result can be sent to it
        // A PSK-TLS handshake naming it failed while it had no working PSK-TLS link: its
        // reason if it never answers (the failure itself may come from anyone).
        bool tls_failed = false;
        // A re-key: a PSK-TLS session came up with the new LocalEUKey during it.
        bool new_key_session = false;
    };
    struct Session {
        std::string pn_id;
        Flow flow = Flow::kPneInitiated;
        std::string initiator;
        pb::SetupType setup_type = pb::SETUP_UNSPECIFIED;
        std::vector<std::string> invited;
        Phase phase = Phase::kNone;
        std::map<std::string, Member> members;
        Millis deadline = kNever;
        // Admission: opened over PSK-TLS or by the PN GW itself, else the source it came from.
        bool authenticated = true;
        std::string source;
        // A PN update: the PNEs join the registered PN pn_id, which was at `revision`.
        bool add = false;
        std::uint64_t revision = 0;
        // A LocalEUKey re-key of its one member, a member of the registered PN pn_id.
        bool rekey = false;
    };

    // The only places a session's or a member's state changes: set it (and the session's
    // deadline), log and record the transition.
    void enter(Out& out, Session& s, Phase to, Millis deadline, const std::string& reason);
    void enter(Out& out, const Session& s, Member& m, MemberState to, const std::string& reason);
    // The phase of the session `env` addresses (kNone: none), then whether it may be handled.
    Phase phase_for(const std::string& from, const pb::Envelope& env) const;
    static bool accepts(bool from_server, Phase phase, pb::Envelope::BodyCase body);
    void refuse(Out& out, const std::string& from, const pb::Envelope& env);
    void dispatch(Out& out, const std::string& from, const pb::Envelope& env, Protection protection,
                  Millis now, const Origin& origin);

    void log(LogLevel level, const std::string& text) const;
    void send(Out& out, const std::string& to, pb::Envelope env, bool must_protect = false);
    void send_error(Out& out, const std::string& to, const std::string& pn_id,
                    pb::FailureReason reason, const std::string& detail);
    bool pan_secure(const std::string& pne_id) const;
    bool tls_up(const std::string& pne_id) const { return tls_links_.count(pne_id) != 0; }
    std::string new_pn_id();
    Session* session_of_pne(const std::string& pne_id, const std::string& pn_id);
    const Session* session_of_pne(const std::string& pne_id, const std::string& pn_id) const;
    void fail_member(Out& out, Session& s, Member& m, pb::FailureReason reason,
                     const std::string& why);
    Session& open_session(Out& out, Session s, Millis now, const std::string& why);
    void add_invitees(Out& out, Session& s, const std::vector<std::string>& targets, Millis now);
    std::vector<std::string> live_pnes(const std::string& except, Millis now) const;
    // Why a new establishment may not start (nullopt: it may).
    std::optional<std::pair<pb::FailureReason, std::string>> admission(
        bool authenticated, const std::string& source) const;

    void handle_discovery(Out& out, const std::string& from, const pb::Envelope& env,
                          Protection protection, Millis now, const Origin& origin);
    std::optional<std::pair<pb::FailureReason, std::string>> check_setup_request(
        const std::string& from, const pb::PnSetupRequest& m, Protection protection,
        const std::string& source) const;
    void handle_setup_request(Out& out, const std::string& from, const pb::PnSetupRequest& m,
                              Protection protection, Millis now, const Origin& origin);
    void handle_join_response(Out& out, const std::string& from, const pb::PnSetupNotifyResponse& m,
                              Protection protection, Millis now);
    void handle_auth_request(Out& out, const pb::AuthenticationRequest& m, Millis now);
    bool relay_auth_request(Out& out, Session& s, Member& mem, const pb::AuthenticationRequest& m,
                            const pb::WrappedKeyPair* keys);
    void handle_pne_auth_response(Out& out, const std::string& from,
                                  const pb::PneAuthenticationResponse& m, Protection protection,
                                  Millis now);
    void handle_registration_response(Out& out, const pb::PnRegistrationResponse& m, Millis now);
    // A repeated setup: after PN `pn_id`, set up by `initiator`, is registered, dissolves each
    // earlier PN that `initiator` set up here, is still a member of, and whose members are all
    // in `pn_id` (docs/protocol.md, "A repeated setup").
    void supersede(Out& out, const std::string& initiator, const std::string& pn_id, Millis now);
    void handle_error(Out& out, const std::string& from, const pb::ErrorReport& m, Millis now);

    void maybe_register(Out& out, Session& s, Millis now);
    void maybe_send_aggregate(Out& out, Session& s, Millis now);
    void settle_after_failure(Out& out, const std::string& pn_id, Millis now);
    void conclude(Out& out, Session& s, bool registered, pb::FailureReason reason,
                  const std::string& detail, const pb::PnRegistrationResponse* resp, Millis now);
    void settle_members(Out& out, Session& s, bool registered, pb::FailureReason reason,
                        const pb::PnRegistrationResponse* resp);
    void notify_member(Out& out, const Session& s, const Member& mem,
                       const pb::PnRegistrationResponse* resp);

    // Lifecycle (gateway_lifecycle.cpp).
    struct PendingChange {
        pb::ChangeOp op = pb::CHANGE_UNSPECIFIED;
        std::string pne_id;
        std::string requester;  // the PNE that asked to leave; "" for this PN GW's own command
        Millis deadline = kNever;
        pb::PnChangeRequest request;  // as sent, for the repeats
        Millis retry = kNever;        // the next repeat (kChangeRetryInterval)
    };
    std::optional<std::pair<pb::FailureReason, std::string>> check_change(
        const std::string& pn_id, const std::string& pne_id) const;
    GatewayEffects start_change(pb::ChangeOp op, const std::string& pn_id,
                                const std::string& pne_id, Millis now);
    void handle_leave_request(Out& out, const std::string& from, const pb::PnLeaveRequest& m,
                              Protection protection, Millis now);
    void handle_change_response(Out& out, const pb::PnChangeResponse& m, Millis now);
    // Sends PnSyncRequests (kMaxSyncBatch PNs each) for `pn_ids` (empty: every PN held), leaving
    // out a PN with a change or an add in progress: its own answer brings it up to date.
    void sync(Out& out, const std::vector<std::string>& pn_ids, const std::string& why);
    // Returns the PNEs whose PSK-TLS session used a LocalEUKey the change dropped.
    std::vector<std::string> adopt(Out& out, const pb::PnChangeResponse& m);
    void finish_change(Out& out, const std::string& pn_id, const PendingChange& c, bool accepted,
                       pb::FailureReason reason, const std::string& detail,
                       const pb::PnChangeResponse* resp);
    void expire_changes(Out& out, Millis now);
    // Sends a change notice to its PNE and keeps it, repeated until acknowledged.
    void tell(Out& out, const pb::PnChangeNotice& n, Millis now);
    void handle_notice_ack(Out& out, const std::string& from, const pb::PnChangeNotifyAck& m,
                           Protection protection);
    // A re-key whose result was sent: the new LocalEUKey waits for the PNE's confirmation.
    struct PendingRekey {
        std::string pne_id;
        SecretKey key;
        std::uint64_t revision = 0;  // the PN's after the re-key
        Millis deadline = kNever;
        bool new_key_session = false;
    };
    std::map<std::string, PendingRekey> rekeys_;  // by PN ID
    // The PNE confirmed: the new LocalEUKey replaces the old one (saved), and a PSK-TLS session
    // made with the old one is closed.
    void switch_key(Out& out, const std::string& pn_id);
    // The re-key did not complete: the new LocalEUKey is dropped, the old one stays in force.
    void drop_rekey(Out& out, const std::string& pn_id, pb::FailureReason reason,
                    const std::string& detail);
    void expire_rekeys(Out& out, Millis now);
    // Re-keys the server ordered (cpnsctl rekey), by PN ID: their end is reported to it.
    std::set<std::string> ordered_;
    void handle_rekey_order(Out& out, const pb::PnChangeRequest& m, Millis now);
    void report_order(Out& out, const std::string& pn_id, bool success, pb::FailureReason reason,
                      const std::string& detail, std::uint64_t revision);
    // Repeats the notices due (all of `pne_id`'s at once when it is given).
    void repeat_notices(Out& out, Millis now, const std::string& pne_id = "");
    struct PendingNotice {
        pb::PnChangeNotice notice;
        int sent = 0;
        Millis next = kNever;
    };
    // (PNE ID, PN ID) -> the newest notice of that PN for that PNE, until acknowledged.
    std::map<std::pair<std::string, std::string>, PendingNotice> notices_;
    std::map<std::string, PendingChange> changes_;  // by PN ID: one change at a time per PN
    // PN ID -> the revision taken from a refusal (STALE_REVISION), whose notices to the other
    // members are still to come: the server's accepted answer of that revision is passed on
    // when it arrives, although it is not newer. Only for PNs in inventory_.
    std::map<std::string, std::uint64_t> adopted_untold_;
    // PNEs told that their add to a PN failed while the server's answer was unknown (given up in
    // wait_registration): if the PN turns out to hold them (the commit landed late), the PN GW
    // removes them, so that server, PN GW and PNEs agree (undo_unsure_adds). Not saved.
    std::map<std::string, std::set<std::string>> unsure_adds_;
    void undo_unsure_adds(Out& out, const std::string& pn_id, Millis now);

    GatewayConfig cfg_;
    Random& random_;
    std::map<std::string, Session> sessions_;         // by PN ID, being established
    std::map<std::string, std::string> pne_session_;  // PNE ID -> PN ID it is joining
    std::map<std::string, std::string> tls_links_;    // PNE ID -> TLS identity in use
    NeighbourTable neighbours_;
    std::map<std::string, pb::PnInventory> inventory_;
    std::map<std::string, std::vector<std::string>> routing_;
    std::map<std::string, std::map<std::string, SecretKey>> local_keys_;  // PN -> PNE -> key
    // The PNs set up by a PNE (5.2.1.1): PN ID -> initiator, and initiator -> its PN IDs. Only
    // for PNs in inventory_ (forgotten with them).
    std::map<std::string, std::string> initiator_of_;
    std::map<std::string, std::set<std::string>> initiated_;
    void forget_initiator(const std::string& pn_id);
    Counters counters_;
    std::string last_pn_id_;
    std::string endpoint_;
    // Why a PNE has no usable PAN link (its last PSK-TLS attempt failed), to tell in place of
    // "unknown entity" when it is invited. Bounded by kMaxNeighbours.
    std::map<std::string, pb::FailureReason> link_failures_;
    pb::FailureReason unreachable_reason(const std::string& pne_id) const;
};

}  // namespace cpns
