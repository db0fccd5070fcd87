// The PN GW's part of the PN lifecycle (docs/protocol.md, "PN lifecycle"): it asks the CPNS
// Server for a change (its own remove or dissolve, or a PNE's leave, which it relays with the
// PNE's proof), and only when the server answers that the change is durable does it change its
// own inventory, routing table and LocalEUKeys, save them, and pass each PNE its notice.
#include <algorithm>

#include "core/gateway.hpp"
#include "core/lifecycle.hpp"

namespace cpns {

std::optional<std::pair<pb::FailureReason, std::string>> Gateway::check_change(
    const std::string& pn_id, const std::string& pne_id) const {
    auto it = inventory_.find(pn_id);
    if (it == inventory_.end()) return {{pb::UNKNOWN_PN, "no PN " + pn_id + " at this PN GW"}};
    if (changes_.count(pn_id) || sessions_.count(pn_id) || rekeys_.count(pn_id))
        return {{pb::BUSY, "another change of " + pn_id + " is in progress"}};
    if (!pne_id.empty()) {
        const auto& ms = it->second.members();
        if (std::none_of(ms.begin(), ms.end(),
                         [&](const pb::PnMember& m) { return m.pne_id() == pne_id; }))
            return {{pb::NOT_A_MEMBER, pne_id + " is not a member of " + pn_id}};
    }
    return std::nullopt;
}

GatewayEffects Gateway::remove(const std::string& pn_id, const std::string& pne_id, Millis now) {
    return start_change(pb::CHANGE_REMOVE, pn_id, pne_id, now);
}

GatewayEffects Gateway::dissolve(const std::string& pn_id, Millis now) {
    return start_change(pb::CHANGE_DISSOLVE, pn_id, "", now);
}

GatewayEffects Gateway::add(const std::string& pn_id, std::vector<std::string> pne_ids,
                            Millis now) {
    Out out;
    auto fail_now = [&](pb::FailureReason r, const std::string& why) {
        counters_.count(r);
        log(LogLevel::kWarn, "cannot add to " + pn_id + ": " + why);
        out.push_back(
            OutcomeEffect{valid_id(pn_id) ? pn_id : "", cfg_.gw_id, false, r, why, {}, {}, "add"});
        return out;
    };
    if (!valid_id(pn_id)) return fail_now(pb::MALFORMED_MESSAGE, "not a valid PN ID");
    if (auto refused = check_change(pn_id, "")) return fail_now(refused->first, refused->second);
    if (sessions_.count(pn_id))
        return fail_now(pb::BUSY, "PNEs are already being added to " + pn_id);
    if (auto refused = admission(true, "")) return fail_now(refused->first, refused->second);
    const pb::PnInventory& inv = inventory_.at(pn_id);
    std::set<std::string> members;
    for (const auto& m : inv.members()) members.insert(m.pne_id());
    if (pne_ids.empty())
        for (auto& id : live_pnes("", now))
            if (!members.count(id)) pne_ids.push_back(std::move(id));
    std::sort(pne_ids.begin(), pne_ids.end());
    pne_ids.erase(std::unique(pne_ids.begin(), pne_ids.end()), pne_ids.end());
    if (pne_ids.empty())
        return fail_now(pb::UNKNOWN_ENTITY, "no PNE to add (run discovery, or name them)");
    for (const auto& id : pne_ids) {
        if (!valid_id(id)) return fail_now(pb::MALFORMED_MESSAGE, "invalid PNE ID " + id);
        if (members.count(id))
            return fail_now(pb::ALREADY_A_MEMBER,
                            std::string(id).append(" is already a member of ").append(pn_id));
        if (pne_session_.count(id))
            return fail_now(pb::BUSY,
                            std::string(id).append(" is taking part in another establishment"));
    }
    if (members.size() + pne_ids.size() > kMaxPnesPerPn)
        return fail_now(pb::LIMIT_EXCEEDED,
                        "the PN would have more than " + std::to_string(kMaxPnesPerPn) + " PNEs");
    Session fresh;
    fresh.pn_id = pn_id;
    fresh.flow = Flow::kGwInitiated;
    fresh.add = true;
    fresh.revision = inv.revision();
    log(LogLevel::kInfo, "inviting " + std::to_string(pne_ids.size()) + " PNE(s) into " + pn_id +
                             " (revision " + std::to_string(inv.revision()) + ")");
    Session& s = open_session(out, std::move(fresh), now, "PN update by the PN GW");
    add_invitees(out, s, pne_ids, now);
    maybe_register(out, s, now);
    return out;
}

GatewayEffects Gateway::rekey(const std::string& pn_id, const std::string& pne_id, Millis now) {
    Out out;
    auto fail_now = [&](pb::FailureReason r, const std::string& why) {
        counters_.count(r);
        log(LogLevel::kWarn, "cannot re-key " + pne_id + " in " + pn_id + ": " + why);
        OutcomeEffect o{valid_id(pn_id) ? pn_id : "", cfg_.gw_id, false, r, why, {}, {}, "rekey"};
        if (valid_id(pne_id)) o.pnes.push_back(PneOutcome{pne_id, false, r});
        out.push_back(std::move(o));
        return out;
    };
    if (!valid_id(pn_id) || !valid_id(pne_id))
        return fail_now(pb::MALFORMED_MESSAGE, "not a valid PN or PNE ID");
    if (auto refused = check_change(pn_id, pne_id))
        return fail_now(refused->first, refused->second);
    if (!local_eukey(pn_id, pne_id))
        return fail_now(pb::NO_LOCAL_EUKEY, pne_id + " holds no LocalEUKey in " + pn_id +
                                                " (it uses its pre-assigned key)");
    if (pne_session_.count(pne_id))
        return fail_now(pb::BUSY, pne_id + " is taking part in another establishment");
    if (auto refused = admission(true, "")) return fail_now(refused->first, refused->second);
    Session fresh;
    fresh.pn_id = pn_id;
    fresh.flow = Flow::kGwInitiated;
    fresh.rekey = true;
    fresh.revision = inventory_.at(pn_id).revision();
    log(LogLevel::kInfo, "re-keying " + pne_id + " in " + pn_id + " (revision " +
                             std::to_string(fresh.revision) + ")");
    Session& s = open_session(out, std::move(fresh), now, "LocalEUKey re-key by the PN GW");
    add_invitees(out, s, {pne_id}, now);
    maybe_register(out, s, now);
    return out;
}

void Gateway::handle_rekey_order(Out& out, const pb::PnChangeRequest& m, Millis now) {
    if (m.op() != pb::CHANGE_REKEY) {
        ++counters_.ignored;
        log(LogLevel::kWarn, "a change request from the server that is no re-key order: ignored");
        return;
    }
    log(LogLevel::kInfo, "the CPNS Server orders a re-key of " + m.pne_id() + " in " + m.pn_id());
    if (ordered_.count(m.pn_id()) || ordered_.size() >= kMaxPnsPerGw) {
        pb::Envelope env = error_report(m.pn_id(), pb::BUSY, "a re-key of this PN is running");
        send(out, cfg_.server_id, std::move(env));
        return;
    }
    ordered_.insert(m.pn_id());
    GatewayEffects fx = rekey(m.pn_id(), m.pne_id(), now);
    if (const auto* o = find_outcome(fx))  // refused at once
        report_order(out, m.pn_id(), false, outcome_reason(false, o->reason), o->detail, 0);
    for (auto& e : fx) out.push_back(std::move(e));
}

void Gateway::report_order(Out& out, const std::string& pn_id, bool success,
                           pb::FailureReason reason, const std::string& detail,
                           std::uint64_t revision) {
    if (!ordered_.erase(pn_id)) return;
    pb::Envelope env;
    if (success) {
        auto& ack = *env.mutable_change_notify_ack();
        ack.set_pn_id(pn_id);
        ack.set_revision(revision);
        ack.set_rekeyed(true);
    } else {
        env = error_report(pn_id, reason, detail);
    }
    send(out, cfg_.server_id, std::move(env));
}

void Gateway::switch_key(Out& out, const std::string& pn_id) {
    auto it = rekeys_.find(pn_id);
    const PendingRekey r = std::move(it->second);
    rekeys_.erase(it);
    local_keys_[pn_id].insert_or_assign(r.pne_id, r.key);  // the old one is wiped here
    log(LogLevel::kInfo, r.pne_id + " confirmed its new LocalEUKey in " + pn_id +
                             ": the old one is no longer accepted");
    // Saved before anything is told (the daemons hold what follows behind the save).
    out.push_back(StoreLocalKeyEffect{pn_id, r.pne_id, r.key});
    const auto inv = inventory_.find(pn_id);
    if (inv != inventory_.end()) out.push_back(StoreInventoryEffect{inv->second, false});
    // A PSK-TLS session made with the old LocalEUKey ends (the PNE connects again with the new).
    auto link = tls_links_.find(r.pne_id);
    if (!r.new_key_session && link != tls_links_.end() &&
        link->second == local_eukey_identity(pn_id, r.pne_id))
        out.push_back(CloseLinkEffect{r.pne_id, pb::REASON_NONE});
    OutcomeEffect o{pn_id, cfg_.gw_id, true,   pb::REASON_NONE, "new LocalEUKey in force",
                    {},    {},         "rekey"};
    if (inv != inventory_.end()) o.inventory = inv->second;
    o.pnes.push_back(PneOutcome{r.pne_id, true, pb::REASON_NONE});
    out.push_back(std::move(o));
    report_order(out, pn_id, true, pb::REASON_NONE, "", r.revision);
}

void Gateway::drop_rekey(Out& out, const std::string& pn_id, pb::FailureReason reason,
                         const std::string& detail) {
    auto it = rekeys_.find(pn_id);
    const PendingRekey r = std::move(it->second);
    rekeys_.erase(it);  // wipes the new LocalEUKey
    counters_.count(reason);
    log(LogLevel::kWarn, "re-key of " + r.pne_id + " in " + pn_id +
                             " failed: " + std::string(reason_name(reason)) + " (" + detail +
                             "); the old LocalEUKey stays in force");
    // A PSK-TLS session made with the new LocalEUKey ends: that key never came into force.
    auto link = tls_links_.find(r.pne_id);
    if (r.new_key_session && link != tls_links_.end() &&
        link->second == local_eukey_identity(pn_id, r.pne_id))
        out.push_back(CloseLinkEffect{r.pne_id, reason});
    OutcomeEffect o{pn_id, cfg_.gw_id, false, reason, detail, {}, {}, "rekey"};
    if (auto inv = inventory_.find(pn_id); inv != inventory_.end()) o.inventory = inv->second;
    o.pnes.push_back(PneOutcome{r.pne_id, false, reason});
    out.push_back(std::move(o));
    report_order(out, pn_id, false, reason, detail, 0);
}

void Gateway::expire_rekeys(Out& out, Millis now) {
    std::vector<std::string> due;
    for (const auto& [pn, r] : rekeys_)
        if (now >= r.deadline) due.push_back(pn);
    for (const auto& pn : due)
        drop_rekey(out, pn, pb::TIMEOUT, "the PNE did not confirm its new LocalEUKey in time");
}

GatewayEffects Gateway::start_change(pb::ChangeOp op, const std::string& pn_id,
                                     const std::string& pne_id, Millis now) {
    Out out;
    const std::string name(cpns::to_string(op));
    std::optional<std::pair<pb::FailureReason, std::string>> refused;
    if (!valid_id(pn_id) || (op == pb::CHANGE_REMOVE && !valid_id(pne_id)))
        refused = {pb::MALFORMED_MESSAGE, "not a valid PN or PNE ID"};
    else
        refused = check_change(pn_id, pne_id);
    if (refused) {
        counters_.count(refused->first);
        log(LogLevel::kWarn, "cannot " + name + ": " + refused->second);
        out.push_back(OutcomeEffect{valid_id(pn_id) ? pn_id : "",
                                    cfg_.gw_id,
                                    false,
                                    refused->first,
                                    refused->second,
                                    {},
                                    {},
                                    name});
        return out;
    }
    const std::uint64_t revision = inventory_.at(pn_id).revision();
    log(LogLevel::kInfo, name + " " + pn_id + (pne_id.empty() ? "" : " " + pne_id) +
                             ": asking the CPNS Server (revision " + std::to_string(revision) +
                             ")");
    pb::Envelope env;
    auto& r = *env.mutable_change_request();
    r.set_pn_id(pn_id);
    r.set_op(op);
    r.set_pne_id(pne_id);
    r.set_revision(revision);
    changes_[pn_id] =
        PendingChange{op, pne_id, "", now + kChangeResponseTimeout, r, now + kChangeRetryInterval};
    send(out, cfg_.server_id, std::move(env));
    return out;
}

// A PNE asks to leave. The proof is the server's to check; the PN GW only relays what it can
// tell is about one of its PNs and comes from that PNE: on an insecure PAN, a PNE with a
// working PSK-TLS link must ask inside it (a request in clear under its name is dropped, so
// that nobody can keep its PN busy with bad proofs).
void Gateway::handle_leave_request(Out& out, const std::string& from, const pb::PnLeaveRequest& m,
                                   Protection protection, Millis now) {
    if (protection == Protection::kClear && !pan_secure(from) && tls_up(from)) {
        ++counters_.ignored;
        log(LogLevel::kWarn, "PnLeaveRequest in clear under the name of " + from +
                                 ", which has a working PSK-TLS link: ignored");
        return;
    }
    auto answer = [&](pb::FailureReason reason, const std::string& why) {
        counters_.count(reason);
        log(LogLevel::kWarn, "leave of " + m.pn_id() + " by " + from + " refused: " + why);
        pb::Envelope env;
        auto& r = *env.mutable_leave_response();
        r.set_pn_id(m.pn_id());
        r.set_accepted(false);
        r.set_reason(reason);
        send(out, from, std::move(env));
    };
    if (m.gw_id() != cfg_.gw_id) return answer(pb::UNKNOWN_PN, "it names PN GW " + m.gw_id());
    if (auto refused = check_change(m.pn_id(), from))
        return answer(refused->first, refused->second);
    log(LogLevel::kInfo, from + " asks to leave " + m.pn_id() + ": relayed to the CPNS Server");
    pb::Envelope env;
    auto& r = *env.mutable_change_request();
    r.set_pn_id(m.pn_id());
    r.set_op(pb::CHANGE_LEAVE);
    r.set_pne_id(from);
    r.set_revision(m.revision());
    *r.mutable_leave() = m;
    changes_[m.pn_id()] = PendingChange{
        pb::CHANGE_LEAVE, from, from, now + kChangeResponseTimeout, r, now + kChangeRetryInterval};
    send(out, cfg_.server_id, std::move(env));
}

// Takes the server's PN as its own when it is newer than the one held: after an accepted
// change, and after a refusal that shows this PN GW's view was out of date.
std::vector<std::string> Gateway::adopt(Out& out, const pb::PnChangeResponse& m) {
    std::vector<std::string> close;
    auto it = inventory_.find(m.pn_id());
    if (it == inventory_.end()) return close;
    pb::PnInventory inv = m.inventory();
    if (inv.revision() <= it->second.revision()) return close;
    inv.set_pn_id(m.pn_id());  // kept as this PN of this PN GW (see conclude())
    inv.set_gw_id(cfg_.gw_id);
    std::set<std::string> stay;
    for (const auto& mem : inv.members()) stay.insert(mem.pne_id());
    if (auto r = rekeys_.find(m.pn_id());
        r != rekeys_.end() && (m.dissolved() || !stay.count(r->second.pne_id)))
        drop_rekey(out, m.pn_id(), pb::NOT_A_MEMBER, "the PNE left the PN meanwhile");
    // A PNE no longer in the PN loses its LocalEUKey here, and a PSK-TLS session made with it.
    if (auto keys = local_keys_.find(m.pn_id()); keys != local_keys_.end()) {
        for (auto k = keys->second.begin(); k != keys->second.end();) {
            if (stay.count(k->first)) {
                ++k;
                continue;
            }
            auto link = tls_links_.find(k->first);
            if (link != tls_links_.end() &&
                link->second == local_eukey_identity(m.pn_id(), k->first))
                close.push_back(k->first);
            k = keys->second.erase(k);
        }
        if (keys->second.empty()) local_keys_.erase(keys);
    }
    if (m.accepted())
        adopted_untold_.erase(m.pn_id());
    else
        adopted_untold_[m.pn_id()] = inv.revision();
    if (m.dissolved() || inv.members().empty()) {
        adopted_untold_.erase(m.pn_id());
        inventory_.erase(it);
        forget_initiator(m.pn_id());
        unsure_adds_.erase(m.pn_id());
        routing_.erase(m.pn_id());
        local_keys_.erase(m.pn_id());
        log(LogLevel::kInfo, "PN " + m.pn_id() + " dissolved: forgotten");
        out.push_back(StoreInventoryEffect{inv, true});
        return close;
    }
    routing_[m.pn_id()] = {stay.begin(), stay.end()};
    it->second = inv;
    log(LogLevel::kInfo, "PN " + m.pn_id() + " now at revision " + std::to_string(inv.revision()) +
                             " with " + std::to_string(inv.members_size()) + " PNE(s)");
    out.push_back(StoreInventoryEffect{inv, false});
    return close;
}

void Gateway::sync(Out& out, const std::vector<std::string>& pn_ids, const std::string& why) {
    std::vector<std::string> names;
    if (pn_ids.empty())
        for (const auto& [pn, inv] : inventory_) names.push_back(pn);
    else
        names = pn_ids;
    std::vector<const pb::PnInventory*> pns;
    for (const auto& pn : names) {
        auto it = inventory_.find(pn);
        if (it == inventory_.end() || changes_.count(pn) || sessions_.count(pn)) continue;
        pns.push_back(&it->second);
    }
    if (pns.empty()) return;
    log(LogLevel::kInfo,
        why + ": resynchronising " + std::to_string(pns.size()) + " PN(s) with the CPNS Server");
    for (std::size_t i = 0; i < pns.size(); i += kMaxSyncBatch) {
        pb::Envelope env;
        auto& r = *env.mutable_sync_request();
        for (std::size_t j = i; j < std::min(pns.size(), i + kMaxSyncBatch); ++j) {
            auto& held = *r.add_pns();
            held.set_pn_id(pns[j]->pn_id());
            held.set_revision(pns[j]->revision());
            for (const auto& m : pns[j]->members()) held.add_pne_ids(m.pne_id());
        }
        send(out, cfg_.server_id, std::move(env));
    }
}

void Gateway::handle_change_response(Out& out, const pb::PnChangeResponse& m, Millis now) {
    if (m.op() == pb::CHANGE_SYNC && !m.accepted()) {
        // The server's store holds an older revision than this PN GW: it should not happen
        // (a state or a store restored from elsewhere). Nothing changes; reported.
        const auto held = inventory_.find(m.pn_id());
        const std::string why =
            "the CPNS Server's store has revision " + std::to_string(m.inventory().revision()) +
            (held == inventory_.end()
                 ? std::string()
                 : ", older than the " + std::to_string(held->second.revision()) + " held here");
        counters_.count(pb::STALE_REVISION);
        log(LogLevel::kError, "sync of " + m.pn_id() + ": " + why + ": left as it is");
        out.push_back(OutcomeEffect{
            m.pn_id(), cfg_.gw_id, false, pb::STALE_REVISION, why, m.inventory(), {}, "sync"});
        return;
    }
    auto it = changes_.find(m.pn_id());
    const bool pending =
        it != changes_.end() && it->second.op == m.op() && it->second.pne_id == m.pne_id();
    const auto held = inventory_.find(m.pn_id());
    // The server's accepted answer of the revision this PN GW already took from a refusal
    // (the two crossed): nothing to change, but its notices are the other members' only news.
    const auto untold = adopted_untold_.find(m.pn_id());
    const bool catch_up = !pending && m.accepted() && !m.dissolved() && held != inventory_.end() &&
                          untold != adopted_untold_.end() &&
                          untold->second == m.inventory().revision() &&
                          held->second.revision() == m.inventory().revision();
    if (catch_up) {
        adopted_untold_.erase(untold);
        log(LogLevel::kInfo, "change response for " + m.pn_id() + " at the revision taken " +
                                 "from a refusal: passing its notices on");
    } else if (!pending &&
               (held == inventory_.end() || m.inventory().revision() <= held->second.revision())) {
        // A repeat of an answer already taken (the server answers a repeated request again),
        // or news older than what is held: nothing to change, nobody to tell again.
        ++counters_.ignored;
        log(LogLevel::kDebug, "change response for " + m.pn_id() + " that is not pending and " +
                                  "not newer than what is held: ignored");
        return;
    }
    // The state is changed and saved first; the notices and the outcome follow the save (the
    // daemons hold effects behind a StoreInventoryEffect until it is durable).
    std::vector<std::string> close = adopt(out, m);
    // A PNE the server removed because it is revoked or disabled: every PSK-TLS session of it
    // closes, whatever key it was made with (a LocalEUKey one is in `close` already).
    if (m.accepted() && m.op() == pb::CHANGE_REMOVE && m.reason() == pb::REVOKED &&
        tls_links_.count(m.pne_id()) &&
        std::find(close.begin(), close.end(), m.pne_id()) == close.end())
        close.push_back(m.pne_id());
    PendingChange c;
    if (pending) {
        c = it->second;
        changes_.erase(it);
    } else {
        // Late (after kChangeResponseTimeout) or not asked for: adopted if newer, and the
        // notices still go to the PNEs, which check them themselves.
        c = PendingChange{m.op(), m.pne_id(), m.op() == pb::CHANGE_LEAVE ? m.pne_id() : "",
                          kNever, {},         kNever};
        log(LogLevel::kInfo, "change response for " + m.pn_id() + " that is not pending");
    }
    for (const auto& n : m.notices()) {
        pb::Envelope env;
        if (c.op == pb::CHANGE_LEAVE && n.pne_id() == c.requester) {
            auto& r = *env.mutable_leave_response();
            r.set_pn_id(m.pn_id());
            r.set_accepted(m.accepted());
            r.set_reason(m.reason());
            *r.mutable_notice() = n;
        } else {
            tell(out, n, now);
            continue;
        }
        send(out, n.pne_id(), std::move(env));
    }
    const bool told = std::any_of(m.notices().begin(), m.notices().end(),
                                  [&](const auto& n) { return n.pne_id() == c.requester; });
    if (c.op == pb::CHANGE_LEAVE && !c.requester.empty() && !told) {
        pb::Envelope env;
        auto& r = *env.mutable_leave_response();
        r.set_pn_id(m.pn_id());
        r.set_accepted(m.accepted());
        r.set_reason(m.reason());
        send(out, c.requester, std::move(env));
    }
    // The PSK-TLS sessions made with a dropped LocalEUKey close after their last notice (the
    // transport flushes what is queued before it closes).
    for (const auto& peer : close)
        out.push_back(CloseLinkEffect{peer, peer == m.pne_id() && m.reason() == pb::REVOKED
                                                ? pb::REVOKED
                                                : pb::NOT_A_MEMBER});
    if (c.deadline != kNever || c.op == pb::CHANGE_LEAVE || c.op == pb::CHANGE_SYNC)
        finish_change(out, m.pn_id(), c, m.accepted(), m.reason(), m.dissolved() ? "dissolved" : "",
                      &m);
    undo_unsure_adds(out, m.pn_id(), now);
}

void Gateway::undo_unsure_adds(Out& out, const std::string& pn_id, Millis now) {
    auto u = unsure_adds_.find(pn_id);
    if (u == unsure_adds_.end()) return;
    auto held = inventory_.find(pn_id);
    if (held == inventory_.end()) {
        unsure_adds_.erase(u);
        return;
    }
    if (changes_.count(pn_id)) return;  // after the change in progress
    std::set<std::string> in;
    for (const auto& mem : held->second.members()) in.insert(mem.pne_id());
    std::string pne;
    for (const auto& id : u->second)
        if (in.count(id)) {
            pne = id;
            break;
        }
    if (pne.empty()) {  // none of them is in the PN: nothing to undo
        unsure_adds_.erase(u);
        return;
    }
    u->second.erase(pne);
    if (u->second.empty()) unsure_adds_.erase(u);
    log(LogLevel::kWarn, pne + " is in " + pn_id +
                             " although its add was reported as failed (the server committed it "
                             "late): removing it");
    for (auto& e : start_change(pb::CHANGE_REMOVE, pn_id, pne, now)) out.push_back(std::move(e));
}

void Gateway::finish_change(Out& out, const std::string& pn_id, const PendingChange& c,
                            bool accepted, pb::FailureReason reason, const std::string& detail,
                            const pb::PnChangeResponse* resp) {
    const std::string name(cpns::to_string(c.op));
    reason = outcome_reason(accepted, reason);
    if (!accepted) counters_.count(reason);
    log(accepted ? LogLevel::kInfo : LogLevel::kWarn,
        name + " of " + pn_id + (c.pne_id.empty() ? "" : " (" + c.pne_id + ")") +
            (accepted ? " done" : " failed: " + std::string(reason_name(reason))) +
            (detail.empty() ? "" : " (" + detail + ")"));
    OutcomeEffect o{pn_id, cfg_.gw_id, accepted, reason, detail, {}, {}, name};
    if (resp) o.inventory = resp->inventory();
    if (!c.pne_id.empty()) o.pnes.push_back(PneOutcome{c.pne_id, false, o.reason});
    out.push_back(std::move(o));
}

void Gateway::expire_changes(Out& out, Millis now) {
    std::vector<std::string> gave_up;
    for (auto it = changes_.begin(); it != changes_.end();) {
        if (it->second.deadline > now) {
            if (it->second.retry <= now) {  // the request or its answer may have been lost
                it->second.retry = now + kChangeRetryInterval;
                log(LogLevel::kInfo,
                    "no answer yet about " + it->first + ": asking the CPNS Server again");
                pb::Envelope env;
                *env.mutable_change_request() = it->second.request;
                send(out, cfg_.server_id, std::move(env));
            }
            ++it;
            continue;
        }
        const PendingChange c = it->second;
        const std::string pn = it->first;
        it = changes_.erase(it);
        if (c.op == pb::CHANGE_LEAVE) {
            pb::Envelope env;
            auto& r = *env.mutable_leave_response();
            r.set_pn_id(pn);
            r.set_accepted(false);
            r.set_reason(pb::TIMEOUT);
            send(out, c.requester, std::move(env));
        }
        finish_change(out, pn, c, false, pb::TIMEOUT, "the CPNS Server did not answer in time",
                      nullptr);
        // The server may have recorded it and its answer been lost: ask how the PN is now.
        gave_up.push_back(pn);
    }
    if (!gave_up.empty()) sync(out, gave_up, "gave up waiting for a change");
}

void Gateway::tell(Out& out, const pb::PnChangeNotice& n, Millis now) {
    pb::Envelope env;
    *env.mutable_change_notify()->mutable_notice() = n;
    send(out, n.pne_id(), std::move(env));
    const auto key = std::make_pair(n.pne_id(), n.inventory().pn_id());
    if (!notices_.count(key) && notices_.size() >= kMaxPendingNotices) {
        log(LogLevel::kWarn, "too many unacknowledged notices: the one of " + key.second + " for " +
                                 key.first + " is sent once");
        return;
    }
    // The newest notice of a PN replaces an older one: it says all the PNE needs.
    notices_[key] = PendingNotice{n, 1, now + kNoticeRepeatInterval};
}

void Gateway::handle_notice_ack(Out& out, const std::string& from, const pb::PnChangeNotifyAck& m,
                                Protection protection) {
    if (m.rekeyed()) {
        // A re-keyed PNE's confirmation, from the PNE over its protected path (inside its
        // PSK-TLS session on an insecure PAN), for the re-key sent to it.
        auto r = rekeys_.find(m.pn_id());
        if (r == rekeys_.end() || r->second.pne_id != from || r->second.revision != m.revision() ||
            (!pan_secure(from) && protection != Protection::kTls)) {
            ++counters_.ignored;
            log(LogLevel::kDebug, "re-key confirmation of " + m.pn_id() + " from " + from +
                                      " that is not pending (or came in clear): ignored");
            return;
        }
        return switch_key(out, m.pn_id());
    }
    auto it = notices_.find({from, m.pn_id()});
    if (it == notices_.end() || it->second.notice.inventory().revision() > m.revision()) {
        ++counters_.ignored;  // nothing pending, or an older notice's acknowledgement
        return;
    }
    log(LogLevel::kDebug, from + " acknowledged the notice of " + m.pn_id() + " (revision " +
                              std::to_string(m.revision()) + ")");
    notices_.erase(it);
}

void Gateway::repeat_notices(Out& out, Millis now, const std::string& pne_id) {
    for (auto it = notices_.begin(); it != notices_.end();) {
        PendingNotice& p = it->second;
        const bool for_it = !pne_id.empty() && it->first.first == pne_id;
        if (!for_it && now < p.next) {
            ++it;
            continue;
        }
        if (!for_it && p.sent >= kNoticeAttempts) {
            log(LogLevel::kWarn, it->first.first + " did not acknowledge the notice of " +
                                     it->first.second + " after " + std::to_string(p.sent) +
                                     " sends: given up (it holds a stale view of the PN)");
            it = notices_.erase(it);
            continue;
        }
        pb::Envelope env;
        *env.mutable_change_notify()->mutable_notice() = p.notice;
        send(out, it->first.first, std::move(env));
        if (!for_it) ++p.sent;
        p.next = now + kNoticeRepeatInterval;
        ++it;
    }
}

}  // namespace cpns
