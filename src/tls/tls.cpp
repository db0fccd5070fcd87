#include "tls/tls.hpp"

#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/buffer.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/tls1.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <utility>

#include "core/codec.hpp"

namespace cpns::tls {

namespace {

constexpr std::array<std::string_view, 2> kTls13Suites = {
    "TLS_AES_128_GCM_SHA256",
    "TLS_CHACHA20_POLY1305_SHA256",
};
// Forward-secret suites first; the plain PSK suites are there for small PNEs.
constexpr std::array<std::string_view, 5> kTls12Suites = {
    "ECDHE-PSK-CHACHA20-POLY1305", "DHE-PSK-AES128-GCM-SHA256", "ECDHE-PSK-AES128-CBC-SHA256",
    "PSK-AES128-GCM-SHA256",       "PSK-AES256-GCM-SHA384",
};
constexpr const char* kGroups = "X25519:P-256";
constexpr const char* kDheGroup = "ffdhe3072";

// TLS extension code points parsed in the server's ClientHello callback (RFC 8446).
constexpr unsigned int kExtPreSharedKey = 41;
constexpr unsigned int kExtSupportedVersions = 43;
constexpr unsigned int kExtPskKeyExchangeModes = 45;
constexpr std::uint8_t kPskDheKe = 1;
constexpr unsigned int kTls13Wire = 0x0304;

constexpr std::size_t kReadChunk = 16 * 1024;

bool valid_identity(std::string_view identity) {
    return !identity.empty() && identity.size() <= kMaxIdentityLength &&
           identity.find('\0') == std::string_view::npos;
}

std::string join(const std::vector<std::string>& names) {
    std::string out;
    for (const auto& name : names) {
        if (!out.empty()) out.push_back(':');
        out += name;
    }
    return out;
}

// Drains OpenSSL's (thread-local) error queue into one line. `ssl_reason` receives the reason
// of the first error raised by libssl (a provider error may come before it).
std::string drain_openssl_errors(int* ssl_reason = nullptr) {
    if (ssl_reason != nullptr) *ssl_reason = 0;
    std::string out;
    const char* data = nullptr;
    int flags = 0;
    unsigned long code = 0;
    while ((code = ERR_get_error_all(nullptr, nullptr, nullptr, &data, &flags)) != 0) {
        if (ssl_reason != nullptr && *ssl_reason == 0 && ERR_GET_LIB(code) == ERR_LIB_SSL) {
            *ssl_reason = ERR_GET_REASON(code);
        }
        std::array<char, 256> text{};
        ERR_error_string_n(code, text.data(), text.size());
        if (!out.empty()) out += "; ";
        out += text.data();
        if ((flags & ERR_TXT_STRING) != 0 && data != nullptr && *data != '\0') {
            out += " (";
            out += data;
            out += ")";
        }
    }
    return out;
}

// Big-endian readers over a ClientHello extension body.
class Reader {
  public:
    explicit Reader(ByteView data) : data_(data) {}
    bool u8(std::uint8_t& v) {
        if (data_.size() < 1) return false;
        v = data_[0];
        data_ = data_.subspan(1);
        return true;
    }
    bool u16(std::size_t& v) {
        if (data_.size() < 2) return false;
        v = (std::size_t{data_[0]} << 8) | data_[1];
        data_ = data_.subspan(2);
        return true;
    }
    bool bytes(std::size_t n, ByteView& out) {
        if (data_.size() < n) return false;
        out = data_.first(n);
        data_ = data_.subspan(n);
        return true;
    }
    bool skip(std::size_t n) {
        ByteView ignored;
        return bytes(n, ignored);
    }
    bool empty() const { return data_.empty(); }

  private:
    ByteView data_;
};

// Parameters of a named finite-field group (RFC 7919), or null.
EVP_PKEY* named_dh_group(const char* name) {
    EVP_PKEY_CTX* pctx = EVP_PKEY_CTX_new_from_name(nullptr, "DH", nullptr);
    EVP_PKEY* params = nullptr;
    if (pctx == nullptr || EVP_PKEY_paramgen_init(pctx) != 1 ||
        EVP_PKEY_CTX_set_group_name(pctx, name) != 1 || EVP_PKEY_paramgen(pctx, &params) != 1) {
        EVP_PKEY_free(params);
        params = nullptr;
    }
    EVP_PKEY_CTX_free(pctx);
    return params;
}

std::optional<ByteView> client_hello_ext(SSL* ssl, unsigned int type) {
    const unsigned char* data = nullptr;
    std::size_t size = 0;
    if (SSL_client_hello_get0_ext(ssl, type, &data, &size) != 1) return std::nullopt;
    return ByteView{data, size};
}

// The cipher an external TLS 1.3 PSK session is bound to. Only its hash matters (SHA-256
// for both allowed suites).
const SSL_CIPHER* tls13_session_cipher(SSL* ssl, std::string_view suite) {
    static constexpr std::array<unsigned char, 2> kAes128Gcm = {0x13, 0x01};
    static constexpr std::array<unsigned char, 2> kChaCha20 = {0x13, 0x03};
    return SSL_CIPHER_find(ssl, suite == kTls13Suites[1] ? kChaCha20.data() : kAes128Gcm.data());
}

}  // namespace

std::string_view to_string(TlsError error) noexcept {
    switch (error) {
        case TlsError::kNone:
            return "none";
        case TlsError::kUnknownIdentity:
            return "unknown PSK identity";
        case TlsError::kBadPsk:
            return "bad PSK";
        case TlsError::kProtocolError:
            return "protocol error";
        case TlsError::kPeerClosed:
            return "peer closed";
    }
    return "invalid";
}

std::string_view to_string(Mode mode) noexcept {
    switch (mode) {
        case Mode::kTls13:
            return "TLS 1.3 external PSK with (EC)DHE";
        case Mode::kTls12Psk:
            return "TLS 1.2 PSK";
    }
    return "invalid";
}

std::string_view to_string(Role role) noexcept {
    switch (role) {
        case Role::kClient:
            return "client";
        case Role::kServer:
            return "server";
    }
    return "invalid";
}

std::span<const std::string_view> allowed_suites(Mode mode) noexcept {
    if (mode == Mode::kTls13) return kTls13Suites;
    return kTls12Suites;
}

// --- Context ---------------------------------------------------------------------------------

struct TlsContext::Impl {
    Role role = Role::kClient;
    Mode mode = Mode::kTls13;
    PskLookup lookup;
    std::vector<std::string> suites;
    SSL_CTX* ctx = nullptr;
    int keylog_fd = -1;
    std::mutex keylog_mutex;

