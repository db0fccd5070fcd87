// A TCP listener: binds an address, accepts until closed, and bounds the connections its
// owner serves at once. The one accept loop of the daemons.
#pragma once

#include <asio.hpp>
#include <cstddef>
#include <functional>
#include <limits>
#include <optional>
#include <string_view>
#include <utility>

#include "net/address.hpp"
#include "net/link_error.hpp"

namespace cpns::net {

// For a listener without a bound on its connections.
inline constexpr std::size_t kUnbounded = std::numeric_limits<std::size_t>::max();

class Listener {
  public:
    struct Hooks {
        // Each accepted socket, while fewer than `max_open` connections are held (see hold()).
        std::function<void(asio::ip::tcp::socket)> on_socket;
        // A socket dropped at once because `max_open` are held; gets that number.
        std::function<void(std::size_t open)> on_refused;
        // An accept that failed while the listener is open (it goes on accepting).
        std::function<void(const std::error_code&)> on_error;
    };

    // One connection counted against `max_open` for as long as it lives.
    class Hold {
      public:
        explicit Hold(std::size_t& open) : open_(&open) { ++*open_; }
        Hold(Hold&& other) noexcept : open_(std::exchange(other.open_, nullptr)) {}
        Hold(const Hold&) = delete;
        Hold& operator=(const Hold&) = delete;
        Hold& operator=(Hold&&) = delete;
        ~Hold() {
            if (open_) --*open_;
        }

      private:
        std::size_t* open_;
    };

    Listener(asio::any_io_executor ex, std::size_t max_open, Hooks hooks);

    // Binds `at` and listens. The error's detail names the address as `what` when it is not
    // an IP address ("pan_listen '...' is not an IP address"), else "cannot listen on ...".
    std::optional<LinkError> listen(const HostPort& at, std::string_view what);
    std::uint16_t port() const { return port_; }
    // Accepts until close().
    asio::awaitable<void> run();
    void close();

    Hold hold() { return Hold(open_); }
    std::size_t open() const { return open_; }

  private:
    asio::ip::tcp::acceptor acceptor_;
    std::size_t max_open_;
    Hooks hooks_;
    std::size_t open_ = 0;
    std::uint16_t port_ = 0;
};

}  // namespace cpns::net
