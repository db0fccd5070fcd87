// PSK-TLS for CPNS: a sans-I/O engine over OpenSSL 3 memory BIOs.
//
// The engine never touches a socket, a clock or a thread. The caller moves bytes: ciphertext
// received from the peer goes into feed(), ciphertext to send comes out of take_output(),
// application data goes in through write() and comes out of read(). Timeouts are the
// caller's: the engine only reports what the peer and the handshake did.
//
// Profile (docs/protocol.md, "Security profile"):
//  - Mode::kTls13 (default): TLS 1.3 only, external PSK with (EC)DHE (psk_dhe_ke), groups
//    X25519 and P-256, suites TLS_AES_128_GCM_SHA256 and TLS_CHACHA20_POLY1305_SHA256 (the
//    PSK hash is SHA-256, so SHA-384 suites are never offered).
//  - Mode::kTls12Psk: TLS 1.2 only, PSK suites of RFC 5487/5489 and RFC 7905 (see
//    allowed_suites()). Never RC4, 3DES, CBC-SHA1 or NULL.
//  - No certificates at all. A client refuses a server that authenticates with a certificate
//    instead of the PSK.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/crypto.hpp"

namespace cpns::tls {

enum class Role : std::uint8_t { kClient, kServer };
enum class Mode : std::uint8_t { kTls13, kTls12Psk };

// Why an engine stopped. kNone while it works (or has finished cleanly on our side).
enum class TlsError : std::uint8_t {
    kNone = 0,
    // Server: the PSK lookup did not know (or refused) the identity the client offered, or
    // the client offered none. Client: the server answered with an unknown_psk_identity alert
    // (our servers send it only to a client that offers no identity at all).
    kUnknownIdentity,
    // The identity is known but the keys differ: TLS 1.3 binder check, TLS 1.2 Finished
    // decryption (bad_record_mac), or the matching alert received from the peer.
    kBadPsk,
    // Anything else: no common version, suite or group, a malformed message, a certificate
    // where a PSK was required, an internal failure, a record that fails after the handshake.
    kProtocolError,
    // The peer closed the connection with close_notify (orderly; not a failure of the
    // handshake). Data read before it is still delivered.
    kPeerClosed,
};
std::string_view to_string(TlsError error) noexcept;
std::string_view to_string(Mode mode) noexcept;
std::string_view to_string(Role role) noexcept;

// PSK identities are 1..kMaxIdentityLength bytes without a NUL byte (TLS 1.2 carries them
// as C strings inside OpenSSL).
inline constexpr std::size_t kMaxIdentityLength = 256;
// A ClientHello may offer several identities; the server looks up at most this many.
inline constexpr std::size_t kMaxIdentitiesLookedUp = 4;

// The suites a mode allows, in the server's order of preference (OpenSSL names).
std::span<const std::string_view> allowed_suites(Mode mode) noexcept;

// Server side: the PSK for an identity, or std::nullopt if the identity is unknown or refused
// (e.g. backing off). An identity without a key is not refused with unknown_psk_identity: the
// handshake goes on with a per-process decoy key and fails on the wire exactly like a wrong
// key (same messages, same alert), so a client cannot tell known identities from unknown or
// blocked ones; the server's engine still reports kUnknownIdentity locally. Called
// from inside TlsEngine::feed(); it must be safe to call from every thread that drives an
// engine of the context. An exception it throws, or an all-zero key, fails that handshake
// (kProtocolError, internal_error alert).
using PskLookup = std::function<std::optional<SecretKey>(std::string_view identity)>;

struct TlsConfig {
    Role role = Role::kClient;
    Mode mode = Mode::kTls13;
    // Required for Role::kServer, ignored for clients.
    PskLookup psk_lookup;
    // Empty: every suite of allowed_suites(mode). Otherwise a non-empty subset of them, in
    // order of preference; any other name is rejected (std::invalid_argument).
    std::vector<std::string> suites;
    // NSS key-log file (SSLKEYLOGFILE format), for debugging only. Empty: off. Lines are
    // appended (the file is created with mode 0600) and written whole, one write per line.
    std::string keylog_path;
};

// The client's credentials for one connection.
struct ClientPsk {
    std::string identity;
    SecretKey key;
};

// An SSL_CTX configured for one role and mode. Cheap to copy: copies share the same
// SSL_CTX, and every engine keeps what it was made from alive. Thread-safe to share.
class TlsContext {
  public:
    // std::invalid_argument for a bad configuration; std::runtime_error when OpenSSL or the
    // key-log file cannot be set up.
    explicit TlsContext(TlsConfig config);

