// Role-level tests of the PNE (src/core/pne.hpp): the test plays the PN GW and the CPNS Server,
// drives the PNE into a state with real messages from its start, feeds ONE message, timer or
// TLS/link callback, and checks the exact effects and the new state.
#include <gtest/gtest.h>

#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/pne.hpp"

namespace cpns {
namespace {

const std::string kGw = "gw-1";
const std::string kOtherGw = "gw-2";
const std::string kMe = "pne-1";
const std::string kOther = "pne-2";  // another member of the PN
const std::string kPn = "pn-00000000a001";
const std::string kOtherPn = "pn-00000000b002";

enum class Ui { kYes, kNo };
enum class Pan { kSecure, kInsecure };
// How this PNE takes part: initiator (5.2.1.1), notified invitee (5.2.1.1), invited (5.2.1.2).
enum class As { kInitiator, kNotified, kInvited };
using State = Pne::State;

// One effect as a short line: its alternative and the fields that identify it.
std::string describe(const PneEffect& e) {
    return std::visit(
        Overloaded{
            [](const SendEffect& s) {
                return "send " + std::string(message_name(s.msg)) + " to " + s.to +
                       (s.protection == Protection::kTls ? " tls" : " clear");
            },
            [](const StartTlsEffect& t) { return "start_tls " + t.peer + " " + t.identity; },
            [](const StoreLocalKeyEffect& k) {
                return "store_local_key " + k.pn_id + " " + k.peer_id;
            },
            [](const SessionKeyEffect& k) { return "session_key " + k.pn_id + " " + k.pne_id; },
            [](const OutcomeEffect& o) {
                return "outcome " +
                       (o.success ? std::string("joined") : std::string(reason_name(o.reason)));
            },
            [](const TransitionEffect& t) { return "transition " + t.from + " -> " + t.to; },
            [](const MembershipEffect& m) {
                return "membership " + m.pn_id + " " + pb::NoticeKind_Name(m.kind);
            },
        },
        e);
}
std::vector<std::string> describe(const PneEffects& fx) {
    std::vector<std::string> out;
    for (const auto& e : fx) out.push_back(describe(e));
    return out;
}
using Lines = std::vector<std::string>;

std::string name(State s) {
    return std::string(Pne::to_string(s));
}

// The PN GW and the CPNS Server around one PNE.
class Harness {
    DeterministicRandom keys_{11};
    DeterministicRandom random_{12};

  public:
    const SecretKey eukey = keys_.key();
    const SecretKey pre = keys_.key();
    const SecretKey local = keys_.key();
    const Bytes rand_server = keys_.bytes(kRandSize);
    const Millis now = 1'000;
    std::vector<TransitionEffect> trace;  // every transition the PNE reported

    Harness(Ui ui, Pan pan, bool preassigned = true, bool accept = true) : ui_(ui == Ui::kYes) {
        PneConfig c;
        c.pne_id = kMe;
        c.eukey = eukey;
        if (preassigned) c.preassigned_key = pre;
        c.capabilities.set_device_type("headset");
        c.capabilities.set_enough_ui(ui_);
        c.pan_secure = pan == Pan::kSecure;
        c.accept_invitations = accept;
        pne_ = std::make_unique<Pne>(std::move(c), random_);
    }
    Pne& pne() { return *pne_; }
    State state() const { return pne_->state(); }
    // How the PN GW sends on the PAN: in TLS once a session is up.
    Protection gw_protection() const { return tls_ ? Protection::kTls : Protection::kClear; }

    PneEffects feed(const pb::Envelope& env, std::optional<Protection> p = std::nullopt,
                    const std::string& from = kGw) {
        return keep(pne_->on_message(from, env, p.value_or(gw_protection()), now));
    }
    PneEffects start(pb::SetupType type = pb::SETUP_ONE_TO_ONE,
                     std::vector<std::string> list = {}) {
        as_ = As::kInitiator;
        setup_ = type;
        invited_ = list;
        return keep(pne_->start_setup(kGw, type, std::move(list), now));
    }
    PneEffects invited(As as) {
        as_ = as;
        return feed(invitation(as, kPn));
    }
    PneEffects tls_established() {
        tls_ = true;
        return keep(pne_->on_tls_established(kGw, now));
    }
    void to_wait_auth_request(As as) {
        if (as == As::kInitiator)
            start();
        else
            invited(as);
        if (state() == State::kTlsBeforeJoin) tls_established();
        EXPECT_EQ(name(state()), "wait_auth_request");
    }
    void to_wait_result(As as) {
        to_wait_auth_request(as);
        feed(auth_request());
        if (state() == State::kTlsBeforeAuthResp) tls_established();
        EXPECT_EQ(name(state()), "wait_result");
    }

