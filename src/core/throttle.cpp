#include "core/throttle.hpp"

namespace cpns {

bool PskThrottle::blocked(const std::string& identity, Millis now) const {
    auto it = entries_.find(identity);
    return it != entries_.end() && now < it->second.blocked_until;
}

bool PskThrottle::failed(const std::string& identity, Millis now) {
    if (entries_.size() >= kMaxThrottledIdentities && !entries_.count(identity)) evict(now);
    if (entries_.size() >= kMaxThrottledIdentities && !entries_.count(identity)) return false;
    Entry& e = entries_[identity];
    if (now - e.window_start > kPskFailureWindow || now < e.blocked_until) {
        if (now >= e.blocked_until) {
            e.failures = 0;
            e.window_start = now;
        }
    }
    if (++e.failures >= kMaxFailedPskAttempts && now >= e.blocked_until) {
        e.blocked_until = now + kPskBackoff;
        e.failures = 0;
        e.window_start = e.blocked_until;
        return true;
    }
    return false;
}

void PskThrottle::evict(Millis now) {
    for (auto it = entries_.begin(); it != entries_.end();) {
        const bool stale =
            now >= it->second.blocked_until && now - it->second.window_start > kPskFailureWindow;
        it = stale ? entries_.erase(it) : std::next(it);
    }
}

}  // namespace cpns
