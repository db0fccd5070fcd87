// libFuzzer target: CPNS Entity Discovery datagrams (src/net/discovery.hpp) as the daemons
// handle them. The input is a sequence of datagrams (u16 length, bytes). Each is cut to the
// socket's buffer (kMaxDatagram) and decoded as DiscoverySocket::receive() does; a request
// goes to a PN GW as GwDaemon::discovery_loop() passes it (from = sender_id), a response to
// a PNE as PneDaemon does (from = entity_id, and a PN GW's endpoint parsed as host:port).
//
// Invariants, besides no crash, UB or leak: a datagram decodes iff decode_frame accepts it,
// the neighbour tables stay within kMaxNeighbours, a discovery answer goes back to the asker
// only, and an endpoint the PNE would connect to names a host.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <variant>

#include "fuzz/roles.hpp"
#include "net/address.hpp"
#include "net/discovery.hpp"

namespace {

using namespace cpns;
using namespace cpns::fuzz;
constexpr const char* kTarget = "cpns-fuzz-discovery";

void check_sends(const GatewayEffects& fx, const std::string& asker) {
    const EffectChecker check(kTarget);
    for (const auto& e : fx)
        if (const auto* s = std::get_if<SendEffect>(&e)) {
            check.send(*s);
            if (s->msg.has_discovery_response() && s->to != asker)
                fail(kTarget, "a discovery answer to someone who did not ask");
        }
}

void check_sends(const PneEffects& fx) {
    const EffectChecker check(kTarget);
    for (const auto& e : fx)
        if (const auto* s = std::get_if<SendEffect>(&e)) check.send(*s);
}

// The PNE connects to what parse_host_port() accepts: a host, and a port.
void check_endpoint(const std::string& text) {
    const auto hp = net::parse_host_port(text);
    if (hp && hp->host.empty()) fail(kTarget, "an endpoint without a host was accepted");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    DeterministicRandom gw_random(kRoleSeed + 1), pne_random(kRoleSeed + 2);
    Gateway gw(gw_config(), gw_random);
    gw.set_endpoint("127.0.0.1:47010");
    Pne pne(pne_config(kPneA), pne_random);
    Millis now = kStart;
    std::size_t pos = 0;
    for (std::size_t n = 0; n < kMaxEvents && size - pos >= 2; ++n) {
        const std::size_t len =
            std::min<std::size_t>((data[pos] << 8) | data[pos + 1], size - pos - 2);
        const std::span<const std::uint8_t> datagram(data + pos + 2,
                                                     std::min(len, net::kMaxDatagram));
        pos += 2 + len;
        now += 10;
        auto decoded = decode_frame(datagram);
        auto* env = std::get_if<pb::Envelope>(&decoded);
        if (!env) continue;
        if (env->has_discovery_request() && env->sender_id() != kGwId)
            check_sends(gw.on_message(env->sender_id(), *env, Protection::kClear, now),
                        env->sender_id());
        if (env->has_discovery_response()) {
            const auto& r = env->discovery_response();
            check_sends(pne.on_message(r.entity_id(), *env, Protection::kClear, now));
            if (r.mode() == pb::MODE_PN_GW || r.mode() == pb::MODE_BOTH)
                check_endpoint(r.endpoint());
        }
        if (gw.neighbours().size() > kMaxNeighbours || pne.neighbours().size() > kMaxNeighbours)
            fail(kTarget, "neighbour table unbounded");
    }
    return 0;
}
