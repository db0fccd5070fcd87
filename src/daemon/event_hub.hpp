// What the CPNS Server's event loop tells other threads (the management API, src/api/): a
// bounded ring of the latest events (establishment outcomes, lifecycle changes) that
// subscribers read as they happen, and a readiness snapshot. Both are thread-safe; the event
// loop never waits on a reader: publishing overwrites the oldest event, and a reader that fell
// further behind than the ring is told so (kLost) instead of being queued for.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace cpns::daemon {

// Events kept for readers: a reader more than this many events behind loses its stream.
inline constexpr std::size_t kEventHubCapacity = 1'024;
// Readers at once (the API's event streams); one more is refused.
inline constexpr std::size_t kMaxEventSubscribers = 4;

struct HubEvent {
    std::uint64_t seq = 0;  // 1, 2, ... in publishing order
    std::string type;       // "establishment" or "lifecycle"
    std::string data;       // one JSON object
};

class EventHub {
  public:
    explicit EventHub(std::size_t capacity = kEventHubCapacity,
                      std::size_t max_subscribers = kMaxEventSubscribers);
    EventHub(const EventHub&) = delete;
    EventHub& operator=(const EventHub&) = delete;

    void publish(std::string type, std::string data);

    // A reader's place in the stream. subscribe() starts at the next event published; nullopt
    // when kMaxEventSubscribers readers are subscribed already or the hub is closed.
    // unsubscribe() must follow every successful subscribe().
    std::optional<std::uint64_t> subscribe();
    void unsubscribe();
    std::size_t subscribers() const;

    enum class Wait {
        kEvents,   // `out` holds the events from `next` on; `next` moved past them
        kTimeout,  // nothing new within the timeout
        kLost,     // the reader fell behind the ring: events it did not read are gone
        kClosed,   // the hub is closing (server stopping)
    };
    // Waits up to `timeout` for events at or after `next`, then copies at most `max` of them.
    Wait wait(std::uint64_t& next, std::vector<HubEvent>& out, std::chrono::milliseconds timeout,
              std::size_t max = 64);
    // Wakes every reader with kClosed, now and from then on.
    void close();

  private:
    const std::size_t capacity_, max_subscribers_;
    mutable std::mutex mutex_;
    std::condition_variable changed_;
    std::deque<HubEvent> ring_;
    std::uint64_t next_seq_ = 1;
    std::size_t subscribers_ = 0;
    bool closed_ = false;
};

// The server's readiness as the event loop last saw it (written there, read anywhere).
struct Readiness {
    std::atomic<bool> listening{false};
    std::atomic<bool> store_reachable{true};
    std::atomic<std::int64_t> store_down_since_ms{0};  // wall clock; 0 while reachable
};

// The JSON objects of the two event types (docs/api.md, "Event stream").
std::string establishment_event_json(std::int64_t time_ms, std::string_view flow,
                                     const std::string& gw_id, const std::string& pn_id,
                                     bool registered, std::string_view reason, std::size_t members);
std::string lifecycle_event_json(std::int64_t time_ms, std::string_view action,
                                 const std::string& gw_id, const std::string& pn_id,
                                 const std::string& subject);

}  // namespace cpns::daemon
