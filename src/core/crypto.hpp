// CPNS key schedule and the primitives under it (OpenSSL 3).
//
// Everything here is pure computation: no I/O, no clock. Randomness comes from a Random
// injected by the caller. The profile (labels, parameter order, encodings) is specified in
// docs/key-schedule.md; the test vectors there (and in docs/test-vectors.txt) are recomputed by
// tests/vectors_cli_test.sh with the openssl command-line tool.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

struct evp_mac_ctx_st;  // OpenSSL's EVP_MAC_CTX (its header stays out of this one)

namespace cpns {

using Bytes = std::vector<std::uint8_t>;
using ByteView = std::span<const std::uint8_t>;

inline constexpr std::size_t kKeySize = 32;         // EUKey, LocalEUKey, SK_PNE, PSKs: 256 bit
inline constexpr std::size_t kRandSize = 16;        // rand_PNE, rand_server: 128 bit
inline constexpr std::size_t kHashSize = 32;        // hash_PNE, hash_server_PNE
inline constexpr std::size_t kWrappedKeySize = 40;  // AES-256-KWP of a 32-byte key (RFC 5649)

// Overwrites memory so the compiler cannot elide it (OPENSSL_cleanse).
void wipe(void* data, std::size_t size) noexcept;
// Constant-time equality; false when the sizes differ (size is not secret).
bool ct_equal(ByteView a, ByteView b) noexcept;

// A 256-bit secret. Wiped on destruction and on move-from; never printed.
class SecretKey {
  public:
    SecretKey() noexcept { bytes_.fill(0); }
    explicit SecretKey(ByteView raw);  // raw.size() must be kKeySize (std::invalid_argument)
    SecretKey(const SecretKey& other) noexcept = default;
    SecretKey& operator=(const SecretKey& other) noexcept;
    SecretKey(SecretKey&& other) noexcept;
    SecretKey& operator=(SecretKey&& other) noexcept;
    ~SecretKey();

    ByteView view() const noexcept { return {bytes_.data(), bytes_.size()}; }
    std::uint8_t* data() noexcept { return bytes_.data(); }
    bool is_zero() const noexcept;
    // Constant-time.
    friend bool operator==(const SecretKey& a, const SecretKey& b) noexcept {
        return ct_equal(a.view(), b.view());
    }

    // Hex form, for key files and test vectors only. Never log it.
    std::string to_hex() const;
    static std::optional<SecretKey> from_hex(std::string_view hex);

  private:
    std::array<std::uint8_t, kKeySize> bytes_;
};

// Injected randomness. The daemons use OsRandom; the simulator a seeded DeterministicRandom.
class Random {
  public:
    virtual ~Random() = default;
    virtual void fill(std::span<std::uint8_t> out) = 0;
    Bytes bytes(std::size_t n);
    SecretKey key();
};

// RAND_bytes from OpenSSL (the OS CSPRNG). Aborts if the CSPRNG fails: there is no safe
// way to continue without randomness.
class OsRandom final : public Random {
  public:
    void fill(std::span<std::uint8_t> out) override;
};

// Deterministic stream for simulation and tests: HMAC-SHA-256(seed key, counter), seed key =
// HMAC-SHA-256("CPNS DeterministicRandom", seed) (docs/key-schedule.md). Not for keys that
// protect anything real.
class DeterministicRandom final : public Random {
  public:
    explicit DeterministicRandom(std::uint64_t seed);
    void fill(std::span<std::uint8_t> out) override;

  private:
    std::array<std::uint8_t, 32> seed_key_{};
    std::uint64_t counter_ = 0;
    std::array<std::uint8_t, 32> block_{};
    std::size_t used_ = 32;
};

// --- The generic KDF (3GPP TS 33.220 Annex B style) ---------------------------------------
// KDF(K, FC, P0..Pn) = HMAC-SHA-256(K, FC || P0 || L0 || ... || Pn || Ln), Li = len(Pi) as
// two octets big-endian. Each Pi must be at most 65535 bytes (std::invalid_argument).
// The HMAC context is fetched once per thread and reused; a caller that uses one key several
// times keys a KeyedHmac once and passes it instead.
enum class Fc : std::uint8_t {
    kSkPne = 0x51,
    kHashPne = 0x52,
    kHashServerPne = 0x53,
    kKek = 0x54,
    kGwServerPsk = 0x55,
    kDeviceState = 0x56,   // a PN GW's or PNE's key for its own state file (docs/operations.md)
    kLeaveProof = 0x5a,    // a PNE's proof of a PnLeaveRequest (PN lifecycle)
    kChangeNotice = 0x5b,  // the server's proof of a PnChangeNotice to one PNE (PN lifecycle)
};
std::array<std::uint8_t, 32> kdf(const SecretKey& key, Fc fc,
                                 std::initializer_list<ByteView> params);
// Plain HMAC-SHA-256, exposed for known-answer tests.
std::array<std::uint8_t, 32> hmac_sha256(ByteView key, ByteView data);

// HMAC-SHA-256 keyed once: the key's inner and outer pads are hashed at construction, and each
// mac() starts again from that keyed state, so a key used several times (an EUKey's three or
// four KDF calls per PNE in one session) pays for the key schedule once. The same results as
// kdf()/hmac_sha256() with the same key. Holds the key (for keyed_with) and OpenSSL's keyed
// state; both are wiped on destruction. Not thread-safe: one object per session, one thread.
class KeyedHmac {
  public:
    explicit KeyedHmac(const SecretKey& key);
    KeyedHmac(KeyedHmac&& other) noexcept;
    KeyedHmac& operator=(KeyedHmac&& other) noexcept;
    KeyedHmac(const KeyedHmac&) = delete;
    KeyedHmac& operator=(const KeyedHmac&) = delete;
    ~KeyedHmac();

