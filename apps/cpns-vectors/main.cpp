// cpns-vectors: computes the key-schedule test vectors from fixed inputs and prints them, either
// as the Markdown section pasted into docs/key-schedule.md (default) or as the key=hex file
// committed as docs/test-vectors.txt (--format kv). tests/vectors_cli_test.sh recomputes every
// value with the openssl command-line tool and compares.
//
// Three sets, each complete in itself (every input it uses is listed under its own key):
//   (no prefix)  the initiating PNE of a PNE-initiated establishment, with an invitation list
//                and a LocalEUKey request, plus the PN GW server PSK and a device-state key;
//   invitee_     an invitee of the same run (no UI, so no LocalEUKey);
//   gwinit_      the invitee of a PN GW-initiated run, with a LocalEUKey.
#include "common/version.hpp"
#include "core/codec.hpp"
#include "core/crypto.hpp"
#include "core/lifecycle.hpp"
#include "cpns/messages.pb.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <fstream>
#include <initializer_list>
#include <iostream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace {

using cpns::Bytes;
using cpns::ByteView;
namespace pb = cpns::pb;

struct Input {
    std::string key;      // name in the kv file
    std::string label;    // name in the Markdown table
    std::string meaning;  // human-readable value
    std::string hex;
};

struct Output {
    std::string key;
    std::string label;
    std::string definition;
    std::string hex;
};

struct VectorSet {
    std::string title;        // Markdown heading
    std::string description;  // Markdown paragraph
    std::vector<Input> inputs;
    std::vector<Output> outputs;
    std::string join_text;       // the fixed PneJoin, field by field
    std::string inventory_text;  // the fixed PnInventory, field by field
};

cpns::SecretKey counting_key(std::uint8_t first) {
    Bytes raw(cpns::kKeySize);
    for (std::size_t i = 0; i < raw.size(); ++i) raw[i] = static_cast<std::uint8_t>(first + i);
    cpns::SecretKey key(raw);
    cpns::wipe(raw.data(), raw.size());
    return key;
}

Bytes counting_bytes(std::uint8_t first, std::size_t n) {
    Bytes out(n);
    for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<std::uint8_t>(first + i);
    return out;
}

std::string code(const std::string& text) {
    return "`" + text + "`";
}

std::string one_octet(std::uint8_t v) {
    return cpns::to_hex(ByteView{&v, 1});
}

std::string range(std::uint8_t first, std::size_t n) {
    char buf[48];
    std::snprintf(buf, sizeof buf, "octets 0x%02x..0x%02x", first,
                  static_cast<unsigned>(first + n - 1));
    return buf;
}

// --- The fixed messages ----------------------------------------------------------------------

constexpr std::uint64_t kRun1Ms = 1767225600000;  // 2026-01-01T00:00:00Z
constexpr std::uint64_t kRun2Ms = 1767229200000;  // 2026-01-01T01:00:00Z

pb::DeviceCapabilities caps(const std::string& type, const std::string& manufacturer,
                            const std::string& model, bool enough_ui,
                            std::initializer_list<const char*> pan,
                            std::initializer_list<const char*> services) {
    pb::DeviceCapabilities c;
    c.set_device_type(type);
    c.set_manufacturer(manufacturer);
    c.set_model(model);
    c.set_enough_ui(enough_ui);
    for (const char* p : pan) c.add_pan_technologies(p);
    for (const char* s : services) c.add_services(s);
    return c;
}

pb::ContentInfo content(const std::string& id, const std::string& type, const std::string& title,
                        std::uint64_t size) {
    pb::ContentInfo c;
    c.set_content_id(id);
    c.set_media_type(type);
    c.set_title(title);
    c.set_size_bytes(size);
    return c;
}

// The join as Pne::make_join builds it: the PNE's ID, capabilities and contents, its rand_PNE,
// and the LocalEUKey request (which is enough_ui).
pb::PneJoin make_join(const std::string& pne_id, const pb::DeviceCapabilities& c,
                      const std::vector<pb::ContentInfo>& contents, const Bytes& rand_pne) {
    pb::PneJoin j;
    j.set_pne_id(pne_id);
    *j.mutable_capabilities() = c;
    for (const auto& item : contents) *j.add_contents() = item;
    j.set_rand_pne(std::string(rand_pne.begin(), rand_pne.end()));
    j.set_local_eukey_requested(c.enough_ui());
    return j;
}

