#include "daemon/pne_daemon.hpp"

#include <sstream>

#include "daemon/log_json.hpp"
#include "daemon/neighbour_report.hpp"

namespace cpns::daemon {

PneOptions pne_options_from(const Config& c) {
    PneOptions o;
    std::tie(o.role.pne_id, o.role.eukey) = device_identity(c);
    o.device = device_options_from(c);
    o.role.preassigned_key = c.key("preassigned_key", "preassigned_key_file");
    o.role.pan_secure = c.boolean("pan_secure", false);
    o.role.neighbour_ttl = neighbour_ttl_from(c);
    const std::string gw = c.str("gw");
    if (!gw.empty()) o.gw = parse_address(gw, c.where("gw"));
    if (const std::string token = c.str("control_token_file"); !token.empty())
        o.control_token = read_control_token(token, c.where("control_token_file"));
    o.role.accept_invitations = c.boolean("accept_invitations", true);
    o.role.capabilities = capabilities_from(c, c.boolean("enough_ui", true));
    o.role.contents = contents_from(c);
    if (!o.role.pan_secure && !o.role.capabilities.enough_ui() && !o.role.preassigned_key)
        throw ConfigError(c.where("preassigned_key") +
                          " is required: this PNE has no UI and its PAN is insecure, so it must "
                          "use PSK-TLS with a pre-assigned key");
    if (!o.gw && o.device.discovery_group.empty())
        throw ConfigError(c.where("gw") + ": set the PN GW's address or a discovery_group");
    return o;
}

PneDaemon::PneDaemon(asio::io_context& io, PneOptions options, PneTask task)
    : io_(io),
      opt_(std::move(options)),
      task_(std::move(task)),
      timer_(io.get_executor(), [this](Millis now) { apply(pne_->on_timer(now)); }),
      wait_(io),
      control_listener_(io.get_executor(), {kMaxPneControlConnections, kMaxPneControlConnections},
                        control_hooks()) {
    opt_.role.log = core_log_sink();
    pne_ = std::make_unique<Pne>(opt_.role, random_);
    trace_ = std::make_unique<RoleTrace>(opt_.role.pne_id, "pne", opt_.device.trace_file,
                                         opt_.device.crash_at);
    state_ = open_device_state<pb::PneState>(opt_.device.state_file, opt_.role.eukey,
                                             opt_.role.pne_id, *pne_, opt_.device.previous_eukey);
    if (state_)
        spdlog::info("state file {}: {} PN membership(s) restored", opt_.device.state_file,
                     pne_->memberships().size());
    tls::TlsConfig tc;
    tc.role = tls::Role::kClient;
    tc.mode = opt_.device.pan_tls;
    tc.keylog_path = keylog_path(opt_.device.keylog);
    if (!tc.keylog_path.empty())
        spdlog::warn("TLS key log enabled: {} (debugging only)", tc.keylog_path);
    tls_.emplace(tc);
}

void PneDaemon::start() {
    if (opt_.control && opt_.control->is_unix()) {
        if (auto error = control_listener_.listen_unix(opt_.control->unix_path, "control"))
            throw ConfigError(error->detail);
        spdlog::info("control on {} (neighbours)", opt_.control->str());
        asio::co_spawn(io_, control_listener_.run(), asio::detached);
    } else if (opt_.control) {
        if (!opt_.control_token)
            throw ConfigError("a TCP control endpoint (control = \"" + opt_.control->str() +
                              "\") needs control_token_file: a file with 64 hex digits, mode "
                              "0600 (openssl rand -hex 32 > FILE); or use a Unix socket, "
                              "control = \"unix:PATH\"");
        control_port_ = listen_on(control_listener_, opt_.control->tcp, "control");
        spdlog::info("control on {}:{} (neighbours)", opt_.control->tcp.host, control_port_);
        asio::co_spawn(io_, control_listener_.run(), asio::detached);
    }
    metrics_.watch_listener("control", control_listener_);
    metrics_.watch_listener("metrics", metrics_server_.listener());
    if (!opt_.device.metrics.empty())
        metrics_port_ =
            metrics_server_.start(parse_metrics_address(opt_.device.metrics, "metrics"));
    asio::co_spawn(io_, main(), asio::detached);
}

void PneDaemon::stop() {
    stopping_ = true;
    control_listener_.close();
    metrics_server_.close();
    for (auto& [raw, weak] : control_sockets_) {
        std::error_code ec;
        if (auto sock = weak.lock()) sock->close(ec);
    }
    if (state_) state_->flush();
    timer_.cancel();
    wait_.cancel();
    for (auto& l : links_) l.conn->close();
    links_.clear();
}

void PneDaemon::control_accepted(std::shared_ptr<ControlSocket> sock, net::Listener::Slot slot,
                                 std::string peer) {
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

net::Listener::Hooks PneDaemon::control_hooks() {
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
    h.on_refused = [](const std::string& source, net::Listener::Refusal, std::size_t open,
                      std::size_t count) {
        spdlog::warn("refused {} control connection(s): {} open (limit; last from {})", count, open,
                     source);
    };
    h.on_error = [](const std::error_code& ec, std::size_t count) {
        spdlog::warn("control accept failed {} time(s): {}", count, ec.message());
    };
    return h;
}

// One request line per connection, answered with one line of JSON: "neighbours" (this PNE's
// live Entity Discovery neighbours). The request must come within kPneControlIdleTimeout.
asio::awaitable<void> PneDaemon::control_serve(std::shared_ptr<ControlSocket> socket,
                                               std::shared_ptr<net::Listener::Slot> slot,
                                               std::string peer) {
    // Forgotten when served (not in a destructor: a frame destroyed with the io_context, after
    // this daemon, must not touch it).
    control_sockets_[socket.get()] = socket;
    std::string line;
    std::error_code ec;
    asio::steady_timer idle(io_, std::chrono::milliseconds(kPneControlIdleTimeout));
    idle.async_wait([weak = std::weak_ptr<ControlSocket>(socket)](const std::error_code& e) {
        std::error_code ignored;
        if (auto s = weak.lock(); s && !e) s->close(ignored);
    });
    auto n =
        co_await asio::async_read_until(*socket, asio::dynamic_buffer(line, kMaxPneControlLine),
                                        '\n', asio::redirect_error(asio::use_awaitable, ec));
    idle.cancel();
    if (ec) {
        control_sockets_.erase(socket.get());
        co_return;
    }
    slot->authenticated();
    line.resize(n > 0 ? n - 1 : 0);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::string answer;
    if (opt_.control_token) {  // a TCP endpoint: the line starts with the token
        auto rest = strip_control_token(line, *opt_.control_token);
        if (rest) {
            line = std::move(*rest);
        } else {
            control_refusals_.refused(peer);
            answer = unauthorized_json();
            line.clear();
        }
    }
    std::istringstream in(line);
    std::string cmd;
    in >> cmd;
    if (!answer.empty()) {
        // refused: answered UNAUTHORIZED below
    } else if (cmd == "neighbours") {
        spdlog::info("control request from {}: neighbours", peer);
        answer = neighbours_json(opt_.role.pne_id, pne_->neighbour_table(), mono_now());
    } else {
        spdlog::warn("control: unknown command '{}'", printable(cmd));
        answer = error_json("unknown command '" + printable(cmd) + "'; use: neighbours");
    }
    answer += "\n";
    co_await asio::async_write(*socket, asio::buffer(answer),
                               asio::redirect_error(asio::use_awaitable, ec));
    socket->shutdown(ControlSocket::shutdown_both, ec);
    socket->close(ec);
    control_sockets_.erase(socket.get());
}

void PneDaemon::fail_early(pb::FailureReason reason, const std::string& detail) {
    spdlog::error("{}: {}", reason_name(reason), detail);
    OutcomeEffect o;
    o.success = false;
    o.reason = reason;
    o.detail = detail;
    o.pnes.push_back(PneOutcome{opt_.role.pne_id, false, reason});
    early_ = o;
    finish();
}

void PneDaemon::finish() {
    // Let queued messages (an ErrorReport to the PN GW) leave before the loop stops.
    auto t = std::make_shared<asio::steady_timer>(io_, std::chrono::milliseconds(100));
    t->async_wait([this, t](const std::error_code&) { io_.stop(); });
}

asio::awaitable<std::optional<net::HostPort>> PneDaemon::discover_gateway() {
    const auto group = parse_address(opt_.device.discovery_group, "discovery_group");
    spdlog::info("looking for a PN GW on {} (CPNS Entity Discovery)", opt_.device.discovery_group);
    std::optional<net::HostPort> found;
    const Millis until = mono_now() + kDiscoveryTimeout;
    while (!found && !stopping_ && mono_now() < until) {
        // One round: send the request, collect answers until the repeat timer closes the socket.
        auto sock = std::make_shared<net::DiscoverySocket>(io_.get_executor(), group,
                                                           opt_.device.discovery_interface, false);
        // The request goes to this round's socket; anything else takes the usual path.
        PneEffects rest;
        for (auto& e : pne_->discover(mono_now())) {
            if (auto* s = std::get_if<SendEffect>(&e))
                sock->send_to_group(s->msg);  // padded: the answer may be as big
            else
                rest.push_back(std::move(e));
        }
        apply(std::move(rest));
        asio::steady_timer round(io_, std::chrono::milliseconds(kDiscoveryRepeat));
        round.async_wait([sock](const std::error_code& ec) {
            if (!ec) sock->close();
        });
        while (!found) {
            auto got = co_await sock->receive();
            if (net::error_of(got)) break;  // the round ended
            const auto& d = std::get<net::DiscoverySocket::Datagram>(got);
            const auto& env = d.envelope;
            if (!env.has_discovery_response()) continue;
            const auto& r = env.discovery_response();
            to_role(r.entity_id(), env, Protection::kClear,
                    Origin{true, d.from.address().to_string()});
            if (r.mode() != pb::MODE_PN_GW && r.mode() != pb::MODE_BOTH) continue;
            // The endpoint the role keeps for it: an answer fills an unknown one, never
            // replaces a known one (the role logs a disagreeing answer).
            const auto& known = pne_->neighbours();
            const auto it = known.find(r.entity_id());
            if (it == known.end()) continue;
            if (auto hp = net::parse_host_port(it->second.endpoint)) {
                spdlog::info("found PN GW {} at {}", r.entity_id(), printable(it->second.endpoint));
                found = hp;
            }
        }
        round.cancel();
        sock->close();
    }
    co_return found;
}

asio::awaitable<std::optional<net::LinkError>> PneDaemon::open_link(const std::string& identity,
                                                                    const SecretKey* psk) {
    auto socket = co_await net::connect_tcp(gw_addr_, net::kConnectTimeout);
    if (const auto* error = net::error_of(socket)) {
        spdlog::warn("{}", error->detail);
        co_return *error;
    }
    auto conn = std::make_shared<net::Connection>(std::get<net::tcp::socket>(std::move(socket)));
    if (psk) {
        const tls::ClientPsk credentials{identity, *psk};
        if (auto failed = co_await conn->client_handshake(*tls_, credentials, kTlsHandshakeTimeout,
                                                          net::PskLink::kPan)) {
            metrics_.tls_handshake("pan", failed->reason);
            spdlog::warn("PSK-TLS with the PN GW at {} as {} failed: {} ({})", gw_addr_.str(),
                         identity, tls::to_string(failed->tls), failed->detail);
            failed->detail = "PSK-TLS as " + identity +
                             " failed: " + std::string(tls::to_string(failed->tls)) + " (" +
                             failed->detail + ")";
            co_return failed;
        }
        metrics_.tls_handshake("pan", pb::REASON_NONE);
        spdlog::info("PSK-TLS with the PN GW at {} as {} ({})", gw_addr_.str(), identity,
                     conn->tls_summary());
    } else if (opt_.role.pan_secure) {
        spdlog::info("clear PAN link to the PN GW at {} (PAN configured as secure)",
                     gw_addr_.str());
    } else {
        spdlog::info(
            "clear PAN link to the PN GW at {} (PAN insecure: nothing secret is sent before "
            "PSK-TLS with the LocalEUKey)",
            gw_addr_.str());
    }
    links_.push_back(Link{conn, identity});
    asio::co_spawn(io_, read_link(conn), asio::detached);
    co_return std::nullopt;
}

asio::awaitable<void> PneDaemon::main() {
    // Step 0: find the PN GW.
    if (opt_.gw) {
        gw_addr_ = *opt_.gw;
    } else {
        std::error_code ec;
        const auto iface = asio::ip::make_address_v4(opt_.device.discovery_interface, ec);
        if (ec || !net::interface_subnet(iface)) {
            fail_early(pb::PEER_UNREACHABLE, "discovery_interface " +
                                                 opt_.device.discovery_interface +
                                                 " is not an address of this host");
            co_return;
        }
        auto found = co_await discover_gateway();
        if (!found) {
            fail_early(pb::PEER_UNREACHABLE,
                       "no PN GW answered CPNS Entity Discovery on " + opt_.device.discovery_group);
            co_return;
        }
        gw_addr_ = *found;
    }
    while (!stopping_) {
        // A PNE without UI on an insecure PAN speaks only inside PSK-TLS (pre-assigned key).
        const bool pre_tls = !opt_.role.pan_secure && !opt_.role.capabilities.enough_ui();
        const std::string identity = pre_tls ? preassigned_identity(opt_.role.pne_id) : "";
        if (auto failed =
                co_await open_link(identity, pre_tls ? &*opt_.role.preassigned_key : nullptr)) {
            if (task_.kind != PneTask::Kind::kRun) {
                fail_early(failed->reason, failed->detail);
                co_return;
            }
        } else {
            // Announce ourselves on the link; the PN GW's answer names it.
            gw_id_.clear();
            apply(pne_->discover(mono_now()));
            wait_.expires_after(std::chrono::milliseconds(kGatewayHelloTimeout));
            std::error_code ec;
            co_await wait_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
            if (stopping_) co_return;
            if (gw_id_.empty()) {
                if (task_.kind != PneTask::Kind::kRun) {
                    fail_early(pb::TIMEOUT, "the PN GW at " + gw_addr_.str() +
                                                " did not answer Entity Discovery");
                    co_return;
                }
                spdlog::warn("the PN GW at {} did not answer Entity Discovery; reconnecting",
                             gw_addr_.str());
                for (auto& l : links_) l.conn->close();
            } else if (task_.kind == PneTask::Kind::kSetup && !setup_started_) {
                setup_started_ = true;
                PneEffects fx =
                    pne_->start_setup(gw_id_, task_.setup_type, task_.invited, mono_now());
                metrics_.started_in(fx, "idle", FlowLabel::kPneInitiated, task_.setup_type,
                                    mono_now(), "pne");
                apply(std::move(fx));
                co_return;
            } else if (task_.kind == PneTask::Kind::kLeave && !setup_started_) {
                setup_started_ = true;
                apply(pne_->leave(task_.pn_id, mono_now()));
                co_return;
            } else {
                spdlog::info("ready: PNE {} linked to PN GW {}; waiting for invitations",
                             opt_.role.pne_id, gw_id_);
                // Stay until every link is gone, then reconnect.
                while (!links_.empty() && !stopping_) {
                    wait_.expires_after(std::chrono::hours(24));
                    co_await wait_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
                }
            }
        }
        if (stopping_) co_return;
        wait_.expires_after(std::chrono::milliseconds(kPneReconnectDelay));
        std::error_code ec;
        co_await wait_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
}

asio::awaitable<void> PneDaemon::read_link(std::shared_ptr<net::Connection> conn) {
    for (;;) {
        auto r = co_await conn->read();
        if (auto* env = std::get_if<pb::Envelope>(&r)) {
            if (env->has_discovery_response() && gw_id_.empty() &&
                (env->discovery_response().mode() == pb::MODE_PN_GW ||
                 env->discovery_response().mode() == pb::MODE_BOTH)) {
                gw_id_ = env->discovery_response().entity_id();
                conn->peer_id = gw_id_;
                wait_.cancel();
            }
            const std::string from = gw_id_.empty() ? env->sender_id() : gw_id_;
            spdlog::debug("{} -> {}: {} ({})", from, opt_.role.pne_id, message_name(*env),
                          conn->is_tls() ? "tls" : "clear");
            to_role(from, *env, conn->is_tls() ? Protection::kTls : Protection::kClear);
            continue;
        }
        if (auto* de = std::get_if<DecodeError>(&r))
            spdlog::warn("closing PAN link: {}", to_string(*de));
        else if (!stopping_)
            spdlog::info("PAN link closed ({})", std::get<net::LinkError>(r).detail);
        break;
    }
    conn->close();
    links_.erase(
        std::remove_if(links_.begin(), links_.end(), [&](const Link& l) { return l.conn == conn; }),
        links_.end());
    if (links_.empty() && !stopping_) {
        wait_.cancel();
        if (!gw_id_.empty()) apply(pne_->on_link_down(gw_id_, mono_now()));
    }
}

asio::awaitable<void> PneDaemon::start_tls(std::shared_ptr<const StartTlsEffect> effect) {
    const StartTlsEffect& eff = *effect;
    for (const auto& l : links_)
        if (l.identity == eff.identity && l.conn->is_open()) {
            apply(pne_->on_tls_established(eff.peer, mono_now()));
            co_return;
        }
    if (!co_await open_link(eff.identity, &eff.psk)) {
        links_.back().conn->peer_id = eff.peer;
        // A session with an earlier PN's LocalEUKey is not needed any more.
        for (const auto& l : links_) {
            const auto id = parse_psk_identity(l.identity);
            if (l.conn->is_tls() && l.identity != eff.identity && id &&
                id->kind == PskIdentity::Kind::kLocalEuKey)
                l.conn->close();
        }
        apply(pne_->on_tls_established(eff.peer, mono_now()));
    } else {
        // A refused or stripped upgrade ends the establishment; nothing continues in clear.
        apply(pne_->on_tls_failed(eff.peer, mono_now()));
    }
}

void PneDaemon::to_role(const std::string& from, const pb::Envelope& env, Protection protection,
                        const Origin& origin) {
    trace_->message("recv", env, from, protection);
    const LogScope scope("message", pn_id_of(env), from);
    PneEffects fx = pne_->on_message(from, env, protection, mono_now(), origin);
    if (env.has_setup_notify() || env.has_setup_invite())
        metrics_.started_in(
            fx, "idle", env.has_setup_notify() ? FlowLabel::kPneInitiated : FlowLabel::kGwInitiated,
            pb::SETUP_UNSPECIFIED, mono_now(), "pne");
    apply(std::move(fx));
    trace_->handled(env);
}

void PneDaemon::send_effect(const SendEffect& s) {
    trace_->message("send", s.msg, s.to, s.protection);
    std::shared_ptr<net::Connection> tls_conn, clear_conn;
    for (const auto& l : links_) {
        if (!l.conn->is_open()) continue;
        (l.conn->is_tls() ? tls_conn : clear_conn) = l.conn;
    }
    if (s.protection == Protection::kTls && !tls_conn) {
        spdlog::error(
            "refusing to send {} in clear: the PAN is insecure and no PSK-TLS session is up",
            message_name(s.msg));
        return;
    }
    auto conn = tls_conn ? tls_conn : clear_conn;
    if (!conn || !conn->send(s.msg))
        spdlog::warn("cannot send {}: no PAN link", message_name(s.msg));
    else {
        spdlog::debug("{} -> {}: {} ({})", opt_.role.pne_id, s.to == "*" ? "PAN" : s.to,
                      message_name(s.msg), conn->is_tls() ? "tls" : "clear");
        trace_->sent(s.msg, conn, io_.get_executor());
    }
}

void PneDaemon::outcome_effect(const OutcomeEffect& o) {
    trace_->outcome(o);
    const LogScope scope(o.operation.empty() ? "outcome" : o.operation, o.pn_id, "",
                         pb::FailureReason_Name(o.reason));
    if (o.operation.empty()) metrics_.finished("pne", o.success, o.reason, mono_now());
    const std::string json = outcome_json(opt_.role.pne_id, o);
    if (!o.operation.empty())
        spdlog::log(o.success ? spdlog::level::info : spdlog::level::warn, "{} {}: {}", o.operation,
                    o.pn_id, json);
    else if (o.success)
        spdlog::info("joined PN {}: {}", o.pn_id, json);
    else
        spdlog::warn("establishment failed: {}", json);
    // The one-shot tasks end with their own outcome: an establishment's for "setup", the
    // leave's for "leave".
    const bool mine =
        task_.kind == PneTask::Kind::kLeave ? o.operation == "leave" : o.operation.empty();
    if (task_.kind != PneTask::Kind::kRun && setup_started_ && !result_ && mine) {
        result_ = o;
        // A failed setup after hash_PNE withdraws from the PN (the server may have registered
        // this PNE): the process stays until the withdrawal is answered or times out.
        if (pne_->leaving()) {
            spdlog::info("withdrawing from {} before exiting", o.pn_id);
            return;
        }
        finish();
    } else if (task_.kind == PneTask::Kind::kSetup && result_ && o.operation == "withdraw") {
        finish();
    }
}

void PneDaemon::apply(PneEffects effects) {
    for (auto& e : effects) held_.push_back(std::move(e));
    carry_out();
    // The role's waits, and the next neighbour to age out (on_timer drops it).
    timer_.arm(std::min(pne_->next_deadline(), pne_->neighbour_expiry()));
}

// Carries out the held effects in order, stopping at a state save until it is durable.
void PneDaemon::carry_out() {
    while (!saving_ && !held_.empty()) {
        PneEffect e = std::move(held_.front());
        held_.pop_front();
        carry_out(e);
    }
}

void PneDaemon::carry_out(PneEffect& effect) {
    std::visit(
        Overloaded{
            [&](const SendEffect& s) { send_effect(s); },
            [&](StartTlsEffect& t) {
                asio::co_spawn(io_, start_tls(std::make_shared<const StartTlsEffect>(std::move(t))),
                               asio::detached);
            },
            [&](const OutcomeEffect& o) { outcome_effect(o); },
            [&](const StoreLocalKeyEffect& k) {
                spdlog::info("LocalEUKey for {} with {} received (kept in memory, never logged)",
                             k.pn_id, k.peer_id);
            },
            [&](const SessionKeyEffect& sk) {
                spdlog::info("SK_PNE agreed with the CPNS Server for {}", sk.pn_id);
                save_state(sk.pn_id);
            },
            [&](const MembershipEffect& m) {
                spdlog::info("membership of {} changed ({}): saving", m.pn_id,
                             pb::NoticeKind_Name(m.kind));
                save_state(m.pn_id);
            },
            [&](const TransitionEffect& t) { trace_->transition(t); },
        },
        effect);
}

void PneDaemon::save_state(const std::string& pn_id) {
    if (!state_) return;
    saving_ = true;
    state_->save(pne_->export_state(), [this, pn_id](const std::string& error) {
        asio::post(io_, [this, pn_id, error] { state_saved(pn_id, error); });
    });
}

// The save of the membership in `pn_id` ended. If it failed, the held outcome of that PN
// becomes a failure (INTERNAL_ERROR): this PNE would not know the PN after a restart.
void PneDaemon::state_saved(const std::string& pn_id, const std::string& error) {
    saving_ = false;
    if (!error.empty()) {
        spdlog::error("PN {}: this PNE could not save its state: {}", pn_id, error);
        for (auto& e : held_)
            if (auto* o = std::get_if<OutcomeEffect>(&e); o && o->pn_id == pn_id && o->success) {
                const std::string detail =
                    o->operation.empty()
                        ? "joined, but this PNE could not save the membership: " + error
                        : o->operation +
                              " recorded by the CPNS Server, but this PNE could not save its "
                              "state: " +
                              error;
                o->success = false;
                o->reason = pb::INTERNAL_ERROR;
                o->detail = detail;
                for (auto& p : o->pnes)
                    if (p.pne_id == opt_.role.pne_id) {
                        p.joined = false;
                        p.reason = pb::INTERNAL_ERROR;
                    }
            }
    }
    carry_out();
}

}  // namespace cpns::daemon
