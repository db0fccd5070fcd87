// net::Listener limits (per source, eviction of unauthenticated connections when full) and
// net::Connection::close() flushing what is queued, over real sockets on 127.0.0.0/8 (Linux
// routes the whole block to loopback, so 127.0.0.X act as distinct sources).
#include <gtest/gtest.h>

#include <asio.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "net/connection.hpp"
#include "net/listener.hpp"

namespace cpns::net {
namespace {

using namespace std::chrono_literals;

// Runs `io` until `done` or 10 s (generous: a busy machine), then stops.
template <class Pred>
bool run_until(asio::io_context& io, Pred done) {
    const auto until = std::chrono::steady_clock::now() + 10s;
    while (!done() && std::chrono::steady_clock::now() < until) {
        io.run_for(10ms);
        io.restart();
    }
    return done();
}

// A client socket bound to `source` (127.0.0.X), connected to the listener.
std::shared_ptr<tcp::socket> connect_from(asio::io_context& io, const std::string& source,
                                          std::uint16_t port) {
    auto s = std::make_shared<tcp::socket>(io);
    s->open(tcp::v4());
    s->bind(tcp::endpoint(asio::ip::make_address(source), 0));
    s->connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    return s;
}

// Whether the server side closed `s`: a read returns EOF (or reset) within the run.
struct ClosedWatch {
    bool closed = false;
    std::array<char, 64> buf{};
    void watch(const std::shared_ptr<tcp::socket>& s) {
        s->async_read_some(asio::buffer(buf), [this, s](const std::error_code& ec, std::size_t) {
            if (ec) closed = true;
        });
    }
};

struct Accepted {
    std::vector<std::shared_ptr<Connection>> conns;
    std::size_t refused = 0, evicted = 0;
    std::vector<Listener::Refusal> why;
};

Listener::Hooks hooks_into(Accepted& a) {
    Listener::Hooks h;
    h.on_socket = [&a](tcp::socket socket, Listener::Slot slot) {
        auto c = std::make_shared<Connection>(std::move(socket));
        c->hold(std::move(slot));
        a.conns.push_back(std::move(c));
    };
    h.on_refused = [&a](const std::string&, Listener::Refusal why, std::size_t, std::size_t n) {
        a.refused += n;
        a.why.push_back(why);
    };
    h.on_evicted = [&a](const std::string&, std::size_t n) { a.evicted += n; };
    return h;
}

TEST(Listener, PerSourceCapRefusesThatSourceOnly) {
    asio::io_context io;
    Accepted a;
    Listener l(io.get_executor(), {100, 2}, hooks_into(a));
    ASSERT_FALSE(l.listen({"127.0.0.1", 0}, "test"));
    asio::co_spawn(io, l.run(), asio::detached);
    std::vector<std::shared_ptr<tcp::socket>> clients;
    std::vector<std::unique_ptr<ClosedWatch>> watches;
    for (int i = 0; i < 4; ++i) {
        clients.push_back(connect_from(io, "127.0.0.2", l.port()));
        watches.push_back(std::make_unique<ClosedWatch>());
        watches.back()->watch(clients.back());
    }
    clients.push_back(connect_from(io, "127.0.0.3", l.port()));
    ASSERT_TRUE(run_until(io, [&] { return a.conns.size() == 3 && watches[3]->closed; }))
        << a.conns.size() << " accepted";
    EXPECT_EQ(l.open_from("127.0.0.2"), 2u);
    EXPECT_EQ(l.open_from("127.0.0.3"), 1u);
    EXPECT_FALSE(watches[0]->closed);
    EXPECT_FALSE(watches[1]->closed);
    EXPECT_TRUE(watches[2]->closed);  // refused: closed at once
    ASSERT_FALSE(a.why.empty());
    EXPECT_EQ(a.why.front(), Listener::Refusal::kPerSource);
    // A closed connection frees its place.
    a.conns.front()->close();
    a.conns.erase(a.conns.begin());
    EXPECT_EQ(l.open_from("127.0.0.2"), 1u);
    l.close();
}

// When full, the oldest connection that has not authenticated makes room; authenticated ones
// are never evicted, so an honest newcomer gets in even when a flood fills the listener.
TEST(Listener, FullListenerEvictsTheOldestUnauthenticatedConnection) {
    asio::io_context io;
    Accepted a;
    Listener l(io.get_executor(), {3, 10}, hooks_into(a));
    ASSERT_FALSE(l.listen({"127.0.0.1", 0}, "test"));
    asio::co_spawn(io, l.run(), asio::detached);
    std::vector<std::shared_ptr<tcp::socket>> clients;
    std::vector<std::unique_ptr<ClosedWatch>> watches;
    auto connect = [&](const std::string& src) {
        clients.push_back(connect_from(io, src, l.port()));
        watches.push_back(std::make_unique<ClosedWatch>());
        watches.back()->watch(clients.back());
        const std::size_t want = clients.size();
        // Wait until the listener has handled it (accepted, evicting if needed).
        run_until(io, [&] { return a.conns.size() + a.refused >= want; });
    };
    connect("127.0.0.2");  // 0: authenticates
    a.conns[0]->authenticated();
    connect("127.0.0.3");  // 1: slow-loris
    connect("127.0.0.3");  // 2: slow-loris
    EXPECT_EQ(l.open(), 3u);
    connect("127.0.0.4");  // 3: honest newcomer: evicts 1
    EXPECT_TRUE(run_until(io, [&] { return watches[1]->closed; }));
    EXPECT_FALSE(watches[0]->closed);
    EXPECT_FALSE(watches[2]->closed);
    EXPECT_FALSE(watches[3]->closed);
    EXPECT_EQ(a.evicted, 1u);
    EXPECT_EQ(a.refused, 0u);
    EXPECT_EQ(l.open(), 3u);
    a.conns[2]->authenticated();
    a.conns[3]->authenticated();
    connect("127.0.0.5");  // 4: nothing left to evict: refused
    EXPECT_TRUE(run_until(io, [&] { return watches[4]->closed; }));
    EXPECT_EQ(a.refused, 1u);
    EXPECT_EQ(a.why.back(), Listener::Refusal::kFull);
    EXPECT_FALSE(watches[0]->closed);
    l.close();
}

// Finding 10: an ErrorReport queued just before a forced close was dropped (close() cleared
// the send queue). The peer now receives it, then EOF.
TEST(Connection, CloseSendsWhatIsQueuedBeforeEof) {
    asio::io_context io;
    Accepted a;
    Listener l(io.get_executor(), {10, 10}, hooks_into(a));
    ASSERT_FALSE(l.listen({"127.0.0.1", 0}, "test"));
    asio::co_spawn(io, l.run(), asio::detached);
    auto client = connect_from(io, "127.0.0.1", l.port());
    ASSERT_TRUE(run_until(io, [&] { return a.conns.size() == 1; }));
    pb::Envelope err;
    err.set_sender_id("gw-1");
    err.mutable_error()->set_reason(pb::MALFORMED_MESSAGE);
    err.mutable_error()->set_detail("the frame was too large");
    ASSERT_TRUE(a.conns[0]->send(err));
    a.conns[0]->close();
    EXPECT_FALSE(a.conns[0]->send(err));  // nothing more after close()
    a.conns.clear();                      // the owner lets go at once

    FrameReader reader;
    bool eof = false;
    std::array<std::uint8_t, 4096> buf{};
    std::function<void()> next = [&] {
        client->async_read_some(asio::buffer(buf), [&](const std::error_code& ec, std::size_t n) {
            if (ec) {
                eof = true;
                return;
            }
            reader.feed(std::span<const std::uint8_t>(buf.data(), n));
            next();
        });
    };
    next();
    ASSERT_TRUE(run_until(io, [&] { return eof; }));
    auto got = reader.next();
    ASSERT_TRUE(got.has_value()) << "the ErrorReport was dropped";
    ASSERT_TRUE(std::holds_alternative<pb::Envelope>(*got));
    const auto& env = std::get<pb::Envelope>(*got);
    EXPECT_EQ(env.error().reason(), pb::MALFORMED_MESSAGE);
    EXPECT_EQ(env.error().detail(), "the frame was too large");
    l.close();
}

// --- PskRetry (EUKey rotation on the PN GW's server link) ----------------------------------

struct RetryOutcome {
    std::optional<LinkError> server, client;
    bool server_done = false, client_done = false;
    bool used_retry = false;
};

// One TLS 1.3 handshake: the client offers identity gw-1 with `client_key`; the server's
// lookup answers `current`, its retry lookup `retry` (if any).
RetryOutcome handshake_with_retry(const SecretKey& client_key, const SecretKey& current,
                                  std::optional<PskRetry> retry) {
    asio::io_context io;
    Accepted a;
    Listener l(io.get_executor(), {10, 10}, hooks_into(a));
    EXPECT_FALSE(l.listen({"127.0.0.1", 0}, "test"));
    asio::co_spawn(io, l.run(), asio::detached);
    tls::TlsConfig sc;
    sc.role = tls::Role::kServer;
    sc.psk_lookup = [](std::string_view) { return std::optional<SecretKey>(); };
    const tls::TlsContext server_ctx(sc);
    tls::TlsConfig cc;
    cc.role = tls::Role::kClient;
    const tls::TlsContext client_ctx(cc);

    auto socket = connect_from(io, "127.0.0.1", l.port());
    auto client = std::make_shared<Connection>(std::move(*socket));
    RetryOutcome out;
    const tls::ClientPsk psk{"gw-1", client_key};
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            out.client = co_await client->client_handshake(client_ctx, psk, 10'000,
                                                           PskLink::kGatewayToServer);
            out.client_done = true;
        },
        asio::detached);
    EXPECT_TRUE(run_until(io, [&] { return a.conns.size() == 1; }));
    const tls::PskLookup lookup = [&](std::string_view) { return std::optional(current); };
    const PskRetryLookup retry_lookup = [&](std::string_view identity) {
        EXPECT_EQ(identity, "gw-1");
        return retry;
    };
    auto server = a.conns.at(0);
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            out.server = co_await server->server_handshake(
                server_ctx, 10'000, PskLink::kServerOfGateway, lookup, retry_lookup);
            out.used_retry = server->used_retry_psk();
            out.server_done = true;
        },
        asio::detached);
    EXPECT_TRUE(run_until(io, [&] { return out.server_done && out.client_done; }));
    client->close();
    server->close();
    l.close();
    io.run_for(std::chrono::milliseconds(50));
    return out;
}