// The inventory as the server registers it: one member per authenticated PNE (in PNE ID order),
// with what its join said, all stamped with the registration time.
pb::PnInventory make_inventory(const std::string& pn_id, const std::string& gw_id,
                               const pb::DeviceCapabilities& gw_caps,
                               const std::vector<const pb::PneJoin*>& joins, std::uint64_t at_ms) {
    pb::PnInventory inv;
    inv.set_pn_id(pn_id);
    inv.set_gw_id(gw_id);
    *inv.mutable_gw_capabilities() = gw_caps;
    for (const pb::PneJoin* j : joins) {
        auto* m = inv.add_members();
        m->set_pne_id(j->pne_id());
        *m->mutable_capabilities() = j->capabilities();
        *m->mutable_contents() = j->contents();
        m->set_joined_at_ms(at_ms);
        m->set_local_eukey_assigned(j->local_eukey_requested());
    }
    inv.set_registered_at_ms(at_ms);
    return inv;
}

// A field-by-field listing of the fields set (for the reader; the octets are in the kv file).
std::string quoted(const std::string& s) {
    return "\"" + s + "\"";
}

// A bool as listed: false is the default, which the encoding leaves out.
std::string flag(bool b) {
    return b ? "true" : "false  (the default: not encoded)";
}

void list_caps(std::ostringstream& out, const std::string& in, const pb::DeviceCapabilities& c) {
    out << in << "device_type: " << quoted(c.device_type()) << '\n'
        << in << "manufacturer: " << quoted(c.manufacturer()) << '\n'
        << in << "model: " << quoted(c.model()) << '\n'
        << in << "enough_ui: " << flag(c.enough_ui()) << '\n';
    for (const auto& p : c.pan_technologies())
        out << in << "pan_technologies: " << quoted(p) << '\n';
    for (const auto& s : c.services()) out << in << "services: " << quoted(s) << '\n';
}

void list_contents(std::ostringstream& out, const std::string& in,
                   const google::protobuf::RepeatedPtrField<pb::ContentInfo>& contents) {
    for (const auto& c : contents) {
        out << in << "contents { content_id: " << quoted(c.content_id())
            << " media_type: " << quoted(c.media_type()) << " title: " << quoted(c.title())
            << " size_bytes: " << c.size_bytes() << " }\n";
    }
}

std::string join_listing(const pb::PneJoin& j) {
    std::ostringstream out;
    out << "pne_id: " << quoted(j.pne_id()) << "\ncapabilities {\n";
    list_caps(out, "  ", j.capabilities());
    out << "}\n";
    list_contents(out, "", j.contents());
    out << "rand_pne: 0x" << cpns::to_hex(cpns::as_bytes(j.rand_pne())) << '\n'
        << "local_eukey_requested: " << flag(j.local_eukey_requested()) << '\n';
    return out.str();
}

std::string inventory_listing(const pb::PnInventory& inv) {
    std::ostringstream out;
    out << "pn_id: " << quoted(inv.pn_id()) << "\ngw_id: " << quoted(inv.gw_id())
        << "\ngw_capabilities {\n";
    list_caps(out, "  ", inv.gw_capabilities());
    out << "}\n";
    for (const auto& m : inv.members()) {
        out << "members {\n  pne_id: " << quoted(m.pne_id()) << "\n  capabilities {\n";
        list_caps(out, "    ", m.capabilities());
        out << "  }\n";
        list_contents(out, "  ", m.contents());
        out << "  joined_at_ms: " << m.joined_at_ms() << '\n'
            << "  local_eukey_assigned: " << flag(m.local_eukey_assigned()) << "\n}\n";
    }
    out << "registered_at_ms: " << inv.registered_at_ms() << '\n';
    return out.str();
}

// --- One set ---------------------------------------------------------------------------------

