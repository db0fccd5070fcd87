// The neighbour listing of the PN GW's and the PNE's control endpoints ("neighbours"): the
// live entries of a role's Entity Discovery table as one line of JSON.
#pragma once

#include <string>

#include "core/neighbours.hpp"

namespace cpns::daemon {

// {"entity_id": ID, "ttl_ms": N, "neighbours": [{"id", "mode", "via", "linked", "endpoint",
// "address", "pn_ids", "heard_ms_ago", "expires_in_ms" (only when no link holds it)}, ...]}.
// Entries past their TTL at `now` are left out even if the table still holds them. Every text
// goes through the protobuf JSON printer (endpoints and addresses came from the PAN).
std::string neighbours_json(const std::string& entity_id, const NeighbourTable& table, Millis now);

}  // namespace cpns::daemon
