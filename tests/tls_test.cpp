// PSK-TLS engine: in-memory handshakes in both modes and every allowed suite, typed failures,
// the key log, and interop over 127.0.0.1 with the openssl and gnutls-cli command-line tools.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tls/tls.hpp"
#include "tls/tls_socket.hpp"

extern char** environ;

namespace {

using namespace std::chrono_literals;
using cpns::Bytes;
using cpns::ByteView;
using cpns::SecretKey;
using namespace cpns::tls;

constexpr auto kIoTimeout = 5s;

SecretKey make_key(std::uint8_t seed) {
    Bytes raw(cpns::kKeySize);
    for (std::size_t i = 0; i < raw.size(); ++i) {
        raw[i] = static_cast<std::uint8_t>(seed + 7 * i);
    }
    return SecretKey(raw);
}

Bytes bytes_of(std::string_view text) {
    const ByteView view = cpns::as_bytes(text);
    return Bytes(view.begin(), view.end());
}

std::string text_of(const Bytes& data) {
    return std::string(data.begin(), data.end());
}

// A server-side PSK table and a counter of lookups.
struct KeyTable {
    std::map<std::string, SecretKey, std::less<>> keys;
    std::shared_ptr<std::atomic<int>> lookups = std::make_shared<std::atomic<int>>(0);

    PskLookup lookup() const {
        return [keys = keys, lookups = lookups](std::string_view id) -> std::optional<SecretKey> {
            ++*lookups;
            auto it = keys.find(id);
            if (it == keys.end()) return std::nullopt;
            return it->second;
        };
    }
};

KeyTable default_table() {
    KeyTable table;
    table.keys.emplace("pne-1", make_key(1));
    table.keys.emplace("gw-7", make_key(7));
    return table;
}

TlsContext server_context(Mode mode, const KeyTable& table, std::vector<std::string> suites = {},
                          std::string keylog = {}) {
    TlsConfig config;
    config.role = Role::kServer;
    config.mode = mode;
    config.psk_lookup = table.lookup();
    config.suites = std::move(suites);
    config.keylog_path = std::move(keylog);
    return TlsContext(std::move(config));
}

TlsContext client_context(Mode mode, std::vector<std::string> suites = {},
                          std::string keylog = {}) {
    TlsConfig config;
    config.role = Role::kClient;
    config.mode = mode;
    config.suites = std::move(suites);
    config.keylog_path = std::move(keylog);
    return TlsContext(std::move(config));
}

// Moves bytes between two in-memory peers until neither has anything to send.
template <typename A, typename B>
void pump(A& a, B& b) {
    for (int round = 0; round < 50; ++round) {
        Bytes from_a = a.take_output();
        Bytes from_b = b.take_output();
        if (from_a.empty() && from_b.empty()) return;
        if (!from_a.empty()) b.feed(from_a);
        if (!from_b.empty()) a.feed(from_b);
    }
    FAIL() << "the peers did not settle within 50 rounds";
}

void expect_data_both_ways(TlsEngine& client, TlsEngine& server) {
    ASSERT_TRUE(client.write(bytes_of("hello from the PNE")));
    ASSERT_TRUE(server.write(bytes_of("hello from the PN GW")));
    pump(client, server);
    EXPECT_EQ(text_of(server.read()), "hello from the PNE");
    EXPECT_EQ(text_of(client.read()), "hello from the PN GW");
}

std::string temp_path(const std::string& name) {
    return ::testing::TempDir() + "cpns_tls_" + std::to_string(::getpid()) + "_" + name;
}

std::vector<std::string> read_lines(const std::string& path) {
    std::ifstream in(path);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
}

// --- A raw OpenSSL peer for what our engine refuses to configure ---------------------------

struct RawPsk {
    std::string identity;
    SecretKey key;
};
thread_local const RawPsk* g_raw_psk = nullptr;

unsigned int raw_client_psk12(SSL*, const char*, char* identity, unsigned int max_identity,
                              unsigned char* psk, unsigned int max_psk) {
    if (g_raw_psk == nullptr || g_raw_psk->identity.size() >= max_identity || max_psk < 32) {
        return 0;
    }
    std::memcpy(identity, g_raw_psk->identity.c_str(), g_raw_psk->identity.size() + 1);
    std::memcpy(psk, g_raw_psk->key.view().data(), 32);
    return 32;
}

int raw_client_session13(SSL* ssl, const EVP_MD*, const unsigned char** id, std::size_t* idlen,
                         SSL_SESSION** sess) {
    *sess = nullptr;
    if (g_raw_psk == nullptr) return 1;
    static constexpr unsigned char kAes128Gcm[] = {0x13, 0x01};
    SSL_SESSION* s = SSL_SESSION_new();
    SSL_SESSION_set1_master_key(s, g_raw_psk->key.view().data(), 32);
    SSL_SESSION_set_cipher(s, SSL_CIPHER_find(ssl, kAes128Gcm));
    SSL_SESSION_set_protocol_version(s, TLS1_3_VERSION);
    *sess = s;
    *id = reinterpret_cast<const unsigned char*>(g_raw_psk->identity.data());
    *idlen = g_raw_psk->identity.size();
    return 1;
}

unsigned int raw_server_psk12(SSL*, const char* identity, unsigned char* psk, unsigned int max) {
    if (g_raw_psk == nullptr || g_raw_psk->identity != identity || max < 32) return 0;
    std::memcpy(psk, g_raw_psk->key.view().data(), 32);
    return 32;
}

// A TLS client or server made directly with OpenSSL, over memory BIOs.
class RawPeer {
  public:
    struct Options {
        bool server = false;
        int version = TLS1_3_VERSION;
        std::string cipher_list{};   // TLS 1.2
        std::string ciphersuites{};  // TLS 1.3
        std::string groups{};
        bool psk = true;
        bool allow_no_dhe = false;
    };

    explicit RawPeer(const Options& options) {
        ctx_ = SSL_CTX_new(TLS_method());
        SSL_CTX_set_security_level(ctx_, 0);
        SSL_CTX_set_min_proto_version(ctx_, options.version);
        SSL_CTX_set_max_proto_version(ctx_, options.version);
        if (!options.cipher_list.empty()) {
            EXPECT_EQ(SSL_CTX_set_cipher_list(ctx_, options.cipher_list.c_str()), 1)
                << options.cipher_list;
        }
        if (!options.ciphersuites.empty()) {
            EXPECT_EQ(SSL_CTX_set_ciphersuites(ctx_, options.ciphersuites.c_str()), 1);
        }
        if (!options.groups.empty()) {
            EXPECT_EQ(SSL_CTX_set1_groups_list(ctx_, options.groups.c_str()), 1);
        }
        if (options.allow_no_dhe) SSL_CTX_set_options(ctx_, SSL_OP_ALLOW_NO_DHE_KEX);
        if (options.psk && !options.server) {
            SSL_CTX_set_psk_client_callback(ctx_, raw_client_psk12);
            if (options.version == TLS1_3_VERSION) {
                SSL_CTX_set_psk_use_session_callback(ctx_, raw_client_session13);
            }
        }
        if (options.psk && options.server) {
            SSL_CTX_set_psk_server_callback(ctx_, raw_server_psk12);
        }
        ssl_ = SSL_new(ctx_);
        in_ = BIO_new(BIO_s_mem());
        out_ = BIO_new(BIO_s_mem());
        SSL_set_bio(ssl_, in_, out_);
        if (options.server) {
            SSL_set_accept_state(ssl_);
        } else {
            SSL_set_connect_state(ssl_);
            step();
        }
    }
    ~RawPeer() {
        SSL_free(ssl_);
        SSL_CTX_free(ctx_);
    }
    RawPeer(const RawPeer&) = delete;
    RawPeer& operator=(const RawPeer&) = delete;

