// The CPNS Server role on its own: the test plays the PN GW (and the store), computes real
// hash_PNE values with the key schedule, puts the server in a state with real messages, feeds
// one message, callback or timer and checks the exact effects and the new state.
#include <gtest/gtest.h>

#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "core/server.hpp"

namespace cpns {
namespace {

using Phase = Server::Phase;
using PneAuth = Server::PneAuth;

const std::string kGw = "gw-1";
const std::string kPn = "pn-00000000000a";
const std::string kServerId = "cpns-server";
constexpr Millis kT0 = 1'000;
constexpr std::uint64_t kWallClock = 1'700'000'000'000ULL;

// One line per effect, so a test can compare everything the server returned, in order.
std::string describe(const ServerEffect& effect) {
    return std::visit(
        Overloaded{
            [](const SendEffect& s) {
                return "send " + s.to + " " + std::string(message_name(s.msg)) +
                       (s.protection == Protection::kTls ? " tls" : " clear");
            },
            [](const PersistPnEffect& p) {
                return "persist " + p.gw_id + " " + p.inventory.pn_id();
            },
            [](const SessionKeyEffect& k) { return "sk " + k.pne_id; },
            [](const OutcomeEffect& o) {
                return "outcome " +
                       (o.success ? std::string("registered") : std::string(reason_name(o.reason)));
            },
            [](const TransitionEffect& t) {
                return "T " + (t.subject.empty() ? std::string("pn") : t.subject) + " " + t.from +
                       ">" + t.to;
            },
            [](const ChangePnEffect& c) {
                return "change " + std::string(to_string(c.op)) + " " + c.pn_id + " " + c.pne_id;
            },
        },
        effect);
}

std::vector<std::string> describe(const ServerEffects& effects) {
    std::vector<std::string> out;
    for (const auto& e : effects) out.push_back(describe(e));
    return out;
}

template <class T>
std::vector<T> all(const ServerEffects& effects) {
    std::vector<T> out;
    for (const auto& e : effects)
        if (const auto* t = std::get_if<T>(&e)) out.push_back(*t);
    return out;
}

using Lines = std::vector<std::string>;

struct TestPne {
    SecretKey eukey;
    Bytes rand_pne;
    bool ui = false;
    pb::PneRoleInFlow role = pb::ROLE_INVITEE;
};

class ServerRole : public testing::Test {
  protected:
    ServerRole() : server_(config(), dir_, rng_) {
        gw_eukey_ = keys_.key();
        dir_.add(kGw, EntityRecord{EntityKind::kGw, gw_eukey_, EntityStatus::kActive});
    }
    static ServerConfig config() {
        ServerConfig c;
        c.server_id = kServerId;
        c.wall_clock_ms = [] { return kWallClock; };
        return c;
    }

    // A PNE of the request, known to the server unless `known` is false.
    void add_pne(const std::string& id, bool ui, pb::PneRoleInFlow role = pb::ROLE_INVITEE,
                 bool known = true) {
        TestPne p{keys_.key(), keys_.bytes(kRandSize), ui, role};
        if (known) dir_.add(id, EntityRecord{EntityKind::kPne, p.eukey, EntityStatus::kActive});
        order_.push_back(id);
        if (role == pb::ROLE_INVITEE && flow_ == pb::FLOW_PNE_INITIATED) invited_.push_back(id);
        pnes_[id] = std::move(p);
    }
    // 5.2.1.1: pne-a asked for a PN without UI (invite list [pne-b]); pne-b has UI.
    void pne_initiated_pair() {
        flow_ = pb::FLOW_PNE_INITIATED;
        add_pne("pne-a", false, pb::ROLE_INITIATOR);
        add_pne("pne-b", true);
    }
    // 5.2.1.2: two invitees, pne-a with UI, pne-b without.
    void gw_initiated_pair() {
        flow_ = pb::FLOW_GW_INITIATED;
        add_pne("pne-a", true);
        add_pne("pne-b", false);
    }

    // Step 4 (5 of 5.2.1.2), as the PN GW would send it.
    pb::Envelope registration(const std::string& gw_id = kGw) const {
        pb::Envelope env;
        env.set_version(kProtocolVersion);
        env.set_sender_id(gw_id);
        auto* r = env.mutable_registration_request();
        r->set_pn_id(kPn);
        r->mutable_gw()->set_gw_id(gw_id);
        r->mutable_gw()->mutable_capabilities()->set_device_type("home-hub");
        r->set_flow(flow_);
        if (flow_ == pb::FLOW_PNE_INITIATED) {
            r->set_setup_type(pb::SETUP_INVITE_LIST);
            for (const auto& id : invited_) r->add_invited_pne_ids(id);
        }
        for (const auto& id : order_) {
            const TestPne& p = pnes_.at(id);
            auto* info = r->add_pnes();
            info->set_role(p.role);
            *info->mutable_join() = join_of(id);
        }
        return env;
    }
    // What each PNE sent (the PN GW forwards it unchanged).
    pb::PneJoin join_of(const std::string& id) const {
        const TestPne& p = pnes_.at(id);
        pb::PneJoin join;
        join.set_pne_id(id);
        join.set_rand_pne(to_field(p.rand_pne));
        join.set_local_eukey_requested(p.ui);
        join.mutable_capabilities()->set_enough_ui(p.ui);
        return join;
    }

