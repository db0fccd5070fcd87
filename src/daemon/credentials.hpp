// Keys handed to a daemon by its service manager: systemd's LoadCredential= copies a key file
// into a private directory readable only by the service's user and names it in
// $CREDENTIALS_DIRECTORY. The packaged units give cpns-server its master key as credential
// "master-key" and cpns-gw / cpns-pne their device key (EUKey) as "device-key", so that no
// key path sits in the configuration and the key never lies in a place the daemon could write.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "core/crypto.hpp"

namespace cpns::daemon {

inline constexpr std::string_view kCredentialsDirectoryVar = "CREDENTIALS_DIRECTORY";
inline constexpr std::string_view kMasterKeyCredential = "master-key";
inline constexpr std::string_view kDeviceKeyCredential = "device-key";

// The path of credential `name` in $CREDENTIALS_DIRECTORY, or nullopt when the variable is
// unset or empty or the directory holds no entry of that name. ConfigError when the variable
// is set but not an absolute path (systemd always gives one: anything else is a mistake).
std::optional<std::string> credential_path(std::string_view name);

// The key file a daemon uses: the credential `name` if one is given, else `configured` (the
// path from the configuration file or a flag; may be empty). Both at once is a ConfigError
// naming `setting` and the credential: the daemon would otherwise use one key while the
// operator believes it uses the other.
std::string key_file_or_credential(std::string_view name, const std::string& configured,
                                   std::string_view setting);

class Config;

// The device key (EUKey) of a PN GW or PNE from credential "device-key", or nullopt when there
// is none. ConfigError when the configuration also sets 'eukey' or 'eukey_file' (keep one), or
// when the file is not a key file (regular, at most kMaxKeyFileBytes, 64 hex digits).
std::optional<SecretKey> device_key_credential(const Config& c);

}  // namespace cpns::daemon
