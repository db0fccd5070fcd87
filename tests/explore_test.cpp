// The security explorer (src/explore): the real roles under an active attacker.
//
// ExploreHolds.*   properties that hold today, under a bounded exploration.
// ExplorerFinds.*  holes in today's code: the explorer must find a counterexample. When the
//                  core closes a hole, flip its test to expect none.
#include <gtest/gtest.h>

#include "explore/explorer.hpp"

namespace cpns::explore {
namespace {

Scenario scenario(const std::string& spec) {
    auto s = Scenario::parse(spec);
    EXPECT_TRUE(s.has_value()) << spec;
    return s.value_or(Scenario{});
}

Options bounded(int depth, std::size_t walks, int walk_depth, std::set<std::string> props) {
    Options o;
    o.depth = depth;
    o.walks = walks;
    o.walk_depth = walk_depth;
    o.properties = std::move(props);
    o.shrink = false;
    o.seconds = 20;
    return o;
}

std::string describe(const Report& r) {
    std::string s = r.summary();
    for (const auto& c : r.violations) s += "\n  " + c.property + ": " + c.text;
    return s;
}

// --- The explorer's own machinery -----------------------------------------------------------

TEST(ExploreScenario, SpecParsesBackToItself) {
    for (const auto& s : standard_scenarios()) {
        auto again = Scenario::parse(s.spec());
        ASSERT_TRUE(again.has_value()) << s.spec();
        EXPECT_EQ(again->spec(), s.spec());
    }
    EXPECT_EQ(standard_scenarios().size(), 48u);
    const auto s =
        scenario("gw-list-secure-noui-3;faults=0;attacks=2;dgw;cpne=pne-c;mut=pn_id+caps");
    EXPECT_TRUE(s.gw_initiated && s.pan_secure && !s.enough_ui && s.dishonest_gw);
    EXPECT_EQ(s.pnes, 3);
    EXPECT_EQ(s.compromised_pne, "pne-c");
    EXPECT_EQ(s.mutations, (std::vector<std::string>{"pn_id", "caps"}));
    EXPECT_FALSE(Scenario::parse("pne-2-1-secure-ui-2").has_value());
    EXPECT_FALSE(Scenario::parse("pne-1-1-secure-ui-2;bogus").has_value());
}

TEST(ExploreTrace, ActionsParseBackFromText) {
    const Action a{ActionKind::kRewrite, 0x0123456789abcdefULL, "", "caps",
                   std::string("\x00\xff", 2)};
    const Action b{ActionKind::kTimer, 0, "gw-1", "", ""};
    const auto trace = parse_trace(to_text(a) + "  # comment\n\n" + to_text(b) + "\n");
    ASSERT_EQ(trace.size(), 2u);
    EXPECT_EQ(trace[0], a);
    EXPECT_EQ(trace[1], b);
    EXPECT_FALSE(parse_action("deliver zz - - -").has_value());
}

// Replay is deterministic: the same actions give the same state digest.
TEST(ExploreWorld, ReplayIsDeterministic) {
    const auto scn = scenario("pne-all-insecure-ui-3");
    const auto prior = make_prior(scn);
    World a(scn, prior);
    const auto trace = a.run_honestly();
    World b(scn, prior);
    for (const auto& x : trace) ASSERT_TRUE(b.apply(x));
    EXPECT_EQ(a.state_hash(), b.state_hash());
    EXPECT_TRUE(b.quiescent());
    EXPECT_NE(World(scn, prior).state_hash(), b.state_hash());
}

// Every standard scenario, run honestly after an honest earlier run, violates nothing and
// registers a PN that every party holds.
TEST(ExploreWorld, HonestRunsViolateNothing) {
    for (const auto& scn : standard_scenarios()) {
        const auto trace = honest_trace(scn);
        const auto v = Explorer::replay(scn, trace);
        EXPECT_TRUE(v.empty()) << scn.name() << ": "
                               << (v.empty() ? "" : v[0].property + " " + v[0].text);
        World w(scn, make_prior(scn));
        for (const auto& a : trace) w.apply(a);
        EXPECT_TRUE(w.quiescent()) << scn.name();
        EXPECT_EQ(w.directory().pns().size(), 2u) << scn.name();  // earlier run + this one
        EXPECT_EQ(w.gw().inventory().size(), 2u) << scn.name();
    }
}

// Delta debugging keeps the property violated and never lengthens the trace; padding a
// counterexample with honest noise shrinks back to a trace no longer than the original.
TEST(ExploreShrink, DdminRemovesNoiseAndKeepsTheViolation) {
    const auto scn = scenario("pne-1-1-insecure-ui-2;faults=0;attacks=1;replay;timers=0");
    Options o = bounded(1, 0, 0, {"freshness"});
    Explorer ex(scn, o);
    const Report r = ex.run();
    const auto* cx = r.find("freshness");
    ASSERT_NE(cx, nullptr) << describe(r);
    std::vector<Action> noisy = honest_trace(scn);
    noisy.insert(noisy.begin() + 1, cx->trace.begin(), cx->trace.end());
    const auto shrunk = ex.shrink(noisy, "freshness");
    EXPECT_LE(shrunk.size(), cx->trace.size());
    EXPECT_TRUE(has_violation(ex.check_trace(shrunk, {"freshness"}), "freshness"));
    EXPECT_FALSE(has_violation(ex.check_trace(honest_trace(scn), {}), "freshness"));
}

// --- Properties that hold today --------------------------------------------------------------

// A PNE joins only PNs it asked for or accepted, and no key reaches a party that must not hold
// it, whatever the PAN attacker, a dishonest PN GW or a compromised PNE does.
TEST(ExploreHolds, ConsentAndSecrecyUnderEveryAttacker) {
    const std::string all =
        "mut=setup_type+invited+caps+pn_id+rand_server+wrapped+hash_pne+"
        "hash_server+inventory+success+sender";
    const std::vector<std::string> specs{
        "pne-all-insecure-ui-3;faults=1;attacks=1;replay;inject;" + all,
        "gw-all-insecure-noui-2;faults=1;attacks=1;replay;inject;" + all,
        "pne-list-secure-ui-3;faults=0;attacks=2;noreplay;dgw;" + all,
        "pne-all-insecure-ui-3;faults=0;attacks=1;replay;cpne=pne-c;" + all,
    };
    for (const auto& spec : specs) {
        Explorer ex(scenario(spec), bounded(2, 100, 40, {"consent", "secrecy"}));
        const Report r = ex.run();
        EXPECT_TRUE(r.violations.empty()) << describe(r);
        EXPECT_GE(r.depth_exhausted, 2) << describe(r);
    }
}

// Drops, duplicates and timeouts alone never admit a PNE without consent, leak a key, accept an
// old value, break the setup type or let tables grow.
TEST(ExploreHolds, NetworkFaultsAloneKeepEveryPropertyButAgreementAndInitiator) {
    for (const auto& spec : {"pne-all-insecure-ui-3;faults=2;attacks=0;noreplay",
                             "gw-list-secure-noui-2;faults=2;attacks=0;noreplay",
                             "pne-1-1-insecure-noui-2;faults=2;attacks=0;noreplay"}) {
        Explorer ex(scenario(spec), bounded(3, 30, 40,
                                            {"consent", "secrecy", "freshness", "setup_fidelity",
                                             "bounded_state"}));
        const Report r = ex.run();
        EXPECT_TRUE(r.violations.empty()) << describe(r);
    }
}

// hash_PNE and hash_server_PNE bind rand_PNE, rand_server and the PN: a dishonest PN GW that
// swaps them for values it saw (this run or the earlier one) gets no PNE and no server to accept
// one. (The freshness hole that remains is the LocalEUKey copy, see ExplorerFinds below.)
TEST(ExploreHolds, OldOrForeignHashesAreNeverAccepted) {
    for (const auto& spec :
         {"pne-1-1-secure-ui-2;faults=0;attacks=1;noreplay;dgw;mut=hash_server+hash_pne",
          "gw-all-insecure-ui-2;faults=1;attacks=2;noreplay;dgw;"
          "mut=hash_server+hash_pne+pn_id+rand_server+wrapped"}) {
        Explorer ex(scenario(spec), bounded(2, 150, 30, {"freshness", "consent", "secrecy"}));
        const Report r = ex.run();
        EXPECT_TRUE(r.violations.empty()) << describe(r);
    }
}

// --- Holes in today's code: the explorer finds each -------------------------------------------

// The server registers a PNE-initiated PN as soon as any PNE authenticates. A replayed frame
// gets the initiator excluded while the invitee joins: the earlier run's PnSetupRequest (the PN
// GW opens a PN in the initiator's name with the old rand_PNE, so the initiator's hash fails),
// or the invitee's PneAuthenticationRequest sent to the initiator (its copy does not open, the
// initiator answers 'authentication failed' in clear and the PN GW takes it).
TEST(ExplorerFinds, ForgedInitiator) {
    Explorer ex(scenario("pne-all-insecure-ui-2;faults=0;attacks=1;replay;timers=0"),
                bounded(2, 500, 30, {"initiator_authenticity"}));
    const Report r = ex.run();
    EXPECT_NE(r.find("initiator_authenticity"), nullptr) << describe(r);
}

// A dishonest PN GW turns the initiator's '1-1' into 'All': the server does not check the
// members against the setup type and registers the invitee in a PN asked as 1-1.
TEST(ExplorerFinds, SetupTypeNotEnforcedAgainstDishonestGateway) {
    Explorer ex(scenario("pne-1-1-secure-ui-2;faults=0;attacks=1;noreplay;dgw;mut=setup_type;"
                         "timers=0"),
                bounded(2, 200, 30, {"setup_fidelity"}));
    const Report r = ex.run();
    EXPECT_NE(r.find("setup_fidelity"), nullptr) << describe(r);
}

// Likewise for the invitation list: the attacker on an insecure PAN (or a dishonest PN GW)
// swaps the list, and the server registers a PNE the initiator never invited.
TEST(ExplorerFinds, InvitationListNotEnforced) {
    Explorer ex(scenario("pne-list-insecure-ui-3;faults=0;attacks=1;noreplay;mut=invited;timers=0"),
                bounded(2, 300, 30, {"setup_fidelity"}));
    const Report r = ex.run();
    const auto* cx = r.find("setup_fidelity");
    ASSERT_NE(cx, nullptr) << describe(r);
    EXPECT_NE(cx->text.find("outside the invitation list"), std::string::npos) << cx->text;
}

// Capabilities travel in clear and are bound into nothing: an attacker on the insecure PAN
// rewrites them and the server registers what the PNE never sent.
TEST(ExplorerFinds, CapabilitiesNotAuthenticated) {
    Explorer ex(scenario("pne-1-1-insecure-ui-2;faults=0;attacks=1;noreplay;mut=caps;timers=0"),
                bounded(2, 100, 30, {"agreement"}));
    const Report r = ex.run();
    const auto* cx = r.find("agreement");
    ASSERT_NE(cx, nullptr) << describe(r);
    EXPECT_NE(cx->text.find("capabilities"), std::string::npos) << cx->text;
}

// The PN Inventory in a success result is not covered by hash_server_PNE: a dishonest PN GW
// hands the PNE an inventory the server did not register, and the PNE stores it.
TEST(ExplorerFinds, InventoryGivenToPneNotAuthenticated) {
    Explorer ex(scenario("pne-1-1-secure-ui-2;faults=0;attacks=1;noreplay;dgw;mut=inventory;"
                         "timers=0"),
                bounded(2, 100, 30, {"agreement"}));
    const Report r = ex.run();
    const auto* cx = r.find("agreement");
    ASSERT_NE(cx, nullptr) << describe(r);
    EXPECT_NE(cx->text.find("stores"), std::string::npos) << cx->text;
}

// The key-encryption key of a LocalEUKey copy binds PN ID, PNE ID, PN GW ID and rand_server but
// not rand_PNE: an initiator waiting for its Authentication Request accepts the copy of the
// earlier run. Found at depth 1; shrunk and printed as a pasteable test.
TEST(ExplorerFinds, ReplayedLocalEukeyCopyAccepted) {
    Options o = bounded(1, 0, 0, {"freshness"});
    o.shrink = true;
    Explorer ex(scenario("pne-1-1-insecure-ui-2;faults=0;attacks=1;replay;timers=0"), o);
    const Report r = ex.run();
    const auto* cx = r.find("freshness");
    ASSERT_NE(cx, nullptr) << describe(r);
    ASSERT_EQ(cx->trace.size(), 1u);
    EXPECT_EQ(cx->trace[0].kind, ActionKind::kReplay);
    EXPECT_NE(cx->text.find("earlier run"), std::string::npos) << cx->text;
    EXPECT_TRUE(has_violation(Explorer::replay(ex.scenario(), cx->trace), "freshness"));
    EXPECT_EQ(ex.render_mermaid(cx->trace).rfind("sequenceDiagram", 0), 0u);
    const std::string test = ex.render_gtest(*cx);
    EXPECT_NE(test.find("TEST(ExplorerCounterexample, Freshness_"), std::string::npos) << test;
    EXPECT_NE(test.find(to_text(cx->trace[0])), std::string::npos) << test;
}

// After a completed run, the PnSetupRequest seen in clear is replayed: the PN GW opens another
// PN, the invitee joins again, and PNs pile up at the PN GW (and the PNEs) with no bound.
TEST(ExplorerFinds, PnsAccumulateWithoutBound) {
    const auto scn = scenario("pne-all-insecure-ui-2;faults=0;attacks=1;replay");
    Options o = bounded(1, 150, 30, {"bounded_state"});
    o.prefix = honest_trace(scn);
    Explorer ex(scn, o);
    const Report r = ex.run();
    EXPECT_NE(r.find("bounded_state"), nullptr) << describe(r);
}

// A duplicated PnRegistrationRequest reaches the server after it registered the PN: its
// ErrorReport (DUPLICATE_PN) ends the PN GW's session as a failure, although the server keeps
// the PN registered; server and PN GW disagree for good.
TEST(ExplorerFinds, LateErrorReportLeavesPartiesDisagreeing) {
    Explorer ex(scenario("pne-1-1-secure-ui-2;faults=1;attacks=0;noreplay;timers=0"),
                bounded(2, 300, 30, {"agreement"}));
    const Report r = ex.run();
    EXPECT_NE(r.find("agreement"), nullptr) << describe(r);
}

}  // namespace
}  // namespace cpns::explore

