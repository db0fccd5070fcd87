// Role-level tests of the PN GW (core/gateway.hpp). The test plays the PNEs on the PAN and the
// CPNS Server: it drives a Gateway into a given state with real messages from its start, feeds
// ONE message, timer or link/TLS callback, and checks the exact effects (in order) and the new
// state. Conventions: pne-a and pne-b have enough UI (they request a LocalEUKey); pne-c has no
// UI and a pre-assigned key. The PAN is secure unless a test calls make_gateway(false).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/gateway.hpp"

namespace cpns {
namespace {

using Phase = Gateway::Phase;
using MState = Gateway::MemberState;

const std::string kGw = "gw-1";
const std::string kServer = "cpns-server";
const std::string kA = "pne-a";
const std::string kB = "pne-b";
const std::string kC = "pne-c";
using Lines = std::vector<std::string>;

// One line per effect: what it is, for whom, and the message or state change.
std::string describe(const GatewayEffect& e) {
    return std::visit(
        Overloaded{
            [](const SendEffect& s) {
                return "send " + s.to + " " + std::string(message_name(s.msg)) +
                       (s.protection == Protection::kTls ? " tls" : "");
            },
            [](const CloseLinkEffect& c) {
                return "close " + c.peer + " " + std::string(reason_name(c.reason));
            },
            [](const StoreInventoryEffect&) { return std::string("store inventory"); },
            [](const StoreLocalKeyEffect& k) { return "store key " + k.peer_id; },
            [](const OutcomeEffect& o) {
                return "outcome " + std::string(o.success ? "ok" : reason_name(o.reason));
            },
            [](const TransitionEffect& t) {
                return (t.subject.empty() ? "" : t.subject + " ") + t.from + "->" + t.to;
            },
        },
        e);
}
Lines describe(const GatewayEffects& out) {
    Lines l;
    for (const auto& e : out) l.push_back(describe(e));
    return l;
}
Lines operator+(Lines a, const Lines& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
}
// What follows the last answer of a collecting phase.
const Lines kRegister = {"send cpns-server PnRegistrationRequest",
                         "collect_joins->wait_auth_request"};
const Lines kAggregate = {"send cpns-server AuthenticationResponse",
                          "collect_auth->wait_registration"};
template <class T>
const T& nth(const GatewayEffects& out, std::size_t i) {
    return std::get<T>(out.at(i));
}
const pb::Envelope& msg(const GatewayEffects& out, std::size_t i) {
    return nth<SendEffect>(out, i).msg;
}

class GatewayRole : public testing::Test {
  protected:
    void SetUp() override { make_gateway(true); }
    void make_gateway(bool pan_secure, Millis neighbour_ttl = kNeighbourTtl) {
        GatewayConfig c;
        c.neighbour_ttl = neighbour_ttl;
        c.gw_id = kGw;
        c.eukey = gw_key;
        c.server_id = kServer;
        c.default_pan_secure = pan_secure;
        c.pan_links[kC] = PanLinkConfig{pre_key, pan_secure};
        gw.emplace(std::move(c), rnd);
    }

    GatewayEffects feed(const std::string& from, pb::Envelope env,
                        Protection p = Protection::kClear, const Origin& origin = {}) {
        env.set_version(kProtocolVersion);
        env.set_sender_id(from);
        return keep(gw->on_message(from, env, p, now, origin));
    }
    GatewayEffects keep(GatewayEffects out) {
        for (const auto& e : out)
            if (const auto* t = std::get_if<TransitionEffect>(&e)) transitions.push_back(*t);
        return out;
    }

    // --- Messages the PNEs and the server send -------------------------------------------
    pb::PneJoin join(const std::string& pne) {
        pb::PneJoin j;
        j.set_pne_id(pne);
        j.mutable_capabilities()->set_enough_ui(pne != kC);
        j.set_rand_pne(to_field(rnd.bytes(kRandSize)));
        j.set_local_eukey_requested(pne != kC);
        rand_pne[pne] = j.rand_pne();  // the KEKs of its LocalEUKey copies bind it
        return j;
    }
    static pb::Envelope discovery(const std::string& id, bool request) {
        pb::Envelope env;
        if (request) {
            env.mutable_discovery_request()->set_entity_id(id);
            env.mutable_discovery_request()->set_mode(pb::MODE_PNE);
        } else {
            env.mutable_discovery_response()->set_entity_id(id);
            env.mutable_discovery_response()->set_mode(pb::MODE_PNE);
        }
        return env;
    }
    void discovered(const std::string& pne) { feed(pne, discovery(pne, false)); }
    pb::Envelope setup_request(const std::string& pne, pb::SetupType type,
                               const std::vector<std::string>& invited = {}) {
        pb::Envelope env;
        auto* r = env.mutable_setup_request();
        r->set_setup_type(type);
        for (const auto& id : invited) r->add_invited_pne_ids(id);
        *r->mutable_join() = join(pne);
        return env;
    }
    pb::Envelope join_response(const std::string& pne, bool accept = true) {
        pb::Envelope env;
        auto* r = env.mutable_setup_notify_response();
        r->set_pn_id(pn);
        r->set_accept(accept);
        if (accept) *r->mutable_join() = join(pne);
        return env;
    }
    // The server's request; a LocalEUKey pair for every listed PNE with UI.
    pb::Envelope auth_request(const std::vector<std::string>& pnes) {
        pb::Envelope env;
        auto* r = env.mutable_auth_request();
        r->set_pn_id(pn);
        rand_server = to_field(rnd.bytes(kRandSize));
        r->set_rand_server(rand_server);
        for (const auto& id : pnes) {
            r->add_pne_ids(id);
            if (id == kC) continue;
            leuk[id] = rnd.key();
            auto* k = r->add_local_eukeys();
            k->set_pne_id(id);
            k->set_for_pne(to_field(wrap_local_eukey(rnd.key(), Recipient::kPne, pn, id, kGw,
                                                     bytes_of(rand_server), bytes_of(rand_pne[id]),
                                                     leuk[id])));
            k->set_for_gw(to_field(wrap_local_eukey(gw_key, Recipient::kGw, pn, id, kGw,
                                                    bytes_of(rand_server), bytes_of(rand_pne[id]),
                                                    leuk[id])));
        }
        return env;
    }
    static std::string hash_of(const std::string& pne) { return std::string(kHashSize, pne[4]); }
    pb::Envelope auth_response(const std::string& pne,
                               pb::FailureReason failure = pb::REASON_NONE) {
        pb::Envelope env;
        auto* r = env.mutable_pne_auth_response();
        r->set_pn_id(pn);
        r->set_pne_id(pne);
        if (failure == pb::REASON_NONE)
            r->set_hash_pne(hash_of(pne));
        else
            r->set_failure(failure);
        return env;
    }
    pb::Envelope registration(bool registered, const std::vector<std::string>& ok,
                              const std::vector<std::string>& failed = {},
                              pb::FailureReason reason = pb::REASON_NONE) {
        pb::Envelope env;
        auto* r = env.mutable_registration_response();
        r->set_pn_id(pn);
        r->set_registered(registered);
        r->set_reason(reason);
        r->mutable_inventory()->set_pn_id(pn);
        for (const auto& id : ok) r->mutable_inventory()->add_members()->set_pne_id(id);
        for (const auto& id : ok + failed) {
            const bool authenticated = std::find(ok.begin(), ok.end(), id) != ok.end();
            auto* res = r->add_results();
            res->set_pne_id(id);
            res->set_authenticated(authenticated);
            res->set_reason(authenticated ? pb::REASON_NONE : pb::AUTHENTICATION_FAILED);
            if (authenticated) res->set_hash_server_pne(std::string(kHashSize, 's'));
        }
        return env;
    }
    pb::Envelope error(pb::FailureReason reason) {
        pb::Envelope env;
        env.mutable_error()->set_pn_id(pn);
        env.mutable_error()->set_reason(reason);
        env.mutable_error()->set_detail("test");
        return env;
    }

