// The Entity Discovery socket (net/discovery.hpp): it takes datagrams only from the configured
// interface's subnet, pads its requests, and answers a request with at most the request's size.
#include <gtest/gtest.h>
#include <ifaddrs.h>
#include <netinet/in.h>

#include <chrono>
#include <optional>
#include <string>

#include "core/neighbours.hpp"
#include "net/discovery.hpp"

namespace cpns::net {
namespace {

// An IPv4 address of this host outside 127.0.0.0/8, if there is one.
std::optional<std::string> other_local_address() {
    ifaddrs* list = nullptr;
    if (::getifaddrs(&list) != 0) return std::nullopt;
    std::optional<std::string> found;
    for (const ifaddrs* i = list; i && !found; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
        const auto* a = reinterpret_cast<const sockaddr_in*>(i->ifa_addr);
        const asio::ip::address_v4 addr(ntohl(a->sin_addr.s_addr));
        if (!addr.is_loopback()) found = addr.to_string();
    }
    ::freeifaddrs(list);
    return found;
}

pb::Envelope discovery_request(const std::string& id) {
    pb::Envelope env;
    env.set_version(kProtocolVersion);
    env.set_sender_id(id);
    env.mutable_discovery_request()->set_entity_id(id);
    env.mutable_discovery_request()->set_mode(pb::MODE_PNE);
    return env;
}

// Receives one datagram on `sock` (bounded: 10 s).
std::optional<DiscoverySocket::Datagram> receive_one(asio::io_context& io, DiscoverySocket& sock) {
    std::optional<DiscoverySocket::Datagram> got;
    asio::steady_timer guard(io, std::chrono::seconds(10));
    guard.async_wait([&](const std::error_code& ec) {
        if (!ec) sock.close();
    });
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            auto r = co_await sock.receive();
            if (auto* d = std::get_if<DiscoverySocket::Datagram>(&r)) got = std::move(*d);
            guard.cancel();
        },
        asio::detached);
    io.run_for(std::chrono::seconds(11));
    io.restart();
    return got;
}

void send_from(asio::io_context& io, const std::string& from, std::uint16_t port,
               const pb::Envelope& env) {
    udp::socket s(io, udp::endpoint(asio::ip::make_address_v4(from), 0));
    const Bytes frame = encode_frame(env);
    s.send_to(asio::buffer(frame), udp::endpoint(asio::ip::make_address_v4("127.0.0.1"), port));
}

TEST(DiscoverySocket, DatagramFromOutsideTheInterfaceSubnetIsDropped) {
    const auto other = other_local_address();
    if (!other) GTEST_SKIP() << "this host has no IPv4 address outside 127.0.0.0/8";
    asio::io_context io;
    DiscoverySocket sock(io.get_executor(), HostPort{"239.255.67.78", 47011}, "127.0.0.1", false);
    send_from(io, *other, sock.local_port(), discovery_request("ghost"));
    send_from(io, "127.0.0.1", sock.local_port(), discovery_request("pne-1"));
    const auto got = receive_one(io, sock);
    ASSERT_TRUE(got);
    EXPECT_EQ(got->envelope.sender_id(), "pne-1");
    EXPECT_EQ(sock.foreign(), 1u);
}

TEST(DiscoverySocket, InterfaceThatIsNotLocalIsRefused) {
    asio::io_context io;
    EXPECT_ANY_THROW(DiscoverySocket(io.get_executor(), HostPort{"239.255.67.78", 47011},
                                     "203.0.113.250", false));
}

TEST(DiscoverySocket, AnswerIsNeverBiggerThanTheRequest) {
    asio::io_context io;
    DiscoverySocket requester(io.get_executor(), HostPort{"239.255.67.78", 47011}, "127.0.0.1",
                              false);
    DiscoverySocket answerer(io.get_executor(), HostPort{"239.255.67.78", 47011}, "127.0.0.1",
                             false);
    pb::Envelope big;
    big.set_version(kProtocolVersion);
    big.set_sender_id("gw-1");
    auto* r = big.mutable_discovery_response();
    r->set_entity_id("gw-1");
    r->set_mode(pb::MODE_PN_GW);
    r->set_endpoint("127.0.0.1:7100");
    for (int i = 0; i < 256; ++i) r->add_pn_ids("pn-" + std::to_string(100000 + i));
    const udp::endpoint to(asio::ip::make_address_v4("127.0.0.1"), requester.local_port());
    const std::size_t tiny = encode_frame(discovery_request("pne-1")).size();
    EXPECT_FALSE(answerer.answer(big, to, tiny));  // a 24-octet request gets nothing back
    EXPECT_TRUE(answerer.answer(big, to, kDiscoveryRequestPadTo));
    const auto got = receive_one(io, requester);
    ASSERT_TRUE(got);
    EXPECT_LE(got->size, kDiscoveryRequestPadTo);
    EXPECT_GT(got->envelope.discovery_response().pn_ids_size(), 0);
}

}  // namespace
}  // namespace cpns::net
