// What the three I/O-free roles (PNE, PN GW, CPNS Server) share: the events they consume,
// the effects they return, the named timeouts and bounds, and per-reason counters.
//
// A role never opens a socket, reads a clock, starts a thread or draws randomness on its
// own: the caller passes `now` (milliseconds on a monotonic clock) into every call and a
// Random at construction, and carries out the returned effects. Timers are internal; the
// caller asks next_deadline() and calls on_timer(now) when it is reached.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "core/codec.hpp"
#include "core/crypto.hpp"
#include "core/neighbours.hpp"

namespace cpns {

using Millis = std::int64_t;
inline constexpr Millis kNever = std::numeric_limits<Millis>::max();

// --- Named timeouts (milliseconds). Each wait in the protocol has one. -------------------
// A PNE's TLS handshake with its PN GW.
inline constexpr Millis kTlsHandshakeTimeout = 10'000;
// PN GW waiting for invited PNEs to accept or decline (a user may have to confirm).
inline constexpr Millis kJoinResponseTimeout = 30'000;
// PN GW waiting for the server's Authentication Request, and later its Registration Response.
inline constexpr Millis kServerResponseTimeout = 20'000;
// PN GW waiting for each PNE's Authentication Response (includes the PNE's TLS handshake).
inline constexpr Millis kPneAuthResponseTimeout = 20'000;
// Server waiting for the PN GW's aggregate Authentication Response.
inline constexpr Millis kAuthResponseTimeout = 30'000;
// Server waiting for its store to make a registration durable.
inline constexpr Millis kPersistTimeout = 10'000;
// PNE waiting for the relayed Authentication Request after it asked or accepted.
inline constexpr Millis kAuthRequestTimeout = 60'000;
// PNE waiting for its result (PN Setup Response / PN Establishment Notify).
inline constexpr Millis kResultTimeout = 60'000;
// How long a finished PN ID is remembered to tell replays from unknown PNs.
inline constexpr Millis kReplayMemory = 10 * 60'000;

// --- Bounds -----------------------------------------------------------------------------
inline constexpr std::size_t kMaxGwSessions = 16;  // PNs being established at one PN GW
// Of those, how many only requests over PSK-TLS and the PN GW's own invitations may take: PN
// Setup Requests in clear (no authenticated sender) get at most the rest...
inline constexpr std::size_t kGwSessionsReservedForAuthenticated = 4;
// ...and at most this many of them from one network address (or one sender ID, where the
// transport gives no address).
inline constexpr std::size_t kMaxGwClearSessionsPerSource = 4;
inline constexpr std::size_t kMaxServerSessions = 100'000;  // establishments in flight at a server
inline constexpr std::size_t kMaxReplayMemory = 100'000;    // remembered finished PN IDs
inline constexpr std::size_t kMaxPnsPerPne = 64;            // PNs one PNE is a member of
inline constexpr std::size_t kMaxPnsPerGw = 4'096;          // PNs one PN GW keeps (and opens)

// How a message crossed the PAN.
enum class Protection { kClear, kTls };

// Where a PAN message came from, as far as the transport can tell: over a PAN link (TCP) or in
// a discovery datagram (UDP), and the sender's network address ("" unknown). The roles use it
// only for bounds (per-address admission and neighbour limits) and to trust a datagram
// less than a link, never to trust a sender more.
struct Origin {
    bool datagram = false;
    std::string address;
};

// --- Effects ------------------------------------------------------------------------------
// Send `msg` to entity `to` ("*" = broadcast on the PAN, for discovery). When `protection`
// is kTls the transport must carry it inside the PSK-TLS session with `to`, and must drop it
// (never send it in clear) if there is none.
struct SendEffect {
    std::string to;
    pb::Envelope msg;
    Protection protection = Protection::kClear;
};
// PNE side: start a PSK-TLS client handshake with the PN GW (the PN GW side answers with
// Gateway::tls_psk_for(identity)). The result comes back as on_tls_established/failed.
struct StartTlsEffect {
    std::string peer;
    std::string identity;
    SecretKey psk;
};
// Server: apply a lifecycle change to a registered PN in the store (core/lifecycle.hpp,
// change_inventory, at `revision`), durably, and report with Server::on_changed().
struct ChangePnEffect {
    std::string gw_id;
    std::string pn_id;
    pb::ChangeOp op = pb::CHANGE_UNSPECIFIED;
    std::string pne_id;
    std::uint64_t revision = 0;
    std::vector<pb::PnMember> added;  // CHANGE_ADD: the members that join
};
// Durable state: the caller stores it and (server) confirms with on_persisted().
struct PersistPnEffect {  // server: register the PN (must be durable before the response)
    std::string gw_id;
    pb::PnInventory inventory;
};
struct StoreInventoryEffect {  // PN GW: keep the PN Inventory locally (step 13/14)
    pb::PnInventory inventory;
    bool forgotten = false;  // the PN was dissolved: it is gone from the PN GW's state
};
// PNE: a membership changed after its establishment (left, removed, dissolved, updated); the
// caller saves the PNE's state before what follows.
struct MembershipEffect {
    std::string pn_id;
    pb::NoticeKind kind = pb::NOTICE_UNSPECIFIED;
};
struct StoreLocalKeyEffect {  // PNE and PN GW: keep a LocalEUKey
    std::string pn_id;
    std::string peer_id;  // PNE: the PN GW; PN GW: the PNE
    SecretKey key;
};
// Server and PNE: SK_PNE agreed for this PNE (the shared session key of steps 8/12).
struct SessionKeyEffect {
    std::string pn_id;
    std::string pne_id;
    SecretKey sk;
};
// The end of one establishment as this party saw it. Exactly one per establishment.
struct PneOutcome {
    std::string pne_id;
    bool joined = false;
    pb::FailureReason reason = pb::REASON_NONE;
};
struct OutcomeEffect {
    std::string pn_id;
    std::string gw_id;  // server: the PN GW of the establishment
    bool success = false;
    pb::FailureReason reason = pb::REASON_NONE;
    std::string detail;
    pb::PnInventory inventory;     // when success
    std::vector<PneOutcome> pnes;  // PN GW and server: per PNE
    // "" for an establishment; "leave", "remove" or "dissolve" for a lifecycle change.
    std::string operation;
};
// A link to a peer must be closed (protocol violation on it).
struct CloseLinkEffect {
    std::string peer;
    pb::FailureReason reason = pb::REASON_NONE;
};

// A role changed state: `subject` is whose state ("" for a PN session as a whole, else a
// PNE ID), `from` and `to` are state names, `reason` says why. Adapters record it (the
// daemons' JSON-lines trace, the simulator's trace); nothing depends on it for correctness.
struct TransitionEffect {
    std::string role;    // "pne", "gw", "server"
    std::string entity;  // the party whose role changed state
    std::string pn_id;
    std::string subject;
    std::string from;
    std::string to;
    std::string reason;
};

// Each role returns only the effects it can produce. Adapters dispatch them with std::visit
// over an Overloaded set with one handler per alternative and no catch-all, so an effect
// added here is a compile error in every adapter until it is handled.
using PneEffect = std::variant<SendEffect, StartTlsEffect, StoreLocalKeyEffect, SessionKeyEffect,
                               OutcomeEffect, TransitionEffect, MembershipEffect>;
using GatewayEffect = std::variant<SendEffect, CloseLinkEffect, StoreInventoryEffect,
                                   StoreLocalKeyEffect, OutcomeEffect, TransitionEffect>;
using ServerEffect = std::variant<SendEffect, PersistPnEffect, SessionKeyEffect, OutcomeEffect,
                                  TransitionEffect, ChangePnEffect>;
using PneEffects = std::vector<PneEffect>;
using GatewayEffects = std::vector<GatewayEffect>;
using ServerEffects = std::vector<ServerEffect>;

// std::visit(Overloaded{[](const SendEffect&) {...}, ...}, effect)
template <class... Fs>
struct Overloaded : Fs... {
    using Fs::operator()...;
};
template <class... Fs>
Overloaded(Fs...) -> Overloaded<Fs...>;

// The OutcomeEffect among `effects`, if any (tests and command-line front ends).
template <class Effects>
const OutcomeEffect* find_outcome(const Effects& effects) {
    for (const auto& e : effects)
        if (const auto* o = std::get_if<OutcomeEffect>(&e)) return o;
    return nullptr;
}

// Counters: one per failure reason, plus traffic. Every failure increments exactly one.
struct Counters {
    std::array<std::uint64_t, 33> by_reason{};
    std::uint64_t messages_in = 0;
    std::uint64_t messages_out = 0;
    std::uint64_t ignored = 0;  // duplicates, late messages
    std::uint64_t established = 0;
    void count(pb::FailureReason r) {
        auto i = static_cast<std::size_t>(r);
        if (i < by_reason.size()) ++by_reason[i];
    }
    std::uint64_t operator[](pb::FailureReason r) const {
        auto i = static_cast<std::size_t>(r);
        return i < by_reason.size() ? by_reason[i] : 0;
    }
};

enum class LogLevel { kDebug, kInfo, kWarn, kError };
// Optional: the roles describe what they do and why. Never called with secret material.
using LogSink = std::function<void(LogLevel, const std::string&)>;

// An ErrorReport about `pn_id` ("" when the sender does not know it yet).
pb::Envelope error_report(const std::string& pn_id, pb::FailureReason reason,
                          const std::string& detail);

// How long a PN GW waits for the server's answer to a lifecycle change, and a PNE for its PN
// GW's answer to a leave (the PN GW's wait, plus the PAN).
inline constexpr Millis kChangeResponseTimeout = 20'000;
// Within that wait the PN GW sends its PnChangeRequest again every kChangeRetryInterval (a lost
// request or answer); the server answers a repeat of a change it has answered with the same
// answer, for kChangeAnswerMemory, and ignores a repeat of one still in progress.
inline constexpr Millis kChangeRetryInterval = 5'000;
inline constexpr Millis kChangeAnswerMemory = 60'000;
inline constexpr Millis kLeaveResponseTimeout = 30'000;
// How long a PN GW waits, after it sent a re-keyed PNE its result, for that PNE's confirmation
// that it took the new LocalEUKey (PnChangeNotifyAck.rekeyed); until then, and for good if it
// does not come, the old LocalEUKey stays in force.
inline constexpr Millis kRekeyConfirmTimeout = 20'000;
// How long the server waits for a PN GW's report on a re-key the operator ordered (the PN GW's
// whole run: invitation, authentication, registration, confirmation, each within its own
// bound).
inline constexpr Millis kRekeyOrderTimeout = 120'000;
// A change notice (PnChangeNotify) is repeated to a PNE that has not acknowledged it, every
// kNoticeRepeatInterval, at most kNoticeAttempts sends in all, and once more at once when the
// PNE's PSK-TLS session comes up again. A PN GW tracks at most kMaxPendingNotices; past that a
// notice is sent once, untracked.
inline constexpr Millis kNoticeRepeatInterval = 2'000;
inline constexpr int kNoticeAttempts = 5;
inline constexpr std::size_t kMaxPendingNotices = 4'096;
// Lifecycle changes in flight at one server (each waits for its store commit).
inline constexpr std::size_t kMaxServerChanges = 10'000;

// Conversions between schema enums and key-schedule enums.
Flow to_flow(pb::Flow f);
PneRole to_role(pb::PneRoleInFlow r);
SetupKind to_setup_kind(pb::SetupType t);

// TLS PSK identities on the PAN (docs/protocol.md, "PSK identities"): "pre:<pne>" for a
// pre-assigned key, "leuk:<pn>:<pne>" for a LocalEUKey. The only place that writes or reads
// the format.
std::string preassigned_identity(std::string_view pne_id);
std::string local_eukey_identity(std::string_view pn_id, std::string_view pne_id);
struct PskIdentity {
    enum class Kind { kPreassigned, kLocalEuKey };
    Kind kind = Kind::kPreassigned;
    std::string pn_id;  // empty for kPreassigned
    std::string pne_id;
};
// nullopt when `identity` is neither form or names an invalid ID.
std::optional<PskIdentity> parse_psk_identity(std::string_view identity);

// Byte helpers for bytes fields.
inline ByteView bytes_of(const std::string& s) {
    return as_bytes(s);
}
inline std::string to_field(ByteView b) {
    return std::string(b.begin(), b.end());
}

}  // namespace cpns
