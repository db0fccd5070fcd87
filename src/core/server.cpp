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

std::size_t MemoryDirectory::remove_pns_of(const std::string& gw_id) {
    const std::string prefix = gw_id + "/";
    auto first = pns_.lower_bound(prefix);
    auto last = first;
    std::size_t n = 0;
    while (last != pns_.end() && last->first.compare(0, prefix.size(), prefix) == 0) ++last, ++n;
    pns_.erase(first, last);
    return n;
}

ChangeResult MemoryDirectory::change_pn(const std::string& gw_id, const std::string& pn_id,
                                        pb::ChangeOp op, const std::string& pne_id,
                                        std::uint64_t revision,
                                        const std::vector<pb::PnMember>& added) {
    auto it = pns_.find(gw_id + "/" + pn_id);
    ChangeResult r = change_inventory(
        it == pns_.end() ? std::nullopt : std::optional<pb::PnInventory>(it->second), op, pne_id,
        revision, added);
    if (r.reason != pb::REASON_NONE || op == pb::CHANGE_SYNC) return r;  // a sync reads only
    if (r.dissolved)
        pns_.erase(it);
    else
        it->second = r.inventory;
    return r;
}

Server::Server(ServerConfig config, const Directory& directory, Random& random)
    : cfg_(std::move(config)), dir_(directory), random_(random) {
    if (cfg_.weaken.any())
        log(LogLevel::kError, "deliberately weakened for a test: not a server to deploy");
}

std::string_view Server::to_string(Phase p) {
    static constexpr std::array<std::string_view, 4> kNames{"none", "wait_auth_response",
                                                            "wait_persist", "done"};
    const auto i = static_cast<std::size_t>(p);
    return i < kNames.size() ? kNames[i] : "invalid";
}

std::string_view Server::to_string(PneAuth a) {
    static constexpr std::array<std::string_view, 5> kNames{"none", "pending", "authenticated",
                                                            "failed", "refused"};
    const auto i = static_cast<std::size_t>(a);
    return i < kNames.size() ? kNames[i] : "invalid";
}

std::optional<Server::Phase> Server::phase(const std::string& gw_id,
                                           const std::string& pn_id) const {
    auto it = sessions_.find({gw_id, pn_id});
    if (it == sessions_.end()) return std::nullopt;
    return it->second.phase;
}

std::optional<Server::PneAuth> Server::pne_auth(const std::string& gw_id, const std::string& pn_id,
                                                const std::string& pne_id) const {
    auto it = sessions_.find({gw_id, pn_id});
    if (it == sessions_.end()) return std::nullopt;
    auto p = it->second.pnes.find(pne_id);
    if (p == it->second.pnes.end()) return std::nullopt;
    return p->second.auth;
}

void Server::log(LogLevel level, const std::string& text) const {
    if (cfg_.log) cfg_.log(level, "server: " + text);
}

void Server::enter(Out& out, Session& s, Phase to, Millis deadline, const std::string& reason) {
    const std::string from(to_string(s.phase));
    log(LogLevel::kDebug, s.pn_id + " of " + s.gw_id + ": state " + from + " -> " +
                              std::string(to_string(to)) + " (" + reason + ")");
    out.push_back(TransitionEffect{"server", cfg_.server_id, s.pn_id, "", from,
                                   std::string(to_string(to)), reason});
    s.phase = to;
    const Key key{s.gw_id, s.pn_id};
    if (s.deadline != kNever) timers_.erase({s.deadline, key});
    s.deadline = to == Phase::kDone ? kNever : deadline;
    if (s.deadline != kNever) timers_.insert({s.deadline, key});
}

