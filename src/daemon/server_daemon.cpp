#include "daemon/server_daemon.hpp"

namespace cpns::daemon {

// SK_PNE values kept for use after establishment (bounded; when full, the entry with the
// smallest (PN ID, PNE ID) is dropped).
inline constexpr std::size_t kMaxSessionKeys = 100'000;

void load_entities(const std::string& path, MemoryDirectory& dir) {
    const Config c = Config::load(path);
    const auto* arr = c.table()["entity"].as_array();
    if (!arr) throw ConfigError(path + ": no [[entity]] entries");
    std::size_t n = 0;
    for (const auto& node : *arr) {
        const auto* t = node.as_table();
        if (!t) throw ConfigError(path + ": [[entity]] must be a table");
        const std::string id = (*t)["id"].value_or(std::string());
        const std::string kind = (*t)["kind"].value_or(std::string());
        const std::string status =
            (*t)["status"].value_or(std::string(to_string(EntityStatus::kActive)));
        if (!valid_id(id)) throw ConfigError(path + ": invalid entity id '" + id + "'");
        const auto parsed_kind = parse_entity_kind(kind);
        if (!parsed_kind) throw ConfigError(path + ": entity " + id + ": kind must be pne or gw");
        EntityRecord rec;
        rec.kind = *parsed_kind;
        rec.eukey =
            parse_key((*t)["eukey"].value_or(std::string()), path + ": entity " + id + " eukey");
        const auto parsed_status = parse_entity_status(status);
        if (!parsed_status)
            throw ConfigError(path + ": entity " + id +
                              ": status must be active, disabled or revoked");
        rec.status = *parsed_status;
        if (dir.find(id)) throw ConfigError(path + ": entity " + id + " is listed twice");
        dir.add(id, std::move(rec));
        ++n;
    }
    spdlog::info("loaded {} entities from {}", n, path);
}

std::vector<store::StoredEntity> read_entities(const std::string& path) {
    MemoryDirectory dir;
    load_entities(path, dir);
    const Config c = Config::load(path);
    std::vector<store::StoredEntity> out;
    for (const auto& node : *c.table()["entity"].as_array()) {
        const std::string id = (*node.as_table())["id"].value_or(std::string());
        const auto rec = dir.find(id);
        store::StoredEntity e;
        e.id = id;
        e.kind = rec->kind;
        e.eukey = rec->eukey;
        e.status = rec->status;
        out.push_back(std::move(e));
    }
    return out;
}

std::optional<EntityRecord> CachedDirectory::find(const std::string& id) const {
    auto it = entries_.find(id);
    if (it == entries_.end()) return std::nullopt;
    return it->second;
}

void CachedDirectory::put(const std::string& id, std::optional<EntityRecord> rec) {
    entries_[id] = std::move(rec);
}

std::string redact_url(const std::string& url) {
    // postgresql://user:secret@host/db -> postgresql://user:***@host/db; password=... too.
    std::string out = url;
    const auto scheme = out.find("://");
    const auto at = out.find('@');
    if (scheme != std::string::npos && at != std::string::npos && at > scheme) {
        const auto colon = out.find(':', scheme + 3);
        if (colon != std::string::npos && colon < at) out.replace(colon + 1, at - colon - 1, "***");
    }
    const auto pw = out.find("password=");
    if (pw != std::string::npos) {
        const auto end = out.find_first_of(" &", pw);
        out.replace(pw + 9, (end == std::string::npos ? out.size() : end) - pw - 9, "***");
    }
    return out;
}

namespace {
std::optional<EntityRecord> to_record(const std::optional<store::StoredEntity>& e) {
    if (!e) return std::nullopt;
    return EntityRecord{e->kind, e->eukey, e->status};
}
}  // namespace

ServerDaemon::ServerDaemon(asio::io_context& io, ServerOptions options)
    : io_(io),
      opt_(std::move(options)),
      listener_(io.get_executor(), kMaxGwConnections, listener_hooks()),
      timer_(io.get_executor(), [this](Millis now) { apply(server_->on_timer(now)); }),
      refresh_(io) {
    try {
        store_ = store::open_store(opt_.store, store::load_master_key(opt_.master_key_file));
        if (!opt_.entities_file.empty()) {
            // Only entities the store does not know yet: a restart must not undo a revocation
            // or a key change made with cpnsctl.
            std::size_t added = 0, kept = 0;
            for (const auto& e : read_entities(opt_.entities_file)) {
                if (store_->get_entity(e.id)) {
                    ++kept;
                    continue;
                }
                store_->put_entity(e);
                ++added;
            }
            spdlog::info("entities file {}: {} added, {} already in the store (kept as stored)",
                         opt_.entities_file, added, kept);
        }
        for (const auto& e : store_->list_entities(EntityKind::kGw))
            dir_.put(e.id, EntityRecord{e.kind, e.eukey, e.status});
    } catch (const store::StoreError& e) {
        throw ConfigError(std::string("store: ") + e.what());
    }
    spdlog::info("store: {} ({}), {} PN GW(s) provisioned", redact_url(opt_.store),
                 store_->backend(), dir_.size());
    opt_.role.log = core_log_sink();
    opt_.role.wall_clock_ms = [] {
        return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                              std::chrono::system_clock::now().time_since_epoch())
                                              .count());
    };
    server_ = std::make_unique<Server>(opt_.role, dir_, random_);
    trace_ =
        std::make_unique<RoleTrace>(opt_.role.server_id, "server", opt_.trace_file, opt_.crash_at);
    tls::TlsConfig tc;
    tc.role = tls::Role::kServer;
    tc.mode = tls::Mode::kTls13;
    tc.keylog_path = keylog_path(opt_.keylog);
    // PN GW Authentication: the PSK of identity <gw_id> is derived from that PN GW's EUKey.
    tc.psk_lookup = [this](std::string_view identity) -> std::optional<SecretKey> {
        const std::string id(identity);
        if (throttle_.blocked(id, mono_now())) {
            links_.count(pb::LIMIT_EXCEEDED);
            spdlog::warn("PN GW link as {} refused: backing off after repeated PSK failures", id);
            return std::nullopt;
        }
        auto rec = dir_.find(id);
        if (!rec && valid_id(id) && lookups_.size() < kMaxPendingLookups &&
            lookups_.insert(id).second) {
            // Not cached (provisioned after the last refresh): fetch it for the PN GW's retry.
            auto found = std::make_shared<std::optional<store::StoredEntity>>();
            store_job([id, found](store::Store& st) { *found = st.get_entity(id); },
                      [this, id, found] {
                          lookups_.erase(id);
                          if (*found) dir_.put(id, to_record(*found));
                      });
        }
        if (!rec || rec->kind != EntityKind::kGw || rec->status != EntityStatus::kActive)
            return std::nullopt;
        return derive_gw_server_psk(rec->eukey, identity);
    };
    tls_.emplace(tc);
    if (!tc.keylog_path.empty())
        spdlog::warn("TLS key log enabled: {} (debugging only)", tc.keylog_path);
}

