#include "core/codec.hpp"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include <algorithm>
#include <set>

#include "core/crypto.hpp"

namespace cpns {

std::string_view to_string(DecodeError e) {
    switch (e) {
        case DecodeError::kTruncated:
            return "truncated frame";
        case DecodeError::kEmptyFrame:
            return "empty frame";
        case DecodeError::kFrameTooLarge:
            return "frame too large";
        case DecodeError::kMalformed:
            return "malformed message";
        case DecodeError::kUnsupportedVersion:
            return "unsupported protocol version";
        case DecodeError::kUnknownMessage:
            return "unknown message type";
        case DecodeError::kInvalidField:
            return "invalid field";
    }
    return "unknown decode error";
}

pb::FailureReason to_reason(DecodeError e) {
    switch (e) {
        case DecodeError::kFrameTooLarge:
            return pb::FRAME_TOO_LARGE;
        case DecodeError::kUnsupportedVersion:
            return pb::UNSUPPORTED_VERSION;
        case DecodeError::kUnknownMessage:
            return pb::UNEXPECTED_MESSAGE;
        default:
            return pb::MALFORMED_MESSAGE;
    }
}

Bytes encode_frame(const pb::Envelope& env) {
    // The roles set the version when they make a message; only an envelope without it is copied.
    if (env.version() != kProtocolVersion) {
        pb::Envelope versioned = env;
        versioned.set_version(kProtocolVersion);
        return encode_frame(versioned);
    }
    const std::size_t size = env.ByteSizeLong();
    Bytes out(kFrameHeaderSize + size);
    out[0] = static_cast<std::uint8_t>(size >> 24);
    out[1] = static_cast<std::uint8_t>(size >> 16);
    out[2] = static_cast<std::uint8_t>(size >> 8);
    out[3] = static_cast<std::uint8_t>(size);
    env.SerializeWithCachedSizesToArray(out.data() + kFrameHeaderSize);
    return out;
}

namespace {

std::uint32_t read_len(std::span<const std::uint8_t> p) {
    return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
           std::uint32_t{p[3]};
}

bool valid_text(const std::string& s) {
    return s.size() <= kMaxTextLength;
}

bool valid_caps(const pb::DeviceCapabilities& c) {
    if (!valid_text(c.device_type()) || !valid_text(c.manufacturer()) || !valid_text(c.model()))
        return false;
    if (static_cast<std::size_t>(c.pan_technologies_size()) > kMaxPanTechnologies ||
        static_cast<std::size_t>(c.services_size()) > kMaxServices)
        return false;
    for (const auto& t : c.pan_technologies())
        if (!valid_text(t)) return false;
    for (const auto& t : c.services())
        if (!valid_text(t)) return false;
    return true;
}

bool valid_contents(const google::protobuf::RepeatedPtrField<pb::ContentInfo>& cs) {
    if (static_cast<std::size_t>(cs.size()) > kMaxContentsPerPne) return false;
    return std::all_of(cs.begin(), cs.end(), [](const pb::ContentInfo& c) {
        return valid_text(c.content_id()) && valid_text(c.media_type()) && valid_text(c.title());
    });
}

bool valid_opt_id(const std::string& id) {
    return id.empty() || valid_id(id);
}

bool valid_join(const pb::PneJoin& j) {
    return valid_id(j.pne_id()) && j.rand_pne().size() == 16 && valid_caps(j.capabilities()) &&
           valid_contents(j.contents());
}

bool valid_ids(const google::protobuf::RepeatedPtrField<std::string>& ids,
               std::size_t max = kMaxPnesPerPn) {
    if (static_cast<std::size_t>(ids.size()) > max) return false;
    return std::all_of(ids.begin(), ids.end(), [](const std::string& s) { return valid_id(s); });
}

bool valid_bytes(const std::string& b, std::size_t max) {
    return b.size() <= max;
}

bool valid_inventory(const pb::PnInventory& inv) {
    if (!valid_opt_id(inv.pn_id()) || !valid_opt_id(inv.gw_id())) return false;
    if (!valid_caps(inv.gw_capabilities())) return false;
    if (static_cast<std::size_t>(inv.members_size()) > kMaxPnesPerPn) return false;
    return std::all_of(inv.members().begin(), inv.members().end(), [](const pb::PnMember& m) {
        return valid_id(m.pne_id()) && valid_caps(m.capabilities()) && valid_contents(m.contents());
    });
}

bool valid_result(const pb::PnResult& r) {
    return valid_opt_id(r.pn_id()) && valid_inventory(r.inventory()) &&
           valid_bytes(r.hash_server_pne(), 32);
}

}  // namespace

bool valid_id(std::string_view id) {
    if (id.empty() || id.size() > kMaxIdLength) return false;
    return std::all_of(id.begin(), id.end(), [](char ch) {
        return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
               ch == '-' || ch == '_' || ch == '.';
    });
}

std::string printable(std::string_view text, std::size_t max_shown) {
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    out.reserve(std::min(text.size(), max_shown) + 3);
    for (std::size_t i = 0; i < text.size() && i < max_shown; ++i) {
        const auto c = static_cast<unsigned char>(text[i]);
        if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'' && c != '"') {
            out.push_back(static_cast<char>(c));
        } else {
            out += "\\x";
            out.push_back(kHex[c >> 4]);
            out.push_back(kHex[c & 0x0f]);
        }
    }
    if (text.size() > max_shown) out += "...";
    return out;
}

