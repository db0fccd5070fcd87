// World: the enabled actions, the state digest, the honest run and the earlier run's legacy.
#include <algorithm>

#include "explore/mutate.hpp"
#include "explore/world.hpp"

namespace cpns::explore {

namespace {

void put(std::string& buf, std::string_view s) {
    buf += s;
    buf += '\x1f';
}

void put_n(std::string& buf, std::int64_t v) {
    put(buf, std::to_string(v));
}

}  // namespace

std::vector<Action> World::actions() const {
    auto out = network_actions();
    add_attacker_actions(out);
    return out;
}

std::vector<Action> World::attacker_actions() const {
    std::vector<Action> out;
    add_attacker_actions(out);
    return out;
}

std::vector<Action> World::network_actions() const {
    std::vector<Action> out;
    std::set<std::uint64_t> seen;
    for (const auto& m : flight_)
        if (seen.insert(m.id).second) out.push_back(Action{ActionKind::kDeliver, m.id, "", "", ""});
    for (const auto& t : tls_pending_) out.push_back(Action{ActionKind::kTls, 0, t.pne, "", ""});
    const bool timer_left = scn_.max_timers < 0 || timers_ < scn_.max_timers;
    if (timer_left && server_->next_deadline() != kNever)
        out.push_back(Action{ActionKind::kTimer, 0, kServerId, "", ""});
    if (timer_left && gw_->next_deadline() != kNever)
        out.push_back(Action{ActionKind::kTimer, 0, kGwId, "", ""});
    for (const auto& [id, p] : pnes_)
        if (timer_left && p->next_deadline() != kNever)
            out.push_back(Action{ActionKind::kTimer, 0, id, "", ""});
    add_network_actions(out);
    return out;
}

// The lifecycle commands of the honest parties, while the budget lasts.
void World::add_life(std::vector<Action>& out) const {
    if (life_ >= scn_.max_life) return;
    for (const auto& [id, p] : pnes_) {
        if (!honest(id) || p->leaving()) continue;
        for (const auto& [pn, m] : p->memberships())
            out.push_back(Action{ActionKind::kLife, 0, id, "leave", pn});
    }
    for (const auto& [pn, inv] : gw_->inventory()) {
        if (gw_->change_pending(pn)) continue;
        out.push_back(Action{ActionKind::kLife, 0, kGwId, "dissolve", pn});
        for (const auto& m : inv.members())
            out.push_back(Action{ActionKind::kLife, 0, m.pne_id(), "remove", pn});
        for (const auto& id : scn_.pne_ids()) {
            if (!in_pn(inv, id)) out.push_back(Action{ActionKind::kLife, 0, id, "add", pn});
            if (gw_->local_eukey(pn, id))
                out.push_back(Action{ActionKind::kLife, 0, id, "rekey", pn});
        }
    }
    // The operator revokes a PNE that is in a PN ("disabled" takes the same path; traces may
    // name it).
    for (const auto& id : scn_.pne_ids()) {
        if (facts_.revoked.count(id)) continue;
        for (const auto& [key, inv] : dir_->pns())
            if (in_pn(inv, id)) {
                out.push_back(Action{ActionKind::kLife, 0, id, "revoke", "revoked"});
                break;
            }
    }
}

void World::add_network_actions(std::vector<Action>& out) const {
    add_life(out);
    if (faults_ >= scn_.max_faults) return;
    std::set<std::uint64_t> seen;
    for (const auto& m : flight_)
        if (seen.insert(m.id).second) {
            out.push_back(Action{ActionKind::kDrop, m.id, "", "", ""});
            out.push_back(Action{ActionKind::kDuplicate, m.id, "", "", ""});
        }
}

// The compromised PNE can ask for any PN its own key lets it ask for: each setup type, with
// the other PNEs (or no one else) invited.
void World::add_commands(std::vector<Action>& out) const {
    const std::string& id = scn_.compromised_pne;
    if (id.empty() || !is_pne(id) || pne(id).busy()) return;
    std::string others;
    for (const auto& p : scn_.pne_ids())
        if (p != id) others += (others.empty() ? "" : ",") + p;
    const std::string& mine = id;
    for (const auto& [type, list] : std::vector<std::pair<std::string, std::string>>{
             {"1-1", ""}, {"all", ""}, {"list", others}, {"list", mine}})
        out.push_back(Action{ActionKind::kCommand, 0, id, type, list});
}

void World::add_attacker_actions(std::vector<Action>& out) const {
    if (attacks_ >= scn_.max_attacks) return;
    add_commands(out);
    if (scn_.replay)
        for (const auto& k : known_)
            for (const auto& t : replay_targets(k))
                out.push_back(Action{ActionKind::kReplay, k.id, t, "", ""});
    if (scn_.mutations.empty()) return;
    std::set<std::uint64_t> seen;
    for (const auto& m : flight_)
        if (seen.insert(m.id).second && attacker_sees(m.from, m.to, m.protection) &&
            attacker_sends(m.from, m.to))
            add_rewrites(out, m.frame, m.id, ActionKind::kRewrite, m.from, m.to);
    if (scn_.inject)
        for (const auto& k : known_)
            for (const auto& t : replay_targets(k))
                add_rewrites(out, k.frame, k.id, ActionKind::kInject, k.from, t);
}

void World::add_rewrites(std::vector<Action>& out, const Bytes& frame, std::uint64_t id,
                         ActionKind kind, const std::string& from, const std::string& to) const {
    const auto env = decoded_envelope(frame);
    if (!env) return;
    const std::string party = kind == ActionKind::kInject ? to : "";
    const std::string before = env->SerializeAsString();
    for (const auto& field : scn_.mutations)
        for (const auto& v : values_for(field)) {
            pb::Envelope copy = *env;
            std::string claimed = from;
            const Action a{kind, id, party, field, v};
            if (forge(copy, claimed, to, a)) out.push_back(a);
        }
}

bool World::forge(pb::Envelope& env, std::string& from, const std::string& to,
                  const Action& a) const {
    if (a.field == "sender") {
        if (a.value == from || a.value == to || !attacker_sends(a.value, to)) return false;
        env.set_sender_id(a.value);
        from = a.value;
        return true;
    }
    const std::string before = env.SerializeAsString();
    return mutate(env, a.field, a.value) && env.SerializeAsString() != before;
}

std::vector<std::string> World::values_for(const std::string& field) const {
    std::set<std::string> v;
    if (field == "setup_type") return {"1", "2", "3"};
    if (field == "success") return {"0", "1"};
    if (field == "op") return {"1", "2", "3"};
    if (field == "pne_id") return scn_.pne_ids();
    if (field == "sender") {
        auto ids = scn_.pne_ids();
        ids.push_back(kGwId);
        return ids;
    }
    if (field == "inventory") {
        std::vector<std::string> ops;
        for (const auto& id : scn_.pne_ids()) ops.insert(ops.end(), {"+" + id, "-" + id});
        return ops;
    }
    if (auto it = values_.find(field); it != values_.end()) v = it->second;
    if (field == "caps") {
        // Derived from what was seen: the same device claiming other capabilities.
        for (const auto& raw : std::set<std::string>(v)) {
            pb::DeviceCapabilities c;
            if (!c.ParseFromString(raw)) continue;
            c.set_enough_ui(!c.enough_ui());
            c.add_services("forged");
            v.insert(c.SerializeAsString());
        }
    }
    if (field == "invited")
        for (const auto& id : scn_.pne_ids()) v.insert(id);
    return {v.begin(), v.end()};
}

std::uint64_t World::state_hash() const {
    std::string b;
    put_n(b, now_);
    put_n(b, faults_);
    put_n(b, attacks_);
    put_n(b, timers_);
    put_n(b, life_);
    for (const auto& c : changed_by_) put(b, c);
    for (const auto& [id, p] : pnes_) {
        put(b, Pne::to_string(p->state()));
        put(b, p->export_state().SerializeAsString());
        put_n(b, p->next_deadline());
    }
    const Bytes snap = gw_->snapshot();
    put(b, std::string_view(reinterpret_cast<const char*>(snap.data()), snap.size()));
    put_n(b, gw_->next_deadline());
    put_n(b, server_->next_deadline());
    for (const auto& pn : facts_.pns_seen) {
        put(b, pn);
        if (auto ph = gw_->phase(pn)) put(b, Gateway::to_string(*ph));
        if (auto ph = server_->phase(kGwId, pn)) put(b, Server::to_string(*ph));
        for (const auto& [id, p] : pnes_) {
            if (auto m = gw_->member_state(pn, id)) put(b, Gateway::to_string(*m));
            if (auto a = server_->pne_auth(kGwId, pn, id)) put(b, Server::to_string(*a));
        }
    }
    for (const auto& [key, inv] : dir_->pns()) {
        put(b, key);
        if (scn_.max_life > 0) put(b, inv.SerializeAsString());
    }
    std::vector<std::uint64_t> ids;
    for (const auto& m : flight_) ids.push_back(m.id);
    std::sort(ids.begin(), ids.end());
    for (auto id : ids) put(b, hex64(id));
    for (const auto& t : tls_pending_) put(b, "tls:" + t.identity);
    for (const auto& l : tls_links_) put(b, "up:" + l);
    for (auto id : known_ids_) put(b, hex64(id));
    for (const auto& [pne, pns] : facts_.engaged)
        for (const auto& pn : pns) put(b, pne + "@" + pn);
    for (const auto& id : facts_.revoked) put(b, "revoked:" + id);
    return fnv1a(b);
}

bool World::quiescent() const {
    if (!flight_.empty() || !tls_pending_.empty()) return false;
    if (gw_->active_sessions() != 0 || server_->active_sessions() != 0) return false;
    // Repeated until acknowledged, or answered.
    if (gw_->notices_pending() != 0 || gw_->changes_pending() != 0 || gw_->rekeys_pending() != 0)
        return false;
    for (const auto& [id, p] : pnes_)
        if (p->busy()) return false;
    return true;
}

std::vector<Action> World::run_honestly(std::size_t max_steps) {
    std::vector<Action> taken;
    for (std::size_t i = 0; i < max_steps; ++i) {
        Action a;
        if (!flight_.empty()) {
            a = Action{ActionKind::kDeliver, flight_.front().id, "", "", ""};
        } else if (!tls_pending_.empty()) {
            a = Action{ActionKind::kTls, 0, tls_pending_.front().pne, "", ""};
        } else {
            Millis best = kNever;
            auto consider = [&](const std::string& id, Millis d) {
                if (d < best) best = d, a = Action{ActionKind::kTimer, 0, id, "", ""};
            };
            consider(kServerId, server_->next_deadline());
            consider(kGwId, gw_->next_deadline());
            for (const auto& [id, p] : pnes_) consider(id, p->next_deadline());
            if (best == kNever) break;
        }
        if (!apply(a)) break;
        taken.push_back(a);
    }
    return taken;
}

std::shared_ptr<const Prior> World::export_prior() const {
    auto p = std::make_shared<Prior>();
    p->knowledge = known_;
    for (auto& k : p->knowledge) k.prior = true;
    p->values = values_;
    p->gw_state = gw_->export_state();
    for (const auto& [id, pne] : pnes_) p->pne_states.push_back(pne->export_state());
    for (const auto& [key, inv] : dir_->pns()) p->registered.push_back(inv);
    for (const auto& o : obs_)
        if (const auto* k = std::get_if<StoreLocalKeyEffect>(&o.effect))
            p->local_keys.push_back(k->key);
    auto pick = [&](const std::string& f) {
        auto it = all_values_.find(f);
        return it == all_values_.end() ? std::set<std::string>{} : it->second;
    };
    p->hash_pne = pick("hash_pne");
    p->hash_server = pick("hash_server");
    p->pn_ids = pick("pn_id");
    return p;
}

std::string World::describe(const Action& a) const {
    std::string what(to_string(a.kind));
    auto m = std::find_if(flight_.begin(), flight_.end(),
                          [&](const Message& x) { return x.id == a.msg; });
    const Known* k = find_known(a.msg);
    switch (a.kind) {
        case ActionKind::kTimer:
            return what + " " + a.party;
        case ActionKind::kTls:
            return "complete PSK-TLS " + a.party + " <-> " + kGwId;
        case ActionKind::kLife:
            if (a.field == "leave") return a.party + " leaves " + a.value;
            if (a.field == "remove") return kGwId + " removes " + a.party + " from " + a.value;
            if (a.field == "add") return kGwId + " adds " + a.party + " to " + a.value;
            if (a.field == "rekey") return kGwId + " re-keys " + a.party + " in " + a.value;
            if (a.field == "revoke") return "the operator makes " + a.party + " " + a.value;
            return kGwId + " dissolves " + a.value;
        case ActionKind::kReplay:
        case ActionKind::kInject:
            if (!k) return what + " (unknown frame)";
            return what + " " + k->name + " " + k->from + " -> " + a.party + " (seen " + k->from +
                   " -> " + k->to + (k->prior ? ", earlier run)" : ")") +
                   (a.field.empty() ? "" : " " + a.field);
        default:
            if (m == flight_.end()) return what + " (no such message)";
            return what + " " + m->name + " " + m->from + " -> " + m->to + " (" +
                   (m->protection == Protection::kTls ? "tls" : "clear") + ")" +
                   (a.field.empty() ? "" : " " + a.field);
    }
}

const pb::DeviceCapabilities& World::capabilities_of(const std::string& pne) const {
    return pne_cfg_.at(pne).capabilities;
}

const std::vector<pb::ContentInfo>& World::contents_of(const std::string& pne) const {
    return pne_cfg_.at(pne).contents;
}

}  // namespace cpns::explore
