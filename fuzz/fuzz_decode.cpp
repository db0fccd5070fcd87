// libFuzzer target for the CPNS codec (src/core/codec.hpp).
//
// Every input is used three ways:
//  1. as one whole frame for decode_frame(), and as a bare body for decode_body();
//  2. as a byte stream fed to a FrameReader in chunks of pseudo-random sizes (seeded from the
//     input, so a crash reproduces), checked against decoding the same stream frame by frame
//     with decode_frame(): same messages, same first error, nothing buffered beyond one frame,
//     and the reader stays failed after an error;
//  3. every envelope that decodes is re-encoded with encode_frame(); that frame must decode
//     again to the same message, and re-encoding the result must give the same bytes.
// A broken property aborts with a message on stderr, which libFuzzer reports as a crash.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "core/codec.hpp"

namespace {

using cpns::DecodeError;
using cpns::pb::Envelope;
using Result = std::variant<Envelope, DecodeError>;
using Input = std::span<const std::uint8_t>;

[[noreturn]] void fail(const char* what) {
    std::fprintf(stderr, "cpns-fuzz-decode: property broken: %s\n", what);
    std::abort();
}

void check(bool condition, const char* what) {
    if (!condition) fail(what);
}

// Touches everything a caller does with an error: the reason must be printable and mappable.
void check_error(DecodeError error) {
    check(!cpns::to_string(error).empty(), "DecodeError without a description");
    check(cpns::to_reason(error) != cpns::pb::REASON_NONE, "DecodeError maps to no reason");
}

// Property 3: encode -> decode -> encode is stable for every envelope the codec accepted.
void check_round_trip(const Envelope& env) {
    check(!cpns::validate(env).has_value(), "a decoded envelope does not validate");
    check(cpns::message_name(env) != "Unknown", "a decoded envelope has no known body");

    const cpns::Bytes frame = cpns::encode_frame(env);
    check(frame.size() > cpns::kFrameHeaderSize, "encode_frame produced no body");
    const Result again = cpns::decode_frame(frame);
    if (frame.size() - cpns::kFrameHeaderSize > cpns::kMaxFrameSize) {
        // Re-encoding may legitimately grow a body (e.g. a negative enum sent as a 5-octet
        // varint comes back as 10 octets); then the hard maximum must still be enforced.
        check(std::holds_alternative<DecodeError>(again) &&
                  std::get<DecodeError>(again) == DecodeError::kFrameTooLarge,
              "an oversized re-encoded frame was not refused as too large");
        return;
    }
    if (const auto* error = std::get_if<DecodeError>(&again)) {
        std::fprintf(stderr, "cpns-fuzz-decode: re-encoded %s fails with: %.*s\n",
                     std::string(cpns::message_name(env)).c_str(),
                     static_cast<int>(cpns::to_string(*error).size()),
                     cpns::to_string(*error).data());
        fail("a re-encoded envelope does not decode");
    }
    const Envelope& env2 = std::get<Envelope>(again);
    check(env2.body_case() == env.body_case(), "round trip changed the message type");
    check(env2.sender_id() == env.sender_id(), "round trip changed the sender");
    check(cpns::encode_frame(env2) == frame, "re-encoding a decoded frame is not stable");
}

void use(const Result& result) {
    if (const auto* env = std::get_if<Envelope>(&result))
        check_round_trip(*env);
    else
        check_error(std::get<DecodeError>(result));
}

bool same(const Result& a, const Result& b) {
    if (a.index() != b.index()) return false;
    if (const auto* ea = std::get_if<DecodeError>(&a)) return *ea == std::get<DecodeError>(b);
    return std::get<Envelope>(a).SerializeAsString() == std::get<Envelope>(b).SerializeAsString();
}

std::uint32_t frame_length(Input p) {
    return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
           std::uint32_t{p[3]};
}

// The reference for property 2: the stream cut into frames by hand, each decoded whole.
std::vector<Result> decode_stream_by_frames(Input data) {
    std::vector<Result> out;
    std::size_t pos = 0;
    while (data.size() - pos >= cpns::kFrameHeaderSize) {
        const std::uint32_t len = frame_length(data.subspan(pos));
        if (len == 0) {
            out.emplace_back(DecodeError::kEmptyFrame);
            break;
        }
        if (len > cpns::kMaxFrameSize) {
            out.emplace_back(DecodeError::kFrameTooLarge);
            break;
        }
        if (data.size() - pos - cpns::kFrameHeaderSize < len) break;  // incomplete last frame
        out.push_back(cpns::decode_frame(data.subspan(pos, cpns::kFrameHeaderSize + len)));
        pos += cpns::kFrameHeaderSize + len;
        if (std::holds_alternative<DecodeError>(out.back())) break;
    }
    return out;
}

// splitmix64: chunk sizes that depend only on the input.
class ChunkSizes {
  public:
    explicit ChunkSizes(Input data) {
        state_ = 0xcbf29ce484222325ULL;  // FNV-1a over the input
        for (const std::uint8_t b : data) state_ = (state_ ^ b) * 0x100000001b3ULL;
    }
    std::size_t next() {
        const std::uint64_t r = mix();
        switch (r & 3U) {
            case 0:
            case 1:
                return 1 + static_cast<std::size_t>((r >> 8) % 8);  // header-splitting
            case 2:
                return 1 + static_cast<std::size_t>((r >> 8) % 64);  // typical segments
            default:
                return 1 + static_cast<std::size_t>((r >> 8) % 4096);  // large reads
        }
    }

  private:
    std::uint64_t mix() {
        std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
    }
    std::uint64_t state_;
};

// Property 2.
void check_reader(Input data) {
    const std::vector<Result> expected = decode_stream_by_frames(data);

    cpns::FrameReader reader;
    std::vector<Result> got;
    ChunkSizes chunks(data);
    bool failed = false;
    std::size_t pos = 0;
    while (pos < data.size() && !failed) {
        const std::size_t n = std::min(chunks.next(), data.size() - pos);
        reader.feed(data.subspan(pos, n));
        pos += n;
        while (std::optional<Result> r = reader.next()) {
            got.push_back(std::move(*r));
            if (std::holds_alternative<DecodeError>(got.back())) {
                failed = true;
                break;
            }
        }
        check(reader.buffered() < cpns::kFrameHeaderSize + cpns::kMaxFrameSize,
              "FrameReader buffers more than one frame");
    }

    check(got.size() == expected.size(), "FrameReader and decode_frame see different frames");
    for (std::size_t i = 0; i < got.size(); ++i) {
        check(same(got[i], expected[i]), "FrameReader and decode_frame disagree on a frame");
        use(got[i]);
    }
    if (failed) {
        // After an error the stream is dead: more bytes are ignored, next() keeps failing.
        static constexpr std::uint8_t kMore[] = {0, 0, 0, 1, 0};
        reader.feed(kMore);
        check(reader.buffered() == 0, "a failed FrameReader buffered more bytes");
        const std::optional<Result> r = reader.next();
        check(r.has_value() && std::holds_alternative<DecodeError>(*r),
              "a failed FrameReader recovered");
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const Input input(data, size);
    use(cpns::decode_frame(input));  // property 1 (and 3 when it decodes)
    use(cpns::decode_body(input));
    check_reader(input);
    return 0;
}