void Server::enter(Out& out, const Session& s, const std::string& pne_id, PneState& p, PneAuth to,
                   pb::FailureReason reason) {
    const std::string why = to == PneAuth::kPending         ? "asked to authenticate"
                            : to == PneAuth::kAuthenticated ? "hash_PNE verified"
                                                            : std::string(reason_name(reason));
    out.push_back(TransitionEffect{"server", cfg_.server_id, s.pn_id, pne_id,
                                   std::string(to_string(p.auth)), std::string(to_string(to)),
                                   why});
    p.auth = to;
    if (to == PneAuth::kFailed || to == PneAuth::kRefused) {
        p.reason = reason;
        p.sk = SecretKey{};
        counters_.count(reason);
        log(LogLevel::kWarn,
            pne_id + (to == PneAuth::kRefused ? " refused in " : " not authenticated in ") +
                s.pn_id + ": " + std::string(reason_name(reason)));
    }
}

void Server::send(Out& out, const std::string& to, pb::Envelope env) {
    env.set_version(kProtocolVersion);
    env.set_sender_id(cfg_.server_id);
    ++counters_.messages_out;
    out.push_back(SendEffect{to, std::move(env), Protection::kTls});
}

void Server::send_error(Out& out, const std::string& to, const std::string& pn_id,
                        pb::FailureReason reason, const std::string& detail) {
    counters_.count(reason);
    log(LogLevel::kWarn, "refusing " + (pn_id.empty() ? std::string("request") : pn_id) + " from " +
                             to + ": " + std::string(reason_name(reason)) + " (" + detail + ")");
    send(out, to, error_report(pn_id, reason, detail));
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
    ctx.join_digest = p.join_digest;
    return ctx;
}

// Why a PN Registration Request must be refused before a session exists, if it must.
bool Server::ended_recently(const Key& key, Millis now) const {
    auto it = finished_.find(key);
    return it != finished_.end() && it->second > now;
}

std::optional<std::pair<pb::FailureReason, std::string>> Server::check_registration(
    const std::string& from, const pb::PnRegistrationRequest& m, Millis now) const {
    using R = std::pair<pb::FailureReason, std::string>;
    if (m.gw().gw_id() != from)
        return R{pb::GATEWAY_AUTHENTICATION_FAILED,
                 "PN GW ID differs from the authenticated link identity"};
    const auto gw = dir_.find(from);
    if (!gw || gw->kind != EntityKind::kGw) return R{pb::UNKNOWN_ENTITY, "unknown PN GW"};
    if (gw->status != EntityStatus::kActive) return R{pb::REVOKED, "PN GW is disabled or revoked"};
    if (m.rekey()) {
        // A LocalEUKey re-key: one member of the PN authenticates again, as in establishment;
        // the store decides at the end whether the PN is at that revision and the PNE a member
        // with a LocalEUKey (UNKNOWN_PN, STALE_REVISION, NOT_A_MEMBER, NO_LOCAL_EUKEY).
        if (m.add() || m.flow() != pb::FLOW_GW_INITIATED || m.pnes_size() != 1)
            return R{pb::MALFORMED_MESSAGE, "a re-key is PN GW initiated, for one PNE"};
        if (!m.pnes(0).join().local_eukey_requested())
            return R{pb::NO_LOCAL_EUKEY, "a re-key is of a LocalEUKey, and the PNE asks for none"};
        if (changes_.count({from, m.pn_id()}))
            return R{pb::BUSY, "a change of this PN is in progress"};
    } else if (m.add()) {
        // A PN update: the store decides at the end whether the PN exists at that revision
        // (UNKNOWN_PN, STALE_REVISION) and whether a PNE is already in it (ALREADY_A_MEMBER).
        if (m.flow() != pb::FLOW_GW_INITIATED)
            return R{pb::MALFORMED_MESSAGE, "a PN update is PN GW initiated"};
        if (changes_.count({from, m.pn_id()}))
            return R{pb::BUSY, "a change of this PN is in progress"};
    } else if (ended_recently({from, m.pn_id()}, now) || dir_.pn_registered(from, m.pn_id())) {
        return R{pb::DUPLICATE_PN, "PN ID already used by this PN GW"};
    }
    if (sessions_.size() >= kMaxServerSessions)
        return R{pb::LIMIT_EXCEEDED, "too many establishments"};
    if (m.pnes().empty()) return R{pb::MALFORMED_MESSAGE, "no PNE in the request"};
    int initiators = 0;
    std::set<std::string> seen;
    for (const auto& p : m.pnes()) {
        initiators += p.role() == pb::ROLE_INITIATOR;
        if (!seen.insert(p.join().pne_id()).second)
            return R{pb::MALFORMED_MESSAGE, "PNE listed twice"};
    }
    const bool flow_ok = (m.flow() == pb::FLOW_PNE_INITIATED && initiators == 1) ||
                         (m.flow() == pb::FLOW_GW_INITIATED && initiators == 0);
    if (!flow_ok) return R{pb::MALFORMED_MESSAGE, "flow and PNE roles do not match"};
    if (m.flow() == pb::FLOW_GW_INITIATED) return std::nullopt;
    // Setup fidelity: what the initiator asked for bounds who may be in the PN.
    const auto& invited = m.invited_pne_ids();
    for (const auto& p : m.pnes()) {
        if (p.role() == pb::ROLE_INITIATOR) continue;
        if (m.setup_type() == pb::SETUP_ONE_TO_ONE)
            return R{pb::SETUP_VIOLATION, "a 1-1 setup with another PNE"};
        if (m.setup_type() == pb::SETUP_INVITE_LIST && !cfg_.weaken.skip_invitation_list_check &&
            std::find(invited.begin(), invited.end(), p.join().pne_id()) == invited.end())
            return R{pb::SETUP_VIOLATION, p.join().pne_id() + " is not on the invitation list"};
    }
    if (m.setup_type() == pb::SETUP_UNSPECIFIED)
        return R{pb::MALFORMED_MESSAGE, "a PNE-initiated setup without a setup type"};
    return std::nullopt;
}

