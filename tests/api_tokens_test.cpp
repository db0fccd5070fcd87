// The management API's token file and per-token rate limit (src/api/tokens.hpp).
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "api/tokens.hpp"
#include "daemon/common.hpp"

using namespace cpns;
using namespace cpns::api;

namespace {

const std::string kToken(64, 'a');
const std::string kOther(64, 'b');

std::string two_tokens() {
    return "# operators\n\n" + token_line("ops", Role::kAdmin, kToken) +
           token_line("viewer", Role::kRead, kOther);
}

std::string fresh_path(const std::string& name) {
    const auto dir = std::filesystem::temp_directory_path() /
                     ("cpns-tokens-" + std::to_string(::getpid()) + "-" + name);
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    return (dir / "tokens").string();
}

}  // namespace

TEST(ApiTokens, ParsesNamesRolesAndAuthenticatesByHash) {
    const auto f = TokenFile::parse(two_tokens(), "t");
    ASSERT_EQ(f.entries().size(), 2u);
    const auto ops = f.authenticate(kToken);
    ASSERT_TRUE(ops);
    EXPECT_EQ(ops->name, "ops");
    EXPECT_EQ(ops->role, Role::kAdmin);
    const auto viewer = f.authenticate(kOther);
    ASSERT_TRUE(viewer);
    EXPECT_EQ(viewer->role, Role::kRead);
    EXPECT_FALSE(f.authenticate(std::string(64, 'c')));
    EXPECT_FALSE(f.authenticate(""));
    EXPECT_FALSE(f.authenticate(kToken.substr(1)));
    // The file holds the hash, never the token.
    EXPECT_EQ(two_tokens().find(kToken), std::string::npos);
}

TEST(ApiTokens, RefusesMalformedLinesNamingThem) {
    const std::string hash(64, '0');
    const auto refused = [](const std::string& text, const std::string& words) {
        try {
            (void)TokenFile::parse(text, "f");
            ADD_FAILURE() << "accepted: " << text;
        } catch (const daemon::ConfigError& e) {
            EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
        }
    };
    refused("ops admin\n", "f:1: want three words");
    refused("ops admin " + hash + " extra\n", "want three words");
    refused("ops root " + hash + "\n", "neither admin nor read");
    refused("ops admin 1234\n", "not 64 hex digits");
    refused("ops admin " + std::string(64, 'g') + "\n", "not 64 hex digits");
    refused("bad/name read " + hash + "\n", "token name");
    refused("# c\nops read " + hash + "\nops admin " + std::string(64, '1') + "\n",
            "f:3: token name 'ops' twice");
    refused("a read " + hash + "\nb admin " + hash + "\n", "the same token as 'a'");
}

TEST(ApiTokens, FileMustBePrivateAndLinesAppend) {
    const std::string path = fresh_path("perm");
    append_token_line(path, token_line("ops", Role::kAdmin, kToken));
    struct stat st {};
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    append_token_line(path, token_line("viewer", Role::kRead, kOther));
    EXPECT_EQ(TokenFile::load(path).entries().size(), 2u);
    ASSERT_EQ(::chmod(path.c_str(), 0640), 0);
    EXPECT_THROW((void)TokenFile::load(path), daemon::ConfigError);
    EXPECT_THROW(append_token_line(path, token_line("x", Role::kRead, "y")), daemon::ConfigError);
    std::filesystem::remove_all(std::filesystem::path(path).parent_path());
}

TEST(ApiRateLimit, BurstThenRefillPerKey) {
    RateLimiter r(10.0, 4.0);
    const auto t0 = RateLimiter::Clock::time_point{} + std::chrono::hours(1);
    for (int i = 0; i < 4; ++i) EXPECT_TRUE(r.allow("a", t0)) << i;
    EXPECT_FALSE(r.allow("a", t0));
    EXPECT_TRUE(r.allow("b", t0));  // its own bucket
    // 10 per second: one more after 100 ms, not before.
    EXPECT_FALSE(r.allow("a", t0 + std::chrono::milliseconds(50)));
    EXPECT_TRUE(r.allow("a", t0 + std::chrono::milliseconds(100)));
    EXPECT_FALSE(r.allow("a", t0 + std::chrono::milliseconds(100)));
    // The bucket never holds more than the burst.
    const auto later = t0 + std::chrono::hours(1);
    int allowed = 0;
    for (int i = 0; i < 10; ++i) allowed += r.allow("a", later) ? 1 : 0;
    EXPECT_EQ(allowed, 4);
}