namespace {

// One check per message body: IDs well formed, lists and texts bounded, fixed-size fields of
// their size.
template <class Discovery>
bool valid_discovery(const Discovery& m) {
    return valid_id(m.entity_id()) && valid_ids(m.pn_ids(), kMaxPnsListed) &&
           valid_text(m.endpoint());
}

bool valid_body(const pb::PnSetupNotify& m) {
    return valid_id(m.pn_id()) && valid_opt_id(m.initiator_pne_id()) && valid_id(m.gw_id());
}

bool valid_body(const pb::PneAuthenticationRequest& m) {
    return valid_id(m.pn_id()) && m.rand_server().size() == 16 &&
           valid_bytes(m.wrapped_local_eukey(), 64) &&
           valid_bytes(m.wrapped_local_eukey_previous(), 64);
}

bool valid_body(const pb::PnRegistrationRequest& m) {
    const bool ok = valid_id(m.pn_id()) && valid_id(m.gw().gw_id()) &&
                    valid_caps(m.gw().capabilities()) && valid_ids(m.invited_pne_ids()) &&
                    static_cast<std::size_t>(m.pnes_size()) <= kMaxPnesPerPn &&
                    valid_text(m.gw().subscription().subscriber_id()) &&
                    valid_text(m.gw().subscription().service_plan()) &&
                    (m.add() || m.rekey() || m.revision() == 0) && !(m.add() && m.rekey());
    return ok && std::all_of(m.pnes().begin(), m.pnes().end(),
                             [](const auto& p) { return valid_join(p.join()); });
}

bool valid_body(const pb::AuthenticationRequest& m) {
    const bool ok = valid_id(m.pn_id()) && m.rand_server().size() == 16 && valid_ids(m.pne_ids()) &&
                    static_cast<std::size_t>(m.local_eukeys_size()) <= kMaxPnesPerPn &&
                    static_cast<std::size_t>(m.excluded_size()) <= kMaxPnesPerPn;
    return ok &&
           std::all_of(m.local_eukeys().begin(), m.local_eukeys().end(),
                       [](const auto& k) {
                           return valid_id(k.pne_id()) && valid_bytes(k.for_pne(), 64) &&
                                  valid_bytes(k.for_gw(), 64) &&
                                  valid_bytes(k.for_pne_previous(), 64) &&
                                  valid_bytes(k.for_gw_previous(), 64);
                       }) &&
           std::all_of(m.excluded().begin(), m.excluded().end(),
                       [](const auto& x) { return valid_id(x.pne_id()); });
}

bool valid_body(const pb::AuthenticationResponse& m) {
    return valid_id(m.pn_id()) && static_cast<std::size_t>(m.results_size()) <= kMaxPnesPerPn &&
           std::all_of(m.results().begin(), m.results().end(), [](const auto& r) {
               return valid_id(r.pne_id()) && valid_bytes(r.hash_pne(), 32);
           });
}

bool valid_notice(const pb::PnChangeNotice& n);

bool valid_body(const pb::PnRegistrationResponse& m) {
    return valid_id(m.pn_id()) && static_cast<std::size_t>(m.results_size()) <= kMaxPnesPerPn &&
           valid_inventory(m.inventory()) &&
           static_cast<std::size_t>(m.notices_size()) <= kMaxPnesPerPn &&
           std::all_of(m.notices().begin(), m.notices().end(),
                       [](const auto& n) { return valid_notice(n); }) &&
           std::all_of(m.results().begin(), m.results().end(), [](const auto& r) {
               return valid_id(r.pne_id()) && valid_bytes(r.hash_server_pne(), 32);
           });
}

// Lifecycle (docs/protocol.md, "PN lifecycle").
bool valid_body(const pb::PnLeaveRequest& m) {
    return valid_id(m.pn_id()) && valid_id(m.gw_id()) && m.rand_pne().size() == 16 &&
           m.proof().size() == 32;
}

bool valid_notice(const pb::PnChangeNotice& n) {
    return valid_id(n.pne_id()) && n.kind() != pb::NOTICE_UNSPECIFIED &&
           pb::NoticeKind_IsValid(n.kind()) && valid_id(n.inventory().pn_id()) &&
           valid_id(n.inventory().gw_id()) && valid_inventory(n.inventory()) &&
           (n.rand_pne().empty() || n.rand_pne().size() == 16) && n.proof().size() == 32;
}

bool valid_body(const pb::PnLeaveResponse& m) {
    return valid_id(m.pn_id()) && (!m.has_notice() || valid_notice(m.notice()));
}

bool valid_body(const pb::PnChangeRequest& m) {
    // CHANGE_REKEY: the server's order to a PN GW (cpnsctl rekey), naming the PNE.
    const bool needs_pne =
        m.op() == pb::CHANGE_LEAVE || m.op() == pb::CHANGE_REMOVE || m.op() == pb::CHANGE_REKEY;
    return valid_id(m.pn_id()) && m.op() != pb::CHANGE_UNSPECIFIED && m.op() != pb::CHANGE_ADD &&
           m.op() != pb::CHANGE_SYNC && pb::ChangeOp_IsValid(m.op()) &&
           (needs_pne ? valid_id(m.pne_id()) : m.pne_id().empty()) &&
           (m.op() == pb::CHANGE_LEAVE ? m.has_leave() && valid_body(m.leave()) : !m.has_leave());
}

bool valid_body(const pb::PnChangeResponse& m) {
    return valid_id(m.pn_id()) && pb::ChangeOp_IsValid(m.op()) && valid_opt_id(m.pne_id()) &&
           valid_inventory(m.inventory()) &&
           static_cast<std::size_t>(m.notices_size()) <= kMaxPnesPerPn &&
           std::all_of(m.notices().begin(), m.notices().end(),
                       [](const auto& n) { return valid_notice(n); });
}

// Resynchronisation: at most kMaxSyncBatch PNs, each named once, with valid member lists.
bool valid_body(const pb::PnSyncRequest& m) {
    if (m.pns_size() == 0 || static_cast<std::size_t>(m.pns_size()) > kMaxSyncBatch) return false;
    std::set<std::string> seen;
    return std::all_of(m.pns().begin(), m.pns().end(), [&](const pb::PnHeld& p) {
        return valid_id(p.pn_id()) && seen.insert(p.pn_id()).second && valid_ids(p.pne_ids());
    });
}

bool valid_body(const pb::Envelope& env) {
    using B = pb::Envelope::BodyCase;
    switch (env.body_case()) {
        case B::kDiscoveryRequest:
            return valid_discovery(env.discovery_request()) &&
                   env.discovery_request().padding().size() <= kMaxDiscoveryPadding;
        case B::kDiscoveryResponse:
            return valid_discovery(env.discovery_response());
        case B::kSetupRequest:
            return valid_join(env.setup_request().join()) &&
                   valid_ids(env.setup_request().invited_pne_ids());
        case B::kSetupInvite:
            return valid_id(env.setup_invite().pn_id()) && valid_id(env.setup_invite().gw_id());
        case B::kSetupNotify:
            return valid_body(env.setup_notify());
        case B::kSetupNotifyResponse:
            return valid_id(env.setup_notify_response().pn_id()) &&
                   (!env.setup_notify_response().accept() ||
                    valid_join(env.setup_notify_response().join()));
        case B::kPneAuthRequest:
            return valid_body(env.pne_auth_request());
        case B::kPneAuthResponse:
            return valid_id(env.pne_auth_response().pn_id()) &&
                   valid_id(env.pne_auth_response().pne_id()) &&
                   valid_bytes(env.pne_auth_response().hash_pne(), 32);
        case B::kSetupResponse:
            return valid_result(env.setup_response().result());
        case B::kEstablishmentNotify:
            return valid_result(env.establishment_notify().result());
        case B::kRegistrationRequest:
            return valid_body(env.registration_request());
        case B::kAuthRequest:
            return valid_body(env.auth_request());
        case B::kAuthResponse:
            return valid_body(env.auth_response());
        case B::kRegistrationResponse:
            return valid_body(env.registration_response());
        case B::kError:
            return valid_opt_id(env.error().pn_id()) && valid_text(env.error().detail());
        case B::kLeaveRequest:
            return valid_body(env.leave_request());
        case B::kLeaveResponse:
            return valid_body(env.leave_response());
        case B::kChangeNotify:
            return valid_notice(env.change_notify().notice());
        case B::kChangeNotifyAck:
            return valid_id(env.change_notify_ack().pn_id());
        case B::kChangeRequest:
            return valid_body(env.change_request());
        case B::kChangeResponse:
            return valid_body(env.change_response());
        case B::kSyncRequest:
            return valid_body(env.sync_request());
        case B::BODY_NOT_SET:
            return false;
    }
    return false;
}

}  // namespace

