// "host:port" parsing for configuration and command lines.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace cpns::net {

struct HostPort {
    std::string host;
    std::uint16_t port = 0;
    std::string str() const { return host + ":" + std::to_string(port); }
};

// "127.0.0.1:7000", "[::1]:7000", "localhost:7000". Port 0 is allowed (ephemeral).
std::optional<HostPort> parse_host_port(std::string_view text);

}  // namespace cpns::net
