// The daemons' event trace writer: one valid JSON object per line, escaping, appending,
// bounded lines, and the clock that fills time_ms.
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "daemon/common.hpp"
#include "daemon/trace.hpp"

namespace cpns::daemon {
namespace {

namespace fs = std::filesystem;

class TraceTest : public ::testing::Test {
  protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() /
               ("cpns-trace-test-" + std::to_string(::getpid()) + "-" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::remove_all(dir_);
        fs::create_directories(dir_);
        path_ = (dir_ / "t.trace.jsonl").string();
    }
    void TearDown() override { fs::remove_all(dir_); }

    std::string contents() const {
        std::ifstream in(path_, std::ios::binary);
        std::ostringstream s;
        s << in.rdbuf();
        return s.str();
    }
    std::vector<std::string> lines() const {
        std::vector<std::string> out;
        std::istringstream in(contents());
        for (std::string line; std::getline(in, line);) out.push_back(line);
        return out;
    }
    // Parses one line strictly (no unknown fields) back into a TraceEvent.
    static pb::TraceEvent parse(const std::string& line) {
        pb::TraceEvent ev;
        google::protobuf::util::JsonParseOptions opt;
        opt.ignore_unknown_fields = false;
        const auto st = google::protobuf::util::JsonStringToMessage(line, &ev, opt);
        EXPECT_TRUE(st.ok()) << st.ToString() << "\nline: " << line;
        return ev;
    }