struct Scenario {
    std::string prefix;  // "" for the first set
    std::string title;
    std::string description;
    cpns::SecretKey eukey_pne;
    std::uint8_t eukey_pne_first = 0;
    std::optional<cpns::SecretKey> eukey_gw;  // with a LocalEUKey only
    std::uint8_t eukey_gw_first = 0;
    std::optional<cpns::SecretKey> local_eukey;
    std::uint8_t local_eukey_first = 0;
    Bytes rand_pne;
    Bytes rand_server;
    cpns::PneContext ctx;
    pb::PneJoin join;
    pb::PnInventory inventory;
};

const char* flow_name(cpns::Flow f) {
    return f == cpns::Flow::kPneInitiated ? "PNE-initiated" : "PN GW-initiated";
}

const char* role_name(cpns::PneRole r) {
    return r == cpns::PneRole::kInitiator ? "initiator" : "invitee";
}

const char* setup_name(cpns::SetupKind s) {
    switch (s) {
        case cpns::SetupKind::kNone:
            return "none";
        case cpns::SetupKind::kOneToOne:
            return "1-1";
        case cpns::SetupKind::kAll:
            return "All";
        case cpns::SetupKind::kInviteList:
            return "invite list";
    }
    return "?";
}

void add_inputs(VectorSet& v, const Scenario& s, const std::string& join_hex,
                const std::string& inventory_hex) {
    const std::string& p = s.prefix;
    const cpns::PneContext& ctx = s.ctx;
    v.inputs.push_back(
        {p + "eukey_pne", "EUKey_PNE", range(s.eukey_pne_first, 32), s.eukey_pne.to_hex()});
    if (s.eukey_gw) {
        v.inputs.push_back(
            {p + "eukey_gw", "EUKey_GW", range(s.eukey_gw_first, 32), s.eukey_gw->to_hex()});
    }
    if (s.local_eukey) {
        v.inputs.push_back({p + "local_eukey", "LocalEUKey", range(s.local_eukey_first, 32),
                            s.local_eukey->to_hex()});
    }
    v.inputs.insert(
        v.inputs.end(),
        {
            {p + "rand_pne", "rand_PNE", range(s.rand_pne.at(0), s.rand_pne.size()),
             cpns::to_hex(s.rand_pne)},
            {p + "rand_server", "rand_server", range(s.rand_server.at(0), s.rand_server.size()),
             cpns::to_hex(s.rand_server)},
            {p + "pne_id", "PNE ID", code(ctx.pne_id), cpns::to_hex(cpns::as_bytes(ctx.pne_id))},
            {p + "gw_id", "PN GW ID", code(ctx.gw_id), cpns::to_hex(cpns::as_bytes(ctx.gw_id))},
            {p + "pn_id", "PN ID", code(ctx.pn_id), cpns::to_hex(cpns::as_bytes(ctx.pn_id))},
            {p + "flow", "flow", flow_name(ctx.flow),
             one_octet(static_cast<std::uint8_t>(ctx.flow))},
            {p + "role", "role", role_name(ctx.role),
             one_octet(static_cast<std::uint8_t>(ctx.role))},
            {p + "setup", "setup kind", setup_name(ctx.setup),
             one_octet(static_cast<std::uint8_t>(ctx.setup))},
            {p + "local_key_requested", "local_key_requested",
             ctx.local_key_requested ? "true" : "false",
             one_octet(ctx.local_key_requested ? 1 : 0)},
        });
    for (std::size_t i = 0; i < ctx.invited.size(); ++i) {
        v.inputs.push_back({p + "invited_" + std::to_string(i),
                            "invited[" + std::to_string(i) + "]", code(ctx.invited[i]),
                            cpns::to_hex(cpns::as_bytes(ctx.invited[i]))});
    }
    v.inputs.push_back({p + "join_encoding", "PneJoin",
                        "the join below, deterministic protobuf encoding", join_hex});
    v.inputs.push_back({p + "inventory_encoding", "PnInventory",
                        "the inventory below, deterministic protobuf encoding", inventory_hex});
}

