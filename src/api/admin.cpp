#include "api/admin.hpp"

#include <nlohmann/json.hpp>

#include <cctype>
#include <chrono>
#include <ctime>
#include <iomanip>
#include <map>
#include <sstream>

#include "core/codec.hpp"
#include "daemon/common.hpp"

namespace cpns::api {

using nlohmann::json;

std::int64_t wall_now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string time_text(std::int64_t ms) {
    if (ms <= 0) return "-";
    const auto t = static_cast<std::time_t>(ms / 1000);
    std::tm tm{};
    gmtime_r(&t, &tm);
    std::ostringstream o;
    o << std::put_time(&tm, "%Y-%m-%dT%H:%M:%SZ");
    return o.str();
}

Millis parse_duration(const std::string& text) {
    std::size_t digits = 0;
    while (digits < text.size() && digits < 12 &&
           std::isdigit(static_cast<unsigned char>(text[digits])))
        ++digits;
    const std::string unit = text.substr(digits);
    Millis scale = 0;
    if (unit == "ms")
        scale = 1;
    else if (unit == "s")
        scale = 1000;
    else if (unit == "m")
        scale = 60'000;
    else if (unit == "h")
        scale = 3'600'000;
    else if (unit == "d")
        scale = 86'400'000;
    if (digits == 0 || scale == 0)
        throw AdminError(AdminError::Code::kInvalid,
                         "grace '" + printable(text) +
                             "': want a number and a unit (ms, s, m, h or d), e.g. 24h");
    const Millis value = std::stoll(text.substr(0, digits));
    if (value > kMaxRotationGrace / scale)
        throw AdminError(AdminError::Code::kInvalid,
                         "grace '" + text + "': longer than the maximum of " +
                             std::to_string(kMaxRotationGrace / 86'400'000) + " days");
    return value * scale;
}

void require_master_key_matches(store::Store& st) {
    try {
        (void)st.list_entities();
    } catch (const store::StoreError& e) {
        if (e.kind() == store::StoreError::Kind::kUnavailable) throw;
        throw daemon::ConfigError(std::string("the store does not load under this master key (") +
                                  e.what() + "); nothing written. Run `cpnsctl check`");
    }
}

namespace {

store::AuditRecord operator_record(const std::string& actor, const store::StoredEntity& e,
                                   const std::string& action, const std::string& detail) {
    store::AuditRecord rec;
    rec.at_ms = 0;
    rec.server_id = actor;
    (e.kind == EntityKind::kGw ? rec.gw_id : rec.pne_id) = e.id;
    rec.success = true;
    rec.reason = action;
    rec.detail = detail;
    return rec;
}

store::StoredEntity must_get(store::Store& st, const std::string& id) {
    auto e = st.get_entity(id);
    if (!e) throw AdminError(AdminError::Code::kNotFound, "no entity " + printable(id));
    return std::move(*e);
}

}  // namespace

store::StoredEntity provision(store::Store& st, const std::string& id, EntityKind kind,
                              const std::string& device_type, const SecretKey& key,
                              const std::string& actor, const std::function<void()>& before_write) {
    if (!valid_id(id))
        throw AdminError(AdminError::Code::kInvalid,
                         "'" + printable(id) + "' is not a valid entity ID");
    require_master_key_matches(st);
    if (st.get_entity(id))
        throw AdminError(AdminError::Code::kConflict,
                         id + " exists already; choose another ID (IDs are never reused)");
    store::StoredEntity e;
    e.id = id;
    e.kind = kind;
    e.eukey = key;
    e.capabilities.set_device_type(device_type);
    if (before_write) before_write();
    st.put_entity(e);
    auto stored = must_get(st, id);
    st.audit(operator_record(actor, stored, "provisioned",
                             "provisioned " + std::string(to_string(kind)) +
                                 (device_type.empty() ? "" : ", device type " + device_type)));
    return stored;
}

Rotation rotate(store::Store& st, const std::string& id, const SecretKey& fresh, Millis grace,
                const std::string& actor, const std::function<void()>& before_write) {
    require_master_key_matches(st);
    const auto e = must_get(st, id);
    if (e.status == EntityStatus::kRevoked)
        throw AdminError(AdminError::Code::kConflict,
                         id + " is revoked; revocation is final (provision a new entity)");
    if (before_write) before_write();
    const std::int64_t now = wall_now_ms();
    const auto version = st.rotate_eukey(id, fresh, now + grace);
    if (!version) throw AdminError(AdminError::Code::kNotFound, "no entity " + printable(id));
    Rotation r;
    r.key_version = *version;
    r.previous_valid_until_ms = now + grace;
    r.grace = grace;
    st.audit(operator_record(actor, e, "key rotated",
                             "EUKey rotated: key version " + std::to_string(*version) +
                                 "; the previous EUKey is valid until " + time_text(now + grace)));
    r.entity = must_get(st, id);
    return r;
}

store::StoredEntity set_status(store::Store& st, const std::string& id, EntityStatus status,
                               const std::string& actor) {
    std::optional<store::StoredEntity> before;
    try {
        before = st.get_entity(id);
    } catch (const store::StoreError& e) {
        // A row refused by the integrity check can still be revoked (set_status allows it).
        if (e.kind() == store::StoreError::Kind::kUnavailable || status != EntityStatus::kRevoked)
            throw;
    }
    if (before && status == EntityStatus::kActive && before->status == EntityStatus::kRevoked)
        throw AdminError(AdminError::Code::kConflict,
                         id + " is revoked; revocation is final (provision a new entity)");
    if (!st.set_status(id, status))
        throw AdminError(AdminError::Code::kNotFound, "no entity " + printable(id));
    auto after = must_get(st, id);
    const std::string word(to_string(status));
    st.audit(operator_record(
        actor, after,
        status == EntityStatus::kActive    ? "enabled"
        : status == EntityStatus::kRevoked ? "revoked"
                                           : "disabled",
        "status " + (before ? std::string(to_string(before->status)) : std::string("refused")) +
            " -> " + word));
    return after;
}

std::vector<PnView> list_pns(store::Store& st, const std::optional<std::string>& gw,
                             bool only_orphaned) {
    const auto all = gw ? st.list_pns(*gw) : st.list_pns();
    // A PN is orphaned when its PN GW is no longer active (disabled, revoked, gone).
    std::map<std::string, std::string> gw_state;
    std::vector<PnView> out;
    for (const auto& inv : all) {
        auto it = gw_state.find(inv.gw_id());
        if (it == gw_state.end()) {
            std::string state = "gone";
            try {
                if (const auto g = st.get_entity(inv.gw_id()))
                    state = std::string(to_string(g->status));
            } catch (const store::StoreError& e) {
                if (e.kind() == store::StoreError::Kind::kUnavailable) throw;
                state = "refused";
            }
            it = gw_state.emplace(inv.gw_id(), state).first;
        }
        const bool orphaned = it->second != "active";
        if (only_orphaned && !orphaned) continue;
        out.push_back(PnView{inv, orphaned, it->second});
    }
    return out;
}

std::optional<PnView> get_pn(store::Store& st, const std::string& gw, const std::string& pn_id) {
    for (auto& p : list_pns(st, gw, false))
        if (p.inventory.pn_id() == pn_id) return std::move(p);
    return std::nullopt;
}

Deleted delete_pn(store::Store& st, const std::string& gw_in, const std::string& pn_id,
                  const std::string& actor) {
    std::string gw = gw_in;
    if (gw.empty()) {
        std::vector<std::string> gws;
        for (const auto& inv : st.list_pns())
            if (inv.pn_id() == pn_id) gws.push_back(inv.gw_id());
        if (gws.size() > 1)
            throw AdminError(
                AdminError::Code::kInvalid,
                "PN " + pn_id + " is registered by several PN GWs; name one with --gw");
        if (!gws.empty()) gw = gws.front();
    }
    const ChangeResult r =
        gw.empty() ? ChangeResult{pb::UNKNOWN_PN, {}, false, {}} : st.delete_pn(gw, pn_id);
    if (r.reason != pb::REASON_NONE)
        throw AdminError(
            r.reason == pb::UNKNOWN_PN ? AdminError::Code::kNotFound : AdminError::Code::kConflict,
            "PN " + printable(pn_id) + " not deleted: " + std::string(reason_name(r.reason)));
    st.audit({0, actor, gw, pn_id, "", true, "none", "pn delete: dissolved by the operator"});
    return Deleted{gw, r.before.size()};
}

std::string order_rekey(store::Store& st, const std::string& gw_in, const std::string& pn_id,
                        const std::string& pne_id, const std::string& actor) {
    std::string gw = gw_in;
    if (gw.empty()) {
        std::vector<std::string> gws;
        for (const auto& inv : st.list_pns())
            if (inv.pn_id() == pn_id) gws.push_back(inv.gw_id());
        if (gws.size() > 1)
            throw AdminError(
                AdminError::Code::kInvalid,
                "PN " + pn_id + " is registered by several PN GWs; name one with --gw");
        if (!gws.empty()) gw = gws.front();
    }
    const ChangeResult r = gw.empty() ? ChangeResult{pb::UNKNOWN_PN, {}, false, {}}
                                      : st.order_rekey(gw, pn_id, pne_id);
    if (r.reason != pb::REASON_NONE) {
        st.audit({0, actor, gw, pn_id, pne_id, false, std::string(reason_name(r.reason)),
                  "rekey: refused by the store"});
        throw AdminError(
            r.reason == pb::UNKNOWN_PN ? AdminError::Code::kNotFound : AdminError::Code::kConflict,
            "rekey of " + printable(pne_id) + " in PN " + printable(pn_id) +
                " refused: " + std::string(reason_name(r.reason)));
    }
    st.audit({0, actor, gw, pn_id, pne_id, true, "none",
              "rekey ordered at revision " + std::to_string(r.inventory.revision())});
    return gw;
}

json entity_json(const store::StoredEntity& e) {
    json j{{"id", e.id},
           {"kind", to_string(e.kind)},
           {"status", to_string(e.status)},
           {"device_type", e.capabilities.device_type()},
           {"created_at", time_text(e.created_at_ms)},
           {"created_at_ms", e.created_at_ms},
           {"updated_at_ms", e.updated_at_ms},
           {"key_version", e.key_version},
           {"previous_key_valid_until_ms", nullptr}};
    if (e.previous) j["previous_key_valid_until_ms"] = e.previous->expires_at_ms;
    return j;
}

namespace {
json proto_json(const google::protobuf::Message& m) {
    const std::string text = daemon::message_json(m);
    json j = json::parse(text, nullptr, false);
    return j.is_discarded() ? json::object() : j;
}
}  // namespace

json pn_json(const PnView& p) {
    const auto& inv = p.inventory;
    json members = json::array();
    for (const auto& m : inv.members()) {
        json contents = json::array();
        for (const auto& c : m.contents()) contents.push_back(proto_json(c));
        members.push_back({{"pne_id", m.pne_id()},
                           {"capabilities", proto_json(m.capabilities())},
                           {"contents", contents},
                           {"joined_at_ms", m.joined_at_ms()}});
    }
    return json{{"gw_id", inv.gw_id()},       {"pn_id", inv.pn_id()},
                {"revision", inv.revision()}, {"registered_at_ms", inv.registered_at_ms()},
                {"members", members},         {"orphaned", p.orphaned},
                {"gw_status", p.gw_status}};
}

json audit_json(const store::AuditRecord& r) {
    const std::string subject = !r.pne_id.empty() ? r.pne_id : !r.pn_id.empty() ? r.pn_id : r.gw_id;
    return json{{"time", time_text(r.at_ms)}, {"time_ms", r.at_ms}, {"actor", r.server_id},
                {"action", r.reason},         {"subject", subject}, {"detail", r.detail},
                {"success", r.success},       {"gw_id", r.gw_id},   {"pn_id", r.pn_id},
                {"pne_id", r.pne_id}};
}

store::StoredEntity entity_from_json(const json& j) {
    store::StoredEntity e;
    e.id = j.at("id").get<std::string>();
    const auto kind = parse_entity_kind(j.at("kind").get<std::string>());
    const auto status = parse_entity_status(j.at("status").get<std::string>());
    if (!kind || !status) throw std::runtime_error("entity " + e.id + ": unknown kind or status");
    e.kind = *kind;
    e.status = *status;
    e.capabilities.set_device_type(j.at("device_type").get<std::string>());
    e.created_at_ms = j.at("created_at_ms").get<std::int64_t>();
    e.updated_at_ms = j.at("updated_at_ms").get<std::int64_t>();
    e.key_version = j.at("key_version").get<std::int64_t>();
    if (const auto& p = j.at("previous_key_valid_until_ms"); !p.is_null()) {
        e.previous.emplace();
        e.previous->expires_at_ms = p.get<std::int64_t>();
    }
    return e;
}

PnView pn_from_json(const json& j) {
    PnView p;
    p.inventory.set_gw_id(j.at("gw_id").get<std::string>());
    p.inventory.set_pn_id(j.at("pn_id").get<std::string>());
    p.inventory.set_revision(j.at("revision").get<std::uint64_t>());
    p.inventory.set_registered_at_ms(j.at("registered_at_ms").get<std::uint64_t>());
    for (const auto& m : j.at("members")) p.inventory.add_members()->set_pne_id(m.at("pne_id"));
    p.orphaned = j.at("orphaned").get<bool>();
    p.gw_status = j.at("gw_status").get<std::string>();
    return p;
}

store::AuditRecord audit_from_json(const json& j) {
    store::AuditRecord r;
    r.at_ms = j.at("time_ms").get<std::int64_t>();
    r.server_id = j.at("actor").get<std::string>();
    r.reason = j.at("action").get<std::string>();
    r.detail = j.at("detail").get<std::string>();
    r.success = j.at("success").get<bool>();
    r.gw_id = j.at("gw_id").get<std::string>();
    r.pn_id = j.at("pn_id").get<std::string>();
    r.pne_id = j.at("pne_id").get<std::string>();
    return r;
}

}  // namespace cpns::api
