// CPNS key schedule on OpenSSL 3: HMAC-SHA-256 KDF, AES-256-KWP key wrap, randomness, hex.
// The profile is specified in docs/key-schedule.md.
#include "core/crypto.hpp"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <new>
#include <stdexcept>
#include <utility>

namespace cpns {

namespace {

constexpr std::size_t kMaxParamSize = 0xFFFF;

// --- HMAC-SHA-256 through EVP_MAC ----------------------------------------------------------

// Fetched once per process. Deliberately never freed: freeing it from a static destructor could
// run after OpenSSL's own atexit cleanup.
EVP_MAC* hmac_algorithm() {
    static EVP_MAC* const mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
    if (mac == nullptr) throw std::runtime_error("OpenSSL: cannot fetch HMAC");
    return mac;
}

// A per-thread HMAC context with the digest already set and no key. Each call duplicates it and
// keys the copy, so the expensive fetches (of HMAC and of SHA-256) happen once per thread, and
// the keyed state is freed (and cleansed by OpenSSL) at the end of every call.
class HmacTemplate {
  public:
    HmacTemplate() {
        ctx_ = EVP_MAC_CTX_new(hmac_algorithm());
        if (ctx_ == nullptr) throw std::bad_alloc();
        char digest[] = "SHA256";
        const OSSL_PARAM params[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
            OSSL_PARAM_construct_end(),
        };
        if (EVP_MAC_CTX_set_params(ctx_, params) != 1) {
            EVP_MAC_CTX_free(ctx_);
            ctx_ = nullptr;
            throw std::runtime_error("OpenSSL: cannot set the HMAC digest to SHA-256");
        }
    }
    ~HmacTemplate() { EVP_MAC_CTX_free(ctx_); }
    HmacTemplate(const HmacTemplate&) = delete;
    HmacTemplate& operator=(const HmacTemplate&) = delete;

    const EVP_MAC_CTX* get() const noexcept { return ctx_; }

