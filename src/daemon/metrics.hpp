// Prometheus metrics of the daemons: counters, histograms and sampled gauges, written in the
// Prometheus text exposition format (version 0.0.4) and served on `--metrics ADDR:PORT` by a
// tiny HTTP/1.0 responder on the daemon's own event loop (GET /metrics only).
//
// Cost: a counter or histogram update is a relaxed atomic add, no lock. Labelled series are
// created on first use on the event-loop thread (the only thread that creates them); series
// the store thread updates are created before it starts. Label values are bounded by
// construction (flows, setup types, outcomes, the schema's failure-reason names, links,
// listeners) and each family holds at most kMaxSeriesPerFamily series: past that, new label
// sets are counted under the values "other". No label ever holds a device or PN ID.
//
// The metric list and what each means: docs/operations.md, "Monitoring".
#pragma once

#include <asio.hpp>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/role.hpp"
#include "net/address.hpp"
#include "net/listener.hpp"

namespace cpns::daemon {

// Series one family may hold (label sets past it are folded into "other").
inline constexpr std::size_t kMaxSeriesPerFamily = 512;
// The metrics endpoint: connections open at once (in total and from one address), the longest
// request head read, and how long a scraper may take to send it and read the answer.
inline constexpr std::size_t kMaxMetricsConnections = 8;
inline constexpr std::size_t kMaxMetricsRequest = 4096;
inline constexpr Millis kMetricsRequestTimeout = 5'000;
// Establishments whose start a daemon remembers to time them (the oldest is forgotten past it).
inline constexpr std::size_t kMaxTimedEstablishments = 10'000;

using Labels = std::vector<std::string>;

class Counter {
  public:
    void inc(std::uint64_t n = 1) { v_.fetch_add(n, std::memory_order_relaxed); }
    std::uint64_t value() const { return v_.load(std::memory_order_relaxed); }

  private:
    std::atomic<std::uint64_t> v_{0};
};

// Cumulative buckets with the given upper bounds (seconds, or a count); +Inf is implied.
class Histogram {
  public:
    explicit Histogram(std::vector<double> bounds);
    void observe(double v);
    std::uint64_t count() const { return count_.load(std::memory_order_relaxed); }
    double sum() const { return sum_.load(std::memory_order_relaxed); }
    const std::vector<double>& bounds() const { return bounds_; }
    // Observations <= bounds()[i] (cumulative); i == bounds().size() is +Inf.
    std::uint64_t cumulative(std::size_t i) const;

  private:
    std::vector<double> bounds_;
    std::unique_ptr<std::atomic<std::uint64_t>[]> buckets_;  // not cumulative
    std::atomic<std::uint64_t> count_{0};
    std::atomic<double> sum_{0.0};
};

// Bucket bounds: latencies of a step on loopback up to a slow store or a PNE at its timeout.
const std::vector<double>& latency_buckets();
// Store batch sizes (records per transaction).
const std::vector<double>& batch_buckets();

class Registry {
  public:
    struct Sample {
        Labels labels;
        double value = 0;
    };
    using Sampler = std::function<std::vector<Sample>()>;

    // The series of `name` with these label values (created on first use, event loop only).
    Counter& counter(const std::string& name, const Labels& values = {});
    Histogram& histogram(const std::string& name, const Labels& values = {});

    // Declarations (once, at start): name, help text, label names; histograms their buckets.
    void declare_counter(const std::string& name, const std::string& help, Labels label_names);
    void declare_histogram(const std::string& name, const std::string& help, Labels label_names,
                           std::vector<double> bounds);
    // A gauge (or counter, `type`) read when scraped: `read` returns its current samples.
    void declare_sampled(const std::string& name, const std::string& help, Labels label_names,
                         Sampler read, std::string_view type = "gauge");

    // The text exposition of every family, in declaration order.
    std::string render() const;

