#include "explore/explorer.hpp"

#include <algorithm>
#include <chrono>
#include <optional>
#include <random>
#include <sstream>
#include <unordered_set>

namespace cpns::explore {

struct Explorer::Search {
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
    std::unordered_set<std::uint64_t> visited;
    Report report;
    bool stop = false;
};

std::shared_ptr<const Prior> make_prior(const Scenario& scenario) {
    if (!scenario.prior_run) return std::make_shared<const Prior>();
    World w(scenario, nullptr, 0);
    w.run_honestly();
    return w.export_prior();
}

std::vector<Action> honest_trace(const Scenario& scenario) {
    World w(scenario, make_prior(scenario));
    return w.run_honestly();
}

Explorer::Explorer(Scenario scenario, Options options)
    : scn_(std::move(scenario)), opt_(std::move(options)), prior_(make_prior(scn_)) {}

std::unique_ptr<World> Explorer::rebuild(const std::vector<Action>& trace) const {
    auto w = std::make_unique<World>(scn_, prior_);
    for (const auto& a : trace) w->apply(a);
    return w;
}

bool Explorer::out_of_time(const Search& s) const {
    if (opt_.seconds <= 0) return false;
    const std::chrono::duration<double> d = std::chrono::steady_clock::now() - s.start;
    return d.count() >= opt_.seconds;
}

void Explorer::record(Search& s, const std::vector<Action>& trace,
                      const std::vector<Violation>& v) {
    for (const auto& x : v) {
        auto& list = s.report.violations;
        auto it = std::find_if(list.begin(), list.end(),
                               [&](const Counterexample& c) { return c.property == x.property; });
        if (it != list.end()) {
            ++it->occurrences;
            continue;
        }
        Counterexample cx{x.property, x.text, trace, trace.size(), 1};
        if (opt_.shrink) cx.trace = shrink(trace, x.property);
        list.push_back(std::move(cx));
        if (opt_.stop_on_first) s.stop = true;
    }
}

void Explorer::expand(Search& s, const std::vector<Action>& trace,
                      std::vector<std::vector<Action>>& next) {
    auto parent = rebuild(trace);
    const auto actions = parent->actions();
    for (std::size_t i = 0; i < actions.size(); ++i) {
        const Action& a = actions[i];
        if (s.stop || out_of_time(s)) {
            s.report.timed_out = !s.stop;
            return;
        }
        // The last child reuses the parent's world; the others rebuild it by replay.
        const auto w = i + 1 == actions.size() ? std::move(parent) : rebuild(trace);
        const Since since{w->observations().size(), w->knowledge().size()};
        if (!w->apply(a)) continue;
        ++s.report.transitions;
        if (!s.visited.insert(w->state_hash()).second) continue;
        ++s.report.states;
        auto child = trace;
        child.push_back(a);
        s.report.max_depth = std::max(s.report.max_depth, static_cast<int>(child.size()));
        record(s, child, check_properties(*w, since, opt_.properties));
        next.push_back(std::move(child));
    }
}

void Explorer::bfs(Search& s) {
    {
        const auto root = rebuild(opt_.prefix);
        s.visited.insert(root->state_hash());
        ++s.report.states;
        if (opt_.prefix.empty()) record(s, {}, check_properties(*root, Since{}, opt_.properties));
    }
    std::vector<std::vector<Action>> frontier{opt_.prefix};
    for (int d = 0; d < opt_.depth && !frontier.empty(); ++d) {
        std::vector<std::vector<Action>> next;
        for (const auto& trace : frontier) {
            expand(s, trace, next);
            if (s.stop || s.report.timed_out) return;
        }
        s.report.depth_exhausted = d + 1;
        frontier = std::move(next);
    }
}

namespace {

// Honest progress first, the attacker and the clock now and then. The attacker's moves are
// enumerated only when the attacker is to move.
std::optional<Action> pick(const World& w, std::mt19937_64& rng, double attack) {
    std::array<std::vector<Action>, 4> by{};
    for (auto& a : w.network_actions()) {
        const std::size_t cat = a.kind == ActionKind::kTimer ? 1
                                : a.kind == ActionKind::kDrop || a.kind == ActionKind::kDuplicate
                                    ? 2
                                    : 0;
        by[cat].push_back(std::move(a));
    }
    std::array<double, 4> weight{10, 1, 1, w.attacker_may_act() ? attack : 0};
    for (;;) {
        for (std::size_t i = 0; i < 3; ++i)
            if (by[i].empty()) weight[i] = 0;
        if (weight[0] + weight[1] + weight[2] + weight[3] <= 0) return std::nullopt;
        std::discrete_distribution<std::size_t> cat(weight.begin(), weight.end());
        const std::size_t c = cat(rng);
        if (c == 3 && by[3].empty()) by[3] = w.attacker_actions();
        if (by[c].empty()) {
            weight[c] = 0;
            continue;
        }
        std::uniform_int_distribution<std::size_t> one(0, by[c].size() - 1);
        return by[c][one(rng)];
    }
}

}  // namespace

void Explorer::walk(Search& s, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    // Walks differ in how eager the attacker is: early moves, or late ones (after the run).
    static constexpr std::array<double, 3> kAttack{3, 0.5, 0.1};
    const double attack = kAttack[seed % kAttack.size()];
    auto w_ptr = rebuild(opt_.prefix);
    World& w = *w_ptr;
    std::vector<Action> trace = opt_.prefix;
    for (int i = 0; i < opt_.walk_depth && !s.stop; ++i) {
        const auto next = pick(w, rng, attack);
        if (!next) break;
        const Action a = *next;
        const Since since{w.observations().size(), w.knowledge().size()};
        if (!w.apply(a)) break;
        ++s.report.transitions;
        trace.push_back(a);
        if (s.visited.insert(w.state_hash()).second) ++s.report.states;
        s.report.max_depth = std::max(s.report.max_depth, static_cast<int>(trace.size()));
        const auto v = check_properties(w, since, opt_.properties);
        if (!v.empty()) {
            record(s, trace, v);
            break;
        }
    }
}

void Explorer::walks(Search& s) {
    for (std::size_t i = 0; i < opt_.walks && !s.stop; ++i) {
        if (out_of_time(s)) {
            s.report.timed_out = true;
            return;
        }
        walk(s, opt_.seed * 0x9e3779b97f4a7c15ULL + i);
        ++s.report.walks;
    }
}

Report Explorer::run() {
    Search s;
    s.report.scenario = scn_;
    bfs(s);
    if (!s.stop && !s.report.timed_out) walks(s);
    const std::chrono::duration<double> d = std::chrono::steady_clock::now() - s.start;
    s.report.seconds = d.count();
    return s.report;
}

std::vector<Violation> Explorer::check_trace(const std::vector<Action>& trace,
                                             const std::set<std::string>& properties) const {
    std::vector<Violation> out;
    World w(scn_, prior_);
    {
        auto v = check_properties(w, Since{}, properties);
        out.insert(out.end(), v.begin(), v.end());
    }
    for (const auto& a : trace) {
        const Since since{w.observations().size(), w.knowledge().size()};
        if (!w.apply(a)) continue;
        auto v = check_properties(w, since, properties);
        out.insert(out.end(), v.begin(), v.end());
    }
    return out;
}

std::vector<Violation> Explorer::replay(const Scenario& scenario, const std::vector<Action>& trace,
                                        const std::set<std::string>& properties) {
    Options o;
    o.shrink = false;
    return Explorer(scenario, o).check_trace(trace, properties);
}

std::vector<Action> Explorer::shrink(std::vector<Action> trace, const std::string& property) const {
    auto fails = [&](const std::vector<Action>& t) {
        return has_violation(check_trace(t, {property}), property);
    };
    if (!fails(trace)) return trace;
    std::size_t n = 2;
    while (trace.size() >= 2) {
        const std::size_t chunk = (trace.size() + n - 1) / n;
        bool reduced = false;
        for (std::size_t start = 0; start < trace.size(); start += chunk) {
            std::vector<Action> rest(trace.begin(), trace.begin() + static_cast<long>(start));
            const std::size_t stop = std::min(trace.size(), start + chunk);
            rest.insert(rest.end(), trace.begin() + static_cast<long>(stop), trace.end());
            if (fails(rest)) {
                trace = std::move(rest);
                n = std::max<std::size_t>(n - 1, 2);
                reduced = true;
                break;
            }
        }
        if (reduced) continue;
        if (n >= trace.size()) break;
        n = std::min(trace.size(), n * 2);
    }
    if (trace.size() == 1 && fails({})) trace.clear();
    return trace;
}

}  // namespace cpns::explore
