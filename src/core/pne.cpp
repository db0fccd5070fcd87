#include "core/pne.hpp"

#include <algorithm>

#include "core/lifecycle.hpp"

namespace cpns {

Pne::Pne(PneConfig config, Random& random)
    : cfg_(std::move(config)), random_(random), neighbours_(cfg_.neighbour_ttl) {}

std::string_view Pne::to_string(State s) {
    static constexpr std::array<std::string_view, 5> kNames{
        "idle", "tls_before_join", "wait_auth_request", "tls_before_auth_response", "wait_result"};
    const auto i = static_cast<std::size_t>(s);
    return i < kNames.size() ? kNames[i] : "invalid";
}

void Pne::enter(Out& out, State to, Millis deadline, const std::string& reason) {
    const std::string_view from = to_string(state_);
    log(LogLevel::kDebug,
        "state " + std::string(from) + " -> " + std::string(to_string(to)) + " (" + reason + ")");
    out.push_back(TransitionEffect{"pne", cfg_.pne_id, s_.pn_id, cfg_.pne_id, std::string(from),
                                   std::string(to_string(to)), reason});
    state_ = to;
    s_.deadline = to == State::kIdle ? kNever : deadline;
}

bool Pne::accepts(State state, pb::Envelope::BodyCase body) {
    using B = pb::Envelope::BodyCase;
    switch (body) {
        case B::kDiscoveryRequest:
        case B::kDiscoveryResponse:
            return true;
        case B::kSetupNotify:
        case B::kSetupInvite:
            return state == State::kIdle;
        case B::kPneAuthRequest:
            return state == State::kWaitAuthRequest;
        case B::kSetupResponse:
        case B::kEstablishmentNotify:
            return state == State::kWaitAuthRequest || state == State::kTlsBeforeAuthResp ||
                   state == State::kWaitResult;
        case B::kError:
            return state != State::kIdle;
        case B::kLeaveResponse:  // lifecycle: about memberships, in any state
        case B::kChangeNotify:
            return true;
        default:
            return false;
    }
}

// The one refusal: an invitation while busy is declined (BUSY) unless it repeats the one
// being answered; anything else not legal in this state is counted and dropped.
void Pne::refuse(Out& out, const std::string& from, const pb::Envelope& env) {
    using B = pb::Envelope::BodyCase;
    const bool invitation =
        env.body_case() == B::kSetupNotify || env.body_case() == B::kSetupInvite;
    if (invitation) {
        const auto& pn = env.body_case() == B::kSetupNotify ? env.setup_notify().pn_id()
                                                            : env.setup_invite().pn_id();
        const auto& gw = env.body_case() == B::kSetupNotify ? env.setup_notify().gw_id()
                                                            : env.setup_invite().gw_id();
        if (gw == from && !(s_.pn_id == pn && s_.gw_id == from)) {
            decline(out, from, pn, pb::BUSY);
            return;
        }
    }
    ++counters_.ignored;
    bool for_a_pne = false;
    for (auto st : {State::kIdle, State::kTlsBeforeJoin, State::kWaitAuthRequest,
                    State::kTlsBeforeAuthResp, State::kWaitResult})
        for_a_pne = for_a_pne || accepts(st, env.body_case());
    if (!for_a_pne) counters_.count(pb::UNEXPECTED_MESSAGE);
    log(LogLevel::kDebug, std::string(message_name(env)) + " from " + from + " refused in state " +
                              std::string(to_string(state_)));
}

void Pne::log(LogLevel level, const std::string& text) const {
    if (cfg_.log) cfg_.log(level, "pne " + cfg_.pne_id + ": " + text);
}

void Pne::send(Out& out, const std::string& to, pb::Envelope env) {
    env.set_version(kProtocolVersion);
    env.set_sender_id(cfg_.pne_id);
    ++counters_.messages_out;
    // Before TLS is up only what the flow allows in clear leaves (setup, join, auth response
    // of a PNE that will not use TLS); the transport enforces kTls.
    const bool protect = tls_needed() && !tls_peer_.empty() && tls_peer_ == to;
    out.push_back(SendEffect{to, std::move(env), protect ? Protection::kTls : Protection::kClear});
}

bool Pne::tls_up_with(const std::string& peer, const std::string& identity) const {
    return tls_peer_ == peer && tls_identity_ == identity;
}

// On an insecure PAN a PNE needs a way to PSK-TLS: a LocalEUKey (enough UI) or a
// pre-assigned key.
bool Pne::can_protect_pan() const {
    return !tls_needed() || requests_local_eukey() || cfg_.preassigned_key.has_value();
}

pb::PneJoin Pne::make_join() {
    pb::PneJoin join;
    join.set_pne_id(cfg_.pne_id);
    *join.mutable_capabilities() = cfg_.capabilities;
    for (const auto& c : cfg_.contents) *join.add_contents() = c;
    s_.rand_pne = random_.bytes(kRandSize);
    join.set_rand_pne(to_field(s_.rand_pne));
    join.set_local_eukey_requested(requests_local_eukey());
    s_.join_digest = join_digest(join);
    return join;
}

PneContext Pne::context() const {
    PneContext ctx;
    ctx.pne_id = cfg_.pne_id;
    ctx.gw_id = s_.gw_id;
    ctx.pn_id = s_.pn_id;
    ctx.flow = s_.flow;
    ctx.role = s_.role;
    ctx.setup = s_.role == PneRole::kInitiator ? to_setup_kind(s_.setup_type) : SetupKind::kNone;
    if (s_.role == PneRole::kInitiator) ctx.invited = s_.invited;
    ctx.local_key_requested = requests_local_eukey();
    ctx.join_digest = s_.join_digest;
    return ctx;
}

PneEffects Pne::discover(Millis /*now*/) {
    Out out;
    pb::Envelope env;
    auto* m = env.mutable_discovery_request();
    m->set_entity_id(cfg_.pne_id);
    m->set_mode(cfg_.mode);
    for (const auto& [pn, _] : memberships_)
        if (static_cast<std::size_t>(m->pn_ids_size()) < kMaxPnsListed) m->add_pn_ids(pn);
    send(out, "*", std::move(env));
    return out;
}

// The first message of a PNE without enough UI on an insecure PAN waits for PSK-TLS with its
// pre-assigned key; everyone else sends it at once.
void Pne::begin_join(Out& out, pb::Envelope first, Millis now, const std::string& why) {
    const bool needs_pre_tls = tls_needed() && !requests_local_eukey();
    const std::string identity = preassigned_identity(cfg_.pne_id);
    if (needs_pre_tls && !tls_up_with(s_.gw_id, identity)) {
        s_.pending = std::move(first);
        enter(out, State::kTlsBeforeJoin, now + kTlsHandshakeTimeout,
              why + "; PSK-TLS with the pre-assigned key first");
        log(LogLevel::kInfo, "starting PSK-TLS with " + s_.gw_id + " (pre-assigned key)");
        out.push_back(StartTlsEffect{s_.gw_id, identity, *cfg_.preassigned_key});
        return;
    }
    send(out, s_.gw_id, std::move(first));
    enter(out, State::kWaitAuthRequest, now + kAuthRequestTimeout, why);
}

std::optional<std::pair<pb::FailureReason, std::string>> Pne::check_setup(
    const std::string& gw_id, pb::SetupType type, const std::vector<std::string>& invited) const {
    using R = std::pair<pb::FailureReason, std::string>;
    if (busy()) return R{pb::BUSY, "an establishment is already in progress"};
    if (memberships_.size() >= kMaxPnsPerPne)
        return R{pb::LIMIT_EXCEEDED, "this PNE is a member of as many PNs as it may be"};
    if (!valid_id(gw_id)) return R{pb::UNKNOWN_ENTITY, "invalid PN GW ID"};
    if (type == pb::SETUP_UNSPECIFIED) return R{pb::MALFORMED_MESSAGE, "no setup type"};
    if (type == pb::SETUP_INVITE_LIST && invited.empty())
        return R{pb::MALFORMED_MESSAGE, "invitation list is empty"};
    if (invited.size() > kMaxPnesPerPn - 1) return R{pb::LIMIT_EXCEEDED, "too many PNEs invited"};
    for (const auto& id : invited)
        if (!valid_id(id)) return R{pb::MALFORMED_MESSAGE, "invalid invited PNE ID"};
    if (!can_protect_pan())
        return R{pb::TLS_REQUIRED,
                 "PAN is insecure and this PNE has neither UI nor a pre-assigned key"};
    return std::nullopt;
}

PneEffects Pne::start_setup(const std::string& gw_id, pb::SetupType type,
                            std::vector<std::string> invited, Millis now) {
    Out out;
    if (type != pb::SETUP_INVITE_LIST) invited.clear();
    if (auto refused = check_setup(gw_id, type, invited)) {
        counters_.count(refused->first);
        log(LogLevel::kWarn, "cannot start PN setup: " + refused->second);
        out.push_back(OutcomeEffect{"", "", false, refused->first, refused->second, {}, {}, {}});
        return out;
    }
    s_ = Session{};
    s_.gw_id = gw_id;
    s_.flow = Flow::kPneInitiated;
    s_.role = PneRole::kInitiator;
    s_.setup_type = type;
    s_.invited = std::move(invited);
    pb::Envelope env;
    auto* m = env.mutable_setup_request();
    m->set_setup_type(type);
    for (const auto& id : s_.invited) m->add_invited_pne_ids(id);
    *m->mutable_join() = make_join();
    log(LogLevel::kInfo, "asking " + gw_id + " for a PN (" + std::string(pb::SetupType_Name(type)) +
                             (requests_local_eukey() ? ", LocalEUKey requested)" : ")"));
    begin_join(out, std::move(env), now, "PN Setup Request to " + gw_id);
    return out;
}

void Pne::handle_discovery(Out& out, const std::string& from, const pb::Envelope& env,
                           Protection protection, const Origin& origin, Millis now) {
    const bool is_request = env.has_discovery_request();
    const NeighbourVia via = origin.datagram                  ? NeighbourVia::kDatagram
                             : protection == Protection::kTls ? NeighbourVia::kTlsLink
                                                              : NeighbourVia::kClearLink;
    switch (neighbours_.record(from, env, via, origin.address, now)) {
        case NeighbourUpdate::kNotTheSender:
            ++counters_.ignored;
            return;
        case NeighbourUpdate::kEndpointConflict:
            log(LogLevel::kWarn,
                "discovery answer from " + from + " (" + std::string(cpns::to_string(via)) +
                    ") names another endpoint than the one kept for it (" +
                    neighbours_.entries().at(from).endpoint + "); keeping the known one");
            break;
        case NeighbourUpdate::kTableFull:
            counters_.count(pb::LIMIT_EXCEEDED);
            log(LogLevel::kWarn, "neighbour table full; " + from + " not recorded");
            break;
        case NeighbourUpdate::kKept:
        case NeighbourUpdate::kRecorded:
            break;
    }
    if (is_request) {
        pb::Envelope reply;
        auto* r = reply.mutable_discovery_response();
        r->set_entity_id(cfg_.pne_id);
        r->set_mode(cfg_.mode);
        for (const auto& [pn, _] : memberships_)
            if (static_cast<std::size_t>(r->pn_ids_size()) < kMaxPnsListed) r->add_pn_ids(pn);
        send(out, from, std::move(reply));
    }
}

void Pne::decline(Out& out, const std::string& to, const std::string& pn_id,
                  pb::FailureReason reason) {
    pb::Envelope reply;
    auto* r = reply.mutable_setup_notify_response();
    r->set_pn_id(pn_id);
    r->set_accept(false);
    r->set_decline_reason(reason);
    counters_.count(reason);
    send(out, to, std::move(reply));
}

// Only in kIdle (a busy PNE's refusal declines with BUSY).
void Pne::handle_invitation(Out& out, const std::string& from, const std::string& pn_id,
                            const std::string& gw_id, Flow flow, Millis now, bool rekey) {
    if (gw_id != from) {
        ++counters_.ignored;
        log(LogLevel::kWarn, "invitation from " + from + " names another PN GW; ignored");
        return;
    }
    if (!cfg_.accept_invitations) {
        log(LogLevel::kInfo, "declining invitation to " + pn_id);
        decline(out, from, pn_id, pb::DECLINED);
        return;
    }
    const auto held = memberships_.find(pn_id);
    if (rekey) {
        // Only a PN this PNE is in through this PN GW, with a LocalEUKey, can be re-keyed.
        const pb::FailureReason refusal =
            held == memberships_.end() || held->second.gw_id != from ? pb::NOT_A_MEMBER
            : !held->second.local_eukey || !requests_local_eukey()   ? pb::NO_LOCAL_EUKEY
                                                                     : pb::REASON_NONE;
        if (refusal != pb::REASON_NONE) {
            log(LogLevel::kWarn,
                "declining a re-key of " + pn_id + ": " + std::string(reason_name(refusal)));
            decline(out, from, pn_id, refusal);
            return;
        }
    } else if (held != memberships_.end()) {
        log(LogLevel::kWarn, "declining an invitation to " + pn_id + ": already a member");
        decline(out, from, pn_id, pb::ALREADY_A_MEMBER);
        return;
    } else if (memberships_.size() >= kMaxPnsPerPne) {
        log(LogLevel::kWarn,
            "cannot join " + pn_id + ": already a member of as many PNs as allowed");
        decline(out, from, pn_id, pb::LIMIT_EXCEEDED);
        return;
    }
    if (!can_protect_pan()) {
        log(LogLevel::kWarn, "cannot join " + pn_id + ": insecure PAN, no UI, no pre-assigned key");
        decline(out, from, pn_id, pb::TLS_REQUIRED);
        return;
    }
    s_ = Session{};
    s_.gw_id = from;
    s_.pn_id = pn_id;
    s_.flow = flow;
    s_.role = PneRole::kInvitee;
    s_.rekey = rekey;
    pb::Envelope reply;
    auto* r = reply.mutable_setup_notify_response();
    r->set_pn_id(pn_id);
    r->set_accept(true);
    *r->mutable_join() = make_join();
    log(LogLevel::kInfo,
        (rekey ? "accepting a re-key of " : "accepting invitation to ") + pn_id + " from " + from);
    begin_join(out, std::move(reply), now, "accepted the invitation of " + from);
}

KeyedHmac& Pne::eukey_mac() {
    if (!s_.eukey_mac) s_.eukey_mac.emplace(cfg_.eukey);
    return *s_.eukey_mac;
}

// Opens this PNE's LocalEUKey copy. False when the establishment ended here.
bool Pne::open_local_eukey(Out& out, const pb::PneAuthenticationRequest& m) {
    if (m.wrapped_local_eukey().empty()) {
        abort(out, pb::KEY_UNWRAP_FAILED, "no LocalEUKey copy in the Authentication Request", true);
        return false;
    }
    auto unwrap = [&](const std::string& copy) {
        return unwrap_local_eukey(eukey_mac(), Recipient::kPne, s_.pn_id, cfg_.pne_id, s_.gw_id,
                                  s_.rand_server, s_.rand_pne, bytes_of(copy));
    };
    auto key = unwrap(m.wrapped_local_eukey());
    // Within an EUKey rotation's grace the server adds a copy under the previous EUKey: a PNE
    // still on that key opens this one.
    if (!key && !m.wrapped_local_eukey_previous().empty()) {
        key = unwrap(m.wrapped_local_eukey_previous());
        if (key && key->is_zero()) {
            // The server's expiry notice: it knows this EUKey only as one rotated out whose
            // grace period has ended. Nothing secret was received; the device needs its new
            // key file.
            pb::Envelope env;
            auto* r = env.mutable_pne_auth_response();
            r->set_pn_id(s_.pn_id);
            r->set_pne_id(cfg_.pne_id);
            r->set_failure(pb::KEY_EXPIRED);
            send(out, s_.gw_id, std::move(env));
            finish(out, false, pb::KEY_EXPIRED,
                   "this PNE's EUKey was rotated and its grace period has ended: give the "
                   "device the key file `cpnsctl rotate` wrote");
            return false;
        }
    }
    if (!key) {
        // The copy was made under the EUKey the server holds for this PNE: if it does not
        // open, the two EUKeys differ, which is what hash_PNE would have shown too.
        pb::Envelope env;
        auto* r = env.mutable_pne_auth_response();
        r->set_pn_id(s_.pn_id);
        r->set_pne_id(cfg_.pne_id);
        r->set_failure(pb::AUTHENTICATION_FAILED);
        send(out, s_.gw_id, std::move(env));
        finish(out, false, pb::AUTHENTICATION_FAILED,
               "the LocalEUKey copy does not decrypt under this PNE's EUKey (EUKey differs "
               "from the CPNS Server's)");
        return false;
    }
    s_.local_eukey = std::move(*key);
    // A re-key's new LocalEUKey is kept only once its result verifies (accept_result).
    if (!s_.rekey) out.push_back(StoreLocalKeyEffect{s_.pn_id, s_.gw_id, *s_.local_eukey});
    return true;
}

// Only in kWaitAuthRequest.
void Pne::handle_auth_request(Out& out, const std::string& from,
                              const pb::PneAuthenticationRequest& m, Millis now) {
    if (from != s_.gw_id || (!s_.pn_id.empty() && s_.pn_id != m.pn_id())) {
        ++counters_.ignored;
        log(LogLevel::kDebug, "Authentication Request for " + m.pn_id() + " not expected; ignored");
        return;
    }
    s_.pn_id = m.pn_id();
    s_.rand_server.assign(m.rand_server().begin(), m.rand_server().end());
    if (requests_local_eukey()) {
        if (!open_local_eukey(out, m)) return;
        if (tls_needed() && s_.rekey &&
            tls_up_with(s_.gw_id, local_eukey_identity(s_.pn_id, cfg_.pne_id))) {
            // A re-key: hash_PNE goes inside the session of the LocalEUKey still in force; the
            // new one is proven when the PNE connects with it after the switch.
            log(LogLevel::kInfo, "re-key: hash_PNE inside the PSK-TLS session of the current key");
        } else if (tls_needed()) {
            enter(out, State::kTlsBeforeAuthResp, now + kTlsHandshakeTimeout,
                  "LocalEUKey received; PSK-TLS before hash_PNE");
            log(LogLevel::kInfo, "starting PSK-TLS with " + s_.gw_id + " (LocalEUKey)");
            out.push_back(StartTlsEffect{s_.gw_id, local_eukey_identity(s_.pn_id, cfg_.pne_id),
                                         *s_.local_eukey});
            return;
        }
    }
    send_auth_response(out, now);
}

void Pne::send_auth_response(Out& out, Millis now) {
    const PneContext ctx = context();
    s_.sk = derive_sk_pne(eukey_mac(), s_.rand_pne, s_.rand_server, ctx);
    s_.hash_pne = derive_hash_pne(eukey_mac(), s_.rand_pne, s_.rand_server, s_.sk, ctx);
    pb::Envelope env;
    auto* r = env.mutable_pne_auth_response();
    r->set_pn_id(s_.pn_id);
    r->set_pne_id(cfg_.pne_id);
    r->set_hash_pne(to_field(s_.hash_pne));
    send(out, s_.gw_id, std::move(env));
    enter(out, State::kWaitResult, now + kResultTimeout, "hash_PNE sent");
}

// The PN GW tells who else is in or out; the outcome carries it for the user.
static void add_others(PneEffects& out, const std::string& self, const pb::PnResult& r) {
    OutcomeEffect* found = nullptr;
    for (auto it = out.rbegin(); it != out.rend() && !found; ++it)
        found = std::get_if<OutcomeEffect>(&*it);
    if (!found) return;
    auto& o = *found;
    for (const auto& m : r.inventory().members())
        if (m.pne_id() != self) o.pnes.push_back(PneOutcome{m.pne_id(), true, pb::REASON_NONE});
    for (const auto& x : r.excluded())
        if (x.pne_id() != self) o.pnes.push_back(PneOutcome{x.pne_id(), false, x.reason()});
}

// In kWaitAuthRequest, kTlsBeforeAuthResp and kWaitResult; a success only in kWaitResult.
void Pne::handle_result(Out& out, const std::string& from, const pb::PnResult& r,
                        Protection protection) {
    // While PSK-TLS with the PN GW is up, a result in clear is not from it (the PN GW sends
    // through the session): a PAN attacker's replayed or forged notice must not end the run.
    const bool clear_beside_tls =
        tls_needed() && protection != Protection::kTls && tls_peer_ == from;
    if (from != s_.gw_id || r.pn_id() != s_.pn_id || clear_beside_tls) {
        ++counters_.ignored;
        return;
    }
    if (tls_needed() && protection != Protection::kTls && r.success()) {
        // On an insecure PAN a result with hash_server_PNE and the inventory must come in TLS.
        abort(out, pb::TLS_REQUIRED, "PN result arrived in clear on an insecure PAN", false);
        return;
    }
    if (!r.success()) {
        const auto reason = r.reason() == pb::REASON_NONE ? pb::INTERNAL_ERROR : r.reason();
        finish(out, false, reason, "PN GW reports: " + std::string(reason_name(reason)));
        add_others(out, cfg_.pne_id, r);
        return;
    }
    if (state_ != State::kWaitResult) {
        ++counters_.ignored;
        return;
    }
    accept_result(out, r);
}

// What the initiator asked for, checked against the registered inventory (authenticated by
// hash_server_PNE): this PN, this PN GW, this PNE among the members, and no member outside
// the setup type (1-1: none but the initiator; a list: only those listed).
std::optional<std::string> Pne::check_inventory(const pb::PnInventory& inv) const {
    if (inv.pn_id() != s_.pn_id || inv.gw_id() != s_.gw_id)
        return "the inventory names another PN or PN GW";
    bool self = false;
    for (const auto& m : inv.members()) {
        self = self || m.pne_id() == cfg_.pne_id;
        if (s_.role != PneRole::kInitiator || m.pne_id() == cfg_.pne_id) continue;
        if (s_.setup_type == pb::SETUP_ONE_TO_ONE) return "a 1-1 PN with another member";
        if (s_.setup_type == pb::SETUP_INVITE_LIST &&
            std::find(s_.invited.begin(), s_.invited.end(), m.pne_id()) == s_.invited.end())
            return "member " + m.pne_id() + " was not invited";
    }
    if (!self) return "this PNE is not a member of the inventory";
    return std::nullopt;
}

void Pne::accept_result(Out& out, const pb::PnResult& r) {
    PneContext ctx = context();
    ctx.inventory_digest = inventory_digest(r.inventory());
    const Hash expected =
        derive_hash_server_pne(eukey_mac(), s_.rand_pne, s_.rand_server, s_.sk, s_.hash_pne, ctx);
    withdraw_on_failure_ = true;  // either refusal below leaves a registration behind
    if (!ct_equal(expected, bytes_of(r.hash_server_pne()))) {
        abort(out, pb::SERVER_AUTHENTICATION_FAILED,
              "hash_server_PNE does not verify over the inventory received", true);
        return;
    }
    if (auto wrong = check_inventory(r.inventory())) {
        abort(out, pb::SETUP_VIOLATION, *wrong, true);
        return;
    }
    withdraw_on_failure_ = false;
    if (s_.rekey) {
        // The new LocalEUKey and SK_PNE replace the old ones (saved: the daemon saves on the
        // SessionKeyEffect and holds the confirmation behind it); the PN GW switches to the new
        // key when it gets the confirmation.
        auto held = memberships_.find(s_.pn_id);
        if (held == memberships_.end()) {  // removed while the re-key ran: nothing to re-key
            abort(out, pb::NOT_A_MEMBER, "no longer a member of the PN being re-keyed", true);
            return;
        }
        if (r.inventory().revision() > held->second.inventory.revision())
            held->second.inventory = r.inventory();
        held->second.local_eukey = s_.local_eukey;
        held->second.sk_pne = s_.sk;
        out.push_back(StoreLocalKeyEffect{s_.pn_id, s_.gw_id, *s_.local_eukey});
        out.push_back(SessionKeyEffect{s_.pn_id, cfg_.pne_id, s_.sk});
        pb::Envelope env;
        auto& ack = *env.mutable_change_notify_ack();
        ack.set_pn_id(s_.pn_id);
        ack.set_revision(r.inventory().revision());
        ack.set_rekeyed(true);
        send(out, s_.gw_id, std::move(env));
        log(LogLevel::kInfo, "re-keyed in " + s_.pn_id + ": new LocalEUKey, revision " +
                                 std::to_string(r.inventory().revision()));
        finish(out, true, pb::REASON_NONE, "", &r.inventory());
        return;
    }
    out.push_back(SessionKeyEffect{s_.pn_id, cfg_.pne_id, s_.sk});
    PneMembership mem;
    mem.pn_id = s_.pn_id;
    mem.gw_id = s_.gw_id;
    mem.inventory = r.inventory();
    mem.local_eukey = s_.local_eukey;
    mem.sk_pne = s_.sk;
    memberships_[s_.pn_id] = std::move(mem);
    ++counters_.established;
    log(LogLevel::kInfo, "joined " + s_.pn_id + ": CPNS Server authenticated, " +
                             std::to_string(r.inventory().members_size()) + " member(s)");
    finish(out, true, pb::REASON_NONE, "", &r.inventory());
    add_others(out, cfg_.pne_id, r);
}

void Pne::handle_error(Out& out, const std::string& from, const pb::ErrorReport& m) {
    // A report without a PN ID can only be about a request whose PN this PNE does not know
    // yet; once it knows its PN, a report must name it.
    if (from == s_.gw_id && m.pn_id() == s_.pn_id) {
        finish(out, false, m.reason(), "PN GW reports: " + m.detail());
    } else {
        ++counters_.ignored;
    }
}

void Pne::finish(Out& out, bool success, pb::FailureReason reason, std::string detail,
                 const pb::PnInventory* inventory) {
    // A failure always has a typed reason: an ErrorReport naming none (which no role sends) ends
    // the establishment as INTERNAL_ERROR, not as a failure "for no reason" (cpns-fuzz-pne).
    reason = outcome_reason(success, reason);
    // This PNE sent hash_PNE, so the server may have registered it, but it refuses the result
    // (its own check failed) or never got one: it withdraws, proven like a leave
    // (docs/protocol.md, "PN lifecycle"). A failure the PN GW reports is not withdrawn from.
    // A re-key is not withdrawn from: the PNE stays a member with its old LocalEUKey.
    const bool withdraw = !success && state_ == State::kWaitResult && !s_.pn_id.empty() &&
                          !s_.gw_id.empty() && withdraw_on_failure_ && !s_.rekey;
    withdraw_on_failure_ = false;
    const std::string withdraw_pn = s_.pn_id, withdraw_gw = s_.gw_id;
    if (!success) {
        counters_.count(reason);
        log(LogLevel::kWarn, "establishment of " + (s_.pn_id.empty() ? "PN" : s_.pn_id) +
                                 " failed: " + std::string(reason_name(reason)) +
                                 (detail.empty() ? "" : " (" + detail + ")"));
    }
    OutcomeEffect o;
    o.pn_id = s_.pn_id;
    o.success = success;
    o.reason = reason;
    o.detail = std::move(detail);
    if (inventory) o.inventory = *inventory;
    o.pnes.push_back(PneOutcome{cfg_.pne_id, success, reason});
    if (s_.rekey) o.operation = "rekey";
    enter(out, State::kIdle, kNever,
          success ? (s_.rekey ? "re-keyed" : "joined") : std::string(reason_name(reason)));
    out.push_back(std::move(o));
    s_ = Session{};  // wipes SK, LocalEUKey copies held by the session
    if (withdraw && !leave_ && !memberships_.count(withdraw_pn))
        start_withdraw(out, withdraw_pn, withdraw_gw, now_);
}

void Pne::abort(Out& out, pb::FailureReason reason, std::string detail, bool tell_gw) {
    if (tell_gw && !s_.gw_id.empty()) send(out, s_.gw_id, error_report(s_.pn_id, reason, detail));
    finish(out, false, reason, std::move(detail));
}

PneEffects Pne::on_message(const std::string& from, const pb::Envelope& env, Protection protection,
                           Millis now, const Origin& origin) {
    Out out;
    now_ = now;
    ++counters_.messages_in;
    if (origin.datagram && !env.has_discovery_request() && !env.has_discovery_response()) {
        ++counters_.ignored;  // a datagram carries Entity Discovery only
        return out;
    }
    if (accepts(state_, env.body_case()))
        dispatch(out, from, env, protection, origin, now);
    else
        refuse(out, from, env);
    return out;
}

// Runs the handler of a message that accepts() allows in the current state.
void Pne::dispatch(Out& out, const std::string& from, const pb::Envelope& env,
                   Protection protection, const Origin& origin, Millis now) {
    using B = pb::Envelope::BodyCase;
    switch (env.body_case()) {
        case B::kSetupNotify:
            return handle_invitation(out, from, env.setup_notify().pn_id(),
                                     env.setup_notify().gw_id(), Flow::kPneInitiated, now);
        case B::kSetupInvite:
            return handle_invitation(out, from, env.setup_invite().pn_id(),
                                     env.setup_invite().gw_id(), Flow::kGwInitiated, now,
                                     env.setup_invite().rekey());
        case B::kPneAuthRequest:
            return handle_auth_request(out, from, env.pne_auth_request(), now);
        case B::kSetupResponse:
            if (s_.role != PneRole::kInitiator) return refuse(out, from, env);
            // The initiator learns the PN ID from the Authentication Request; a failure before
            // that names the PN the PN GW allocated.
            if (s_.pn_id.empty() && state_ == State::kWaitAuthRequest && from == s_.gw_id &&
                !env.setup_response().result().success())
                s_.pn_id = env.setup_response().result().pn_id();
            return handle_result(out, from, env.setup_response().result(), protection);
        case B::kEstablishmentNotify:
            if (s_.role != PneRole::kInvitee) return refuse(out, from, env);
            return handle_result(out, from, env.establishment_notify().result(), protection);
        case B::kError:
            return handle_error(out, from, env.error());
        case B::kLeaveResponse:
            return handle_leave_response(out, from, env.leave_response(), now);
        case B::kChangeNotify:
            return handle_change_notify(out, from, env.change_notify().notice());
        default:  // discovery
            return handle_discovery(out, from, env, protection, origin, now);
    }
}

PneEffects Pne::on_tls_established(const std::string& peer, Millis now) {
    Out out;
    if (state_ == State::kTlsBeforeJoin && peer == s_.gw_id) {
        tls_peer_ = peer;
        tls_identity_ = preassigned_identity(cfg_.pne_id);
        log(LogLevel::kInfo, "PSK-TLS with " + peer + " established (pre-assigned key)");
        send(out, s_.gw_id, std::move(s_.pending));
        s_.pending.Clear();
        enter(out, State::kWaitAuthRequest, now + kAuthRequestTimeout,
              "PSK-TLS up (pre-assigned key); first message sent");
    } else if (state_ == State::kTlsBeforeAuthResp && peer == s_.gw_id) {
        tls_peer_ = peer;
        tls_identity_ = local_eukey_identity(s_.pn_id, cfg_.pne_id);
        log(LogLevel::kInfo, "PSK-TLS with " + peer + " established (LocalEUKey)");
        send_auth_response(out, now);
    } else {
        ++counters_.ignored;
    }
    return out;
}

PneEffects Pne::on_tls_failed(const std::string& peer, Millis /*now*/) {
    Out out;
    const bool had_session = tls_peer_ == peer;
    if (had_session) tls_peer_.clear(), tls_identity_.clear();
    // A handshake this PNE started failed, or the session its run relies on is gone: never
    // continue in clear.
    if ((state_ == State::kTlsBeforeJoin || state_ == State::kTlsBeforeAuthResp ||
         (had_session && busy())) &&
        peer == s_.gw_id) {
        // Never continue in clear: the establishment ends here.
        finish(out, false, pb::TLS_HANDSHAKE_FAILED, "PSK-TLS handshake with " + peer + " failed");
    }
    return out;
}

PneEffects Pne::on_link_down(const std::string& peer, Millis now) {
    Out out;
    neighbours_.unlink(peer, now);
    if (tls_peer_ == peer) tls_peer_.clear(), tls_identity_.clear();
    if (busy() && peer == s_.gw_id)
        finish(out, false, pb::PEER_UNREACHABLE, "link to " + peer + " went down");
    return out;
}

PneEffects Pne::on_timer(Millis now) {
    Out out;
    now_ = now;
    for (const auto& id : neighbours_.expire(now))
        log(LogLevel::kInfo, "neighbour " + id + " aged out: no PAN link and not heard for " +
                                 std::to_string(neighbours_.ttl()) + " ms");
    if (leave_ && now >= leave_->deadline) {
        const std::string pn = leave_->pn_id;
        const bool withdraw = leave_->withdraw;
        leave_.reset();
        finish_leave(out, pn, false, pb::TIMEOUT, "no answer from the PN GW", withdraw);
    }
    if (busy() && now >= s_.deadline) {
        const char* what = state_ == State::kWaitAuthRequest ? "Authentication Request"
                           : state_ == State::kWaitResult    ? "PN result"
                                                             : "PSK-TLS handshake";
        withdraw_on_failure_ = state_ == State::kWaitResult;  // the result may have been lost
        finish(out, false, pb::TIMEOUT, std::string("no ") + what + " from " + s_.gw_id);
    }
    return out;
}

pb::PneState Pne::export_state() const {
    pb::PneState st;
    st.set_pne_id(cfg_.pne_id);
    for (const auto& [pn, m] : memberships_) {
        auto* r = st.add_memberships();
        r->set_pn_id(pn);
        r->set_gw_id(m.gw_id);
        *r->mutable_inventory() = m.inventory;
        if (m.local_eukey) r->set_local_eukey(to_field(m.local_eukey->view()));
        r->set_sk_pne(to_field(m.sk_pne.view()));
    }
    return st;
}

bool Pne::import_state(const pb::PneState& st) {
    if (st.pne_id() != cfg_.pne_id) return false;
    std::map<std::string, PneMembership> mem;
    for (const auto& r : st.memberships()) {
        if (!valid_id(r.pn_id()) || r.sk_pne().size() != kKeySize ||
            (!r.local_eukey().empty() && r.local_eukey().size() != kKeySize))
            return false;
        PneMembership m;
        m.pn_id = r.pn_id();
        m.gw_id = r.gw_id();
        m.inventory = r.inventory();
        if (!r.local_eukey().empty()) m.local_eukey = SecretKey(bytes_of(r.local_eukey()));
        m.sk_pne = SecretKey(bytes_of(r.sk_pne()));
        mem[m.pn_id] = std::move(m);
    }
    memberships_ = std::move(mem);
    log(LogLevel::kInfo, "restored " + std::to_string(memberships_.size()) + " PN membership(s)");
    return true;
}

Millis Pne::next_deadline() const {
    const Millis d = busy() ? s_.deadline : kNever;
    return leave_ ? std::min(d, leave_->deadline) : d;
}

}  // namespace cpns
