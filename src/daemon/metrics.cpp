#include "daemon/metrics.hpp"

#include <openssl/crypto.h>
#include <sys/resource.h>
#include <unistd.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "daemon/common.hpp"

#ifndef CPNS_VERSION
#define CPNS_VERSION "unknown"
#endif

namespace cpns::daemon {

namespace {

std::string format_value(double v) {
    if (std::isnan(v)) return "NaN";
    if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
    if (v == std::floor(v) && std::fabs(v) < 1e15) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.0f", v);
        return buf;
    }
    // The shortest text that reads back as the same double.
    char buf[64];
    const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
    return ec == std::errc{} ? std::string(buf, end) : std::string("NaN");
}

std::string label_text(const Labels& names, const Labels& values,
                       const std::string& extra_name = "", const std::string& extra_value = "") {
    std::string out;
    for (std::size_t i = 0; i < names.size() && i < values.size(); ++i) {
        out += out.empty() ? "{" : ",";
        out += names[i] + "=\"" + escape_label_value(values[i]) + "\"";
    }
    if (!extra_name.empty()) {
        out += out.empty() ? "{" : ",";
        out += extra_name + "=\"" + escape_label_value(extra_value) + "\"";
    }
    if (!out.empty()) out += "}";
    return out;
}

// HELP text escaping: backslash and newline.
std::string escape_help(std::string_view v) {
    std::string out;
    for (char c : v) {
        if (c == '\\')
            out += "\\\\";
        else if (c == '\n')
            out += "\\n";
        else
            out += c;
    }
    return out;
}

}  // namespace

std::string escape_label_value(std::string_view v) {
    std::string out;
    out.reserve(v.size());
    for (char c : v) {
        if (c == '\\')
            out += "\\\\";
        else if (c == '"')
            out += "\\\"";
        else if (c == '\n')
            out += "\\n";
        else
            out += c;
    }
    return out;
}

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      buckets_(std::make_unique<std::atomic<std::uint64_t>[]>(bounds_.size() + 1)) {}

void Histogram::observe(double v) {
    std::size_t i = 0;
    while (i < bounds_.size() && v > bounds_[i]) ++i;
    buckets_[i].fetch_add(1, std::memory_order_relaxed);
    sum_.fetch_add(v, std::memory_order_relaxed);
    count_.fetch_add(1, std::memory_order_relaxed);
}

std::uint64_t Histogram::cumulative(std::size_t i) const {
    std::uint64_t n = 0;
    for (std::size_t k = 0; k <= i && k <= bounds_.size(); ++k)
        n += buckets_[k].load(std::memory_order_relaxed);
    return n;
}

const std::vector<double>& latency_buckets() {
    static const std::vector<double> b{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                       0.25,  0.5,    1,     2.5,  5,     10,   30};
    return b;
}

