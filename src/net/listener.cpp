#include "net/listener.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace cpns::net {

using tcp = asio::ip::tcp;

// Counts shared by the listener and its slots (a slot may outlive its listener).
struct Listener::State {
    std::size_t open = 0;
    std::map<std::string, std::size_t> per_source;
    // Connections not yet authenticated, oldest first: the candidates for eviction.
    std::list<std::weak_ptr<Entry>> pending;
};

struct Listener::Entry {
    std::weak_ptr<State> state;
    std::string source;
    bool counted = true;
    bool in_pending = true;
    std::list<std::weak_ptr<Entry>>::iterator pos;
    std::function<void()> evict;

    void leave_pending(State& st) {
        if (!in_pending) return;
        st.pending.erase(pos);
        in_pending = false;
    }
    void uncount() {
        if (!counted) return;
        counted = false;
        evict = nullptr;
        auto st = state.lock();
        if (!st) return;
        leave_pending(*st);
        --st->open;
        if (auto it = st->per_source.find(source); it != st->per_source.end() && --it->second == 0)
            st->per_source.erase(it);
    }
};

Listener::Slot& Listener::Slot::operator=(Slot&& other) noexcept {
    if (this != &other) {
        release();
        entry_ = std::move(other.entry_);
    }
    return *this;
}

void Listener::Slot::authenticated() {
    if (!entry_) return;
    if (auto st = entry_->state.lock()) entry_->leave_pending(*st);
    entry_->evict = nullptr;
}

void Listener::Slot::on_evict(std::function<void()> evict) {
    if (entry_ && entry_->in_pending) entry_->evict = std::move(evict);
}

void Listener::Slot::release() {
    if (entry_) entry_->uncount();
    entry_.reset();
}

const std::string& Listener::Slot::source() const {
    static const std::string none;
    return entry_ ? entry_->source : none;
}

std::optional<std::size_t> Listener::LogGate::pass() {
    ++held;
    const auto now = std::chrono::steady_clock::now();
    if (last != std::chrono::steady_clock::time_point{} &&
        now - last < std::chrono::milliseconds(kListenerLogInterval))
        return std::nullopt;
    last = now;
    return std::exchange(held, 0);
}

Listener::Listener(asio::any_io_executor ex, Limits limits, Hooks hooks)
    : acceptor_(ex),
      local_acceptor_(ex),
      backoff_timer_(ex),
      limits_(limits),
      hooks_(std::move(hooks)),
      state_(std::make_shared<State>()) {}

Listener::~Listener() = default;

std::size_t Listener::open() const {
    return state_->open;
}

std::size_t Listener::open_from(const std::string& source) const {
    auto it = state_->per_source.find(source);
    return it == state_->per_source.end() ? 0 : it->second;
}

std::optional<LinkError> Listener::listen(const HostPort& at, std::string_view what) {
    std::error_code ec;
    tcp::endpoint ep(asio::ip::make_address(at.host, ec), at.port);
    if (ec)
        return LinkError{pb::INTERNAL_ERROR,
                         std::string(what) + " '" + at.host + "' is not an IP address"};
    acceptor_.open(ep.protocol());
    acceptor_.set_option(tcp::acceptor::reuse_address(true));
    acceptor_.bind(ep, ec);
    if (ec)
        return LinkError{pb::INTERNAL_ERROR, "cannot listen on " + at.str() + ": " + ec.message()};
    acceptor_.listen();
    port_ = acceptor_.local_endpoint().port();
    return std::nullopt;
}

std::optional<Listener::Refusal> Listener::admit(const std::string& source) {
    State& st = *state_;
    if (open_from(source) >= limits_.max_per_source) return Refusal::kPerSource;
    if (st.open >= limits_.max_open) {
        // Make room by evicting the oldest connection that has not proved who it is.
        for (auto it = st.pending.begin(); it != st.pending.end(); ++it) {
            auto victim = it->lock();
            if (!victim || !victim->evict) continue;
            auto evict = std::move(victim->evict);
            const std::string victim_source = victim->source;
            victim->uncount();
            evict();
            ++stats_.evicted;
            if (hooks_.on_evicted)
                if (auto n = evicted_log_.pass()) hooks_.on_evicted(victim_source, *n);
            break;
        }
        if (st.open >= limits_.max_open) return Refusal::kFull;
    }
    return std::nullopt;
}

namespace {
// accept() failures that mean "no descriptors or memory now": retrying at once would spin.
// (Asio reports them in its own "asio.system" category, which std::errc does not match.)
bool out_of_resources(const std::error_code& ec) {
    if (ec.category() != asio::error::get_system_category() &&
        ec.category() != std::system_category())
        return false;
    const int e = ec.value();
    return e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM;
}
}  // namespace

std::optional<Listener::Slot> Listener::take_slot(const std::string& source) {
    if (auto refused = admit(source)) {
        ++(*refused == Refusal::kFull ? stats_.refused_full : stats_.refused_per_source);
        if (hooks_.on_refused)
            if (auto n = refused_log_.pass()) hooks_.on_refused(source, *refused, state_->open, *n);
        return std::nullopt;
    }
    auto entry = std::make_shared<Entry>();
    entry->state = state_;
    entry->source = source;
    State& st = *state_;
    ++st.open;
    ++stats_.accepted;
    ++st.per_source[source];
    entry->pos = st.pending.insert(st.pending.end(), entry);
    return Slot(std::move(entry));
}