    Impl() = default;
    Impl(const Impl&) = delete;
    Impl& operator=(const Impl&) = delete;
    ~Impl() {
        SSL_CTX_free(ctx);
        if (keylog_fd >= 0) ::close(keylog_fd);
    }

    void write_keylog(const char* line) {
        std::string text;
        text.reserve(std::strlen(line) + 1);  // no reallocation leaves a copy behind
        text.assign(line);
        text.push_back('\n');
        {
            std::lock_guard lock(keylog_mutex);
            std::size_t done = 0;
            while (done < text.size()) {
                const ssize_t n = ::write(keylog_fd, text.data() + done, text.size() - done);
                if (n < 0 && errno == EINTR) continue;
                if (n <= 0) break;  // debugging aid only: a full disk must not fail the handshake
                done += static_cast<std::size_t>(n);
            }
        }
        wipe(text.data(), text.size());
    }
};

// --- Engine state ----------------------------------------------------------------------------

struct TlsEngine::Impl {
    std::shared_ptr<TlsContext::Impl> context;
    SSL* ssl = nullptr;
    BIO* network_in = nullptr;   // what the peer sent; owned by ssl
    BIO* network_out = nullptr;  // what to send to the peer; owned by ssl
    Role role = Role::kClient;

    // Client credentials; the key is wiped as soon as OpenSSL holds its own copy.
    std::string identity;
    SecretKey client_key;
    SSL_SESSION* client_session = nullptr;  // TLS 1.3 external PSK session (one reference)

    // Server: the PSK found for the identity the client offered (kept across a
    // HelloRetryRequest, wiped when the handshake ends).
    std::optional<SecretKey> found_key;
    bool identity_found = false;
    // The lookup did not give a key (unknown identity, or one the owner refuses, e.g. during
    // a back-off): the handshake goes on with decoy_psk() so that it fails on the wire exactly
    // like a wrong key, while error() still says kUnknownIdentity here.
    bool lookup_missed = false;
    // The engine's own lookup (server), instead of the context's; empty: the context's.
    PskLookup lookup;
    // A callback's own verdict when it aborted the handshake (kNone: none).
    TlsError callback_error = TlsError::kNone;
    std::string callback_detail;

    bool handshake_complete = false;
    bool closed = false;  // close() called
    TlsError error = TlsError::kNone;
    std::string detail;
    Bytes plaintext_in;
    Bytes plaintext_out;  // queued until the handshake completes

    Impl() = default;
    Impl(const Impl&) = delete;
    Impl& operator=(const Impl&) = delete;
    ~Impl() {
        release_secrets();
        SSL_free(ssl);
    }

    void release_secrets() {
        client_key = SecretKey{};
        found_key.reset();
        if (client_session != nullptr) {
            SSL_SESSION_free(client_session);  // wipes its master key
            client_session = nullptr;
        }
    }

    bool can_run() const { return error == TlsError::kNone; }
    bool can_send() const {
        return !closed && (error == TlsError::kNone || error == TlsError::kPeerClosed);
    }

    void fail(TlsError why, std::string text) {
        if (failed_or_closed_by_peer()) return;
        error = why;
        detail = std::move(text);
        if (!plaintext_out.empty()) wipe(plaintext_out.data(), plaintext_out.size());
        plaintext_out.clear();
        release_secrets();
    }
    bool failed_or_closed_by_peer() const { return error != TlsError::kNone; }

    void fail_from_openssl(int ssl_error);
    void on_handshake_complete();
    void advance();
    void release_idle_buffers();
    void flush_plaintext();
};

namespace {

TlsEngine::Impl* engine_of(const SSL* ssl) {
    return static_cast<TlsEngine::Impl*>(SSL_get_ex_data(ssl, 0));
}

TlsContext::Impl* context_of(const SSL* ssl) {
    return static_cast<TlsContext::Impl*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), 0));
}

// Runs the server's lookup, turning an exception into a handshake failure.
std::optional<SecretKey> run_lookup(TlsEngine::Impl& engine, std::string_view identity,
                                    bool& threw) {
    threw = false;
    try {
        auto key = engine.lookup ? engine.lookup(identity) : engine.context->lookup(identity);
        if (!key || !key->is_zero()) return key;
        // An all-zero key is an uninitialised one, never a real PSK.
        engine.callback_error = TlsError::kProtocolError;
        engine.callback_detail =
            "PSK lookup returned an all-zero key for '" + printable(identity) + "'";
    } catch (const std::exception& e) {
        engine.callback_error = TlsError::kProtocolError;
        engine.callback_detail = std::string("PSK lookup failed: ") + e.what();
    } catch (...) {
        engine.callback_error = TlsError::kProtocolError;
        engine.callback_detail = "PSK lookup failed";
    }
    threw = true;
    return std::nullopt;
}

