// The PNE's part of the PN lifecycle (docs/protocol.md, "PN lifecycle"): it asks to leave with a
// proof under its EUKey, and it believes a change of its membership (left, removed, dissolved,
// updated) only from a notice proven by the CPNS Server under that same key, for a newer
// revision of the PN than the one it holds. Its PN GW relays both but can forge neither.
#include <algorithm>

#include "core/lifecycle.hpp"
#include "core/pne.hpp"

namespace cpns {

PneEffects Pne::leave(const std::string& pn_id, Millis now) {
    Out out;
    if (!valid_id(pn_id)) {  // not quoted back: an outcome names only a valid PN (cpns-fuzz-pne)
        finish_leave(out, "", false, pb::MALFORMED_MESSAGE, "not a valid PN ID");
        return out;
    }
    auto it = memberships_.find(pn_id);
    if (it == memberships_.end()) {
        finish_leave(out, pn_id, false, pb::UNKNOWN_PN, "this PNE is not a member of " + pn_id);
        return out;
    }
    if (leave_) {
        finish_leave(out, pn_id, false, pb::BUSY, "already leaving " + leave_->pn_id);
        return out;
    }
    send_leave(out, it->second, now);
    return out;
}

void Pne::start_withdraw(Out& out, const std::string& pn_id, const std::string& gw_id, Millis now) {
    log(LogLevel::kInfo, "withdrawing from " + pn_id +
                             ": the server may have registered this PNE, which did not join");
    PneMembership m;
    m.pn_id = pn_id;
    m.gw_id = gw_id;  // revision 0: as registered; a later one comes back proven if it moved
    leave_ = PendingLeave{pn_id, gw_id, {}, kNever, false, true};
    send_leave(out, m, now);
}

bool Pne::withdraw_notice_ok(const std::string& from, const pb::PnChangeNotice& n,
                             pb::NoticeKind kind) {
    const Hash expected = notice_proof(cfg_.eukey, n);
    const auto& ms = n.inventory().members();
    const bool listed = std::any_of(
        ms.begin(), ms.end(), [&](const pb::PnMember& m) { return m.pne_id() == cfg_.pne_id; });
    const bool ok = ct_equal(ByteView{expected}, as_bytes(n.proof())) &&
                    n.pne_id() == cfg_.pne_id && n.kind() == kind && from == leave_->gw_id &&
                    n.inventory().pn_id() == leave_->pn_id &&
                    n.inventory().gw_id() == leave_->gw_id &&
                    (kind == pb::NOTICE_UPDATED
                         ? listed
                         : !listed && ct_equal(ByteView{leave_->rand_pne}, as_bytes(n.rand_pne())));
    if (!ok) {
        counters_.count(pb::SERVER_AUTHENTICATION_FAILED);
        log(LogLevel::kWarn, "answer to the withdrawal from " + leave_->pn_id +
                                 " refused: the server's proof does not verify");
    }
    return ok;
}

void Pne::send_leave(Out& out, const PneMembership& m, Millis now) {
    const bool retried = leave_ && leave_->retried;
    const bool withdraw = leave_ && leave_->withdraw;
    leave_ = PendingLeave{m.pn_id, m.gw_id, random_.bytes(kRandSize), now + kLeaveResponseTimeout,
                          retried, withdraw};
    pb::Envelope env;
    auto& r = *env.mutable_leave_request();
    r.set_pn_id(m.pn_id);
    r.set_gw_id(m.gw_id);
    r.set_revision(m.inventory.revision());
    r.set_rand_pne(to_field(leave_->rand_pne));
    const Hash proof = leave_proof(cfg_.eukey, cfg_.pne_id, r);
    r.set_proof(to_field(ByteView{proof}));
    log(LogLevel::kInfo, "asking " + m.gw_id + " to leave " + m.pn_id + " (revision " +
                             std::to_string(m.inventory.revision()) + ")");
    send(out, m.gw_id, std::move(env));
}

void Pne::finish_leave(Out& out, const std::string& pn_id, bool left, pb::FailureReason reason,
                       const std::string& detail, bool withdraw) {
    const std::string op = withdraw ? "withdraw" : "leave";
    reason = outcome_reason(left, reason);
    if (!left) counters_.count(reason);
    log(left ? LogLevel::kInfo : LogLevel::kWarn,
        op + " " + pn_id + (left ? ": done" : ": failed, " + std::string(reason_name(reason))) +
            (detail.empty() ? "" : " (" + detail + ")"));
    OutcomeEffect o{pn_id, "", left, reason, detail, {}, {}, op};
    o.pnes.push_back(PneOutcome{cfg_.pne_id, false, o.reason});
    out.push_back(std::move(o));
}

bool Pne::apply_notice(Out& out, const std::string& from, const pb::PnChangeNotice& n) {
    const std::string& pn = n.inventory().pn_id();
    auto it = memberships_.find(pn);
    auto refuse = [&](const std::string& why) {
        counters_.count(pb::SERVER_AUTHENTICATION_FAILED);
        log(LogLevel::kWarn, std::string(pb::NoticeKind_Name(n.kind())) + " for " + pn + " from " +
                                 from + " refused: " + why);
        return false;
    };
    if (it == memberships_.end()) {
        ++counters_.ignored;  // not (or no longer) a member: nothing to change
        log(LogLevel::kDebug, "notice for " + pn + ", of which this PNE is not a member: ignored");
        return false;
    }
    PneMembership& mem = it->second;
    const Hash expected = notice_proof(cfg_.eukey, n);
    if (!ct_equal(ByteView{expected}, as_bytes(n.proof())) || n.pne_id() != cfg_.pne_id)
        return refuse("the server's proof does not verify");
    if (n.inventory().gw_id() != mem.gw_id || from != mem.gw_id)
        return refuse("it is not about this PNE's PN GW " + mem.gw_id);
    const auto& ms = n.inventory().members();
    const bool listed = std::any_of(
        ms.begin(), ms.end(), [&](const pb::PnMember& m) { return m.pne_id() == cfg_.pne_id; });
    switch (n.kind()) {
        case pb::NOTICE_LEFT: {
            // The server proves a leave only over the PNE's own proven request. One that answers
            // no pending leave (it timed out before the server's answer came) is taken if it is
            // newer than the PN held: the server recorded the leave, so the PNE is out.
            const bool answers = leave_ && leave_->pn_id == pn &&
                                 ct_equal(ByteView{leave_->rand_pne}, as_bytes(n.rand_pne()));
            if (!answers && n.inventory().revision() <= mem.inventory.revision())
                return refuse(
                    "it answers no leave this PNE is waiting for and is not newer "
                    "than the PN held: replayed");
            if (listed) return refuse("the PN still lists this PNE");
            break;
        }
        case pb::NOTICE_REMOVED:
        case pb::NOTICE_DISSOLVED:
            if (listed || (n.kind() == pb::NOTICE_DISSOLVED && !ms.empty()))
                return refuse("the PN it shows does not match");
            break;
        case pb::NOTICE_UPDATED:
            if (!listed) return refuse("the PN it shows does not list this PNE");
            break;
        default:
            return refuse("unknown kind");
    }
    if (n.kind() != pb::NOTICE_LEFT && n.inventory().revision() <= mem.inventory.revision())
        return refuse("revision " + std::to_string(n.inventory().revision()) +
                      " is not newer than the one held (" +
                      std::to_string(mem.inventory.revision()) + "): replayed");
    if (n.kind() == pb::NOTICE_UPDATED) {
        mem.inventory = n.inventory();
        log(LogLevel::kInfo, "PN " + pn + " changed: revision " +
                                 std::to_string(n.inventory().revision()) + ", " +
                                 std::to_string(ms.size()) + " member(s)");
    } else {
        log(LogLevel::kInfo, "no longer a member of " + pn + " (" +
                                 std::string(pb::NoticeKind_Name(n.kind())) + ")");
        memberships_.erase(it);  // its LocalEUKey and SK_PNE go with it (wiped)
    }
    out.push_back(MembershipEffect{pn, n.kind()});
    return true;
}

void Pne::handle_leave_response(Out& out, const std::string& from, const pb::PnLeaveResponse& m,
                                Millis now) {
    if (!leave_ || leave_->pn_id != m.pn_id() || from != leave_->gw_id) {
        // The server's proven answer to a leave that timed out here: it still ends the
        // membership (apply_notice checks the proof and that it is newer than the PN held).
        if (m.has_notice() && m.notice().kind() == pb::NOTICE_LEFT &&
            memberships_.count(m.notice().inventory().pn_id()) &&
            apply_notice(out, from, m.notice()))
            return;
        ++counters_.ignored;
        log(LogLevel::kDebug, "PnLeaveResponse for " + m.pn_id() + " not asked for: ignored");
        return;
    }
    const std::string& pn = m.pn_id();
    if (leave_->withdraw) {
        // No membership to change: the server's proof of NOTICE_LEFT over this request ends
        // it; a STALE_REVISION refusal carries the PN's revision (proven), to ask once more.
        if (m.has_notice() && m.notice().kind() == pb::NOTICE_LEFT) {
            if (!withdraw_notice_ok(from, m.notice(), pb::NOTICE_LEFT)) return;
            leave_.reset();
            finish_leave(out, pn, true, pb::REASON_NONE, "withdrawn at the CPNS Server", true);
            return;
        }
        if (m.reason() == pb::STALE_REVISION && m.has_notice() && !leave_->retried &&
            withdraw_notice_ok(from, m.notice(), pb::NOTICE_UPDATED)) {
            PneMembership at;
            at.pn_id = pn;
            at.gw_id = leave_->gw_id;
            at.inventory.set_revision(m.notice().inventory().revision());
            leave_->retried = true;
            send_leave(out, at, now);
            return;
        }
        if (m.accepted()) return;  // "accepted" without the server's proof proves nothing
        leave_.reset();
        // Only the server's proof says it is withdrawn. NOT_A_MEMBER or UNKNOWN_PN come from
        // the PN GW, which may not hold what the server registered (it gave up waiting).
        const pb::FailureReason why =
            m.reason() == pb::REASON_NONE ? pb::UNEXPECTED_MESSAGE : m.reason();
        finish_leave(out, pn, false, why,
                     why == pb::NOT_A_MEMBER || why == pb::UNKNOWN_PN
                         ? "the PN GW does not hold this PNE in the PN"
                         : "refused",
                     true);
        return;
    }
    if (m.has_notice() && m.notice().kind() == pb::NOTICE_LEFT) {
        if (apply_notice(out, from, m.notice())) {
            leave_.reset();
            finish_leave(out, pn, true, pb::REASON_NONE, "");
        }
        return;  // an unproven "left" changes nothing: the leave is still pending
    }
    if (m.accepted()) {
        ++counters_.ignored;  // "accepted" without the server's proof proves nothing
        log(LogLevel::kWarn, "PnLeaveResponse for " + pn + " without the server's proof: ignored");
        return;
    }
    // Refused. A STALE_REVISION refusal carries the current PN, proven: take it, and ask once
    // more at the new revision.
    if (m.reason() == pb::STALE_REVISION && m.has_notice() && !leave_->retried &&
        apply_notice(out, from, m.notice())) {
        if (auto it = memberships_.find(pn); it != memberships_.end()) {
            leave_->retried = true;
            send_leave(out, it->second, now);
            return;
        }
    }
    leave_.reset();
    finish_leave(out, pn, false,
                 m.reason() == pb::REASON_NONE ? pb::UNEXPECTED_MESSAGE : m.reason(),
                 "refused by the PN GW or the CPNS Server");
}

void Pne::handle_change_notify(Out& out, const std::string& from, const pb::PnChangeNotice& n) {
    const std::string pn = n.inventory().pn_id();
    const bool leaving_it = leave_ && leave_->pn_id == pn;
    if (apply_notice(out, from, n) && leaving_it && !memberships_.count(pn)) {
        // Removed or dissolved while asking to leave: the PNE is out either way.
        leave_.reset();
        finish_leave(out, pn, true, pb::REASON_NONE, std::string(pb::NoticeKind_Name(n.kind())));
    }
    // Acknowledged once the server's proof verifies, whether it changed anything or not (a
    // repeat of one already taken, a PN already left): the PN GW stops repeating it. A notice
    // whose proof fails is not acknowledged, so the PN GW goes on sending the real one.
    const Hash expected = notice_proof(cfg_.eukey, n);
    if (n.pne_id() != cfg_.pne_id || !ct_equal(ByteView{expected}, as_bytes(n.proof()))) return;
    pb::Envelope ack;
    ack.mutable_change_notify_ack()->set_pn_id(pn);
    ack.mutable_change_notify_ack()->set_revision(n.inventory().revision());
    send(out, from, std::move(ack));
}

}  // namespace cpns
