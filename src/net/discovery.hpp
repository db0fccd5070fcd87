// CPNS Entity Discovery over UDP multicast on the PAN side (step 0). Datagrams carry the
// same framed Envelope as every other link.
//
// The socket serves one interface only: a listening socket is bound to the group address (no
// unicast to its port), receives the group only where it joined it (IP_MULTICAST_ALL off), and
// every socket drops datagrams whose source is not on the configured interface's subnet.
// Requests sent by datagram are padded (kDiscoveryRequestPadTo) and an answer by datagram is
// never bigger than the request it answers (core/neighbours.hpp, fit_discovery_answer).
#pragma once

#include <asio.hpp>
#include <optional>
#include <string>
#include <utility>

#include "core/codec.hpp"
#include "net/address.hpp"
#include "net/link_error.hpp"

namespace cpns::net {

using udp = asio::ip::udp;

inline constexpr const char* kDefaultDiscoveryGroup = "239.255.67.78:47011";
inline constexpr std::size_t kMaxDatagram = 8 * 1024;

// The IPv4 subnet of the local interface that has address `interface_addr` (nullopt: no
// local interface has it).
struct Subnet {
    asio::ip::address_v4 address;
    asio::ip::address_v4 mask;
    bool contains(const asio::ip::address& a) const;
};
std::optional<Subnet> interface_subnet(const asio::ip::address_v4& interface_addr);

class DiscoverySocket {
  public:
    // listen = true: bind the group's address and port and join the group on `interface_addr`
    // (a PN GW). listen = false: an ephemeral port on `interface_addr` that sends to the group
    // and gets unicast answers. Throws if `interface_addr` is not a local interface address.
    DiscoverySocket(asio::any_io_executor ex, const HostPort& group,
                    const std::string& interface_addr, bool listen);
    // A request to the group (padded to kDiscoveryRequestPadTo).
    void send_to_group(pb::Envelope env);
    void send_to(const pb::Envelope& env, const udp::endpoint& to);
    // An answer to a request of `request_size` octets, trimmed to at most that size; false
    // (nothing sent) when it cannot be made that small.
    bool answer(pb::Envelope env, const udp::endpoint& to, std::size_t request_size);
    struct Datagram {
        pb::Envelope envelope;
        udp::endpoint from;
        std::size_t size = 0;  // octets of the datagram
    };
    // The next well-formed datagram from the interface's subnet (malformed and foreign ones are
    // skipped and counted), or a LinkError once the socket is closed or fails.
    asio::awaitable<Result<Datagram>> receive();
    std::size_t malformed() const { return malformed_; }
    std::size_t foreign() const { return foreign_; }
    std::uint16_t local_port() const;
    void close();

  private:
    udp::socket socket_;
    udp::endpoint group_;
    Subnet subnet_;
    std::array<std::uint8_t, kMaxDatagram> buf_{};
    std::size_t malformed_ = 0;
    std::size_t foreign_ = 0;
};

}  // namespace cpns::net