std::optional<DecodeError> validate(const pb::Envelope& env) {
    if (env.body_case() == pb::Envelope::BODY_NOT_SET) return DecodeError::kUnknownMessage;
    if (!valid_opt_id(env.sender_id()) || !valid_body(env)) return DecodeError::kInvalidField;
    return std::nullopt;
}

namespace {
// Protobuf logs parse problems (invalid UTF-8 in a string field) to stderr itself; every such
// input already comes back as a typed DecodeError, so its own log line is only noise.
google::protobuf::LogHandler* g_previous_log = nullptr;
void quiet_protobuf_log(google::protobuf::LogLevel level, const char* file, int line,
                        const std::string& message) {
    if (level >= google::protobuf::LOGLEVEL_FATAL && g_previous_log)
        g_previous_log(level, file, line, message);
}
const bool kQuietProtobuf = [] {
    g_previous_log = google::protobuf::SetLogHandler(&quiet_protobuf_log);
    return true;
}();
}  // namespace

std::variant<pb::Envelope, DecodeError> decode_body(std::span<const std::uint8_t> body) {
    (void)kQuietProtobuf;
    if (body.empty()) return DecodeError::kEmptyFrame;
    if (body.size() > kMaxFrameSize) return DecodeError::kFrameTooLarge;
    pb::Envelope env;
    if (!env.ParseFromArray(body.data(), static_cast<int>(body.size())))
        return DecodeError::kMalformed;
    if (env.version() != kProtocolVersion) return DecodeError::kUnsupportedVersion;
    if (auto err = validate(env)) return *err;
    return env;
}

