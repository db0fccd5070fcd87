// A framed CPNS connection over TCP, in clear or inside PSK-TLS (the sans-I/O TlsEngine
// driven over the socket). Single-threaded: every call on the io_context's thread.
#pragma once

#include <asio.hpp>
#include <chrono>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <variant>

#include "core/codec.hpp"
#include "core/role.hpp"
#include "net/address.hpp"
#include "net/link_error.hpp"
#include "net/listener.hpp"
#include "tls/tls.hpp"

namespace cpns::net {

using asio::awaitable;
using tcp = asio::ip::tcp;

// Bounds of one connection.
inline constexpr std::size_t kMaxQueuedBytes = 1 << 20;  // unsent bytes before we give up on a peer
// What one read takes from a socket at most. The buffer it reads into is one per thread, shared
// by every connection of that thread (read_buffer()), not one per connection: an idle link
// holds no read buffer.
inline constexpr std::size_t kReadChunk = 16 * 1024;
// How long a TCP connect may take.
inline constexpr Millis kConnectTimeout = 5'000;
// How long one frame may take to arrive, from its first octet to its last (a peer that
// trickles a frame, or stops inside one, is cut off: slow-loris).
inline constexpr Millis kFrameTimeout = 10'000;
// How long close() keeps sending what is queued (an ErrorReport, close_notify) before it
// shuts the socket anyway.
inline constexpr Millis kCloseLinger = 1'000;
// Unread input a closing connection reads and discards first (closing a TCP socket with unread
// input sends a reset, which can destroy what the peer has not read yet, e.g. an ErrorReport).
inline constexpr std::size_t kMaxDiscardOnClose = 256 * 1024;

// EUKey rotation on a PSK-TLS link (server side): a second PSK for the identity the client
// offered. When the ClientHello fails the binder check under the first key, before the server
// sent anything, the same ClientHello goes through a second engine under this key. accept:
// the handshake goes on under it (the previous EUKey, within its grace period). !accept: the
// key is only recognised (a previous EUKey whose grace has ended): the client sees exactly the
// failure of the first key, and the LinkError says KEY_EXPIRED when the second key verified.
struct PskRetry {
    SecretKey key;
    bool accept = true;
};
using PskRetryLookup = std::function<std::optional<PskRetry>(std::string_view identity)>;
// What a server keeps of the client's first flight for a PskRetry; a longer first flight
// gets no retry.
inline constexpr std::size_t kMaxRetainedHello = 64 * 1024;

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
    // `lookup`, if not empty, replaces the context's PSK lookup for this connection.
    // `retry`, if not empty, gives a second key for the offered identity (PskRetry).
    awaitable<std::optional<LinkError>> server_handshake(const tls::TlsContext& ctx, Millis timeout,
                                                         PskLink link,
                                                         const tls::PskLookup& lookup = {},
                                                         const PskRetryLookup& retry = {});
    // Waits for the first byte without consuming it: true if it starts a TLS record
    // (handshake content type 0x16), false for a clear CPNS frame.
    awaitable<std::optional<bool>> sniff_tls(Millis timeout);

    // The next message. A frame must arrive whole within kFrameTimeout of its first octet,
    // else the connection is closed (TIMEOUT).
    awaitable<ReadResult> read();
    // Encodes, encrypts if TLS, and queues for sending. False if the connection is closed
    // or its send queue is over kMaxQueuedBytes (then it is closed).
    bool send(const pb::Envelope& env);
    // Stops reading and sending; what is already queued (and a TLS close_notify) is still
    // sent, for at most kCloseLinger, then the socket is shut. Idempotent.
    void close();

    // Counts this connection against its listener's limits until the socket is shut; the
    // listener may evict it (close it) while it is not authenticated().
    void hold(Listener::Slot slot);
    // The peer proved who it is (PSK-TLS done, or a first valid message on a clear link).
    void authenticated() { slot_.authenticated(); }

    bool is_open() const { return open_; }
    // Whether queued bytes are still waiting to be written to the socket.
    bool sending() const { return writing_; }
    bool is_tls() const { return tls_.has_value(); }
    std::string tls_identity() const { return tls_ ? tls_->peer_identity() : std::string(); }
    // Server: the handshake succeeded under the PskRetry key (a previous EUKey in grace).
    bool used_retry_psk() const { return used_retry_psk_; }
    std::string tls_summary() const;  // "TLSv1.3 TLS_AES_128_GCM_SHA256 X25519"
    const std::string& remote() const { return remote_; }
    // The peer's IP address alone (no port); "" if unknown.
    const std::string& source() const { return source_; }

    // What the owner knows of the peer.
    std::string peer_id;

  private:
    awaitable<std::optional<LinkError>> handshake(Millis timeout, PskLink link,
                                                  const tls::TlsContext* ctx = nullptr,
                                                  const PskRetryLookup* retry = nullptr);
    // Waits until the socket is readable, then reads what is there into the thread's shared
    // read buffer: the bytes read, valid until the caller next suspends (a co_await), or
    // empty with `ec` set (EOF, an error, or cancelled by a Deadline).
    awaitable<ByteView> read_some(std::error_code& ec);
    // Feeds received ciphertext or clear bytes to the frame reader; a LinkError if TLS failed.
    std::optional<LinkError> take_in(ByteView bytes);
    void queue_raw(Bytes bytes);
    void flush_tls();
    awaitable<void> drain();
    // Shuts and closes the socket now, dropping anything still queued.
    void finish();

    tcp::socket socket_;
    // Made by close() when queued bytes must still go out (an idle link holds no timer).
    std::unique_ptr<asio::steady_timer> linger_;
    Listener::Slot slot_;
    // When the frame being read started (its first octet arrived); unset between frames.
    std::optional<std::chrono::steady_clock::time_point> frame_started_;
    bool finished_ = false;
    bool used_retry_psk_ = false;
    std::optional<tls::TlsEngine> tls_;
    FrameReader reader_;
    std::list<Bytes> out_;  // empty, it allocates nothing (an idle link's queue is empty)
    std::size_t queued_ = 0;
    bool writing_ = false;
    bool open_ = true;
    std::string remote_, source_;
};

// Connects with a timeout. A failure is PEER_UNREACHABLE ("cannot connect to ...").
awaitable<Result<tcp::socket>> connect_tcp(const HostPort& at, Millis timeout);

}  // namespace cpns::net
