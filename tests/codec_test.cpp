// Framing and decoding: every bad input is a typed error, never a crash or an exception.
#include <gtest/gtest.h>

#include <random>

#include "core/codec.hpp"
#include "core/pne.hpp"

namespace cpns {
namespace {

pb::Envelope sample_setup_request() {
    pb::Envelope env;
    env.set_sender_id("pne-1");
    auto* m = env.mutable_setup_request();
    m->set_setup_type(pb::SETUP_INVITE_LIST);
    m->add_invited_pne_ids("pne-2");
    m->add_invited_pne_ids("pne-3");
    auto* j = m->mutable_join();
    j->set_pne_id("pne-1");
    j->set_rand_pne(std::string(16, '\x07'));
    j->set_local_eukey_requested(true);
    j->mutable_capabilities()->set_device_type("headset");
    j->mutable_capabilities()->set_enough_ui(true);
    auto* c = j->add_contents();
    c->set_content_id("song-1");
    c->set_media_type("audio/mpeg");
    return env;
}

DecodeError error_of(const std::variant<pb::Envelope, DecodeError>& r) {
    EXPECT_TRUE(std::holds_alternative<DecodeError>(r));
    return std::holds_alternative<DecodeError>(r) ? std::get<DecodeError>(r)
                                                  : DecodeError::kMalformed;
}

Bytes frame_of_body(const std::string& body) {
    Bytes f(4 + body.size());
    const auto n = static_cast<std::uint32_t>(body.size());
    f[0] = static_cast<std::uint8_t>(n >> 24);
    f[1] = static_cast<std::uint8_t>(n >> 16);
    f[2] = static_cast<std::uint8_t>(n >> 8);
    f[3] = static_cast<std::uint8_t>(n);
    std::copy(body.begin(), body.end(), f.begin() + 4);
    return f;
}

TEST(Codec, RoundTripKeepsEveryField) {
    const pb::Envelope env = sample_setup_request();
    const Bytes frame = encode_frame(env);
    auto r = decode_frame(frame);
    ASSERT_TRUE(std::holds_alternative<pb::Envelope>(r));
    const auto& got = std::get<pb::Envelope>(r);
    EXPECT_EQ(got.version(), kProtocolVersion);
    EXPECT_EQ(got.setup_request().invited_pne_ids_size(), 2);
    EXPECT_EQ(got.setup_request().join().contents(0).content_id(), "song-1");
    EXPECT_EQ(message_name(got), "PnSetupRequest");
}

TEST(Codec, TruncatedFrames) {
    const Bytes frame = encode_frame(sample_setup_request());
    for (std::size_t n = 0; n < frame.size(); ++n)
        EXPECT_EQ(error_of(decode_frame(std::span(frame).first(n))), DecodeError::kTruncated) << n;
}

TEST(Codec, OversizedFrameIsRejectedFromItsHeader) {
    Bytes header = {0x00, 0x01, 0x00, 0x01};  // 65537 > kMaxFrameSize
    EXPECT_EQ(error_of(decode_frame(header)), DecodeError::kFrameTooLarge);
    FrameReader reader;
    reader.feed(header);
    auto r = reader.next();
    ASSERT_TRUE(r);
    EXPECT_EQ(error_of(*r), DecodeError::kFrameTooLarge);
    EXPECT_EQ(reader.buffered(), 0u);
    EXPECT_EQ(to_reason(DecodeError::kFrameTooLarge), pb::FRAME_TOO_LARGE);
}

TEST(Codec, EmptyAndTrailingBytes) {
    EXPECT_EQ(error_of(decode_frame(Bytes{0, 0, 0, 0})), DecodeError::kEmptyFrame);
    Bytes frame = encode_frame(sample_setup_request());
    frame.push_back(0);
    EXPECT_EQ(error_of(decode_frame(frame)), DecodeError::kMalformed);
}

TEST(Codec, GarbageIsMalformed) {
    EXPECT_EQ(error_of(decode_frame(frame_of_body("\xff\xff\xff\xff\xff"))),
              DecodeError::kMalformed);
}

TEST(Codec, VersionIsChecked) {
    pb::Envelope env = sample_setup_request();
    env.set_version(2);
    EXPECT_EQ(error_of(decode_frame(frame_of_body(env.SerializeAsString()))),
              DecodeError::kUnsupportedVersion);
    env.clear_version();
    EXPECT_EQ(error_of(decode_frame(frame_of_body(env.SerializeAsString()))),
              DecodeError::kUnsupportedVersion);
}

TEST(Codec, UnknownMessageTypeIsTyped) {
    // Field 99 of the envelope: a message type from a newer peer.
    pb::Envelope env;
    env.set_version(kProtocolVersion);
    std::string body = env.SerializeAsString();
    body += std::string("\x9a\x06\x00", 3);  // tag (99 << 3 | 2), length 0
    EXPECT_EQ(error_of(decode_frame(frame_of_body(body))), DecodeError::kUnknownMessage);
    EXPECT_EQ(to_reason(DecodeError::kUnknownMessage), pb::UNEXPECTED_MESSAGE);
}

TEST(Codec, FieldBoundsAreValidated) {
    auto expect_invalid = [](pb::Envelope env, const char* what) {
        env.set_version(kProtocolVersion);
        EXPECT_EQ(error_of(decode_frame(frame_of_body(env.SerializeAsString()))),
                  DecodeError::kInvalidField)
            << what;
    };
    {
        auto env = sample_setup_request();
        env.mutable_setup_request()->mutable_join()->set_pne_id(std::string(65, 'a'));
        expect_invalid(env, "ID too long");
    }
    {
        auto env = sample_setup_request();
        env.mutable_setup_request()->mutable_join()->set_pne_id("bad id with spaces");
        expect_invalid(env, "ID syntax");
    }
    {
        auto env = sample_setup_request();
        env.mutable_setup_request()->mutable_join()->set_rand_pne("short");
        expect_invalid(env, "rand_PNE size");
    }
    {
        auto env = sample_setup_request();
        for (int i = 0; i < 70; ++i)
            env.mutable_setup_request()->add_invited_pne_ids("p" + std::to_string(i));
        expect_invalid(env, "too many invited PNEs");
    }
    {
        pb::Envelope env;
        auto* a = env.mutable_auth_request();
        a->set_pn_id("pn-1");
        a->set_rand_server(std::string(15, 'x'));
        expect_invalid(env, "rand_server size");
    }
    {
        pb::Envelope env;
        auto* r = env.mutable_pne_auth_response();
        r->set_pn_id("pn-1");
        r->set_pne_id("pne-1");
        r->set_hash_pne(std::string(33, 'h'));
        expect_invalid(env, "hash_PNE size");
    }
}

TEST(Codec, FrameReaderHandlesAnySplit) {
    Bytes stream;
    for (int i = 0; i < 3; ++i) {
        const Bytes f = encode_frame(sample_setup_request());
        stream.insert(stream.end(), f.begin(), f.end());
    }
    for (std::size_t chunk : {1u, 3u, 7u, 64u, 1000u}) {
        FrameReader reader;
        int got = 0;
        for (std::size_t off = 0; off < stream.size(); off += chunk) {
            reader.feed(std::span(stream).subspan(off, std::min(chunk, stream.size() - off)));
            while (auto r = reader.next()) {
                ASSERT_TRUE(std::holds_alternative<pb::Envelope>(*r));
                ++got;
            }
        }
        EXPECT_EQ(got, 3) << "chunk " << chunk;
        EXPECT_EQ(reader.buffered(), 0u);
    }
}

TEST(Codec, FrameReaderStopsAfterAnError) {
    FrameReader reader;
    reader.feed(frame_of_body("\xff\xff\xff"));
    auto r = reader.next();
    ASSERT_TRUE(r);
    EXPECT_TRUE(std::holds_alternative<DecodeError>(*r));
    reader.feed(encode_frame(sample_setup_request()));
    auto again = reader.next();
    ASSERT_TRUE(again);
    EXPECT_TRUE(std::holds_alternative<DecodeError>(*again));
}

// Random mutations of valid frames of every message type: decoding never crashes or throws.
TEST(Codec, MutatedFramesNeverCrash) {
    std::vector<Bytes> seeds;
    seeds.push_back(encode_frame(sample_setup_request()));
    {
        pb::Envelope env;
        auto* r = env.mutable_registration_response();
        r->set_pn_id("pn-1");
        r->set_registered(true);
        auto* res = r->add_results();
        res->set_pne_id("pne-1");
        res->set_authenticated(true);
        res->set_hash_server_pne(std::string(32, 's'));
        auto* inv = r->mutable_inventory();
        inv->set_pn_id("pn-1");
        inv->set_gw_id("gw-1");
        inv->add_members()->set_pne_id("pne-1");
        seeds.push_back(encode_frame(env));
    }
    std::mt19937 rng(5);
    int ok = 0, bad = 0;
    for (int iter = 0; iter < 20000; ++iter) {
        Bytes f = seeds[iter % seeds.size()];
        const int flips = 1 + static_cast<int>(rng() % 4);
        for (int k = 0; k < flips; ++k)
            f[4 + rng() % (f.size() - 4)] ^= static_cast<std::uint8_t>(rng());
        auto r = decode_frame(f);
        (std::holds_alternative<pb::Envelope>(r) ? ok : bad)++;
    }
    EXPECT_GT(bad, 0);
    EXPECT_EQ(ok + bad, 20000);
}

TEST(Codec, EveryReasonHasAName) {
    for (int r = pb::FailureReason_MIN; r <= pb::FailureReason_MAX; ++r) {
        if (!pb::FailureReason_IsValid(r)) continue;
        EXPECT_NE(reason_name(static_cast<pb::FailureReason>(r)), "unknown reason") << r;
    }
}

}  // namespace
}  // namespace cpns