void ServerDaemon::store_job(std::function<void(store::Store&)> job, std::function<void()> done) {
    ++store_queue_;
    asio::post(store_thread_, [this, job = std::move(job), done = std::move(done)]() mutable {
        try {
            job(*store_);
        } catch (const std::exception& e) {
            spdlog::error("store: {}", e.what());
        }
        asio::post(io_, [this, done = std::move(done)] {
            --store_queue_;
            if (done) done();
        });
    });
}

void ServerDaemon::flush_audit() {
    if (audit_writing_ || audit_pending_.empty()) return;
    audit_writing_ = true;
    auto batch = std::make_shared<std::vector<store::AuditRecord>>(std::move(audit_pending_));
    audit_pending_.clear();
    store_job([batch](store::Store& st) { st.audit_many(*batch); },
              [this] {
                  audit_writing_ = false;
                  flush_audit();
              });
}

void ServerDaemon::refresh_gateways() {
    auto gws = std::make_shared<std::vector<store::StoredEntity>>();
    store_job([gws](store::Store& st) { *gws = st.list_entities(EntityKind::kGw); },
              [this, gws] {
                  for (const auto& e : *gws) {
                      dir_.put(e.id, EntityRecord{e.kind, e.eukey, e.status});
                      // A PN GW disabled or revoked since it connected loses its link now.
                      auto link = gws_.find(e.id);
                      if (e.status != EntityStatus::kActive && link != gws_.end()) {
                          spdlog::warn("PN GW {} is {} in the store: closing its link", e.id,
                                       to_string(e.status));
                          link->second->close();
                      }
                  }
                  refresh_.expires_after(std::chrono::milliseconds(kGwDirectoryRefresh));
                  refresh_.async_wait([this](const std::error_code& ec) {
                      if (!ec) refresh_gateways();
                  });
              });
}

// Answers a registration the store cannot take with an ErrorReport.
void ServerDaemon::refuse_registration(const std::string& gw, const pb::Envelope& request,
                                       pb::FailureReason reason, const std::string& detail) {
    pb::Envelope err;
    err.set_sender_id(opt_.role.server_id);
    err.mutable_error()->set_pn_id(request.registration_request().pn_id());
    err.mutable_error()->set_reason(reason);
    err.mutable_error()->set_detail(detail);
    if (auto it = gws_.find(gw); it != gws_.end()) it->second->send(err);
}

