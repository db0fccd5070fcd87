// Tests of the key schedule (src/core/crypto.hpp): known answers for the primitives, the KDF
// encoding, key handling, and the binding of every input into every derived value.
#include "core/crypto.hpp"

#include <gtest/gtest.h>

#include "core/codec.hpp"
#include "cpns/messages.pb.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace cpns {
namespace {

// rand_PNE bound into each KEK by the tests that do not vary it.
const Bytes kRandPne(kRandSize, 0xa7);

Bytes hex(std::string_view h) {
    std::optional<Bytes> b = from_hex(h);
    if (!b) throw std::invalid_argument("bad hex in test");
    return *b;
}

Bytes repeat(std::uint8_t value, std::size_t n) {
    return Bytes(n, value);
}

Bytes ascii(std::string_view s) {
    const ByteView v = as_bytes(s);
    return Bytes(v.begin(), v.end());
}

SecretKey key_counting_from(std::uint8_t first) {
    Bytes raw(kKeySize);
    for (std::size_t i = 0; i < raw.size(); ++i) raw[i] = static_cast<std::uint8_t>(first + i);
    return SecretKey(raw);
}

std::string hex_of(const std::array<std::uint8_t, 32>& a) {
    return to_hex(a);
}

// --- RFC 4231: HMAC-SHA-256 ------------------------------------------------------------------

struct HmacCase {
    const char* name;
    Bytes key;
    Bytes data;
    const char* mac;
};

TEST(HmacSha256, Rfc4231KnownAnswers) {
    Bytes key4;
    for (std::uint8_t i = 1; i <= 25; ++i) key4.push_back(i);
    const std::vector<HmacCase> cases = {
        {"case 1", repeat(0x0b, 20), ascii("Hi There"),
         "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"},
        {"case 2", ascii("Jefe"), ascii("what do ya want for nothing?"),
         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
        {"case 3", repeat(0xaa, 20), repeat(0xdd, 50),
         "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"},
        {"case 4", key4, repeat(0xcd, 50),
         "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"},
        {"case 6", repeat(0xaa, 131),
         ascii("Test Using Larger Than Block-Size Key - Hash Key First"),
         "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"},
        {"case 7", repeat(0xaa, 131),
         ascii("This is a test using a larger than block-size key and a larger than block-size "
               "data. The key needs to be hashed before being used by the HMAC algorithm."),
         "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"},
    };
    for (const HmacCase& c : cases) {
        EXPECT_EQ(hex_of(hmac_sha256(c.key, c.data)), c.mac) << c.name;
    }
}

TEST(HmacSha256, EmptyKeyAndDataAreValid) {
    // HMAC-SHA-256 with an empty key: the key is all zero padding, not "the previous key".
    const auto first = hmac_sha256(repeat(0x01, 32), ascii("abc"));
    EXPECT_EQ(hex_of(hmac_sha256({}, ascii("abc"))),
              "fd7adb152c05ef80dccf50a1fa4c05d5a3ec6da95575fc312ae7c5d091836351");
    EXPECT_NE(hmac_sha256({}, ascii("abc")), first);
    EXPECT_EQ(hex_of(hmac_sha256({}, {})),
              "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad");
}

TEST(HmacSha256, RepeatedCallsWithDifferentKeysAreIndependent) {
    const Bytes data = ascii("Hi There");
    const auto a1 = hmac_sha256(repeat(0x0b, 20), data);
    const auto b = hmac_sha256(ascii("Jefe"), data);
    const auto a2 = hmac_sha256(repeat(0x0b, 20), data);
    EXPECT_EQ(a1, a2);
    EXPECT_NE(a1, b);
}

TEST(HmacSha256, PerThreadContextsAgree) {
    const Bytes key = repeat(0x0b, 20);
    const Bytes data = ascii("Hi There");
    const auto expected = hmac_sha256(key, data);
    std::vector<int> mismatches(4, 0);
    std::vector<std::thread> threads;
    for (std::size_t t = 0; t < mismatches.size(); ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < 200; ++i) {
                if (hmac_sha256(key, data) != expected) ++mismatches[t];
            }
        });
    }
    for (std::thread& th : threads) th.join();
    EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

// --- RFC 5649: AES key wrap with padding ----------------------------------------------------

TEST(AesKwp, Rfc5649Section6KnownAnswers) {
    const Bytes kek = hex("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8");
    struct Case {
        const char* key;
        const char* wrapped;
    };
    const Case cases[] = {
        {"c37b7e6492584340bed12207808941155068f738",
         "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a"},
        {"466f7250617369", "afbeb0f07dfbf5419200f2ccb50bb24f"},
    };
    for (const Case& c : cases) {
        const std::optional<Bytes> wrapped = detail::aes_kwp_wrap(kek, hex(c.key));
        ASSERT_TRUE(wrapped.has_value()) << c.key;
        EXPECT_EQ(to_hex(*wrapped), c.wrapped);
        const std::optional<Bytes> plain = detail::aes_kwp_unwrap(kek, hex(c.wrapped));
        ASSERT_TRUE(plain.has_value()) << c.wrapped;
        EXPECT_EQ(to_hex(*plain), c.key);
    }
}

TEST(AesKwp, RawHelperRejectsBadInput) {
    const Bytes kek = repeat(0x11, 32);
    EXPECT_FALSE(detail::aes_kwp_wrap(repeat(0x11, 20), repeat(0x22, 32)).has_value());
    EXPECT_FALSE(detail::aes_kwp_wrap(kek, {}).has_value());
    EXPECT_FALSE(detail::aes_kwp_unwrap(kek, repeat(0, 8)).has_value());
    EXPECT_FALSE(detail::aes_kwp_unwrap(kek, repeat(0, 41)).has_value());
    EXPECT_FALSE(detail::aes_kwp_unwrap(kek, repeat(0, 40)).has_value());
    // A one-block plaintext wraps to a single 16-byte block (RFC 5649 section 4.1).
    const std::optional<Bytes> small = detail::aes_kwp_wrap(kek, hex("0102030405"));
    ASSERT_TRUE(small.has_value());
    EXPECT_EQ(small->size(), 16u);
    const std::optional<Bytes> back = detail::aes_kwp_unwrap(kek, *small);
    ASSERT_TRUE(back.has_value());
    EXPECT_EQ(to_hex(*back), "0102030405");
}

TEST(KeyWrap, RoundTripIsFortyBytes) {
    const SecretKey kek = key_counting_from(0x40);
    const SecretKey key = key_counting_from(0x80);
    const Bytes wrapped = wrap_key(kek, key);
    EXPECT_EQ(wrapped.size(), kWrappedKeySize);
    EXPECT_EQ(wrap_key(kek, key), wrapped);  // deterministic
    const std::optional<SecretKey> back = unwrap_key(kek, wrapped);
    ASSERT_TRUE(back.has_value());
    EXPECT_TRUE(*back == key);
    // The raw helper agrees with the 256-bit wrapper.
    const std::optional<Bytes> raw = detail::aes_kwp_wrap(kek.view(), key.view());
    ASSERT_TRUE(raw.has_value());
    EXPECT_EQ(*raw, wrapped);
}

TEST(KeyWrap, EveryAlteredBitIsDetected) {
    const SecretKey kek = key_counting_from(0x40);
    const Bytes wrapped = wrap_key(kek, key_counting_from(0x80));
    for (std::size_t i = 0; i < wrapped.size(); ++i) {
        for (int bit = 0; bit < 8; ++bit) {
            Bytes tampered = wrapped;
            tampered[i] = static_cast<std::uint8_t>(tampered[i] ^ (1u << bit));
            EXPECT_FALSE(unwrap_key(kek, tampered).has_value()) << "byte " << i << " bit " << bit;
        }
    }
}

