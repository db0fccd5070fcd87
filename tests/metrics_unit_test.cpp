// The daemons' Prometheus exposition writer, the /metrics HTTP answer, the --metrics address,
// and the JSON log format's escaping (the multi-process checks are tests/metrics_test.py and
// tests/log_secrets_test.py).
#include <gtest/gtest.h>

#include <string>

#include "daemon/common.hpp"
#include "daemon/log_json.hpp"
#include "daemon/metrics.hpp"

namespace cpns::daemon {
namespace {

TEST(Metrics, CountersAndHistogramsInTextFormat) {
    Registry r;
    r.declare_counter("cpns_things_total", "Things.\nSecond line \\ here.", {"kind"});
    r.declare_histogram("cpns_wait_seconds", "Waits.", {}, {0.1, 1});
    r.counter("cpns_things_total", {"a\"b\\c\nd"}).inc(3);
    auto& h = r.histogram("cpns_wait_seconds");
    h.observe(0.05);
    h.observe(0.5);
    h.observe(7);
    const std::string text = r.render();
    EXPECT_NE(text.find("# HELP cpns_things_total Things.\\nSecond line \\\\ here.\n"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("# TYPE cpns_things_total counter\n"), std::string::npos);
    EXPECT_NE(text.find("cpns_things_total{kind=\"a\\\"b\\\\c\\nd\"} 3\n"), std::string::npos)
        << text;
    EXPECT_NE(text.find("cpns_wait_seconds_bucket{le=\"0.1\"} 1\n"), std::string::npos) << text;
    EXPECT_NE(text.find("cpns_wait_seconds_bucket{le=\"1\"} 2\n"), std::string::npos) << text;
    EXPECT_NE(text.find("cpns_wait_seconds_bucket{le=\"+Inf\"} 3\n"), std::string::npos) << text;
    EXPECT_NE(text.find("cpns_wait_seconds_sum 7.55\n"), std::string::npos) << text;
    EXPECT_NE(text.find("cpns_wait_seconds_count 3\n"), std::string::npos) << text;
}

TEST(Metrics, LabelSetsAreBounded) {
    Registry r;
    r.declare_counter("cpns_x_total", "X.", {"v"});
    for (std::size_t i = 0; i < kMaxSeriesPerFamily + 10; ++i)
        r.counter("cpns_x_total", {std::to_string(i)}).inc();
    const std::string text = r.render();
    EXPECT_NE(text.find("cpns_x_total{v=\"other\"} 10\n"), std::string::npos);
    EXPECT_THROW(r.counter("cpns_undeclared_total"), std::logic_error);
    EXPECT_THROW(r.counter("cpns_x_total", {"a", "b"}), std::logic_error);
}

TEST(Metrics, EstablishmentsByFlowAndReasonNeverById) {
    DaemonMetrics m("test");
    m.started("pn-000000000001", FlowLabel::kPneInitiated, pb::SETUP_ALL, 1'000);
    m.phase_done("pn-000000000001", DaemonMetrics::Phase::kSetup, 1'250);
    m.finished("pn-000000000001", true, pb::REASON_NONE, 3'000);
    m.started("pn-000000000002", FlowLabel::kGwInitiated, pb::SETUP_UNSPECIFIED, 1'000);
    m.finished("pn-000000000002", false, pb::TIMEOUT, 2'000);
    m.finished("", false, pb::BUSY, 2'000);  // never started here
    const std::string text = m.registry().render();
    EXPECT_NE(text.find("cpns_establishments_started_total{flow=\"pne_initiated\",setup=\"all\"} "
                        "1\n"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("cpns_establishments_finished_total{flow=\"gw_initiated\",setup=\"none\","
                        "outcome=\"failure\",reason=\"TIMEOUT\"} 1\n"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("cpns_establishments_finished_total{flow=\"unknown\",setup=\"none\","
                        "outcome=\"failure\",reason=\"BUSY\"} 1\n"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("cpns_establishment_duration_seconds_sum{flow=\"pne_initiated\","
                        "outcome=\"success\"} 2\n"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("cpns_establishment_phase_seconds_sum{flow=\"pne_initiated\","
                        "phase=\"setup\"} 0.25\n"),
              std::string::npos)
        << text;
    EXPECT_EQ(text.find("pn-0000"), std::string::npos) << text;
    EXPECT_NE(text.find("cpns_build_info{version=\""), std::string::npos);
    EXPECT_NE(text.find("process_open_fds "), std::string::npos);
}

TEST(Metrics, HttpAnswersOnlyGetMetrics) {
    Registry r;
    r.declare_counter("cpns_y_total", "Y.", {});
    r.counter("cpns_y_total").inc();
    const auto ok = metrics_http_answer("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", r);
    EXPECT_EQ(ok.rfind("HTTP/1.0 200 OK\r\n", 0), 0U) << ok;
    EXPECT_NE(ok.find("text/plain; version=0.0.4"), std::string::npos);
    EXPECT_NE(ok.find("\r\n\r\n# HELP cpns_y_total Y.\n"), std::string::npos) << ok;
    EXPECT_EQ(metrics_http_answer("GET /metrics?x=1 HTTP/1.0\r\n\r\n", r).rfind("HTTP/1.0 200", 0),
              0U);
    EXPECT_EQ(metrics_http_answer("GET / HTTP/1.0\r\n\r\n", r).rfind("HTTP/1.0 404", 0), 0U);
    EXPECT_EQ(metrics_http_answer("DELETE /metrics HTTP/1.0\r\n\r\n", r).rfind("HTTP/1.0 405", 0),
              0U);
    EXPECT_EQ(metrics_http_answer("GET /metrics\r\n\r\n", r).rfind("HTTP/1.0 400", 0), 0U);
    EXPECT_EQ(metrics_http_answer("", r).rfind("HTTP/1.0 400", 0), 0U);
    const auto head = metrics_http_answer("HEAD /metrics HTTP/1.0\r\n\r\n", r);
    EXPECT_EQ(head.find("# HELP"), std::string::npos);
}

TEST(Metrics, AddressBarePortIsLoopback) {
    const auto a = parse_metrics_address("9101", "--metrics");
    EXPECT_EQ(a.host, "127.0.0.1");
    EXPECT_EQ(a.port, 9101);
    const auto b = parse_metrics_address("0.0.0.0:9102", "--metrics");
    EXPECT_EQ(b.host, "0.0.0.0");
    EXPECT_EQ(b.port, 9102);
    EXPECT_THROW(parse_metrics_address("99999", "--metrics"), ConfigError);
    EXPECT_THROW(parse_metrics_address("12ab", "--metrics"), ConfigError);
}

TEST(JsonLog, EscapesControlsQuotesAndInvalidUtf8) {
    EXPECT_EQ(json_escape("a\"b\\c"), "a\\\"b\\\\c");
    EXPECT_EQ(json_escape("l1\nl2\r\t"), "l1\\nl2\\r\\t");
    EXPECT_EQ(json_escape(std::string("\x01\x1b[31m\x7f", 7)), "\\u0001\\u001b[31m\\u007f");
    EXPECT_EQ(json_escape("caf\xc3\xa9 \xe2\x82\xac"), "caf\xc3\xa9 \xe2\x82\xac");  // valid
    EXPECT_EQ(json_escape("\xff\xc3"), "\\u00ff\\u00c3");             // invalid, truncated
    EXPECT_EQ(json_escape("\xc0\xaf"), "\\u00c0\\u00af");             // overlong
    EXPECT_EQ(json_escape("\xed\xa0\x80"), "\\u00ed\\u00a0\\u0080");  // a surrogate
    EXPECT_EQ(json_escape(std::string("a\0b", 3)), "a\\u0000b");
}

TEST(JsonLog, FormatterWritesOneObjectPerLineWithScopeFields) {
    auto f = json_log_formatter();
    spdlog::details::log_msg msg("gw-1", spdlog::level::warn, "PN pn-0123456789ab failed: \"x\"");
    spdlog::memory_buf_t out;
    {
        const LogScope scope("outcome", "", "pne-1", "TIMEOUT");
        f->format(msg, out);
    }
    const std::string line(out.data(), out.size());
    EXPECT_EQ(line.back(), '\n');
    EXPECT_EQ(line.find('\n'), line.size() - 1);
    EXPECT_NE(line.find("\"level\":\"warn\",\"daemon\":\"gw-1\",\"event\":\"outcome\","
                        "\"pn\":\"pn-0123456789ab\",\"peer\":\"pne-1\",\"reason\":\"TIMEOUT\","
                        "\"msg\":\"PN pn-0123456789ab failed: \\\"x\\\"\"}"),
              std::string::npos)
        << line;
    out.clear();
    spdlog::details::log_msg plain("server", spdlog::level::info, "refused: UNKNOWN_ENTITY - no");
    f->format(plain, out);
    const std::string second(out.data(), out.size());
    EXPECT_NE(
        second.find("\"event\":\"log\",\"pn\":\"\",\"peer\":\"\",\"reason\":\"UNKNOWN_ENTITY\""),
        std::string::npos)
        << second;
    EXPECT_EQ(parse_log_format("json"), LogFormat::kJson);
    EXPECT_EQ(parse_log_format("human"), LogFormat::kHuman);
    EXPECT_THROW(parse_log_format("xml"), ConfigError);
}

}  // namespace
}  // namespace cpns::daemon