VectorSet compute_set(const Scenario& s) {
    const std::string& p = s.prefix;
    // The encodings and digests, through the library's own functions: the context carries what
    // the PNE and the server bind.
    const std::string join_bytes = cpns::deterministic_bytes(s.join);
    const std::string inventory_bytes = cpns::deterministic_bytes(s.inventory);
    cpns::PneContext ctx = s.ctx;
    ctx.join_digest = cpns::join_digest(s.join);
    ctx.inventory_digest = cpns::inventory_digest(s.inventory);
    if (ctx.join_digest != cpns::sha256(cpns::as_bytes(join_bytes)) ||
        ctx.inventory_digest != cpns::sha256(cpns::as_bytes(inventory_bytes)) ||
        s.join.rand_pne() != std::string(s.rand_pne.begin(), s.rand_pne.end()) ||
        s.join.pne_id() != ctx.pne_id || s.join.local_eukey_requested() != ctx.local_key_requested)
        throw std::runtime_error("the fixed join or inventory disagrees with the context");

    VectorSet v;
    v.title = s.title;
    v.description = s.description;
    v.join_text = join_listing(s.join);
    v.inventory_text = inventory_listing(s.inventory);
    add_inputs(v, s, cpns::to_hex(cpns::as_bytes(join_bytes)),
               cpns::to_hex(cpns::as_bytes(inventory_bytes)));

    const cpns::SecretKey sk_pne = cpns::derive_sk_pne(s.eukey_pne, s.rand_pne, s.rand_server, ctx);
    const cpns::Hash hash_pne =
        cpns::derive_hash_pne(s.eukey_pne, s.rand_pne, s.rand_server, sk_pne, ctx);
    const cpns::Hash hash_server_pne =
        cpns::derive_hash_server_pne(s.eukey_pne, s.rand_pne, s.rand_server, sk_pne, hash_pne, ctx);

    v.outputs.push_back({p + "setup_binding", "setup binding",
                         "flow, role, setup kind, local_key_requested: one octet each",
                         cpns::to_hex(cpns::encode_setup_binding(ctx))});
    if (!ctx.invited.empty()) {
        v.outputs.push_back({p + "id_list", "invited ID list",
                             "for each ID in order: its length (2 octets) then the ID",
                             cpns::to_hex(cpns::encode_id_list(ctx.invited))});
    }
    const std::string invited = ctx.invited.empty() ? "invited (empty)" : "invited";
    v.outputs.insert(
        v.outputs.end(),
        {
            {p + "join_digest", "join digest", "SHA-256(PneJoin encoding)",
             cpns::to_hex(ctx.join_digest)},
            {p + "inventory_digest", "inventory digest", "SHA-256(PnInventory encoding)",
             cpns::to_hex(ctx.inventory_digest)},
            {p + "sk_pne", "SK_PNE",
             "KDF(EUKey_PNE, 0x51, rand_PNE, rand_server, PNE ID, PN GW ID, PN ID, binding, " +
                 invited + ")",
             sk_pne.to_hex()},
            {p + "hash_pne", "hash_PNE",
             "KDF(EUKey_PNE, 0x52, rand_PNE, rand_server, SK_PNE, PNE ID, PN GW ID, PN ID, "
             "binding, " +
                 invited + ", join digest)",
             cpns::to_hex(hash_pne)},
            {p + "hash_server_pne", "hash_server_PNE",
             "KDF(EUKey_PNE, 0x53, rand_PNE, rand_server, SK_PNE, hash_PNE, PNE ID, PN GW ID, "
             "PN ID, binding, " +
                 invited + ", join digest, inventory digest)",
             cpns::to_hex(hash_server_pne)},
        });

    if (s.local_eukey && s.eukey_gw) {
        const cpns::SecretKey kek_pne =
            cpns::derive_kek(s.eukey_pne, cpns::Recipient::kPne, ctx.pn_id, ctx.pne_id, ctx.gw_id,
                             s.rand_server, s.rand_pne);
        const cpns::SecretKey kek_gw =
            cpns::derive_kek(*s.eukey_gw, cpns::Recipient::kGw, ctx.pn_id, ctx.pne_id, ctx.gw_id,
                             s.rand_server, s.rand_pne);
        const Bytes wrapped_pne = cpns::wrap_key(kek_pne, *s.local_eukey);
        const Bytes wrapped_gw = cpns::wrap_key(kek_gw, *s.local_eukey);
        // The convenience functions must agree with the two-step computation.
        if (cpns::wrap_local_eukey(s.eukey_pne, cpns::Recipient::kPne, ctx.pn_id, ctx.pne_id,
                                   ctx.gw_id, s.rand_server, s.rand_pne,
                                   *s.local_eukey) != wrapped_pne ||
            cpns::wrap_local_eukey(*s.eukey_gw, cpns::Recipient::kGw, ctx.pn_id, ctx.pne_id,
                                   ctx.gw_id, s.rand_server, s.rand_pne,
                                   *s.local_eukey) != wrapped_gw) {
            throw std::runtime_error("wrap_local_eukey disagrees with derive_kek + wrap_key");
        }
        v.outputs.insert(
            v.outputs.end(),
            {
                {p + "kek_pne", "KEK (PNE copy)",
                 "KDF(EUKey_PNE, 0x54, 0x01, PN ID, PNE ID, PN GW ID, rand_server, rand_PNE)",
                 kek_pne.to_hex()},
                {p + "kek_gw", "KEK (PN GW copy)",
                 "KDF(EUKey_GW, 0x54, 0x02, PN ID, PNE ID, PN GW ID, rand_server, rand_PNE)",
                 kek_gw.to_hex()},
                {p + "wrapped_local_eukey_pne", "wrapped LocalEUKey (PNE copy)",
                 "AES-256-KWP(KEK (PNE copy), LocalEUKey)", cpns::to_hex(wrapped_pne)},
                {p + "wrapped_local_eukey_gw", "wrapped LocalEUKey (PN GW copy)",
                 "AES-256-KWP(KEK (PN GW copy), LocalEUKey)", cpns::to_hex(wrapped_gw)},
            });
    }
    return v;
}

