#include "core/role.hpp"

namespace cpns {

Flow to_flow(pb::Flow f) { return f == pb::FLOW_GW_INITIATED ? Flow::kGwInitiated : Flow::kPneInitiated; }

PneRole to_role(pb::PneRoleInFlow r) {
    return r == pb::ROLE_INITIATOR ? PneRole::kInitiator : PneRole::kInvitee;
}

SetupKind to_setup_kind(pb::SetupType t) {
    switch (t) {
        case pb::SETUP_ONE_TO_ONE: return SetupKind::kOneToOne;
        case pb::SETUP_ALL: return SetupKind::kAll;
        case pb::SETUP_INVITE_LIST: return SetupKind::kInviteList;
        default: return SetupKind::kNone;
    }
}

std::string preassigned_identity(std::string_view pne_id) {
    return "pre:" + std::string(pne_id);
}

std::string local_eukey_identity(std::string_view pn_id, std::string_view pne_id) {
    return "leuk:" + std::string(pn_id) + ":" + std::string(pne_id);
}

}  // namespace cpns
