// Both PN Establishment flows end to end in the deterministic simulator.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <set>

#include "sim/sim.hpp"

namespace cpns::sim {
namespace {

enum class Ui { kYes, kNo };
enum class Pan { kSecure, kInsecure };

std::string pne_name(int i) {
    return "pne-" + std::to_string(i);
}

GwSpec make_gw(const std::string& id, int n, Ui ui, Pan pan) {
    GwSpec g;
    g.id = id;
    for (int i = 1; i <= n; ++i) {
        PneSpec p;
        p.id = id + "-" + pne_name(i);
        p.enough_ui = ui == Ui::kYes;
        p.pan_secure = pan == Pan::kSecure;
        g.pnes.push_back(p);
    }
    return g;
}

std::set<std::string> members(const pb::PnInventory& inv) {
    std::set<std::string> out;
    for (const auto& m : inv.members()) out.insert(m.pne_id());
    return out;
}

const OutcomeEffect& last_outcome(const Simulator& sim, const std::string& id) {
    const auto& o = sim.outcomes(id);
    EXPECT_FALSE(o.empty()) << id << " reported no outcome";
    static const OutcomeEffect none{};
    return o.empty() ? none : o.back();
}

// flow x setup type x PNE count x UI x PAN security.
struct FlowCase {
    bool gw_initiated;
    pb::SetupType setup;
    int n;
    Ui ui;
    Pan pan;
};

std::string case_name(const testing::TestParamInfo<FlowCase>& info) {
    const auto& c = info.param;
    std::string s = c.gw_initiated ? "GwInit" : "PneInit";
    s += c.setup == pb::SETUP_ONE_TO_ONE ? "_OneToOne"
         : c.setup == pb::SETUP_ALL      ? "_All"
                                         : "_List";
    s += "_" + std::to_string(c.n) + "Pnes";
    s += c.ui == Ui::kYes ? "_Ui" : "_NoUi";
    s += c.pan == Pan::kSecure ? "_SecurePan" : "_InsecurePan";
    return s;
}

class FlowMatrix : public testing::TestWithParam<FlowCase> {};

TEST_P(FlowMatrix, RightMembersKeysAgreeAndTlsExactlyWhenPanInsecure) {
    const FlowCase c = GetParam();
    Simulator sim(1000 + static_cast<std::uint64_t>(c.n));
    const std::string gw = "gw-1";
    sim.add_gateway(make_gw(gw, c.n, c.ui, c.pan));
    sim.discover_all();
    sim.run();

    std::vector<std::string> all;
    for (int i = 1; i <= c.n; ++i) all.push_back(gw + "-" + pne_name(i));
    std::set<std::string> expected;
    std::vector<std::string> started;  // PNEs whose outcome we check
    if (!c.gw_initiated) {
        const std::string init = all[0];
        std::vector<std::string> invited;
        expected.insert(init);
        if (c.setup == pb::SETUP_ALL) expected.insert(all.begin(), all.end());
        if (c.setup == pb::SETUP_INVITE_LIST) {
            for (std::size_t i = 1; i < all.size(); i += 2) {
                invited.push_back(all[i]);
                expected.insert(all[i]);
            }
            if (invited.empty()) invited.push_back("pne-not-on-this-pan");
        }
        sim.start_pne_setup(init, c.setup, invited);
    } else {
        std::vector<std::string> invite;
        if (c.setup == pb::SETUP_ONE_TO_ONE) invite = {all[0]};
        if (c.setup == pb::SETUP_INVITE_LIST)
            for (std::size_t i = 0; i < all.size(); i += 2) invite.push_back(all[i]);
        // SETUP_ALL: an empty list invites every discovered PNE.
        sim.start_gw_invite(gw, invite);
        if (invite.empty()) expected.insert(all.begin(), all.end());
        expected.insert(invite.begin(), invite.end());
    }
    sim.run();

    // The PN is registered once, with exactly the expected PNEs, at the server and the PN GW.
    ASSERT_EQ(sim.directory().pns().size(), 1u);
    const pb::PnInventory& server_inv = sim.directory().pns().begin()->second;
    EXPECT_EQ(members(server_inv), expected);
    const auto& gw_inv = sim.gateway(gw).inventory();
    ASSERT_EQ(gw_inv.size(), 1u);
    EXPECT_EQ(members(gw_inv.begin()->second), expected);
    EXPECT_EQ(gw_inv.begin()->first, server_inv.pn_id());
    const std::string pn = server_inv.pn_id();
    // The routing table of the PN lists its members.
    const auto& route = sim.gateway(gw).routing_table().at(pn);
    EXPECT_EQ(std::set<std::string>(route.begin(), route.end()), expected);

    const auto& gw_out = last_outcome(sim, gw);
    EXPECT_TRUE(gw_out.success);

    for (const auto& id : expected) {
        SCOPED_TRACE(id);
        const auto& o = last_outcome(sim, id);
        EXPECT_TRUE(o.success) << reason_name(o.reason) << " " << o.detail;
        EXPECT_EQ(members(o.inventory), expected);
        // SK_PNE equal at PNE and server.
        auto ssk = sim.server_sk(pn, id);
        auto psk = sim.pne_sk(pn, id);
        ASSERT_TRUE(ssk && psk);
        EXPECT_TRUE(*ssk == *psk);
        // LocalEUKey assigned iff the PNE has enough UI, equal at PNE and PN GW.
        auto plk = sim.pne_local_key(pn, id);
        auto glk = sim.gw_local_key(pn, id);
        if (c.ui == Ui::kYes) {
            ASSERT_TRUE(plk && glk);
            EXPECT_TRUE(*plk == *glk);
            EXPECT_FALSE(*plk == *ssk);
        } else {
            EXPECT_FALSE(plk);
            EXPECT_FALSE(glk);
        }
        // PSK-TLS requested exactly when the PAN is insecure, with the right key.
        std::vector<TlsRecord> tls;
        for (const auto& t : sim.tls_records())
            if (t.pne_id == id) tls.push_back(t);
        if (c.pan == Pan::kSecure) {
            EXPECT_TRUE(tls.empty());
        } else {
            ASSERT_EQ(tls.size(), 1u);
            EXPECT_TRUE(tls[0].ok);
            if (c.ui == Ui::kYes) {
                EXPECT_TRUE(tls[0].psk == *plk);
                EXPECT_EQ(tls[0].identity, local_eukey_identity(pn, id));
            } else {
                EXPECT_TRUE(tls[0].psk == *sim.preassigned_key(id));
                EXPECT_EQ(tls[0].identity, preassigned_identity(id));
            }
        }
    }
    // PNEs left out were never told anything secret and have no keys.
    for (const auto& id : all)
        if (!expected.count(id)) {
            EXPECT_FALSE(sim.pne_sk(pn, id));
            EXPECT_FALSE(sim.server_sk(pn, id));
        }
    const Summary s = sim.summary();
    EXPECT_EQ(s.protection_violations, 0u);
    EXPECT_EQ(s.sk_checked, expected.size());
    EXPECT_EQ(s.sk_agree, expected.size());
    EXPECT_EQ(sim.server().active_sessions(), 0u);
    EXPECT_EQ(sim.gateway(gw).active_sessions(), 0u);
}

std::vector<FlowCase> all_cases() {
    std::vector<FlowCase> out;
    for (bool gw : {false, true})
        for (auto setup : {pb::SETUP_ONE_TO_ONE, pb::SETUP_ALL, pb::SETUP_INVITE_LIST})
            for (int n : {1, 2, 16})
                for (Ui ui : {Ui::kYes, Ui::kNo})
                    for (Pan pan : {Pan::kSecure, Pan::kInsecure})
                        out.push_back({gw, setup, n, ui, pan});
    return out;
}

INSTANTIATE_TEST_SUITE_P(BothFlows, FlowMatrix, testing::ValuesIn(all_cases()), case_name);

// A PN with every kind of PNE at once: UI or not, PAN secure or not.
GwSpec mixed_gw(const std::string& id) {
    GwSpec g;
    g.id = id;
    int i = 0;
    for (bool ui : {true, false})
        for (bool secure : {true, false}) {
            PneSpec p;
            p.id = id + "-" + pne_name(++i);
            p.enough_ui = ui;
            p.pan_secure = secure;
            g.pnes.push_back(p);
        }
    return g;
}

TEST(SimFlows, MixedPnWithEveryCombinationJoins) {
    for (bool gw_init : {false, true}) {
        Simulator sim(7);
        sim.add_gateway(mixed_gw("gw"));
        sim.discover_all();
        sim.run();
        if (gw_init)
            sim.start_gw_invite("gw");
        else
            sim.start_pne_setup("gw-pne-1", pb::SETUP_ALL);
        sim.run();
        const Summary s = sim.summary();
        EXPECT_EQ(s.pns_registered, 1u);
        EXPECT_EQ(s.pnes_authenticated, 4u);
        EXPECT_EQ(s.sk_agree, 4u);
        EXPECT_EQ(s.local_key_checked, 2u);
        EXPECT_EQ(s.local_key_agree, 2u);
        EXPECT_EQ(s.tls_ok, 2u);
        EXPECT_EQ(s.protection_violations, 0u);
    }
}

TEST(SimFlows, WrongEukeyPneIsExcludedOthersJoin) {
    for (bool gw_init : {false, true}) {
        Simulator sim(11);
        GwSpec g = mixed_gw("gw");
        g.pnes[2].wrong_eukey = true;  // gw-pne-3
        sim.add_gateway(g);
        sim.discover_all();
        sim.run();
        if (gw_init)
            sim.start_gw_invite("gw");
        else
            sim.start_pne_setup("gw-pne-1", pb::SETUP_ALL);
        sim.run();
        ASSERT_EQ(sim.directory().pns().size(), 1u);
        const auto& inv = sim.directory().pns().begin()->second;
        EXPECT_EQ(members(inv), (std::set<std::string>{"gw-pne-1", "gw-pne-2", "gw-pne-4"}));
        const auto& bad = last_outcome(sim, "gw-pne-3");
        EXPECT_FALSE(bad.success);
        EXPECT_EQ(bad.reason, pb::AUTHENTICATION_FAILED);
        EXPECT_EQ(reason_name(bad.reason), "authentication failed");
        // The PN GW and the server give the same reason for it.
        const auto& gw_out = last_outcome(sim, "gw");
        for (const auto& p : gw_out.pnes)
            if (p.pne_id == "gw-pne-3") {
                EXPECT_FALSE(p.joined);
                EXPECT_EQ(p.reason, pb::AUTHENTICATION_FAILED);
            }
        EXPECT_EQ(sim.summary().excluded.at(inv.pn_id() + "/gw-pne-3"), "authentication failed");
        EXPECT_EQ(sim.server().counters()[pb::AUTHENTICATION_FAILED], 1u);
        // The initiator learns why the other PNE is missing.
        if (!gw_init) {
            const auto& first = sim.outcomes("gw-pne-1").back();
            EXPECT_TRUE(first.success);
        }
    }
}

TEST(SimFlows, NoPnRegisteredWhenEveryPneFails) {
    Simulator sim(12);
    GwSpec g = make_gw("gw", 3, Ui::kYes, Pan::kInsecure);
    for (auto& p : g.pnes) p.wrong_eukey = true;
    sim.add_gateway(g);
    sim.discover_all();
    sim.run();
    sim.start_pne_setup("gw-pne-1", pb::SETUP_ALL);
    sim.run();
    EXPECT_EQ(sim.directory().pns().size(), 0u);
    EXPECT_TRUE(sim.gateway("gw").inventory().empty());
    const auto& gw_out = last_outcome(sim, "gw");
    EXPECT_FALSE(gw_out.success);
    EXPECT_EQ(gw_out.reason, pb::NO_PNE_AUTHENTICATED);
    for (const auto& p : g.pnes) {
        const auto& o = last_outcome(sim, p.id);
        EXPECT_FALSE(o.success);
        EXPECT_EQ(o.reason, pb::AUTHENTICATION_FAILED) << p.id;
    }
}

TEST(SimFlows, UnknownAndRevokedPnesAreExcludedWithReason) {
    Simulator sim(13);
    GwSpec g = make_gw("gw", 3, Ui::kYes, Pan::kSecure);
    g.pnes[1].unknown_to_server = true;
    sim.add_gateway(g);
    sim.directory().set_status("gw-pne-3", EntityStatus::kRevoked);
    sim.discover_all();
    sim.run();
    sim.start_gw_invite("gw");
    sim.run();
    ASSERT_EQ(sim.directory().pns().size(), 1u);
    EXPECT_EQ(members(sim.directory().pns().begin()->second), (std::set<std::string>{"gw-pne-1"}));
    EXPECT_EQ(last_outcome(sim, "gw-pne-2").reason, pb::UNKNOWN_ENTITY);
    EXPECT_EQ(last_outcome(sim, "gw-pne-3").reason, pb::REVOKED);
}

TEST(SimFlows, PneRejectsServerWhoseHashServerIsAltered) {
    for (bool gw_init : {false, true}) {
        FaultConfig f;
        FaultRule r;
        r.action = FaultRule::Action::kMutate;
        r.to = "gw-pne-1";
        r.message = gw_init ? "PnEstablishmentNotify" : "PnSetupResponse";
        r.mutate = [gw_init](pb::Envelope& env) {
            auto* res = gw_init ? env.mutable_establishment_notify()->mutable_result()
                                : env.mutable_setup_response()->mutable_result();
            std::string h = res->hash_server_pne();
            if (!h.empty()) h[5] = static_cast<char>(h[5] ^ 0x40);
            res->set_hash_server_pne(h);
        };
        f.rules.push_back(r);
        Simulator sim(14, f);
        sim.add_gateway(make_gw("gw", 2, Ui::kYes, Pan::kSecure));
        sim.discover_all();
        sim.run();
        if (gw_init)
            sim.start_gw_invite("gw");
        else
            sim.start_pne_setup("gw-pne-1", pb::SETUP_ALL);
        sim.run();
        // The establishment's outcome, then the withdrawal's: the server had registered the
        // PNE, which refused the result; it withdraws, proven under its EUKey.
        const auto& all = sim.outcomes("gw-pne-1");
        ASSERT_EQ(all.size(), 2u);
        const auto& o = all.front();
        EXPECT_FALSE(o.success);
        EXPECT_EQ(o.reason, pb::SERVER_AUTHENTICATION_FAILED);
        EXPECT_EQ(all.back().operation, "withdraw");
        EXPECT_TRUE(all.back().success) << reason_name(all.back().reason);
        EXPECT_TRUE(sim.pne("gw-pne-1").memberships().empty());
        ASSERT_EQ(sim.directory().pns().size(), 1u);
        const pb::PnInventory& inv = sim.directory().pns().begin()->second;
        EXPECT_FALSE(sim.pne_sk(inv.pn_id(), "gw-pne-1"));
        EXPECT_EQ(members(inv), std::set<std::string>{"gw-pne-2"});  // withdrawn at the server
        EXPECT_EQ(members(sim.gateway("gw").inventory().at(inv.pn_id())), members(inv));
        // The other PNE is unaffected.
        EXPECT_TRUE(last_outcome(sim, "gw-pne-2").success);
        // The PNE told its PN GW why.
        EXPECT_EQ(sim.gateway("gw").counters()[pb::SERVER_AUTHENTICATION_FAILED], 1u);
    }
}

TEST(SimFlows, HashPneAlteredByGatewayFailsAuthentication) {
    FaultConfig f;
    FaultRule r;
    r.action = FaultRule::Action::kMutate;
    r.message = "AuthenticationResponse";
    r.mutate = [](pb::Envelope& env) {
        for (auto& res : *env.mutable_auth_response()->mutable_results())
            if (res.pne_id() == "gw-pne-2") {
                std::string h = res.hash_pne();
                h[0] = static_cast<char>(h[0] ^ 1);
                res.set_hash_pne(h);
            }
    };
    f.rules.push_back(r);
    Simulator sim(15, f);
    sim.add_gateway(make_gw("gw", 2, Ui::kNo, Pan::kInsecure));
    sim.discover_all();
    sim.run();
    sim.start_pne_setup("gw-pne-1", pb::SETUP_ALL);
    sim.run();
    EXPECT_TRUE(last_outcome(sim, "gw-pne-1").success);
    EXPECT_EQ(last_outcome(sim, "gw-pne-2").reason, pb::AUTHENTICATION_FAILED);
}

TEST(SimFlows, SetupParametersAlteredOnTheWayFailAuthentication) {
    // A PN GW that rewrites what the initiator asked for (here: the invitation list it
    // forwards) cannot make hash_PNE verify: the setup parameters are bound into it.
    FaultConfig f;
    FaultRule r;
    r.action = FaultRule::Action::kMutate;
    r.message = "PnRegistrationRequest";
    r.mutate = [](pb::Envelope& env) {
        env.mutable_registration_request()->add_invited_pne_ids("x");
    };
    f.rules.push_back(r);
    Simulator sim(16, f);
    sim.add_gateway(make_gw("gw", 3, Ui::kYes, Pan::kSecure));
    sim.discover_all();
    sim.run();
    sim.start_pne_setup("gw-pne-1", pb::SETUP_INVITE_LIST, {"gw-pne-2"});
    sim.run();
    EXPECT_EQ(last_outcome(sim, "gw-pne-1").reason, pb::AUTHENTICATION_FAILED);
    // The invitee authenticated, but a PN its initiator did not ask for is never registered.
    EXPECT_FALSE(last_outcome(sim, "gw-pne-2").success);
    EXPECT_EQ(last_outcome(sim, "gw-pne-2").reason, pb::INITIATOR_NOT_AUTHENTICATED);
    EXPECT_TRUE(sim.directory().pns().empty());
}

TEST(SimFlows, ReplayedAuthenticationResponseIsRejected) {
    // The splice rule stays idle during the first establishment.
    struct Splice {
        bool armed = false;
        pb::AuthenticationResponse old;
    };
    auto splice = std::make_shared<Splice>();
    FaultConfig f;
    FaultRule r;
    r.action = FaultRule::Action::kMutate;
    r.message = "AuthenticationResponse";
    r.mutate = [splice](pb::Envelope& env) {
        if (!splice->armed) return;
        auto* resp = env.mutable_auth_response();
        const std::string pn = resp->pn_id();
        *resp = splice->old;
        resp->set_pn_id(pn);
    };
    f.rules.push_back(r);
    Simulator sim(17, f);
    sim.set_capture(true);
    sim.add_gateway(make_gw("gw", 2, Ui::kYes, Pan::kInsecure));
    sim.discover_all();
    sim.run();
    sim.start_pne_setup("gw-pne-1", pb::SETUP_ALL);
    sim.run();
    ASSERT_EQ(sim.directory().pns().size(), 1u);
    Bytes old_frame;
    for (const auto& c : sim.captured())
        if (c.to == "cpns-server") {
            auto d = decode_frame(c.frame);
            if (auto* e = std::get_if<pb::Envelope>(&d); e && e->has_auth_response()) {
                old_frame = c.frame;
                splice->old = e->auth_response();
            }
        }
    ASSERT_FALSE(old_frame.empty());
    ASSERT_EQ(splice->old.results_size(), 2);

    // 1. The same frame again: that establishment has ended.
    sim.inject("gw", "cpns-server", old_frame);
    sim.run();
    EXPECT_EQ(sim.server().counters()[pb::REPLAYED], 1u);
    EXPECT_EQ(sim.directory().pns().size(), 1u);

    // 2. The earlier hash_PNE values spliced into a new establishment of the same devices
    //    (same EUKeys, new PN, new rand_server): both fail, nothing new is registered.
    splice->armed = true;
    sim.start_gw_invite("gw");
    sim.run();
    EXPECT_EQ(sim.directory().pns().size(), 1u);
    EXPECT_EQ(last_outcome(sim, "gw-pne-1").reason, pb::AUTHENTICATION_FAILED);
    EXPECT_EQ(last_outcome(sim, "gw-pne-2").reason, pb::AUTHENTICATION_FAILED);
    EXPECT_EQ(last_outcome(sim, "gw").reason, pb::NO_PNE_AUTHENTICATED);
}

void expect_timeout_everywhere(const std::string& lost_message) {
    SCOPED_TRACE(lost_message);
    FaultConfig f;
    FaultRule r;
    r.action = FaultRule::Action::kDrop;
    r.message = lost_message;
    f.rules.push_back(r);
    Simulator sim(21, f);
    sim.add_gateway(make_gw("gw", 2, Ui::kYes, Pan::kInsecure));
    sim.discover_all();
    sim.run();
    sim.start_pne_setup("gw-pne-1", pb::SETUP_ALL);
    const Millis limit = 10 * 60'000;
    sim.run(limit);
    EXPECT_LT(sim.now(), limit) << "the run did not come to rest";
    EXPECT_EQ(sim.directory().pns().size(), 0u);
    const auto& gw = last_outcome(sim, "gw");
    EXPECT_FALSE(gw.success);
    EXPECT_EQ(gw.reason, pb::TIMEOUT);
    for (const char* p : {"gw-pne-1", "gw-pne-2"}) {
        const auto& o = last_outcome(sim, p);
        EXPECT_FALSE(o.success);
        EXPECT_EQ(o.reason, pb::TIMEOUT) << p;
    }
    EXPECT_EQ(sim.server().active_sessions(), 0u);
    EXPECT_EQ(sim.gateway("gw").active_sessions(), 0u);
    EXPECT_FALSE(sim.pne("gw-pne-1").busy());
}

TEST(SimFlows, LostMessageEndsInTypedTimeoutAtEveryParty) {
    expect_timeout_everywhere("AuthenticationRequest");  // server -> PN GW
    expect_timeout_everywhere("PnRegistrationRequest");  // PN GW -> server
    // Lost on the way back: the server times out as well.
    FaultConfig f;
    FaultRule r;
    r.action = FaultRule::Action::kDrop;
    r.message = "AuthenticationResponse";
    f.rules.push_back(r);
    Simulator sim(22, f);
    sim.add_gateway(make_gw("gw", 2, Ui::kNo, Pan::kSecure));
    sim.discover_all();
    sim.run();
    sim.start_gw_invite("gw");
    sim.run();
    EXPECT_EQ(last_outcome(sim, "cpns-server").reason, pb::TIMEOUT);
    EXPECT_EQ(last_outcome(sim, "gw").reason, pb::TIMEOUT);
    EXPECT_EQ(last_outcome(sim, "gw-pne-1").reason, pb::TIMEOUT);
    EXPECT_EQ(last_outcome(sim, "gw-pne-2").reason, pb::TIMEOUT);
}

TEST(SimFlows, SilentGatewayEndsInTimeoutAtThePne) {
    FaultConfig f;
    FaultRule r;
    r.action = FaultRule::Action::kDrop;
    r.from = "gw";
    r.to = "gw-pne-1";
    f.rules.push_back(r);
    Simulator sim(23, f);
    sim.add_gateway(make_gw("gw", 1, Ui::kYes, Pan::kSecure));
    sim.discover_all();
    sim.run();
    sim.start_pne_setup("gw-pne-1", pb::SETUP_ONE_TO_ONE);
    sim.run();
    const auto& o = last_outcome(sim, "gw-pne-1");
    EXPECT_EQ(o.reason, pb::TIMEOUT);
    EXPECT_NE(o.detail.find("Authentication Request"), std::string::npos);
}

TEST(SimFlows, LostPneAuthResponseExcludesOnlyThatPne) {
    FaultConfig f;
    FaultRule r;
    r.action = FaultRule::Action::kDrop;
    r.message = "PneAuthenticationResponse";
    r.from = "gw-pne-2";
    f.rules.push_back(r);
    Simulator sim(24, f);
    sim.add_gateway(make_gw("gw", 3, Ui::kYes, Pan::kSecure));
    sim.discover_all();
    sim.run();
    sim.start_pne_setup("gw-pne-1", pb::SETUP_ALL);
    sim.run();
    ASSERT_EQ(sim.directory().pns().size(), 1u);
    EXPECT_EQ(members(sim.directory().pns().begin()->second),
              (std::set<std::string>{"gw-pne-1", "gw-pne-3"}));
    EXPECT_EQ(last_outcome(sim, "gw-pne-2").reason, pb::TIMEOUT);
}

TEST(SimFlows, WrongPreassignedKeyFailsTlsAndIsExcluded) {
    for (bool gw_init : {false, true}) {
        Simulator sim(31);
        GwSpec g = make_gw("gw", 3, Ui::kNo, Pan::kInsecure);
        g.pnes[1].wrong_preassigned = true;
        sim.add_gateway(g);
        sim.discover_all();
        sim.run();
        if (gw_init)
            sim.start_gw_invite("gw");
        else
            sim.start_pne_setup("gw-pne-1", pb::SETUP_ALL);
        sim.run();
        ASSERT_EQ(sim.directory().pns().size(), 1u);
        EXPECT_EQ(members(sim.directory().pns().begin()->second),
                  (std::set<std::string>{"gw-pne-1", "gw-pne-3"}));
        EXPECT_EQ(last_outcome(sim, "gw-pne-2").reason, pb::TLS_HANDSHAKE_FAILED);
        for (const auto& p : last_outcome(sim, "gw").pnes)
            if (p.pne_id == "gw-pne-2") {
                EXPECT_EQ(p.reason, pb::TLS_HANDSHAKE_FAILED);
            }
        EXPECT_EQ(sim.summary().protection_violations, 0u);
    }
}

TEST(SimFlows, InitiatorWithWrongPreassignedKeyNeverSendsInClear) {
    Simulator sim(32);
    GwSpec g = make_gw("gw", 2, Ui::kNo, Pan::kInsecure);
    g.pnes[0].wrong_preassigned = true;
    sim.add_gateway(g);
    sim.discover_all();
    sim.run();
    sim.start_pne_setup("gw-pne-1", pb::SETUP_ALL);
    sim.run();
    EXPECT_EQ(last_outcome(sim, "gw-pne-1").reason, pb::TLS_HANDSHAKE_FAILED);
    for (const auto& t : sim.trace())
        EXPECT_FALSE(!t.is_note && t.from == "gw-pne-1" && t.what == "PnSetupRequest");
    EXPECT_TRUE(sim.directory().pns().empty());
}

TEST(SimFlows, InvitedPneMayDecline) {
    Simulator sim(33);
    GwSpec g = make_gw("gw", 3, Ui::kYes, Pan::kSecure);
    g.pnes[2].accept_invitations = false;
    sim.add_gateway(g);
    sim.discover_all();
    sim.run();
    sim.start_gw_invite("gw");
    sim.run();
    ASSERT_EQ(sim.directory().pns().size(), 1u);
    EXPECT_EQ(members(sim.directory().pns().begin()->second),
              (std::set<std::string>{"gw-pne-1", "gw-pne-2"}));
    for (const auto& p : last_outcome(sim, "gw").pnes)
        if (p.pne_id == "gw-pne-3") {
            EXPECT_EQ(p.reason, pb::DECLINED);
        }
    // Every PNE declining: no PN, and the PN GW says so.
    Simulator sim2(34);
    GwSpec g2 = make_gw("gw", 2, Ui::kYes, Pan::kSecure);
    for (auto& p : g2.pnes) p.accept_invitations = false;
    sim2.add_gateway(g2);
    sim2.discover_all();
    sim2.run();
    sim2.start_gw_invite("gw");
    sim2.run();
    EXPECT_TRUE(sim2.directory().pns().empty());
    EXPECT_EQ(last_outcome(sim2, "gw").reason, pb::DECLINED);
}

TEST(SimFlows, GatewayCannotOpenThePnesCopyOfTheLocalEukey) {
    Simulator sim(41);
    sim.set_capture(true);
    sim.add_gateway(make_gw("gw", 2, Ui::kYes, Pan::kInsecure));
    sim.discover_all();
    sim.run();
    sim.start_pne_setup("gw-pne-1", pb::SETUP_ALL);
    sim.run();
    int checked = 0;
    std::map<std::string, Bytes> rand_pne;  // from the PN Registration Request
    for (const auto& c : sim.captured()) {
        auto d = decode_frame(c.frame);
        auto* env = std::get_if<pb::Envelope>(&d);
        if (env && env->has_registration_request())
            for (const auto& p : env->registration_request().pnes())
                rand_pne[p.join().pne_id()] =
                    Bytes(p.join().rand_pne().begin(), p.join().rand_pne().end());
        if (!env || !env->has_auth_request()) continue;
        const auto& a = env->auth_request();
        const Bytes rand(a.rand_server().begin(), a.rand_server().end());
        for (const auto& k : a.local_eukeys()) {
            const SecretKey gw_key = sim.device_eukey("gw");
            for (Recipient who : {Recipient::kPne, Recipient::kGw})
                EXPECT_FALSE(unwrap_local_eukey(gw_key, who, a.pn_id(), k.pne_id(), "gw", rand,
                                                rand_pne.at(k.pne_id()), bytes_of(k.for_pne())));
            auto pne_copy = unwrap_local_eukey(sim.device_eukey(k.pne_id()), Recipient::kPne,
                                               a.pn_id(), k.pne_id(), "gw", rand,
                                               rand_pne.at(k.pne_id()), bytes_of(k.for_pne()));
            auto gw_copy = unwrap_local_eukey(gw_key, Recipient::kGw, a.pn_id(), k.pne_id(), "gw",
                                              rand, rand_pne.at(k.pne_id()), bytes_of(k.for_gw()));
            ASSERT_TRUE(pne_copy && gw_copy);
            EXPECT_TRUE(*pne_copy == *gw_copy);
            // The copy for the other PNE does not open under this PNE's EUKey either.
            ++checked;
        }
    }
    EXPECT_EQ(checked, 2);
}

bool contains(const Bytes& hay, ByteView needle) {
    return std::search(hay.begin(), hay.end(), needle.begin(), needle.end()) != hay.end();
}

TEST(SimFlows, GatewayStateHoldsNoSkPneAndNoPneEukey) {
    Simulator sim(42);
    GwSpec g = mixed_gw("gw");
    sim.add_gateway(g);
    sim.discover_all();
    sim.run();
    sim.start_pne_setup("gw-pne-1", pb::SETUP_ALL);
    sim.run();
    sim.start_gw_invite("gw");
    sim.run();
    ASSERT_EQ(sim.directory().pns().size(), 2u);
    const Bytes state = sim.gateway("gw").snapshot();
    ASSERT_GT(state.size(), 500u);
    // The snapshot does hold what the PN GW should have (its LocalEUKeys) ...
    int local_keys = 0;
    for (const auto& [k, inv] : sim.directory().pns())
        for (const auto& m : inv.members())
            if (auto lk = sim.gw_local_key(inv.pn_id(), m.pne_id())) {
                EXPECT_TRUE(contains(state, lk->view()));
                ++local_keys;
            }
    EXPECT_EQ(local_keys, 4);
    // ... and nothing it must not have.
    int sks = 0;
    for (const auto& [k, inv] : sim.directory().pns())
        for (const auto& m : inv.members()) {
            auto sk = sim.server_sk(inv.pn_id(), m.pne_id());
            ASSERT_TRUE(sk);
            EXPECT_FALSE(contains(state, sk->view()));
            ++sks;
        }
    EXPECT_EQ(sks, 8);
    for (const auto& p : g.pnes) {
        EXPECT_FALSE(contains(state, sim.server_eukey(p.id).view()));
        EXPECT_FALSE(contains(state, sim.device_eukey(p.id).view()));
    }
}

TEST(SimFlows, DuplicatedAndReorderedMessagesStillEstablish) {
    FaultConfig f;
    f.duplicate = 0.3;
    f.reorder = 0.3;
    f.delay = 0.2;
    f.max_delay = 500;
    int registered = 0;
    for (std::uint64_t seed = 1; seed <= 20; ++seed) {
        Simulator sim(seed, f);
        sim.add_gateway(mixed_gw("gw"));
        sim.discover_all();
        sim.run();
        sim.start_pne_setup("gw-pne-1", pb::SETUP_ALL);
        sim.run();
        const Summary s = sim.summary();
        EXPECT_EQ(s.sk_checked, s.sk_agree);
        EXPECT_EQ(s.protection_violations, 0u);
        registered += static_cast<int>(s.pns_registered);
        // Nothing is lost, so the initiator joins every time.
        EXPECT_TRUE(last_outcome(sim, "gw-pne-1").success) << "seed " << seed;
    }
    EXPECT_EQ(registered, 20);
}

// Random faults of every kind over many seeds: the run always comes to rest, no party is
// left waiting, nobody reports success that the server did not register, keys agree.
TEST(SimFlows, RandomFaultSoakKeepsInvariants) {
    FaultConfig f;
    f.drop = 0.03;
    f.duplicate = 0.05;
    f.delay = 0.1;
    f.reorder = 0.05;
    f.flip = 0.02;
    f.max_delay = 25'000;
    std::size_t successes = 0, failures = 0;
    for (std::uint64_t seed = 1; seed <= 40; ++seed) {
        Simulator sim(seed, f, /*trace=*/false);
        for (int g = 1; g <= 3; ++g) sim.add_gateway(mixed_gw("gw" + std::to_string(g)));
        sim.discover_all();
        sim.run();
        for (int g = 1; g <= 3; ++g) {
            const std::string gw = "gw" + std::to_string(g);
            if ((seed + static_cast<std::uint64_t>(g)) % 2)
                sim.start_pne_setup(gw + "-pne-1", pb::SETUP_ALL);
            else
                sim.start_gw_invite(gw);
        }
        const Millis limit = 30 * 60'000;
        sim.run(limit);
        ASSERT_LT(sim.now(), limit) << "seed " << seed << " did not come to rest";
        EXPECT_EQ(sim.server().active_sessions(), 0u);
        std::set<std::string> registered_members;
        for (const auto& [k, inv] : sim.directory().pns())
            for (const auto& m : inv.members())
                registered_members.insert(inv.pn_id() + "/" + m.pne_id());
        for (int g = 1; g <= 3; ++g) {
            const std::string gw = "gw" + std::to_string(g);
            EXPECT_EQ(sim.gateway(gw).active_sessions(), 0u);
            for (int i = 1; i <= 4; ++i) {
                const std::string id = gw + "-" + pne_name(i);
                EXPECT_FALSE(sim.pne(id).busy()) << id << " seed " << seed;
                for (const auto& o : sim.outcomes(id)) {
                    if (o.operation == "withdraw") {
                        // Refused or lost result: withdrawn, and no longer registered.
                        if (o.success) {
                            EXPECT_FALSE(registered_members.count(o.pn_id + "/" + id)) << id;
                        }
                        continue;
                    }
                    if (o.success) {
                        ++successes;
                        EXPECT_TRUE(registered_members.count(o.pn_id + "/" + id)) << id;
                        auto a = sim.pne_sk(o.pn_id, id), b = sim.server_sk(o.pn_id, id);
                        ASSERT_TRUE(a && b);
                        EXPECT_TRUE(*a == *b);
                    } else {
                        ++failures;
                        EXPECT_NE(o.reason, pb::REASON_NONE);
                    }
                }
            }
        }
        EXPECT_EQ(sim.summary().protection_violations, 0u);
    }
    EXPECT_GT(successes, 100u);
    EXPECT_GT(failures, 0u);
}

}  // namespace
}  // namespace cpns::sim