    void feed(ByteView data) {
        BIO_write(in_, data.data(), static_cast<int>(data.size()));
        step();
    }
    Bytes take_output() {
        Bytes out(BIO_ctrl_pending(out_));
        if (!out.empty()) BIO_read(out_, out.data(), static_cast<int>(out.size()));
        return out;
    }
    bool done() const { return SSL_is_init_finished(ssl_) == 1; }
    bool failed() const { return failed_; }
    const std::string& errors() const { return errors_; }
    std::string cipher() const { return SSL_get_cipher_name(ssl_); }

  private:
    void step() {
        if (failed_ || done()) return;
        ERR_clear_error();
        const int rc = SSL_do_handshake(ssl_);
        if (rc == 1) return;
        const int err = SSL_get_error(ssl_, rc);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return;
        failed_ = true;
        char text[256];
        while (unsigned long code = ERR_get_error()) {
            ERR_error_string_n(code, text, sizeof text);
            errors_ += text;
            errors_ += "; ";
        }
    }

    SSL_CTX* ctx_ = nullptr;
    SSL* ssl_ = nullptr;
    BIO* in_ = nullptr;
    BIO* out_ = nullptr;
    bool failed_ = false;
    std::string errors_;
};

// --- In-memory handshakes ----------------------------------------------------------------------

TEST(TlsEngine, Tls13HandshakeUsesPskWithEcdhe) {
    const KeyTable table = default_table();
    TlsContext server_ctx = server_context(Mode::kTls13, table);
    TlsContext client_ctx = client_context(Mode::kTls13);
    TlsEngine client(client_ctx, {"pne-1", make_key(1)});
    TlsEngine server(server_ctx);
    EXPECT_TRUE(client.has_output());  // the ClientHello
    pump(client, server);

    ASSERT_TRUE(client.handshake_done()) << client.error_detail();
    ASSERT_TRUE(server.handshake_done()) << server.error_detail();
    EXPECT_EQ(client.error(), TlsError::kNone);
    EXPECT_EQ(server.error(), TlsError::kNone);
    EXPECT_EQ(client.version(), "TLSv1.3");
    EXPECT_EQ(server.version(), "TLSv1.3");
    EXPECT_EQ(server.cipher(), "TLS_AES_128_GCM_SHA256");
    EXPECT_EQ(client.cipher(), server.cipher());
    // psk_dhe_ke: the key exchange ran over X25519.
    EXPECT_EQ(server.key_exchange_group(), "x25519");
    EXPECT_EQ(client.key_exchange_group(), "x25519");
    EXPECT_EQ(server.peer_identity(), "pne-1");
    EXPECT_EQ(client.peer_identity(), "pne-1");
    EXPECT_EQ(*table.lookups, 1);
    expect_data_both_ways(client, server);
}

TEST(TlsEngine, Tls13ChaCha20AndP256) {
    const KeyTable table = default_table();
    TlsContext server_ctx = server_context(Mode::kTls13, table);
    TlsContext client_ctx = client_context(Mode::kTls13, {"TLS_CHACHA20_POLY1305_SHA256"});
    TlsEngine client(client_ctx, {"gw-7", make_key(7)});
    TlsEngine server(server_ctx);
    pump(client, server);
    ASSERT_TRUE(server.handshake_done()) << server.error_detail();
    EXPECT_EQ(server.cipher(), "TLS_CHACHA20_POLY1305_SHA256");
    expect_data_both_ways(client, server);

    // A client whose only key share is for P-256.
    g_raw_psk = nullptr;
    const RawPsk psk{"gw-7", make_key(7)};
    g_raw_psk = &psk;
    RawPeer raw({.groups = "P-256"});
    TlsEngine server2(server_ctx);
    pump(raw, server2);
    g_raw_psk = nullptr;
    ASSERT_TRUE(raw.done()) << raw.errors();
    ASSERT_TRUE(server2.handshake_done()) << server2.error_detail();
    EXPECT_EQ(server2.key_exchange_group(), "secp256r1");
}

class Tls12Suite : public ::testing::TestWithParam<std::string_view> {};

TEST_P(Tls12Suite, HandshakeAndDataBothWays) {
    const KeyTable table = default_table();
    TlsContext server_ctx = server_context(Mode::kTls12Psk, table);
    TlsContext client_ctx = client_context(Mode::kTls12Psk, {std::string(GetParam())});
    TlsEngine client(client_ctx, {"pne-1", make_key(1)});
    TlsEngine server(server_ctx);
    pump(client, server);
    ASSERT_TRUE(client.handshake_done()) << client.error_detail();
    ASSERT_TRUE(server.handshake_done()) << server.error_detail();
    EXPECT_EQ(server.version(), "TLSv1.2");
    EXPECT_EQ(server.cipher(), GetParam());
    EXPECT_EQ(client.cipher(), GetParam());
    EXPECT_EQ(server.peer_identity(), "pne-1");
    const std::string suite(GetParam());
    if (suite.rfind("ECDHE-", 0) == 0) {
        EXPECT_EQ(server.key_exchange_group(), "x25519");
    } else if (suite.rfind("DHE-", 0) == 0) {
        EXPECT_EQ(server.key_exchange_group(), "ffdhe3072");
        EXPECT_EQ(client.key_exchange_group(), "ffdhe3072");
    } else {
        EXPECT_EQ(server.key_exchange_group(), "");
    }
    expect_data_both_ways(client, server);
}

TEST_P(Tls12Suite, WrongPskFailsOnBothSidesAsBadPsk) {
    const KeyTable table = default_table();
    TlsContext server_ctx = server_context(Mode::kTls12Psk, table);
    TlsContext client_ctx = client_context(Mode::kTls12Psk, {std::string(GetParam())});
    TlsEngine client(client_ctx, {"pne-1", make_key(2)});
    TlsEngine server(server_ctx);
    pump(client, server);
    EXPECT_EQ(server.error(), TlsError::kBadPsk) << server.error_detail();
    EXPECT_EQ(client.error(), TlsError::kBadPsk) << client.error_detail();
    EXPECT_FALSE(client.handshake_done());
    EXPECT_FALSE(server.handshake_done());
    EXPECT_FALSE(client.write(bytes_of("nothing")));
}

std::string suite_test_name(const ::testing::TestParamInfo<std::string_view>& param) {
    std::string name(param.param);
    std::replace(name.begin(), name.end(), '-', '_');
    return name;
}

INSTANTIATE_TEST_SUITE_P(AllAllowed, Tls12Suite,
                         ::testing::ValuesIn(allowed_suites(Mode::kTls12Psk).begin(),
                                             allowed_suites(Mode::kTls12Psk).end()),
                         suite_test_name);

TEST(TlsEngine, Tls12ServerPrefersForwardSecrecy) {
    const KeyTable table = default_table();
    TlsContext server_ctx = server_context(Mode::kTls12Psk, table);
    TlsContext client_ctx = client_context(Mode::kTls12Psk);
    TlsEngine client(client_ctx, {"gw-7", make_key(7)});
    TlsEngine server(server_ctx);
    pump(client, server);
    ASSERT_TRUE(server.handshake_done()) << server.error_detail();
    EXPECT_EQ(server.cipher(), "ECDHE-PSK-CHACHA20-POLY1305");
}

TEST(TlsEngine, Tls13WrongPskFailsOnBothSidesAsBadPsk) {
    const KeyTable table = default_table();
    TlsContext server_ctx = server_context(Mode::kTls13, table);
    TlsContext client_ctx = client_context(Mode::kTls13);
    TlsEngine client(client_ctx, {"pne-1", make_key(99)});
    TlsEngine server(server_ctx);
    pump(client, server);
    EXPECT_EQ(server.error(), TlsError::kBadPsk) << server.error_detail();
    EXPECT_EQ(client.error(), TlsError::kBadPsk) << client.error_detail();
    EXPECT_NE(server.error_detail().find("binder"), std::string::npos) << server.error_detail();
    EXPECT_TRUE(server.failed());
    // The server knows who tried (for a per-identity back-off).
    EXPECT_EQ(server.peer_identity(), "pne-1");
}

// The server knows locally that the identity is unknown; the client cannot tell it from a
// wrong key (no unknown_psk_identity alert that would let it enumerate identities).
TEST(TlsEngine, UnknownIdentityIsKnownToTheServerOnlyAndLooksLikeAWrongKey) {
    for (Mode mode : {Mode::kTls13, Mode::kTls12Psk}) {
        SCOPED_TRACE(std::string(to_string(mode)));
        const KeyTable table = default_table();
        TlsContext server_ctx = server_context(mode, table);
        TlsContext client_ctx = client_context(mode);
        TlsEngine client(client_ctx, {"stranger", make_key(1)});
        TlsEngine server(server_ctx);
        pump(client, server);
        EXPECT_EQ(server.error(), TlsError::kUnknownIdentity) << server.error_detail();
        EXPECT_EQ(client.error(), TlsError::kBadPsk) << client.error_detail();
        EXPECT_FALSE(client.handshake_done());
        EXPECT_FALSE(server.handshake_done());
        EXPECT_NE(server.error_detail().find("'stranger'"), std::string::npos);
        EXPECT_EQ(server.peer_identity(), "");
        EXPECT_EQ(*table.lookups, 1);
    }
}

// What a client sees of one failed handshake: every flight the server sent, and its verdict.
struct SeenByClient {
    std::vector<std::size_t> flight_sizes;  // sizes of the server's flights, in order
    Bytes last_flight;                      // the one carrying the alert
    TlsError error = TlsError::kNone;
};

SeenByClient failed_handshake(Mode mode, const std::string& identity, const SecretKey& key,
                              PskLookup engine_lookup = {}) {
    const KeyTable table = default_table();
    TlsContext server_ctx = server_context(mode, table);
    TlsContext client_ctx = client_context(mode);
    TlsEngine client(client_ctx, {identity, key});
    TlsEngine server(server_ctx, std::move(engine_lookup));
    SeenByClient seen;
    for (int round = 0; round < 50; ++round) {
        Bytes from_client = client.take_output();
        if (!from_client.empty()) server.feed(from_client);
        Bytes from_server = server.take_output();
        if (from_client.empty() && from_server.empty()) break;
        if (!from_server.empty()) {
            seen.flight_sizes.push_back(from_server.size());
            seen.last_flight = from_server;
            client.feed(from_server);
        }
    }
    EXPECT_TRUE(server.failed());
    seen.error = client.error();
    return seen;
}

// Finding 9: unknown, wrong-key and blocked identities got different alerts, which let an
// attacker enumerate identities and see when a back-off ends. On the wire they are now alike.
TEST(TlsEngine, UnknownWrongKeyAndBlockedIdentitiesAreIndistinguishableToTheClient) {
    // "Blocked": the owner's lookup refuses a known identity (a back-off).
    const PskLookup refuse_all = [](std::string_view) { return std::optional<SecretKey>(); };
    for (Mode mode : {Mode::kTls13, Mode::kTls12Psk}) {
        SCOPED_TRACE(std::string(to_string(mode)));
        const SeenByClient wrong_key = failed_handshake(mode, "pne-1", make_key(99));
        const SeenByClient unknown = failed_handshake(mode, "pne-9", make_key(1));
        const SeenByClient blocked = failed_handshake(mode, "pne-1", make_key(1), refuse_all);
        EXPECT_EQ(wrong_key.error, TlsError::kBadPsk);
        EXPECT_EQ(unknown.error, TlsError::kBadPsk);
        EXPECT_EQ(blocked.error, TlsError::kBadPsk);
        // Same message sequence (same flights, same sizes; the identities have equal length).
        EXPECT_EQ(unknown.flight_sizes, wrong_key.flight_sizes);
        EXPECT_EQ(blocked.flight_sizes, wrong_key.flight_sizes);
        ASSERT_FALSE(wrong_key.last_flight.empty());
        if (mode == Mode::kTls13) {
            // The alert is in clear (the binder fails on the ClientHello): the same octets.
            EXPECT_EQ(unknown.last_flight, wrong_key.last_flight);
            EXPECT_EQ(blocked.last_flight, wrong_key.last_flight);
            EXPECT_EQ(wrong_key.flight_sizes.size(), 1u);
        }
    }
}

TEST(TlsEngine, ClientWithoutPskIsRefusedAsUnknownIdentity) {
    const KeyTable table = default_table();
    TlsContext server_ctx = server_context(Mode::kTls13, table);
    RawPeer raw({.psk = false});
    TlsEngine server(server_ctx);
    pump(raw, server);
    EXPECT_TRUE(raw.failed());
    EXPECT_NE(raw.errors().find("unknown psk identity"), std::string::npos) << raw.errors();
    EXPECT_EQ(server.error(), TlsError::kUnknownIdentity) << server.error_detail();
    EXPECT_EQ(*table.lookups, 0);
}

TEST(TlsEngine, HelloRetryRequestLooksTheIdentityUpOnce) {
    const KeyTable table = default_table();
    TlsContext server_ctx = server_context(Mode::kTls13, table);
    const RawPsk psk{"pne-1", make_key(1)};
    g_raw_psk = &psk;
    // X448 is not in our groups: the server asks for X25519 in a HelloRetryRequest.
    RawPeer raw({.groups = "X448:X25519"});
    TlsEngine server(server_ctx);
    pump(raw, server);
    g_raw_psk = nullptr;
    ASSERT_TRUE(raw.done()) << raw.errors();
    ASSERT_TRUE(server.handshake_done()) << server.error_detail();
    EXPECT_EQ(server.key_exchange_group(), "x25519");
    EXPECT_EQ(*table.lookups, 1);
}

TEST(TlsEngine, ClientSurvivesHelloRetryRequest) {
    // The server only does P-256, our client's first key share is X25519: OpenSSL asks our
    // client for its PSK session a second time after the HelloRetryRequest.
    const RawPsk psk{"pne-1", make_key(1)};
    g_raw_psk = &psk;
    RawPeer raw({.server = true, .groups = "P-256"});
    TlsEngine client(client_context(Mode::kTls13), {"pne-1", make_key(1)});
    pump(client, raw);
    g_raw_psk = nullptr;
    ASSERT_TRUE(raw.done()) << raw.errors();
    ASSERT_TRUE(client.handshake_done()) << client.error_detail();
    EXPECT_EQ(client.key_exchange_group(), "secp256r1");
}

TEST(TlsEngine, CloseBeforeHandshakeAbandonsIt) {
    const KeyTable table = default_table();
    TlsContext server_ctx = server_context(Mode::kTls13, table);
    TlsEngine client(client_context(Mode::kTls13), {"pne-1", make_key(1)});
    TlsEngine server(server_ctx);
    server.feed(client.take_output());
    client.close();
    client.feed(server.take_output());
    EXPECT_FALSE(client.handshake_done());
    EXPECT_FALSE(client.has_output());
    EXPECT_FALSE(client.write(bytes_of("x")));
}

TEST(TlsEngine, PskWithoutDheIsNotAccepted) {
    // A client that offers psk_ke as well still gets (EC)DHE.
    const KeyTable table = default_table();
    TlsContext server_ctx = server_context(Mode::kTls13, table);
    const RawPsk psk{"pne-1", make_key(1)};
    g_raw_psk = &psk;
    RawPeer raw({.allow_no_dhe = true});
    TlsEngine server(server_ctx);
    pump(raw, server);
    g_raw_psk = nullptr;
    ASSERT_TRUE(server.handshake_done()) << server.error_detail();
    EXPECT_EQ(server.key_exchange_group(), "x25519");
}

TEST(TlsEngine, ClientOfferingOnlyPskKeIsRefused) {
    // Rewrite the ClientHello's psk_key_exchange_modes from psk_dhe_ke (1) to psk_ke (0).
    // The server refuses before it looks at the identity or the binder.
    const KeyTable table = default_table();
    TlsContext server_ctx = server_context(Mode::kTls13, table);
    TlsEngine client(client_context(Mode::kTls13), {"pne-1", make_key(1)});
    TlsEngine server(server_ctx);
    Bytes hello = client.take_output();
    const Bytes modes = {0x00, 0x2d, 0x00, 0x02, 0x01, 0x01};
    auto at = std::search(hello.begin(), hello.end(), modes.begin(), modes.end());
    ASSERT_NE(at, hello.end());
    *(at + 5) = 0x00;
    server.feed(hello);
    EXPECT_EQ(server.error(), TlsError::kProtocolError);
    EXPECT_NE(server.error_detail().find("psk_dhe_ke"), std::string::npos) << server.error_detail();
    EXPECT_EQ(*table.lookups, 0);
    client.feed(server.take_output());
    EXPECT_EQ(client.error(), TlsError::kProtocolError) << client.error_detail();
}

TEST(TlsEngine, VersionMismatchIsProtocolError) {
    const KeyTable table = default_table();
    TlsContext server_ctx = server_context(Mode::kTls13, table);
    TlsContext client_ctx = client_context(Mode::kTls12Psk);
    TlsEngine client(client_ctx, {"pne-1", make_key(1)});
    TlsEngine server(server_ctx);
    pump(client, server);
    EXPECT_EQ(server.error(), TlsError::kProtocolError) << server.error_detail();
    EXPECT_EQ(client.error(), TlsError::kProtocolError) << client.error_detail();
    EXPECT_EQ(*table.lookups, 0);
}

TEST(TlsEngine, DisallowedSuitesCannotBeConfigured) {
    for (const char* suite :
         {"PSK-AES128-CBC-SHA", "PSK-3DES-EDE-CBC-SHA", "PSK-RC4-SHA", "PSK-NULL-SHA256",
          "ECDHE-PSK-AES128-CBC-SHA", "PSK-AES128-CBC-SHA256", "TLS_AES_256_GCM_SHA384"}) {
        SCOPED_TRACE(suite);
        for (Mode mode : {Mode::kTls13, Mode::kTls12Psk}) {
            EXPECT_THROW(client_context(mode, {suite}), std::invalid_argument);
            EXPECT_THROW(server_context(mode, default_table(), {suite}), std::invalid_argument);
        }
    }
    // TLS 1.2 names are not TLS 1.3 suites and the other way round.
    EXPECT_THROW(client_context(Mode::kTls13, {"PSK-AES128-GCM-SHA256"}), std::invalid_argument);
    EXPECT_THROW(client_context(Mode::kTls12Psk, {"TLS_AES_128_GCM_SHA256"}),
                 std::invalid_argument);
}

TEST(TlsEngine, DisallowedSuitesCannotBeNegotiated) {
    const KeyTable table = default_table();
    const RawPsk psk{"pne-1", make_key(1)};
    g_raw_psk = &psk;
    {
        // A TLS 1.2 client offering only suites outside the profile.
        TlsContext server_ctx = server_context(Mode::kTls12Psk, table);
        RawPeer raw({.version = TLS1_2_VERSION,
                     .cipher_list = "PSK-AES128-CBC-SHA:PSK-AES256-CBC-SHA:PSK-NULL-SHA256:"
                                    "PSK-AES128-CBC-SHA256:PSK-CHACHA20-POLY1305:"
                                    "ECDHE-PSK-AES128-CBC-SHA:DHE-PSK-AES256-GCM-SHA384"});
        TlsEngine server(server_ctx);
        pump(raw, server);
        EXPECT_TRUE(raw.failed());
        EXPECT_EQ(server.error(), TlsError::kProtocolError) << server.error_detail();
        EXPECT_NE(server.error_detail().find("no shared cipher"), std::string::npos)
            << server.error_detail();
    }
    {
        // A TLS 1.3 client offering only a SHA-384 suite.
        TlsContext server_ctx = server_context(Mode::kTls13, table);
        RawPeer raw({.ciphersuites = "TLS_AES_256_GCM_SHA384"});
        TlsEngine server(server_ctx);
        pump(raw, server);
        EXPECT_TRUE(raw.failed());
        EXPECT_EQ(server.error(), TlsError::kProtocolError) << server.error_detail();
    }
    {
        // A TLS 1.2 server that would only use a CBC-SHA1 suite.
        TlsContext client_ctx = client_context(Mode::kTls12Psk);
        RawPeer raw(
            {.server = true, .version = TLS1_2_VERSION, .cipher_list = "PSK-AES128-CBC-SHA"});
        TlsEngine client(client_ctx, {"pne-1", make_key(1)});
        pump(client, raw);
        EXPECT_TRUE(raw.failed());
        EXPECT_EQ(client.error(), TlsError::kProtocolError) << client.error_detail();
    }
    g_raw_psk = nullptr;
}

TEST(TlsEngine, WriteBeforeHandshakeIsQueued) {
    const KeyTable table = default_table();
    TlsContext server_ctx = server_context(Mode::kTls13, table);
    TlsContext client_ctx = client_context(Mode::kTls13);
    TlsEngine client(client_ctx, {"pne-1", make_key(1)});
    TlsEngine server(server_ctx);
    EXPECT_TRUE(client.write(bytes_of("early ")));
    EXPECT_TRUE(client.write(bytes_of("words")));
    pump(client, server);
    ASSERT_TRUE(server.handshake_done());
    EXPECT_EQ(text_of(server.read()), "early words");
}

TEST(TlsEngine, CloseNotifyReachesThePeer) {
    for (Mode mode : {Mode::kTls13, Mode::kTls12Psk}) {
        SCOPED_TRACE(std::string(to_string(mode)));
        const KeyTable table = default_table();
        TlsContext server_ctx = server_context(mode, table);
        TlsContext client_ctx = client_context(mode);
        TlsEngine client(client_ctx, {"pne-1", make_key(1)});
        TlsEngine server(server_ctx);
        pump(client, server);
        ASSERT_TRUE(server.handshake_done());
        ASSERT_TRUE(client.write(bytes_of("last words")));
        client.close();
        EXPECT_FALSE(client.write(bytes_of("too late")));
        pump(client, server);
        EXPECT_EQ(text_of(server.read()), "last words");
        EXPECT_EQ(server.error(), TlsError::kPeerClosed);
        EXPECT_FALSE(server.failed());
        server.close();
        pump(client, server);
        EXPECT_EQ(client.error(), TlsError::kPeerClosed);
        EXPECT_FALSE(client.failed());
    }
}

TEST(TlsEngine, TamperedRecordAfterHandshakeIsProtocolError) {
    const KeyTable table = default_table();
    TlsContext server_ctx = server_context(Mode::kTls13, table);
    TlsContext client_ctx = client_context(Mode::kTls13);
    TlsEngine client(client_ctx, {"pne-1", make_key(1)});
    TlsEngine server(server_ctx);
    pump(client, server);
    ASSERT_TRUE(server.handshake_done());
    ASSERT_TRUE(client.write(bytes_of("integrity")));
    Bytes record = client.take_output();
    ASSERT_FALSE(record.empty());
    record.back() ^= 0x01;
    server.feed(record);
    EXPECT_EQ(server.error(), TlsError::kProtocolError) << server.error_detail();
    EXPECT_TRUE(server.read().empty());
}

TEST(TlsEngine, LargeTransfersBothWays) {
    const KeyTable table = default_table();
    TlsContext server_ctx = server_context(Mode::kTls13, table);
    TlsContext client_ctx = client_context(Mode::kTls13);
    TlsEngine client(client_ctx, {"pne-1", make_key(1)});
    TlsEngine server(server_ctx);
    pump(client, server);
    Bytes big(300 * 1024);
    for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<std::uint8_t>(i * 31);
    ASSERT_TRUE(client.write(big));
    ASSERT_TRUE(server.write(big));
    pump(client, server);
    EXPECT_EQ(server.read(), big);
    EXPECT_EQ(client.read(), big);
}

TEST(TlsEngine, OneContextServesManyEnginesOnSeveralThreads) {
    KeyTable table;
    for (int i = 0; i < 8; ++i) {
        table.keys.emplace("pne-" + std::to_string(i), make_key(static_cast<std::uint8_t>(i)));
    }
    const TlsContext server_ctx = server_context(Mode::kTls13, table);
    const TlsContext client_ctx = client_context(Mode::kTls13);
    std::atomic<int> ok{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 2; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < 8; ++i) {
                const int n = (i + t) % 8;
                TlsEngine client(client_ctx, {"pne-" + std::to_string(n),
                                              make_key(static_cast<std::uint8_t>(n))});
                TlsEngine server(server_ctx);
                pump(client, server);
                if (server.handshake_done() &&
                    server.peer_identity() == "pne-" + std::to_string(n)) {
                    ++ok;
                }
            }
        });
    }
    for (auto& thread : threads) thread.join();
    EXPECT_EQ(ok, 16);
    EXPECT_EQ(*table.lookups, 16);
}

