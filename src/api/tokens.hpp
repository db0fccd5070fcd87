// The management API's bearer tokens and per-token rate limit. No HTTP here (unit-tested
// alone, tests/api_tokens_test.cpp).
//
// Token file (docs/api.md, "Tokens"): one token per line, `NAME ROLE SHA256HEX`, ROLE `admin` or
// `read`, SHA256HEX the SHA-256 of the token as the client sends it (its 64 hex characters);
// blank lines and lines starting with `#` are ignored. The file must not be readable or writable
// by group or others. The tokens themselves are never stored.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/crypto.hpp"

namespace cpns::api {

// Lines a token file may hold (a bigger file is refused at start).
inline constexpr std::size_t kMaxTokens = 1'000;
// The longest token name.
inline constexpr std::size_t kMaxTokenNameLength = 64;
// Octets of randomness in a token (`cpnsctl token new`); it is sent as twice as many hex digits.
inline constexpr std::size_t kTokenOctets = 32;

enum class Role { kRead, kAdmin };
std::string_view role_name(Role r);
std::optional<Role> parse_role(std::string_view word);
bool valid_token_name(std::string_view name);

struct TokenEntry {
    std::string name;
    Role role = Role::kRead;
    std::array<std::uint8_t, kHashSize> hash{};
};

class TokenFile {
  public:
    // Reads and checks the file: ConfigError (naming the line) for a malformed line, a
    // duplicate name or hash, too many lines, or a file group/others may read or write.
    static TokenFile load(const std::string& path);
    // The same from text (no permission check); `where` names the source in errors.
    static TokenFile parse(std::string_view text, const std::string& where);
    // The entry whose hash is SHA-256(token), compared in constant time against every entry.
    std::optional<TokenEntry> authenticate(std::string_view token) const;
    const std::vector<TokenEntry>& entries() const { return entries_; }

  private:
    std::vector<TokenEntry> entries_;
};

// One token's line for the file (`cpnsctl token new`).
std::string token_line(const std::string& name, Role role, std::string_view token);
// Creates `path` with mode 0600 if absent and appends `line` to it (ConfigError when the file
// is open to group or others, or cannot be written).
void append_token_line(const std::string& path, const std::string& line);

// Requests per token: a token bucket of kRateBurst requests, refilled at kRatePerSecond.
inline constexpr double kRatePerSecond = 20.0;
inline constexpr double kRateBurst = 40.0;
// Buckets kept at once (one per token name; there are at most kMaxTokens names).
inline constexpr std::size_t kMaxBuckets = kMaxTokens;

class RateLimiter {
  public:
    using Clock = std::chrono::steady_clock;
    explicit RateLimiter(double per_second = kRatePerSecond, double burst = kRateBurst);
    // True when `key` may make a request at `now` (and counts it); false: refused, not counted.
    bool allow(const std::string& key, Clock::time_point now = Clock::now());

  private:
    struct Bucket {
        double tokens = 0;
        Clock::time_point last{};
    };
    const double per_second_, burst_;
    std::mutex mutex_;
    std::map<std::string, Bucket> buckets_;
};

}  // namespace cpns::api
