// Deterministic in-process simulator: one CPNS Server, many PN GWs and PNEs, virtual time,
// seeded randomness and fault injection. Messages cross the simulated links as encoded
// frames (so a flipped byte reaches the real decoder); PSK-TLS on the PAN is modelled as a
// handshake that succeeds iff both ends hold the same PSK for the identity.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <queue>
#include <random>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/gateway.hpp"
#include "core/pne.hpp"
#include "core/server.hpp"

namespace cpns::sim {

inline constexpr Millis kPanLatency = 5;    // one way, PNE <-> PN GW
inline constexpr Millis kWanLatency = 20;   // one way, PN GW <-> CPNS Server
inline constexpr Millis kStoreLatency = 2;  // server store commit
inline constexpr Millis kTlsRoundTrips = 2;

// A fault applied to matching messages. Empty strings match anything.
struct FaultRule {
    // kMutate: decode, apply `mutate`, re-encode: an insider (a compromised PN GW or an
    // attacker on a PAN that is not protected) rewriting a field.
    enum class Action { kDrop, kDuplicate, kDelay, kFlipByte, kMutate };
    Action action = Action::kDrop;
    std::string message;  // message name, e.g. "AuthenticationResponse"
    std::string from;
    std::string to;
    int count = -1;                             // how many matching messages to hit; -1 = all
    Millis delay = 0;                           // for kDelay
    std::function<void(pb::Envelope&)> mutate;  // for kMutate
};

struct FaultConfig {
    double drop = 0;  // probability per message
    double duplicate = 0;
    double delay = 0;    // extra delay up to max_delay
    double reorder = 0;  // hold a message back behind the next ones
    double flip = 0;     // flip one byte (clear links only; on TLS links the record is dropped)
    Millis max_delay = 3'000;
    std::vector<FaultRule> rules;
};

struct PneSpec {
    std::string id;
    bool enough_ui = true;
    bool pan_secure = false;
    bool wrong_eukey = false;        // the device's EUKey differs from the server's record
    bool wrong_preassigned = false;  // the device's pre-assigned key differs from the PN GW's
    bool accept_invitations = true;
    bool unknown_to_server = false;  // never provisioned at the server
    // The PN GW's view of this PAN link when it differs from the PNE's (a PNE that believes
    // its PAN is secure while its PN GW requires PSK-TLS: a stripped TLS upgrade).
    std::optional<bool> pan_secure_at_gw;
};

struct GwSpec {
    std::string id;
    std::vector<PneSpec> pnes;
    bool wrong_eukey = false;
};

struct TraceEntry {
    Millis at = 0;
    std::string from;
    std::string to;
    std::string what;  // message name or event
    std::string note;  // protection, fault, decode error
    bool is_note = false;
};

struct TlsRecord {
    std::string pne_id;
    std::string gw_id;
    std::string identity;
    SecretKey psk;  // what the PNE used
    bool ok = false;
};

struct Summary {
    std::size_t gateways = 0;
    std::size_t pnes = 0;
    std::size_t pns_registered = 0;
    std::size_t pnes_authenticated = 0;
    std::map<std::string, std::string> excluded;  // "pn/pne" or pne -> reason, from the server
    std::size_t sk_checked = 0, sk_agree = 0;
    std::size_t local_key_checked = 0, local_key_agree = 0;
    std::size_t tls_ok = 0, tls_failed = 0;
    std::size_t messages = 0, bytes = 0;
    std::size_t faults = 0, decode_errors = 0, protection_violations = 0;
    std::size_t gateways_retired = 0;  // freed by Simulator::retire, their results kept as counts
    Millis virtual_ms = 0;
    double wall_ms = 0;
    long peak_rss_kb = 0;
    std::string to_json() const;
};

class Simulator {
  public:
    explicit Simulator(std::uint64_t seed, FaultConfig faults = {}, bool trace = true);
    ~Simulator();

