#include "explore/world.hpp"

#include <algorithm>

#include "explore/mutate.hpp"

namespace cpns::explore {

namespace {

std::uint64_t message_id(const std::string& from, const std::string& to, Protection p,
                         const Bytes& frame) {
    std::string head = from + ">" + to + (p == Protection::kTls ? "#tls" : "#clear");
    std::string_view body(reinterpret_cast<const char*>(frame.data()), frame.size());
    return fnv1a(body, fnv1a(head));
}

std::uint64_t known_id(const std::string& from, const Bytes& frame) {
    std::string_view body(reinterpret_cast<const char*>(frame.data()), frame.size());
    return fnv1a(body, fnv1a(from + ">"));
}

}  // namespace

World::World(const Scenario& scenario, std::shared_ptr<const Prior> prior, int run, bool record)
    : scn_(scenario), prior_(std::move(prior)), record_(record), run_(run) {
    if (!prior_) prior_ = std::make_shared<const Prior>();
    build_roles(run);
    if (scn_.prior_run) {
        gw_->import_state(prior_->gw_state);
        for (const auto& st : prior_->pne_states)
            if (auto it = pnes_.find(st.pne_id()); it != pnes_.end()) it->second->import_state(st);
        for (const auto& inv : prior_->registered) dir_->register_pn(kGwId, inv);
        facts_.prior_pns = prior_->registered.size();
        known_ = prior_->knowledge;
        for (const auto& k : known_) known_ids_.insert(k.id);
        values_ = prior_->values;
    }
    discover();
    start();
}

World::~World() = default;

void World::build_roles(int run) {
    DeterministicRandom prov(scn_.seed * 7919 + 17);
    const std::uint64_t base = scn_.seed * 1000 + static_cast<std::uint64_t>(run) * 100;
    for (int i = 0; i < scn_.pnes + 2; ++i)
        randoms_.push_back(
            std::make_unique<DeterministicRandom>(base + static_cast<std::uint64_t>(i)));
    dir_ = std::make_unique<MemoryDirectory>();
    gw_eukey_ = prov.key();
    dir_->add(kGwId, EntityRecord{EntityKind::kGw, gw_eukey_, EntityStatus::kActive});
    GatewayConfig gc;
    gc.gw_id = kGwId;
    gc.eukey = gw_eukey_;
    gc.capabilities.set_device_type("home-hub");
    gc.capabilities.set_enough_ui(true);
    gc.subscription.set_subscriber_id("sub-" + kGwId);
    gc.server_id = kServerId;
    std::size_t i = 2;
    for (const auto& id : scn_.pne_ids()) {
        SecretKey eukey = prov.key();
        SecretKey pre = prov.key();
        dir_->add(id, EntityRecord{EntityKind::kPne, eukey, EntityStatus::kActive});
        facts_.eukeys.push_back(eukey);
        facts_.pne_eukey[id] = eukey;
        PanLinkConfig link;
        link.pan_secure = scn_.pan_secure;
        PneConfig pc;
        pc.pne_id = id;
        pc.eukey = eukey;
        if (!scn_.enough_ui) link.preassigned_key = pc.preassigned_key = pre;
        gc.pan_links[id] = link;
        pc.capabilities.set_device_type("device-" + id);
        pc.capabilities.set_manufacturer("explore");
        pc.capabilities.set_enough_ui(scn_.enough_ui);
        pb::ContentInfo content;
        content.set_content_id("c-" + id);
        pc.contents.push_back(content);
        pc.pan_secure = scn_.pan_secure;
        pne_cfg_[id] = pc;
        pnes_[id] = std::make_unique<Pne>(std::move(pc), *randoms_[i++]);
    }
    ServerConfig sc;
    sc.server_id = kServerId;
    sc.weaken = scn_.weaken;
    server_ = std::make_unique<Server>(sc, *dir_, *randoms_[0]);
    gw_ = std::make_unique<Gateway>(std::move(gc), *randoms_[1]);
}

// Step 0 before the run, synchronously and unattacked: every party learns its neighbours.
void World::discover() {
    std::vector<std::pair<std::string, SendEffect>> queue;
    auto collect = [&](const std::string& from, const auto& effects) {
        for (const auto& e : effects)
            if (const auto* s = std::get_if<SendEffect>(&e)) queue.emplace_back(from, *s);
    };
    collect(kGwId, gw_->discover(0));
    for (auto& [id, p] : pnes_) collect(id, p->discover(0));
    for (std::size_t i = 0; i < queue.size(); ++i) {
        const auto [from, send] = queue[i];
        std::vector<std::string> targets;
        if (send.to != "*") targets.push_back(send.to);
        if (send.to == "*" && from != kGwId) targets.push_back(kGwId);
        for (const auto& [id, p] : pnes_)
            if (send.to == "*" && id != from) targets.push_back(id);
        for (const auto& t : targets) {
            if (t == kGwId)
                collect(t, gw_->on_message(from, send.msg, Protection::kClear, 0));
            else if (is_pne(t))
                collect(t, pnes_.at(t)->on_message(from, send.msg, Protection::kClear, 0));
        }
    }
}

void World::start() {
    if (scn_.gw_initiated) {
        apply_effects(kGwId, gw_->invite(scn_.invited(), now_));
    } else {
        const std::string initiator = scn_.pne_ids().front();
        apply_effects(initiator,
                      pnes_.at(initiator)->start_setup(kGwId, scn_.setup, scn_.invited(), now_));
    }
}

void World::trace_line(const std::string& from, const std::string& to, std::string what,
                       std::string note, bool is_note) {
    if (record_)
        trace_.push_back(TraceLine{step_, from, to, std::move(what), std::move(note), is_note});
}

void World::observe(const std::string& party, Effect e) {
    if (const auto* t = std::get_if<TransitionEffect>(&e)) {
        if (!t->pn_id.empty()) facts_.pns_seen.insert(t->pn_id);
        if (is_pne(party) && !t->pn_id.empty() && t->to != "idle")
            facts_.engaged[party].insert(t->pn_id);
        if (party == kServerId && t->subject.empty() && t->from == "none" && last_ok_ &&
            last_env_.has_registration_request() &&
            last_env_.registration_request().pn_id() == t->pn_id)
            facts_.registrations[t->pn_id] = last_env_.registration_request();
    }
    if (const auto* s = std::get_if<SessionKeyEffect>(&e)) facts_.session_keys.push_back(s->sk);
    if (record_) {
        if (const auto* o = std::get_if<OutcomeEffect>(&e))
            trace_line(party, party, "outcome",
                       (o->success ? "success " : "failure ") + o->pn_id +
                           (o->success ? "" : ": " + std::string(reason_name(o->reason))),
                       true);
    }
    obs_.push_back(Observation{step_, party, std::move(e)});
}

void World::apply_effects(const std::string& party, PneEffects effects) {
    for (auto& eff : effects)
        std::visit(Overloaded{
                       [&](SendEffect& s) { route(party, std::move(s)); },
                       [&](StartTlsEffect& t) {
                           tls_pending_.push_back(PendingTls{party, t.peer, t.identity, t.psk});
                           trace_line(party, t.peer, "PSK-TLS start", t.identity, true);
                       },
                       [&](StoreLocalKeyEffect& k) { observe(party, std::move(k)); },
                       [&](SessionKeyEffect& k) { observe(party, std::move(k)); },
                       [&](OutcomeEffect& o) { observe(party, std::move(o)); },
                       [&](TransitionEffect& t) { observe(party, std::move(t)); },
                       [&](MembershipEffect& m) { observe(party, std::move(m)); },
                   },
                   eff);
}

void World::apply_effects(const std::string& party, GatewayEffects effects) {
    for (auto& eff : effects)
        std::visit(Overloaded{
                       [&](SendEffect& s) { route(party, std::move(s)); },
                       [&](CloseLinkEffect& c) {
                           const bool had_tls = tls_links_.erase(c.peer) != 0;
                           trace_line(party, c.peer, "link closed",
                                      std::string(reason_name(c.reason)), true);
                           // Both ends see the PSK-TLS session go down (the transport flushes
                           // what is in flight first), as the daemons and the simulator do.
                           if (had_tls && is_pne(c.peer)) {
                               const std::string peer = c.peer;
                               apply_effects(kGwId, gw_->on_link_down(peer, now_, c.reason));
                               apply_effects(peer, pnes_.at(peer)->on_link_down(kGwId, now_));
                           }
                       },
                       [&](StoreInventoryEffect& i) { observe(party, std::move(i)); },
                       [&](StoreLocalKeyEffect& k) { observe(party, std::move(k)); },
                       [&](OutcomeEffect& o) { observe(party, std::move(o)); },
                       [&](TransitionEffect& t) { observe(party, std::move(t)); },
                   },
                   eff);
}

void World::apply_effects(const std::string& party, ServerEffects effects) {
    for (auto& eff : effects)
        std::visit(Overloaded{
                       [&](SendEffect& s) {
                           note_server_send(s.msg);
                           route(party, std::move(s));
                       },
                       [&](PersistPnEffect& p) {
                           const bool ok = dir_->register_pn(p.gw_id, p.inventory);
                           const std::string gw = p.gw_id, pn = p.inventory.pn_id();
                           observe(party, std::move(p));
                           apply_effects(
                               party, server_->on_persisted(
                                          gw, pn, ok ? pb::REASON_NONE : pb::DUPLICATE_PN, now_));
                       },
                       [&](SessionKeyEffect& k) { observe(party, std::move(k)); },
                       [&](OutcomeEffect& o) { observe(party, std::move(o)); },
                       [&](TransitionEffect& t) { observe(party, std::move(t)); },
                       [&](ChangePnEffect& c) {
                           const std::string gw = c.gw_id, pn = c.pn_id;
                           const ChangeResult r = dir_->change_pn(c.gw_id, c.pn_id, c.op, c.pne_id,
                                                                  c.revision, c.added);
                           StoreChangeEffect sc{c, r.reason, "", {}};
                           if (last_ok_ && last_env_.has_change_request() &&
                               last_env_.change_request().op() == pb::CHANGE_LEAVE)
                               sc.rand_pne = last_env_.change_request().leave().rand_pne();
                           if (r.reason == pb::REASON_NONE)
                               for (const auto& id : r.before)
                                   if (r.dissolved || std::none_of(r.inventory.members().begin(),
                                                                   r.inventory.members().end(),
                                                                   [&](const pb::PnMember& m) {
                                                                       return m.pne_id() == id;
                                                                   }))
                                       sc.removed.push_back(id);
                           observe(party, std::move(sc));
                           apply_effects(party, server_->on_changed(gw, pn, r, now_));
                       },
                   },
                   eff);
}

// The explorer's oracle: the LocalEUKeys the server hands out in this run (it opens the PN
// GW's copy with the PN GW's EUKey, which the world provisioned).
void World::note_server_send(const pb::Envelope& env) {
    if (!env.has_auth_request()) return;
    const auto& a = env.auth_request();
    auto reg = facts_.registrations.find(a.pn_id());  // the joins carry each rand_PNE
    if (reg == facts_.registrations.end()) return;
    for (const auto& k : a.local_eukeys())
        for (const auto& p : reg->second.pnes()) {
            if (p.join().pne_id() != k.pne_id()) continue;
            if (auto key = unwrap_local_eukey(gw_eukey_, Recipient::kGw, a.pn_id(), k.pne_id(),
                                              kGwId, bytes_of(a.rand_server()),
                                              bytes_of(p.join().rand_pne()), bytes_of(k.for_gw())))
                facts_.issued_local_keys.push_back(*key);
        }
}

void World::route(const std::string& from, SendEffect send) {
    if (send.to == "*" || (send.to != kGwId && send.to != kServerId && !is_pne(send.to))) {
        trace_line(from, from, "lost", "no such receiver: " + send.to, true);
        return;
    }
    const bool pan = is_pne(from) || is_pne(send.to);
    Protection prot = Protection::kTls;
    if (pan) {
        const std::string& pne = is_pne(from) ? from : send.to;
        const bool up = tls_links_.count(pne) != 0;
        if (send.protection == Protection::kTls && !up) {
            trace_line(from, send.to, std::string(message_name(send.msg)),
                       "refused: TLS required and no session", true);
            return;
        }
        prot = up ? Protection::kTls : Protection::kClear;
    }
    Message m;
    m.from = from;
    m.to = send.to;
    m.protection = prot;
    m.name = std::string(message_name(send.msg));
    // Values are collected from the message before it is encoded (no decode needed).
    if (attacker_sees(from, send.to, prot)) collect_values(send.msg, values_);
    if (run_ == 0) collect_values(send.msg, all_values_);
    if (is_pne(from) && honest(from) && send.msg.has_leave_request())
        facts_.leaves_asked.emplace(from, send.msg.leave_request().pn_id(),
                                    send.msg.leave_request().rand_pne());
    m.frame = encode_frame(std::move(send.msg));
    m.id = message_id(m.from, m.to, m.protection, m.frame);
    learn(m);
    flight_.push_back(std::move(m));
}

bool World::attacker_sees(const std::string& from, const std::string& to, Protection p) const {
    if (scn_.dishonest_gw && (from == kGwId || to == kGwId)) return true;
    if (!scn_.compromised_pne.empty() &&
        (from == scn_.compromised_pne || to == scn_.compromised_pne))
        return true;
    const std::string& pne = is_pne(from) ? from : to;
    return is_pne(pne) && pan_insecure(pne) && p == Protection::kClear;
}

bool World::attacker_sends(const std::string& from, const std::string& to) const {
    if (scn_.dishonest_gw && (from == kGwId || to == kGwId)) return true;
    if (!scn_.compromised_pne.empty() &&
        (from == scn_.compromised_pne || to == scn_.compromised_pne))
        return true;
    if (is_pne(from) && to == kGwId) return pan_insecure(from);
    if (from == kGwId && is_pne(to)) return pan_insecure(to);
    return false;
}

Protection World::attacker_protection(const std::string& from, const std::string& to) const {
    if (!is_pne(from) && !is_pne(to)) return Protection::kTls;
    const std::string& pne = is_pne(from) ? from : to;
    const bool endpoint = scn_.dishonest_gw || pne == scn_.compromised_pne;
    return endpoint && tls_links_.count(pne) ? Protection::kTls : Protection::kClear;
}

void World::learn(const Message& m) {
    if (!attacker_sees(m.from, m.to, m.protection)) return;
    const std::uint64_t id = known_id(m.from, m.frame);
    if (!known_ids_.insert(id).second) return;
    known_.push_back(Known{m.from, m.to, m.frame, id, m.name, false});
}

}  // namespace cpns::explore