TEST(TlsEngine, EnginesMayBeMoved) {
    const KeyTable table = default_table();
    TlsContext server_ctx = server_context(Mode::kTls13, table);
    TlsEngine client(client_context(Mode::kTls13), {"pne-1", make_key(1)});  // context outlived
    TlsEngine first(server_ctx);
    TlsEngine server = std::move(first);
    pump(client, server);
    ASSERT_TRUE(server.handshake_done()) << server.error_detail();
    expect_data_both_ways(client, server);
}

TEST(TlsEngine, FailingLookupIsProtocolError) {
    TlsConfig config;
    config.role = Role::kServer;
    config.psk_lookup = [](std::string_view) -> std::optional<SecretKey> {
        throw std::runtime_error("inventory offline");
    };
    for (Mode mode : {Mode::kTls13, Mode::kTls12Psk}) {
        SCOPED_TRACE(std::string(to_string(mode)));
        config.mode = mode;
        TlsContext server_ctx(config);
        TlsEngine client(client_context(mode), {"pne-1", make_key(1)});
        TlsEngine server(server_ctx);
        pump(client, server);
        EXPECT_EQ(server.error(), TlsError::kProtocolError);
        EXPECT_NE(server.error_detail().find("inventory offline"), std::string::npos)
            << server.error_detail();
        EXPECT_EQ(client.error(), TlsError::kProtocolError) << client.error_detail();
        EXPECT_NE(client.error_detail().find("internal error"), std::string::npos)
            << client.error_detail();
    }
}

