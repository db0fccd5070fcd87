// The PSK-TLS client link to a server (PN GW Authentication, TLS 1.3 external PSK): connects,
// runs the handshake, reads frames and hands them on, and tries again with back-off when the
// link could not be set up or was lost. Used by cpns-gw and cpns-load.
#pragma once

#include <functional>
#include <memory>

#include "net/connection.hpp"

namespace cpns::net {

class PskClientLink {
  public:
    // Where a link went down.
    enum class Stage { kConnect, kHandshake, kLost };

    struct Options {
        HostPort server;
        tls::ClientPsk psk;
        Millis handshake_timeout = 10'000;
        // The first wait after a failure; it doubles up to retry_max and starts again at
        // retry_min once a handshake succeeds.
        Millis retry_min = 500;
        Millis retry_max = 30'000;
        std::string peer = "the server";  // names it in details ("bad frame from the server")
    };
    struct Hooks {
        // The link is up and authenticated.
        std::function<void(const std::shared_ptr<Connection>&)> on_up;
        std::function<void(const pb::Envelope&)> on_message;
        // The link could not be set up (its failure's reason per PskLink::kGatewayToServer)
        // or was lost (PEER_UNREACHABLE; also when stop() closed it). Returns whether to try
        // again (never after stop()).
        std::function<bool(const LinkError&, Stage)> on_down;
    };

    PskClientLink(asio::any_io_executor ex, const tls::TlsContext& tls, Options options,
                  Hooks hooks);
    // Keeps the link up until stop() or until on_down says to give up.
    asio::awaitable<void> run();
    void stop();
    // The authenticated connection; null while the link is down.
    const std::shared_ptr<Connection>& connection() const { return conn_; }

  private:
    // Connects and authenticates; sets conn_ or says where and why it failed.
    asio::awaitable<std::optional<std::pair<LinkError, Stage>>> set_up();
    // Reads until the link ends; the error that ended it.
    asio::awaitable<LinkError> read_all();

    const tls::TlsContext& tls_;
    Options opt_;
    Hooks hooks_;
    asio::steady_timer retry_;
    std::shared_ptr<Connection> conn_;
    bool stopping_ = false;
};

}  // namespace cpns::net