    // --- Messages of the PN GW ---------------------------------------------------------------
    static pb::Envelope invitation(As as, const std::string& pn, const std::string& gw = kGw) {
        pb::Envelope env;
        if (as == As::kInvited) env.mutable_setup_invite()->set_pn_id(pn);
        if (as == As::kInvited) env.mutable_setup_invite()->set_gw_id(gw);
        if (as != As::kInvited) env.mutable_setup_notify()->set_pn_id(pn);
        if (as != As::kInvited) env.mutable_setup_notify()->set_gw_id(gw);
        return env;
    }
    // The relayed Authentication Request, with this PNE's LocalEUKey copy when it asked for one.
    pb::Envelope auth_request(const std::string& pn = kPn) const {
        pb::Envelope env;
        auto* m = env.mutable_pne_auth_request();
        m->set_pn_id(pn);
        m->set_rand_server(to_field(rand_server));
        if (ui_)
            m->set_wrapped_local_eukey(to_field(wrap_local_eukey(eukey, Recipient::kPne, pn, kMe,
                                                                 kGw, rand_server, rand(), local)));
        return env;
    }
    // PnSetupResponse for the initiator, PnEstablishmentNotify for an invitee (or the other
    // kind when `wrong_kind`).
    pb::Envelope result(bool success, pb::FailureReason reason = pb::REASON_NONE,
                        const std::string& pn = kPn, bool wrong_kind = false) const {
        pb::PnResult r;
        r.set_pn_id(pn);
        r.set_success(success);
        if (success) {
            r.mutable_inventory()->set_pn_id(pn);
            r.mutable_inventory()->set_gw_id(kGw);
            r.mutable_inventory()->add_members()->set_pne_id(kMe);
            if (may_list_another_member()) r.mutable_inventory()->add_members()->set_pne_id(kOther);
            r.set_hash_server_pne(to_field(hash_server(r.inventory())));
        } else {
            r.set_reason(reason);
        }
        auto* x = r.add_excluded();
        x->set_pne_id("pne-3");
        x->set_reason(pb::DECLINED);
        pb::Envelope env;
        if ((as_ == As::kInitiator) != wrong_kind)
            *env.mutable_setup_response()->mutable_result() = r;
        else
            *env.mutable_establishment_notify()->mutable_result() = r;
        return env;
    }
    // The registered PN may list another member unless the initiator asked for 1-1 or for a
    // list without it (the server would not register one).
    bool may_list_another_member() const {
        if (as_ != As::kInitiator) return true;
        if (setup_ == pb::SETUP_ONE_TO_ONE) return false;
        return setup_ != pb::SETUP_INVITE_LIST ||
               std::find(invited_.begin(), invited_.end(), kOther) != invited_.end();
    }
    static pb::Envelope error(const std::string& pn, pb::FailureReason reason) {
        pb::Envelope env;
        env.mutable_error()->set_pn_id(pn);
        env.mutable_error()->set_reason(reason);
        return env;
    }

    // --- The server's side of the key schedule -------------------------------------------------
    PneContext context() const {
        PneContext ctx;
        ctx.pne_id = kMe;
        ctx.gw_id = kGw;
        ctx.pn_id = kPn;
        ctx.flow = as_ == As::kInvited ? Flow::kGwInitiated : Flow::kPneInitiated;
        ctx.role = as_ == As::kInitiator ? PneRole::kInitiator : PneRole::kInvitee;
        if (as_ == As::kInitiator) {
            ctx.setup = to_setup_kind(setup_);
            ctx.invited = invited_;
        }
        ctx.local_key_requested = ui_;
        ctx.join_digest = join_digest(join_);
        return ctx;
    }
    SecretKey sk() const { return derive_sk_pne(eukey, rand(), rand_server, context()); }
    Hash hash_pne() const { return derive_hash_pne(eukey, rand(), rand_server, sk(), context()); }
    Hash hash_server(const pb::PnInventory& inventory) const {
        const Hash h = hash_pne();
        PneContext ctx = context();
        ctx.inventory_digest = inventory_digest(inventory);
        return derive_hash_server_pne(eukey, rand(), rand_server, sk(), h, ctx);
    }

    ByteView rand() const { return bytes_of(rand_pne_); }

  private:
    // Records transitions and the join the PNE sent.
    PneEffects keep(PneEffects fx) {
        for (const auto& e : fx) {
            if (const auto* t = std::get_if<TransitionEffect>(&e)) trace.push_back(*t);
            if (const auto* s = std::get_if<SendEffect>(&e)) {
                if (s->msg.has_setup_request()) join_ = s->msg.setup_request().join();
                if (s->msg.has_setup_notify_response() && s->msg.setup_notify_response().accept())
                    join_ = s->msg.setup_notify_response().join();
                rand_pne_ = join_.rand_pne();
            }
        }
        return fx;
    }

