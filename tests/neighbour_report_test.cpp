// The neighbour listing of the PN GW's and PNE's control endpoints (daemon/neighbour_report.hpp):
// what an operator reads from `cpns-gw neighbours` / `cpns-pne neighbours`.
#include <gtest/gtest.h>

#include <google/protobuf/struct.pb.h>

#include <map>
#include <string>

#include "daemon/common.hpp"
#include "daemon/neighbour_report.hpp"

namespace cpns {
namespace {

pb::Envelope announce(const std::string& id, pb::EntityMode mode, const std::string& endpoint) {
    pb::Envelope env;
    env.set_version(kProtocolVersion);
    env.set_sender_id(id);
    auto* r = env.mutable_discovery_request();
    r->set_entity_id(id);
    r->set_mode(mode);
    r->set_endpoint(endpoint);
    r->add_pn_ids("pn-0123456789ab");
    return env;
}

// Live entries only, each with how it was learnt, whether a link holds it and when it ages out;
// text from the PAN (an endpoint) comes back as it was, inside valid JSON.
TEST(NeighbourReport, ListsLiveEntriesWithLinkAndExpiry) {
    constexpr Millis kTtl = 2'000;
    NeighbourTable t(kTtl);
    t.record("pne-old", announce("pne-old", pb::MODE_PNE, ""), NeighbourVia::kDatagram, "10.0.0.9",
             0);
    t.record("pne-a", announce("pne-a", pb::MODE_PNE, ""), NeighbourVia::kClearLink, "10.0.0.1",
             500);
    t.record("gw-2", announce("gw-2", pb::MODE_PN_GW, "10.0.0.2:7100\"},{\"x"),
             NeighbourVia::kDatagram, "10.0.0.2", 1'000);
    const std::string json = daemon::neighbours_json("gw-1", t, 2'200);  // pne-old aged out

    google::protobuf::Struct got;
    ASSERT_TRUE(daemon::parse_json(json, got)) << json;
    const auto& f = got.fields();
    EXPECT_EQ(f.at("entity_id").string_value(), "gw-1");
    EXPECT_EQ(f.at("ttl_ms").number_value(), kTtl);
    std::map<std::string, google::protobuf::Struct> by_id;
    for (const auto& v : f.at("neighbours").list_value().values())
        by_id[v.struct_value().fields().at("id").string_value()] = v.struct_value();
    ASSERT_EQ(by_id.size(), 2u) << json;
    ASSERT_EQ(by_id.count("pne-old"), 0u) << json;

    const auto& a = by_id.at("pne-a").fields();
    EXPECT_EQ(a.at("mode").string_value(), "MODE_PNE");
    EXPECT_EQ(a.at("via").string_value(), "clear link");
    EXPECT_TRUE(a.at("linked").bool_value());
    EXPECT_EQ(a.at("address").string_value(), "10.0.0.1");
    EXPECT_EQ(a.at("heard_ms_ago").number_value(), 1'700);
    EXPECT_EQ(a.count("expires_in_ms"), 0u);  // a link holds it
    ASSERT_EQ(a.at("pn_ids").list_value().values_size(), 1);
    EXPECT_EQ(a.at("pn_ids").list_value().values(0).string_value(), "pn-0123456789ab");

    const auto& g = by_id.at("gw-2").fields();
    EXPECT_EQ(g.at("mode").string_value(), "MODE_PN_GW");
    EXPECT_EQ(g.at("via").string_value(), "datagram");
    EXPECT_FALSE(g.at("linked").bool_value());
    EXPECT_EQ(g.at("expires_in_ms").number_value(), 1'000 + kTtl - 2'200);
    EXPECT_EQ(g.at("endpoint").string_value(), "10.0.0.2:7100\"},{\"x");
}

}  // namespace
}  // namespace cpns
