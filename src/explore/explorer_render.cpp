// Reports and counterexamples as text, Mermaid and GoogleTest.
#include <algorithm>
#include <sstream>

#include "explore/explorer.hpp"

namespace cpns::explore {

namespace {

std::string mermaid_safe(std::string s) {
    for (auto& c : s)
        if (c == ';' || c == '#' || c == '\n') c = ',';
    return s;
}

std::string json_escape(const std::string& s) {
    std::string o;
    for (char c : s) {
        if (c == '"' || c == '\\') o += '\\';
        if (c == '\n') {
            o += "\\n";
            continue;
        }
        o += c;
    }
    return o;
}

std::string camel(std::string_view s) {
    std::string out;
    bool up = true;
    for (char c : s) {
        if (c == '_' || c == '-') {
            up = true;
            continue;
        }
        out += up ? static_cast<char>(std::toupper(static_cast<unsigned char>(c))) : c;
        up = false;
    }
    return out;
}

// Six hex digits of the trace, so that pasted tests of one scenario get distinct names.
std::string trace_tag(const std::vector<Action>& trace) {
    std::string all;
    for (const auto& a : trace) all += to_text(a) + "\n";
    return hex64(fnv1a(all)).substr(0, 6);
}

}  // namespace

double Report::states_per_second() const {
    return seconds > 0 ? static_cast<double>(states) / seconds : 0;
}

const Counterexample* Report::find(std::string_view property) const {
    for (const auto& c : violations)
        if (c.property == property) return &c;
    return nullptr;
}

std::string Report::summary() const {
    std::ostringstream o;
    o << scenario.name() << ": " << states << " states, " << transitions << " transitions, depth "
      << depth_exhausted << " exhausted, max depth " << max_depth << ", " << walks << " walks, "
      << static_cast<long>(states_per_second()) << " states/s, "
      << static_cast<long>(seconds > 0 ? static_cast<double>(transitions) / seconds : 0)
      << " transitions/s, " << seconds << " s" << (timed_out ? " (time bound)" : "") << ", "
      << violations.size() << " violated";
    for (const auto& c : violations) o << " " << c.property << "(" << c.trace.size() << ")";
    return o.str();
}

std::string Report::to_json() const {
    std::ostringstream o;
    o << "{\"scenario\": \"" << json_escape(scenario.spec()) << "\", \"states\": " << states
      << ", \"transitions\": " << transitions << ", \"depth_exhausted\": " << depth_exhausted
      << ", \"max_depth\": " << max_depth << ", \"walks\": " << walks
      << ", \"seconds\": " << seconds << ", \"states_per_second\": " << states_per_second()
      << ", \"transitions_per_second\": "
      << (seconds > 0 ? static_cast<double>(transitions) / seconds : 0)
      << ", \"timed_out\": " << (timed_out ? "true" : "false") << ", \"violations\": [";
    for (std::size_t i = 0; i < violations.size(); ++i) {
        const auto& c = violations[i];
        o << (i ? ", " : "") << "{\"property\": \"" << c.property << "\", \"text\": \""
          << json_escape(c.text) << "\", \"found_length\": " << c.found_length
          << ", \"length\": " << c.trace.size() << ", \"occurrences\": " << c.occurrences
          << ", \"trace\": [";
        for (std::size_t j = 0; j < c.trace.size(); ++j)
            o << (j ? ", " : "") << "\"" << to_text(c.trace[j]) << "\"";
        o << "]}";
    }
    o << "]}";
    return o.str();
}

std::string Explorer::render_text(const std::vector<Action>& trace) const {
    std::ostringstream o;
    World w(scn_, prior_, 1, true);
    o << "scenario " << scn_.spec() << "\n";
    std::size_t shown = 0;
    auto flush = [&]() {
        for (; shown < w.trace().size(); ++shown) {
            const auto& t = w.trace()[shown];
            o << "      "
              << (t.is_note ? "[" + t.from + (t.to != t.from ? " -> " + t.to : "") + "] "
                            : t.from + " -> " + t.to + "  ")
              << t.what << (t.note.empty() ? "" : "  (" + t.note + ")") << "\n";
        }
    };
    o << "  0. start\n";
    flush();
    for (std::size_t i = 0; i < trace.size(); ++i) {
        const std::string what = w.describe(trace[i]);
        const Since since{w.observations().size(), w.knowledge().size()};
        const bool ok = w.apply(trace[i]);
        o << "  " << i + 1 << ". " << what << (ok ? "" : "  [not enabled; skipped]") << "\n";
        flush();
        if (!ok) continue;
        for (const auto& v : check_properties(w, since))
            o << "      VIOLATION " << v.property << ": " << v.text << "\n";
    }
    return o.str();
}

std::string Explorer::render_mermaid(const std::vector<Action>& trace) const {
    World w(scn_, prior_, 1, true);
    std::vector<Violation> found;
    for (const auto& a : trace) {
        const Since since{w.observations().size(), w.knowledge().size()};
        if (!w.apply(a)) continue;
        for (auto& v : check_properties(w, since)) found.push_back(std::move(v));
    }
    std::ostringstream o;
    o << "sequenceDiagram\n";
    for (const auto& id : scn_.pne_ids()) o << "    participant " << id << "\n";
    o << "    participant " << kGwId << "\n    participant " << kServerId << "\n";
    for (const auto& t : w.trace()) {
        if (!t.is_note) {
            o << "    " << t.from << "->>" << t.to << ": " << mermaid_safe(t.what);
            if (!t.note.empty()) o << " (" << mermaid_safe(t.note) << ")";
            o << "\n";
            continue;
        }
        o << "    Note over " << t.from;
        if (t.to != t.from) o << "," << t.to;
        o << ": " << mermaid_safe(t.what);
        if (!t.note.empty()) o << " " << mermaid_safe(t.note);
        o << "\n";
    }
    for (const auto& v : found)
        o << "    Note over " << scn_.pne_ids().front() << "," << kServerId << ": VIOLATION "
          << v.property << " - " << mermaid_safe(v.text) << "\n";
    return o.str();
}

std::string Explorer::render_gtest(const Counterexample& cx) const {
    std::ostringstream o;
    o << "// " << cx.property << ": " << cx.text << "\n"
      << "TEST(ExplorerCounterexample, " << camel(cx.property) << "_"
      << camel(scn_.name()).substr(0, 40) << "_" << trace_tag(cx.trace) << ") {\n"
      << "    const auto scn = cpns::explore::Scenario::parse(\n        \"" << scn_.spec()
      << "\");\n"
      << "    ASSERT_TRUE(scn.has_value());\n"
      << "    const auto trace = cpns::explore::parse_trace(R\"(\n";
    World w(scn_, prior_);
    for (const auto& a : cx.trace) {
        o << to_text(a) << "  # " << w.describe(a) << "\n";
        w.apply(a);
    }
    o << ")\");\n"
      << "    const auto v = cpns::explore::Explorer::replay(*scn, trace, {\"" << cx.property
      << "\"});\n"
      << "    EXPECT_TRUE(cpns::explore::has_violation(v, \"" << cx.property << "\"));\n"
      << "}\n";
    return o.str();
}

}  // namespace cpns::explore
