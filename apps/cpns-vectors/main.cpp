// cpns-vectors: computes the key-schedule test vectors from fixed inputs and prints them, either
// as the Markdown section pasted into docs/key-schedule.md (default) or as the key=hex file
// committed as docs/test-vectors.txt (--format kv). tests/vectors_cli_test.sh recomputes every
// value with the openssl command-line tool and compares.
#include "core/crypto.hpp"

#include <algorithm>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace {

using cpns::Bytes;
using cpns::ByteView;

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

struct Vectors {
    std::vector<Input> inputs;
    std::vector<Output> outputs;
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

Vectors compute() {
    // Fixed inputs. A PNE-initiated establishment seen from the initiating PNE, with an explicit
    // invitation list and a LocalEUKey request, so that every parameter of every value is used.
    const cpns::SecretKey eukey_pne = counting_key(0x00);
    const cpns::SecretKey eukey_gw = counting_key(0x20);
    const cpns::SecretKey local_eukey = counting_key(0xc0);
    const Bytes rand_pne = counting_bytes(0xa0, cpns::kRandSize);
    const Bytes rand_server = counting_bytes(0xb0, cpns::kRandSize);
    cpns::PneContext ctx;
    ctx.pne_id = "pne-headset-01";
    ctx.gw_id = "gw-phone-01";
    ctx.pn_id = "pn-0001";
    ctx.flow = cpns::Flow::kPneInitiated;
    ctx.role = cpns::PneRole::kInitiator;
    ctx.setup = cpns::SetupKind::kInviteList;
    ctx.invited = {"pne-speaker-02", "pne-watch-03"};
    ctx.local_key_requested = true;

    Vectors v;
    v.inputs = {
        {"eukey_pne", "EUKey_PNE", "octets 0x00..0x1f", eukey_pne.to_hex()},
        {"eukey_gw", "EUKey_GW", "octets 0x20..0x3f", eukey_gw.to_hex()},
        {"local_eukey", "LocalEUKey", "octets 0xc0..0xdf", local_eukey.to_hex()},
        {"rand_pne", "rand_PNE", "octets 0xa0..0xaf", cpns::to_hex(rand_pne)},
        {"rand_server", "rand_server", "octets 0xb0..0xbf", cpns::to_hex(rand_server)},
        {"pne_id", "PNE ID", code(ctx.pne_id), cpns::to_hex(cpns::as_bytes(ctx.pne_id))},
        {"gw_id", "PN GW ID", code(ctx.gw_id), cpns::to_hex(cpns::as_bytes(ctx.gw_id))},
        {"pn_id", "PN ID", code(ctx.pn_id), cpns::to_hex(cpns::as_bytes(ctx.pn_id))},
        {"flow", "flow", "PNE-initiated", one_octet(static_cast<std::uint8_t>(ctx.flow))},
        {"role", "role", "initiator", one_octet(static_cast<std::uint8_t>(ctx.role))},
        {"setup", "setup kind", "invite list", one_octet(static_cast<std::uint8_t>(ctx.setup))},
        {"local_key_requested", "local_key_requested", "true",
         one_octet(ctx.local_key_requested ? 1 : 0)},
    };
    for (std::size_t i = 0; i < ctx.invited.size(); ++i) {
        v.inputs.push_back({"invited_" + std::to_string(i), "invited[" + std::to_string(i) + "]",
                            code(ctx.invited[i]), cpns::to_hex(cpns::as_bytes(ctx.invited[i]))});
    }

    const cpns::SecretKey sk_pne = cpns::derive_sk_pne(eukey_pne, rand_pne, rand_server, ctx);
    const cpns::Hash hash_pne =
        cpns::derive_hash_pne(eukey_pne, rand_pne, rand_server, sk_pne, ctx);
    const cpns::Hash hash_server_pne =
        cpns::derive_hash_server_pne(eukey_pne, rand_pne, rand_server, sk_pne, hash_pne, ctx);
    const cpns::SecretKey kek_pne = cpns::derive_kek(eukey_pne, cpns::Recipient::kPne, ctx.pn_id,
                                                     ctx.pne_id, ctx.gw_id, rand_server, rand_pne);
    const cpns::SecretKey kek_gw = cpns::derive_kek(eukey_gw, cpns::Recipient::kGw, ctx.pn_id,
                                                    ctx.pne_id, ctx.gw_id, rand_server, rand_pne);
    const Bytes wrapped_pne = cpns::wrap_key(kek_pne, local_eukey);
    const Bytes wrapped_gw = cpns::wrap_key(kek_gw, local_eukey);
    // The convenience functions must agree with the two-step computation.
    if (cpns::wrap_local_eukey(eukey_pne, cpns::Recipient::kPne, ctx.pn_id, ctx.pne_id, ctx.gw_id,
                               rand_server, rand_pne, local_eukey) != wrapped_pne ||
        cpns::wrap_local_eukey(eukey_gw, cpns::Recipient::kGw, ctx.pn_id, ctx.pne_id, ctx.gw_id,
                               rand_server, rand_pne, local_eukey) != wrapped_gw) {
        throw std::runtime_error("wrap_local_eukey disagrees with derive_kek + wrap_key");
    }
    const cpns::SecretKey gw_psk = cpns::derive_gw_server_psk(eukey_gw, ctx.gw_id);

    v.outputs = {
        {"setup_binding", "setup binding",
         "flow, role, setup kind, local_key_requested: one octet each",
         cpns::to_hex(cpns::encode_setup_binding(ctx))},
        {"id_list", "invited ID list", "for each ID in order: its length (2 octets) then the ID",
         cpns::to_hex(cpns::encode_id_list(ctx.invited))},
        {"sk_pne", "SK_PNE",
         "KDF(EUKey_PNE, 0x51, rand_PNE, rand_server, PNE ID, PN GW ID, PN ID, binding, invited)",
         sk_pne.to_hex()},
        {"hash_pne", "hash_PNE",
         "KDF(EUKey_PNE, 0x52, rand_PNE, rand_server, SK_PNE, PNE ID, PN GW ID, PN ID, binding, "
         "invited)",
         cpns::to_hex(hash_pne)},
        {"hash_server_pne", "hash_server_PNE",
         "KDF(EUKey_PNE, 0x53, rand_PNE, rand_server, SK_PNE, hash_PNE, PNE ID, PN GW ID, PN ID, "
         "binding, invited)",
         cpns::to_hex(hash_server_pne)},
        {"kek_pne", "KEK (PNE copy)",
         "KDF(EUKey_PNE, 0x54, 0x01, PN ID, PNE ID, PN GW ID, rand_server)", kek_pne.to_hex()},
        {"kek_gw", "KEK (PN GW copy)",
         "KDF(EUKey_GW, 0x54, 0x02, PN ID, PNE ID, PN GW ID, rand_server)", kek_gw.to_hex()},
        {"wrapped_local_eukey_pne", "wrapped LocalEUKey (PNE copy)",
         "AES-256-KWP(KEK (PNE copy), LocalEUKey)", cpns::to_hex(wrapped_pne)},
        {"wrapped_local_eukey_gw", "wrapped LocalEUKey (PN GW copy)",
         "AES-256-KWP(KEK (PN GW copy), LocalEUKey)", cpns::to_hex(wrapped_gw)},
        {"gw_server_psk", "PN GW server PSK", "KDF(EUKey_GW, 0x55, PN GW ID)", gw_psk.to_hex()},
    };
    return v;
}

std::string as_kv(const Vectors& v) {
    std::ostringstream out;
    for (const Input& in : v.inputs) out << in.key << '=' << in.hex << '\n';
    for (const Output& o : v.outputs) out << o.key << '=' << o.hex << '\n';
    return out.str();
}

std::string as_markdown(const Vectors& v) {
    std::size_t width = 0;
    for (const Output& o : v.outputs) width = std::max(width, o.key.size());

    std::ostringstream out;
    out << "## Test vectors\n\n"
        << "Printed by `cpns-vectors` (this section) and `cpns-vectors --format kv` (the file\n"
        << "`docs/test-vectors.txt`, one `key=hex` per line). `tests/vectors_cli_test.sh`\n"
        << "recomputes every output with `openssl mac` and `openssl enc` only and checks both.\n"
        << "The scenario: the initiating PNE of a PNE-initiated establishment, with an explicit\n"
        << "invitation list and a LocalEUKey request, so that every parameter is used.\n\n"
        << "### Inputs\n\n"
        << "| input | value | octets (hex) |\n"
        << "| --- | --- | --- |\n";
    for (const Input& in : v.inputs) {
        out << "| " << in.label << " | " << in.meaning << " | `" << in.hex << "` |\n";
    }
    out << "\n### Outputs\n\n"
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
    return out.str();
}

void usage(std::FILE* to) {
    std::fputs(
        "usage: cpns-vectors [--format markdown|kv] [--output FILE]\n"
        "  Prints the CPNS key-schedule test vectors computed from fixed inputs.\n"
        "  --format markdown  the 'Test vectors' section of docs/key-schedule.md (default)\n"
        "  --format kv        key=hex lines, as committed in docs/test-vectors.txt\n"
        "  --output FILE      write to FILE instead of standard output\n",
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
        const Vectors v = compute();
        text = format == "kv" ? as_kv(v) : as_markdown(v);
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
