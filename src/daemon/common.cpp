#include "daemon/common.hpp"

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>

#include "daemon/credentials.hpp"
#include "daemon/log_json.hpp"

namespace cpns::daemon {

namespace {

std::atomic<bool> logging_ready{false};

std::string file_type_name(mode_t mode) {
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    if (S_ISSOCK(mode)) return "a socket";
    return "not a regular file";
}

std::string mode_text(unsigned mode) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "%04o", mode & 07777U);
    return buf;
}

struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
};

// Top-level keys (and keys of [[pne]] / [[entity]] entries) that hold a key in the clear.
bool holds_inline_secret(const toml::table& t) {
    for (const char* k : {"eukey", "preassigned_key", "master_key"})
        if (t.contains(k)) return true;
    for (const char* list : {"pne", "entity"})
        if (const auto* arr = t[list].as_array())
            for (const auto& node : *arr)
                if (const auto* e = node.as_table())
                    if (e->contains("eukey") || e->contains("preassigned_key")) return true;
    return false;
}

}  // namespace

void warn_operator(const std::string& text) {
    if (logging_ready.load())
        spdlog::warn("{}", text);
    else
        std::cerr << "warning: " << text << "\n";
}

std::optional<CheckedFile> read_file_if_exists(const std::string& path, std::string_view what,
                                               std::size_t max_bytes, FileSecrecy secrecy) {
    const std::string name = std::string(what) + " " + path;
    // O_NONBLOCK: opening a FIFO does not wait for a writer; O_NOCTTY: a terminal is not
    // adopted. Both are harmless for the regular file we require.
    const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return std::nullopt;
        throw ConfigError("cannot open " + name + ": " + std::strerror(errno));
    }
    FdCloser closer{fd};
    struct stat st {};
    if (::fstat(fd, &st) != 0)
        throw ConfigError("cannot stat " + name + ": " + std::strerror(errno));
    if (!S_ISREG(st.st_mode))
        throw ConfigError(name + " is " + file_type_name(st.st_mode) + ", not a regular file");
    const unsigned mode = static_cast<unsigned>(st.st_mode) & 07777U;
    if ((mode & S_IWOTH) != 0)
        throw ConfigError(name + " is writable by every user (mode " + mode_text(mode) +
                          "); fix it: chmod o-w " + path);
    if (secrecy == FileSecrecy::kSecret && (mode & 077U) != 0)
        warn_operator(name + " holds a key and is accessible by group or others (mode " +
                      mode_text(mode) + "); restrict it to its owner: chmod 600 " + path);
    if (st.st_size < 0 || static_cast<std::uint64_t>(st.st_size) > max_bytes)
        throw ConfigError(name + " is " + std::to_string(st.st_size) + " bytes; at most " +
                          std::to_string(max_bytes) + " are accepted");
    CheckedFile out;
    out.mode = mode;
    out.content.resize(static_cast<std::size_t>(st.st_size));
    std::size_t got = 0;
    // Read to the end, but never past the bound (the file may grow while we read).
    for (;;) {
        if (got == out.content.size()) {
            if (out.content.size() >= max_bytes + 1) break;
            out.content.resize(std::min(max_bytes + 1, out.content.size() + 4096));
        }
        const ssize_t n = ::read(fd, out.content.data() + got, out.content.size() - got);
        if (n < 0) {
            if (errno == EINTR) continue;
            const int err = errno;
            if (secrecy == FileSecrecy::kSecret) wipe(out.content.data(), out.content.size());
            throw ConfigError("cannot read " + name + ": " + std::strerror(err));
        }
        if (n == 0) break;
        got += static_cast<std::size_t>(n);
    }
    if (got > max_bytes) {
        if (secrecy == FileSecrecy::kSecret) wipe(out.content.data(), out.content.size());
        throw ConfigError(name + " is larger than the " + std::to_string(max_bytes) +
                          " bytes accepted");
    }
    if (secrecy == FileSecrecy::kSecret && got < out.content.size())
        wipe(out.content.data() + got, out.content.size() - got);
    out.content.resize(got);
    return out;
}