// --- The three sets --------------------------------------------------------------------------

std::vector<VectorSet> compute() {
    const pb::DeviceCapabilities phone =
        caps("phone", "Acme Mobile", "P-7", true, {"bluetooth", "wifi"}, {"gateway"});
    const pb::DeviceCapabilities headset =
        caps("headset", "Acme Audio", "HS-100", true, {"bluetooth"}, {"audio-sink", "microphone"});
    const pb::DeviceCapabilities speaker =
        caps("speaker", "Acme Audio", "SP-2", false, {"bluetooth", "wifi"}, {"audio-sink"});
    const pb::DeviceCapabilities watch =
        caps("watch", "Acme Wear", "W-3", true, {"bluetooth"}, {"notifications", "heart-rate"});

    // Run 1, PNE-initiated: the headset invites the speaker and the watch; the speaker joins,
    // the watch declines. Both members are registered.
    Scenario init;
    init.title = "Set 1: the initiator of a PNE-initiated establishment (no prefix)";
    init.description =
        "The initiating PNE, with an explicit invitation list and a LocalEUKey request, so that\n"
        "every parameter is used. The speaker joined, the watch declined: the registered\n"
        "inventory lists the initiator and the speaker.";
    init.eukey_pne = counting_key(0x00);
    init.eukey_gw = counting_key(0x20);
    init.eukey_gw_first = 0x20;
    init.local_eukey = counting_key(0xc0);
    init.local_eukey_first = 0xc0;
    init.rand_pne = counting_bytes(0xa0, cpns::kRandSize);
    init.rand_server = counting_bytes(0xb0, cpns::kRandSize);
    init.ctx.pne_id = "pne-headset-01";
    init.ctx.gw_id = "gw-phone-01";
    init.ctx.pn_id = "pn-0001";
    init.ctx.flow = cpns::Flow::kPneInitiated;
    init.ctx.role = cpns::PneRole::kInitiator;
    init.ctx.setup = cpns::SetupKind::kInviteList;
    init.ctx.invited = {"pne-speaker-02", "pne-watch-03"};
    init.ctx.local_key_requested = true;
    init.join = make_join(init.ctx.pne_id, headset,
                          {content("c-0001", "audio/mpeg", "Voice memo 1", 48213)}, init.rand_pne);

    Scenario inv;
    inv.prefix = "invitee_";
    inv.title = "Set 2: an invitee of the same run (prefix `invitee_`)";
    inv.description =
        "The speaker, notified by the PN GW in the run of set 1: same PN, PN GW, rand_server and\n"
        "registered inventory; its own EUKey, join and rand_PNE. It has no UI, so it asks for no\n"
        "LocalEUKey (there is no KEK), sent no setup kind and binds an empty invitation list.";
    inv.eukey_pne = counting_key(0x40);
    inv.eukey_pne_first = 0x40;
    inv.rand_pne = counting_bytes(0x90, cpns::kRandSize);
    inv.rand_server = init.rand_server;
    inv.ctx.pne_id = "pne-speaker-02";
    inv.ctx.gw_id = init.ctx.gw_id;
    inv.ctx.pn_id = init.ctx.pn_id;
    inv.ctx.flow = cpns::Flow::kPneInitiated;
    inv.ctx.role = cpns::PneRole::kInvitee;
    inv.ctx.setup = cpns::SetupKind::kNone;
    inv.ctx.local_key_requested = false;
    inv.join = make_join(inv.ctx.pne_id, speaker, {}, inv.rand_pne);

    init.inventory =
        make_inventory(init.ctx.pn_id, init.ctx.gw_id, phone, {&init.join, &inv.join}, kRun1Ms);
    inv.inventory = init.inventory;

    // Run 2, PN GW-initiated: the PN GW invites the watch, which joins with a LocalEUKey.
    Scenario gw;
    gw.prefix = "gwinit_";
    gw.title = "Set 3: the invitee of a PN GW-initiated establishment (prefix `gwinit_`)";
    gw.description =
        "The watch, invited by the PN GW (flow 0x02) into a new PN; it has UI and asks for a\n"
        "LocalEUKey. The registered inventory lists the watch alone.";
    gw.eukey_pne = counting_key(0x60);
    gw.eukey_pne_first = 0x60;
    gw.eukey_gw = counting_key(0x20);
    gw.eukey_gw_first = 0x20;
    gw.local_eukey = counting_key(0xe0);
    gw.local_eukey_first = 0xe0;
    gw.rand_pne = counting_bytes(0x80, cpns::kRandSize);
    gw.rand_server = counting_bytes(0xf0, cpns::kRandSize);
    gw.ctx.pne_id = "pne-watch-03";
    gw.ctx.gw_id = init.ctx.gw_id;
    gw.ctx.pn_id = "pn-0002";
    gw.ctx.flow = cpns::Flow::kGwInitiated;
    gw.ctx.role = cpns::PneRole::kInvitee;
    gw.ctx.setup = cpns::SetupKind::kNone;
    gw.ctx.local_key_requested = true;
    gw.join = make_join(gw.ctx.pne_id, watch,
                        {content("c-0301", "application/json", "Workout log", 2048)}, gw.rand_pne);
    gw.inventory = make_inventory(gw.ctx.pn_id, gw.ctx.gw_id, phone, {&gw.join}, kRun2Ms);

    std::vector<VectorSet> sets = {compute_set(init), compute_set(inv), compute_set(gw)};

    // Values of set 1 outside the per-PNE schedule: the PN GW's server PSK and the key of the
    // initiator's own state file.
    VectorSet& first = sets.front();
    const std::string label = "cpns device state v1";
    first.inputs.push_back({"device_state_label", "device-state label", code(label),
                            cpns::to_hex(cpns::as_bytes(label))});
    const cpns::SecretKey gw_psk = cpns::derive_gw_server_psk(*init.eukey_gw, init.ctx.gw_id);
    auto state = cpns::kdf(init.eukey_pne, cpns::Fc::kDeviceState,
                           {cpns::as_bytes(label), cpns::as_bytes(init.ctx.pne_id)});
    const cpns::SecretKey state_key(state);
    cpns::wipe(state.data(), state.size());
    first.outputs.push_back(
        {"gw_server_psk", "PN GW server PSK", "KDF(EUKey_GW, 0x55, PN GW ID)", gw_psk.to_hex()});
    first.outputs.push_back({"device_state_key", "device-state key",
                             "KDF(EUKey_PNE, 0x56, device-state label, PNE ID)",
                             state_key.to_hex()});
    // PN lifecycle: the initiator leaves the PN of set 1 at revision 0, and the server's
    // NOTICE_LEFT (kind 1) answers it over the inventory after the change (revision 1, the
    // invitee alone). NOTICE_UPDATED (kind 4) tells the invitee, without a random.
    pb::PnLeaveRequest leave;
    leave.set_pn_id(init.ctx.pn_id);
    leave.set_gw_id(init.ctx.gw_id);
    leave.set_revision(0);
    const cpns::Bytes leave_rand = counting_bytes(0x90, cpns::kRandSize);
    leave.set_rand_pne(std::string(leave_rand.begin(), leave_rand.end()));
    const cpns::Hash leave_proof = cpns::leave_proof(init.eukey_pne, init.ctx.pne_id, leave);
    pb::PnInventory after = init.inventory;
    after.mutable_members()->DeleteSubrange(0, 1);
    after.set_revision(1);
    const std::string after_bytes = cpns::deterministic_bytes(after);
    const cpns::Hash after_digest = cpns::inventory_digest(after);
    const auto rev = cpns::encode_u64(0);
    first.inputs.push_back(
        {"leave_revision", "revision the leave names", "0", cpns::to_hex(cpns::ByteView{rev})});
    first.inputs.push_back({"leave_rand_pne", "rand_PNE of the leave", "0x90 0x91 ... 0x9f",
                            cpns::to_hex(leave_rand)});
    first.inputs.push_back({"after_inventory_encoding", "PN after the leave (revision 1)",
                            "set 1's inventory without the initiator, revision 1",
                            cpns::to_hex(cpns::as_bytes(after_bytes))});
    pb::PnChangeNotice left;
    left.set_pne_id(init.ctx.pne_id);
    left.set_kind(pb::NOTICE_LEFT);
    *left.mutable_inventory() = after;
    left.set_rand_pne(std::string(leave_rand.begin(), leave_rand.end()));
    pb::PnChangeNotice updated;
    updated.set_pne_id(inv.ctx.pne_id);
    updated.set_kind(pb::NOTICE_UPDATED);
    *updated.mutable_inventory() = after;
    first.outputs.push_back({"after_inventory_digest", "digest of the PN after the leave",
                             "SHA-256(after inventory encoding)",
                             cpns::to_hex(cpns::ByteView{after_digest})});
    first.outputs.push_back(
        {"leave_proof", "leave proof",
         "KDF(EUKey_PNE, 0x5a, PNE ID, PN GW ID, PN ID, revision, rand_PNE of the leave)",
         cpns::to_hex(cpns::ByteView{leave_proof})});
    const cpns::Hash left_proof = cpns::notice_proof(init.eukey_pne, left);
    first.outputs.push_back({"notice_left_proof", "NOTICE_LEFT proof (to the initiator)",
                             "KDF(EUKey_PNE, 0x5b, 0x01, PNE ID, after digest, rand_PNE of the "
                             "leave)",
                             cpns::to_hex(cpns::ByteView{left_proof})});
    const cpns::Hash updated_proof = cpns::notice_proof(inv.eukey_pne, updated);
    first.outputs.push_back({"notice_updated_proof", "NOTICE_UPDATED proof (to the invitee)",
                             "KDF(invitee EUKey_PNE, 0x5b, 0x04, invitee PNE ID, after digest, "
                             "empty)",
                             cpns::to_hex(cpns::ByteView{updated_proof})});

    // EUKey rotation: what the CPNS Server sends in place of the LocalEUKey under a PNE's
    // rotated-out EUKey once its grace period has ended (here as if set 1's EUKey_PNE were
    // that key): 32 zero octets under the KEK of the PNE copy.
    const Bytes notice = cpns::wrap_local_eukey(init.eukey_pne, cpns::Recipient::kPne,
                                                init.ctx.pn_id, init.ctx.pne_id, init.ctx.gw_id,
                                                init.rand_server, init.rand_pne, cpns::SecretKey());
    first.outputs.push_back({"expiry_notice_pne", "expiry notice (PNE copy, EUKey rotation)",
                             "AES-256-KWP(KEK (PNE copy), 32 zero octets)", cpns::to_hex(notice)});
    return sets;
}

