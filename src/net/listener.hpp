// A TCP or Unix domain socket listener: binds an address (or a socket path), accepts until
// closed, and bounds the connections its owner serves at once — in total and per source (IP
// address; for a Unix socket the peer's uid) — so that neither a flood of idle connections nor
// running out of file descriptors can take the daemon down. The one accept loop of the daemons.
//
// Bounds and what happens at them:
//  - `max_open` connections at once. When full, the oldest connection that has not yet
//    proved who it is (no Slot::authenticated() yet, and evictable: Slot::on_evict set) is
//    evicted to make room, so honest newcomers still get through a flood of half-open or
//    slow connections; if there is none, the new connection is refused (closed at once).
//  - `max_per_source` connections at once from one IP address; more are refused.
//  - accept() failing for lack of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM):
//    the loop waits kAcceptBackoffMin, doubling up to kAcceptBackoffMax, instead of spinning.
//  - on_refused / on_error are called at most once per kListenerLogInterval each, with the
//    number of events folded into that call, so a flood cannot flood the log.
#pragma once

#include <asio.hpp>
#include <chrono>
#include <cstddef>
#include <functional>
#include <limits>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "core/role.hpp"
#include "net/address.hpp"
#include "net/link_error.hpp"

namespace cpns::net {

// For a listener without a bound on its connections.
inline constexpr std::size_t kUnbounded = std::numeric_limits<std::size_t>::max();
// Waits of the accept loop after running out of descriptors or memory: first, and longest.
inline constexpr Millis kAcceptBackoffMin = 100;
inline constexpr Millis kAcceptBackoffMax = 1'000;
// Refusals and accept errors are reported at most once per this interval (with a count).
inline constexpr Millis kListenerLogInterval = 1'000;

class Listener {
  public:
    struct Limits {
        std::size_t max_open = kUnbounded;
        std::size_t max_per_source = kUnbounded;
    };

    enum class Refusal { kFull, kPerSource };

    struct State;
    struct Entry;

    // One accepted connection, counted against the limits for as long as the Slot lives (or
    // until the connection is evicted).
    class Slot {
      public:
        Slot() = default;
        explicit Slot(std::shared_ptr<Entry> entry) : entry_(std::move(entry)) {}
        Slot(Slot&&) noexcept = default;
        Slot& operator=(Slot&& other) noexcept;
        Slot(const Slot&) = delete;
        Slot& operator=(const Slot&) = delete;
        ~Slot() { release(); }

        // The peer proved who it is: it is never evicted to make room.
        void authenticated();
        // How to evict this connection (e.g. close it) when the listener is full. A slot
        // without it is never evicted.
        void on_evict(std::function<void()> evict);
        // Stops counting now (also done by the destructor).
        void release();
        const std::string& source() const;

      private:
        std::shared_ptr<Entry> entry_;
    };

    struct Hooks {
        // Each accepted socket within the limits, with the slot that counts it.
        std::function<void(asio::ip::tcp::socket, Slot)> on_socket;
        // The same for a Unix domain socket listener (listen_unix), with the peer's uid
        // (SO_PEERCRED; -1 if unknown). Its slot's source is "uid N".
        std::function<void(asio::local::stream_protocol::socket, Slot, long uid)> on_local_socket;
        // Connections dropped at once (full, or too many from one source): the last one's
        // source and why, how many are open, and how many refusals this call stands for.
        std::function<void(const std::string& source, Refusal why, std::size_t open,
                           std::size_t count)>
            on_refused;
        // accept() failed while the listener is open (it goes on accepting): the last error and
        // how many failures this call stands for.
        std::function<void(const std::error_code&, std::size_t count)> on_error;
        // A not yet authenticated connection from `source` was evicted to make room.
        std::function<void(const std::string& source, std::size_t count)> on_evicted;
    };

    Listener(asio::any_io_executor ex, Limits limits, Hooks hooks);
    ~Listener();

    // Binds `at` and listens. The error's detail names the address as `what` when it is not
    // an IP address ("pan_listen '...' is not an IP address"), else "cannot listen on ...".
    std::optional<LinkError> listen(const HostPort& at, std::string_view what);
    std::uint16_t port() const { return port_; }
    // Binds a Unix domain socket at `path`, readable and writable by its owner and group only
    // (mode 0660: created under a umask, then chmod, then checked with lstat). The directory
    // is created (mode 0750) if missing; its parent must exist. A path that exists and is not
    // a socket is refused; an existing socket is replaced only if nothing answers on it. The
    // socket is removed by close(). The error's detail names `what` and the path.
    std::optional<LinkError> listen_unix(const std::string& path, std::string_view what);
    const std::string& unix_path() const { return unix_path_; }
    // Accepts until close().
    asio::awaitable<void> run();
    void close();

    // What the listener did since it was created (for the daemons' metrics).
    struct Stats {
        std::uint64_t accepted = 0, refused_full = 0, refused_per_source = 0, evicted = 0;
    };
    const Stats& stats() const { return stats_; }
    std::size_t open() const;
    std::size_t open_from(const std::string& source) const;
    const Limits& limits() const { return limits_; }
    // A new per-source bound (configuration reload): applies to the next connections; those
    // already open stay.
    void set_max_per_source(std::size_t n) { limits_.max_per_source = n; }

  private:
    // Reports at most once per kListenerLogInterval; counts what it holds back.
    struct LogGate {
        std::chrono::steady_clock::time_point last{};
        std::size_t held = 0;
        std::optional<std::size_t> pass();  // the count to report now, or nullopt
    };

    // A slot for `source`, or why not (after evicting if full).
    std::optional<Refusal> admit(const std::string& source);
    // Counts an accepted connection from `source`, or refuses it (closing nothing: the caller
    // closes the socket when it gets no slot).
    std::optional<Slot> take_slot(const std::string& source);
    asio::awaitable<void> run_local();
    // Waits after an accept error; false when the listener was closed meanwhile.
    asio::awaitable<bool> accept_failed(const std::error_code& ec, Millis& backoff);

    asio::ip::tcp::acceptor acceptor_;
    asio::local::stream_protocol::acceptor local_acceptor_;
    std::string unix_path_;
    std::uint64_t unix_inode_ = 0;  // of the socket we bound: close() removes only that one
    asio::steady_timer backoff_timer_;
    Limits limits_;
    Hooks hooks_;
    std::shared_ptr<State> state_;
    LogGate refused_log_, error_log_, evicted_log_;
    std::uint16_t port_ = 0;
    Stats stats_;
};

}  // namespace cpns::net
