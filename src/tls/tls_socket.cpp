#include "tls/tls_socket.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <algorithm>
#include <array>
#include <cerrno>

namespace cpns::tls {

namespace {

// Waits until `fd` is ready for `events`; false on timeout. Sets `error` on failure.
bool wait_for(int fd, short events, std::chrono::steady_clock::time_point deadline, int& error) {
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) return false;
        pollfd p{fd, events, 0};
        const int rc = ::poll(&p, 1, static_cast<int>(std::min<long long>(left.count(), 60'000)));
        if (rc > 0) return true;
        if (rc < 0 && errno != EINTR) {
            error = errno;
            return true;  // let the following recv/send report the error
        }
    }
}

}  // namespace

std::string_view to_string(IoStatus status) noexcept {
    switch (status) {
        case IoStatus::kOk:
            return "ok";
        case IoStatus::kTimeout:
            return "timeout";
        case IoStatus::kTlsError:
            return "TLS error";
        case IoStatus::kPeerClosed:
            return "peer closed";
        case IoStatus::kEof:
            return "end of stream";
        case IoStatus::kSocketError:
            return "socket error";
    }
    return "invalid";
}

IoStatus SocketTls::engine_status() const {
    if (engine_.failed()) return IoStatus::kTlsError;
    if (engine_.error() == TlsError::kPeerClosed) return IoStatus::kPeerClosed;
    return IoStatus::kOk;
}

IoStatus SocketTls::flush(Clock::time_point deadline) {
    Bytes out = engine_.take_output();
    std::size_t done = 0;
    while (done < out.size()) {
        const ssize_t n = ::send(fd_, out.data() + done, out.size() - done, MSG_NOSIGNAL);
        if (n > 0) {
            done += static_cast<std::size_t>(n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!wait_for(fd_, POLLOUT, deadline, last_errno_)) return IoStatus::kTimeout;
            continue;
        }
        last_errno_ = errno;
        return IoStatus::kSocketError;
    }
    return IoStatus::kOk;
}

IoStatus SocketTls::receive_some(Clock::time_point deadline) {
    std::array<std::uint8_t, 16 * 1024> buffer{};
    for (;;) {
        const ssize_t n = ::recv(fd_, buffer.data(), buffer.size(), MSG_DONTWAIT);
        if (n > 0) {
            engine_.feed(ByteView{buffer.data(), static_cast<std::size_t>(n)});
            return IoStatus::kOk;
        }
        if (n == 0) return IoStatus::kEof;
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            last_errno_ = errno;
            return IoStatus::kSocketError;
        }
        if (!wait_for(fd_, POLLIN, deadline, last_errno_)) return IoStatus::kTimeout;
    }
}

IoStatus SocketTls::handshake(std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    for (;;) {
        // Send even after a failure: the output may carry the alert that tells the peer why.
        const IoStatus sent = flush(deadline);
        if (engine_.failed()) return IoStatus::kTlsError;
        if (sent != IoStatus::kOk) return sent;
        if (engine_.handshake_done()) return IoStatus::kOk;
        if (engine_.error() == TlsError::kPeerClosed) return IoStatus::kPeerClosed;
        const IoStatus got = receive_some(deadline);
        if (got != IoStatus::kOk) {
            static_cast<void>(flush(deadline));
            return engine_.failed() ? IoStatus::kTlsError : got;
        }
    }
}

IoStatus SocketTls::send(ByteView plaintext, std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    if (!engine_.handshake_done()) {
        const IoStatus status = handshake(timeout);
        if (status != IoStatus::kOk) return status;
    }
    if (!engine_.write(plaintext))
        return engine_status() == IoStatus::kOk ? IoStatus::kTlsError : engine_status();
    return flush(deadline);
}

IoStatus SocketTls::receive(Bytes& out, std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    for (;;) {
        Bytes got = engine_.read();
        if (!got.empty()) {
            out.insert(out.end(), got.begin(), got.end());
            static_cast<void>(flush(deadline));  // e.g. a KeyUpdate answer
            return IoStatus::kOk;
        }
        const IoStatus flushed = flush(deadline);
        if (const IoStatus status = engine_status(); status != IoStatus::kOk) return status;
        if (flushed != IoStatus::kOk) return flushed;
        const IoStatus status = receive_some(deadline);
        if (status != IoStatus::kOk) return status;  // nothing was fed
    }
}

IoStatus SocketTls::close(std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    engine_.close();
    return flush(deadline);
}

}  // namespace cpns::tls
