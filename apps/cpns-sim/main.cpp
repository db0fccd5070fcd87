// cpns-sim: PN Establishment (both flows) in the deterministic simulator.
#include <CLI/CLI.hpp>

#include <fstream>
#include <iostream>

#include "common/version.hpp"
#include "sim/sim.hpp"

using namespace cpns;
using namespace cpns::sim;

namespace {

// PN GWs simulated at once by default: a wave is discovered, runs every flow to its end and
// is freed before the next one starts, so memory stays flat however many PN GWs there are.
constexpr int kDefaultWave = 100;

struct Options {
    int gws = 1;
    int wave = kDefaultWave;
    int pnes_per_gw = 4;
    std::string flow = "both";
    std::string setup = "all";
    std::uint64_t seed = 1;
    std::string ui = "mix";
    std::string pan = "mix";
    int wrong_eukey = 0;
    int wrong_preassigned = 0;
    int decline = 0;
    double drop = 0, duplicate = 0, delay = 0, reorder = 0, flip = 0;
    std::string trace = "auto";
    std::string json_path;
};

bool pick(const std::string& mode, bool mix_value) {
    if (mode == "yes" || mode == "secure") return true;
    if (mode == "no" || mode == "insecure") return false;
    return mix_value;
}

void print_inventory(const pb::PnInventory& inv) {
    std::cout << "  PN " << inv.pn_id() << " at " << inv.gw_id() << " (" << inv.members_size()
              << " member" << (inv.members_size() == 1 ? "" : "s") << ")\n";
    for (const auto& m : inv.members())
        std::cout << "    - " << m.pne_id() << "  " << m.capabilities().device_type()
                  << (m.local_eukey_assigned() ? "  LocalEUKey" : "  pre-assigned key") << "\n";
}

std::string add_gateway(Simulator& sim, const Options& o, int g) {
    GwSpec spec;
    spec.id = "gw-" + std::to_string(g);
    spec.pnes.reserve(static_cast<std::size_t>(o.pnes_per_gw));
    for (int i = 1; i <= o.pnes_per_gw; ++i) {
        PneSpec p;
        p.id = spec.id + "-pne-" + std::to_string(i);
        p.enough_ui = pick(o.ui, i % 2 == 1);
        p.pan_secure = pick(o.pan, ((i - 1) / 2) % 2 == 0);
        p.wrong_eukey = i > o.pnes_per_gw - o.wrong_eukey;
        p.wrong_preassigned = i > o.pnes_per_gw - o.wrong_preassigned;
        p.accept_invitations = i == 1 || i > o.decline + 1;
        spec.pnes.push_back(p);
    }
    sim.add_gateway(spec);
    return spec.id;
}

}  // namespace