namespace cpns {
namespace {

// A device in many PNs still discovers and is discovered: the list is bounded by the sender
// and the receiver accepts up to that bound.
TEST(Codec, DiscoveryListsManyPnsUpToTheBound) {
    DeterministicRandom rnd(3);
    PneConfig pc;
    pc.pne_id = "pne-1";
    Pne pne(pc, rnd);
    pb::PneState st;
    st.set_pne_id("pne-1");
    for (int i = 0; i < 300; ++i) {
        auto* m = st.add_memberships();
        m->set_pn_id("pn-" + std::to_string(i));
        m->set_gw_id("gw");
        m->set_sk_pne(std::string(32, 'k'));
    }
    ASSERT_TRUE(pne.import_state(st));
    auto fx = pne.discover(0);
    ASSERT_EQ(fx.size(), 1u);
    const auto& env = std::get<SendEffect>(fx[0]).msg;
    EXPECT_EQ(static_cast<std::size_t>(env.discovery_request().pn_ids_size()), kMaxPnsListed);
    auto decoded = decode_frame(encode_frame(env));
    EXPECT_TRUE(std::holds_alternative<pb::Envelope>(decoded));
}

// Device state carries SK_PNE and LocalEUKeys in bytes fields: after a save they are zeroed
// in place, every other field left as it was.
TEST(Codec, WipeBytesFieldsZeroesEveryKeyInPlace) {
    pb::PneState st;
    st.set_pne_id("pne-1");
    for (int i = 0; i < 2; ++i) {
        auto* m = st.add_memberships();
        m->set_pn_id("pn-" + std::to_string(i));
        m->set_sk_pne(std::string(32, 'k'));
        m->set_local_eukey(std::string(32, 'l'));
    }
    const char* sk0 = st.memberships(0).sk_pne().data();
    wipe_bytes_fields(st);
    EXPECT_EQ(st.memberships(0).sk_pne().data(), sk0);  // the same buffer, overwritten
    for (const auto& m : st.memberships()) {
        EXPECT_EQ(m.sk_pne(), std::string(32, '\0'));
        EXPECT_EQ(m.local_eukey(), std::string(32, '\0'));
    }
    EXPECT_EQ(st.pne_id(), "pne-1");
    EXPECT_EQ(st.memberships(1).pn_id(), "pn-1");
}

}  // namespace
}  // namespace cpns
