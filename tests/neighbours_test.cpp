// The Entity Discovery neighbour table (core/neighbours.hpp) and the size rule for discovery
// answers sent by datagram.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/neighbours.hpp"
#include "core/pne.hpp"

namespace cpns {
namespace {

pb::Envelope request(const std::string& id, const std::string& endpoint = "",
                     pb::EntityMode mode = pb::MODE_PNE) {
    pb::Envelope env;
    env.set_version(kProtocolVersion);
    env.set_sender_id(id);
    auto* r = env.mutable_discovery_request();
    r->set_entity_id(id);
    r->set_mode(mode);
    r->set_endpoint(endpoint);
    return env;
}

pb::Envelope answer(const std::string& id, const std::string& endpoint) {
    pb::Envelope env;
    env.set_version(kProtocolVersion);
    env.set_sender_id(id);
    auto* r = env.mutable_discovery_response();
    r->set_entity_id(id);
    r->set_mode(pb::MODE_PN_GW);
    r->set_endpoint(endpoint);
    return env;
}

TEST(NeighbourTable, OneAddressHoldsAtMostItsShareAndLosesItsOldestFirst) {
    NeighbourTable t;
    Millis now = 0;
    for (std::size_t i = 0; i < 3 * kMaxNeighboursPerAddress; ++i) {
        const std::string id = "ghost-" + std::to_string(i);
        EXPECT_EQ(t.record(id, request(id), NeighbourVia::kDatagram, "10.0.0.66", ++now),
                  NeighbourUpdate::kRecorded);
    }
    EXPECT_EQ(t.size(), kMaxNeighboursPerAddress);
    EXPECT_EQ(t.entries().count("ghost-0"), 0u);
    EXPECT_EQ(t.entries().count("ghost-" + std::to_string(3 * kMaxNeighboursPerAddress - 1)), 1u);
    // Another address is not affected.
    EXPECT_EQ(t.record("pne-1", request("pne-1"), NeighbourVia::kDatagram, "10.0.0.1", ++now),
              NeighbourUpdate::kRecorded);
    EXPECT_EQ(t.size(), kMaxNeighboursPerAddress + 1);
}

TEST(NeighbourTable, FullTableEvictsTheOldestLeastTrustedEntry) {
    NeighbourTable t;
    Millis now = 0;
    t.record("tls-pne", request("tls-pne"), NeighbourVia::kTlsLink, "10.0.0.1", ++now);
    t.record("clear-pne", request("clear-pne"), NeighbourVia::kClearLink, "10.0.0.2", ++now);
    for (std::size_t i = 0; t.size() < kMaxNeighbours; ++i) {
        const std::string id = "ghost-" + std::to_string(i);
        t.record(id, request(id), NeighbourVia::kDatagram, "10.1." + std::to_string(i), ++now);
    }
    // A datagram newcomer replaces the oldest datagram entry, never a linked one.
    EXPECT_EQ(t.record("late", request("late"), NeighbourVia::kDatagram, "10.2.0.1", ++now),
              NeighbourUpdate::kRecorded);
    EXPECT_EQ(t.size(), kMaxNeighbours);
    EXPECT_EQ(t.entries().count("ghost-0"), 0u);
    EXPECT_EQ(t.entries().count("tls-pne"), 1u);
    EXPECT_EQ(t.entries().count("clear-pne"), 1u);
    EXPECT_EQ(t.evicted(), 1u);
}

TEST(NeighbourTable, TableFullOfBetterTrustedEntriesRefusesADatagram) {
    NeighbourTable t;
    Millis now = 0;
    for (std::size_t i = 0; i < kMaxNeighbours; ++i) {
        const std::string id = "pne-" + std::to_string(i);
        t.record(id, request(id), NeighbourVia::kClearLink, "10.0.0.1", ++now);
    }
    EXPECT_EQ(t.record("ghost", request("ghost"), NeighbourVia::kDatagram, "10.0.0.9", ++now),
              NeighbourUpdate::kTableFull);
    // A TLS newcomer may replace the oldest clear one.
    EXPECT_EQ(t.record("tls", request("tls"), NeighbourVia::kTlsLink, "10.0.0.3", ++now),
              NeighbourUpdate::kRecorded);
    EXPECT_EQ(t.entries().count("pne-0"), 0u);
}

TEST(NeighbourTable, EntriesAgeUnlessALinkHoldsThem) {
    NeighbourTable t;
    t.record("udp", request("udp"), NeighbourVia::kDatagram, "10.0.0.1", 0);
    t.record("link", request("link"), NeighbourVia::kClearLink, "10.0.0.2", 0);
    EXPECT_TRUE(t.live("udp", kNeighbourTtl - 1));
    EXPECT_FALSE(t.live("udp", kNeighbourTtl));
    EXPECT_TRUE(t.live("link", 10 * kNeighbourTtl));
    t.unlink("link", 10 * kNeighbourTtl);
    EXPECT_TRUE(t.live("link", 11 * kNeighbourTtl - 1));
    t.expire(11 * kNeighbourTtl);
    EXPECT_EQ(t.size(), 0u);
}

// A table with a configured TTL ages its unlinked entries after that TTL, says when the next
// one goes (the daemons arm their timer for it), and expire() names what it dropped.
TEST(NeighbourTable, ConfiguredTtlSetsWhenEntriesAgeOut) {
    constexpr Millis kTtl = 2'500;
    NeighbourTable t(kTtl);
    EXPECT_EQ(t.ttl(), kTtl);
    EXPECT_EQ(t.next_expiry(), kNoExpiry);
    t.record("link", request("link"), NeighbourVia::kClearLink, "10.0.0.2", 0);
    EXPECT_EQ(t.next_expiry(), kNoExpiry);  // a link holds it
    t.record("udp", request("udp"), NeighbourVia::kDatagram, "10.0.0.1", 100);
    EXPECT_EQ(t.next_expiry(), 100 + kTtl);
    EXPECT_EQ(t.expires_at(t.entries().at("udp")), 100 + kTtl);
    EXPECT_TRUE(t.live("udp", 100 + kTtl - 1));
    EXPECT_FALSE(t.live("udp", 100 + kTtl));
    t.unlink("link", 1'000);
    EXPECT_EQ(t.next_expiry(), 100 + kTtl);
    EXPECT_TRUE(t.expire(100 + kTtl - 1).empty());
    EXPECT_EQ(t.expire(100 + kTtl), std::vector<std::string>{"udp"});
    EXPECT_EQ(t.next_expiry(), 1'000 + kTtl);
    EXPECT_EQ(t.expire(1'000 + kTtl), std::vector<std::string>{"link"});
    EXPECT_EQ(t.size(), 0u);
    EXPECT_EQ(NeighbourTable(0).ttl(), kMinNeighbourTtl);
    EXPECT_EQ(NeighbourTable(kMaxNeighbourTtl + 1).ttl(), kMaxNeighbourTtl);
}

// The PNE's table takes its TTL from the PNE's configuration too.
TEST(NeighbourTable, PneUsesItsConfiguredTtl) {
    DeterministicRandom rnd{7};
    PneConfig c;
    c.pne_id = "pne-a";
    c.eukey = rnd.key();
    c.neighbour_ttl = 4'000;
    Pne pne(c, rnd);
    EXPECT_EQ(pne.neighbour_table().ttl(), 4'000);
    pne.on_message("gw-1", answer("gw-1", "127.0.0.1:7100"), Protection::kClear, 10,
                   Origin{true, "127.0.0.1"});
    EXPECT_EQ(pne.neighbour_expiry(), 10 + 4'000);
    pne.on_timer(10 + 4'000);
    EXPECT_TRUE(pne.neighbours().empty());
}

TEST(NeighbourTable, AnswerFillsAnUnknownEndpointButNeverReplacesOne) {
    NeighbourTable t;
    EXPECT_EQ(
        t.record("gw-1", answer("gw-1", "10.0.0.1:7100"), NeighbourVia::kDatagram, "10.0.0.1", 1),
        NeighbourUpdate::kRecorded);
    EXPECT_EQ(
        t.record("gw-1", answer("gw-1", "10.0.0.66:7100"), NeighbourVia::kDatagram, "10.0.0.66", 2),
        NeighbourUpdate::kEndpointConflict);
    EXPECT_EQ(t.entries().at("gw-1").endpoint, "10.0.0.1:7100");
}

TEST(NeighbourTable, EndpointReachedOverPskTlsIsKeptAgainstDatagrams) {
    NeighbourTable t;
    // A spoofed answer came first; the PSK-TLS link then names the real endpoint.
    t.record("gw-1", answer("gw-1", "10.0.0.66:7100"), NeighbourVia::kDatagram, "10.0.0.66", 1);
    EXPECT_EQ(t.record("gw-1", answer("gw-1", "10.0.0.1:7100"), NeighbourVia::kTlsLink, "", 2),
              NeighbourUpdate::kRecorded);
    EXPECT_EQ(t.entries().at("gw-1").endpoint, "10.0.0.1:7100");
    EXPECT_EQ(
        t.record("gw-1", answer("gw-1", "10.0.0.66:7100"), NeighbourVia::kDatagram, "10.0.0.66", 3),
        NeighbourUpdate::kEndpointConflict);
    EXPECT_EQ(t.entries().at("gw-1").endpoint, "10.0.0.1:7100");
    EXPECT_EQ(t.entries().at("gw-1").via, NeighbourVia::kTlsLink);
}

TEST(NeighbourTable, MessageAboutAnotherEntityIsNotRecorded) {
    NeighbourTable t;
    EXPECT_EQ(t.record("pne-1", request("pne-2"), NeighbourVia::kDatagram, "", 0),
              NeighbourUpdate::kNotTheSender);
    EXPECT_EQ(t.size(), 0u);
}

// The PNE role keeps the PN GW endpoint it reached over PSK-TLS against a spoofed answer.
TEST(NeighbourTable, PneKeepsTheGatewayEndpointOfItsTlsLink) {
    DeterministicRandom rnd{7};
    PneConfig c;
    c.pne_id = "pne-1";
    c.eukey = rnd.key();
    Pne pne(c, rnd);
    pne.on_message("gw-1", answer("gw-1", "10.0.0.1:7100"), Protection::kTls, 1);
    pne.on_message("gw-1", answer("gw-1", "10.0.0.66:7100"), Protection::kClear, 2,
                   Origin{true, "10.0.0.66"});
    EXPECT_EQ(pne.neighbours().at("gw-1").endpoint, "10.0.0.1:7100");
}

// --- The size rule: an answer by datagram is never bigger than its request -----------------

TEST(DiscoverySize, AnswerIsTrimmedToTheRequestSizeOrNotSent) {
    pb::Envelope gw_answer = answer("gw-1", "192.168.17.1:7100");
    for (int i = 0; i < 256; ++i)
        gw_answer.mutable_discovery_response()->add_pn_ids(
            "pn-abcdef" + std::to_string(100000 + i));  // as long as a real PN ID
    const std::size_t full = encode_frame(gw_answer).size();
    ASSERT_GT(full, 4000u);  // the ~200x reflection of the finding

    pb::Envelope small = request("pne-1");
    const std::size_t small_size = encode_frame(small).size();
    ASSERT_LT(small_size, 40u);
    pb::Envelope a = gw_answer;
    EXPECT_FALSE(fit_discovery_answer(a, small_size));  // even the bare answer is bigger

    pad_discovery_request(small);
    const std::size_t padded = encode_frame(small).size();
    EXPECT_GE(padded, kDiscoveryRequestPadTo);
    EXPECT_LE(padded, kDiscoveryRequestPadTo + 2);
    a = gw_answer;
    ASSERT_TRUE(fit_discovery_answer(a, padded));
    EXPECT_LE(encode_frame(a).size(), padded);
    EXPECT_GT(a.discovery_response().pn_ids_size(), 0);  // as many PN IDs as fit
    EXPECT_LT(a.discovery_response().pn_ids_size(), 256);
    // The padded request decodes as a valid request.
    const Bytes frame = encode_frame(small);
    auto decoded = decode_frame(frame);
    ASSERT_TRUE(std::holds_alternative<pb::Envelope>(decoded));
}

}  // namespace
}  // namespace cpns