TEST(TlsEngine, AllZeroKeyFromLookupIsProtocolError) {
    TlsConfig config;
    config.role = Role::kServer;
    config.psk_lookup = [](std::string_view) -> std::optional<SecretKey> { return SecretKey{}; };
    for (Mode mode : {Mode::kTls13, Mode::kTls12Psk}) {
        SCOPED_TRACE(std::string(to_string(mode)));
        config.mode = mode;
        TlsContext server_ctx(config);
        TlsEngine client(client_context(mode), {"pne-1", make_key(1)});
        TlsEngine server(server_ctx);
        pump(client, server);
        EXPECT_EQ(server.error(), TlsError::kProtocolError);
        EXPECT_NE(server.error_detail().find("all-zero"), std::string::npos)
            << server.error_detail();
        EXPECT_TRUE(client.failed());
    }
}

TEST(TlsEngine, InvalidArgumentsAreRejected) {
    TlsConfig no_lookup;
    no_lookup.role = Role::kServer;
    EXPECT_THROW(TlsContext{no_lookup}, std::invalid_argument);
    const TlsContext client_ctx = client_context(Mode::kTls13);
    const TlsContext server_ctx = server_context(Mode::kTls13, default_table());
    EXPECT_THROW(TlsEngine{client_ctx}, std::invalid_argument);
    EXPECT_THROW(TlsEngine(server_ctx, {"pne-1", make_key(1)}), std::invalid_argument);
    EXPECT_THROW(TlsEngine(client_ctx, {"", make_key(1)}), std::invalid_argument);
    EXPECT_THROW(TlsEngine(client_ctx, {std::string("a\0b", 3), make_key(1)}),
                 std::invalid_argument);
    EXPECT_THROW(TlsEngine(client_ctx, {std::string(kMaxIdentityLength + 1, 'x'), make_key(1)}),
                 std::invalid_argument);
    EXPECT_NO_THROW(TlsEngine(client_ctx, {std::string(kMaxIdentityLength, 'x'), make_key(1)}));
    EXPECT_THROW(TlsEngine(client_ctx, {"pne-1", SecretKey{}}), std::invalid_argument);
    TlsConfig bad_keylog;
    bad_keylog.keylog_path = "/nonexistent-dir/keys.log";
    EXPECT_THROW(TlsContext{bad_keylog}, std::runtime_error);
}

