#include "daemon/trace.hpp"

#include <fcntl.h>
#include <google/protobuf/util/json_util.h>
#include <unistd.h>

#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstring>

#include "daemon/common.hpp"

namespace cpns::daemon {

namespace {

std::uint64_t system_ms() {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                          std::chrono::system_clock::now().time_since_epoch())
                                          .count());
}

// Length of the valid UTF-8 sequence starting at s[i], or 0 if there is none.
std::size_t utf8_sequence(std::string_view s, std::size_t i) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // bounds of the second byte
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;  // no overlong forms
        if (c == 0xED) hi = 0x9F;  // no UTF-16 surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
    } else {
        return 0;
    }
    if (i + n > s.size()) return 0;
    for (std::size_t k = 1; k < n; ++k) {
        const auto b = static_cast<unsigned char>(s[i + k]);
        if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) return 0;
    }
    return n;
}

// `s` with every byte that does not start a valid UTF-8 sequence replaced by '?', cut to at
// most `max` bytes on a character boundary ("..." marks a cut).
std::string clean_text(std::string_view s, std::size_t max) {
    std::string out;
    out.reserve(std::min(s.size(), max));
    const bool cut = s.size() > max;
    const std::size_t budget = cut ? (max >= 3 ? max - 3 : 0) : max;
    for (std::size_t i = 0; i < s.size();) {
        const std::size_t n = utf8_sequence(s, i);
        const std::size_t take = n == 0 ? 1 : n;
        if (out.size() + take > budget) break;
        if (n == 0)
            out.push_back('?');
        else
            out.append(s.substr(i, n));
        i += take;
    }
    if (cut && max >= 3) out += "...";
    return out;
}

// The text fields of a TraceEvent, so that they can be cleaned and cut alike.
using Field = std::string* (*)(pb::TraceEvent&);
constexpr std::array<Field, 11> kTextFields = {
    [](pb::TraceEvent& e) { return e.mutable_entity(); },
    [](pb::TraceEvent& e) { return e.mutable_role(); },
    [](pb::TraceEvent& e) { return e.mutable_event(); },
    [](pb::TraceEvent& e) { return e.mutable_pn_id(); },
    [](pb::TraceEvent& e) { return e.mutable_subject(); },
    [](pb::TraceEvent& e) { return e.mutable_from_state(); },
    [](pb::TraceEvent& e) { return e.mutable_to_state(); },
    [](pb::TraceEvent& e) { return e.mutable_reason(); },
    [](pb::TraceEvent& e) { return e.mutable_message(); },
    [](pb::TraceEvent& e) { return e.mutable_peer(); },
    [](pb::TraceEvent& e) { return e.mutable_detail(); },
};

std::string print_json(const pb::TraceEvent& ev) {
    std::string out;
    google::protobuf::util::JsonPrintOptions opt;
    opt.preserve_proto_field_names = true;
    opt.always_print_primitive_fields = true;  // consumers see "subject": "" as well
    if (!google::protobuf::util::MessageToJsonString(ev, &out, opt).ok()) return {};
    return out;
}

}  // namespace

TraceWriter::TraceWriter(const std::string& path, WallClock wall_clock) {
    open(path, std::move(wall_clock));
}

TraceWriter::~TraceWriter() {
    close();
}

void TraceWriter::open(const std::string& path, WallClock wall_clock) {
    const std::lock_guard lock(mu_);
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    path_ = path;
    wall_clock_ = wall_clock ? std::move(wall_clock) : WallClock(system_ms);
    if (path.empty()) return;
    // O_NONBLOCK: a FIFO without a reader is an error now, not a daemon hanging at start;
    // the flag is cleared once open, so that each line is still written whole.
    const int fd = ::open(path.c_str(),
                          O_WRONLY | O_CREAT | O_APPEND | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0600);
    if (fd < 0)
        throw ConfigError("cannot open trace file " + path + ": " + std::strerror(errno) +
                          (errno == ENXIO ? " (a FIFO that no process reads)" : ""));
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
        const int err = errno;
        ::close(fd);
        throw ConfigError("cannot open trace file " + path + ": " + std::strerror(err));
    }
    fd_ = fd;
}

void TraceWriter::close() {
    const std::lock_guard lock(mu_);
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
}