    fs::path dir_;
    std::string path_;
};

TEST_F(TraceTest, OffWritesNothing) {
    TraceWriter off;
    EXPECT_FALSE(off.enabled());
    off.write(trace_transition("pne-1", "pne", "", "pne-1", "idle", "tls_before_join", "x"));
    EXPECT_EQ(off.written(), 0u);
    TraceWriter empty("");
    EXPECT_FALSE(empty.enabled());
    empty.write(pb::TraceEvent());
    EXPECT_FALSE(fs::exists(path_));
}

TEST_F(TraceTest, OneJsonObjectPerLineWithEveryField) {
    {
        TraceWriter w(path_, [] { return std::uint64_t{1700000000123}; });
        ASSERT_TRUE(w.enabled());
        w.write(trace_transition("gw-1", "gw", "pn-1", "pne-2", "joined", "auth_pending",
                                 "Authentication Request relayed"));
        w.write(trace_message("gw-1", "gw", "send", "pn-1", "PneAuthenticationRequest", "pne-2",
                              "tls"));
        pb::TraceEvent given_time;
        given_time.set_time_ms(42);
        given_time.set_event("link");
        w.write(given_time);
        EXPECT_EQ(w.written(), 3u);
        EXPECT_EQ(w.dropped(), 0u);
    }
    const std::string text = contents();
    ASSERT_FALSE(text.empty());
    EXPECT_EQ(text.back(), '\n');
    const auto ls = lines();
    ASSERT_EQ(ls.size(), 3u);

    const auto t = parse(ls[0]);
    EXPECT_EQ(t.time_ms(), 1700000000123u);
    EXPECT_EQ(t.entity(), "gw-1");
    EXPECT_EQ(t.role(), "gw");
    EXPECT_EQ(t.event(), "transition");
    EXPECT_EQ(t.pn_id(), "pn-1");
    EXPECT_EQ(t.subject(), "pne-2");
    EXPECT_EQ(t.from_state(), "joined");
    EXPECT_EQ(t.to_state(), "auth_pending");
    EXPECT_EQ(t.reason(), "Authentication Request relayed");
    // The schema's field names, and empty fields printed too.
    EXPECT_NE(ls[0].find("\"from_state\":\"joined\""), std::string::npos) << ls[0];
    EXPECT_NE(ls[0].find("\"message\":\"\""), std::string::npos) << ls[0];
    EXPECT_NE(ls[0].find("\"time_ms\":\"1700000000123\""), std::string::npos) << ls[0];

    const auto m = parse(ls[1]);
    EXPECT_EQ(m.event(), "send");
    EXPECT_EQ(m.message(), "PneAuthenticationRequest");
    EXPECT_EQ(m.peer(), "pne-2");
    EXPECT_EQ(m.detail(), "tls");
    EXPECT_EQ(parse(ls[2]).time_ms(), 42u);  // a given time is kept
}

TEST_F(TraceTest, DefaultClockIsTheWallClock) {
    const auto before =
        static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                       std::chrono::system_clock::now().time_since_epoch())
                                       .count());
    {
        TraceWriter w(path_);
        w.write(trace_transition("s", "server", "pn-1", "", "none", "wait_auth_response", "r"));
    }
    const auto ls = lines();
    ASSERT_EQ(ls.size(), 1u);
    const auto t = parse(ls[0]).time_ms();
    EXPECT_GE(t, before);
    EXPECT_LT(t, before + 60'000);
}

TEST_F(TraceTest, ControlCharactersQuotesAndBackslashesStayInsideTheLine) {
    const std::string nasty = std::string("line one\nline two\r\t\"quoted\" back\\slash ") +
                              std::string(1, '\0') + "\x01\x1f end \xc3\xa9";  // é
    {
        TraceWriter w(path_);
        auto ev = trace_transition("pne-1", "pne", "pn-1", "pne-1", "wait_result", "idle", nasty);
        ev.set_detail("}\n{\"event\":\"forged\"}");
        w.write(ev);
        w.write(trace_transition("pne-1", "pne", "pn-1", "pne-1", "idle", "tls_before_join", "ok"));
    }
    const std::string text = contents();
    for (char c : text)
        if (c != '\n') {
            EXPECT_GE(static_cast<unsigned char>(c), 0x20) << "raw control character";
        }
    const auto ls = lines();
    ASSERT_EQ(ls.size(), 2u) << text;
    const auto ev = parse(ls[0]);
    EXPECT_EQ(ev.reason(), nasty);
    EXPECT_EQ(ev.detail(), "}\n{\"event\":\"forged\"}");
    EXPECT_EQ(parse(ls[1]).reason(), "ok");
}

TEST_F(TraceTest, InvalidUtf8IsRepairedNotDropped) {
    {
        TraceWriter w(path_);
        w.write(trace_message("gw-1", "gw", "recv", "pn-1", "Bad\xff\xfeName", "pne-\xc3", ""));
        EXPECT_EQ(w.dropped(), 0u);
    }
    const auto ls = lines();
    ASSERT_EQ(ls.size(), 1u);
    const auto ev = parse(ls[0]);
    EXPECT_EQ(ev.message(), "Bad??Name");
    EXPECT_EQ(ev.peer(), "pne-?");
}

TEST_F(TraceTest, LinesAreBounded) {
    {
        TraceWriter w(path_);
        auto ev = trace_transition("gw-1", "gw", "pn-1", "pne-1", "joined", "failed",
                                   std::string(100'000, 'r'));
        ev.set_detail(std::string(50'000, '\n'));  // six bytes each once escaped
        ev.set_message(std::string(3000, 'm'));
        w.write(ev);
    }
    const auto ls = lines();
    ASSERT_EQ(ls.size(), 1u);
    EXPECT_LT(ls[0].size() + 1, kMaxTraceLine + 1);
    const auto ev = parse(ls[0]);
    EXPECT_EQ(ev.entity(), "gw-1");  // short fields survive
    EXPECT_EQ(ev.to_state(), "failed");
    EXPECT_FALSE(ev.reason().empty());
    EXPECT_EQ(ev.reason().substr(ev.reason().size() - 3), "...");  // the cut is marked
}

TEST_F(TraceTest, AppendsToAnExistingFileAndCreatesItPrivate) {
    {
        TraceWriter w(path_);
        w.write(trace_transition("pne-1", "pne", "", "pne-1", "idle", "tls_before_join", "a"));
    }
    struct stat st {};
    ASSERT_EQ(::stat(path_.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    {
        TraceWriter w;
        w.open(path_);
        w.write(trace_transition("pne-1", "pne", "", "pne-1", "tls_before_join", "idle", "b"));
    }
    const auto ls = lines();
    ASSERT_EQ(ls.size(), 2u);
    EXPECT_EQ(parse(ls[0]).reason(), "a");
    EXPECT_EQ(parse(ls[1]).reason(), "b");
}

TEST_F(TraceTest, UnopenableFileIsAConfigError) {
    EXPECT_THROW(TraceWriter((dir_ / "no-such-dir" / "t.jsonl").string()), ConfigError);
}

// --crash-at: what an operator may write, and what is refused with a ConfigError.
TEST(CrashPointTest, ParsesEveryForm) {
    EXPECT_FALSE(parse_crash_point("").has_value());
    const auto a = parse_crash_point("send:PnRegistrationRequest");
    ASSERT_TRUE(a.has_value());
    EXPECT_EQ(a->when, CrashPoint::When::kAfterSend);
    EXPECT_EQ(a->message, "PnRegistrationRequest");
    EXPECT_EQ(a->nth, 1u);
    const auto b = parse_crash_point("recv:PneAuthenticationResponse:2");
    ASSERT_TRUE(b.has_value());
    EXPECT_EQ(b->when, CrashPoint::When::kAfterRecv);
    EXPECT_EQ(b->message, "PneAuthenticationResponse");
    EXPECT_EQ(b->nth, 2u);
    const auto c = parse_crash_point("before-send:PnRegistrationResponse:1");
    ASSERT_TRUE(c.has_value());
    EXPECT_EQ(c->when, CrashPoint::When::kBeforeSend);
}

TEST(CrashPointTest, RefusesMalformedSpecs) {
    for (const char* bad :
         {"send", "send:", "crash:PnSetupRequest", "recv:PnSetupRequest:0", "recv:PnSetupRequest:x",
          "recv:PnSetupRequest:1:2", "recv:Pn Setup", "recv:PnSetupRequest:-1"})
        EXPECT_THROW(parse_crash_point(bad), ConfigError) << bad;
    EXPECT_THROW(RoleTrace("gw-1", "gw", "", "after:PnSetupRequest"), ConfigError);
}

// A role trace with no file still carries its crash point: a `recv` point kills the process
// once the Nth matching message was handled, and not before.
TEST(CrashPointTest, RecvPointKillsAtTheNthHandledMessage) {
    pb::Envelope env;
    env.set_sender_id("pne-1");
    env.mutable_setup_request()->set_setup_type(pb::SETUP_ALL);
    pb::Envelope other;
    other.set_sender_id("pne-1");
    other.mutable_error()->set_pn_id("pn-1");
    EXPECT_EXIT(
        {
            RoleTrace t("gw-1", "gw", "", "recv:PnSetupRequest:2");
            t.handled(other);
            t.handled(env);
            std::fputs("after the first\n", stderr);
            t.handled(env);
            std::exit(0);  // not reached
        },
        ::testing::KilledBySignal(SIGKILL), "after the first");
}

}  // namespace
}  // namespace cpns::daemon