asio::awaitable<bool> Listener::accept_failed(const std::error_code& ec, Millis& backoff) {
    if (hooks_.on_error)
        if (auto n = error_log_.pass()) hooks_.on_error(ec, *n);
    if (!out_of_resources(ec)) co_return true;
    backoff = backoff == 0 ? kAcceptBackoffMin : std::min(2 * backoff, kAcceptBackoffMax);
    backoff_timer_.expires_after(std::chrono::milliseconds(backoff));
    std::error_code ignored;
    co_await backoff_timer_.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    co_return acceptor_.is_open() || local_acceptor_.is_open();
}

asio::awaitable<void> Listener::run() {
    if (local_acceptor_.is_open()) {
        co_await run_local();
        co_return;
    }
    Millis backoff = 0;
    for (;;) {
        std::error_code ec;
        auto socket =
            co_await acceptor_.async_accept(asio::redirect_error(asio::use_awaitable, ec));
        if (ec) {
            if (!acceptor_.is_open()) co_return;
            if (!co_await accept_failed(ec, backoff)) co_return;
            continue;
        }
        backoff = 0;
        std::error_code peer_ec;
        const auto peer = socket.remote_endpoint(peer_ec);
        if (peer_ec) continue;  // already gone
        auto slot = take_slot(peer.address().to_string());
        if (!slot) {
            std::error_code ignored;
            socket.close(ignored);
            continue;
        }
        hooks_.on_socket(std::move(socket), std::move(*slot));
    }
}

asio::awaitable<void> Listener::run_local() {
    Millis backoff = 0;
    for (;;) {
        std::error_code ec;
        auto socket =
            co_await local_acceptor_.async_accept(asio::redirect_error(asio::use_awaitable, ec));
        if (ec) {
            if (!local_acceptor_.is_open()) co_return;
            if (!co_await accept_failed(ec, backoff)) co_return;
            continue;
        }
        backoff = 0;
        ucred cred{};
        socklen_t len = sizeof cred;
        long uid = -1;
        if (::getsockopt(socket.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0)
            uid = static_cast<long>(cred.uid);
        auto slot = take_slot("uid " + std::to_string(uid));
        if (!slot) {
            std::error_code ignored;
            socket.close(ignored);
            continue;
        }
        hooks_.on_local_socket(std::move(socket), std::move(*slot), uid);
    }
}

namespace {

std::string errno_text(int err) {
    return std::strerror(err);
}

// A socket at `path` that something answers on: a running daemon (connect() succeeds).
bool socket_answers(const std::string& path) {
    asio::io_context io;
    asio::local::stream_protocol::socket s(io);
    std::error_code ec;
    s.connect(asio::local::stream_protocol::endpoint(path), ec);
    return !ec;
}

}  // namespace

std::optional<LinkError> Listener::listen_unix(const std::string& path, std::string_view what) {
    const auto fail = [&](const std::string& text) {
        return LinkError{pb::INTERNAL_ERROR, std::string(what) + " unix:" + path + ": " + text};
    };
    if (path.empty() || path.front() != '/') return fail("the socket path must be absolute");
    if (path.size() >= sizeof(sockaddr_un::sun_path))
        return fail("the socket path is longer than " +
                    std::to_string(sizeof(sockaddr_un::sun_path) - 1) + " octets");
    const std::string dir = path.substr(0, std::max<std::size_t>(1, path.rfind('/')));
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0) {
        if (errno != ENOENT) return fail("cannot use directory " + dir + ": " + errno_text(errno));
        if (::mkdir(dir.c_str(), 0750) != 0)
            return fail("cannot create directory " + dir + ": " + errno_text(errno));
    } else if (!S_ISDIR(st.st_mode)) {
        return fail(dir + " is not a directory");
    }
    if (::lstat(path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            return fail("the path exists and is not a socket; remove it or choose another path");
        if (socket_answers(path))
            return fail("another process is listening on it (is the daemon running already?)");
        if (::unlink(path.c_str()) != 0)
            return fail("cannot remove the stale socket: " + errno_text(errno));
    }
    std::error_code ec;
    local_acceptor_.open(asio::local::stream_protocol(), ec);
    if (ec) return fail(ec.message());
    // Created 0660 (never wider, not even for an instant), then set exactly and checked.
    const mode_t old = ::umask(0117);
    local_acceptor_.bind(asio::local::stream_protocol::endpoint(path), ec);
    ::umask(old);
    if (ec) {
        local_acceptor_.close();
        return fail("cannot bind: " + ec.message());
    }
    if (::chmod(path.c_str(), 0660) != 0 || ::lstat(path.c_str(), &st) != 0 ||
        !S_ISSOCK(st.st_mode) || (st.st_mode & 07777) != 0660) {
        const int err = errno;
        local_acceptor_.close();
        return fail("cannot give the socket mode 0660: " + errno_text(err));
    }
    local_acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
        local_acceptor_.close();
        ::unlink(path.c_str());
        return fail("cannot listen: " + ec.message());
    }
    unix_path_ = path;
    unix_inode_ = st.st_ino;
    return std::nullopt;
}

void Listener::close() {
    std::error_code ec;
    acceptor_.close(ec);
    if (local_acceptor_.is_open()) {
        local_acceptor_.close(ec);
        // Removed only if it is still the socket we bound (not one a later daemon made).
        struct stat st {};
        if (!unix_path_.empty() && ::lstat(unix_path_.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) &&
            st.st_ino == unix_inode_)
            ::unlink(unix_path_.c_str());
    }
    backoff_timer_.cancel();
}

}  // namespace cpns::net