std::variant<pb::Envelope, DecodeError> decode_frame(std::span<const std::uint8_t> frame) {
    if (frame.size() < kFrameHeaderSize) return DecodeError::kTruncated;
    const std::uint32_t len = read_len(frame);
    if (len > kMaxFrameSize) return DecodeError::kFrameTooLarge;
    if (len == 0) return DecodeError::kEmptyFrame;
    if (frame.size() - kFrameHeaderSize < len) return DecodeError::kTruncated;
    if (frame.size() - kFrameHeaderSize > len) return DecodeError::kMalformed;  // trailing bytes
    return decode_body(frame.subspan(kFrameHeaderSize, len));
}

void FrameReader::feed(std::span<const std::uint8_t> data) {
    if (failed_) return;
    buf_.insert(buf_.end(), data.begin(), data.end());
}

std::optional<std::variant<pb::Envelope, DecodeError>> FrameReader::next() {
    if (failed_) return std::variant<pb::Envelope, DecodeError>{DecodeError::kMalformed};
    if (buf_.size() < kFrameHeaderSize) return std::nullopt;
    const std::uint32_t len = read_len(buf_);
    if (len > kMaxFrameSize || len == 0) {
        failed_ = true;
        buf_.clear();
        return std::variant<pb::Envelope, DecodeError>{len == 0 ? DecodeError::kEmptyFrame
                                                                : DecodeError::kFrameTooLarge};
    }
    if (buf_.size() - kFrameHeaderSize < len) return std::nullopt;
    auto result = decode_body(std::span(buf_).subspan(kFrameHeaderSize, len));
    buf_.erase(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(kFrameHeaderSize + len));
    if (std::holds_alternative<DecodeError>(result)) {
        failed_ = true;
        buf_.clear();
    }
    return result;
}

