// Keys from systemd's LoadCredential= ($CREDENTIALS_DIRECTORY): the packaged units give
// cpns-server its master key as credential "master-key" and cpns-gw / cpns-pne their EUKey as
// "device-key". A credential replaces the configured key path; both at once is refused.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "daemon/common.hpp"
#include "daemon/credentials.hpp"

namespace cpns::daemon {
namespace {

namespace fs = std::filesystem;

const std::string kHexKey = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

class CredentialsTest : public ::testing::Test {
  protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() /
               ("cpns-credentials-test-" + std::to_string(::getpid()) + "-" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::remove_all(dir_);
        fs::create_directories(dir_ / "creds");
        if (const char* old = std::getenv("CREDENTIALS_DIRECTORY")) saved_ = old;
        ::unsetenv("CREDENTIALS_DIRECTORY");
    }
    void TearDown() override {
        if (saved_)
            ::setenv("CREDENTIALS_DIRECTORY", saved_->c_str(), 1);
        else
            ::unsetenv("CREDENTIALS_DIRECTORY");
        fs::remove_all(dir_);
    }
    // A file of mode 0400, as systemd writes a credential.
    std::string write(const fs::path& path, const std::string& text, mode_t mode = 0400) {
        std::ofstream(path) << text;
        ::chmod(path.c_str(), mode);
        return path.string();
    }
    void use_credentials() { ::setenv("CREDENTIALS_DIRECTORY", (dir_ / "creds").c_str(), 1); }
    Config config(const std::string& text) {
        return Config::load(write(dir_ / "device.toml", "id = \"pne-1\"\n" + text, 0600));
    }

    fs::path dir_;
    std::optional<std::string> saved_;
};

TEST_F(CredentialsTest, WithoutCredentialsDirectoryTheConfiguredPathIsUsed) {
    EXPECT_FALSE(credential_path(kMasterKeyCredential));
    EXPECT_EQ(
        key_file_or_credential(kMasterKeyCredential, "/etc/cpns/master.key", "master_key_file"),
        "/etc/cpns/master.key");
    ::setenv("CREDENTIALS_DIRECTORY", "", 1);  // empty counts as unset
    EXPECT_EQ(key_file_or_credential(kMasterKeyCredential, "", "master_key_file"), "");
}

TEST_F(CredentialsTest, ADirectoryWithoutThatCredentialLeavesTheConfiguredPath) {
    use_credentials();
    write(dir_ / "creds" / "device-key", kHexKey);  // another credential only
    EXPECT_FALSE(credential_path(kMasterKeyCredential));
    EXPECT_EQ(key_file_or_credential(kMasterKeyCredential, "master.key", "master_key_file"),
              "master.key");
}

TEST_F(CredentialsTest, TheCredentialReplacesAnUnsetPath) {
    use_credentials();
    const std::string path = write(dir_ / "creds" / "master-key", kHexKey + "\n");
    EXPECT_EQ(credential_path(kMasterKeyCredential), path);
    EXPECT_EQ(key_file_or_credential(kMasterKeyCredential, "", "master_key_file"), path);
}

TEST_F(CredentialsTest, ACredentialAndAConfiguredPathAtOnceAreRefused) {
    use_credentials();
    write(dir_ / "creds" / "master-key", kHexKey);
    try {
        key_file_or_credential(kMasterKeyCredential, "/etc/cpns/master.key", "master_key_file");
        FAIL() << "accepted both a credential and a configured path";
    } catch (const ConfigError& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find("'master_key_file' is set"), std::string::npos) << what;
        EXPECT_NE(what.find("credential 'master-key'"), std::string::npos) << what;
        EXPECT_NE(what.find("keep one"), std::string::npos) << what;
    }
}

TEST_F(CredentialsTest, ARelativeCredentialsDirectoryIsRefused) {
    ::setenv("CREDENTIALS_DIRECTORY", "creds", 1);
    EXPECT_THROW(credential_path(kMasterKeyCredential), ConfigError);
}

TEST_F(CredentialsTest, TheDeviceKeyComesFromTheCredential) {
    use_credentials();
    write(dir_ / "creds" / "device-key", kHexKey + "\n");
    const auto [id, key] = device_identity(config(""));
    EXPECT_EQ(id, "pne-1");
    EXPECT_EQ(key.to_hex(), kHexKey);
}

TEST_F(CredentialsTest, WithoutADeviceKeyCredentialTheConfiguredKeyIsUsed) {
    use_credentials();  // a directory, but no device-key in it
    const std::string other(64, 'b');
    EXPECT_EQ(device_identity(config("eukey = \"" + other + "\"\n")).second.to_hex(), other);
    ::unsetenv("CREDENTIALS_DIRECTORY");
    try {
        device_identity(config(""));
        FAIL() << "a device without any key was accepted";
    } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find("'device-key' credential"), std::string::npos)
            << e.what();
    }
}

TEST_F(CredentialsTest, ADeviceKeyCredentialBesideAConfiguredKeyIsRefused) {
    use_credentials();
    write(dir_ / "creds" / "device-key", kHexKey);
    const std::string key_file = write(dir_ / "eukey.key", kHexKey, 0600);
    for (const std::string& line :
         {"eukey = \"" + kHexKey + "\"\n", "eukey_file = \"" + key_file + "\"\n"}) {
        try {
            device_identity(config(line));
            FAIL() << "accepted a credential beside: " << line;
        } catch (const ConfigError& e) {
            EXPECT_NE(std::string(e.what()).find("keep one"), std::string::npos) << e.what();
        }
    }
}

TEST_F(CredentialsTest, AMalformedDeviceKeyCredentialIsRefused) {
    use_credentials();
    write(dir_ / "creds" / "device-key", "not a key\n");
    try {
        device_identity(config(""));
        FAIL() << "a malformed credential was accepted";
    } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find("device key credential"), std::string::npos)
            << e.what();
    }
    fs::remove(dir_ / "creds" / "device-key");
    fs::create_directory(dir_ / "creds" / "device-key");  // not a regular file
    EXPECT_THROW(device_identity(config("")), ConfigError);
}

}  // namespace
}  // namespace cpns::daemon
