#include "daemon/credentials.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "daemon/common.hpp"

namespace cpns::daemon {

std::optional<std::string> credential_path(std::string_view name) {
    const char* dir = std::getenv(std::string(kCredentialsDirectoryVar).c_str());
    if (dir == nullptr || *dir == '\0') return std::nullopt;
    if (*dir != '/')
        throw ConfigError(std::string(kCredentialsDirectoryVar) +
                          " must be an absolute path, got '" + dir + "'");
    std::string path = std::string(dir) + "/" + std::string(name);
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) {
        if (errno == ENOENT) return std::nullopt;
        throw ConfigError("cannot look at credential " + path + ": " + std::strerror(errno));
    }
    // What the file holds (regular, not too large, owner-only) is checked by the key reader.
    return path;
}

std::string key_file_or_credential(std::string_view name, const std::string& configured,
                                   std::string_view setting) {
    auto credential = credential_path(name);
    if (!credential) return configured;
    if (!configured.empty())
        throw ConfigError("'" + std::string(setting) + "' is set (" + configured +
                          ") and the service manager gives the key as credential '" +
                          std::string(name) + "' (" + *credential +
                          "); keep one: remove the setting when the unit loads the key with "
                          "LoadCredential=");
    return *credential;
}

std::optional<SecretKey> device_key_credential(const Config& c) {
    auto credential = credential_path(kDeviceKeyCredential);
    if (!credential) return std::nullopt;
    for (const char* setting : {"eukey", "eukey_file"})
        if (!c.str(setting).empty())
            throw ConfigError(c.where(setting) +
                              " is set and the service manager gives the device key as "
                              "credential '" +
                              std::string(kDeviceKeyCredential) + "' (" + *credential +
                              "); keep one: remove the setting when the unit loads the key with "
                              "LoadCredential=");
    std::string content = read_checked_file(*credential, "device key credential", kMaxKeyFileBytes,
                                            FileSecrecy::kSecret)
                              .content;
    try {
        auto key = parse_key(content, "device key credential " + *credential);
        wipe(content.data(), content.size());
        return key;
    } catch (...) {
        wipe(content.data(), content.size());
        throw;
    }
}

}  // namespace cpns::daemon
