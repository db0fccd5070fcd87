#include "core/gateway.hpp"

#include <algorithm>

#include "core/lifecycle.hpp"

namespace cpns {

Gateway::Gateway(GatewayConfig config, Random& random)
    : cfg_(std::move(config)), random_(random), neighbours_(cfg_.neighbour_ttl) {}

std::string_view Gateway::to_string(Phase p) {
    static constexpr std::array<std::string_view, 6> kNames{
        "none", "collect_joins", "wait_auth_request", "collect_auth", "wait_registration", "done"};
    const auto i = static_cast<std::size_t>(p);
    return i < kNames.size() ? kNames[i] : "invalid";
}

std::string_view Gateway::to_string(MemberState m) {
    static constexpr std::array<std::string_view, 7> kNames{
        "none", "invited", "joined", "auth_pending", "answered", "member", "failed"};
    const auto i = static_cast<std::size_t>(m);
    return i < kNames.size() ? kNames[i] : "invalid";
}

std::optional<Gateway::Phase> Gateway::phase(const std::string& pn_id) const {
    auto it = sessions_.find(pn_id);
    if (it == sessions_.end()) return std::nullopt;
    return it->second.phase;
}

std::optional<Gateway::MemberState> Gateway::member_state(const std::string& pn_id,
                                                          const std::string& pne_id) const {
    auto it = sessions_.find(pn_id);
    if (it == sessions_.end()) return std::nullopt;
    auto m = it->second.members.find(pne_id);
    if (m == it->second.members.end()) return std::nullopt;
    return m->second.state;
}

void Gateway::log(LogLevel level, const std::string& text) const {
    if (cfg_.log) cfg_.log(level, "gw " + cfg_.gw_id + ": " + text);
}

void Gateway::enter(Out& out, Session& s, Phase to, Millis deadline, const std::string& reason) {
    const std::string from(to_string(s.phase));
    log(LogLevel::kDebug,
        s.pn_id + ": state " + from + " -> " + std::string(to_string(to)) + " (" + reason + ")");
    out.push_back(
        TransitionEffect{"gw", cfg_.gw_id, s.pn_id, "", from, std::string(to_string(to)), reason});
    s.phase = to;
    s.deadline = to == Phase::kDone ? kNever : deadline;
}

void Gateway::enter(Out& out, const Session& s, Member& m, MemberState to,
                    const std::string& reason) {
    out.push_back(TransitionEffect{"gw", cfg_.gw_id, s.pn_id, m.pne_id,
                                   std::string(to_string(m.state)), std::string(to_string(to)),
                                   reason});
    m.state = to;
}

bool Gateway::pan_secure(const std::string& pne_id) const {
    auto it = cfg_.pan_links.find(pne_id);
    return it != cfg_.pan_links.end() ? it->second.pan_secure : cfg_.default_pan_secure;
}

void Gateway::send(Out& out, const std::string& to, pb::Envelope env, bool must_protect) {
    env.set_version(kProtocolVersion);
    env.set_sender_id(cfg_.gw_id);
    ++counters_.messages_out;
    Protection p = Protection::kClear;
    if (to != cfg_.server_id && to != "*" && !pan_secure(to) && (must_protect || tls_up(to)))
        p = Protection::kTls;
    out.push_back(SendEffect{to, std::move(env), p});
}

void Gateway::send_error(Out& out, const std::string& to, const std::string& pn_id,
                         pb::FailureReason reason, const std::string& detail) {
    send(out, to, error_report(pn_id, reason, detail));
}

std::string Gateway::new_pn_id() {
    for (;;) {
        std::string id = "pn-" + to_hex(random_.bytes(6));
        if (!sessions_.count(id) && !inventory_.count(id)) return id;
    }
}

const Gateway::Session* Gateway::session_of_pne(const std::string& pne_id,
                                                const std::string& pn_id) const {
    auto it = pne_session_.find(pne_id);
    if (it == pne_session_.end() || it->second != pn_id) return nullptr;
    auto s = sessions_.find(pn_id);
    return s == sessions_.end() ? nullptr : &s->second;
}

Gateway::Session* Gateway::session_of_pne(const std::string& pne_id, const std::string& pn_id) {
    return const_cast<Session*>(std::as_const(*this).session_of_pne(pne_id, pn_id));
}

void Gateway::fail_member(Out& out, Session& s, Member& m, pb::FailureReason reason,
                          const std::string& why) {
    if (m.state == MemberState::kFailed) return;
    // An invitee that drops out before joining is no longer joining this PN (it may ask for a
    // PN of its own); a member that had joined stays mapped until the PN ends.
    if (m.state == MemberState::kInvited) {
        auto p = pne_session_.find(m.pne_id);
        if (p != pne_session_.end() && p->second == s.pn_id) pne_session_.erase(p);
    }
    enter(out, s, m, MemberState::kFailed,
          std::string(reason_name(reason)) + (why.empty() ? "" : " (" + why + ")"));
    m.reason = reason;
    m.local_eukey.reset();
    counters_.count(reason);
    log(LogLevel::kWarn, m.pne_id + " excluded from " + s.pn_id + ": " +
                             std::string(reason_name(reason)) +
                             (why.empty() ? "" : " (" + why + ")"));
}

GatewayEffects Gateway::discover(Millis /*now*/) {
    Out out;
    pb::Envelope env;
    auto* m = env.mutable_discovery_request();
    m->set_entity_id(cfg_.gw_id);
    m->set_mode(cfg_.mode);
    m->set_endpoint(endpoint_);
    for (const auto& [pn, _] : inventory_)
        if (static_cast<std::size_t>(m->pn_ids_size()) < kMaxPnsListed) m->add_pn_ids(pn);
    send(out, "*", std::move(env));
    return out;
}

void Gateway::handle_discovery(Out& out, const std::string& from, const pb::Envelope& env,
                               Protection protection, Millis now, const Origin& origin) {
    const bool is_request = env.has_discovery_request();
    const NeighbourVia via = origin.datagram                  ? NeighbourVia::kDatagram
                             : protection == Protection::kTls ? NeighbourVia::kTlsLink
                                                              : NeighbourVia::kClearLink;
    switch (neighbours_.record(from, env, via, origin.address, now)) {
        case NeighbourUpdate::kNotTheSender:
            ++counters_.ignored;
            return;
        case NeighbourUpdate::kTableFull:
            counters_.count(pb::LIMIT_EXCEEDED);
            log(LogLevel::kWarn, "neighbour table full of better-trusted entries; " + from + " (" +
                                     std::string(cpns::to_string(via)) + ") not recorded");
            break;
        case NeighbourUpdate::kEndpointConflict:
            log(LogLevel::kWarn, "discovery message from " + from +
                                     " names another endpoint than " +
                                     "the one kept for it; keeping the known one");
            break;
        case NeighbourUpdate::kKept:
        case NeighbourUpdate::kRecorded:
            break;
    }
    if (is_request) {
        pb::Envelope reply;
        auto* r = reply.mutable_discovery_response();
        r->set_entity_id(cfg_.gw_id);
        r->set_mode(cfg_.mode);
        r->set_endpoint(endpoint_);
        for (const auto& [pn, members] : routing_)
            if (std::find(members.begin(), members.end(), from) != members.end() &&
                static_cast<std::size_t>(r->pn_ids_size()) < kMaxPnsListed)
                r->add_pn_ids(pn);
        send(out, from, std::move(reply));
    }
}

// The discovered PNE-mode neighbours other than `except` ("All" and an empty invitation).
std::vector<std::string> Gateway::live_pnes(const std::string& except, Millis now) const {
    std::vector<std::string> ids;
    for (const auto& [id, n] : neighbours_.entries())
        if (id != except && (n.mode == pb::MODE_PNE || n.mode == pb::MODE_BOTH) &&
            neighbours_.live(id, now))
            ids.push_back(id);
    return ids;
}

// Makes a member of each target and invites it (PN Setup Notify in 5.2.1.1 step 2, PN Setup
// Request/Invite in 5.2.1.2 steps 1-2); one that cannot be reached or is busy fails at once.
void Gateway::add_invitees(Out& out, Session& s, const std::vector<std::string>& targets,
                           Millis now) {
    for (const auto& id : targets) {
        Member& mem = s.members[id];
        mem.pne_id = id;
        mem.role = PneRole::kInvitee;
        if (!neighbours_.live(id, now)) {
            mem.reachable = false;
            const auto why = unreachable_reason(id);
            fail_member(out, s, mem, why,
                        why == pb::UNKNOWN_ENTITY ? "not discovered on the PAN"
                                                  : "its last PSK-TLS handshake failed");
            continue;
        }
        if (pne_session_.count(id)) {
            fail_member(out, s, mem, pb::BUSY, "joining another PN");
            continue;
        }
        enter(out, s, mem, MemberState::kInvited, "invitation sent");
        pne_session_[id] = s.pn_id;
        pb::Envelope env;
        if (s.flow == Flow::kPneInitiated) {
            auto* n = env.mutable_setup_notify();
            n->set_pn_id(s.pn_id);
            n->set_initiator_pne_id(s.initiator);
            n->set_gw_id(cfg_.gw_id);
        } else {
            env.mutable_setup_invite()->set_pn_id(s.pn_id);
            env.mutable_setup_invite()->set_gw_id(cfg_.gw_id);
            env.mutable_setup_invite()->set_rekey(s.rekey);
        }
        send(out, id, std::move(env));
    }
}

Gateway::Session& Gateway::open_session(Out& out, Session s, Millis now, const std::string& why) {
    auto [it, _] = sessions_.emplace(s.pn_id, std::move(s));
    enter(out, it->second, Phase::kCollectJoins, now + kJoinResponseTimeout, why);
    return it->second;
}

// Admission of a new establishment. Requests in clear name a sender nobody checked, so they
// may hold at most kMaxGwSessions - kGwSessionsReservedForAuthenticated sessions, and at most
// kMaxGwClearSessionsPerSource from one source: requests over PSK-TLS and the PN GW's own
// invitations always find room while clear ones fill theirs.
std::optional<std::pair<pb::FailureReason, std::string>> Gateway::admission(
    bool authenticated, const std::string& source) const {
    using R = std::pair<pb::FailureReason, std::string>;
    if (sessions_.size() >= kMaxGwSessions)
        return R{pb::LIMIT_EXCEEDED, "too many PNs being established"};
    if (inventory_.size() + sessions_.size() >= kMaxPnsPerGw)
        return R{pb::LIMIT_EXCEEDED, "this PN GW keeps as many PNs as it may"};
    if (authenticated) return std::nullopt;
    std::size_t clear = 0, from_source = 0;
    for (const auto& [pn, s] : sessions_) {
        if (s.authenticated) continue;
        ++clear;
        from_source += s.source == source;
    }
    if (clear >= kMaxGwSessions - kGwSessionsReservedForAuthenticated)
        return R{pb::LIMIT_EXCEEDED,
                 "too many PNs being established from requests in clear (PSK-TLS ones are "
                 "still taken)"};
    if (from_source >= kMaxGwClearSessionsPerSource)
        return R{pb::LIMIT_EXCEEDED, "too many PNs being established from " + source};
    return std::nullopt;
}

// Why a PN Setup Request must be refused before a session exists, if it must.
std::optional<std::pair<pb::FailureReason, std::string>> Gateway::check_setup_request(
    const std::string& from, const pb::PnSetupRequest& m, Protection protection,
    const std::string& source) const {
    using R = std::pair<pb::FailureReason, std::string>;
    if (m.join().pne_id() != from)
        return R{pb::MALFORMED_MESSAGE, "PNE ID differs from the sender"};
    if (!pan_secure(from) && !m.join().local_eukey_requested() && protection != Protection::kTls)
        return R{pb::TLS_REQUIRED, "PSK-TLS with the pre-assigned key required"};
    if (auto refused = admission(protection == Protection::kTls, source)) return refused;
    if (m.setup_type() == pb::SETUP_UNSPECIFIED) return R{pb::MALFORMED_MESSAGE, "no setup type"};
    return std::nullopt;
}

// 5.2.1.1 step 1 arrives; steps 2 and 4 follow. Only from a PNE in no session.
void Gateway::handle_setup_request(Out& out, const std::string& from, const pb::PnSetupRequest& m,
                                   Protection protection, Millis now, const Origin& origin) {
    const std::string source = origin.address.empty() ? from : origin.address;
    if (auto refused = check_setup_request(from, m, protection, source)) {
        counters_.count(refused->first);
        send_error(out, from, "", refused->first, refused->second);
        if (refused->first == pb::TLS_REQUIRED) {
            log(LogLevel::kWarn, "PN Setup Request from " + from + " in clear on an insecure PAN");
            out.push_back(CloseLinkEffect{from, pb::TLS_REQUIRED});
        }
        return;
    }
    Session fresh;
    fresh.pn_id = new_pn_id();
    fresh.flow = Flow::kPneInitiated;
    fresh.initiator = from;
    fresh.setup_type = m.setup_type();
    fresh.invited.assign(m.invited_pne_ids().begin(), m.invited_pne_ids().end());
    fresh.authenticated = protection == Protection::kTls;
    fresh.source = source;
    Session& s = open_session(out, std::move(fresh), now, "PN Setup Request from " + from);
    Member& init = s.members[from];
    init.pne_id = from;
    init.role = PneRole::kInitiator;
    init.join = m.join();
    enter(out, s, init, MemberState::kJoined, "initiator");
    pne_session_[from] = s.pn_id;

    std::vector<std::string> targets;
    if (m.setup_type() == pb::SETUP_ALL) {
        targets = live_pnes(from, now);
    } else if (m.setup_type() == pb::SETUP_INVITE_LIST) {
        for (const auto& id : s.invited)
            if (id != from && std::find(targets.begin(), targets.end(), id) == targets.end())
                targets.push_back(id);
    }
    if (targets.size() + 1 > kMaxPnesPerPn) targets.resize(kMaxPnesPerPn - 1);
    log(LogLevel::kInfo, "PN Setup Request from " + from + " (" +
                             std::string(pb::SetupType_Name(m.setup_type())) + "): allocated " +
                             s.pn_id + ", notifying " + std::to_string(targets.size()) + " PNE(s)");
    add_invitees(out, s, targets, now);
    maybe_register(out, s, now);
}

// 5.2.1.2 steps 1-2.
GatewayEffects Gateway::invite(std::vector<std::string> pne_ids, Millis now) {
    Out out;
    last_pn_id_.clear();
    auto fail_now = [&](pb::FailureReason r, const std::string& why) {
        counters_.count(r);
        log(LogLevel::kWarn, "cannot invite: " + why);
        out.push_back(OutcomeEffect{"", "", false, r, why, {}, {}, {}});
        return out;
    };
    if (auto refused = admission(true, "")) return fail_now(refused->first, refused->second);
    if (pne_ids.empty()) pne_ids = live_pnes("", now);
    std::sort(pne_ids.begin(), pne_ids.end());
    pne_ids.erase(std::unique(pne_ids.begin(), pne_ids.end()), pne_ids.end());
    if (pne_ids.empty()) return fail_now(pb::UNKNOWN_ENTITY, "no PNE to invite (run discovery)");
    if (pne_ids.size() > kMaxPnesPerPn) return fail_now(pb::LIMIT_EXCEEDED, "too many PNEs");
    for (const auto& id : pne_ids)
        if (!valid_id(id)) return fail_now(pb::MALFORMED_MESSAGE, "invalid PNE ID " + id);

    Session fresh;
    fresh.pn_id = new_pn_id();
    fresh.flow = Flow::kGwInitiated;
    last_pn_id_ = fresh.pn_id;
    log(LogLevel::kInfo,
        "inviting " + std::to_string(pne_ids.size()) + " PNE(s) into " + fresh.pn_id);
    Session& s = open_session(out, std::move(fresh), now, "invitation by the PN GW");
    add_invitees(out, s, pne_ids, now);
    maybe_register(out, s, now);
    return out;
}

// Only in kCollectJoins.
void Gateway::handle_join_response(Out& out, const std::string& from,
                                   const pb::PnSetupNotifyResponse& m, Protection protection,
                                   Millis now) {
    Session& s = *session_of_pne(from, m.pn_id());
    Member& mem = s.members.at(from);
    if (mem.state != MemberState::kInvited) {
        ++counters_.ignored;  // duplicate
        return;
    }
    if (!m.accept()) {
        const auto r = m.decline_reason() == pb::REASON_NONE ? pb::DECLINED : m.decline_reason();
        fail_member(out, s, mem, r, "answered the invitation with no");
    } else if (m.join().pne_id() != from) {
        fail_member(out, s, mem, pb::MALFORMED_MESSAGE, "PNE ID differs from the sender");
    } else if (!pan_secure(from) && !m.join().local_eukey_requested() &&
               protection != Protection::kTls) {
        fail_member(out, s, mem, pb::TLS_REQUIRED, "join in clear on an insecure PAN");
        out.push_back(CloseLinkEffect{from, pb::TLS_REQUIRED});
    } else {
        mem.join = m.join();
        enter(out, s, mem, MemberState::kJoined, "accepted the invitation");
    }
    maybe_register(out, s, now);
}

// Step 4 (5.2.1.1) / 5 (5.2.1.2) once every invitation is answered.
void Gateway::maybe_register(Out& out, Session& s, Millis now) {
    if (s.phase != Phase::kCollectJoins) return;
    for (const auto& [id, m] : s.members)
        if (m.state == MemberState::kInvited) return;
    std::size_t joined = 0;
    for (const auto& [id, m] : s.members) joined += m.state == MemberState::kJoined;
    if (joined == 0) {
        pb::FailureReason reason = pb::DECLINED;
        for (const auto& [id, m] : s.members)
            if (m.reason != pb::REASON_NONE) {
                reason = m.reason;
                break;
            }
        conclude(out, s, false, reason, "no PNE accepted", nullptr, now);
        return;
    }
    if ((s.add || s.rekey) && !inventory_.count(s.pn_id)) {
        // The PN ended while the new PNEs were joining (the server dissolved it).
        conclude(out, s, false, pb::UNKNOWN_PN, "the PN ended meanwhile", nullptr, now);
        return;
    }
    pb::Envelope env;
    auto* r = env.mutable_registration_request();
    r->set_pn_id(s.pn_id);
    r->mutable_gw()->set_gw_id(cfg_.gw_id);
    *r->mutable_gw()->mutable_capabilities() = cfg_.capabilities;
    *r->mutable_gw()->mutable_subscription() = cfg_.subscription;
    r->set_flow(s.flow == Flow::kGwInitiated ? pb::FLOW_GW_INITIATED : pb::FLOW_PNE_INITIATED);
    r->set_setup_type(s.setup_type);
    r->set_add(s.add);
    r->set_rekey(s.rekey);
    r->set_revision(s.revision);
    for (const auto& id : s.invited) r->add_invited_pne_ids(id);
    std::vector<std::string> route;
    if (s.add || s.rekey)  // the members already in the PN stay reachable meanwhile
        for (const auto& m : inventory_[s.pn_id].members()) route.push_back(m.pne_id());
    for (const auto& [id, m] : s.members) {
        if (m.state != MemberState::kJoined) continue;
        auto* p = r->add_pnes();
        *p->mutable_join() = m.join;
        p->set_role(m.role == PneRole::kInitiator ? pb::ROLE_INITIATOR : pb::ROLE_INVITEE);
        if (!s.rekey) route.push_back(id);
    }
    routing_[s.pn_id] = std::move(route);  // routing table entry for relaying (steps 6-7)
    log(LogLevel::kInfo,
        "PN Registration Request for " + s.pn_id + " with " + std::to_string(joined) + " PNE(s)");
    send(out, cfg_.server_id, std::move(env));
    enter(out, s, Phase::kWaitAuthRequest, now + kServerResponseTimeout,
          std::to_string(joined) + " PNE(s) joined; PN Registration Request sent");
}

// Relays the Authentication Request to one joined member with its own LocalEUKey copy,
// keeping the PN GW's copy. False when the member failed here.
bool Gateway::relay_auth_request(Out& out, Session& s, Member& mem,
                                 const pb::AuthenticationRequest& m,
                                 const pb::WrappedKeyPair* keys) {
    pb::Envelope env;
    auto* r = env.mutable_pne_auth_request();
    r->set_pn_id(s.pn_id);
    r->set_rand_server(m.rand_server());
    if (keys) {
        auto unwrap = [&](const std::string& copy) {
            return unwrap_local_eukey(cfg_.eukey, Recipient::kGw, s.pn_id, mem.pne_id, cfg_.gw_id,
                                      bytes_of(m.rand_server()), bytes_of(mem.join.rand_pne()),
                                      bytes_of(copy));
        };
        auto key = unwrap(keys->for_gw());
        // Within an EUKey rotation's grace the server adds a copy under our previous EUKey.
        if (!key && !keys->for_gw_previous().empty()) key = unwrap(keys->for_gw_previous());
        if (!key) {
            fail_member(out, s, mem, pb::KEY_UNWRAP_FAILED, "PN GW copy does not decrypt");
            return false;
        }
        mem.local_eukey = std::move(*key);
        // A re-key's new LocalEUKey is kept only once the PNE confirms it (switch_key).
        if (!s.rekey) out.push_back(StoreLocalKeyEffect{s.pn_id, mem.pne_id, *mem.local_eukey});
        r->set_wrapped_local_eukey(keys->for_pne());  // only this PNE's own copies
        r->set_wrapped_local_eukey_previous(keys->for_pne_previous());
    } else if (mem.join.local_eukey_requested()) {
        fail_member(out, s, mem, pb::KEY_UNWRAP_FAILED, "server sent no LocalEUKey");
        return false;
    }
    enter(out, s, mem, MemberState::kAuthPending, "Authentication Request relayed");
    send(out, mem.pne_id, std::move(env));
    return true;
}

// Steps 5-7 (5.2.1.1) / 6-8 (5.2.1.2). Only in kWaitAuthRequest.
void Gateway::handle_auth_request(Out& out, const pb::AuthenticationRequest& m, Millis now) {
    Session& s = sessions_.at(m.pn_id());
    for (const auto& x : m.excluded()) {
        auto mi = s.members.find(x.pne_id());
        if (mi != s.members.end())
            fail_member(out, s, mi->second, x.reason(), "refused by the server");
    }
    std::map<std::string, const pb::WrappedKeyPair*> keys;
    for (const auto& k : m.local_eukeys()) keys[k.pne_id()] = &k;
    for (const auto& pne : m.pne_ids()) {
        auto mi = s.members.find(pne);
        if (mi == s.members.end() || mi->second.state != MemberState::kJoined) continue;
        auto k = keys.find(pne);
        relay_auth_request(out, s, mi->second, m, k == keys.end() ? nullptr : k->second);
    }
    for (auto& [id, mem] : s.members)
        if (mem.state == MemberState::kJoined)
            fail_member(out, s, mem, pb::UNKNOWN_ENTITY,
                        "not in the server's Authentication Request");
    enter(out, s, Phase::kCollectAuth, now + kPneAuthResponseTimeout,
          "Authentication Request relayed");
    maybe_send_aggregate(out, s, now);
}

// Only in kCollectAuth.
void Gateway::handle_pne_auth_response(Out& out, const std::string& from,
                                       const pb::PneAuthenticationResponse& m,
                                       Protection protection, Millis now) {
    Session& s = *session_of_pne(from, m.pn_id());
    Member& mem = s.members.at(from);
    if (m.pne_id() != from || mem.state != MemberState::kAuthPending) {
        ++counters_.ignored;
        return;
    }
    if (m.failure() != pb::REASON_NONE) {
        fail_member(out, s, mem, m.failure(), "reported by the PNE");
    } else if (!pan_secure(from) && protection != Protection::kTls) {
        fail_member(out, s, mem, pb::TLS_REQUIRED, "hash_PNE arrived in clear on an insecure PAN");
        out.push_back(CloseLinkEffect{from, pb::TLS_REQUIRED});
    } else if (m.hash_pne().size() != kHashSize) {
        fail_member(out, s, mem, pb::MALFORMED_MESSAGE, "hash_PNE has the wrong size");
    } else {
        mem.hash_pne = m.hash_pne();
        enter(out, s, mem, MemberState::kAnswered, "hash_PNE received");
    }
    maybe_send_aggregate(out, s, now);
}

// After a member failed: register what is left, or send the aggregate. maybe_register() may
// conclude the session (no PNE left), which erases it: look it up again before going on.
void Gateway::settle_after_failure(Out& out, const std::string& pn_id, Millis now) {
    // A copy on purpose: `pn_id` may be the session's own string, erased below.
    const std::string pn = pn_id;  // NOLINT(performance-unnecessary-copy-initialization)
    auto it = sessions_.find(pn);
    if (it == sessions_.end()) return;
    maybe_register(out, it->second, now);
    it = sessions_.find(pn);
    if (it != sessions_.end()) maybe_send_aggregate(out, it->second, now);
}

// Step 10 (5.2.1.1) / 11 (5.2.1.2).
void Gateway::maybe_send_aggregate(Out& out, Session& s, Millis now) {
    if (s.phase != Phase::kCollectAuth) return;
    for (const auto& [id, m] : s.members)
        if (m.state == MemberState::kAuthPending) return;
    pb::Envelope env;
    auto* r = env.mutable_auth_response();
    r->set_pn_id(s.pn_id);
    for (const auto& [id, m] : s.members) {
        if (m.state != MemberState::kAnswered && m.state != MemberState::kFailed) continue;
        if (m.join.pne_id().empty())
            continue;  // never joined: the server does not know it in this PN
        auto* res = r->add_results();
        res->set_pne_id(id);
        if (m.state == MemberState::kAnswered)
            res->set_hash_pne(m.hash_pne);
        else
            res->set_failure(m.reason);
    }
    send(out, cfg_.server_id, std::move(env));
    enter(out, s, Phase::kWaitRegistration, now + kServerResponseTimeout,
          "Authentication Response sent to the server");
}

// Steps 12-15 (5.2.1.1) / 13-16 (5.2.1.2). In kWaitRegistration; in kWaitAuthRequest only a
// refusal (the server answers at once, without an Authentication Request, when it refuses
// every PNE up front).
void Gateway::handle_registration_response(Out& out, const pb::PnRegistrationResponse& m,
                                           Millis now) {
    Session& s = sessions_.at(m.pn_id());
    if (s.phase == Phase::kWaitAuthRequest && m.registered()) {
        ++counters_.ignored;
        return;
    }
    const std::string initiator =
        s.flow == Flow::kPneInitiated && !s.add && !s.rekey ? s.initiator : std::string();
    const std::string pn_id = s.pn_id;
    // An add refused after its commit was asked for (the store did not confirm in time) may
    // still land: ask how the PN is now. A STALE_REVISION refusal brings the PN itself.
    const bool unsure = s.add && !m.registered() && s.phase == Phase::kWaitRegistration &&
                        m.reason() != pb::STALE_REVISION;
    conclude(out, s, m.registered(), m.registered() ? pb::REASON_NONE : m.reason(),
             m.registered() ? "" : "server did not register the PN", &m, now);  // ends the session
    if (unsure) sync(out, {pn_id}, "an add was refused after its commit was asked for");
    if (m.registered() && !initiator.empty() && inventory_.count(pn_id))
        supersede(out, initiator, pn_id, now);
}

void Gateway::supersede(Out& out, const std::string& initiator, const std::string& pn_id,
                        Millis now) {
    auto members_of = [this](const std::string& pn) {
        std::set<std::string> ids;
        for (const auto& m : inventory_.at(pn).members()) ids.insert(m.pne_id());
        return ids;
    };
    const std::set<std::string> now_in = members_of(pn_id);
    std::vector<std::string> earlier;
    if (auto it = initiated_.find(initiator); it != initiated_.end())
        for (const auto& old : it->second)
            if (old != pn_id && inventory_.count(old)) earlier.push_back(old);
    initiator_of_[pn_id] = initiator;
    initiated_[initiator].insert(pn_id);
    const std::string again = "PN " + pn_id + " set up again by " + initiator;
    for (const auto& old : earlier) {
        const std::set<std::string> was_in = members_of(old);
        std::string line = again;
        if (!was_in.count(initiator) ||
            !std::includes(now_in.begin(), now_in.end(), was_in.begin(), was_in.end())) {
            line.append(": ").append(old).append(" stays (other members, or without ");
            log(LogLevel::kInfo, line.append(initiator).append(")"));
            continue;
        }
        line.append(" with every member of ").append(old).append(": dissolving it");
        log(LogLevel::kInfo, line);
        for (auto& e : start_change(pb::CHANGE_DISSOLVE, old, "", now)) out.push_back(std::move(e));
    }
}

void Gateway::forget_initiator(const std::string& pn_id) {
    auto it = initiator_of_.find(pn_id);
    if (it == initiator_of_.end()) return;
    if (auto pns = initiated_.find(it->second); pns != initiated_.end()) {
        pns->second.erase(pn_id);
        if (pns->second.empty()) initiated_.erase(pns);
    }
    initiator_of_.erase(it);
}

// Final state of every member, before any notification, so that each lists the others.
void Gateway::settle_members(Out& out, Session& s, bool registered, pb::FailureReason reason,
                             const pb::PnRegistrationResponse* resp) {
    std::map<std::string, const pb::PneRegistrationResult*> results;
    if (resp)
        for (const auto& r : resp->results()) results[r.pne_id()] = &r;
    for (auto& [id, mem] : s.members) {
        auto r = results.find(id);
        const bool joined = registered && mem.state == MemberState::kAnswered &&
                            r != results.end() && r->second->authenticated();
        if (joined) {
            enter(out, s, mem, MemberState::kMember, "registered by the server");
        } else if (mem.state != MemberState::kFailed) {
            pb::FailureReason why = reason;
            if (r != results.end() && r->second->reason() != pb::REASON_NONE)
                why = r->second->reason();
            if (why == pb::REASON_NONE) why = pb::AUTHENTICATION_FAILED;
            fail_member(out, s, mem, why, "per the CPNS Server");
        }
    }
}

// Step 14/15 (5.2.1.1) / 15/16 (5.2.1.2): the member's result, if it can be told.
void Gateway::notify_member(Out& out, const Session& s, const Member& mem,
                            const pb::PnRegistrationResponse* resp) {
    if (!mem.reachable || mem.reason == pb::DECLINED) return;
    const bool joined = mem.state == MemberState::kMember;
    pb::PnResult res;
    res.set_pn_id(s.pn_id);
    res.set_success(joined);
    if (joined) {
        *res.mutable_inventory() = inventory_[s.pn_id];
        for (const auto& r : resp->results())
            if (r.pne_id() == mem.pne_id) res.set_hash_server_pne(r.hash_server_pne());
    } else {
        res.set_reason(mem.reason);
    }
    for (const auto& [oid, other] : s.members)
        if (other.state == MemberState::kFailed && oid != mem.pne_id) {
            auto* x = res.add_excluded();
            x->set_pne_id(oid);
            x->set_reason(other.reason);
        }
    pb::Envelope env;
    if (mem.role == PneRole::kInitiator)
        *env.mutable_setup_response()->mutable_result() = std::move(res);
    else
        *env.mutable_establishment_notify()->mutable_result() = std::move(res);
    // hash_server_PNE and the inventory never cross an insecure PAN in clear.
    if (joined && !pan_secure(mem.pne_id) && !tls_up(mem.pne_id)) return;
    send(out, mem.pne_id, std::move(env), joined);
}

void Gateway::conclude(Out& out, Session& s, bool registered, pb::FailureReason reason,
                       const std::string& detail, const pb::PnRegistrationResponse* resp,
                       Millis now) {
    // A refusal always has a typed reason: a server (or a caller) that gives none is reported
    // as INTERNAL_ERROR rather than as a failure "for no reason" (found by cpns-fuzz-gateway).
    if (!registered && reason == pb::REASON_NONE) reason = pb::INTERNAL_ERROR;
    settle_members(out, s, registered, reason, resp);
    OutcomeEffect outcome{s.pn_id, "", registered, reason, detail, {}, {}, {}};
    if (s.add) outcome.operation = "add";
    if (s.rekey) outcome.operation = "rekey";
    const bool update = s.add || s.rekey;  // of a registered PN
    if (registered) {
        // Kept as this PN of this PN GW whatever the response's inventory names: the saved
        // state (inventory and LocalEUKeys by PN ID, for this PN GW) must load after a restart.
        pb::PnInventory inv = resp->inventory();
        if (inv.pn_id() != s.pn_id || inv.gw_id() != cfg_.gw_id) {
            log(LogLevel::kWarn, "the server's inventory for " + s.pn_id + " names PN '" +
                                     inv.pn_id() + "' of PN GW '" + inv.gw_id() + "'; kept as " +
                                     s.pn_id + " of " + cfg_.gw_id);
            inv.set_pn_id(s.pn_id);
            inv.set_gw_id(cfg_.gw_id);
        }
        // An add's answer may come after a newer change of the PN was adopted: the newer stays.
        if (auto it = inventory_.find(s.pn_id);
            update && it != inventory_.end() && it->second.revision() >= inv.revision())
            inv = it->second;
        inventory_[s.pn_id] = inv;
        out.push_back(StoreInventoryEffect{inv});
        outcome.inventory = std::move(inv);
    }
    std::vector<std::string> route;
    if (update && registered)
        for (const auto& m : outcome.inventory.members())
            if (!s.members.count(m.pne_id())) route.push_back(m.pne_id());
    bool rekey_sent = false;
    for (auto& [id, mem] : s.members) {
        const bool joined = mem.state == MemberState::kMember;
        outcome.pnes.push_back(PneOutcome{id, joined, mem.reason});
        if (joined) {
            route.push_back(id);
            if (s.rekey && mem.local_eukey) {
                // The old LocalEUKey stays in force until the PNE confirms the new one.
                rekeys_[s.pn_id] = PendingRekey{id, *mem.local_eukey, outcome.inventory.revision(),
                                                now + kRekeyConfirmTimeout, mem.new_key_session};
                rekey_sent = true;
            } else if (mem.local_eukey) {
                local_keys_[s.pn_id].emplace(id, *mem.local_eukey);
            }
        } else if (s.rekey && mem.new_key_session) {
            // A PSK-TLS session made with a new LocalEUKey that never came into force.
            out.push_back(CloseLinkEffect{id, mem.reason});
        }
        notify_member(out, s, mem, resp);
    }
    if (registered && update) {
        if (auto u = unsure_adds_.find(s.pn_id); s.add && u != unsure_adds_.end()) {
            for (const auto& [id, mem] : s.members) u->second.erase(id);  // added for sure now
            if (u->second.empty()) unsure_adds_.erase(u);
        }
        routing_[s.pn_id] = route;
        ++counters_.established;
        log(LogLevel::kInfo,
            "PN " + s.pn_id + (s.rekey ? " re-keyed" : " updated") + ": revision " +
                std::to_string(outcome.inventory.revision()) + ", " + std::to_string(route.size()) +
                " PNE(s)" + (rekey_sent ? "; waiting for the PNE to confirm its new key" : ""));
        // The earlier members learn the new member list, proven by the server, after the state
        // holding it is saved (the daemons hold effects behind a StoreInventoryEffect).
        for (const auto& n : resp->notices()) tell(out, n, now);
    } else if (registered) {
        routing_[s.pn_id] = route;
        ++counters_.established;
        log(LogLevel::kInfo,
            "PN " + s.pn_id + " registered with " + std::to_string(route.size()) + " PNE(s)");
    } else if (update) {
        // Given up (or refused) after the PN GW asked the server to commit an add: the PNEs may
        // be in the PN although they are told they are not; a resynchronisation shows it.
        if (s.add && s.phase == Phase::kWaitRegistration && reason != pb::STALE_REVISION)
            for (const auto& [id, mem] : s.members) unsure_adds_[s.pn_id].insert(id);
        // The PN stays as it was; a refusal as stale brings its newer revision.
        std::vector<std::string> stay;
        if (auto it = inventory_.find(s.pn_id); it != inventory_.end())
            for (const auto& m : it->second.members()) stay.push_back(m.pne_id());
        routing_[s.pn_id] = std::move(stay);
        if (resp && reason == pb::STALE_REVISION) {
            pb::PnChangeResponse as_is;
            as_is.set_pn_id(s.pn_id);
            *as_is.mutable_inventory() = resp->inventory();
            for (const auto& peer : adopt(out, as_is))
                out.push_back(CloseLinkEffect{peer, pb::NOT_A_MEMBER});
        }
        counters_.count(reason);
        log(LogLevel::kWarn, (s.rekey ? "re-keying in PN " : "adding to PN ") + s.pn_id +
                                 " failed: " + std::string(reason_name(reason)) +
                                 (detail.empty() ? "" : " (" + detail + ")"));
    } else {
        routing_.erase(s.pn_id);
        counters_.count(reason);
        log(LogLevel::kWarn, "PN " + s.pn_id +
                                 " not established: " + std::string(reason_name(reason)) +
                                 (detail.empty() ? "" : " (" + detail + ")"));
    }
    enter(out, s, Phase::kDone, kNever,
          registered ? "registered" : std::string(reason_name(reason)));
    // A re-key's outcome comes with the PNE's confirmation (switch_key) or its refusal.
    if (s.rekey && !rekey_sent)
        report_order(out, s.pn_id, false, outcome_reason(false, outcome.reason),
                     outcome.detail.empty() ? "the re-key did not complete" : outcome.detail, 0);
    if (!rekey_sent) out.push_back(std::move(outcome));
    for (const auto& [id, mem] : s.members) {
        auto p = pne_session_.find(id);
        if (p != pne_session_.end() && p->second == s.pn_id) pne_session_.erase(p);
    }
    sessions_.erase(s.pn_id);  // wipes the session's keys
}

void Gateway::handle_error(Out& out, const std::string& from, const pb::ErrorReport& m,
                           Millis now) {
    if (from == cfg_.server_id) {
        auto it = sessions_.find(m.pn_id());
        if (it == sessions_.end()) {
            ++counters_.ignored;
            return;
        }
        log(LogLevel::kWarn, "server refused " + m.pn_id() + ": " + m.detail());
        conclude(out, it->second, false, m.reason(), "server: " + m.detail(), nullptr, now);
        return;
    }
    Session* s = session_of_pne(from, m.pn_id());
    if (auto r = rekeys_.find(m.pn_id()); !s && r != rekeys_.end() && r->second.pne_id == from) {
        // The re-keyed PNE refused its result (its check of the server's proof failed): the new
        // LocalEUKey never comes into force.
        drop_rekey(out, m.pn_id(), m.reason() == pb::REASON_NONE ? pb::INTERNAL_ERROR : m.reason(),
                   "refused by " + from + ": " + m.detail());
        return;
    }
    if (!s) {
        counters_.count(m.reason());
        log(LogLevel::kWarn,
            from + " reports " + std::string(reason_name(m.reason())) + ": " + m.detail());
        return;
    }
    Member& mem = s->members.at(from);
    fail_member(out, *s, mem, m.reason(), "reported by the PNE: " + m.detail());
    settle_after_failure(out, s->pn_id, now);
}

Gateway::Phase Gateway::phase_for(const std::string& from, const pb::Envelope& env) const {
    using B = pb::Envelope::BodyCase;
    auto by_pn = [&](const std::string& pn) {
        auto it = sessions_.find(pn);
        return it == sessions_.end() ? Phase::kNone : it->second.phase;
    };
    auto by_pne = [&](const std::string& pn) {
        const Session* s = session_of_pne(from, pn);
        return s ? s->phase : Phase::kNone;
    };
    switch (env.body_case()) {
        case B::kSetupRequest: {
            auto it = pne_session_.find(from);
            return it == pne_session_.end() ? Phase::kNone : by_pn(it->second);
        }
        case B::kSetupNotifyResponse:
            return by_pne(env.setup_notify_response().pn_id());
        case B::kPneAuthResponse:
            return by_pne(env.pne_auth_response().pn_id());
        case B::kAuthRequest:
            return by_pn(env.auth_request().pn_id());
        case B::kRegistrationResponse:
            return by_pn(env.registration_response().pn_id());
        case B::kError:
            return from == cfg_.server_id ? by_pn(env.error().pn_id())
                                          : by_pne(env.error().pn_id());
        default:
            return Phase::kNone;
    }
}

bool Gateway::accepts(bool from_server, Phase phase, pb::Envelope::BodyCase body) {
    using B = pb::Envelope::BodyCase;
    switch (body) {
        case B::kDiscoveryRequest:
        case B::kDiscoveryResponse:
            return !from_server;
        case B::kSetupRequest:
            return !from_server && phase == Phase::kNone;
        case B::kSetupNotifyResponse:
            return !from_server && phase == Phase::kCollectJoins;
        case B::kPneAuthResponse:
            return !from_server && phase == Phase::kCollectAuth;
        case B::kAuthRequest:
            return from_server && phase == Phase::kWaitAuthRequest;
        case B::kRegistrationResponse:
            return from_server &&
                   (phase == Phase::kWaitRegistration || phase == Phase::kWaitAuthRequest);
        case B::kLeaveRequest:  // lifecycle: about registered PNs, not sessions
            return !from_server;
        case B::kChangeResponse:
        case B::kChangeRequest:  // the server's order to re-key (cpnsctl rekey)
            return from_server;
        case B::kChangeNotifyAck:
            return !from_server;
        case B::kError:
            // Once the PN GW has answered the server for a PN, a PNE's report can no longer
            // change who is in it (the parties would disagree): the result tells the PNE.
            // The server's reports refuse a registration: they end only a PN still waiting for
            // its Authentication Request (a later one answers a duplicate, not this run).
            if (from_server) return phase == Phase::kWaitAuthRequest;
            return phase == Phase::kNone || phase == Phase::kCollectJoins ||
                   phase == Phase::kCollectAuth;
        default:
            return false;
    }
}

// The one refusal: a PNE already in a session that asks again gets BUSY (a repeat of the
// request being served is dropped); anything else not legal now is counted and dropped.
void Gateway::refuse(Out& out, const std::string& from, const pb::Envelope& env) {
    using B = pb::Envelope::BodyCase;
    const bool from_server = from == cfg_.server_id;
    if (env.body_case() == B::kSetupRequest && !from_server) {
        const std::string& pn = pne_session_.at(from);
        const Session& s = sessions_.at(pn);
        if (!(s.initiator == from &&
              s.members.at(from).join.rand_pne() == env.setup_request().join().rand_pne())) {
            counters_.count(pb::BUSY);
            send_error(out, from, "", pb::BUSY, "this PNE is already joining " + pn);
            return;
        }
    }
    ++counters_.ignored;
    bool for_a_gw = false;
    for (auto p : {Phase::kNone, Phase::kCollectJoins, Phase::kWaitAuthRequest, Phase::kCollectAuth,
                   Phase::kWaitRegistration})
        for_a_gw =
            for_a_gw || accepts(true, p, env.body_case()) || accepts(false, p, env.body_case());
    if (!for_a_gw) counters_.count(pb::UNEXPECTED_MESSAGE);
    log(LogLevel::kDebug, std::string(message_name(env)) + " from " + from + " refused here");
}

GatewayEffects Gateway::on_message(const std::string& from, const pb::Envelope& env,
                                   Protection protection, Millis now, const Origin& origin) {
    Out out;
    ++counters_.messages_in;
    if (origin.datagram && !env.has_discovery_request() && !env.has_discovery_response()) {
        ++counters_.ignored;  // a datagram carries Entity Discovery only
        log(LogLevel::kDebug,
            std::string(message_name(env)) + " by datagram from " + from + " refused here");
        return out;
    }
    // On an insecure PAN a PNE with a working PSK-TLS link speaks inside it: a failure in clear
    // under its name (anyone can open a clear link and claim it) changes nothing.
    const bool failure =
        env.has_error() ||
        (env.has_setup_notify_response() && !env.setup_notify_response().accept()) ||
        (env.has_pne_auth_response() && env.pne_auth_response().failure() != pb::REASON_NONE);
    if (failure && from != cfg_.server_id && protection == Protection::kClear &&
        !pan_secure(from) && tls_up(from)) {
        ++counters_.ignored;
        log(LogLevel::kWarn, std::string(message_name(env)) + " in clear under the name of " +
                                 from + ", which has a working PSK-TLS link: ignored");
        return out;
    }
    if (accepts(from == cfg_.server_id, phase_for(from, env), env.body_case()))
        dispatch(out, from, env, protection, now, origin);
    else
        refuse(out, from, env);
    return out;
}

// Runs the handler of a message that accepts() allows in the addressed session's state.
void Gateway::dispatch(Out& out, const std::string& from, const pb::Envelope& env,
                       Protection protection, Millis now, const Origin& origin) {
    using B = pb::Envelope::BodyCase;
    switch (env.body_case()) {
        case B::kSetupRequest:
            return handle_setup_request(out, from, env.setup_request(), protection, now, origin);
        case B::kSetupNotifyResponse:
            return handle_join_response(out, from, env.setup_notify_response(), protection, now);
        case B::kPneAuthResponse:
            return handle_pne_auth_response(out, from, env.pne_auth_response(), protection, now);
        case B::kAuthRequest:
            return handle_auth_request(out, env.auth_request(), now);
        case B::kRegistrationResponse:
            return handle_registration_response(out, env.registration_response(), now);
        case B::kError:
            return handle_error(out, from, env.error(), now);
        case B::kLeaveRequest:
            return handle_leave_request(out, from, env.leave_request(), protection, now);
        case B::kChangeResponse:
            return handle_change_response(out, env.change_response(), now);
        case B::kChangeRequest:
            return handle_rekey_order(out, env.change_request(), now);
        case B::kChangeNotifyAck:
            return handle_notice_ack(out, from, env.change_notify_ack(), protection);
        default:  // discovery
            return handle_discovery(out, from, env, protection, now, origin);
    }
}

std::optional<SecretKey> Gateway::tls_psk_for(std::string_view identity) const {
    const auto id = parse_psk_identity(identity);
    if (!id) return std::nullopt;
    if (id->kind == PskIdentity::Kind::kPreassigned) {
        auto it = cfg_.pan_links.find(id->pne_id);
        if (it == cfg_.pan_links.end()) return std::nullopt;
        return it->second.preassigned_key;
    }
    if (auto s = sessions_.find(id->pn_id); s != sessions_.end()) {
        auto m = s->second.members.find(id->pne_id);
        if (m != s->second.members.end() && m->second.local_eukey) return m->second.local_eukey;
    }
    return local_eukey(id->pn_id, id->pne_id);
}

std::optional<SecretKey> Gateway::local_eukey(const std::string& pn_id,
                                              const std::string& pne_id) const {
    auto p = local_keys_.find(pn_id);
    if (p == local_keys_.end()) return std::nullopt;
    auto k = p->second.find(pne_id);
    if (k == p->second.end()) return std::nullopt;
    return k->second;
}

GatewayEffects Gateway::on_tls_established(const std::string& peer, const std::string& identity,
                                           Millis now) {
    Out out;
    // The identity must name the peer: "pre:<pne>" or "leuk:<pn>:<pne>".
    const auto id = parse_psk_identity(identity);
    if (!id || id->pne_id != peer) {
        counters_.count(pb::TLS_HANDSHAKE_FAILED);
        log(LogLevel::kWarn, "TLS identity does not name " + peer + "; closing");
        out.push_back(CloseLinkEffect{peer, pb::TLS_HANDSHAKE_FAILED});
        return out;
    }
    tls_links_[peer] = identity;
    link_failures_.erase(peer);
    // During a re-key a session under the PN's LocalEUKey identity is made with the new key.
    if (auto p = pne_session_.find(peer); p != pne_session_.end() && id->pn_id == p->second)
        if (auto s = sessions_.find(p->second); s != sessions_.end() && s->second.rekey)
            if (auto m = s->second.members.find(peer); m != s->second.members.end())
                m->second.new_key_session = true;
    log(LogLevel::kInfo, "PSK-TLS with " + peer + " established");
    repeat_notices(out, now, peer);  // what it missed while its link was down
    return out;
}

pb::FailureReason Gateway::unreachable_reason(const std::string& pne_id) const {
    auto it = link_failures_.find(pne_id);
    return it == link_failures_.end() ? pb::UNKNOWN_ENTITY : it->second;
}

// A failed handshake names a PNE in its ClientHello, but anyone can send that: it never ends a
// working PSK-TLS session of that PNE and never changes a member's state. A PNE whose own
// handshake failed ends its run and says so (an ErrorReport), or stays silent until the
// member's deadline, which then fails it with this reason instead of a bare timeout.
GatewayEffects Gateway::on_tls_failed(const std::string& peer, Millis /*now*/) {
    Out out;
    counters_.count(pb::TLS_HANDSHAKE_FAILED);
    if (tls_up(peer)) {
        log(LogLevel::kWarn, "a PSK-TLS handshake naming " + peer +
                                 " failed; its working PSK-TLS link is kept and it is unaffected");
        return out;
    }
    log(LogLevel::kWarn, "PSK-TLS handshake naming " + peer + " failed");
    if (link_failures_.size() < kMaxNeighbours || link_failures_.count(peer))
        link_failures_[peer] = pb::TLS_HANDSHAKE_FAILED;
    if (auto p = pne_session_.find(peer); p != pne_session_.end()) {
        Member& mem = sessions_.at(p->second).members.at(peer);
        if (mem.state == MemberState::kInvited || mem.state == MemberState::kJoined ||
            mem.state == MemberState::kAuthPending)
            mem.tls_failed = true;
    }
    return out;
}

GatewayEffects Gateway::on_link_down(const std::string& peer, Millis now,
                                     pb::FailureReason reason) {
    Out out;
    tls_links_.erase(peer);
    neighbours_.unlink(peer, now);
    if (peer == cfg_.server_id) {
        std::vector<std::string> pns;
        for (const auto& [pn, s] : sessions_)
            if (s.phase == Phase::kWaitAuthRequest || s.phase == Phase::kWaitRegistration)
                pns.push_back(pn);
        for (const auto& pn : pns)
            conclude(out, sessions_.at(pn), false, reason,
                     reason == pb::GATEWAY_AUTHENTICATION_FAILED
                         ? "the CPNS Server refused this PN GW's PSK"
                         : "link to the CPNS Server is down",
                     nullptr, now);
        return out;
    }
    auto p = pne_session_.find(peer);
    if (p == pne_session_.end()) return out;
    Session& s = sessions_.at(p->second);
    Member& mem = s.members.at(peer);
    mem.reachable = false;
    if (mem.state == MemberState::kInvited || mem.state == MemberState::kAuthPending) {
        fail_member(out, s, mem, pb::PEER_UNREACHABLE, "link went down");
        settle_after_failure(out, s.pn_id, now);
    }
    return out;
}

GatewayEffects Gateway::on_link_up(const std::string& peer, Millis now) {
    Out out;
    (void)now;
    if (peer == cfg_.server_id) sync(out, {}, "the link to the CPNS Server is up");
    return out;
}

GatewayEffects Gateway::on_timer(Millis now) {
    Out out;
    for (const auto& id : neighbours_.expire(now))
        log(LogLevel::kInfo, "neighbour " + id + " aged out: no PAN link and not heard for " +
                                 std::to_string(neighbours_.ttl()) + " ms");
    expire_changes(out, now);
    expire_rekeys(out, now);
    repeat_notices(out, now);
    std::vector<std::string> due;
    for (const auto& [pn, s] : sessions_)
        if (now >= s.deadline) due.push_back(pn);
    for (const auto& pn : due) {
        auto it = sessions_.find(pn);
        if (it == sessions_.end()) continue;
        Session& s = it->second;
        switch (s.phase) {
            case Phase::kCollectJoins:
                for (auto& [id, m] : s.members)
                    if (m.state == MemberState::kInvited)
                        fail_member(out, s, m,
                                    m.tls_failed ? pb::TLS_HANDSHAKE_FAILED : pb::TIMEOUT,
                                    "no answer to the invitation");
                maybe_register(out, s, now);
                break;
            case Phase::kCollectAuth:
                for (auto& [id, m] : s.members)
                    if (m.state == MemberState::kAuthPending)
                        fail_member(out, s, m,
                                    m.tls_failed ? pb::TLS_HANDSHAKE_FAILED : pb::TIMEOUT,
                                    "no Authentication Response");
                maybe_send_aggregate(out, s, now);
                break;
            case Phase::kWaitAuthRequest:
                conclude(out, s, false, pb::TIMEOUT, "no Authentication Request from the server",
                         nullptr, now);
                break;
            default: {  // kWaitRegistration (kNone and kDone have no session)
                // An add the server may have committed: ask how the PN is now.
                const bool add = s.add;
                conclude(out, s, false, pb::TIMEOUT, "no PN Registration Response from the server",
                         nullptr, now);
                if (add) sync(out, {pn}, "gave up waiting for an add");
                break;
            }
        }
    }
    return out;
}

Millis Gateway::next_deadline() const {
    Millis d = kNever;
    for (const auto& [pn, s] : sessions_) d = std::min(d, s.deadline);
    for (const auto& [pn, c] : changes_) d = std::min({d, c.deadline, c.retry});
    for (const auto& [key, n] : notices_) d = std::min(d, n.next);
    for (const auto& [pn, r] : rekeys_) d = std::min(d, r.deadline);
    return d;
}

pb::GwState Gateway::export_state() const {
    pb::GwState st;
    st.set_gw_id(cfg_.gw_id);
    for (const auto& [pn, inv] : inventory_) *st.add_inventory() = inv;
    for (const auto& [pn, keys] : local_keys_)
        for (const auto& [pne, key] : keys) {
            auto* k = st.add_local_eukeys();
            k->set_pn_id(pn);
            k->set_peer_id(pne);
            k->set_key(to_field(key.view()));
        }
    for (const auto& [pn, initiator] : initiator_of_) (*st.mutable_initiators())[pn] = initiator;
    return st;
}

bool Gateway::import_state(const pb::GwState& st) {
    if (st.gw_id() != cfg_.gw_id) return false;
    std::map<std::string, pb::PnInventory> inventory;
    std::map<std::string, std::vector<std::string>> routing;
    std::map<std::string, std::map<std::string, SecretKey>> keys;
    for (const auto& inv : st.inventory()) {
        if (!valid_id(inv.pn_id())) return false;
        inventory[inv.pn_id()] = inv;
        auto& route = routing[inv.pn_id()];
        for (const auto& m : inv.members()) route.push_back(m.pne_id());
    }
    for (const auto& k : st.local_eukeys()) {
        if (k.key().size() != kKeySize || !inventory.count(k.pn_id())) return false;
        keys[k.pn_id()].emplace(k.peer_id(), SecretKey(bytes_of(k.key())));
    }
    std::map<std::string, std::string> initiator_of;
    std::map<std::string, std::set<std::string>> initiated;
    for (const auto& [pn, initiator] : st.initiators()) {
        if (!inventory.count(pn) || !valid_id(initiator)) return false;
        initiator_of[pn] = initiator;
        initiated[initiator].insert(pn);
    }
    inventory_ = std::move(inventory);
    routing_ = std::move(routing);
    local_keys_ = std::move(keys);
    initiator_of_ = std::move(initiator_of);
    initiated_ = std::move(initiated);
    log(LogLevel::kInfo,
        "restored " + std::to_string(inventory_.size()) + " PN(s) from saved state");
    return true;
}

Bytes Gateway::snapshot() const {
    Bytes out;
    auto put = [&](ByteView b) { out.insert(out.end(), b.begin(), b.end()); };
    auto put_s = [&](const std::string& s) { put(as_bytes(s)); };
    put_s(cfg_.gw_id);
    put(cfg_.eukey.view());
    for (const auto& [id, link] : cfg_.pan_links) {
        put_s(id);
        if (link.preassigned_key) put(link.preassigned_key->view());
    }
    for (const auto& [id, n] : neighbours_.entries()) put_s(id);
    for (const auto& [pn, s] : sessions_) {
        put_s(pn);
        for (const auto& [id, m] : s.members) {
            put_s(id);
            put_s(m.join.SerializeAsString());
            put_s(m.hash_pne);
            if (m.local_eukey) put(m.local_eukey->view());
        }
    }
    for (const auto& [pn, inv] : inventory_) put_s(inv.SerializeAsString());
    for (const auto& [pn, route] : routing_)
        for (const auto& id : route) put_s(id);
    for (const auto& [pn, keys] : local_keys_)
        for (const auto& [id, k] : keys) put(k.view());
    for (const auto& [pn, initiator] : initiator_of_) put_s(pn + initiator);
    for (const auto& [pn, r] : rekeys_) put(r.key.view());
    for (const auto& [id, identity] : tls_links_) put_s(identity);
    return out;
}

}  // namespace cpns