// The key an unknown or refused identity gets, so that its handshake fails exactly like one
// with a wrong key (same alert, same messages): HMAC-SHA256 under a random secret drawn once
// per process, so it is stable per identity and unknown to anyone outside this process.
SecretKey decoy_psk(std::string_view identity) {
    static const std::array<std::uint8_t, kKeySize> secret = [] {
        std::array<std::uint8_t, kKeySize> s{};
        if (RAND_bytes(s.data(), static_cast<int>(s.size())) != 1)
            throw std::runtime_error("RAND_bytes failed for the decoy PSK secret");
        return s;
    }();
    auto mac = hmac_sha256(ByteView(secret.data(), secret.size()), as_bytes(identity));
    SecretKey key(ByteView(mac.data(), mac.size()));
    wipe(mac.data(), mac.size());
    return key;
}

void keylog_callback(const SSL* ssl, const char* line) {
    TlsContext::Impl* context = context_of(ssl);
    if (context != nullptr && context->keylog_fd >= 0 && line != nullptr) {
        context->write_keylog(line);
    }
}

// Clients never accept a certificate: the server must authenticate with the PSK.
int reject_certificates(int /*preverify_ok*/, X509_STORE_CTX* /*store*/) {
    return 0;
}

// A TLS 1.3 session carrying an external PSK; null (and the engine told why) on failure.
SSL_SESSION* new_psk_session(TlsEngine::Impl& engine, const SSL_CIPHER* cipher,
                             const SecretKey& key) {
    SSL_SESSION* created = SSL_SESSION_new();
    if (cipher == nullptr || created == nullptr ||
        SSL_SESSION_set1_master_key(created, key.view().data(), kKeySize) != 1 ||
        SSL_SESSION_set_cipher(created, cipher) != 1 ||
        SSL_SESSION_set_protocol_version(created, TLS1_3_VERSION) != 1) {
        SSL_SESSION_free(created);
        engine.callback_error = TlsError::kProtocolError;
        engine.callback_detail = "cannot create the TLS 1.3 PSK session";
        return nullptr;
    }
    return created;
}

// TLS 1.3 client: hand OpenSSL the external PSK as a session. OpenSSL may call this twice
// (first ClientHello and after a HelloRetryRequest); each call gets its own reference.
int client_use_session(SSL* ssl, const EVP_MD* md, const unsigned char** id, std::size_t* id_len,
                       SSL_SESSION** session) {
    *session = nullptr;
    *id = nullptr;
    *id_len = 0;
    TlsEngine::Impl* engine = engine_of(ssl);
    if (engine == nullptr) return 0;
    if (engine->client_session == nullptr) {
        SSL_SESSION* created =
            new_psk_session(*engine, tls13_session_cipher(ssl, engine->context->suites.front()),
                            engine->client_key);
        if (created == nullptr) return 0;
        engine->client_session = created;
        engine->client_key = SecretKey{};  // OpenSSL has its own copy now
    }
    // After a HelloRetryRequest OpenSSL names the suite's hash; ours is always SHA-256.
    if (md != nullptr && EVP_MD_get_type(md) != NID_sha256) return 1;
    if (SSL_SESSION_up_ref(engine->client_session) != 1) return 0;
    *session = engine->client_session;
    *id = reinterpret_cast<const unsigned char*>(engine->identity.data());
    *id_len = engine->identity.size();
    return 1;
}

// A one-octet-length list of the ClientHello extension `type`; nullopt if it is absent or
// malformed.
std::optional<ByteView> client_hello_u8_list(SSL* ssl, unsigned int type) {
    auto ext = client_hello_ext(ssl, type);
    if (!ext) return std::nullopt;
    Reader reader(*ext);
    std::uint8_t length = 0;
    ByteView list;
    if (!reader.u8(length) || !reader.bytes(length, list)) return std::nullopt;
    return list;
}

// Whether the client's supported_versions include TLS 1.3.
bool offers_tls13(SSL* ssl) {
    const auto list = client_hello_u8_list(ssl, kExtSupportedVersions);
    if (!list) return false;
    for (std::size_t i = 0; i + 1 < list->size(); i += 2) {
        if (((unsigned{(*list)[i]} << 8) | (*list)[i + 1]) == kTls13Wire) return true;
    }
    return false;
}

// Fails the ClientHello with the engine's own verdict and `alert`.
int refuse_client_hello(TlsEngine::Impl& engine, int* alert, int alert_value, TlsError error,
                        std::string detail) {
    engine.callback_error = error;
    engine.callback_detail = std::move(detail);
    *alert = alert_value;
    return SSL_CLIENT_HELLO_ERROR;
}