    // --- Drivers: put the PN under test (pn) in a phase ----------------------------------
    GatewayEffects open(const pb::Envelope& request, const std::string& from = kA,
                        Protection p = Protection::kClear) {
        auto out = feed(from, request, p);
        if (!out.empty() && std::holds_alternative<TransitionEffect>(out[0]))
            pn = nth<TransitionEffect>(out, 0).pn_id;
        return out;
    }
    // pne-a asks for a PN inviting pne-b: collect_joins, pne-b invited.
    void to_collect_joins() {
        discovered(kB);
        open(first_request = setup_request(kA, pb::SETUP_INVITE_LIST, {kB}));
    }
    void to_wait_auth_request() {
        to_collect_joins();
        feed(kB, join_response(kB));
    }
    void to_collect_auth() {
        to_wait_auth_request();
        feed(kServer, auth_request({kA, kB}));
    }
    void to_wait_registration() {
        to_collect_auth();
        feed(kA, auth_response(kA));
        feed(kB, auth_response(kB));
    }
    // The PN GW invites pne-a and pne-b (5.2.1.2).
    GatewayEffects gw_invite() {
        discovered(kA);
        discovered(kB);
        auto out = keep(gw->invite({kA, kB}, now));
        pn = gw->last_pn_id();
        return out;
    }

    // A refused message: no effect, counted as ignored, nothing changes state.
    void expect_ignored(const std::string& from, pb::Envelope env, bool unexpected = false) {
        const auto phase = gw->phase(pn);
        const auto a = gw->member_state(pn, kA);
        const auto b = gw->member_state(pn, kB);
        const auto ignored = gw->counters().ignored;
        const auto unexp = gw->counters()[pb::UNEXPECTED_MESSAGE];
        EXPECT_EQ(describe(feed(from, std::move(env))), Lines{});
        EXPECT_EQ(gw->counters().ignored, ignored + 1);
        EXPECT_EQ(gw->counters()[pb::UNEXPECTED_MESSAGE], unexp + (unexpected ? 1 : 0));
        EXPECT_EQ(gw->phase(pn), phase);
        EXPECT_EQ(gw->member_state(pn, kA), a);
        EXPECT_EQ(gw->member_state(pn, kB), b);
    }