CheckedFile read_checked_file(const std::string& path, std::string_view what, std::size_t max_bytes,
                              FileSecrecy secrecy) {
    auto f = read_file_if_exists(path, what, max_bytes, secrecy);
    if (!f)
        throw ConfigError("cannot open " + std::string(what) + " " + path + ": " +
                          std::strerror(ENOENT));
    return std::move(*f);
}

void init_logging(const std::string& name, const std::string& level, const std::string& format) {
    const LogFormat fmt = parse_log_format(format);
    auto logger = spdlog::stderr_color_mt(name);
    if (fmt == LogFormat::kJson)
        logger->set_formatter(json_log_formatter());
    else
        logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%-5l%$ [%n] %v");
    const auto lvl = spdlog::level::from_str(level);
    if (lvl == spdlog::level::off && level != "off")
        throw ConfigError("log level '" + level +
                          "' is not one of trace, debug, info, warn, error");
    logger->set_level(lvl);
    logger->flush_on(spdlog::level::trace);
    spdlog::set_default_logger(logger);
    logging_ready = true;
}

void check_log_settings(const Config& c) {
    const std::string level = c.str("log_level", "info");
    if (spdlog::level::from_str(level) == spdlog::level::off && level != "off")
        throw ConfigError(c.where("log_level") +
                          ": expected trace, debug, info, warn or error, got '" + level + "'");
    const std::string format = c.str("log_format", "human");
    if (format != "human" && format != "json")
        throw ConfigError(c.where("log_format") + ": expected human or json, got '" + format + "'");
}

LogSink core_log_sink() {
    // The core's messages quote what peers sent (an ErrorReport's detail, capability texts):
    // escaped here, once, so that no peer can end a log line or send terminal controls.
    return [](LogLevel level, const std::string& raw) {
        const std::string text = printable(raw, kMaxLogLine);
        switch (level) {
            case LogLevel::kDebug:
                spdlog::debug("{}", text);
                break;
            case LogLevel::kInfo:
                spdlog::info("{}", text);
                break;
            case LogLevel::kWarn:
                spdlog::warn("{}", text);
                break;
            case LogLevel::kError:
                spdlog::error("{}", text);
                break;
        }
    };
}

Millis mono_now() {
    static const auto start = std::chrono::steady_clock::now();
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                 start)
        .count();
}

Config Config::load(const std::string& path) {
    Config c;
    c.path_ = path;
    // Configuration and entities files may hold keys inline: treated as secret until parsed.
    CheckedFile file =
        read_checked_file(path, "configuration file", kMaxConfigFileBytes, FileSecrecy::kPlain);
    try {
        c.table_ = toml::parse(file.content, path);
    } catch (const toml::parse_error& e) {
        wipe(file.content.data(), file.content.size());
        std::ostringstream o;
        o << path << ":" << e.source().begin.line << ":" << e.source().begin.column << ": "
          << e.description();
        throw ConfigError(o.str());
    }
    wipe(file.content.data(), file.content.size());
    if ((file.mode & 077U) != 0 && holds_inline_secret(c.table_))
        warn_operator("configuration file " + path +
                      " holds a key and is accessible by group or others (mode " +
                      mode_text(file.mode) + "); restrict it to its owner: chmod 600 " + path);
    return c;
}

std::string Config::where(std::string_view key) const {
    std::string at = path_.empty() ? std::string("configuration") : path_;
    if (const auto node = table_.at_path(key); node && node.node()->source().begin)
        at += ":" + std::to_string(node.node()->source().begin.line) + ":" +
              std::to_string(node.node()->source().begin.column);
    return at + ": key '" + std::string(key) + "'";
}

namespace {

// What a node holds, for "expected ..., got ..." messages.
std::string got(const toml::node_view<const toml::node>& node) {
    switch (node.type()) {
        case toml::node_type::string:
            return "a string";
        case toml::node_type::integer:
            return "an integer";
        case toml::node_type::floating_point:
            return "a floating-point number";
        case toml::node_type::boolean:
            return "a boolean";
        case toml::node_type::table:
            return "a table";
        case toml::node_type::array:
            return "an array";
        default:
            return "a date or time";
    }
}

}  // namespace

std::string Config::str(std::string_view key, std::string def) const {
    auto node = table_.at_path(key);
    if (!node) return def;
    if (auto v = node.value_exact<std::string>()) return *v;
    throw ConfigError(where(key) + " must be a string, got " + got(node));
}