// --- Output ----------------------------------------------------------------------------------

std::string as_kv(const std::vector<VectorSet>& sets) {
    std::ostringstream out;
    for (const VectorSet& v : sets) {
        for (const Input& in : v.inputs) out << in.key << '=' << in.hex << '\n';
        for (const Output& o : v.outputs) out << o.key << '=' << o.hex << '\n';
    }
    return out.str();
}

void set_as_markdown(std::ostringstream& out, const VectorSet& v) {
    std::size_t width = 0;
    for (const Output& o : v.outputs) width = std::max(width, o.key.size());

    out << "### " << v.title << "\n\n" << v.description << "\n\n";
    out << "Inputs:\n\n"
        << "| input | value | octets (hex) |\n"
        << "| --- | --- | --- |\n";
    for (const Input& in : v.inputs) {
        out << "| " << in.label << " | " << in.meaning << " | `" << in.hex << "` |\n";
    }
    out << "\nThe join (`PneJoin`), field by field:\n\n```text\n"
        << v.join_text << "```\n\nThe registered inventory (`PnInventory`), field by field:\n\n"
        << "```text\n"
        << v.inventory_text << "```\n\nOutputs:\n\n"
        << "| name | value | definition |\n"
        << "| --- | --- | --- |\n";
    for (const Output& o : v.outputs) {
        out << "| `" << o.key << "` | " << o.label << " | " << o.definition << " |\n";
    }
    out << "\n```text\n";
    for (const Output& o : v.outputs) {
        out << o.key << std::string(width - o.key.size(), ' ') << " = " << o.hex << '\n';
    }
    out << "```\n";
}