    DeterministicRandom rnd{2024};
    SecretKey gw_key = rnd.key();
    SecretKey pre_key = rnd.key();
    std::optional<Gateway> gw;
    Millis now = 1'000;
    std::string pn;  // the PN under test
    pb::Envelope first_request;
    std::string rand_server;
    std::map<std::string, SecretKey> leuk;
    std::map<std::string, std::string> rand_pne;  // of each join this test made
    std::vector<TransitionEffect> transitions;
};

const Lines kSessionChain = {"none",         "collect_joins",     "wait_auth_request",
                             "collect_auth", "wait_registration", "done"};

// Each subject's transitions form one chain starting at "none", all with a reason.
void expect_chains(const std::vector<TransitionEffect>& ts, const std::string& pn,
                   const std::map<std::string, Lines>& expected) {
    std::map<std::string, Lines> chains;
    for (const auto& t : ts) {
        EXPECT_EQ(t.role, "gw");
        EXPECT_EQ(t.entity, kGw);
        EXPECT_EQ(t.pn_id, pn);
        EXPECT_FALSE(t.reason.empty()) << t.subject << " " << t.from << "->" << t.to;
        auto& c = chains[t.subject];
        EXPECT_EQ(t.from, c.empty() ? "none" : c.back());
        if (c.empty()) c.push_back(t.from);
        c.push_back(t.to);
    }
    EXPECT_EQ(chains, expected);
}

// --- Step 0 and local commands ---------------------------------------------------------------

TEST_F(GatewayRole, DiscoverBroadcastsEntityDiscoveryRequest) {
    gw->set_endpoint("10.0.0.1:7000");
    const auto out = gw->discover(now);
    ASSERT_EQ(describe(out), Lines{"send * EntityDiscoveryRequest"});
    EXPECT_EQ(msg(out, 0).discovery_request().mode(), pb::MODE_PN_GW);
    EXPECT_EQ(msg(out, 0).discovery_request().endpoint(), "10.0.0.1:7000");
}

TEST_F(GatewayRole, DiscoveryRequestIsAnsweredAndResponseRecordedSilently) {
    const auto out = feed(kA, discovery(kA, true));
    ASSERT_EQ(describe(out), Lines{"send pne-a EntityDiscoveryResponse"});
    EXPECT_EQ(msg(out, 0).discovery_response().entity_id(), kGw);
    EXPECT_EQ(describe(feed(kB, discovery(kB, false))), Lines{});
    EXPECT_EQ(gw->neighbours().size(), 2u);
}

TEST_F(GatewayRole, DiscoveryNamingAnotherEntityIsIgnored) {
    expect_ignored(kA, discovery(kB, true));
    EXPECT_TRUE(gw->neighbours().empty());
}

// Finding 7: hundreds of discovery datagrams with made-up IDs (from one address, then from many)
// neither push out a PNE known over its PAN link nor keep a real PNE that announces itself
// afterwards out of the table: 'All' and invitations still reach them.
TEST_F(GatewayRole, DiscoveryFloodKeepsRealNeighbours) {
    feed(kA, discovery(kA, true));  // over its PAN link
    for (int i = 0; i < 400; ++i) {
        const std::string id = "ghost-" + std::to_string(i);
        feed(id, discovery(id, true), Protection::kClear,
             Origin{true, i < 100 ? "10.0.0.66" : "10.0.1." + std::to_string(i % 250)});
    }
    EXPECT_LE(gw->neighbours().size(), kMaxNeighbours);
    feed(kB, discovery(kB, true));  // a real PNE linking after the flood
    EXPECT_EQ(gw->neighbours().count(kA), 1u);
    EXPECT_EQ(gw->neighbours().count(kB), 1u);
    std::size_t from_one = 0;
    for (const auto& [id, n] : gw->neighbours()) from_one += n.address == "10.0.0.66";
    EXPECT_LE(from_one, kMaxNeighboursPerAddress);
    keep(gw->invite({kA, kB}, now));
    pn = gw->last_pn_id();
    EXPECT_EQ(gw->member_state(pn, kA), MState::kInvited);
    EXPECT_EQ(gw->member_state(pn, kB), MState::kInvited);
}

// Entities heard only by datagram age out after kNeighbourTtl (each new request refreshes
// them); one held by a PAN link stays until the link goes, then ages too.
TEST_F(GatewayRole, NeighboursHeardOnlyByDatagramAgeOut) {
    const Origin udp{true, "10.0.0.5"};
    feed(kB, discovery(kB, true), Protection::kClear, udp);
    feed(kA, discovery(kA, true));  // over its link
    now += kNeighbourTtl - 1;
    feed(kB, discovery(kB, true), Protection::kClear, udp);  // refreshed
    now += kNeighbourTtl - 1;
    gw->on_timer(now);
    EXPECT_EQ(gw->neighbours().count(kB), 1u);
    EXPECT_EQ(gw->neighbours().count(kA), 1u);
    now += 1;
    gw->on_timer(now);
    EXPECT_EQ(gw->neighbours().count(kB), 0u);
    EXPECT_EQ(gw->neighbours().count(kA), 1u);
    const auto fx = gw->invite({kB}, now);
    const auto* o = find_outcome(fx);
    ASSERT_NE(o, nullptr);  // not discovered any more: it fails at once
    EXPECT_EQ(o->pnes.at(0).reason, pb::UNKNOWN_ENTITY);
    gw->on_link_down(kA, now);
    now += kNeighbourTtl;
    gw->on_timer(now);
    EXPECT_TRUE(gw->neighbours().empty());
}

// Issue 10 item 7: with a configured TTL, a PNE whose PAN link went down (its process was
// killed) ages out after that TTL - not after kNeighbourTtl -, the role says when
// (neighbour_expiry) so that the daemon's timer drops it, and an empty invitation then invites
// only the PNE still linked: the other is not invited at all (no member, no failure).
TEST_F(GatewayRole, ConfiguredTtlAgesOutAPneWhoseLinkWentDownAndEmptyInviteSkipsIt) {
    constexpr Millis kTtl = 3'000;
    make_gateway(true, kTtl);
    EXPECT_EQ(gw->neighbour_table().ttl(), kTtl);
    feed(kA, discovery(kA, true));  // both announce themselves on their PAN links
    feed(kB, discovery(kB, true));
    EXPECT_EQ(gw->neighbour_expiry(), kNoExpiry);  // links hold them
    now += 10 * kNeighbourTtl;
    gw->on_timer(now);
    EXPECT_EQ(gw->neighbours().size(), 2u);
    gw->on_link_down(kB, now);  // pne-b killed: its link closes
    EXPECT_EQ(gw->neighbour_expiry(), now + kTtl);
    now += kTtl - 1;
    gw->on_timer(now);
    EXPECT_EQ(gw->neighbours().count(kB), 1u);
    now += 1;
    gw->on_timer(now);
    EXPECT_EQ(gw->neighbours().count(kB), 0u);
    EXPECT_EQ(gw->neighbours().count(kA), 1u);
    EXPECT_EQ(gw->neighbour_expiry(), kNoExpiry);
    const auto out = keep(gw->invite({}, now));
    pn = gw->last_pn_id();
    ASSERT_EQ(describe(out),
              (Lines{"none->collect_joins", "pne-a none->invited", "send pne-a PnSetupInvite"}));
    EXPECT_EQ(gw->member_state(pn, kB), std::nullopt);
    EXPECT_EQ(gw->counters()[pb::UNKNOWN_ENTITY], 0u);
    EXPECT_EQ(gw->counters()[pb::PEER_UNREACHABLE], 0u);
}

// The configured TTL is kept within kMinNeighbourTtl..kMaxNeighbourTtl by the role itself.
TEST_F(GatewayRole, NeighbourTtlOutsideItsBoundsIsClamped) {
    make_gateway(true, 1);
    EXPECT_EQ(gw->neighbour_table().ttl(), kMinNeighbourTtl);
    make_gateway(true, 1'000 * kMaxNeighbourTtl);
    EXPECT_EQ(gw->neighbour_table().ttl(), kMaxNeighbourTtl);
}

// 'All' and an empty invitation go to live neighbours in PNE mode only: MODE_PNE and
// MODE_BOTH, never a PN GW, never the initiator, never one that aged out.
TEST_F(GatewayRole, AllAndEmptyInvitationGoOnlyToLivePneModeNeighbours) {
    auto announce = [&](const std::string& id, pb::EntityMode mode, const Origin& origin) {
        auto env = discovery(id, true);
        env.mutable_discovery_request()->set_mode(mode);
        feed(id, env, Protection::kClear, origin);
    };
    const Origin udp{true, "10.0.0.5"};
    announce("pne-old", pb::MODE_PNE, udp);
    now += kNeighbourTtl / 2;
    announce(kA, pb::MODE_PNE, {});
    announce(kB, pb::MODE_BOTH, {});
    announce("gw-2", pb::MODE_PN_GW, {});
    announce("pne-udp", pb::MODE_PNE, udp);
    now += kNeighbourTtl / 2;  // pne-old is past its TTL (not yet dropped: no on_timer)
    auto out = keep(gw->invite({}, now));
    pn = gw->last_pn_id();
    EXPECT_EQ(describe(out),
              (Lines{"none->collect_joins", "pne-a none->invited", "send pne-a PnSetupInvite",
                     "pne-b none->invited", "send pne-b PnSetupInvite", "pne-udp none->invited",
                     "send pne-udp PnSetupInvite"}));
    make_gateway(true);
    now = 0;
    announce(kA, pb::MODE_PNE, {});
    announce(kB, pb::MODE_BOTH, {});
    announce("gw-2", pb::MODE_PN_GW, {});
    out = open(setup_request(kA, pb::SETUP_ALL));
    EXPECT_EQ(describe(out), (Lines{"none->collect_joins", "pne-a none->joined",
                                    "pne-b none->invited", "send pne-b PnSetupNotify"}));
}

// A datagram naming a PNE known over a PSK-TLS link changes nothing about it (it cannot, e.g.,
// turn it into a PN GW so that 'All' leaves it out).
TEST_F(GatewayRole, DatagramCannotRewriteANeighbourKnownOverTls) {
    feed(kC, discovery(kC, true), Protection::kTls);
    auto fake = discovery(kC, true);
    fake.mutable_discovery_request()->set_mode(pb::MODE_PN_GW);
    feed(kC, fake, Protection::kClear, Origin{true, "10.0.0.66"});
    EXPECT_EQ(gw->neighbours().at(kC).mode, pb::MODE_PNE);
    EXPECT_EQ(gw->neighbours().at(kC).via, NeighbourVia::kTlsLink);
}

TEST_F(GatewayRole, OnlyDiscoveryIsTakenFromADatagram) {
    const auto ignored = gw->counters().ignored;
    EXPECT_EQ(describe(feed(kA, setup_request(kA, pb::SETUP_ONE_TO_ONE), Protection::kClear,
                            Origin{true, "10.0.0.5"})),
              Lines{});
    EXPECT_EQ(gw->active_sessions(), 0u);
    EXPECT_EQ(gw->counters().ignored, ignored + 1);
}

TEST_F(GatewayRole, InviteWithNothingDiscoveredFailsAtOnce) {
    const auto out = gw->invite({}, now);
    ASSERT_EQ(describe(out), Lines{"outcome unknown entity"});
    EXPECT_EQ(gw->last_pn_id(), "");
    EXPECT_EQ(gw->active_sessions(), 0u);
}

TEST_F(GatewayRole, InviteSendsPnSetupInviteToEachDiscoveredPne) {
    discovered(kA);
    discovered(kB);
    const auto out = keep(gw->invite({kB, "pne-x", kA}, now));
    pn = gw->last_pn_id();
    ASSERT_EQ(describe(out),
              (Lines{"none->collect_joins", "pne-a none->invited", "send pne-a PnSetupInvite",
                     "pne-b none->invited", "send pne-b PnSetupInvite", "pne-x none->failed"}));
    EXPECT_EQ(msg(out, 2).setup_invite().pn_id(), pn);
    EXPECT_EQ(msg(out, 2).setup_invite().gw_id(), kGw);
    EXPECT_EQ(gw->counters()[pb::UNKNOWN_ENTITY], 1u);  // pne-x was never discovered
    EXPECT_EQ(gw->phase(pn), Phase::kCollectJoins);
    EXPECT_EQ(gw->next_deadline(), now + kJoinResponseTimeout);
}

TEST_F(GatewayRole, InviteOfPneJoiningAnotherPnFailsItAsBusy) {
    to_collect_joins();  // pne-b is invited into pn
    const auto out = gw->invite({kB}, now);
    ASSERT_EQ(describe(out),
              (Lines{"none->collect_joins", "pne-b none->failed",
                     "send pne-b PnEstablishmentNotify", "collect_joins->done", "outcome busy"}));
    EXPECT_EQ(gw->member_state(pn, kB), MState::kInvited);
}

// --- PnSetupRequest (phase none) ---------------------------------------------------------------

TEST_F(GatewayRole, OneToOneSetupRequestRegistersAtOnce) {
    const auto out = open(setup_request(kA, pb::SETUP_ONE_TO_ONE));
    ASSERT_EQ(describe(out), (Lines{"none->collect_joins", "pne-a none->joined"} + kRegister));
    const auto& r = msg(out, 2).registration_request();
    EXPECT_EQ(r.pn_id(), pn);
    EXPECT_EQ(r.gw().gw_id(), kGw);
    EXPECT_EQ(r.flow(), pb::FLOW_PNE_INITIATED);
    ASSERT_EQ(r.pnes_size(), 1);
    EXPECT_EQ(r.pnes(0).role(), pb::ROLE_INITIATOR);
    EXPECT_EQ(gw->phase(pn), Phase::kWaitAuthRequest);
    EXPECT_EQ(gw->next_deadline(), now + kServerResponseTimeout);
}

TEST_F(GatewayRole, InviteListSetupRequestNotifiesInvitees) {
    discovered(kB);
    const auto out = open(setup_request(kA, pb::SETUP_INVITE_LIST, {kB, kA, kB}));
    ASSERT_EQ(describe(out), (Lines{"none->collect_joins", "pne-a none->joined",
                                    "pne-b none->invited", "send pne-b PnSetupNotify"}));
    EXPECT_EQ(msg(out, 3).setup_notify().initiator_pne_id(), kA);
    EXPECT_EQ(msg(out, 3).setup_notify().pn_id(), pn);
    EXPECT_EQ(gw->member_state(pn, kB), MState::kInvited);
}

TEST_F(GatewayRole, SetupAllNotifiesEveryDiscoveredPneButTheInitiator) {
    discovered(kA);
    discovered(kB);
    const auto out = open(setup_request(kA, pb::SETUP_ALL));
    ASSERT_EQ(describe(out), (Lines{"none->collect_joins", "pne-a none->joined",
                                    "pne-b none->invited", "send pne-b PnSetupNotify"}));
}

TEST_F(GatewayRole, ClearSetupRequestWithoutLocalKeyOnInsecurePanNeedsTls) {
    make_gateway(false);
    const auto out = feed(kC, setup_request(kC, pb::SETUP_ONE_TO_ONE));
    ASSERT_EQ(describe(out), (Lines{"send pne-c ErrorReport", "close pne-c tls required"}));
    EXPECT_EQ(msg(out, 0).error().reason(), pb::TLS_REQUIRED);
    EXPECT_EQ(gw->active_sessions(), 0u);
}

TEST_F(GatewayRole, SetupRequestOverPreassignedTlsIsAcceptedAndRelayedOverTls) {
    make_gateway(false);
    EXPECT_EQ(describe(gw->on_tls_established(kC, preassigned_identity(kC), now)), Lines{});
    open(setup_request(kC, pb::SETUP_ONE_TO_ONE), kC, Protection::kTls);
    ASSERT_EQ(gw->phase(pn), Phase::kWaitAuthRequest);
    const auto out = feed(kServer, auth_request({kC}));  // no LocalEUKey for a PNE without UI
    ASSERT_EQ(describe(out),
              (Lines{"pne-c joined->auth_pending", "send pne-c PneAuthenticationRequest tls",
                     "wait_auth_request->collect_auth"}));
    EXPECT_EQ(msg(out, 1).pne_auth_request().wrapped_local_eukey(), "");
}

TEST_F(GatewayRole, SetupRequestNotNamingItsSenderOrOverTheLimitGetsAnError) {
    auto out = feed(kB, setup_request(kA, pb::SETUP_ONE_TO_ONE));
    ASSERT_EQ(describe(out), Lines{"send pne-b ErrorReport"});
    EXPECT_EQ(msg(out, 0).error().reason(), pb::MALFORMED_MESSAGE);
    for (std::size_t i = 0; i < kMaxGwSessions; ++i) {
        const std::string id = "pne-" + std::to_string(i);
        feed(id, setup_request(id, pb::SETUP_ONE_TO_ONE), Protection::kTls);
    }
    ASSERT_EQ(gw->active_sessions(), kMaxGwSessions);
    out = feed(kA, setup_request(kA, pb::SETUP_ONE_TO_ONE));
    ASSERT_EQ(describe(out), Lines{"send pne-a ErrorReport"});
    EXPECT_EQ(msg(out, 0).error().reason(), pb::LIMIT_EXCEEDED);
}

// Bounded state: a PN GW that keeps kMaxPnsPerGw PNs opens no more, from the PAN or itself.
TEST_F(GatewayRole, AtItsPnBoundThePnGwRefusesSetupAndInvite) {
    pb::GwState st;
    st.set_gw_id(kGw);
    for (std::size_t i = 0; i < kMaxPnsPerGw; ++i) {
        auto* inv = st.add_inventory();
        inv->set_pn_id("pn-" + std::to_string(i));
        inv->set_gw_id(kGw);
    }
    ASSERT_TRUE(gw->import_state(st));
    const auto out = feed(kA, setup_request(kA, pb::SETUP_ONE_TO_ONE));
    ASSERT_EQ(describe(out), Lines{"send pne-a ErrorReport"});
    EXPECT_EQ(msg(out, 0).error().reason(), pb::LIMIT_EXCEEDED);
    const auto refused = gw->invite({kA}, now);  // find_outcome points into it
    const auto* o = find_outcome(refused);
    ASSERT_NE(o, nullptr);
    EXPECT_EQ(o->reason, pb::LIMIT_EXCEEDED);
    EXPECT_EQ(gw->active_sessions(), 0u);
}

// Finding 5: unauthenticated setup requests in clear (made-up IDs, each on its own link, from
// many addresses) cannot take the slots kept for PSK-TLS requests and the PN GW's invitations.
TEST_F(GatewayRole, ClearSetupRequestsCannotTakeTheSlotsReservedForPskTls) {
    const std::size_t clear_room = kMaxGwSessions - kGwSessionsReservedForAuthenticated;
    for (std::size_t i = 0; i < kMaxGwSessions; ++i) {
        const std::string id = "made-up-" + std::to_string(i);
        const auto out = feed(id, setup_request(id, pb::SETUP_ONE_TO_ONE), Protection::kClear,
                              Origin{false, "10.0.0." + std::to_string(i)});
        if (i < clear_room) continue;
        ASSERT_EQ(describe(out), Lines{"send " + id + " ErrorReport"}) << i;
        EXPECT_EQ(msg(out, 0).error().reason(), pb::LIMIT_EXCEEDED);
    }
    EXPECT_EQ(gw->active_sessions(), clear_room);
    // A PNE over PSK-TLS still gets its PN, and so does the operator's invitation.
    const auto tls = feed(kC, setup_request(kC, pb::SETUP_ONE_TO_ONE), Protection::kTls);
    ASSERT_FALSE(tls.empty());
    EXPECT_EQ(describe(tls).at(0), "none->collect_joins");
    discovered(kA);
    keep(gw->invite({kA}, now));
    EXPECT_NE(gw->last_pn_id(), "");
    EXPECT_EQ(gw->active_sessions(), clear_room + 2);
}

// ...and one source (address) holds at most kMaxGwClearSessionsPerSource of the clear ones.
TEST_F(GatewayRole, ClearSetupRequestsFromOneAddressAreCapped) {
    const Origin attacker{false, "10.0.0.66"};
    for (std::size_t i = 0; i <= kMaxGwClearSessionsPerSource; ++i) {
        const std::string id = "made-up-" + std::to_string(i);
        const auto out =
            feed(id, setup_request(id, pb::SETUP_ONE_TO_ONE), Protection::kClear, attacker);
        if (i < kMaxGwClearSessionsPerSource) continue;
        ASSERT_EQ(describe(out), Lines{"send " + id + " ErrorReport"});
        EXPECT_EQ(msg(out, 0).error().reason(), pb::LIMIT_EXCEEDED);
    }
    EXPECT_EQ(gw->active_sessions(), kMaxGwClearSessionsPerSource);
    const auto out = feed(kA, setup_request(kA, pb::SETUP_ONE_TO_ONE), Protection::kClear,
                          Origin{false, "10.0.0.7"});
    ASSERT_FALSE(out.empty());
    EXPECT_EQ(describe(out).at(0), "none->collect_joins");
}

TEST_F(GatewayRole, NewSetupRequestFromPneAlreadyJoiningGetsBusy) {
    to_collect_joins();
    const auto ignored = gw->counters().ignored;
    const auto out = feed(kA, setup_request(kA, pb::SETUP_ONE_TO_ONE));  // another rand_PNE
    ASSERT_EQ(describe(out), Lines{"send pne-a ErrorReport"});
    EXPECT_EQ(msg(out, 0).error().reason(), pb::BUSY);
    EXPECT_EQ(gw->counters()[pb::BUSY], 1u);
    EXPECT_EQ(gw->counters().ignored, ignored);  // answered, counted by reason
    EXPECT_EQ(gw->phase(pn), Phase::kCollectJoins);
    EXPECT_EQ(gw->active_sessions(), 1u);
}

TEST_F(GatewayRole, RepeatedSetupRequestOfTheInitiatorIsIgnored) {
    to_collect_joins();
    expect_ignored(kA, first_request);
}

// --- PnSetupNotifyResponse (collect_joins) -----------------------------------------------------

TEST_F(GatewayRole, AcceptanceOfLastInviteeSendsRegistration) {
    to_collect_joins();
    const auto out = feed(kB, join_response(kB));
    ASSERT_EQ(describe(out), (Lines{"pne-b invited->joined"} + kRegister));
    const auto& r = msg(out, 1).registration_request();
    ASSERT_EQ(r.pnes_size(), 2);
    EXPECT_EQ(r.pnes(1).join().pne_id(), kB);
    EXPECT_EQ(r.pnes(1).role(), pb::ROLE_INVITEE);
    EXPECT_EQ(r.invited_pne_ids(0), kB);
}

TEST_F(GatewayRole, DeclineFailsInviteeAndRegistersTheRest) {
    to_collect_joins();
    const auto out = feed(kB, join_response(kB, false));
    ASSERT_EQ(describe(out), (Lines{"pne-b invited->failed"} + kRegister));
    EXPECT_EQ(msg(out, 1).registration_request().pnes_size(), 1);
    EXPECT_EQ(gw->counters()[pb::DECLINED], 1u);
}

TEST_F(GatewayRole, JoinNamingAnotherPneFailsInviteeAsMalformed) {
    to_collect_joins();
    auto env = join_response(kB);
    env.mutable_setup_notify_response()->mutable_join()->set_pne_id(kC);
    ASSERT_EQ(describe(feed(kB, env)), (Lines{"pne-b invited->failed"} + kRegister));
    EXPECT_EQ(gw->counters()[pb::MALFORMED_MESSAGE], 1u);
}

TEST_F(GatewayRole, ClearJoinWithoutLocalKeyOnInsecurePanFailsInviteeAndClosesLink) {
    make_gateway(false);
    discovered(kC);
    open(setup_request(kA, pb::SETUP_INVITE_LIST, {kC}));
    ASSERT_EQ(describe(feed(kC, join_response(kC))),
              (Lines{"pne-c invited->failed", "close pne-c tls required"} + kRegister));
}

TEST_F(GatewayRole, LastDeclineInGwInitiatedFlowEndsThePnAsDeclined) {
    gw_invite();
    feed(kA, join_response(kA, false));
    const auto out = feed(kB, join_response(kB, false));
    ASSERT_EQ(describe(out),
              (Lines{"pne-b invited->failed", "collect_joins->done", "outcome declined"}));
    EXPECT_EQ(gw->phase(pn), std::nullopt);
    EXPECT_EQ(gw->active_sessions(), 0u);
}

TEST_F(GatewayRole, JoinRepeatedForAnotherPnOrAfterCollectJoinsIsIgnored) {
    gw_invite();
    feed(kA, join_response(kA));
    expect_ignored(kA, join_response(kA));  // member already joined
    auto other = join_response(kB);
    other.mutable_setup_notify_response()->set_pn_id("pn-other");
    expect_ignored(kB, other);
    feed(kB, join_response(kB));  // -> wait_auth_request
    expect_ignored(kB, join_response(kB));
}

// --- AuthenticationRequest (wait_auth_request) -------------------------------------------------

TEST_F(GatewayRole, AuthRequestKeepsGwCopyAndRelaysEachPneItsOwnCopy) {
    to_wait_auth_request();
    const auto env = auth_request({kA, kB});
    const auto out = feed(kServer, env);
    ASSERT_EQ(describe(out),
              (Lines{"store key pne-a", "pne-a joined->auth_pending",
                     "send pne-a PneAuthenticationRequest", "store key pne-b",
                     "pne-b joined->auth_pending", "send pne-b PneAuthenticationRequest",
                     "wait_auth_request->collect_auth"}));
    EXPECT_TRUE(nth<StoreLocalKeyEffect>(out, 0).key == leuk[kA]);
    const auto& r = msg(out, 5).pne_auth_request();
    EXPECT_EQ(r.rand_server(), rand_server);
    EXPECT_EQ(r.wrapped_local_eukey(), env.auth_request().local_eukeys(1).for_pne());
    EXPECT_TRUE(*gw->tls_psk_for(local_eukey_identity(pn, kB)) == leuk[kB]);
    EXPECT_EQ(gw->next_deadline(), now + kPneAuthResponseTimeout);
}

TEST_F(GatewayRole, AuthRequestOpensThePreviousKeyCopyAndRelaysBothPneCopies) {
    // EUKey rotation grace: the server made the first PN GW copy under the PN GW's new EUKey
    // (this PN GW still holds the previous one) and a second copy under the previous one.
    to_wait_auth_request();
    auto env = auth_request({kA, kB});
    for (auto& k : *env.mutable_auth_request()->mutable_local_eukeys()) {
        k.set_for_gw_previous(k.for_gw());
        k.set_for_gw(to_field(wrap_local_eukey(rnd.key(), Recipient::kGw, pn, k.pne_id(), kGw,
                                               bytes_of(rand_server),
                                               bytes_of(rand_pne[k.pne_id()]), leuk[k.pne_id()])));
        k.set_for_pne_previous(std::string(40, 'p'));
    }
    const auto out = feed(kServer, env);
    ASSERT_EQ(describe(out),
              (Lines{"store key pne-a", "pne-a joined->auth_pending",
                     "send pne-a PneAuthenticationRequest", "store key pne-b",
                     "pne-b joined->auth_pending", "send pne-b PneAuthenticationRequest",
                     "wait_auth_request->collect_auth"}));
    EXPECT_TRUE(nth<StoreLocalKeyEffect>(out, 0).key == leuk[kA]);
    const auto& r = msg(out, 5).pne_auth_request();
    EXPECT_EQ(r.wrapped_local_eukey(), env.auth_request().local_eukeys(1).for_pne());
    EXPECT_EQ(r.wrapped_local_eukey_previous(), std::string(40, 'p'));
}

TEST_F(GatewayRole, ExcludedOrUnlistedMembersFailAndTheAggregateGoesAtOnce) {
    to_wait_auth_request();
    auto env = auth_request({});
    auto* x = env.mutable_auth_request()->add_excluded();
    x->set_pne_id(kB);
    x->set_reason(pb::REVOKED);
    const auto out = feed(kServer, env);
    EXPECT_EQ(describe(out), (Lines{"pne-b joined->failed", "pne-a joined->failed",
                                    "wait_auth_request->collect_auth"} +
                              kAggregate));
    EXPECT_EQ(msg(out, 3).auth_response().results(0).failure(), pb::UNKNOWN_ENTITY);
    EXPECT_EQ(msg(out, 3).auth_response().results(1).failure(), pb::REVOKED);
}

TEST_F(GatewayRole, LocalKeyMissingOrNotUnwrappingFailsTheMember) {
    to_wait_auth_request();
    auto env = auth_request({kA, kB});
    env.mutable_auth_request()->mutable_local_eukeys(1)->set_for_gw(std::string(40, 'x'));
    env.mutable_auth_request()->mutable_local_eukeys()->DeleteSubrange(0, 1);  // none for pne-a
    EXPECT_EQ(describe(feed(kServer, env)), (Lines{"pne-a joined->failed", "pne-b joined->failed",
                                                   "wait_auth_request->collect_auth"} +
                                             kAggregate));
    EXPECT_EQ(gw->counters()[pb::KEY_UNWRAP_FAILED], 2u);
}

TEST_F(GatewayRole, AuthRequestFromPanForAnotherPnOrRepeatedIsIgnored) {
    to_wait_auth_request();
    expect_ignored(kA, auth_request({kA, kB}));
    auto other = auth_request({kA});
    other.mutable_auth_request()->set_pn_id("pn-other");
    expect_ignored(kServer, other);
    feed(kServer, auth_request({kA, kB}));  // -> collect_auth
    expect_ignored(kServer, auth_request({kA, kB}));
}

// --- PneAuthenticationResponse (collect_auth) --------------------------------------------------

TEST_F(GatewayRole, HashFromOnePneIsKeptUntilTheLastAnswers) {
    to_collect_auth();
    ASSERT_EQ(describe(feed(kA, auth_response(kA))), Lines{"pne-a auth_pending->answered"});
    const auto out = feed(kB, auth_response(kB));
    ASSERT_EQ(describe(out), (Lines{"pne-b auth_pending->answered"} + kAggregate));
    const auto& r = msg(out, 1).auth_response();
    ASSERT_EQ(r.results_size(), 2);
    EXPECT_EQ(r.results(0).hash_pne(), hash_of(kA));
    EXPECT_EQ(r.results(1).hash_pne(), hash_of(kB));
    EXPECT_EQ(gw->next_deadline(), now + kServerResponseTimeout);
}

TEST_F(GatewayRole, ReportedFailureOrBadHashFailsTheMember) {
    to_collect_auth();
    auto env = auth_response(kA);
    env.mutable_pne_auth_response()->set_hash_pne("short");
    EXPECT_EQ(describe(feed(kA, env)), Lines{"pne-a auth_pending->failed"});
    const auto out = feed(kB, auth_response(kB, pb::AUTHENTICATION_FAILED));
    EXPECT_EQ(describe(out), Lines{"pne-b auth_pending->failed"} + kAggregate);
    EXPECT_EQ(msg(out, 1).auth_response().results(0).failure(), pb::MALFORMED_MESSAGE);
    EXPECT_EQ(msg(out, 1).auth_response().results(1).failure(), pb::AUTHENTICATION_FAILED);
}

TEST_F(GatewayRole, HashInClearOnInsecurePanFailsMemberAndClosesLink) {
    make_gateway(false);
    open(setup_request(kA, pb::SETUP_ONE_TO_ONE));
    feed(kServer, auth_request({kA}));
    ASSERT_EQ(describe(feed(kA, auth_response(kA))),
              (Lines{"pne-a auth_pending->failed", "close pne-a tls required"} + kAggregate));
}

TEST_F(GatewayRole, HashOverLocalEuKeyTlsOnInsecurePanIsAcceptedAndResultGoesOverTls) {
    make_gateway(false);
    open(setup_request(kA, pb::SETUP_ONE_TO_ONE));
    feed(kServer, auth_request({kA}));
    const auto identity = local_eukey_identity(pn, kA);
    EXPECT_TRUE(*gw->tls_psk_for(identity) == leuk[kA]);
    EXPECT_EQ(describe(gw->on_tls_established(kA, identity, now)), Lines{});
    ASSERT_EQ(describe(feed(kA, auth_response(kA), Protection::kTls)),
              (Lines{"pne-a auth_pending->answered"} + kAggregate));
    ASSERT_EQ(describe(feed(kServer, registration(true, {kA}))),
              (Lines{"pne-a answered->member", "store inventory", "send pne-a PnSetupResponse tls",
                     "wait_registration->done", "outcome ok"}));
}

TEST_F(GatewayRole, AuthResponseEarlyMisnamedFromNonMemberOrLateIsIgnored) {
    to_wait_auth_request();
    expect_ignored(kA, auth_response(kA));  // before the relay
    feed(kServer, auth_request({kA, kB}));
    expect_ignored(kA, auth_response(kB));  // names another PNE
    expect_ignored(kC, auth_response(kC));  // not a member
    feed(kA, auth_response(kA));
    feed(kB, auth_response(kB));  // -> wait_registration
    expect_ignored(kB, auth_response(kB));
}

// --- PnRegistrationResponse (wait_registration; a refusal also in wait_auth_request) ----------

TEST_F(GatewayRole, RegistrationStoresInventoryAndTellsEachPne) {
    to_wait_registration();
    const auto out = feed(kServer, registration(true, {kA, kB}));
    ASSERT_EQ(describe(out),
              (Lines{"pne-a answered->member", "pne-b answered->member", "store inventory",
                     "send pne-a PnSetupResponse", "send pne-b PnEstablishmentNotify",
                     "wait_registration->done", "outcome ok"}));
    const auto& res = msg(out, 4).establishment_notify().result();
    EXPECT_TRUE(res.success());
    EXPECT_EQ(res.hash_server_pne(), std::string(kHashSize, 's'));
    EXPECT_EQ(res.inventory().members_size(), 2);
    EXPECT_EQ(nth<OutcomeEffect>(out, 6).pnes.size(), 2u);
    EXPECT_EQ(gw->routing_table().at(pn), (Lines{kA, kB}));
    EXPECT_TRUE(*gw->local_eukey(pn, kB) == leuk[kB]);
    EXPECT_EQ(gw->phase(pn), std::nullopt);
    EXPECT_EQ(gw->next_deadline(), kNever);
}

TEST_F(GatewayRole, PneTheServerDidNotAuthenticateIsExcludedAndTold) {
    to_wait_registration();
    const auto out = feed(kServer, registration(true, {kA}, {kB}));
    ASSERT_EQ(describe(out),
              (Lines{"pne-a answered->member", "pne-b answered->failed", "store inventory",
                     "send pne-a PnSetupResponse", "send pne-b PnEstablishmentNotify",
                     "wait_registration->done", "outcome ok"}));
    EXPECT_EQ(msg(out, 3).setup_response().result().excluded(0).pne_id(), kB);
    EXPECT_EQ(msg(out, 4).establishment_notify().result().reason(), pb::AUTHENTICATION_FAILED);
    EXPECT_EQ(gw->routing_table().at(pn), Lines{kA});
}

TEST_F(GatewayRole, NotRegisteredEndsThePnWithTheServersReason) {
    to_wait_registration();
    const auto out = feed(kServer, registration(false, {}, {}, pb::NO_PNE_AUTHENTICATED));
    ASSERT_EQ(describe(out),
              (Lines{"pne-a answered->failed", "pne-b answered->failed",
                     "send pne-a PnSetupResponse", "send pne-b PnEstablishmentNotify",
                     "wait_registration->done", "outcome no pne authenticated"}));
    EXPECT_FALSE(msg(out, 2).setup_response().result().success());
    EXPECT_TRUE(gw->inventory().empty());
}

TEST_F(GatewayRole, RefusalBeforeAuthRequestEndsThePn) {
    open(setup_request(kA, pb::SETUP_ONE_TO_ONE));
    const auto out = feed(kServer, registration(false, {}, {kA}, pb::NO_PNE_AUTHENTICATED));
    ASSERT_EQ(describe(out), (Lines{"pne-a joined->failed", "send pne-a PnSetupResponse",
                                    "wait_auth_request->done", "outcome no pne authenticated"}));
    EXPECT_EQ(msg(out, 1).setup_response().result().reason(), pb::AUTHENTICATION_FAILED);
}

TEST_F(GatewayRole, RegistrationEarlyFromPanOrAfterTheEndIsIgnored) {
    to_wait_auth_request();
    expect_ignored(kServer, registration(true, {kA, kB}));  // success before authentication
    feed(kServer, auth_request({kA, kB}));
    expect_ignored(kServer, registration(true, {kA, kB}));  // in collect_auth
    feed(kA, auth_response(kA));
    feed(kB, auth_response(kB));
    expect_ignored(kA, registration(true, {kA, kB}));  // a server message from the PAN
    feed(kServer, registration(true, {kA, kB}));
    expect_ignored(kServer, registration(true, {kA, kB}));  // the PN has ended
}

// --- ErrorReport (any phase) -----------------------------------------------------------------

TEST_F(GatewayRole, ServerErrorReportEndsThePnWithItsReason) {
    open(setup_request(kA, pb::SETUP_ONE_TO_ONE));
    auto other = error(pb::DUPLICATE_PN);
    other.mutable_error()->set_pn_id("pn-other");
    expect_ignored(kServer, other);  // for no PN being established here
    const auto out = feed(kServer, error(pb::DUPLICATE_PN));
    ASSERT_EQ(describe(out), (Lines{"pne-a joined->failed", "send pne-a PnSetupResponse",
                                    "wait_auth_request->done", "outcome duplicate pn"}));
    EXPECT_EQ(nth<OutcomeEffect>(out, 3).detail, "server: test");
}

TEST_F(GatewayRole, PneErrorReportFailsItAndTheRestProceeds) {
    to_collect_joins();
    ASSERT_EQ(describe(feed(kB, error(pb::INTERNAL_ERROR))),
              (Lines{"pne-b invited->failed"} + kRegister));
}

// Once the aggregate has gone to the server, a PNE's report cannot change who is in the PN
// (the server may register it): it is refused, and the result tells the PNE.
TEST_F(GatewayRole, PneErrorReportAfterTheAggregateIsRefused) {
    to_wait_registration();
    expect_ignored(kB, error(pb::INTERNAL_ERROR));
    EXPECT_EQ(gw->member_state(pn, kB), MState::kAnswered);
    const auto out = feed(kServer, registration(true, {kA, kB}));
    EXPECT_EQ(describe(out),
              (Lines{"pne-a answered->member", "pne-b answered->member", "store inventory",
                     "send pne-a PnSetupResponse", "send pne-b PnEstablishmentNotify",
                     "wait_registration->done", "outcome ok"}));
    EXPECT_TRUE(msg(out, 4).establishment_notify().result().success());
}

// The PN Inventory kept must list the PNEs the routing table (and the PNEs' results) has.
TEST_F(GatewayRole, InventoryKeptAgreesWithRoutingWhenAMemberFailedLate) {
    to_wait_registration();
    feed(kB, error(pb::INTERNAL_ERROR));
    feed(kServer, registration(true, {kA, kB}));
    std::vector<std::string> listed;
    for (const auto& m : gw->inventory().at(pn).members()) listed.push_back(m.pne_id());
    EXPECT_EQ(listed, gw->routing_table().at(pn));
}

TEST_F(GatewayRole, PneErrorReportOrTlsFailureOutsideAnySessionIsOnlyCounted) {
    EXPECT_EQ(describe(feed(kA, error(pb::TLS_HANDSHAKE_FAILED))), Lines{});
    EXPECT_EQ(describe(gw->on_tls_failed(kB, now)), Lines{});
    EXPECT_EQ(gw->counters()[pb::TLS_HANDSHAKE_FAILED], 2u);
    EXPECT_EQ(gw->counters().ignored, 0u);
}

// --- Messages not for a PN GW, and PAN messages from the server --------------------------------

TEST_F(GatewayRole, MessagesForOtherRolesAreIgnoredAsUnexpected) {
    to_collect_auth();
    std::vector<pb::Envelope> envs(8);
    envs[0].mutable_setup_invite()->set_pn_id(pn);
    envs[1].mutable_setup_notify()->set_pn_id(pn);
    envs[2].mutable_pne_auth_request()->set_pn_id(pn);
    envs[3].mutable_setup_response()->mutable_result()->set_pn_id(pn);
    envs[4].mutable_establishment_notify()->mutable_result()->set_pn_id(pn);
    envs[5].mutable_registration_request()->set_pn_id(pn);
    envs[6].mutable_auth_response()->set_pn_id(pn);
    // envs[7]: no body (a newer peer's message type)
    for (const auto& env : envs) {
        SCOPED_TRACE(std::string(message_name(env)));
        expect_ignored(kA, env, true);
        expect_ignored(kServer, env, true);
    }
}

TEST_F(GatewayRole, PanMessagesFromTheServerAreIgnored) {
    to_collect_joins();
    pb::Envelope discovery;
    discovery.mutable_discovery_request()->set_entity_id(kServer);
    expect_ignored(kServer, discovery);
    expect_ignored(kServer, setup_request(kServer, pb::SETUP_ONE_TO_ONE));
    expect_ignored(kServer, join_response(kB));
    feed(kB, join_response(kB));
    feed(kServer, auth_request({kA, kB}));
    expect_ignored(kServer, auth_response(kA));
}

// --- Timers ----------------------------------------------------------------------------------

TEST_F(GatewayRole, JoinTimeoutFailsSilentInviteesAndRegistersTheRest) {
    to_collect_joins();
    EXPECT_EQ(describe(gw->on_timer(now + kJoinResponseTimeout - 1)), Lines{});
    ASSERT_EQ(describe(keep(gw->on_timer(now + kJoinResponseTimeout))),
              (Lines{"pne-b invited->failed"} + kRegister));
    EXPECT_EQ(gw->counters()[pb::TIMEOUT], 1u);
}

TEST_F(GatewayRole, JoinTimeoutWithNobodyJoinedEndsThePn) {
    gw_invite();
    feed(kA, join_response(kA, false));
    ASSERT_EQ(describe(keep(gw->on_timer(now + kJoinResponseTimeout))),
              (Lines{"pne-b invited->failed", "send pne-b PnEstablishmentNotify",
                     "collect_joins->done", "outcome declined"}));
}

TEST_F(GatewayRole, AuthRequestTimeoutEndsThePnAndTellsThePnes) {
    to_wait_auth_request();
    const auto out = keep(gw->on_timer(now + kServerResponseTimeout));
    ASSERT_EQ(
        describe(out),
        (Lines{"pne-a joined->failed", "pne-b joined->failed", "send pne-a PnSetupResponse",
               "send pne-b PnEstablishmentNotify", "wait_auth_request->done", "outcome timeout"}));
    EXPECT_EQ(msg(out, 2).setup_response().result().reason(), pb::TIMEOUT);
}

TEST_F(GatewayRole, PneAuthTimeoutFailsPendingPnesAndSendsTheAggregate) {
    to_collect_auth();
    feed(kA, auth_response(kA));
    const auto out = keep(gw->on_timer(now + kPneAuthResponseTimeout));
    ASSERT_EQ(describe(out), (Lines{"pne-b auth_pending->failed"} + kAggregate));
    EXPECT_EQ(msg(out, 1).auth_response().results(1).failure(), pb::TIMEOUT);
}

TEST_F(GatewayRole, RegistrationTimeoutEndsThePn) {
    to_wait_registration();
    ASSERT_EQ(
        describe(keep(gw->on_timer(now + kServerResponseTimeout))),
        (Lines{"pne-a answered->failed", "pne-b answered->failed", "send pne-a PnSetupResponse",
               "send pne-b PnEstablishmentNotify", "wait_registration->done", "outcome timeout"}));
}

// --- TLS and link callbacks --------------------------------------------------------------------

TEST_F(GatewayRole, TlsPskLookupByIdentity) {
    EXPECT_TRUE(*gw->tls_psk_for(preassigned_identity(kC)) == pre_key);
    EXPECT_EQ(gw->tls_psk_for(preassigned_identity(kA)), std::nullopt);
    EXPECT_EQ(gw->tls_psk_for(local_eukey_identity("pn-x", kA)), std::nullopt);
    EXPECT_EQ(gw->tls_psk_for("garbage"), std::nullopt);
}

TEST_F(GatewayRole, TlsIdentityNamingAnotherPeerClosesTheLink) {
    ASSERT_EQ(describe(gw->on_tls_established(kA, preassigned_identity(kC), now)),
              Lines{"close pne-a tls handshake failed"});
    EXPECT_EQ(gw->counters()[pb::TLS_HANDSHAKE_FAILED], 1u);
}

// A failed handshake names a PNE, but anyone can send that ClientHello: it changes no member's
// state. If the PNE stays silent, its deadline fails it with the handshake's reason.
TEST_F(GatewayRole, TlsFailureOfInviteeIsItsReasonIfItNeverAnswers) {
    to_collect_joins();
    ASSERT_EQ(describe(keep(gw->on_tls_failed(kB, now))), Lines{});
    EXPECT_EQ(gw->member_state(pn, kB), MState::kInvited);
    now += kJoinResponseTimeout;
    const auto out = keep(gw->on_timer(now));
    ASSERT_EQ(describe(out), (Lines{"pne-b invited->failed"} + kRegister));
    EXPECT_EQ(std::get<TransitionEffect>(out[0]).reason.rfind("tls handshake failed", 0), 0u)
        << std::get<TransitionEffect>(out[0]).reason;
}

TEST_F(GatewayRole, TlsFailureOfPendingPneIsItsReasonIfItNeverAnswers) {
    to_collect_auth();
    feed(kA, auth_response(kA));
    ASSERT_EQ(describe(keep(gw->on_tls_failed(kB, now))), Lines{});
    EXPECT_EQ(gw->member_state(pn, kB), MState::kAuthPending);
    now += kPneAuthResponseTimeout;
    const auto out = keep(gw->on_timer(now));
    ASSERT_EQ(describe(out), (Lines{"pne-b auth_pending->failed"} + kAggregate));
    EXPECT_EQ(msg(out, 1).auth_response().results(1).failure(), pb::TLS_HANDSHAKE_FAILED);
}

// Finding 6: one ClientHello with a wrong key for pne-c's identity, from anyone, while pne-c
// has its own working PSK-TLS link: pne-c stays in the PN, joins over its link and is told.
TEST_F(GatewayRole, ForgedTlsFailureLeavesAPneWithAWorkingTlsLinkInThePn) {
    make_gateway(false);
    ASSERT_EQ(describe(gw->on_tls_established(kC, preassigned_identity(kC), now)), Lines{});
    feed(kC, discovery(kC, false), Protection::kTls);
    discovered(kA);
    keep(gw->invite({kA, kC}, now));
    pn = gw->last_pn_id();
    ASSERT_EQ(gw->member_state(pn, kC), MState::kInvited);
    EXPECT_EQ(describe(keep(gw->on_tls_failed(kC, now))), Lines{});  // the forged handshake
    EXPECT_EQ(gw->member_state(pn, kC), MState::kInvited);
    feed(kA, join_response(kA));
    ASSERT_EQ(describe(feed(kC, join_response(kC), Protection::kTls)),
              (Lines{"pne-c invited->joined"} + kRegister));
    feed(kServer, auth_request({kA, kC}));
    feed(kA, auth_response(kA), Protection::kTls);
    feed(kC, auth_response(kC), Protection::kTls);
    const auto out = feed(kServer, registration(true, {kA, kC}));
    const auto* o = find_outcome(out);
    ASSERT_NE(o, nullptr);
    ASSERT_TRUE(o->success);
    std::vector<std::string> joined;
    for (const auto& p : o->pnes)
        if (p.joined) joined.push_back(p.pne_id);
    EXPECT_EQ(joined, (std::vector<std::string>{kA, kC}));
    // pne-c's result goes to it over its PSK-TLS link (not withheld as if it had none).
    bool told = false;
    for (const auto& e : out)
        if (const auto* sEff = std::get_if<SendEffect>(&e))
            told = told || (sEff->to == kC && sEff->msg.has_establishment_notify() &&
                            sEff->protection == Protection::kTls);
    EXPECT_TRUE(told);
}

// The same in clear: an ErrorReport under the name of a PNE that has a working PSK-TLS link on
// an insecure PAN (anyone can open a clear link and claim the name) changes nothing.
TEST_F(GatewayRole, ClearErrorReportUnderTheNameOfAPneWithTlsIsIgnored) {
    make_gateway(false);
    gw->on_tls_established(kC, preassigned_identity(kC), now);
    feed(kC, discovery(kC, false), Protection::kTls);
    discovered(kA);
    keep(gw->invite({kA, kC}, now));
    pn = gw->last_pn_id();
    const auto ignored = gw->counters().ignored;
    EXPECT_EQ(describe(feed(kC, error(pb::DECLINED))), Lines{});
    EXPECT_EQ(describe(feed(kC, join_response(kC, false))), Lines{});
    EXPECT_EQ(gw->member_state(pn, kC), MState::kInvited);
    EXPECT_EQ(gw->counters().ignored, ignored + 2);
    // Over its link the same decline counts.
    EXPECT_EQ(describe(feed(kC, join_response(kC, false), Protection::kTls)),
              Lines{"pne-c invited->failed"});
}

TEST_F(GatewayRole, ServerLinkDownEndsThePnWaitingForTheServer) {
    open(setup_request(kA, pb::SETUP_ONE_TO_ONE));
    ASSERT_EQ(describe(keep(gw->on_link_down(kServer, now))),
              (Lines{"pne-a joined->failed", "send pne-a PnSetupResponse",
                     "wait_auth_request->done", "outcome peer unreachable"}));
}

TEST_F(GatewayRole, ServerRefusingThePskEndsThePnAsGatewayAuthFailure) {
    to_wait_registration();
    const auto out = keep(gw->on_link_down(kServer, now, pb::GATEWAY_AUTHENTICATION_FAILED));
    ASSERT_EQ(describe(out).back(), "outcome gateway authentication failed");
    EXPECT_EQ(describe(out).at(4), "wait_registration->done");
}

TEST_F(GatewayRole, LinkDownOfPendingPneFailsItAndSendsTheAggregate) {
    to_collect_auth();
    feed(kA, auth_response(kA));
    ASSERT_EQ(describe(keep(gw->on_link_down(kB, now))),
              (Lines{"pne-b auth_pending->failed"} + kAggregate));
    EXPECT_EQ(gw->counters()[pb::PEER_UNREACHABLE], 1u);
}

TEST_F(GatewayRole, LinkDownOfJoinedPneKeepsItButWithholdsItsResult) {
    open(setup_request(kA, pb::SETUP_ONE_TO_ONE));
    EXPECT_EQ(describe(gw->on_link_down(kA, now)), Lines{});
    EXPECT_EQ(gw->member_state(pn, kA), MState::kJoined);
    ASSERT_EQ(describe(keep(gw->on_timer(now + kServerResponseTimeout))),
              (Lines{"pne-a joined->failed", "wait_auth_request->done", "outcome timeout"}));
}

// An invitee that dropped out (link down, ErrorReport) is no longer joining this PN, as after
// a decline, a TLS failure or a join timeout, so it may ask for a PN of its own.
TEST_F(GatewayRole, InviteeWhoseLinkWentDownMayStartItsOwnPn) {
    to_collect_joins();
    gw->on_link_down(kB, now);
    ASSERT_EQ(gw->member_state(pn, kB), MState::kFailed);
    const auto out = feed(kB, setup_request(kB, pb::SETUP_ONE_TO_ONE));
    EXPECT_EQ(describe(out).at(0), "none->collect_joins");
}

TEST_F(GatewayRole, InviteeThatReportedAnErrorMayStartItsOwnPn) {
    to_collect_joins();
    feed(kB, error(pb::INTERNAL_ERROR));
    ASSERT_EQ(gw->member_state(pn, kB), MState::kFailed);
    const auto out = feed(kB, setup_request(kB, pb::SETUP_ONE_TO_ONE));
    EXPECT_EQ(describe(out).at(0), "none->collect_joins");
}

// --- One full run of each flow: consistent transition chains -----------------------------------

TEST_F(GatewayRole, PneInitiatedRunHasConsistentTransitionChains) {
    to_wait_registration();
    feed(kServer, registration(true, {kA, kB}));
    expect_chains(transitions, pn,
                  {{"", kSessionChain},
                   {kA, {"none", "joined", "auth_pending", "answered", "member"}},
                   {kB, {"none", "invited", "joined", "auth_pending", "answered", "member"}}});
}

TEST_F(GatewayRole, GwInitiatedRunHasConsistentTransitionChains) {
    gw_invite();
    feed(kA, join_response(kA));
    const auto reg = feed(kB, join_response(kB));
    EXPECT_EQ(msg(reg, 1).registration_request().flow(), pb::FLOW_GW_INITIATED);
    feed(kServer, auth_request({kA, kB}));
    feed(kA, auth_response(kA));
    feed(kB, auth_response(kB));
    const auto out = feed(kServer, registration(true, {kA, kB}));
    EXPECT_EQ(describe(out).at(3), "send pne-a PnEstablishmentNotify");  // no initiator
    expect_chains(transitions, pn,
                  {{"", kSessionChain},
                   {kA, {"none", "invited", "joined", "auth_pending", "answered", "member"}},
                   {kB, {"none", "invited", "joined", "auth_pending", "answered", "member"}}});
}

}  // namespace
}  // namespace cpns
