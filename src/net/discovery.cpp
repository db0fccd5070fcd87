#include "net/discovery.hpp"

namespace cpns::net {

DiscoverySocket::DiscoverySocket(asio::any_io_executor ex, const HostPort& group,
                                 const std::string& interface_addr, bool listen)
    : socket_(ex) {
    const auto group_addr = asio::ip::make_address_v4(group.host);
    const auto iface = asio::ip::make_address_v4(interface_addr);
    group_ = udp::endpoint(group_addr, group.port);
    socket_.open(udp::v4());
    socket_.set_option(asio::ip::multicast::outbound_interface(iface));
    socket_.set_option(asio::ip::multicast::enable_loopback(true));
    socket_.set_option(asio::ip::multicast::hops(1));  // never leaves the PAN segment
    if (listen) {
        socket_.set_option(udp::socket::reuse_address(true));
        socket_.bind(udp::endpoint(asio::ip::address_v4::any(), group.port));
        socket_.set_option(asio::ip::multicast::join_group(group_addr, iface));
    } else {
        socket_.bind(udp::endpoint(iface, 0));
    }
}

void DiscoverySocket::send_to_group(const pb::Envelope& env) {
    send_to(env, group_);
}

void DiscoverySocket::send_to(const pb::Envelope& env, const udp::endpoint& to) {
    const Bytes frame = encode_frame(env);
    std::error_code ec;
    socket_.send_to(asio::buffer(frame), to, 0, ec);
}

asio::awaitable<Result<DiscoverySocket::Datagram>> DiscoverySocket::receive() {
    for (;;) {
        udp::endpoint from;
        std::error_code ec;
        const std::size_t n = co_await socket_.async_receive_from(
            asio::buffer(buf_), from, asio::redirect_error(asio::use_awaitable, ec));
        if (ec) co_return LinkError{pb::PEER_UNREACHABLE, ec.message()};
        auto r = decode_frame(std::span<const std::uint8_t>(buf_.data(), n));
        if (auto* env = std::get_if<pb::Envelope>(&r))
            co_return std::make_pair(std::move(*env), from);
        ++malformed_;
    }
}

void DiscoverySocket::close() {
    std::error_code ec;
    socket_.close(ec);
}

}  // namespace cpns::net
