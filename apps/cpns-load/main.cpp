// cpns-load: drives many PN establishments against real CPNS Servers. Each simulated PN GW
// is the real Gateway role with a real TLS 1.3 PSK link to a server (round-robin over the
// servers given); its PNEs are real Pne roles on an in-process PAN (secure, so in clear).
// Used for capacity figures, the crash test and the multi-server test.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <deque>
#include <fstream>
#include <iostream>

#include "common/version.hpp"
#include "core/gateway.hpp"
#include "daemon/common.hpp"
#include "daemon/server_daemon.hpp"
#include "links.hpp"
#include "net/psk_client_link.hpp"

using namespace cpns;
using namespace cpns::daemon;

namespace {

// How long one PN GW keeps retrying its server link before giving up, and how often.
constexpr Millis kLoadConnectTimeout = 5'000;
constexpr Millis kLoadRetry = 200;
// --retries: what a failed establishment may be tried again for (a new PN ID each time): the
// server's store was unreachable or full, or the server was busy.
bool retryable(pb::FailureReason r) {
    return r == pb::STORE_UNAVAILABLE || r == pb::STORAGE_FULL || r == pb::BUSY;
}

// Retries: how many times an establishment may be tried again, and after how long.
struct RetryPolicy {
    int retries = 0;
    Millis delay = 500;
    Millis connect_timeout = kLoadConnectTimeout;  // --connect-timeout-ms: the server link
};

// --max-in-flight: establishments in progress at once over all PN GWs (0: no bound). The others
// wait their turn in the load generator, untimed: with every PN GW of a large fleet starting at
// once, the server's queue would otherwise hold them all and the latency measured would be the
// length of that queue.
class Pacer {
  public:
    explicit Pacer(std::size_t max) : max_(max) {}
    void start(std::function<void()> establish) {
        if (max_ == 0 || in_flight_ < max_) {
            ++in_flight_;
            establish();
        } else {
            waiting_.push_back(std::move(establish));
        }
    }
    void finished() {
        if (max_ == 0) return;
        if (waiting_.empty()) {
            --in_flight_;
            return;
        }
        auto next = std::move(waiting_.front());
        waiting_.pop_front();
        next();  // takes the slot just freed
    }

  private:
    std::size_t max_;
    std::size_t in_flight_ = 0;
    std::deque<std::function<void()>> waiting_;
};

struct Result {
    std::string gw_id, pn_id;
    bool success = false;
    pb::FailureReason reason = pb::REASON_NONE;
    Millis latency = 0;
    std::vector<std::string> members;
};

class LoadGw {
  public:
    LoadGw(asio::io_context& io, std::string id, SecretKey eukey,
           std::vector<std::pair<std::string, SecretKey>> pnes, net::HostPort server,
           const tls::TlsContext& tls, int pns, RetryPolicy retry, Pacer& pacer,
           std::function<void(const Result&)> report,
           std::function<void(pb::FailureReason)> retried)
        : io_(io),
          id_(std::move(id)),
          eukey_(eukey),
          server_(std::move(server)),
          tls_(tls),
          pns_left_(pns),
          retry_(retry),
          pacer_(pacer),
          report_(std::move(report)),
          retried_(std::move(retried)),
          retry_timer_(io),
          gw_timer_(io.get_executor(), [this](Millis now) { apply_gw(gw_->on_timer(now)); }) {
        GatewayConfig gc;
        gc.gw_id = id_;
        gc.eukey = eukey;
        gc.default_pan_secure = true;
        gc.capabilities.set_device_type("load-gw");
        gw_ = std::make_unique<Gateway>(std::move(gc), random_);
        for (auto& [pid, key] : pnes) {
            PneConfig pc;
            pc.pne_id = pid;
            pc.eukey = key;
            pc.pan_secure = true;
            pc.capabilities.set_device_type("load-pne");
            pc.capabilities.set_enough_ui(true);
            auto pne = std::make_unique<Pne>(std::move(pc), random_);
            auto* raw = pne.get();
            timers_.emplace(pid,
                            std::make_unique<RoleTimer>(io.get_executor(), [this, raw](Millis now) {
                                apply_pne(*raw, raw->on_timer(now));
                            }));
            pnes_.emplace(pid, std::move(pne));
        }
    }

