// Key files named in a daemon's configuration are read with a bound (kMaxKeyFileSize): a
// setting that names a large file or a device by mistake gets a clear configuration error
// instead of a daemon that reads without end.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "daemon/common.hpp"

namespace cpns::daemon {
namespace {

namespace fs = std::filesystem;

class KeyFile : public testing::Test {
  protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() / ("cpns-key-file-" + std::to_string(getpid()));
        fs::create_directories(dir_);
    }
    void TearDown() override { fs::remove_all(dir_); }
    // A configuration whose 'eukey_file' names `key_file`.
    Config config_naming(const std::string& key_file) {
        const fs::path toml = dir_ / "pne.toml";
        std::ofstream(toml) << "eukey_file = \"" << key_file << "\"\n";
        return Config::load(toml.string());
    }
    std::string message_of(const Config& c) {
        try {
            c.key("eukey", "eukey_file");
        } catch (const ConfigError& e) {
            return e.what();
        }
        return "(no error)";
    }
    fs::path dir_;
};

const std::string kHex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

TEST_F(KeyFile, AKeyFileWithinTheBoundIsRead) {
    const fs::path key = dir_ / "eukey";
    std::ofstream(key) << kHex << "\n";
    const auto k = config_naming(key.string()).key("eukey", "eukey_file");
    ASSERT_TRUE(k.has_value());
    EXPECT_EQ(k->to_hex(), kHex);
}

TEST_F(KeyFile, AFileLargerThanAKeyFileIsRefusedWithAClearError) {
    const fs::path big = dir_ / "server.log";
    std::ofstream(big) << kHex << std::string(kMaxKeyFileSize, ' ') << "\n";
    const std::string what = message_of(config_naming(big.string()));
    EXPECT_NE(what.find("larger than a key file"), std::string::npos) << what;
    EXPECT_NE(what.find("eukey_file"), std::string::npos) << what;
}

TEST_F(KeyFile, AnEndlessDeviceIsRefusedNotReadForever) {
    ASSERT_TRUE(fs::exists("/dev/zero"));
    const std::string what = message_of(config_naming("/dev/zero"));
    EXPECT_NE(what.find("larger than a key file"), std::string::npos) << what;
}

}  // namespace
}  // namespace cpns::daemon