// --- Counterexamples pasted from `cpns-explore` output --------------------------------------
// As printed by the program (names shortened). Actions name messages by content digest: a
// change to what the roles send makes the trace stale (its actions are skipped and the test
// fails), which is the moment to re-run cpns-explore and paste again, or to flip the test.

// agreement: the server registered pn-49a6f303ffd7 with {pne-a} but the PN GW does not hold it
TEST(ExplorerCounterexample, LateErrorReport) {
    const auto scn = cpns::explore::Scenario::parse(
        "pne-1-1-secure-ui-2;faults=1;attacks=0;noreplay;timers=0;seed=1;new_pns=1;sessions=2");
    ASSERT_TRUE(scn.has_value());
    const auto trace = cpns::explore::parse_trace(R"(
deliver 8fc697ecf569938c - - -  # deliver PnSetupRequest pne-a -> gw-1 (clear)
duplicate 6651eaa2b3ebd377 - - -  # duplicate PnRegistrationRequest gw-1 -> cpns-server (tls)
deliver 6651eaa2b3ebd377 - - -  # deliver PnRegistrationRequest gw-1 -> cpns-server (tls)
deliver dd1c2371f4c35e02 - - -  # deliver AuthenticationRequest cpns-server -> gw-1 (tls)
deliver 12c54d9e3fc4c2f0 - - -  # deliver PneAuthenticationRequest gw-1 -> pne-a (clear)
deliver 4cbe6265a7808e70 - - -  # deliver PneAuthenticationResponse pne-a -> gw-1 (clear)
deliver ce3b94f99a3e15a3 - - -  # deliver AuthenticationResponse gw-1 -> cpns-server (tls)
deliver 6651eaa2b3ebd377 - - -  # deliver PnRegistrationRequest gw-1 -> cpns-server (tls)
deliver 576e634b62069cc9 - - -  # deliver ErrorReport cpns-server -> gw-1 (tls)
deliver 9be60bc6fe3e8c32 - - -  # deliver PnSetupResponse gw-1 -> pne-a (clear)
deliver ee68eb0eee4802a5 - - -  # deliver PnRegistrationResponse cpns-server -> gw-1 (tls)
)");
    const auto v = cpns::explore::Explorer::replay(*scn, trace, {"agreement"});
    EXPECT_TRUE(cpns::explore::has_violation(v, "agreement"));
}