bool Config::boolean(std::string_view key, bool def) const {
    auto node = table_.at_path(key);
    if (!node) return def;
    if (auto v = node.value_exact<bool>()) return *v;
    throw ConfigError(where(key) + " must be true or false, got " + got(node));
}

std::int64_t Config::integer(std::string_view key, std::int64_t def) const {
    auto node = table_.at_path(key);
    if (!node) return def;
    // An integer node only: toml++'s own float-to-integer conversion casts before it checks the
    // range (undefined behaviour for 8.1e29; found by cpns-fuzz-config).
    if (const auto* v = node.as_integer()) return v->get();
    throw ConfigError(where(key) + " must be an integer, got " + got(node));
}

SecretKey parse_key(const std::string& hex, const std::string& what) {
    std::string trimmed;
    for (char c : hex)
        if (!std::isspace(static_cast<unsigned char>(c))) trimmed += c;
    auto k = SecretKey::from_hex(trimmed);
    wipe(trimmed.data(), trimmed.size());
    if (!k) throw ConfigError(what + " must be 64 hex digits (a 256-bit key)");
    return *k;
}

std::optional<SecretKey> Config::key(std::string_view key, std::string_view file_key) const {
    std::string inline_hex = str(key);
    const std::string file = str(file_key);
    if (!inline_hex.empty() && !file.empty())
        throw ConfigError(where(key) + " and '" + std::string(file_key) +
                          "' are both set; keep one");
    if (!inline_hex.empty()) {
        auto k = parse_key(inline_hex, where(key));
        wipe(inline_hex.data(), inline_hex.size());
        return k;
    }
    if (file.empty()) return std::nullopt;
    std::string content;
    try {
        content =
            read_checked_file(file, "key file", kMaxKeyFileBytes, FileSecrecy::kSecret).content;
    } catch (const ConfigError& e) {
        throw ConfigError(where(file_key) + ": " + e.what());
    }
    try {
        auto k = parse_key(content, "key file " + file);
        wipe(content.data(), content.size());
        return k;
    } catch (...) {
        wipe(content.data(), content.size());
        throw;
    }
}

DeviceOptions device_options_from(const Config& c) {
    DeviceOptions o;
    o.discovery_group = c.str("discovery_group", o.discovery_group);
    o.discovery_interface = c.str("discovery_interface", o.discovery_interface);
    o.trace_file = c.str("trace_file", o.trace_file);
    o.pan_tls = parse_tls_mode(c.str("pan_tls", "tls13"), c.where("pan_tls"));
    o.keylog = c.str("keylog");
    o.state_file = c.str("state_file");
    o.metrics = c.str("metrics");
    o.previous_eukey = c.key("previous_eukey", "previous_eukey_file");
    return o;
}

std::pair<std::string, SecretKey> device_identity(const Config& c) {
    std::string id = c.str("id");
    if (!valid_id(id)) throw ConfigError(c.where("id") + " must be a valid entity ID");
    auto key = device_key_credential(c);  // systemd's LoadCredential=device-key:...
    if (!key) key = c.key("eukey", "eukey_file");
    if (!key)
        throw ConfigError(c.where("eukey") + " (or 'eukey_file', or a 'device-key' credential) " +
                          "is required");
    return {std::move(id), *key};
}

net::HostPort parse_address(const std::string& text, const std::string& what) {
    auto hp = net::parse_host_port(text);
    if (!hp) throw ConfigError(what + " must be host:port, got '" + text + "'");
    return *hp;
}

tls::Mode parse_tls_mode(const std::string& text, const std::string& what) {
    if (text == "tls13" || text.empty()) return tls::Mode::kTls13;
    if (text == "tls12") return tls::Mode::kTls12Psk;
    throw ConfigError(what + " must be tls13 or tls12, got '" + text + "'");
}

