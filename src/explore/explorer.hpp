// The search: breadth-first and exhaustive up to a depth (states deduplicated by World digest),
// then seeded random walks; every state is rebuilt by replaying its action list. Violations are
// shrunk by delta debugging and printed as text, as a Mermaid sequence diagram and as a
// GoogleTest case.
//
// Cost: the roles hold references (Random&, const Directory&) and are not copied, so a BFS child
// costs one world construction plus a replay of its parent's actions (no property checks, no
// trace text), and a walk step costs one action. Walks enumerate the attacker's moves (every
// rewrite tried on a decoded copy) only when the attacker is to move.
//
// Dedup caveats: the digest covers what the roles expose (see World::state_hash). Not exposed,
// and so merged: a role's DeterministicRandom position, the server's replay memory of finished
// PNs, and the path by which a state was reached (properties judge each path as it is taken; a
// violation reached only through a merged path is found by the walks, not by the BFS).
#pragma once

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "explore/properties.hpp"
#include "explore/world.hpp"

namespace cpns::explore {

struct Options {
    int depth = 4;                     // exhaustive up to this many actions
    std::size_t walks = 200;           // random walks after the exhaustive part
    int walk_depth = 60;               // actions per walk
    double seconds = 0;                // time bound for the whole search; 0: none
    std::uint64_t seed = 1;            // of the random walks
    std::set<std::string> properties;  // checked ones; empty: all
    bool stop_on_first = false;
    bool shrink = true;
    // Explore from the state this trace reaches (e.g. honest_trace(): after a completed run).
    std::vector<Action> prefix;
};

struct Counterexample {
    std::string property;
    std::string text;           // the violation, as found
    std::vector<Action> trace;  // shrunk (when Options::shrink)
    std::size_t found_length = 0;
    std::size_t occurrences = 1;  // violating states seen
};

struct Report {
    Scenario scenario;
    std::size_t states = 0;       // distinct states (digest) reached
    std::size_t transitions = 0;  // actions applied by the search
    int depth_exhausted = 0;      // every state up to this depth was expanded
    int max_depth = 0;            // deepest state reached (walks included)
    std::size_t walks = 0;
    double seconds = 0;
    bool timed_out = false;
    std::vector<Counterexample> violations;  // the first one of each property
    double states_per_second() const;
    std::string summary() const;  // one line
    std::string to_json() const;
    const Counterexample* find(std::string_view property) const;
};

// The earlier completed run of `scenario` (honest, other randomness), or nothing.
std::shared_ptr<const Prior> make_prior(const Scenario& scenario);
// The actions of an honest run of `scenario` from its initial world to quiescence.
std::vector<Action> honest_trace(const Scenario& scenario);

class Explorer {
  public:
    Explorer(Scenario scenario, Options options = {});

    Report run();

    // Replays `trace` from the initial world (actions that are not enabled are skipped) and
    // checks the properties after every step. The replay API for pasted counterexamples.
    static std::vector<Violation> replay(const Scenario& scenario, const std::vector<Action>& trace,
                                         const std::set<std::string>& properties = {});
    std::vector<Violation> check_trace(const std::vector<Action>& trace,
                                       const std::set<std::string>& properties) const;
    // Delta debugging (ddmin): a 1-minimal sub-trace that still violates `property`.
    std::vector<Action> shrink(std::vector<Action> trace, const std::string& property) const;

    std::string render_text(const std::vector<Action>& trace) const;
    std::string render_mermaid(const std::vector<Action>& trace) const;
    std::string render_gtest(const Counterexample& cx) const;

    const Scenario& scenario() const { return scn_; }
    std::shared_ptr<const Prior> prior() const { return prior_; }

  private:
    struct Search;
    std::unique_ptr<World> rebuild(const std::vector<Action>& trace) const;
    void record(Search& s, const std::vector<Action>& trace, const std::vector<Violation>& v);
    void bfs(Search& s);
    void expand(Search& s, const std::vector<Action>& trace,
                std::vector<std::vector<Action>>& next);
    void walks(Search& s);
    void walk(Search& s, std::uint64_t seed);
    bool out_of_time(const Search& s) const;

    Scenario scn_;
    Options opt_;
    std::shared_ptr<const Prior> prior_;
};

}  // namespace cpns::explore
