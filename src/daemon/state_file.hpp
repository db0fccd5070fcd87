// A device's durable state (PN GW: PN Inventory and LocalEUKeys; PNE: memberships, LocalEUKey,
// SK_PNE), sealed at rest in one file. The sealing key is KDF(EUKey, 0x56, "cpns device
// state v1", device ID): only this device, with its EUKey, can open the file. Writes go to a
// background thread (never blocking the event loop) and replace the file atomically (write,
// fsync, rename, fsync the directory). A save can carry a completion: the daemons hold back
// what they report about a PN (control answers, results to PNEs) until its state is durable.
#pragma once

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <google/protobuf/message.h>

#include "core/crypto.hpp"
#include "daemon/common.hpp"

namespace cpns::daemon {

SecretKey device_state_key(const SecretKey& eukey, std::string_view device_id);
// AES-256-GCM, AAD = magic || device ID. File: "CPNSST1\0" || nonce(12) || ciphertext || tag(16).
Bytes seal_state(const SecretKey& key, std::string_view device_id, ByteView plaintext);
std::optional<Bytes> open_state(const SecretKey& key, std::string_view device_id, ByteView file);

// Reads and opens the file: nullopt if it does not exist; ConfigError if it is not a regular
// file, is larger than kMaxStateFileBytes, cannot be read or does not open under this
// device's key.
std::optional<Bytes> load_state_file(const std::string& path, const SecretKey& key,
                                     std::string_view device_id);

// Seals `plaintext` and replaces `path` with it durably: a fresh temporary file beside it
// (created exclusively, never following a link), written, fsync'd, renamed over `path`, then
// the directory fsync'd. std::runtime_error naming the file and the errno text on failure.
void write_state_file(const std::string& path, const SecretKey& key, std::string_view device_id,
                      ByteView plaintext);

class StateWriter {
  public:
    // Called on the writer thread once the state it was queued with (or a newer one) is on
    // disk (error empty), or could not be written (error says why). Post to the event loop.
    using Done = std::function<void(const std::string& error)>;

    StateWriter(std::string path, SecretKey key, std::string device_id);
    ~StateWriter();  // writes what is pending, then stops
    // Queues the newest state; an older pending one is dropped (only the latest matters, and
    // its write completes the dropped one's `done` too).
    void save(Bytes plaintext, Done done = {});
    // The same for a state message (serialized here; the serialized copy is wiped).
    // Serializes `state` for the next write, then wipes its key bytes (wipe_bytes_fields).
    void save(google::protobuf::Message&& state, Done done = {});
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
    std::vector<Done> pending_done_;
    bool busy_ = false;
    bool stop_ = false;
    std::uint64_t written_ = 0;
    std::thread thread_;
};

// Restores `role` from its sealed state file, if there is one, and returns the writer for its
// later saves (nullptr when `path` is empty: the state stays in memory). `Role` has
// import_state(const StateMsg&) returning false for a state that is not its own.
// ConfigError when the file does not open under this device's key or is not its state.
// EUKey rotation: a file that does not open under `eukey` but under `previous_eukey` (the key
// before `cpnsctl rotate`, if configured) is restored and re-sealed under `eukey` at once.
template <class StateMsg, class Role>
std::unique_ptr<StateWriter> open_device_state(
    const std::string& path, const SecretKey& eukey, const std::string& device_id, Role& role,
    const std::optional<SecretKey>& previous_eukey = {}) {
    if (path.empty()) return nullptr;
    const SecretKey key = device_state_key(eukey, device_id);
    std::optional<Bytes> plain;
    bool reseal = false;
    try {
        plain = load_state_file(path, key, device_id);
    } catch (const ConfigError&) {
        if (!previous_eukey) throw;
        plain = load_state_file(path, device_state_key(*previous_eukey, device_id), device_id);
        reseal = true;
    }
    auto writer = std::make_unique<StateWriter>(path, key, device_id);
    if (plain) {
        StateMsg st;
        const bool ok = st.ParseFromArray(plain->data(), static_cast<int>(plain->size())) &&
                        role.import_state(st);
        if (ok && reseal) {
            writer->save(*plain);
            writer->flush();
        }
        wipe(plain->data(), plain->size());
        wipe_bytes_fields(st);
        if (!ok) throw ConfigError("state file " + path + " is not the state of " + device_id);
    }
    return writer;
}

}  // namespace cpns::daemon
