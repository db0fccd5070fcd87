#include "daemon/log_json.hpp"

#include <cctype>
#include <chrono>
#include <cstdio>
#include <ctime>

#include "cpns/messages.pb.h"
#include "daemon/common.hpp"

namespace cpns::daemon {

namespace {
thread_local LogScope::Fields fields;

// The length of the valid UTF-8 sequence at s[i] (0: not one).
std::size_t utf8_length(std::string_view s, std::size_t i) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;
    unsigned min = 0;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        min = 0x10000;
    } else {
        return 0;
    }
    if (i + n > s.size()) return 0;
    unsigned cp = c & (0x7F >> n);
    for (std::size_t k = 1; k < n; ++k) {
        const auto b = static_cast<unsigned char>(s[i + k]);
        if ((b & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (b & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return n;
}

bool hex_char(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

// The first PN ID ("pn-" and 12 lower-case hex digits) in `text`, or "".
std::string pn_in(std::string_view text) {
    for (std::size_t at = text.find("pn-"); at != std::string_view::npos;
         at = text.find("pn-", at + 1)) {
        std::size_t end = at + 3;
        while (end < text.size() && hex_char(text[end])) ++end;
        const bool starts_word =
            at == 0 || !(std::isalnum(static_cast<unsigned char>(text[at - 1])) != 0);
        if (starts_word && end - at == 15) return std::string(text.substr(at, 15));
    }
    return {};
}

// The first schema failure reason named in `text` (other than REASON_NONE), or "".
std::string reason_in(std::string_view text) {
    std::size_t i = 0;
    while (i < text.size()) {
        if (!(std::isupper(static_cast<unsigned char>(text[i])) != 0)) {
            ++i;
            continue;
        }
        std::size_t end = i;
        while (end < text.size() &&
               (std::isupper(static_cast<unsigned char>(text[end])) != 0 || text[end] == '_'))
            ++end;
        pb::FailureReason r{};
        const std::string word(text.substr(i, end - i));
        if (word.size() > 3 && pb::FailureReason_Parse(word, &r) && r != pb::REASON_NONE)
            return word;
        i = end;
    }
    return {};
}

const char* level_name(spdlog::level::level_enum l) {
    switch (l) {
        case spdlog::level::trace:
            return "trace";
        case spdlog::level::debug:
            return "debug";
        case spdlog::level::info:
            return "info";
        case spdlog::level::warn:
            return "warn";
        case spdlog::level::err:
            return "error";
        case spdlog::level::critical:
            return "critical";
        default:
            break;
    }
    return "off";
}

class JsonFormatter final : public spdlog::formatter {
  public:
    void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
        const std::string_view text(msg.payload.data(), msg.payload.size());
        const auto& f = LogScope::current();
        const auto t = std::chrono::system_clock::to_time_t(msg.time);
        const auto ms =
            std::chrono::duration_cast<std::chrono::milliseconds>(msg.time.time_since_epoch())
                .count() %
            1000;
        std::tm tm{};
        gmtime_r(&t, &tm);
        char when[96];
        std::snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                      tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                      static_cast<int>(ms));
        std::string line = "{\"time\":\"";
        line += when;
        line += "\",\"level\":\"";
        line += level_name(msg.level);
        line += "\",\"daemon\":\"";
        line += json_escape(std::string_view(msg.logger_name.data(), msg.logger_name.size()));
        line += "\",\"event\":\"" + json_escape(f.event.empty() ? "log" : f.event);
        line += "\",\"pn\":\"" + json_escape(f.pn.empty() ? pn_in(text) : f.pn);
        line += "\",\"peer\":\"" + json_escape(f.peer);
        line += "\",\"reason\":\"" + json_escape(f.reason.empty() ? reason_in(text) : f.reason);
        line += "\",\"msg\":\"" + json_escape(text) + "\"}\n";
        dest.append(line.data(), line.data() + line.size());
    }
    std::unique_ptr<spdlog::formatter> clone() const override {
        return std::make_unique<JsonFormatter>();
    }
};

}  // namespace

LogFormat parse_log_format(const std::string& text) {
    if (text.empty() || text == "human") return LogFormat::kHuman;
    if (text == "json") return LogFormat::kJson;
    throw ConfigError("log format '" + text + "' is not one of human, json");
}

LogScope::LogScope(std::string_view event, std::string_view pn, std::string_view peer,
                   std::string_view reason)
    : saved_(fields) {
    if (!event.empty()) fields.event = event;
    if (!pn.empty()) fields.pn = pn;
    if (!peer.empty()) fields.peer = peer;
    if (!reason.empty()) fields.reason = reason;
}

LogScope::~LogScope() {
    fields = std::move(saved_);
}

const LogScope::Fields& LogScope::current() {
    return fields;
}

std::string json_escape(std::string_view s) {
    std::string out;
    out.reserve(s.size() + 8);
    for (std::size_t i = 0; i < s.size();) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += static_cast<char>(c);
        } else if (c == '\n') {
            out += "\\n";
        } else if (c == '\t') {
            out += "\\t";
        } else if (c == '\r') {
            out += "\\r";
        } else if (c < 0x20 || c == 0x7F) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            out += buf;
        } else if (c >= 0x80) {
            if (const std::size_t n = utf8_length(s, i)) {
                out.append(s.substr(i, n));
                i += n;
                continue;
            }
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            out += buf;
        } else {
            out += static_cast<char>(c);
        }
        ++i;
    }
    return out;
}

std::unique_ptr<spdlog::formatter> json_log_formatter() {
    return std::make_unique<JsonFormatter>();
}

}  // namespace cpns::daemon