int main(int argc, char** argv) {
    Options o;
    CLI::App app{
        "cpns-sim: runs OMA CPNS PN Establishment (PNE initiated 5.2.1.1 and PN GW initiated "
        "5.2.1.2) between one CPNS Server, PN GWs and PNEs in a deterministic simulator with "
        "virtual time, and prints the message flow (text and Mermaid), the PN Inventory and a "
        "JSON summary. Exit status 1 if an invariant breaks (SK_PNE or LocalEUKey disagree, a "
        "protected message would have crossed an insecure PAN in clear)."};
    app.add_option("--gws", o.gws, "number of PN GWs")->check(CLI::Range(1, 100000));
    app.add_option("--wave", o.wave,
                   "PN GWs simulated at once: each wave runs every flow to its end, is counted "
                   "and checked, and is freed before the next (memory stays flat in --gws)")
        ->check(CLI::Range(1, 100000));
    app.add_option("--pnes-per-gw", o.pnes_per_gw, "PNEs on each PN GW's PAN")
        ->check(CLI::Range(1, static_cast<int>(kMaxPnesPerPn)));
    app.add_option("--flow", o.flow, "pne (5.2.1.1), gw (5.2.1.2) or both, one after the other")
        ->check(CLI::IsMember({"pne", "gw", "both"}));
    app.add_option("--setup", o.setup, "setup type: 1-1, all or list (every other PNE)")
        ->check(CLI::IsMember({"1-1", "all", "list"}));
    app.add_option("--seed", o.seed, "random seed (same seed, same run)");
    app.add_option("--ui", o.ui, "PNEs with enough UI: yes, no or mix (odd-numbered PNEs)")
        ->check(CLI::IsMember({"yes", "no", "mix"}));
    app.add_option("--pan", o.pan, "PAN security: secure, insecure or mix")
        ->check(CLI::IsMember({"secure", "insecure", "mix"}));
    app.add_option("--wrong-eukey", o.wrong_eukey,
                   "on every PN GW, this many PNEs (the last ones) hold a wrong EUKey");
    app.add_option("--wrong-preassigned", o.wrong_preassigned,
                   "on every PN GW, this many PNEs hold a wrong pre-assigned key");
    app.add_option("--decline", o.decline, "on every PN GW, this many PNEs decline invitations");
    app.add_option("--drop", o.drop, "probability that a message is lost")
        ->check(CLI::Range(0.0, 1.0));
    app.add_option("--duplicate", o.duplicate, "probability that a message is duplicated")
        ->check(CLI::Range(0.0, 1.0));
    app.add_option("--delay", o.delay, "probability that a message is delayed (up to 3 s)")
        ->check(CLI::Range(0.0, 1.0));
    app.add_option("--reorder", o.reorder, "probability that a message is held back")
        ->check(CLI::Range(0.0, 1.0));
    app.add_option("--flip", o.flip, "probability that a byte of a message is flipped")
        ->check(CLI::Range(0.0, 1.0));
    app.add_option("--trace", o.trace,
                   "none, text, mermaid, both, or auto (both for up to 32 PNEs, else none)")
        ->check(CLI::IsMember({"none", "text", "mermaid", "both", "auto"}));
    app.add_option("--json", o.json_path, "also write the JSON summary to this file");
    app.set_version_flag("--version", cpns::version_text("cpns-sim"),
                         "print the version and the OpenSSL version, and exit");
    CLI11_PARSE(app, argc, argv);

    const long total = static_cast<long>(o.gws) * o.pnes_per_gw;
    if (o.trace == "auto") o.trace = total <= 32 ? "both" : "none";
    FaultConfig faults;
    faults.drop = o.drop;
    faults.duplicate = o.duplicate;
    faults.delay = o.delay;
    faults.reorder = o.reorder;
    faults.flip = o.flip;
    Simulator sim(o.seed, faults, o.trace != "none");

    const auto setup = *parse_setup_type(o.setup);
    auto every_other = [&](const std::string& gw, int first) {
        std::vector<std::string> ids;
        for (int i = first; i <= o.pnes_per_gw; i += 2)
            ids.push_back(gw + "-pne-" + std::to_string(i));
        return ids;
    };
    for (int first = 1; first <= o.gws; first += o.wave) {
        std::vector<std::string> gws;
        for (int g = first; g <= std::min(o.gws, first + o.wave - 1); ++g)
            gws.push_back(add_gateway(sim, o, g));
        sim.discover_all();
        sim.run();
        if (o.flow == "pne" || o.flow == "both") {
            for (const auto& gw : gws) {
                std::vector<std::string> invited;
                if (setup == pb::SETUP_INVITE_LIST) {
                    invited = every_other(gw, 2);
                    if (invited.empty()) invited.push_back("pne-not-on-this-pan");
                }
                sim.start_pne_setup(gw + "-pne-1", setup, invited);
            }
            sim.run();
        }
        if (o.flow == "gw" || o.flow == "both") {
            for (const auto& gw : gws) {
                std::vector<std::string> ids;  // empty: all discovered PNEs
                if (setup == pb::SETUP_ONE_TO_ONE) ids = {gw + "-pne-1"};
                if (setup == pb::SETUP_INVITE_LIST) ids = every_other(gw, 1);
                sim.start_gw_invite(gw, ids);
            }
            sim.run();
        }
        // The last wave stays, for the trace and the PN Inventory below.
        if (first + o.wave <= o.gws) sim.retire(gws);
    }

    if (o.trace == "text" || o.trace == "both")
        std::cout << "== Message flow (virtual time) ==\n" << sim.trace_text() << "\n";
    if (o.trace == "mermaid" || o.trace == "both")
        std::cout << "== Mermaid sequence diagram ==\n```mermaid\n"
                  << sim.trace_mermaid() << "```\n\n";
    if (total <= 32) {
        std::cout << "== PN Inventory at the CPNS Server ==\n";
        for (const auto& [key, inv] : sim.directory().pns()) print_inventory(inv);
        std::cout << "\n";
    }
    const Summary s = sim.summary();
    std::cout << "== Summary ==\n" << s.to_json();
    if (!o.json_path.empty()) {
        std::ofstream f(o.json_path);
        f << s.to_json();
        if (!f) {
            std::cerr << "cpns-sim: cannot write " << o.json_path << "\n";
            return 2;
        }
    }
    std::cerr << "cpns-sim: " << s.pns_registered << " PN(s) registered, " << s.pnes_authenticated
              << " PNE membership(s) authenticated, " << s.excluded.size() << " excluded; "
              << s.messages << " messages in " << s.virtual_ms << " ms virtual, "
              << static_cast<long long>(s.wall_ms) << " ms wall, peak RSS " << s.peak_rss_kb / 1024
              << " MiB\n";
    const bool ok = s.sk_checked == s.sk_agree && s.local_key_checked == s.local_key_agree &&
                    s.protection_violations == 0;
    if (!ok) std::cerr << "cpns-sim: INVARIANT BROKEN (see summary)\n";
    return ok ? 0 : 1;
}