TEST(KeyWrap, WrongKekAndWrongLengthAreRejected) {
    const SecretKey kek = key_counting_from(0x40);
    const Bytes wrapped = wrap_key(kek, key_counting_from(0x80));
    EXPECT_FALSE(unwrap_key(key_counting_from(0x41), wrapped).has_value());
    EXPECT_FALSE(unwrap_key(SecretKey{}, wrapped).has_value());
    EXPECT_FALSE(unwrap_key(kek, ByteView{wrapped}.first(32)).has_value());
    Bytes longer = wrapped;
    longer.resize(48, 0);
    EXPECT_FALSE(unwrap_key(kek, longer).has_value());
    EXPECT_FALSE(unwrap_key(kek, {}).has_value());
}

TEST(KeyWrap, ValidWrapOfAShorterKeyIsRejected) {
    // 25 bytes pad to 32 and wrap to 40 bytes, a length unwrap_key accepts; the integrity check
    // passes, so the length check inside unwrap_key has to refuse it.
    const SecretKey kek = key_counting_from(0x40);
    const std::optional<Bytes> wrapped = detail::aes_kwp_wrap(kek.view(), repeat(0x5a, 25));
    ASSERT_TRUE(wrapped.has_value());
    ASSERT_EQ(wrapped->size(), kWrappedKeySize);
    EXPECT_TRUE(detail::aes_kwp_unwrap(kek.view(), *wrapped).has_value());
    EXPECT_FALSE(unwrap_key(kek, *wrapped).has_value());
}

// --- The KDF encoding ------------------------------------------------------------------------

TEST(Kdf, EncodingIsFcThenEachParameterFollowedByItsLength) {
    const SecretKey key = key_counting_from(0x00);
    const Bytes p0 = ascii("abc");
    const Bytes p1;  // an empty parameter still contributes its length 0x0000
    const Bytes p2 = repeat(0x7e, 300);
    Bytes s = {0x54};
    s.insert(s.end(), p0.begin(), p0.end());
    s.insert(s.end(), {0x00, 0x03});
    s.insert(s.end(), {0x00, 0x00});
    s.insert(s.end(), p2.begin(), p2.end());
    s.insert(s.end(), {0x01, 0x2c});
    EXPECT_EQ(kdf(key, Fc::kKek, {p0, p1, p2}), hmac_sha256(key.view(), s));
    // No parameters at all: S = FC.
    const Bytes fc_only = {0x55};
    EXPECT_EQ(kdf(key, Fc::kGwServerPsk, {}), hmac_sha256(key.view(), fc_only));
}

TEST(Kdf, FcSeparatesPurposes) {
    const SecretKey key = key_counting_from(0x00);
    const Bytes p = ascii("same input");
    std::set<std::string> outputs;
    for (Fc fc : {Fc::kSkPne, Fc::kHashPne, Fc::kHashServerPne, Fc::kKek, Fc::kGwServerPsk}) {
        outputs.insert(hex_of(kdf(key, fc, {p})));
    }
    EXPECT_EQ(outputs.size(), 5u);
}

TEST(Kdf, LengthFieldsPreventAmbiguity) {
    const SecretKey key = key_counting_from(0x00);
    EXPECT_NE(kdf(key, Fc::kKek, {ascii("ab"), ascii("c")}),
              kdf(key, Fc::kKek, {ascii("a"), ascii("bc")}));
    EXPECT_NE(kdf(key, Fc::kKek, {ascii("abc")}), kdf(key, Fc::kKek, {ascii("abc"), Bytes{}}));
}

TEST(Kdf, ParameterLongerThan65535BytesThrows) {
    const SecretKey key = key_counting_from(0x00);
    const Bytes max(65535, 0x01);
    const Bytes too_long(65536, 0x01);
    EXPECT_NO_THROW(kdf(key, Fc::kSkPne, {max}));
    EXPECT_THROW(kdf(key, Fc::kSkPne, {ascii("ok"), too_long}), std::invalid_argument);
    PneContext ctx;
    ctx.pne_id = std::string(65536, 'x');
    EXPECT_THROW(derive_sk_pne(key, repeat(1, 16), repeat(2, 16), ctx), std::invalid_argument);
    EXPECT_THROW(derive_gw_server_psk(key, std::string(65536, 'g')), std::invalid_argument);
}

// --- KeyedHmac: the key set up once, the same results as the one-shot calls ----------------

TEST(KeyedHmac, EveryUseGivesTheOneShotResult) {
    const SecretKey key = key_counting_from(0x00);
    KeyedHmac keyed(key);
    // Several uses of one keyed state, with inputs of different lengths (on both sides of the
    // 64-byte block and of the KDF's stack buffer), each equal to a fresh one-shot HMAC: no use
    // leaks into the next.
    for (const std::size_t n : {0, 1, 55, 64, 65, 300, 511, 512, 2000}) {
        const Bytes data = repeat(static_cast<std::uint8_t>(n), n);
        EXPECT_EQ(keyed.mac({data}), hmac_sha256(key.view(), data)) << n << " bytes";
    }
    // Pieces are concatenated.
    EXPECT_EQ(keyed.mac({ascii("ab"), Bytes{}, ascii("c")}), hmac_sha256(key.view(), ascii("abc")));
}

TEST(KeyedHmac, KdfAndDerivationsAgreeWithTheOneShotForms) {
    const SecretKey eukey = key_counting_from(0x20);
    KeyedHmac keyed(eukey);
    const Bytes big(1000, 0x42);  // past the stack buffer: the heap path
    EXPECT_EQ(kdf(keyed, Fc::kKek, {ascii("abc"), Bytes{}, big}),
              kdf(eukey, Fc::kKek, {ascii("abc"), Bytes{}, big}));
    EXPECT_EQ(kdf(keyed, Fc::kGwServerPsk, {}), kdf(eukey, Fc::kGwServerPsk, {}));
    PneContext ctx;
    ctx.pne_id = "pne-1";
    ctx.gw_id = "gw-1";
    ctx.pn_id = "pn-1";
    ctx.invited = {"pne-2", "pne-3"};
    ctx.join_digest.fill(0xd4);
    ctx.inventory_digest.fill(0xe5);
    const Bytes rp = repeat(0xa1, kRandSize);
    const Bytes rs = repeat(0xb2, kRandSize);
    const SecretKey sk = derive_sk_pne(keyed, rp, rs, ctx);
    EXPECT_EQ(sk, derive_sk_pne(eukey, rp, rs, ctx));
    const Hash h = derive_hash_pne(keyed, rp, rs, sk, ctx);
    EXPECT_EQ(h, derive_hash_pne(eukey, rp, rs, sk, ctx));
    EXPECT_EQ(derive_hash_server_pne(keyed, rp, rs, sk, h, ctx),
              derive_hash_server_pne(eukey, rp, rs, sk, h, ctx));
    EXPECT_EQ(derive_kek(keyed, Recipient::kGw, "pn-1", "pne-1", "gw-1", rs, rp),
              derive_kek(eukey, Recipient::kGw, "pn-1", "pne-1", "gw-1", rs, rp));
    // A copy wrapped under the keyed state opens with the one-shot form, and the other way.
    const SecretKey local = key_counting_from(0x80);
    const Bytes w =
        wrap_local_eukey(keyed, Recipient::kPne, "pn-1", "pne-1", "gw-1", rs, rp, local);
    EXPECT_EQ(unwrap_local_eukey(eukey, Recipient::kPne, "pn-1", "pne-1", "gw-1", rs, rp, w),
              local);
    EXPECT_EQ(unwrap_local_eukey(keyed, Recipient::kPne, "pn-1", "pne-1", "gw-1", rs, rp, w),
              local);
    EXPECT_FALSE(unwrap_local_eukey(keyed, Recipient::kGw, "pn-1", "pne-1", "gw-1", rs, rp, w));
}