std::string_view message_name(const pb::Envelope& env) {
    using B = pb::Envelope::BodyCase;
    switch (env.body_case()) {
        case B::kDiscoveryRequest:
            return "EntityDiscoveryRequest";
        case B::kDiscoveryResponse:
            return "EntityDiscoveryResponse";
        case B::kSetupRequest:
            return "PnSetupRequest";
        case B::kSetupInvite:
            return "PnSetupInvite";
        case B::kSetupNotify:
            return "PnSetupNotify";
        case B::kSetupNotifyResponse:
            return "PnSetupNotifyResponse";
        case B::kPneAuthRequest:
            return "PneAuthenticationRequest";
        case B::kPneAuthResponse:
            return "PneAuthenticationResponse";
        case B::kSetupResponse:
            return "PnSetupResponse";
        case B::kEstablishmentNotify:
            return "PnEstablishmentNotify";
        case B::kRegistrationRequest:
            return "PnRegistrationRequest";
        case B::kAuthRequest:
            return "AuthenticationRequest";
        case B::kAuthResponse:
            return "AuthenticationResponse";
        case B::kRegistrationResponse:
            return "PnRegistrationResponse";
        case B::kError:
            return "ErrorReport";
        case B::kLeaveRequest:
            return "PnLeaveRequest";
        case B::kLeaveResponse:
            return "PnLeaveResponse";
        case B::kChangeNotify:
            return "PnChangeNotify";
        case B::kChangeNotifyAck:
            return "PnChangeNotifyAck";
        case B::kChangeRequest:
            return "PnChangeRequest";
        case B::kChangeResponse:
            return "PnChangeResponse";
        case B::kSyncRequest:
            return "PnSyncRequest";
        case B::BODY_NOT_SET:
            break;
    }
    return "Unknown";
}

