// Shared pieces of the three daemons: logging, configuration helpers, the monotonic clock
// handed to the core, and the timer that drives a role's next_deadline().
#pragma once

#include <spdlog/spdlog.h>

#include <toml++/toml.h>
#include <asio.hpp>
#include <chrono>
#include <functional>
#include <optional>
#include <string>

#include "core/role.hpp"
#include "net/address.hpp"
#include "net/discovery.hpp"
#include "net/listener.hpp"
#include "tls/tls.hpp"

namespace cpns::daemon {

// A configuration or start-up error: printed as it is, exit status 2.
struct ConfigError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Bounds on the files the programs read: a file over its bound is refused before it is read.
inline constexpr std::size_t kMaxConfigFileBytes = 1
                                                   << 20;  // a TOML configuration or entities file
inline constexpr std::size_t kMaxKeyFileBytes = 4096;      // a key file: 64 hex digits (+ spaces)
inline constexpr std::size_t kMaxStateFileBytes = 64 << 20;  // a sealed device state file

// What a file holds, for the permission checks of read_checked_file.
enum class FileSecrecy {
    kPlain,   // nothing secret: refused if others may write it
    kSecret,  // a key: also a warning when group or others may read it
    kSealed,  // encrypted at rest (device state): refused if others may write it
};
struct CheckedFile {
    std::string content;  // wipe() it when it held a secret
    unsigned mode = 0;    // st_mode & 07777
};
// Reads a whole file named in the configuration without ever hanging or exhausting memory:
// opened non-blocking (a FIFO does not wait for a writer), then required to be a regular
// file (not a FIFO, device, directory or socket) of at most max_bytes, and read with that
// bound. ConfigError naming `what`, the path and the problem; nullopt only when the file does
// not exist. World-writable files are refused; a kSecret file readable by group or others is
// accepted with a warning (warn_operator).
std::optional<CheckedFile> read_file_if_exists(const std::string& path, std::string_view what,
                                               std::size_t max_bytes, FileSecrecy secrecy);
// The same for a file that must exist.
CheckedFile read_checked_file(const std::string& path, std::string_view what, std::size_t max_bytes,
                              FileSecrecy secrecy);
// A warning for the operator: through the log once init_logging has run, else on stderr.
void warn_operator(const std::string& text);

// stderr logger named after the entity; level: trace, debug, info, warn, error; format: human
// (default) or json (one JSON object per line, daemon/log_json.hpp).
void init_logging(const std::string& name, const std::string& level,
                  const std::string& format = "human");
// The longest core log message written whole (longer ones end in "...").
inline constexpr std::size_t kMaxLogLine = 2048;
// The core's LogSink, writing to spdlog; the text goes through printable().
LogSink core_log_sink();

// Milliseconds on the monotonic clock since the process started (the core's `now`).
Millis mono_now();

// Configuration access with clear errors ("pne.toml: 'eukey' must be 64 hex digits").
class Config {
  public:
    Config() = default;
    static Config load(const std::string& path);  // ConfigError if unreadable or invalid TOML
    const std::string& path() const { return path_; }
    const toml::table& table() const { return table_; }
    std::string str(std::string_view key, std::string def = "") const;
    bool boolean(std::string_view key, bool def) const;
    std::int64_t integer(std::string_view key, std::int64_t def) const;
    // A 256-bit key from `key` (hex) or `key_file` (a file holding the hex, at most
    // kMaxKeyFileBytes octets); nullopt if neither.
    std::optional<SecretKey> key(std::string_view key, std::string_view file_key) const;
    std::string where(std::string_view key) const;

