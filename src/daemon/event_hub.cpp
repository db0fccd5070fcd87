#include "daemon/event_hub.hpp"

#include <nlohmann/json.hpp>

namespace cpns::daemon {

EventHub::EventHub(std::size_t capacity, std::size_t max_subscribers)
    : capacity_(capacity == 0 ? 1 : capacity), max_subscribers_(max_subscribers) {}

void EventHub::publish(std::string type, std::string data) {
    {
        const std::lock_guard lock(mutex_);
        if (ring_.size() >= capacity_) ring_.pop_front();
        ring_.push_back(HubEvent{next_seq_++, std::move(type), std::move(data)});
    }
    changed_.notify_all();
}

std::optional<std::uint64_t> EventHub::subscribe() {
    const std::lock_guard lock(mutex_);
    if (closed_ || subscribers_ >= max_subscribers_) return std::nullopt;
    ++subscribers_;
    return next_seq_;
}

void EventHub::unsubscribe() {
    const std::lock_guard lock(mutex_);
    if (subscribers_ > 0) --subscribers_;
}

std::size_t EventHub::subscribers() const {
    const std::lock_guard lock(mutex_);
    return subscribers_;
}

EventHub::Wait EventHub::wait(std::uint64_t& next, std::vector<HubEvent>& out,
                              std::chrono::milliseconds timeout, std::size_t max) {
    std::unique_lock lock(mutex_);
    const bool woke = changed_.wait_for(lock, timeout, [&] { return closed_ || next < next_seq_; });
    if (closed_) return Wait::kClosed;
    if (!woke) return Wait::kTimeout;
    // The ring holds seqs [front, next_seq_); a reader before front missed events.
    if (ring_.empty() || next < ring_.front().seq) return Wait::kLost;
    for (auto it = ring_.begin() + static_cast<std::ptrdiff_t>(next - ring_.front().seq);
         it != ring_.end() && out.size() < max; ++it) {
        out.push_back(*it);
        next = it->seq + 1;
    }
    return Wait::kEvents;
}

void EventHub::close() {
    {
        const std::lock_guard lock(mutex_);
        closed_ = true;
    }
    changed_.notify_all();
}

std::string establishment_event_json(std::int64_t time_ms, std::string_view flow,
                                     const std::string& gw_id, const std::string& pn_id,
                                     bool registered, std::string_view reason,
                                     std::size_t members) {
    return nlohmann::json{{"time_ms", time_ms},
                          {"flow", flow},
                          {"gw_id", gw_id},
                          {"pn_id", pn_id},
                          {"outcome", registered ? "registered" : "failed"},
                          {"reason", reason},
                          {"members", members}}
        .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string lifecycle_event_json(std::int64_t time_ms, std::string_view action,
                                 const std::string& gw_id, const std::string& pn_id,
                                 const std::string& subject) {
    return nlohmann::json{{"time_ms", time_ms},
                          {"action", action},
                          {"gw_id", gw_id},
                          {"pn_id", pn_id},
                          {"subject", subject}}
        .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace cpns::daemon
