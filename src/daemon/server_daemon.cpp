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
        const std::string status = (*t)["status"].value_or(std::string("active"));
        if (!valid_id(id)) throw ConfigError(path + ": invalid entity id '" + id + "'");
        EntityRecord rec;
        if (kind == "pne")
            rec.kind = EntityKind::kPne;
        else if (kind == "gw")
            rec.kind = EntityKind::kGw;
        else
            throw ConfigError(path + ": entity " + id + ": kind must be pne or gw");
        rec.eukey = parse_key((*t)["eukey"].value_or(std::string()), path + ": entity " + id + " eukey");
        if (status == "active")
            rec.status = EntityStatus::kActive;
        else if (status == "disabled")
            rec.status = EntityStatus::kDisabled;
        else if (status == "revoked")
            rec.status = EntityStatus::kRevoked;
        else
            throw ConfigError(path + ": entity " + id + ": status must be active, disabled or revoked");
        if (dir.find(id)) throw ConfigError(path + ": entity " + id + " is listed twice");
        dir.add(id, std::move(rec));
        ++n;
    }
    spdlog::info("loaded {} entities from {}", n, path);
}

ServerDaemon::ServerDaemon(asio::io_context& io, ServerOptions options)
    : io_(io),
      opt_(std::move(options)),
      acceptor_(io),
      timer_(io.get_executor(), [this](Millis now) { apply(server_->on_timer(now)); }) {
    if (opt_.entities_file.empty()) throw ConfigError("no entities file (provisioning) configured");
    load_entities(opt_.entities_file, dir_);
    ServerConfig sc;
    sc.server_id = opt_.id;
    sc.log = core_log_sink();
    sc.wall_clock_ms = [] {
        return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                              std::chrono::system_clock::now().time_since_epoch())
                                              .count());
    };
    server_ = std::make_unique<Server>(sc, dir_, random_);
    tls::TlsConfig tc;
    tc.role = tls::Role::kServer;
    tc.mode = tls::Mode::kTls13;
    tc.keylog_path = keylog_path(opt_.keylog);
    // PN GW Authentication: the PSK of identity <gw_id> is derived from that PN GW's EUKey.
    tc.psk_lookup = [this](std::string_view identity) -> std::optional<SecretKey> {
        auto rec = dir_.find(std::string(identity));
        if (!rec || rec->kind != EntityKind::kGw || rec->status != EntityStatus::kActive)
            return std::nullopt;
        return derive_gw_server_psk(rec->eukey, identity);
    };
    tls_.emplace(tc);
    if (!tc.keylog_path.empty()) spdlog::warn("TLS key log enabled: {} (debugging only)", tc.keylog_path);
}

void ServerDaemon::start() {
    std::error_code ec;
    net::tcp::endpoint ep(asio::ip::make_address(opt_.listen.host, ec), opt_.listen.port);
    if (ec) throw ConfigError("listen address '" + opt_.listen.host + "' is not an IP address");
    acceptor_.open(ep.protocol());
    acceptor_.set_option(net::tcp::acceptor::reuse_address(true));
    acceptor_.bind(ep, ec);
    if (ec) throw ConfigError("cannot listen on " + opt_.listen.str() + ": " + ec.message());
    acceptor_.listen();
    port_ = acceptor_.local_endpoint().port();
    const std::string addr = opt_.listen.host + ":" + std::to_string(port_);
    spdlog::info("CPNS Server {} listening for PN GWs on {} (TLS 1.3 external PSK)", opt_.id, addr);
    write_ready_file(opt_.ready_file, addr);
    asio::co_spawn(io_, accept_loop(), asio::detached);
}

void ServerDaemon::stop() {
    std::error_code ec;
    acceptor_.close(ec);
    timer_.cancel();
    for (auto& [id, c] : gws_) c->close();
    gws_.clear();
    spdlog::info("stopped: {} PN(s) registered, {} establishment(s) in flight dropped, {} PN GW "
                 "link(s) refused",
                 dir_.pns().size(), server_->active_sessions(),
                 links_[pb::GATEWAY_AUTHENTICATION_FAILED] + links_[pb::UNKNOWN_ENTITY]);
}

