#include "sim/sim.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <sstream>
#include <stdexcept>
#include <unordered_set>

namespace cpns::sim {

struct Simulator::Node {
    std::string id;
    std::unique_ptr<Pne> pne;
    std::unique_ptr<Gateway> gw;
    bool is_server = false;
    std::string gw_id;             // PNE: its PN GW
    std::vector<std::string> pan;  // PN GW: its PNEs
    Millis armed = kNever;
    std::vector<OutcomeEffect> outcomes;
    SecretKey server_eukey;  // what the server holds for this entity
    SecretKey device_eukey;  // what the device holds
    std::optional<SecretKey> preassigned;
    std::map<std::string, PairKeys> keys;  // PNE: by PN id
};

struct Simulator::Event {
    enum class Kind { kDeliver, kTimer, kTlsDone, kPersisted, kChanged, kLinkDown };
    Kind kind = Kind::kDeliver;
    Millis at = 0;
    std::uint64_t seq = 0;
    std::string from, to;
    Bytes frame;
    Protection protection = Protection::kClear;
    std::string identity;
    bool ok = false;
    pb::FailureReason reason = pb::REASON_NONE;
    std::shared_ptr<ChangeResult> change;  // kChanged
};

bool Simulator::EventOrder::operator()(const Event* a, const Event* b) const {
    return a->at != b->at ? a->at > b->at : a->seq > b->seq;
}

namespace {
const std::string kServerId = "cpns-server";
}

Simulator::Simulator(std::uint64_t seed, FaultConfig faults, bool trace)
    : rng_(seed),
      fault_rng_(seed ^ 0x9e3779b97f4a7c15ULL),
      faults_(std::move(faults)),
      rule_hits_(faults_.rules.size(), 0),
      trace_on_(trace) {
    ServerConfig sc;
    sc.server_id = kServerId;
    server_ = std::make_unique<Server>(sc, dir_, rng_);
    auto n = std::make_unique<Node>();
    n->id = kServerId;
    n->is_server = true;
    nodes_.emplace(kServerId, std::move(n));
}

Simulator::~Simulator() {
    while (!queue_.empty()) {
        delete queue_.top();
        queue_.pop();
    }
}

Simulator::Node& Simulator::node(const std::string& id) {
    auto it = nodes_.find(id);
    if (it == nodes_.end()) throw std::out_of_range("no simulated entity " + id);
    return *it->second;
}

Pne& Simulator::pne(const std::string& id) {
    return *node(id).pne;
}
Gateway& Simulator::gateway(const std::string& id) {
    return *node(id).gw;
}
std::string Simulator::gw_of(const std::string& pne_id) const {
    return nodes_.at(pne_id)->gw_id;
}

void Simulator::add_gateway(const GwSpec& spec) {
    GatewayConfig gc;
    gc.gw_id = spec.id;
    auto gw_node = std::make_unique<Node>();
    gw_node->id = spec.id;
    SecretKey gw_key = rng_.key();
    gw_node->server_eukey = gw_key;
    dir_.add(spec.id, EntityRecord{EntityKind::kGw, gw_key, EntityStatus::kActive});
    gc.eukey = spec.wrong_eukey ? rng_.key() : gw_key;
    gw_node->device_eukey = gc.eukey;
    gc.capabilities.set_device_type("home-hub");
    gc.capabilities.set_manufacturer("sim");
    gc.capabilities.set_enough_ui(true);
    gc.subscription.set_subscriber_id("sub-" + spec.id);
    gc.subscription.set_service_plan("cpns-basic");
    gc.server_id = kServerId;

    gw_node->pan.reserve(spec.pnes.size());
    for (const auto& p : spec.pnes) {
        auto n = std::make_unique<Node>();
        SecretKey eukey = rng_.key();
        n->server_eukey = eukey;
        if (!p.unknown_to_server)
            dir_.add(p.id, EntityRecord{EntityKind::kPne, eukey, EntityStatus::kActive});
        PneConfig pc;
        pc.pne_id = p.id;
        pc.eukey = p.wrong_eukey ? rng_.key() : eukey;
        n->device_eukey = pc.eukey;
        PanLinkConfig link;
        link.pan_secure = p.pan_secure_at_gw.value_or(p.pan_secure);
        if (!p.enough_ui) {
            SecretKey pre = rng_.key();
            n->preassigned = pre;
            link.preassigned_key = pre;
            pc.preassigned_key = p.wrong_preassigned ? rng_.key() : pre;
        }
        gc.pan_links[p.id] = link;
        pc.capabilities.set_device_type(p.enough_ui ? "media-player" : "sensor");
        pc.capabilities.set_manufacturer("sim");
        pc.capabilities.set_enough_ui(p.enough_ui);
        pc.capabilities.add_pan_technologies("bluetooth");
        pb::ContentInfo content;
        content.set_content_id("c-" + p.id);
        content.set_media_type("audio/mpeg");
        pc.contents.push_back(content);
        pc.pan_secure = p.pan_secure;
        pc.accept_invitations = p.accept_invitations;
        n->id = p.id;
        n->gw_id = spec.id;
        n->pne = std::make_unique<Pne>(std::move(pc), rng_);
        gw_node->pan.push_back(p.id);
        nodes_.emplace(p.id, std::move(n));
    }
    gw_node->gw = std::make_unique<Gateway>(std::move(gc), rng_);
    nodes_.emplace(spec.id, std::move(gw_node));
    gw_order_.push_back(spec.id);
    ++stats_.gateways;
    stats_.pnes += spec.pnes.size();
}

void Simulator::push(Event* e) {
    e->seq = seq_++;
    queue_.push(e);
}

void Simulator::note(const std::string& from, const std::string& to, std::string what,
                     std::string n) {
    if (!trace_on_) return;
    trace_.push_back(TraceEntry{now_, from, to, std::move(what), std::move(n), true});
}

Millis Simulator::latency(const std::string& a, const std::string& b) {
    return (a == kServerId || b == kServerId) ? kWanLatency : kPanLatency;
}

bool Simulator::link_tls(const std::string& pne, const std::string& gw) const {
    auto it = tls_links_.find(pne);
    return it != tls_links_.end() && it->second == gw;
}

std::vector<std::string> Simulator::targets_of(const std::string& from, const SendEffect& send) {
    std::vector<std::string> targets;
    if (send.to == "*") {
        const Node& n = node(from);
        const std::string gw = n.gw ? n.id : n.gw_id;
        if (gw != from) targets.push_back(gw);
        for (const auto& p : node(gw).pan)
            if (p != from) targets.push_back(p);
    } else if (!nodes_.count(send.to)) {
        note(from, send.to, std::string(message_name(send.msg)), "no such entity; lost");
    } else {
        targets.push_back(send.to);
    }
    return targets;
}

// The configured rules, then the random faults, applied to one copy of a message in transit.
void Simulator::apply_faults(Transit& t, const std::string& name, const std::string& from,
                             const std::string& to, const pb::Envelope& msg) {
    for (std::size_t i = 0; i < faults_.rules.size(); ++i) {
        const auto& r = faults_.rules[i];
        if ((!r.message.empty() && r.message != name) || (!r.from.empty() && r.from != from) ||
            (!r.to.empty() && r.to != to) || (r.count >= 0 && rule_hits_[i] >= r.count))
            continue;
        ++rule_hits_[i];
        ++stats_.faults;
        switch (r.action) {
            case FaultRule::Action::kDrop:
                t.drop = true;
                break;
            case FaultRule::Action::kDuplicate:
                ++t.copies;
                break;
            case FaultRule::Action::kDelay:
                t.delay += r.delay;
                break;
            case FaultRule::Action::kFlipByte:
                t.wire[fault_rng_() % t.wire.size()] ^= 0x01;
                break;
            case FaultRule::Action::kMutate:
                if (r.mutate) {
                    pb::Envelope copy = msg;
                    r.mutate(copy);
                    t.wire = encode_frame(copy);
                    t.mutated = true;
                }
                break;
        }
    }
    std::uniform_real_distribution<double> u(0, 1);
    if (faults_.drop > 0 && u(fault_rng_) < faults_.drop) t.drop = true, ++stats_.faults;
    if (faults_.duplicate > 0 && u(fault_rng_) < faults_.duplicate) ++t.copies, ++stats_.faults;
    if (faults_.delay > 0 && u(fault_rng_) < faults_.delay)
        t.delay +=
            static_cast<Millis>(fault_rng_() % static_cast<std::uint64_t>(faults_.max_delay + 1)),
            ++stats_.faults;
    if (faults_.reorder > 0 && u(fault_rng_) < faults_.reorder)
        t.delay += 4 * latency(from, to), ++stats_.faults;
    if (faults_.flip > 0 && u(fault_rng_) < faults_.flip) {
        t.wire[fault_rng_() % t.wire.size()] ^= static_cast<std::uint8_t>(1u << (fault_rng_() % 8));
        ++stats_.faults;
    }
}

void Simulator::route(const std::string& from, SendEffect send) {
    const Bytes frame = encode_frame(send.msg);
    const std::string name(message_name(send.msg));
    for (const auto& to : targets_of(from, send)) {
        const bool pan = from != kServerId && to != kServerId;
        if (!pan && (server_link_down_.count(from) || server_link_down_.count(to))) {
            note(from, to, name, "lost: the link to the server is down");
            continue;
        }
        const std::string pne = node(from).pne ? from : to;
        const std::string gw = node(from).pne ? to : from;
        Protection prot = Protection::kClear;
        if (pan && send.protection == Protection::kTls) {
            if (!link_tls(pne, gw)) {
                ++stats_.protection_violations;
                note(from, to, name, "refused: TLS required and no session (not sent in clear)");
                continue;
            }
            prot = Protection::kTls;
        } else if (pan && link_tls(pne, gw)) {
            prot = Protection::kTls;  // the transport uses the session once it is up
        }
        ++stats_.messages;
        stats_.bytes += frame.size();
        if (capture_) captured_.push_back(Captured{from, to, frame});
        if (trace_on_)
            trace_.push_back(TraceEntry{now_, from, to, name,
                                        !pan ? "tls" : (prot == Protection::kTls ? "tls" : "clear"),
                                        false});
        Transit t{frame, latency(from, to)};
        apply_faults(t, name, from, to, send.msg);
        if (!t.mutated && t.wire != frame && (prot == Protection::kTls || !pan)) {
            // A TLS record whose bytes changed fails its integrity check: it never arrives.
            t.drop = true;
            note(from, to, name, "tampered TLS record rejected by the receiver");
        }
        if (t.drop) {
            note(from, to, name, "dropped");
            continue;
        }
        for (int c = 0; c < t.copies; ++c) {
            auto* e = new Event;
            e->kind = Event::Kind::kDeliver;
            e->at = now_ + t.delay + c;
            e->from = from;
            e->to = to;
            e->frame = t.wire;
            e->protection = prot;
            push(e);
        }
    }
}

void Simulator::on_start_tls(const std::string& id, const StartTlsEffect& t) {
    auto* e = new Event;
    e->kind = Event::Kind::kTlsDone;
    e->at = now_ + kTlsRoundTrips * 2 * kPanLatency;
    e->from = id;
    e->to = t.peer;
    e->identity = t.identity;
    const auto gw_psk = nodes_.count(t.peer) && node(t.peer).gw
                            ? node(t.peer).gw->tls_psk_for(t.identity)
                            : std::nullopt;
    e->ok = gw_psk && *gw_psk == t.psk;
    tls_.push_back(TlsRecord{id, t.peer, t.identity, t.psk, e->ok});
    note(id, t.peer, "PSK-TLS handshake", t.identity + (e->ok ? " ok" : " FAILED"));
    push(e);
}

void Simulator::on_persist(const PersistPnEffect& p) {
    auto* e = new Event;
    e->kind = Event::Kind::kPersisted;
    e->at = now_ + store_latency_;
    e->from = p.gw_id;
    e->to = kServerId;
    e->identity = p.inventory.pn_id();
    e->reason = dir_.register_pn(p.gw_id, p.inventory) ? pb::REASON_NONE : pb::DUPLICATE_PN;
    push(e);
}

void Simulator::on_change(const ChangePnEffect& c) {
    auto* e = new Event;
    e->kind = Event::Kind::kChanged;
    e->at = now_ + store_latency_;
    e->from = c.gw_id;
    e->to = kServerId;
    e->identity = c.pn_id;
    e->change = std::make_shared<ChangeResult>(
        dir_.change_pn(c.gw_id, c.pn_id, c.op, c.pne_id, c.revision, c.added));
    push(e);
}

void Simulator::on_outcome(const std::string& id, OutcomeEffect o) {
    if (trace_on_)
        note(id, id, "outcome",
             (o.success ? "success " : "failure ") + o.pn_id +
                 (o.success ? "" : ": " + std::string(reason_name(o.reason))));
    node(id).outcomes.push_back(std::move(o));
}

void Simulator::on_transition(TransitionEffect t) {
    if (trace_on_) transitions_.push_back(std::move(t));
}

void Simulator::apply(const std::string& id, PneEffects effects) {
    for (auto& eff : effects)
        std::visit(Overloaded{
                       [&](SendEffect& s) { route(id, std::move(s)); },
                       [&](StartTlsEffect& t) { on_start_tls(id, t); },
                       [&](StoreLocalKeyEffect& k) { pair_keys(k.pn_id, id).pne_lk = k.key; },
                       [&](SessionKeyEffect& sk) { pair_keys(sk.pn_id, sk.pne_id).pne_sk = sk.sk; },
                       [&](OutcomeEffect& o) { on_outcome(id, std::move(o)); },
                       [&](TransitionEffect& t) { on_transition(std::move(t)); },
                       // The PNE keeps its memberships in memory; nothing to simulate.
                       [&](MembershipEffect&) {},
                   },
                   eff);
    arm(id);
}

void Simulator::apply(const std::string& id, GatewayEffects effects) {
    for (auto& eff : effects)
        std::visit(Overloaded{
                       [&](SendEffect& s) { route(id, std::move(s)); },
                       [&](CloseLinkEffect& c) {
                           const bool had_tls = tls_links_.erase(c.peer) != 0;
                           note(id, c.peer, "link closed", std::string(reason_name(c.reason)));
                           // A closed PSK-TLS session: both ends see it go down one PAN
                           // latency later, as the daemons see the connection end after the
                           // PN GW closes it. (A clear PAN is modelled without connections.)
                           if (had_tls && nodes_.count(c.peer) && node(c.peer).pne) {
                               auto* e = new Event;
                               e->kind = Event::Kind::kLinkDown;
                               e->at = now_ + kPanLatency;
                               e->from = id;
                               e->to = c.peer;
                               push(e);
                           }
                       },
                       // The PN GW keeps the inventory in memory; nothing to simulate.
                       [&](StoreInventoryEffect&) {},
                       [&](StoreLocalKeyEffect& k) { pair_keys(k.pn_id, k.peer_id).gw_lk = k.key; },
                       [&](OutcomeEffect& o) { on_outcome(id, std::move(o)); },
                       [&](TransitionEffect& t) { on_transition(std::move(t)); },
                   },
                   eff);
    arm(id);
}

void Simulator::apply(const std::string& id, ServerEffects effects) {
    for (auto& eff : effects)
        std::visit(
            Overloaded{
                [&](SendEffect& s) { route(id, std::move(s)); },
                [&](PersistPnEffect& p) { on_persist(p); },
                [&](ChangePnEffect& c) { on_change(c); },
                [&](SessionKeyEffect& sk) { pair_keys(sk.pn_id, sk.pne_id).server_sk = sk.sk; },
                [&](OutcomeEffect& o) { on_outcome(id, std::move(o)); },
                [&](TransitionEffect& t) { on_transition(std::move(t)); },
            },
            eff);
    arm(id);
}

void Simulator::arm(const std::string& id) {
    Node& n = node(id);
    const Millis d = n.pne  ? n.pne->next_deadline()
                     : n.gw ? n.gw->next_deadline()
                            : server_->next_deadline();
    if (d == kNever) return;
    if (n.armed != kNever && n.armed <= d && n.armed >= now_) return;
    n.armed = d;
    auto* e = new Event;
    e->kind = Event::Kind::kTimer;
    e->at = std::max(d, now_);
    e->to = id;
    push(e);
}

void Simulator::deliver(const Event& e) {
    Node& n = node(e.to);
    switch (e.kind) {
        case Event::Kind::kTimer: {
            if (n.armed == e.at) n.armed = kNever;
            if (n.pne)
                apply(e.to, n.pne->on_timer(now_));
            else if (n.gw)
                apply(e.to, n.gw->on_timer(now_));
            else
                apply(e.to, server_->on_timer(now_));
            return;
        }
        case Event::Kind::kTlsDone: {
            Node& gw = node(e.to);
            if (e.ok)
                tls_links_[e.from] = e.to;
            else
                tls_links_.erase(e.from);
            if (e.ok) {
                ++stats_.tls_ok;
                apply(e.to, gw.gw->on_tls_established(e.from, e.identity, now_));
                apply(e.from, node(e.from).pne->on_tls_established(e.to, now_));
            } else {
                ++stats_.tls_failed;
                apply(e.to, gw.gw->on_tls_failed(e.from, now_));
                apply(e.from, node(e.from).pne->on_tls_failed(e.to, now_));
            }
            return;
        }
        case Event::Kind::kPersisted:
            apply(kServerId, server_->on_persisted(e.from, e.identity, e.reason, now_));
            return;
        case Event::Kind::kChanged:
            apply(kServerId, server_->on_changed(e.from, e.identity, *e.change, now_));
            return;
        case Event::Kind::kLinkDown:
            // Unless a new PSK-TLS session came up meanwhile.
            if (!link_tls(e.to, e.from)) {
                apply(e.from, node(e.from).gw->on_link_down(e.to, now_));
                apply(e.to, node(e.to).pne->on_link_down(e.from, now_));
            }
            return;
        case Event::Kind::kDeliver:
            break;
    }
    auto decoded = decode_frame(e.frame);
    if (auto* err = std::get_if<DecodeError>(&decoded)) {
        ++stats_.decode_errors;
        note(e.from, e.to, "frame", std::string("rejected: ") + std::string(to_string(*err)));
        return;
    }
    const auto& env = std::get<pb::Envelope>(decoded);
    if (n.pne)
        apply(e.to, n.pne->on_message(e.from, env, e.protection, now_));
    else if (n.gw)
        apply(e.to, n.gw->on_message(e.from, env, e.protection, now_));
    else
        apply(e.to, server_->on_message(e.from, env, now_));
}

void Simulator::discover_all() {
    for (const auto& gw : gw_order_) {
        apply(gw, node(gw).gw->discover(now_));
        for (const auto& p : node(gw).pan) apply(p, node(p).pne->discover(now_));
    }
}

void Simulator::start_pne_setup(const std::string& pne_id, pb::SetupType type,
                                std::vector<std::string> invited) {
    Node& n = node(pne_id);
    apply(pne_id, n.pne->start_setup(n.gw_id, type, std::move(invited), now_));
}

void Simulator::start_gw_invite(const std::string& gw_id, std::vector<std::string> pne_ids) {
    apply(gw_id, node(gw_id).gw->invite(std::move(pne_ids), now_));
}

void Simulator::start_pne_leave(const std::string& pne_id, const std::string& pn_id) {
    apply(pne_id, node(pne_id).pne->leave(pn_id, now_));
}

void Simulator::start_gw_remove(const std::string& gw_id, const std::string& pn_id,
                                const std::string& pne_id) {
    apply(gw_id, node(gw_id).gw->remove(pn_id, pne_id, now_));
}

void Simulator::start_gw_dissolve(const std::string& gw_id, const std::string& pn_id) {
    apply(gw_id, node(gw_id).gw->dissolve(pn_id, now_));
}

void Simulator::start_gw_add(const std::string& gw_id, const std::string& pn_id,
                             const std::vector<std::string>& pne_ids) {
    apply(gw_id, node(gw_id).gw->add(pn_id, pne_ids, now_));
}

void Simulator::start_server_rekey_order(const std::string& gw_id, const std::string& pn_id,
                                         const std::string& pne_id, bool linked) {
    const auto it = dir_.pns().find(gw_id + "/" + pn_id);
    const std::uint64_t revision = it == dir_.pns().end() ? 0 : it->second.revision();
    apply(kServerId, server_->order_rekey(gw_id, pn_id, pne_id, revision, linked, now_));
}

void Simulator::set_faults(FaultConfig faults) {
    faults_ = std::move(faults);
    rule_hits_.assign(faults_.rules.size(), 0);
}

void Simulator::start_gw_rekey(const std::string& gw_id, const std::string& pn_id,
                               const std::string& pne_id) {
    apply(gw_id, node(gw_id).gw->rekey(pn_id, pne_id, now_));
}

void Simulator::revoke(const std::string& id, EntityStatus status) {
    dir_.set_status(id, status);
    std::vector<pb::PnInventory> pns;
    for (const auto& [key, inv] : dir_.pns())
        for (const auto& m : inv.members())
            if (m.pne_id() == id) pns.push_back(inv);
    for (const auto& inv : pns)
        apply(kServerId, server_->push_change(inv.gw_id(), inv.pn_id(), pb::CHANGE_REMOVE, id,
                                              inv.revision(), pb::REVOKED, now_));
}

void Simulator::delete_pn(const std::string& gw_id, const std::string& pn_id) {
    auto it = dir_.pns().find(gw_id + "/" + pn_id);
    if (it == dir_.pns().end()) return;
    const pb::PnInventory before = it->second;
    const ChangeResult r = dir_.change_pn(gw_id, pn_id, pb::CHANGE_DISSOLVE, "", before.revision());
    apply(kServerId,
          server_->announce(gw_id, pb::CHANGE_DISSOLVE, "", r, "deleted by the operator"));
}

void Simulator::set_server_link(const std::string& gw_id, bool up) {
    Node& n = node(gw_id);
    if (!n.gw) return;
    if (up) {
        if (!server_link_down_.erase(gw_id)) return;
        apply(gw_id, n.gw->on_link_up(kServerId, now_));
    } else {
        if (!server_link_down_.insert(gw_id).second) return;
        apply(gw_id, n.gw->on_link_down(kServerId, now_));
    }
}

void Simulator::inject(const std::string& from, const std::string& to, Bytes frame,
                       Protection protection) {
    auto* e = new Event;
    e->kind = Event::Kind::kDeliver;
    e->at = now_ + latency(from, to);
    e->from = from;
    e->to = to;
    e->frame = std::move(frame);
    e->protection = protection;
    push(e);
}

void Simulator::run(Millis limit) {
    const auto start = std::chrono::steady_clock::now();
    const Millis end = now_ + limit;
    while (!queue_.empty() && queue_.top()->at <= end) {
        std::unique_ptr<Event> e(queue_.top());
        queue_.pop();
        if (!nodes_.count(e->to)) {
            now_ = std::max(now_, e->at);
            note(e->from, e->to, "event", "lost: the entity was retired");
            continue;
        }
        if (e->kind == Event::Kind::kTimer) {
            // A timer whose wait has ended already does not move virtual time.
            Node& n = node(e->to);
            const Millis d = n.pne  ? n.pne->next_deadline()
                             : n.gw ? n.gw->next_deadline()
                                    : server_->next_deadline();
            if (d > e->at) {
                if (n.armed == e->at) n.armed = kNever;
                arm(e->to);
                continue;
            }
        }
        now_ = std::max(now_, e->at);
        deliver(*e);
    }
    wall_ms_ +=
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

const std::vector<OutcomeEffect>& Simulator::outcomes(const std::string& id) const {
    return nodes_.at(id)->outcomes;
}

Simulator::PairKeys& Simulator::pair_keys(const std::string& pn, const std::string& pne) {
    auto it = nodes_.find(pne);
    if (it == nodes_.end() || !it->second->pne) return stray_keys_[{pn, pne}];
    return it->second->keys[pn];
}

const Simulator::PairKeys* Simulator::find_pair(const std::string& pn,
                                                const std::string& pne) const {
    auto it = nodes_.find(pne);
    if (it == nodes_.end() || !it->second->pne) {
        auto s = stray_keys_.find({pn, pne});
        return s == stray_keys_.end() ? nullptr : &s->second;
    }
    auto k = it->second->keys.find(pn);
    return k == it->second->keys.end() ? nullptr : &k->second;
}

std::optional<SecretKey> Simulator::server_sk(const std::string& pn, const std::string& p) const {
    const PairKeys* k = find_pair(pn, p);
    return k ? k->server_sk : std::nullopt;
}
std::optional<SecretKey> Simulator::pne_sk(const std::string& pn, const std::string& p) const {
    const PairKeys* k = find_pair(pn, p);
    return k ? k->pne_sk : std::nullopt;
}
std::optional<SecretKey> Simulator::pne_local_key(const std::string& pn,
                                                  const std::string& p) const {
    const PairKeys* k = find_pair(pn, p);
    return k ? k->pne_lk : std::nullopt;
}
std::optional<SecretKey> Simulator::gw_local_key(const std::string& pn,
                                                 const std::string& p) const {
    const PairKeys* k = find_pair(pn, p);
    return k ? k->gw_lk : std::nullopt;
}
SecretKey Simulator::server_eukey(const std::string& id) const {
    return nodes_.at(id)->server_eukey;
}
SecretKey Simulator::device_eukey(const std::string& id) const {
    return nodes_.at(id)->device_eukey;
}
std::optional<SecretKey> Simulator::preassigned_key(const std::string& id) const {
    return nodes_.at(id)->preassigned;
}

void Simulator::count_pair(const PairKeys& k, Summary& s) {
    if (!k.server_sk) return;  // only PNEs the server derived SK_PNE for (that joined)
    ++s.sk_checked;
    if (k.pne_sk && *k.pne_sk == *k.server_sk) ++s.sk_agree;
    if (!k.pne_lk) return;
    ++s.local_key_checked;
    if (k.gw_lk && *k.gw_lk == *k.pne_lk) ++s.local_key_agree;
}

void Simulator::count_outcome(const OutcomeEffect& o, Summary& s) {
    for (const auto& p : o.pnes) {
        if (p.joined)
            ++s.pnes_authenticated;
        else
            s.excluded[o.pn_id + "/" + p.pne_id] = std::string(reason_name(p.reason));
    }
}

void Simulator::retire(const std::vector<std::string>& gw_ids) {
    std::unordered_set<std::string> gws, gone;
    for (const auto& gw : gw_ids) {
        Node& g = node(gw);
        if (!g.gw) throw std::invalid_argument(gw + " is not a simulated PN GW");
        gws.insert(gw);
        gone.insert(gw);
        for (const auto& p : g.pan) {
            gone.insert(p);
            for (const auto& [pn, keys] : node(p).keys) count_pair(keys, stats_);
            dir_.remove(p);
            tls_links_.erase(p);
        }
        stats_.pns_registered += dir_.remove_pns_of(gw);
        dir_.remove(gw);
        ++stats_.gateways_retired;
    }
    auto& server_outcomes = node(kServerId).outcomes;
    std::erase_if(server_outcomes, [&](const OutcomeEffect& o) {
        if (!gws.count(o.gw_id)) return false;
        count_outcome(o, stats_);
        return true;
    });
    std::erase_if(tls_, [&](const TlsRecord& t) { return gws.count(t.gw_id) != 0; });
    std::erase_if(gw_order_, [&](const std::string& id) { return gws.count(id) != 0; });
    for (const auto& id : gone) {
        // The trace still names them: remember what they were, for the sequence diagram.
        if (trace_on_) retired_rank_[id] = gws.count(id) ? 1 : 0;
        nodes_.erase(id);
    }
}

Summary Simulator::summary() const {
    Summary s = stats_;  // what retired PN GWs left as counts, and the running counters
    s.pns_registered += dir_.pns().size();
    for (const auto& o : nodes_.at(kServerId)->outcomes) count_outcome(o, s);
    for (const auto& [id, n] : nodes_)
        for (const auto& [pn, keys] : n->keys) count_pair(keys, s);
    for (const auto& [pair, keys] : stray_keys_) count_pair(keys, s);
    s.virtual_ms = now_;
    s.wall_ms = wall_ms_;
    struct rusage ru {};
    getrusage(RUSAGE_SELF, &ru);
    s.peak_rss_kb = ru.ru_maxrss;
    return s;
}

namespace {
std::string json_escape(const std::string& s) {
    std::string o;
    for (char c : s) {
        if (c == '"' || c == '\\') o += '\\';
        o += c;
    }
    return o;
}
}  // namespace

std::string Summary::to_json() const {
    std::ostringstream o;
    o << "{\n"
      << "  \"gateways\": " << gateways << ",\n"
      << "  \"pnes\": " << pnes << ",\n"
      << "  \"pns_registered\": " << pns_registered << ",\n"
      << "  \"pnes_authenticated\": " << pnes_authenticated << ",\n"
      << "  \"pnes_excluded\": {";
    bool first = true;
    for (const auto& [k, v] : excluded) {
        o << (first ? "\n" : ",\n") << "    \"" << json_escape(k) << "\": \"" << json_escape(v)
          << "\"";
        first = false;
    }
    o << (first ? "" : "\n  ") << "},\n"
      << "  \"sk_pne_agree\": {\"checked\": " << sk_checked << ", \"equal\": " << sk_agree
      << ", \"all_equal\": " << (sk_checked == sk_agree ? "true" : "false") << "},\n"
      << "  \"local_eukey_agree\": {\"checked\": " << local_key_checked
      << ", \"equal\": " << local_key_agree
      << ", \"all_equal\": " << (local_key_checked == local_key_agree ? "true" : "false") << "},\n"
      << "  \"tls_handshakes\": {\"ok\": " << tls_ok << ", \"failed\": " << tls_failed << "},\n"
      << "  \"messages\": " << messages << ",\n"
      << "  \"bytes\": " << bytes << ",\n"
      << "  \"faults_injected\": " << faults << ",\n"
      << "  \"decode_errors\": " << decode_errors << ",\n"
      << "  \"protection_violations\": " << protection_violations << ",\n"
      << "  \"gateways_retired\": " << gateways_retired << ",\n"
      << "  \"virtual_time_ms\": " << virtual_ms << ",\n"
      << "  \"wall_time_ms\": " << static_cast<long long>(wall_ms) << ",\n"
      << "  \"peak_rss_kb\": " << peak_rss_kb << "\n"
      << "}\n";
    return o.str();
}

std::string Simulator::trace_text() const {
    std::ostringstream o;
    for (const auto& t : trace_) {
        o.width(7);
        o << t.at << " ms  ";
        if (t.is_note)
            o << "[" << t.from << (t.to != t.from ? " -> " + t.to : "") << "] " << t.what << ": "
              << t.note << "\n";
        else
            o << t.from << " -> " << t.to << "  " << t.what << "  (" << t.note << ")\n";
    }
    return o.str();
}

std::string Simulator::trace_mermaid() const {
    std::ostringstream o;
    o << "sequenceDiagram\n";
    std::vector<std::string> order;
    auto add = [&](const std::string& id) {
        if (std::find(order.begin(), order.end(), id) == order.end()) order.push_back(id);
    };
    for (const auto& t : trace_) {
        add(t.from);
        add(t.to);
    }
    // PNEs first, then PN GWs, then the server, as in the source's figures.
    std::stable_sort(order.begin(), order.end(), [&](const std::string& a, const std::string& b) {
        auto rank = [&](const std::string& id) {
            auto it = nodes_.find(id);
            if (it == nodes_.end()) {
                auto r = retired_rank_.find(id);
                return r == retired_rank_.end() ? 3 : r->second;
            }
            const Node& n = *it->second;
            return n.pne ? 0 : n.gw ? 1 : 2;
        };
        return rank(a) < rank(b);
    });
    for (const auto& id : order) o << "    participant " << id << "\n";
    for (const auto& t : trace_) {
        if (t.is_note) {
            if (t.from == t.to)
                o << "    Note over " << t.from << ": " << t.what << " " << t.note << "\n";
            else
                o << "    Note over " << t.from << "," << t.to << ": " << t.what << " " << t.note
                  << "\n";
        } else {
            o << "    " << t.from << "->>" << t.to << ": " << t.what
              << (t.note == "clear" ? " (clear)" : "") << "\n";
        }
    }
    return o.str();
}

std::optional<pb::SetupType> parse_setup_type(std::string_view s) {
    std::string l(s);
    std::transform(l.begin(), l.end(), l.begin(), [](unsigned char c) { return std::tolower(c); });
    if (l == "1-1" || l == "one-to-one") return pb::SETUP_ONE_TO_ONE;
    if (l == "all") return pb::SETUP_ALL;
    if (l == "list" || l == "invite-list") return pb::SETUP_INVITE_LIST;
    return std::nullopt;
}

}  // namespace cpns::sim
