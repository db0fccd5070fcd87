// The attacker's rewriting of one field of a message, and the values it learns from messages.
#pragma once

#include <map>
#include <set>
#include <string>

#include "core/codec.hpp"

namespace cpns::explore {

// Sets `field` (one of kMutationFields) of `env` to `value`. False when `env` has no such field
// (nothing changed). Values: setup_type "1".."3"; invited "a,b"; caps a serialized
// DeviceCapabilities; inventory "+pne" (add a member) or "-pne" (remove one); success "0"/"1";
// the others the raw field bytes. ("sender", the claimed link identity, is the World's.)
bool mutate(pb::Envelope& env, const std::string& field, const std::string& value);

// Adds the values of the mutable fields `env` carries to `values` (field -> values).
void collect_values(const pb::Envelope& env, std::map<std::string, std::set<std::string>>& values);

}  // namespace cpns::explore