// A registration first brings the records of the PN GW and of every PNE it names into the
// cache (on the store thread), then goes to the core.
void ServerDaemon::deliver(const std::string& gw, std::shared_ptr<pb::Envelope> env) {
    if (!env->has_registration_request()) {
        to_role(gw, *env);
        return;
    }
    if (store_queue_ >= kMaxStoreQueue) {
        refuse_registration(gw, *env, pb::BUSY, "the server's store is saturated; retry later");
        spdlog::warn("refusing a registration from {}: store queue full", gw);
        return;
    }
    std::vector<std::string> ids{gw};
    for (const auto& p : env->registration_request().pnes()) ids.push_back(p.join().pne_id());
    auto found = std::make_shared<std::vector<std::optional<store::StoredEntity>>>();
    auto failed = std::make_shared<bool>(false);
    store_job(
        [ids, found, failed](store::Store& st) {
            try {
                for (const auto& id : ids) found->push_back(st.get_entity(id));
            } catch (const std::exception& e) {
                *failed = true;
                spdlog::error("store: reading entities failed: {}", e.what());
            }
        },
        [this, gw, env, ids, found, failed] {
            if (*failed) {
                refuse_registration(gw, *env, pb::INTERNAL_ERROR,
                                    "the server's store is unavailable");
                return;
            }
            for (std::size_t i = 0; i < ids.size(); ++i) dir_.put(ids[i], to_record((*found)[i]));
            to_role(gw, *env);
        });
}

void ServerDaemon::start() {
    port_ = listen_on(listener_, opt_.listen, "listen address");
    const std::string addr = opt_.listen.host + ":" + std::to_string(port_);
    spdlog::info("CPNS Server {} listening for PN GWs on {} (TLS 1.3 external PSK)",
                 opt_.role.server_id, addr);
    write_ready_file(opt_.ready_file, addr);
    asio::co_spawn(io_, listener_.run(), asio::detached);
    refresh_.expires_after(std::chrono::milliseconds(kGwDirectoryRefresh));
    refresh_.async_wait([this](const std::error_code& error) {
        if (!error) refresh_gateways();
    });
}

void ServerDaemon::stop() {
    listener_.close();
    timer_.cancel();
    refresh_.cancel();
    for (auto& [id, c] : gws_) c->close();
    gws_.clear();
    // The job running now finishes (a registration commits or not, atomically); jobs still
    // queued are dropped: their PN GWs get no answer and time out, which is what they would
    // see from a crashed server as well.
    store_thread_.stop();
    store_thread_.join();
    if (store_queue_ > 0) spdlog::warn("{} store job(s) dropped at shutdown", store_queue_);
    spdlog::info(
        "stopped: {} PN(s) registered by this process, {} establishment(s) in flight "
        "dropped, {} PN GW link(s) refused",
        registered_, server_->active_sessions(),
        links_[pb::GATEWAY_AUTHENTICATION_FAILED] + links_[pb::UNKNOWN_ENTITY]);
}

net::Listener::Hooks ServerDaemon::listener_hooks() {
    net::Listener::Hooks hooks;
    hooks.on_socket = [this](net::tcp::socket socket) {
        asio::co_spawn(io_, serve(std::make_shared<net::Connection>(std::move(socket))),
                       asio::detached);
    };
    hooks.on_refused = [this](std::size_t open) {
        links_.count(pb::LIMIT_EXCEEDED);
        spdlog::warn("refusing connection: {} PN GW links open (limit)", open);
    };
    hooks.on_error = [](const std::error_code& ec) {
        spdlog::warn("accept failed: {}", ec.message());
    };
    return hooks;
}

void ServerDaemon::refused(const net::Connection& conn, const net::LinkError& error) {
    const std::string identity = conn.tls_identity();
    std::string why = error.detail;
    if (error.tls == tls::TlsError::kUnknownIdentity)
        why = "unknown, disabled or revoked PN GW identity";
    else if (error.tls == tls::TlsError::kBadPsk)
        why = "wrong PSK (the PN GW's EUKey differs)";
    links_.count(error.reason);
    if (error.tls == tls::TlsError::kBadPsk && !identity.empty() &&
        throttle_.failed(identity, mono_now()))
        spdlog::warn("{} failed PSK attempts as {}: refused for {} s", kMaxFailedPskAttempts,
                     identity, kPskBackoff / 1000);
    spdlog::warn("refused PN GW link from {}{}: {} - {} (refused so far: {})", conn.remote(),
                 identity.empty() ? "" : " as " + identity, reason_name(error.reason), why,
                 links_[pb::GATEWAY_AUTHENTICATION_FAILED] + links_[pb::UNKNOWN_ENTITY]);
}

