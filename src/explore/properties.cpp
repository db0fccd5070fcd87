#include "explore/properties.hpp"

#include "explore/properties_detail.hpp"

#include <algorithm>
#include <map>

namespace cpns::explore {

namespace {

using Text = std::optional<std::string>;

using detail::each_new;

std::string ids_text(const std::set<std::string>& ids) {
    std::string s = "{";
    for (const auto& id : ids) {
        if (s.size() > 1) s += ',';
        s += id;
    }
    return s + "}";
}

std::set<std::string> member_ids(const pb::PnInventory& inv) {
    std::set<std::string> out;
    for (const auto& m : inv.members()) out.insert(m.pne_id());
    return out;
}

// Member ID -> capabilities and contents, as one comparable string.
std::map<std::string, std::string> member_view(const pb::PnInventory& inv) {
    std::map<std::string, std::string> out;
    for (const auto& m : inv.members()) {
        std::string v = m.capabilities().SerializeAsString();
        for (const auto& c : m.contents()) {
            v += '|';
            v += c.SerializeAsString();
        }
        out[m.pne_id()] = v;
    }
    return out;
}

const pb::PnInventory* registered(const World& w, const std::string& pn) {
    auto it = w.directory().pns().find(kGwId + "/" + pn);
    return it == w.directory().pns().end() ? nullptr : &it->second;
}

bool prior_pn(const World& w, const std::string& pn) {
    for (const auto& inv : w.prior().registered)
        if (inv.pn_id() == pn) return true;
    return false;
}

std::string initiator_of(const pb::PnRegistrationRequest& r) {
    for (const auto& p : r.pnes())
        if (p.role() == pb::ROLE_INITIATOR) return p.join().pne_id();
    return "";
}

bool contains(ByteView hay, ByteView needle) {
    return std::search(hay.begin(), hay.end(), needle.begin(), needle.end()) != hay.end();
}

// --- consent ------------------------------------------------------------------------------

Text consent(const World& w, const Since& s) {
    // A PN grown by an add: every honest PNE the store added accepted that PN's invitation.
    auto t = each_new<StoreChangeEffect>(
        w, s, [&](const std::string&, const StoreChangeEffect& c) -> Text {
            if (c.reason != pb::REASON_NONE || c.change.op != pb::CHANGE_ADD) return std::nullopt;
            const auto& pn = c.change.pn_id;
            for (const auto& m : c.change.added) {
                if (!w.honest(m.pne_id())) continue;
                auto it = w.facts().engaged.find(m.pne_id());
                if (it == w.facts().engaged.end() || !it->second.count(pn))
                    return m.pne_id() + " was added to " + pn +
                           " but never accepted an invitation to it in this run";
            }
            return std::nullopt;
        });
    if (t) return t;
    return each_new<PersistPnEffect>(
        w, s, [&](const std::string&, const PersistPnEffect& p) -> Text {
            const auto& pn = p.inventory.pn_id();
            for (const auto& m : p.inventory.members()) {
                if (!w.honest(m.pne_id())) continue;
                auto it = w.facts().engaged.find(m.pne_id());
                if (it == w.facts().engaged.end() || !it->second.count(pn))
                    return m.pne_id() + " is registered in " + pn +
                           " but never asked for it nor accepted its invitation in this run";
            }
            return std::nullopt;
        });
}

// --- initiator authenticity ---------------------------------------------------------------

Text initiator_authenticity(const World& w, const Since& s) {
    return each_new<OutcomeEffect>(
        w, s, [&](const std::string& party, const OutcomeEffect& o) -> Text {
            if (party != kServerId || !o.success || !o.operation.empty()) return std::nullopt;
            auto r = w.facts().registrations.find(o.pn_id);
            if (r == w.facts().registrations.end() || r->second.flow() != pb::FLOW_PNE_INITIATED)
                return std::nullopt;
            const std::string init = initiator_of(r->second);
            for (const auto& p : o.pnes)
                if (p.pne_id == init && p.joined) return std::nullopt;
            std::string why;
            for (const auto& p : o.pnes)
                if (p.pne_id == init) why = std::string(reason_name(p.reason));
            return "PNE-initiated " + o.pn_id + " registered with " +
                   ids_text(member_ids(o.inventory)) + " although its initiator " + init +
                   " did not authenticate at the server in this run (" + why + ")";
        });
}

// --- setup fidelity -------------------------------------------------------------------------

// Why `members` do not fit what the honest initiator (or the PN GW's command) asked for.
Text unfaithful(const World& w, const std::string& initiator, const std::set<std::string>& members,
                const std::string& pn) {
    const Scenario& scn = w.scenario();
    const auto list = scn.invited();
    std::set<std::string> allowed(list.begin(), list.end());
    if (scn.gw_initiated) {
        if (list.empty()) return std::nullopt;
    } else if (scn.setup == pb::SETUP_ALL) {
        return std::nullopt;
    } else {
        allowed.insert(initiator);
        if (scn.setup == pb::SETUP_ONE_TO_ONE && members != std::set<std::string>{initiator})
            return pn + " was asked as 1-1 by " + initiator + " but has members " +
                   ids_text(members);
    }
    for (const auto& m : members)
        if (!allowed.count(m))
            return pn + " has member " + m + " outside the invitation list " + ids_text(allowed);
    return std::nullopt;
}

Text setup_fidelity(const World& w, const Since& s) {
    return each_new<OutcomeEffect>(
        w, s, [&](const std::string& party, const OutcomeEffect& o) -> Text {
            // Establishment outcomes only (a lifecycle change names its operation).
            if (!o.success || !o.operation.empty() || o.pn_id.empty()) return std::nullopt;
            if (party == kServerId) {
                auto r = w.facts().registrations.find(o.pn_id);
                if (r == w.facts().registrations.end()) return std::nullopt;
                if (auto t =
                        unfaithful(w, initiator_of(r->second), member_ids(o.inventory), o.pn_id))
                    return "server registered: " + *t;
            } else if (party != kGwId && !w.scenario().gw_initiated &&
                       party == w.scenario().pne_ids().front()) {
                if (auto t = unfaithful(w, party, member_ids(o.inventory), o.pn_id))
                    return "initiator " + party + " accepted: " + *t;
            }
            return std::nullopt;
        });
}

}  // namespace

const std::vector<Property>& all_properties() {
    static const std::vector<Property> kAll{
        {"consent", "a PNE is a member only of PNs it asked for or accepted in that run", consent},
        {"initiator_authenticity",
         "a PNE-initiated PN is registered only if its initiator authenticated in that run",
         initiator_authenticity},
        {"agreement",
         "server, PN GW and member PNEs hold the same PN, members and capabilities/contents",
         agreement},
        {"setup_fidelity", "1-1 has only the initiator; list members are within the list",
         setup_fidelity},
        {"secrecy", "SK_PNE and EUKeys never at the PN GW; a LocalEUKey only at its PNE and PN GW",
         secrecy},
        {"freshness", "no key copy, hash or proof from one run is accepted in another", freshness},
        {"bounded_state", "PNs per PNE and PN GW, and sessions in flight, stay under bounds",
         bounded_state},
        {"lifecycle_authenticity",
         "an honest PNE leaves a PN at the server only by its own leave, its PN GW's removal or "
         "dissolve; it drops a membership only when the server no longer counts it",
         lifecycle_authenticity},
        {"no_replay",
         "a leave, change or notice delivered again changes neither the store nor a membership",
         no_replay},
        {"key_agreement",
         "once the world is quiet, an honest member and its PN GW hold the same LocalEUKey for "
         "the PN, or neither holds one (adds, re-keys, removals included)",
         key_agreement},
        {"revocation",
         "once the world is quiet, a revoked or disabled PNE is in no PN at the server, the PN "
         "GW or itself, and the PN GW holds no LocalEUKey and no PSK-TLS session of it",
         revocation},
    };
    return kAll;
}

const Property* find_property(std::string_view name) {
    for (const auto& p : all_properties())
        if (p.name == name) return &p;
    return nullptr;
}

std::vector<Violation> check_properties(const World& w, const Since& since,
                                        const std::set<std::string>& only) {
    std::vector<Violation> out;
    for (const auto& p : all_properties()) {
        if (!only.empty() && !only.count(std::string(p.name))) continue;
        if (auto t = p.check(w, since)) out.push_back(Violation{std::string(p.name), *t, w.step()});
    }
    return out;
}

bool has_violation(const std::vector<Violation>& v, std::string_view property) {
    return std::any_of(v.begin(), v.end(),
                       [&](const Violation& x) { return x.property == property; });
}

// Helpers shared with properties_more.cpp.
namespace detail {
std::set<std::string> member_ids_of(const pb::PnInventory& inv) {
    return member_ids(inv);
}
std::map<std::string, std::string> member_view_of(const pb::PnInventory& inv) {
    return member_view(inv);
}
const pb::PnInventory* registered_pn(const World& w, const std::string& pn) {
    return registered(w, pn);
}
bool is_prior_pn(const World& w, const std::string& pn) {
    return prior_pn(w, pn);
}
bool bytes_contain(ByteView hay, ByteView needle) {
    return contains(hay, needle);
}
std::string ids_string(const std::set<std::string>& ids) {
    return ids_text(ids);
}
}  // namespace detail

}  // namespace cpns::explore
