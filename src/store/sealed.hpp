// Encryption and integrity at rest of the entities (docs/operations.md, "Integrity at rest").
//
// Two keys are derived from the master key with HKDF-SHA-256 (no salt, L = 32): the at-rest
// key K_seal (info "cpns store at-rest v1") and the row key K_row (info
// "cpns store row-mac v1"). Neither is stored; the master key stays outside the database.
//
// Sealed EUKey (schema version 2): AES-256-GCM under K_seal with a fresh 12-byte random nonce
// and AAD = "cpns-eukey-v2|" || id || "|" || kind || "|" || key version (decimal), so a blob
// opens only under the right master key, for the entity, the kind and the key version it was
// sealed for (the id may hold '|'; kind and key version never do, so the AAD is unambiguous).
// The blob is nonce (12) || ciphertext (32) || tag (16).
//
// Row MAC (column entities.row_mac): HMAC-SHA-256 under K_row of "cpns-entity-row-v1"
// followed by id, kind, status, key version, revision, sealed EUKey and capabilities, each
// as a 4-byte big-endian length and its bytes. Version record MAC (entity_versions.mac): the
// same over "cpns-entity-version-v1", id, key version, revision.
//
// Legacy (schema version 1): AAD = "cpns-eukey|" || id and no MAC. Only the migration to
// schema version 2 opens such a blob (unseal_v1), to re-seal it.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>

#include "core/crypto.hpp"
#include "core/server.hpp"

namespace cpns::store {

inline constexpr std::size_t kSealNonceSize = 12;
inline constexpr std::size_t kSealTagSize = 16;
inline constexpr std::size_t kSealedKeySize = kSealNonceSize + kKeySize + kSealTagSize;  // 60
inline constexpr std::size_t kRowMacSize = 32;

using RowMac = std::array<std::uint8_t, kRowMacSize>;

// HKDF-SHA-256 (EVP_KDF "HKDF") of the master key with info "cpns store at-rest v1".
SecretKey derive_at_rest_key(const SecretKey& master_key);
// The same with info "cpns store row-mac v1".
SecretKey derive_row_mac_key(const SecretKey& master_key);

// What a sealed EUKey is bound to.
struct SealBinding {
    std::string_view entity_id;
    EntityKind kind = EntityKind::kPne;
    std::int64_t key_version = 0;
};

// "cpns-eukey-v2|<id>|<kind>|<key version>".
std::string seal_aad(const SealBinding& binding);

class Sealer {
  public:
    // Derives K_seal and K_row; the master key itself is not kept.
    explicit Sealer(const SecretKey& master_key);

    // nonce || ciphertext || tag (kSealedKeySize bytes), nonce from the OS CSPRNG.
    Bytes seal(const SealBinding& binding, const SecretKey& eukey) const;
    // std::nullopt when the blob does not authenticate: wrong master key, another entity's,
    // kind's or key version's blob, altered or truncated bytes. Never throws.
    std::optional<SecretKey> unseal(const SealBinding& binding, ByteView sealed) const noexcept;
    // A schema version 1 blob (AAD "cpns-eukey|" || id); for the migration only.
    std::optional<SecretKey> unseal_v1(std::string_view entity_id, ByteView sealed) const noexcept;

    // HMAC-SHA-256 under K_row of label || (4-byte big-endian length || field) for each field.
    RowMac mac(std::string_view label, std::initializer_list<std::string_view> fields) const;

  private:
    SecretKey key_;
    SecretKey mac_key_;
};

}  // namespace cpns::store