// agreement: the server registered pne-a in pn-49a6f303ffd7 with capabilities/contents pne-a
// did not send
TEST(ExplorerCounterexample, CapabilitiesRewrittenOnInsecurePan) {
    const auto scn = cpns::explore::Scenario::parse(
        "pne-1-1-insecure-ui-2;faults=0;attacks=1;noreplay;timers=0;mut=caps;seed=1;new_pns=1;"
        "sessions=2");
    ASSERT_TRUE(scn.has_value());
    const auto trace = cpns::explore::parse_trace(R"(
rewrite 8fc697ecf569938c - caps 0a0c6465766963652d706e652d6112076578706c6f72653206666f72676564  # rewrite PnSetupRequest pne-a -> gw-1 (clear) caps
deliver b38082dcdcfb8f95 - - -  # deliver PnRegistrationRequest gw-1 -> cpns-server (tls)
deliver dd1c2371f4c35e02 - - -  # deliver AuthenticationRequest cpns-server -> gw-1 (tls)
deliver 12c54d9e3fc4c2f0 - - -  # deliver PneAuthenticationRequest gw-1 -> pne-a (clear)
tls 0000000000000000 pne-a - -  # complete PSK-TLS pne-a <-> gw-1
deliver 186ee3e68c7a68f4 - - -  # deliver PneAuthenticationResponse pne-a -> gw-1 (tls)
deliver ce3b94f99a3e15a3 - - -  # deliver AuthenticationResponse gw-1 -> cpns-server (tls)
)");
    const auto v = cpns::explore::Explorer::replay(*scn, trace, {"agreement"});
    EXPECT_TRUE(cpns::explore::has_violation(v, "agreement"));
}