  private:
    std::string path_;
    toml::table table_;
};

// ConfigError (with the key's position) unless 'log_level' and 'log_format' hold values
// init_logging accepts.
void check_log_settings(const Config& c);
SecretKey parse_key(const std::string& hex, const std::string& what);
// What the PN GW and PNE daemons both read from their configuration.
struct DeviceOptions {
    std::string discovery_group = net::kDefaultDiscoveryGroup;  // multicast Entity Discovery
    std::string discovery_interface = "127.0.0.1";
    tls::Mode pan_tls = tls::Mode::kTls13;  // for PSK-TLS on the PAN
    std::string keylog;                     // see keylog_path()
    std::string state_file;                 // the sealed device state; "" = memory only
    std::string trace_file;                 // JSON-lines event trace; "" = off
    std::string crash_at;                   // --crash-at (daemon/trace.hpp); "" = none
    std::string metrics;  // --metrics / 'metrics': Prometheus endpoint, HOST:PORT or PORT; "" = off
    // 'previous_eukey' / 'previous_eukey_file': the EUKey before a rotation (cpnsctl rotate),
    // only to open a state file sealed under it, which is then re-sealed under 'eukey'.
    std::optional<SecretKey> previous_eukey;
};
DeviceOptions device_options_from(const Config& c);
// A device's 'id' (a valid entity ID) and 'eukey' / 'eukey_file', both required.
std::pair<std::string, SecretKey> device_identity(const Config& c);
net::HostPort parse_address(const std::string& text, const std::string& what);

// Where a PN GW's or PNE's control endpoint is: a Unix domain socket (the default) or TCP.
struct ControlAddress {
    std::string unix_path;  // non-empty: a Unix domain socket
    net::HostPort tcp;      // else this TCP address
    bool is_unix() const { return !unix_path.empty(); }
    std::string str() const { return is_unix() ? "unix:" + unix_path : tcp.str(); }
};
// "unix:PATH" (or an absolute PATH) or "HOST:PORT"; ConfigError naming `what` otherwise.
ControlAddress parse_control_address(const std::string& text, const std::string& what);
// The default control socket of `daemon` ("cpns-gw", "cpns-pne"): $RUNTIME_DIRECTORY/control.sock
// when set (systemd's RuntimeDirectory=), else /run/DAEMON/control.sock for root, else
// $XDG_RUNTIME_DIR/DAEMON/control.sock; ConfigError (set 'control') when none applies.
std::string default_control_path(const std::string& daemon);
// The control endpoint of a configuration: 'control', else the deprecated 'control_listen'
// (TCP; a warning), else the default socket of `daemon`. `override` (a command-line value)
// wins when not empty.
ControlAddress control_address_from(const Config& c, const std::string& daemon,
                                    const std::string& override = "");
// The token of a TCP control endpoint, from `path`: 64 hex digits, the file not readable or
// writable by group or others (else ConfigError naming `what`).
SecretKey read_control_token(const std::string& path, const std::string& what);
// Checks a control request line of a TCP endpoint: it must start with "token HEX " where HEX
// is `token` (compared in constant time). On success returns the rest of the line (the
// command); nullopt otherwise. The token's text in `line` is wiped.
std::optional<std::string> strip_control_token(std::string& line, const SecretKey& token);
// {"error":"UNAUTHORIZED","detail":...}: the answer to a request without the right token.
std::string unauthorized_json();
// Counts refused control requests and logs at most once per kControlRefusalLogInterval (with
// the count since the last line), so that a flood of bad tokens cannot flood the log.
inline constexpr Millis kControlRefusalLogInterval = 1'000;
class RefusalLog {
  public:
    void refused(const std::string& source);
    std::uint64_t total() const { return total_; }

