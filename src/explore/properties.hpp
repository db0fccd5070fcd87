// Security properties, each a check evaluated after every step of a run. A check looks at
// what the step added (observations and attacker knowledge from `since`) and at the roles'
// current state, and returns a violation text or nothing.
#pragma once

#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "explore/world.hpp"

namespace cpns::explore {

// Where the step began: observations and knowledge before it.
struct Since {
    std::size_t obs = 0;
    std::size_t known = 0;
};

using CheckFn = std::optional<std::string> (*)(const World&, const Since&);

struct Property {
    std::string_view name;
    std::string_view summary;
    CheckFn check;
};

// consent, initiator_authenticity, agreement, setup_fidelity, secrecy, freshness, bounded_state,
// lifecycle_authenticity, no_replay, key_agreement, revocation.
const std::vector<Property>& all_properties();
const Property* find_property(std::string_view name);

struct Violation {
    std::string property;
    std::string text;
    std::size_t step = 0;
};

// Every enabled property (all when `only` is empty) on the step that began at `since`.
std::vector<Violation> check_properties(const World& w, const Since& since,
                                        const std::set<std::string>& only = {});
bool has_violation(const std::vector<Violation>& v, std::string_view property);

}  // namespace cpns::explore
