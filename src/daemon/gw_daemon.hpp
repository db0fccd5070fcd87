// cpns-gw: the PN GW role between the PAN (PNEs over TCP, in clear or PSK-TLS, and UDP
// multicast discovery) and the CPNS Server (TLS 1.3 external PSK), with a local control
// endpoint for operators ("invite", "status").
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <vector>

#include "core/gateway.hpp"
#include "core/throttle.hpp"
#include "daemon/common.hpp"
#include "daemon/metrics.hpp"
#include "daemon/state_file.hpp"
#include "daemon/trace.hpp"
#include "net/connection.hpp"
#include "net/discovery.hpp"
#include "net/listener.hpp"
#include "net/psk_client_link.hpp"

namespace cpns::daemon {

// From accept to the end of a PNE's TLS handshake (or its first octet on a clear link).
inline constexpr Millis kPanHandshakeTimeout = 10'000;
inline constexpr Millis kServerReconnectMin = 500;     // first retry after a lost server link
inline constexpr Millis kServerReconnectMax = 30'000;  // retries back off up to this
// PAN connections open at once: the default of `pan_max_connections`, and the most that key
// may say.
inline constexpr std::size_t kMaxPanConnections = 512;
inline constexpr std::size_t kMaxPanConnectionsLimit = 16'384;
// Default of `pan_max_connections_per_source` (an eighth of kMaxPanConnections).
inline constexpr std::size_t kDefaultPanConnectionsPerSource = 64;
inline constexpr std::size_t kMaxControlLine = 4096;
// Effects held back behind a state save that is not yet durable; past this many the event loop
// waits for the write instead (a slow disk slows the PN GW down, it does not grow its memory).
inline constexpr std::size_t kMaxHeldEffects = 4096;
// Control connections open at once (a waiting "invite" holds one), and per source by default
// (`control_max_connections_per_source`).
inline constexpr std::size_t kMaxControlConnections = 64;
inline constexpr std::size_t kDefaultControlConnectionsPerSource = 32;
// How long a control connection may take to send its request line.
inline constexpr Millis kControlIdleTimeout = 10'000;

// The PN GW role's configuration (its ID, EUKey, server ID, PAN links, capabilities) and
// what the daemon around it needs.
struct GwOptions {
    GatewayConfig role;
    net::HostPort server{"127.0.0.1", 7000};
    net::HostPort pan_listen{"127.0.0.1", 7100};
    // The control endpoint: a Unix domain socket by default (control_address_from); a TCP one
    // needs control_token (from control_token_file).
    ControlAddress control;
    std::optional<SecretKey> control_token;
    DeviceOptions device;    // discovery_group "" = off
    std::string ready_file;  // "pan=host:port control=host:port|unix:PATH"
    // PAN connections open at once (`pan_max_connections`).
    std::size_t pan_max_connections = kMaxPanConnections;
    // Connections open at once from one IP address, per listener (the PAN's at most
    // pan_max_connections).
    std::size_t pan_max_connections_per_source = kDefaultPanConnectionsPerSource;
    std::size_t control_max_connections_per_source = kDefaultControlConnectionsPerSource;
};

// `control_override`: a control endpoint from the command line (--control-listen), used
// instead of the file's (and of the default, which then need not exist).
GwOptions gw_options_from(const Config& c, const std::string& control_override = "");

class GwDaemon {
  public:
    GwDaemon(asio::io_context& io, GwOptions options);
    void start();
    void stop();
    std::uint16_t pan_port() const { return pan_port_; }
    std::uint16_t control_port() const { return control_port_; }
    std::uint16_t metrics_port() const { return metrics_port_; }
    // Configuration reload: the per-source connection bounds of the PAN and control listeners.
    void set_connection_limits(std::size_t pan_per_source, std::size_t control_per_source);

  private:
    using ControlSocket = asio::generic::stream_protocol::socket;

