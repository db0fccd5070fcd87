#include "core/throttle.hpp"

namespace cpns {

bool PskThrottle::Entry::fail(int limit, Millis now) {
    if (now < blocked_until) return false;  // already refused; the block is not extended
    if (now - window_start > kPskFailureWindow) {
        failures = 0;
        window_start = now;
    }
    if (++failures < limit) return false;
    blocked_until = now + kPskBackoff;
    failures = 0;
    window_start = blocked_until;
    return true;
}

template <class Map>
PskThrottle::Entry* PskThrottle::entry(Map& map, const typename Map::key_type& key,
                                       std::size_t bound, Millis now) {
    if (auto it = map.find(key); it != map.end()) return &it->second;
    if (map.size() >= bound) {
        for (auto it = map.begin(); it != map.end();)
            it = it->second.stale(now) ? map.erase(it) : std::next(it);
        if (map.size() >= bound) return nullptr;  // full of live entries: not tracked
    }
    Entry& e = map[key];
    e.window_start = now;
    return &e;
}

PskThrottle::Block PskThrottle::blocked(const std::string& source, const std::string& identity,
                                        Millis now) const {
    if (auto it = sources_.find(source); it != sources_.end() && now < it->second.blocked_until)
        return Block::kSource;
    if (auto it = pairs_.find({source, identity});
        it != pairs_.end() && now < it->second.blocked_until)
        return Block::kIdentity;
    return Block::kNone;
}

PskThrottle::Block PskThrottle::failed(const std::string& source, const std::string& identity,
                                       Millis now) {
    Block started = Block::kNone;
    if (Entry* e = entry(pairs_, {source, identity}, kMaxThrottledIdentities, now);
        e && e->fail(kMaxFailedPskAttempts, now))
        started = Block::kIdentity;
    if (Entry* e = entry(sources_, source, kMaxThrottledSources, now);
        e && e->fail(kMaxFailedPskAttemptsPerSource, now))
        started = Block::kSource;
    return started;
}

PskThrottle::Block PskThrottle::failed_unknown(const std::string& source, Millis now) {
    Entry* e = entry(sources_, source, kMaxThrottledSources, now);
    return e && e->fail(kMaxFailedPskAttemptsPerSource, now) ? Block::kSource : Block::kNone;
}

}  // namespace cpns