std::string TraceWriter::to_line(const pb::TraceEvent& ev) {
    pb::TraceEvent e = ev;
    // Protobuf refuses to print a string field that is not UTF-8: repair them first.
    std::size_t longest = 0;
    for (const Field f : kTextFields) {
        std::string* s = f(e);
        *s = clean_text(*s, s->size());
        longest = std::max(longest, s->size());
    }
    std::string line = print_json(e);
    // Too long: cut every text field to a cap that halves until the line fits. Escaping can
    // make a field up to six times longer in JSON, so the cap never needs to go below a few
    // bytes; at cap 0 every field is empty and the line is short.
    for (std::size_t cap = longest / 2; line.size() >= kMaxTraceLine; cap /= 2) {
        for (const Field f : kTextFields) {
            std::string* s = f(e);
            if (s->size() > cap) *s = clean_text(*s, cap);
        }
        line = print_json(e);
        if (cap == 0) break;
    }
    return line;
}

void TraceWriter::write(pb::TraceEvent ev) {
    const std::lock_guard lock(mu_);
    if (fd_ < 0) return;
    if (ev.time_ms() == 0) ev.set_time_ms(wall_clock_());
    std::string line = to_line(ev);
    if (line.empty()) {
        ++dropped_;
        return;
    }
    line.push_back('\n');
    std::size_t done = 0;
    while (done < line.size()) {
        const ssize_t n = ::write(fd_, line.data() + done, line.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            ++dropped_;
            return;
        }
        done += static_cast<std::size_t>(n);
    }
    ++written_;
}

std::uint64_t TraceWriter::written() const {
    const std::lock_guard lock(mu_);
    return written_;
}

std::uint64_t TraceWriter::dropped() const {
    const std::lock_guard lock(mu_);
    return dropped_;
}

pb::TraceEvent trace_transition(std::string_view entity, std::string_view role,
                                std::string_view pn_id, std::string_view subject,
                                std::string_view from_state, std::string_view to_state,
                                std::string_view reason) {
    pb::TraceEvent ev;
    ev.set_entity(std::string(entity));
    ev.set_role(std::string(role));
    ev.set_event("transition");
    ev.set_pn_id(std::string(pn_id));
    ev.set_subject(std::string(subject));
    ev.set_from_state(std::string(from_state));
    ev.set_to_state(std::string(to_state));
    ev.set_reason(std::string(reason));
    return ev;
}

pb::TraceEvent trace_message(std::string_view entity, std::string_view role, std::string_view event,
                             std::string_view pn_id, std::string_view message,
                             std::string_view peer, std::string_view detail) {
    pb::TraceEvent ev;
    ev.set_entity(std::string(entity));
    ev.set_role(std::string(role));
    ev.set_event(std::string(event));
    ev.set_pn_id(std::string(pn_id));
    ev.set_message(std::string(message));
    ev.set_peer(std::string(peer));
    ev.set_detail(std::string(detail));
    return ev;
}

std::string pn_id_of(const pb::Envelope& env) {
    const auto* oneof = pb::Envelope::descriptor()->FindOneofByName("body");
    const auto* field = env.GetReflection()->GetOneofFieldDescriptor(env, oneof);
    if (!field || field->type() != google::protobuf::FieldDescriptor::TYPE_MESSAGE) return "";
    const auto& body = env.GetReflection()->GetMessage(env, field);
    const auto* d = body.GetDescriptor();
    if (const auto* pn = d->FindFieldByName("pn_id"))
        return body.GetReflection()->GetString(body, pn);
    if (const auto* result = d->FindFieldByName("result")) {
        const auto& r = body.GetReflection()->GetMessage(body, result);
        if (const auto* pn = r.GetDescriptor()->FindFieldByName("pn_id"))
            return r.GetReflection()->GetString(r, pn);
    }
    return "";
}