const std::vector<double>& batch_buckets() {
    static const std::vector<double> b{1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
    return b;
}

Registry::Family& Registry::family(const std::string& name, std::string_view type) {
    auto it = by_name_.find(name);
    if (it == by_name_.end() || it->second->type != type)
        throw std::logic_error("metric " + name + " is not declared as a " + std::string(type));
    return *it->second;
}

void Registry::declare_counter(const std::string& name, const std::string& help,
                               Labels label_names) {
    auto f = std::make_unique<Family>();
    f->name = name;
    f->help = help;
    f->type = "counter";
    f->label_names = std::move(label_names);
    by_name_[name] = f.get();
    families_.push_back(std::move(f));
}

void Registry::declare_histogram(const std::string& name, const std::string& help,
                                 Labels label_names, std::vector<double> bounds) {
    auto f = std::make_unique<Family>();
    f->name = name;
    f->help = help;
    f->type = "histogram";
    f->label_names = std::move(label_names);
    f->bounds = std::move(bounds);
    by_name_[name] = f.get();
    families_.push_back(std::move(f));
}

void Registry::declare_sampled(const std::string& name, const std::string& help, Labels label_names,
                               Sampler read, std::string_view type) {
    auto f = std::make_unique<Family>();
    f->name = name;
    f->help = help;
    f->type = std::string(type);
    f->label_names = std::move(label_names);
    f->sampler = std::move(read);
    by_name_[name] = f.get();
    families_.push_back(std::move(f));
}

Labels Registry::bounded(const Family& f, std::size_t series, const Labels& values) const {
    if (values.size() != f.label_names.size())
        throw std::logic_error("metric " + f.name + ": wrong number of label values");
    if (series < kMaxSeriesPerFamily) return values;
    return Labels(values.size(), "other");
}

Counter& Registry::counter(const std::string& name, const Labels& values) {
    Family& f = family(name, "counter");
    if (auto it = f.counters.find(values); it != f.counters.end()) return *it->second;
    auto& slot = f.counters[bounded(f, f.counters.size(), values)];
    if (!slot) slot = std::make_unique<Counter>();
    return *slot;
}

Histogram& Registry::histogram(const std::string& name, const Labels& values) {
    Family& f = family(name, "histogram");
    if (auto it = f.histograms.find(values); it != f.histograms.end()) return *it->second;
    auto& slot = f.histograms[bounded(f, f.histograms.size(), values)];
    if (!slot) slot = std::make_unique<Histogram>(f.bounds);
    return *slot;
}

std::string Registry::render() const {
    std::ostringstream o;
    for (const auto& fp : families_) {
        const Family& f = *fp;
        o << "# HELP " << f.name << " " << escape_help(f.help) << "\n";
        o << "# TYPE " << f.name << " " << f.type << "\n";
        if (f.sampler) {
            for (const auto& s : f.sampler())
                o << f.name << label_text(f.label_names, s.labels) << " " << format_value(s.value)
                  << "\n";
            continue;
        }
        for (const auto& [labels, c] : f.counters)
            o << f.name << label_text(f.label_names, labels) << " " << c->value() << "\n";
        for (const auto& [labels, h] : f.histograms) {
            // Read the buckets first: a concurrent observe can only make _count larger than
            // the +Inf bucket read before it, so take _count from the +Inf bucket.
            std::vector<std::uint64_t> cum(h->bounds().size() + 1);
            for (std::size_t i = 0; i < cum.size(); ++i) cum[i] = h->cumulative(i);
            for (std::size_t i = 0; i < h->bounds().size(); ++i)
                o << f.name << "_bucket"
                  << label_text(f.label_names, labels, "le", format_value(h->bounds()[i])) << " "
                  << cum[i] << "\n";
            o << f.name << "_bucket" << label_text(f.label_names, labels, "le", "+Inf") << " "
              << cum.back() << "\n";
            o << f.name << "_sum" << label_text(f.label_names, labels) << " "
              << format_value(h->sum()) << "\n";
            o << f.name << "_count" << label_text(f.label_names, labels) << " " << cum.back()
              << "\n";
        }
    }
    return o.str();
}

namespace {

// Fields of /proc/self/stat after the command name: utime (14), stime (15), starttime (22),
// counted from 1 as in proc(5).
struct ProcStat {
    double cpu_seconds = 0;
    double start_time = 0;
    double virtual_bytes = 0;
    double resident_bytes = 0;
};

ProcStat read_proc_stat() {
    ProcStat out;
    std::ifstream in("/proc/self/stat");
    std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto close = all.rfind(')');
    if (close == std::string::npos) return out;
    std::istringstream fields(all.substr(close + 2));
    std::vector<std::string> f;
    for (std::string x; fields >> x;) f.push_back(x);
    // f[0] is field 3 (state).
    const auto at = [&](std::size_t field) {
        return field - 3 < f.size() ? std::strtod(f[field - 3].c_str(), nullptr) : 0.0;
    };
    const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
    const double page = static_cast<double>(::sysconf(_SC_PAGESIZE));
    out.cpu_seconds = (at(14) + at(15)) / ticks;
    out.virtual_bytes = at(23);
    out.resident_bytes = at(24) * page;
    double boot = 0;
    std::ifstream stat("/proc/stat");
    for (std::string line; std::getline(stat, line);)
        if (line.rfind("btime ", 0) == 0) boot = std::strtod(line.c_str() + 6, nullptr);
    out.start_time = boot + at(22) / ticks;
    return out;
}

double open_fds() {
    std::error_code ec;
    double n = 0;
    for (std::filesystem::directory_iterator it("/proc/self/fd", ec), end; !ec && it != end;
         it.increment(ec))
        ++n;
    return n;
}

Registry::Sampler one(std::function<double()> f) {
    return [f = std::move(f)] { return std::vector<Registry::Sample>{{{}, f()}}; };
}

}  // namespace

void declare_process_metrics(Registry& r) {
    r.declare_sampled("process_cpu_seconds_total", "User and system CPU time spent in seconds.", {},
                      one([] { return read_proc_stat().cpu_seconds; }), "counter");
    r.declare_sampled("process_resident_memory_bytes", "Resident memory size in bytes.", {},
                      one([] { return read_proc_stat().resident_bytes; }));
    r.declare_sampled("process_virtual_memory_bytes", "Virtual memory size in bytes.", {},
                      one([] { return read_proc_stat().virtual_bytes; }));
    r.declare_sampled("process_open_fds", "Number of open file descriptors.", {},
                      one([] { return open_fds(); }));
    r.declare_sampled("process_max_fds", "Maximum number of open file descriptors.", {}, one([] {
                          rlimit rl{};
                          if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0.0;
                          return static_cast<double>(rl.rlim_cur);
                      }));
    const double start = read_proc_stat().start_time;
    r.declare_sampled("process_start_time_seconds",
                      "Start time of the process since unix epoch in seconds.", {},
                      one([start] { return start; }));
    r.declare_sampled("cpns_build_info",
                      "The cpns version and the OpenSSL library it runs with (always 1).",
                      {"version", "openssl"}, [] {
                          return std::vector<Registry::Sample>{
                              {{CPNS_VERSION, OpenSSL_version(OPENSSL_VERSION_STRING)}, 1.0}};
                      });
}

net::HostPort parse_metrics_address(const std::string& text, const std::string& what) {
    if (!text.empty() && text.find(':') == std::string::npos) {
        unsigned port = 0;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), port);
        if (ec != std::errc{} || end != text.data() + text.size() || port > 65535)
            throw ConfigError(what + " '" + text + "' is not HOST:PORT or a port number");
        return net::HostPort{"127.0.0.1", static_cast<std::uint16_t>(port)};
    }
    return parse_address(text, what);
}

