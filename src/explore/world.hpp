// One world of the explorer: the real Server (over a MemoryDirectory), Gateway and Pnes, each
// with its own DeterministicRandom, virtual time, the messages in flight (encoded frames), the
// PSK-TLS links, what the attacker knows, and a log of what the roles did. A world is never
// copied: a search state is the list of actions from the initial world, replayed.
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <variant>
#include <vector>

#include "core/gateway.hpp"
#include "core/pne.hpp"
#include "core/server.hpp"
#include "explore/scenario.hpp"

namespace cpns::explore {

// A message on its way: an encoded frame between two parties.
struct Message {
    std::string from, to;
    Protection protection = Protection::kClear;
    Bytes frame;
    std::uint64_t id = 0;  // digest of from, to, protection and frame
    std::string name;      // message name, for traces
    bool forged = false;   // sent by the attacker
};

// A frame the attacker has seen (this run, or the earlier run), with its claimed sender.
struct Known {
    std::string from, to;
    Bytes frame;
    std::uint64_t id = 0;  // digest of from and frame
    std::string name;
    bool prior = false;
};

struct PendingTls {
    std::string pne, gw, identity;
    SecretKey psk;
};

// The server's store applied (or refused) a lifecycle change: what was asked, by which request
// (the rand_PNE of the PNE's leave, when one was carried), and who stopped being a member.
struct StoreChangeEffect {
    ChangePnEffect change;
    pb::FailureReason reason = pb::REASON_NONE;  // REASON_NONE: applied
    std::string rand_pne;
    std::vector<std::string> removed;
};

// What one party did in one step.
using Effect =
    std::variant<OutcomeEffect, TransitionEffect, SessionKeyEffect, StoreLocalKeyEffect,
                 PersistPnEffect, StoreInventoryEffect, MembershipEffect, StoreChangeEffect>;
struct Observation {
    std::size_t step = 0;
    std::string party;
    Effect effect;
};

// A line of the trace of a recorded run (for text and Mermaid output).
struct TraceLine {
    std::size_t step = 0;
    std::string from, to, what, note;
    bool is_note = false;
};

// The earlier completed run of the same scenario: what the attacker saw, what survived
// (device and server state), and the values it used, to tell old from fresh.
struct Prior {
    std::vector<Known> knowledge;
    pb::GwState gw_state;
    std::vector<pb::PneState> pne_states;
    std::vector<pb::PnInventory> registered;
    std::vector<SecretKey> local_keys;
    std::set<std::string> hash_pne, hash_server, pn_ids;
    std::map<std::string, std::set<std::string>> values;  // the attacker's, from `knowledge`
};

class World {
  public:
    // run 0 is the earlier run (no prior); run 1 the explored one, after `prior`.
    World(const Scenario& scenario, std::shared_ptr<const Prior> prior, int run = 1,
          bool record = false);
    World(const World&) = delete;
    World& operator=(const World&) = delete;
    ~World();

    // Applies an action; false (and nothing changed) when it is not enabled here.
    bool apply(const Action& a);
    // The enabled actions, within the attacker's budgets, in a canonical order.
    std::vector<Action> actions() const;
    // The same in two parts: deliveries, handshakes, timers and faults; the attacker's moves
    // (costlier to enumerate: every rewrite is tried).
    std::vector<Action> network_actions() const;
    std::vector<Action> attacker_actions() const;
    bool attacker_may_act() const { return attacks_ < scn_.max_attacks; }
    // Digest of every role's observable state, the messages in flight, TLS links, knowledge.
    std::uint64_t state_hash() const;
    // Nothing in flight, no handshake pending, every party idle.
    bool quiescent() const;
    // Delivers, completes handshakes and fires timers (in that order) until quiescent; the
    // actions taken.
    std::vector<Action> run_honestly(std::size_t max_steps = 1000);
    // What the earlier run leaves to the next one.
    std::shared_ptr<const Prior> export_prior() const;

    const Scenario& scenario() const { return scn_; }
    const Prior& prior() const { return *prior_; }
    const Pne& pne(const std::string& id) const { return *pnes_.at(id); }
    const Gateway& gw() const { return *gw_; }
    const Server& server() const { return *server_; }
    const MemoryDirectory& directory() const { return *dir_; }
    const std::vector<Observation>& observations() const { return obs_; }
    const std::vector<Message>& in_flight() const { return flight_; }
    const std::vector<Known>& knowledge() const { return known_; }
    const std::vector<TraceLine>& trace() const { return trace_; }
    std::size_t step() const { return step_; }
    Millis now() const { return now_; }
    int faults_used() const { return faults_; }
    int attacks_used() const { return attacks_; }

