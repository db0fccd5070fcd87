#include "net/discovery.hpp"

#include <ifaddrs.h>
#include <netinet/in.h>

#include <stdexcept>

#include "core/neighbours.hpp"

namespace cpns::net {

bool Subnet::contains(const asio::ip::address& a) const {
    if (!a.is_v4()) return false;
    const auto m = mask.to_uint();
    return (a.to_v4().to_uint() & m) == (address.to_uint() & m);
}

std::optional<Subnet> interface_subnet(const asio::ip::address_v4& interface_addr) {
    ifaddrs* list = nullptr;
    if (::getifaddrs(&list) != 0) return std::nullopt;
    std::optional<Subnet> found;
    for (const ifaddrs* i = list; i && !found; i = i->ifa_next) {
        if (!i->ifa_addr || !i->ifa_netmask || i->ifa_addr->sa_family != AF_INET) continue;
        const auto* a = reinterpret_cast<const sockaddr_in*>(i->ifa_addr);
        const auto* m = reinterpret_cast<const sockaddr_in*>(i->ifa_netmask);
        const asio::ip::address_v4 addr(ntohl(a->sin_addr.s_addr));
        if (addr == interface_addr)
            found = Subnet{addr, asio::ip::address_v4(ntohl(m->sin_addr.s_addr))};
    }
    ::freeifaddrs(list);
    return found;
}

DiscoverySocket::DiscoverySocket(asio::any_io_executor ex, const HostPort& group,
                                 const std::string& interface_addr, bool listen)
    : socket_(ex) {
    const auto group_addr = asio::ip::make_address_v4(group.host);
    const auto iface = asio::ip::make_address_v4(interface_addr);
    const auto subnet = interface_subnet(iface);
    if (!subnet) throw std::runtime_error(interface_addr + " is not an address of this host");
    subnet_ = *subnet;
    group_ = udp::endpoint(group_addr, group.port);
    socket_.open(udp::v4());
    socket_.set_option(asio::ip::multicast::outbound_interface(iface));
    socket_.set_option(asio::ip::multicast::enable_loopback(true));
    socket_.set_option(asio::ip::multicast::hops(1));  // never leaves the PAN segment
    if (listen) {
        socket_.set_option(udp::socket::reuse_address(true));
#ifdef IP_MULTICAST_ALL
        // Only the groups this socket joined, on the interface it joined them on.
        const int off = 0;
        ::setsockopt(socket_.native_handle(), IPPROTO_IP, IP_MULTICAST_ALL, &off, sizeof off);
#endif
        socket_.bind(udp::endpoint(group_addr, group.port));
        socket_.set_option(asio::ip::multicast::join_group(group_addr, iface));
    } else {
        socket_.bind(udp::endpoint(iface, 0));
    }
}

std::uint16_t DiscoverySocket::local_port() const {
    std::error_code ec;
    return socket_.local_endpoint(ec).port();
}

void DiscoverySocket::send_to_group(pb::Envelope env) {
    if (env.has_discovery_request()) pad_discovery_request(env);
    send_to(env, group_);
}

void DiscoverySocket::send_to(const pb::Envelope& env, const udp::endpoint& to) {
    const Bytes frame = encode_frame(env);
    std::error_code ec;
    socket_.send_to(asio::buffer(frame), to, 0, ec);
}

bool DiscoverySocket::answer(pb::Envelope env, const udp::endpoint& to, std::size_t request_size) {
    if (!fit_discovery_answer(env, request_size)) return false;
    send_to(env, to);
    return true;
}

asio::awaitable<Result<DiscoverySocket::Datagram>> DiscoverySocket::receive() {
    for (;;) {
        udp::endpoint from;
        std::error_code ec;
        const std::size_t n = co_await socket_.async_receive_from(
            asio::buffer(buf_), from, asio::redirect_error(asio::use_awaitable, ec));
        if (ec) co_return LinkError{pb::PEER_UNREACHABLE, ec.message()};
        if (!subnet_.contains(from.address())) {
            ++foreign_;
            continue;
        }
        auto r = decode_frame(std::span<const std::uint8_t>(buf_.data(), n));
        if (auto* env = std::get_if<pb::Envelope>(&r)) co_return Datagram{std::move(*env), from, n};
        ++malformed_;
    }
}

void DiscoverySocket::close() {
    std::error_code ec;
    socket_.close(ec);
}

}  // namespace cpns::net