std::string_view flow_label(FlowLabel f) {
    switch (f) {
        case FlowLabel::kPneInitiated:
            return "pne_initiated";
        case FlowLabel::kGwInitiated:
            return "gw_initiated";
        case FlowLabel::kUnknown:
            break;
    }
    return "unknown";
}

std::string_view setup_label(pb::SetupType s) {
    switch (s) {
        case pb::SETUP_ONE_TO_ONE:
            return "one_to_one";
        case pb::SETUP_ALL:
            return "all";
        case pb::SETUP_INVITE_LIST:
            return "invite_list";
        default:
            break;
    }
    return "none";
}

FlowLabel flow_of(pb::Flow f) {
    switch (f) {
        case pb::FLOW_PNE_INITIATED:
            return FlowLabel::kPneInitiated;
        case pb::FLOW_GW_INITIATED:
            return FlowLabel::kGwInitiated;
        default:
            break;
    }
    return FlowLabel::kUnknown;
}

namespace {
std::string_view phase_label(DaemonMetrics::Phase p) {
    switch (p) {
        case DaemonMetrics::Phase::kSetup:
            return "setup";
        case DaemonMetrics::Phase::kServerAuthentication:
            return "server_authentication";
        case DaemonMetrics::Phase::kResultDelivery:
            return "result_delivery";
    }
    return "unknown";
}
double seconds(Millis ms) {
    return static_cast<double>(ms) / 1000.0;
}
}  // namespace

DaemonMetrics::DaemonMetrics(std::string_view daemon) {
    Registry& r = registry_;
    declare_process_metrics(r);
    const std::string who(daemon);
    r.declare_counter("cpns_establishments_started_total",
                      "Establishments this " + who + " took part in, as they began.",
                      {"flow", "setup"});
    r.declare_counter(
        "cpns_establishments_finished_total",
        "Establishments this " + who +
            " saw end, by outcome (success or failure) and typed reason (REASON_NONE on success).",
        {"flow", "setup", "outcome", "reason"});
    r.declare_histogram(
        "cpns_establishment_duration_seconds",
        "Whole establishments as this " + who + " saw them, from their start to their outcome.",
        {"flow", "outcome"}, latency_buckets());
    r.declare_histogram(
        "cpns_establishment_phase_seconds",
        "Phases of establishments at the PN GW: setup (to the Registration Request), "
        "server_authentication (to the Authentication Response), result_delivery (to the results).",
        {"flow", "phase"}, latency_buckets());
    r.declare_counter("cpns_establishment_pnes_total",
                      "PNEs named in establishments that ended here (PN GW and server): joined, or "
                      "excluded with the typed reason (AUTHENTICATION_FAILED, DECLINED, ...).",
                      {"result", "reason"});
    r.declare_counter("cpns_tls_handshakes_total",
                      "PSK-TLS handshakes by link (pan, server) and result (ok or a typed reason).",
                      {"link", "result"});
    r.declare_counter("cpns_psk_throttle_refusals_total",
                      "PSK-TLS handshakes refused by the back-off after repeated PSK failures.",
                      {"link"});
    declare_listener_metrics();
}

