// What the explorer explores: a scenario (who is in the world, which flow, which attacker) and
// the actions that move a world from one state to the next. Both have a text form that parses
// back, so that a counterexample can be pasted into a test.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/role.hpp"
#include "core/server.hpp"

namespace cpns::explore {

inline const std::string kServerId = "cpns-server";
inline const std::string kGwId = "gw-1";

// One world: a CPNS Server, one PN GW, 2 or 3 PNEs ("pne-a", "pne-b", "pne-c"), one
// establishment started at the initial state, and an attacker with a bounded budget.
struct Scenario {
    bool gw_initiated = false;                   // 5.2.1.2 instead of 5.2.1.1
    pb::SetupType setup = pb::SETUP_ONE_TO_ONE;  // 1-1: [pne-b] invited by the GW in 5.2.1.2
    bool pan_secure = false;
    bool enough_ui = true;  // LocalEUKey (else a pre-assigned key for PSK-TLS)
    int pnes = 2;

    // The attacker. Network faults (drop, duplicate) hit any link; replay, rewrite and inject
    // are possible on a PAN link the attacker can reach: a clear one on an insecure PAN, any
    // link of the dishonest PN GW, any link of the compromised PNE.
    int max_faults = 1;   // drops + duplicates per trace
    int max_attacks = 1;  // replays + rewrites + injections per trace
    int max_timers = -1;  // timer firings per trace; -1: any
    bool replay = true;
    bool inject = false;  // forge from a known frame (beyond rewriting one in flight)
    bool dishonest_gw = false;
    std::string compromised_pne;         // "" for none
    std::vector<std::string> mutations;  // fields the attacker rewrites (see kMutationFields)
    bool prior_run = true;               // an earlier completed run of the same scenario
    std::uint64_t seed = 1;
    // Bounds checked by the bounded-state property: PNs added in this run (per PNE and per PN
    // GW, on top of the earlier run's) and establishments in flight at PN GW and server.
    std::size_t max_new_pns = 1;
    std::size_t max_sessions = 2;
    // Lifecycle moves per trace ("life=N"): a PNE leaves a PN it holds, the PN GW removes a
    // member, adds a PNE, re-keys a member or dissolves a PN it holds (the earlier run's, or
    // this run's once registered), the operator revokes a PNE that is in a PN.
    int max_life = 0;
    // A deliberately weakened server ("weaken=hash", "list", "sk" or "leave"; see
    // core/server.hpp),
    // to show that the explorer finds the hole each opens.
    Weakening weaken;

    // "pne-1-1-insecure-ui-2": flow, setup type, PAN, UI, PNE count.
    std::string name() const;
    // name() and every other field: "pne-1-1-insecure-ui-2;faults=1;attacks=1;replay;...".
    std::string spec() const;
    static std::optional<Scenario> parse(std::string_view spec);
    std::vector<std::string> pne_ids() const;
    // The invitation list of the establishment started (PNE: SETUP_INVITE_LIST; PN GW: all).
    std::vector<std::string> invited() const;
};

// The fields the attacker may rewrite, each in the messages that carry it.
inline const std::vector<std::string> kMutationFields{
    "setup_type", "invited", "caps", "pn_id", "rand_server", "wrapped", "hash_pne", "hash_server",
    "inventory", "success",
    // Lifecycle messages: PnChangeRequest's PNE and operation, the revision a leave, change or
    // acknowledgement names.
    "pne_id", "op", "revision"};

// Both flows x every setup type x PAN secure/insecure x UI or not x 2/3 PNEs, with the PAN
// attacker (replay) and network faults.
std::vector<Scenario> standard_scenarios();

enum class ActionKind : std::uint8_t {
    kDeliver,    // an in-flight message reaches its receiver
    kDrop,       // an in-flight message is lost
    kDuplicate,  // an in-flight message is copied
    kTimer,      // a party's next deadline is reached (virtual time jumps)
    kTls,        // a pending PSK-TLS handshake completes (ok iff both hold the same PSK)
    kReplay,     // the attacker sends a known frame again, to `party`
    kRewrite,    // the attacker rewrites `field` := `value` of an in-flight message
    kInject,     // the attacker sends a known frame with `field` := `value`, to `party`
    kCommand,    // the compromised PNE `party`, driven by the attacker with its own EUKey,
                 // asks its PN GW for a PN: setup type `field` ("1-1", "all", "list"),
                 // invitation list `value` (IDs joined by ',')
    kLife,       // a lifecycle command: `field` "leave" (PNE `party` leaves PN `value`),
                 // "remove" (the PN GW removes PNE `party` from PN `value`), "dissolve"
                 // (the PN GW dissolves PN `value`; `party` is the PN GW), "add" (the PN GW
                 // adds PNE `party` to PN `value`), "rekey" (the PN GW re-keys PNE `party`'s
                 // LocalEUKey in PN `value`) or "revoke" (the operator makes PNE `party`'s
                 // status `value`, "revoked" or "disabled")
};
std::string_view to_string(ActionKind k);

// `msg` names an in-flight message (deliver, drop, duplicate, rewrite) or a known frame
// (replay, inject) by content digest, so that a trace stays meaningful when shrunk.
struct Action {
    ActionKind kind = ActionKind::kDeliver;
    std::uint64_t msg = 0;
    std::string party;  // timer: whose; tls: the PNE; replay/inject: the receiver
    std::string field;
    std::string value;  // raw bytes of the new value
    bool operator==(const Action&) const = default;
};

// "deliver 0123456789abcdef - - -" (one line; '#' starts a comment). The value is hex.
std::string to_text(const Action& a);
std::optional<Action> parse_action(std::string_view line);
std::vector<Action> parse_trace(std::string_view text);

// FNV-1a, 64 bit: stable across runs and builds (digests appear in pasted tests).
std::uint64_t fnv1a(std::string_view data, std::uint64_t h = 0xcbf29ce484222325ULL);
std::string hex64(std::uint64_t v);

}  // namespace cpns::explore
