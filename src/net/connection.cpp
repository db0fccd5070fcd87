#include "net/connection.hpp"

#include <algorithm>
#include <array>
#include <span>

namespace cpns::net {

namespace {
auto ms(Millis v) {
    return std::chrono::milliseconds(v);
}

// Cancels the socket's operations when `timeout` passes unless disarmed first.
class Deadline {
  public:
    Deadline(tcp::socket& socket, Millis timeout)
        : timer_(socket.get_executor(), ms(timeout)), state_(std::make_shared<State>()) {
        timer_.async_wait([&socket, st = state_](const std::error_code& ec) {
            if (ec || st->done) return;
            st->done = true;
            st->timed_out = true;
            std::error_code ignored;
            socket.cancel(ignored);
        });
    }
    ~Deadline() { disarm(); }
    void disarm() {
        if (!state_->done) {
            state_->done = true;
            timer_.cancel();
        }
    }
    bool expired() const { return state_->timed_out; }

  private:
    struct State {
        bool done = false;
        bool timed_out = false;
    };
    asio::steady_timer timer_;
    std::shared_ptr<State> state_;
};

// The read buffer of this thread, shared by all its connections. Each read fills it and its
// bytes are handed on (to the TLS engine or the frame reader) before the reading coroutine
// suspends again; the io_context runs one coroutine at a time per thread, so no two reads
// overlap in it. A connection thus holds no 16 KiB buffer of its own while it waits.
std::span<std::uint8_t> read_buffer() {
    thread_local std::array<std::uint8_t, kReadChunk> buffer{};
    return buffer;
}
}  // namespace

Connection::Connection(tcp::socket socket) : socket_(std::move(socket)) {
    std::error_code ec;
    auto ep = socket_.remote_endpoint(ec);
    if (!ec) {
        source_ = ep.address().to_string();
        remote_ = source_ + ":" + std::to_string(ep.port());
    }
    socket_.set_option(tcp::no_delay(true), ec);
    // Reads are a readiness wait then a non-blocking read (read_some): a spurious wake-up
    // must give would_block, never block the thread.
    socket_.non_blocking(true, ec);
}

Connection::~Connection() {
    // Nothing is being written (a write in progress holds a reference): only close_notify is
    // left to send, without waiting.
    if (open_ && tls_ && tls_->handshake_done() && !tls_->failed()) {
        tls_->close();
        if (tls_->has_output()) {
            std::error_code ec;
            socket_.non_blocking(true, ec);
            Bytes b = tls_->take_output();
            socket_.send(asio::buffer(b), 0, ec);
        }
    }
    open_ = false;
    finish();
}

void Connection::hold(Listener::Slot slot) {
    slot_ = std::move(slot);
    slot_.on_evict([weak = weak_from_this()] {
        if (auto self = weak.lock()) self->close();
    });
}

std::string Connection::tls_summary() const {
    if (!tls_ || !tls_->handshake_done()) return "clear";
    std::string s = tls_->version() + " " + tls_->cipher();
    const auto g = tls_->key_exchange_group();
    if (!g.empty()) s += " " + g;
    return s;
}

awaitable<std::optional<LinkError>> Connection::client_handshake(const tls::TlsContext& ctx,
                                                                 const tls::ClientPsk& psk,
                                                                 Millis timeout, PskLink link) {
    try {
        tls_.emplace(ctx, tls::ClientPsk{psk.identity, psk.key});
    } catch (const std::exception& e) {  // an identity or key the engine refuses
        co_return LinkError{to_reason(tls::TlsError::kNone, link), e.what()};
    }
    co_return co_await handshake(timeout, link);
}

awaitable<std::optional<LinkError>> Connection::server_handshake(const tls::TlsContext& ctx,
                                                                 Millis timeout, PskLink link,
                                                                 const tls::PskLookup& lookup,
                                                                 const PskRetryLookup& retry) {
    tls_.emplace(ctx, lookup);
    co_return co_await handshake(timeout, link, &ctx, retry ? &retry : nullptr);
}

awaitable<std::optional<LinkError>> Connection::handshake(Millis timeout, PskLink link,
                                                          const tls::TlsContext* ctx,
                                                          const PskRetryLookup* retry) {
    Deadline deadline(socket_, timeout);
    std::error_code ec;
    // PskRetry: the client's first flight, kept until the server answers.
    Bytes hello;
    bool retry_open = ctx && retry;
    bool expired_key = false;
    for (;;) {
        if (tls_->has_output()) {
            retry_open = false;  // the server answered: the ClientHello was taken
            Bytes out = tls_->take_output();
            co_await asio::async_write(socket_, asio::buffer(out),
                                       asio::redirect_error(asio::use_awaitable, ec));
            if (ec) break;
        }
        if (tls_->failed() || tls_->handshake_done()) break;
        const ByteView got = co_await read_some(ec);
        if (ec) break;
        tls_->feed(got);
        if (!retry_open) continue;
        if (hello.size() + got.size() > kMaxRetainedHello) {
            retry_open = false;
            continue;
        }
        hello.insert(hello.end(), got.begin(), got.end());
        if (!tls_->failed() || tls_->error() != tls::TlsError::kBadPsk) continue;
        retry_open = false;
        const auto second = (*retry)(tls_->peer_identity());
        if (!second) continue;  // the first engine's alert goes out
        tls::TlsEngine engine(
            *ctx, [key = second->key](std::string_view) { return std::optional<SecretKey>(key); });
        engine.feed(hello);
        if (second->accept) {
            tls_.emplace(std::move(engine));  // its answer replaces the first engine's alert
            used_retry_psk_ = true;
            continue;
        }
        // Recognised only: the client gets the first engine's alert, as for any wrong key.
        expired_key = !engine.failed();
    }
    const bool expired = deadline.expired();
    deadline.disarm();
    if (tls_->handshake_done() && !tls_->failed()) {
        // Application data that arrived with the last flight.
        Bytes early = tls_->read();
        if (!early.empty()) reader_.feed(early);
        co_return std::nullopt;
    }
    LinkError error{to_reason(tls_->error(), link), tls_->error_detail(), tls_->error()};
    if (expired_key) {
        error.reason = pb::KEY_EXPIRED;
        error.detail = "the peer proved its previous EUKey, whose grace period has ended";
    }
    if (!tls_->failed())
        error.detail = expired ? "TLS handshake timed out" : "connection lost during TLS handshake";
    close();
    co_return error;
}

awaitable<std::optional<bool>> Connection::sniff_tls(Millis timeout) {
    Deadline deadline(socket_, timeout);
    std::error_code ec;
    std::array<std::uint8_t, 1> first{};
    for (;;) {
        co_await socket_.async_wait(tcp::socket::wait_read,
                                    asio::redirect_error(asio::use_awaitable, ec));
        if (ec) co_return std::nullopt;
        const std::size_t n = socket_.receive(asio::buffer(first), tcp::socket::message_peek, ec);
        if (ec == asio::error::would_block) continue;  // a spurious wake-up
        if (ec || n == 0) co_return std::nullopt;
        co_return first[0] == 0x16;
    }
}

awaitable<ByteView> Connection::read_some(std::error_code& ec) {
    for (;;) {
        co_await socket_.async_wait(tcp::socket::wait_read,
                                    asio::redirect_error(asio::use_awaitable, ec));
        if (ec) co_return ByteView{};
        // Nothing suspends from here until the caller has used the bytes.
        const auto buffer = read_buffer();
        const std::size_t n = socket_.read_some(asio::buffer(buffer.data(), buffer.size()), ec);
        if (ec == asio::error::would_block) continue;  // a spurious wake-up
        if (ec) co_return ByteView{};
        co_return ByteView(buffer.data(), n);
    }
}

awaitable<ReadResult> Connection::read() {
    for (;;) {
        if (auto r = reader_.next()) {
            // The next frame starts with the octets already buffered, if any.
            if (reader_.buffered() == 0)
                frame_started_.reset();
            else
                frame_started_ = std::chrono::steady_clock::now();
            if (std::holds_alternative<pb::Envelope>(*r))
                co_return std::get<pb::Envelope>(std::move(*r));
            co_return std::get<DecodeError>(*r);
        }
        if (!open_) co_return LinkError{pb::PEER_UNREACHABLE, "connection closed"};
        if (tls_ && tls_->error() == tls::TlsError::kPeerClosed)
            co_return LinkError{pb::PEER_UNREACHABLE, "peer closed the TLS session"};
        std::error_code ec;
        // Only inside a frame; an idle link waits without one (nor its space in this frame).
        std::unique_ptr<Deadline> deadline;
        if (frame_started_) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                *frame_started_ + ms(kFrameTimeout) - std::chrono::steady_clock::now());
            deadline = std::make_unique<Deadline>(socket_, std::max<Millis>(0, left.count()));
        }
        // The wait, then the read, here rather than through read_some(): an idle link waits
        // with one coroutine frame fewer.
        co_await socket_.async_wait(tcp::socket::wait_read,
                                    asio::redirect_error(asio::use_awaitable, ec));
        ByteView got;
        if (!ec) {
            const auto buffer = read_buffer();
            got = ByteView(buffer.data(),
                           socket_.read_some(asio::buffer(buffer.data(), buffer.size()), ec));
            if (ec == asio::error::would_block) continue;  // a spurious wake-up
        }
        if (deadline && deadline->expired()) {
            close();
            co_return LinkError{pb::TIMEOUT, "a frame did not arrive whole within " +
                                                 std::to_string(kFrameTimeout / 1000) + " s"};
        }
        deadline.reset();
        if (ec) {
            close();
            co_return LinkError{pb::PEER_UNREACHABLE, ec == asio::error::eof
                                                          ? "peer closed the connection"
                                                          : ec.message()};
        }
        if (!frame_started_) frame_started_ = std::chrono::steady_clock::now();
        if (auto error = take_in(got)) co_return std::move(*error);
    }
}

