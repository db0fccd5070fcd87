#include "explore/scenario.hpp"

#include <charconv>
#include <sstream>

namespace cpns::explore {

namespace {

std::string_view setup_word(pb::SetupType t) {
    switch (t) {
        case pb::SETUP_ALL:
            return "all";
        case pb::SETUP_INVITE_LIST:
            return "list";
        default:
            return "1-1";
    }
}

std::vector<std::string> split(std::string_view s, char sep) {
    std::vector<std::string> out;
    std::size_t start = 0;
    while (start <= s.size()) {
        const auto end = s.find(sep, start);
        const auto stop = end == std::string_view::npos ? s.size() : end;
        out.emplace_back(s.substr(start, stop - start));
        if (end == std::string_view::npos) break;
        start = end + 1;
    }
    return out;
}

template <class T>
bool parse_number(std::string_view s, T& out) {
    const auto r = std::from_chars(s.data(), s.data() + s.size(), out);
    return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

// "pne-1-1-insecure-ui-2" -> the first five fields of a Scenario.
bool parse_name(std::string_view name, Scenario& s) {
    auto parts = split(name, '-');
    // "1-1" splits in two.
    if (parts.size() == 6 && parts[1] == "1" && parts[2] == "1") {
        parts[1] = "1-1";
        parts.erase(parts.begin() + 2);
    }
    if (parts.size() != 5) return false;
    if (parts[0] != "pne" && parts[0] != "gw") return false;
    s.gw_initiated = parts[0] == "gw";
    if (parts[1] == "1-1")
        s.setup = pb::SETUP_ONE_TO_ONE;
    else if (parts[1] == "all")
        s.setup = pb::SETUP_ALL;
    else if (parts[1] == "list")
        s.setup = pb::SETUP_INVITE_LIST;
    else
        return false;
    if (parts[2] != "secure" && parts[2] != "insecure") return false;
    s.pan_secure = parts[2] == "secure";
    if (parts[3] != "ui" && parts[3] != "noui") return false;
    s.enough_ui = parts[3] == "ui";
    return parse_number(parts[4], s.pnes) && s.pnes >= 2 && s.pnes <= 3;
}

bool parse_option(std::string_view opt, Scenario& s) {
    const auto eq = opt.find('=');
    const std::string_view key = opt.substr(0, eq);
    const std::string_view val = eq == std::string_view::npos ? "" : opt.substr(eq + 1);
    if (key == "faults") return parse_number(val, s.max_faults);
    if (key == "attacks") return parse_number(val, s.max_attacks);
    if (key == "seed") return parse_number(val, s.seed);
    if (key == "timers") return parse_number(val, s.max_timers);
    if (key == "new_pns") return parse_number(val, s.max_new_pns);
    if (key == "sessions") return parse_number(val, s.max_sessions);
    if (key == "life") return parse_number(val, s.max_life) && s.max_life >= 0;
    if (key == "replay") return s.replay = true;
    if (key == "noreplay") return !(s.replay = false);
    if (key == "inject") return s.inject = true;
    if (key == "dgw") return s.dishonest_gw = true;
    if (key == "noprior") return !(s.prior_run = false);
    if (key == "weaken") {
        for (const auto& w : split(val, '+')) {
            if (w == "hash")
                s.weaken.skip_hash_pne_check = true;
            else if (w == "list")
                s.weaken.skip_invitation_list_check = true;
            else if (w == "sk")
                s.weaken.leak_sk_to_gw = true;
            else if (w == "leave")
                s.weaken.skip_leave_proof_check = true;
            else
                return false;
        }
        return !val.empty();
    }
    if (key == "cpne") {
        s.compromised_pne = std::string(val);
        return !val.empty();
    }
    if (key == "mut") {
        s.mutations.clear();
        for (auto& f : split(val, '+'))
            if (!f.empty()) s.mutations.push_back(f);
        return true;
    }
    return false;
}

}  // namespace

std::string Scenario::name() const {
    std::string n = gw_initiated ? "gw-" : "pne-";
    n += setup_word(setup);
    n += pan_secure ? "-secure" : "-insecure";
    n += enough_ui ? "-ui-" : "-noui-";
    n += std::to_string(pnes);
    return n;
}

std::string Scenario::spec() const {
    std::ostringstream o;
    o << name() << ";faults=" << max_faults << ";attacks=" << max_attacks
      << (replay ? ";replay" : ";noreplay");
    if (max_timers >= 0) o << ";timers=" << max_timers;
    if (max_life > 0) o << ";life=" << max_life;
    if (inject) o << ";inject";
    if (dishonest_gw) o << ";dgw";
    if (!compromised_pne.empty()) o << ";cpne=" << compromised_pne;
    if (!mutations.empty()) {
        o << ";mut=";
        for (std::size_t i = 0; i < mutations.size(); ++i) o << (i ? "+" : "") << mutations[i];
    }
    if (!prior_run) o << ";noprior";
    if (weaken.any()) {
        std::string w;
        if (weaken.skip_hash_pne_check) w += "+hash";
        if (weaken.skip_invitation_list_check) w += "+list";
        if (weaken.leak_sk_to_gw) w += "+sk";
        if (weaken.skip_leave_proof_check) w += "+leave";
        o << ";weaken=" << w.substr(1);
    }
    o << ";seed=" << seed << ";new_pns=" << max_new_pns << ";sessions=" << max_sessions;
    return o.str();
}

std::optional<Scenario> Scenario::parse(std::string_view spec) {
    const auto parts = split(spec, ';');
    Scenario s;
    if (parts.empty() || !parse_name(parts[0], s)) return std::nullopt;
    for (std::size_t i = 1; i < parts.size(); ++i)
        if (!parts[i].empty() && !parse_option(parts[i], s)) return std::nullopt;
    return s;
}

std::vector<std::string> Scenario::pne_ids() const {
    std::vector<std::string> ids;
    for (int i = 0; i < pnes; ++i) ids.push_back(std::string("pne-") + static_cast<char>('a' + i));
    return ids;
}

std::vector<std::string> Scenario::invited() const {
    const auto ids = pne_ids();
    if (gw_initiated) {
        if (setup == pb::SETUP_ONE_TO_ONE) return {ids[1]};
        if (setup == pb::SETUP_INVITE_LIST) return {ids[0], ids[1]};
        return {};  // every discovered PNE
    }
    if (setup == pb::SETUP_INVITE_LIST) return {ids[1]};
    return {};
}

std::vector<Scenario> standard_scenarios() {
    std::vector<Scenario> out;
    for (bool gw : {false, true})
        for (auto type : {pb::SETUP_ONE_TO_ONE, pb::SETUP_ALL, pb::SETUP_INVITE_LIST})
            for (bool secure : {false, true})
                for (bool ui : {true, false})
                    for (int n : {2, 3}) {
                        Scenario s;
                        s.gw_initiated = gw;
                        s.setup = type;
                        s.pan_secure = secure;
                        s.enough_ui = ui;
                        s.pnes = n;
                        out.push_back(s);
                    }
    return out;
}

std::string_view to_string(ActionKind k) {
    static constexpr std::array<std::string_view, 10> kNames{
        "deliver", "drop",    "duplicate", "timer",   "tls",
        "replay",  "rewrite", "inject",    "command", "life"};
    const auto i = static_cast<std::size_t>(k);
    return i < kNames.size() ? kNames[i] : "invalid";
}

std::uint64_t fnv1a(std::string_view data, std::uint64_t h) {
    for (unsigned char c : data) {
        h ^= c;
        h *= 0x100000001b3ULL;
    }
    return h;
}

std::string hex64(std::uint64_t v) {
    static constexpr char kDigits[] = "0123456789abcdef";
    std::string s(16, '0');
    for (int i = 15; i >= 0; --i, v >>= 4) s[static_cast<std::size_t>(i)] = kDigits[v & 0xf];
    return s;
}

std::string to_text(const Action& a) {
    auto word = [](const std::string& w) { return w.empty() ? std::string("-") : w; };
    std::string s(to_string(a.kind));
    for (const std::string& w : {hex64(a.msg), word(a.party), word(a.field),
                                 a.value.empty() ? std::string("-") : to_hex(as_bytes(a.value))}) {
        s += ' ';
        s += w;
    }
    return s;
}

std::optional<Action> parse_action(std::string_view line) {
    line = line.substr(0, line.find('#'));
    std::vector<std::string> words;
    std::istringstream in{std::string(line)};
    for (std::string w; in >> w;) words.push_back(w);
    if (words.size() != 5) return std::nullopt;
    Action a;
    bool known = false;
    for (int k = 0; k < 10; ++k)
        if (to_string(static_cast<ActionKind>(k)) == words[0]) {
            a.kind = static_cast<ActionKind>(k);
            known = true;
        }
    const auto& m = words[1];
    if (!known || std::from_chars(m.data(), m.data() + m.size(), a.msg, 16).ec != std::errc())
        return std::nullopt;
    if (words[2] != "-") a.party = words[2];
    if (words[3] != "-") a.field = words[3];
    if (words[4] != "-") {
        auto raw = from_hex(words[4]);
        if (!raw) return std::nullopt;
        a.value.assign(raw->begin(), raw->end());
    }
    return a;
}

std::vector<Action> parse_trace(std::string_view text) {
    std::vector<Action> out;
    for (const auto& line : split(text, '\n'))
        if (auto a = parse_action(line)) out.push_back(std::move(*a));
    return out;
}

}  // namespace cpns::explore
