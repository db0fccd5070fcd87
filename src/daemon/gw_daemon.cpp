#include "daemon/gw_daemon.hpp"

#include <algorithm>
#include <limits>
#include <sstream>

#include "daemon/log_json.hpp"
#include "daemon/neighbour_report.hpp"

namespace cpns::daemon {

GwOptions gw_options_from(const Config& c, const std::string& control_override) {
    GwOptions o;
    std::tie(o.role.gw_id, o.role.eukey) = device_identity(c);
    o.device = device_options_from(c);
    o.server = parse_address(c.str("server", o.server.str()), c.where("server"));
    o.role.server_id = c.str("server_id", o.role.server_id);
    o.pan_listen = parse_address(c.str("pan_listen", o.pan_listen.str()), c.where("pan_listen"));
    o.control = control_address_from(c, "cpns-gw", control_override);
    if (const std::string token = c.str("control_token_file"); !token.empty())
        o.control_token = read_control_token(token, c.where("control_token_file"));
    o.role.default_pan_secure = c.boolean("default_pan_secure", false);
    o.role.neighbour_ttl = neighbour_ttl_from(c);
    o.ready_file = c.str("ready_file");
    o.pan_max_connections =
        connection_limit(c, "pan_max_connections", kMaxPanConnections, kMaxPanConnectionsLimit);
    o.pan_max_connections_per_source = connection_limit(
        c, "pan_max_connections_per_source",
        std::min(kDefaultPanConnectionsPerSource, o.pan_max_connections), o.pan_max_connections);
    o.control_max_connections_per_source =
        connection_limit(c, "control_max_connections_per_source",
                         kDefaultControlConnectionsPerSource, kMaxControlConnections);
    o.role.capabilities = capabilities_from(c, true);
    if (o.role.capabilities.device_type().empty()) o.role.capabilities.set_device_type("pn-gw");
    if (auto sub = c.table()["subscription"].as_table()) {
        o.role.subscription.set_subscriber_id((*sub)["subscriber_id"].value_or(std::string()));
        o.role.subscription.set_service_plan((*sub)["service_plan"].value_or(std::string()));
    }
    if (auto arr = c.table()["pne"].as_array()) {
        for (const auto& node : *arr) {
            const auto* t = node.as_table();
            if (!t) throw ConfigError(c.where("pne") + " entries must be tables");
            const std::string id = (*t)["id"].value_or(std::string());
            if (!valid_id(id)) throw ConfigError(c.where("pne") + ": invalid PNE id '" + id + "'");
            if (id == o.role.gw_id || id == o.role.server_id)
                throw ConfigError(c.where("pne") + ": '" + id + "' is not a PNE ID");
            PanLinkConfig link;
            link.pan_secure = (*t)["pan_secure"].value_or(o.role.default_pan_secure);
            const std::string hex = (*t)["preassigned_key"].value_or(std::string());
            if (!hex.empty())
                link.preassigned_key =
                    parse_key(hex, c.where("pne") + " " + id + " preassigned_key");
            o.role.pan_links[id] = std::move(link);
        }
    }
    return o;
}

GwDaemon::GwDaemon(asio::io_context& io, GwOptions options)
    : io_(io),
      opt_(std::move(options)),
      pan_listener_(io.get_executor(),
                    {opt_.pan_max_connections, opt_.pan_max_connections_per_source}, pan_hooks()),
      control_listener_(io.get_executor(),
                        {kMaxControlConnections, opt_.control_max_connections_per_source},
                        control_hooks()),
      timer_(io.get_executor(), [this](Millis now) { apply(gw_->on_timer(now)); }) {
    opt_.role.log = core_log_sink();
    gw_ = std::make_unique<Gateway>(opt_.role, random_);
    trace_ = std::make_unique<RoleTrace>(opt_.role.gw_id, "gw", opt_.device.trace_file,
                                         opt_.device.crash_at);
    state_ = open_device_state<pb::GwState>(opt_.device.state_file, opt_.role.eukey,
                                            opt_.role.gw_id, *gw_, opt_.device.previous_eukey);
    if (state_) {
        spdlog::info("state file {}: {} PN(s) restored", opt_.device.state_file,
                     gw_->inventory().size());
    } else {
        spdlog::info("no state_file: the PN Inventory and LocalEUKeys are kept in memory only");
    }

    const std::string keylog = keylog_path(opt_.device.keylog);
    if (!keylog.empty()) spdlog::warn("TLS key log enabled: {} (debugging only)", keylog);
    tls::TlsConfig client;
    client.role = tls::Role::kClient;
    client.mode = tls::Mode::kTls13;
    client.keylog_path = keylog;
    server_tls_.emplace(client);
    server_link_ = std::make_unique<net::PskClientLink>(io_.get_executor(), *server_tls_,
                                                        server_link_options(), server_link_hooks());
    tls::TlsConfig server;
    server.role = tls::Role::kServer;
    server.mode = opt_.device.pan_tls;
    server.keylog_path = keylog;
    server.psk_lookup = [this](std::string_view identity) { return gw_->tls_psk_for(identity); };
    pan_tls_.emplace(server);
}

void GwDaemon::start() {
    pan_port_ = listen_on(pan_listener_, opt_.pan_listen, "pan_listen");
    std::string control;
    if (opt_.control.is_unix()) {
        if (auto error = control_listener_.listen_unix(opt_.control.unix_path, "control"))
            throw ConfigError(error->detail);
        control = opt_.control.str();
    } else {
        if (!opt_.control_token)
            throw ConfigError("a TCP control endpoint (control = \"" + opt_.control.str() +
                              "\") needs control_token_file: a file with 64 hex digits, mode "
                              "0600 (openssl rand -hex 32 > FILE); or use a Unix socket, "
                              "control = \"unix:PATH\"");
        control_port_ = listen_on(control_listener_, opt_.control.tcp, "control");
        control = opt_.control.tcp.host + ":" + std::to_string(control_port_);
    }
    const std::string pan = opt_.pan_listen.host + ":" + std::to_string(pan_port_);
    gw_->set_endpoint(pan);
    spdlog::info("PN GW {}: PAN on {} ({} for insecure links), control on {}", opt_.role.gw_id, pan,
                 tls::to_string(opt_.device.pan_tls), control);
    if (!opt_.device.discovery_group.empty()) start_discovery();
    write_ready_file(opt_.ready_file, "pan=" + pan + " control=" + control);
    asio::co_spawn(io_, server_link_->run(), asio::detached);
    asio::co_spawn(io_, pan_listener_.run(), asio::detached);
    asio::co_spawn(io_, control_listener_.run(), asio::detached);
    metrics_.watch_listener("pan", pan_listener_);
    metrics_.watch_listener("control", control_listener_);
    metrics_.watch_listener("metrics", metrics_server_.listener());
    if (!opt_.device.metrics.empty())
        metrics_port_ =
            metrics_server_.start(parse_metrics_address(opt_.device.metrics, "metrics"));
}

void GwDaemon::set_connection_limits(std::size_t pan_per_source, std::size_t control_per_source) {
    opt_.pan_max_connections_per_source = pan_per_source;
    opt_.control_max_connections_per_source = control_per_source;
    pan_listener_.set_max_per_source(pan_per_source);
    control_listener_.set_max_per_source(control_per_source);
}

void GwDaemon::start_discovery() {
    const auto group = parse_address(opt_.device.discovery_group, "discovery_group");
    try {
        discovery_ = std::make_unique<net::DiscoverySocket>(io_.get_executor(), group,
                                                            opt_.device.discovery_interface, true);
    } catch (const std::exception& e) {
        throw ConfigError("cannot join discovery group " + opt_.device.discovery_group + ": " +
                          e.what());
    }
    spdlog::info("answering CPNS Entity Discovery on {} via {}", opt_.device.discovery_group,
                 opt_.device.discovery_interface);
    asio::co_spawn(io_, discovery_loop(), asio::detached);
}

void GwDaemon::stop() {
    stopping_ = true;
    pan_listener_.close();
    control_listener_.close();
    metrics_server_.close();
    server_link_->stop();
    timer_.cancel();
    if (discovery_) discovery_->close();
    for (auto& [id, conns] : pan_conns_)
        for (auto& c : conns) c->close();
    std::error_code ec;
    for (auto& [pn, socks] : waiters_)
        for (auto& s : socks) s->close(ec);
    if (state_) state_->flush();
    spdlog::info("stopped: {} PN(s) in the inventory", gw_->inventory().size());
}

// PN GW Authentication: TLS 1.3 with the PSK derived from our EUKey, identity = PN GW ID.
net::PskClientLink::Options GwDaemon::server_link_options() const {
    net::PskClientLink::Options o;
    o.server = opt_.server;
    o.psk = tls::ClientPsk{opt_.role.gw_id, derive_gw_server_psk(opt_.role.eukey, opt_.role.gw_id)};
    o.handshake_timeout = kPanHandshakeTimeout;
    o.retry_min = kServerReconnectMin;
    o.retry_max = kServerReconnectMax;
    return o;
}

net::PskClientLink::Hooks GwDaemon::server_link_hooks() {
    net::PskClientLink::Hooks h;
    h.on_up = [this](const std::shared_ptr<net::Connection>& conn) {
        metrics_.tls_handshake("server", pb::REASON_NONE);
        spdlog::info("authenticated to the CPNS Server at {} ({})", opt_.server.str(),
                     conn->tls_summary());
        server_conn_ = conn;
        // Each (re)connect: the PN GW names the PNs it holds, and the server answers those
        // that changed while it was away (docs/protocol.md, "Resynchronisation").
        apply(gw_->on_link_up(opt_.role.server_id, mono_now()));
    };
    h.on_message = [this](const pb::Envelope& env) {
        spdlog::debug("server -> {}: {}", opt_.role.gw_id, message_name(env));
        to_role(opt_.role.server_id, env, Protection::kTls);
    };
    h.on_down = [this](const net::LinkError& error, net::PskClientLink::Stage stage) {
        server_conn_.reset();
        server_down_reason_ = error.reason;
        if (stopping_ && stage == net::PskClientLink::Stage::kLost) return false;
        if (stage == net::PskClientLink::Stage::kHandshake)
            metrics_.tls_handshake("server", error.reason);
        log_server_down(error, stage);
        apply(gw_->on_link_down(opt_.role.server_id, mono_now(), server_down_reason_));
        return true;
    };
    return h;
}

void GwDaemon::log_server_down(const net::LinkError& error, net::PskClientLink::Stage stage) const {
    using Stage = net::PskClientLink::Stage;
    if (stage == Stage::kLost) {
        spdlog::warn("link to the CPNS Server lost: {}", error.detail);
    } else if (stage == Stage::kConnect) {
        if (!stopping_) spdlog::warn("CPNS Server unreachable: {}", error.detail);
    } else if (error.reason != pb::GATEWAY_AUTHENTICATION_FAILED) {
        spdlog::warn("TLS with the CPNS Server failed: {}", error.detail);
    } else {
        // The server answers an unknown, inactive or backed-off identity exactly like a wrong
        // key, so this side cannot tell which it was (the server's log says).
        spdlog::error(
            "the CPNS Server refused this PN GW: gateway authentication failed - authentication "
            "refused: unknown identity or wrong key (is {} provisioned and active there, with "
            "the EUKey configured here? after repeated failures the server also refuses it for "
            "{} s)",
            opt_.role.gw_id, kPskBackoff / 1000);
    }
}

net::Listener::Hooks GwDaemon::pan_hooks() {
    net::Listener::Hooks h;
    h.on_socket = [this](net::tcp::socket socket, net::Listener::Slot slot) {
        auto conn = std::make_shared<net::Connection>(std::move(socket));
        conn->hold(std::move(slot));
        asio::co_spawn(io_, pan_serve(std::move(conn)), asio::detached);
    };
    h.on_refused = [this](const std::string& source, net::Listener::Refusal why, std::size_t open,
                          std::size_t count) {
        if (why == net::Listener::Refusal::kPerSource)
            spdlog::warn(
                "refused {} PAN connection(s): {} open from {} (pan_max_connections_per_source)",
                count, opt_.pan_max_connections_per_source, source);
        else
            spdlog::warn("refused {} PAN connection(s): {} open (limit)", count, open);
    };
    h.on_evicted = [](const std::string& source, std::size_t count) {
        spdlog::warn("PAN full: closed {} connection(s) not yet authenticated (last from {})",
                     count, source);
    };
    h.on_error = [](const std::error_code& ec, std::size_t count) {
        spdlog::warn("PAN accept failed {} time(s): {}", count, ec.message());
    };
    return h;
}

void GwDaemon::control_accepted(std::shared_ptr<ControlSocket> sock, net::Listener::Slot slot,
                                std::string peer) {
    // Evicted (when full) while it has not sent its request: closed.
    slot.on_evict([weak = std::weak_ptr<ControlSocket>(sock)] {
        std::error_code ec;
        if (auto s = weak.lock()) s->close(ec);
    });
    asio::co_spawn(
        io_,
        control_serve(std::move(sock), std::make_shared<net::Listener::Slot>(std::move(slot)),
                      std::move(peer)),
        asio::detached);
}

net::Listener::Hooks GwDaemon::control_hooks() {
    net::Listener::Hooks h;
    h.on_socket = [this](net::tcp::socket socket, net::Listener::Slot slot) {
        std::string peer = slot.source();
        control_accepted(std::make_shared<ControlSocket>(std::move(socket)), std::move(slot),
                         std::move(peer));
    };
    h.on_local_socket = [this](asio::local::stream_protocol::socket socket,
                               net::Listener::Slot slot, long uid) {
        control_accepted(std::make_shared<ControlSocket>(std::move(socket)), std::move(slot),
                         "uid " + std::to_string(uid));
    };
    h.on_refused = [this](const std::string& source, net::Listener::Refusal why, std::size_t open,
                          std::size_t count) {
        spdlog::warn("refused {} control connection(s): {}", count,
                     why == net::Listener::Refusal::kPerSource
                         ? std::to_string(opt_.control_max_connections_per_source) + " open from " +
                               source + " (control_max_connections_per_source)"
                         : std::to_string(open) + " open (limit)");
    };
    h.on_error = [](const std::error_code& ec, std::size_t count) {
        spdlog::warn("control accept failed {} time(s): {}", count, ec.message());
    };
    return h;
}

// Runs the PSK-TLS handshake of a PAN link and binds the link to the PNE its identity names.
// The back-off is per (source, identity): replaying a wrong key from elsewhere cannot lock the
// PNE out. A refused identity fails like a wrong key on the wire.
asio::awaitable<bool> GwDaemon::pan_handshake(const std::shared_ptr<net::Connection>& conn,
                                              Millis timeout) {
    auto blocked = std::make_shared<bool>(false);
    const tls::PskLookup lookup = [this, conn = conn.get(),
                                   blocked](std::string_view identity) -> std::optional<SecretKey> {
        if (throttle_.blocked(conn->source(), std::string(identity), mono_now()) !=
            PskThrottle::Block::kNone) {
            *blocked = true;
            return std::nullopt;
        }
        return gw_->tls_psk_for(identity);
    };
    auto failed = co_await conn->server_handshake(*pan_tls_, timeout, net::PskLink::kPan, lookup);
    const std::string identity = conn->tls_identity();
    const auto parsed = parse_psk_identity(identity);
    const std::string pne = parsed ? parsed->pne_id : "";
    if (failed) {
        const LogScope scope("tls", "", conn->remote(), pb::FailureReason_Name(failed->reason));
        metrics_.tls_handshake("pan", failed->reason);
        if (*blocked) metrics_.psk_throttled("pan");
        auto started = PskThrottle::Block::kNone;
        std::string detail = failed->detail;
        if (*blocked)
            detail = "backing off after repeated PSK failures from " + conn->source();
        else if (failed->tls == tls::TlsError::kUnknownIdentity)
            started = throttle_.failed_unknown(conn->source(), mono_now());
        else if (failed->tls == tls::TlsError::kBadPsk && !identity.empty())
            started = throttle_.failed(conn->source(), identity, mono_now());
        // A handshake that timed out or was lost before any TLS verdict (a scan, a slow-loris,
        // an eviction when full) is not worth a warning per connection.
        spdlog::log(
            failed->tls == tls::TlsError::kNone ? spdlog::level::debug : spdlog::level::warn,
            "PSK-TLS from {}{} failed: {} ({})", conn->remote(),
            identity.empty() ? "" : " as " + printable(identity), tls::to_string(failed->tls),
            detail);
        if (started == PskThrottle::Block::kIdentity)
            spdlog::warn("{} failed PSK attempts as {} from {}: refused for {} s",
                         kMaxFailedPskAttempts, printable(identity), conn->source(),
                         kPskBackoff / 1000);
        else if (started == PskThrottle::Block::kSource)
            spdlog::warn("{} failed PSK attempts from {}: the address is refused for {} s",
                         kMaxFailedPskAttemptsPerSource, conn->source(), kPskBackoff / 1000);
        // A failure from another address than the one the PNE is linked from is not the PNE's:
        // someone replaying its identity must not end its membership.
        bool linked_elsewhere = false;
        if (auto it = pan_conns_.find(pne); !pne.empty() && it != pan_conns_.end())
            for (const auto& c : it->second)
                linked_elsewhere |= c->is_open() && c->source() != conn->source();
        if (!pne.empty() && !linked_elsewhere) apply(gw_->on_tls_failed(pne, mono_now()));
        co_return false;
    }
    if (pne.empty() || pne == opt_.role.server_id || pne == opt_.role.gw_id) {
        spdlog::warn("PSK-TLS identity '{}' names no PNE; closing", printable(identity));
        co_return false;
    }
    conn->peer_id = pne;
    conn->authenticated();
    metrics_.tls_handshake("pan", pb::REASON_NONE);
    throttle_.succeeded(conn->source(), identity);
    pan_conns_[pne].push_back(conn);
    if (spdlog::should_log(spdlog::level::info))  // tls_summary() costs a few allocations
        spdlog::info("PSK-TLS with {} as {} ({})", conn->remote(), identity, conn->tls_summary());
    apply(gw_->on_tls_established(pne, identity, mono_now()));
    co_return true;
}

// A clear link is bound to the entity that speaks first on it, never to the PN GW itself nor
// the server: those names are not for PAN peers. False: the message may not come on it.
bool GwDaemon::bind_sender(net::Connection& conn, const pb::Envelope& env) {
    if (!conn.peer_id.empty()) {
        if (env.sender_id() == conn.peer_id) return true;
        spdlog::warn("{} sent a message as '{}' on its link; closing", conn.peer_id,
                     env.sender_id());
        return false;
    }
    if (!valid_id(env.sender_id()) || env.sender_id() == opt_.role.gw_id ||
        env.sender_id() == opt_.role.server_id) {
        spdlog::warn("clear link from {} without a valid sender; closing", conn.remote());
        return false;
    }
    conn.peer_id = env.sender_id();
    conn.authenticated();
    pan_conns_[conn.peer_id].push_back(conn.shared_from_this());
    spdlog::info("clear PAN link from {} as {}", conn.remote(), conn.peer_id);
    return true;
}

asio::awaitable<void> GwDaemon::pan_serve(std::shared_ptr<net::Connection> conn) {
    // One deadline from accept to the end of the handshake (or the first octet in clear).
    const Millis until = mono_now() + kPanHandshakeTimeout;
    auto tls = co_await conn->sniff_tls(kPanHandshakeTimeout);
    if (!tls) co_return;
    if (*tls && !co_await pan_handshake(conn, std::max<Millis>(0, until - mono_now()))) co_return;
    for (;;) {
        auto r = co_await conn->read();
        if (auto* env = std::get_if<pb::Envelope>(&r)) {
            if (!bind_sender(*conn, *env)) break;
            spdlog::debug("{} -> {}: {} ({})", conn->peer_id, opt_.role.gw_id, message_name(*env),
                          conn->is_tls() ? "tls" : "clear");
            const auto& remote = conn->remote();
            to_role(conn->peer_id, *env, conn->is_tls() ? Protection::kTls : Protection::kClear,
                    Origin{false, remote.substr(0, remote.rfind(':'))});
            continue;
        }
        if (auto* de = std::get_if<DecodeError>(&r)) {
            spdlog::warn("closing link of {}: {}",
                         conn->peer_id.empty() ? conn->remote() : conn->peer_id, to_string(*de));
            pb::Envelope err;
            err.set_sender_id(opt_.role.gw_id);
            err.mutable_error()->set_reason(to_reason(*de));
            err.mutable_error()->set_detail(std::string(to_string(*de)));
            conn->send(err);
        } else if (!conn->peer_id.empty()) {
            spdlog::info("PAN link of {} closed ({})", conn->peer_id,
                         std::get<net::LinkError>(r).detail);
        }
        break;
    }
    link_lost(conn->peer_id, conn);
}

void GwDaemon::link_lost(const std::string& pne, const std::shared_ptr<net::Connection>& conn) {
    conn->close();
    if (pne.empty()) return;
    auto it = pan_conns_.find(pne);
    if (it == pan_conns_.end()) return;
    auto& v = it->second;
    v.erase(std::remove(v.begin(), v.end(), conn), v.end());
    if (v.empty()) {
        pan_conns_.erase(it);
        if (!stopping_) apply(gw_->on_link_down(pne, mono_now()));
    }
}

void GwDaemon::send_to_pne(const SendEffect& s) {
    std::shared_ptr<net::Connection> tls_conn, clear_conn;
    if (auto it = pan_conns_.find(s.to); it != pan_conns_.end())
        for (const auto& c : it->second) {
            if (!c->is_open()) continue;
            (c->is_tls() ? tls_conn : clear_conn) = c;
        }
    if (s.protection == Protection::kTls && !tls_conn) {
        // Never in clear: this message carries what an insecure PAN must not see.
        spdlog::error(
            "refusing to send {} to {} in clear: its PAN is insecure and no PSK-TLS "
            "session is up",
            message_name(s.msg), s.to);
        return;
    }
    auto conn = tls_conn ? tls_conn : clear_conn;
    if (!conn || !conn->send(s.msg)) {
        spdlog::warn("cannot send {} to {}: no PAN link", message_name(s.msg), s.to);
        const std::string peer = s.to;
        asio::post(io_, [this, peer] {
            if (!pan_conns_.count(peer)) apply(gw_->on_link_down(peer, mono_now()));
        });
        return;
    }
    spdlog::debug("{} -> {}: {} ({})", opt_.role.gw_id, s.to, message_name(s.msg),
                  conn->is_tls() ? "tls" : "clear");
    trace_->sent(s.msg, conn, io_.get_executor());
}

void GwDaemon::to_role(const std::string& from, const pb::Envelope& env, Protection protection,
                       const Origin& origin) {
    trace_->message("recv", env, from, protection);
    const LogScope scope("message", pn_id_of(env), from);
    GatewayEffects fx = gw_->on_message(from, env, protection, mono_now(), origin);
    if (env.has_setup_request())
        metrics_.started_in(fx, "none", FlowLabel::kPneInitiated, env.setup_request().setup_type(),
                            mono_now());
    apply(std::move(fx));
    trace_->handled(env);
}

void GwDaemon::send_effect(const SendEffect& s) {
    trace_->message("send", s.msg, s.to,
                    s.to == opt_.role.server_id ? Protection::kTls : s.protection);
    if (s.to == opt_.role.server_id) {
        if (!server_conn_ || !server_conn_->send(s.msg)) {
            spdlog::warn("cannot send {} to the CPNS Server: {}", message_name(s.msg),
                         reason_name(server_down_reason_));
            const auto reason = server_down_reason_;
            asio::post(io_, [this, reason] {
                if (!server_conn_)
                    apply(gw_->on_link_down(opt_.role.server_id, mono_now(), reason));
            });
        } else {
            spdlog::debug("{} -> server: {}", opt_.role.gw_id, message_name(s.msg));
            trace_->sent(s.msg, server_conn_, io_.get_executor());
        }
    } else if (udp_reply_to_ && s.to == udp_reply_peer_ && s.msg.has_discovery_response()) {
        if (discovery_ && !discovery_->answer(s.msg, *udp_reply_to_, udp_request_size_))
            spdlog::debug("discovery request from {} too small ({} octets) for an answer", s.to,
                          udp_request_size_);
    } else if (s.to == "*") {
        if (discovery_) discovery_->send_to_group(s.msg);
    } else {
        send_to_pne(s);
    }
}

void GwDaemon::outcome_effect(const OutcomeEffect& o) {
    trace_->outcome(o);
    const LogScope scope(o.operation.empty() ? "outcome" : o.operation, o.pn_id, "",
                         pb::FailureReason_Name(o.reason));
    if (o.operation.empty()) metrics_.finished(o.pn_id, o, mono_now());
    const std::string json = outcome_json(opt_.role.gw_id, o);
    if (!o.operation.empty())
        spdlog::log(o.success ? spdlog::level::info : spdlog::level::warn, "{} {}: {}", o.operation,
                    o.pn_id, json);
    else if (o.success)
        spdlog::info("PN {} established: {}", o.pn_id, json);
    else if (o.pn_id.empty())
        spdlog::warn("establishment not started: {}", json);
    else
        spdlog::warn("PN {} not established: {}", o.pn_id, json);
    if (auto w = waiters_.find(o.pn_id); w != waiters_.end()) {
        for (auto& sock : w->second) answer(sock, json);
        waiters_.erase(w);
    }
}

void GwDaemon::apply(GatewayEffects effects) {
    for (auto& e : effects) held_.push_back(std::move(e));
    if (saving_ && held_.size() > kMaxHeldEffects) {
        spdlog::warn("{} effects wait for the state file: waiting for the disk", held_.size());
        state_->flush();  // the writer has run the save's completion: its result is set
        const std::string pn = pn_saving_, error = *save_error_;
        state_saved(save_, pn, error);
    }
    carry_out();
    // The role's waits, and the next neighbour to age out (on_timer drops it, so that listings
    // and 'All' never show an entity that left).
    timer_.arm(std::min(gw_->next_deadline(), gw_->neighbour_expiry()));
}

// Carries out the held effects in order, stopping at a state save until it is durable.
void GwDaemon::carry_out() {
    while (!saving_ && !held_.empty()) {
        GatewayEffect e = std::move(held_.front());
        held_.pop_front();
        carry_out(e);
    }
}

void GwDaemon::carry_out(GatewayEffect& effect) {
    std::visit(Overloaded{
                   [&](const SendEffect& s) { send_effect(s); },
                   [&](const OutcomeEffect& o) { outcome_effect(o); },
                   [&](const CloseLinkEffect& c) {
                       if (auto it = pan_conns_.find(c.peer); it != pan_conns_.end())
                           for (auto& conn : it->second) conn->close();
                   },
                   [&](const StoreInventoryEffect& inv) {
                       if (inv.forgotten)
                           spdlog::info("PN {} dissolved: removed from the saved state",
                                        inv.inventory.pn_id());
                       else
                           spdlog::info("PN Inventory of {} stored (revision {}, {} member(s))",
                                        inv.inventory.pn_id(), inv.inventory.revision(),
                                        inv.inventory.members_size());
                       if (!state_) return;
                       saving_ = true;
                       const std::uint64_t save = ++save_;
                       const std::string pn = pn_saving_ = inv.inventory.pn_id();
                       auto result = save_error_ = std::make_shared<std::string>();
                       state_->save(
                           gw_->export_state(), [this, save, pn, result](const std::string& error) {
                               *result = error;
                               asio::post(
                                   io_, [this, save, pn, error] { state_saved(save, pn, error); });
                           });
                   },
                   // The LocalEUKey stays in the role's memory (never logged).
                   [&](const StoreLocalKeyEffect&) {},
                   [&](const TransitionEffect& t) {
                       trace_->transition(t);
                       metrics_.gw_transition(t, mono_now());
                   },
               },
               effect);
}

// The save of `pn_id`'s inventory ended. If it failed, the held reports of that PN become
// failures (INTERNAL_ERROR): neither the operator nor a PNE is told of a PN that would not
// survive a restart of this PN GW.
void GwDaemon::state_saved(std::uint64_t save, const std::string& pn_id, const std::string& error) {
    if (!saving_ || save != save_) return;  // already completed (by flush() in apply)
    saving_ = false;
    if (!error.empty()) {
        const std::string detail =
            "registered by the CPNS Server, but the PN GW could not save it: " + error;
        spdlog::error("PN {} reported as failed: {}", pn_id, detail);
        for (auto& e : held_) {
            if (auto* o = std::get_if<OutcomeEffect>(&e); o && o->pn_id == pn_id && o->success) {
                o->success = false;
                o->reason = pb::INTERNAL_ERROR;
                o->detail = detail;
                for (auto& p : o->pnes)
                    if (p.joined) p = PneOutcome{p.pne_id, false, pb::INTERNAL_ERROR};
            } else if (auto* s = std::get_if<SendEffect>(&e)) {
                const pb::PnResult* r =
                    s->msg.has_setup_response()         ? &s->msg.setup_response().result()
                    : s->msg.has_establishment_notify() ? &s->msg.establishment_notify().result()
                                                        : nullptr;
                if (!r || r->pn_id() != pn_id || !r->success()) continue;
                pb::Envelope report = error_report(pn_id, pb::INTERNAL_ERROR,
                                                   "the PN GW could not save the PN durably");
                report.set_version(s->msg.version());
                report.set_sender_id(s->msg.sender_id());
                s->msg = std::move(report);
            }
        }
    }
    carry_out();
}

asio::awaitable<void> GwDaemon::discovery_loop() {
    for (;;) {
        auto got = co_await discovery_->receive();
        if (net::error_of(got)) co_return;  // socket closed
        auto& [env, from, size] = std::get<net::DiscoverySocket::Datagram>(got);
        if (!env.has_discovery_request() || env.sender_id() == opt_.role.gw_id) continue;
        spdlog::debug("discovery request from {} at {} ({} octets)", env.sender_id(),
                      from.address().to_string(), size);
        udp_reply_to_ = from;
        udp_request_size_ = size;
        udp_reply_peer_ = env.sender_id();
        to_role(env.sender_id(), env, Protection::kClear, Origin{true, from.address().to_string()});
        udp_reply_to_.reset();
        udp_reply_peer_.clear();
    }
}

void GwDaemon::answer(const std::shared_ptr<ControlSocket>& socket, std::string line) {
    auto buf = std::make_shared<std::string>(std::move(line) + "\n");
    asio::async_write(*socket, asio::buffer(*buf),
                      [this, socket, buf](const std::error_code&, std::size_t) {
                          std::error_code ec;
                          socket->shutdown(ControlSocket::shutdown_both, ec);
                          socket->close(ec);
                          control_slots_.erase(socket.get());
                      });
}

pb::GwStatus GwDaemon::status() const {
    pb::GwStatus st;
    st.set_gw_id(opt_.role.gw_id);
    st.set_server_link(server_conn_ != nullptr);
    st.set_server_link_reason(server_conn_ ? "none"
                                           : std::string(reason_name(server_down_reason_)));
    for (const auto& [id, conns] : pan_conns_) {
        auto& sessions = (*st.mutable_pan_links())[id];
        for (const auto& c : conns) sessions.add_values()->set_string_value(c->tls_summary());
    }
    const Millis now = mono_now();
    for (const auto& [id, n] : gw_->neighbours())
        if (gw_->neighbour_table().live(id, now)) st.add_neighbours(id);
    st.set_active_establishments(static_cast<std::uint32_t>(gw_->active_sessions()));
    for (const auto& [pn, inv] : gw_->inventory()) *st.add_inventory() = inv;
    const auto& c = gw_->counters();
    for (int r = pb::FailureReason_MIN; r <= pb::FailureReason_MAX; ++r) {
        const auto reason = static_cast<pb::FailureReason>(r);
        if (!pb::FailureReason_IsValid(r) || c[reason] == 0) continue;
        (*st.mutable_failures())[std::string(reason_name(reason))] = static_cast<std::uint32_t>(
            std::min<std::uint64_t>(c[reason], std::numeric_limits<std::uint32_t>::max()));
    }
    return st;
}

// PN lifecycle on the control endpoint: "remove PN PNE", "dissolve PN", "add PN [PNE ...]" and
// "rekey PN PNE"
// (IDs are checked by the role); the answer is the outcome once the server has answered (for
// add: once the PNEs have joined and the server has recorded them). (Not in the coroutine
// below: GCC 12 reports a false mismatched-new-delete on its frame when it grows.)
void GwDaemon::control_change(const std::shared_ptr<ControlSocket>& socket, const std::string& cmd,
                              std::istringstream& in) {
    std::string pn, pne, extra;
    in >> pn;
    if (cmd == "add") {
        std::vector<std::string> ids;
        std::string named;
        for (std::string id; in >> id;) {
            named += (named.empty() ? "" : " ") + id;
            ids.push_back(std::move(id));
        }
        if (pn.empty()) {
            answer(socket, error_json("usage: add PN [PNE ...]"));
            return;
        }
        spdlog::info("control: add {} {}", printable(pn, kMaxControlLine),
                     ids.empty() ? std::string("every discovered PNE not in it")
                                 : printable(named, kMaxControlLine));
        GatewayEffects fx = gw_->add(pn, ids, mono_now());
        if (const auto* o = find_outcome(fx))
            answer(socket, outcome_json(opt_.role.gw_id, *o));
        else
            waiters_[pn].push_back(socket);
        apply(std::move(fx));
        return;
    }
    if (cmd == "remove" || cmd == "rekey") in >> pne;
    if (pn.empty() || ((cmd == "remove" || cmd == "rekey") && pne.empty()) || (in >> extra)) {
        answer(socket, error_json("usage: remove PN PNE | rekey PN PNE | dissolve PN"));
        return;
    }
    if (cmd == "rekey") {
        spdlog::info("control: rekey {} {}", printable(pn, kMaxControlLine),
                     printable(pne, kMaxControlLine));
        // The outcome comes when the PNE confirms its new LocalEUKey, or the re-key fails.
        GatewayEffects fx = gw_->rekey(pn, pne, mono_now());
        if (const auto* o = find_outcome(fx))
            answer(socket, outcome_json(opt_.role.gw_id, *o));
        else
            waiters_[pn].push_back(socket);
        apply(std::move(fx));
        return;
    }
    spdlog::info("control: {} {}{}", cmd, printable(pn, kMaxControlLine),
                 pne.empty() ? "" : " " + printable(pne, kMaxControlLine));
    GatewayEffects fx =
        cmd == "remove" ? gw_->remove(pn, pne, mono_now()) : gw_->dissolve(pn, mono_now());
    if (gw_->change_pending(pn) && find_outcome(fx) == nullptr)
        waiters_[pn].push_back(socket);
    else if (const auto* o = find_outcome(fx))
        answer(socket, outcome_json(opt_.role.gw_id, *o));
    apply(std::move(fx));
}

// One request line per connection: "invite [pne ...]" (waits for the outcome), "status" or
// "neighbours".
// The connection counts against the control listener's limits until it is closed; it must
// send its request within kControlIdleTimeout.
asio::awaitable<void> GwDaemon::control_serve(std::shared_ptr<ControlSocket> socket,
                                              std::shared_ptr<net::Listener::Slot> slot,
                                              std::string peer) {
    std::string line;
    std::error_code ec;
    asio::steady_timer idle(io_, std::chrono::milliseconds(kControlIdleTimeout));
    idle.async_wait([weak = std::weak_ptr<ControlSocket>(socket)](const std::error_code& e) {
        std::error_code ignored;
        if (auto s = weak.lock(); s && !e) s->close(ignored);
    });
    auto n = co_await asio::async_read_until(*socket, asio::dynamic_buffer(line, kMaxControlLine),
                                             '\n', asio::redirect_error(asio::use_awaitable, ec));
    idle.cancel();
    if (ec) {
        if (ec == asio::error::operation_aborted && !stopping_)
            spdlog::warn("control connection closed: no request within {} s",
                         kControlIdleTimeout / 1000);
        co_return;
    }
    slot->authenticated();  // a request came: it may wait for its answer
    // The slot is freed with the socket (answer() closes it; a waiter is closed at stop()).
    control_slots_[socket.get()] = std::move(slot);
    line.resize(n > 0 ? n - 1 : 0);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (opt_.control_token) {  // a TCP endpoint: the line starts with the token
        auto rest = strip_control_token(line, *opt_.control_token);
        if (!rest) {
            control_refusals_.refused(peer);
            answer(socket, unauthorized_json());
            co_return;
        }
        line = std::move(*rest);
    }
    spdlog::info("control request from {}: {}", peer,
                 printable(line.substr(0, line.find(' ')), kMaxControlLine));
    // The request is untrusted text: logged only through printable(), answered only with JSON
    // from the protobuf printer (message_json, outcome_json, error_json).
    std::istringstream in(line);
    std::string cmd;
    in >> cmd;
    if (cmd == "status") {
        answer(socket, message_json(status()));
    } else if (cmd == "neighbours") {
        answer(socket, neighbours_json(opt_.role.gw_id, gw_->neighbour_table(), mono_now()));
    } else if (cmd == "invite") {
        // IDs are checked by the role (an invalid one ends in a MALFORMED_MESSAGE outcome).
        std::vector<std::string> ids;
        std::string named;
        for (std::string id; in >> id;) {
            named += (named.empty() ? "" : " ") + id;
            ids.push_back(std::move(id));
        }
        spdlog::info("control: invite {}", ids.empty() ? std::string("every discovered PNE")
                                                       : printable(named, kMaxControlLine));
        GatewayEffects fx = gw_->invite(ids, mono_now());
        metrics_.started_in(fx, "none", FlowLabel::kGwInitiated, pb::SETUP_UNSPECIFIED, mono_now());
        const std::string pn = gw_->last_pn_id();
        if (pn.empty()) {
            if (const auto* o = find_outcome(fx)) answer(socket, outcome_json(opt_.role.gw_id, *o));
        } else {
            waiters_[pn].push_back(socket);
        }
        apply(std::move(fx));
    } else if (cmd == "remove" || cmd == "dissolve" || cmd == "add" || cmd == "rekey") {
        control_change(socket, cmd, in);
    } else {
        spdlog::warn("control: unknown command '{}'", printable(cmd));
        answer(socket, error_json("unknown command '" + printable(cmd) +
                                  "'; use: invite [pne ...] | add PN [pne ...] | remove PN PNE | "
                                  "rekey PN PNE | "
                                  "dissolve PN | status | neighbours"));
    }
}

}  // namespace cpns::daemon
