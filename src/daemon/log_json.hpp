// Structured logs: `--log-format json` writes one JSON object per line instead of the human
// format: {"time","level","daemon","event","pn","peer","reason","msg"}. The fields event, pn,
// peer and reason come from the LogScope around the code that logs (a message being handled,
// an outcome, a refused link); without one, pn and reason are taken from the text when it
// names a PN ID or a failure reason of the schema, and event is "log".
#pragma once

#include <spdlog/formatter.h>
#include <spdlog/spdlog.h>

#include <memory>
#include <string>
#include <string_view>

namespace cpns::daemon {

enum class LogFormat { kHuman, kJson };
// "human" or "json"; ConfigError otherwise.
LogFormat parse_log_format(const std::string& text);

// The fields a log line carries besides its text, for the lines logged while it lives (on
// this thread). Scopes nest; an empty field of an inner scope keeps the outer one's.
class LogScope {
  public:
    LogScope(std::string_view event, std::string_view pn = {}, std::string_view peer = {},
             std::string_view reason = {});
    ~LogScope();
    LogScope(const LogScope&) = delete;
    LogScope& operator=(const LogScope&) = delete;

    struct Fields {
        std::string event, pn, peer, reason;
    };
    static const Fields& current();

  private:
    Fields saved_;
};

// `text` as the body of a JSON string: quotes, backslashes and control characters escaped,
// valid UTF-8 kept, every other octet written as \u00XX (so the line stays valid JSON).
std::string json_escape(std::string_view text);
// The spdlog formatter of the JSON format (the logger's name is the daemon).
std::unique_ptr<spdlog::formatter> json_log_formatter();

}  // namespace cpns::daemon