  private:
    EVP_MAC_CTX* ctx_ = nullptr;
};

struct MacCtxFree {
    void operator()(EVP_MAC_CTX* ctx) const noexcept { EVP_MAC_CTX_free(ctx); }
};

// HMAC over several pieces without concatenating them first.
std::array<std::uint8_t, 32> hmac_pieces(ByteView key, std::initializer_list<ByteView> pieces) {
    thread_local const HmacTemplate hmac_template;
    std::unique_ptr<EVP_MAC_CTX, MacCtxFree> ctx(EVP_MAC_CTX_dup(hmac_template.get()));
    if (!ctx) throw std::bad_alloc();
    // A null key pointer would mean "keep the previous key" to OpenSSL, so an empty key is passed
    // as a valid pointer with length zero.
    static const unsigned char kEmpty = 0;
    const unsigned char* key_ptr = key.empty() ? &kEmpty : key.data();
    if (EVP_MAC_init(ctx.get(), key_ptr, key.size(), nullptr) != 1) {
        ERR_clear_error();
        throw std::runtime_error("OpenSSL: HMAC init failed");
    }
    for (const ByteView piece : pieces) {
        if (piece.empty()) continue;
        if (EVP_MAC_update(ctx.get(), piece.data(), piece.size()) != 1) {
            ERR_clear_error();
            throw std::runtime_error("OpenSSL: HMAC update failed");
        }
    }
    std::array<std::uint8_t, 32> out{};
    std::size_t out_len = 0;
    if (EVP_MAC_final(ctx.get(), out.data(), &out_len, out.size()) != 1 || out_len != out.size()) {
        wipe(out.data(), out.size());
        ERR_clear_error();
        throw std::runtime_error("OpenSSL: HMAC final failed");
    }
    return out;
}

// --- AES-KWP through EVP_CIPHER ------------------------------------------------------------

// Fetched once per process and never freed (see hmac_algorithm).
const EVP_CIPHER* kwp_cipher(std::size_t kek_size) noexcept {
    static EVP_CIPHER* const aes128 = EVP_CIPHER_fetch(nullptr, "id-aes128-wrap-pad", nullptr);
    static EVP_CIPHER* const aes192 = EVP_CIPHER_fetch(nullptr, "id-aes192-wrap-pad", nullptr);
    static EVP_CIPHER* const aes256 = EVP_CIPHER_fetch(nullptr, "id-aes256-wrap-pad", nullptr);
    switch (kek_size) {
        case 16:
            return aes128;
        case 24:
            return aes192;
        case 32:
            return aes256;
        default:
            return nullptr;
    }
}

struct CipherCtxFree {
    void operator()(EVP_CIPHER_CTX* ctx) const noexcept { EVP_CIPHER_CTX_free(ctx); }
};

// One KWP operation. The output buffer is wiped before it is released on every path.
std::optional<Bytes> kwp_run(bool encrypt, ByteView kek, ByteView input) noexcept {
    const EVP_CIPHER* cipher = kwp_cipher(kek.size());
    if (cipher == nullptr) return std::nullopt;
    if (input.size() > static_cast<std::size_t>(std::numeric_limits<int>::max()) - 16) {
        return std::nullopt;
    }
    std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree> ctx(EVP_CIPHER_CTX_new());
    if (!ctx) return std::nullopt;
    EVP_CIPHER_CTX_set_flags(ctx.get(), EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
    // A null IV selects RFC 5649's alternative initial value A65959A6.
    if (EVP_CipherInit_ex(ctx.get(), cipher, nullptr, kek.data(), nullptr, encrypt ? 1 : 0) != 1) {
        ERR_clear_error();
        return std::nullopt;
    }
    // Room for the padded input, the 8-byte integrity block and EVP's one-block allowance.
    const std::size_t capacity = (input.size() + 7) / 8 * 8 + 16;
    Bytes out;
    try {
        out.resize(capacity);
    } catch (...) {
        return std::nullopt;
    }
    int len = 0;
    const int rv =
        EVP_CipherUpdate(ctx.get(), out.data(), &len, input.data(), static_cast<int>(input.size()));
    if (rv <= 0 || len <= 0 || static_cast<std::size_t>(len) > capacity) {
        wipe(out.data(), out.size());
        ERR_clear_error();
        return std::nullopt;
    }
    int tail = 0;
    if (EVP_CipherFinal_ex(ctx.get(), out.data() + len, &tail) != 1 || tail != 0) {
        wipe(out.data(), out.size());
        ERR_clear_error();
        return std::nullopt;
    }
    // Shrinking never reallocates, so no copy of the plaintext is left behind.
    wipe(out.data() + len, out.size() - static_cast<std::size_t>(len));
    out.resize(static_cast<std::size_t>(len));
    return out;
}

// --- Hex ---------------------------------------------------------------------------------

int hex_value(char c) noexcept {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// Decodes into out (out.size() * 2 == hex.size()); false on a non-hex character.
bool decode_hex_into(std::string_view hex, std::span<std::uint8_t> out) noexcept {
    for (std::size_t i = 0; i < out.size(); ++i) {
        const int hi = hex_value(hex[2 * i]);
        const int lo = hex_value(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) return false;
        out[i] = static_cast<std::uint8_t>((hi << 4) | lo);
    }
    return true;
}

void append_u16(Bytes& out, std::size_t value) {
    out.push_back(static_cast<std::uint8_t>((value >> 8) & 0xFF));
    out.push_back(static_cast<std::uint8_t>(value & 0xFF));
}

SecretKey key_from_block(std::array<std::uint8_t, 32>& block) {
    SecretKey key(ByteView{block.data(), block.size()});
    wipe(block.data(), block.size());
    return key;
}

// Parameters shared by SK_PNE, hash_PNE and hash_server_PNE after their leading values.
struct ContextParams {
    Bytes binding;
    Bytes invited;
};

ContextParams context_params(const PneContext& ctx) {
    return ContextParams{encode_setup_binding(ctx), encode_id_list(ctx.invited)};
}

}  // namespace

// --- Memory --------------------------------------------------------------------------------

void wipe(void* data, std::size_t size) noexcept {
    if (data != nullptr && size != 0) OPENSSL_cleanse(data, size);
}

bool ct_equal(ByteView a, ByteView b) noexcept {
    if (a.size() != b.size()) return false;
    if (a.empty()) return true;
    return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

// --- SecretKey -----------------------------------------------------------------------------

SecretKey::SecretKey(ByteView raw) {
    if (raw.size() != kKeySize) {
        throw std::invalid_argument("SecretKey: a key must be exactly 32 bytes");
    }
    std::copy(raw.begin(), raw.end(), bytes_.begin());
}

SecretKey& SecretKey::operator=(const SecretKey& other) noexcept {
    if (this != &other) bytes_ = other.bytes_;
    return *this;
}

SecretKey::SecretKey(SecretKey&& other) noexcept : bytes_(other.bytes_) {
    wipe(other.bytes_.data(), other.bytes_.size());
}

SecretKey& SecretKey::operator=(SecretKey&& other) noexcept {
    if (this != &other) {
        bytes_ = other.bytes_;
        wipe(other.bytes_.data(), other.bytes_.size());
    }
    return *this;
}

SecretKey::~SecretKey() {
    wipe(bytes_.data(), bytes_.size());
}

bool SecretKey::is_zero() const noexcept {
    std::uint8_t acc = 0;
    for (const std::uint8_t b : bytes_) acc = static_cast<std::uint8_t>(acc | b);
    return acc == 0;
}

std::string SecretKey::to_hex() const {
    return cpns::to_hex(view());
}

std::optional<SecretKey> SecretKey::from_hex(std::string_view hex) {
    if (hex.size() != 2 * kKeySize) return std::nullopt;
    SecretKey key;
    if (!decode_hex_into(hex, {key.data(), kKeySize})) return std::nullopt;
    return key;
}

// --- Randomness ----------------------------------------------------------------------------

Bytes Random::bytes(std::size_t n) {
    Bytes out(n);
    fill(out);
    return out;
}

SecretKey Random::key() {
    SecretKey key;
    fill({key.data(), kKeySize});
    return key;
}

void OsRandom::fill(std::span<std::uint8_t> out) {
    constexpr std::size_t kChunk = 1u << 20;
    std::size_t done = 0;
    while (done < out.size()) {
        const std::size_t n = std::min(kChunk, out.size() - done);
        if (RAND_bytes(out.data() + done, static_cast<int>(n)) != 1) {
            std::fputs("cpns: fatal: the OpenSSL CSPRNG (RAND_bytes) failed; aborting\n", stderr);
            std::abort();
        }
        done += n;
    }
}

DeterministicRandom::DeterministicRandom(std::uint64_t seed) {
    static constexpr std::string_view kLabel = "CPNS DeterministicRandom";
    std::array<std::uint8_t, 8> seed_bytes{};
    for (std::size_t i = 0; i < seed_bytes.size(); ++i) {
        seed_bytes[i] = static_cast<std::uint8_t>(seed >> (8 * (7 - i)));
    }
    seed_key_ = hmac_sha256(as_bytes(kLabel), seed_bytes);
}

void DeterministicRandom::fill(std::span<std::uint8_t> out) {
    std::size_t done = 0;
    while (done < out.size()) {
        if (used_ == block_.size()) {
            std::array<std::uint8_t, 8> counter_bytes{};
            for (std::size_t i = 0; i < counter_bytes.size(); ++i) {
                counter_bytes[i] = static_cast<std::uint8_t>(counter_ >> (8 * (7 - i)));
            }
            block_ = hmac_sha256(seed_key_, counter_bytes);
            ++counter_;
            used_ = 0;
        }
        const std::size_t n = std::min(block_.size() - used_, out.size() - done);
        std::copy_n(block_.begin() + static_cast<std::ptrdiff_t>(used_), n,
                    out.begin() + static_cast<std::ptrdiff_t>(done));
        used_ += n;
        done += n;
    }
}

// --- KDF -----------------------------------------------------------------------------------

std::array<std::uint8_t, 32> hmac_sha256(ByteView key, ByteView data) {
    return hmac_pieces(key, {data});
}

// --- KeyedHmac -----------------------------------------------------------------------------

KeyedHmac::KeyedHmac(const SecretKey& key) {
    key_ = key;  // the copy this object keeps (keyed_with), wiped with it
    thread_local const HmacTemplate hmac_template;
    std::unique_ptr<EVP_MAC_CTX, MacCtxFree> ctx(EVP_MAC_CTX_dup(hmac_template.get()));
    if (!ctx) throw std::bad_alloc();
    if (EVP_MAC_init(ctx.get(), key_.view().data(), key_.view().size(), nullptr) != 1) {
        ERR_clear_error();
        throw std::runtime_error("OpenSSL: HMAC init failed");
    }
    ctx_ = ctx.release();
}

KeyedHmac::KeyedHmac(KeyedHmac&& other) noexcept
    : ctx_(std::exchange(other.ctx_, nullptr)), key_(std::move(other.key_)) {}

KeyedHmac& KeyedHmac::operator=(KeyedHmac&& other) noexcept {
    if (this != &other) {
        EVP_MAC_CTX_free(ctx_);
        ctx_ = std::exchange(other.ctx_, nullptr);
        key_ = std::move(other.key_);
    }
    return *this;
}

// EVP_MAC_CTX_free cleanses OpenSSL's keyed state; key_ wipes itself.
KeyedHmac::~KeyedHmac() {
    EVP_MAC_CTX_free(ctx_);
}

std::array<std::uint8_t, 32> KeyedHmac::mac(std::initializer_list<ByteView> pieces) {
    if (ctx_ == nullptr) throw std::logic_error("KeyedHmac used after it was moved from");
    // A null key restarts from the keyed state set at construction (the pads are not hashed
    // again).
    if (EVP_MAC_init(ctx_, nullptr, 0, nullptr) != 1) {
        ERR_clear_error();
        throw std::runtime_error("OpenSSL: HMAC re-init failed");
    }
    for (const ByteView piece : pieces) {
        if (piece.empty()) continue;
        if (EVP_MAC_update(ctx_, piece.data(), piece.size()) != 1) {
            ERR_clear_error();
            throw std::runtime_error("OpenSSL: HMAC update failed");
        }
    }
    std::array<std::uint8_t, 32> out{};
    std::size_t out_len = 0;
    if (EVP_MAC_final(ctx_, out.data(), &out_len, out.size()) != 1 || out_len != out.size()) {
        wipe(out.data(), out.size());
        ERR_clear_error();
        throw std::runtime_error("OpenSSL: HMAC final failed");
    }
    return out;
}

namespace {

// S = FC || P0 || L0 || ... (the KDF's input) in one buffer, then mac(S). Up to
// kKdfStackInput bytes (every KDF of the profile) the buffer is on the stack; beyond it on the
// heap, reserved up front so it is never reallocated and copied. Either way it can hold
// SK_PNE and is wiped before it is released.
constexpr std::size_t kKdfStackInput = 512;

template <typename Mac>
std::array<std::uint8_t, 32> kdf_input(Fc fc, std::initializer_list<ByteView> params, Mac&& mac) {
    std::size_t total = 1;
    for (const ByteView p : params) {
        if (p.size() > kMaxParamSize) {
            throw std::invalid_argument("kdf: a parameter is longer than 65535 bytes");
        }
        total += p.size() + 2;
    }
    std::array<std::uint8_t, kKdfStackInput> stack_buf;  // NOLINT(*-member-init): filled below
    Bytes heap_buf;
    std::uint8_t* s = stack_buf.data();
    if (total > stack_buf.size()) {
        heap_buf.resize(total);
        s = heap_buf.data();
    }
    std::size_t at = 0;
    s[at++] = static_cast<std::uint8_t>(fc);
    for (const ByteView p : params) {
        if (!p.empty()) std::copy(p.begin(), p.end(), s + at);
        at += p.size();
        s[at++] = static_cast<std::uint8_t>((p.size() >> 8) & 0xFF);
        s[at++] = static_cast<std::uint8_t>(p.size() & 0xFF);
    }
    std::array<std::uint8_t, 32> out{};
    try {
        out = mac(ByteView{s, total});
    } catch (...) {
        wipe(s, total);
        throw;
    }
    wipe(s, total);
    return out;
}

}  // namespace

std::array<std::uint8_t, 32> kdf(KeyedHmac& key, Fc fc, std::initializer_list<ByteView> params) {
    return kdf_input(fc, params, [&key](ByteView s) { return key.mac({s}); });
}

std::array<std::uint8_t, 32> kdf(const SecretKey& key, Fc fc,
                                 std::initializer_list<ByteView> params) {
    return kdf_input(fc, params, [&key](ByteView s) { return hmac_pieces(key.view(), {s}); });
}

// --- Encodings -----------------------------------------------------------------------------

Bytes encode_setup_binding(const PneContext& ctx) {
    return Bytes{static_cast<std::uint8_t>(ctx.flow), static_cast<std::uint8_t>(ctx.role),
                 static_cast<std::uint8_t>(ctx.setup),
                 static_cast<std::uint8_t>(ctx.local_key_requested ? 1 : 0)};
}

Bytes encode_id_list(const std::vector<std::string>& ids) {
    std::size_t total = 0;
    for (const std::string& id : ids) {
        if (id.size() > kMaxParamSize) {
            throw std::invalid_argument("encode_id_list: an ID is longer than 65535 bytes");
        }
        total += 2 + id.size();
    }
    Bytes out;
    out.reserve(total);
    for (const std::string& id : ids) {
        append_u16(out, id.size());
        const ByteView v = as_bytes(id);
        out.insert(out.end(), v.begin(), v.end());
    }
    return out;
}

// --- Derived values ------------------------------------------------------------------------

SecretKey derive_sk_pne(KeyedHmac& eukey_pne, ByteView rand_pne, ByteView rand_server,
                        const PneContext& ctx) {
    const ContextParams c = context_params(ctx);
    auto block = kdf(eukey_pne, Fc::kSkPne,
                     {rand_pne, rand_server, as_bytes(ctx.pne_id), as_bytes(ctx.gw_id),
                      as_bytes(ctx.pn_id), c.binding, c.invited});
    return key_from_block(block);
}

SecretKey derive_sk_pne(const SecretKey& eukey_pne, ByteView rand_pne, ByteView rand_server,
                        const PneContext& ctx) {
    KeyedHmac keyed(eukey_pne);
    return derive_sk_pne(keyed, rand_pne, rand_server, ctx);
}

Hash derive_hash_pne(KeyedHmac& eukey_pne, ByteView rand_pne, ByteView rand_server,
                     const SecretKey& sk_pne, const PneContext& ctx) {
    const ContextParams c = context_params(ctx);
    return kdf(eukey_pne, Fc::kHashPne,
               {rand_pne, rand_server, sk_pne.view(), as_bytes(ctx.pne_id), as_bytes(ctx.gw_id),
                as_bytes(ctx.pn_id), c.binding, c.invited, ctx.join_digest});
}

Hash derive_hash_pne(const SecretKey& eukey_pne, ByteView rand_pne, ByteView rand_server,
                     const SecretKey& sk_pne, const PneContext& ctx) {
    KeyedHmac keyed(eukey_pne);
    return derive_hash_pne(keyed, rand_pne, rand_server, sk_pne, ctx);
}

Hash derive_hash_server_pne(KeyedHmac& eukey_pne, ByteView rand_pne, ByteView rand_server,
                            const SecretKey& sk_pne, ByteView hash_pne, const PneContext& ctx) {
    const ContextParams c = context_params(ctx);
    return kdf(
        eukey_pne, Fc::kHashServerPne,
        {rand_pne, rand_server, sk_pne.view(), hash_pne, as_bytes(ctx.pne_id), as_bytes(ctx.gw_id),
         as_bytes(ctx.pn_id), c.binding, c.invited, ctx.join_digest, ctx.inventory_digest});
}

Hash derive_hash_server_pne(const SecretKey& eukey_pne, ByteView rand_pne, ByteView rand_server,
                            const SecretKey& sk_pne, ByteView hash_pne, const PneContext& ctx) {
    KeyedHmac keyed(eukey_pne);
    return derive_hash_server_pne(keyed, rand_pne, rand_server, sk_pne, hash_pne, ctx);
}

SecretKey derive_kek(KeyedHmac& eukey_recipient, Recipient recipient, std::string_view pn_id,
                     std::string_view pne_id, std::string_view gw_id, ByteView rand_server,
                     ByteView rand_pne) {
    const auto recipient_byte = static_cast<std::uint8_t>(recipient);
    auto block = kdf(eukey_recipient, Fc::kKek,
                     {ByteView{&recipient_byte, 1}, as_bytes(pn_id), as_bytes(pne_id),
                      as_bytes(gw_id), rand_server, rand_pne});
    return key_from_block(block);
}

SecretKey derive_kek(const SecretKey& eukey_recipient, Recipient recipient, std::string_view pn_id,
                     std::string_view pne_id, std::string_view gw_id, ByteView rand_server,
                     ByteView rand_pne) {
    KeyedHmac keyed(eukey_recipient);
    return derive_kek(keyed, recipient, pn_id, pne_id, gw_id, rand_server, rand_pne);
}

SecretKey derive_gw_server_psk(const SecretKey& eukey_gw, std::string_view gw_id) {
    auto block = kdf(eukey_gw, Fc::kGwServerPsk, {as_bytes(gw_id)});
    return key_from_block(block);
}

std::array<std::uint8_t, 8> encode_u64(std::uint64_t v) {
    std::array<std::uint8_t, 8> out{};
    for (int i = 7; i >= 0; --i, v >>= 8) out[static_cast<std::size_t>(i)] = v & 0xff;
    return out;
}

Hash derive_leave_proof(const SecretKey& eukey_pne, std::string_view pne_id, std::string_view gw_id,
                        std::string_view pn_id, std::uint64_t revision, ByteView rand_pne) {
    const auto rev = encode_u64(revision);
    return kdf(eukey_pne, Fc::kLeaveProof,
               {as_bytes(pne_id), as_bytes(gw_id), as_bytes(pn_id), ByteView{rev}, rand_pne});
}

Hash derive_notice_proof(const SecretKey& eukey_pne, std::uint8_t kind, std::string_view pne_id,
                         const Hash& inventory_digest, ByteView rand_pne) {
    return kdf(eukey_pne, Fc::kChangeNotice,
               {ByteView{&kind, 1}, as_bytes(pne_id), ByteView{inventory_digest}, rand_pne});
}

// --- Key wrap ------------------------------------------------------------------------------

namespace detail {

std::optional<Bytes> aes_kwp_wrap(ByteView kek, ByteView plaintext) noexcept {
    if (plaintext.empty() || plaintext.size() > kMaxParamSize) return std::nullopt;
    return kwp_run(true, kek, plaintext);
}

std::optional<Bytes> aes_kwp_unwrap(ByteView kek, ByteView wrapped) noexcept {
    // RFC 5649: at least two 64-bit blocks, a whole number of blocks.
    if (wrapped.size() < 16 || wrapped.size() % 8 != 0 || wrapped.size() > kMaxParamSize + 15) {
        return std::nullopt;
    }
    return kwp_run(false, kek, wrapped);
}

}  // namespace detail

Bytes wrap_key(const SecretKey& kek, const SecretKey& key) {
    std::optional<Bytes> wrapped = detail::aes_kwp_wrap(kek.view(), key.view());
    if (!wrapped || wrapped->size() != kWrappedKeySize) {
        throw std::runtime_error("OpenSSL: AES-256-KWP wrap failed");
    }
    return std::move(*wrapped);
}

std::optional<SecretKey> unwrap_key(const SecretKey& kek, ByteView wrapped) {
    if (wrapped.size() != kWrappedKeySize) return std::nullopt;
    std::optional<Bytes> plain = detail::aes_kwp_unwrap(kek.view(), wrapped);
    if (!plain) return std::nullopt;
    // A valid wrap of a key of another length (25..31 bytes also wrap to 40) is refused.
    if (plain->size() != kKeySize) {
        wipe(plain->data(), plain->size());
        return std::nullopt;
    }
    SecretKey key;
    std::copy(plain->begin(), plain->end(), key.data());
    wipe(plain->data(), plain->size());
    return key;
}

Bytes wrap_local_eukey(KeyedHmac& eukey_recipient, Recipient recipient, std::string_view pn_id,
                       std::string_view pne_id, std::string_view gw_id, ByteView rand_server,
                       ByteView rand_pne, const SecretKey& local_eukey) {
    const SecretKey kek =
        derive_kek(eukey_recipient, recipient, pn_id, pne_id, gw_id, rand_server, rand_pne);
    return wrap_key(kek, local_eukey);
}

Bytes wrap_local_eukey(const SecretKey& eukey_recipient, Recipient recipient,
                       std::string_view pn_id, std::string_view pne_id, std::string_view gw_id,
                       ByteView rand_server, ByteView rand_pne, const SecretKey& local_eukey) {
    KeyedHmac keyed(eukey_recipient);
    return wrap_local_eukey(keyed, recipient, pn_id, pne_id, gw_id, rand_server, rand_pne,
                            local_eukey);
}

std::optional<SecretKey> unwrap_local_eukey(KeyedHmac& eukey_recipient, Recipient recipient,
                                            std::string_view pn_id, std::string_view pne_id,
                                            std::string_view gw_id, ByteView rand_server,
                                            ByteView rand_pne, ByteView wrapped) {
    try {
        if (wrapped.size() != kWrappedKeySize) return std::nullopt;
        const SecretKey kek =
            derive_kek(eukey_recipient, recipient, pn_id, pne_id, gw_id, rand_server, rand_pne);
        return unwrap_key(kek, wrapped);
    } catch (...) {
        return std::nullopt;
    }
}

std::optional<SecretKey> unwrap_local_eukey(const SecretKey& eukey_recipient, Recipient recipient,
                                            std::string_view pn_id, std::string_view pne_id,
                                            std::string_view gw_id, ByteView rand_server,
                                            ByteView rand_pne, ByteView wrapped) {
    try {
        if (wrapped.size() != kWrappedKeySize) return std::nullopt;
        KeyedHmac keyed(eukey_recipient);
        return unwrap_local_eukey(keyed, recipient, pn_id, pne_id, gw_id, rand_server, rand_pne,
                                  wrapped);
    } catch (...) {
        return std::nullopt;
    }
}

std::array<std::uint8_t, kHashSize> sha256(ByteView data) {
    std::array<std::uint8_t, kHashSize> out{};
    unsigned int len = 0;
    if (EVP_Digest(data.data(), data.size(), out.data(), &len, EVP_sha256(), nullptr) != 1 ||
        len != out.size())
        throw std::runtime_error("SHA-256 failed");
    return out;
}

// --- Hex -----------------------------------------------------------------------------------

std::string to_hex(ByteView data) {
    static constexpr char kDigits[] = "0123456789abcdef";
    std::string out;
    out.reserve(data.size() * 2);
    for (const std::uint8_t b : data) {
        out.push_back(kDigits[b >> 4]);
        out.push_back(kDigits[b & 0x0F]);
    }
    return out;
}

std::optional<Bytes> from_hex(std::string_view hex) {
    if (hex.size() % 2 != 0) return std::nullopt;
    Bytes out(hex.size() / 2);
    if (!decode_hex_into(hex, out)) return std::nullopt;
    return out;
}

}  // namespace cpns
