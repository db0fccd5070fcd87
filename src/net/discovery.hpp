// CPNS Entity Discovery over UDP multicast on the PAN side (step 0). Datagrams carry the
// same framed Envelope as every other link.
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

class DiscoverySocket {
  public:
    // listen = true: bind the group's port and join the group on `interface_addr` (a PN GW).
    // listen = false: an ephemeral port that sends to the group and gets unicast answers.
    DiscoverySocket(asio::any_io_executor ex, const HostPort& group,
                    const std::string& interface_addr, bool listen);
    void send_to_group(const pb::Envelope& env);
    void send_to(const pb::Envelope& env, const udp::endpoint& to);
    using Datagram = std::pair<pb::Envelope, udp::endpoint>;
    // The next well-formed datagram (malformed ones are skipped and counted), or a LinkError
    // once the socket is closed or fails.
    asio::awaitable<Result<Datagram>> receive();
    std::size_t malformed() const { return malformed_; }
    void close();

  private:
    udp::socket socket_;
    udp::endpoint group_;
    std::array<std::uint8_t, kMaxDatagram> buf_{};
    std::size_t malformed_ = 0;
};

}  // namespace cpns::net