    // Connects (retrying until --connect-timeout-ms), then establishes its PNs one after the
    // other; what cannot be established is counted as unreachable. A link lost while PNs are
    // left is brought up again, as a PN GW does (the establishment in progress fails).
    asio::awaitable<void> run() {
        connect_until_ = mono_now() + retry_.connect_timeout;
        net::PskClientLink::Options o;
        o.server = server_;
        o.psk = tls::ClientPsk{id_, derive_gw_server_psk(eukey_, id_)};
        o.retry_min = o.retry_max = kLoadRetry;
        net::PskClientLink::Hooks h;
        h.on_up = [this](const std::shared_ptr<net::Connection>& c) {
            conn_ = c;
            asio::co_spawn(io_, start(), asio::detached);
        };
        h.on_message = [this](const pb::Envelope& env) {
            apply_gw(gw_->on_message("cpns-server", env, Protection::kTls, mono_now()));
        };
        h.on_down = [this](const net::LinkError&, net::PskClientLink::Stage stage) {
            if (stage == net::PskClientLink::Stage::kLost) {
                conn_.reset();
                apply_gw(gw_->on_link_down("cpns-server", mono_now()));
                if (pns_left_ <= 0) return false;
                // E.g. the server's handshake timeout ran out just as this side completed
                // it, when thousands of PN GWs connect at once.
                connect_until_ = mono_now() + retry_.connect_timeout;
                return true;
            }
            if (mono_now() <= connect_until_) return true;
            // Establishments not started yet cannot be: count them as unreachable.
            while (pns_left_ > 0) {
                --pns_left_;
                report_(Result{id_, "", false, pb::PEER_UNREACHABLE, 0, {}});
            }
            return false;
        };
        link_ = std::make_unique<net::PskClientLink>(io_.get_executor(), tls_, o, h);
        co_await link_->run();
    }

    void stop() {
        if (link_) link_->stop();
        gw_timer_.cancel();
        retry_timer_.cancel();
        for (auto& [id, t] : timers_) t->cancel();
    }

  private:
    asio::awaitable<void> start() {
        apply_gw(gw_->discover(mono_now()));
        // Every PNE answers discovery before the first invitation ('All' = every PNE known).
        for (int i = 0; i < 200 && gw_->neighbours().size() < pnes_.size(); ++i) {
            asio::steady_timer t(io_, std::chrono::milliseconds(10));
            co_await t.async_wait(asio::use_awaitable);
        }
        next();
    }

    void next() {
        if (pns_left_ <= 0) {
            if (conn_) conn_->close();
            return;
        }
        if (!conn_) return;  // the link is down: on_up starts the next one
        --pns_left_;
        pacer_.start([this] {
            started_ = mono_now();
            tries_left_ = retry_.retries;
            // Wait a turn so that discovery answers are in before the first invitation.
            asio::post(io_, [this] { apply_gw(gw_->invite({}, mono_now())); });
        });
    }

    void apply_gw(GatewayEffects fx) {
        for (auto& e : fx)
            std::visit(
                Overloaded{
                    [&](const SendEffect& s) { gw_send(s); },
                    [&](const OutcomeEffect& o) {
                        if (!o.success && retryable(o.reason) && tries_left_ > 0) {
                            --tries_left_;
                            retried_(o.reason);
                            retry_timer_.expires_after(std::chrono::milliseconds(retry_.delay));
                            retry_timer_.async_wait([this](const std::error_code& ec) {
                                if (!ec) apply_gw(gw_->invite({}, mono_now()));
                            });
                            return;
                        }
                        Result r{id_, o.pn_id, o.success, o.reason, mono_now() - started_, {}};
                        for (const auto& m : o.inventory.members()) r.members.push_back(m.pne_id());
                        pacer_.finished();
                        report_(r);
                        next();
                    },
                    // The simulated PAN has no TLS links to close; state stays in memory.
                    [&](const CloseLinkEffect&) {},
                    [&](const StoreInventoryEffect&) {},
                    [&](const StoreLocalKeyEffect&) {},
                    [&](const TransitionEffect&) {},
                },
                e);
        gw_timer_.arm(gw_->next_deadline());
    }

    void gw_send(const SendEffect& s) {
        if (s.to != "cpns-server") return deliver_to_pnes(s.to, s.msg);
        if (!conn_ || !conn_->send(s.msg))
            asio::post(io_, [this] { apply_gw(gw_->on_link_down("cpns-server", mono_now())); });
    }