namespace {

// A free-text setting that the PNE or PN GW sends in its join or inventory: longer than the
// codec's limit, its peer would drop the message as malformed, so it is refused here.
std::string text_setting(const toml::node_view<const toml::node>& node, const Config& c,
                         const std::string& key) {
    std::string v = node.value_or(std::string());
    if (v.size() > kMaxTextLength)
        throw ConfigError(c.where(key) + " is " + std::to_string(v.size()) +
                          " characters long; at most " + std::to_string(kMaxTextLength));
    return v;
}

void text_list(const toml::node_view<const toml::node>& node, const Config& c,
               const std::string& key, std::size_t max,
               google::protobuf::RepeatedPtrField<std::string>& out) {
    const auto* arr = node.as_array();
    if (!arr) return;
    if (arr->size() > max)
        throw ConfigError(c.where(key) + " has " + std::to_string(arr->size()) +
                          " entries; at most " + std::to_string(max));
    for (std::size_t i = 0; i < arr->size(); ++i)
        if (auto s = (*arr)[i].value<std::string>()) {
            if (s->size() > kMaxTextLength)
                throw ConfigError(c.where(key) + " entry " + std::to_string(i + 1) + " is " +
                                  std::to_string(s->size()) + " characters long; at most " +
                                  std::to_string(kMaxTextLength));
            out.Add(std::move(*s));
        }
}

}  // namespace

pb::DeviceCapabilities capabilities_from(const Config& c, bool enough_ui) {
    pb::DeviceCapabilities caps;
    caps.set_enough_ui(enough_ui);
    const toml::node_view<const toml::node> t = c.table()["capabilities"];
    if (t.as_table()) {
        caps.set_device_type(text_setting(t["device_type"], c, "capabilities.device_type"));
        caps.set_manufacturer(text_setting(t["manufacturer"], c, "capabilities.manufacturer"));
        caps.set_model(text_setting(t["model"], c, "capabilities.model"));
        text_list(t["pan_technologies"], c, "capabilities.pan_technologies", kMaxPanTechnologies,
                  *caps.mutable_pan_technologies());
        text_list(t["services"], c, "capabilities.services", kMaxServices,
                  *caps.mutable_services());
    }
    return caps;
}

std::vector<pb::ContentInfo> contents_from(const Config& c) {
    std::vector<pb::ContentInfo> out;
    const auto* arr = c.table()["content"].as_array();
    if (!arr) return out;
    if (arr->size() > kMaxContentsPerPne)
        throw ConfigError(c.where("content") + " has " + std::to_string(arr->size()) +
                          " entries; at most " + std::to_string(kMaxContentsPerPne));
    for (std::size_t i = 0; i < arr->size(); ++i) {
        const auto* t = (*arr)[i].as_table();
        if (!t) continue;
        const std::string key = "content[" + std::to_string(i) + "].";
        pb::ContentInfo ci;
        ci.set_content_id(text_setting((*t)["id"], c, key + "id"));
        ci.set_media_type(text_setting((*t)["media_type"], c, key + "media_type"));
        ci.set_title(text_setting((*t)["title"], c, key + "title"));
        std::int64_t size = 0;  // an integer node only (see Config::integer)
        if (const auto node = (*t)["size_bytes"]) {
            const auto* v = node.as_integer();
            if (!v || v->get() < 0)
                throw ConfigError(c.where(key + "size_bytes") + " must be a non-negative integer");
            size = v->get();
        }
        ci.set_size_bytes(static_cast<std::uint64_t>(size));
        out.push_back(std::move(ci));
    }
    return out;
}

std::string keylog_path(const std::string& configured) {
    if (!configured.empty()) return configured;
    if (const char* env = std::getenv("SSLKEYLOGFILE"); env && *env) return env;
    return "";
}

std::size_t connection_limit(const Config& c, std::string_view key, std::size_t def,
                             std::size_t max) {
    const std::int64_t v = c.integer(key, static_cast<std::int64_t>(def));
    if (v < 1 || static_cast<std::uint64_t>(v) > max)
        throw ConfigError(c.where(key) + " must be 1.." + std::to_string(max));
    return static_cast<std::size_t>(v);
}

Millis neighbour_ttl_from(const Config& c) {
    const std::int64_t v = c.integer("neighbour_ttl_ms", kNeighbourTtl);
    if (v < kMinNeighbourTtl || v > kMaxNeighbourTtl)
        throw ConfigError(c.where("neighbour_ttl_ms") + " must be " +
                          std::to_string(kMinNeighbourTtl) + ".." +
                          std::to_string(kMaxNeighbourTtl) + " (milliseconds)");
    return v;
}