TEST(Connection, PskRetryAcceptsThePreviousKeyOnTheSameClientHello) {
    const SecretKey old_key = OsRandom().key(), new_key = OsRandom().key();
    const RetryOutcome r = handshake_with_retry(old_key, new_key, PskRetry{old_key, true});
    EXPECT_FALSE(r.server) << r.server->detail;
    EXPECT_FALSE(r.client) << r.client->detail;
    EXPECT_TRUE(r.used_retry);
    // The current key needs no retry.
    const RetryOutcome now = handshake_with_retry(new_key, new_key, PskRetry{old_key, true});
    EXPECT_FALSE(now.server || now.client);
    EXPECT_FALSE(now.used_retry);
}

TEST(Connection, PskRetryRecognisesAnExpiredKeyButFailsItLikeAWrongKey) {
    const SecretKey old_key = OsRandom().key(), new_key = OsRandom().key();
    const SecretKey wrong = OsRandom().key();
    const RetryOutcome expired = handshake_with_retry(old_key, new_key, PskRetry{old_key, false});
    const RetryOutcome wrong_key = handshake_with_retry(wrong, new_key, PskRetry{old_key, false});
    ASSERT_TRUE(expired.server && expired.client && wrong_key.server && wrong_key.client);
    // The server names it...
    EXPECT_EQ(expired.server->reason, pb::KEY_EXPIRED);
    EXPECT_EQ(expired.server->tls, tls::TlsError::kBadPsk);  // counted by the back-off
    EXPECT_EQ(wrong_key.server->reason, pb::GATEWAY_AUTHENTICATION_FAILED);
    // ...the client cannot tell the two apart.
    EXPECT_EQ(expired.client->reason, pb::GATEWAY_AUTHENTICATION_FAILED);
    EXPECT_EQ(expired.client->reason, wrong_key.client->reason);
    EXPECT_EQ(expired.client->tls, wrong_key.client->tls);
    EXPECT_EQ(expired.client->detail, wrong_key.client->detail);
    EXPECT_FALSE(expired.used_retry);
}

}  // namespace
}  // namespace cpns::net
