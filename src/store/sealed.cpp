#include "store/sealed.hpp"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <algorithm>
#include <array>
#include <memory>
#include <string>

#include "store/store.hpp"

namespace cpns::store {
namespace {

constexpr std::string_view kAtRestInfo = "cpns store at-rest v1";
constexpr std::string_view kRowMacInfo = "cpns store row-mac v1";
constexpr std::string_view kAadPrefixV1 = "cpns-eukey|";
constexpr std::string_view kAadPrefixV2 = "cpns-eukey-v2|";

struct CipherCtxFree {
    void operator()(EVP_CIPHER_CTX* c) const noexcept { EVP_CIPHER_CTX_free(c); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree>;

struct KdfFree {
    void operator()(EVP_KDF* k) const noexcept { EVP_KDF_free(k); }
};
struct KdfCtxFree {
    void operator()(EVP_KDF_CTX* c) const noexcept { EVP_KDF_CTX_free(c); }
};

int int_size(std::size_t n) {
    return static_cast<int>(n);
}

SecretKey hkdf_sha256(const SecretKey& master_key, std::string_view info_label) {
    const std::unique_ptr<EVP_KDF, KdfFree> kdf(EVP_KDF_fetch(nullptr, "HKDF", nullptr));
    if (!kdf) throw StoreError("at-rest key: HKDF is not available in OpenSSL");
    const std::unique_ptr<EVP_KDF_CTX, KdfCtxFree> ctx(EVP_KDF_CTX_new(kdf.get()));
    if (!ctx) throw StoreError("at-rest key: cannot create the HKDF context");

    // OSSL_PARAM takes non-const pointers; the values are only read.
    std::array<char, 7> digest{'S', 'H', 'A', '2', '5', '6', '\0'};
    std::string info(info_label);
    const std::array<OSSL_PARAM, 4> params = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest.data(), 0),
        OSSL_PARAM_construct_octet_string(
            OSSL_KDF_PARAM_KEY, const_cast<std::uint8_t*>(master_key.view().data()), kKeySize),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info.data(), info.size()),
        OSSL_PARAM_construct_end(),
    };
    SecretKey out;
    if (EVP_KDF_derive(ctx.get(), out.data(), kKeySize, params.data()) != 1) {
        throw StoreError("at-rest key: HKDF-SHA-256 failed");
    }
    return out;
}

// AES-256-GCM of one EUKey under `key` with the AAD given: nonce || ciphertext || tag.
Bytes seal_with_aad(const SecretKey& key, std::string_view aad, const SecretKey& eukey) {
    Bytes out(kSealedKeySize);
    OsRandom().fill({out.data(), kSealNonceSize});

    const CipherCtx ctx(EVP_CIPHER_CTX_new());
    int len = 0;
    const bool ok =
        ctx && EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) == 1 &&
        EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, int_size(kSealNonceSize), nullptr) ==
            1 &&
        EVP_EncryptInit_ex(ctx.get(), nullptr, nullptr, key.view().data(), out.data()) == 1 &&
        EVP_EncryptUpdate(ctx.get(), nullptr, &len,
                          reinterpret_cast<const unsigned char*>(aad.data()),
                          int_size(aad.size())) == 1 &&
        EVP_EncryptUpdate(ctx.get(), out.data() + kSealNonceSize, &len, eukey.view().data(),
                          int_size(kKeySize)) == 1 &&
        len == int_size(kKeySize) &&
        EVP_EncryptFinal_ex(ctx.get(), out.data() + kSealNonceSize + kKeySize, &len) == 1 &&
        len == 0 &&
        EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, int_size(kSealTagSize),
                            out.data() + kSealNonceSize + kKeySize) == 1;
    if (!ok) throw StoreError("cannot seal an EUKey: AES-256-GCM failed");
    return out;
}

std::optional<SecretKey> unseal_with_aad(const SecretKey& key, std::string_view aad,
                                         ByteView sealed) noexcept {
    if (sealed.size() != kSealedKeySize) return std::nullopt;
    try {
        // The tag is passed by a non-const pointer; copy it.
        std::array<std::uint8_t, kSealTagSize> tag{};
        std::copy(sealed.begin() + kSealNonceSize + kKeySize, sealed.end(), tag.begin());

        const CipherCtx ctx(EVP_CIPHER_CTX_new());
        SecretKey out;  // the plaintext goes straight into the key; wiped if it does not verify
        int len = 0;
        std::array<std::uint8_t, 16> final_block{};
        const bool ok =
            ctx &&
            EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) == 1 &&
            EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, int_size(kSealNonceSize),
                                nullptr) == 1 &&
            EVP_DecryptInit_ex(ctx.get(), nullptr, nullptr, key.view().data(), sealed.data()) ==
                1 &&
            EVP_DecryptUpdate(ctx.get(), nullptr, &len,
                              reinterpret_cast<const unsigned char*>(aad.data()),
                              int_size(aad.size())) == 1 &&
            EVP_DecryptUpdate(ctx.get(), out.data(), &len, sealed.data() + kSealNonceSize,
                              int_size(kKeySize)) == 1 &&
            len == int_size(kKeySize) &&
            EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, int_size(kSealTagSize),
                                tag.data()) == 1 &&
            EVP_DecryptFinal_ex(ctx.get(), final_block.data(), &len) == 1 && len == 0;
        wipe(final_block.data(), final_block.size());
        if (!ok) return std::nullopt;
        return out;
    } catch (...) {
        return std::nullopt;
    }
}

}  // namespace

SecretKey derive_at_rest_key(const SecretKey& master_key) {
    return hkdf_sha256(master_key, kAtRestInfo);
}

SecretKey derive_row_mac_key(const SecretKey& master_key) {
    return hkdf_sha256(master_key, kRowMacInfo);
}

std::string seal_aad(const SealBinding& binding) {
    std::string aad(kAadPrefixV2);
    aad.append(binding.entity_id);
    aad.push_back('|');
    aad.append(to_string(binding.kind));
    aad.push_back('|');
    aad.append(std::to_string(binding.key_version));
    return aad;
}

Sealer::Sealer(const SecretKey& master_key)
    : key_(derive_at_rest_key(master_key)), mac_key_(derive_row_mac_key(master_key)) {}

Bytes Sealer::seal(const SealBinding& binding, const SecretKey& eukey) const {
    return seal_with_aad(key_, seal_aad(binding), eukey);
}

std::optional<SecretKey> Sealer::unseal(const SealBinding& binding,
                                        ByteView sealed) const noexcept {
    try {
        return unseal_with_aad(key_, seal_aad(binding), sealed);
    } catch (...) {  // the AAD's allocation
        return std::nullopt;
    }
}

std::optional<SecretKey> Sealer::unseal_v1(std::string_view entity_id,
                                           ByteView sealed) const noexcept {
    try {
        std::string aad(kAadPrefixV1);
        aad.append(entity_id);
        return unseal_with_aad(key_, aad, sealed);
    } catch (...) {
        return std::nullopt;
    }
}

RowMac Sealer::mac(std::string_view label, std::initializer_list<std::string_view> fields) const {
    std::string input(label);
    for (const std::string_view field : fields) {
        const auto n = static_cast<std::uint32_t>(field.size());
        for (int shift = 24; shift >= 0; shift -= 8) {
            input.push_back(static_cast<char>((n >> shift) & 0xff));
        }
        input.append(field);
    }
    return hmac_sha256(mac_key_.view(), as_bytes(input));
}

}  // namespace cpns::store
