// The CPNS Server's part of the PN lifecycle (docs/protocol.md, "PN lifecycle"): it checks a
// leave's proof, has the store apply the change at the named revision, and answers the PN GW
// with a notice for each PNE concerned, proven under that PNE's EUKey.
#include "core/server.hpp"

namespace cpns {

void Server::refuse_change(Out& out, const std::string& gw_id, const pb::PnChangeRequest& m,
                           pb::FailureReason reason, const std::string& why) {
    counters_.count(reason);
    log(LogLevel::kWarn, std::string(cpns::to_string(m.op())) + " of " + m.pn_id() + " from " +
                             gw_id + " refused: " + std::string(reason_name(reason)) + " (" + why +
                             ")");
    pb::Envelope env;
    auto& r = *env.mutable_change_response();
    r.set_pn_id(m.pn_id());
    r.set_op(m.op());
    r.set_pne_id(m.pne_id());
    r.set_accepted(false);
    r.set_reason(reason);
    send(out, gw_id, std::move(env));
    out.push_back(OutcomeEffect{
        m.pn_id(), gw_id, false, reason, why, {}, {}, std::string(cpns::to_string(m.op()))});
}

bool Server::same_request(const pb::PnChangeRequest& a, const pb::PnChangeRequest& b) {
    return a.pn_id() == b.pn_id() && a.op() == b.op() && a.pne_id() == b.pne_id() &&
           a.revision() == b.revision() && a.leave().rand_pne() == b.leave().rand_pne() &&
           a.leave().proof() == b.leave().proof();
}

void Server::handle_change_request(Out& out, const std::string& from, const pb::PnChangeRequest& m,
                                   Millis now) {
    const Key key{from, m.pn_id()};
    // A PN GW repeats a request it has no answer to (kChangeRetryInterval): the answer was
    // lost, or is still on its way.
    if (auto a = answered_.find(key);
        a != answered_.end() && a->second.until > now && same_request(a->second.request, m)) {
        log(LogLevel::kInfo, std::string(cpns::to_string(m.op())) + " of " + m.pn_id() + " from " +
                                 from + " asked again: the same answer again");
        send(out, from, a->second.answer);
        return;
    }
    if (auto c = changes_.find(key); c != changes_.end() && c->second.pushed == pb::REASON_NONE &&
                                     same_request(c->second.request, m)) {
        ++counters_.ignored;  // still in the store: its answer will come
        return;
    }
    if (m.op() == pb::CHANGE_REKEY)  // the server's order to a PN GW, never a request to it
        return refuse_change(out, from, m, pb::MALFORMED_MESSAGE,
                             "a re-key is a PnRegistrationRequest with rekey set");
    if (changes_.count(key))
        return refuse_change(out, from, m, pb::BUSY, "another change of this PN is in progress");
    if (changes_.size() >= kMaxServerChanges)
        return refuse_change(out, from, m, pb::LIMIT_EXCEEDED, "too many changes in progress");
    const auto gw = dir_.find(from);
    if (!gw || gw->kind != EntityKind::kGw || gw->status != EntityStatus::kActive)
        return refuse_change(out, from, m, pb::REVOKED, "the PN GW is not active");
    PendingChange p{m.op(), m.pne_id(), {}, now + kPersistTimeout, pb::REASON_NONE, 0, m};
    if (m.op() == pb::CHANGE_LEAVE) {
        // Only the PNE can leave: its proof is over this PN GW, this PN, the revision it holds
        // and a fresh random, under its EUKey, which the PN GW does not have.
        const pb::PnLeaveRequest& leave = m.leave();
        const auto pne = dir_.find(m.pne_id());
        if (!pne || pne->kind != EntityKind::kPne)
            return refuse_change(out, from, m, pb::UNKNOWN_ENTITY, "no such PNE");
        const Hash expected = leave_proof(pne->eukey, m.pne_id(), leave);
        const bool bound =
            leave.gw_id() == from && leave.pn_id() == m.pn_id() && leave.revision() == m.revision();
        if ((!ct_equal(ByteView{expected}, as_bytes(leave.proof())) || !bound) &&
            !cfg_.weaken.skip_leave_proof_check)
            return refuse_change(out, from, m, pb::AUTHENTICATION_FAILED,
                                 "the leave request's proof does not verify");
        p.rand_pne = leave.rand_pne();
    }
    log(LogLevel::kInfo, std::string(cpns::to_string(m.op())) + " of " + m.pn_id() + " from " +
                             from + (m.pne_id().empty() ? "" : " (PNE " + m.pne_id() + ")") +
                             " at revision " + std::to_string(m.revision()) + ": to the store");
    changes_[key] = p;
    change_timers_.insert({p.deadline, key});
    out.push_back(ChangePnEffect{from, m.pn_id(), m.op(), m.pne_id(), m.revision(), {}});
}

ServerEffects Server::on_changed(const std::string& gw_id, const std::string& pn_id,
                                 const ChangeResult& result, Millis now) {
    Out out;
    const Key key{gw_id, pn_id};
    auto it = changes_.find(key);
    if (auto s = sessions_.find(key); it == changes_.end() && s != sessions_.end() &&
                                      (s->second.request.add() || s->second.request.rekey()) &&
                                      s->second.phase == Phase::kWaitPersist) {
        finish_add(out, s->second, result, now);
        return out;
    }
    if (it == changes_.end()) {
        log(LogLevel::kWarn, "store result for a change of " + pn_id + " of " + gw_id +
                                 " that is not pending: ignored");
        return out;
    }
    PendingChange p = it->second;
    change_timers_.erase({p.deadline, key});
    changes_.erase(it);
    if (p.op == pb::CHANGE_SYNC) {
        ChangeResult read = result;
        if (auto h = sync_held_.find(key); h != sync_held_.end()) {
            read.before = std::move(h->second);
            sync_held_.erase(h);
        }
        finish_sync(out, gw_id, pn_id, p, read, now);
        return out;
    }
    if (p.pushed != pb::REASON_NONE && p.op == pb::CHANGE_REMOVE) {
        // The server's own removal raced with another change: try again at the revision the
        // store has, or, when the PNE is already gone (another server instance removed it),
        // tell the PN GW the PN as it is.
        if (result.reason == pb::STALE_REVISION && p.attempts < 3) {
            Out again = push_change(gw_id, pn_id, p.op, p.pne_id, result.inventory.revision(),
                                    p.pushed, now);
            changes_[key].attempts = p.attempts + 1;
            return again;
        }
        if (result.reason == pb::NOT_A_MEMBER) {
            ChangeResult as_is = result;
            as_is.reason = pb::REASON_NONE;
            as_is.dissolved = false;
            respond(out, gw_id, pn_id, p, as_is, "already removed", now);
            return out;
        }
    }
    respond(out, gw_id, pn_id, p, result,
            p.pushed != pb::REASON_NONE ? std::string(reason_name(p.pushed)) : "", now);
    return out;
}

void Server::respond(Out& out, const std::string& gw_id, const std::string& pn_id,
                     const PendingChange& p, const ChangeResult& result, const std::string& detail,
                     Millis now) {
    pb::Envelope env;
    auto& r = *env.mutable_change_response();
    r.set_pn_id(pn_id);
    r.set_op(p.op);
    r.set_pne_id(p.pne_id);
    r.set_accepted(result.reason == pb::REASON_NONE);
    // An accepted removal the server made itself carries why (REVOKED): the PN GW then closes
    // every PSK-TLS session of that PNE, not only one made with its LocalEUKey.
    r.set_reason(result.reason == pb::REASON_NONE && p.op == pb::CHANGE_REMOVE ? p.pushed
                                                                               : result.reason);
    *r.mutable_inventory() = result.inventory;
    r.set_dissolved(result.dissolved);
    for (auto& n : change_notices(result, p.op, p.pne_id, p.rand_pne)) {
        const auto pne = dir_.find(n.pne_id());
        if (!pne || pne->kind != EntityKind::kPne) continue;  // deleted since: nobody to tell
        const Hash proof = notice_proof(pne->eukey, n);
        n.set_proof(to_field(ByteView{proof}));
        *r.add_notices() = std::move(n);
    }
    const std::string op(cpns::to_string(p.op));
    if (result.reason == pb::REASON_NONE) {
        log(LogLevel::kInfo, op + " of " + pn_id + " of " + gw_id + " recorded: revision " +
                                 std::to_string(result.inventory.revision()) + ", " +
                                 std::to_string(result.inventory.members_size()) + " member(s)" +
                                 (result.dissolved ? ", dissolved" : "") +
                                 (detail.empty() ? "" : " (" + detail + ")"));
    } else {
        counters_.count(result.reason);
        log(LogLevel::kWarn, op + " of " + pn_id + " of " + gw_id + " refused by the store: " +
                                 std::string(reason_name(result.reason)));
    }
    std::vector<PneOutcome> pnes;
    if (!p.pne_id.empty()) pnes.push_back(PneOutcome{p.pne_id, false, result.reason});
    std::string text = result.dissolved ? "dissolved" : "";
    if (!detail.empty()) text += (text.empty() ? "" : ", ") + detail;
    out.push_back(OutcomeEffect{pn_id, gw_id, result.reason == pb::REASON_NONE, result.reason, text,
                                result.inventory, std::move(pnes), op});
    if (p.pushed == pb::REASON_NONE && p.request.op() != pb::CHANGE_UNSPECIFIED &&
        p.op != pb::CHANGE_SYNC) {
        const Key key{gw_id, pn_id};
        answered_[key] = AnsweredChange{p.request, env, now + kChangeAnswerMemory};
        answered_order_.emplace_back(now + kChangeAnswerMemory, key);
        while (!answered_order_.empty() && (answered_order_.size() > kMaxServerChanges ||
                                            answered_order_.front().first <= now)) {
            auto [until, k] = answered_order_.front();
            answered_order_.pop_front();
            if (auto it = answered_.find(k); it != answered_.end() && it->second.until == until)
                answered_.erase(it);
        }
    }
    send(out, gw_id, std::move(env));
}

ServerEffects Server::push_change(const std::string& gw_id, const std::string& pn_id,
                                  pb::ChangeOp op, const std::string& pne_id,
                                  std::uint64_t revision, pb::FailureReason why, Millis now) {
    Out out;
    const Key key{gw_id, pn_id};
    if (changes_.count(key) || changes_.size() >= kMaxServerChanges) {
        log(LogLevel::kWarn, std::string(cpns::to_string(op)) + " of " + pn_id +
                                 " postponed: another change of it is in progress");
        return out;  // the caller's next poll asks again
    }
    PendingChange p{op, pne_id, {}, now + kPersistTimeout, why, 0, {}};
    log(LogLevel::kInfo, std::string(cpns::to_string(op)) + " of " + pn_id + " of " + gw_id +
                             (pne_id.empty() ? "" : " (PNE " + pne_id + ")") + ": " +
                             std::string(reason_name(why)) + ", to the store");
    changes_[key] = p;
    change_timers_.insert({p.deadline, key});
    out.push_back(ChangePnEffect{gw_id, pn_id, op, pne_id, revision, {}});
    return out;
}

ServerEffects Server::announce(const std::string& gw_id, pb::ChangeOp op, const std::string& pne_id,
                               const ChangeResult& result, const std::string& detail) {
    Out out;
    PendingChange p{op, pne_id, {}, kNever, pb::REASON_NONE, 0, {}};
    // Not a PN GW's request: nothing to remember for repeats, so no time is needed.
    respond(out, gw_id, result.inventory.pn_id(), p, result, detail, 0);
    return out;
}

ServerEffects Server::order_rekey(const std::string& gw_id, const std::string& pn_id,
                                  const std::string& pne_id, std::uint64_t revision, bool linked,
                                  Millis now) {
    Out out;
    const Key key{gw_id, pn_id};
    auto refuse = [&](pb::FailureReason reason, const std::string& why) {
        counters_.count(reason);
        log(LogLevel::kWarn,
            "re-key of " + pne_id + " in " + pn_id + " of " + gw_id + " not sent: " + why);
        out.push_back(OutcomeEffect{pn_id,
                                    gw_id,
                                    false,
                                    reason,
                                    pne_id + ": " + why,
                                    {},
                                    {PneOutcome{pne_id, false, reason}},
                                    "rekey"});
        return out;
    };
    if (!linked) return refuse(pb::PEER_UNREACHABLE, "PN GW not connected");
    if (orders_.count(key)) return refuse(pb::BUSY, "another re-key of this PN is ordered");
    if (orders_.size() >= kMaxServerChanges)
        return refuse(pb::LIMIT_EXCEEDED, "too many re-keys ordered");
    orders_[key] = RekeyOrder{pne_id, now + kRekeyOrderTimeout};
    change_timers_.insert({now + kRekeyOrderTimeout, key});
    log(LogLevel::kInfo, "re-key of " + pne_id + " in " + pn_id + " ordered: sent to " + gw_id);
    pb::Envelope env;
    auto& r = *env.mutable_change_request();
    r.set_pn_id(pn_id);
    r.set_op(pb::CHANGE_REKEY);
    r.set_pne_id(pne_id);
    r.set_revision(revision);
    send(out, gw_id, std::move(env));
    return out;
}

void Server::end_order(Out& out, const Key& key, bool success, pb::FailureReason reason,
                       const std::string& detail) {
    auto it = orders_.find(key);
    const std::string pne = it->second.pne_id;
    change_timers_.erase({it->second.deadline, key});
    orders_.erase(it);
    reason = outcome_reason(success, reason);
    if (!success) counters_.count(reason);
    log(success ? LogLevel::kInfo : LogLevel::kWarn,
        "re-key of " + pne + " in " + key.second + " of " + key.first +
            (success ? ": done" : ": failed: " + std::string(reason_name(reason))) + " (" + detail +
            ")");
    out.push_back(OutcomeEffect{key.second,
                                key.first,
                                success,
                                reason,
                                pne + ": " + detail,
                                {},
                                {PneOutcome{pne, success, reason}},
                                "rekey"});
}

// The PN GW's report on a re-key ordered by the server: PnChangeNotifyAck.rekeyed (the PNE
// confirmed its new LocalEUKey) or an ErrorReport naming the PN.
void Server::handle_gw_report(Out& out, const std::string& from, const pb::Envelope& env) {
    const std::string& pn =
        env.has_change_notify_ack() ? env.change_notify_ack().pn_id() : env.error().pn_id();
    const Key key{from, pn};
    if (!orders_.count(key) ||
        (env.has_change_notify_ack() && !env.change_notify_ack().rekeyed())) {
        // Not a report on an order in progress: as for any message not for the server.
        return send_error(out, from, "", pb::UNEXPECTED_MESSAGE,
                          std::string(message_name(env)) + " is not for the CPNS Server");
    }
    if (env.has_change_notify_ack())
        return end_order(out, key, true, pb::REASON_NONE,
                         "new LocalEUKey in force at revision " +
                             std::to_string(env.change_notify_ack().revision()));
    end_order(out, key, false, env.error().reason(), "PN GW reports: " + env.error().detail());
}

// A change whose store result has not come within kPersistTimeout: the PN GW learns
// STORE_UNAVAILABLE now; the result, when it comes, is still sent (on_changed).
void Server::expire_changes(Out& out, Millis now) {
    while (!change_timers_.empty() && change_timers_.begin()->first <= now) {
        const auto [when, key] = *change_timers_.begin();
        change_timers_.erase(change_timers_.begin());
        if (auto o = orders_.find(key); o != orders_.end() && o->second.deadline == when) {
            end_order(out, key, false, pb::TIMEOUT, "no report from the PN GW in time");
            continue;
        }
        auto it = changes_.find(key);
        if (it == changes_.end() || it->second.deadline != when) continue;
        it->second.deadline = kNever;
        if (it->second.op == pb::CHANGE_SYNC) {
            // Nothing to refuse: the PN GW asked nothing of the PN. The read's result is still
            // answered when it comes (on_changed); else the PN GW's next sync asks again.
            log(LogLevel::kWarn, "sync of " + key.second + " of " + key.first +
                                     ": the store did not answer in time");
            continue;
        }
        pb::PnChangeRequest m;
        m.set_pn_id(key.second);
        m.set_op(it->second.op);
        m.set_pne_id(it->second.pne_id);
        refuse_change(out, key.first, m, pb::STORE_UNAVAILABLE,
                      "the store did not confirm the change in time");
    }
}

// A PN GW's server link came up, or it gave up waiting for a change or an add: it names each
// PN it holds, with its revision and members. Each is read from the store; the server asks
// only about (this PN GW, PN), so a PN of another PN GW reads as unknown and reveals nothing.
void Server::handle_sync_request(Out& out, const std::string& from, const pb::PnSyncRequest& m,
                                 Millis now) {
    const auto gw = dir_.find(from);
    if (!gw || gw->kind != EntityKind::kGw || gw->status != EntityStatus::kActive) {
        counters_.count(pb::REVOKED);
        log(LogLevel::kWarn, "sync from " + from + " ignored: the PN GW is not active");
        return;
    }
    std::size_t read = 0;
    std::size_t busy = 0;
    for (const auto& held : m.pns()) {
        const Key key{from, held.pn_id()};
        if (changes_.count(key) || sessions_.count(key)) {
            ++busy;  // a change or an add of it is in flight: its own answer brings the PN GW up
            continue;
        }
        if (changes_.size() >= kMaxServerChanges) {
            counters_.count(pb::LIMIT_EXCEEDED);
            log(LogLevel::kWarn, "sync from " + from + ": too many changes in progress, " +
                                     std::to_string(m.pns_size() - static_cast<int>(read + busy)) +
                                     " PN(s) left for its next sync");
            break;
        }
        PendingChange p{pb::CHANGE_SYNC, "", {}, now + kPersistTimeout, pb::REASON_NONE, 0, {}};
        p.request.set_pn_id(held.pn_id());
        p.request.set_op(pb::CHANGE_SYNC);
        p.request.set_revision(held.revision());
        std::vector<pb::PnMember> members;
        for (const auto& id : held.pne_ids()) members.emplace_back().set_pne_id(id);
        sync_held_[key] = {held.pne_ids().begin(), held.pne_ids().end()};
        changes_[key] = p;
        change_timers_.insert({p.deadline, key});
        out.push_back(ChangePnEffect{from, held.pn_id(), pb::CHANGE_SYNC, "", held.revision(),
                                     std::move(members)});
        ++read;
    }
    log(LogLevel::kInfo, "sync from " + from + ": " + std::to_string(read) +
                             " PN(s) read from the store" +
                             (busy ? ", " + std::to_string(busy) + " being changed" : ""));
}

void Server::finish_sync(Out& out, const std::string& gw_id, const std::string& pn_id,
                         const PendingChange& p, const ChangeResult& result, Millis now) {
    const std::uint64_t held = p.request.revision();
    if (result.reason == pb::UNKNOWN_PN) {
        // Deleted by the operator, dissolved while the PN GW was away, or never this PN GW's:
        // the PN GW forgets it, and each PNE it held is told, one revision past the PN GW's.
        ChangeResult gone;
        gone.dissolved = true;
        gone.before = result.before;
        gone.inventory.set_pn_id(pn_id);
        gone.inventory.set_gw_id(gw_id);
        gone.inventory.set_revision(held + 1);
        respond(out, gw_id, pn_id, p, gone, "not in the store: the PN GW forgets it", now);
        return;
    }
    if (result.reason != pb::REASON_NONE) {
        counters_.count(result.reason);
        log(LogLevel::kWarn,
            "sync of " + pn_id + " of " + gw_id + ": the store could not read it (" +
                std::string(reason_name(result.reason)) + "); the PN GW's next sync asks again");
        return;
    }
    const std::uint64_t stored = result.inventory.revision();
    if (stored == held) {
        log(LogLevel::kDebug,
            "sync of " + pn_id + " of " + gw_id + ": in step at revision " + std::to_string(held));
        return;
    }
    if (stored < held) {
        // A PN GW cannot hold a revision the store never had: its state or the store was
        // restored from elsewhere. Nothing is changed; both sides report it.
        const std::string why = "the PN GW holds revision " + std::to_string(held) +
                                ", newer than the store's " + std::to_string(stored);
        counters_.count(pb::STALE_REVISION);
        log(LogLevel::kError, "sync of " + pn_id + " of " + gw_id + ": " + why + ": left as it is");
        pb::Envelope env;
        auto& r = *env.mutable_change_response();
        r.set_pn_id(pn_id);
        r.set_op(pb::CHANGE_SYNC);
        r.set_accepted(false);
        r.set_reason(pb::STALE_REVISION);
        *r.mutable_inventory() = result.inventory;
        send(out, gw_id, std::move(env));
        out.push_back(OutcomeEffect{
            pn_id, gw_id, false, pb::STALE_REVISION, why, result.inventory, {}, "sync"});
        return;
    }
    respond(out, gw_id, pn_id, p, result,
            "the PN GW held revision " + std::to_string(held) + ": brought up to date", now);
}

}  // namespace cpns