TEST(KeyedHmac, KnowsItsKeyAndSurvivesAMove) {
    const SecretKey a = key_counting_from(0x00);
    const SecretKey b = key_counting_from(0x01);
    KeyedHmac keyed(a);
    EXPECT_TRUE(keyed.keyed_with(a));
    EXPECT_FALSE(keyed.keyed_with(b));
    KeyedHmac moved(std::move(keyed));
    EXPECT_TRUE(moved.keyed_with(a));
    EXPECT_EQ(moved.mac({ascii("x")}), hmac_sha256(a.view(), ascii("x")));
    EXPECT_THROW(keyed.mac({ascii("x")}), std::logic_error);  // NOLINT(bugprone-use-after-move)
    KeyedHmac other(b);
    other = std::move(moved);
    EXPECT_EQ(other.mac({ascii("x")}), hmac_sha256(a.view(), ascii("x")));
}

// --- Encodings -------------------------------------------------------------------------------

TEST(Encoding, SetupBindingIsFourOctets) {
    PneContext ctx;
    EXPECT_EQ(to_hex(encode_setup_binding(ctx)), "01010000");
    ctx.flow = Flow::kGwInitiated;
    ctx.role = PneRole::kInvitee;
    ctx.setup = SetupKind::kAll;
    ctx.local_key_requested = true;
    EXPECT_EQ(to_hex(encode_setup_binding(ctx)), "02020201");
    ctx.flow = Flow::kPneInitiated;
    ctx.role = PneRole::kInitiator;
    ctx.setup = SetupKind::kInviteList;
    ctx.local_key_requested = false;
    EXPECT_EQ(to_hex(encode_setup_binding(ctx)), "01010300");
    ctx.setup = SetupKind::kOneToOne;
    EXPECT_EQ(to_hex(encode_setup_binding(ctx)), "01010100");
}

TEST(Encoding, IdListIsLengthPrefixedInOrder) {
    EXPECT_EQ(to_hex(encode_id_list({})), "");
    EXPECT_EQ(to_hex(encode_id_list({"ab", "c"})),
              "00026162"
              "000163");
    EXPECT_EQ(to_hex(encode_id_list({""})), "0000");
    EXPECT_NE(encode_id_list({"ab", "c"}), encode_id_list({"a", "bc"}));
    EXPECT_NE(encode_id_list({"ab", "c"}), encode_id_list({"c", "ab"}));
    const std::string long_id(300, 'z');
    const Bytes enc = encode_id_list({long_id});
    ASSERT_EQ(enc.size(), 302u);
    EXPECT_EQ(enc[0], 0x01);
    EXPECT_EQ(enc[1], 0x2c);
    EXPECT_THROW(encode_id_list({std::string(65536, 'x')}), std::invalid_argument);
}

// --- SecretKey, ct_equal, hex ----------------------------------------------------------------

TEST(SecretKey, RequiresExactly32Bytes) {
    EXPECT_THROW(SecretKey(repeat(1, 31)), std::invalid_argument);
    EXPECT_THROW(SecretKey(repeat(1, 33)), std::invalid_argument);
    EXPECT_THROW(SecretKey(Bytes{}), std::invalid_argument);
    EXPECT_NO_THROW(SecretKey(repeat(1, 32)));
    EXPECT_TRUE(SecretKey{}.is_zero());
    EXPECT_FALSE(SecretKey(repeat(1, 32)).is_zero());
    Bytes last_only(32, 0);
    last_only[31] = 0x80;
    EXPECT_FALSE(SecretKey(last_only).is_zero());
}

TEST(SecretKey, MoveWipesTheSource) {
    SecretKey a = key_counting_from(0x10);
    const SecretKey reference = key_counting_from(0x10);
    SecretKey b(std::move(a));
    EXPECT_TRUE(a.is_zero());  // NOLINT(bugprone-use-after-move): checking the wipe
    EXPECT_TRUE(b == reference);

    SecretKey c = key_counting_from(0x20);
    c = std::move(b);
    EXPECT_TRUE(b.is_zero());  // NOLINT(bugprone-use-after-move)
    EXPECT_TRUE(c == reference);

    // Self-move leaves the key intact.
    SecretKey& alias = c;
    c = std::move(alias);
    EXPECT_TRUE(c == reference);
}

TEST(SecretKey, CopyKeepsBoth) {
    const SecretKey a = key_counting_from(0x10);
    SecretKey b(a);
    EXPECT_TRUE(a == b);
    SecretKey c;
    c = a;
    EXPECT_TRUE(c == a);
    EXPECT_FALSE(a.is_zero());
}

TEST(SecretKey, EqualityIsByValue) {
    EXPECT_TRUE(key_counting_from(1) == key_counting_from(1));
    EXPECT_FALSE(key_counting_from(1) == key_counting_from(2));
}