    void deliver_to_pnes(const std::string& to, const pb::Envelope& msg) {
        auto env = std::make_shared<pb::Envelope>(msg);
        env->set_version(kProtocolVersion);
        for (auto& [pid, pne] : pnes_) {
            if (to != "*" && to != pid) continue;
            Pne* raw = pne.get();
            asio::post(io_, [this, raw, env] {
                apply_pne(*raw, raw->on_message(id_, *env, Protection::kClear, mono_now()));
            });
        }
    }

    void apply_pne(Pne& pne, PneEffects fx) {
        for (auto& e : fx)
            std::visit(Overloaded{
                           [&](const SendEffect& s) { pne_send(pne, s); },
                           // The load PNEs sit on a PAN configured secure: a TLS request is a
                           // configuration error, ended at once rather than left to time out.
                           [&](const StartTlsEffect& t) {
                               Pne* raw = &pne;
                               const std::string peer = t.peer;
                               asio::post(io_, [this, raw, peer] {
                                   apply_pne(*raw, raw->on_tls_failed(peer, mono_now()));
                               });
                           },
                           [&](const StoreLocalKeyEffect&) {}, [&](const SessionKeyEffect&) {},
                           [&](const OutcomeEffect&) {},  // counted at the PN GW
                           [&](const TransitionEffect&) {},
                           [&](const MembershipEffect&) {},  // no lifecycle under load
                       },
                       e);
        timers_.at(pne.id())->arm(pne.next_deadline());
    }

    void pne_send(const Pne& pne, const SendEffect& s) {
        auto env = std::make_shared<pb::Envelope>(s.msg);
        env->set_version(kProtocolVersion);
        const std::string from = pne.id();
        asio::post(io_, [this, env, from] {
            apply_gw(gw_->on_message(from, *env, Protection::kClear, mono_now()));
        });
    }

