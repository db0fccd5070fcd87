// libFuzzer target: each message body of the codec (src/core/codec.hpp) on its own. The first
// byte picks one field of the Envelope's `body` oneof; the rest is that body message's bytes.
// The harness wraps them in a well-formed envelope (version, sender, the chosen field), so
// mutations work on the body's fields instead of the envelope around it, then decodes with
// decode_body().
//
// Invariants, besides no crash, UB or leak: a body that decodes is of the chosen type,
// validates, has a name, hashes deterministically (join and inventory digests) and survives
// encode -> decode -> encode unchanged; a body that does not decode fails with a typed
// error that maps to a failure reason.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <variant>

#include "core/codec.hpp"
#include "core/crypto.hpp"

namespace {

using cpns::pb::Envelope;

[[noreturn]] void fail(const char* what) {
    std::fprintf(stderr, "cpns-fuzz-body: invariant broken: %s\n", what);
    std::abort();
}

void put_varint(std::string& out, std::uint64_t v) {
    while (v >= 0x80) {
        out.push_back(static_cast<char>((v & 0x7f) | 0x80));
        v >>= 7;
    }
    out.push_back(static_cast<char>(v));
}

void check_decoded(const Envelope& env, int field_number) {
    if (static_cast<int>(env.body_case()) != field_number) fail("decoded as another body");
    if (cpns::validate(env)) fail("a decoded envelope does not validate");
    if (cpns::message_name(env) == "Unknown") fail("a decoded body has no name");
    if (env.has_setup_request() && env.setup_request().has_join() &&
        cpns::join_digest(env.setup_request().join()) !=
            cpns::join_digest(env.setup_request().join()))
        fail("join digest is not deterministic");
    if (env.has_registration_response() && env.registration_response().has_inventory()) {
        const auto& inv = env.registration_response().inventory();
        if (cpns::inventory_digest(inv) != cpns::inventory_digest(inv))
            fail("inventory digest is not deterministic");
    }
    const cpns::Bytes frame = cpns::encode_frame(env);
    const auto again = cpns::decode_frame(frame);
    if (frame.size() - cpns::kFrameHeaderSize > cpns::kMaxFrameSize) return;  // see fuzz_decode
    const auto* env2 = std::get_if<Envelope>(&again);
    if (!env2) fail("a re-encoded body does not decode");
    if (cpns::encode_frame(*env2) != frame) fail("re-encoding a decoded body is not stable");
    Envelope wiped = *env2;
    cpns::wipe_bytes_fields(wiped);
    if (cpns::message_name(wiped) != cpns::message_name(env)) fail("wiping changed the body");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0 || size > cpns::kMaxFrameSize) return 0;
    const auto* oneof = Envelope::descriptor()->oneof_decl(0);
    const int field_number = oneof->field(data[0] % oneof->field_count())->number();

    std::string wire;
    wire.push_back(0x08);  // version = 1
    put_varint(wire, cpns::kProtocolVersion);
    wire.push_back(0x12);  // sender_id = "pne-a"
    put_varint(wire, 5);
    wire += "pne-a";
    put_varint(wire, static_cast<std::uint64_t>(field_number) << 3 | 2);
    put_varint(wire, size - 1);
    wire.append(reinterpret_cast<const char*>(data + 1), size - 1);

    const auto result = cpns::decode_body(cpns::as_bytes(wire));
    if (const auto* env = std::get_if<Envelope>(&result)) {
        check_decoded(*env, field_number);
    } else {
        const auto error = std::get<cpns::DecodeError>(result);
        if (cpns::to_string(error).empty() || cpns::to_reason(error) == cpns::pb::REASON_NONE)
            fail("an untyped decode error");
    }
    return 0;
}
