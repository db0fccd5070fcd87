// Bounds failed PSK attempts per identity (a PNE's "pre:..."/"leuk:..." identity at the PN GW,
// a PN GW's ID at the server): after kMaxFailedPskAttempts failures within kPskFailureWindow
// the identity is refused for kPskBackoff, which makes guessing a PSK online pointless and
// keeps a misconfigured device from hammering its peer. I/O-free: the caller passes `now`.
#pragma once

#include <map>
#include <string>

#include "core/role.hpp"

namespace cpns {

inline constexpr int kMaxFailedPskAttempts = 5;
inline constexpr Millis kPskFailureWindow = 60'000;
inline constexpr Millis kPskBackoff = 30'000;
inline constexpr std::size_t kMaxThrottledIdentities = 4096;

class PskThrottle {
  public:
    // True while `identity` must be refused without looking at its PSK.
    bool blocked(const std::string& identity, Millis now) const;
    // A handshake as `identity` failed on the PSK; true if this starts a back-off.
    bool failed(const std::string& identity, Millis now);
    void succeeded(const std::string& identity) { entries_.erase(identity); }
    std::size_t size() const { return entries_.size(); }

  private:
    struct Entry {
        int failures = 0;
        Millis window_start = 0;
        Millis blocked_until = 0;
    };
    void evict(Millis now);
    std::map<std::string, Entry> entries_;
};

}  // namespace cpns