std::uint16_t listen_on(net::Listener& listener, const net::HostPort& at, std::string_view what) {
    if (auto error = listener.listen(at, what)) throw ConfigError(error->detail);
    return listener.port();
}

void write_ready_file(const std::string& path, const std::string& address) {
    if (path.empty()) return;
    const std::string tmp = path + ".tmp";
    std::remove(tmp.c_str());  // whatever is there (a FIFO would block the write below)
    {
        std::ofstream out(tmp, std::ios::trunc);
        out << address << "\n";
        if (!out) throw ConfigError("cannot write ready file " + path);
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
        throw ConfigError("cannot write ready file " + path);
}

void run_until_stopped(asio::io_context& io, const std::function<void()>& stop,
                       const std::function<void()>& reload) {
    asio::signal_set signals(io, SIGINT, SIGTERM);
    signals.async_wait([&](const std::error_code& ec, int sig) {
        if (ec) return;
        spdlog::info("signal {}: stopping", sig);
        io.stop();
    });
    asio::signal_set hangup(io, SIGHUP);
    std::function<void(const std::error_code&, int)> on_hangup = [&](const std::error_code& ec,
                                                                     int) {
        if (ec) return;
        if (reload)
            reload();
        else
            spdlog::warn("SIGHUP: this program has no configuration to reload");
        hangup.async_wait(on_hangup);
    };
    hangup.async_wait(on_hangup);
    io.run();
    std::error_code ec;
    signals.cancel(ec);
    hangup.cancel(ec);
    stop();
    // Closed sockets and cancelled timers complete their operations with an error: run those
    // handlers so that every coroutine leaves before the objects it uses are destroyed.
    io.restart();
    io.run_for(std::chrono::milliseconds(kShutdownDrain));
}

void reload_config(Config& running, bool log_level_overridden,
                   const std::vector<std::string_view>& live,
                   const std::function<std::function<void()>(const Config&)>& prepare) {
    const std::string path = running.path();
    if (path.empty()) {
        spdlog::warn("SIGHUP: started without --config, nothing to reload");
        return;
    }
    spdlog::info("SIGHUP: reloading {}", path);
    try {
        Config fresh = Config::load(path);
        check_log_settings(fresh);
        const std::function<void()> apply = prepare(fresh);
        ReloadReport report = classify_reload(running, fresh, live);
        if (log_level_overridden) {
            if (std::erase(report.applied, "log_level") > 0)
                spdlog::warn(
                    "reload of {}: 'log_level' changed but --log-level on the command "
                    "line overrides it",
                    path);
        } else {
            set_log_level(fresh.str("log_level", "info"));
        }
        if (apply) apply();
        log_reload(report, path);
        running = std::move(fresh);
    } catch (const std::exception& e) {
        spdlog::error("reload of {} failed, nothing changed: {}", path, e.what());
    }
}

void set_log_level(const std::string& level) {
    spdlog::default_logger()->set_level(spdlog::level::from_str(level));
}

namespace {

bool same(const toml::node& x, const toml::node& y) {
    if (x.type() != y.type()) return false;
    return x.visit([&](const auto& xv) {
        using T = std::remove_cvref_t<decltype(xv)>;
        return xv == *static_cast<const T*>(&y);
    });
}

void changed_keys(const toml::table& a, const toml::table& b, const std::string& prefix,
                  std::vector<std::string>& out) {
    std::set<std::string> keys;
    for (const auto& [k, v] : a) keys.insert(std::string(k.str()));
    for (const auto& [k, v] : b) keys.insert(std::string(k.str()));
    for (const auto& k : keys) {
        const toml::node* x = a.get(k);
        const toml::node* y = b.get(k);
        if (x && y && x->is_table() && y->is_table()) {
            changed_keys(*x->as_table(), *y->as_table(), prefix + k + ".", out);
            continue;
        }
        if (!x || !y || !same(*x, *y)) out.push_back(prefix + k);
    }
}

}  // namespace

ReloadReport classify_reload(const Config& running, const Config& fresh,
                             const std::vector<std::string_view>& live) {
    std::vector<std::string> changed;
    changed_keys(running.table(), fresh.table(), "", changed);
    ReloadReport r;
    for (auto& k : changed)
        (std::find(live.begin(), live.end(), k) != live.end() ? r.applied : r.restart)
            .push_back(std::move(k));
    return r;
}

void log_reload(const ReloadReport& report, const std::string& path) {
    if (report.applied.empty() && report.restart.empty())
        spdlog::info("reload of {}: no change", path);
    for (const auto& k : report.applied) spdlog::info("reload of {}: '{}' applied", path, k);
    for (const auto& k : report.restart)
        spdlog::warn("reload of {}: '{}' changed but needs a restart (the running value is kept)",
                     path, k);
}

RoleTimer::RoleTimer(asio::any_io_executor ex, std::function<void(Millis)> fire)
    : timer_(ex), fire_(std::move(fire)) {}

void RoleTimer::arm(Millis deadline) {
    if (deadline == armed_) return;
    armed_ = deadline;
    timer_.cancel();
    if (deadline == kNever) return;
    const Millis wait = std::max<Millis>(0, deadline - mono_now());
    timer_.expires_after(std::chrono::milliseconds(wait));
    timer_.async_wait([this, deadline](const std::error_code& ec) {
        if (ec || armed_ != deadline) return;
        armed_ = kNever;
        fire_(mono_now());
    });
}

void RoleTimer::cancel() {
    armed_ = kNever;
    timer_.cancel();
}

std::string message_json(const google::protobuf::Message& m) {
    std::string out;
    google::protobuf::util::JsonPrintOptions opt;
    opt.preserve_proto_field_names = true;
    (void)google::protobuf::util::MessageToJsonString(m, &out, opt);
    return out;
}

bool parse_json(const std::string& json, google::protobuf::Message& m) {
    google::protobuf::util::JsonParseOptions opt;
    opt.ignore_unknown_fields = true;
    return google::protobuf::util::JsonStringToMessage(json, &m, opt).ok();
}

pb::OutcomeReport to_report(const std::string& entity_id, const OutcomeEffect& o) {
    pb::OutcomeReport r;
    r.set_entity_id(entity_id);
    r.set_pn_id(o.pn_id);
    r.set_success(o.success);
    r.set_reason(o.reason);
    r.set_reason_text(std::string(reason_name(o.reason)));
    r.set_detail(o.detail);
    r.set_operation(o.operation);
    for (const auto& p : o.pnes) {
        auto* x = r.add_pnes();
        x->set_pne_id(p.pne_id);
        x->set_joined(p.joined);
        x->set_reason(p.reason);
        x->set_reason_text(std::string(reason_name(p.reason)));
    }
    if (o.success) *r.mutable_inventory() = o.inventory;
    return r;
}

std::string outcome_json(const std::string& entity_id, const OutcomeEffect& o) {
    return message_json(to_report(entity_id, o));
}

std::string error_json(const std::string& text) {
    google::protobuf::Struct answer;
    (*answer.mutable_fields())["error"].set_string_value(text);
    return message_json(answer);
}

std::string report_text(const pb::OutcomeReport& r) {
    std::ostringstream s;
    if (r.operation() == "add") {
        // "add PN pn-1: done, revision 1, 3 member(s)", then the PNEs that did not join.
        s << "add PN " << r.pn_id();
        if (r.success())
            s << ": done, revision " << r.inventory().revision() << ", "
              << r.inventory().members_size() << " member(s)\n";
        else
            s << ": failed: " << r.reason_text()
              << (r.detail().empty() ? "" : " (" + r.detail() + ")") << "\n";
        for (const auto& p : r.pnes())
            if (!p.joined()) s << "  not joined: " << p.pne_id() << ": " << p.reason_text() << "\n";
        return s.str();
    }
    if (!r.operation().empty()) {
        // A lifecycle change: "leave PN pn-1: done" / "remove PN pn-1 (pne-a): failed: ...".
        s << r.operation() << " PN " << r.pn_id();
        for (const auto& p : r.pnes()) s << " (" << p.pne_id() << ")";
        if (r.success()) {
            s << ": done";
            if (r.detail() == "dissolved" || r.operation() == "dissolve")
                s << ", the PN is dissolved";
            else if (r.operation() == "rekey")
                s << ", new LocalEUKey in force, revision " << r.inventory().revision();
            else if (!r.inventory().pn_id().empty())
                s << ", revision " << r.inventory().revision() << ", "
                  << r.inventory().members_size() << " member(s) left";
        } else {
            s << ": failed: " << r.reason_text();
            if (!r.detail().empty()) s << " (" << r.detail() << ")";
        }
        s << "\n";
        return s.str();
    }
    if (r.success()) {
        s << "PN " << r.pn_id() << " established";
        if (!r.inventory().gw_id().empty()) s << " through PN GW " << r.inventory().gw_id();
        s << "\nPN Inventory (" << r.inventory().members_size() << " member"
          << (r.inventory().members_size() == 1 ? "" : "s") << "):\n";
        for (const auto& m : r.inventory().members()) {
            s << "  - " << m.pne_id();
            if (!m.capabilities().device_type().empty())
                s << "  " << m.capabilities().device_type();
            s << (m.local_eukey_assigned() ? "  LocalEUKey assigned" : "  pre-assigned key")
              << "\n";
        }
    } else {
        s << "PN " << (r.pn_id().empty() ? std::string("establishment") : r.pn_id())
          << " failed: " << r.reason_text();
        if (!r.detail().empty()) s << " (" << r.detail() << ")";
        s << "\n";
    }
    bool header = false;
    for (const auto& p : r.pnes()) {
        if (p.joined()) continue;
        if (!header) s << "Not joined:\n";
        header = true;
        s << "  - " << p.pne_id() << ": " << p.reason_text() << "\n";
    }
    return s.str();
}

ControlAddress parse_control_address(const std::string& text, const std::string& what) {
    ControlAddress a;
    if (text.rfind("unix:", 0) == 0 || (!text.empty() && text.front() == '/')) {
        a.unix_path = text.front() == '/' ? text : text.substr(5);
        if (a.unix_path.empty() || a.unix_path.front() != '/')
            throw ConfigError(what + ": expected unix:/ABSOLUTE/PATH or HOST:PORT, got '" + text +
                              "'");
        return a;
    }
    auto hp = net::parse_host_port(text);
    if (!hp)
        throw ConfigError(what + ": expected unix:/ABSOLUTE/PATH or HOST:PORT, got '" + text + "'");
    a.tcp = *hp;
    return a;
}

std::string default_control_path(const std::string& daemon) {
    if (const char* rt = std::getenv("RUNTIME_DIRECTORY"); rt && *rt) {
        // systemd sets a colon-separated list when several directories are configured.
        std::string dir = rt;
        dir = dir.substr(0, dir.find(':'));
        return dir + "/control.sock";
    }
    if (::geteuid() == 0) return "/run/" + daemon + "/control.sock";
    if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg && *xdg)
        return std::string(xdg) + "/" + daemon + "/control.sock";
    throw ConfigError(
        "no default place for the control socket ($RUNTIME_DIRECTORY and "
        "$XDG_RUNTIME_DIR are not set, and this is not root): set 'control' (e.g. "
        "control = \"unix:/some/dir/control.sock\") or give --control");
}