TEST(TlsEngine, KeyLogHasNssLines) {
    const std::regex tls13_line(
        "(CLIENT_HANDSHAKE_TRAFFIC_SECRET|SERVER_HANDSHAKE_TRAFFIC_SECRET|"
        "CLIENT_TRAFFIC_SECRET_0|SERVER_TRAFFIC_SECRET_0|EXPORTER_SECRET) [0-9a-f]{64} "
        "[0-9a-f]{64}");
    const std::regex tls12_line("CLIENT_RANDOM [0-9a-f]{64} [0-9a-f]{96}");
    for (Mode mode : {Mode::kTls13, Mode::kTls12Psk}) {
        SCOPED_TRACE(std::string(to_string(mode)));
        const std::string path = temp_path(mode == Mode::kTls13 ? "keys13.log" : "keys12.log");
        ::unlink(path.c_str());
        const KeyTable table = default_table();
        TlsContext server_ctx = server_context(mode, table, {}, path);
        TlsContext client_ctx = client_context(mode, {}, path);
        TlsEngine client(client_ctx, {"pne-1", make_key(1)});
        TlsEngine server(server_ctx);
        pump(client, server);
        ASSERT_TRUE(server.handshake_done());

        struct stat st {};
        ASSERT_EQ(::stat(path.c_str(), &st), 0);
        EXPECT_EQ(st.st_mode & 0777, 0600u);
        const auto lines = read_lines(path);
        std::map<std::string, int> count;  // both sides log the same secrets
        for (const auto& line : lines) {
            EXPECT_TRUE(std::regex_match(line, mode == Mode::kTls13 ? tls13_line : tls12_line))
                << line;
            EXPECT_EQ(line.find(make_key(1).to_hex()), std::string::npos);
            ++count[line];
        }
        EXPECT_EQ(lines.size(), mode == Mode::kTls13 ? 10u : 2u);
        for (const auto& [line, n] : count) EXPECT_EQ(n, 2) << line;

        // Appends: a second handshake adds lines.
        TlsEngine client2(client_ctx, {"pne-1", make_key(1)});
        TlsEngine server2(server_ctx);
        pump(client2, server2);
        EXPECT_EQ(read_lines(path).size(), 2 * lines.size());
        ::unlink(path.c_str());
    }
}