TEST(SecretKey, HexRoundTrip) {
    const SecretKey k = key_counting_from(0xe0);
    const std::string h = k.to_hex();
    EXPECT_EQ(h, "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
    const std::optional<SecretKey> back = SecretKey::from_hex(h);
    ASSERT_TRUE(back.has_value());
    EXPECT_TRUE(*back == k);
    std::string upper = h;
    std::transform(upper.begin(), upper.end(), upper.begin(),
                   [](char ch) { return static_cast<char>(std::toupper(ch)); });
    const std::optional<SecretKey> from_upper = SecretKey::from_hex(upper);
    ASSERT_TRUE(from_upper.has_value());
    EXPECT_TRUE(*from_upper == k);
    EXPECT_FALSE(SecretKey::from_hex(h.substr(2)).has_value());
    EXPECT_FALSE(SecretKey::from_hex(h + "00").has_value());
    std::string bad = h;
    bad[7] = 'g';
    EXPECT_FALSE(SecretKey::from_hex(bad).has_value());
}

TEST(Hex, RoundTripAndRejection) {
    const Bytes all = [] {
        Bytes b;
        for (int i = 0; i < 256; ++i) b.push_back(static_cast<std::uint8_t>(i));
        return b;
    }();
    const std::optional<Bytes> back = from_hex(to_hex(all));
    ASSERT_TRUE(back.has_value());
    EXPECT_EQ(*back, all);
    EXPECT_EQ(to_hex({}), "");
    ASSERT_TRUE(from_hex("").has_value());
    EXPECT_TRUE(from_hex("")->empty());
    EXPECT_EQ(*from_hex("00fFaB"), (Bytes{0x00, 0xff, 0xab}));
    EXPECT_FALSE(from_hex("abc").has_value());
    EXPECT_FALSE(from_hex("0x").has_value());
    EXPECT_FALSE(from_hex("zz").has_value());
    EXPECT_FALSE(from_hex(" 00").has_value());
}

TEST(CtEqual, ComparesContentAndSize) {
    EXPECT_TRUE(ct_equal(ascii("abc"), ascii("abc")));
    EXPECT_FALSE(ct_equal(ascii("abc"), ascii("abd")));
    EXPECT_FALSE(ct_equal(ascii("abc"), ascii("ab")));
    EXPECT_FALSE(ct_equal(ascii(""), ascii("a")));
    EXPECT_TRUE(ct_equal(ByteView{}, ByteView{}));
}

TEST(Wipe, ZeroesMemory) {
    Bytes b = repeat(0xa5, 64);
    wipe(b.data(), b.size());
    EXPECT_EQ(b, repeat(0, 64));
    wipe(nullptr, 0);
}

// --- Randomness ------------------------------------------------------------------------------

TEST(DeterministicRandom, SameSeedSameStream) {
    DeterministicRandom a(42);
    DeterministicRandom b(42);
    DeterministicRandom c(43);
    const Bytes sa = a.bytes(100);
    EXPECT_EQ(sa, b.bytes(100));
    EXPECT_NE(sa, c.bytes(100));
    EXPECT_NE(a.bytes(100), sa);  // the stream moves on
}

TEST(DeterministicRandom, ChunkingDoesNotChangeTheStream) {
    DeterministicRandom whole(7);
    DeterministicRandom pieces(7);
    const Bytes expected = whole.bytes(97);
    Bytes got;
    for (std::size_t n : {1u, 10u, 31u, 32u, 0u, 23u}) {
        const Bytes part = pieces.bytes(n);
        got.insert(got.end(), part.begin(), part.end());
    }
    EXPECT_EQ(got, expected);
}

TEST(DeterministicRandom, MatchesItsDefinition) {
    // seed key = HMAC-SHA-256("CPNS DeterministicRandom", seed as 8 octets big-endian);
    // block i = HMAC-SHA-256(seed key, i as 8 octets big-endian).
    const auto seed_key = hmac_sha256(ascii("CPNS DeterministicRandom"), hex("0000000000000005"));
    const auto block0 = hmac_sha256(seed_key, hex("0000000000000000"));
    const auto block1 = hmac_sha256(seed_key, hex("0000000000000001"));
    Bytes expected(block0.begin(), block0.end());
    expected.insert(expected.end(), block1.begin(), block1.end());
    DeterministicRandom r(5);
    EXPECT_EQ(r.bytes(64), expected);
}

TEST(DeterministicRandom, KeysAreReproducible) {
    DeterministicRandom a(1);
    DeterministicRandom b(1);
    const SecretKey ka = a.key();
    EXPECT_TRUE(ka == b.key());
    EXPECT_FALSE(ka.is_zero());
    EXPECT_FALSE(ka == a.key());
}

TEST(OsRandom, ProducesDistinctValues) {
    OsRandom r;
    const Bytes x = r.bytes(kRandSize);
    const Bytes y = r.bytes(kRandSize);
    EXPECT_EQ(x.size(), kRandSize);
    EXPECT_NE(x, y);
    const SecretKey k = r.key();
    EXPECT_FALSE(k.is_zero());
    EXPECT_TRUE(r.bytes(0).empty());
}

// --- Every input is bound into every derived value -------------------------------------------

struct PneInputs {
    SecretKey eukey = key_counting_from(0x00);
    Bytes rand_pne = repeat(0xa1, kRandSize);
    Bytes rand_server = repeat(0xb2, kRandSize);
    SecretKey sk_pne = key_counting_from(0x60);
    Hash hash_pne{};
    PneContext ctx;

    PneInputs() {
        ctx.pne_id = "pne-1";
        ctx.gw_id = "gw-1";
        ctx.pn_id = "pn-1";
        ctx.flow = Flow::kPneInitiated;
        ctx.role = PneRole::kInitiator;
        ctx.setup = SetupKind::kInviteList;
        ctx.invited = {"pne-2", "pne-3"};
        ctx.local_key_requested = true;
        ctx.join_digest.fill(0xd4);
        ctx.inventory_digest.fill(0xe5);
        hash_pne.fill(0xc3);
    }
};

using Mutation = std::pair<const char*, std::function<void(PneInputs&)>>;

std::vector<Mutation> pne_mutations() {
    return {
        {"EUKey", [](PneInputs& in) { in.eukey = key_counting_from(0x01); }},
        {"rand_PNE", [](PneInputs& in) { in.rand_pne[15] ^= 0x01; }},
        {"rand_PNE length", [](PneInputs& in) { in.rand_pne.push_back(0); }},
        {"rand_server", [](PneInputs& in) { in.rand_server[0] ^= 0x80; }},
        {"PNE ID", [](PneInputs& in) { in.ctx.pne_id = "pne-9"; }},
        {"PN GW ID", [](PneInputs& in) { in.ctx.gw_id = "gw-9"; }},
        {"PN ID", [](PneInputs& in) { in.ctx.pn_id = "pn-9"; }},
        {"ID boundary",
         [](PneInputs& in) {
             in.ctx.pne_id = "pne-1g";
             in.ctx.gw_id = "w-1";
         }},
        {"flow", [](PneInputs& in) { in.ctx.flow = Flow::kGwInitiated; }},
        {"role", [](PneInputs& in) { in.ctx.role = PneRole::kInvitee; }},
        {"setup kind", [](PneInputs& in) { in.ctx.setup = SetupKind::kAll; }},
        {"setup none", [](PneInputs& in) { in.ctx.setup = SetupKind::kNone; }},
        {"invited: one changed", [](PneInputs& in) { in.ctx.invited[1] = "pne-4"; }},
        {"invited: reordered",
         [](PneInputs& in) { std::swap(in.ctx.invited[0], in.ctx.invited[1]); }},
        {"invited: one removed", [](PneInputs& in) { in.ctx.invited.pop_back(); }},
        {"invited: one added", [](PneInputs& in) { in.ctx.invited.push_back("pne-5"); }},
        {"invited: empty", [](PneInputs& in) { in.ctx.invited.clear(); }},
        {"invited: split differently",
         [](PneInputs& in) {
             in.ctx.invited = {"pne-2p", "ne-3"};
         }},
        {"local_key_requested", [](PneInputs& in) { in.ctx.local_key_requested = false; }},
    };
}

TEST(Binding, SkPneChangesWithEveryInput) {
    const PneInputs base;
    const SecretKey expected = derive_sk_pne(base.eukey, base.rand_pne, base.rand_server, base.ctx);
    for (const auto& [name, mutate] : pne_mutations()) {
        PneInputs in;
        mutate(in);
        const SecretKey got = derive_sk_pne(in.eukey, in.rand_pne, in.rand_server, in.ctx);
        EXPECT_FALSE(got == expected) << name;
    }
    // Unchanged inputs reproduce the value.
    const PneInputs same;
    EXPECT_TRUE(derive_sk_pne(same.eukey, same.rand_pne, same.rand_server, same.ctx) == expected);
}

TEST(Binding, HashPneChangesWithEveryInput) {
    const PneInputs base;
    const Hash expected =
        derive_hash_pne(base.eukey, base.rand_pne, base.rand_server, base.sk_pne, base.ctx);
    auto mutations = pne_mutations();
    mutations.emplace_back("SK_PNE", [](PneInputs& in) { in.sk_pne = key_counting_from(0x61); });
    mutations.emplace_back("join digest", [](PneInputs& in) { in.ctx.join_digest[0] ^= 0x01; });
    for (const auto& [name, mutate] : mutations) {
        PneInputs in;
        mutate(in);
        EXPECT_NE(derive_hash_pne(in.eukey, in.rand_pne, in.rand_server, in.sk_pne, in.ctx),
                  expected)
            << name;
    }
}

TEST(Binding, HashServerPneChangesWithEveryInput) {
    const PneInputs base;
    const Hash expected = derive_hash_server_pne(base.eukey, base.rand_pne, base.rand_server,
                                                 base.sk_pne, base.hash_pne, base.ctx);
    auto mutations = pne_mutations();
    mutations.emplace_back("SK_PNE", [](PneInputs& in) { in.sk_pne = key_counting_from(0x61); });
    mutations.emplace_back("hash_PNE", [](PneInputs& in) { in.hash_pne[31] ^= 0x01; });
    mutations.emplace_back("join digest", [](PneInputs& in) { in.ctx.join_digest[31] ^= 0x80; });
    mutations.emplace_back("inventory digest",
                           [](PneInputs& in) { in.ctx.inventory_digest[0] ^= 0x01; });
    for (const auto& [name, mutate] : mutations) {
        PneInputs in;
        mutate(in);
        EXPECT_NE(derive_hash_server_pne(in.eukey, in.rand_pne, in.rand_server, in.sk_pne,
                                         in.hash_pne, in.ctx),
                  expected)
            << name;
    }
}

TEST(Binding, DerivedValuesDifferFromEachOther) {
    const PneInputs in;
    const SecretKey sk = derive_sk_pne(in.eukey, in.rand_pne, in.rand_server, in.ctx);
    const Hash h = derive_hash_pne(in.eukey, in.rand_pne, in.rand_server, sk, in.ctx);
    const Hash hs = derive_hash_server_pne(in.eukey, in.rand_pne, in.rand_server, sk, h, in.ctx);
    EXPECT_FALSE(ct_equal(sk.view(), h));
    EXPECT_NE(h, hs);
    EXPECT_FALSE(ct_equal(sk.view(), hs));
}

TEST(Binding, DerivationsMatchTheirDocumentedParameterLists) {
    const PneInputs in;
    const Bytes binding = encode_setup_binding(in.ctx);
    const Bytes invited = encode_id_list(in.ctx.invited);
    const SecretKey sk = derive_sk_pne(in.eukey, in.rand_pne, in.rand_server, in.ctx);
    EXPECT_TRUE(
        ct_equal(sk.view(), kdf(in.eukey, Fc::kSkPne,
                                {in.rand_pne, in.rand_server, ascii(in.ctx.pne_id),
                                 ascii(in.ctx.gw_id), ascii(in.ctx.pn_id), binding, invited})));
    const Hash h = derive_hash_pne(in.eukey, in.rand_pne, in.rand_server, sk, in.ctx);
    EXPECT_EQ(
        h, kdf(in.eukey, Fc::kHashPne,
               {in.rand_pne, in.rand_server, sk.view(), ascii(in.ctx.pne_id), ascii(in.ctx.gw_id),
                ascii(in.ctx.pn_id), binding, invited, in.ctx.join_digest}));
    const Hash hs = derive_hash_server_pne(in.eukey, in.rand_pne, in.rand_server, sk, h, in.ctx);
    EXPECT_EQ(hs, kdf(in.eukey, Fc::kHashServerPne,
                      {in.rand_pne, in.rand_server, sk.view(), h, ascii(in.ctx.pne_id),
                       ascii(in.ctx.gw_id), ascii(in.ctx.pn_id), binding, invited,
                       in.ctx.join_digest, in.ctx.inventory_digest}));
    const Bytes recipient = {0x02};
    const SecretKey kek =
        derive_kek(in.eukey, Recipient::kGw, "pn-1", "pne-1", "gw-1", in.rand_server, in.rand_pne);
    EXPECT_TRUE(ct_equal(kek.view(), kdf(in.eukey, Fc::kKek,
                                         {recipient, ascii("pn-1"), ascii("pne-1"), ascii("gw-1"),
                                          in.rand_server, in.rand_pne})));
    EXPECT_TRUE(ct_equal(derive_gw_server_psk(in.eukey, "gw-1").view(),
                         kdf(in.eukey, Fc::kGwServerPsk, {ascii("gw-1")})));

    // The same checks with the whole KDF input assembled by hand, byte for byte.
    const Bytes sk_bytes(sk.view().begin(), sk.view().end());
    const Bytes h_bytes(h.begin(), h.end());
    const Bytes join_digest(in.ctx.join_digest.begin(), in.ctx.join_digest.end());
    const Bytes inventory_digest(in.ctx.inventory_digest.begin(), in.ctx.inventory_digest.end());
    const Bytes list =
        hex("0005706e652d32"
            "0005706e652d33");
    auto assemble = [](std::uint8_t fc, const std::vector<Bytes>& params) {
        Bytes s = {fc};
        for (const Bytes& p : params) {
            s.insert(s.end(), p.begin(), p.end());
            s.push_back(static_cast<std::uint8_t>(p.size() >> 8));
            s.push_back(static_cast<std::uint8_t>(p.size() & 0xff));
        }
        return s;
    };
    const Bytes ids_and_binding[] = {ascii("pne-1"), ascii("gw-1"), ascii("pn-1"), hex("01010301")};
    EXPECT_TRUE(ct_equal(
        sk.view(), hmac_sha256(in.eukey.view(),
                               assemble(0x51, {in.rand_pne, in.rand_server, ids_and_binding[0],
                                               ids_and_binding[1], ids_and_binding[2],
                                               ids_and_binding[3], list}))));
    EXPECT_EQ(
        h, hmac_sha256(in.eukey.view(),
                       assemble(0x52, {in.rand_pne, in.rand_server, sk_bytes, ids_and_binding[0],
                                       ids_and_binding[1], ids_and_binding[2], ids_and_binding[3],
                                       list, join_digest})));
    EXPECT_EQ(
        hs, hmac_sha256(in.eukey.view(),
                        assemble(0x53, {in.rand_pne, in.rand_server, sk_bytes, h_bytes,
                                        ids_and_binding[0], ids_and_binding[1], ids_and_binding[2],
                                        ids_and_binding[3], list, join_digest, inventory_digest})));
    EXPECT_TRUE(ct_equal(
        kek.view(), hmac_sha256(in.eukey.view(),
                                assemble(0x54, {hex("02"), ascii("pn-1"), ascii("pne-1"),
                                                ascii("gw-1"), in.rand_server, in.rand_pne}))));
    // What the digests add: SK_PNE binds neither digest, hash_PNE not the inventory's (it is
    // computed before the inventory exists).
    PneInputs other;
    other.ctx.join_digest.fill(0x00);
    other.ctx.inventory_digest.fill(0x00);
    EXPECT_TRUE(derive_sk_pne(other.eukey, other.rand_pne, other.rand_server, other.ctx) == sk);
    other.ctx.join_digest = in.ctx.join_digest;
    EXPECT_EQ(derive_hash_pne(other.eukey, other.rand_pne, other.rand_server, sk, other.ctx), h);
}

// --- The join and the inventory, as hashed -------------------------------------------------

pb::PneJoin sample_join() {
    pb::PneJoin j;
    j.set_pne_id("pne-1");
    auto* c = j.mutable_capabilities();
    c->set_device_type("headset");
    c->set_manufacturer("Acme Audio");
    c->set_model("HS-100");
    c->set_enough_ui(true);
    c->add_pan_technologies("bluetooth");
    c->add_pan_technologies("wifi");
    c->add_services("audio-sink");
    c->add_services("microphone");
    auto* item = j.add_contents();
    item->set_content_id("c-1");
    item->set_media_type("audio/mpeg");
    item->set_title("Voice memo");
    item->set_size_bytes(48213);
    j.set_rand_pne(std::string(kRandSize, '\xa1'));
    j.set_local_eukey_requested(true);
    return j;
}

pb::PnInventory sample_inventory() {
    pb::PnInventory inv;
    inv.set_pn_id("pn-1");
    inv.set_gw_id("gw-1");
    inv.mutable_gw_capabilities()->set_device_type("phone");
    inv.mutable_gw_capabilities()->add_pan_technologies("bluetooth");
    for (const char* id : {"pne-1", "pne-2"}) {
        auto* m = inv.add_members();
        m->set_pne_id(id);
        *m->mutable_capabilities() = sample_join().capabilities();
        *m->mutable_contents() = sample_join().contents();
        m->set_joined_at_ms(1767225600000);
        m->set_local_eukey_assigned(true);
    }
    inv.set_registered_at_ms(1767225600000);
    return inv;
}

using JoinMutation = std::pair<const char*, std::function<void(pb::PneJoin&)>>;

std::vector<JoinMutation> join_mutations() {
    using C = pb::DeviceCapabilities;
    auto caps = [](std::function<void(C&)> f) {
        return [f](pb::PneJoin& j) { f(*j.mutable_capabilities()); };
    };
    auto item = [](std::function<void(pb::ContentInfo&)> f) {
        return [f](pb::PneJoin& j) { f(*j.mutable_contents(0)); };
    };
    return {
        {"PNE ID", [](pb::PneJoin& j) { j.set_pne_id("pne-9"); }},
        {"device type", caps([](C& c) { c.set_device_type("speaker"); })},
        {"manufacturer", caps([](C& c) { c.set_manufacturer("Acme Audio."); })},
        {"model", caps([](C& c) { c.set_model("HS-101"); })},
        {"enough UI", caps([](C& c) { c.set_enough_ui(false); })},
        {"PAN technology changed", caps([](C& c) { c.set_pan_technologies(1, "zigbee"); })},
        {"PAN technology removed", caps([](C& c) { c.mutable_pan_technologies()->RemoveLast(); })},
        {"PAN technologies reordered",
         caps([](C& c) { c.mutable_pan_technologies()->SwapElements(0, 1); })},
        {"service added", caps([](C& c) { c.add_services("remote-control"); })},
        {"service changed", caps([](C& c) { c.set_services(0, "audio-source"); })},
        {"capabilities cleared", [](pb::PneJoin& j) { j.clear_capabilities(); }},
        {"content ID", item([](pb::ContentInfo& c) { c.set_content_id("c-2"); })},
        {"content media type", item([](pb::ContentInfo& c) { c.set_media_type("audio/ogg"); })},
        {"content title", item([](pb::ContentInfo& c) { c.set_title("Voice memo 2"); })},
        {"content size", item([](pb::ContentInfo& c) { c.set_size_bytes(48214); })},
        {"content added", [](pb::PneJoin& j) { j.add_contents()->set_content_id("c-2"); }},
        {"content removed", [](pb::PneJoin& j) { j.clear_contents(); }},
        {"rand_PNE", [](pb::PneJoin& j) { j.mutable_rand_pne()->back() ^= 0x01; }},
        {"LocalEUKey request", [](pb::PneJoin& j) { j.set_local_eukey_requested(false); }},
    };
}

TEST(Binding, HashPneChangesWithEveryFieldOfTheJoin) {
    const PneInputs in;
    PneContext ctx = in.ctx;
    ctx.join_digest = join_digest(sample_join());
    const Hash base = derive_hash_pne(in.eukey, in.rand_pne, in.rand_server, in.sk_pne, ctx);
    for (const auto& [name, mutate] : join_mutations()) {
        pb::PneJoin j = sample_join();
        mutate(j);
        ctx.join_digest = join_digest(j);
        EXPECT_NE(derive_hash_pne(in.eukey, in.rand_pne, in.rand_server, in.sk_pne, ctx), base)
            << name;
        EXPECT_NE(
            derive_hash_server_pne(in.eukey, in.rand_pne, in.rand_server, in.sk_pne, in.hash_pne,
                                   ctx),
            derive_hash_server_pne(in.eukey, in.rand_pne, in.rand_server, in.sk_pne, in.hash_pne,
                                   [&] {
                                       PneContext c = ctx;
                                       c.join_digest = join_digest(sample_join());
                                       return c;
                                   }()))
            << name;
    }
    // The same join built again hashes the same.
    ctx.join_digest = join_digest(sample_join());
    EXPECT_EQ(derive_hash_pne(in.eukey, in.rand_pne, in.rand_server, in.sk_pne, ctx), base);
}

TEST(Binding, HashPneChangesWithEveryByteOfTheJoin) {
    const PneInputs in;
    const std::string encoded = deterministic_bytes(sample_join());
    PneContext ctx = in.ctx;
    ctx.join_digest = sha256(as_bytes(encoded));
    EXPECT_EQ(ctx.join_digest, join_digest(sample_join()));
    const Hash base = derive_hash_pne(in.eukey, in.rand_pne, in.rand_server, in.sk_pne, ctx);
    std::set<std::string> seen = {to_hex(base)};
    for (std::size_t i = 0; i < encoded.size(); ++i) {
        std::string altered = encoded;
        altered[i] = static_cast<char>(altered[i] ^ 0x01);
        ctx.join_digest = sha256(as_bytes(altered));
        const Hash h = derive_hash_pne(in.eukey, in.rand_pne, in.rand_server, in.sk_pne, ctx);
        EXPECT_TRUE(seen.insert(to_hex(h)).second) << "octet " << i;
    }
}

TEST(Binding, JoinDigestIsOverTheDeterministicEncodingOfTheValues) {
    const pb::PneJoin j = sample_join();
    const std::string encoded = deterministic_bytes(j);
    // Fields in field-number order: the PNE ID (field 1) comes first, the LocalEUKey request
    // (field 5, true) last.
    ASSERT_GE(encoded.size(), 9u);
    EXPECT_EQ(encoded.substr(0, 7), std::string("\x0a\x05pne-1", 7));
    EXPECT_EQ(encoded.substr(encoded.size() - 2), std::string("\x28\x01", 2));
    // Parsing and encoding again gives the same octets and digest.
    pb::PneJoin parsed;
    ASSERT_TRUE(parsed.ParseFromString(encoded));
    EXPECT_EQ(deterministic_bytes(parsed), encoded);
    EXPECT_EQ(join_digest(parsed), join_digest(j));
    // The digest is over the values, not the octets received: the same values sent in another
    // field order hash the same.
    std::string reordered = encoded.substr(7) + encoded.substr(0, 7);
    pb::PneJoin from_reordered;
    ASSERT_TRUE(from_reordered.ParseFromString(reordered));
    EXPECT_EQ(join_digest(from_reordered), join_digest(j));
    // A field this schema does not know, added on the way, is kept and hashed: the digest
    // differs from the one the PNE computed.
    pb::PneJoin with_unknown;
    ASSERT_TRUE(with_unknown.ParseFromString(encoded + std::string("\xa0\x06\x01", 3)));
    EXPECT_NE(join_digest(with_unknown), join_digest(j));
}

TEST(Binding, HashServerPneChangesWithTheInventoryDigest) {
    using Mut = std::pair<const char*, std::function<void(pb::PnInventory&)>>;
    const std::vector<Mut> mutations = {
        {"PN ID", [](pb::PnInventory& v) { v.set_pn_id("pn-2"); }},
        {"PN GW ID", [](pb::PnInventory& v) { v.set_gw_id("gw-2"); }},
        {"PN GW capabilities",
         [](pb::PnInventory& v) { v.mutable_gw_capabilities()->set_enough_ui(true); }},
        {"member added", [](pb::PnInventory& v) { v.add_members()->set_pne_id("pne-3"); }},
        {"member removed", [](pb::PnInventory& v) { v.mutable_members()->RemoveLast(); }},
        {"member replaced", [](pb::PnInventory& v) { v.mutable_members(1)->set_pne_id("pne-3"); }},
        {"members reordered", [](pb::PnInventory& v) { v.mutable_members()->SwapElements(0, 1); }},
        {"member capabilities",
         [](pb::PnInventory& v) { v.mutable_members(0)->mutable_capabilities()->set_model("X"); }},
        {"member contents", [](pb::PnInventory& v) { v.mutable_members(0)->clear_contents(); }},
        {"member joined at", [](pb::PnInventory& v) { v.mutable_members(1)->set_joined_at_ms(1); }},
        {"member LocalEUKey",
         [](pb::PnInventory& v) { v.mutable_members(1)->set_local_eukey_assigned(false); }},
        {"registered at", [](pb::PnInventory& v) { v.set_registered_at_ms(1767225600001); }},
    };
    const PneInputs in;
    PneContext ctx = in.ctx;
    ctx.inventory_digest = inventory_digest(sample_inventory());
    const Hash base =
        derive_hash_server_pne(in.eukey, in.rand_pne, in.rand_server, in.sk_pne, in.hash_pne, ctx);
    const Hash hash_pne = derive_hash_pne(in.eukey, in.rand_pne, in.rand_server, in.sk_pne, ctx);
    for (const auto& [name, mutate] : mutations) {
        pb::PnInventory inv = sample_inventory();
        mutate(inv);
        ctx.inventory_digest = inventory_digest(inv);
        EXPECT_NE(derive_hash_server_pne(in.eukey, in.rand_pne, in.rand_server, in.sk_pne,
                                         in.hash_pne, ctx),
                  base)
            << name;
        // hash_PNE does not bind the inventory.
        EXPECT_EQ(derive_hash_pne(in.eukey, in.rand_pne, in.rand_server, in.sk_pne, ctx), hash_pne)
            << name;
    }
    ctx.inventory_digest = inventory_digest(sample_inventory());
    EXPECT_EQ(
        derive_hash_server_pne(in.eukey, in.rand_pne, in.rand_server, in.sk_pne, in.hash_pne, ctx),
        base);
}

struct KekInputs {
    SecretKey eukey = key_counting_from(0x20);
    Recipient recipient = Recipient::kPne;
    std::string pn_id = "pn-1";
    std::string pne_id = "pne-1";
    std::string gw_id = "gw-1";
    Bytes rand_server = repeat(0xb2, kRandSize);
    Bytes rand_pne = kRandPne;

    SecretKey kek() const {
        return derive_kek(eukey, recipient, pn_id, pne_id, gw_id, rand_server, rand_pne);
    }
};

std::vector<std::pair<const char*, std::function<void(KekInputs&)>>> kek_mutations() {
    return {
        {"EUKey", [](KekInputs& in) { in.eukey = key_counting_from(0x21); }},
        {"recipient", [](KekInputs& in) { in.recipient = Recipient::kGw; }},
        {"PN ID", [](KekInputs& in) { in.pn_id = "pn-2"; }},
        {"PNE ID", [](KekInputs& in) { in.pne_id = "pne-2"; }},
        {"PN GW ID", [](KekInputs& in) { in.gw_id = "gw-2"; }},
        {"ID boundary",
         [](KekInputs& in) {
             in.pn_id = "pn-1p";
             in.pne_id = "ne-1";
         }},
        {"rand_server", [](KekInputs& in) { in.rand_server[3] ^= 0x10; }},
        {"rand_PNE", [](KekInputs& in) { in.rand_pne[15] ^= 0x01; }},
        {"rand_PNE empty", [](KekInputs& in) { in.rand_pne.clear(); }},
        {"randoms swapped", [](KekInputs& in) { std::swap(in.rand_pne, in.rand_server); }},
    };
}

TEST(Binding, KekChangesWithEveryInput) {
    const SecretKey expected = KekInputs{}.kek();
    for (const auto& [name, mutate] : kek_mutations()) {
        KekInputs in;
        mutate(in);
        EXPECT_FALSE(in.kek() == expected) << name;
    }
}

TEST(Binding, GwServerPskChangesWithEveryInput) {
    const SecretKey base = derive_gw_server_psk(key_counting_from(0x20), "gw-1");
    EXPECT_FALSE(derive_gw_server_psk(key_counting_from(0x21), "gw-1") == base);
    EXPECT_FALSE(derive_gw_server_psk(key_counting_from(0x20), "gw-2") == base);
    EXPECT_FALSE(derive_gw_server_psk(key_counting_from(0x20), "") == base);
    EXPECT_TRUE(derive_gw_server_psk(key_counting_from(0x20), "gw-1") == base);
}

// --- LocalEUKey copies -----------------------------------------------------------------------

TEST(LocalEukey, EachRecipientOpensOnlyItsOwnCopy) {
    const SecretKey eukey_pne = key_counting_from(0x00);
    const SecretKey eukey_gw = key_counting_from(0x20);
    const SecretKey local = key_counting_from(0xc0);
    const Bytes rs = repeat(0xb2, kRandSize);
    const Bytes for_pne =
        wrap_local_eukey(eukey_pne, Recipient::kPne, "pn-1", "pne-1", "gw-1", rs, kRandPne, local);
    const Bytes for_gw =
        wrap_local_eukey(eukey_gw, Recipient::kGw, "pn-1", "pne-1", "gw-1", rs, kRandPne, local);
    EXPECT_NE(for_pne, for_gw);

    const auto pne_opens = unwrap_local_eukey(eukey_pne, Recipient::kPne, "pn-1", "pne-1", "gw-1",
                                              rs, kRandPne, for_pne);
    ASSERT_TRUE(pne_opens.has_value());
    EXPECT_TRUE(*pne_opens == local);
    const auto gw_opens =
        unwrap_local_eukey(eukey_gw, Recipient::kGw, "pn-1", "pne-1", "gw-1", rs, kRandPne, for_gw);
    ASSERT_TRUE(gw_opens.has_value());
    EXPECT_TRUE(*gw_opens == local);

    // The PN GW, with its own EUKey, cannot open the PNE's copy under either recipient byte.
    EXPECT_FALSE(unwrap_local_eukey(eukey_gw, Recipient::kGw, "pn-1", "pne-1", "gw-1", rs, kRandPne,
                                    for_pne));
    EXPECT_FALSE(unwrap_local_eukey(eukey_gw, Recipient::kPne, "pn-1", "pne-1", "gw-1", rs,
                                    kRandPne, for_pne));
    // And the recipient byte alone separates the two copies even under one EUKey.
    const Bytes pne_key_as_gw =
        wrap_local_eukey(eukey_pne, Recipient::kGw, "pn-1", "pne-1", "gw-1", rs, kRandPne, local);
    EXPECT_NE(pne_key_as_gw, for_pne);
    EXPECT_FALSE(unwrap_local_eukey(eukey_pne, Recipient::kPne, "pn-1", "pne-1", "gw-1", rs,
                                    kRandPne, pne_key_as_gw));
}

TEST(LocalEukey, WrongContextIsRejected) {
    const SecretKey eukey = key_counting_from(0x00);
    const SecretKey local = key_counting_from(0xc0);
    const Bytes rs = repeat(0xb2, kRandSize);
    const Bytes wrapped =
        wrap_local_eukey(eukey, Recipient::kPne, "pn-1", "pne-1", "gw-1", rs, kRandPne, local);
    Bytes other_rs = rs;
    other_rs[0] ^= 1;
    EXPECT_FALSE(
        unwrap_local_eukey(eukey, Recipient::kPne, "pn-2", "pne-1", "gw-1", rs, kRandPne, wrapped));
    EXPECT_FALSE(
        unwrap_local_eukey(eukey, Recipient::kPne, "pn-1", "pne-2", "gw-1", rs, kRandPne, wrapped));
    EXPECT_FALSE(
        unwrap_local_eukey(eukey, Recipient::kPne, "pn-1", "pne-1", "gw-2", rs, kRandPne, wrapped));
    EXPECT_FALSE(unwrap_local_eukey(eukey, Recipient::kPne, "pn-1", "pne-1", "gw-1", other_rs,
                                    kRandPne, wrapped));
    EXPECT_FALSE(unwrap_local_eukey(key_counting_from(0x01), Recipient::kPne, "pn-1", "pne-1",
                                    "gw-1", rs, kRandPne, wrapped));
    Bytes tampered = wrapped;
    tampered[20] ^= 0x04;
    EXPECT_FALSE(unwrap_local_eukey(eukey, Recipient::kPne, "pn-1", "pne-1", "gw-1", rs, kRandPne,
                                    tampered));
    EXPECT_FALSE(unwrap_local_eukey(eukey, Recipient::kPne, "pn-1", "pne-1", "gw-1", rs, kRandPne,
                                    ByteView{wrapped}.first(39)));
    // A copy made for another run (another rand_PNE) does not open in this one.
    Bytes other_rand_pne = kRandPne;
    other_rand_pne[0] ^= 1;
    EXPECT_FALSE(unwrap_local_eukey(eukey, Recipient::kPne, "pn-1", "pne-1", "gw-1", rs,
                                    other_rand_pne, wrapped));
    EXPECT_TRUE(
        unwrap_local_eukey(eukey, Recipient::kPne, "pn-1", "pne-1", "gw-1", rs, kRandPne, wrapped));
}

TEST(LocalEukey, UnwrapNeverThrows) {
    const SecretKey eukey = key_counting_from(0x00);
    const Bytes wrapped(kWrappedKeySize, 0x00);
    const std::string huge(70000, 'p');
    EXPECT_NO_THROW({
        const auto r = unwrap_local_eukey(eukey, Recipient::kPne, huge, "pne-1", "gw-1", Bytes{},
                                          kRandPne, wrapped);
        EXPECT_FALSE(r.has_value());
    });
}

// --- The published vectors -------------------------------------------------------------------

#ifdef CPNS_SOURCE_DIR
std::map<std::string, std::string> read_vectors() {
    std::ifstream in(std::string(CPNS_SOURCE_DIR) + "/docs/test-vectors.txt");
    std::map<std::string, std::string> kv;
    std::string line;
    while (std::getline(in, line)) {
        const auto eq = line.find('=');
        if (line.empty() || line[0] == '#' || eq == std::string::npos) continue;
        kv[line.substr(0, eq)] = line.substr(eq + 1);
    }
    return kv;
}

std::string text_of(const std::map<std::string, std::string>& kv, const std::string& key) {
    const Bytes b = hex(kv.at(key));
    return std::string(b.begin(), b.end());
}

// Recomputes one set of docs/test-vectors.txt (keys under PREFIX) with the library. The join and
// the inventory are parsed from their committed encodings; encoding them again must give the
// same octets (the committed encodings are deterministic).
void check_vector_set(const std::map<std::string, std::string>& kv, const std::string& p,
                      std::size_t invited, bool has_local_key) {
    SCOPED_TRACE("set '" + p + "'");
    const auto at = [&](const std::string& key) { return kv.at(p + key); };
    const SecretKey eukey_pne(hex(at("eukey_pne")));
    const Bytes rand_pne = hex(at("rand_pne"));
    const Bytes rand_server = hex(at("rand_server"));
    PneContext ctx;
    ctx.pne_id = text_of(kv, p + "pne_id");
    ctx.gw_id = text_of(kv, p + "gw_id");
    ctx.pn_id = text_of(kv, p + "pn_id");
    ctx.flow = static_cast<Flow>(hex(at("flow")).at(0));
    ctx.role = static_cast<PneRole>(hex(at("role")).at(0));
    ctx.setup = static_cast<SetupKind>(hex(at("setup")).at(0));
    ctx.local_key_requested = hex(at("local_key_requested")).at(0) != 0;
    for (int i = 0; kv.count(p + "invited_" + std::to_string(i)) != 0; ++i) {
        ctx.invited.push_back(text_of(kv, p + "invited_" + std::to_string(i)));
    }
    EXPECT_EQ(ctx.invited.size(), invited);

    pb::PneJoin join;
    const Bytes join_bytes = hex(at("join_encoding"));
    ASSERT_TRUE(join.ParseFromArray(join_bytes.data(), static_cast<int>(join_bytes.size())));
    EXPECT_EQ(to_hex(as_bytes(deterministic_bytes(join))), at("join_encoding"));
    EXPECT_EQ(join.pne_id(), ctx.pne_id);
    EXPECT_EQ(to_hex(as_bytes(join.rand_pne())), at("rand_pne"));
    EXPECT_EQ(join.local_eukey_requested(), ctx.local_key_requested);
    pb::PnInventory inventory;
    const Bytes inventory_bytes = hex(at("inventory_encoding"));
    ASSERT_TRUE(
        inventory.ParseFromArray(inventory_bytes.data(), static_cast<int>(inventory_bytes.size())));
    EXPECT_EQ(to_hex(as_bytes(deterministic_bytes(inventory))), at("inventory_encoding"));
    EXPECT_EQ(inventory.pn_id(), ctx.pn_id);
    EXPECT_EQ(inventory.gw_id(), ctx.gw_id);
    ctx.join_digest = join_digest(join);
    ctx.inventory_digest = inventory_digest(inventory);
    EXPECT_EQ(to_hex(ctx.join_digest), at("join_digest"));
    EXPECT_EQ(to_hex(ctx.inventory_digest), at("inventory_digest"));

    EXPECT_EQ(to_hex(encode_setup_binding(ctx)), at("setup_binding"));
    if (invited > 0) {
        EXPECT_EQ(to_hex(encode_id_list(ctx.invited)), at("id_list"));
    }
    const SecretKey sk = derive_sk_pne(eukey_pne, rand_pne, rand_server, ctx);
    EXPECT_EQ(sk.to_hex(), at("sk_pne"));
    const Hash h = derive_hash_pne(eukey_pne, rand_pne, rand_server, sk, ctx);
    EXPECT_EQ(to_hex(h), at("hash_pne"));
    EXPECT_EQ(to_hex(derive_hash_server_pne(eukey_pne, rand_pne, rand_server, sk, h, ctx)),
              at("hash_server_pne"));
    EXPECT_EQ(kv.count(p + "kek_pne") != 0, has_local_key);
    if (!has_local_key) return;

    const SecretKey eukey_gw(hex(at("eukey_gw")));
    const SecretKey local(hex(at("local_eukey")));
    EXPECT_EQ(derive_kek(eukey_pne, Recipient::kPne, ctx.pn_id, ctx.pne_id, ctx.gw_id, rand_server,
                         rand_pne)
                  .to_hex(),
              at("kek_pne"));
    EXPECT_EQ(derive_kek(eukey_gw, Recipient::kGw, ctx.pn_id, ctx.pne_id, ctx.gw_id, rand_server,
                         rand_pne)
                  .to_hex(),
              at("kek_gw"));
    const Bytes for_pne = wrap_local_eukey(eukey_pne, Recipient::kPne, ctx.pn_id, ctx.pne_id,
                                           ctx.gw_id, rand_server, rand_pne, local);
    const Bytes for_gw = wrap_local_eukey(eukey_gw, Recipient::kGw, ctx.pn_id, ctx.pne_id,
                                          ctx.gw_id, rand_server, rand_pne, local);
    EXPECT_EQ(to_hex(for_pne), at("wrapped_local_eukey_pne"));
    EXPECT_EQ(to_hex(for_gw), at("wrapped_local_eukey_gw"));
    const auto opened = unwrap_local_eukey(eukey_pne, Recipient::kPne, ctx.pn_id, ctx.pne_id,
                                           ctx.gw_id, rand_server, rand_pne, for_pne);
    ASSERT_TRUE(opened.has_value());
    EXPECT_TRUE(*opened == local);
}

TEST(Vectors, CommittedFileMatchesTheLibrary) {
    const auto kv = read_vectors();
    ASSERT_FALSE(kv.empty()) << "docs/test-vectors.txt is missing or empty";
    check_vector_set(kv, "", 2, true);
    check_vector_set(kv, "invitee_", 0, false);
    check_vector_set(kv, "gwinit_", 0, true);

    const SecretKey eukey_pne(hex(kv.at("eukey_pne")));
    const SecretKey eukey_gw(hex(kv.at("eukey_gw")));
    EXPECT_EQ(derive_gw_server_psk(eukey_gw, text_of(kv, "gw_id")).to_hex(),
              kv.at("gw_server_psk"));
    EXPECT_EQ(text_of(kv, "device_state_label"), "cpns device state v1");
    EXPECT_EQ(hex_of(kdf(eukey_pne, Fc::kDeviceState,
                         {hex(kv.at("device_state_label")), hex(kv.at("pne_id"))})),
              kv.at("device_state_key"));
}

TEST(Vectors, SetsAreOfTheDocumentedRuns) {
    const auto kv = read_vectors();
    ASSERT_FALSE(kv.empty());
    // Set 1: the initiator of a PNE-initiated run; invitee_: an invitee of that same run (same
    // PN, PN GW, rand_server, inventory); gwinit_: the invitee of a PN GW-initiated run.
    EXPECT_EQ(kv.at("flow") + kv.at("role"), "0101");
    EXPECT_EQ(kv.at("invitee_flow") + kv.at("invitee_role") + kv.at("invitee_setup"), "010200");
    EXPECT_EQ(kv.at("gwinit_flow") + kv.at("gwinit_role") + kv.at("gwinit_setup"), "020200");
    for (const char* key : {"pn_id", "gw_id", "rand_server", "inventory_encoding"}) {
        EXPECT_EQ(kv.at(std::string("invitee_") + key), kv.at(key)) << key;
    }
    EXPECT_NE(kv.at("invitee_join_encoding"), kv.at("join_encoding"));
    EXPECT_NE(kv.at("gwinit_pn_id"), kv.at("pn_id"));
    // The whole file is lower-case key=hex with even-length values; every key is read once.
    for (const auto& [key, value] : kv) {
        EXPECT_EQ(value.size() % 2, 0u) << key;
        EXPECT_TRUE(from_hex(value).has_value()) << key;
    }
}
#endif

}  // namespace
}  // namespace cpns