ControlAddress control_address_from(const Config& c, const std::string& daemon,
                                    const std::string& override) {
    if (!override.empty()) return parse_control_address(override, "--control");
    const std::string control = c.str("control");
    const std::string legacy = c.str("control_listen");
    if (!control.empty() && !legacy.empty())
        throw ConfigError(c.where("control_listen") +
                          ": deprecated alias of 'control', which is set too; keep 'control'");
    if (!control.empty()) return parse_control_address(control, c.where("control"));
    if (!legacy.empty()) {
        warn_operator(c.where("control_listen") + " is deprecated: write control = \"" + legacy +
                      "\" (a TCP control endpoint, which needs control_token_file)");
        return parse_control_address(legacy, c.where("control_listen"));
    }
    ControlAddress a;
    a.unix_path = default_control_path(daemon);
    return a;
}

SecretKey read_control_token(const std::string& path, const std::string& what) {
    CheckedFile f = read_checked_file(path, what, kMaxKeyFileBytes, FileSecrecy::kSecret);
    if ((f.mode & 077U) != 0) {
        wipe(f.content.data(), f.content.size());
        throw ConfigError(what + " " + path + " is accessible by group or others (mode " +
                          mode_text(f.mode) + "); it must be its owner's only: chmod 600 " + path);
    }
    try {
        auto k = parse_key(f.content, what + " " + path);
        wipe(f.content.data(), f.content.size());
        return k;
    } catch (...) {
        wipe(f.content.data(), f.content.size());
        throw;
    }
}