    Role role() const noexcept;
    Mode mode() const noexcept;
    // The suites this context offers or accepts, in order of preference.
    const std::vector<std::string>& suites() const noexcept;

    struct Impl;

  private:
    friend class TlsEngine;
    std::shared_ptr<Impl> impl_;
};

// One TLS connection. Not thread-safe: drive each engine from one thread at a time. A
// moved-from engine may only be destroyed or assigned to.
class TlsEngine {
  public:
    // Server engine (the context's role must be kServer).
    explicit TlsEngine(const TlsContext& context);
    // Server engine with its own PSK lookup instead of the context's (e.g. one that knows the
    // peer's address, for a back-off per source). An empty `lookup` uses the context's.
    TlsEngine(const TlsContext& context, PskLookup lookup);
    // Client engine (the context's role must be kClient). The ClientHello is ready in
    // take_output() as soon as the constructor returns. std::invalid_argument for an
    // identity that is empty, too long or contains a NUL byte, or an all-zero key.
    TlsEngine(const TlsContext& context, ClientPsk psk);

    TlsEngine(TlsEngine&&) noexcept;
    TlsEngine& operator=(TlsEngine&&) noexcept;
    TlsEngine(const TlsEngine&) = delete;
    TlsEngine& operator=(const TlsEngine&) = delete;
    ~TlsEngine();

    // Ciphertext from the peer. Advances the handshake and decrypts what it can (read()).
    // Ignored once the engine has failed.
    void feed(ByteView ciphertext);
    // Ciphertext to send to the peer (handshake messages, records, alerts, close_notify).
    // Send it even after a failure: it may carry the alert that tells the peer why.
    Bytes take_output();
    bool has_output() const noexcept;

    // Application data to send. Before the handshake completes it is queued and sent when
    // it does. False (nothing queued) once the engine has failed or close() was called.
    bool write(ByteView plaintext);
    // Decrypted application data received so far (and not yet read).
    Bytes read();

    // Sends close_notify (after any queued data) and stops accepting write(); received data
    // and the peer's close_notify are still processed. Before the handshake completes it
    // abandons the handshake (nothing is sent). Idempotent.
    void close();

    Role role() const noexcept;
    bool handshake_done() const noexcept;
    // kNone, the typed reason for a failure, or kPeerClosed.
    TlsError error() const noexcept;
    bool failed() const noexcept;  // error() is neither kNone nor kPeerClosed
    // Human-readable cause (OpenSSL's reason strings, the alert, what the lookup said).
    // Never contains key material.
    const std::string& error_detail() const noexcept;

    // The PSK identity in use: the one the client sent (server: once the lookup found it).
    std::string peer_identity() const;
    // After the handshake: "TLSv1.3" or "TLSv1.2"; empty before.
    std::string version() const;
    // After the handshake: OpenSSL's suite name, e.g. "TLS_AES_128_GCM_SHA256" or
    // "ECDHE-PSK-CHACHA20-POLY1305"; empty before.
    std::string cipher() const;
    // After the handshake: the (EC)DHE group as OpenSSL names it ("x25519", "secp256r1",
    // "ffdhe3072" for DHE-PSK); empty for plain PSK key exchange.
    std::string key_exchange_group() const;

    struct Impl;

  private:
    std::unique_ptr<Impl> impl_;
};

}  // namespace cpns::tls
