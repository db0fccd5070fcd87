#include "api/tokens.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <set>
#include <sstream>

#include "daemon/common.hpp"

namespace cpns::api {

using daemon::ConfigError;

namespace {
// A token file of kMaxTokens lines of at most ~200 characters.
constexpr std::size_t kMaxTokenFileBytes = 256 * 1024;

std::array<std::uint8_t, kHashSize> hash_of(std::string_view token) {
    return sha256(ByteView(reinterpret_cast<const std::uint8_t*>(token.data()), token.size()));
}
}  // namespace

std::string_view role_name(Role r) {
    return r == Role::kAdmin ? "admin" : "read";
}

std::optional<Role> parse_role(std::string_view word) {
    if (word == "admin") return Role::kAdmin;
    if (word == "read") return Role::kRead;
    return std::nullopt;
}

bool valid_token_name(std::string_view name) {
    if (name.empty() || name.size() > kMaxTokenNameLength) return false;
    return std::all_of(name.begin(), name.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' ||
               c == '@';
    });
}

TokenFile TokenFile::parse(std::string_view text, const std::string& where) {
    TokenFile f;
    std::set<std::string> names;
    std::istringstream in{std::string(text)};
    std::string line;
    std::size_t lineno = 0;
    while (std::getline(in, line)) {
        ++lineno;
        const std::string at = where + ":" + std::to_string(lineno) + ": ";
        // The line's error: "FILE:LINE: " and the parts given.
        const auto bad = [&at](std::initializer_list<std::string_view> parts) {
            std::string message = at;
            for (const auto part : parts) message += part;
            return ConfigError(message);
        };
        std::istringstream words(line);
        std::string name, role, hex, extra;
        words >> name;
        if (name.empty() || name.front() == '#') continue;
        words >> role >> hex >> extra;
        if (hex.empty() || !extra.empty()) throw bad({"want three words: NAME ROLE SHA256HEX"});
        if (!valid_token_name(name))
            throw bad(
                {"token name '", name, "' is not 1 to 64 letters, digits, '-', '_', '.' or '@'"});
        const auto r = parse_role(role);
        if (!r) throw bad({"role '", role, "' is neither admin nor read"});
        const auto raw = from_hex(hex);
        if (!raw || raw->size() != kHashSize)
            throw bad({"the hash is not 64 hex digits (SHA-256 of the token)"});
        if (!names.insert(name).second) throw bad({"token name '", name, "' twice"});
        TokenEntry e;
        e.name = name;
        e.role = *r;
        std::copy(raw->begin(), raw->end(), e.hash.begin());
        for (const auto& other : f.entries_)
            if (ct_equal(other.hash, e.hash)) throw bad({"the same token as '", other.name, "'"});
        if (f.entries_.size() >= kMaxTokens)
            throw bad({"more than ", std::to_string(kMaxTokens), " tokens"});
        f.entries_.push_back(std::move(e));
    }
    return f;
}

TokenFile TokenFile::load(const std::string& path) {
    auto file = daemon::read_checked_file(path, "api_tokens", kMaxTokenFileBytes,
                                          daemon::FileSecrecy::kSecret);
    if ((file.mode & 077) != 0)
        throw ConfigError("api_tokens " + path +
                          ": group or others may read or write it; chmod 600 it");
    return parse(file.content, path);
}

std::optional<TokenEntry> TokenFile::authenticate(std::string_view token) const {
    auto h = hash_of(token);
    std::optional<TokenEntry> found;
    // Every entry is compared (no early exit), each in constant time.
    for (const auto& e : entries_)
        if (ct_equal(e.hash, h) && !found) found = e;
    wipe(h.data(), h.size());
    return found;
}

std::string token_line(const std::string& name, Role role, std::string_view token) {
    return name + " " + std::string(role_name(role)) + " " + to_hex(hash_of(token)) + "\n";
}

void append_token_line(const std::string& path, const std::string& line) {
    const int fd =
        ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) throw ConfigError("cannot open " + path + ": " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (st.st_mode & 077) != 0) {
        ::close(fd);
        throw ConfigError(path + " is not a regular file of mode 0600; not writing a token to it");
    }
    const bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()) &&
                    ::fsync(fd) == 0;
    ::close(fd);
    if (!ok) throw ConfigError("cannot write " + path);
}

RateLimiter::RateLimiter(double per_second, double burst)
    : per_second_(per_second), burst_(burst) {}

bool RateLimiter::allow(const std::string& key, Clock::time_point now) {
    const std::lock_guard lock(mutex_);
    auto it = buckets_.find(key);
    if (it == buckets_.end()) {
        if (buckets_.size() >= kMaxBuckets) buckets_.erase(buckets_.begin());
        it = buckets_.emplace(key, Bucket{burst_, now}).first;
    }
    Bucket& b = it->second;
    if (now > b.last) {
        const double elapsed = std::chrono::duration<double>(now - b.last).count();
        b.tokens = std::min(burst_, b.tokens + elapsed * per_second_);
        b.last = now;
    }
    if (b.tokens < 1.0) return false;
    b.tokens -= 1.0;
    return true;
}

}  // namespace cpns::api