std::string as_markdown(const std::vector<VectorSet>& sets) {
    std::ostringstream out;
    out << "## Test vectors\n\n"
        << "Printed by `cpns-vectors` (this section) and `cpns-vectors --format kv` (the file\n"
        << "`docs/test-vectors.txt`, one `key=hex` per line, the sets in this order).\n"
        << "`tests/vectors_cli_test.sh` recomputes every output with `openssl dgst`, `openssl "
           "mac`\n"
        << "and `openssl enc` only and checks both. Each set lists every input it uses, under its\n"
        << "own prefix. The join and inventory octets are the deterministic encodings described "
           "in\n"
        << "[Encodings of the parameters](#encodings-of-the-parameters); the listings below them\n"
        << "give the values field by field (a field not listed, or holding its default, is not\n"
        << "encoded).\n"
        << "Timestamps are milliseconds since 1970-01-01T00:00:00Z.\n";
    for (const VectorSet& v : sets) {
        out << '\n';
        set_as_markdown(out, v);
    }
    return out.str();
}

void usage(std::FILE* to) {
    std::fputs(
        "usage: cpns-vectors [--format markdown|kv] [--output FILE] | --version\n"
        "  Prints the CPNS key-schedule test vectors computed from fixed inputs.\n"
        "  --format markdown  the 'Test vectors' section of docs/key-schedule.md (default)\n"
        "  --format kv        key=hex lines, as committed in docs/test-vectors.txt\n"
        "  --output FILE      write to FILE instead of standard output\n"
        "  --version          print the version and the OpenSSL version, and exit\n",
        to);
}

}  // namespace