    // HMAC-SHA-256(key, pieces concatenated).
    std::array<std::uint8_t, 32> mac(std::initializer_list<ByteView> pieces);
    // Constant-time: whether this state was made from `key`.
    bool keyed_with(const SecretKey& key) const noexcept { return key_ == key; }

  private:
    evp_mac_ctx_st* ctx_ = nullptr;  // OpenSSL's EVP_MAC_CTX, keyed
    SecretKey key_;
};
// kdf() under a key already set up in `key`.
std::array<std::uint8_t, 32> kdf(KeyedHmac& key, Fc fc, std::initializer_list<ByteView> params);

// --- Context bound into every per-PNE value --------------------------------------------------
enum class Flow : std::uint8_t { kPneInitiated = 1, kGwInitiated = 2 };
enum class PneRole : std::uint8_t { kInitiator = 1, kInvitee = 2 };
enum class SetupKind : std::uint8_t { kNone = 0, kOneToOne = 1, kAll = 2, kInviteList = 3 };

// What a PNE sent and where it belongs. The PNE computes it over what it sent; the server
// over what the PN GW forwarded. Any difference (a PN GW or PAN attacker altering the setup
// parameters, or a value replayed into another PN) makes hash_PNE fail to verify.
struct PneContext {
    std::string pne_id;
    std::string gw_id;
    std::string pn_id;
    Flow flow = Flow::kPneInitiated;
    PneRole role = PneRole::kInitiator;
    SetupKind setup = SetupKind::kNone;  // kNone for every PNE but the initiator
    std::vector<std::string> invited;    // the initiator's invitation list, as sent
    bool local_key_requested = false;
    // SHA-256 of the PNE's join as it sent it (capabilities, contents, rand_PNE ...): bound
    // into hash_PNE and hash_server_PNE, so nothing the PNE said can be altered on the way.
    std::array<std::uint8_t, kHashSize> join_digest{};
    // SHA-256 of the PN Inventory the server registered: bound into hash_server_PNE only, so
    // the PNE can check the member list its PN GW hands it.
    std::array<std::uint8_t, kHashSize> inventory_digest{};
};
// P-encodings used in the KDF (documented in docs/key-schedule.md).
Bytes encode_setup_binding(const PneContext& ctx);  // flow || role || setup || lkr (4 octets)
Bytes encode_id_list(const std::vector<std::string>& ids);  // (len16 || id)* in order

using Hash = std::array<std::uint8_t, kHashSize>;

// SK_PNE = KDF(EUKey_PNE, 0x51, rand_PNE, rand_server, PNE ID, PN GW ID, PN ID, binding, invited)
SecretKey derive_sk_pne(const SecretKey& eukey_pne, ByteView rand_pne, ByteView rand_server,
                        const PneContext& ctx);
// hash_PNE = KDF(EUKey_PNE, 0x52, rand_PNE, rand_server, SK_PNE, PNE ID, PN GW ID, PN ID,
//                binding, invited, join digest)
Hash derive_hash_pne(const SecretKey& eukey_pne, ByteView rand_pne, ByteView rand_server,
                     const SecretKey& sk_pne, const PneContext& ctx);
// hash_server_PNE = KDF(EUKey_PNE, 0x53, rand_PNE, rand_server, SK_PNE, hash_PNE, PNE ID,
//                       PN GW ID, PN ID, binding, invited, join digest, inventory digest)
Hash derive_hash_server_pne(const SecretKey& eukey_pne, ByteView rand_pne, ByteView rand_server,
                            const SecretKey& sk_pne, ByteView hash_pne, const PneContext& ctx);
// The same three under an EUKey keyed once (KeyedHmac): what the server and the PNE use, one
// KeyedHmac per PNE per session.
SecretKey derive_sk_pne(KeyedHmac& eukey_pne, ByteView rand_pne, ByteView rand_server,
                        const PneContext& ctx);
Hash derive_hash_pne(KeyedHmac& eukey_pne, ByteView rand_pne, ByteView rand_server,
                     const SecretKey& sk_pne, const PneContext& ctx);
Hash derive_hash_server_pne(KeyedHmac& eukey_pne, ByteView rand_pne, ByteView rand_server,
                            const SecretKey& sk_pne, ByteView hash_pne, const PneContext& ctx);

// Who a LocalEUKey copy is for.
enum class Recipient : std::uint8_t { kPne = 1, kGw = 2 };
// KEK = KDF(EUKey_recipient, 0x54, recipient, PN ID, PNE ID, PN GW ID, rand_server, rand_PNE)
// Both runs' randoms: a copy made for one run never opens in another.
SecretKey derive_kek(const SecretKey& eukey_recipient, Recipient recipient, std::string_view pn_id,
                     std::string_view pne_id, std::string_view gw_id, ByteView rand_server,
                     ByteView rand_pne);
SecretKey derive_kek(KeyedHmac& eukey_recipient, Recipient recipient, std::string_view pn_id,
                     std::string_view pne_id, std::string_view gw_id, ByteView rand_server,
                     ByteView rand_pne);
// The PN GW's external PSK towards the CPNS Server: KDF(EUKey_GW, 0x55, PN GW ID)
SecretKey derive_gw_server_psk(const SecretKey& eukey_gw, std::string_view gw_id);

// --- PN lifecycle (docs/key-schedule.md, "PN lifecycle proofs") ---------------------------
// Eight octets, big-endian: how a revision enters the KDF.
std::array<std::uint8_t, 8> encode_u64(std::uint64_t v);
// leave proof = KDF(EUKey_PNE, 0x5a, PNE ID, PN GW ID, PN ID, revision (8 octets), rand_PNE)
Hash derive_leave_proof(const SecretKey& eukey_pne, std::string_view pne_id, std::string_view gw_id,
                        std::string_view pn_id, std::uint64_t revision, ByteView rand_pne);
// notice proof = KDF(EUKey_PNE, 0x5b, kind (1 octet), PNE ID, inventory digest, rand_PNE)
// where kind is the NoticeKind number and rand_PNE is empty except for NOTICE_LEFT.
Hash derive_notice_proof(const SecretKey& eukey_pne, std::uint8_t kind, std::string_view pne_id,
                         const Hash& inventory_digest, ByteView rand_pne);

// AES-256-KWP (RFC 5649) of a 32-byte key under a KEK. Output kWrappedKeySize bytes.
Bytes wrap_key(const SecretKey& kek, const SecretKey& key);
// std::nullopt when the integrity check fails (wrong KEK, other context, altered bytes).
std::optional<SecretKey> unwrap_key(const SecretKey& kek, ByteView wrapped);

// Convenience: wrap/unwrap a LocalEUKey copy for a recipient, deriving the KEK (wiped after).
Bytes wrap_local_eukey(const SecretKey& eukey_recipient, Recipient recipient,
                       std::string_view pn_id, std::string_view pne_id, std::string_view gw_id,
                       ByteView rand_server, ByteView rand_pne, const SecretKey& local_eukey);
std::optional<SecretKey> unwrap_local_eukey(const SecretKey& eukey_recipient, Recipient recipient,
                                            std::string_view pn_id, std::string_view pne_id,
                                            std::string_view gw_id, ByteView rand_server,
                                            ByteView rand_pne, ByteView wrapped);
// The same under a recipient EUKey keyed once.
Bytes wrap_local_eukey(KeyedHmac& eukey_recipient, Recipient recipient, std::string_view pn_id,
                       std::string_view pne_id, std::string_view gw_id, ByteView rand_server,
                       ByteView rand_pne, const SecretKey& local_eukey);
std::optional<SecretKey> unwrap_local_eukey(KeyedHmac& eukey_recipient, Recipient recipient,
                                            std::string_view pn_id, std::string_view pne_id,
                                            std::string_view gw_id, ByteView rand_server,
                                            ByteView rand_pne, ByteView wrapped);

// SHA-256 (the join and inventory digests).
std::array<std::uint8_t, kHashSize> sha256(ByteView data);

// Helpers for hex (test vectors, key files).
std::string to_hex(ByteView data);
std::optional<Bytes> from_hex(std::string_view hex);
inline ByteView as_bytes(std::string_view s) {
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

namespace detail {
// Raw AES-KWP (RFC 5649) with the default alternative IV, for any KEK size (16, 24 or 32
// bytes) and any plaintext of 1..65535 bytes. wrap_key/unwrap_key are built on these; they are
// exposed for the RFC 5649 known-answer tests (which use a 192-bit KEK). nullopt on a bad KEK
// size, a bad length or a failed integrity check. Never throws.
std::optional<Bytes> aes_kwp_wrap(ByteView kek, ByteView plaintext) noexcept;
std::optional<Bytes> aes_kwp_unwrap(ByteView kek, ByteView wrapped) noexcept;
}  // namespace detail

}  // namespace cpns