  private:
    std::uint64_t total_ = 0, held_ = 0;
    Millis last_ = -kControlRefusalLogInterval;
};

// The operator commands' side of a daemon's control endpoint: sends one request line to
// `daemon` (its name, for errors) at `at` and returns its one-line answer, waiting at most
// `timeout_s` seconds for it. A TCP endpoint needs `token_file` (the line is sent as
// "token HEX LINE"). std::runtime_error when there is no port, no connection (the socket's
// permission denied among them) or no answer.
std::string control_request(const ControlAddress& at, const std::string& line,
                            const std::string& daemon, int timeout_s,
                            const std::string& token_file = "");
// The text of an {"error": ...} answer (with its "detail" if any); nullopt for other answers.
std::optional<std::string> control_error(const std::string& answer);
tls::Mode parse_tls_mode(const std::string& text, const std::string& what);
// The device's capabilities ([capabilities]) and contents ([[content]]), checked against the
// codec's limits (kMaxTextLength, kMaxPanTechnologies, kMaxServices, kMaxContentsPerPne): a
// setting over them is a ConfigError naming it, not a join the peer drops as malformed.
pb::DeviceCapabilities capabilities_from(const Config& c, bool enough_ui);
std::vector<pb::ContentInfo> contents_from(const Config& c);
// The key-log path: the configured one, else $SSLKEYLOGFILE, else "" (off).
std::string keylog_path(const std::string& configured);
// A connection limit from the configuration: `key` as an integer in 1..`max`, else `def`.
std::size_t connection_limit(const Config& c, std::string_view key, std::size_t def,
                             std::size_t max);
// The neighbour TTL of a PN GW or PNE: `neighbour_ttl_ms` in kMinNeighbourTtl..kMaxNeighbourTtl,
// else kNeighbourTtl.
Millis neighbour_ttl_from(const Config& c);
// Binds `listener` to `at` and returns the port; ConfigError naming the setting `what` if
// it cannot.
std::uint16_t listen_on(net::Listener& listener, const net::HostPort& at, std::string_view what);
// Writes "host:port\n" to `path` (atomically), for scripts and tests that use port 0.
void write_ready_file(const std::string& path, const std::string& address);

// Re-arms one steady_timer to a role's next deadline and calls `fire(now)` when reached.
class RoleTimer {
  public:
    RoleTimer(asio::any_io_executor ex, std::function<void(Millis)> fire);
    void arm(Millis deadline);
    void cancel();

  private:
    asio::steady_timer timer_;
    std::function<void(Millis)> fire_;
    Millis armed_ = kNever;
};

pb::OutcomeReport to_report(const std::string& entity_id, const OutcomeEffect& o);
std::string message_json(const google::protobuf::Message& m);
bool parse_json(const std::string& json, google::protobuf::Message& m);
// One line of JSON for logs and control answers.
std::string outcome_json(const std::string& entity_id, const OutcomeEffect& o);
// {"error": text} as one line of JSON, `text` escaped by the protobuf JSON printer.
std::string error_json(const std::string& text);

// How long a stopping daemon lets its coroutines unwind (their sockets and timers are
// closed first) before the process exits. Keeps SIGTERM-to-exit well under a second.
inline constexpr Millis kShutdownDrain = 300;
// Runs `io` until SIGTERM/SIGINT (or until something calls io.stop()), then calls `stop`
// and lets every coroutine finish before returning. `reload`, if set, is called on the event
// loop for each SIGHUP.
void run_until_stopped(asio::io_context& io, const std::function<void()>& stop,
                       const std::function<void()>& reload = {});

// Sets the level of the running logger (trace, debug, info, warn, error).
void set_log_level(const std::string& level);
// A configuration reload (SIGHUP): the keys (dotted for tables; an array of tables counts as
// one key) whose values differ between `running` and `fresh`, sorted into those in `live`
// (applied at once) and the others (they need a restart). Values are never logged (some are
// keys).
struct ReloadReport {
    std::vector<std::string> applied, restart;
};
ReloadReport classify_reload(const Config& running, const Config& fresh,
                             const std::vector<std::string_view>& live);
// One log line per changed key ("applied" or "needs a restart"), or "no change".
void log_reload(const ReloadReport& report, const std::string& path);
// The SIGHUP of a daemon: loads running.path() again and checks it (check_log_settings, then
// `prepare`, which validates the rest and returns what applies it: it throws ConfigError and
// changes nothing when something is wrong). Then sets the log level (unless
// `log_level_overridden` by the command line), runs what `prepare` returned, logs per key
// (log_reload) and keeps the fresh file as `running`. Any error is logged with its position
// and nothing changes.
void reload_config(Config& running, bool log_level_overridden,
                   const std::vector<std::string_view>& live,
                   const std::function<std::function<void()>(const Config&)>& prepare);
// What a person reads: the PN, its inventory, who joined and why the others did not.
std::string report_text(const pb::OutcomeReport& r);

}  // namespace cpns::daemon