    asio::io_context& io_;
    std::string id_;
    SecretKey eukey_;
    net::HostPort server_;
    const tls::TlsContext& tls_;
    int pns_left_;
    RetryPolicy retry_;
    Pacer& pacer_;
    int tries_left_ = 0;
    std::function<void(const Result&)> report_;
    std::function<void(pb::FailureReason)> retried_;
    asio::steady_timer retry_timer_;
    OsRandom random_;
    std::unique_ptr<Gateway> gw_;
    std::map<std::string, std::unique_ptr<Pne>> pnes_;
    std::map<std::string, std::unique_ptr<RoleTimer>> timers_;
    RoleTimer gw_timer_;
    std::shared_ptr<net::Connection> conn_;
    std::unique_ptr<net::PskClientLink> link_;
    Millis connect_until_ = 0;
    Millis started_ = 0;
};

int provision(int gws, int pnes, const std::string& out) {
    OsRandom rnd;
    std::ofstream f(out);
    for (int g = 1; g <= gws; ++g) {
        char gid[32];
        std::snprintf(gid, sizeof gid, "lgw-%04d", g);
        f << "[[entity]]\nid = \"" << gid << "\"\nkind = \"" << to_string(EntityKind::kGw)
          << "\"\neukey = \"" << rnd.key().to_hex() << "\"\n\n";
        for (int p = 1; p <= pnes; ++p)
            f << "[[entity]]\nid = \"" << gid << "-p" << p << "\"\nkind = \""
              << to_string(EntityKind::kPne) << "\"\neukey = \"" << rnd.key().to_hex() << "\"\n\n";
    }
    f.close();
    if (!f) {
        std::cerr << "cpns-load: cannot write " << out << "\n";
        return 2;
    }
    std::cerr << "cpns-load: provisioned " << gws << " PN GW(s) with " << pnes << " PNE(s) each in "
              << out << "\n";
    return 0;
}

// The PN GWs of a load run and, for each, its PNEs.
struct Fleet {
    std::map<std::string, SecretKey> gw_keys;
    std::map<std::string, std::vector<std::pair<std::string, SecretKey>>> groups;
};

// The PN GWs of the entities files and, for each, its PNEs ("<gw>-p<n>"). Several files: one
// is bounded by kMaxConfigFileBytes (about 8,000 entities), so a large fleet comes in parts.
Fleet read_fleet(const std::vector<std::string>& files) {
    MemoryDirectory dir;
    std::vector<std::string> ids;
    for (const auto& entities : files) {
        MemoryDirectory part;
        load_entities(entities, part);
        const Config ec = Config::load(entities);
        for (const auto& node : *ec.table()["entity"].as_array()) {
            const std::string id = (*node.as_table())["id"].value_or(std::string());
            if (dir.find(id)) throw ConfigError(entities + ": entity " + id + " is listed twice");
            dir.add(id, *part.find(id));
            ids.push_back(id);
        }
    }
    Fleet fleet;
    for (const auto& id : ids) {
        const auto rec = dir.find(id);
        if (rec->kind == EntityKind::kGw) fleet.gw_keys[id] = rec->eukey;
    }
    for (const auto& id : ids) {
        const auto rec = dir.find(id);
        if (rec->kind != EntityKind::kPne) continue;
        const auto dash = id.rfind('-');
        if (dash != std::string::npos && fleet.gw_keys.count(id.substr(0, dash)))
            fleet.groups[id.substr(0, dash)].emplace_back(id, rec->eukey);
    }
    return fleet;
}

// One acknowledged PN as a JSON line, written at once (the crash test reads it).
void append_acked(std::ofstream& out, const Result& r) {
    out << "{\"gw_id\":\"" << r.gw_id << "\",\"pn_id\":\"" << r.pn_id << "\",\"members\":[";
    for (std::size_t i = 0; i < r.members.size(); ++i)
        out << (i ? "," : "") << "\"" << r.members[i] << "\"";
    out << "]}\n";
    out.flush();
}

// --latency-out: the latency of every registered PN in ms, one per line, in finishing order.
bool write_latencies(const std::string& path, const std::vector<Result>& results) {
    std::ofstream f(path);
    for (const auto& r : results)
        if (r.success) f << r.latency << "\n";
    f.close();
    if (!f) std::cerr << "cpns-load: cannot write " << path << "\n";
    return static_cast<bool>(f);
}

// Prints the run's JSON summary; returns how many PNs were registered.
std::size_t print_summary(const std::vector<Result>& results, std::size_t gateways,
                          std::size_t expected, double secs,
                          const std::map<std::string, std::size_t>& retried) {
    std::map<std::string, std::size_t> failures;
    std::vector<Millis> lat;
    std::size_t ok = 0;
    for (const auto& r : results) {
        if (r.success) {
            ++ok;
            lat.push_back(r.latency);
        } else {
            ++failures[std::string(reason_name(r.reason))];
        }
    }
    std::sort(lat.begin(), lat.end());
    auto pct = [&](double p) {
        return lat.empty()
                   ? 0
                   : lat[std::min(lat.size() - 1,
                                  static_cast<std::size_t>(p * static_cast<double>(lat.size())))];
    };
    std::cout << "{\"gateways\":" << gateways << ",\"attempted\":" << expected
              << ",\"finished\":" << results.size() << ",\"registered\":" << ok
              << ",\"seconds\":" << secs
              << ",\"pns_per_second\":" << (secs > 0 ? static_cast<double>(ok) / secs : 0)
              << ",\"latency_ms\":{\"p50\":" << pct(0.5) << ",\"p95\":" << pct(0.95)
              << ",\"p99\":" << pct(0.99) << "},\"failures\":{";
    bool first = true;
    for (const auto& [k, v] : failures) {
        std::cout << (first ? "" : ",") << "\"" << k << "\":" << v;
        first = false;
    }
    // Attempts that failed and were tried again (--retries), by reason.
    std::size_t retries = 0;
    std::cout << "},\"retried\":{";
    first = true;
    for (const auto& [k, v] : retried) {
        std::cout << (first ? "" : ",") << "\"" << k << "\":" << v;
        first = false;
        retries += v;
    }
    std::cout << "},\"retries\":" << retries << "}\n";
    return ok;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{
        "cpns-load: many concurrent PN establishments (PN GW initiated, 'All') against "
        "real cpns-server instances, for capacity figures and crash/scale-out tests."};
    app.require_subcommand(1);
    auto* prov = app.add_subcommand("provision", "write an entities file for a load run");
    int gws = 10, pnes = 2, pns = 1;
    std::string out = "load-entities.toml";
    prov->add_option("--gws", gws, "PN GWs")->check(CLI::Range(1, 100000));
    prov->add_option("--pnes-per-gw", pnes, "PNEs per PN GW")->check(CLI::Range(1, 63));
    prov->add_option("--out", out, "entities file to write");
    auto* run = app.add_subcommand("run", "run the load and print a JSON summary");
    std::string servers, acked, latency_out, log_level = "warn";
    std::vector<std::string> entities;
    run->add_option("--entities", entities,
                    "entities file (from 'provision'); several: repeat it or separate with commas")
        ->required()
        ->delimiter(',');
    run->add_option("--servers", servers, "server addresses host:port[,host:port...]")->required();
    run->add_option("--pns-per-gw", pns, "PNs each PN GW establishes, one after the other")
        ->check(CLI::Range(1, 100000));
    run->add_option("--acked", acked, "append each acknowledged PN here as a JSON line, at once");
    run->add_option("--latency-out", latency_out,
                    "write the latency of every registered PN here, in ms, one per line "
                    "(in the order they finished)");
    run->add_option("--log-level", log_level, "log level of the roles (default warn)");
    RetryPolicy retry;
    run->add_option("--retries", retry.retries,
                    "try an establishment that failed with 'store unavailable', 'storage full' "
                    "or 'busy' again, up to this many times (a new PN ID each time; default 0)")
        ->check(CLI::Range(0, 1000));
    run->add_option("--retry-delay-ms", retry.delay, "wait this long before a retry (default 500)")
        ->check(CLI::Range(0, 60'000));
    load::LinksOptions links_options;  // links.cpp: idle PSK-TLS links for rows e and f
    auto* links = load::add_links_command(app, links_options);
    int pan_pnes = 100;
    std::string pan_out = "load-pan.toml";
    auto* prov_pan = load::add_provision_pan_command(app, pan_pnes, pan_out);
    run->add_option("--connect-timeout-ms", retry.connect_timeout,
                    "how long each PN GW keeps trying to bring its server link up (default "
                    "5000; thousands of PN GWs handshaking at once need longer)")
        ->check(CLI::Range(1, 3'600'000));
    std::size_t max_in_flight = 0;
    run->add_option("--max-in-flight", max_in_flight,
                    "establishments in progress at once over all PN GWs; the others wait their "
                    "turn, untimed (default 0: no bound)")
        ->check(CLI::Range(0, 1'000'000));
    app.set_version_flag("--version", cpns::version_text("cpns-load"),
                         "print the version and the OpenSSL version, and exit");
    CLI11_PARSE(app, argc, argv);
    if (*prov) return provision(gws, pnes, out);
    if (*prov_pan) return load::provision_pan(pan_pnes, pan_out);
    if (*links) return load::run_links(links_options);

    try {
        init_logging("load", log_level);
        Fleet fleet = read_fleet(entities);
        const auto& gw_keys = fleet.gw_keys;
        auto& groups = fleet.groups;
        std::vector<net::HostPort> addrs;
        std::stringstream ss(servers);
        for (std::string a; std::getline(ss, a, ',');)
            addrs.push_back(parse_address(a, "--servers"));

        asio::io_context io;
        tls::TlsConfig tc;
        tc.role = tls::Role::kClient;
        const tls::TlsContext tls(tc);
        std::ofstream acked_out;
        if (!acked.empty()) acked_out.open(acked, std::ios::app);
        std::vector<Result> results;
        std::size_t expected = gw_keys.size() * static_cast<std::size_t>(pns);
        std::vector<std::unique_ptr<LoadGw>> loads;
        Pacer pacer(max_in_flight);
        std::map<std::string, std::size_t> retried;
        auto count_retry = [&](pb::FailureReason r) { ++retried[std::string(reason_name(r))]; };
        const auto t0 = std::chrono::steady_clock::now();
        auto report = [&](const Result& r) {
            results.push_back(r);
            if (r.success && acked_out) append_acked(acked_out, r);
            if (results.size() == expected) io.stop();
        };
        std::size_t i = 0;
        for (const auto& [gid, key] : gw_keys) {
            loads.push_back(std::make_unique<LoadGw>(io, gid, key, groups[gid],
                                                     addrs[i++ % addrs.size()], tls, pns, retry,
                                                     pacer, report, count_retry));
            asio::co_spawn(io, loads.back()->run(), asio::detached);
        }
        run_until_stopped(io, [&] {
            for (auto& l : loads) l->stop();
        });
        const double secs =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const std::size_t ok = print_summary(results, gw_keys.size(), expected, secs, retried);
        if (!latency_out.empty() && !write_latencies(latency_out, results)) return 2;
        return ok == expected ? 0 : 1;
    } catch (const std::exception& e) {
        std::cerr << "cpns-load: " << e.what() << "\n";
        return 2;
    }
}