std::optional<CrashPoint> parse_crash_point(std::string_view spec) {
    if (spec.empty()) return std::nullopt;
    const auto bad = [&](std::string_view why) {
        return ConfigError("--crash-at '" + std::string(spec) + "': " + std::string(why) +
                           " (expected before-send:MESSAGE[:N], send:MESSAGE[:N] or "
                           "recv:MESSAGE[:N])");
    };
    const auto colon = spec.find(':');
    if (colon == std::string_view::npos) throw bad("no message");
    CrashPoint p;
    const std::string_view when = spec.substr(0, colon);
    if (when == "before-send")
        p.when = CrashPoint::When::kBeforeSend;
    else if (when == "send")
        p.when = CrashPoint::When::kAfterSend;
    else if (when == "recv")
        p.when = CrashPoint::When::kAfterRecv;
    else
        throw bad("unknown event '" + std::string(when) + "'");
    std::string_view rest = spec.substr(colon + 1);
    if (const auto c2 = rest.find(':'); c2 != std::string_view::npos) {
        const std::string_view n = rest.substr(c2 + 1);
        const auto [end, ec] = std::from_chars(n.data(), n.data() + n.size(), p.nth);
        if (ec != std::errc{} || end != n.data() + n.size() || p.nth == 0)
            throw bad("N must be a whole number from 1");
        rest = rest.substr(0, c2);
    }
    if (rest.empty()) throw bad("no message");
    for (const char c : rest)
        if (!std::isalnum(static_cast<unsigned char>(c))) throw bad("not a message name");
    p.message = std::string(rest);
    return p;
}

RoleTrace::RoleTrace(std::string entity, std::string role, const std::string& path,
                     std::string_view crash_at)
    : entity_(std::move(entity)),
      role_(std::move(role)),
      writer_(path),
      crash_(parse_crash_point(crash_at)) {
    if (crash_)
        spdlog::warn("crash point armed (--crash-at {}): this process will kill itself there",
                     crash_at);
}

bool RoleTrace::hit(CrashPoint::When when, const pb::Envelope& env) {
    if (!crash_ || crash_->when != when || message_name(env) != crash_->message) return false;
    return ++crash_hits_ == crash_->nth;
}

void RoleTrace::crash(std::string_view why) const {
    spdlog::critical("crash point {}:{}:{} reached ({}): SIGKILL",
                     crash_->when == CrashPoint::When::kBeforeSend  ? "before-send"
                     : crash_->when == CrashPoint::When::kAfterSend ? "send"
                                                                    : "recv",
                     crash_->message, crash_->nth, why);
    spdlog::default_logger()->flush();
    std::raise(SIGKILL);
    std::abort();  // not reached
}

void RoleTrace::sent(const pb::Envelope& env, const std::shared_ptr<net::Connection>& conn,
                     const asio::any_io_executor& ex) {
    if (!hit(CrashPoint::When::kAfterSend, env)) return;
    crash_pending_ = true;
    asio::co_spawn(
        ex,
        [this, conn, ex]() -> asio::awaitable<void> {
            asio::steady_timer t(ex);
            const auto limit =
                std::chrono::steady_clock::now() + std::chrono::milliseconds(kCrashFlushLimit);
            while (conn->is_open() && conn->sending() && std::chrono::steady_clock::now() < limit) {
                t.expires_after(std::chrono::milliseconds(kCrashFlushPoll));
                std::error_code ec;
                co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
            }
            crash(conn->sending() ? "not all written" : "written to the socket");
        },
        asio::detached);
}

void RoleTrace::handled(const pb::Envelope& env) {
    if (hit(CrashPoint::When::kAfterRecv, env)) crash("handled");
}

void RoleTrace::transition(const TransitionEffect& t) {
    if (!enabled()) return;
    writer_.write(trace_transition(entity_, role_, t.pn_id, t.subject, t.from, t.to, t.reason));
}

void RoleTrace::message(std::string_view event, const pb::Envelope& env, std::string_view peer,
                        Protection protection) {
    if (event == "recv" && crash_pending_) crash("a message arrived before the send was written");
    if (event == "send" && hit(CrashPoint::When::kBeforeSend, env)) crash("not sent");
    if (!enabled()) return;
    writer_.write(trace_message(entity_, role_, event, pn_id_of(env), message_name(env), peer,
                                protection == Protection::kTls ? "tls" : "clear"));
}

void RoleTrace::outcome(const OutcomeEffect& o) {
    if (!enabled()) return;
    pb::TraceEvent ev;
    ev.set_entity(entity_);
    ev.set_role(role_);
    ev.set_event("outcome");
    ev.set_pn_id(o.pn_id);
    ev.set_reason(o.success ? "success" : std::string(reason_name(o.reason)));
    ev.set_detail(o.detail);
    writer_.write(std::move(ev));
}

}  // namespace cpns::daemon
