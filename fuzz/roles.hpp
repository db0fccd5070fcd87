// What the role fuzz targets (fuzz_pne, fuzz_gateway, fuzz_server) and the seed generator
// (make_seeds) share: one fixed cast of entities with fixed keys, the role configurations
// built from it, and the event stream format.
//
// A fuzz input is a sequence of events for ONE role instance:
//   kMessage  peer protection len:u16 body[len]  -> decode_body(body), then on_message
//   kAdvance  delta:u16                           -> now += delta * kTick (no timer)
//   kTimer                                        -> on_timer(now) if now >= next_deadline()
//   kLink     peer kind extra...                  -> TLS / link / store callbacks (per role)
//   kCommand  kind extra...                       -> discover / start_setup / invite
// Every byte string in an event is length-prefixed; a truncated event ends the input. The
// seed generator runs all roles honestly against each other and writes, per role, exactly
// the calls that role received, so a seed replays a complete establishment and mutations
// start from a realistic state. Roles are built the same way (same seeds) here and there.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/gateway.hpp"
#include "core/pne.hpp"
#include "core/server.hpp"

namespace cpns::fuzz {

[[noreturn]] inline void fail(const char* target, const std::string& what) {
    std::fprintf(stderr, "%s: invariant broken: %s\n", target, what.c_str());
    std::abort();
}

inline const std::string kServerId = "cpns-server";
inline const std::string kGwId = "gw-1";
inline const std::string kPneA = "pne-a";  // enough UI, insecure PAN: LocalEUKey PSK-TLS
inline const std::string kPneB = "pne-b";  // no UI, insecure PAN: pre-assigned PSK-TLS
inline const std::string kPneC = "pne-c";  // secure PAN: no TLS

// The names a fuzzed event may use as a peer (an index modulo the count). Includes entities
// nobody provisioned and the broadcast address.
inline const std::vector<std::string>& peers() {
    static const std::vector<std::string> p = {kGwId,     kPneA,  kPneB,   kPneC,
                                               kServerId, "gw-2", "pne-x", "*"};
    return p;
}
inline std::uint8_t peer_index(const std::string& id) {
    const auto& p = peers();
    for (std::size_t i = 0; i < p.size(); ++i)
        if (p[i] == id) return static_cast<std::uint8_t>(i);
    std::fprintf(stderr, "fuzz roles: %s is not a peer of the cast\n", id.c_str());
    std::abort();
}

// Virtual time: a kAdvance of delta moves the clock by delta * kTick ms (u16: up to ~18 h,
// past every named timeout and kReplayMemory).
inline constexpr Millis kTick = 1'000;
inline constexpr Millis kStart = 1'000'000;
// Role randomness: DeterministicRandom(kRoleSeed + index), index 0 server, 1 gw, 2.. PNEs.
inline constexpr std::uint64_t kRoleSeed = 0xC915;
// Events a harness runs at most (a bound on the work per input besides its size).
inline constexpr std::size_t kMaxEvents = 512;

enum class Op : std::uint8_t { kMessage, kAdvance, kTimer, kLink, kCommand, kCount };
// kLink kinds. PNE: established, failed, down (peer). PN GW: established (peer, identity),
// failed (peer), down (peer, reason). Server: persisted (gw peer, pn id, reason).
enum class Link : std::uint8_t { kEstablished, kFailed, kDown, kPersisted, kCount };
// kCommand kinds. PNE: discover, start_setup (gw peer, type, invited peers). PN GW: discover,
// invite (peers), a lifecycle command on a PN it holds (PN GW: add peers, remove a peer,
// dissolve; PNE: leave).
enum class Command : std::uint8_t { kDiscover, kSetup, kInvite, kLifecycle, kCount };

struct Cast {
    SecretKey gw_eukey;
    SecretKey eukey_a, eukey_b, eukey_c;
    SecretKey preassigned_b;
    Cast() {
        DeterministicRandom keys(0xCA57);
        gw_eukey = keys.key();
        eukey_a = keys.key();
        eukey_b = keys.key();
        eukey_c = keys.key();
        preassigned_b = keys.key();
    }
};
inline const Cast& cast() {
    static const Cast c;
    return c;
}

inline pb::DeviceCapabilities caps(const std::string& type, bool enough_ui) {
    pb::DeviceCapabilities c;
    c.set_device_type(type);
    c.set_manufacturer("fuzz");
    c.set_enough_ui(enough_ui);
    c.add_pan_technologies("wifi");
    return c;
}

inline PneConfig pne_config(const std::string& id) {
    const Cast& k = cast();
    PneConfig c;
    c.pne_id = id;
    if (id == kPneA) {
        c.eukey = k.eukey_a;
        c.capabilities = caps("phone", true);
        pb::ContentInfo ci;
        ci.set_content_id("song-1");
        ci.set_media_type("audio/ogg");
        ci.set_title("Song");
        ci.set_size_bytes(4096);
        c.contents.push_back(ci);
    } else if (id == kPneB) {
        c.eukey = k.eukey_b;
        c.preassigned_key = k.preassigned_b;
        c.capabilities = caps("headset", false);
    } else {
        c.eukey = k.eukey_c;
        c.capabilities = caps("tv", true);
        c.pan_secure = true;
    }
    return c;
}

inline GatewayConfig gw_config() {
    const Cast& k = cast();
    GatewayConfig c;
    c.gw_id = kGwId;
    c.eukey = k.gw_eukey;
    c.capabilities = caps("home-gateway", true);
    c.subscription.set_subscriber_id("sub-0001");
    c.subscription.set_service_plan("cpns-basic");
    c.server_id = kServerId;
    c.pan_links[kPneB] = PanLinkConfig{k.preassigned_b, false};
    c.pan_links[kPneC] = PanLinkConfig{std::nullopt, true};
    return c;
}

inline void provision(MemoryDirectory& dir) {
    const Cast& k = cast();
    dir.add(kGwId, EntityRecord{EntityKind::kGw, k.gw_eukey, EntityStatus::kActive});
    dir.add(kPneA, EntityRecord{EntityKind::kPne, k.eukey_a, EntityStatus::kActive});
    dir.add(kPneB, EntityRecord{EntityKind::kPne, k.eukey_b, EntityStatus::kActive});
    dir.add(kPneC, EntityRecord{EntityKind::kPne, k.eukey_c, EntityStatus::kActive});
}

inline ServerConfig server_config() {
    ServerConfig c;
    c.server_id = kServerId;
    c.wall_clock_ms = [] { return std::uint64_t{1'700'000'000'000}; };
    return c;
}

// Writes events (the seed generator).
class EventWriter {
  public:
    void message(const std::string& from, const pb::Envelope& env, Protection p) {
        op(Op::kMessage);
        out_.push_back(peer_index(from));
        out_.push_back(p == Protection::kTls ? 1 : 0);
        str(env.SerializeAsString());
    }
    void advance(Millis delta_ms) {
        while (delta_ms > 0) {
            const Millis ticks = std::min<Millis>((delta_ms + kTick - 1) / kTick, 0xffff);
            op(Op::kAdvance);
            u16(static_cast<std::uint16_t>(ticks));
            delta_ms -= ticks * kTick;
        }
    }
    void timer() { op(Op::kTimer); }
    void link(Link kind, const std::string& peer) {
        op(Op::kLink);
        out_.push_back(static_cast<std::uint8_t>(kind));
        out_.push_back(peer_index(peer));
    }
    void str(const std::string& s) {
        u16(static_cast<std::uint16_t>(s.size()));
        out_.insert(out_.end(), s.begin(), s.end());
    }
    void byte(std::uint8_t b) { out_.push_back(b); }
    void command(Command kind) {
        op(Op::kCommand);
        out_.push_back(static_cast<std::uint8_t>(kind));
    }
    void peer_list(const std::vector<std::string>& ids) {
        out_.push_back(static_cast<std::uint8_t>(ids.size()));
        for (const auto& id : ids) out_.push_back(peer_index(id));
    }
    const Bytes& bytes() const { return out_; }