// Step 5 (6 of 5.2.1.2): every known, active PNE is asked to authenticate; a LocalEUKey is
// made for each that asked for one, with one copy for the PNE and one for the PN GW.
std::size_t Server::admit_pnes(Out& out, Session& s, const EntityRecord& gw,
                               pb::AuthenticationRequest& a, Millis now) {
    std::size_t asked = 0;
    std::optional<KeyedHmac> gw_mac;  // EUKey_GW keyed once for every PN GW copy of this PN
    // Each join moves from the request into its PNE's state (not copied: nothing reads the
    // request's joins afterwards).
    for (auto& p : *s.request.mutable_pnes()) {
        auto& st = s.pnes[p.join().pne_id()];
        st.join.Swap(p.mutable_join());
        const std::string& id = st.join.pne_id();
        st.join_digest = join_digest(st.join);
        st.role = to_role(p.role());
        auto rec = dir_.find(id);
        const auto refusal = (!rec || rec->kind != EntityKind::kPne)  ? pb::UNKNOWN_ENTITY
                             : (rec->status != EntityStatus::kActive) ? pb::REVOKED
                                                                      : pb::REASON_NONE;
        if (refusal != pb::REASON_NONE) {
            enter(out, s, id, st, PneAuth::kRefused, refusal);
            auto* x = a.add_excluded();
            x->set_pne_id(id);
            x->set_reason(refusal);
            continue;
        }
        enter(out, s, id, st, PneAuth::kPending, pb::REASON_NONE);
        ++asked;
        a.add_pne_ids(id);
        if (!st.join.local_eukey_requested()) continue;
        SecretKey local = cfg_.weaken.leak_sk_to_gw
                              ? derive_sk_pne(rec->eukey, bytes_of(st.join.rand_pne()),
                                              s.rand_server, context(s, id, st))
                              : random_.key();
        auto* k = a.add_local_eukeys();
        k->set_pne_id(id);
        const ByteView rand_pne = bytes_of(st.join.rand_pne());
        st.eukey_mac.emplace(rec->eukey);
        if (!gw_mac) gw_mac.emplace(gw.eukey);
        k->set_for_pne(to_field(wrap_local_eukey(*st.eukey_mac, Recipient::kPne, s.pn_id, id,
                                                 s.gw_id, s.rand_server, rand_pne, local)));
        k->set_for_gw(to_field(wrap_local_eukey(*gw_mac, Recipient::kGw, s.pn_id, id, s.gw_id,
                                                s.rand_server, rand_pne, local)));
        // Rotation grace: which EUKey a party holds shows only later (hash_PNE), so a party
        // with a previous EUKey in grace gets a second copy under it; it opens the one it can.
        // After the grace period the copy under the previous EUKey is an expiry notice: 32
        // zero octets instead of the LocalEUKey. Only a holder of that key opens it, and it
        // tells it why it cannot take part ('key expired'), where a PNE with a wrong key can
        // only say that nothing opens.
        if (rec->previous)
            k->set_for_pne_previous(to_field(wrap_local_eukey(
                rec->previous->eukey, Recipient::kPne, s.pn_id, id, s.gw_id, s.rand_server,
                rand_pne, rec->previous_in_grace(wall_ms(now)) ? local : SecretKey())));
        if (const SecretKey* prev = gw.previous_in_grace(wall_ms(now)))
            k->set_for_gw_previous(to_field(wrap_local_eukey(
                *prev, Recipient::kGw, s.pn_id, id, s.gw_id, s.rand_server, rand_pne, local)));
    }
    return asked;
}