void DaemonMetrics::started(const std::string& key, FlowLabel flow, pb::SetupType setup,
                            Millis now) {
    registry_
        .counter("cpns_establishments_started_total",
                 {std::string(flow_label(flow)), std::string(setup_label(setup))})
        .inc();
    if (auto old = timings_.find(key); old != timings_.end()) order_.erase(old->second.order);
    if (timings_.size() >= kMaxTimedEstablishments && !order_.empty()) {
        timings_.erase(order_.begin()->second);
        order_.erase(order_.begin());
    }
    const std::uint64_t order = next_order_++;
    timings_[key] = Timing{flow, setup, now, now, order};
    order_[order] = key;
}

void DaemonMetrics::phase_done(const std::string& key, Phase p, Millis now) {
    auto it = timings_.find(key);
    if (it == timings_.end()) return;
    registry_
        .histogram("cpns_establishment_phase_seconds",
                   {std::string(flow_label(it->second.flow)), std::string(phase_label(p))})
        .observe(seconds(now - it->second.mark));
    it->second.mark = now;
}

void DaemonMetrics::finished(const std::string& key, bool success, pb::FailureReason reason,
                             Millis now) {
    Timing t;
    auto it = timings_.find(key);
    if (it != timings_.end()) t = it->second;
    const std::string flow(flow_label(t.flow)), outcome = success ? "success" : "failure";
    registry_
        .counter("cpns_establishments_finished_total",
                 {flow, std::string(setup_label(t.setup)), outcome,
                  pb::FailureReason_Name(success ? pb::REASON_NONE : reason)})
        .inc();
    if (it == timings_.end()) return;
    registry_.histogram("cpns_establishment_duration_seconds", {flow, outcome})
        .observe(seconds(now - t.started));
    order_.erase(t.order);
    timings_.erase(it);
}

FlowLabel DaemonMetrics::flow(const std::string& key) const {
    const auto it = timings_.find(key);
    return it == timings_.end() ? FlowLabel::kUnknown : it->second.flow;
}

void DaemonMetrics::finished(const std::string& key, const OutcomeEffect& o, Millis now) {
    finished(key, o.success, o.reason, now);
    for (const auto& p : o.pnes)
        registry_
            .counter("cpns_establishment_pnes_total",
                     {p.joined ? "joined" : "excluded",
                      pb::FailureReason_Name(p.joined ? pb::REASON_NONE : p.reason)})
            .inc();
}

void DaemonMetrics::gw_transition(const TransitionEffect& t, Millis now) {
    if (!t.subject.empty()) return;
    if (t.to == "wait_auth_request")
        phase_done(t.pn_id, Phase::kSetup, now);
    else if (t.to == "wait_registration")
        phase_done(t.pn_id, Phase::kServerAuthentication, now);
    else if (t.to == "done")
        phase_done(t.pn_id, Phase::kResultDelivery, now);
}

void DaemonMetrics::tls_handshake(std::string_view link, pb::FailureReason reason) {
    registry_
        .counter("cpns_tls_handshakes_total",
                 {std::string(link),
                  reason == pb::REASON_NONE ? std::string("ok") : pb::FailureReason_Name(reason)})
        .inc();
}

void DaemonMetrics::psk_throttled(std::string_view link) {
    registry_.counter("cpns_psk_throttle_refusals_total", {std::string(link)}).inc();
}

void DaemonMetrics::watch_listener(std::string_view name, const net::Listener& l) {
    listeners_.emplace_back(std::string(name), &l);
}

void DaemonMetrics::declare_listener_metrics() {
    using Sample = Registry::Sample;
    const auto each = [this](auto value) {
        return [this, value] {
            std::vector<Sample> out;
            for (const auto& [name, l] : listeners_) value(out, name, *l);
            return out;
        };
    };
    registry_.declare_sampled(
        "cpns_connections_open", "Connections open now, by listener.", {"listener"},
        each([](std::vector<Sample>& out, const std::string& name, const net::Listener& l) {
            out.push_back({{name}, static_cast<double>(l.open())});
        }));
    registry_.declare_sampled(
        "cpns_connections_accepted_total", "Connections accepted, by listener.", {"listener"},
        each([](std::vector<Sample>& out, const std::string& name, const net::Listener& l) {
            out.push_back({{name}, static_cast<double>(l.stats().accepted)});
        }),
        "counter");
    registry_.declare_sampled(
        "cpns_connections_refused_total",
        "Connections closed at once by a limit: total (the listener is full) or per_source.",
        {"listener", "limit"},
        each([](std::vector<Sample>& out, const std::string& name, const net::Listener& l) {
            out.push_back({{name, "total"}, static_cast<double>(l.stats().refused_full)});
            out.push_back(
                {{name, "per_source"}, static_cast<double>(l.stats().refused_per_source)});
        }),
        "counter");
    registry_.declare_sampled(
        "cpns_connections_evicted_total",
        "Connections not yet authenticated closed to make room for a new one, by listener.",
        {"listener"},
        each([](std::vector<Sample>& out, const std::string& name, const net::Listener& l) {
            out.push_back({{name}, static_cast<double>(l.stats().evicted)});
        }),
        "counter");
}