int main(int argc, char** argv) {
    std::string format = "markdown";
    std::string output;
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "-h" || arg == "--help") {
            usage(stdout);
            return 0;
        }
        if (arg == "--version") {
            std::printf("%s\n", cpns::version_text("cpns-vectors").c_str());
            return 0;
        }
        if ((arg == "--format" || arg == "--output") && i + 1 < argc) {
            (arg == "--format" ? format : output) = argv[++i];
        } else {
            std::fprintf(stderr, "cpns-vectors: unexpected argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (format != "markdown" && format != "kv") {
        std::fprintf(stderr, "cpns-vectors: unknown format '%s'\n", format.c_str());
        usage(stderr);
        return 2;
    }

    std::string text;
    try {
        const std::vector<VectorSet> sets = compute();
        text = format == "kv" ? as_kv(sets) : as_markdown(sets);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "cpns-vectors: %s\n", e.what());
        return 1;
    }

    if (output.empty()) {
        std::cout << text;
        std::cout.flush();
        return std::cout ? 0 : 1;
    }
    std::ofstream file(output, std::ios::binary | std::ios::trunc);
    file << text;
    file.close();
    if (!file) {
        std::fprintf(stderr, "cpns-vectors: cannot write '%s'\n", output.c_str());
        return 1;
    }
    return 0;
}
