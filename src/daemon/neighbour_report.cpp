#include "daemon/neighbour_report.hpp"

#include <google/protobuf/struct.pb.h>

#include "daemon/common.hpp"

namespace cpns::daemon {

std::string neighbours_json(const std::string& entity_id, const NeighbourTable& table, Millis now) {
    google::protobuf::Struct answer;
    auto& fields = *answer.mutable_fields();
    fields["entity_id"].set_string_value(entity_id);
    fields["ttl_ms"].set_number_value(static_cast<double>(table.ttl()));
    auto* list = fields["neighbours"].mutable_list_value();
    for (const auto& [id, n] : table.entries()) {
        if (!table.live(id, now)) continue;
        auto& e = *list->add_values()->mutable_struct_value()->mutable_fields();
        e["id"].set_string_value(id);
        e["mode"].set_string_value(pb::EntityMode_Name(n.mode));
        e["via"].set_string_value(std::string(to_string(n.via)));
        e["linked"].set_bool_value(n.linked);
        e["endpoint"].set_string_value(n.endpoint);
        e["address"].set_string_value(n.address);
        auto* pns = e["pn_ids"].mutable_list_value();
        for (const auto& pn : n.pn_ids) pns->add_values()->set_string_value(pn);
        e["heard_ms_ago"].set_number_value(static_cast<double>(now - n.seen_at));
        if (!n.linked)
            e["expires_in_ms"].set_number_value(static_cast<double>(table.expires_at(n) - now));
    }
    return message_json(answer);
}

}  // namespace cpns::daemon