std::string_view reason_name(pb::FailureReason r) {
    switch (r) {
        case pb::REASON_NONE:
            return "none";
        case pb::AUTHENTICATION_FAILED:
            return "authentication failed";
        case pb::SERVER_AUTHENTICATION_FAILED:
            return "server authentication failed";
        case pb::TIMEOUT:
            return "timeout";
        case pb::DECLINED:
            return "declined";
        case pb::UNKNOWN_ENTITY:
            return "unknown entity";
        case pb::REVOKED:
            return "revoked";
        case pb::TLS_HANDSHAKE_FAILED:
            return "tls handshake failed";
        case pb::TLS_REQUIRED:
            return "tls required";
        case pb::KEY_UNWRAP_FAILED:
            return "key unwrap failed";
        case pb::MALFORMED_MESSAGE:
            return "malformed message";
        case pb::UNSUPPORTED_VERSION:
            return "unsupported version";
        case pb::UNEXPECTED_MESSAGE:
            return "unexpected message";
        case pb::NO_PNE_AUTHENTICATED:
            return "no pne authenticated";
        case pb::LIMIT_EXCEEDED:
            return "limit exceeded";
        case pb::NOT_INVITED:
            return "not invited";
        case pb::BUSY:
            return "busy";
        case pb::GATEWAY_AUTHENTICATION_FAILED:
            return "gateway authentication failed";
        case pb::PEER_UNREACHABLE:
            return "peer unreachable";
        case pb::INTERNAL_ERROR:
            return "internal error";
        case pb::FRAME_TOO_LARGE:
            return "frame too large";
        case pb::DUPLICATE_PN:
            return "duplicate pn";
        case pb::REPLAYED:
            return "replayed";
        case pb::INITIATOR_NOT_AUTHENTICATED:
            return "initiator not authenticated";
        case pb::SETUP_VIOLATION:
            return "setup violation";
        case pb::STORE_UNAVAILABLE:
            return "store unavailable";
        case pb::STORAGE_FULL:
            return "storage full";
        case pb::KEY_EXPIRED:
            return "key expired";
        case pb::UNKNOWN_PN:
            return "unknown pn";
        case pb::NOT_A_MEMBER:
            return "not a member";
        case pb::STALE_REVISION:
            return "stale revision";
        case pb::ALREADY_A_MEMBER:
            return "already a member";
        case pb::NO_LOCAL_EUKEY:
            return "no local eukey";
        default:
            break;
    }
    return "unknown reason";
}

std::string deterministic_bytes(const google::protobuf::Message& m) {
    std::string out;
    {
        google::protobuf::io::StringOutputStream raw(&out);
        google::protobuf::io::CodedOutputStream coded(&raw);
        coded.SetSerializationDeterministic(true);
        (void)m.ByteSizeLong();  // caches the sizes SerializeWithCachedSizes uses
        m.SerializeWithCachedSizes(&coded);
    }
    return out;
}

std::array<std::uint8_t, 32> join_digest(const pb::PneJoin& join) {
    return sha256(as_bytes(deterministic_bytes(join)));
}

std::array<std::uint8_t, 32> inventory_digest(const pb::PnInventory& inventory) {
    return sha256(as_bytes(deterministic_bytes(inventory)));
}

void wipe_bytes_fields(google::protobuf::Message& m) {
    const auto* d = m.GetDescriptor();
    const auto* r = m.GetReflection();
    using FD = google::protobuf::FieldDescriptor;
    for (int i = 0; i < d->field_count(); ++i) {
        const FD* f = d->field(i);
        if (f->type() == FD::TYPE_BYTES) {
            const int n = f->is_repeated() ? r->FieldSize(m, f) : (r->HasField(m, f) ? 1 : 0);
            for (int j = 0; j < n; ++j) {
                std::string scratch;
                const std::string& v = f->is_repeated()
                                           ? r->GetRepeatedStringReference(m, f, j, &scratch)
                                           : r->GetStringReference(m, f, &scratch);
                // The reference is to the field's own buffer (not scratch) for bytes fields.
                wipe(const_cast<char*>(v.data()), v.size());
            }
        } else if (f->type() == FD::TYPE_MESSAGE) {
            if (f->is_repeated()) {
                for (int j = 0; j < r->FieldSize(m, f); ++j)
                    wipe_bytes_fields(*r->MutableRepeatedMessage(&m, f, j));
            } else if (r->HasField(m, f)) {
                wipe_bytes_fields(*r->MutableMessage(&m, f));
            }
        }
    }
}

std::optional<pb::Envelope> decoded_envelope(std::span<const std::uint8_t> frame) {
    auto d = decode_frame(frame);
    if (auto* env = std::get_if<pb::Envelope>(&d)) return std::move(*env);
    return std::nullopt;
}

}  // namespace cpns
