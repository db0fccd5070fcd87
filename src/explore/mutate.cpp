#include "explore/mutate.hpp"

#include <algorithm>
#include <charconv>

namespace cpns::explore {

namespace {

pb::PnResult* result_of(pb::Envelope& env) {
    if (env.has_setup_response()) return env.mutable_setup_response()->mutable_result();
    if (env.has_establishment_notify()) return env.mutable_establishment_notify()->mutable_result();
    return nullptr;
}

const pb::PnResult* result_of(const pb::Envelope& env) {
    if (env.has_setup_response()) return &env.setup_response().result();
    if (env.has_establishment_notify()) return &env.establishment_notify().result();
    return nullptr;
}

template <class Repeated>
void set_list(Repeated* ids, const std::string& value) {
    ids->Clear();
    std::size_t start = 0;
    while (start < value.size()) {
        auto end = value.find(',', start);
        if (end == std::string::npos) end = value.size();
        if (end > start) ids->Add(value.substr(start, end - start));
        start = end + 1;
    }
}

template <class Repeated>
std::string join_list(const Repeated& ids) {
    std::string s;
    for (const auto& id : ids) {
        if (!s.empty()) s += ',';
        s += id;
    }
    return s;
}

bool mutate_inventory(pb::PnInventory* inv, const std::string& value) {
    if (value.size() < 2) return false;
    const std::string id = value.substr(1);
    auto* members = inv->mutable_members();
    auto it = std::find_if(members->begin(), members->end(),
                           [&](const pb::PnMember& m) { return m.pne_id() == id; });
    if (value[0] == '-') {
        if (it == members->end()) return false;
        members->erase(it);
        return true;
    }
    if (it != members->end()) return false;
    inv->add_members()->set_pne_id(id);
    return true;
}

bool set_pn_id(pb::Envelope& env, const std::string& v) {
    using B = pb::Envelope::BodyCase;
    switch (env.body_case()) {
        case B::kSetupNotify:
            return env.mutable_setup_notify()->set_pn_id(v), true;
        case B::kSetupInvite:
            return env.mutable_setup_invite()->set_pn_id(v), true;
        case B::kSetupNotifyResponse:
            return env.mutable_setup_notify_response()->set_pn_id(v), true;
        case B::kPneAuthRequest:
            return env.mutable_pne_auth_request()->set_pn_id(v), true;
        case B::kPneAuthResponse:
            return env.mutable_pne_auth_response()->set_pn_id(v), true;
        case B::kError:
            return env.mutable_error()->set_pn_id(v), true;
        case B::kLeaveRequest:
            return env.mutable_leave_request()->set_pn_id(v), true;
        case B::kLeaveResponse:
            return env.mutable_leave_response()->set_pn_id(v), true;
        case B::kChangeRequest:
            return env.mutable_change_request()->set_pn_id(v), true;
        case B::kChangeResponse:
            return env.mutable_change_response()->set_pn_id(v), true;
        case B::kChangeNotifyAck:
            return env.mutable_change_notify_ack()->set_pn_id(v), true;
        default:
            if (auto* r = result_of(env)) return r->set_pn_id(v), true;
            return false;
    }
}

bool set_caps(pb::Envelope& env, const std::string& v) {
    pb::PneJoin* join = env.has_setup_request() ? env.mutable_setup_request()->mutable_join()
                        : env.has_setup_notify_response()
                            ? env.mutable_setup_notify_response()->mutable_join()
                            : nullptr;
    return join && join->mutable_capabilities()->ParseFromString(v);
}

// The lifecycle fields: PnChangeRequest's PNE and operation; the revision a leave, a change or
// an acknowledgement names (decimal).
bool mutate_lifecycle(pb::Envelope& env, const std::string& field, const std::string& v) {
    if (field == "pne_id" && env.has_change_request())
        return env.mutable_change_request()->set_pne_id(v), true;
    if (field == "op" && env.has_change_request()) {
        const int op = v.size() == 1 ? v[0] - '0' : 0;
        if (op < pb::CHANGE_LEAVE || op > pb::CHANGE_DISSOLVE) return false;
        return env.mutable_change_request()->set_op(static_cast<pb::ChangeOp>(op)), true;
    }
    if (field != "revision") return false;
    std::uint64_t r = 0;
    const auto res = std::from_chars(v.data(), v.data() + v.size(), r);
    if (res.ec != std::errc() || res.ptr != v.data() + v.size()) return false;
    if (env.has_leave_request()) return env.mutable_leave_request()->set_revision(r), true;
    if (env.has_change_request()) return env.mutable_change_request()->set_revision(r), true;
    if (env.has_change_notify_ack()) return env.mutable_change_notify_ack()->set_revision(r), true;
    return false;
}

}  // namespace

bool mutate(pb::Envelope& env, const std::string& field, const std::string& v) {
    if (field == "pne_id" || field == "op" || field == "revision")
        return mutate_lifecycle(env, field, v);
    if (field == "success") {
        if (env.has_leave_response())
            return env.mutable_leave_response()->set_accepted(v == "1"), true;
        if (env.has_change_response())
            return env.mutable_change_response()->set_accepted(v == "1"), true;
    }
    if (field == "setup_type") {
        int t = v.empty() ? 0 : v[0] - '0';
        if (t < 1 || t > 3) return false;
        if (env.has_setup_request())
            return env.mutable_setup_request()->set_setup_type(static_cast<pb::SetupType>(t)), true;
        if (env.has_registration_request())
            return env.mutable_registration_request()->set_setup_type(
                       static_cast<pb::SetupType>(t)),
                   true;
        return false;
    }
    if (field == "invited") {
        if (env.has_setup_request())
            return set_list(env.mutable_setup_request()->mutable_invited_pne_ids(), v), true;
        if (env.has_registration_request())
            return set_list(env.mutable_registration_request()->mutable_invited_pne_ids(), v), true;
        return false;
    }
    if (field == "caps") return set_caps(env, v);
    if (field == "pn_id") return set_pn_id(env, v);
    if (field == "rand_server") {
        if (env.has_pne_auth_request())
            return env.mutable_pne_auth_request()->set_rand_server(v), true;
        if (env.has_auth_request()) return env.mutable_auth_request()->set_rand_server(v), true;
        return false;
    }
    if (field == "wrapped" && env.has_pne_auth_request())
        return env.mutable_pne_auth_request()->set_wrapped_local_eukey(v), true;
    if (field == "hash_pne" && env.has_pne_auth_response())
        return env.mutable_pne_auth_response()->set_hash_pne(v), true;
    auto* r = result_of(env);
    if (!r) return false;
    if (field == "hash_server") return r->set_hash_server_pne(v), true;
    if (field == "inventory") return r->success() && mutate_inventory(r->mutable_inventory(), v);
    if (field == "success") return r->set_success(v == "1"), true;
    return false;
}

namespace {

void collect_result(const pb::PnResult& r, std::map<std::string, std::set<std::string>>& v) {
    v["pn_id"].insert(r.pn_id());
    if (!r.hash_server_pne().empty()) v["hash_server"].insert(r.hash_server_pne());
}

void collect_server_side(const pb::Envelope& env, std::map<std::string, std::set<std::string>>& v) {
    if (env.has_registration_request()) {
        const auto& m = env.registration_request();
        v["pn_id"].insert(m.pn_id());
        v["invited"].insert(join_list(m.invited_pne_ids()));
        for (const auto& p : m.pnes())
            v["caps"].insert(p.join().capabilities().SerializeAsString());
    } else if (env.has_auth_request()) {
        const auto& m = env.auth_request();
        v["pn_id"].insert(m.pn_id());
        v["rand_server"].insert(m.rand_server());
        for (const auto& k : m.local_eukeys()) v["wrapped"].insert(k.for_pne());
    } else if (env.has_auth_response()) {
        v["pn_id"].insert(env.auth_response().pn_id());
        for (const auto& r : env.auth_response().results())
            if (!r.hash_pne().empty()) v["hash_pne"].insert(r.hash_pne());
    } else if (env.has_registration_response()) {
        v["pn_id"].insert(env.registration_response().pn_id());
        for (const auto& r : env.registration_response().results())
            if (!r.hash_server_pne().empty()) v["hash_server"].insert(r.hash_server_pne());
    }
}

}  // namespace

void collect_values(const pb::Envelope& env, std::map<std::string, std::set<std::string>>& v) {
    using B = pb::Envelope::BodyCase;
    switch (env.body_case()) {
        case B::kSetupRequest:
            v["caps"].insert(env.setup_request().join().capabilities().SerializeAsString());
            v["invited"].insert(join_list(env.setup_request().invited_pne_ids()));
            return;
        case B::kSetupNotify:
            v["pn_id"].insert(env.setup_notify().pn_id());
            return;
        case B::kSetupInvite:
            v["pn_id"].insert(env.setup_invite().pn_id());
            return;
        case B::kSetupNotifyResponse:
            v["pn_id"].insert(env.setup_notify_response().pn_id());
            if (env.setup_notify_response().accept())
                v["caps"].insert(
                    env.setup_notify_response().join().capabilities().SerializeAsString());
            return;
        case B::kPneAuthRequest:
            v["pn_id"].insert(env.pne_auth_request().pn_id());
            v["rand_server"].insert(env.pne_auth_request().rand_server());
            if (!env.pne_auth_request().wrapped_local_eukey().empty())
                v["wrapped"].insert(env.pne_auth_request().wrapped_local_eukey());
            return;
        case B::kPneAuthResponse:
            v["pn_id"].insert(env.pne_auth_response().pn_id());
            if (!env.pne_auth_response().hash_pne().empty())
                v["hash_pne"].insert(env.pne_auth_response().hash_pne());
            return;
        case B::kError:
            if (!env.error().pn_id().empty()) v["pn_id"].insert(env.error().pn_id());
            return;
        case B::kLeaveRequest:
            v["pn_id"].insert(env.leave_request().pn_id());
            v["revision"].insert(std::to_string(env.leave_request().revision()));
            v["revision"].insert(std::to_string(env.leave_request().revision() + 1));
            return;
        case B::kChangeRequest:
            v["pn_id"].insert(env.change_request().pn_id());
            if (!env.change_request().pne_id().empty())
                v["pne_id"].insert(env.change_request().pne_id());
            v["revision"].insert(std::to_string(env.change_request().revision()));
            v["revision"].insert(std::to_string(env.change_request().revision() + 1));
            return;
        case B::kChangeNotifyAck:
            v["pn_id"].insert(env.change_notify_ack().pn_id());
            v["revision"].insert(std::to_string(env.change_notify_ack().revision()));
            return;
        case B::kLeaveResponse:
            v["pn_id"].insert(env.leave_response().pn_id());
            return;
        case B::kChangeResponse:
            v["pn_id"].insert(env.change_response().pn_id());
            return;
        default:
            if (const auto* r = result_of(env)) return collect_result(*r, v);
            return collect_server_side(env, v);
    }
}

}  // namespace cpns::explore