asio::awaitable<void> ServerDaemon::serve(std::shared_ptr<net::Connection> conn) {
    const auto held = listener_.hold();
    if (auto error = co_await conn->server_handshake(*tls_, kGwHandshakeTimeout,
                                                     net::PskLink::kServerOfGateway)) {
        refused(*conn, *error);
        co_return;
    }
    const std::string gw = conn->tls_identity();
    conn->peer_id = gw;
    throttle_.succeeded(gw);
    if (auto old = gws_.find(gw); old != gws_.end()) {
        spdlog::info("PN GW {} reconnected; closing its previous link", gw);
        old->second->close();
    }
    gws_[gw] = conn;
    spdlog::info("PN GW {} authenticated from {} ({})", gw, conn->remote(), conn->tls_summary());
    for (;;) {
        auto r = co_await conn->read();
        if (auto* env = std::get_if<pb::Envelope>(&r)) {
            spdlog::debug("{} -> server: {}", gw, message_name(*env));
            deliver(gw, std::make_shared<pb::Envelope>(std::move(*env)));
            continue;
        }
        if (auto* de = std::get_if<DecodeError>(&r)) {
            links_.count(to_reason(*de));
            spdlog::warn("closing link of {}: {}", gw, to_string(*de));
        } else {
            spdlog::info("PN GW {} disconnected ({})", gw, std::get<net::LinkError>(r).detail);
        }
        break;
    }
    conn->close();
    if (auto it = gws_.find(gw); it != gws_.end() && it->second == conn) gws_.erase(it);
}

void ServerDaemon::to_role(const std::string& gw, const pb::Envelope& env) {
    trace_->message("recv", env, gw, Protection::kTls);
    apply(server_->on_message(gw, env, mono_now()));
    trace_->handled(env);
}

void ServerDaemon::send_effect(const SendEffect& s) {
    trace_->message("send", s.msg, s.to, Protection::kTls);
    auto it = gws_.find(s.to);
    if (it == gws_.end() || !it->second->send(s.msg))
        spdlog::warn("cannot send {} to {}: no link", message_name(s.msg), s.to);
    else {
        spdlog::debug("server -> {}: {}", s.to, message_name(s.msg));
        trace_->sent(s.msg, it->second, io_.get_executor());
    }
}

// The Registration Response leaves only once the store has committed the PN.
void ServerDaemon::persist_effect(PersistPnEffect& p) {
    auto inv = std::make_shared<pb::PnInventory>(std::move(p.inventory));
    auto result = std::make_shared<pb::FailureReason>(pb::INTERNAL_ERROR);
    const std::string gw = p.gw_id;
    store_job(
        [inv, result](store::Store& st) {
            switch (st.register_pn(*inv)) {
                case store::PutResult::kOk:
                    *result = pb::REASON_NONE;
                    break;
                case store::PutResult::kDuplicate:
                    *result = pb::DUPLICATE_PN;
                    break;
                case store::PutResult::kLimit:
                    *result = pb::LIMIT_EXCEEDED;
                    break;
                case store::PutResult::kError:
                    *result = pb::INTERNAL_ERROR;
                    break;
            }
        },
        [this, gw, inv, result] {
            if (*result == pb::REASON_NONE) ++registered_;
            apply(server_->on_persisted(gw, inv->pn_id(), *result, mono_now()));
        });
}

// The audit log: one record per PNE, plus one for the PN itself.
void ServerDaemon::outcome_effect(const OutcomeEffect& o) {
    trace_->outcome(o);
    spdlog::info("establishment {}: {}", o.pn_id, outcome_json(opt_.role.server_id, o));
    const auto now_ms =
        static_cast<std::int64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                      std::chrono::system_clock::now().time_since_epoch())
                                      .count());
    audit_pending_.push_back({now_ms, opt_.role.server_id, o.gw_id, o.pn_id, "", o.success,
                              std::string(reason_name(o.reason)), o.detail});
    for (const auto& pne : o.pnes)
        audit_pending_.push_back({now_ms, opt_.role.server_id, o.gw_id, o.pn_id, pne.pne_id,
                                  pne.joined, std::string(reason_name(pne.reason)), ""});
    flush_audit();
}

void ServerDaemon::apply(ServerEffects effects) {
    for (auto& e : effects)
        std::visit(Overloaded{
                       [&](const SendEffect& s) { send_effect(s); },
                       [&](PersistPnEffect& p) { persist_effect(p); },
                       [&](const SessionKeyEffect& k) {
                           if (session_keys_.size() >= kMaxSessionKeys)
                               session_keys_.erase(session_keys_.begin());
                           session_keys_[{k.pn_id, k.pne_id}] = k.sk;
                       },
                       [&](const OutcomeEffect& o) { outcome_effect(o); },
                       [&](const TransitionEffect& t) { trace_->transition(t); },
                   },
                   e);
    timer_.arm(server_->next_deadline());
}

}  // namespace cpns::daemon