    // Facts the properties need, kept as the run goes.
    struct Facts {
        std::map<std::string, std::set<std::string>> engaged;            // PNE -> PNs it worked on
        std::map<std::string, pb::PnRegistrationRequest> registrations;  // accepted at server
        std::vector<SecretKey> issued_local_keys;  // by the server, this run (oracle unwrap)
        std::vector<SecretKey> session_keys;       // SK_PNE, this run
        std::vector<SecretKey> eukeys;             // the PNEs'
        std::map<std::string, SecretKey> pne_eukey;
        std::set<std::string> pns_seen;  // every PN ID in a transition
        std::size_t prior_pns = 0;       // registered before this run
        // Lifecycle: every leave an honest PNE sent (PNE, PN, rand_PNE), and the PN GW's
        // commands given by the explorer ("remove pn pne", "dissolve pn").
        std::set<std::tuple<std::string, std::string, std::string>> leaves_asked;
        std::set<std::string> gw_commands;
        // PNEs the operator revoked or disabled in this run ("revoke" moves).
        std::set<std::string> revoked;
    };
    const Facts& facts() const { return facts_; }
    // The last message delivered (for properties about what a party accepted).
    const pb::Envelope* last_delivered() const { return last_ok_ ? &last_env_ : nullptr; }
    const std::string& last_receiver() const { return last_to_; }
    // The frame delivered at the last step had already changed the store or a PNE's
    // membership when delivered to the same receiver before (a replay or a repeat).
    bool last_delivery_repeated() const { return last_repeat_; }
    int life_used() const { return life_; }
    // The PNEs with a PSK-TLS session to the PN GW now.
    const std::set<std::string>& tls_links() const { return tls_links_; }
    // "deliver PnSetupRequest pne-a -> gw-1" for an action enabled here.
    std::string describe(const Action& a) const;
    const pb::DeviceCapabilities& capabilities_of(const std::string& pne) const;
    const std::vector<pb::ContentInfo>& contents_of(const std::string& pne) const;
    bool honest(const std::string& pne) const { return pne != scn_.compromised_pne; }

  private:
    void build_roles(int run);
    void discover();
    void start();
    void apply_effects(const std::string& party, PneEffects effects);
    void apply_effects(const std::string& party, GatewayEffects effects);
    void apply_effects(const std::string& party, ServerEffects effects);
    void observe(const std::string& party, Effect e);
    void route(const std::string& from, SendEffect send);
    // Adds a frame the attacker sees to its knowledge (its values are collected by route()).
    void learn(const Message& m);
    void note_server_send(const pb::Envelope& env);
    bool attacker_sees(const std::string& from, const std::string& to, Protection p) const;
    bool attacker_sends(const std::string& from, const std::string& to) const;
    Protection attacker_protection(const std::string& from, const std::string& to) const;
    bool deliver(const Message& m);
    bool deliver_frame(const Message& m);
    bool do_tls(const std::string& pne);
    bool do_timer(const std::string& party);
    bool do_replay(const Action& a);
    bool do_rewrite(const Action& a);
    bool do_inject(const Action& a);
    bool do_command(const Action& a);
    bool do_life(const Action& a);
    bool do_revoke(const Action& a);
    static bool in_pn(const pb::PnInventory& inv, const std::string& pne);
    void add_commands(std::vector<Action>& out) const;
    void add_life(std::vector<Action>& out) const;
    std::vector<Message>::iterator find_flight(std::uint64_t id);
    const Known* find_known(std::uint64_t id) const;
    bool is_pne(const std::string& id) const { return pnes_.count(id) != 0; }
    bool pan_insecure(const std::string& pne) const { return is_pne(pne) && !scn_.pan_secure; }
    void add_network_actions(std::vector<Action>& out) const;
    void add_attacker_actions(std::vector<Action>& out) const;
    void add_rewrites(std::vector<Action>& out, const Bytes& frame, std::uint64_t id,
                      ActionKind kind, const std::string& from, const std::string& to) const;
    // Applies a rewrite or injection's field to `env` (and `from` for "sender"); false when it
    // changes nothing or the attacker cannot claim that sender towards `to`.
    bool forge(pb::Envelope& env, std::string& from, const std::string& to, const Action& a) const;
    std::vector<std::string> values_for(const std::string& field) const;
    std::vector<std::string> replay_targets(const Known& k) const;
    void trace_line(const std::string& from, const std::string& to, std::string what,
                    std::string note, bool is_note);

    Scenario scn_;
    std::shared_ptr<const Prior> prior_;
    bool record_;
    std::vector<std::unique_ptr<DeterministicRandom>> randoms_;
    std::unique_ptr<MemoryDirectory> dir_;
    std::unique_ptr<Server> server_;
    std::unique_ptr<Gateway> gw_;
    std::map<std::string, std::unique_ptr<Pne>> pnes_;
    std::map<std::string, PneConfig> pne_cfg_;
    SecretKey gw_eukey_;
    Millis now_ = 0;
    std::size_t step_ = 0;
    int faults_ = 0;
    int attacks_ = 0;
    int timers_ = 0;
    int life_ = 0;
    std::set<std::string> changed_by_;  // receiver + frame digest: deliveries that changed state
    bool last_repeat_ = false;
    std::vector<Message> flight_;
    std::vector<PendingTls> tls_pending_;
    std::set<std::string> tls_links_;  // PNEs with a PSK-TLS session to the PN GW
    std::vector<Known> known_;
    std::set<std::uint64_t> known_ids_;
    std::map<std::string, std::set<std::string>> values_;  // field -> values seen
    int run_ = 1;
    std::map<std::string, std::set<std::string>> all_values_;  // run 0: of every message
    std::vector<Observation> obs_;
    std::vector<TraceLine> trace_;
    Facts facts_;
    pb::Envelope last_env_;
    std::string last_to_;
    bool last_ok_ = false;
};

}  // namespace cpns::explore
