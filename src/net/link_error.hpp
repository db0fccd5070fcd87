// The one error type of the I/O edge: what connect, the PSK-TLS handshake, a frame read,
// listening and discovery report when they fail, as the reason the roles know plus a
// human-readable detail. No exceptions cross this edge for expected failures.
#pragma once

#include <string>
#include <variant>

#include "core/codec.hpp"
#include "tls/tls.hpp"

namespace cpns::net {

struct LinkError {
    pb::FailureReason reason = pb::PEER_UNREACHABLE;
    std::string detail;
    // The TLS engine's verdict when the failure was a PSK-TLS one (kNone otherwise): the
    // daemons' PSK back-off counts only kBadPsk.
    tls::TlsError tls = tls::TlsError::kNone;
};

// A value or the LinkError that stopped it.
template <class T>
using Result = std::variant<T, LinkError>;

template <class T>
const LinkError* error_of(const Result<T>& r) {
    return std::get_if<LinkError>(&r);
}

// What a PSK-TLS link authenticates, which decides the reason its failure is reported with.
enum class PskLink {
    kGatewayToServer,  // PN GW Authentication, seen by the PN GW (client)
    kServerOfGateway,  // PN GW Authentication, seen by the CPNS Server
    kPan,              // a PAN link between a PNE and its PN GW (either side)
};

// The only mapping from TLS failures to FailureReason:
//  - kGatewayToServer: a refused PSK (bad key or unknown identity) is
//    GATEWAY_AUTHENTICATION_FAILED; anything else (timeout, lost, protocol) PEER_UNREACHABLE.
//  - kServerOfGateway: an unknown identity is UNKNOWN_ENTITY; anything else
//    GATEWAY_AUTHENTICATION_FAILED.
//  - kPan: every failure is TLS_HANDSHAKE_FAILED.
pb::FailureReason to_reason(tls::TlsError error, PskLink link);

}  // namespace cpns::net
