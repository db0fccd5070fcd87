// A framed CPNS connection over TCP, in clear or inside PSK-TLS (the sans-I/O TlsEngine
// driven over the socket). Single-threaded: every call on the io_context's thread.
#pragma once

#include <asio.hpp>
#include <chrono>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <variant>

#include "core/codec.hpp"
#include "core/role.hpp"
#include "net/address.hpp"
#include "net/link_error.hpp"
#include "tls/tls.hpp"

namespace cpns::net {

using asio::awaitable;
using tcp = asio::ip::tcp;

// Bounds of one connection.
inline constexpr std::size_t kMaxQueuedBytes = 1 << 20;  // unsent bytes before we give up on a peer
inline constexpr std::size_t kReadChunk = 16 * 1024;
// How long a TCP connect may take.
inline constexpr Millis kConnectTimeout = 5'000;

// A decoded message, a decode error (the connection must then be closed), or the end of the
// link (closed, lost, or its TLS failed).
using ReadResult = std::variant<pb::Envelope, DecodeError, LinkError>;

class Connection : public std::enable_shared_from_this<Connection> {
  public:
    explicit Connection(tcp::socket socket);
    ~Connection();

    // Runs the TLS handshake as client or server: nullopt once it is done, else why it failed
    // or that `timeout` passed (the connection is then closed). `link` names what the link
    // authenticates, for the failure's reason (to_reason).
    // (Coroutines here take class-type arguments by reference: GCC 12 copies by-value
    // coroutine parameters bitwise when given a temporary, which breaks std::string.)
    awaitable<std::optional<LinkError>> client_handshake(const tls::TlsContext& ctx,
                                                         const tls::ClientPsk& psk, Millis timeout,
                                                         PskLink link);
    awaitable<std::optional<LinkError>> server_handshake(const tls::TlsContext& ctx, Millis timeout,
                                                         PskLink link);
    // Waits for the first byte without consuming it: true if it starts a TLS record
    // (handshake content type 0x16), false for a clear CPNS frame.
    awaitable<std::optional<bool>> sniff_tls(Millis timeout);

    awaitable<ReadResult> read();
    // Encodes, encrypts if TLS, and queues for sending. False if the connection is closed
    // or its send queue is over kMaxQueuedBytes (then it is closed).
    bool send(const pb::Envelope& env);
    void close();

    bool is_open() const { return open_; }
    // Whether queued bytes are still waiting to be written to the socket.
    bool sending() const { return writing_; }
    bool is_tls() const { return tls_.has_value(); }
    std::string tls_identity() const { return tls_ ? tls_->peer_identity() : std::string(); }
    std::string tls_summary() const;  // "TLSv1.3 TLS_AES_128_GCM_SHA256 X25519"
    const std::string& remote() const { return remote_; }

    // What the owner knows of the peer.
    std::string peer_id;

  private:
    awaitable<std::optional<LinkError>> handshake(Millis timeout, PskLink link);
    // Feeds received ciphertext or clear bytes to the frame reader; a LinkError if TLS failed.
    std::optional<LinkError> take_in(std::size_t n);
    void queue_raw(Bytes bytes);
    void flush_tls();
    awaitable<void> drain();

    tcp::socket socket_;
    std::optional<tls::TlsEngine> tls_;
    FrameReader reader_;
    std::deque<Bytes> out_;
    std::size_t queued_ = 0;
    bool writing_ = false;
    bool open_ = true;
    std::string remote_;
    std::array<std::uint8_t, kReadChunk> buf_{};
};

// Connects with a timeout. A failure is PEER_UNREACHABLE ("cannot connect to ...").
awaitable<Result<tcp::socket>> connect_tcp(const HostPort& at, Millis timeout);

}  // namespace cpns::net
