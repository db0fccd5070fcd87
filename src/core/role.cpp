#include "core/role.hpp"

namespace cpns {

Flow to_flow(pb::Flow f) {
    return f == pb::FLOW_GW_INITIATED ? Flow::kGwInitiated : Flow::kPneInitiated;
}

PneRole to_role(pb::PneRoleInFlow r) {
    return r == pb::ROLE_INITIATOR ? PneRole::kInitiator : PneRole::kInvitee;
}

SetupKind to_setup_kind(pb::SetupType t) {
    switch (t) {
        case pb::SETUP_ONE_TO_ONE:
            return SetupKind::kOneToOne;
        case pb::SETUP_ALL:
            return SetupKind::kAll;
        case pb::SETUP_INVITE_LIST:
            return SetupKind::kInviteList;
        default:
            return SetupKind::kNone;
    }
}

std::string preassigned_identity(std::string_view pne_id) {
    return "pre:" + std::string(pne_id);
}

std::string local_eukey_identity(std::string_view pn_id, std::string_view pne_id) {
    return "leuk:" + std::string(pn_id) + ":" + std::string(pne_id);
}

std::optional<PskIdentity> parse_psk_identity(std::string_view identity) {
    PskIdentity out;
    if (identity.starts_with("pre:")) {
        out.kind = PskIdentity::Kind::kPreassigned;
        out.pne_id = std::string(identity.substr(4));
    } else if (identity.starts_with("leuk:")) {
        const auto rest = identity.substr(5);
        const auto colon = rest.find(':');
        if (colon == std::string_view::npos) return std::nullopt;
        out.kind = PskIdentity::Kind::kLocalEuKey;
        out.pn_id = std::string(rest.substr(0, colon));
        out.pne_id = std::string(rest.substr(colon + 1));
        if (!valid_id(out.pn_id)) return std::nullopt;
    } else {
        return std::nullopt;
    }
    if (!valid_id(out.pne_id)) return std::nullopt;
    return out;
}

pb::Envelope error_report(const std::string& pn_id, pb::FailureReason reason,
                          const std::string& detail) {
    pb::Envelope env;
    auto* e = env.mutable_error();
    e->set_pn_id(pn_id);
    e->set_reason(reason);
    e->set_detail(detail);
    return env;
}

}  // namespace cpns
