// cpns-explore: drives the real PNE, PN GW and CPNS Server roles under an active attacker,
// exhaustively up to a depth and then by random walks, and checks the security properties
// after every step. Prints per scenario the states explored, the depth exhausted, states/s and
// every property violated, with a shrunk counterexample (text, Mermaid, GoogleTest).
#include <CLI/CLI.hpp>
#include <algorithm>

#include <iostream>

#include "common/version.hpp"
#include "explore/explorer.hpp"

namespace {

using namespace cpns::explore;

struct Args {
    std::string scenario = "pne-1-1-insecure-ui-2";
    std::string with;  // options appended to every scenario
    bool all = false;
    Options opt;
    std::vector<std::string> properties;
    bool json = false;
    bool quiet = false;
    bool list = false;
    bool from_honest = false;
};

void print_counterexample(const Explorer& ex, const Counterexample& cx) {
    std::cout << "\n=== " << cx.property << ": " << cx.text << "\n"
              << "found after " << cx.found_length << " actions, shrunk to " << cx.trace.size()
              << " (" << cx.occurrences << " violating states seen)\n\n"
              << ex.render_text(cx.trace) << "\n```mermaid\n"
              << ex.render_mermaid(cx.trace) << "```\n\n"
              << ex.render_gtest(cx) << "\n";
}

int run(const Args& args, const std::vector<Scenario>& scenarios) {
    std::string json = "[";
    std::size_t violated = 0, states = 0;
    int depth = 1 << 30;
    double seconds = 0;
    for (std::size_t i = 0; i < scenarios.size(); ++i) {
        Options opt = args.opt;
        if (args.from_honest) opt.prefix = honest_trace(scenarios[i]);
        Explorer ex(scenarios[i], opt);
        const Report r = ex.run();
        violated += r.violations.size();
        states += r.states;
        depth = std::min(depth, r.depth_exhausted);
        seconds += r.seconds;
        if (args.json) {
            json += (i ? ",\n " : "") + r.to_json();
            continue;
        }
        std::cout << r.summary() << "\n";
        if (!args.quiet)
            for (const auto& cx : r.violations) print_counterexample(ex, cx);
    }
    if (args.json) {
        std::cout << json << "]\n";
    } else {
        std::cout << "total: " << scenarios.size() << " scenario(s), " << states
                  << " states, exhaustive to depth " << depth << " in every scenario, " << seconds
                  << " s, " << (seconds > 0 ? static_cast<double>(states) / seconds : 0)
                  << " states/s, " << violated << " violation(s)\n";
    }
    return violated == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{
        "Explores PN establishment (OMA CPNS 5.2.1.1 / 5.2.1.2) with the real roles under an "
        "active attacker and checks security properties after every step.\n"
        "Scenario: <pne|gw>-<1-1|all|list>-<secure|insecure>-<ui|noui>-<2|3>[;option...], "
        "options: faults=N attacks=N timers=N replay|noreplay inject dgw cpne=ID mut=f1+f2 noprior "
        "seed=N new_pns=N sessions=N life=N (up to N lifecycle moves per trace: an honest PNE "
        "leaves a PN, the PN GW removes, adds or re-keys a member or dissolves a PN, the operator "
        "revokes a PNE; default 0) "
        "weaken=hash+list+sk+leave (a deliberately weakened server, for tests; leave: it accepts "
        "a leave without checking its proof) (--list names the mutable fields).\n"
        "Exit status 1 when a property is violated, 2 on a usage error."};
    Args a;
    app.add_option("--scenario", a.scenario, "scenario spec")->capture_default_str();
    app.add_flag("--all", a.all, "every standard scenario (both flows, setup types, PAN, UI, 2/3)");
    app.add_flag("--list", a.list, "list the standard scenarios and the properties");
    app.add_option("--with", a.with,
                   "options appended to every scenario, e.g. 'faults=0;timers=0' with --all");
    app.add_option("--depth", a.opt.depth, "exhaustive BFS depth")->capture_default_str();
    app.add_option("--walks", a.opt.walks, "random walks after BFS")->capture_default_str();
    app.add_option("--walk-depth", a.opt.walk_depth, "actions per walk")->capture_default_str();
    app.add_option("--seconds", a.opt.seconds, "time bound per scenario (0: none)")
        ->capture_default_str();
    app.add_option("--seed", a.opt.seed, "seed of the random walks")->capture_default_str();
    app.add_option("--property", a.properties, "check only these properties (repeatable)");
    app.add_flag("--from-honest", a.from_honest,
                 "explore from the end of an honest run (attacks after the establishment)");
    app.add_flag("--stop-on-first", a.opt.stop_on_first, "stop at the first violation");
    app.add_flag(
        "--no-shrink", [&](std::int64_t) { a.opt.shrink = false; }, "keep traces as found");
    app.add_flag("--json", a.json, "print a JSON summary only");
    app.add_flag("--quiet", a.quiet, "summary lines only, no counterexamples");
    app.set_version_flag("--version", cpns::version_text("cpns-explore"),
                         "print the version and the OpenSSL version, and exit");
    CLI11_PARSE(app, argc, argv);

    if (a.list) {
        for (const auto& s : standard_scenarios()) std::cout << s.name() << "\n";
        for (const auto& p : all_properties()) std::cout << p.name << ": " << p.summary << "\n";
        std::cout << "mutable fields (mut=):";
        for (const auto& f : kMutationFields) std::cout << " " << f;
        std::cout << "\n";
        return 0;
    }
    for (const auto& p : a.properties) {
        if (!find_property(p)) {
            std::cerr << "unknown property " << p << " (see --list)\n";
            return 2;
        }
        a.opt.properties.insert(p);
    }
    std::vector<Scenario> scenarios;
    if (a.all) {
        for (const auto& std_scn : standard_scenarios()) {
            auto s = Scenario::parse(std_scn.spec() + (a.with.empty() ? "" : ";" + a.with));
            if (!s) {
                std::cerr << "bad --with options: " << a.with << "\n";
                return 2;
            }
            scenarios.push_back(*s);
        }
    } else if (auto s = Scenario::parse(a.scenario + (a.with.empty() ? "" : ";" + a.with))) {
        scenarios.push_back(*s);
    } else {
        std::cerr << "bad scenario: " << a.scenario << "\n";
        return 2;
    }
    return run(a, scenarios);
}
