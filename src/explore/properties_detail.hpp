// Internal to the properties: checks defined in properties_more.cpp and shared helpers.
#pragma once

#include <map>
#include <set>
#include <string>

#include "explore/properties.hpp"

namespace cpns::explore {

std::optional<std::string> agreement(const World& w, const Since& s);
std::optional<std::string> secrecy(const World& w, const Since& s);
std::optional<std::string> freshness(const World& w, const Since& s);
std::optional<std::string> bounded_state(const World& w, const Since& s);
std::optional<std::string> lifecycle_authenticity(const World& w, const Since& s);
std::optional<std::string> no_replay(const World& w, const Since& s);
std::optional<std::string> revocation(const World& w, const Since& s);
std::optional<std::string> key_agreement(const World& w, const Since& s);

namespace detail {
// The first non-empty result of `f(party, effect)` over the step's observations of type T.
template <class T, class F>
std::optional<std::string> each_new(const World& w, const Since& s, F&& f) {
    const auto& obs = w.observations();
    for (std::size_t i = s.obs; i < obs.size(); ++i)
        if (const auto* e = std::get_if<T>(&obs[i].effect))
            if (auto t = f(obs[i].party, *e)) return t;
    return std::nullopt;
}
std::set<std::string> member_ids_of(const pb::PnInventory& inv);
// Member ID -> its capabilities and contents as one comparable string.
std::map<std::string, std::string> member_view_of(const pb::PnInventory& inv);
const pb::PnInventory* registered_pn(const World& w, const std::string& pn);
bool is_prior_pn(const World& w, const std::string& pn);
bool bytes_contain(ByteView hay, ByteView needle);
std::string ids_string(const std::set<std::string>& ids);
}  // namespace detail

}  // namespace cpns::explore
