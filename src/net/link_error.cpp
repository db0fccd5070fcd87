#include "net/link_error.hpp"

namespace cpns::net {

pb::FailureReason to_reason(tls::TlsError error, PskLink link) {
    const bool refused =
        error == tls::TlsError::kBadPsk || error == tls::TlsError::kUnknownIdentity;
    switch (link) {
        case PskLink::kGatewayToServer:
            return refused ? pb::GATEWAY_AUTHENTICATION_FAILED : pb::PEER_UNREACHABLE;
        case PskLink::kServerOfGateway:
            return error == tls::TlsError::kUnknownIdentity ? pb::UNKNOWN_ENTITY
                                                            : pb::GATEWAY_AUTHENTICATION_FAILED;
        case PskLink::kPan:
            return pb::TLS_HANDSHAKE_FAILED;
    }
    return pb::INTERNAL_ERROR;
}

}  // namespace cpns::net