TEST(TlsEngine, NoKeyLogByDefault) {
    // Nothing in the engine reads SSLKEYLOGFILE: only the configured path is used.
    const std::string path = temp_path("env-keys.log");
    ::unlink(path.c_str());
    ::setenv("SSLKEYLOGFILE", path.c_str(), 1);
    const KeyTable table = default_table();
    TlsContext server_ctx = server_context(Mode::kTls13, table);
    TlsEngine client(client_context(Mode::kTls13), {"pne-1", make_key(1)});
    TlsEngine server(server_ctx);
    pump(client, server);
    ::unsetenv("SSLKEYLOGFILE");
    ASSERT_TRUE(server.handshake_done());
    EXPECT_NE(::access(path.c_str(), F_OK), 0);
}

// --- Interop with independent implementations over 127.0.0.1 --------------------------------

class Fd {
  public:
    Fd() = default;
    explicit Fd(int fd) : fd_(fd) {}
    Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    Fd& operator=(Fd&& other) noexcept {
        reset();
        fd_ = std::exchange(other.fd_, -1);
        return *this;
    }
    ~Fd() { reset(); }
    void reset() {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }
    int get() const { return fd_; }
    bool valid() const { return fd_ >= 0; }

  private:
    int fd_ = -1;
};

// A child process with its stdin on a socket (no SIGPIPE) and stdout+stderr on a pipe. Killed
// and reaped when destroyed.
class Child {
  public:
    explicit Child(const std::vector<std::string>& argv) {
        int in[2];
        int out[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in) != 0 ||
            ::pipe2(out, O_CLOEXEC) != 0) {
            throw std::runtime_error("cannot create pipes");
        }
        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_adddup2(&actions, in[1], 0);
        posix_spawn_file_actions_adddup2(&actions, out[1], 1);
        posix_spawn_file_actions_adddup2(&actions, out[1], 2);
        std::vector<char*> args;
        for (const auto& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
        args.push_back(nullptr);
        const int rc =
            ::posix_spawnp(&pid_, argv[0].c_str(), &actions, nullptr, args.data(), environ);
        posix_spawn_file_actions_destroy(&actions);
        ::close(in[1]);
        ::close(out[1]);
        stdin_ = Fd(in[0]);
        stdout_ = Fd(out[0]);
        if (rc != 0) {
            pid_ = -1;
            throw std::runtime_error("cannot run '" + argv[0] + "': " + std::strerror(rc) +
                                     " (the test scripts install openssl and gnutls-bin)");
        }
        ::fcntl(stdout_.get(), F_SETFL, O_NONBLOCK);
    }
    ~Child() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            int status = 0;
            ::waitpid(pid_, &status, 0);
        }
    }
    Child(const Child&) = delete;
    Child& operator=(const Child&) = delete;

    void send(std::string_view text) {
        ASSERT_EQ(::send(stdin_.get(), text.data(), text.size(), MSG_NOSIGNAL),
                  static_cast<ssize_t>(text.size()));
    }

    // Reads output until `done(output)` holds or the timeout passes.
    bool wait_output(const std::function<bool(const std::string&)>& done,
                     std::chrono::milliseconds timeout) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            drain();
            if (done(output_)) return true;
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0 || eof_) return done(output_);
            pollfd p{stdout_.get(), POLLIN, 0};
            ::poll(&p, 1, static_cast<int>(left.count()));
        }
    }
    // Waits (bounded) for the child to exit; its exit status, or -1 on timeout.
    int wait_exit(std::chrono::milliseconds timeout) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            drain();
            int status = 0;
            if (::waitpid(pid_, &status, WNOHANG) == pid_) {
                pid_ = -1;
                return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            }
            if (std::chrono::steady_clock::now() >= deadline) return -1;
            std::this_thread::sleep_for(10ms);
        }
    }
    bool wait_for_text(const std::string& text, std::chrono::milliseconds timeout) {
        return wait_output(
            [&](const std::string& out) { return out.find(text) != std::string::npos; }, timeout);
    }
    const std::string& output() {
        drain();
        return output_;
    }

  private:
    void drain() {
        char buffer[4096];
        for (;;) {
            const ssize_t n = ::read(stdout_.get(), buffer, sizeof buffer);
            if (n > 0) {
                output_.append(buffer, static_cast<std::size_t>(n));
                continue;
            }
            if (n == 0) eof_ = true;
            return;
        }
    }

    pid_t pid_ = -1;
    Fd stdin_;
    Fd stdout_;
    std::string output_;
    bool eof_ = false;
};