namespace cpns::sim {
namespace {

TEST(SimFlowsEarly, EveryPneRefusedUpFrontIsToldWhyAtOnce) {
    Simulator sim(51);
    GwSpec g = make_gw("gw", 2, Ui::kYes, Pan::kSecure);
    for (auto& p : g.pnes) p.unknown_to_server = true;
    sim.add_gateway(g);
    sim.discover_all();
    sim.run();
    const Millis start = sim.now();
    sim.start_pne_setup("gw-pne-1", pb::SETUP_ALL);
    sim.run();
    EXPECT_TRUE(sim.directory().pns().empty());
    EXPECT_EQ(last_outcome(sim, "gw").reason, pb::NO_PNE_AUTHENTICATED);
    EXPECT_EQ(last_outcome(sim, "gw-pne-1").reason, pb::UNKNOWN_ENTITY);
    EXPECT_EQ(last_outcome(sim, "gw-pne-2").reason, pb::UNKNOWN_ENTITY);
    EXPECT_LT(sim.now() - start, 1'000) << "answered by a timeout instead of the server's reason";
}

}  // namespace
}  // namespace cpns::sim

namespace cpns::sim {
namespace {

TEST(SimFlowsEarly, PneWhoseTlsFailedIsExcludedWithThatReasonWhenInvited) {
    Simulator sim(52);
    sim.add_gateway(make_gw("gw", 2, Ui::kYes, Pan::kSecure));
    // A third device tried PSK-TLS with a wrong key and never got a link.
    EXPECT_TRUE(sim.gateway("gw").on_tls_failed("gw-pne-9", sim.now()).empty());
    sim.discover_all();
    sim.run();
    sim.start_gw_invite("gw", {"gw-pne-1", "gw-pne-2", "gw-pne-9"});
    sim.run();
    for (const auto& p : last_outcome(sim, "gw").pnes)
        if (p.pne_id == "gw-pne-9") {
            EXPECT_FALSE(p.joined);
            EXPECT_EQ(p.reason, pb::TLS_HANDSHAKE_FAILED);
        }
    EXPECT_EQ(members(sim.directory().pns().begin()->second),
              (std::set<std::string>{"gw-pne-1", "gw-pne-2"}));
}

}  // namespace
}  // namespace cpns::sim

namespace cpns::sim {
namespace {

TEST(DeviceState, GatewayAndPneStateSurviveARestart) {
    Simulator sim(61);
    sim.add_gateway(mixed_gw("gw"));
    sim.discover_all();
    sim.run();
    sim.start_pne_setup("gw-pne-1", pb::SETUP_ALL);
    sim.run();
    ASSERT_EQ(sim.directory().pns().size(), 1u);
    const std::string pn = sim.directory().pns().begin()->second.pn_id();

    // A new PN GW process with the same configuration restores inventory, routing and keys.
    const pb::GwState gst = sim.gateway("gw").export_state();
    pb::GwState reparsed;
    ASSERT_TRUE(reparsed.ParseFromString(gst.SerializeAsString()));
    GatewayConfig gc;
    gc.gw_id = "gw";
    DeterministicRandom rnd(1);
    Gateway restarted(gc, rnd);
    ASSERT_TRUE(restarted.import_state(reparsed));
    EXPECT_EQ(restarted.inventory().at(pn).SerializeAsString(),
              sim.gateway("gw").inventory().at(pn).SerializeAsString());
    EXPECT_EQ(restarted.routing_table(), sim.gateway("gw").routing_table());
    for (const char* p : {"gw-pne-1", "gw-pne-2"}) {  // the PNEs with a LocalEUKey
        auto k = restarted.local_eukey(pn, p);
        ASSERT_TRUE(k);
        EXPECT_TRUE(*k == *sim.pne_local_key(pn, p));
        EXPECT_TRUE(restarted.tls_psk_for(local_eukey_identity(pn, p)));
    }
    // The saved state holds no SK_PNE either.
    const std::string bytes = gst.SerializeAsString();
    for (int i = 1; i <= 4; ++i) {
        auto sk = sim.server_sk(pn, "gw-pne-" + std::to_string(i));
        EXPECT_EQ(bytes.find(to_field(sk->view())), std::string::npos);
    }
    // Another PN GW's state is refused.
    GatewayConfig other;
    other.gw_id = "gw-other";
    Gateway wrong(other, rnd);
    EXPECT_FALSE(wrong.import_state(reparsed));

    // A PNE restores its membership, LocalEUKey and SK_PNE.
    PneConfig pc;
    pc.pne_id = "gw-pne-1";
    Pne pne(pc, rnd);
    ASSERT_TRUE(pne.import_state(sim.pne("gw-pne-1").export_state()));
    ASSERT_EQ(pne.memberships().count(pn), 1u);
    const auto& m = pne.memberships().at(pn);
    EXPECT_EQ(m.gw_id, "gw");
    EXPECT_TRUE(m.sk_pne == *sim.server_sk(pn, "gw-pne-1"));
    EXPECT_TRUE(*m.local_eukey == *sim.gw_local_key(pn, "gw-pne-1"));
    EXPECT_EQ(m.inventory.members_size(), 4);
}

}  // namespace
}  // namespace cpns::sim

namespace cpns::sim {
namespace {

// A PNE that skips PSK-TLS (it believes its PAN is secure) towards a PN GW that requires it:
// the PN GW refuses hash_PNE in clear, and nothing secret is sent to that PNE in clear.
TEST(SimFlowsEarly, StrippedTlsUpgradeNeverContinuesInClear) {
    for (bool ui : {true, false}) {
        SCOPED_TRACE(ui ? "with UI" : "without UI");
        Simulator sim(71);
        sim.set_capture(true);
        GwSpec g = make_gw("gw", 2, Ui::kYes, Pan::kInsecure);
        g.pnes[1].enough_ui = ui;
        g.pnes[1].pan_secure = true;         // the PNE's belief
        g.pnes[1].pan_secure_at_gw = false;  // the PN GW's configuration
        sim.add_gateway(g);
        sim.discover_all();
        sim.run();
        sim.start_pne_setup("gw-pne-1", pb::SETUP_ALL);
        sim.run();
        EXPECT_TRUE(last_outcome(sim, "gw-pne-1").success);
        const auto& stripped = last_outcome(sim, "gw-pne-2");
        EXPECT_FALSE(stripped.success);
        EXPECT_EQ(stripped.reason, pb::TLS_REQUIRED);
        for (const auto& p : last_outcome(sim, "gw").pnes)
            if (p.pne_id == "gw-pne-2") {
                EXPECT_FALSE(p.joined);
                EXPECT_EQ(p.reason, pb::TLS_REQUIRED);
            }
        // Nothing secret ever went to it: no hash_server_PNE, no PN Inventory.
        int results = 0;
        for (const auto& c : sim.captured()) {
            if (c.to != "gw-pne-2") continue;
            auto d = decode_frame(c.frame);
            auto* env = std::get_if<pb::Envelope>(&d);
            ASSERT_TRUE(env);
            const pb::PnResult* r = env->has_establishment_notify()
                                        ? &env->establishment_notify().result()
                                    : env->has_setup_response() ? &env->setup_response().result()
                                                                : nullptr;
            if (!r) continue;
            ++results;
            EXPECT_FALSE(r->success());
            EXPECT_TRUE(r->hash_server_pne().empty());
            EXPECT_EQ(r->inventory().members_size(), 0);
            EXPECT_EQ(r->reason(), pb::TLS_REQUIRED);
        }
        EXPECT_EQ(results, 1);
        EXPECT_FALSE(sim.pne_sk(sim.directory().pns().begin()->second.pn_id(), "gw-pne-2"));
        EXPECT_EQ(sim.summary().protection_violations, 0u);
    }
}

// Runs both flows on three PN GWs (the second has a PNE with a wrong EUKey); with `waves`,
// each PN GW is retired as soon as its flows end, as cpns-sim --wave 1 does.
Summary run_three(Simulator& sim, bool waves) {
    std::vector<GwSpec> gws{mixed_gw("gw-a"), mixed_gw("gw-b"), mixed_gw("gw-c")};
    gws[1].pnes[2].wrong_eukey = true;  // gw-b-pne-3
    auto flows = [&](const std::vector<std::string>& ids) {
        sim.discover_all();
        sim.run();
        for (const auto& id : ids) sim.start_pne_setup(id + "-pne-1", pb::SETUP_ALL);
        sim.run();
        for (const auto& id : ids) sim.start_gw_invite(id);
        sim.run();
    };
    if (waves) {
        for (const auto& g : gws) {
            sim.add_gateway(g);
            flows({g.id});
            if (g.id != "gw-c") sim.retire({g.id});
        }
    } else {
        for (const auto& g : gws) sim.add_gateway(g);
        flows({"gw-a", "gw-b", "gw-c"});
    }
    return sim.summary();
}

TEST(SimFlows, RetiredWavesAreCountedAndCheckedThenFreed) {
    Simulator at_once(21);
    const Summary a = run_three(at_once, false);
    Simulator in_waves(21);
    const Summary w = run_three(in_waves, true);

    // Every figure and every invariant check of the run at once, from the counts alone.
    EXPECT_EQ(a.pns_registered, 6u);
    EXPECT_EQ(a.pnes_authenticated, 22u);
    EXPECT_EQ(a.sk_checked, 22u);
    EXPECT_EQ(a.sk_agree, 22u);
    EXPECT_EQ(a.local_key_checked, 12u);
    EXPECT_EQ(a.local_key_agree, 12u);
    EXPECT_EQ(w.pns_registered, a.pns_registered);
    EXPECT_EQ(w.pnes_authenticated, a.pnes_authenticated);
    // The PN ids are random: compare which PNE was excluded and why.
    auto excluded = [](const Summary& s) {
        std::multiset<std::string> out;
        for (const auto& [pn_pne, why] : s.excluded)
            out.insert(pn_pne.substr(pn_pne.find('/') + 1) + ": " + why);
        return out;
    };
    EXPECT_EQ(excluded(w), (std::multiset<std::string>{"gw-b-pne-3: authentication failed",
                                                       "gw-b-pne-3: authentication failed"}));
    EXPECT_EQ(excluded(w), excluded(a));
    EXPECT_EQ(w.sk_checked, a.sk_checked);
    EXPECT_EQ(w.sk_agree, a.sk_agree);
    EXPECT_EQ(w.local_key_checked, a.local_key_checked);
    EXPECT_EQ(w.local_key_agree, a.local_key_agree);
    EXPECT_EQ(w.tls_ok, a.tls_ok);
    EXPECT_EQ(w.messages, a.messages);
    EXPECT_EQ(w.bytes, a.bytes);
    EXPECT_EQ(w.protection_violations, 0u);
    EXPECT_EQ(a.gateways_retired, 0u);
    EXPECT_EQ(w.gateways_retired, 2u);

    // Nothing of a retired PN GW or its PNEs is left: roles, keys, records, registrations.
    EXPECT_THROW(in_waves.pne("gw-a-pne-1"), std::out_of_range);
    EXPECT_THROW(in_waves.gateway("gw-b"), std::out_of_range);
    EXPECT_FALSE(in_waves.directory().find("gw-a"));
    EXPECT_FALSE(in_waves.directory().find("gw-b-pne-2"));
    ASSERT_EQ(in_waves.directory().pns().size(), 2u);
    for (const auto& [key, inv] : in_waves.directory().pns()) EXPECT_EQ(inv.gw_id(), "gw-c");
    for (const auto& t : in_waves.tls_records()) EXPECT_EQ(t.gw_id, "gw-c");
    for (const auto& o : in_waves.outcomes("cpns-server")) EXPECT_EQ(o.gw_id, "gw-c");
    for (const auto& [key, inv] : at_once.directory().pns())
        if (inv.gw_id() == "gw-a") {
            EXPECT_TRUE(at_once.server_sk(inv.pn_id(), "gw-a-pne-1"));
            EXPECT_FALSE(in_waves.server_sk(inv.pn_id(), "gw-a-pne-1"));
        }
    // The live wave is still whole.
    EXPECT_TRUE(in_waves.directory().find("gw-c-pne-4"));
    EXPECT_EQ(in_waves.pne("gw-c-pne-4").memberships().size(), 2u);

    // A late frame for a retired PNE is lost with a note, not delivered to freed memory.
    in_waves.inject("gw-a", "gw-a-pne-1", Bytes{0x01, 0x02});
    in_waves.run();
    EXPECT_EQ(in_waves.summary().decode_errors, 0u);
    const auto& trace = in_waves.trace();
    EXPECT_TRUE(std::any_of(trace.begin(), trace.end(), [](const TraceEntry& t) {
        return t.to == "gw-a-pne-1" && t.note == "lost: the entity was retired";
    }));
    EXPECT_THROW(in_waves.retire({"gw-a"}), std::out_of_range);
    EXPECT_THROW(in_waves.retire({"gw-c-pne-1"}), std::invalid_argument);
}

}  // namespace
}  // namespace cpns::sim
