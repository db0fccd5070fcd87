// libFuzzer target: the sans-I/O TLS engine (src/tls/tls.hpp) fed fuzzed records as if from
// its peer. The first byte picks the engine: bit 0 client (else server), bit 1 TLS 1.2 PSK
// (else TLS 1.3). The rest is fed in chunks of input-derived sizes (the records split
// anywhere, as TCP may). The server's PSK lookup knows "pre:pne-b", returns an all-zero key
// for "zero" and throws for "throw" (both must fail the handshake cleanly).
//
// Invariants, besides no crash, UB or leak: a failed engine reports a typed error, refuses
// write() and stays failed; no more plaintext comes out than ciphertext went in; the output
// stays bounded; a finished handshake names its version and suite; and the error detail
// never contains the PSK (as bytes or hex).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "tls/tls.hpp"

namespace {

using namespace cpns;
using cpns::tls::TlsError;

[[noreturn]] void fail(const char* what) {
    std::fprintf(stderr, "cpns-fuzz-tls: invariant broken: %s\n", what);
    std::abort();
}

const SecretKey& psk() {
    static const SecretKey k = [] {
        DeterministicRandom r(0x7157);
        return r.key();
    }();
    return k;
}
constexpr std::string_view kIdentity = "pre:pne-b";
// Output bound: what an engine may send for `fed` bytes received (handshake flights, alerts).
constexpr std::size_t kOutputAllowance = 16 * 1024;

const tls::TlsContext& context(bool client, bool tls12) {
    auto make = [](tls::Role role, tls::Mode mode) {
        tls::TlsConfig c;
        c.role = role;
        c.mode = mode;
        if (role == tls::Role::kServer)
            c.psk_lookup = [](std::string_view id) -> std::optional<SecretKey> {
                if (id == kIdentity) return psk();
                if (id == "zero") return SecretKey{};
                if (id == "throw") throw std::runtime_error("lookup failed");
                return std::nullopt;
            };
        return tls::TlsContext(std::move(c));
    };
    static const tls::TlsContext contexts[4] = {make(tls::Role::kServer, tls::Mode::kTls13),
                                                make(tls::Role::kClient, tls::Mode::kTls13),
                                                make(tls::Role::kServer, tls::Mode::kTls12Psk),
                                                make(tls::Role::kClient, tls::Mode::kTls12Psk)};
    return contexts[(tls12 ? 2 : 0) + (client ? 1 : 0)];
}

bool contains(std::string_view hay, std::string_view needle) {
    return hay.find(needle) != std::string_view::npos;
}

void check_detail(const tls::TlsEngine& e) {
    const std::string& d = e.error_detail();
    const ByteView k = psk().view();
    const std::string raw(k.begin(), k.end());
    if (contains(d, raw) || contains(d, psk().to_hex())) fail("the PSK in an error detail");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const bool client = data[0] & 1;
    const bool tls12 = data[0] & 2;
    const tls::TlsContext& ctx = context(client, tls12);
    tls::TlsEngine engine = client
                                ? tls::TlsEngine(ctx, tls::ClientPsk{std::string(kIdentity), psk()})
                                : tls::TlsEngine(ctx);
    std::size_t out = engine.take_output().size();  // the client's ClientHello
    std::size_t fed = 0, plain = 0;
    std::uint64_t state = 0x9e3779b97f4a7c15ULL ^ size;
    std::size_t pos = 1;
    while (pos < size) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        const std::size_t chunk = std::min<std::size_t>(1 + ((state >> 33) % 600), size - pos);
        const bool was_failed = engine.failed();
        const TlsError before = engine.error();
        engine.feed(ByteView(data + pos, chunk));
        pos += chunk;
        fed += chunk;
        if (was_failed && engine.error() != before) fail("a failed engine changed its error");
        out += engine.take_output().size();
        plain += engine.read().size();
        if (engine.failed()) {
            if (engine.error() == TlsError::kNone || engine.error() == TlsError::kPeerClosed)
                fail("failed without a typed error");
            static constexpr std::uint8_t kData[] = {'x'};
            if (engine.write(kData)) fail("a failed engine accepted data");
        }
        if (engine.handshake_done() && (engine.version().empty() || engine.cipher().empty()))
            fail("a finished handshake without version or suite");
        check_detail(engine);
    }
    if (plain > fed) fail("more plaintext out than ciphertext in");
    if (out > fed + kOutputAllowance) fail("unbounded output");
    engine.close();
    engine.take_output();
    return 0;
}