std::optional<LinkError> Connection::take_in(ByteView bytes) {
    if (!tls_) {
        reader_.feed(bytes);
        return std::nullopt;
    }
    tls_->feed(bytes);
    flush_tls();
    reader_.feed(tls_->read());
    if (!tls_->failed()) return std::nullopt;
    LinkError error{
        pb::PEER_UNREACHABLE,
        "TLS: " + std::string(tls::to_string(tls_->error())) + " " + tls_->error_detail(),
        tls_->error()};
    close();
    return error;
}

bool Connection::send(const pb::Envelope& env) {
    if (!open_) return false;
    Bytes frame = encode_frame(env);
    if (tls_) {
        if (!tls_->write(frame)) return false;
        flush_tls();
    } else {
        queue_raw(std::move(frame));
    }
    return open_;
}

void Connection::flush_tls() {
    if (tls_ && tls_->has_output()) queue_raw(tls_->take_output());
}

void Connection::queue_raw(Bytes bytes) {
    if (finished_ || bytes.empty()) return;
    queued_ += bytes.size();
    if (queued_ > kMaxQueuedBytes) {  // the peer is too slow: give up on it at once
        open_ = false;
        finish();
        return;
    }
    out_.push_back(std::move(bytes));
    if (!writing_) {
        writing_ = true;
        asio::co_spawn(
            socket_.get_executor(),
            [self = shared_from_this()]() -> awaitable<void> { co_await self->drain(); },
            asio::detached);
    }
}

