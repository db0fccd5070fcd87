#include "core/lifecycle.hpp"

#include <algorithm>
#include <set>

namespace cpns {

ChangeResult change_inventory(const std::optional<pb::PnInventory>& current, pb::ChangeOp op,
                              const std::string& pne_id, std::uint64_t expected_revision,
                              const std::vector<pb::PnMember>& added) {
    ChangeResult r;
    if (op == pb::CHANGE_SYNC) {  // a read: the PN as the store has it
        if (!current)
            r.reason = pb::UNKNOWN_PN;
        else
            r.inventory = *current;
        return r;
    }
    if (!current) {
        r.reason = pb::UNKNOWN_PN;
        return r;
    }
    r.inventory = *current;
    if (current->revision() != expected_revision) {
        r.reason = pb::STALE_REVISION;
        return r;
    }
    auto& members = *r.inventory.mutable_members();
    for (const auto& m : members) r.before.push_back(m.pne_id());
    if (op == pb::CHANGE_LEAVE || op == pb::CHANGE_REMOVE) {
        auto it = std::find_if(members.begin(), members.end(),
                               [&](const pb::PnMember& m) { return m.pne_id() == pne_id; });
        if (it == members.end()) {
            r.reason = pb::NOT_A_MEMBER;
            r.before.clear();
            return r;
        }
        members.erase(it);
    } else if (op == pb::CHANGE_DISSOLVE) {
        members.Clear();
    } else if (op == pb::CHANGE_REKEY) {
        // The membership stays as it is; the revision records that the member's LocalEUKey
        // changed, so that a replayed re-key (or anything from before it) is stale.
        auto it = std::find_if(members.begin(), members.end(),
                               [&](const pb::PnMember& m) { return m.pne_id() == pne_id; });
        if (it == members.end() || !it->local_eukey_assigned()) {
            r.reason = it == members.end() ? pb::NOT_A_MEMBER : pb::NO_LOCAL_EUKEY;
            r.before.clear();
            return r;
        }
    } else if (op == pb::CHANGE_ADD && !added.empty()) {
        for (const auto& a : added) {
            const bool there =
                std::any_of(members.begin(), members.end(),
                            [&](const pb::PnMember& m) { return m.pne_id() == a.pne_id(); });
            if (there) {
                r.reason = pb::ALREADY_A_MEMBER;
                r.before.clear();
                return r;
            }
            *members.Add() = a;
        }
    } else {
        r.reason = pb::MALFORMED_MESSAGE;
        r.before.clear();
        return r;
    }
    r.inventory.set_revision(current->revision() + 1);
    r.dissolved = r.inventory.members().empty();
    return r;
}

std::string_view to_string(pb::ChangeOp op) {
    switch (op) {
        case pb::CHANGE_LEAVE:
            return "leave";
        case pb::CHANGE_REMOVE:
            return "remove";
        case pb::CHANGE_DISSOLVE:
            return "dissolve";
        case pb::CHANGE_ADD:
            return "add";
        case pb::CHANGE_SYNC:
            return "sync";
        case pb::CHANGE_REKEY:
            return "rekey";
        default:
            return "change";
    }
}

std::vector<pb::PnChangeNotice> change_notices(const ChangeResult& r, pb::ChangeOp op,
                                               const std::string& pne_id,
                                               const std::string& rand_pne) {
    std::vector<pb::PnChangeNotice> out;
    auto add = [&](const std::string& id, pb::NoticeKind kind) {
        pb::PnChangeNotice n;
        n.set_pne_id(id);
        n.set_kind(kind);
        *n.mutable_inventory() = r.inventory;
        if (kind == pb::NOTICE_LEFT) n.set_rand_pne(rand_pne);
        out.push_back(std::move(n));
    };
    if (r.reason == pb::STALE_REVISION && op == pb::CHANGE_LEAVE) {
        for (const auto& m : r.inventory.members())
            if (m.pne_id() == pne_id) add(pne_id, pb::NOTICE_UPDATED);
        return out;
    }
    if (r.reason != pb::REASON_NONE) return out;
    if (op == pb::CHANGE_ADD) {
        for (const auto& id : r.before) add(id, pb::NOTICE_UPDATED);
        return out;
    }
    if (op == pb::CHANGE_SYNC && !r.dissolved) {
        std::set<std::string> now;
        for (const auto& m : r.inventory.members()) now.insert(m.pne_id());
        for (const auto& id : r.before)
            if (!now.count(id)) add(id, pb::NOTICE_REMOVED);
    }
    if (op == pb::CHANGE_REKEY) {  // the re-keyed PNE gets the registration's result
        for (const auto& id : r.before)
            if (id != pne_id) add(id, pb::NOTICE_UPDATED);
        return out;
    }
    if (op == pb::CHANGE_LEAVE) add(pne_id, pb::NOTICE_LEFT);
    if (op == pb::CHANGE_REMOVE) add(pne_id, pb::NOTICE_REMOVED);
    if (r.dissolved) {
        for (const auto& id : r.before)
            if (id != pne_id || op == pb::CHANGE_DISSOLVE) add(id, pb::NOTICE_DISSOLVED);
    } else {
        for (const auto& m : r.inventory.members()) add(m.pne_id(), pb::NOTICE_UPDATED);
    }
    return out;
}

Hash notice_proof(const SecretKey& eukey_pne, const pb::PnChangeNotice& n) {
    return derive_notice_proof(eukey_pne, static_cast<std::uint8_t>(n.kind()), n.pne_id(),
                               inventory_digest(n.inventory()), as_bytes(n.rand_pne()));
}

Hash leave_proof(const SecretKey& eukey_pne, const std::string& pne_id,
                 const pb::PnLeaveRequest& m) {
    return derive_leave_proof(eukey_pne, pne_id, m.gw_id(), m.pn_id(), m.revision(),
                              as_bytes(m.rand_pne()));
}

}  // namespace cpns