    ServerEffects send(const pb::Envelope& env, Millis now = kT0, const std::string& from = kGw) {
        return server_.on_message(from, env, now);
    }
    // Sends the registration; keeps rand_server from the Authentication Request.
    ServerEffects start(Millis now = kT0) {
        ServerEffects out = send(registration(), now);
        for (const auto& s : all<SendEffect>(out))
            if (s.msg.has_auth_request()) {
                const ByteView r = bytes_of(s.msg.auth_request().rand_server());
                rand_server_.assign(r.begin(), r.end());
            }
        return out;
    }

    // What the PNE binds (Pne::context): its own view of the setup it sent or received.
    PneContext context(const std::string& id) const {
        const TestPne& p = pnes_.at(id);
        PneContext ctx;
        ctx.pne_id = id;
        ctx.gw_id = kGw;
        ctx.pn_id = kPn;
        ctx.flow = to_flow(flow_);
        ctx.role = to_role(p.role);
        if (p.role == pb::ROLE_INITIATOR) {
            ctx.setup = SetupKind::kInviteList;
            ctx.invited = invited_;
        }
        ctx.local_key_requested = p.ui;
        ctx.join_digest = join_digest(join_of(id));
        return ctx;
    }
    SecretKey sk_pne(const std::string& id, const PneContext& ctx) const {
        const TestPne& p = pnes_.at(id);
        return derive_sk_pne(p.eukey, p.rand_pne, rand_server_, ctx);
    }
    Hash hash_pne(const std::string& id, const PneContext& ctx) const {
        const TestPne& p = pnes_.at(id);
        return derive_hash_pne(p.eukey, p.rand_pne, rand_server_, sk_pne(id, ctx), ctx);
    }
    // Over the inventory the server registered.
    Hash hash_server(const std::string& id, const pb::PnInventory& inventory) const {
        const TestPne& p = pnes_.at(id);
        PneContext ctx = context(id);
        ctx.inventory_digest = inventory_digest(inventory);
        return derive_hash_server_pne(p.eukey, p.rand_pne, rand_server_, sk_pne(id, ctx),
                                      hash_pne(id, ctx), ctx);
    }

    static pb::PneAuthResult ok(const std::string& id, const Hash& hash) {
        pb::PneAuthResult r;
        r.set_pne_id(id);
        r.set_hash_pne(to_field(hash));
        return r;
    }
    pb::PneAuthResult ok(const std::string& id) const { return ok(id, hash_pne(id, context(id))); }
    static pb::PneAuthResult failed(const std::string& id, pb::FailureReason reason) {
        pb::PneAuthResult r;
        r.set_pne_id(id);
        r.set_failure(reason);
        return r;
    }
    // Step 10 (11 of 5.2.1.2).
    static pb::Envelope auth_response(const std::vector<pb::PneAuthResult>& results,
                                      const std::string& pn = kPn) {
        pb::Envelope env;
        env.set_version(kProtocolVersion);
        env.set_sender_id(kGw);
        env.mutable_auth_response()->set_pn_id(pn);
        for (const auto& r : results) *env.mutable_auth_response()->add_results() = r;
        return env;
    }
    pb::Envelope all_good() const {
        std::vector<pb::PneAuthResult> results;
        for (const auto& id : order_) results.push_back(ok(id));
        return auth_response(results);
    }
    static pb::Envelope error_report(pb::FailureReason reason) {
        pb::Envelope env;
        env.mutable_error()->set_pn_id(kPn);
        env.mutable_error()->set_reason(reason);
        env.mutable_error()->set_detail("the PN GW gave up");
        return env;
    }

    // kWaitAuthResponse, then kWaitPersist (every hash verified) at kT0 + 100.
    ServerEffects to_wait_persist() {
        start();
        return send(all_good(), kT0 + 100);
    }
    // A finished establishment (registered) at kT0 + 200.
    ServerEffects registered_run() {
        to_wait_persist();
        return server_.on_persisted(kGw, kPn, pb::REASON_NONE, kT0 + 200);
    }

    // One successful establishment: every TransitionEffect of it, in order.
    std::vector<TransitionEffect> full_run() {
        std::vector<TransitionEffect> ts;
        const auto add = [&ts](const ServerEffects& out) {
            for (const auto& t : all<TransitionEffect>(out)) ts.push_back(t);
        };
        add(start());
        add(send(all_good(), kT0 + 100));
        const ServerEffects last = server_.on_persisted(kGw, kPn, pb::REASON_NONE, kT0 + 200);
        add(last);
        const OutcomeEffect* o = find_outcome(last);
        EXPECT_TRUE(o && o->success);
        return ts;
    }

    std::optional<Phase> phase() const { return server_.phase(kGw, kPn); }
    std::optional<PneAuth> auth(const std::string& id) const {
        return server_.pne_auth(kGw, kPn, id);
    }

    // The one reply of a refused message: an ErrorReport to the PN GW over its TLS link.
    static void expect_error(const ServerEffects& out, pb::FailureReason reason,
                             const std::string& pn_id, const std::string& to = kGw) {
        ASSERT_EQ(describe(out), Lines{"send " + to + " ErrorReport tls"});
        const auto& e = std::get<SendEffect>(out[0]).msg;
        EXPECT_EQ(e.sender_id(), kServerId);
        EXPECT_EQ(e.error().reason(), reason);
        EXPECT_EQ(e.error().pn_id(), pn_id);
        EXPECT_FALSE(e.error().detail().empty());
    }
    static const pb::PnRegistrationResponse& response(const ServerEffects& out) {
        for (const auto& e : out)
            if (const auto* s = std::get_if<SendEffect>(&e))
                if (s->msg.has_registration_response()) return s->msg.registration_response();
        static const pb::PnRegistrationResponse none;
        ADD_FAILURE() << "no PnRegistrationResponse";
        return none;
    }

