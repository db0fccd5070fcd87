#include <gtest/gtest.h>

#include "core/throttle.hpp"

namespace cpns {
namespace {

TEST(PskThrottle, BacksOffAfterRepeatedFailuresAndRecovers) {
    PskThrottle t;
    Millis now = 1'000;
    for (int i = 1; i < kMaxFailedPskAttempts; ++i) {
        EXPECT_FALSE(t.failed("pre:pne-2", now));
        EXPECT_FALSE(t.blocked("pre:pne-2", now));
        now += 1'000;
    }
    EXPECT_TRUE(t.failed("pre:pne-2", now));
    EXPECT_TRUE(t.blocked("pre:pne-2", now + 1));
    EXPECT_FALSE(t.blocked("pre:pne-3", now + 1));  // others are not affected
    EXPECT_TRUE(t.blocked("pre:pne-2", now + kPskBackoff - 1));
    EXPECT_FALSE(t.blocked("pre:pne-2", now + kPskBackoff));
}

TEST(PskThrottle, FailuresSpreadOverTimeDoNotBlock) {
    PskThrottle t;
    Millis now = 0;
    for (int i = 0; i < 3 * kMaxFailedPskAttempts; ++i) {
        EXPECT_FALSE(t.failed("gw-1", now));
        now += kPskFailureWindow / (kMaxFailedPskAttempts - 1) + 1;
        if (i % (kMaxFailedPskAttempts - 1) == 0) now += kPskFailureWindow;
    }
    EXPECT_FALSE(t.blocked("gw-1", now));
}

TEST(PskThrottle, SuccessClearsAndTheTableIsBounded) {
    PskThrottle t;
    for (int i = 0; i < kMaxFailedPskAttempts - 1; ++i) t.failed("gw-1", 10);
    t.succeeded("gw-1");
    EXPECT_FALSE(t.failed("gw-1", 11));
    for (std::size_t i = 0; i < kMaxThrottledIdentities + 100; ++i)
        t.failed("id-" + std::to_string(i), 20);
    EXPECT_LE(t.size(), kMaxThrottledIdentities);
    // Old entries make room again once their window has passed.
    t.failed("late", 20 + kPskFailureWindow + kPskBackoff + 1);
    EXPECT_LE(t.size(), kMaxThrottledIdentities);
    EXPECT_EQ(t.size(), 1u);
}

}  // namespace
}  // namespace cpns