asio::awaitable<void> ServerDaemon::accept_loop() {
    for (;;) {
        std::error_code ec;
        auto socket = co_await acceptor_.async_accept(asio::redirect_error(asio::use_awaitable, ec));
        if (ec) {
            if (!acceptor_.is_open()) co_return;
            spdlog::warn("accept failed: {}", ec.message());
            continue;
        }
        if (connections_ >= kMaxGwConnections) {
            links_.count(pb::LIMIT_EXCEEDED);
            spdlog::warn("refusing connection: {} PN GW links open (limit)", connections_);
            continue;
        }
        asio::co_spawn(io_, serve(std::make_shared<net::Connection>(std::move(socket))),
                       asio::detached);
    }
}

asio::awaitable<void> ServerDaemon::serve(std::shared_ptr<net::Connection> conn) {
    ++connections_;
    struct Done {
        std::size_t& n;
        ~Done() { --n; }
    } done{connections_};
    if (!co_await conn->server_handshake(*tls_, kGwHandshakeTimeout)) {
        const auto err = conn->tls_error();
        const std::string identity = conn->tls_identity();
        pb::FailureReason reason = pb::GATEWAY_AUTHENTICATION_FAILED;
        std::string why = "wrong PSK (the PN GW's EUKey differs)";
        if (err == tls::TlsError::kUnknownIdentity) {
            reason = pb::UNKNOWN_ENTITY;
            why = "unknown, disabled or revoked PN GW identity";
        } else if (err != tls::TlsError::kBadPsk) {
            why = conn->tls_detail();
        }
        links_.count(reason);
        spdlog::warn("refused PN GW link from {}{}: {} - {} (refused so far: {})", conn->remote(),
                     identity.empty() ? "" : " as " + identity, reason_name(reason), why,
                     links_[pb::GATEWAY_AUTHENTICATION_FAILED] + links_[pb::UNKNOWN_ENTITY]);
        co_return;
    }
    const std::string gw = conn->tls_identity();
    conn->peer_id = gw;
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
            apply(server_->on_message(gw, *env, mono_now()));
            continue;
        }
        if (auto* de = std::get_if<DecodeError>(&r)) {
            links_.count(to_reason(*de));
            spdlog::warn("closing link of {}: {}", gw, to_string(*de));
        } else {
            spdlog::info("PN GW {} disconnected ({})", gw, std::get<net::ReadError>(r).what);
        }
        break;
    }
    conn->close();
    if (auto it = gws_.find(gw); it != gws_.end() && it->second == conn) gws_.erase(it);
}

void ServerDaemon::apply(Effects effects) {
    for (auto& e : effects) {
        if (auto* s = std::get_if<SendEffect>(&e)) {
            auto it = gws_.find(s->to);
            if (it == gws_.end() || !it->second->send(s->msg))
                spdlog::warn("cannot send {} to {}: no link", message_name(s->msg), s->to);
            else
                spdlog::debug("server -> {}: {}", s->to, message_name(s->msg));
        } else if (auto* p = std::get_if<PersistPnEffect>(&e)) {
            const bool fresh = dir_.register_pn(p->gw_id, p->inventory);
            const std::string gw = p->gw_id, pn = p->inventory.pn_id();
            asio::post(io_, [this, gw, pn, fresh] {
                apply(server_->on_persisted(gw, pn, fresh ? pb::REASON_NONE : pb::DUPLICATE_PN,
                                            mono_now()));
            });
        } else if (auto* k = std::get_if<SessionKeyEffect>(&e)) {
            if (session_keys_.size() >= kMaxSessionKeys) session_keys_.erase(session_keys_.begin());
            session_keys_[{k->pn_id, k->pne_id}] = k->sk;
        } else if (auto* o = std::get_if<OutcomeEffect>(&e)) {
            spdlog::info("establishment {}: {}", o->pn_id, outcome_json(opt_.id, *o));
        }
    }
    timer_.arm(server_->next_deadline());
}

}  // namespace cpns::daemon