    DeterministicRandom keys_{42};  // the test's own keys and rand_PNE values
    DeterministicRandom rng_{7};    // the server's
    MemoryDirectory dir_;
    Server server_;
    SecretKey gw_eukey_;
    pb::Flow flow_ = pb::FLOW_PNE_INITIATED;
    std::vector<std::string> order_;
    std::map<std::string, TestPne> pnes_;
    std::vector<std::string> invited_;  // the initiator's invitation list (5.2.1.1)
    Bytes rand_server_;
};

// --- PnRegistrationRequest in kNone (accepted) --------------------------------------------

TEST_F(ServerRole, RegistrationInNoneAsksEveryPneAndWrapsLocalEuKeyForPneAndGw) {
    pne_initiated_pair();
    const ServerEffects out = start();
    EXPECT_EQ(describe(out),
              (Lines{"T pn none>wait_auth_response", "T pne-a none>pending", "T pne-b none>pending",
                     "send gw-1 AuthenticationRequest tls"}));
    const auto& a = std::get<SendEffect>(out[3]).msg.auth_request();
    EXPECT_EQ(a.pn_id(), kPn);
    EXPECT_EQ(a.rand_server().size(), kRandSize);
    EXPECT_EQ(std::vector<std::string>(a.pne_ids().begin(), a.pne_ids().end()),
              (Lines{"pne-a", "pne-b"}));
    EXPECT_EQ(a.excluded_size(), 0);
    ASSERT_EQ(a.local_eukeys_size(), 1);  // pne-b only: it has UI
    const auto& k = a.local_eukeys(0);
    EXPECT_EQ(k.pne_id(), "pne-b");
    const Bytes& rand_pne = pnes_["pne-b"].rand_pne;
    auto for_pne = unwrap_local_eukey(pnes_["pne-b"].eukey, Recipient::kPne, kPn, "pne-b", kGw,
                                      rand_server_, rand_pne, bytes_of(k.for_pne()));
    auto for_gw = unwrap_local_eukey(gw_eukey_, Recipient::kGw, kPn, "pne-b", kGw, rand_server_,
                                     rand_pne, bytes_of(k.for_gw()));
    ASSERT_TRUE(for_pne && for_gw);
    EXPECT_TRUE(*for_pne == *for_gw);
    EXPECT_EQ(phase(), Phase::kWaitAuthResponse);
    EXPECT_EQ(auth("pne-a"), PneAuth::kPending);
    EXPECT_EQ(server_.next_deadline(), kT0 + kAuthResponseTimeout);
}

TEST_F(ServerRole, GwInitiatedRegistrationInNoneAsksEveryInvitee) {
    gw_initiated_pair();
    const ServerEffects out = start();
    EXPECT_EQ(describe(out),
              (Lines{"T pn none>wait_auth_response", "T pne-a none>pending", "T pne-b none>pending",
                     "send gw-1 AuthenticationRequest tls"}));
    const auto& a = std::get<SendEffect>(out[3]).msg.auth_request();
    EXPECT_EQ(a.pne_ids_size(), 2);
    ASSERT_EQ(a.local_eukeys_size(), 1);
    EXPECT_EQ(a.local_eukeys(0).pne_id(), "pne-a");
    EXPECT_EQ(phase(), Phase::kWaitAuthResponse);
}

TEST_F(ServerRole, RegistrationInNoneExcludesUnknownAndRevokedPnesUpFront) {
    pne_initiated_pair();
    add_pne("pne-c", false, pb::ROLE_INVITEE, /*known=*/false);
    dir_.set_status("pne-b", EntityStatus::kRevoked);
    const ServerEffects out = start();
    EXPECT_EQ(describe(out),
              (Lines{"T pn none>wait_auth_response", "T pne-a none>pending", "T pne-b none>refused",
                     "T pne-c none>refused", "send gw-1 AuthenticationRequest tls"}));
    const auto& a = std::get<SendEffect>(out[4]).msg.auth_request();
    EXPECT_EQ(std::vector<std::string>(a.pne_ids().begin(), a.pne_ids().end()), Lines{"pne-a"});
    ASSERT_EQ(a.excluded_size(), 2);
    EXPECT_EQ(a.excluded(0).pne_id(), "pne-b");
    EXPECT_EQ(a.excluded(0).reason(), pb::REVOKED);
    EXPECT_EQ(a.excluded(1).pne_id(), "pne-c");
    EXPECT_EQ(a.excluded(1).reason(), pb::UNKNOWN_ENTITY);
    EXPECT_EQ(a.local_eukeys_size(), 0);
    EXPECT_EQ(auth("pne-b"), PneAuth::kRefused);
    EXPECT_EQ(auth("pne-c"), PneAuth::kRefused);
    EXPECT_EQ(phase(), Phase::kWaitAuthResponse);
}

TEST_F(ServerRole, RegistrationInNoneWithNoKnownPneEndsAtOnceNotRegistered) {
    flow_ = pb::FLOW_GW_INITIATED;
    add_pne("pne-a", true, pb::ROLE_INVITEE, /*known=*/false);
    const ServerEffects out = start();
    EXPECT_EQ(describe(out),
              (Lines{"T pn none>wait_auth_response", "T pne-a none>refused",
                     "send gw-1 PnRegistrationResponse tls", "T pn wait_auth_response>done",
                     "outcome no pne authenticated"}));
    const auto& r = response(out);
    EXPECT_FALSE(r.registered());
    EXPECT_EQ(r.reason(), pb::NO_PNE_AUTHENTICATED);
    ASSERT_EQ(r.results_size(), 1);
    EXPECT_FALSE(r.results(0).authenticated());
    EXPECT_EQ(r.results(0).reason(), pb::UNKNOWN_ENTITY);
    EXPECT_EQ(phase(), std::nullopt);
    EXPECT_EQ(server_.next_deadline(), kNever);
}

// --- PnRegistrationRequest in kNone that the server must refuse (no session) --------------

TEST_F(ServerRole, RegistrationNamingAnotherGwThanTheLinkIsRefused) {
    pne_initiated_pair();
    expect_error(send(registration("gw-2")), pb::GATEWAY_AUTHENTICATION_FAILED, kPn);
    EXPECT_EQ(server_.active_sessions(), 0u);
    EXPECT_EQ(server_.counters()[pb::GATEWAY_AUTHENTICATION_FAILED], 1u);
}

TEST_F(ServerRole, RegistrationFromUnknownOrRevokedGwIsRefused) {
    pne_initiated_pair();
    expect_error(send(registration("gw-9"), kT0, "gw-9"), pb::UNKNOWN_ENTITY, kPn, "gw-9");
    dir_.set_status(kGw, EntityStatus::kDisabled);
    expect_error(send(registration()), pb::REVOKED, kPn);
    EXPECT_EQ(server_.active_sessions(), 0u);
}

TEST_F(ServerRole, RegistrationOfAPnAlreadyRegisteredIsRefusedDuplicatePn) {
    pne_initiated_pair();
    pb::PnInventory inv;
    inv.set_pn_id(kPn);
    ASSERT_TRUE(dir_.register_pn(kGw, inv));
    expect_error(send(registration()), pb::DUPLICATE_PN, kPn);
    EXPECT_EQ(phase(), std::nullopt);
}

TEST_F(ServerRole, MalformedRegistrationIsRefused) {
    pne_initiated_pair();
    std::vector<pb::Envelope> bad(4, registration());
    bad[0].mutable_registration_request()->clear_pnes();  // no PNE
    const pb::PneInfo twice = bad[1].registration_request().pnes(1);
    *bad[1].mutable_registration_request()->add_pnes() = twice;
    bad[2].mutable_registration_request()->mutable_pnes(0)->set_role(pb::ROLE_INVITEE);
    bad[3].mutable_registration_request()->set_flow(pb::FLOW_GW_INITIATED);  // with an initiator
    for (const auto& env : bad) expect_error(send(env), pb::MALFORMED_MESSAGE, kPn);
    EXPECT_EQ(server_.counters()[pb::MALFORMED_MESSAGE], 4u);
    EXPECT_EQ(server_.active_sessions(), 0u);
}

// --- AuthenticationResponse in kWaitAuthResponse (accepted) -------------------------------

TEST_F(ServerRole, AuthResponseInWaitAuthResponseVerifiesHashesAndAsksToPersist) {
    pne_initiated_pair();
    const ServerEffects out = to_wait_persist();
    EXPECT_EQ(describe(out),
              (Lines{"T pne-a pending>authenticated", "T pne-b pending>authenticated",
                     "T pn wait_auth_response>wait_persist", "persist gw-1 " + kPn}));
    const pb::PnInventory& inv = std::get<PersistPnEffect>(out[3]).inventory;
    EXPECT_EQ(inv.gw_id(), kGw);
    EXPECT_EQ(inv.gw_capabilities().device_type(), "home-hub");
    EXPECT_EQ(inv.registered_at_ms(), kWallClock);
    ASSERT_EQ(inv.members_size(), 2);
    EXPECT_EQ(inv.members(0).pne_id(), "pne-a");
    EXPECT_FALSE(inv.members(0).local_eukey_assigned());
    EXPECT_TRUE(inv.members(1).local_eukey_assigned());
    EXPECT_EQ(phase(), Phase::kWaitPersist);
    EXPECT_EQ(auth("pne-b"), PneAuth::kAuthenticated);
    EXPECT_EQ(server_.next_deadline(), kT0 + 100 + kPersistTimeout);
}

// Initiator authenticity: a PNE-initiated PN whose initiator did not authenticate in this run
// is not registered, whoever else did.
TEST_F(ServerRole, AuthResponseWithInitiatorHashOverAlteredInviteListRegistersNothing) {
    pne_initiated_pair();
    start();
    PneContext altered = context("pne-a");
    altered.invited = {"pne-z"};  // the list the PN GW forwarded is not the one pne-a sent
    const ServerEffects out =
        send(auth_response({ok("pne-a", hash_pne("pne-a", altered)), ok("pne-b")}));
    EXPECT_EQ(describe(out),
              (Lines{"T pne-a pending>failed", "T pne-b pending>authenticated",
                     "send gw-1 PnRegistrationResponse tls", "T pn wait_auth_response>done",
                     "outcome initiator not authenticated"}));
    EXPECT_EQ(std::get<TransitionEffect>(out[0]).reason, "authentication failed");
    EXPECT_FALSE(response(out).registered());
    EXPECT_EQ(response(out).reason(), pb::INITIATOR_NOT_AUTHENTICATED);
    EXPECT_EQ(server_.counters()[pb::AUTHENTICATION_FAILED], 1u);
    EXPECT_EQ(server_.counters()[pb::INITIATOR_NOT_AUTHENTICATED], 1u);
}

// An initiator the server does not know (or has revoked) ends the run before anyone is asked.
TEST_F(ServerRole, RegistrationWithAnUnknownInitiatorRegistersNothing) {
    flow_ = pb::FLOW_PNE_INITIATED;
    add_pne("pne-a", false, pb::ROLE_INITIATOR, /*known=*/false);
    add_pne("pne-b", true);
    const ServerEffects out = start();
    EXPECT_EQ(describe(out),
              (Lines{"T pn none>wait_auth_response", "T pne-a none>refused", "T pne-b none>pending",
                     "send gw-1 PnRegistrationResponse tls", "T pn wait_auth_response>done",
                     "outcome initiator not authenticated"}));
    EXPECT_EQ(phase(), std::nullopt);
}

// Setup fidelity: a registration whose members exceed what the initiator asked for is refused.
TEST_F(ServerRole, RegistrationBeyondTheSetupTypeIsRefused) {
    pne_initiated_pair();
    invited_.clear();  // pne-b joins, but pne-a's list does not name it
    invited_.push_back("pne-z");
    expect_error(send(registration()), pb::SETUP_VIOLATION, kPn);
    EXPECT_EQ(phase(), std::nullopt);
}

TEST_F(ServerRole, AuthResponseForPneRevokedMeanwhileFailsItWithRevoked) {
    pne_initiated_pair();
    start();
    dir_.set_status("pne-b", EntityStatus::kRevoked);
    const ServerEffects out = send(all_good());
    EXPECT_EQ(describe(out),
              (Lines{"T pne-a pending>authenticated", "T pne-b pending>failed",
                     "T pn wait_auth_response>wait_persist", "persist gw-1 " + kPn}));
    EXPECT_EQ(std::get<TransitionEffect>(out[1]).reason, "revoked");
    EXPECT_EQ(phase(), Phase::kWaitPersist);
}

TEST_F(ServerRole, AuthResponseWithReportedFailureAndMissingPneEndsNotRegistered) {
    pne_initiated_pair();
    start();
    const ServerEffects out = send(auth_response({failed("pne-a", pb::TLS_HANDSHAKE_FAILED)}));
    EXPECT_EQ(describe(out),
              (Lines{"T pne-a pending>failed", "T pne-b pending>failed",
                     "send gw-1 PnRegistrationResponse tls", "T pn wait_auth_response>done",
                     "outcome no pne authenticated"}));
    const auto& r = response(out);
    EXPECT_FALSE(r.registered());
    EXPECT_EQ(r.reason(), pb::NO_PNE_AUTHENTICATED);
    ASSERT_EQ(r.results_size(), 2);
    EXPECT_EQ(r.results(0).reason(), pb::TLS_HANDSHAKE_FAILED);
    EXPECT_EQ(r.results(1).reason(), pb::TIMEOUT);  // no result for pne-b
    const OutcomeEffect& o = std::get<OutcomeEffect>(out[4]);
    EXPECT_EQ(o.gw_id, kGw);
    ASSERT_EQ(o.pnes.size(), 2u);
    EXPECT_FALSE(o.pnes[1].joined);
    EXPECT_EQ(o.pnes[1].reason, pb::TIMEOUT);
    EXPECT_EQ(phase(), std::nullopt);
}

// --- on_persisted -------------------------------------------------------------------------

TEST_F(ServerRole, PersistedInWaitPersistAnswersRegisteredWithHashServerAndSessionKeys) {
    pne_initiated_pair();
    const ServerEffects out = registered_run();
    EXPECT_EQ(describe(out), (Lines{"sk pne-a", "sk pne-b", "send gw-1 PnRegistrationResponse tls",
                                    "T pn wait_persist>done", "outcome registered"}));
    for (const auto& k : all<SessionKeyEffect>(out))
        EXPECT_TRUE(k.sk == sk_pne(k.pne_id, context(k.pne_id))) << k.pne_id;
    const auto& r = response(out);
    EXPECT_TRUE(r.registered());
    EXPECT_EQ(r.inventory().members_size(), 2);
    ASSERT_EQ(r.results_size(), 2);
    for (const auto& res : r.results()) {
        EXPECT_TRUE(res.authenticated());
        EXPECT_EQ(res.hash_server_pne(), to_field(hash_server(res.pne_id(), r.inventory())));
    }
    const OutcomeEffect& o = std::get<OutcomeEffect>(out[4]);
    EXPECT_EQ(o.inventory.members_size(), 2);
    EXPECT_TRUE(o.pnes[0].joined && o.pnes[1].joined);
    EXPECT_EQ(server_.counters().established, 1u);
    EXPECT_EQ(phase(), std::nullopt);
    EXPECT_EQ(server_.next_deadline(), kNever);
}

// --- EUKey rotation -----------------------------------------------------------------------

// `id` was rotated at the server: it holds a fresh EUKey, and the PNE's own (the test's) key
// becomes its previous one, valid until `expires_at_ms` (wall clock).
void rotate_at_server(MemoryDirectory& dir, const std::string& id, EntityKind kind,
                      const SecretKey& held_by_device, std::int64_t expires_at_ms) {
    DeterministicRandom fresh{99};
    dir.add(id, EntityRecord{kind, fresh.key(), EntityStatus::kActive,
                             PreviousEuKey{held_by_device, expires_at_ms}});
}

TEST_F(ServerRole, PneOnItsPreviousEukeyWithinTheGraceIsAuthenticatedUnderIt) {
    pne_initiated_pair();
    const auto in_grace = static_cast<std::int64_t>(kWallClock) + 1;
    rotate_at_server(dir_, "pne-b", EntityKind::kPne, pnes_["pne-b"].eukey, in_grace);

    // Its LocalEUKey: the first copy is under the new EUKey, which it does not hold; the
    // second, under the previous one, opens, and is the PN GW's LocalEUKey.
    const ServerEffects first = start();
    const auto& k = std::get<SendEffect>(first.back()).msg.auth_request().local_eukeys(0);
    ASSERT_EQ(k.pne_id(), "pne-b");
    const Bytes& rand_pne = pnes_["pne-b"].rand_pne;
    EXPECT_FALSE(unwrap_local_eukey(pnes_["pne-b"].eukey, Recipient::kPne, kPn, "pne-b", kGw,
                                    rand_server_, rand_pne, bytes_of(k.for_pne())));
    auto for_pne = unwrap_local_eukey(pnes_["pne-b"].eukey, Recipient::kPne, kPn, "pne-b", kGw,
                                      rand_server_, rand_pne, bytes_of(k.for_pne_previous()));
    auto for_gw = unwrap_local_eukey(gw_eukey_, Recipient::kGw, kPn, "pne-b", kGw, rand_server_,
                                     rand_pne, bytes_of(k.for_gw()));
    ASSERT_TRUE(for_pne && for_gw);
    EXPECT_TRUE(*for_pne == *for_gw);
    EXPECT_TRUE(k.for_gw_previous().empty());  // the PN GW was not rotated

    // hash_PNE under the previous EUKey verifies; SK_PNE and hash_server_PNE are under it.
    send(all_good(), kT0 + 100);
    EXPECT_EQ(auth("pne-b"), PneAuth::kAuthenticated);
    const ServerEffects out = server_.on_persisted(kGw, kPn, pb::REASON_NONE, kT0 + 200);
    const auto& r = response(out);
    ASSERT_TRUE(r.registered());
    for (const auto& res : r.results()) {
        EXPECT_TRUE(res.authenticated()) << res.pne_id();
        EXPECT_EQ(res.hash_server_pne(), to_field(hash_server(res.pne_id(), r.inventory())));
    }
    for (const auto& sk : all<SessionKeyEffect>(out))
        EXPECT_TRUE(sk.sk == sk_pne(sk.pne_id, context(sk.pne_id))) << sk.pne_id;
}

TEST_F(ServerRole, PneOnItsPreviousEukeyAfterTheGraceFailsWithKeyExpired) {
    pne_initiated_pair();
    add_pne("pne-c", false);
    const auto expired = static_cast<std::int64_t>(kWallClock);  // the grace ends now
    rotate_at_server(dir_, "pne-b", EntityKind::kPne, pnes_["pne-b"].eukey, expired);
    // pne-c was rotated too, but its device holds neither key: a wrong key stays a wrong key.
    rotate_at_server(dir_, "pne-c", EntityKind::kPne, keys_.key(), expired + 1'000'000);

    const ServerEffects first = start();
    const auto& k = std::get<SendEffect>(first.back()).msg.auth_request().local_eukeys(0);
    // Under the expired EUKey: no LocalEUKey, an expiry notice (32 zero octets) instead.
    auto notice =
        unwrap_local_eukey(pnes_["pne-b"].eukey, Recipient::kPne, kPn, "pne-b", kGw, rand_server_,
                           pnes_["pne-b"].rand_pne, bytes_of(k.for_pne_previous()));
    ASSERT_TRUE(notice);
    EXPECT_TRUE(notice->is_zero());
    const ServerEffects out = send(all_good(), kT0 + 100);
    EXPECT_EQ(auth("pne-a"), PneAuth::kAuthenticated);
    EXPECT_EQ(auth("pne-b"), PneAuth::kFailed);
    EXPECT_EQ(auth("pne-c"), PneAuth::kFailed);
    EXPECT_EQ(server_.counters().by_reason[pb::KEY_EXPIRED], 1u);
    EXPECT_EQ(server_.counters().by_reason[pb::AUTHENTICATION_FAILED], 1u);
    const ServerEffects done = server_.on_persisted(kGw, kPn, pb::REASON_NONE, kT0 + 200);
    const auto& r = response(done);
    ASSERT_TRUE(r.registered());  // with pne-a alone
    EXPECT_EQ(r.inventory().members_size(), 1);
    std::map<std::string, std::string> reasons;
    for (const auto& res : r.results()) reasons[res.pne_id()] = reason_name(res.reason());
    EXPECT_EQ(reasons["pne-b"], "key expired");
    EXPECT_EQ(reasons["pne-c"], "authentication failed");
    const OutcomeEffect* o = find_outcome(done);
    ASSERT_TRUE(o);
    for (const auto& p : o->pnes) {
        if (p.pne_id == "pne-b") {
            EXPECT_EQ(p.reason, pb::KEY_EXPIRED);
        }
    }
}

TEST_F(ServerRole, GwOnItsPreviousEukeyWithinTheGraceGetsACopyItCanOpen) {
    pne_initiated_pair();
    rotate_at_server(dir_, kGw, EntityKind::kGw, gw_eukey_,
                     static_cast<std::int64_t>(kWallClock) + 1);
    const ServerEffects first = start();
    const auto& k = std::get<SendEffect>(first.back()).msg.auth_request().local_eukeys(0);
    const Bytes& rand_pne = pnes_["pne-b"].rand_pne;
    EXPECT_FALSE(unwrap_local_eukey(gw_eukey_, Recipient::kGw, kPn, "pne-b", kGw, rand_server_,
                                    rand_pne, bytes_of(k.for_gw())));
    auto for_gw = unwrap_local_eukey(gw_eukey_, Recipient::kGw, kPn, "pne-b", kGw, rand_server_,
                                     rand_pne, bytes_of(k.for_gw_previous()));
    auto for_pne = unwrap_local_eukey(pnes_["pne-b"].eukey, Recipient::kPne, kPn, "pne-b", kGw,
                                      rand_server_, rand_pne, bytes_of(k.for_pne()));
    ASSERT_TRUE(for_gw && for_pne);
    EXPECT_TRUE(*for_gw == *for_pne);
}

TEST_F(ServerRole, PersistFailureInWaitPersistAnswersNotRegisteredWithTheStoresReason) {
    pne_initiated_pair();
    to_wait_persist();
    const ServerEffects out = server_.on_persisted(kGw, kPn, pb::DUPLICATE_PN, kT0 + 200);
    EXPECT_EQ(describe(out), (Lines{"send gw-1 PnRegistrationResponse tls",
                                    "T pn wait_persist>done", "outcome duplicate pn"}));
    const auto& r = response(out);
    EXPECT_FALSE(r.registered());
    EXPECT_EQ(r.reason(), pb::DUPLICATE_PN);
    for (const auto& res : r.results()) {
        EXPECT_FALSE(res.authenticated());
        EXPECT_EQ(res.reason(), pb::DUPLICATE_PN);
        EXPECT_TRUE(res.hash_server_pne().empty());
    }
    EXPECT_EQ(server_.counters().established, 0u);
}

TEST_F(ServerRole, PersistedOutsideWaitPersistIsIgnored) {
    pne_initiated_pair();
    start();
    EXPECT_TRUE(server_.on_persisted(kGw, kPn, pb::REASON_NONE, kT0 + 1).empty());
    EXPECT_EQ(phase(), Phase::kWaitAuthResponse);
    EXPECT_TRUE(server_.on_persisted(kGw, "pn-other", pb::REASON_NONE, kT0 + 1).empty());
}

// --- Timers --------------------------------------------------------------------------------

TEST_F(ServerRole, TimerBeforeTheDeadlineDoesNothing) {
    pne_initiated_pair();
    start();
    EXPECT_TRUE(server_.on_timer(kT0 + kAuthResponseTimeout - 1).empty());
    EXPECT_EQ(phase(), Phase::kWaitAuthResponse);
}

TEST_F(ServerRole, TimerInWaitAuthResponseFailsPendingPnesAndEndsWithTimeout) {
    pne_initiated_pair();
    start();
    const ServerEffects out = server_.on_timer(server_.next_deadline());
    EXPECT_EQ(describe(out), (Lines{"T pne-a pending>failed", "T pne-b pending>failed",
                                    "send gw-1 PnRegistrationResponse tls",
                                    "T pn wait_auth_response>done", "outcome timeout"}));
    const auto& r = response(out);
    EXPECT_FALSE(r.registered());
    EXPECT_EQ(r.reason(), pb::TIMEOUT);
    EXPECT_EQ(r.results(0).reason(), pb::TIMEOUT);
    EXPECT_EQ(phase(), std::nullopt);
    EXPECT_EQ(server_.next_deadline(), kNever);
}

TEST_F(ServerRole, TimerInWaitPersistEndsWithInternalErrorAndALateConfirmationIsIgnored) {
    pne_initiated_pair();
    to_wait_persist();
    const ServerEffects out = server_.on_timer(kT0 + 100 + kPersistTimeout);
    EXPECT_EQ(describe(out), (Lines{"send gw-1 PnRegistrationResponse tls",
                                    "T pn wait_persist>done", "outcome internal error"}));
    EXPECT_EQ(response(out).results(1).reason(), pb::INTERNAL_ERROR);
    EXPECT_TRUE(all<SessionKeyEffect>(out).empty());
    EXPECT_TRUE(server_.on_persisted(kGw, kPn, pb::REASON_NONE, kT0 + 20'000).empty());
    EXPECT_EQ(phase(), std::nullopt);
}

// --- ErrorReport (accepted in every state) -------------------------------------------------

TEST_F(ServerRole, ErrorReportIsCountedAndChangesNothingInEveryState) {
    pne_initiated_pair();
    EXPECT_TRUE(send(error_report(pb::INTERNAL_ERROR)).empty());  // kNone
    start();
    EXPECT_TRUE(send(error_report(pb::INTERNAL_ERROR)).empty());
    EXPECT_EQ(phase(), Phase::kWaitAuthResponse);
    send(all_good());
    EXPECT_TRUE(send(error_report(pb::INTERNAL_ERROR)).empty());
    EXPECT_EQ(phase(), Phase::kWaitPersist);
    EXPECT_EQ(server_.counters()[pb::INTERNAL_ERROR], 3u);
    EXPECT_EQ(server_.counters().ignored, 0u);
}

// --- Refusals ------------------------------------------------------------------------------

TEST_F(ServerRole, DuplicateRegistrationInWaitAuthResponseIsIgnored) {
    pne_initiated_pair();
    start();
    const ServerEffects out = send(registration(), kT0 + 5);
    EXPECT_TRUE(out.empty());
    EXPECT_EQ(server_.counters().ignored, 1u);
    EXPECT_EQ(phase(), Phase::kWaitAuthResponse);
    EXPECT_EQ(server_.next_deadline(), kT0 + kAuthResponseTimeout);  // not re-armed
}

TEST_F(ServerRole, DuplicateRegistrationInWaitPersistIsIgnored) {
    pne_initiated_pair();
    to_wait_persist();
    EXPECT_TRUE(send(registration(), kT0 + 150).empty());
    EXPECT_EQ(server_.counters().ignored, 1u);
    EXPECT_EQ(phase(), Phase::kWaitPersist);
}

TEST_F(ServerRole, RegistrationOfARecentlyEndedPnIsRefusedDuplicatePn) {
    pne_initiated_pair();
    start();
    server_.on_timer(kT0 + kAuthResponseTimeout);  // ended, not registered
    expect_error(send(registration(), kT0 + kAuthResponseTimeout + 1), pb::DUPLICATE_PN, kPn);
    EXPECT_EQ(phase(), std::nullopt);
}

TEST_F(ServerRole, DuplicateAuthResponseInWaitPersistIsIgnored) {
    pne_initiated_pair();
    to_wait_persist();
    EXPECT_TRUE(send(all_good(), kT0 + 150).empty());
    EXPECT_EQ(server_.counters().ignored, 1u);
    EXPECT_EQ(phase(), Phase::kWaitPersist);
}

TEST_F(ServerRole, AuthResponseForUnknownPnIsAnsweredUnexpectedMessage) {
    pne_initiated_pair();
    expect_error(send(auth_response({failed("pne-a", pb::TIMEOUT)}, "pn-unknown")),
                 pb::UNEXPECTED_MESSAGE, "pn-unknown");
    EXPECT_EQ(server_.active_sessions(), 0u);
    EXPECT_EQ(server_.counters()[pb::UNEXPECTED_MESSAGE], 1u);
}

TEST_F(ServerRole, AuthResponseFromAnotherGwForThisPnIsAnsweredUnexpectedMessage) {
    pne_initiated_pair();
    start();
    expect_error(send(all_good(), kT0 + 5, "gw-2"), pb::UNEXPECTED_MESSAGE, kPn, "gw-2");
    EXPECT_EQ(phase(), Phase::kWaitAuthResponse);
    EXPECT_EQ(auth("pne-a"), PneAuth::kPending);
}

TEST_F(ServerRole, AuthResponseAfterTheEstablishmentEndedIsAnsweredReplayed) {
    pne_initiated_pair();
    registered_run();
    expect_error(send(all_good(), kT0 + 300), pb::REPLAYED, kPn);
    EXPECT_EQ(phase(), std::nullopt);
    EXPECT_EQ(server_.counters()[pb::REPLAYED], 1u);
}

TEST_F(ServerRole, EndedPnIsForgottenAfterReplayMemory) {
    pne_initiated_pair();
    start();
    server_.on_timer(kT0 + kAuthResponseTimeout);  // ended, not registered
    const Millis later = kT0 + kAuthResponseTimeout + kReplayMemory + 1;
    // docs/protocol.md: after kReplayMemory the PN is unknown, and a registration of a PN that
    // was never registered starts a new establishment.
    expect_error(send(all_good(), later), pb::UNEXPECTED_MESSAGE, kPn);
    EXPECT_EQ(describe(start(later)).at(0), "T pn none>wait_auth_response");
}

TEST_F(ServerRole, MessagesNotForTheServerAreAnsweredUnexpectedMessageInEveryState) {
    pne_initiated_pair();
    const auto* body = pb::Envelope::descriptor()->FindOneofByName("body");
    for (int state = 0; state < 3; ++state) {
        if (state == 1) start();
        if (state == 2) send(all_good(), kT0 + 100);
        const auto before = phase();
        for (int i = 0; i < body->field_count(); ++i) {
            pb::Envelope env;
            env.GetReflection()->MutableMessage(&env, body->field(i));
            using B = pb::Envelope::BodyCase;
            if (env.body_case() == B::kRegistrationRequest || env.body_case() == B::kAuthResponse ||
                env.body_case() == B::kError || env.body_case() == B::kChangeRequest ||
                env.body_case() == B::kSyncRequest)
                continue;
            SCOPED_TRACE(std::string(message_name(env)) + " in state " + std::to_string(state));
            expect_error(send(env, kT0 + 150), pb::UNEXPECTED_MESSAGE, "");
            EXPECT_EQ(phase(), before);
        }
    }
    // Every message type but the five the server handles, in 3 states.
    EXPECT_EQ(server_.counters()[pb::UNEXPECTED_MESSAGE],
              3u * static_cast<unsigned>(body->field_count() - 5));
    EXPECT_EQ(server_.counters().ignored, 0u);
}

// --- Transition chains of whole runs -------------------------------------------------------

// Per subject ("" = the PN session), each transition starts where the previous one ended,
// from "none", with a reason; the chains are `expected`.
void expect_consistent_chains(const std::vector<TransitionEffect>& ts,
                              const std::map<std::string, Lines>& expected) {
    std::map<std::string, Lines> chains;
    for (const auto& t : ts) {
        EXPECT_EQ(t.role, "server");
        EXPECT_EQ(t.entity, kServerId);
        EXPECT_EQ(t.pn_id, kPn);
        EXPECT_FALSE(t.reason.empty()) << t.subject << " " << t.from << ">" << t.to;
        Lines& c = chains[t.subject];
        EXPECT_EQ(t.from, c.empty() ? "none" : c.back()) << t.subject;
        if (c.empty()) c.push_back(t.from);
        c.push_back(t.to);
    }
    EXPECT_EQ(chains, expected);
}

const std::map<std::string, Lines> kSuccessfulChains{
    {"", {"none", "wait_auth_response", "wait_persist", "done"}},
    {"pne-a", {"none", "pending", "authenticated"}},
    {"pne-b", {"none", "pending", "authenticated"}}};

TEST_F(ServerRole, FullPneInitiatedRunHasConsistentTransitionChains) {
    pne_initiated_pair();
    expect_consistent_chains(full_run(), kSuccessfulChains);
}

TEST_F(ServerRole, FullGwInitiatedRunHasConsistentTransitionChains) {
    gw_initiated_pair();
    expect_consistent_chains(full_run(), kSuccessfulChains);
}

}  // namespace
}  // namespace cpns