awaitable<void> Connection::drain() {
    std::error_code ec;
    while (!out_.empty() && !finished_) {
        Bytes b = std::move(out_.front());
        out_.pop_front();
        co_await asio::async_write(socket_, asio::buffer(b),
                                   asio::redirect_error(asio::use_awaitable, ec));
        queued_ -= std::min(queued_, b.size());  // finish() may have reset it
        if (ec) {
            open_ = false;
            finish();
            break;
        }
    }
    writing_ = false;
    if (!open_) finish();  // closed while writing: what was queued is out now
}

void Connection::close() {
    if (!open_) return;
    open_ = false;
    if (tls_ && tls_->handshake_done() && !tls_->failed()) {
        tls_->close();
        flush_tls();  // close_notify after anything queued
    }
    if (out_.empty() && !writing_) {
        finish();
        return;
    }
    // Let the queue drain (drain() finishes), for at most kCloseLinger. Reads end now.
    std::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_receive, ec);
    linger_ = std::make_unique<asio::steady_timer>(socket_.get_executor(), ms(kCloseLinger));
    linger_->async_wait([self = shared_from_this()](const std::error_code& error) {
        if (!error) self->finish();
    });
}

void Connection::finish() {
    if (finished_) return;
    finished_ = true;
    if (linger_) linger_->cancel();
    std::error_code ec;
    // Take what the peer sent and nobody read, so that closing sends FIN, not a reset.
    socket_.non_blocking(true, ec);
    const auto buffer = read_buffer();
    for (std::size_t discarded = 0; !ec && discarded < kMaxDiscardOnClose;)
        discarded += socket_.receive(asio::buffer(buffer.data(), buffer.size()), 0, ec);
    socket_.shutdown(tcp::socket::shutdown_both, ec);
    socket_.close(ec);
    out_.clear();
    queued_ = 0;
    slot_.release();
}

awaitable<Result<tcp::socket>> connect_tcp(const HostPort& at, Millis timeout) {
    auto ex = co_await asio::this_coro::executor;
    tcp::resolver resolver(ex);
    std::error_code ec;
    auto results = co_await resolver.async_resolve(at.host, std::to_string(at.port),
                                                   asio::redirect_error(asio::use_awaitable, ec));
    if (ec)
        co_return LinkError{pb::PEER_UNREACHABLE,
                            "cannot resolve " + at.host + ": " + ec.message()};
    tcp::socket socket(ex);
    Deadline deadline(socket, timeout);
    co_await asio::async_connect(socket, results, asio::redirect_error(asio::use_awaitable, ec));
    const bool expired = deadline.expired();
    deadline.disarm();
    if (ec)
        co_return LinkError{pb::PEER_UNREACHABLE,
                            "cannot connect to " + at.str() + ": " +
                                (expired ? std::string("timed out") : ec.message())};
    co_return std::move(socket);
}

}  // namespace cpns::net
