// A device's durable state (PN GW: PN Inventory and LocalEUKeys; PNE: memberships, LocalEUKey,
// SK_PNE), sealed at rest in one file. The sealing key is KDF(EUKey, 0x56, "cpns device
// state v1", device ID): only this device, with its EUKey, can open the file. Writes go to a
// background thread (never blocking the event loop) and replace the file atomically (write,
// fsync, rename, fsync the directory).
#pragma once

#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "core/crypto.hpp"

namespace cpns::daemon {

SecretKey device_state_key(const SecretKey& eukey, std::string_view device_id);
// AES-256-GCM, AAD = magic || device ID. File: "CPNSST1\0" || nonce(12) || ciphertext || tag(16).
Bytes seal_state(const SecretKey& key, std::string_view device_id, ByteView plaintext);
std::optional<Bytes> open_state(const SecretKey& key, std::string_view device_id, ByteView file);

// Reads and opens the file: nullopt if it does not exist; ConfigError if it cannot be read or
// does not open under this device's key.
std::optional<Bytes> load_state_file(const std::string& path, const SecretKey& key,
                                     std::string_view device_id);

class StateWriter {
  public:
    StateWriter(std::string path, SecretKey key, std::string device_id);
    ~StateWriter();  // writes what is pending, then stops
    // Queues the newest state; an older pending one is dropped (only the latest matters).
    void save(Bytes plaintext);
    // Blocks until everything queued so far is on disk (tests, shutdown).
    void flush();
    std::uint64_t written() const;

  private:
    void loop();
    std::string path_;
    SecretKey key_;
    std::string device_id_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::optional<Bytes> pending_;
    bool busy_ = false;
    bool stop_ = false;
    std::uint64_t written_ = 0;
    std::thread thread_;
};

}  // namespace cpns::daemon