MetricsServer::MetricsServer(asio::io_context& io, Registry& registry)
    : io_(io),
      registry_(registry),
      listener_(io.get_executor(), {kMaxMetricsConnections, kMaxMetricsConnections}, hooks()) {}

net::Listener::Hooks MetricsServer::hooks() {
    net::Listener::Hooks hooks;
    hooks.on_socket = [this](asio::ip::tcp::socket socket, net::Listener::Slot slot) {
        asio::co_spawn(io_,
                       serve(std::make_shared<asio::ip::tcp::socket>(std::move(socket)),
                             std::make_shared<net::Listener::Slot>(std::move(slot))),
                       asio::detached);
    };
    hooks.on_refused = [](const std::string& source, net::Listener::Refusal, std::size_t open,
                          std::size_t count) {
        spdlog::warn("refused {} metrics connection(s) (last from {}): {} open (limit)", count,
                     source, open);
    };
    return hooks;
}

std::uint16_t MetricsServer::start(const net::HostPort& at) {
    const std::uint16_t port = listen_on(listener_, at, "--metrics");
    spdlog::info("metrics on http://{}:{}/metrics (Prometheus text format)", at.host, port);
    asio::co_spawn(io_, listener_.run(), asio::detached);
    return port;
}

namespace {
std::string http_answer(std::string_view status, std::string_view type, const std::string& body,
                        bool head_only) {
    std::string out = "HTTP/1.0 " + std::string(status) + "\r\nContent-Type: " + std::string(type) +
                      "\r\nContent-Length: " + std::to_string(body.size()) +
                      "\r\nConnection: close\r\n\r\n";
    if (!head_only) out += body;
    return out;
}
}  // namespace

std::string metrics_http_answer(std::string_view head, const Registry& registry) {
    const auto eol = head.find("\r\n");
    const std::string_view line = head.substr(0, eol == std::string_view::npos ? head.size() : eol);
    const auto sp1 = line.find(' ');
    const auto sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
    if (sp2 == std::string_view::npos || line.substr(sp2 + 1).rfind("HTTP/1.", 0) != 0)
        return http_answer("400 Bad Request", "text/plain", "bad request\n", false);
    const std::string_view method = line.substr(0, sp1);
    std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    target = target.substr(0, target.find('?'));
    if (method != "GET" && method != "HEAD")
        return http_answer("405 Method Not Allowed", "text/plain", "only GET /metrics\n", false);
    if (target != "/metrics")
        return http_answer("404 Not Found", "text/plain", "only GET /metrics\n", false);
    return http_answer("200 OK", "text/plain; version=0.0.4; charset=utf-8", registry.render(),
                       method == "HEAD");
}

// One request per connection, bounded in size (kMaxMetricsRequest) and time
// (kMetricsRequestTimeout, until the answer is written).
asio::awaitable<void> MetricsServer::serve(std::shared_ptr<asio::ip::tcp::socket> socket,
                                           std::shared_ptr<net::Listener::Slot> slot) {
    auto deadline = std::make_shared<asio::steady_timer>(io_);
    deadline->expires_after(std::chrono::milliseconds(kMetricsRequestTimeout));
    deadline->async_wait([socket](const std::error_code& ec) {
        std::error_code ignored;
        if (!ec) socket->close(ignored);
    });
    std::string head;
    std::error_code ec;
    co_await asio::async_read_until(*socket, asio::dynamic_buffer(head, kMaxMetricsRequest),
                                    "\r\n\r\n", asio::redirect_error(asio::use_awaitable, ec));
    if (ec && ec != asio::error::not_found) co_return;  // closed, timed out
    const std::string answer =
        ec ? http_answer("400 Bad Request", "text/plain", "request too long\n", false)
           : metrics_http_answer(head, registry_);
    slot->authenticated();
    co_await asio::async_write(*socket, asio::buffer(answer),
                               asio::redirect_error(asio::use_awaitable, ec));
    deadline->cancel();
    socket->shutdown(asio::ip::tcp::socket::shutdown_both, ec);
    socket->close(ec);
}

}  // namespace cpns::daemon
