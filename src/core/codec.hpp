// Framing and decoding of CPNS messages. A frame is a 4-octet big-endian length followed by
// that many octets of a serialized cpns.v1.Envelope. Decoding never throws: every bad input
// becomes a typed DecodeError.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "cpns/messages.pb.h"

namespace cpns {

namespace pb = ::cpns::v1;

inline constexpr std::uint32_t kProtocolVersion = 1;
inline constexpr std::size_t kFrameHeaderSize = 4;
inline constexpr std::size_t kMaxFrameSize = 64 * 1024;    // hard maximum body size
inline constexpr std::size_t kMaxIdLength = 64;            // PNE, PN GW and PN IDs
inline constexpr std::size_t kMaxPnesPerPn = 64;           // members of one PN
inline constexpr std::size_t kMaxPnsListed = 256;          // PN IDs in one discovery message
inline constexpr std::size_t kMaxSyncBatch = 8;            // PNs in one PnSyncRequest (< 40 KiB)
inline constexpr std::size_t kMaxDiscoveryPadding = 8192;  // padding of one discovery request
inline constexpr std::size_t kMaxContentsPerPne = 32;
inline constexpr std::size_t kMaxTextLength = 256;      // free-text capability fields
inline constexpr std::size_t kMaxPanTechnologies = 16;  // in one DeviceCapabilities
inline constexpr std::size_t kMaxServices = 32;         // in one DeviceCapabilities

enum class DecodeError {
    kTruncated,           // fewer bytes than the header or the announced length
    kEmptyFrame,          // length 0
    kFrameTooLarge,       // length over kMaxFrameSize
    kMalformed,           // not a valid Envelope
    kUnsupportedVersion,  // version != kProtocolVersion
    kUnknownMessage,      // no body we know (a newer peer's message type)
    kInvalidField,        // a field out of its bounds (ID syntax, sizes, counts)
};
std::string_view to_string(DecodeError e);
// The reason a peer is told for a decode error.
pb::FailureReason to_reason(DecodeError e);

using Bytes = std::vector<std::uint8_t>;

// Serialize and frame. The caller sets body and sender; version is filled in here (an envelope
// that already carries kProtocolVersion, as every role's messages do, is not copied).
Bytes encode_frame(const pb::Envelope& env);

// The envelope of a whole frame, or nullopt for any decode error (when the reason does not
// matter: the simulator's and the explorer's bookkeeping).
std::optional<pb::Envelope> decoded_envelope(std::span<const std::uint8_t> frame);
// Decode one whole frame (header included).
std::variant<pb::Envelope, DecodeError> decode_frame(std::span<const std::uint8_t> frame);
// Decode a body without header (length already checked by the caller).
std::variant<pb::Envelope, DecodeError> decode_body(std::span<const std::uint8_t> body);

// Checks IDs, sizes and counts of every field of a decoded envelope.
std::optional<DecodeError> validate(const pb::Envelope& env);
bool valid_id(std::string_view id);
// Untrusted text (from the network or a local client) as one printable line for logs and
// error details: printable ASCII kept, every other byte (newline, ESC, the quote ', the
// backslash, non-ASCII) shown as \xNN, at most max_shown bytes, then "...". Every string that
// did not pass valid_id() goes through this before it is logged.
std::string printable(std::string_view text, std::size_t max_shown = 64);

// Incremental decoder for a byte stream (TCP/TLS). Bounded when next() is drained after each
// feed(): it then holds at most one partial frame (<= kMaxFrameSize + header) plus the bytes
// of the last feed. After an error the stream is unusable (the connection must be closed).
class FrameReader {
  public:
    void feed(std::span<const std::uint8_t> data);
    // Next complete message, nullopt when more bytes are needed, or an error.
    std::optional<std::variant<pb::Envelope, DecodeError>> next();
    std::size_t buffered() const { return buf_.size(); }

  private:
    Bytes buf_;
    bool failed_ = false;
};

// Short name of the envelope's message for logs and traces ("PnSetupRequest").
std::string_view message_name(const pb::Envelope& env);

// The deterministic encoding of a schema message (fields in field-number order, no unknown
// fields) and its SHA-256: the join digest of what a PNE sent and the inventory digest of
// what the server registered (docs/key-schedule.md).
std::string deterministic_bytes(const google::protobuf::Message& m);
// Overwrites every `bytes` field of `m` (and of its sub-messages) with zeros in place: the
// schema keeps keys (LocalEUKeys, SK_PNE in device state) only in bytes fields.
void wipe_bytes_fields(google::protobuf::Message& m);
std::array<std::uint8_t, 32> join_digest(const pb::PneJoin& join);
std::array<std::uint8_t, 32> inventory_digest(const pb::PnInventory& inventory);
std::string_view reason_name(pb::FailureReason r);

}  // namespace cpns