sockaddr_in loopback(std::uint16_t port) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return addr;
}

Fd listen_loopback(std::uint16_t& port) {
    Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in addr = loopback(0);
    if (!fd.valid() || ::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(fd.get(), 4) != 0) {
        throw std::runtime_error("cannot listen on 127.0.0.1");
    }
    socklen_t len = sizeof addr;
    ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len);
    port = ntohs(addr.sin_port);
    return fd;
}

Fd accept_within(const Fd& listener, std::chrono::milliseconds timeout) {
    pollfd p{listener.get(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return Fd();
    return Fd(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
}

Fd connect_loopback(std::uint16_t port) {
    Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    const sockaddr_in addr = loopback(port);
    if (!fd.valid() ||
        ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
        return Fd();
    }
    return fd;
}

// Starts `openssl s_server` on an ephemeral loopback port and returns the port.
std::uint16_t start_s_server(std::unique_ptr<Child>& child, std::vector<std::string> extra) {
    std::vector<std::string> argv = {"openssl",     "s_server", "-accept",
                                     "127.0.0.1:0", "-naccept", "1"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    child = std::make_unique<Child>(argv);
    const std::regex accept_line("ACCEPT 127\\.0\\.0\\.1:([0-9]+)");
    std::smatch match;
    const bool up = child->wait_output(
        [&](const std::string& out) { return std::regex_search(out, match, accept_line); },
        kIoTimeout);
    if (!up) throw std::runtime_error("openssl s_server did not start: " + child->output());
    const std::string out = child->output();
    std::regex_search(out, match, accept_line);
    return static_cast<std::uint16_t>(std::stoi(match[1].str()));
}

// Reads plaintext until it contains `text` (bounded).
std::string receive_until(SocketTls& io, const std::string& text) {
    Bytes got;
    const auto deadline = std::chrono::steady_clock::now() + kIoTimeout;
    while (text_of(got).find(text) == std::string::npos) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0 || io.receive(got, left) != IoStatus::kOk) break;
    }
    return text_of(got);
}

const std::string kIdentity = "gw-7";
std::string key_hex() {
    return make_key(7).to_hex();
}

// Our client against `openssl s_server -rev` (echoes each line reversed).
void client_against_s_server(Mode mode, const std::vector<std::string>& server_args,
                             const std::string& expected_cipher) {
    std::unique_ptr<Child> server;
    std::vector<std::string> args = {"-nocert",       "-psk",    key_hex(),
                                     "-psk_identity", kIdentity, "-rev"};
    args.insert(args.end(), server_args.begin(), server_args.end());
    const std::uint16_t port = start_s_server(server, args);
    Fd fd = connect_loopback(port);
    ASSERT_TRUE(fd.valid());
    TlsEngine client(client_context(mode), {kIdentity, make_key(7)});
    SocketTls io(client, fd.get());
    ASSERT_EQ(io.handshake(kIoTimeout), IoStatus::kOk) << client.error_detail() << "\n"
                                                       << server->output();
    EXPECT_EQ(client.cipher(), expected_cipher);
    ASSERT_EQ(io.send(bytes_of("hello cpns\n"), kIoTimeout), IoStatus::kOk);
    EXPECT_NE(receive_until(io, "snpc olleh\n").find("snpc olleh\n"), std::string::npos)
        << server->output();
    EXPECT_EQ(io.close(1s), IoStatus::kOk);
}

TEST(TlsInterop, OurClientAgainstOpenSslServerTls13) {
    client_against_s_server(Mode::kTls13, {"-tls1_3"}, "TLS_AES_128_GCM_SHA256");
}

TEST(TlsInterop, OurClientAgainstOpenSslServerTls12) {
    client_against_s_server(Mode::kTls12Psk, {"-tls1_2", "-cipher", "PSK-AES128-GCM-SHA256"},
                            "PSK-AES128-GCM-SHA256");
}

TEST(TlsInterop, OpenSslServerWithOtherKeyIsBadPsk) {
    std::unique_ptr<Child> server;
    const std::uint16_t port = start_s_server(
        server, {"-nocert", "-psk", make_key(8).to_hex(), "-psk_identity", kIdentity, "-tls1_3"});
    Fd fd = connect_loopback(port);
    ASSERT_TRUE(fd.valid());
    TlsEngine client(client_context(Mode::kTls13), {kIdentity, make_key(7)});
    SocketTls io(client, fd.get());
    EXPECT_EQ(io.handshake(kIoTimeout), IoStatus::kTlsError);
    EXPECT_EQ(client.error(), TlsError::kBadPsk) << client.error_detail();
}

TEST(TlsInterop, OurClientRefusesACertificateServer) {
    const std::string key = temp_path("cert-key.pem");
    const std::string cert = temp_path("cert.pem");
    {
        Child req({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                   "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert, "-subj",
                   "/CN=not-a-psk-server", "-days", "1"});
        ASSERT_EQ(req.wait_exit(kIoTimeout), 0) << req.output();
    }
    ASSERT_EQ(::access(cert.c_str(), R_OK), 0);
    std::unique_ptr<Child> server;
    const std::uint16_t port =
        start_s_server(server, {"-cert", cert, "-key", key, "-tls1_3", "-psk_identity", "other",
                                "-psk", make_key(8).to_hex()});
    Fd fd = connect_loopback(port);
    ASSERT_TRUE(fd.valid());
    TlsEngine client(client_context(Mode::kTls13), {kIdentity, make_key(7)});
    SocketTls io(client, fd.get());
    EXPECT_EQ(io.handshake(kIoTimeout), IoStatus::kTlsError);
    EXPECT_EQ(client.error(), TlsError::kProtocolError) << client.error_detail();
    EXPECT_NE(client.error_detail().find("certificate"), std::string::npos)
        << client.error_detail();
    ::unlink(key.c_str());
    ::unlink(cert.c_str());
}

struct ServerRun {
    std::unique_ptr<Child> peer;
    std::unique_ptr<TlsEngine> engine;
    IoStatus handshake = IoStatus::kTimeout;
};

// Runs our server engine against a client command line (with PORT substituted). When the
// handshake succeeds, checks application data both ways.
void server_against(Mode mode, std::vector<std::string> argv, ServerRun& run, const KeyTable& table,
                    const std::string& client_prints_data_after = "") {
    std::uint16_t port = 0;
    const Fd listener = listen_loopback(port);
    for (auto& arg : argv) {
        const auto at = arg.find("PORT");
        if (at != std::string::npos) arg.replace(at, 4, std::to_string(port));
    }
    run.peer = std::make_unique<Child>(argv);
    Fd conn = accept_within(listener, kIoTimeout);
    ASSERT_TRUE(conn.valid()) << run.peer->output();
    run.engine = std::make_unique<TlsEngine>(server_context(mode, table));
    SocketTls io(*run.engine, conn.get());
    run.handshake = io.handshake(kIoTimeout);
    if (run.handshake != IoStatus::kOk) return;
    if (!client_prints_data_after.empty()) {
        ASSERT_TRUE(run.peer->wait_for_text(client_prints_data_after, kIoTimeout))
            << run.peer->output();
    }
    run.peer->send("ping from the peer\n");
    EXPECT_NE(receive_until(io, "\n").find("ping from the peer\n"), std::string::npos)
        << run.peer->output();
    ASSERT_EQ(io.send(bytes_of("pong from cpns\n"), kIoTimeout), IoStatus::kOk);
    EXPECT_TRUE(run.peer->wait_for_text("pong from cpns", kIoTimeout)) << run.peer->output();
    EXPECT_EQ(io.close(1s), IoStatus::kOk);
}

std::vector<std::string> s_client(std::vector<std::string> extra, const std::string& identity,
                                  const std::string& hex) {
    std::vector<std::string> argv = {"openssl",        "s_client", "-connect",
                                     "127.0.0.1:PORT", "-psk",     hex,
                                     "-psk_identity",  identity,   "-quiet"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
}

TEST(TlsInterop, OpenSslClientAgainstOurServerTls13) {
    const KeyTable table = default_table();
    ServerRun run;
    server_against(Mode::kTls13, s_client({"-tls1_3"}, kIdentity, key_hex()), run, table);
    ASSERT_EQ(run.handshake, IoStatus::kOk) << run.engine->error_detail() << run.peer->output();
    EXPECT_EQ(run.engine->version(), "TLSv1.3");
    EXPECT_EQ(run.engine->cipher(), "TLS_AES_128_GCM_SHA256");
    EXPECT_EQ(run.engine->key_exchange_group(), "x25519");
    EXPECT_EQ(run.engine->peer_identity(), kIdentity);
}

TEST(TlsInterop, OpenSslClientAgainstOurServerTls12) {
    const KeyTable table = default_table();
    {
        ServerRun run;
        server_against(Mode::kTls12Psk, s_client({"-tls1_2"}, kIdentity, key_hex()), run, table);
        ASSERT_EQ(run.handshake, IoStatus::kOk) << run.engine->error_detail() << run.peer->output();
        EXPECT_EQ(run.engine->version(), "TLSv1.2");
        EXPECT_EQ(run.engine->cipher(), "ECDHE-PSK-CHACHA20-POLY1305");
    }
    {
        ServerRun run;
        server_against(
            Mode::kTls12Psk,
            s_client({"-tls1_2", "-cipher", "PSK-AES256-GCM-SHA384"}, kIdentity, key_hex()), run,
            table);
        ASSERT_EQ(run.handshake, IoStatus::kOk) << run.engine->error_detail() << run.peer->output();
        EXPECT_EQ(run.engine->cipher(), "PSK-AES256-GCM-SHA384");
    }
}

TEST(TlsInterop, OpenSslClientFailuresAreTyped) {
    const KeyTable table = default_table();
    {
        ServerRun run;
        server_against(Mode::kTls13, s_client({"-tls1_3"}, "stranger", key_hex()), run, table);
        EXPECT_EQ(run.handshake, IoStatus::kTlsError);
        EXPECT_EQ(run.engine->error(), TlsError::kUnknownIdentity) << run.engine->error_detail();
        // The client sees what a wrong key gets (the binder fails), not unknown_psk_identity.
        EXPECT_TRUE(run.peer->wait_for_text("illegal parameter", kIoTimeout)) << run.peer->output();
        EXPECT_EQ(run.peer->output().find("unknown psk identity"), std::string::npos);
    }
    {
        ServerRun run;
        server_against(Mode::kTls12Psk, s_client({"-tls1_2"}, kIdentity, make_key(8).to_hex()), run,
                       table);
        EXPECT_EQ(run.handshake, IoStatus::kTlsError);
        EXPECT_EQ(run.engine->error(), TlsError::kBadPsk) << run.engine->error_detail();
    }
    {
        ServerRun run;
        server_against(Mode::kTls12Psk,
                       s_client({"-tls1_2", "-cipher", "PSK-AES128-CBC-SHA"}, kIdentity, key_hex()),
                       run, table);
        EXPECT_EQ(run.handshake, IoStatus::kTlsError);
        EXPECT_EQ(run.engine->error(), TlsError::kProtocolError) << run.engine->error_detail();
    }
}

std::vector<std::string> gnutls_cli(const std::string& priority, const std::string& identity,
                                    const std::string& hex) {
    return {"gnutls-cli", "--pskusername", identity, "--pskkey", hex,
            "--priority", priority,        "-p",     "PORT",     "127.0.0.1"};
}

const std::string kGnuTls13 = "NORMAL:-VERS-ALL:+VERS-TLS1.3:-KX-ALL:+ECDHE-PSK";
const std::string kGnuTls12Psk = "NORMAL:-VERS-ALL:+VERS-TLS1.2:-KX-ALL:+PSK";

TEST(TlsInterop, GnuTlsClientAgainstOurServerTls13) {
    const KeyTable table = default_table();
    ServerRun run;
    server_against(Mode::kTls13, gnutls_cli(kGnuTls13, kIdentity, key_hex()), run, table,
                   "Simple Client Mode");
    ASSERT_EQ(run.handshake, IoStatus::kOk) << run.engine->error_detail() << run.peer->output();
    EXPECT_EQ(run.engine->version(), "TLSv1.3");
    const auto allowed = allowed_suites(Mode::kTls13);
    EXPECT_NE(std::find(allowed.begin(), allowed.end(), run.engine->cipher()), allowed.end());
    EXPECT_FALSE(run.engine->key_exchange_group().empty());
    EXPECT_EQ(run.engine->peer_identity(), kIdentity);
}

TEST(TlsInterop, GnuTlsClientAgainstOurServerTls12Psk) {
    const KeyTable table = default_table();
    ServerRun run;
    server_against(Mode::kTls12Psk, gnutls_cli(kGnuTls12Psk, kIdentity, key_hex()), run, table,
                   "Simple Client Mode");
    ASSERT_EQ(run.handshake, IoStatus::kOk) << run.engine->error_detail() << run.peer->output();
    EXPECT_EQ(run.engine->version(), "TLSv1.2");
    EXPECT_EQ(run.engine->cipher(), "PSK-AES128-GCM-SHA256");
}

TEST(TlsInterop, GnuTlsClientFailuresAreTyped) {
    const KeyTable table = default_table();
    {
        ServerRun run;
        server_against(Mode::kTls13, gnutls_cli(kGnuTls13, kIdentity, make_key(8).to_hex()), run,
                       table);
        EXPECT_EQ(run.handshake, IoStatus::kTlsError);
        EXPECT_EQ(run.engine->error(), TlsError::kBadPsk) << run.engine->error_detail();
    }
    {
        ServerRun run;
        server_against(Mode::kTls13, gnutls_cli(kGnuTls13, "stranger", key_hex()), run, table);
        EXPECT_EQ(run.handshake, IoStatus::kTlsError);
        EXPECT_EQ(run.engine->error(), TlsError::kUnknownIdentity) << run.engine->error_detail();
        // Alert 47 (illegal_parameter), as for a wrong key; never 115 (unknown_psk_identity).
        EXPECT_TRUE(run.peer->wait_for_text("Received alert [47]", kIoTimeout))
            << run.peer->output();
    }
}

}  // namespace