  private:
    void op(Op o) { out_.push_back(static_cast<std::uint8_t>(o)); }
    void u16(std::uint16_t v) {
        out_.push_back(static_cast<std::uint8_t>(v >> 8));
        out_.push_back(static_cast<std::uint8_t>(v & 0xff));
    }
    Bytes out_;
};

// Reads events (the harnesses). Every read past the end sets `done`.
class EventReader {
  public:
    explicit EventReader(std::span<const std::uint8_t> in) : in_(in) {}
    // Nothing left, or the last event was cut short (then it must not be run).
    bool done() const { return done_ || pos_ >= in_.size(); }
    bool truncated() const { return done_; }
    std::uint8_t byte() {
        if (pos_ >= in_.size()) {
            done_ = true;
            return 0;
        }
        return in_[pos_++];
    }
    std::uint16_t u16() {
        const std::uint16_t hi = byte();
        return static_cast<std::uint16_t>((hi << 8) | byte());
    }
    std::span<const std::uint8_t> bytes() {
        const std::size_t n = u16();
        if (done_ || in_.size() - pos_ < n) {
            done_ = true;
            return {};
        }
        auto s = in_.subspan(pos_, n);
        pos_ += n;
        return s;
    }
    std::string str() {
        auto b = bytes();
        return std::string(b.begin(), b.end());
    }
    const std::string& peer() { return peers()[byte() % peers().size()]; }
    std::vector<std::string> peer_list() {
        std::vector<std::string> out;
        const std::size_t n = byte() % 8;
        for (std::size_t i = 0; i < n && !done_; ++i) out.push_back(peer());
        return out;
    }
    template <class E>
    E choose() {
        return static_cast<E>(byte() % static_cast<std::uint8_t>(E::kCount));
    }
    pb::FailureReason reason() {
        const int r = byte() % 32;
        return pb::FailureReason_IsValid(r) ? static_cast<pb::FailureReason>(r) : pb::REASON_NONE;
    }

  private:
    std::span<const std::uint8_t> in_;
    std::size_t pos_ = 0;
    bool done_ = false;
};

// Checks that hold for every effect any role returns.
class EffectChecker {
  public:
    explicit EffectChecker(const char* target) : target_(target) {}
    void send(const SendEffect& s) const {
        if (s.to.empty()) fail(target_, "a send without a destination");
        if (auto e = validate(s.msg))
            fail(target_, std::string("a role sent an invalid ") +
                              std::string(message_name(s.msg)) + ": " + std::string(to_string(*e)));
        const Bytes frame = encode_frame(s.msg);
        if (frame.size() > kFrameHeaderSize + kMaxFrameSize)
            fail(target_,
                 std::string("a role sent an oversized ") + std::string(message_name(s.msg)));
    }
    void outcome(const OutcomeEffect& o) const {
        if (o.success != (o.reason == pb::REASON_NONE))
            fail(target_, "an outcome's success and reason disagree");
        if (o.pn_id.size() > kMaxIdLength) fail(target_, "an outcome for an oversized PN ID");
    }
    void key(const SecretKey& k, const char* what) const {
        if (k.is_zero()) fail(target_, std::string("an all-zero ") + what);
    }

  private:
    const char* target_;
};

}  // namespace cpns::fuzz
