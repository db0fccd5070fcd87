// Files named in the configuration (key files, the TOML configuration, the sealed device state)
// are read without hanging or exhausting memory: a FIFO, a device, a directory or an oversized
// file is refused with a ConfigError naming the file and the problem; a key file others may
// read is accepted with a warning, one others may write is refused. Also: the state writer's
// completion (durable before reported) and the escaping of untrusted text for logs and JSON.
#include <fcntl.h>
#include <google/protobuf/struct.pb.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <string>
#include <thread>

#include "core/codec.hpp"
#include "daemon/common.hpp"
#include "daemon/state_file.hpp"

namespace cpns::daemon {
namespace {

namespace fs = std::filesystem;

constexpr auto kNoHang = std::chrono::seconds(10);  // generous: a busy 2-core machine
const std::string kHexKey(64, 'a');

class FileReadTest : public ::testing::Test {
  protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() /
               ("cpns-file-read-test-" + std::to_string(::getpid()) + "-" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::remove_all(dir_);
        fs::create_directories(dir_);
    }
    void TearDown() override { fs::remove_all(dir_); }

    std::string path(const std::string& name) const { return (dir_ / name).string(); }

    std::string write(const std::string& name, const std::string& content, mode_t mode = 0600) {
        const std::string p = path(name);
        std::ofstream(p, std::ios::binary) << content;
        ::chmod(p.c_str(), mode);
        return p;
    }

    // A configuration whose 'eukey_file' is `key_path`.
    Config config_with_key_file(const std::string& key_path) {
        const std::string cfg =
            write("c.toml", "id = \"pne-1\"\neukey_file = \"" + key_path + "\"\n");
        return Config::load(cfg);
    }

    // Runs `f` (which should throw ConfigError) on a thread; fails instead of hanging, and
    // releases a reader blocked on `fifo` if it does hang. Returns the error text.
    std::string config_error_within_bound(const std::function<void()>& f,
                                          const std::string& fifo = "") {
        std::promise<std::string> result;
        auto got = result.get_future();
        std::thread t([&] {
            try {
                f();
                result.set_value("<no error>");
            } catch (const ConfigError& e) {
                result.set_value(e.what());
            } catch (const std::exception& e) {
                result.set_value(std::string("<other exception> ") + e.what());
            }
        });
        const bool done = got.wait_for(kNoHang) == std::future_status::ready;
        if (!done && !fifo.empty()) {
            // Unblock the reader so that the thread can end.
            const int w = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
            if (w >= 0) ::close(w);
        }
        t.join();
        EXPECT_TRUE(done) << "reading did not end within " << kNoHang.count() << " s (hangs)";
        return got.get();
    }