// Looks up the identities of a pre_shared_key extension (at most kMaxIdentitiesLookedUp) and
// keeps the first one the lookup knows.
int lookup_offered_identities(TlsEngine::Impl& engine, ByteView psk, int* alert) {
    // OfferedPsks: identities<7..2^16-1> of (identity<1..2^16-1>, obfuscated_ticket_age).
    Reader reader(psk);
    std::size_t list_length = 0;
    ByteView list;
    if (!reader.u16(list_length) || !reader.bytes(list_length, list))
        return refuse_client_hello(engine, alert, SSL_AD_DECODE_ERROR, TlsError::kProtocolError,
                                   "malformed pre_shared_key extension");
    Reader identities(list);
    std::string first_offered;
    for (std::size_t looked_up = 0; !identities.empty() && looked_up < kMaxIdentitiesLookedUp;) {
        std::size_t id_length = 0;
        ByteView id_bytes;
        if (!identities.u16(id_length) || !identities.bytes(id_length, id_bytes) ||
            !identities.skip(4))
            return refuse_client_hello(engine, alert, SSL_AD_DECODE_ERROR, TlsError::kProtocolError,
                                       "malformed pre_shared_key extension");
        const std::string_view id(reinterpret_cast<const char*>(id_bytes.data()), id_bytes.size());
        if (looked_up == 0) first_offered = std::string(id);
        ++looked_up;
        if (!valid_identity(id)) continue;
        bool threw = false;
        auto key = run_lookup(engine, id, threw);
        if (threw) {
            *alert = SSL_AD_INTERNAL_ERROR;
            return SSL_CLIENT_HELLO_ERROR;
        }
        if (key) {
            engine.found_key = std::move(key);
            engine.identity = std::string(id);
            engine.identity_found = true;
            return SSL_CLIENT_HELLO_SUCCESS;
        }
    }
    engine.lookup_missed = true;
    engine.callback_detail = "unknown PSK identity '" + printable(first_offered) + "'";
    if (first_offered.empty()) {
        *alert = SSL_AD_UNKNOWN_PSK_IDENTITY;
        return SSL_CLIENT_HELLO_ERROR;
    }
    // Go on with a decoy key: the binder fails as it would for a wrong key.
    engine.found_key = decoy_psk(first_offered);
    engine.identity = std::move(first_offered);
    engine.identity_found = true;
    return SSL_CLIENT_HELLO_SUCCESS;
}

// TLS 1.3 server, first look at the ClientHello: look the offered identities up here, so
// that an unknown identity is answered with unknown_psk_identity (RFC 8446 section 6.2)
// instead of OpenSSL's fallback to certificates ("no suitable signature algorithm").
int server_client_hello(SSL* ssl, int* alert, void* /*arg*/) {
    TlsEngine::Impl* engine = engine_of(ssl);
    if (engine == nullptr) {
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_CLIENT_HELLO_ERROR;
    }
    // A client without TLS 1.3 is refused by version negotiation, with the right alert.
    if (!offers_tls13(ssl)) return SSL_CLIENT_HELLO_SUCCESS;
    // After a HelloRetryRequest the identity was already looked up.
    if (engine->identity_found) return SSL_CLIENT_HELLO_SUCCESS;

    const auto modes = client_hello_u8_list(ssl, kExtPskKeyExchangeModes);
    const bool dhe_offered =
        modes && std::find(modes->begin(), modes->end(), kPskDheKe) != modes->end();
    auto psk = client_hello_ext(ssl, kExtPreSharedKey);
    if (!psk) {
        engine->lookup_missed = true;
        engine->callback_detail = "the client offered no PSK identity";
        *alert = SSL_AD_UNKNOWN_PSK_IDENTITY;
        return SSL_CLIENT_HELLO_ERROR;
    }
    if (!dhe_offered)
        return refuse_client_hello(
            *engine, alert, SSL_AD_HANDSHAKE_FAILURE, TlsError::kProtocolError,
            "the client does not offer psk_dhe_ke (PSK with (EC)DHE is required)");
    return lookup_offered_identities(*engine, *psk, alert);
}

// TLS 1.3 server: build the PSK session for the identity the ClientHello callback found.
// Other identities in the same ClientHello are skipped (*session stays null).
int server_find_session(SSL* ssl, const unsigned char* id, std::size_t id_len,
                        SSL_SESSION** session) {
    *session = nullptr;
    TlsEngine::Impl* engine = engine_of(ssl);
    if (engine == nullptr) return 0;
    const std::string_view offered(reinterpret_cast<const char*>(id), id_len);
    if (!engine->identity_found || !engine->found_key || offered != engine->identity) return 1;
    const SSL_CIPHER* cipher = SSL_get_pending_cipher(ssl);
    if (cipher == nullptr) cipher = tls13_session_cipher(ssl, engine->context->suites.front());
    SSL_SESSION* created = new_psk_session(*engine, cipher, *engine->found_key);
    if (created == nullptr) return 0;
    *session = created;  // OpenSSL takes this reference (and wipes it when done)
    return 1;
}

// TLS 1.2 client: identity and PSK for the ClientKeyExchange.
unsigned int client_psk_tls12(SSL* ssl, const char* /*hint*/, char* identity,
                              unsigned int max_identity_len, unsigned char* psk,
                              unsigned int max_psk_len) {
    TlsEngine::Impl* engine = engine_of(ssl);
    if (engine == nullptr || engine->identity.size() >= max_identity_len ||
        max_psk_len < kKeySize) {
        return 0;
    }
    std::memcpy(identity, engine->identity.data(), engine->identity.size());
    identity[engine->identity.size()] = '\0';
    std::memcpy(psk, engine->client_key.data(), kKeySize);  // OpenSSL wipes its buffer
    engine->client_key = SecretKey{};
    return static_cast<unsigned int>(kKeySize);
}

