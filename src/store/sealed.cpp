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
constexpr std::string_view kAadPrefix = "cpns-eukey|";

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

std::string aad_for(std::string_view entity_id) {
    std::string aad(kAadPrefix);
    aad.append(entity_id);
    return aad;
}

int int_size(std::size_t n) {
    return static_cast<int>(n);
}

}  // namespace

SecretKey derive_at_rest_key(const SecretKey& master_key) {
    const std::unique_ptr<EVP_KDF, KdfFree> kdf(EVP_KDF_fetch(nullptr, "HKDF", nullptr));
    if (!kdf) throw StoreError("at-rest key: HKDF is not available in OpenSSL");
    const std::unique_ptr<EVP_KDF_CTX, KdfCtxFree> ctx(EVP_KDF_CTX_new(kdf.get()));
    if (!ctx) throw StoreError("at-rest key: cannot create the HKDF context");

    // OSSL_PARAM takes non-const pointers; the values are only read.
    std::array<char, 7> digest{'S', 'H', 'A', '2', '5', '6', '\0'};
    std::string info(kAtRestInfo);
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

Sealer::Sealer(const SecretKey& master_key) : key_(derive_at_rest_key(master_key)) {}

Bytes Sealer::seal(std::string_view entity_id, const SecretKey& eukey) const {
    Bytes out(kSealedKeySize);
    OsRandom().fill({out.data(), kSealNonceSize});
    const std::string aad = aad_for(entity_id);

    const CipherCtx ctx(EVP_CIPHER_CTX_new());
    int len = 0;
    const bool ok =
        ctx && EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) == 1 &&
        EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, int_size(kSealNonceSize), nullptr) ==
            1 &&
        EVP_EncryptInit_ex(ctx.get(), nullptr, nullptr, key_.view().data(), out.data()) == 1 &&
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

std::optional<SecretKey> Sealer::unseal(std::string_view entity_id,
                                        ByteView sealed) const noexcept {
    if (sealed.size() != kSealedKeySize) return std::nullopt;
    try {
        const std::string aad = aad_for(entity_id);
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
            EVP_DecryptInit_ex(ctx.get(), nullptr, nullptr, key_.view().data(), sealed.data()) ==
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

}  // namespace cpns::store