// Step 4 arrives (5.2.1.1; step 5 of 5.2.1.2); step 5 (6) follows. Only when no session
// exists for (PN GW, PN ID).
void Server::handle_registration(Out& out, const std::string& from,
                                 const pb::PnRegistrationRequest& m, Millis now) {
    if (auto refused = check_registration(from, m, now))
        return send_error(out, from, m.pn_id(), refused->first, refused->second);
    const auto gw = dir_.find(from);
    auto [it, _] = sessions_.emplace(Key{from, m.pn_id()}, Session{});
    Session& s = it->second;
    s.gw_id = from;
    s.pn_id = m.pn_id();
    s.request = m;
    s.rand_server = random_.bytes(kRandSize);
    enter(out, s, Phase::kWaitAuthResponse, now + kAuthResponseTimeout,
          "PN Registration Request from " + from);

    pb::Envelope env;
    auto* a = env.mutable_auth_request();
    a->set_pn_id(s.pn_id);
    a->set_rand_server(to_field(s.rand_server));
    const std::size_t asked = admit_pnes(out, s, *gw, *a, now);
    log(LogLevel::kInfo, "PN Registration Request " + s.pn_id + " from " + from + ": " +
                             std::to_string(asked) + " of " + std::to_string(m.pnes_size()) +
                             " PNE(s) to authenticate");
    if (asked == 0) {
        finish(out, s, false, pb::NO_PNE_AUTHENTICATED, "no PNE is known and active", now);
        return;
    }
    if (const PneState* init = initiator(s); init && init->auth != PneAuth::kPending) {
        finish(out, s, false, pb::INITIATOR_NOT_AUTHENTICATED,
               "the initiating PNE is unknown or not active", now);
        return;
    }
    send(out, from, std::move(env));
}

// One PNE's hash_PNE (or the failure the PN GW reports for it).
std::int64_t Server::wall_ms(Millis now) const {
    return cfg_.wall_clock_ms ? static_cast<std::int64_t>(cfg_.wall_clock_ms()) : now;
}

