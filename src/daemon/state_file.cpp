#include "daemon/state_file.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>

#include "daemon/common.hpp"

namespace cpns::daemon {

namespace {
constexpr char kMagic[8] = {'C', 'P', 'N', 'S', 'S', 'T', '1', '\0'};
constexpr std::size_t kNonce = 12;
constexpr std::size_t kTag = 16;

struct CtxFree {
    void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};

// (Sized first, then copied: GCC 12 at -O2 reports a false -Warray-bounds for an insert
// after constructing a vector from the 8-byte magic.)
Bytes aad_for(std::string_view device_id) {
    Bytes aad(sizeof kMagic + device_id.size());
    std::memcpy(aad.data(), kMagic, sizeof kMagic);
    if (!device_id.empty())
        std::memcpy(aad.data() + sizeof kMagic, device_id.data(), device_id.size());
    return aad;
}

void write_all(int fd, const Bytes& data, const std::string& path) {
    std::size_t off = 0;
    while (off < data.size()) {
        const ssize_t n = ::write(fd, data.data() + off, data.size() - off);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno));
        }
        off += static_cast<std::size_t>(n);
    }
}
}  // namespace

SecretKey device_state_key(const SecretKey& eukey, std::string_view device_id) {
    auto k = kdf(eukey, Fc::kDeviceState, {as_bytes("cpns device state v1"), as_bytes(device_id)});
    SecretKey key(k);
    wipe(k.data(), k.size());
    return key;
}

Bytes seal_state(const SecretKey& key, std::string_view device_id, ByteView plaintext) {
    OsRandom rnd;
    const Bytes nonce = rnd.bytes(kNonce);
    const std::size_t ct_at = sizeof kMagic + kNonce;
    Bytes out(ct_at + plaintext.size() + kTag);
    std::memcpy(out.data(), kMagic, sizeof kMagic);
    std::memcpy(out.data() + sizeof kMagic, nonce.data(), kNonce);
    std::unique_ptr<EVP_CIPHER_CTX, CtxFree> ctx(EVP_CIPHER_CTX_new());
    const Bytes aad = aad_for(device_id);
    int len = 0;
    if (!ctx ||
        EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.view().data(),
                           nonce.data()) != 1 ||
        EVP_EncryptUpdate(ctx.get(), nullptr, &len, aad.data(), static_cast<int>(aad.size())) !=
            1 ||
        EVP_EncryptUpdate(ctx.get(), out.data() + ct_at, &len, plaintext.data(),
                          static_cast<int>(plaintext.size())) != 1 ||
        EVP_EncryptFinal_ex(ctx.get(), out.data() + ct_at + len, &len) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, static_cast<int>(kTag),
                            out.data() + ct_at + plaintext.size()) != 1)
        throw std::runtime_error("AES-256-GCM seal failed");
    return out;
}

std::optional<Bytes> open_state(const SecretKey& key, std::string_view device_id, ByteView file) {
    if (file.size() < sizeof kMagic + kNonce + kTag ||
        std::memcmp(file.data(), kMagic, sizeof kMagic) != 0)
        return std::nullopt;
    const auto nonce = file.subspan(sizeof kMagic, kNonce);
    const auto body = file.subspan(sizeof kMagic + kNonce);
    const std::size_t ct_len = body.size() - kTag;
    Bytes plain(ct_len);
    Bytes tag(body.begin() + static_cast<std::ptrdiff_t>(ct_len), body.end());
    std::unique_ptr<EVP_CIPHER_CTX, CtxFree> ctx(EVP_CIPHER_CTX_new());
    const Bytes aad = aad_for(device_id);
    int len = 0;
    const bool ok = ctx &&
                    EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.view().data(),
                                       nonce.data()) == 1 &&
                    EVP_DecryptUpdate(ctx.get(), nullptr, &len, aad.data(),
                                      static_cast<int>(aad.size())) == 1 &&
                    EVP_DecryptUpdate(ctx.get(), plain.data(), &len, body.data(),
                                      static_cast<int>(ct_len)) == 1 &&
                    EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, static_cast<int>(kTag),
                                        tag.data()) == 1 &&
                    EVP_DecryptFinal_ex(ctx.get(), plain.data() + len, &len) == 1;
    if (!ok) {
        wipe(plain.data(), plain.size());
        return std::nullopt;
    }
    return plain;
}

std::optional<Bytes> load_state_file(const std::string& path, const SecretKey& key,
                                     std::string_view device_id) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) return std::nullopt;
    std::ifstream in(path, std::ios::binary);
    Bytes file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!in && !in.eof()) throw ConfigError("cannot read state file " + path);
    auto plain = open_state(key, device_id, file);
    if (!plain)
        throw ConfigError("state file " + path +
                          " does not open with this device's key (another "
                          "device's file, a different EUKey, or corrupted)");
    return plain;
}

StateWriter::StateWriter(std::string path, SecretKey key, std::string device_id)
    : path_(std::move(path)),
      key_(std::move(key)),
      device_id_(std::move(device_id)),
      thread_([this] { loop(); }) {}

StateWriter::~StateWriter() {
    {
        std::lock_guard lk(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
}

void StateWriter::save(Bytes plaintext) {
    {
        std::lock_guard lk(mu_);
        if (pending_) wipe(pending_->data(), pending_->size());
        pending_ = std::move(plaintext);
    }
    cv_.notify_all();
}

void StateWriter::save(google::protobuf::Message&& state) {
    std::string bytes = state.SerializeAsString();
    save(Bytes(bytes.begin(), bytes.end()));
    wipe(bytes.data(), bytes.size());
    wipe_bytes_fields(state);
}

void StateWriter::flush() {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [this] { return !pending_ && !busy_; });
}

std::uint64_t StateWriter::written() const {
    std::lock_guard lk(mu_);
    return written_;
}

void StateWriter::loop() {
    for (;;) {
        Bytes plain;
        {
            std::unique_lock lk(mu_);
            cv_.wait(lk, [this] { return pending_ || stop_; });
            if (!pending_) return;  // stopping, nothing left
            plain = std::move(*pending_);
            pending_.reset();
            busy_ = true;
        }
        try {
            const Bytes sealed = seal_state(key_, device_id_, plain);
            const std::string tmp = path_ + ".tmp";
            const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
            if (fd < 0)
                throw std::runtime_error("cannot create " + tmp + ": " + std::strerror(errno));
            write_all(fd, sealed, tmp);
            if (::fsync(fd) != 0 || ::close(fd) != 0)
                throw std::runtime_error("cannot sync " + tmp + ": " + std::strerror(errno));
            if (std::rename(tmp.c_str(), path_.c_str()) != 0)
                throw std::runtime_error("cannot replace " + path_ + ": " + std::strerror(errno));
            const auto dir = std::filesystem::path(path_).parent_path();
            const int dfd =
                ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (dfd >= 0) {
                ::fsync(dfd);
                ::close(dfd);
            }
            spdlog::debug("state saved to {} ({} bytes sealed)", path_, sealed.size());
        } catch (const std::exception& e) {
            spdlog::error("state not saved: {}", e.what());
        }
        wipe(plain.data(), plain.size());
        {
            std::lock_guard lk(mu_);
            busy_ = false;
            ++written_;
        }
        cv_.notify_all();
    }
}

}  // namespace cpns::daemon
