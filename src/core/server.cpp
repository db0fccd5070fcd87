#include "core/server.hpp"

#include <algorithm>

namespace cpns {

std::string_view to_string(EntityKind kind) {
    return kind == EntityKind::kGw ? "gw" : "pne";
}

std::string_view to_string(EntityStatus status) {
    switch (status) {
        case EntityStatus::kActive:
            return "active";
        case EntityStatus::kDisabled:
            return "disabled";
        case EntityStatus::kRevoked:
            return "revoked";
    }
    return "unknown";
}

std::optional<EntityKind> parse_entity_kind(std::string_view word) {
    for (auto k : {EntityKind::kPne, EntityKind::kGw})
        if (to_string(k) == word) return k;
    return std::nullopt;
}

std::optional<EntityStatus> parse_entity_status(std::string_view word) {
    for (auto st : {EntityStatus::kActive, EntityStatus::kDisabled, EntityStatus::kRevoked})
        if (to_string(st) == word) return st;
    return std::nullopt;
}

std::optional<EntityRecord> MemoryDirectory::find(const std::string& id) const {
    auto it = entities_.find(id);
    if (it == entities_.end()) return std::nullopt;
    return it->second;
}

bool MemoryDirectory::pn_registered(const std::string& gw_id, const std::string& pn_id) const {
    return pns_.count(gw_id + "/" + pn_id) != 0;
}

bool MemoryDirectory::register_pn(const std::string& gw_id, const pb::PnInventory& inv) {
    return pns_.emplace(gw_id + "/" + inv.pn_id(), inv).second;
}

Server::Server(ServerConfig config, const Directory& directory, Random& random)
    : cfg_(std::move(config)), dir_(directory), random_(random) {}

void Server::log(LogLevel level, const std::string& text) const {
    if (cfg_.log) cfg_.log(level, "server: " + text);
}

void Server::send(Effects& out, const std::string& to, pb::Envelope env) {
    env.set_version(kProtocolVersion);
    env.set_sender_id(cfg_.server_id);
    ++counters_.messages_out;
    out.push_back(SendEffect{to, std::move(env), Protection::kTls});
}

void Server::send_error(Effects& out, const std::string& to, const std::string& pn_id,
                        pb::FailureReason reason, const std::string& detail) {
    counters_.count(reason);
    log(LogLevel::kWarn, "refusing " + (pn_id.empty() ? std::string("request") : pn_id) + " from " +
                             to + ": " + std::string(reason_name(reason)) + " (" + detail + ")");
    pb::Envelope env;
    auto* e = env.mutable_error();
    e->set_pn_id(pn_id);
    e->set_reason(reason);
    e->set_detail(detail);
    send(out, to, std::move(env));
}

void Server::set_deadline(Session& s, Millis deadline) {
    const Key key{s.gw_id, s.pn_id};
    if (s.deadline != kNever) timers_.erase({s.deadline, key});
    s.deadline = deadline;
    if (deadline != kNever) timers_.insert({deadline, key});
}

void Server::remember(const Key& key, Millis now) {
    finished_[key] = now + kReplayMemory;
    finished_order_.emplace_back(now + kReplayMemory, key);
    while (!finished_order_.empty() &&
           (finished_order_.size() > kMaxReplayMemory || finished_order_.front().first <= now)) {
        auto [t, k] = finished_order_.front();
        finished_order_.pop_front();
        auto it = finished_.find(k);
        if (it != finished_.end() && it->second == t) finished_.erase(it);
    }
}

PneContext Server::context(const Session& s, const std::string& pne_id, const PneState& p) const {
    PneContext ctx;
    ctx.pne_id = pne_id;
    ctx.gw_id = s.gw_id;
    ctx.pn_id = s.pn_id;
    ctx.flow = to_flow(s.request.flow());
    ctx.role = p.role;
    if (p.role == PneRole::kInitiator) {
        ctx.setup = to_setup_kind(s.request.setup_type());
        ctx.invited.assign(s.request.invited_pne_ids().begin(), s.request.invited_pne_ids().end());
    }
    ctx.local_key_requested = p.join.local_eukey_requested();
    return ctx;
}

// Step 4 arrives (5.2.1.1; step 5 of 5.2.1.2); step 5 (6) follows.
void Server::handle_registration(Effects& out, const std::string& from,
                                 const pb::PnRegistrationRequest& m, Millis now) {
    const Key key{from, m.pn_id()};
    if (m.gw().gw_id() != from)
        return send_error(out, from, m.pn_id(), pb::GATEWAY_AUTHENTICATION_FAILED,
                          "PN GW ID differs from the authenticated link identity");
    const auto gw = dir_.find(from);
    if (!gw || gw->kind != EntityKind::kGw)
        return send_error(out, from, m.pn_id(), pb::UNKNOWN_ENTITY, "unknown PN GW");
    if (gw->status != EntityStatus::kActive)
        return send_error(out, from, m.pn_id(), pb::REVOKED, "PN GW is disabled or revoked");
    if (sessions_.count(key)) {
        ++counters_.ignored;  // duplicate of a registration in progress
        return;
    }
    if (finished_.count(key) || dir_.pn_registered(from, m.pn_id()))
        return send_error(out, from, m.pn_id(), pb::DUPLICATE_PN,
                          "PN ID already used by this PN GW");
    if (sessions_.size() >= kMaxServerSessions)
        return send_error(out, from, m.pn_id(), pb::LIMIT_EXCEEDED, "too many establishments");
    if (m.pnes().empty())
        return send_error(out, from, m.pn_id(), pb::MALFORMED_MESSAGE, "no PNE in the request");
    int initiators = 0;
    std::set<std::string> seen;
    for (const auto& p : m.pnes()) {
        initiators += p.role() == pb::ROLE_INITIATOR;
        if (!seen.insert(p.join().pne_id()).second)
            return send_error(out, from, m.pn_id(), pb::MALFORMED_MESSAGE, "PNE listed twice");
    }
    const bool flow_ok = (m.flow() == pb::FLOW_PNE_INITIATED && initiators == 1) ||
                         (m.flow() == pb::FLOW_GW_INITIATED && initiators == 0);
    if (!flow_ok)
        return send_error(out, from, m.pn_id(), pb::MALFORMED_MESSAGE,
                          "flow and PNE roles do not match");

    Session s;
    s.gw_id = from;
    s.pn_id = m.pn_id();
    s.request = m;
    s.rand_server = random_.bytes(kRandSize);

    pb::Envelope env;
    auto* a = env.mutable_auth_request();
    a->set_pn_id(s.pn_id);
    a->set_rand_server(to_field(s.rand_server));
    std::size_t asked = 0;
    for (const auto& p : m.pnes()) {
        const std::string& id = p.join().pne_id();
        PneState st;
        st.join = p.join();
        st.role = to_role(p.role());
        auto rec = dir_.find(id);
        if (!rec || rec->kind != EntityKind::kPne) {
            st.reason = pb::UNKNOWN_ENTITY;
        } else if (rec->status != EntityStatus::kActive) {
            st.reason = pb::REVOKED;
        } else {
            st.pending = true;
            ++asked;
            a->add_pne_ids(id);
            if (p.join().local_eukey_requested()) {
                // Step 5: one LocalEUKey per PNE, two copies under the two recipients' KEKs.
                SecretKey local = random_.key();
                auto* k = a->add_local_eukeys();
                k->set_pne_id(id);
                k->set_for_pne(to_field(wrap_local_eukey(rec->eukey, Recipient::kPne, s.pn_id, id,
                                                         from, s.rand_server, local)));
                k->set_for_gw(to_field(wrap_local_eukey(gw->eukey, Recipient::kGw, s.pn_id, id,
                                                        from, s.rand_server, local)));
            }
        }
        if (st.reason != pb::REASON_NONE) {
            counters_.count(st.reason);
            log(LogLevel::kWarn,
                id + " refused in " + s.pn_id + ": " + std::string(reason_name(st.reason)));
            auto* x = a->add_excluded();
            x->set_pne_id(id);
            x->set_reason(st.reason);
        }
        s.pnes.emplace(id, std::move(st));
    }
    log(LogLevel::kInfo, "PN Registration Request " + s.pn_id + " from " + from + ": " +
                             std::to_string(asked) + " of " + std::to_string(m.pnes_size()) +
                             " PNE(s) to authenticate");
    auto [it, _] = sessions_.emplace(key, std::move(s));
    if (asked == 0) {
        finish(out, it->second, false, pb::NO_PNE_AUTHENTICATED, "no PNE is known and active", now);
        return;
    }
    send(out, from, std::move(env));
    set_deadline(it->second, now + kAuthResponseTimeout);
}

// Steps 10-11 arrive (5.2.1.1; 11-12 of 5.2.1.2).
void Server::handle_auth_response(Effects& out, const std::string& from,
                                  const pb::AuthenticationResponse& m, Millis now) {
    const Key key{from, m.pn_id()};
    auto it = sessions_.find(key);
    if (it == sessions_.end()) {
        if (finished_.count(key))
            return send_error(out, from, m.pn_id(), pb::REPLAYED,
                              "Authentication Response for an establishment that has ended");
        return send_error(out, from, m.pn_id(), pb::UNEXPECTED_MESSAGE,
                          "Authentication Response for an unknown PN");
    }
    Session& s = it->second;
    if (s.phase != Phase::kWaitAuthResponse) {
        ++counters_.ignored;
        return;
    }
    std::map<std::string, const pb::PneAuthResult*> results;
    for (const auto& r : m.results()) results[r.pne_id()] = &r;
    std::size_t ok = 0;
    for (auto& [id, p] : s.pnes) {
        if (!p.pending) continue;
        p.pending = false;
        auto r = results.find(id);
        if (r == results.end()) {
            p.reason = pb::TIMEOUT;
        } else if (r->second->failure() != pb::REASON_NONE) {
            p.reason = r->second->failure();
        } else {
            auto rec = dir_.find(id);  // status may have changed while we waited
            if (!rec || rec->status != EntityStatus::kActive) {
                p.reason = rec ? pb::REVOKED : pb::UNKNOWN_ENTITY;
            } else {
                const PneContext ctx = context(s, id, p);
                const ByteView rand_pne = bytes_of(p.join.rand_pne());
                p.sk = derive_sk_pne(rec->eukey, rand_pne, s.rand_server, ctx);
                const Hash expected =
                    derive_hash_pne(rec->eukey, rand_pne, s.rand_server, p.sk, ctx);
                if (ct_equal(expected, bytes_of(r->second->hash_pne()))) {
                    p.authenticated = true;
                    p.hash_server = derive_hash_server_pne(rec->eukey, rand_pne, s.rand_server,
                                                           p.sk, expected, ctx);
                    ++ok;
                } else {
                    p.reason = pb::AUTHENTICATION_FAILED;
                    p.sk = SecretKey{};
                }
            }
        }
        if (!p.authenticated) {
            counters_.count(p.reason);
            log(LogLevel::kWarn, id + " not authenticated in " + s.pn_id + ": " +
                                     std::string(reason_name(p.reason)));
        }
    }
    if (ok == 0) {
        finish(out, s, false, pb::NO_PNE_AUTHENTICATED, "no PNE authenticated", now);
        return;
    }
    // Step 11: register the PN with its authenticated PNEs; answer once it is durable.
    s.inventory.set_pn_id(s.pn_id);
    s.inventory.set_gw_id(s.gw_id);
    *s.inventory.mutable_gw_capabilities() = s.request.gw().capabilities();
    const std::uint64_t stamp =
        cfg_.wall_clock_ms ? cfg_.wall_clock_ms() : static_cast<std::uint64_t>(now);
    s.inventory.set_registered_at_ms(stamp);
    for (const auto& [id, p] : s.pnes) {
        if (!p.authenticated) continue;
        auto* mem = s.inventory.add_members();
        mem->set_pne_id(id);
        *mem->mutable_capabilities() = p.join.capabilities();
        *mem->mutable_contents() = p.join.contents();
        mem->set_joined_at_ms(stamp);
        mem->set_local_eukey_assigned(p.join.local_eukey_requested());
    }
    s.phase = Phase::kWaitPersist;
    set_deadline(s, now + kPersistTimeout);
    out.push_back(PersistPnEffect{s.gw_id, s.inventory});
}

Effects Server::on_persisted(const std::string& gw_id, const std::string& pn_id,
                             pb::FailureReason result, Millis now) {
    Effects out;
    auto it = sessions_.find({gw_id, pn_id});
    if (it == sessions_.end() || it->second.phase != Phase::kWaitPersist) return out;
    if (result != pb::REASON_NONE) {
        finish(out, it->second, false, result, "the PN could not be stored", now);
    } else {
        finish(out, it->second, true, pb::REASON_NONE, "", now);
    }
    return out;
}

// Step 12 (5.2.1.1; 13 of 5.2.1.2): PN Registration Response.
void Server::finish(Effects& out, Session& s, bool registered, pb::FailureReason reason,
                    const std::string& detail, Millis now) {
    pb::Envelope env;
    auto* r = env.mutable_registration_response();
    r->set_pn_id(s.pn_id);
    r->set_registered(registered);
    if (!registered) r->set_reason(reason);
    OutcomeEffect outcome;
    outcome.pn_id = s.pn_id;
    outcome.gw_id = s.gw_id;
    outcome.success = registered;
    outcome.reason = reason;
    outcome.detail = detail;
    for (auto& [id, p] : s.pnes) {
        auto* res = r->add_results();
        res->set_pne_id(id);
        const bool joined = registered && p.authenticated;
        res->set_authenticated(joined);
        if (joined) {
            res->set_hash_server_pne(to_field(p.hash_server));
            out.push_back(SessionKeyEffect{s.pn_id, id, p.sk});
        } else {
            res->set_reason(p.reason != pb::REASON_NONE ? p.reason : reason);
        }
        outcome.pnes.push_back(PneOutcome{id, joined, joined ? pb::REASON_NONE : res->reason()});
    }
    if (registered) {
        *r->mutable_inventory() = s.inventory;
        outcome.inventory = s.inventory;
        ++counters_.established;
        log(LogLevel::kInfo, "PN " + s.pn_id + " of " + s.gw_id + " registered with " +
                                 std::to_string(s.inventory.members_size()) + " PNE(s)");
    } else {
        counters_.count(reason);
        log(LogLevel::kWarn, "PN " + s.pn_id + " of " + s.gw_id + " not registered: " +
                                 std::string(reason_name(reason)) + " (" + detail + ")");
    }
    send(out, s.gw_id, std::move(env));
    out.push_back(std::move(outcome));
    const Key key{s.gw_id, s.pn_id};
    set_deadline(s, kNever);
    remember(key, now);
    sessions_.erase(key);  // wipes SKs held by the session
}

Effects Server::on_message(const std::string& from, const pb::Envelope& env, Millis now) {
    Effects out;
    ++counters_.messages_in;
    switch (env.body_case()) {
        case pb::Envelope::kRegistrationRequest:
            handle_registration(out, from, env.registration_request(), now);
            break;
        case pb::Envelope::kAuthResponse:
            handle_auth_response(out, from, env.auth_response(), now);
            break;
        case pb::Envelope::kError:
            counters_.count(env.error().reason());
            log(LogLevel::kWarn, from + " reports " +
                                     std::string(reason_name(env.error().reason())) + ": " +
                                     env.error().detail());
            break;
        default:
            send_error(out, from, "", pb::UNEXPECTED_MESSAGE,
                       std::string(message_name(env)) + " is not for the CPNS Server");
            break;
    }
    return out;
}

Effects Server::on_timer(Millis now) {
    Effects out;
    while (!timers_.empty() && timers_.begin()->first <= now) {
        const Key key = timers_.begin()->second;
        timers_.erase(timers_.begin());
        auto it = sessions_.find(key);
        if (it == sessions_.end()) continue;
        Session& s = it->second;
        s.deadline = kNever;
        if (s.phase == Phase::kWaitAuthResponse) {
            for (auto& [id, p] : s.pnes)
                if (p.pending) p.pending = false, p.reason = pb::TIMEOUT;
            finish(out, s, false, pb::TIMEOUT, "no Authentication Response from the PN GW", now);
        } else {
            finish(out, s, false, pb::INTERNAL_ERROR, "the store did not confirm the registration",
                   now);
        }
    }
    return out;
}

Millis Server::next_deadline() const {
    return timers_.empty() ? kNever : timers_.begin()->first;
}

}  // namespace cpns