// TLS 1.2 server: look the client's identity up. Returning 0 makes OpenSSL send
// unknown_psk_identity; more than PSK_MAX_PSK_LEN makes it send internal_error.
unsigned int server_psk_tls12(SSL* ssl, const char* identity, unsigned char* psk,
                              unsigned int max_psk_len) {
    TlsEngine::Impl* engine = engine_of(ssl);
    constexpr unsigned int kInternalError = PSK_MAX_PSK_LEN + 1;
    if (engine == nullptr || identity == nullptr || max_psk_len < kKeySize) return kInternalError;
    const std::string_view id(identity);
    bool threw = false;
    auto key = valid_identity(id) ? run_lookup(*engine, id, threw) : std::nullopt;
    if (threw) return kInternalError;
    if (!key) {
        // Go on with a decoy key: the Finished fails as it would for a wrong key.
        engine->lookup_missed = true;
        engine->callback_detail = "unknown PSK identity '" + printable(id) + "'";
        key = decoy_psk(id);
    }
    std::memcpy(psk, key->data(), kKeySize);  // OpenSSL wipes its buffer; *key wipes itself
    engine->identity = std::string(id);
    engine->identity_found = true;
    return static_cast<unsigned int>(kKeySize);
}

bool is_bad_psk_reason(int reason) {
    switch (reason) {
        case SSL_R_BINDER_DOES_NOT_VERIFY:
        case SSL_R_TLSV1_ALERT_DECRYPT_ERROR:
        case SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC:
        case SSL_R_DECRYPTION_FAILED:
        case SSL_R_SSLV3_ALERT_BAD_RECORD_MAC:
        case SSL_R_TLSV1_ALERT_DECRYPTION_FAILED:
        case SSL_R_DIGEST_CHECK_FAILED:
            return true;
        default:
            return false;
    }
}

}  // namespace

namespace {

// The suites a configuration asks for, checked against the mode's allowed ones.
std::vector<std::string> chosen_suites(const TlsConfig& config) {
    const auto allowed = allowed_suites(config.mode);
    std::vector<std::string> suites;
    if (config.suites.empty()) {
        for (auto name : allowed) suites.emplace_back(name);
        return suites;
    }
    for (const auto& name : config.suites) {
        if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
            throw std::invalid_argument("TLS suite not allowed in " +
                                        std::string(to_string(config.mode)) + ": " + name);
        }
        if (std::find(suites.begin(), suites.end(), name) == suites.end()) {
            suites.push_back(name);
        }
    }
    return suites;
}

// The mode's version, groups, options, suites and PSK callbacks. False if OpenSSL refused one.
bool configure(SSL_CTX* ctx, const TlsConfig& config, const std::string& suite_list) {
    const int version = config.mode == Mode::kTls13 ? TLS1_3_VERSION : TLS1_2_VERSION;
    bool ok = SSL_CTX_set_min_proto_version(ctx, version) == 1 &&
              SSL_CTX_set_max_proto_version(ctx, version) == 1 &&
              SSL_CTX_set1_groups_list(ctx, kGroups) == 1;
    // 112-bit floor: refuses weak (EC)DHE groups from a peer.
    SSL_CTX_set_security_level(ctx, 2);
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_TICKET |
                                 SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    SSL_CTX_clear_options(ctx, SSL_OP_ALLOW_NO_DHE_KEX);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    ok = ok && SSL_CTX_set_num_tickets(ctx, 0) == 1;
    // An idle connection gives its record buffers back (about 34 KiB: a 16 KiB record each
    // way) and gets them again for its next record: a server holding thousands of idle links
    // keeps OpenSSL's per-connection state only (docs/benchmarks.md, row f).
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (config.mode == Mode::kTls13) {
        ok = ok && SSL_CTX_set_ciphersuites(ctx, suite_list.c_str()) == 1;
        if (config.role == Role::kClient) {
            SSL_CTX_set_psk_use_session_callback(ctx, client_use_session);
        } else {
            SSL_CTX_set_client_hello_cb(ctx, server_client_hello, nullptr);
            SSL_CTX_set_psk_find_session_callback(ctx, server_find_session);
        }
        return ok;
    }
    ok = ok && SSL_CTX_set_ciphersuites(ctx, "") == 1 &&
         SSL_CTX_set_cipher_list(ctx, suite_list.c_str()) == 1;
    if (ok && config.role == Role::kServer) {
        // DHE-PSK: the RFC 7919 group that matches the suite's 128-bit strength.
        EVP_PKEY* params = named_dh_group(kDheGroup);
        ok = params != nullptr && SSL_CTX_set0_tmp_dh_pkey(ctx, params) == 1;
        if (!ok) EVP_PKEY_free(params);
    }
    if (config.role == Role::kClient) {
        SSL_CTX_set_psk_client_callback(ctx, client_psk_tls12);
    } else {
        SSL_CTX_set_psk_server_callback(ctx, server_psk_tls12);
    }
    return ok;
}

// How many of the context's active suites belong to `mode` (every requested suite must
// exist in this OpenSSL build).
std::size_t active_suites(SSL_CTX* ctx, Mode mode) {
    const int version = mode == Mode::kTls13 ? TLS1_3_VERSION : TLS1_2_VERSION;
    STACK_OF(SSL_CIPHER)* active = SSL_CTX_get_ciphers(ctx);
    std::size_t count = 0;
    for (int i = 0; active != nullptr && i < sk_SSL_CIPHER_num(active); ++i) {
        const SSL_CIPHER* c = sk_SSL_CIPHER_value(active, i);
        // TLS 1.3 suites are 0x13xx (RFC 8446 appendix B.4).
        const bool tls13_suite = (SSL_CIPHER_get_protocol_id(c) >> 8) == 0x13;
        const int cipher_version = tls13_suite ? TLS1_3_VERSION : TLS1_2_VERSION;
        if (cipher_version == version) ++count;
    }
    return count;
}

}  // namespace