std::optional<std::string> strip_control_token(std::string& line, const SecretKey& token) {
    constexpr std::string_view kPrefix = "token ";
    std::optional<std::string> out;
    if (line.rfind(kPrefix, 0) == 0) {
        const std::size_t end = line.find(' ', kPrefix.size());
        std::string hex = line.substr(
            kPrefix.size(), end == std::string::npos ? std::string::npos : end - kPrefix.size());
        const auto given = SecretKey::from_hex(hex);
        wipe(hex.data(), hex.size());
        if (given && *given == token)
            out = end == std::string::npos ? std::string() : line.substr(end + 1);
    }
    wipe(line.data(), line.size());
    return out;
}

std::string unauthorized_json() {
    google::protobuf::Struct answer;
    (*answer.mutable_fields())["error"].set_string_value("UNAUTHORIZED");
    (*answer.mutable_fields())["detail"].set_string_value(
        "a TCP control request must start with 'token HEX' (the control_token_file's token)");
    return message_json(answer);
}

void RefusalLog::refused(const std::string& source) {
    ++total_;
    ++held_;
    const Millis now = mono_now();
    if (now - last_ < kControlRefusalLogInterval) return;
    last_ = now;
    spdlog::warn("control: refused {} request(s) without the right token (last from {}; {} in all)",
                 std::exchange(held_, 0), source, total_);
}