    bool ui_;
    bool tls_ = false;
    As as_ = As::kNotified;
    pb::SetupType setup_ = pb::SETUP_UNSPECIFIED;
    std::vector<std::string> invited_;
    std::string rand_pne_;
    pb::PneJoin join_;  // as the PNE sent it
    std::unique_ptr<Pne> pne_;
};

// A harness whose PNE (a notified invitee) is in `s`: no UI for kTlsBeforeJoin, else enough
// UI; insecure PAN.
std::unique_ptr<Harness> in_state(State s) {
    auto h =
        std::make_unique<Harness>(s == State::kTlsBeforeJoin ? Ui::kNo : Ui::kYes, Pan::kInsecure);
    if (s == State::kTlsBeforeJoin) h->invited(As::kNotified);
    if (s == State::kWaitAuthRequest || s == State::kTlsBeforeAuthResp)
        h->to_wait_auth_request(As::kNotified);
    if (s == State::kTlsBeforeAuthResp) h->feed(h->auth_request());
    if (s == State::kWaitResult) h->to_wait_result(As::kNotified);
    EXPECT_EQ(name(h->state()), name(s));
    return h;
}
const State kBusy[] = {State::kTlsBeforeJoin, State::kWaitAuthRequest, State::kTlsBeforeAuthResp,
                       State::kWaitResult};
const State kAll[] = {State::kIdle, State::kTlsBeforeJoin, State::kWaitAuthRequest,
                      State::kTlsBeforeAuthResp, State::kWaitResult};

// Feeds `env` and checks the silent refusal: no effect, ignored + 1, same state.
void expect_ignored(Harness& h, const pb::Envelope& env, std::optional<Protection> p = std::nullopt,
                    const std::string& from = kGw) {
    SCOPED_TRACE(std::string(message_name(env)) + " in " + name(h.state()));
    const auto ignored = h.pne().counters().ignored;
    const State before = h.state();
    EXPECT_EQ(describe(h.feed(env, p, from)), Lines{});
    EXPECT_EQ(h.pne().counters().ignored, ignored + 1);
    EXPECT_EQ(name(h.state()), name(before));
}

template <class T>
const T& nth(const PneEffects& fx, std::size_t i) {
    return std::get<T>(fx.at(i));
}

// --- Accepted messages ---------------------------------------------------------------------

TEST(PneRole, DiscoveryRequestIsAnsweredWithThisPnesDiscoveryResponse) {
    Harness h(Ui::kYes, Pan::kInsecure);
    pb::Envelope env;
    env.mutable_discovery_request()->set_entity_id(kGw);
    env.mutable_discovery_request()->set_mode(pb::MODE_PN_GW);
    const auto fx = h.feed(env);
    ASSERT_EQ(describe(fx), Lines{"send EntityDiscoveryResponse to gw-1 clear"});
    EXPECT_EQ(nth<SendEffect>(fx, 0).msg.discovery_response().entity_id(), kMe);
    EXPECT_EQ(nth<SendEffect>(fx, 0).msg.discovery_response().mode(), pb::MODE_PNE);
    EXPECT_EQ(h.pne().neighbours().at(kGw).mode, pb::MODE_PN_GW);
    EXPECT_EQ(name(h.state()), "idle");
}

TEST(PneRole, DiscoveryResponseWhileBusyRecordsItsSenderOnly) {
    auto h = in_state(State::kWaitResult);
    pb::Envelope env;
    env.mutable_discovery_response()->set_entity_id("pne-2");
    env.mutable_discovery_response()->set_mode(pb::MODE_PNE);
    EXPECT_EQ(describe(h->feed(env, Protection::kClear, "pne-2")), Lines{});
    EXPECT_EQ(h->pne().neighbours().count("pne-2"), 1u);
    EXPECT_EQ(name(h->state()), "wait_result");
    expect_ignored(*h, env, Protection::kClear, "pne-7");  // not describing its sender
    EXPECT_EQ(h->pne().neighbours().count("pne-7"), 0u);
}

TEST(PneRole, SetupNotifyInIdleWithUiAcceptsInClearAndWaitsForAuthRequest) {
    Harness h(Ui::kYes, Pan::kInsecure);
    const auto fx = h.invited(As::kNotified);
    ASSERT_EQ(describe(fx), (Lines{"send PnSetupNotifyResponse to gw-1 clear",
                                   "transition idle -> wait_auth_request"}));
    const auto& r = nth<SendEffect>(fx, 0).msg.setup_notify_response();
    EXPECT_TRUE(r.accept());
    EXPECT_EQ(r.pn_id(), kPn);
    EXPECT_EQ(r.join().pne_id(), kMe);
    EXPECT_TRUE(r.join().local_eukey_requested());
    EXPECT_EQ(r.join().rand_pne().size(), kRandSize);
    EXPECT_EQ(nth<TransitionEffect>(fx, 1).pn_id, kPn);
    EXPECT_EQ(h.pne().next_deadline(), h.now + kAuthRequestTimeout);
}

TEST(PneRole, SetupInviteInIdleWithoutUiOnInsecurePanHoldsJoinAndStartsPreassignedTls) {
    Harness h(Ui::kNo, Pan::kInsecure);
    const auto fx = h.invited(As::kInvited);
    ASSERT_EQ(describe(fx), (Lines{"transition idle -> tls_before_join",
                                   "start_tls gw-1 " + preassigned_identity(kMe)}));
    EXPECT_TRUE(nth<StartTlsEffect>(fx, 1).psk == h.pre);
    EXPECT_EQ(h.pne().next_deadline(), h.now + kTlsHandshakeTimeout);
}

// Declined by the user (DECLINED), or no way to PSK-TLS on an insecure PAN (TLS_REQUIRED).
TEST(PneRole, InvitationInIdleIsDeclinedWhenRefusedOrWhenThePanCannotBeProtected) {
    Harness refuses(Ui::kYes, Pan::kInsecure, true, /*accept=*/false);
    Harness cannot(Ui::kNo, Pan::kInsecure, /*preassigned=*/false);
    for (auto [h, why] :
         {std::pair{&refuses, pb::DECLINED}, std::pair{&cannot, pb::TLS_REQUIRED}}) {
        const auto fx = h->invited(As::kInvited);
        ASSERT_EQ(describe(fx), Lines{"send PnSetupNotifyResponse to gw-1 clear"});
        EXPECT_FALSE(nth<SendEffect>(fx, 0).msg.setup_notify_response().accept());
        EXPECT_EQ(nth<SendEffect>(fx, 0).msg.setup_notify_response().decline_reason(), why);
        EXPECT_EQ(h->pne().counters()[why], 1u);
        EXPECT_EQ(name(h->state()), "idle");
    }
}

TEST(PneRole, InvitationInIdleNamingAnotherGatewayIsIgnored) {
    Harness h(Ui::kYes, Pan::kInsecure);
    expect_ignored(h, Harness::invitation(As::kNotified, kPn, kOtherGw));
}

TEST(PneRole, AuthRequestInWaitAuthRequestOpensLocalEuKeyAndStartsTls) {
    Harness h(Ui::kYes, Pan::kInsecure);
    h.to_wait_auth_request(As::kInvited);
    const auto fx = h.feed(h.auth_request());
    ASSERT_EQ(describe(fx), (Lines{"store_local_key " + kPn + " gw-1",
                                   "transition wait_auth_request -> tls_before_auth_response",
                                   "start_tls gw-1 " + local_eukey_identity(kPn, kMe)}));
    EXPECT_TRUE(nth<StoreLocalKeyEffect>(fx, 0).key == h.local);
    EXPECT_TRUE(nth<StartTlsEffect>(fx, 2).psk == h.local);
    EXPECT_EQ(h.pne().next_deadline(), h.now + kTlsHandshakeTimeout);
}

TEST(PneRole, AuthRequestOpensTheCopyUnderItsEuKeyWhenTheOtherIsUnderARotatedOne) {
    // EUKey rotation grace: the first copy is under the PNE's new EUKey (which this device
    // does not hold yet), the second under the one it holds.
    Harness h(Ui::kYes, Pan::kInsecure);
    h.to_wait_auth_request(As::kInvited);
    auto env = h.auth_request();
    auto* m = env.mutable_pne_auth_request();
    m->set_wrapped_local_eukey_previous(m->wrapped_local_eukey());
    m->set_wrapped_local_eukey(to_field(
        wrap_local_eukey(h.pre, Recipient::kPne, kPn, kMe, kGw, h.rand_server, h.rand(), h.local)));
    const auto fx = h.feed(env);
    ASSERT_EQ(describe(fx), (Lines{"store_local_key " + kPn + " gw-1",
                                   "transition wait_auth_request -> tls_before_auth_response",
                                   "start_tls gw-1 " + local_eukey_identity(kPn, kMe)}));
    EXPECT_TRUE(nth<StoreLocalKeyEffect>(fx, 0).key == h.local);
}

TEST(PneRole, AuthRequestWithAnExpiryNoticeUnderItsEuKeyEndsWithKeyExpired) {
    // After the grace period the server sends, under the rotated-out EUKey this device still
    // holds, 32 zero octets instead of the LocalEUKey.
    Harness h(Ui::kYes, Pan::kInsecure);
    h.to_wait_auth_request(As::kInvited);
    auto env = h.auth_request();
    auto* m = env.mutable_pne_auth_request();
    m->set_wrapped_local_eukey(to_field(
        wrap_local_eukey(h.pre, Recipient::kPne, kPn, kMe, kGw, h.rand_server, h.rand(), h.local)));
    m->set_wrapped_local_eukey_previous(to_field(wrap_local_eukey(
        h.eukey, Recipient::kPne, kPn, kMe, kGw, h.rand_server, h.rand(), SecretKey())));
    const auto fx = h.feed(env);
    ASSERT_EQ(describe(fx), (Lines{"send PneAuthenticationResponse to gw-1 clear",
                                   "transition wait_auth_request -> idle", "outcome key expired"}));
    EXPECT_EQ(nth<SendEffect>(fx, 0).msg.pne_auth_response().failure(), pb::KEY_EXPIRED);
    EXPECT_TRUE(nth<SendEffect>(fx, 0).msg.pne_auth_response().hash_pne().empty());
}

TEST(PneRole, AuthRequestOnSecurePanWithUiStoresKeyAndSendsHashPneInClear) {
    Harness h(Ui::kYes, Pan::kSecure);
    h.to_wait_auth_request(As::kInvited);
    const auto fx = h.feed(h.auth_request());
    ASSERT_EQ(describe(fx), (Lines{"store_local_key " + kPn + " gw-1",
                                   "send PneAuthenticationResponse to gw-1 clear",
                                   "transition wait_auth_request -> wait_result"}));
    const auto& r = nth<SendEffect>(fx, 1).msg.pne_auth_response();
    EXPECT_EQ(r.pne_id(), kMe);
    EXPECT_EQ(r.hash_pne(), to_field(h.hash_pne()));
    EXPECT_EQ(h.pne().next_deadline(), h.now + kResultTimeout);
}

TEST(PneRole, AuthRequestToInitiatorWithoutUiSendsHashPneInsidePreassignedTls) {
    Harness h(Ui::kNo, Pan::kInsecure);
    h.to_wait_auth_request(As::kInitiator);
    const auto fx = h.feed(h.auth_request());
    ASSERT_EQ(describe(fx), (Lines{"send PneAuthenticationResponse to gw-1 tls",
                                   "transition wait_auth_request -> wait_result"}));
    EXPECT_EQ(nth<SendEffect>(fx, 0).msg.pne_auth_response().hash_pne(), to_field(h.hash_pne()));
    EXPECT_EQ(nth<TransitionEffect>(fx, 1).pn_id, kPn);  // learnt from the request
}

TEST(PneRole, AuthRequestWithoutTheRequestedLocalEuKeyEndsWithKeyUnwrapFailed) {
    Harness h(Ui::kYes, Pan::kInsecure);
    h.to_wait_auth_request(As::kNotified);
    auto env = h.auth_request();
    env.mutable_pne_auth_request()->clear_wrapped_local_eukey();
    const auto fx = h.feed(env);
    ASSERT_EQ(describe(fx),
              (Lines{"send ErrorReport to gw-1 clear", "transition wait_auth_request -> idle",
                     "outcome key unwrap failed"}));
    EXPECT_EQ(nth<SendEffect>(fx, 0).msg.error().reason(), pb::KEY_UNWRAP_FAILED);
    EXPECT_EQ(nth<SendEffect>(fx, 0).msg.error().pn_id(), kPn);
}

TEST(PneRole, AuthRequestWithCopyNotOpeningUnderEuKeyAnswersAuthenticationFailed) {
    Harness h(Ui::kYes, Pan::kInsecure);
    h.to_wait_auth_request(As::kNotified);
    auto env = h.auth_request();
    env.mutable_pne_auth_request()->set_wrapped_local_eukey(to_field(
        wrap_local_eukey(h.pre, Recipient::kPne, kPn, kMe, kGw, h.rand_server, h.rand(), h.local)));
    const auto fx = h.feed(env);
    ASSERT_EQ(describe(fx),
              (Lines{"send PneAuthenticationResponse to gw-1 clear",
                     "transition wait_auth_request -> idle", "outcome authentication failed"}));
    EXPECT_EQ(nth<SendEffect>(fx, 0).msg.pne_auth_response().failure(), pb::AUTHENTICATION_FAILED);
    EXPECT_TRUE(nth<SendEffect>(fx, 0).msg.pne_auth_response().hash_pne().empty());
}

TEST(PneRole, AuthRequestFromAnotherGatewayOrForAnotherPnIsIgnored) {
    Harness h(Ui::kYes, Pan::kInsecure);
    h.to_wait_auth_request(As::kNotified);
    expect_ignored(h, h.auth_request(), Protection::kClear, kOtherGw);
    expect_ignored(h, h.auth_request(kOtherPn));
}

TEST(PneRole, SuccessSetupResponseInWaitResultVerifiesHashServerPneAndJoins) {
    Harness h(Ui::kNo, Pan::kInsecure);
    h.start(pb::SETUP_ALL);
    h.tls_established();  // the pre-assigned key
    h.feed(h.auth_request());
    ASSERT_EQ(name(h.state()), "wait_result");
    const auto fx = h.feed(h.result(true));
    ASSERT_EQ(describe(fx), (Lines{"session_key " + kPn + " pne-1",
                                   "transition wait_result -> idle", "outcome joined"}));
    EXPECT_TRUE(nth<SessionKeyEffect>(fx, 0).sk == h.sk());
    const auto& o = nth<OutcomeEffect>(fx, 2);
    EXPECT_EQ(o.pn_id, kPn);
    EXPECT_EQ(o.inventory.members_size(), 2);
    ASSERT_EQ(o.pnes.size(), 3u);  // itself, pne-2 joined, pne-3 declined
    EXPECT_TRUE(o.pnes[0].joined && o.pnes[1].joined && !o.pnes[2].joined);
    EXPECT_EQ(o.pnes[2].reason, pb::DECLINED);
    EXPECT_EQ(h.pne().counters().established, 1u);
    EXPECT_TRUE(h.pne().memberships().at(kPn).sk_pne == h.sk());
    EXPECT_FALSE(h.pne().memberships().at(kPn).local_eukey.has_value());
    EXPECT_EQ(h.pne().next_deadline(), kNever);
}

// The member list is authenticated: one the PN GW altered fails hash_server_PNE.
TEST(PneRole, InventoryAlteredByTheGatewayFailsServerAuthentication) {
    Harness h(Ui::kYes, Pan::kSecure);
    h.to_wait_result(As::kNotified);
    auto env = h.result(true);
    env.mutable_establishment_notify()
        ->mutable_result()
        ->mutable_inventory()
        ->add_members()
        ->set_pne_id("pne-9");
    EXPECT_EQ(describe(h.feed(env)),
              (Lines{"send ErrorReport to gw-1 clear", "transition wait_result -> idle",
                     "outcome server authentication failed", "send PnLeaveRequest to gw-1 clear"}));
    EXPECT_TRUE(h.pne().memberships().empty());
    EXPECT_TRUE(h.pne().leaving());  // it withdraws from what the server registered
}

// Setup fidelity at the initiator: a 1-1 PN handed back with another member is refused, even
// with a hash_server_PNE that verifies.
TEST(PneRole, InitiatorRefusesAnInventoryBeyondItsSetupType) {
    Harness h(Ui::kNo, Pan::kInsecure);
    h.to_wait_result(As::kInitiator);  // 1-1
    auto env = h.result(true);
    auto* r = env.mutable_setup_response()->mutable_result();
    r->mutable_inventory()->add_members()->set_pne_id(kOther);
    r->set_hash_server_pne(to_field(h.hash_server(r->inventory())));
    EXPECT_EQ(describe(h.feed(env)),
              (Lines{"send ErrorReport to gw-1 tls", "transition wait_result -> idle",
                     "outcome setup violation", "send PnLeaveRequest to gw-1 tls"}));
    EXPECT_TRUE(h.pne().memberships().empty());
    EXPECT_TRUE(h.pne().leaving());
}

TEST(PneRole, SuccessEstablishmentNotifyOnSecurePanJoinsWithLocalEuKey) {
    Harness h(Ui::kYes, Pan::kSecure);
    h.to_wait_result(As::kInvited);
    const auto fx = h.feed(h.result(true));
    ASSERT_EQ(describe(fx), (Lines{"session_key " + kPn + " pne-1",
                                   "transition wait_result -> idle", "outcome joined"}));
    ASSERT_TRUE(h.pne().memberships().at(kPn).local_eukey.has_value());
    EXPECT_TRUE(*h.pne().memberships().at(kPn).local_eukey == h.local);
}

TEST(PneRole, SuccessResultWithWrongHashServerPneEndsWithServerAuthenticationFailed) {
    Harness h(Ui::kYes, Pan::kInsecure);
    h.to_wait_result(As::kNotified);
    auto env = h.result(true);
    env.mutable_establishment_notify()->mutable_result()->set_hash_server_pne(
        to_field(h.hash_pne()));
    const auto fx = h.feed(env);
    ASSERT_EQ(describe(fx),
              (Lines{"send ErrorReport to gw-1 tls", "transition wait_result -> idle",
                     "outcome server authentication failed", "send PnLeaveRequest to gw-1 tls"}));
    EXPECT_EQ(nth<SendEffect>(fx, 0).msg.error().reason(), pb::SERVER_AUTHENTICATION_FAILED);
    // The withdrawal names the PN at its registered revision, proven under the EUKey.
    const auto& leave = nth<SendEffect>(fx, 3).msg.leave_request();
    EXPECT_EQ(leave.pn_id(), kPn);
    EXPECT_EQ(leave.revision(), 0u);
    EXPECT_EQ(leave.proof().size(), 32u);
    EXPECT_TRUE(h.pne().memberships().empty());
}

// With the LocalEUKey session up, a result in clear (success or failure) is not from the PN
// GW: it is refused and the run goes on; the real result still arrives through TLS.
TEST(PneRole, ResultInClearWhileTlsIsUpIsRefused) {
    Harness h(Ui::kYes, Pan::kInsecure);
    h.to_wait_result(As::kNotified);
    expect_ignored(h, h.result(true), Protection::kClear);
    expect_ignored(h, h.result(false, pb::AUTHENTICATION_FAILED), Protection::kClear);
    EXPECT_EQ(h.pne().state(), State::kWaitResult);
    const auto fx = h.feed(h.result(true), Protection::kTls);
    EXPECT_EQ(describe(fx).back(), "outcome joined");
}

TEST(PneRole, FailureSetupResponseInWaitAuthRequestEndsWithTheGatewaysReason) {
    Harness h(Ui::kYes, Pan::kInsecure);
    h.to_wait_auth_request(As::kInitiator);
    const auto fx = h.feed(h.result(false, pb::NO_PNE_AUTHENTICATED));
    ASSERT_EQ(describe(fx),
              (Lines{"transition wait_auth_request -> idle", "outcome no pne authenticated"}));
    EXPECT_EQ(nth<OutcomeEffect>(fx, 1).pn_id, kPn);       // the PN the PN GW had allocated
    EXPECT_EQ(nth<OutcomeEffect>(fx, 1).pnes.size(), 2u);  // itself and the excluded pne-3
}

TEST(PneRole, FailureEstablishmentNotifyEndsTlsBeforeAuthRespAndWaitResult) {
    auto h = in_state(State::kTlsBeforeAuthResp);
    EXPECT_EQ(describe(h->feed(h->result(false, pb::TIMEOUT))),
              (Lines{"transition tls_before_auth_response -> idle", "outcome timeout"}));
    h = in_state(State::kWaitResult);  // no reason given: internal error
    EXPECT_EQ(describe(h->feed(h->result(false, pb::REASON_NONE))),
              (Lines{"transition wait_result -> idle", "outcome internal error"}));
}

TEST(PneRole, SuccessResultBeforeHashPneWasSentIsIgnored) {
    Harness h(Ui::kYes, Pan::kSecure);
    h.to_wait_auth_request(As::kNotified);
    expect_ignored(h, h.result(true));
}

TEST(PneRole, ResultFromAnotherGatewayOrForAnotherPnIsIgnored) {
    auto h = in_state(State::kWaitResult);
    expect_ignored(*h, h->result(true), Protection::kTls, kOtherGw);
    expect_ignored(*h, h->result(false, pb::TIMEOUT, kOtherPn));
}

TEST(PneRole, ErrorReportFromGatewayEndsEveryBusyState) {
    for (State s : kBusy) {
        SCOPED_TRACE(name(s));
        auto h = in_state(s);
        const auto fx = h->feed(Harness::error(kPn, pb::BUSY));
        EXPECT_EQ(describe(fx), (Lines{"transition " + name(s) + " -> idle", "outcome busy"}));
    }
}

// An ErrorReport naming no reason (no role sends one; found by cpns-fuzz-pne) still ends with a
// typed failure: the outcome's success and reason always agree.
TEST(PneRole, ErrorReportNamingNoReasonEndsAsAnInternalError) {
    for (State s : kBusy) {
        SCOPED_TRACE(name(s));
        auto h = in_state(s);
        const auto fx = h->feed(Harness::error(kPn, pb::REASON_NONE));
        EXPECT_EQ(describe(fx),
                  (Lines{"transition " + name(s) + " -> idle", "outcome internal error"}));
    }
}

TEST(PneRole, ErrorReportWithoutPnIdEndsTheInitiatorBeforeItKnowsThePn) {
    Harness h(Ui::kNo, Pan::kInsecure);
    h.start();
    const auto fx = h.feed(Harness::error("", pb::LIMIT_EXCEEDED));
    EXPECT_EQ(describe(fx),
              (Lines{"transition tls_before_join -> idle", "outcome limit exceeded"}));
}

TEST(PneRole, ErrorReportForAnotherPnOrFromAnotherPeerIsIgnored) {
    auto h = in_state(State::kWaitResult);
    expect_ignored(*h, Harness::error(kOtherPn, pb::TIMEOUT));
    expect_ignored(*h, Harness::error(kPn, pb::TIMEOUT), Protection::kClear, "pne-2");
}

// --- Local commands, TLS and link callbacks, timers -----------------------------------------

TEST(PneRole, StartSetupWithUiSendsSetupRequestInClear) {
    Harness h(Ui::kYes, Pan::kInsecure);
    const auto fx = h.start(pb::SETUP_INVITE_LIST, {"pne-2"});
    ASSERT_EQ(describe(fx),
              (Lines{"send PnSetupRequest to gw-1 clear", "transition idle -> wait_auth_request"}));
    EXPECT_EQ(nth<SendEffect>(fx, 0).msg.setup_request().invited_pne_ids(0), "pne-2");
}

TEST(PneRole, TlsEstablishedInTlsBeforeJoinSendsTheHeldJoinInTls) {
    Harness h(Ui::kNo, Pan::kInsecure);
    h.start(pb::SETUP_ALL);
    const auto fx = h.tls_established();
    ASSERT_EQ(describe(fx), (Lines{"send PnSetupRequest to gw-1 tls",
                                   "transition tls_before_join -> wait_auth_request"}));
    EXPECT_EQ(nth<SendEffect>(fx, 0).msg.setup_request().setup_type(), pb::SETUP_ALL);
    EXPECT_FALSE(nth<SendEffect>(fx, 0).msg.setup_request().join().local_eukey_requested());
}

TEST(PneRole, TlsEstablishedInTlsBeforeAuthRespSendsHashPneInTls) {
    auto h = in_state(State::kTlsBeforeAuthResp);
    const auto fx = h->tls_established();
    ASSERT_EQ(describe(fx), (Lines{"send PneAuthenticationResponse to gw-1 tls",
                                   "transition tls_before_auth_response -> wait_result"}));
    EXPECT_EQ(nth<SendEffect>(fx, 0).msg.pne_auth_response().hash_pne(), to_field(h->hash_pne()));
}

TEST(PneRole, TlsFailedInEitherHandshakeStateEndsWithTlsHandshakeFailed) {
    for (State s : {State::kTlsBeforeJoin, State::kTlsBeforeAuthResp}) {
        SCOPED_TRACE(name(s));
        auto h = in_state(s);
        EXPECT_EQ(describe(h->pne().on_tls_failed(kOtherGw, h->now)), Lines{});
        EXPECT_EQ(describe(h->pne().on_tls_failed(kGw, h->now)),
                  (Lines{"transition " + name(s) + " -> idle", "outcome tls handshake failed"}));
    }
}

// In wait_result the run's LocalEUKey session is up: losing it ends the run (it never goes
// on in clear); without a session, a stray failure changes nothing.
TEST(PneRole, TlsFailureOfTheSessionARunReliesOnEndsIt) {
    auto h = in_state(State::kWaitResult);
    const auto ignored = h->pne().counters().ignored;
    EXPECT_EQ(describe(h->pne().on_tls_established(kGw, h->now)), Lines{});
    EXPECT_EQ(h->pne().counters().ignored, ignored + 1);
    EXPECT_EQ(describe(h->pne().on_tls_failed(kGw, h->now)),
              (Lines{"transition wait_result -> idle", "outcome tls handshake failed"}));
}

TEST(PneRole, TlsCallbacksOutsideTheHandshakeStatesChangeNothing) {
    for (State s : {State::kIdle, State::kWaitAuthRequest}) {
        SCOPED_TRACE(name(s));
        auto h = in_state(s);
        const auto ignored = h->pne().counters().ignored;
        EXPECT_EQ(describe(h->pne().on_tls_established(kGw, h->now)), Lines{});
        EXPECT_EQ(h->pne().counters().ignored, ignored + 1);
        EXPECT_EQ(describe(h->pne().on_tls_failed(kGw, h->now)), Lines{});
        EXPECT_EQ(name(h->state()), name(s));
    }
    auto h = in_state(State::kTlsBeforeJoin);  // a handshake with someone else
    EXPECT_EQ(describe(h->pne().on_tls_established(kOtherGw, h->now)), Lines{});
    EXPECT_EQ(name(h->state()), "tls_before_join");
}

TEST(PneRole, LinkDownToTheGatewayEndsEveryBusyStateWithPeerUnreachable) {
    for (State s : kBusy) {
        SCOPED_TRACE(name(s));
        auto h = in_state(s);
        EXPECT_EQ(describe(h->pne().on_link_down("pne-2", h->now)), Lines{});
        EXPECT_EQ(describe(h->pne().on_link_down(kGw, h->now)),
                  (Lines{"transition " + name(s) + " -> idle", "outcome peer unreachable"}));
    }
    auto idle = in_state(State::kIdle);
    EXPECT_EQ(describe(idle->pne().on_link_down(kGw, idle->now)), Lines{});
}

TEST(PneRole, TimerAtEachBusyStatesDeadlineEndsWithTimeout) {
    const Millis wait[] = {kTlsHandshakeTimeout, kAuthRequestTimeout, kTlsHandshakeTimeout,
                           kResultTimeout};
    for (std::size_t i = 0; i < std::size(kBusy); ++i) {
        SCOPED_TRACE(name(kBusy[i]));
        auto h = in_state(kBusy[i]);
        const Millis deadline = h->now + wait[i];
        EXPECT_EQ(h->pne().next_deadline(), deadline);
        EXPECT_EQ(describe(h->pne().on_timer(deadline - 1)), Lines{});
        // After hash_PNE (wait_result) the server may have registered this PNE: it withdraws,
        // and waits for the answer (docs/protocol.md, "PN lifecycle").
        const bool withdraws = kBusy[i] == State::kWaitResult;
        Lines expected{"transition " + name(kBusy[i]) + " -> idle", "outcome timeout"};
        if (withdraws) expected.push_back("send PnLeaveRequest to gw-1 tls");
        EXPECT_EQ(describe(h->pne().on_timer(deadline)), expected);
        EXPECT_EQ(h->pne().next_deadline(), withdraws ? deadline + kLeaveResponseTimeout : kNever);
        EXPECT_EQ(h->pne().leaving(), withdraws);
    }
    auto idle = in_state(State::kIdle);
    EXPECT_EQ(idle->pne().next_deadline(), kNever);
    EXPECT_EQ(describe(idle->pne().on_timer(kNever - 1)), Lines{});
}

// The pre-assigned session its run relies on is gone: the run ends, and hash_PNE never
// leaves in clear afterwards.
TEST(PneRole, HashPneNeverLeavesInClearOnInsecurePanAfterThePreassignedSessionFailed) {
    Harness h(Ui::kNo, Pan::kInsecure);
    h.to_wait_auth_request(As::kInitiator);
    EXPECT_EQ(describe(h.pne().on_tls_failed(kGw, h.now)),
              (Lines{"transition wait_auth_request -> idle", "outcome tls handshake failed"}));
    EXPECT_EQ(h.pne().state(), State::kIdle);
    for (const auto& line : describe(h.feed(h.auth_request(), Protection::kClear)))
        EXPECT_NE(line, "send PneAuthenticationResponse to gw-1 clear");
}

// Bounded state: a PNE that is a member of kMaxPnsPerPne PNs asks for no more and declines
// invitations with LIMIT_EXCEEDED.
TEST(PneRole, AtItsPnBoundAPneRefusesSetupAndDeclinesInvitations) {
    Harness h(Ui::kYes, Pan::kSecure);
    pb::PneState st;
    st.set_pne_id(kMe);
    for (std::size_t i = 0; i < kMaxPnsPerPne; ++i) {
        auto* m = st.add_memberships();
        m->set_pn_id("pn-" + std::to_string(i));
        m->set_gw_id(kGw);
        m->set_sk_pne(std::string(kKeySize, 'k'));
    }
    ASSERT_TRUE(h.pne().import_state(st));
    const auto refused = h.start(pb::SETUP_ALL);
    ASSERT_EQ(describe(refused), Lines{"outcome limit exceeded"});
    const auto fx = h.invited(As::kNotified);
    ASSERT_EQ(describe(fx), Lines{"send PnSetupNotifyResponse to gw-1 clear"});
    EXPECT_EQ(nth<SendEffect>(fx, 0).msg.setup_notify_response().decline_reason(),
              pb::LIMIT_EXCEEDED);
    EXPECT_EQ(h.pne().state(), State::kIdle);
}

// --- Refusals ---------------------------------------------------------------------------------

TEST(PneRole, IdleRefusesAuthRequestResultsAndErrorReport) {
    Harness h(Ui::kYes, Pan::kInsecure);
    expect_ignored(h, h.auth_request());
    expect_ignored(h, h.result(false, pb::TIMEOUT));  // Establishment Notify
    expect_ignored(h, h.result(false, pb::TIMEOUT, kPn, /*wrong_kind=*/true));  // Setup Response
    expect_ignored(h, Harness::error(kPn, pb::TIMEOUT));
    EXPECT_EQ(h.pne().counters()[pb::UNEXPECTED_MESSAGE], 0u);
}

TEST(PneRole, LateResultAfterTheEstablishmentEndedIsRefused) {
    auto h = in_state(State::kWaitResult);
    h->pne().on_timer(h->pne().next_deadline());
    expect_ignored(*h, h->result(true));
}

TEST(PneRole, AuthRequestOutsideWaitAuthRequestIsRefused) {
    for (State s : {State::kTlsBeforeJoin, State::kTlsBeforeAuthResp, State::kWaitResult}) {
        auto h = in_state(s);
        expect_ignored(*h, h->auth_request());
    }
}

TEST(PneRole, ResultsInTlsBeforeJoinAreRefused) {
    auto h = in_state(State::kTlsBeforeJoin);
    expect_ignored(*h, h->result(false, pb::TIMEOUT));
    expect_ignored(*h, h->result(false, pb::TIMEOUT, kPn, /*wrong_kind=*/true));
}

TEST(PneRole, ResultOfTheWrongKindIsRefused) {
    auto invitee = in_state(State::kWaitResult);  // PnSetupResponse to an invitee
    expect_ignored(*invitee, invitee->result(true, pb::REASON_NONE, kPn, /*wrong_kind=*/true));
    Harness initiator(Ui::kYes, Pan::kInsecure);  // PnEstablishmentNotify to the initiator
    initiator.to_wait_result(As::kInitiator);
    expect_ignored(initiator, initiator.result(true, pb::REASON_NONE, kPn, /*wrong_kind=*/true));
}

TEST(PneRole, InvitationToAnotherPnWhileBusyIsDeclinedBusy) {
    for (State s : kBusy)
        for (As as : {As::kNotified, As::kInvited}) {
            SCOPED_TRACE(name(s));
            auto h = in_state(s);
            const auto ignored = h->pne().counters().ignored;
            const auto fx = h->feed(Harness::invitation(as, kOtherPn), Protection::kClear);
            ASSERT_EQ(describe(fx), Lines{"send PnSetupNotifyResponse to gw-1 " +
                                          std::string(s == State::kWaitResult ? "tls" : "clear")});
            const auto& r = nth<SendEffect>(fx, 0).msg.setup_notify_response();
            EXPECT_EQ(r.pn_id(), kOtherPn);
            EXPECT_FALSE(r.accept());
            EXPECT_EQ(r.decline_reason(), pb::BUSY);
            EXPECT_EQ(h->pne().counters()[pb::BUSY], 1u);
            EXPECT_EQ(h->pne().counters().ignored, ignored);  // answered, not dropped
            EXPECT_EQ(name(h->state()), name(s));
        }
}

TEST(PneRole, RepeatedInvitationWhileBusyIsRefusedSilently) {
    for (State s : kBusy) {
        auto h = in_state(s);
        expect_ignored(*h, Harness::invitation(As::kNotified, kPn));  // the one being answered
        expect_ignored(*h, Harness::invitation(As::kInvited, kOtherPn, kOtherGw));  // gw_id lies
    }
}

TEST(PneRole, MessagesForOtherRolesAreRefusedAsUnexpectedInEveryState) {
    std::vector<pb::Envelope> foreign(8);
    foreign[0].mutable_setup_request()->set_setup_type(pb::SETUP_ONE_TO_ONE);
    foreign[1].mutable_setup_notify_response()->set_pn_id(kPn);
    foreign[2].mutable_pne_auth_response()->set_pn_id(kPn);
    foreign[3].mutable_registration_request()->set_pn_id(kPn);
    foreign[4].mutable_auth_request()->set_pn_id(kPn);
    foreign[5].mutable_auth_response()->set_pn_id(kPn);
    foreign[6].mutable_registration_response()->set_pn_id(kPn);
    // foreign[7]: no body (a newer peer's message type)
    for (State s : kAll) {
        auto h = in_state(s);
        for (const auto& env : foreign) expect_ignored(*h, env);
        EXPECT_EQ(h->pne().counters()[pb::UNEXPECTED_MESSAGE], foreign.size());
    }
}

// --- Whole runs -------------------------------------------------------------------------------

void expect_chain(const std::vector<TransitionEffect>& trace, const Lines& states) {
    ASSERT_EQ(trace.size() + 1, states.size());
    for (std::size_t i = 0; i < trace.size(); ++i) {
        SCOPED_TRACE(i);
        EXPECT_EQ(trace[i].from, states[i]);
        EXPECT_EQ(trace[i].to, states[i + 1]);
        EXPECT_FALSE(trace[i].reason.empty());
        EXPECT_EQ(trace[i].role, "pne");
        EXPECT_EQ(trace[i].entity, kMe);
        EXPECT_EQ(trace[i].subject, kMe);
    }
    EXPECT_EQ(trace.back().pn_id, kPn);
}

TEST(PneRole, FullPneInitiatedRunHasAConsistentTransitionChain) {
    Harness h(Ui::kNo, Pan::kInsecure);  // pre-assigned PSK-TLS before the PnSetupRequest
    h.start(pb::SETUP_INVITE_LIST, {"pne-2", "pne-4"});
    h.tls_established();
    h.feed(h.auth_request());
    const auto fx = h.feed(h.result(true));
    ASSERT_TRUE(find_outcome(fx) && find_outcome(fx)->success);
    expect_chain(h.trace, {"idle", "tls_before_join", "wait_auth_request", "wait_result", "idle"});
}

TEST(PneRole, FullGwInitiatedRunHasAConsistentTransitionChain) {
    Harness h(Ui::kYes, Pan::kInsecure);  // LocalEUKey PSK-TLS before hash_PNE
    h.invited(As::kInvited);
    h.feed(h.auth_request());
    h.tls_established();
    const auto fx = h.feed(h.result(true));
    ASSERT_TRUE(find_outcome(fx) && find_outcome(fx)->success);
    expect_chain(h.trace,
                 {"idle", "wait_auth_request", "tls_before_auth_response", "wait_result", "idle"});
}

}  // namespace
}  // namespace cpns