TlsContext::TlsContext(TlsConfig config) : impl_(std::make_shared<Impl>()) {
    Impl& impl = *impl_;
    impl.role = config.role;
    impl.mode = config.mode;
    if (config.role == Role::kServer && !config.psk_lookup) {
        throw std::invalid_argument("TLS server context needs a PSK lookup");
    }
    impl.lookup = std::move(config.psk_lookup);
    // Draw the decoy-PSK secret now (it throws here, never inside an OpenSSL callback).
    if (config.role == Role::kServer) (void)decoy_psk("-");
    impl.suites = chosen_suites(config);

    ERR_clear_error();
    impl.ctx = SSL_CTX_new(TLS_method());
    if (impl.ctx == nullptr) {
        throw std::runtime_error("SSL_CTX_new failed: " + drain_openssl_errors());
    }
    SSL_CTX* ctx = impl.ctx;
    SSL_CTX_set_ex_data(ctx, 0, impl_.get());

    const std::string suite_list = join(impl.suites);
    if (!configure(ctx, config, suite_list)) {
        throw std::runtime_error("cannot configure the TLS context: " + drain_openssl_errors());
    }
    if (active_suites(ctx, config.mode) != impl.suites.size()) {
        throw std::runtime_error("this OpenSSL lacks a configured suite: " + suite_list);
    }
    if (config.role == Role::kClient) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, reject_certificates);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
    }

    if (!config.keylog_path.empty()) {
        impl.keylog_fd =
            ::open(config.keylog_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (impl.keylog_fd < 0) {
            throw std::runtime_error("cannot open key-log file " + config.keylog_path + ": " +
                                     std::strerror(errno));
        }
        SSL_CTX_set_keylog_callback(ctx, keylog_callback);
    }
}

Role TlsContext::role() const noexcept {
    return impl_->role;
}
Mode TlsContext::mode() const noexcept {
    return impl_->mode;
}
const std::vector<std::string>& TlsContext::suites() const noexcept {
    return impl_->suites;
}

// --- Engine ----------------------------------------------------------------------------------

void TlsEngine::Impl::fail_from_openssl(int ssl_error) {
    if (ssl_error == SSL_ERROR_ZERO_RETURN) {
        error = TlsError::kPeerClosed;
        detail = "the peer sent close_notify";
        release_secrets();
        return;
    }
    int reason = 0;
    std::string openssl_text = drain_openssl_errors(&reason);
    if (openssl_text.empty()) {
        openssl_text = ssl_error == SSL_ERROR_SYSCALL
                           ? "unexpected end of input"
                           : "OpenSSL error " + std::to_string(ssl_error);
    }

    if (lookup_missed) {
        fail(TlsError::kUnknownIdentity, callback_detail);
    } else if (callback_error != TlsError::kNone) {
        fail(callback_error, callback_detail + " [" + openssl_text + "]");
    } else if (reason == SSL_R_TLSV1_ALERT_UNKNOWN_PSK_IDENTITY ||
               reason == SSL_R_PSK_IDENTITY_NOT_FOUND) {
        fail(TlsError::kUnknownIdentity, "the server does not know PSK identity '" +
                                             printable(identity) + "' [" + openssl_text + "]");
    } else if (!handshake_complete && is_bad_psk_reason(reason)) {
        fail(TlsError::kBadPsk, "the PSKs differ [" + openssl_text + "]");
    } else if (role == Role::kClient && context->mode == Mode::kTls13 &&
               reason == SSL_R_SSLV3_ALERT_ILLEGAL_PARAMETER &&
               SSL_get_state(ssl) == TLS_ST_CW_CLNT_HELLO) {
        // OpenSSL servers answer a binder that does not verify with illegal_parameter (RFC 8446
        // asks for decrypt_error). Our ClientHello is well-formed, and the binder is the only
        // part of it whose validity depends on a secret.
        fail(TlsError::kBadPsk,
             "the server rejected the PSK binder: the PSKs differ [" + openssl_text + "]");
    } else if (role == Role::kServer && reason == SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM) {
        // OpenSSL 3.0 falls back to certificates when no offered PSK was usable (e.g. another
        // identity in the ClientHello after a HelloRetryRequest), and we have none.
        fail(TlsError::kUnknownIdentity,
             "no PSK identity the client offered was usable [" + openssl_text + "]");
    } else if (reason == SSL_R_CERTIFICATE_VERIFY_FAILED) {
        fail(TlsError::kProtocolError,
             "the server authenticated with a certificate instead of the PSK [" + openssl_text +
                 "]");
    } else {
        fail(TlsError::kProtocolError, openssl_text);
    }
}

void TlsEngine::Impl::on_handshake_complete() {
    // Defence in depth: the handshake must have been authenticated by the PSK.
    bool psk_used = false;
    if (SSL_version(ssl) == TLS1_3_VERSION) {
        psk_used = SSL_session_reused(ssl) == 1;
    } else if (const SSL_CIPHER* c = SSL_get_current_cipher(ssl)) {
        psk_used = SSL_CIPHER_get_auth_nid(c) == NID_auth_psk;
    }
    if (!psk_used) {
        fail(TlsError::kProtocolError, "the handshake completed without PSK authentication");
        return;
    }
    if (lookup_missed) {  // never with a decoy key
        fail(TlsError::kUnknownIdentity, callback_detail);
        return;
    }
    handshake_complete = true;
    release_secrets();
    lookup = nullptr;  // only a ClientHello calls it (and what it captured goes with it)
}

