// Encryption at rest of EUKeys. Each EUKey is sealed with AES-256-GCM under the at-rest key
// K = HKDF-SHA-256(IKM = master key, salt = none, info = "cpns store at-rest v1", L = 32),
// with a fresh 12-byte random nonce and AAD = "cpns-eukey|" || entity id, so a sealed key
// opens only under the right master key and only for the entity it was sealed for. The stored
// blob is nonce (12) || ciphertext (32) || tag (16).
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>

#include "core/crypto.hpp"

namespace cpns::store {

inline constexpr std::size_t kSealNonceSize = 12;
inline constexpr std::size_t kSealTagSize = 16;
inline constexpr std::size_t kSealedKeySize = kSealNonceSize + kKeySize + kSealTagSize;  // 60

// HKDF-SHA-256 (EVP_KDF "HKDF") of the master key with info "cpns store at-rest v1".
SecretKey derive_at_rest_key(const SecretKey& master_key);

class Sealer {
  public:
    // Derives the at-rest key; the master key itself is not kept.
    explicit Sealer(const SecretKey& master_key);

    // nonce || ciphertext || tag (kSealedKeySize bytes), nonce from the OS CSPRNG.
    Bytes seal(std::string_view entity_id, const SecretKey& eukey) const;
    // std::nullopt when the blob does not authenticate: wrong master key, another entity's
    // blob, altered or truncated bytes. Never throws.
    std::optional<SecretKey> unseal(std::string_view entity_id, ByteView sealed) const noexcept;

  private:
    SecretKey key_;
};

}  // namespace cpns::store
