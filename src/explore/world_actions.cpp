// World: applying and enumerating actions, state digests, the honest run.
#include <algorithm>

#include "explore/mutate.hpp"
#include "explore/world.hpp"

namespace cpns::explore {

namespace {

std::string_view prot_word(Protection p) {
    return p == Protection::kTls ? "tls" : "clear";
}

}  // namespace

std::vector<Message>::iterator World::find_flight(std::uint64_t id) {
    return std::find_if(flight_.begin(), flight_.end(),
                        [&](const Message& m) { return m.id == id; });
}

const Known* World::find_known(std::uint64_t id) const {
    for (const auto& k : known_)
        if (k.id == id) return &k;
    return nullptr;
}

bool World::apply(const Action& a) {
    ++step_;
    last_ok_ = false;
    last_repeat_ = false;
    bool ok = false;
    const bool fault_left = faults_ < scn_.max_faults;
    const bool attack_left = attacks_ < scn_.max_attacks;
    switch (a.kind) {
        case ActionKind::kDeliver:
        case ActionKind::kDrop:
        case ActionKind::kDuplicate: {
            auto it = find_flight(a.msg);
            if (it == flight_.end() || (a.kind != ActionKind::kDeliver && !fault_left)) break;
            Message m = *it;
            ok = true;
            if (a.kind == ActionKind::kDuplicate) {
                flight_.push_back(m);
                ++faults_;
                trace_line(m.from, m.to, m.name, "duplicated", true);
                break;
            }
            flight_.erase(it);
            if (a.kind == ActionKind::kDrop) {
                ++faults_;
                trace_line(m.from, m.to, m.name, "dropped", true);
                // The PN GW's link to the server is PSK-TLS over a stream: what it loses is lost
                // with the link, and the PN GW's reconnection resynchronises its PNs
                // (docs/protocol.md, "Resynchronisation").
                if (m.from == kServerId && m.to == kGwId) {
                    trace_line(kGwId, kServerId, "link", "server link up again", true);
                    apply_effects(kGwId, gw_->on_link_up(kServerId, now_));
                }
                break;
            }
            deliver(m);
            break;
        }
        case ActionKind::kTimer:
            ok = (scn_.max_timers < 0 || timers_ < scn_.max_timers) && do_timer(a.party);
            timers_ += ok;
            break;
        case ActionKind::kTls:
            ok = do_tls(a.party);
            break;
        case ActionKind::kReplay:
            ok = attack_left && scn_.replay && do_replay(a);
            break;
        case ActionKind::kRewrite:
            ok = attack_left && do_rewrite(a);
            break;
        case ActionKind::kInject:
            ok = attack_left && scn_.inject && do_inject(a);
            break;
        case ActionKind::kCommand:
            ok = attack_left && do_command(a);
            break;
        case ActionKind::kLife:
            ok = life_ < scn_.max_life && do_life(a);
            break;
    }
    if (!ok) --step_;
    return ok;
}

bool World::deliver(const Message& m) {
    const std::string key =
        m.to + ">" +
        hex64(fnv1a(std::string_view(reinterpret_cast<const char*>(m.frame.data()), m.frame.size()),
                    fnv1a(m.from + ">")));
    last_repeat_ = changed_by_.count(key) != 0;
    const std::size_t before = obs_.size();
    const bool ok = deliver_frame(m);
    for (std::size_t i = before; i < obs_.size(); ++i) {
        const auto* sc = std::get_if<StoreChangeEffect>(&obs_[i].effect);
        if ((sc && sc->reason == pb::REASON_NONE) ||
            std::holds_alternative<MembershipEffect>(obs_[i].effect))
            changed_by_.insert(key);
    }
    return ok;
}

bool World::deliver_frame(const Message& m) {
    auto env = decoded_envelope(m.frame);
    trace_line(m.from, m.to, m.name,
               std::string(prot_word(m.protection)) + (m.forged ? ", forged" : ""), false);
    if (!env) {
        trace_line(m.from, m.to, "frame", "rejected by the decoder", true);
        return true;
    }
    last_env_ = std::move(*env);
    last_to_ = m.to;
    last_ok_ = true;
    if (is_pne(m.to))
        apply_effects(m.to, pnes_.at(m.to)->on_message(m.from, last_env_, m.protection, now_));
    else if (m.to == kGwId)
        apply_effects(m.to, gw_->on_message(m.from, last_env_, m.protection, now_));
    else
        apply_effects(m.to, server_->on_message(m.from, last_env_, now_));
    return true;
}

bool World::do_tls(const std::string& pne) {
    auto it = std::find_if(tls_pending_.begin(), tls_pending_.end(),
                           [&](const PendingTls& t) { return t.pne == pne; });
    if (it == tls_pending_.end()) return false;
    const PendingTls t = *it;
    tls_pending_.erase(it);
    const auto psk = t.gw == kGwId ? gw_->tls_psk_for(t.identity) : std::nullopt;
    const bool ok = psk && *psk == t.psk;
    trace_line(pne, t.gw, "PSK-TLS", t.identity + (ok ? " up" : " FAILED"), true);
    if (ok) {
        tls_links_.insert(pne);
        apply_effects(kGwId, gw_->on_tls_established(pne, t.identity, now_));
        apply_effects(pne, pnes_.at(pne)->on_tls_established(t.gw, now_));
    } else {
        tls_links_.erase(pne);
        apply_effects(kGwId, gw_->on_tls_failed(pne, now_));
        apply_effects(pne, pnes_.at(pne)->on_tls_failed(t.gw, now_));
    }
    return true;
}

bool World::do_timer(const std::string& party) {
    if (party == kServerId) {
        if (server_->next_deadline() == kNever) return false;
        now_ = std::max(now_, server_->next_deadline());
        trace_line(party, party, "timer", "at " + std::to_string(now_) + " ms", true);
        apply_effects(party, server_->on_timer(now_));
    } else if (party == kGwId) {
        if (gw_->next_deadline() == kNever) return false;
        now_ = std::max(now_, gw_->next_deadline());
        trace_line(party, party, "timer", "at " + std::to_string(now_) + " ms", true);
        apply_effects(party, gw_->on_timer(now_));
    } else if (is_pne(party)) {
        Pne& p = *pnes_.at(party);
        if (p.next_deadline() == kNever) return false;
        now_ = std::max(now_, p.next_deadline());
        trace_line(party, party, "timer", "at " + std::to_string(now_) + " ms", true);
        apply_effects(party, p.on_timer(now_));
    } else {
        return false;
    }
    return true;
}

std::vector<std::string> World::replay_targets(const Known& k) const {
    std::vector<std::string> out;
    if (k.from == kGwId) {
        for (const auto& [id, p] : pnes_)
            if (attacker_sends(kGwId, id)) out.push_back(id);
        if (k.to == kServerId && attacker_sends(kGwId, kServerId)) out.push_back(kServerId);
    } else if (attacker_sends(k.from, kGwId)) {
        out.push_back(kGwId);
    }
    return out;
}

bool World::do_replay(const Action& a) {
    const Known* k = find_known(a.msg);
    if (!k) return false;
    const auto targets = replay_targets(*k);
    if (std::find(targets.begin(), targets.end(), a.party) == targets.end()) return false;
    Message m{k->from, a.party, attacker_protection(k->from, a.party), k->frame, 0, k->name, true};
    ++attacks_;
    trace_line(k->from, a.party, "attacker replays " + k->name,
               k->prior ? "from the earlier run" : "from this run", true);
    deliver(m);
    return true;
}

bool World::do_rewrite(const Action& a) {
    auto it = find_flight(a.msg);
    if (it == flight_.end() || !attacker_sees(it->from, it->to, it->protection) ||
        !attacker_sends(it->from, it->to))
        return false;
    auto env = decoded_envelope(it->frame);
    Message m = *it;
    if (!env || !forge(*env, m.from, m.to, a)) return false;
    m.frame = encode_frame(std::move(*env));
    m.forged = true;
    m.protection = m.from == it->from ? m.protection : attacker_protection(m.from, m.to);
    flight_.erase(it);
    ++attacks_;
    trace_line(m.from, m.to, "attacker rewrites " + m.name, a.field, true);
    deliver(m);
    return true;
}

bool World::do_command(const Action& a) {
    if (a.party.empty() || a.party != scn_.compromised_pne || !is_pne(a.party)) return false;
    Pne& p = *pnes_.at(a.party);
    if (p.busy()) return false;
    const pb::SetupType type = a.field == "1-1"    ? pb::SETUP_ONE_TO_ONE
                               : a.field == "all"  ? pb::SETUP_ALL
                               : a.field == "list" ? pb::SETUP_INVITE_LIST
                                                   : pb::SETUP_UNSPECIFIED;
    if (type == pb::SETUP_UNSPECIFIED) return false;
    std::vector<std::string> invited;
    std::string id;
    for (char c : a.value + ",") {
        if (c != ',') {
            id += c;
        } else if (!id.empty()) {
            invited.push_back(id);
            id.clear();
        }
    }
    ++attacks_;
    trace_line(a.party, kGwId, "command",
               "the compromised PNE asks for a PN (" + a.field +
                   (a.value.empty() ? "" : " " + a.value) + ")",
               true);
    apply_effects(a.party, p.start_setup(kGwId, type, invited, now_));
    // Its own requests count as consent: the attacker decides for the device it holds.
    return true;
}

bool World::do_life(const Action& a) {
    if (a.value.empty()) return false;
    if (a.field == "leave") {
        if (!is_pne(a.party) || !honest(a.party)) return false;
        Pne& p = *pnes_.at(a.party);
        if (p.leaving() || !p.memberships().count(a.value)) return false;
        ++life_;
        trace_line(a.party, a.party, "command", "leave " + a.value, true);
        apply_effects(a.party, p.leave(a.value, now_));
        return true;
    }
    if (a.field == "revoke") return do_revoke(a);
    auto inv = gw_->inventory().find(a.value);
    if (inv == gw_->inventory().end() || gw_->change_pending(a.value)) return false;
    if (a.field == "add") {
        if (!is_pne(a.party) || in_pn(inv->second, a.party)) return false;
        ++life_;
        facts_.gw_commands.insert("add " + a.value + " " + a.party);
        trace_line(kGwId, kGwId, "command", "add " + a.party + " to " + a.value, true);
        apply_effects(kGwId, gw_->add(a.value, {a.party}, now_));
        return true;
    }
    if (a.field == "rekey") {
        if (!is_pne(a.party) || !gw_->local_eukey(a.value, a.party)) return false;
        ++life_;
        facts_.gw_commands.insert("rekey " + a.value + " " + a.party);
        trace_line(kGwId, kGwId, "command", "rekey " + a.party + " in " + a.value, true);
        apply_effects(kGwId, gw_->rekey(a.value, a.party, now_));
        return true;
    }
    if (a.field == "remove") {
        if (!in_pn(inv->second, a.party)) return false;
        ++life_;
        facts_.gw_commands.insert("remove " + a.value + " " + a.party);
        trace_line(kGwId, kGwId, "command", "remove " + a.party + " from " + a.value, true);
        apply_effects(kGwId, gw_->remove(a.value, a.party, now_));
        return true;
    }
    if (a.field != "dissolve" || a.party != kGwId) return false;
    ++life_;
    facts_.gw_commands.insert("dissolve " + a.value);
    trace_line(kGwId, kGwId, "command", "dissolve " + a.value, true);
    apply_effects(kGwId, gw_->dissolve(a.value, now_));
    return true;
}

// The operator revokes (or disables) a PNE: its status changes in the store, and the server
// removes it from every PN it is in, as the server daemon does when its change-log poll sees
// the row (docs/protocol.md, "Revocation and operator deletion").
bool World::do_revoke(const Action& a) {
    if (!is_pne(a.party) || facts_.revoked.count(a.party)) return false;
    EntityStatus status = EntityStatus::kRevoked;
    if (a.value == "disabled")
        status = EntityStatus::kDisabled;
    else if (a.value != "revoked")
        return false;
    ++life_;
    facts_.revoked.insert(a.party);
    dir_->set_status(a.party, status);
    trace_line(kServerId, kServerId, "command", a.value + " " + a.party, true);
    std::vector<pb::PnInventory> pns;
    for (const auto& [key, inv] : dir_->pns())
        if (in_pn(inv, a.party)) pns.push_back(inv);
    for (const auto& inv : pns)
        apply_effects(kServerId, server_->push_change(inv.gw_id(), inv.pn_id(), pb::CHANGE_REMOVE,
                                                      a.party, inv.revision(), pb::REVOKED, now_));
    return true;
}

bool World::in_pn(const pb::PnInventory& inv, const std::string& pne) {
    return std::any_of(inv.members().begin(), inv.members().end(),
                       [&](const pb::PnMember& m) { return m.pne_id() == pne; });
}

bool World::do_inject(const Action& a) {
    const Known* k = find_known(a.msg);
    if (!k) return false;
    const auto targets = replay_targets(*k);
    if (std::find(targets.begin(), targets.end(), a.party) == targets.end()) return false;
    auto env = decoded_envelope(k->frame);
    std::string from = k->from;
    if (!env || !forge(*env, from, a.party, a)) return false;
    Message m{from,    a.party, attacker_protection(from, a.party), encode_frame(*env), 0,
              k->name, true};
    ++attacks_;
    trace_line(from, a.party, "attacker injects " + k->name, a.field, true);
    deliver(m);
    return true;
}

}  // namespace cpns::explore
