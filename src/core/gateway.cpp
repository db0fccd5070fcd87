#include "core/gateway.hpp"

#include <algorithm>

namespace cpns {

Gateway::Gateway(GatewayConfig config, Random& random) : cfg_(std::move(config)), random_(random) {}

void Gateway::log(LogLevel level, const std::string& text) const {
    if (cfg_.log) cfg_.log(level, "gw " + cfg_.gw_id + ": " + text);
}

bool Gateway::pan_secure(const std::string& pne_id) const {
    auto it = cfg_.pan_links.find(pne_id);
    return it != cfg_.pan_links.end() ? it->second.pan_secure : cfg_.default_pan_secure;
}

void Gateway::send(Effects& out, const std::string& to, pb::Envelope env, bool must_protect) {
    env.set_version(kProtocolVersion);
    env.set_sender_id(cfg_.gw_id);
    ++counters_.messages_out;
    Protection p = Protection::kClear;
    if (to != cfg_.server_id && to != "*" && !pan_secure(to) && (must_protect || tls_up(to)))
        p = Protection::kTls;
    out.push_back(SendEffect{to, std::move(env), p});
}

void Gateway::send_error(Effects& out, const std::string& to, const std::string& pn_id,
                         pb::FailureReason reason, const std::string& detail) {
    pb::Envelope env;
    auto* e = env.mutable_error();
    e->set_pn_id(pn_id);
    e->set_reason(reason);
    e->set_detail(detail);
    send(out, to, std::move(env));
}

std::string Gateway::new_pn_id() {
    for (;;) {
        std::string id = "pn-" + to_hex(random_.bytes(6));
        if (!sessions_.count(id) && !inventory_.count(id)) return id;
    }
}

Gateway::Session* Gateway::session_of_pne(const std::string& pne_id, const std::string& pn_id) {
    auto it = pne_session_.find(pne_id);
    if (it == pne_session_.end() || it->second != pn_id) return nullptr;
    auto s = sessions_.find(pn_id);
    return s == sessions_.end() ? nullptr : &s->second;
}

void Gateway::fail_member(Session& s, Member& m, pb::FailureReason reason, const std::string& why) {
    if (m.state == MemberState::kFailed) return;
    m.state = MemberState::kFailed;
    m.reason = reason;
    m.local_eukey.reset();
    counters_.count(reason);
    log(LogLevel::kWarn, m.pne_id + " excluded from " + s.pn_id + ": " +
                             std::string(reason_name(reason)) +
                             (why.empty() ? "" : " (" + why + ")"));
}

Effects Gateway::discover(Millis /*now*/) {
    Effects out;
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

void Gateway::handle_discovery(Effects& out, const std::string& from, const pb::Envelope& env,
                               Millis now) {
    const bool is_request = env.has_discovery_request();
    switch (record_neighbour(neighbours_, from, env, now)) {
        case NeighbourUpdate::kNotTheSender:
            ++counters_.ignored;
            return;
        case NeighbourUpdate::kTableFull:
            counters_.count(pb::LIMIT_EXCEEDED);
            log(LogLevel::kWarn, "neighbour table full; " + from + " not recorded");
            break;
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

// 5.2.1.1 step 1 arrives; steps 2 and 4 follow.
void Gateway::handle_setup_request(Effects& out, const std::string& from,
                                   const pb::PnSetupRequest& m, Protection protection, Millis now) {
    if (m.join().pne_id() != from) {
        send_error(out, from, "", pb::MALFORMED_MESSAGE, "PNE ID differs from the sender");
        counters_.count(pb::MALFORMED_MESSAGE);
        return;
    }
    if (auto it = pne_session_.find(from); it != pne_session_.end()) {
        auto& s = sessions_.at(it->second);
        if (s.initiator == from && s.members.at(from).join.rand_pne() == m.join().rand_pne()) {
            ++counters_.ignored;  // a duplicate of the request being served
            return;
        }
        counters_.count(pb::BUSY);
        send_error(out, from, "", pb::BUSY, "this PNE is already joining " + it->second);
        return;
    }
    if (!pan_secure(from) && !m.join().local_eukey_requested() && protection != Protection::kTls) {
        counters_.count(pb::TLS_REQUIRED);
        log(LogLevel::kWarn, "PN Setup Request from " + from + " in clear on an insecure PAN");
        send_error(out, from, "", pb::TLS_REQUIRED, "PSK-TLS with the pre-assigned key required");
        out.push_back(CloseLinkEffect{from, pb::TLS_REQUIRED});
        return;
    }
    if (sessions_.size() >= kMaxGwSessions) {
        counters_.count(pb::LIMIT_EXCEEDED);
        send_error(out, from, "", pb::LIMIT_EXCEEDED, "too many PNs being established");
        return;
    }
    if (m.setup_type() == pb::SETUP_UNSPECIFIED) {
        counters_.count(pb::MALFORMED_MESSAGE);
        send_error(out, from, "", pb::MALFORMED_MESSAGE, "no setup type");
        return;
    }
    Session s;
    s.pn_id = new_pn_id();
    s.flow = Flow::kPneInitiated;
    s.initiator = from;
    s.setup_type = m.setup_type();
    s.invited.assign(m.invited_pne_ids().begin(), m.invited_pne_ids().end());
    Member init;
    init.pne_id = from;
    init.role = PneRole::kInitiator;
    init.state = MemberState::kJoined;
    init.join = m.join();
    s.members.emplace(from, std::move(init));

    std::vector<std::string> targets;
    if (m.setup_type() == pb::SETUP_ALL) {
        for (const auto& [id, n] : neighbours_)
            if (id != from && (n.mode == pb::MODE_PNE || n.mode == pb::MODE_BOTH))
                targets.push_back(id);
    } else if (m.setup_type() == pb::SETUP_INVITE_LIST) {
        for (const auto& id : s.invited)
            if (id != from && std::find(targets.begin(), targets.end(), id) == targets.end())
                targets.push_back(id);
    }
    if (targets.size() + 1 > kMaxPnesPerPn) targets.resize(kMaxPnesPerPn - 1);
    log(LogLevel::kInfo, "PN Setup Request from " + from + " (" +
                             std::string(pb::SetupType_Name(m.setup_type())) + "): allocated " +
                             s.pn_id + ", notifying " + std::to_string(targets.size()) + " PNE(s)");
    for (const auto& id : targets) {
        Member mem;
        mem.pne_id = id;
        mem.role = PneRole::kInvitee;
        s.members.emplace(id, mem);
        auto& inserted = s.members.at(id);
        if (!neighbours_.count(id)) {
            inserted.reachable = false;
            const auto why = unreachable_reason(id);
            fail_member(s, inserted, why,
                        why == pb::UNKNOWN_ENTITY ? "not discovered on the PAN"
                                                  : "its last PSK-TLS handshake failed");
            continue;
        }
        if (pne_session_.count(id)) {
            fail_member(s, inserted, pb::BUSY, "joining another PN");
            continue;
        }
        pb::Envelope env;
        auto* n = env.mutable_setup_notify();
        n->set_pn_id(s.pn_id);
        n->set_initiator_pne_id(from);
        n->set_gw_id(cfg_.gw_id);
        send(out, id, std::move(env));
    }
    s.phase = Phase::kCollectJoins;
    s.deadline = now + kJoinResponseTimeout;
    for (const auto& [id, mem] : s.members)
        if (mem.state != MemberState::kFailed) pne_session_[id] = s.pn_id;
    auto [it, _] = sessions_.emplace(s.pn_id, std::move(s));
    maybe_register(out, it->second, now);
}

// 5.2.1.2 steps 1-2.
Effects Gateway::invite(std::vector<std::string> pne_ids, Millis now) {
    Effects out;
    last_pn_id_.clear();
    auto fail_now = [&](pb::FailureReason r, const std::string& why) {
        counters_.count(r);
        log(LogLevel::kWarn, "cannot invite: " + why);
        out.push_back(OutcomeEffect{"", "", false, r, why, {}, {}});
        return out;
    };
    if (sessions_.size() >= kMaxGwSessions)
        return fail_now(pb::LIMIT_EXCEEDED, "too many PNs being established");
    if (pne_ids.empty())
        for (const auto& [id, n] : neighbours_)
            if (n.mode == pb::MODE_PNE || n.mode == pb::MODE_BOTH) pne_ids.push_back(id);
    std::sort(pne_ids.begin(), pne_ids.end());
    pne_ids.erase(std::unique(pne_ids.begin(), pne_ids.end()), pne_ids.end());
    if (pne_ids.empty()) return fail_now(pb::UNKNOWN_ENTITY, "no PNE to invite (run discovery)");
    if (pne_ids.size() > kMaxPnesPerPn) return fail_now(pb::LIMIT_EXCEEDED, "too many PNEs");
    for (const auto& id : pne_ids)
        if (!valid_id(id)) return fail_now(pb::MALFORMED_MESSAGE, "invalid PNE ID " + id);

    Session s;
    s.pn_id = new_pn_id();
    last_pn_id_ = s.pn_id;
    s.flow = Flow::kGwInitiated;
    log(LogLevel::kInfo, "inviting " + std::to_string(pne_ids.size()) + " PNE(s) into " + s.pn_id);
    for (const auto& id : pne_ids) {
        Member mem;
        mem.pne_id = id;
        s.members.emplace(id, mem);
        auto& inserted = s.members.at(id);
        if (!neighbours_.count(id)) {
            inserted.reachable = false;
            const auto why = unreachable_reason(id);
            fail_member(s, inserted, why,
                        why == pb::UNKNOWN_ENTITY ? "not discovered on the PAN"
                                                  : "its last PSK-TLS handshake failed");
            continue;
        }
        if (pne_session_.count(id)) {
            fail_member(s, inserted, pb::BUSY, "joining another PN");
            continue;
        }
        pne_session_[id] = s.pn_id;
        pb::Envelope env;
        env.mutable_setup_invite()->set_pn_id(s.pn_id);
        env.mutable_setup_invite()->set_gw_id(cfg_.gw_id);
        send(out, id, std::move(env));
    }
    s.phase = Phase::kCollectJoins;
    s.deadline = now + kJoinResponseTimeout;
    auto [it, _] = sessions_.emplace(s.pn_id, std::move(s));
    maybe_register(out, it->second, now);
    return out;
}

void Gateway::handle_join_response(Effects& out, const std::string& from,
                                   const pb::PnSetupNotifyResponse& m, Protection protection,
                                   Millis now) {
    Session* s = session_of_pne(from, m.pn_id());
    if (!s || s->phase != Phase::kCollectJoins) {
        ++counters_.ignored;
        return;
    }
    Member& mem = s->members.at(from);
    if (mem.state != MemberState::kInvited) {
        ++counters_.ignored;  // duplicate
        return;
    }
    if (!m.accept()) {
        const auto r = m.decline_reason() == pb::REASON_NONE ? pb::DECLINED : m.decline_reason();
        fail_member(*s, mem, r, "answered the invitation with no");
        pne_session_.erase(from);
    } else if (m.join().pne_id() != from) {
        fail_member(*s, mem, pb::MALFORMED_MESSAGE, "PNE ID differs from the sender");
        pne_session_.erase(from);
    } else if (!pan_secure(from) && !m.join().local_eukey_requested() &&
               protection != Protection::kTls) {
        fail_member(*s, mem, pb::TLS_REQUIRED, "join in clear on an insecure PAN");
        pne_session_.erase(from);
        out.push_back(CloseLinkEffect{from, pb::TLS_REQUIRED});
    } else {
        mem.join = m.join();
        mem.state = MemberState::kJoined;
    }
    maybe_register(out, *s, now);
}

// Step 4 (5.2.1.1) / 5 (5.2.1.2) once every invitation is answered.
void Gateway::maybe_register(Effects& out, Session& s, Millis now) {
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
        conclude(out, s, false, reason, "no PNE accepted", nullptr);
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
    for (const auto& id : s.invited) r->add_invited_pne_ids(id);
    std::vector<std::string> route;
    for (const auto& [id, m] : s.members) {
        if (m.state != MemberState::kJoined) continue;
        auto* p = r->add_pnes();
        *p->mutable_join() = m.join;
        p->set_role(m.role == PneRole::kInitiator ? pb::ROLE_INITIATOR : pb::ROLE_INVITEE);
        route.push_back(id);
    }
    routing_[s.pn_id] = std::move(route);  // routing table entry for relaying (steps 6-7)
    log(LogLevel::kInfo,
        "PN Registration Request for " + s.pn_id + " with " + std::to_string(joined) + " PNE(s)");
    send(out, cfg_.server_id, std::move(env));
    s.phase = Phase::kWaitAuthRequest;
    s.deadline = now + kServerResponseTimeout;
}

// Steps 5-7 (5.2.1.1) / 6-8 (5.2.1.2).
void Gateway::handle_auth_request(Effects& out, const pb::AuthenticationRequest& m, Millis now) {
    auto it = sessions_.find(m.pn_id());
    if (it == sessions_.end() || it->second.phase != Phase::kWaitAuthRequest) {
        ++counters_.ignored;
        return;
    }
    Session& s = it->second;
    for (const auto& x : m.excluded()) {
        auto mi = s.members.find(x.pne_id());
        if (mi != s.members.end()) fail_member(s, mi->second, x.reason(), "refused by the server");
    }
    std::map<std::string, const pb::WrappedKeyPair*> keys;
    for (const auto& k : m.local_eukeys()) keys[k.pne_id()] = &k;
    for (const auto& pne : m.pne_ids()) {
        auto mi = s.members.find(pne);
        if (mi == s.members.end() || mi->second.state != MemberState::kJoined) continue;
        Member& mem = mi->second;
        pb::Envelope env;
        auto* r = env.mutable_pne_auth_request();
        r->set_pn_id(s.pn_id);
        r->set_rand_server(m.rand_server());
        if (auto k = keys.find(pne); k != keys.end()) {
            auto key = unwrap_local_eukey(cfg_.eukey, Recipient::kGw, s.pn_id, pne, cfg_.gw_id,
                                          bytes_of(m.rand_server()), bytes_of(k->second->for_gw()));
            if (!key) {
                fail_member(s, mem, pb::KEY_UNWRAP_FAILED, "PN GW copy does not decrypt");
                continue;
            }
            mem.local_eukey = std::move(*key);
            out.push_back(StoreLocalKeyEffect{s.pn_id, pne, *mem.local_eukey});
            r->set_wrapped_local_eukey(k->second->for_pne());  // only this PNE's own copy
        } else if (mem.join.local_eukey_requested()) {
            fail_member(s, mem, pb::KEY_UNWRAP_FAILED, "server sent no LocalEUKey");
            continue;
        }
        mem.state = MemberState::kAuthPending;
        send(out, pne, std::move(env));
    }
    for (auto& [id, mem] : s.members)
        if (mem.state == MemberState::kJoined)
            fail_member(s, mem, pb::UNKNOWN_ENTITY, "not in the server's Authentication Request");
    s.phase = Phase::kCollectAuth;
    s.deadline = now + kPneAuthResponseTimeout;
    maybe_send_aggregate(out, s, now);
}

void Gateway::handle_pne_auth_response(Effects& out, const std::string& from,
                                       const pb::PneAuthenticationResponse& m,
                                       Protection protection, Millis now) {
    Session* s = session_of_pne(from, m.pn_id());
    if (!s || s->phase != Phase::kCollectAuth || m.pne_id() != from) {
        ++counters_.ignored;
        return;
    }
    Member& mem = s->members.at(from);
    if (mem.state != MemberState::kAuthPending) {
        ++counters_.ignored;
        return;
    }
    if (m.failure() != pb::REASON_NONE) {
        fail_member(*s, mem, m.failure(), "reported by the PNE");
    } else if (!pan_secure(from) && protection != Protection::kTls) {
        fail_member(*s, mem, pb::TLS_REQUIRED, "hash_PNE arrived in clear on an insecure PAN");
        out.push_back(CloseLinkEffect{from, pb::TLS_REQUIRED});
    } else if (m.hash_pne().size() != kHashSize) {
        fail_member(*s, mem, pb::MALFORMED_MESSAGE, "hash_PNE has the wrong size");
    } else {
        mem.hash_pne = m.hash_pne();
        mem.state = MemberState::kAnswered;
    }
    maybe_send_aggregate(out, *s, now);
}

// Step 10 (5.2.1.1) / 11 (5.2.1.2).
void Gateway::maybe_send_aggregate(Effects& out, Session& s, Millis now) {
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
    s.phase = Phase::kWaitRegistration;
    s.deadline = now + kServerResponseTimeout;
}

// Steps 12-15 (5.2.1.1) / 13-16 (5.2.1.2).
void Gateway::handle_registration_response(Effects& out, const pb::PnRegistrationResponse& m) {
    auto it = sessions_.find(m.pn_id());
    // The server answers at once, without an Authentication Request, when it refuses every
    // PNE up front (unknown or revoked): then the response ends the wait for that request.
    const bool early_refusal =
        it != sessions_.end() && it->second.phase == Phase::kWaitAuthRequest && !m.registered();
    if (it == sessions_.end() || (it->second.phase != Phase::kWaitRegistration && !early_refusal)) {
        ++counters_.ignored;
        return;
    }
    conclude(out, it->second, m.registered(), m.registered() ? pb::REASON_NONE : m.reason(),
             m.registered() ? "" : "server did not register the PN", &m);
}

void Gateway::conclude(Effects& out, Session& s, bool registered, pb::FailureReason reason,
                       const std::string& detail, const pb::PnRegistrationResponse* resp) {
    std::map<std::string, const pb::PneRegistrationResult*> results;
    if (resp)
        for (const auto& r : resp->results()) results[r.pne_id()] = &r;
    OutcomeEffect outcome;
    outcome.pn_id = s.pn_id;
    outcome.success = registered;
    outcome.reason = reason;
    outcome.detail = detail;

    // Final state of every member first, so that each notification lists the others.
    for (auto& [id, mem] : s.members) {
        auto r = results.find(id);
        const bool joined = registered && mem.state == MemberState::kAnswered &&
                            r != results.end() && r->second->authenticated();
        if (!joined && mem.state != MemberState::kFailed) {
            pb::FailureReason why = reason;
            if (r != results.end() && r->second->reason() != pb::REASON_NONE)
                why = r->second->reason();
            if (why == pb::REASON_NONE) why = pb::AUTHENTICATION_FAILED;
            fail_member(s, mem, why, "per the CPNS Server");
        }
    }
    std::vector<std::string> route;
    if (registered) {
        pb::PnInventory inv = resp->inventory();
        inventory_[s.pn_id] = inv;
        out.push_back(StoreInventoryEffect{inv});
        outcome.inventory = inv;
    }
    for (auto& [id, mem] : s.members) {
        const bool joined = mem.state != MemberState::kFailed;
        outcome.pnes.push_back(PneOutcome{id, joined, mem.reason});
        if (joined) {
            route.push_back(id);
            if (mem.local_eukey) local_keys_[s.pn_id].emplace(id, *mem.local_eukey);
        }
        if (!mem.reachable || mem.reason == pb::DECLINED) continue;
        pb::PnResult res;
        res.set_pn_id(s.pn_id);
        res.set_success(joined);
        if (joined) {
            *res.mutable_inventory() = inventory_[s.pn_id];
            res.set_hash_server_pne(results.at(id)->hash_server_pne());
        } else {
            res.set_reason(mem.reason);
        }
        for (const auto& [oid, other] : s.members)
            if (other.state == MemberState::kFailed && oid != id) {
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
        if (joined && !pan_secure(id) && !tls_up(id)) continue;
        send(out, id, std::move(env), joined);
    }
    if (registered) {
        routing_[s.pn_id] = route;
        ++counters_.established;
        log(LogLevel::kInfo,
            "PN " + s.pn_id + " registered with " + std::to_string(route.size()) + " PNE(s)");
    } else {
        routing_.erase(s.pn_id);
        counters_.count(reason);
        log(LogLevel::kWarn, "PN " + s.pn_id +
                                 " not established: " + std::string(reason_name(reason)) +
                                 (detail.empty() ? "" : " (" + detail + ")"));
    }
    out.push_back(std::move(outcome));
    for (const auto& [id, mem] : s.members) {
        auto p = pne_session_.find(id);
        if (p != pne_session_.end() && p->second == s.pn_id) pne_session_.erase(p);
    }
    sessions_.erase(s.pn_id);  // wipes the session's keys
}

void Gateway::handle_error(Effects& out, const std::string& from, const pb::ErrorReport& m,
                           Millis now) {
    if (from == cfg_.server_id) {
        auto it = sessions_.find(m.pn_id());
        if (it == sessions_.end()) {
            ++counters_.ignored;
            return;
        }
        log(LogLevel::kWarn, "server refused " + m.pn_id() + ": " + m.detail());
        conclude(out, it->second, false, m.reason(), "server: " + m.detail(), nullptr);
        return;
    }
    Session* s = session_of_pne(from, m.pn_id());
    if (!s) {
        counters_.count(m.reason());
        log(LogLevel::kWarn,
            from + " reports " + std::string(reason_name(m.reason())) + ": " + m.detail());
        return;
    }
    Member& mem = s->members.at(from);
    fail_member(*s, mem, m.reason(), "reported by the PNE: " + m.detail());
    maybe_register(out, *s, now);
    maybe_send_aggregate(out, *s, now);
}

Effects Gateway::on_message(const std::string& from, const pb::Envelope& env, Protection protection,
                            Millis now) {
    Effects out;
    ++counters_.messages_in;
    using B = pb::Envelope::BodyCase;
    const bool from_server = from == cfg_.server_id;
    switch (env.body_case()) {
        case B::kDiscoveryRequest:
        case B::kDiscoveryResponse:
            if (!from_server) handle_discovery(out, from, env, now);
            break;
        case B::kSetupRequest:
            if (!from_server) handle_setup_request(out, from, env.setup_request(), protection, now);
            break;
        case B::kSetupNotifyResponse:
            if (!from_server)
                handle_join_response(out, from, env.setup_notify_response(), protection, now);
            break;
        case B::kPneAuthResponse:
            if (!from_server)
                handle_pne_auth_response(out, from, env.pne_auth_response(), protection, now);
            break;
        case B::kAuthRequest:
            if (from_server) handle_auth_request(out, env.auth_request(), now);
            break;
        case B::kRegistrationResponse:
            if (from_server) handle_registration_response(out, env.registration_response());
            break;
        case B::kError:
            handle_error(out, from, env.error(), now);
            break;
        default:
            ++counters_.ignored;
            counters_.count(pb::UNEXPECTED_MESSAGE);
            log(LogLevel::kDebug,
                std::string(message_name(env)) + " from " + from + " is not for a PN GW; ignored");
            break;
    }
    return out;
}

std::optional<SecretKey> Gateway::tls_psk_for(std::string_view identity) const {
    if (identity.starts_with("pre:")) {
        auto it = cfg_.pan_links.find(std::string(identity.substr(4)));
        if (it == cfg_.pan_links.end()) return std::nullopt;
        return it->second.preassigned_key;
    }
    if (identity.starts_with("leuk:")) {
        auto rest = identity.substr(5);
        auto colon = rest.find(':');
        if (colon == std::string_view::npos) return std::nullopt;
        std::string pn(rest.substr(0, colon)), pne(rest.substr(colon + 1));
        if (auto s = sessions_.find(pn); s != sessions_.end()) {
            auto m = s->second.members.find(pne);
            if (m != s->second.members.end() && m->second.local_eukey) return m->second.local_eukey;
        }
        return local_eukey(pn, pne);
    }
    return std::nullopt;
}

std::optional<SecretKey> Gateway::local_eukey(const std::string& pn_id,
                                              const std::string& pne_id) const {
    auto p = local_keys_.find(pn_id);
    if (p == local_keys_.end()) return std::nullopt;
    auto k = p->second.find(pne_id);
    if (k == p->second.end()) return std::nullopt;
    return k->second;
}

Effects Gateway::on_tls_established(const std::string& peer, const std::string& identity,
                                    Millis /*now*/) {
    Effects out;
    // The identity must name the peer: "pre:<pne>" or "leuk:<pn>:<pne>".
    const bool names_peer = identity == preassigned_identity(peer) ||
                            (identity.starts_with("leuk:") && identity.ends_with(":" + peer));
    if (!names_peer) {
        counters_.count(pb::TLS_HANDSHAKE_FAILED);
        log(LogLevel::kWarn, "TLS identity does not name " + peer + "; closing");
        out.push_back(CloseLinkEffect{peer, pb::TLS_HANDSHAKE_FAILED});
        return out;
    }
    tls_links_[peer] = identity;
    link_failures_.erase(peer);
    log(LogLevel::kInfo, "PSK-TLS with " + peer + " established");
    return out;
}

pb::FailureReason Gateway::unreachable_reason(const std::string& pne_id) const {
    auto it = link_failures_.find(pne_id);
    return it == link_failures_.end() ? pb::UNKNOWN_ENTITY : it->second;
}

Effects Gateway::on_tls_failed(const std::string& peer, Millis now) {
    Effects out;
    tls_links_.erase(peer);
    counters_.count(pb::TLS_HANDSHAKE_FAILED);
    log(LogLevel::kWarn, "PSK-TLS handshake with " + peer + " failed");
    if (link_failures_.size() < kMaxNeighbours || link_failures_.count(peer))
        link_failures_[peer] = pb::TLS_HANDSHAKE_FAILED;
    auto p = pne_session_.find(peer);
    if (p == pne_session_.end()) return out;
    Session& s = sessions_.at(p->second);
    Member& mem = s.members.at(peer);
    if (mem.state == MemberState::kInvited || mem.state == MemberState::kAuthPending ||
        mem.state == MemberState::kJoined) {
        const bool before_join = mem.state == MemberState::kInvited;
        mem.state = MemberState::kFailed;  // counted above
        mem.reason = pb::TLS_HANDSHAKE_FAILED;
        mem.local_eukey.reset();
        log(LogLevel::kWarn, peer + " excluded from " + s.pn_id + ": tls handshake failed");
        if (before_join) pne_session_.erase(peer);
        maybe_register(out, s, now);
        maybe_send_aggregate(out, s, now);
    }
    return out;
}

Effects Gateway::on_link_down(const std::string& peer, Millis now, pb::FailureReason reason) {
    Effects out;
    tls_links_.erase(peer);
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
                     nullptr);
        return out;
    }
    auto p = pne_session_.find(peer);
    if (p == pne_session_.end()) return out;
    Session& s = sessions_.at(p->second);
    Member& mem = s.members.at(peer);
    mem.reachable = false;
    if (mem.state == MemberState::kInvited || mem.state == MemberState::kAuthPending) {
        fail_member(s, mem, pb::PEER_UNREACHABLE, "link went down");
        maybe_register(out, s, now);
        maybe_send_aggregate(out, s, now);
    }
    return out;
}

Effects Gateway::on_timer(Millis now) {
    Effects out;
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
                    if (m.state == MemberState::kInvited) {
                        fail_member(s, m, pb::TIMEOUT, "no answer to the invitation");
                        pne_session_.erase(id);
                    }
                maybe_register(out, s, now);
                break;
            case Phase::kCollectAuth:
                for (auto& [id, m] : s.members)
                    if (m.state == MemberState::kAuthPending)
                        fail_member(s, m, pb::TIMEOUT, "no Authentication Response");
                maybe_send_aggregate(out, s, now);
                break;
            case Phase::kWaitAuthRequest:
                conclude(out, s, false, pb::TIMEOUT, "no Authentication Request from the server",
                         nullptr);
                break;
            case Phase::kWaitRegistration:
                conclude(out, s, false, pb::TIMEOUT, "no PN Registration Response from the server",
                         nullptr);
                break;
        }
    }
    return out;
}

Millis Gateway::next_deadline() const {
    Millis d = kNever;
    for (const auto& [pn, s] : sessions_) d = std::min(d, s.deadline);
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
    inventory_ = std::move(inventory);
    routing_ = std::move(routing);
    local_keys_ = std::move(keys);
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
    for (const auto& [id, n] : neighbours_) put_s(id);
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
    for (const auto& [id, identity] : tls_links_) put_s(identity);
    return out;
}

}  // namespace cpns