// agreement: server and PN GW count pne-a as a member of pn-49a6f303ffd7 {pne-a,pne-b} but
// pne-a does not hold it. The PN GW answers a replayed PnSetupRequest with a BUSY ErrorReport
// that names no PN; the initiator, waiting for its result, takes it as the end of its own
// establishment.
TEST(ExplorerCounterexample, BusyErrorReportWithoutPnIdAbortsAJoinedInitiator) {
    const auto scn = cpns::explore::Scenario::parse(
        "pne-all-insecure-ui-2;faults=0;attacks=1;replay;timers=0;seed=1;new_pns=1;sessions=2");
    ASSERT_TRUE(scn.has_value());
    const auto trace = cpns::explore::parse_trace(R"(
deliver 98e1e5387326902b - - -  # deliver PnSetupRequest pne-a -> gw-1 (clear)
deliver 999409fe5c6aa2c1 - - -  # deliver PnSetupNotify gw-1 -> pne-b (clear)
deliver a6b45771b8a33410 - - -  # deliver PnSetupNotifyResponse pne-b -> gw-1 (clear)
deliver 49f80e382e011d91 - - -  # deliver PnRegistrationRequest gw-1 -> cpns-server (tls)
deliver 867a43a4e1684c51 - - -  # deliver AuthenticationRequest cpns-server -> gw-1 (tls)
deliver d137a6f3f377a4d9 - - -  # deliver PneAuthenticationRequest gw-1 -> pne-b (clear)
deliver 12c54d9e3fc4c2f0 - - -  # deliver PneAuthenticationRequest gw-1 -> pne-a (clear)
tls 0000000000000000 pne-a - -  # complete PSK-TLS pne-a <-> gw-1
tls 0000000000000000 pne-b - -  # complete PSK-TLS pne-b <-> gw-1
deliver c7a981c94fd620a1 - - -  # deliver PneAuthenticationResponse pne-b -> gw-1 (tls)
deliver 8864d39bcb8031fe - - -  # deliver PneAuthenticationResponse pne-a -> gw-1 (tls)
replay 4561f4e7b6acb1c2 gw-1 - -  # replay PnSetupRequest pne-a -> gw-1 (seen pne-a -> gw-1, earlier run)
deliver 994bded64bfbe59f - - -  # deliver ErrorReport gw-1 -> pne-a (tls)
deliver 8afaa0083152a8e0 - - -  # deliver AuthenticationResponse gw-1 -> cpns-server (tls)
deliver 5571356b56f09772 - - -  # deliver PnRegistrationResponse cpns-server -> gw-1 (tls)
deliver 9f4346b8cce9ac99 - - -  # deliver PnEstablishmentNotify gw-1 -> pne-b (tls)
deliver 52f19ea64d48f0de - - -  # deliver PnSetupResponse gw-1 -> pne-a (tls)
)");
    const auto v = cpns::explore::Explorer::replay(*scn, trace, {"agreement"});
    EXPECT_TRUE(cpns::explore::has_violation(v, "agreement"));
}