void Server::verify_pne(Out& out, Session& s, const std::string& id, PneState& p,
                        const pb::PneAuthResult* result, Millis now) {
    if (!result) return enter(out, s, id, p, PneAuth::kFailed, pb::TIMEOUT);
    if (result->failure() != pb::REASON_NONE)
        return enter(out, s, id, p, PneAuth::kFailed, result->failure());
    auto rec = dir_.find(id);  // status may have changed while we waited
    if (!rec || rec->status != EntityStatus::kActive)
        return enter(out, s, id, p, PneAuth::kFailed, rec ? pb::REVOKED : pb::UNKNOWN_ENTITY);
    const PneContext ctx = context(s, id, p);
    const ByteView rand_pne = bytes_of(p.join.rand_pne());
    // The state keyed when its LocalEUKey was wrapped, unless the EUKey changed since.
    if (!p.eukey_mac || !p.eukey_mac->keyed_with(rec->eukey)) p.eukey_mac.emplace(rec->eukey);
    p.sk = derive_sk_pne(*p.eukey_mac, rand_pne, s.rand_server, ctx);
    p.hash_pne = derive_hash_pne(*p.eukey_mac, rand_pne, s.rand_server, p.sk, ctx);
    bool proved = ct_equal(p.hash_pne, bytes_of(result->hash_pne()));
    if (!proved && rec->previous) {
        // After a rotation: the previous EUKey authenticates within its grace period; after it,
        // a hash_PNE under it is only recognised, to name the failure.
        KeyedHmac previous(rec->previous->eukey);
        SecretKey sk = derive_sk_pne(previous, rand_pne, s.rand_server, ctx);
        const Hash hash = derive_hash_pne(previous, rand_pne, s.rand_server, sk, ctx);
        if (ct_equal(hash, bytes_of(result->hash_pne()))) {
            if (!rec->previous_in_grace(wall_ms(now))) {
                p.eukey_mac.reset();
                return enter(out, s, id, p, PneAuth::kFailed, pb::KEY_EXPIRED);
            }
            p.sk = std::move(sk);
            p.hash_pne = hash;
            p.previous_key = true;
            p.eukey_mac = std::move(previous);
            proved = true;
        }
    }
    if (!proved && !cfg_.weaken.skip_hash_pne_check) {
        p.eukey_mac.reset();
        return enter(out, s, id, p, PneAuth::kFailed, pb::AUTHENTICATION_FAILED);
    }
    // hash_server_PNE follows once the inventory it covers is known (prove_server).
    enter(out, s, id, p, PneAuth::kAuthenticated, pb::REASON_NONE);
}

// Steps 10-11 arrive (5.2.1.1; 11-12 of 5.2.1.2). Only in kWaitAuthResponse.
void Server::handle_auth_response(Out& out, const std::string& from,
                                  const pb::AuthenticationResponse& m, Millis now) {
    Session& s = sessions_.at({from, m.pn_id()});
    std::map<std::string, const pb::PneAuthResult*> results;
    for (const auto& r : m.results()) results[r.pne_id()] = &r;
    std::size_t ok = 0;
    for (auto& [id, p] : s.pnes) {
        if (p.auth != PneAuth::kPending) continue;
        auto r = results.find(id);
        verify_pne(out, s, id, p, r == results.end() ? nullptr : r->second, now);
        ok += p.auth == PneAuth::kAuthenticated;
    }
    if (ok == 0) {
        finish(out, s, false, pb::NO_PNE_AUTHENTICATED, "no PNE authenticated", now);
        return;
    }
    // A PN that nobody genuinely asked for is never registered, whoever else authenticated.
    if (const PneState* init = initiator(s); init && init->auth != PneAuth::kAuthenticated) {
        finish(out, s, false, pb::INITIATOR_NOT_AUTHENTICATED,
               "the initiating PNE did not authenticate", now);
        return;
    }
    request_persist(out, s, now);
}

const Server::PneState* Server::initiator(const Session& s) const {
    for (const auto& [id, p] : s.pnes)
        if (p.role == PneRole::kInitiator) return &p;
    return nullptr;
}

