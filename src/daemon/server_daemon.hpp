// cpns-server: the CPNS Server role behind a PSK-TLS listener for PN GWs.
#pragma once

#include <map>
#include <memory>

#include "core/server.hpp"
#include "daemon/common.hpp"
#include "net/connection.hpp"

namespace cpns::daemon {

// How long a PN GW has to complete its TLS handshake.
inline constexpr Millis kGwHandshakeTimeout = 10'000;
// Connections from PN GWs open at once.
inline constexpr std::size_t kMaxGwConnections = 10'000;

struct ServerOptions {
    std::string id = "cpns-server";
    net::HostPort listen{"127.0.0.1", 7000};
    std::string entities_file;  // provisioning: [[entity]] id, kind, eukey, status
    std::string keylog;
    std::string ready_file;
};

// Loads a provisioning file into a directory. ConfigError on any bad entry.
void load_entities(const std::string& path, MemoryDirectory& dir);

class ServerDaemon {
public:
    ServerDaemon(asio::io_context& io, ServerOptions options);
    void start();  // binds and listens; ConfigError if it cannot
    void stop();
    std::uint16_t port() const { return port_; }
    const Counters& link_counters() const { return links_; }

private:
    asio::awaitable<void> accept_loop();
    asio::awaitable<void> serve(std::shared_ptr<net::Connection> conn);
    void apply(Effects effects);

    asio::io_context& io_;
    ServerOptions opt_;
    MemoryDirectory dir_;
    OsRandom random_;
    std::unique_ptr<Server> server_;
    std::optional<tls::TlsContext> tls_;
    net::tcp::acceptor acceptor_;
    RoleTimer timer_;
    std::map<std::string, std::shared_ptr<net::Connection>> gws_;
    std::size_t connections_ = 0;
    Counters links_;  // refused PN GW links, by reason
    std::uint16_t port_ = 0;
    std::map<std::pair<std::string, std::string>, SecretKey> session_keys_;
};

}  // namespace cpns::daemon