    net::PskClientLink::Options server_link_options() const;
    net::PskClientLink::Hooks server_link_hooks();
    void log_server_down(const net::LinkError& error, net::PskClientLink::Stage stage) const;
    net::Listener::Hooks pan_hooks();
    net::Listener::Hooks control_hooks();
    void start_discovery();
    asio::awaitable<void> pan_serve(std::shared_ptr<net::Connection> conn);
    asio::awaitable<bool> pan_handshake(const std::shared_ptr<net::Connection>& conn,
                                        Millis timeout);
    bool bind_sender(net::Connection& conn, const pb::Envelope& env);
    asio::awaitable<void> discovery_loop();
    void control_change(const std::shared_ptr<ControlSocket>& socket, const std::string& cmd,
                        std::istringstream& in);
    void control_accepted(std::shared_ptr<ControlSocket> sock, net::Listener::Slot slot,
                          std::string peer);
    asio::awaitable<void> control_serve(std::shared_ptr<ControlSocket> socket,
                                        std::shared_ptr<net::Listener::Slot> slot,
                                        std::string peer);
    void apply(GatewayEffects effects);
    void carry_out();
    void carry_out(GatewayEffect& effect);
    void state_saved(std::uint64_t save, const std::string& pn_id, const std::string& error);
    void to_role(const std::string& from, const pb::Envelope& env, Protection protection,
                 const Origin& origin = {});
    void send_effect(const SendEffect& s);
    void outcome_effect(const OutcomeEffect& o);
    void send_to_pne(const SendEffect& s);
    void link_lost(const std::string& pne, const std::shared_ptr<net::Connection>& conn);
    pb::GwStatus status() const;
    void answer(const std::shared_ptr<ControlSocket>& socket, std::string line);

    asio::io_context& io_;
    GwOptions opt_;
    OsRandom random_;
    std::unique_ptr<Gateway> gw_;
    std::unique_ptr<RoleTrace> trace_;
    std::optional<tls::TlsContext> server_tls_, pan_tls_;
    net::Listener pan_listener_, control_listener_;
    std::unique_ptr<net::DiscoverySocket> discovery_;
    RoleTimer timer_;
    std::shared_ptr<net::Connection> server_conn_;
    pb::FailureReason server_down_reason_ = pb::PEER_UNREACHABLE;
    std::map<std::string, std::vector<std::shared_ptr<net::Connection>>> pan_conns_;
    std::map<std::string, std::vector<std::shared_ptr<ControlSocket>>> waiters_;  // by PN ID
    // The listener slots of control connections that sent a request, until answered.
    std::map<const ControlSocket*, std::shared_ptr<net::Listener::Slot>> control_slots_;
    std::optional<net::udp::endpoint> udp_reply_to_;
    std::size_t udp_request_size_ = 0;  // an answer by datagram is never bigger
    std::string udp_reply_peer_;
    bool stopping_ = false;
    std::uint16_t pan_port_ = 0, control_port_ = 0;
    std::unique_ptr<net::PskClientLink> server_link_;
    std::unique_ptr<StateWriter> state_;
    // Effects held back, in order, while a saved PN Inventory is not yet durable: nothing
    // about a PN (control answer, result to a PNE) is reported before its state is on disk.
    std::deque<GatewayEffect> held_;
    bool saving_ = false;
    std::uint64_t save_ = 0;  // the save in progress (its completion may also come by flush())
    std::string pn_saving_;   // the PN whose inventory it saves
    std::shared_ptr<std::string> save_error_;  // its result, set by the writer thread
    RefusalLog control_refusals_;              // requests without the right token
    PskThrottle throttle_;                     // failed PSK attempts per (source, PAN identity)
    DaemonMetrics metrics_{"PN GW"};           // Prometheus metrics (--metrics)
    MetricsServer metrics_server_{io_, metrics_.registry()};
    std::uint16_t metrics_port_ = 0;
};

}  // namespace cpns::daemon