// Step 12's proof for each member, over the inventory being registered: the PNE checks the
// member list it is handed with it.
void Server::prove_server(Session& s) {
    const Hash digest = inventory_digest(s.inventory);
    for (auto& [id, p] : s.pnes) {
        if (p.auth != PneAuth::kAuthenticated) continue;
        const auto rec = dir_.find(id);  // found a moment ago, in the same call
        if (!rec || (p.previous_key && !rec->previous))
            throw std::logic_error("entity vanished during one call");
        // The EUKey the PNE proved itself with (its previous one, within the grace period).
        const SecretKey& eukey = p.previous_key ? rec->previous->eukey : rec->eukey;
        PneContext ctx = context(s, id, p);
        ctx.inventory_digest = digest;
        if (!p.eukey_mac || !p.eukey_mac->keyed_with(eukey)) p.eukey_mac.emplace(eukey);
        p.hash_server = derive_hash_server_pne(*p.eukey_mac, bytes_of(p.join.rand_pne()),
                                               s.rand_server, p.sk, p.hash_pne, ctx);
        p.eukey_mac.reset();  // its last use in this session: the keyed state is wiped now
    }
}

// Step 11: register the PN with its authenticated PNEs; answer once it is durable.
void Server::request_persist(Out& out, Session& s, Millis now) {
    s.inventory.set_pn_id(s.pn_id);
    s.inventory.set_gw_id(s.gw_id);
    *s.inventory.mutable_gw_capabilities() = s.request.gw().capabilities();
    const std::uint64_t stamp =
        cfg_.wall_clock_ms ? cfg_.wall_clock_ms() : static_cast<std::uint64_t>(now);
    s.inventory.set_registered_at_ms(stamp);
    for (const auto& [id, p] : s.pnes) {
        if (p.auth != PneAuth::kAuthenticated) continue;
        auto* mem = s.inventory.add_members();
        mem->set_pne_id(id);
        *mem->mutable_capabilities() = p.join.capabilities();
        *mem->mutable_contents() = p.join.contents();
        mem->set_joined_at_ms(stamp);
        mem->set_local_eukey_assigned(p.join.local_eukey_requested());
    }
    if (s.request.rekey()) {
        // The store records the re-key at the named revision (membership unchanged); the proof
        // is over the PN at its new revision, so it follows the store's answer (finish_add).
        enter(out, s, Phase::kWaitPersist, now + kPersistTimeout,
              "the PNE authenticated; recording its re-key");
        out.push_back(ChangePnEffect{s.gw_id,
                                     s.pn_id,
                                     pb::CHANGE_REKEY,
                                     s.inventory.members(0).pne_id(),
                                     s.request.revision(),
                                     {}});
        return;
    }
    if (s.request.add()) {
        // The store adds them to the PN as it is at the named revision; the proofs are over
        // the PN with every member, so they follow the store's answer (finish_add).
        enter(out, s, Phase::kWaitPersist, now + kPersistTimeout,
              std::to_string(s.inventory.members_size()) +
                  " PNE(s) authenticated; adding them to the PN");
        ChangePnEffect c{s.gw_id, s.pn_id, pb::CHANGE_ADD, "", s.request.revision(), {}};
        c.added.assign(s.inventory.members().begin(), s.inventory.members().end());
        out.push_back(std::move(c));
        return;
    }
    prove_server(s);
    enter(out, s, Phase::kWaitPersist, now + kPersistTimeout,
          std::to_string(s.inventory.members_size()) + " PNE(s) authenticated; storing the PN");
    out.push_back(PersistPnEffect{s.gw_id, s.inventory});
}

void Server::finish_add(Out& out, Session& s, const ChangeResult& result, Millis now) {
    if (result.reason != pb::REASON_NONE) {
        // STALE_REVISION: the PN GW learns the PN as it is, for its next attempt.
        if (result.reason == pb::STALE_REVISION) s.inventory = result.inventory;
        return finish(out, s, false, result.reason,
                      result.reason == pb::STALE_REVISION
                          ? "the PN changed since revision " + std::to_string(s.request.revision())
                      : s.request.rekey() ? "the PNE could not be re-keyed"
                                          : "the PNEs could not be added",
                      now);
    }
    s.inventory = result.inventory;
    prove_server(s);
    const bool rekey = s.request.rekey();
    const std::string rekeyed = rekey && !s.pnes.empty() ? s.pnes.begin()->first : "";
    for (auto& n : change_notices(result, rekey ? pb::CHANGE_REKEY : pb::CHANGE_ADD, rekeyed, "")) {
        const auto pne = dir_.find(n.pne_id());
        if (!pne || pne->kind != EntityKind::kPne) continue;  // deleted since: nobody to tell
        const Hash proof = notice_proof(pne->eukey, n);
        n.set_proof(to_field(ByteView{proof}));
        s.notices.push_back(std::move(n));
    }
    finish(out, s, true, pb::REASON_NONE,
           (rekey ? "re-keyed at revision " : "added at revision ") +
               std::to_string(result.inventory.revision()),
           now);
}