    fs::path dir_;
};

TEST_F(FileReadTest, RegularKeyFileIsRead) {
    const auto key = config_with_key_file(write("k", kHexKey + "\n")).key("eukey", "eukey_file");
    ASSERT_TRUE(key);
    EXPECT_EQ(*key, *SecretKey::from_hex(kHexKey));
}

TEST_F(FileReadTest, FifoKeyFileFailsAtOnceNamingIt) {
    const std::string fifo = path("key.fifo");
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    const Config c = config_with_key_file(fifo);
    const std::string error =
        config_error_within_bound([&] { c.key("eukey", "eukey_file"); }, fifo);
    EXPECT_NE(error.find(fifo), std::string::npos) << error;
    EXPECT_NE(error.find("a FIFO, not a regular file"), std::string::npos) << error;
    EXPECT_NE(error.find("'eukey_file'"), std::string::npos) << error;
}

TEST_F(FileReadTest, DevZeroKeyFileIsRefusedWithoutReading) {
    const Config c = config_with_key_file("/dev/zero");
    const std::string error = config_error_within_bound([&] { c.key("eukey", "eukey_file"); });
    EXPECT_NE(error.find("/dev/zero is a character device, not a regular file"), std::string::npos)
        << error;
}

TEST_F(FileReadTest, DirectoryKeyFileSaysSo) {
    const Config c = config_with_key_file(dir_.string());
    const std::string error = config_error_within_bound([&] { c.key("eukey", "eukey_file"); });
    EXPECT_NE(error.find("is a directory, not a regular file"), std::string::npos) << error;
}

TEST_F(FileReadTest, OversizedKeyFileIsRefused) {
    // A valid key followed by a megabyte of spaces: the old reader accepted it, whole.
    const std::string p = write("big.key", kHexKey + std::string(1 << 20, ' '));
    const Config c = config_with_key_file(p);
    const std::string error = config_error_within_bound([&] { c.key("eukey", "eukey_file"); });
    EXPECT_NE(error.find(p), std::string::npos) << error;
    EXPECT_NE(error.find("at most " + std::to_string(kMaxKeyFileBytes) + " are accepted"),
              std::string::npos)
        << error;
}

TEST_F(FileReadTest, MissingKeyFileNamesIt) {
    const std::string p = path("absent.key");
    const Config c = config_with_key_file(p);
    const std::string error = config_error_within_bound([&] { c.key("eukey", "eukey_file"); });
    EXPECT_NE(error.find("cannot open key file " + p + ": No such file or directory"),
              std::string::npos)
        << error;
}

TEST_F(FileReadTest, KeyFileReadableByOthersIsAcceptedWithAWarning) {
    const std::string p = write("open.key", kHexKey + "\n", 0644);
    const Config c = config_with_key_file(p);
    ::testing::internal::CaptureStderr();
    const auto key = c.key("eukey", "eukey_file");
    const std::string err = ::testing::internal::GetCapturedStderr();
    ASSERT_TRUE(key);
    EXPECT_NE(err.find("key file " + p +
                       " holds a key and is accessible by group or others "
                       "(mode 0644); restrict it to its owner: chmod 600 " +
                       p),
              std::string::npos)
        << err;
    // An owner-only key file gives no warning.
    const Config quiet = config_with_key_file(write("closed.key", kHexKey + "\n", 0600));
    ::testing::internal::CaptureStderr();
    ASSERT_TRUE(quiet.key("eukey", "eukey_file"));
    EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
}

TEST_F(FileReadTest, WorldWritableKeyFileIsRefused) {
    const std::string p = write("ww.key", kHexKey + "\n", 0666);
    const Config c = config_with_key_file(p);
    const std::string error = config_error_within_bound([&] { c.key("eukey", "eukey_file"); });
    EXPECT_NE(error.find(p + " is writable by every user (mode 0666)"), std::string::npos) << error;
}

TEST_F(FileReadTest, ConfigurationFileChecks) {
    const std::string fifo = path("c.fifo");
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    std::string error = config_error_within_bound([&] { Config::load(fifo); }, fifo);
    EXPECT_NE(error.find("configuration file " + fifo + " is a FIFO"), std::string::npos) << error;
    error = config_error_within_bound([&] { Config::load("/dev/zero"); });
    EXPECT_NE(error.find("configuration file /dev/zero is a character device"), std::string::npos)
        << error;
    const std::string big = write("big.toml", std::string(kMaxConfigFileBytes + 1, '#'));
    error = config_error_within_bound([&] { Config::load(big); });
    EXPECT_NE(error.find("at most " + std::to_string(kMaxConfigFileBytes)), std::string::npos)
        << error;
    // A syntax error still names the file, line and column.
    const std::string bad = write("bad.toml", "id = \n");
    error = config_error_within_bound([&] { Config::load(bad); });
    EXPECT_EQ(error.rfind(bad + ":1:", 0), 0U) << error;
    // A configuration holding a key inline, readable by others: a warning.
    const std::string open =
        write("open.toml", "id = \"gw-1\"\neukey = \"" + kHexKey + "\"\n", 0640);
    ::testing::internal::CaptureStderr();
    const Config c = Config::load(open);
    const std::string err = ::testing::internal::GetCapturedStderr();
    EXPECT_EQ(c.str("id"), "gw-1");
    EXPECT_NE(err.find("configuration file " + open + " holds a key"), std::string::npos) << err;
}

TEST_F(FileReadTest, StateFileChecks) {
    const SecretKey key = *SecretKey::from_hex(kHexKey);
    EXPECT_FALSE(load_state_file(path("absent.state"), key, "gw-1"));
    const std::string fifo = path("s.fifo");
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    std::string error =
        config_error_within_bound([&] { load_state_file(fifo, key, "gw-1"); }, fifo);
    EXPECT_NE(error.find("state file " + fifo + " is a FIFO, not a regular file"),
              std::string::npos)
        << error;
    error = config_error_within_bound([&] { load_state_file("/dev/zero", key, "gw-1"); });
    EXPECT_NE(error.find("state file /dev/zero is a character device"), std::string::npos) << error;
}

TEST_F(FileReadTest, StateWriterReportsDurableOrWhyNot) {
    const SecretKey key = *SecretKey::from_hex(kHexKey);
    const std::string p = path("gw.state");
    StateWriter w(p, key, "gw-1");
    std::promise<std::string> first;
    w.save(Bytes{1, 2, 3}, [&](const std::string& error) { first.set_value(error); });
    auto f = first.get_future();
    ASSERT_EQ(f.wait_for(kNoHang), std::future_status::ready);
    EXPECT_EQ(f.get(), "");
    // When `done` runs, the file is there and opens.
    auto plain = load_state_file(p, key, "gw-1");
    ASSERT_TRUE(plain);
    EXPECT_EQ(*plain, (Bytes{1, 2, 3}));
    // A directory where the temporary copy goes: the save fails, and says so.
    fs::create_directories(p + ".tmp/x");
    std::promise<std::string> second;
    w.save(Bytes{4}, [&](const std::string& error) { second.set_value(error); });
    auto g = second.get_future();
    ASSERT_EQ(g.wait_for(kNoHang), std::future_status::ready);
    EXPECT_NE(g.get().find(p + ".tmp"), std::string::npos);
    EXPECT_EQ(*load_state_file(p, key, "gw-1"), (Bytes{1, 2, 3}));
}

TEST(PrintableTest, UntrustedTextBecomesOneInertLine) {
    const std::string forged = "pne-1\n2026-01-01T00:00:00.000 info  [gw-1] forged\x1b[31m\"'\\\r";
    const std::string shown = printable(forged, 200);
    for (char c : shown) {
        EXPECT_GE(static_cast<unsigned char>(c), 0x20) << shown;
        EXPECT_LT(static_cast<unsigned char>(c), 0x7f) << shown;
        EXPECT_NE(c, '"') << shown;
        EXPECT_NE(c, '\'') << shown;
    }
    EXPECT_EQ(shown,
              "pne-1\\x0a2026-01-01T00:00:00.000 info  [gw-1] forged\\x1b[31m\\x22\\x27\\x5c\\x0d");
    EXPECT_EQ(printable(std::string(100, 'a'), 8), "aaaaaaaa...");
}

TEST(PrintableTest, ErrorJsonIsValidJsonForAnyText) {
    const std::string text = "unknown command 'x\"}\n{\"forged\":1\x1b[31m'";
    const std::string json = error_json(text);
    EXPECT_EQ(json.find('\n'), std::string::npos) << json;
    EXPECT_EQ(json.find('\x1b'), std::string::npos) << json;
    google::protobuf::Struct back;
    ASSERT_TRUE(parse_json(json, back)) << json;
    EXPECT_EQ(back.fields().at("error").string_value(), text);
}

}  // namespace
}  // namespace cpns::daemon
