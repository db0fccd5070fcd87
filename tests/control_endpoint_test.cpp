// The pieces of the control endpoints and of configuration reload that need no daemon: the
// address syntax, the token check, the Unix socket listener (mode, per-uid bound, stale
// socket, removal at close) and the sorting of changed keys on reload.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <asio.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "daemon/common.hpp"
#include "net/listener.hpp"

namespace cpns {
namespace {

using daemon::Config;
using daemon::ConfigError;

std::filesystem::path temp_dir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "cpns-ctl-XXXXXX").string();
    const char* made = ::mkdtemp(tmpl.data());
    if (made == nullptr) throw std::runtime_error("mkdtemp failed");
    return made;
}

Config config_with(const std::filesystem::path& dir, const std::string& text) {
    const auto path = dir / "c.toml";
    std::ofstream(path) << text;
    std::filesystem::permissions(
        path, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
    return Config::load(path.string());
}

TEST(ControlAddress, UnixAndTcpForms) {
    EXPECT_EQ(daemon::parse_control_address("unix:/run/x.sock", "c").unix_path, "/run/x.sock");
    EXPECT_EQ(daemon::parse_control_address("/run/x.sock", "c").unix_path, "/run/x.sock");
    const auto tcp = daemon::parse_control_address("127.0.0.1:7101", "c");
    EXPECT_FALSE(tcp.is_unix());
    EXPECT_EQ(tcp.tcp.port, 7101);
    EXPECT_THROW(daemon::parse_control_address("unix:relative.sock", "c"), ConfigError);
    EXPECT_THROW(daemon::parse_control_address("nowhere", "c"), ConfigError);
}

TEST(ControlAddress, DefaultFollowsTheRuntimeDirectory) {
    // The environment is put back as it was (other tests of this process may read it).
    const char* xdg = std::getenv("XDG_RUNTIME_DIR");
    const std::string saved_xdg = xdg ? xdg : "";
    ::setenv("RUNTIME_DIRECTORY", "/run/cpns-gw", 1);
    EXPECT_EQ(daemon::default_control_path("cpns-gw"), "/run/cpns-gw/control.sock");
    ::unsetenv("RUNTIME_DIRECTORY");
    ::setenv("XDG_RUNTIME_DIR", "/run/user/1000", 1);
    EXPECT_EQ(
        daemon::default_control_path("cpns-pne"),
        ::geteuid() == 0 ? "/run/cpns-pne/control.sock" : "/run/user/1000/cpns-pne/control.sock");
    ::unsetenv("XDG_RUNTIME_DIR");
    if (::geteuid() != 0) {
        EXPECT_THROW(daemon::default_control_path("cpns-pne"), ConfigError);
    }
    if (xdg) ::setenv("XDG_RUNTIME_DIR", saved_xdg.c_str(), 1);
}

TEST(ControlToken, OnlyTheRightTokenPassesAndTheLineIsWiped) {
    const auto token = *SecretKey::from_hex(std::string(64, 'a'));
    std::string line = "token " + std::string(64, 'a') + " invite pne-1";
    EXPECT_EQ(daemon::strip_control_token(line, token), "invite pne-1");
    EXPECT_EQ(line.find('a'), std::string::npos) << "the token's text is wiped";
    for (std::string bad :
         {std::string("invite pne-1"), "token " + std::string(64, 'b') + " status",
          "token " + std::string(62, 'a') + " status", std::string("token")}) {
        EXPECT_FALSE(daemon::strip_control_token(bad, token)) << bad;
    }
    EXPECT_NE(daemon::unauthorized_json().find("\"error\":\"UNAUTHORIZED\""), std::string::npos);
}

TEST(ControlToken, FileMustBeTheOwnersOnly) {
    const auto dir = temp_dir();
    const auto path = (dir / "t").string();
    std::ofstream(path) << std::string(64, 'c') << "\n";
    ::chmod(path.c_str(), 0600);
    EXPECT_EQ(daemon::read_control_token(path, "token"),
              *SecretKey::from_hex(std::string(64, 'c')));
    ::chmod(path.c_str(), 0640);
    EXPECT_THROW(daemon::read_control_token(path, "token"), ConfigError);
    std::filesystem::remove_all(dir);
}

TEST(UnixListener, SocketIs0660BoundedPerUidAndRemovedAtClose) {
    const auto dir = temp_dir();
    const std::string path = (dir / "run" / "control.sock").string();
    asio::io_context io;
    int accepted = 0;
    std::size_t refused = 0;
    std::vector<net::Listener::Slot> kept;  // accepted connections stay counted
    net::Listener::Hooks hooks;
    hooks.on_local_socket = [&](asio::local::stream_protocol::socket, net::Listener::Slot slot,
                                long uid) {
        EXPECT_EQ(uid, static_cast<long>(::geteuid()));
        EXPECT_EQ(slot.source(), "uid " + std::to_string(::geteuid()));
        ++accepted;
        slot.authenticated();
        kept.push_back(std::move(slot));
    };
    hooks.on_refused = [&](const std::string&, net::Listener::Refusal, std::size_t,
                           std::size_t count) { refused += count; };
    net::Listener listener(io.get_executor(), {8, 2}, hooks);
    ASSERT_FALSE(listener.listen_unix(path, "control"));
    struct stat st {};
    ASSERT_EQ(::lstat(path.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 07777, 0660U);
    ASSERT_EQ(::stat((dir / "run").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0750U);
    // A second listener on the same path: something answers there, so it is refused.
    net::Listener second(io.get_executor(), {}, {});
    const auto busy = second.listen_unix(path, "control");
    ASSERT_TRUE(busy);
    EXPECT_NE(busy->detail.find("another process is listening"), std::string::npos);

    asio::co_spawn(io, listener.run(), asio::detached);
    std::vector<asio::local::stream_protocol::socket> clients;
    for (int i = 0; i < 3; ++i) {
        clients.emplace_back(io);
        clients.back().connect(asio::local::stream_protocol::endpoint(path));
    }
    io.run_for(std::chrono::milliseconds(200));
    EXPECT_EQ(accepted, 2);
    EXPECT_EQ(refused, 1U);
    listener.close();
    EXPECT_NE(::lstat(path.c_str(), &st), 0) << "removed at close";
    // A stale socket (nothing answers) is replaced.
    {
        asio::local::stream_protocol::acceptor stale(io,
                                                     asio::local::stream_protocol::endpoint(path));
    }
    ASSERT_EQ(::lstat(path.c_str(), &st), 0);
    net::Listener third(io.get_executor(), {}, {});
    EXPECT_FALSE(third.listen_unix(path, "control"));
    third.close();
    std::filesystem::remove_all(dir);
}

TEST(Reload, ChangedKeysSortedIntoAppliedAndRestart) {
    const auto dir = temp_dir();
    const Config a = config_with(dir,
                                 "log_level = \"info\"\nlisten = \"127.0.0.1:1\"\n"
                                 "[capabilities]\nmodel = \"x\"\n");
    const Config b = config_with(dir,
                                 "log_level = \"debug\"\nlisten = \"127.0.0.1:1\"\n"
                                 "max_connections_per_source = 3\n[capabilities]\nmodel = \"y\"\n");
    const auto r = daemon::classify_reload(a, b, {"log_level", "max_connections_per_source"});
    EXPECT_EQ(r.applied, (std::vector<std::string>{"log_level", "max_connections_per_source"}));
    EXPECT_EQ(r.restart, (std::vector<std::string>{"capabilities.model"}));
    const auto none = daemon::classify_reload(a, a, {"log_level"});
    EXPECT_TRUE(none.applied.empty() && none.restart.empty());
    std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace cpns
