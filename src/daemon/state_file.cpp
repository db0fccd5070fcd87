#include "daemon/state_file.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
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
    auto content =
        read_file_if_exists(path, "state file", kMaxStateFileBytes, FileSecrecy::kSealed);
    if (!content) return std::nullopt;
    const Bytes file(content->content.begin(), content->content.end());
    auto plain = open_state(key, device_id, file);
    if (!plain)
        throw ConfigError("state file " + path +
                          " does not open with this device's key (another "
                          "device's file, a different EUKey, or corrupted)");
    return plain;
}

void write_state_file(const std::string& path, const SecretKey& key, std::string_view device_id,
                      ByteView plaintext) {
    const Bytes sealed = seal_state(key, device_id, plaintext);
    const std::string tmp = path + ".tmp";
    // A left-over temporary file (or anything else planted under its name: a FIFO, a link)
    // is removed, and the new one created exclusively: open() never blocks or follows a link.
    if (::unlink(tmp.c_str()) != 0 && errno != ENOENT)
        throw std::runtime_error("cannot remove " + tmp + ": " + std::strerror(errno));
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) throw std::runtime_error("cannot create " + tmp + ": " + std::strerror(errno));
    try {
        write_all(fd, sealed, tmp);
    } catch (...) {
        ::close(fd);
        throw;
    }
    if (::fsync(fd) != 0) {
        const int err = errno;
        ::close(fd);
        throw std::runtime_error("cannot sync " + tmp + ": " + std::strerror(err));
    }
    if (::close(fd) != 0)
        throw std::runtime_error("cannot close " + tmp + ": " + std::strerror(errno));
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
        throw std::runtime_error("cannot replace " + path + ": " + std::strerror(errno));
    // The rename is durable only once the directory entry is.
    const auto dir = std::filesystem::path(path).parent_path();
    const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        throw std::runtime_error("cannot open the directory of " + path + ": " +
                                 std::strerror(errno));
    const int synced = ::fsync(dfd);
    const int err = errno;
    ::close(dfd);
    if (synced != 0)
        throw std::runtime_error("cannot sync the directory of " + path + ": " +
                                 std::strerror(err));
    spdlog::debug("state saved to {} ({} bytes sealed)", path, sealed.size());
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

void StateWriter::save(Bytes plaintext, Done done) {
    {
        std::lock_guard lk(mu_);
        if (pending_) wipe(pending_->data(), pending_->size());
        pending_ = std::move(plaintext);
        if (done) pending_done_.push_back(std::move(done));
    }
    cv_.notify_all();
}

void StateWriter::save(google::protobuf::Message&& state, Done done) {
    std::string bytes = state.SerializeAsString();
    save(Bytes(bytes.begin(), bytes.end()), std::move(done));
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
        std::vector<Done> done;
        {
            std::unique_lock lk(mu_);
            cv_.wait(lk, [this] { return pending_ || stop_; });
            if (!pending_) return;  // stopping, nothing left
            plain = std::move(*pending_);
            pending_.reset();
            done.swap(pending_done_);
            busy_ = true;
        }
        std::string error;
        try {
            write_state_file(path_, key_, device_id_, plain);
        } catch (const std::exception& e) {
            error = e.what();
            spdlog::error("state not saved: {}", error);
        }
        wipe(plain.data(), plain.size());
        for (const auto& d : done) d(error);
        {
            std::lock_guard lk(mu_);
            busy_ = false;
            ++written_;
        }
        cv_.notify_all();
    }
}

}  // namespace cpns::daemon
