// The event hub between the server's event loop and the API's event streams
// (src/daemon/event_hub.hpp): bounded ring, bounded subscribers, readers woken, laggards told.
#include <gtest/gtest.h>

#include <thread>

#include "daemon/event_hub.hpp"

using namespace cpns::daemon;
using namespace std::chrono_literals;

TEST(EventHub, SubscriberReadsEventsPublishedAfterIt) {
    EventHub hub(8, 2);
    hub.publish("lifecycle", "{\"n\":0}");
    auto next = hub.subscribe();
    ASSERT_TRUE(next);
    hub.publish("establishment", "{\"n\":1}");
    hub.publish("lifecycle", "{\"n\":2}");
    std::vector<HubEvent> out;
    ASSERT_EQ(hub.wait(*next, out, 0ms), EventHub::Wait::kEvents);
    ASSERT_EQ(out.size(), 2u);
    EXPECT_EQ(out[0].type, "establishment");
    EXPECT_EQ(out[1].data, "{\"n\":2}");
    out.clear();
    EXPECT_EQ(hub.wait(*next, out, 10ms), EventHub::Wait::kTimeout);
    EXPECT_TRUE(out.empty());
    hub.unsubscribe();
}

TEST(EventHub, BoundsSubscribers) {
    EventHub hub(8, 2);
    EXPECT_TRUE(hub.subscribe());
    EXPECT_TRUE(hub.subscribe());
    EXPECT_FALSE(hub.subscribe());
    EXPECT_EQ(hub.subscribers(), 2u);
    hub.unsubscribe();
    EXPECT_TRUE(hub.subscribe());
}

TEST(EventHub, ReaderBehindTheRingIsToldItLostEvents) {
    EventHub hub(4, 1);
    auto next = hub.subscribe();
    ASSERT_TRUE(next);
    for (int i = 0; i < 5; ++i) hub.publish("lifecycle", std::to_string(i));
    std::vector<HubEvent> out;
    EXPECT_EQ(hub.wait(*next, out, 0ms), EventHub::Wait::kLost);
    EXPECT_TRUE(out.empty());
}

TEST(EventHub, WaitReturnsAtMostMax) {
    EventHub hub(16, 1);
    auto next = hub.subscribe();
    for (int i = 0; i < 10; ++i) hub.publish("lifecycle", std::to_string(i));
    std::vector<HubEvent> out;
    ASSERT_EQ(hub.wait(*next, out, 0ms, 3), EventHub::Wait::kEvents);
    EXPECT_EQ(out.size(), 3u);
    out.clear();
    ASSERT_EQ(hub.wait(*next, out, 0ms), EventHub::Wait::kEvents);
    EXPECT_EQ(out.size(), 7u);
    EXPECT_EQ(out.front().data, "3");
}

TEST(EventHub, PublishWakesAWaitingReaderAndCloseEndsIt) {
    EventHub hub(8, 1);
    auto next = hub.subscribe();
    std::vector<HubEvent> out;
    EventHub::Wait result = EventHub::Wait::kTimeout;
    std::thread reader([&] { result = hub.wait(*next, out, 10s); });
    std::this_thread::sleep_for(20ms);
    hub.publish("establishment", "{}");
    reader.join();
    EXPECT_EQ(result, EventHub::Wait::kEvents);
    std::thread closed([&] { result = hub.wait(*next, out, 10s); });
    std::this_thread::sleep_for(20ms);
    hub.close();
    closed.join();
    EXPECT_EQ(result, EventHub::Wait::kClosed);
    EXPECT_FALSE(hub.subscribe());
}

TEST(EventHub, EventJsonShapes) {
    EXPECT_EQ(establishment_event_json(5, "pne_initiated", "gw-1", "pn-1", true, "NONE", 2),
              "{\"flow\":\"pne_initiated\",\"gw_id\":\"gw-1\",\"members\":2,\"outcome\":"
              "\"registered\",\"pn_id\":\"pn-1\",\"reason\":\"NONE\",\"time_ms\":5}");
    EXPECT_EQ(lifecycle_event_json(7, "revoke", "", "", "pne-\"1"),
              "{\"action\":\"revoke\",\"gw_id\":\"\",\"pn_id\":\"\",\"subject\":\"pne-\\\"1\","
              "\"time_ms\":7}");
}
