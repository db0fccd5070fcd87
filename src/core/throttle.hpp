// Bounds failed PSK attempts. A failure counts against the pair (source address, identity) —
// a PNE's "pre:..."/"leuk:..." identity at the PN GW, a PN GW's ID at the server — and against
// the source address overall:
//  - kMaxFailedPskAttempts failures of one pair within kPskFailureWindow refuse that pair for
//    kPskBackoff: guessing one device's PSK online is pointless, and a misconfigured device
//    cannot hammer its peer. Another source with the right key is not affected, so an
//    attacker replaying a ClientHello with a wrong key cannot lock the key holder out.
//  - kMaxFailedPskAttemptsPerSource failures from one source, whatever the identities, refuse
//    that source for kPskBackoff: one source cannot guess across many identities.
// Both tables are bounded. I/O-free: the caller passes `now`.
#pragma once

#include <map>
#include <string>
#include <utility>

#include "core/role.hpp"

namespace cpns {

inline constexpr int kMaxFailedPskAttempts = 5;
inline constexpr int kMaxFailedPskAttemptsPerSource = 20;
inline constexpr Millis kPskFailureWindow = 60'000;
inline constexpr Millis kPskBackoff = 30'000;
inline constexpr std::size_t kMaxThrottledIdentities = 4096;  // (source, identity) pairs
inline constexpr std::size_t kMaxThrottledSources = 4096;

class PskThrottle {
  public:
    // What refuses an attempt, if anything.
    enum class Block { kNone, kIdentity, kSource };

    // Why a handshake as `identity` from `source` must be refused without looking at its PSK.
    Block blocked(const std::string& source, const std::string& identity, Millis now) const;
    // A handshake as `identity` from `source` failed on the PSK; the block this starts, if any.
    Block failed(const std::string& source, const std::string& identity, Millis now);
    // A handshake from `source` failed on an identity nobody has (counts for the source only).
    Block failed_unknown(const std::string& source, Millis now);
    // The pair's failures are forgiven (the source's overall count stays).
    void succeeded(const std::string& source, const std::string& identity) {
        pairs_.erase({source, identity});
    }
    std::size_t size() const { return pairs_.size(); }
    std::size_t sources() const { return sources_.size(); }

  private:
    struct Entry {
        int failures = 0;
        Millis window_start = 0;
        Millis blocked_until = 0;
        // One more failure at `now`; true if this starts a back-off.
        bool fail(int limit, Millis now);
        bool stale(Millis now) const {
            return now >= blocked_until && now - window_start > kPskFailureWindow;
        }
    };
    template <class Map>
    static Entry* entry(Map& map, const typename Map::key_type& key, std::size_t bound, Millis now);
    std::map<std::pair<std::string, std::string>, Entry> pairs_;
    std::map<std::string, Entry> sources_;
};

}  // namespace cpns
