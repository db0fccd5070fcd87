// load_master_key: the master key comes from a key file (owner-only) or the environment,
// never from the database.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "store/store.hpp"

namespace cpns::store {
namespace {

constexpr const char* kEnvVar = "CPNS_MASTER_KEY";

// Wipes the buffer on every path.
struct WipedBuffer {
    std::array<char, 256> bytes{};
    std::size_t size = 0;
    ~WipedBuffer() { wipe(bytes.data(), bytes.size()); }
};

std::string mode_string(mode_t mode) {
    std::array<char, 8> buf{};
    std::snprintf(buf.data(), buf.size(), "%04o", static_cast<unsigned>(mode & 07777));
    return buf.data();
}

SecretKey parse_key(std::string_view hex, const std::string& source) {
    // One trailing newline (LF or CRLF) is allowed.
    if (!hex.empty() && hex.back() == '\n') hex.remove_suffix(1);
    if (!hex.empty() && hex.back() == '\r') hex.remove_suffix(1);
    std::optional<SecretKey> key = SecretKey::from_hex(hex);
    if (!key) {
        throw StoreError("malformed master key in " + source + ": expected 64 hex digits (" +
                         std::to_string(hex.size()) + " characters found)");
    }
    if (key->is_zero()) throw StoreError("master key in " + source + " is all zeros");
    return std::move(*key);
}

SecretKey load_from_file(const std::string& path) {
    const std::string source = "master key file " + path;
    // O_NONBLOCK: a FIFO does not make open() wait for a writer (fstat then refuses it).
    const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) throw StoreError("cannot open " + source + ": " + std::strerror(errno));
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } closer{fd};

    struct stat st {};
    if (::fstat(fd, &st) != 0)
        throw StoreError("cannot stat " + source + ": " + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) {
        throw StoreError(source + " is not a regular file (" +
                         (S_ISFIFO(st.st_mode)  ? "a FIFO"
                          : S_ISCHR(st.st_mode) ? "a character device"
                          : S_ISDIR(st.st_mode) ? "a directory"
                                                : "a device or socket") +
                         ")");
    }
    if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
        throw StoreError(source + " is accessible by group or others (mode " +
                         mode_string(st.st_mode) + "); restrict it to its owner: chmod 600 " +
                         path);
    }

    WipedBuffer buf;
    for (;;) {
        if (buf.size == buf.bytes.size()) throw StoreError(source + " is too long for a key");
        const ssize_t n = ::read(fd, buf.bytes.data() + buf.size, buf.bytes.size() - buf.size);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw StoreError("cannot read " + source + ": " + std::strerror(errno));
        }
        if (n == 0) break;
        buf.size += static_cast<std::size_t>(n);
    }
    return parse_key(std::string_view(buf.bytes.data(), buf.size), source);
}

}  // namespace

SecretKey load_master_key(const std::string& path) {
    if (!path.empty()) return load_from_file(path);
    const char* env = std::getenv(kEnvVar);
    if (env == nullptr || *env == '\0') {
        throw StoreError(
            "no master key: give a master key file or set CPNS_MASTER_KEY (64 hex digits)");
    }
    return parse_key(env, std::string("environment variable ") + kEnvVar);
}

}  // namespace cpns::store
