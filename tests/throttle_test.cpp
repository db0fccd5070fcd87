#include <gtest/gtest.h>

#include "core/throttle.hpp"

namespace cpns {
namespace {

using Block = PskThrottle::Block;

TEST(PskThrottle, BacksOffAfterRepeatedFailuresAndRecovers) {
    PskThrottle t;
    Millis now = 1'000;
    for (int i = 1; i < kMaxFailedPskAttempts; ++i) {
        EXPECT_EQ(t.failed("10.0.0.9", "pre:pne-2", now), Block::kNone);
        EXPECT_EQ(t.blocked("10.0.0.9", "pre:pne-2", now), Block::kNone);
        now += 1'000;
    }
    EXPECT_EQ(t.failed("10.0.0.9", "pre:pne-2", now), Block::kIdentity);
    EXPECT_EQ(t.blocked("10.0.0.9", "pre:pne-2", now + 1), Block::kIdentity);
    EXPECT_EQ(t.blocked("10.0.0.9", "pre:pne-3", now + 1), Block::kNone);  // others are not
    EXPECT_EQ(t.blocked("10.0.0.9", "pre:pne-2", now + kPskBackoff - 1), Block::kIdentity);
    EXPECT_EQ(t.blocked("10.0.0.9", "pre:pne-2", now + kPskBackoff), Block::kNone);
}

// The finding: 5 replayed ClientHellos with a wrong key blocked the identity for everyone,
// so the real device (with the right key, from its own address) was locked out.
TEST(PskThrottle, FailuresFromOneSourceDoNotLockTheIdentityOutElsewhere) {
    PskThrottle t;
    for (int i = 0; i < 10 * kMaxFailedPskAttempts; ++i) t.failed("127.0.0.66", "gw-1", 100 + i);
    EXPECT_NE(t.blocked("127.0.0.66", "gw-1", 200), Block::kNone);
    EXPECT_EQ(t.blocked("127.0.0.1", "gw-1", 200), Block::kNone);
    // The key holder succeeds from its own source; the attacker stays blocked.
    t.succeeded("127.0.0.1", "gw-1");
    EXPECT_NE(t.blocked("127.0.0.66", "gw-1", 300), Block::kNone);
}

TEST(PskThrottle, OneSourceGuessingAcrossIdentitiesIsBlockedAsAWhole) {
    PskThrottle t;
    Block last = Block::kNone;
    for (int i = 0; i < kMaxFailedPskAttemptsPerSource; ++i)
        last = t.failed("10.1.1.1", "id-" + std::to_string(i), 1'000 + i);
    EXPECT_EQ(last, Block::kSource);
    EXPECT_EQ(t.blocked("10.1.1.1", "never-tried", 2'000), Block::kSource);
    EXPECT_EQ(t.blocked("10.1.1.2", "never-tried", 2'000), Block::kNone);
    EXPECT_EQ(t.blocked("10.1.1.1", "never-tried", 1'000 + kPskBackoff + 100), Block::kNone);
}

TEST(PskThrottle, FailuresSpreadOverTimeDoNotBlock) {
    PskThrottle t;
    Millis now = 0;
    for (int i = 0; i < 3 * kMaxFailedPskAttempts; ++i) {
        EXPECT_EQ(t.failed("10.0.0.1", "gw-1", now), Block::kNone) << i;
        now += kPskFailureWindow / (kMaxFailedPskAttempts - 2);
        if (i % (kMaxFailedPskAttempts - 2) == 0) now += kPskFailureWindow;
    }
    EXPECT_EQ(t.blocked("10.0.0.1", "gw-1", now), Block::kNone);
}

TEST(PskThrottle, SuccessClearsAndTheTablesAreBounded) {
    PskThrottle t;
    for (int i = 0; i < kMaxFailedPskAttempts - 1; ++i) t.failed("10.0.0.1", "gw-1", 10);
    t.succeeded("10.0.0.1", "gw-1");
    EXPECT_EQ(t.failed("10.0.0.1", "gw-1", 11), Block::kNone);
    for (std::size_t i = 0; i < kMaxThrottledIdentities + 100; ++i)
        t.failed("10.2." + std::to_string(i / 250) + "." + std::to_string(i % 250),
                 "id-" + std::to_string(i), 20);
    EXPECT_LE(t.size(), kMaxThrottledIdentities);
    EXPECT_LE(t.sources(), kMaxThrottledSources);
    // Old entries make room again once their window has passed.
    t.failed("10.9.9.9", "late", 20 + kPskFailureWindow + kPskBackoff + 1);
    EXPECT_EQ(t.size(), 1u);
    EXPECT_EQ(t.sources(), 1u);
}

}  // namespace
}  // namespace cpns