  private:
    struct Family {
        std::string name, help, type;
        Labels label_names;
        std::vector<double> bounds;
        std::map<Labels, std::unique_ptr<Counter>> counters;
        std::map<Labels, std::unique_ptr<Histogram>> histograms;
        Sampler sampler;
    };
    Family& family(const std::string& name, std::string_view type);
    Labels bounded(const Family& f, std::size_t series, const Labels& values) const;
    std::vector<std::unique_ptr<Family>> families_;
    std::map<std::string, Family*, std::less<>> by_name_;
};

// Escapes a label value for the exposition format (backslash, double quote, newline).
std::string escape_label_value(std::string_view v);
// The process_* metrics (RSS, virtual memory, open and maximum fds, CPU seconds, start time)
// from /proc/self, and cpns_build_info{version,openssl}.
void declare_process_metrics(Registry& r);
// The value of the --metrics option: "HOST:PORT", or a bare "PORT" meaning 127.0.0.1:PORT.
net::HostPort parse_metrics_address(const std::string& text, const std::string& what);

// What a daemon's establishment timer needs to know about one establishment.
enum class FlowLabel { kPneInitiated, kGwInitiated, kUnknown };
std::string_view flow_label(FlowLabel f);
std::string_view setup_label(pb::SetupType s);  // "one_to_one", "all", "invite_list", "none"
FlowLabel flow_of(pb::Flow f);

// The metrics every daemon exports about establishments and links, with the one-line calls
// the daemons make. Event-loop thread only.
class DaemonMetrics {
  public:
    enum class Phase { kSetup, kServerAuthentication, kResultDelivery };
    explicit DaemonMetrics(std::string_view daemon);
    DaemonMetrics(const DaemonMetrics&) = delete;  // its samplers refer to it
    DaemonMetrics& operator=(const DaemonMetrics&) = delete;
    Registry& registry() { return registry_; }

    // An establishment began (key: its PN ID, or the one session a PNE has).
    void started(const std::string& key, FlowLabel flow, pb::SetupType setup, Millis now);
    // Starts timing every establishment `fx` opened: a transition of a session (no subject) or
    // of the party itself (a PNE's own state) out of `idle_state`; key: its PN ID, or `key`.
    template <class Effects>
    void started_in(const Effects& fx, std::string_view idle_state, FlowLabel flow,
                    pb::SetupType setup, Millis now, const std::string& key = {}) {
        for (const auto& e : fx)
            if (const auto* t = std::get_if<TransitionEffect>(&e);
                t && (t->subject.empty() || t->subject == t->entity) && t->from == idle_state)
                started(key.empty() ? t->pn_id : key, flow, setup, now);
    }
    // `key` reached the end of phase `p` (the time since the previous mark is observed).
    void phase_done(const std::string& key, Phase p, Millis now);
    // An establishment ended: counted by flow, setup type, outcome and reason; its whole
    // duration observed when its start was seen.
    void finished(const std::string& key, bool success, pb::FailureReason reason, Millis now);
    // The same from a PN GW's or the server's outcome, which also counts its PNEs: joined, or
    // the reason each was left out (cpns_establishment_pnes_total).
    void finished(const std::string& key, const OutcomeEffect& o, Millis now);
    // The flow of the establishment `key` whose start was seen (kUnknown otherwise).
    FlowLabel flow(const std::string& key) const;
    // The PN GW: marks phases from its session transitions (none -> collect_joins starts,
    // wait_auth_request / wait_registration / done end the three phases).
    void gw_transition(const TransitionEffect& t, Millis now);
    // A PSK-TLS handshake on `link` ("pan" or "server") ended: reason REASON_NONE = ok.
    void tls_handshake(std::string_view link, pb::FailureReason reason);
    // A PSK-TLS handshake refused by the back-off after repeated failures.
    void psk_throttled(std::string_view link);
    // Connection counts of a listener ("pan", "server", "control", "metrics"), read at scrape.
    void watch_listener(std::string_view name, const net::Listener& l);

  private:
    struct Timing {
        FlowLabel flow = FlowLabel::kUnknown;
        pb::SetupType setup = pb::SETUP_UNSPECIFIED;
        Millis started = 0, mark = 0;
        std::uint64_t order = 0;
    };
    void declare_listener_metrics();
    Registry registry_;
    std::vector<std::pair<std::string, const net::Listener*>> listeners_;
    std::map<std::string, Timing> timings_;
    std::map<std::uint64_t, std::string> order_;  // oldest first, for the bound
    std::uint64_t next_order_ = 0;
};

// Serves GET /metrics (and HEAD) (the registry's text) on a loopback or configured address.
class MetricsServer {
  public:
    MetricsServer(asio::io_context& io, Registry& registry);
    // Binds (ConfigError naming --metrics if it cannot) and serves until close(); the port.
    std::uint16_t start(const net::HostPort& at);
    void close() { listener_.close(); }
    const net::Listener& listener() const { return listener_; }

  private:
    net::Listener::Hooks hooks();
    asio::awaitable<void> serve(std::shared_ptr<asio::ip::tcp::socket> socket,
                                std::shared_ptr<net::Listener::Slot> slot);
    asio::io_context& io_;
    Registry& registry_;
    net::Listener listener_;
};

// The answer to one HTTP request head (status line, headers, body), given the registry.
std::string metrics_http_answer(std::string_view request_head, const Registry& registry);

}  // namespace cpns::daemon
