// The neighbour table of CPNS Entity Discovery (step 0), I/O-free, and the size rule for
// discovery answers sent by datagram.
//
// Anyone on the PAN can send a discovery datagram naming any ID, so the table is bounded in
// every direction: entries age out (after the table's TTL, kNeighbourTtl unless configured;
// refreshed by every new request or answer from the entity) unless a live PAN link holds them; one
// network address holds at most kMaxNeighboursPerAddress entries learned by datagram; the table
// holds at most kMaxNeighbours and, when full, evicts the oldest entry that is no more trusted than
// the newcomer. Trust grows with how an entry was learned: a datagram, a PAN link in clear, a
// PSK-TLS link. A PSK- TLS link binds the entity's ID (its PSK identity names it); the others do
// not.
#pragma once

#include <cstddef>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "core/codec.hpp"

namespace cpns {

using Millis = std::int64_t;

// How long an entity heard only through discovery (or whose PAN link is gone) stays a neighbour
// without being heard again: the default of the daemons' `neighbour_ttl_ms`.
inline constexpr Millis kNeighbourTtl = 5 * 60'000;
// The bounds of a configured TTL: at least a second (shorter would drop entities between two of
// their own announcements), at most a day (longer keeps entities that left for good).
inline constexpr Millis kMinNeighbourTtl = 1'000;
inline constexpr Millis kMaxNeighbourTtl = 24 * 3'600'000;
// No entry ages out (every entry is held by a link, or the table is empty).
inline constexpr Millis kNoExpiry = std::numeric_limits<Millis>::max();
inline constexpr std::size_t kMaxNeighbours = 256;           // entities in one table
inline constexpr std::size_t kMaxNeighboursPerAddress = 16;  // learned by datagram from one address
// A discovery request sent by datagram is padded to at least this size (octets of the frame),
// so that the answer may be as big: a datagram answer is never bigger than its request.
inline constexpr std::size_t kDiscoveryRequestPadTo = 1024;

// How an entity became known, least trusted first.
enum class NeighbourVia { kDatagram, kClearLink, kTlsLink };
std::string_view to_string(NeighbourVia via);

// An entity seen through CPNS Entity Discovery.
struct Neighbour {
    pb::EntityMode mode = pb::MODE_UNSPECIFIED;
    std::vector<std::string> pn_ids;
    std::string endpoint;  // where it accepts CPNS links, as first learned (see record())
    std::string address;   // network address it was last heard from ("" unknown)
    NeighbourVia via = NeighbourVia::kDatagram;
    bool linked = false;  // a live PAN link holds it: it does not age
    Millis seen_at = 0;
};

enum class NeighbourUpdate {
    kRecorded,
    kNotTheSender,      // the message describes another entity than its sender
    kEndpointConflict,  // the endpoint it names differs from the one kept (which stays)
    kKept,              // learned over a better channel before: nothing changed
    kTableFull,         // not recorded: every entry is more trusted than this one
};

class NeighbourTable {
  public:
    // `ttl` is clamped to kMinNeighbourTtl..kMaxNeighbourTtl.
    explicit NeighbourTable(Millis ttl = kNeighbourTtl);
    Millis ttl() const { return ttl_; }
    // Records (or refreshes) the entity an Entity Discovery Request or Response describes, if
    // it is its sender. `address` is the network address it came from ("" unknown). An
    // endpoint is only ever filled in where none is known, or where the new message is better
    // trusted than the one that brought the known endpoint (a PSK-TLS link over a datagram):
    // a datagram never replaces an endpoint, and a disagreeing one is reported.
    NeighbourUpdate record(const std::string& from, const pb::Envelope& env, NeighbourVia via,
                           const std::string& address, Millis now);
    // The link that held `id` is gone: from now on it ages like a datagram entry.
    void unlink(const std::string& id, Millis now);
    // Drops every entry not held by a link and not heard for ttl(); returns their IDs.
    std::vector<std::string> expire(Millis now);
    bool live(const std::string& id, Millis now) const;
    // When `n` ages out unless heard again (kNoExpiry: a link holds it).
    Millis expires_at(const Neighbour& n) const;
    // The earliest expires_at() of all entries: when expire() next has something to drop.
    Millis next_expiry() const;
    // The entries (some may have expired since the last expire()).
    const std::map<std::string, Neighbour>& entries() const { return table_; }
    std::size_t size() const { return table_.size(); }
    // Entries evicted to make room (they were the oldest of the least trusted).
    std::uint64_t evicted() const { return evicted_; }

  private:
    bool expired(const Neighbour& n, Millis now) const;
    // Frees one slot for a newcomer learned `via` from `address`; false if none may go.
    bool make_room(NeighbourVia via, const std::string& address, Millis now);

    Millis ttl_;
    std::map<std::string, Neighbour> table_;
    std::uint64_t evicted_ = 0;
};

// The size rule for datagram answers (docs/protocol.md, "Entity Discovery"): trims the PN IDs
// of `answer` until its frame is at most `request_size` octets. False when even the answer
// without PN IDs is bigger: then it must not be sent.
bool fit_discovery_answer(pb::Envelope& answer, std::size_t request_size);
// Pads a discovery request's frame to at least `size` octets (it may already be bigger).
void pad_discovery_request(pb::Envelope& request, std::size_t size = kDiscoveryRequestPadTo);

}  // namespace cpns
