// A minimal blocking driver that runs a TlsEngine over a connected stream socket, for tests
// and command-line tools. The daemons use the Asio adapter instead.
#pragma once

#include <chrono>
#include <cstdint>
#include <string_view>

#include "tls/tls.hpp"

namespace cpns::tls {

enum class IoStatus : std::uint8_t {
    kOk,
    kTimeout,      // the call's time limit passed
    kTlsError,     // the engine failed: see engine().error() and error_detail()
    kPeerClosed,   // the peer sent close_notify
    kEof,          // the socket closed without close_notify
    kSocketError,  // poll/recv/send failed: see last_errno()
};
std::string_view to_string(IoStatus status) noexcept;

// Drives `engine` over `fd` (not owned; blocking or non-blocking). Every call waits at most
// its timeout in total, using poll(). SIGPIPE is never raised (MSG_NOSIGNAL).
class SocketTls {
  public:
    SocketTls(TlsEngine& engine, int fd) noexcept : engine_(engine), fd_(fd) {}

    // Runs the handshake to completion.
    IoStatus handshake(std::chrono::milliseconds timeout);
    // Encrypts and sends all of `plaintext` (the handshake first if needed).
    IoStatus send(ByteView plaintext, std::chrono::milliseconds timeout);
    // Appends at least one byte of received plaintext to `out`, or reports why not. Data that
    // arrived before a close_notify is returned first (kOk), the closure on the next call.
    IoStatus receive(Bytes& out, std::chrono::milliseconds timeout);
    // Sends close_notify and whatever is still queued.
    IoStatus close(std::chrono::milliseconds timeout);

    TlsEngine& engine() noexcept { return engine_; }
    int last_errno() const noexcept { return last_errno_; }

  private:
    using Clock = std::chrono::steady_clock;
    IoStatus flush(Clock::time_point deadline);
    IoStatus receive_some(Clock::time_point deadline);
    IoStatus engine_status() const;

    TlsEngine& engine_;
    int fd_;
    int last_errno_ = 0;
};

}  // namespace cpns::tls
