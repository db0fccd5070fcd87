// The event trace of a daemon (`--trace-file PATH`): one JSON object per line, appended to
// PATH, each line written with one write(2) so that it is on disk (in the page cache) when
// write() returns and a reader never sees half a line from a running daemon.
//
// Each line is a pb::TraceEvent printed by protobuf's JSON printer with the schema's field
// names (time_ms is a JSON string, as proto3 JSON prints 64-bit integers; every field is
// present, empty strings included). docs/architecture.md describes the events and the state
// names; tests/trace_flow_test.py checks what the daemons write.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include <asio.hpp>

#include "core/codec.hpp"
#include "core/role.hpp"
#include "net/connection.hpp"

namespace cpns::daemon {

// Longest line written (the newline included). Longer events have their text fields cut, the
// longest first, each cut marked with "...".
inline constexpr std::size_t kMaxTraceLine = 4096;

class TraceWriter {
  public:
    using WallClock = std::function<std::uint64_t()>;  // milliseconds since the Unix epoch

    // Off: write() does nothing.
    TraceWriter() = default;
    // Opens (creates, mode 0600, or appends to) `path`; "" leaves the writer off. Throws
    // ConfigError (src/daemon/common.hpp) if the file cannot be opened. `wall_clock` fills
    // time_ms when an event has none (default: the system clock).
    explicit TraceWriter(const std::string& path, WallClock wall_clock = {});
    ~TraceWriter();
    TraceWriter(const TraceWriter&) = delete;
    TraceWriter& operator=(const TraceWriter&) = delete;

    // Closes the current file if any, then opens `path` as the constructor does.
    void open(const std::string& path, WallClock wall_clock = {});
    void close();
    bool enabled() const { return fd_ >= 0; }
    const std::string& path() const { return path_; }

    // Appends one line; time_ms is set from the wall clock when it is 0. A failed write is
    // counted in dropped(), never thrown: tracing must not stop a daemon.
    void write(pb::TraceEvent ev);

    std::uint64_t written() const;
    std::uint64_t dropped() const;

    // The line for `ev` (without the newline): valid JSON, at most kMaxTraceLine - 1 bytes,
    // text fields with invalid UTF-8 repaired ('?').
    static std::string to_line(const pb::TraceEvent& ev);

  private:
    mutable std::mutex mu_;
    int fd_ = -1;
    std::string path_;
    WallClock wall_clock_;
    std::uint64_t written_ = 0;
    std::uint64_t dropped_ = 0;
};

// Events as the roles' adapters write them (role: "pne", "gw" or "server").
pb::TraceEvent trace_transition(std::string_view entity, std::string_view role,
                                std::string_view pn_id, std::string_view subject,
                                std::string_view from_state, std::string_view to_state,
                                std::string_view reason);
// event: "send" or "recv"; detail e.g. "clear" or "tls".
pb::TraceEvent trace_message(std::string_view entity, std::string_view role, std::string_view event,
                             std::string_view pn_id, std::string_view message,
                             std::string_view peer, std::string_view detail = {});

// --- Crash points (`--crash-at WHEN:MESSAGE[:N]`) ---------------------------------------------
// A drill for crash consistency: the daemon SIGKILLs itself at one message boundary, as a
// power cut or an OOM kill would stop it (no cleanup, no final writes). MESSAGE is a message
// name as the trace prints it (e.g. PnRegistrationRequest), N counts from 1 (default 1):
//   before-send:M  instead of handing the Nth M to its link: everything the daemon did before
//                  that send (a state file written, a PN committed) is done, the peer gets nothing
//   send:M         once the Nth M has been written to the socket (the peer receives it), before
//                  the daemon handles any message it receives after that
//   recv:M         once the role has handled the Nth M received and the daemon has carried out
//                  its effects (state saved, replies queued; queued replies may not leave)
// Every hit is logged at critical level ("crash point ... reached") just before the kill.
struct CrashPoint {
    enum class When { kBeforeSend, kAfterSend, kAfterRecv };
    When when = When::kAfterSend;
    std::string message;
    std::uint64_t nth = 1;
};
// "" = none; anything else that is not WHEN:MESSAGE[:N] throws ConfigError.
std::optional<CrashPoint> parse_crash_point(std::string_view spec);
// How often, and at most how long, `send` waits for the message to be written before the kill.
inline constexpr Millis kCrashFlushPoll = 1;
inline constexpr Millis kCrashFlushLimit = 2'000;

// What one daemon traces: its role's transitions, every message it sends or receives, and
// the outcomes. Off (every call a no-op) when opened with "". It also carries the daemon's
// crash point (`crash_at`, see CrashPoint), which works with or without a trace file.
class RoleTrace {
  public:
    // Throws ConfigError for a trace file that cannot be opened or a malformed crash_at.
    RoleTrace(std::string entity, std::string role, const std::string& path,
              std::string_view crash_at = {});
    bool enabled() const { return writer_.enabled(); }
    void transition(const TransitionEffect& t);
    // event: "send" (before the message is handed to its link) or "recv" (before the role
    // sees it).
    void message(std::string_view event, const pb::Envelope& env, std::string_view peer,
                 Protection protection);
    void outcome(const OutcomeEffect& o);
    // After `conn->send(env)` succeeded: for a `send` crash point, waits on `ex` until `conn`
    // has written its queue to the socket, then kills the process.
    void sent(const pb::Envelope& env, const std::shared_ptr<net::Connection>& conn,
              const asio::any_io_executor& ex);
    // After the role handled a received `env` and its effects were applied (`recv` points).
    void handled(const pb::Envelope& env);

  private:
    bool hit(CrashPoint::When when, const pb::Envelope& env);
    [[noreturn]] void crash(std::string_view why) const;

    std::string entity_;
    std::string role_;
    TraceWriter writer_;
    std::optional<CrashPoint> crash_;
    std::uint64_t crash_hits_ = 0;
    bool crash_pending_ = false;  // a `send` point was hit; dying once the bytes are out
};

// The PN ID a message is about ("" if none): its body's pn_id, or its result's.
std::string pn_id_of(const pb::Envelope& env);

}  // namespace cpns::daemon