void TlsEngine::Impl::flush_plaintext() {
    if (plaintext_out.empty() || !handshake_complete || !can_send()) return;
    std::size_t done = 0;
    while (done < plaintext_out.size()) {
        std::size_t written = 0;
        ERR_clear_error();
        const int rc =
            SSL_write_ex(ssl, plaintext_out.data() + done, plaintext_out.size() - done, &written);
        if (rc != 1) {
            const int err = SSL_get_error(ssl, rc);
            if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) break;
            fail_from_openssl(err);
            return;
        }
        done += written;
    }
    wipe(plaintext_out.data(), done);
    plaintext_out.erase(plaintext_out.begin(),
                        plaintext_out.begin() + static_cast<std::ptrdiff_t>(done));
    if (plaintext_out.empty()) plaintext_out.shrink_to_fit();  // an idle engine holds none
}

void TlsEngine::Impl::advance() {
    if (!can_run() || (closed && !handshake_complete)) return;
    if (!handshake_complete) {
        ERR_clear_error();
        const int rc = SSL_do_handshake(ssl);
        if (rc != 1) {
            const int err = SSL_get_error(ssl, rc);
            if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) fail_from_openssl(err);
            return;
        }
        on_handshake_complete();
        if (!can_run()) return;
    }
    flush_plaintext();
    // Not zeroed first: SSL_read_ex writes what it returns, and only that is wiped after.
    std::array<std::uint8_t, kReadChunk> buffer;  // NOLINT(cppcoreguidelines-pro-type-member-init)
    std::size_t used = 0;
    while (can_run()) {
        std::size_t got = 0;
        ERR_clear_error();
        const int rc = SSL_read_ex(ssl, buffer.data(), buffer.size(), &got);
        if (rc == 1) {
            plaintext_in.insert(plaintext_in.end(), buffer.begin(),
                                buffer.begin() + static_cast<std::ptrdiff_t>(got));
            used = std::max(used, got);
            continue;
        }
        const int err = SSL_get_error(ssl, rc);
        if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) fail_from_openssl(err);
        break;
    }
    wipe(buffer.data(), used);
}

void TlsEngine::Impl::release_idle_buffers() {
    // Memory BIOs keep the capacity of the largest flight they carried (a few hundred bytes
    // each after a handshake, up to a record after a large message). Once both are empty on
    // an established connection, fresh ones replace them: an idle link holds no buffer.
    if (!handshake_complete || BIO_ctrl_pending(network_in) != 0 ||
        BIO_ctrl_pending(network_out) != 0)
        return;
    BUF_MEM* in = nullptr;
    BUF_MEM* out = nullptr;
    BIO_get_mem_ptr(network_in, &in);
    BIO_get_mem_ptr(network_out, &out);
    if ((in == nullptr || in->max == 0) && (out == nullptr || out->max == 0)) return;
    BIO* fresh_in = BIO_new(BIO_s_mem());
    BIO* fresh_out = BIO_new(BIO_s_mem());
    if (fresh_in == nullptr || fresh_out == nullptr) {  // keep the old ones: still correct
        BIO_free(fresh_in);
        BIO_free(fresh_out);
        ERR_clear_error();
        return;
    }
    SSL_set_bio(ssl, fresh_in, fresh_out);  // frees the old pair
    network_in = fresh_in;
    network_out = fresh_out;
}

TlsEngine::TlsEngine(const TlsContext& context, PskLookup lookup) : TlsEngine(context) {
    impl_->lookup = std::move(lookup);
}

TlsEngine::TlsEngine(const TlsContext& context) : impl_(std::make_unique<Impl>()) {
    if (context.role() != Role::kServer) {
        throw std::invalid_argument("a TLS server engine needs a server context");
    }
    impl_->context = context.impl_;
    impl_->role = Role::kServer;
    impl_->ssl = SSL_new(context.impl_->ctx);
    if (impl_->ssl == nullptr) throw std::runtime_error("SSL_new: " + drain_openssl_errors());
    impl_->network_in = BIO_new(BIO_s_mem());
    impl_->network_out = BIO_new(BIO_s_mem());
    if (impl_->network_in == nullptr || impl_->network_out == nullptr) {
        BIO_free(impl_->network_in);
        BIO_free(impl_->network_out);
        throw std::runtime_error("BIO_new: " + drain_openssl_errors());
    }
    SSL_set_bio(impl_->ssl, impl_->network_in, impl_->network_out);
    SSL_set_ex_data(impl_->ssl, 0, impl_.get());
    SSL_set_accept_state(impl_->ssl);
}

TlsEngine::TlsEngine(const TlsContext& context, ClientPsk psk) : impl_(std::make_unique<Impl>()) {
    if (context.role() != Role::kClient) {
        throw std::invalid_argument("a TLS client engine needs a client context");
    }
    if (!valid_identity(psk.identity)) {
        throw std::invalid_argument("PSK identity must be 1.." +
                                    std::to_string(kMaxIdentityLength) +
                                    " bytes without a NUL byte");
    }
    if (psk.key.is_zero()) throw std::invalid_argument("the PSK is all zero (uninitialised)");
    impl_->context = context.impl_;
    impl_->role = Role::kClient;
    impl_->identity = std::move(psk.identity);
    impl_->client_key = std::move(psk.key);
    impl_->ssl = SSL_new(context.impl_->ctx);
    if (impl_->ssl == nullptr) throw std::runtime_error("SSL_new: " + drain_openssl_errors());
    impl_->network_in = BIO_new(BIO_s_mem());
    impl_->network_out = BIO_new(BIO_s_mem());
    if (impl_->network_in == nullptr || impl_->network_out == nullptr) {
        BIO_free(impl_->network_in);
        BIO_free(impl_->network_out);
        throw std::runtime_error("BIO_new: " + drain_openssl_errors());
    }
    SSL_set_bio(impl_->ssl, impl_->network_in, impl_->network_out);
    SSL_set_ex_data(impl_->ssl, 0, impl_.get());
    SSL_set_connect_state(impl_->ssl);
    impl_->advance();  // ClientHello
}