    void add_gateway(const GwSpec& spec);
    // Step 0 everywhere: every PN GW and every PNE broadcasts on its PAN.
    void discover_all();
    // 5.2.1.1 step 1 at `pne_id` towards its PN GW.
    void start_pne_setup(const std::string& pne_id, pb::SetupType type,
                         std::vector<std::string> invited = {});
    // 5.2.1.2 step 1 at `gw_id` (empty list: every discovered PNE).
    void start_gw_invite(const std::string& gw_id, std::vector<std::string> pne_ids = {});
    // PN lifecycle: a PNE leaves a PN; a PN GW removes a PNE or dissolves a PN.
    void start_pne_leave(const std::string& pne_id, const std::string& pn_id);
    void start_gw_remove(const std::string& gw_id, const std::string& pn_id,
                         const std::string& pne_id);
    void start_gw_dissolve(const std::string& gw_id, const std::string& pn_id);
    // The PN GW invites `pne_ids` into its registered PN `pn_id` (PN update).
    void start_gw_add(const std::string& gw_id, const std::string& pn_id,
                      const std::vector<std::string>& pne_ids);
    // The PN GW re-keys `pne_id`'s LocalEUKey in its registered PN `pn_id`.
    void start_gw_rekey(const std::string& gw_id, const std::string& pn_id,
                        const std::string& pne_id);
    // The operator revokes (or disables) an entity at the server: a PNE is removed by the
    // server from every PN it is in, as the server daemon does when its store reports it.
    void revoke(const std::string& id, EntityStatus status = EntityStatus::kRevoked);
    // The operator deletes a PN at the server (cpnsctl pn delete): it leaves the store, and the
    // server announces it to its PN GW as dissolved, as the server daemon does.
    void delete_pn(const std::string& gw_id, const std::string& pn_id);
    // The link between PN GW `gw_id` and the CPNS Server goes down (every message either way is
    // lost until it is up again; the PN GW is told on_link_down) or comes back up (the PN GW is
    // told on_link_up, as a daemon is on each reconnect).
    void set_server_link(const std::string& gw_id, bool up);
    // A fault rule from now on (after the first `count` matching messages from now).
    void add_fault_rule(FaultRule rule) {
        faults_.rules.push_back(std::move(rule));
        rule_hits_.push_back(0);
    }
    // How long the server's store takes to commit (default kStoreLatency), for late commits.
    void set_store_latency(Millis latency) { store_latency_ = latency; }
    // Runs until nothing is left to do or `limit` of virtual time has passed.
    void run(Millis limit = 10 * 60'000);
    // Frees finished PN GWs, their PNEs and everything kept about them (role objects, keys,
    // TLS records, outcomes, directory entries and registered PNs), after folding what the
    // summary reports into counts: the invariants are checked for each key pair here, and
    // only the counts stay. A message or timer still due for a retired entity is lost (noted).
    // This is how a run of a million PNEs fits in memory: PN GWs run in waves.
    void retire(const std::vector<std::string>& gw_ids);

    Millis now() const { return now_; }
    Pne& pne(const std::string& id);
    Gateway& gateway(const std::string& id);
    Server& server() { return *server_; }
    MemoryDirectory& directory() { return dir_; }
    std::string gw_of(const std::string& pne_id) const;

    // Everything observed.
    const std::vector<OutcomeEffect>& outcomes(const std::string& node) const;
    const std::vector<TlsRecord>& tls_records() const { return tls_; }
    const std::vector<TraceEntry>& trace() const { return trace_; }
    // Every role's state transitions, in order (recorded when tracing is on).
    const std::vector<TransitionEffect>& transitions() const { return transitions_; }
    std::optional<SecretKey> server_sk(const std::string& pn, const std::string& pne) const;
    std::optional<SecretKey> pne_sk(const std::string& pn, const std::string& pne) const;
    std::optional<SecretKey> pne_local_key(const std::string& pn, const std::string& pne) const;
    std::optional<SecretKey> gw_local_key(const std::string& pn, const std::string& pne) const;
    // The EUKey the server holds for an entity, and the one the device holds.
    SecretKey server_eukey(const std::string& id) const;
    SecretKey device_eukey(const std::string& id) const;
    std::optional<SecretKey> preassigned_key(const std::string& pne_id) const;
    // Record every message's encoded frame (for replay tests).
    struct Captured {
        std::string from, to;
        Bytes frame;
    };
    const std::vector<Captured>& captured() const { return captured_; }
    void set_capture(bool on) { capture_ = on; }
    // The operator orders a re-key at the server (cpnsctl rekey), which sends it to the PN GW.
    void start_server_rekey_order(const std::string& gw_id, const std::string& pn_id,
                                  const std::string& pne_id, bool linked = true);
    // Replaces the faults applied from now on (the rules' hit counts start again).
    void set_faults(FaultConfig faults);
    // Inject a raw frame as if `from` had sent it to `to` (replay, tampering).
    void inject(const std::string& from, const std::string& to, Bytes frame,
                Protection protection = Protection::kClear);

    Summary summary() const;
    std::string trace_text() const;
    std::string trace_mermaid() const;

  private:
    struct Node;
    struct Event;
    // What was observed for one (PN, PNE) pair: kept on the PNE's node until it is retired.
    struct PairKeys {
        std::optional<SecretKey> server_sk, pne_sk, pne_lk, gw_lk;
    };
    PairKeys& pair_keys(const std::string& pn, const std::string& pne);
    const PairKeys* find_pair(const std::string& pn, const std::string& pne) const;
    // Adds one pair's agreement checks, and one server outcome's PNEs, to a summary.
    static void count_pair(const PairKeys& k, Summary& s);
    static void count_outcome(const OutcomeEffect& o, Summary& s);
    struct EventOrder {
        bool operator()(const Event* a, const Event* b) const;
    };

    void push(Event* e);
    // One apply per role: each visits every alternative of that role's effect variant.
    void apply(const std::string& node, PneEffects effects);
    void apply(const std::string& node, GatewayEffects effects);
    void apply(const std::string& node, ServerEffects effects);
    void on_start_tls(const std::string& id, const StartTlsEffect& t);
    void on_persist(const PersistPnEffect& p);
    void on_change(const ChangePnEffect& c);
    void on_outcome(const std::string& id, OutcomeEffect o);
    void on_transition(TransitionEffect t);
    void deliver(const Event& e);
    void arm(const std::string& node);
    void route(const std::string& from, SendEffect send);
    // One copy of a message on its way: what the faults did to it.
    struct Transit {
        Bytes wire;
        Millis delay = 0;
        int copies = 1;
        bool drop = false;
        bool mutated = false;
    };
    std::vector<std::string> targets_of(const std::string& from, const SendEffect& send);
    void apply_faults(Transit& t, const std::string& name, const std::string& from,
                      const std::string& to, const pb::Envelope& msg);
    void note(const std::string& from, const std::string& to, std::string what, std::string n);
    Millis latency(const std::string& a, const std::string& b);
    bool link_tls(const std::string& pne, const std::string& gw) const;
    Node& node(const std::string& id);

    DeterministicRandom rng_;
    std::mt19937_64 fault_rng_;
    FaultConfig faults_;
    std::vector<int> rule_hits_;
    bool trace_on_;
    bool capture_ = false;
    Millis now_ = 0;
    std::uint64_t seq_ = 0;
    Millis store_latency_ = kStoreLatency;
    std::set<std::string> server_link_down_;  // PN GWs cut off from the server
    MemoryDirectory dir_;
    std::unique_ptr<Server> server_;
    std::unordered_map<std::string, std::unique_ptr<Node>> nodes_;
    std::vector<std::string> gw_order_;
    std::priority_queue<Event*, std::vector<Event*>, EventOrder> queue_;
    std::map<std::string, std::string> tls_links_;  // pne -> gw with an established session
    std::vector<TraceEntry> trace_;
    std::vector<TransitionEffect> transitions_;
    std::vector<TlsRecord> tls_;
    std::vector<Captured> captured_;
    // Pairs whose PNE is not (or no longer) simulated: a key for an unknown id.
    std::map<std::pair<std::string, std::string>, PairKeys> stray_keys_;
    std::unordered_map<std::string, int> retired_rank_;  // traced runs: 0 PNE, 1 PN GW
    Summary stats_;  // counters, plus everything folded in from retired PN GWs
    double wall_ms_ = 0;
};

// Parse "1-1", "all", "list" (case-insensitive).
std::optional<pb::SetupType> parse_setup_type(std::string_view s);

}  // namespace cpns::sim
