#include "core/neighbours.hpp"

#include <algorithm>

namespace cpns {

std::string_view to_string(NeighbourVia via) {
    switch (via) {
        case NeighbourVia::kDatagram:
            return "datagram";
        case NeighbourVia::kClearLink:
            return "clear link";
        case NeighbourVia::kTlsLink:
            return "psk-tls link";
    }
    return "invalid";
}

NeighbourTable::NeighbourTable(Millis ttl)
    : ttl_(std::clamp(ttl, kMinNeighbourTtl, kMaxNeighbourTtl)) {}

Millis NeighbourTable::expires_at(const Neighbour& n) const {
    return n.linked ? kNoExpiry : n.seen_at + ttl_;
}

Millis NeighbourTable::next_expiry() const {
    Millis next = kNoExpiry;
    for (const auto& [id, n] : table_) next = std::min(next, expires_at(n));
    return next;
}

bool NeighbourTable::expired(const Neighbour& n, Millis now) const {
    return now >= expires_at(n);
}

bool NeighbourTable::live(const std::string& id, Millis now) const {
    auto it = table_.find(id);
    return it != table_.end() && !expired(it->second, now);
}

std::vector<std::string> NeighbourTable::expire(Millis now) {
    std::vector<std::string> gone;
    for (auto it = table_.begin(); it != table_.end();) {
        if (expired(it->second, now)) {
            gone.push_back(it->first);
            it = table_.erase(it);
        } else {
            ++it;
        }
    }
    return gone;
}

void NeighbourTable::unlink(const std::string& id, Millis now) {
    auto it = table_.find(id);
    if (it == table_.end() || !it->second.linked) return;
    it->second.linked = false;
    it->second.seen_at = now;
}

bool NeighbourTable::make_room(NeighbourVia via, const std::string& address, Millis now) {
    expire(now);
    // One address holds at most kMaxNeighboursPerAddress datagram entries: its oldest goes.
    if (via == NeighbourVia::kDatagram && !address.empty()) {
        auto oldest = table_.end();
        std::size_t from_address = 0;
        for (auto it = table_.begin(); it != table_.end(); ++it) {
            const Neighbour& n = it->second;
            if (n.via != NeighbourVia::kDatagram || n.linked || n.address != address) continue;
            ++from_address;
            if (oldest == table_.end() || n.seen_at < oldest->second.seen_at) oldest = it;
        }
        if (from_address >= kMaxNeighboursPerAddress) {
            table_.erase(oldest);
            ++evicted_;
        }
    }
    if (table_.size() < kMaxNeighbours) return true;
    // Full: the least trusted, unlinked before linked, oldest first - never one more trusted
    // than the newcomer.
    auto rank = [](const Neighbour& n) { return std::make_pair(n.linked, n.via); };
    auto victim = table_.end();
    for (auto it = table_.begin(); it != table_.end(); ++it) {
        if (it->second.via > via) continue;
        if (victim == table_.end() || rank(it->second) < rank(victim->second) ||
            (rank(it->second) == rank(victim->second) &&
             it->second.seen_at < victim->second.seen_at))
            victim = it;
    }
    if (victim == table_.end()) return false;
    table_.erase(victim);
    ++evicted_;
    return true;
}

NeighbourUpdate NeighbourTable::record(const std::string& from, const pb::Envelope& env,
                                       NeighbourVia via, const std::string& address, Millis now) {
    const bool is_request = env.has_discovery_request();
    const auto& id =
        is_request ? env.discovery_request().entity_id() : env.discovery_response().entity_id();
    if (id != from) return NeighbourUpdate::kNotTheSender;
    auto it = table_.find(id);
    if (it != table_.end() && expired(it->second, now)) {
        table_.erase(it);
        it = table_.end();
    }
    // A datagram entry heard from a new address counts against that address's share: it is
    // placed anew (keeping the endpoint it had, which a datagram never replaces).
    std::string kept_endpoint;
    if (it != table_.end() && via == NeighbourVia::kDatagram &&
        it->second.via == NeighbourVia::kDatagram && !it->second.linked &&
        it->second.address != address) {
        kept_endpoint = it->second.endpoint;
        table_.erase(it);
        it = table_.end();
    }
    if (it == table_.end()) {
        if (!make_room(via, address, now)) return NeighbourUpdate::kTableFull;
        it = table_.emplace(id, Neighbour{}).first;
        it->second.via = via;
        it->second.endpoint = std::move(kept_endpoint);
    }
    Neighbour& n = it->second;
    const std::string& endpoint =
        is_request ? env.discovery_request().endpoint() : env.discovery_response().endpoint();
    if (via < n.via) {
        // Learned over a better channel: a less trusted message about it changes nothing.
        return !endpoint.empty() && endpoint != n.endpoint ? NeighbourUpdate::kEndpointConflict
                                                           : NeighbourUpdate::kKept;
    }
    const auto& pns =
        is_request ? env.discovery_request().pn_ids() : env.discovery_response().pn_ids();
    n.mode = is_request ? env.discovery_request().mode() : env.discovery_response().mode();
    n.pn_ids.assign(pns.begin(), pns.end());
    n.address = address;
    n.seen_at = now;
    if (via != NeighbourVia::kDatagram) n.linked = true;
    auto result = NeighbourUpdate::kRecorded;
    if (!endpoint.empty() && endpoint != n.endpoint) {
        if (n.endpoint.empty() || via > n.via)
            n.endpoint = endpoint;
        else
            result = NeighbourUpdate::kEndpointConflict;
    }
    n.via = via;
    return result;
}

namespace {
std::size_t frame_size(const pb::Envelope& env) {
    return kFrameHeaderSize + env.ByteSizeLong();
}
}  // namespace

bool fit_discovery_answer(pb::Envelope& answer, std::size_t request_size) {
    auto* pns = answer.has_discovery_response()
                    ? answer.mutable_discovery_response()->mutable_pn_ids()
                    : answer.mutable_discovery_request()->mutable_pn_ids();
    while (frame_size(answer) > request_size && !pns->empty()) pns->RemoveLast();
    return frame_size(answer) <= request_size;
}

void pad_discovery_request(pb::Envelope& request, std::size_t size) {
    auto* r = request.mutable_discovery_request();
    r->clear_padding();
    const std::size_t bare = frame_size(request);
    if (bare >= size) return;
    // The field's tag and length prefix take a few octets of their own: grow until it fits.
    std::size_t n = size - bare;
    r->set_padding(std::string(n, '\0'));
    while (frame_size(request) > size && n > 0) r->set_padding(std::string(--n, '\0'));
    while (frame_size(request) < size) r->set_padding(std::string(++n, '\0'));
}

}  // namespace cpns