ServerEffects Server::on_persisted(const std::string& gw_id, const std::string& pn_id,
                                   pb::FailureReason result, Millis now) {
    Out out;
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
void Server::finish(Out& out, Session& s, bool registered, pb::FailureReason reason,
                    const std::string& detail, Millis now) {
    pb::Envelope env;
    auto* r = env.mutable_registration_response();
    r->set_pn_id(s.pn_id);
    r->set_registered(registered);
    if (!registered) r->set_reason(reason);
    OutcomeEffect outcome{s.pn_id, s.gw_id, registered, reason, detail, {}, {}, {}};
    for (auto& [id, p] : s.pnes) {
        auto* res = r->add_results();
        res->set_pne_id(id);
        const bool joined = registered && p.auth == PneAuth::kAuthenticated;
        res->set_authenticated(joined);
        if (joined) {
            res->set_hash_server_pne(to_field(p.hash_server));
            out.push_back(SessionKeyEffect{s.pn_id, id, p.sk});
        } else {
            res->set_reason(p.reason != pb::REASON_NONE ? p.reason : reason);
        }
        outcome.pnes.push_back(PneOutcome{id, joined, joined ? pb::REASON_NONE : res->reason()});
    }
    if (s.request.add()) outcome.operation = "add";
    if (s.request.rekey()) outcome.operation = "rekey";
    if (registered) {
        ++counters_.established;
        log(LogLevel::kInfo, "PN " + s.pn_id + " of " + s.gw_id +
                                 (s.request.rekey() ? " re-keyed: "
                                  : s.request.add() ? " updated: "
                                                    : " registered with ") +
                                 std::to_string(s.inventory.members_size()) + " PNE(s)");
        *r->mutable_inventory() = s.inventory;
        for (auto& n : s.notices) *r->add_notices() = std::move(n);
        outcome.inventory = std::move(s.inventory);  // the session ends below
    } else {
        // A PN update refused as stale: the PN as it is, for the PN GW's next attempt.
        if ((s.request.add() || s.request.rekey()) && reason == pb::STALE_REVISION)
            *r->mutable_inventory() = s.inventory;
        counters_.count(reason);
        log(LogLevel::kWarn, "PN " + s.pn_id + " of " + s.gw_id + " not registered: " +
                                 std::string(reason_name(reason)) + " (" + detail + ")");
    }
    send(out, s.gw_id, std::move(env));
    enter(out, s, Phase::kDone, kNever,
          registered ? "registered" : std::string(reason_name(reason)));
    out.push_back(std::move(outcome));
    const Key key{s.gw_id, s.pn_id};
    remember(key, now);
    sessions_.erase(key);  // wipes SKs held by the session
}

bool Server::accepts(Phase phase, pb::Envelope::BodyCase body) {
    using B = pb::Envelope::BodyCase;
    switch (body) {
        case B::kRegistrationRequest:
            return phase == Phase::kNone;
        case B::kAuthResponse:
            return phase == Phase::kWaitAuthResponse;
        case B::kChangeRequest:  // of a registered PN, not of one being established
            return phase == Phase::kNone;
        case B::kSyncRequest:  // about the PN GW's registered PNs (one by one, not sessions)
        case B::kError:
        case B::kChangeNotifyAck:  // a PN GW's report on a re-key the server ordered
            return true;
        default:
            return false;
    }
}

// The one refusal of the server: a repeated registration or a late Authentication Response
// is dropped; an Authentication Response with no session is answered REPLAYED (the
// establishment ended) or UNEXPECTED_MESSAGE; a message not for the server likewise.
void Server::refuse(Out& out, const std::string& from, const pb::Envelope& env, Phase phase,
                    Millis now) {
    using B = pb::Envelope::BodyCase;
    if (env.body_case() == B::kRegistrationRequest ||
        (env.body_case() == B::kAuthResponse && phase != Phase::kNone)) {
        ++counters_.ignored;  // duplicate, or late
        return;
    }
    if (env.body_case() == B::kChangeRequest)
        return refuse_change(out, from, env.change_request(), pb::BUSY,
                             "the PN is being established");
    if (env.body_case() == B::kAuthResponse) {
        const auto& pn = env.auth_response().pn_id();
        if (ended_recently({from, pn}, now))
            return send_error(out, from, pn, pb::REPLAYED,
                              "Authentication Response for an establishment that has ended");
        return send_error(out, from, pn, pb::UNEXPECTED_MESSAGE,
                          "Authentication Response for an unknown PN");
    }
    send_error(out, from, "", pb::UNEXPECTED_MESSAGE,
               std::string(message_name(env)) + " is not for the CPNS Server");
}

ServerEffects Server::on_message(const std::string& from, const pb::Envelope& env, Millis now) {
    Out out;
    ++counters_.messages_in;
    using B = pb::Envelope::BodyCase;
    std::string pn_id;
    if (env.body_case() == B::kRegistrationRequest) pn_id = env.registration_request().pn_id();
    if (env.body_case() == B::kAuthResponse) pn_id = env.auth_response().pn_id();
    if (env.body_case() == B::kChangeRequest) pn_id = env.change_request().pn_id();
    auto it = sessions_.find({from, pn_id});
    const Phase phase = it == sessions_.end() ? Phase::kNone : it->second.phase;
    if (!accepts(phase, env.body_case())) {
        refuse(out, from, env, phase, now);
        return out;
    }
    switch (env.body_case()) {
        case B::kRegistrationRequest:
            handle_registration(out, from, env.registration_request(), now);
            break;
        case B::kAuthResponse:
            handle_auth_response(out, from, env.auth_response(), now);
            break;
        case B::kChangeRequest:
            handle_change_request(out, from, env.change_request(), now);
            break;
        case B::kSyncRequest:
            handle_sync_request(out, from, env.sync_request(), now);
            break;
        case B::kChangeNotifyAck:
            handle_gw_report(out, from, env);
            break;
        default:  // kError
            if (orders_.count({from, env.error().pn_id()})) {
                handle_gw_report(out, from, env);
                break;
            }
            counters_.count(env.error().reason());
            log(LogLevel::kWarn, from + " reports " +
                                     std::string(reason_name(env.error().reason())) + ": " +
                                     env.error().detail());
            break;
    }
    return out;
}

ServerEffects Server::on_timer(Millis now) {
    Out out;
    expire_changes(out, now);
    while (!timers_.empty() && timers_.begin()->first <= now) {
        const Key key = timers_.begin()->second;
        timers_.erase(timers_.begin());
        auto it = sessions_.find(key);
        if (it == sessions_.end()) continue;
        Session& s = it->second;
        s.deadline = kNever;
        if (s.phase == Phase::kWaitAuthResponse) {
            for (auto& [id, p] : s.pnes)
                if (p.auth == PneAuth::kPending)
                    enter(out, s, id, p, PneAuth::kFailed, pb::TIMEOUT);
            finish(out, s, false, pb::TIMEOUT, "no Authentication Response from the PN GW", now);
        } else {
            finish(out, s, false, pb::INTERNAL_ERROR, "the store did not confirm the registration",
                   now);
        }
    }
    return out;
}

Millis Server::next_deadline() const {
    const Millis a = timers_.empty() ? kNever : timers_.begin()->first;
    const Millis b = change_timers_.empty() ? kNever : change_timers_.begin()->first;
    return std::min(a, b);
}

}  // namespace cpns
