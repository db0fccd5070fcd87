// agreement, secrecy, freshness, bounded_state, lifecycle_authenticity, no_replay,
// revocation.
#include <algorithm>

#include "explore/properties_detail.hpp"

namespace cpns::explore {

using detail::each_new;
using Text = std::optional<std::string>;

namespace {

std::string own_view(const World& w, const std::string& pne) {
    std::string v = w.capabilities_of(pne).SerializeAsString();
    for (const auto& c : w.contents_of(pne)) {
        v += '|';
        v += c.SerializeAsString();
    }
    return v;
}

// At the end of a run: server, PN GW and every member hold the same PNs, members, capabilities.
Text final_agreement(const World& w) {
    for (const auto& [key, inv] : w.directory().pns()) {
        const std::string& pn = inv.pn_id();
        // The earlier run's PNs too once lifecycle moves change them.
        if (detail::is_prior_pn(w, pn) && w.scenario().max_life == 0) continue;
        const auto view = detail::member_view_of(inv);
        const auto ids = detail::ids_string(detail::member_ids_of(inv));
        auto g = w.gw().inventory().find(pn);
        if (g == w.gw().inventory().end())
            return "the server registered " + pn + " with " + ids +
                   " but the PN GW does not hold it";
        if (detail::member_view_of(g->second) != view)
            return "PN GW and server hold different members of " + pn;
        for (const auto& m : inv.members()) {
            if (!w.honest(m.pne_id())) continue;
            const auto& mem = w.pne(m.pne_id()).memberships();
            auto it = mem.find(pn);
            if (it == mem.end())
                return "server and PN GW count " + m.pne_id() + " as a member of " + pn + " " +
                       ids + " but " + m.pne_id() + " does not hold it";
            if (detail::member_view_of(it->second.inventory) != view)
                return m.pne_id() + " holds other members of " + pn + " than the server";
        }
    }
    for (const auto& [pn, inv] : w.gw().inventory())
        if (!detail::registered_pn(w, pn))
            return "the PN GW holds " + pn + " which the server did not register";
    for (const auto& id : w.scenario().pne_ids())
        for (const auto& [pn, m] : w.pne(id).memberships())
            if (!detail::registered_pn(w, pn))
                return id + " holds " + pn + " which the server did not register";
    return std::nullopt;
}

}  // namespace

Text agreement(const World& w, const Since& s) {
    auto t =
        each_new<PersistPnEffect>(w, s, [&](const std::string&, const PersistPnEffect& p) -> Text {
            for (const auto& [id, v] : detail::member_view_of(p.inventory))
                if (w.honest(id) && v != own_view(w, id))
                    return "the server registered " + id + " in " + p.inventory.pn_id() +
                           " with capabilities/contents " + id + " did not send";
            return std::nullopt;
        });
    if (t) return t;
    t = each_new<OutcomeEffect>(
        w, s, [&](const std::string& party, const OutcomeEffect& o) -> Text {
            // Establishment outcomes only (a lifecycle change names its operation).
            if (!o.success || !o.operation.empty() || party == kServerId || party == kGwId)
                return std::nullopt;
            const auto* reg = detail::registered_pn(w, o.pn_id);
            const auto ids = detail::ids_string(detail::member_ids_of(o.inventory));
            if (!reg) return party + " joined " + o.pn_id + " which the server did not register";
            if (detail::member_view_of(o.inventory) != detail::member_view_of(*reg))
                return party + " stores " + o.pn_id + " with members " + ids +
                       " but the server registered " +
                       detail::ids_string(detail::member_ids_of(*reg));
            return std::nullopt;
        });
    if (t) return t;
    return w.quiescent() ? final_agreement(w) : std::nullopt;
}

namespace {

bool owned_by_attacker(const World& w, const std::string& pne) {
    return !pne.empty() && pne == w.scenario().compromised_pne;
}

// Keys that must never reach the attacker, with whose they are.
std::vector<std::pair<std::string, SecretKey>> guarded_keys(const World& w) {
    std::vector<std::pair<std::string, SecretKey>> keys;
    for (const auto& [id, k] : w.facts().pne_eukey)
        if (!owned_by_attacker(w, id)) keys.emplace_back("the EUKey of " + id, k);
    for (const auto& o : w.observations()) {
        if (const auto* k = std::get_if<SessionKeyEffect>(&o.effect))
            if (!owned_by_attacker(w, k->pne_id))
                keys.emplace_back("SK_PNE of " + k->pne_id, k->sk);
        if (const auto* k = std::get_if<StoreLocalKeyEffect>(&o.effect)) {
            const std::string& pne = o.party == kGwId ? k->peer_id : o.party;
            if (!owned_by_attacker(w, pne) && !w.scenario().dishonest_gw)
                keys.emplace_back("the LocalEUKey of " + pne, k->key);
        }
    }
    return keys;
}

// A LocalEUKey stored by a PNE that another PNE (or the PN GW for another PNE) holds.
Text shared_local_key(const World& w, const Since& s) {
    return each_new<StoreLocalKeyEffect>(
        w, s, [&](const std::string& party, const StoreLocalKeyEffect& k) -> Text {
            const std::string owner = party == kGwId ? k.peer_id : party;
            for (const auto& o : w.observations()) {
                const auto* other = std::get_if<StoreLocalKeyEffect>(&o.effect);
                if (!other || !(other->key == k.key)) continue;
                const std::string other_owner = o.party == kGwId ? other->peer_id : o.party;
                if (other_owner != owner)
                    return "the same LocalEUKey is held for " + owner + " and for " + other_owner;
            }
            return std::nullopt;
        });
}

}  // namespace

Text secrecy(const World& w, const Since& s) {
    const Bytes snap = w.gw().snapshot();
    for (const auto& o : w.observations())
        if (const auto* k = std::get_if<SessionKeyEffect>(&o.effect))
            if (detail::bytes_contain(snap, k->sk.view()))
                return "the PN GW's state holds SK_PNE of " + k->pne_id;
    for (const auto& [id, k] : w.facts().pne_eukey)
        if (detail::bytes_contain(snap, k.view()))
            return "the PN GW's state holds the EUKey of " + id;
    if (auto t = shared_local_key(w, s)) return t;
    const auto& known = w.knowledge();
    if (s.known >= known.size()) return std::nullopt;
    const auto keys = guarded_keys(w);
    for (std::size_t i = s.known; i < known.size(); ++i)
        for (const auto& [what, key] : keys)
            if (detail::bytes_contain(known[i].frame, key.view()))
                return "the attacker saw " + what + " in " + known[i].name;
    return std::nullopt;
}

namespace {

bool issued(const World& w, const SecretKey& key) {
    const auto& v = w.facts().issued_local_keys;
    return std::any_of(v.begin(), v.end(), [&](const SecretKey& k) { return k == key; });
}

bool from_prior(const World& w, const SecretKey& key) {
    const auto& v = w.prior().local_keys;
    return std::any_of(v.begin(), v.end(), [&](const SecretKey& k) { return k == key; });
}

Text old_hash_accepted(const World& w, const Since& s) {
    const pb::Envelope* env = w.last_delivered();
    if (!env) return std::nullopt;
    auto t = each_new<OutcomeEffect>(
        w, s, [&](const std::string& party, const OutcomeEffect& o) -> Text {
            // Establishment outcomes only (a lifecycle change names its operation).
            if (!o.success || !o.operation.empty() || party == kServerId || party == kGwId)
                return std::nullopt;
            const pb::PnResult* r = env->has_setup_response() ? &env->setup_response().result()
                                    : env->has_establishment_notify()
                                        ? &env->establishment_notify().result()
                                        : nullptr;
            if (r && w.prior().hash_server.count(r->hash_server_pne()))
                return party + " joined " + o.pn_id + " on a hash_server_PNE of the earlier run";
            return std::nullopt;
        });
    if (t || !env->has_auth_response()) return t;
    return each_new<TransitionEffect>(
        w, s, [&](const std::string& party, const TransitionEffect& tr) -> Text {
            if (party != kServerId || tr.to != "authenticated") return std::nullopt;
            for (const auto& r : env->auth_response().results())
                if (r.pne_id() == tr.subject && w.prior().hash_pne.count(r.hash_pne()))
                    return "the server authenticated " + tr.subject + " in " + tr.pn_id +
                           " on a hash_PNE of the earlier run";
            return std::nullopt;
        });
}

}  // namespace

Text freshness(const World& w, const Since& s) {
    auto t = each_new<StoreLocalKeyEffect>(
        w, s, [&](const std::string& party, const StoreLocalKeyEffect& k) -> Text {
            const std::string owner = party == kGwId ? k.peer_id : party;
            const bool gw_is_attacker = party == kGwId && w.scenario().dishonest_gw;
            if (gw_is_attacker || owned_by_attacker(w, owner) || issued(w, k.key))
                return std::nullopt;
            return party + " stores a LocalEUKey for " + k.pn_id + " (peer " + k.peer_id +
                   ") that the server did not issue in this run" +
                   (from_prior(w, k.key) ? ": the copy of the earlier run" : "");
        });
    return t ? t : old_hash_accepted(w, s);
}

Text bounded_state(const World& w, const Since&) {
    const Scenario& scn = w.scenario();
    const bool prior = scn.prior_run;
    const std::size_t gw_bound =
        (prior ? static_cast<std::size_t>(w.prior().gw_state.inventory_size()) : 0) +
        scn.max_new_pns;
    if (w.gw().inventory().size() > gw_bound)
        return "the PN GW holds " + std::to_string(w.gw().inventory().size()) + " PNs (bound " +
               std::to_string(gw_bound) + ")";
    for (const auto& id : scn.pne_ids()) {
        std::size_t before = 0;
        if (prior)
            for (const auto& st : w.prior().pne_states)
                if (st.pne_id() == id) before = static_cast<std::size_t>(st.memberships_size());
        const std::size_t n = w.pne(id).memberships().size();
        if (n > before + scn.max_new_pns)
            return id + " holds " + std::to_string(n) + " PNs (bound " +
                   std::to_string(before + scn.max_new_pns) + ")";
    }
    if (w.gw().active_sessions() > scn.max_sessions)
        return "the PN GW has " + std::to_string(w.gw().active_sessions()) +
               " establishments in flight (bound " + std::to_string(scn.max_sessions) + ")";
    if (w.server().active_sessions() > scn.max_sessions)
        return "the server has " + std::to_string(w.server().active_sessions()) +
               " establishments in flight (bound " + std::to_string(scn.max_sessions) + ")";
    return std::nullopt;
}

namespace {

// A dissolve the PN GW decides itself: a repeated setup supersedes an earlier PN whose members
// all set up a PN of this run (docs/protocol.md, "A repeated setup").
bool superseded(const World& w, const std::vector<std::string>& removed) {
    for (const auto& [pn, req] : w.facts().registrations) {
        std::set<std::string> joined;
        for (const auto& p : req.pnes()) joined.insert(p.join().pne_id());
        if (std::all_of(removed.begin(), removed.end(),
                        [&](const std::string& id) { return joined.count(id) != 0; }))
            return true;
    }
    return false;
}

// Why the store may drop `pne` from the PN by `c`, or nothing when it may not.
Text unauthorised_removal(const World& w, const StoreChangeEffect& c, const std::string& pne,
                          std::map<std::string, int>& leaves_used) {
    const auto& f = w.facts();
    const std::string& pn = c.change.pn_id;
    switch (c.change.op) {
        case pb::CHANGE_LEAVE: {
            const bool asked = c.change.pne_id == pne &&
                               f.leaves_asked.count(std::make_tuple(pne, pn, c.rand_pne)) != 0;
            // Each leave the PNE asked for removes it once (its rand_PNE is fresh per request).
            if (asked && ++leaves_used[pne + "/" + pn + "/" + c.rand_pne] == 1) return std::nullopt;
            return "the server recorded that " + pne + " left " + pn + " but " + pne +
                   (asked ? " asked for that leave once, and it was applied already"
                          : " sent no such leave request");
        }
        case pb::CHANGE_REMOVE:
            // The PN GW's removal, or the server's own after the operator revoked the PNE.
            if (c.change.pne_id == pne &&
                (w.scenario().dishonest_gw || f.gw_commands.count("remove " + pn + " " + pne) ||
                 f.revoked.count(pne)))
                return std::nullopt;
            return "the server removed " + pne + " from " + pn + " which its PN GW never removed";
        case pb::CHANGE_DISSOLVE:
            if (w.scenario().dishonest_gw || f.gw_commands.count("dissolve " + pn) ||
                superseded(w, c.removed))
                return std::nullopt;
            return "the server dissolved " + pn + " (member " + pne +
                   ") which its PN GW neither dissolved nor superseded";
        default:
            return "the server dropped " + pne + " from " + pn + " by a " +
                   std::string(cpns::to_string(c.change.op));
    }
}

}  // namespace

Text lifecycle_authenticity(const World& w, const Since& s) {
    // Over the whole run: a leave counts once.
    std::map<std::string, int> used;
    const auto& obs = w.observations();
    for (std::size_t i = 0; i < obs.size(); ++i) {
        const auto* c = std::get_if<StoreChangeEffect>(&obs[i].effect);
        if (!c || c->reason != pb::REASON_NONE) continue;
        for (const auto& pne : c->removed) {
            if (!w.honest(pne)) continue;
            auto t = unauthorised_removal(w, *c, pne, used);
            if (t && i >= s.obs) return t;
        }
    }
    return each_new<MembershipEffect>(
        w, s, [&](const std::string& party, const MembershipEffect& m) -> Text {
            if (!w.honest(party) || m.kind == pb::NOTICE_UPDATED) return std::nullopt;
            const auto* reg = detail::registered_pn(w, m.pn_id);
            if (reg && detail::member_ids_of(*reg).count(party))
                return party + " dropped its membership of " + m.pn_id + " (" +
                       pb::NoticeKind_Name(m.kind) + ") but the server still counts it a member";
            return std::nullopt;
        });
}

Text no_replay(const World& w, const Since& s) {
    if (!w.last_delivery_repeated()) return std::nullopt;
    auto t = each_new<StoreChangeEffect>(
        w, s, [&](const std::string&, const StoreChangeEffect& c) -> Text {
            if (c.reason != pb::REASON_NONE) return std::nullopt;
            return "a " + std::string(cpns::to_string(c.change.op)) + " of " + c.change.pn_id +
                   " delivered again was applied again by the server's store";
        });
    if (t) return t;
    return each_new<MembershipEffect>(
        w, s, [&](const std::string& party, const MembershipEffect& m) -> Text {
            return "a notice of " + m.pn_id + " delivered again changed " + party +
                   "'s membership again (" + pb::NoticeKind_Name(m.kind) + ")";
        });
}

// Revocation takes effect everywhere (docs/protocol.md, "Revocation and operator deletion"):
// checked once nothing is in flight, so that the removal and its notices had their chance.
Text revocation(const World& w, const Since&) {
    if (w.facts().revoked.empty() || !w.quiescent()) return std::nullopt;
    for (const auto& id : w.facts().revoked) {
        for (const auto& [key, inv] : w.directory().pns())
            if (detail::member_ids_of(inv).count(id))
                return "the server still counts the revoked " + id + " a member of " + inv.pn_id();
        for (const auto& [pn, inv] : w.gw().inventory()) {
            if (detail::member_ids_of(inv).count(id))
                return "the PN GW still counts the revoked " + id + " a member of " + pn;
            if (w.gw().local_eukey(pn, id))
                return "the PN GW still holds the LocalEUKey of the revoked " + id + " for " + pn;
        }
        for (const auto& pn : w.facts().pns_seen)
            if (w.gw().local_eukey(pn, id))
                return "the PN GW still holds the LocalEUKey of the revoked " + id + " for " + pn;
        if (w.tls_links().count(id))
            return "the PN GW still has a PSK-TLS session with the revoked " + id;
        if (w.honest(id) && !w.pne(id).memberships().empty())
            return "the revoked " + id + " still holds " + w.pne(id).memberships().begin()->first;
    }
    return std::nullopt;
}

// The PSK a member and its PN GW use for the PN's PSK-TLS sessions is one key: after an add, a
// re-key (rejected or not, docs/protocol.md "LocalEUKey re-key"), a removal. Checked once
// nothing is in flight and no re-key waits for its confirmation.
Text key_agreement(const World& w, const Since&) {
    if (!w.quiescent()) return std::nullopt;
    for (const auto& id : w.scenario().pne_ids()) {
        if (!w.honest(id)) continue;
        for (const auto& [pn, m] : w.pne(id).memberships()) {
            const auto gw = w.gw().local_eukey(pn, id);
            if (m.local_eukey.has_value() != gw.has_value())
                return id + (m.local_eukey ? " holds" : " does not hold") + " a LocalEUKey for " +
                       pn + " but the PN GW " + (gw ? "does" : "does not");
            if (gw && *gw != *m.local_eukey)
                return id + " and the PN GW hold different LocalEUKeys for " + pn;
        }
        for (const auto& [pn, inv] : w.gw().inventory())
            if (w.gw().local_eukey(pn, id) && !w.pne(id).memberships().count(pn))
                return "the PN GW holds a LocalEUKey of " + id + " for " + pn + ", which " + id +
                       " is not a member of";
    }
    return std::nullopt;
}

}  // namespace cpns::explore