TlsEngine::TlsEngine(TlsEngine&&) noexcept = default;
TlsEngine& TlsEngine::operator=(TlsEngine&&) noexcept = default;
TlsEngine::~TlsEngine() = default;

void TlsEngine::feed(ByteView ciphertext) {
    Impl& impl = *impl_;
    if (!impl.can_run()) return;
    while (!ciphertext.empty()) {
        const std::size_t chunk = std::min<std::size_t>(ciphertext.size(), INT_MAX);
        std::size_t written = 0;
        if (BIO_write_ex(impl.network_in, ciphertext.data(), chunk, &written) != 1) {
            impl.fail(TlsError::kProtocolError, "cannot buffer input: " + drain_openssl_errors());
            return;
        }
        ciphertext = ciphertext.subspan(written);
    }
    impl.advance();
    impl.release_idle_buffers();
}

Bytes TlsEngine::take_output() {
    Bytes out;
    const std::size_t pending = BIO_ctrl_pending(impl_->network_out);
    if (pending == 0) return out;
    out.resize(pending);
    std::size_t got = 0;
    if (BIO_read_ex(impl_->network_out, out.data(), pending, &got) != 1) got = 0;
    out.resize(got);
    impl_->release_idle_buffers();
    return out;
}

bool TlsEngine::has_output() const noexcept {
    return BIO_ctrl_pending(impl_->network_out) > 0;
}

bool TlsEngine::write(ByteView plaintext) {
    Impl& impl = *impl_;
    if (!impl.can_send()) return false;
    impl.plaintext_out.insert(impl.plaintext_out.end(), plaintext.begin(), plaintext.end());
    impl.flush_plaintext();
    return impl.can_send();
}

Bytes TlsEngine::read() {
    return std::exchange(impl_->plaintext_in, Bytes{});
}

void TlsEngine::close() {
    Impl& impl = *impl_;
    if (impl.closed) return;
    if (impl.handshake_complete && impl.can_send()) {
        impl.flush_plaintext();
        if (impl.can_send()) {
            ERR_clear_error();
            const int rc = SSL_shutdown(impl.ssl);  // queues close_notify
            if (rc < 0) {
                const int err = SSL_get_error(impl.ssl, rc);
                if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
                    impl.fail_from_openssl(err);
                }
            }
        }
    }
    impl.closed = true;
    if (!impl.plaintext_out.empty()) wipe(impl.plaintext_out.data(), impl.plaintext_out.size());
    impl.plaintext_out.clear();
    if (!impl.handshake_complete) impl.release_secrets();
}

Role TlsEngine::role() const noexcept {
    return impl_->role;
}
bool TlsEngine::handshake_done() const noexcept {
    return impl_->handshake_complete && !failed();
}
TlsError TlsEngine::error() const noexcept {
    return impl_->error;
}
bool TlsEngine::failed() const noexcept {
    return impl_->error != TlsError::kNone && impl_->error != TlsError::kPeerClosed;
}
const std::string& TlsEngine::error_detail() const noexcept {
    return impl_->detail;
}

std::string TlsEngine::peer_identity() const {
    if (impl_->role == Role::kServer && (!impl_->identity_found || impl_->lookup_missed)) return {};
    return impl_->identity;
}

std::string TlsEngine::version() const {
    if (!impl_->handshake_complete) return {};
    return SSL_get_version(impl_->ssl);
}

std::string TlsEngine::cipher() const {
    if (!impl_->handshake_complete) return {};
    const SSL_CIPHER* c = SSL_get_current_cipher(impl_->ssl);
    return c != nullptr ? SSL_CIPHER_get_name(c) : "";
}

std::string TlsEngine::key_exchange_group() const {
    if (!impl_->handshake_complete) return {};
    SSL* ssl = impl_->ssl;
    if (SSL_version(ssl) == TLS1_2_VERSION) {
        const SSL_CIPHER* c = SSL_get_current_cipher(ssl);
        if (c == nullptr) return {};
        const int kx = SSL_CIPHER_get_kx_nid(c);
        if (kx == NID_kx_psk) return {};
        if (kx == NID_kx_dhe_psk) {
            // The server's ephemeral key is gone after the handshake; its group is ours.
            if (impl_->role == Role::kServer) return kDheGroup;
            EVP_PKEY* key = nullptr;
            std::string name = "DH";
            if (SSL_get_peer_tmp_key(ssl, &key) == 1 && key != nullptr) {
                std::array<char, 64> group{};
                std::size_t length = 0;
                if (EVP_PKEY_get_group_name(key, group.data(), group.size(), &length) == 1 &&
                    length > 0) {
                    name = group.data();
                } else {
                    name += '-';
                    name += std::to_string(EVP_PKEY_get_bits(key));
                }
            }
            EVP_PKEY_free(key);
            return name;
        }
    }
    const auto group = static_cast<int>(SSL_get_negotiated_group(ssl));
    if (group == 0) return {};
    const char* name = SSL_group_to_name(ssl, group);
    return name != nullptr ? name : "";
}

}  // namespace cpns::tls