namespace {

template <typename Socket>
std::string exchange_line(Socket& s, const std::string& line, const std::string& daemon,
                          int timeout_s) {
    timeval tv{timeout_s, 0};
    ::setsockopt(s.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    asio::write(s, asio::buffer(line + "\n"));
    std::string answer;
    std::error_code ec;
    asio::read_until(s, asio::dynamic_buffer(answer, 1 << 20), '\n', ec);
    if (ec && answer.empty())
        throw std::runtime_error("no answer from " + daemon + ": " + ec.message());
    while (!answer.empty() && (answer.back() == '\n' || answer.back() == '\r')) answer.pop_back();
    return answer;
}

}  // namespace

std::string control_request(const ControlAddress& at, const std::string& line,
                            const std::string& daemon, int timeout_s,
                            const std::string& token_file) {
    asio::io_context io;
    if (at.is_unix()) {
        asio::local::stream_protocol::socket s(io);
        std::error_code ec;
        s.connect(asio::local::stream_protocol::endpoint(at.unix_path), ec);
        if (ec)
            throw std::runtime_error("cannot connect to the control socket of " + daemon + " at " +
                                     at.unix_path + ": " + ec.message() +
                                     (ec == std::errc::permission_denied
                                          ? " (only its owner and group may use it)"
                                          : ""));
        return exchange_line(s, line, daemon, timeout_s);
    }
    if (at.tcp.port == 0)
        throw std::runtime_error("no control port (" + daemon +
                                 " listens on port 0: use --control)");
    if (token_file.empty())
        throw ConfigError("a TCP control endpoint needs its token: give --token-file FILE");
    const SecretKey token = read_control_token(token_file, "--token-file");
    std::string request = "token " + to_hex(token.view()) + " " + line;
    asio::ip::tcp::socket s(io);
    asio::ip::tcp::resolver resolver(io);
    asio::connect(s, resolver.resolve(at.tcp.host, std::to_string(at.tcp.port)));
    try {
        std::string answer = exchange_line(s, request, daemon, timeout_s);
        wipe(request.data(), request.size());
        return answer;
    } catch (...) {
        wipe(request.data(), request.size());
        throw;
    }
}

std::optional<std::string> control_error(const std::string& answer) {
    google::protobuf::Struct s;
    if (!parse_json(answer, s)) return std::nullopt;
    const auto& f = s.fields();
    const auto e = f.find("error");
    if (e == f.end() || !e->second.has_string_value()) return std::nullopt;
    std::string text = e->second.string_value();
    if (const auto d = f.find("detail"); d != f.end() && d->second.has_string_value())
        text += ": " + d->second.string_value();
    return text;
}

}  // namespace cpns::daemon
