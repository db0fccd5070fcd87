#include "links.hpp"

#include <sys/resource.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <vector>

#include "core/crypto.hpp"
#include "core/role.hpp"
#include "daemon/common.hpp"
#include "daemon/server_daemon.hpp"
#include "net/connection.hpp"

namespace cpns::load {

namespace {

using namespace cpns::daemon;

// Bounds of one `links` run.
constexpr int kMaxLinks = 100'000;
constexpr int kMaxConcurrency = 1'024;
constexpr int kMaxTimeLimitS = 3'600;
constexpr int kMaxHoldS = 3'600;
// One link's TCP connect, and then its handshake, may take this long each.
constexpr Millis kLinkConnectTimeout = 10'000;
constexpr Millis kLinkHandshakeTimeout = 10'000;
// Descriptors this process needs besides its links (standard streams, epoll, signals, files).
constexpr rlim_t kDescriptorHeadroom = 64;

struct Peer {
    std::string identity;
    SecretKey key;
};

// gw: the PN GWs of an entities file, with the PSK a cpns-server derives for each.
std::vector<Peer> gw_peers(const std::string& path) {
    MemoryDirectory dir;
    load_entities(path, dir);
    const Config c = Config::load(path);
    std::vector<Peer> peers;
    if (const auto* arr = c.table()["entity"].as_array())
        for (const auto& node : *arr) {
            const std::string id = (*node.as_table())["id"].value_or(std::string());
            const auto rec = dir.find(id);
            if (rec && rec->kind == EntityKind::kGw)
                peers.push_back({id, derive_gw_server_psk(rec->eukey, id)});
        }
    return peers;
}

// pne: the [[pne]] tables with a pre-assigned key (what a cpns-gw looks "pre:<pne>" up in).
std::vector<Peer> pne_peers(const std::string& path) {
    const Config c = Config::load(path);
    std::vector<Peer> peers;
    if (const auto* arr = c.table()["pne"].as_array())
        for (const auto& node : *arr) {
            const auto* t = node.as_table();
            if (!t) throw ConfigError(c.where("pne") + " entries must be tables");
            const std::string id = (*t)["id"].value_or(std::string());
            const std::string hex = (*t)["preassigned_key"].value_or(std::string());
            if (!valid_id(id) || hex.empty()) continue;
            peers.push_back({preassigned_identity(id), parse_key(hex, c.where("pne") + " " + id)});
        }
    return peers;
}

// Raises this process's descriptor limit to what `links` links need (up to the hard limit).
void raise_descriptor_limit(std::size_t links) {
    rlimit rl{};
    if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) throw std::runtime_error("getrlimit failed");
    const rlim_t need = static_cast<rlim_t>(links) + kDescriptorHeadroom;
    if (rl.rlim_cur >= need) return;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need)
        throw std::runtime_error("descriptor limit too low: " + std::to_string(links) +
                                 " links need " + std::to_string(need) +
                                 " descriptors, the hard limit is " + std::to_string(rl.rlim_max) +
                                 " (raise it: ulimit -Hn)");
    rl.rlim_cur = need;
    if (::setrlimit(RLIMIT_NOFILE, &rl) != 0) throw std::runtime_error("setrlimit failed");
    std::cerr << "cpns-load: descriptor limit raised to " << need << "\n";
}

class LinkRun {
  public:
    LinkRun(asio::io_context& io, const LinksOptions& o, std::vector<Peer> peers)
        : io_(io),
          opt_(o),
          peers_(std::move(peers)),
          to_(parse_address(o.to, "--to")),
          link_(o.as == "gw" ? net::PskLink::kGatewayToServer : net::PskLink::kPan),
          tls_([] {
              tls::TlsConfig tc;
              tc.role = tls::Role::kClient;
              tc.mode = tls::Mode::kTls13;
              return tc;
          }()),
          limit_(io),
          hold_(io) {}

    void start() {
        started_ = std::chrono::steady_clock::now();
        limit_.expires_after(std::chrono::seconds(opt_.time_limit_s));
        limit_.async_wait([this](const std::error_code& ec) {
            if (ec) return;
            if (!reported_) {
                timed_out_ = true;
                report();
            }
            io_.stop();
        });
        const auto workers =
            std::min<std::size_t>(static_cast<std::size_t>(opt_.concurrency), peers_.size());
        active_ = workers;
        for (std::size_t i = 0; i < workers; ++i) asio::co_spawn(io_, worker(), asio::detached);
        if (workers == 0) report();
    }

    void stop() {
        stopping_ = true;
        limit_.cancel();
        hold_.cancel();
        for (auto& c : conns_) c->close();
    }

    bool all_up() const { return !timed_out_ && up_ == peers_.size(); }

    // The last line: how many links the daemon ended while they were held.
    void print_end() const {
        std::cout << "{\"phase\":\"closed\",\"links\":" << peers_.size() << ",\"up\":" << up_
                  << ",\"lost\":" << lost_ << "}\n"
                  << std::flush;
    }

  private:
    asio::awaitable<void> worker() {
        while (next_ < peers_.size() && !stopping_) {
            const Peer& peer = peers_[next_++];
            co_await open(peer);
        }
        if (--active_ == 0 && !stopping_) report();
    }

    asio::awaitable<void> open(const Peer& peer) {
        auto socket = co_await net::connect_tcp(to_, kLinkConnectTimeout);
        if (const auto* error = net::error_of(socket)) {
            failed(*error);
            co_return;
        }
        auto conn =
            std::make_shared<net::Connection>(std::get<net::tcp::socket>(std::move(socket)));
        const tls::ClientPsk psk{peer.identity, peer.key};
        if (auto error = co_await conn->client_handshake(tls_, psk, kLinkHandshakeTimeout, link_)) {
            failed(*error);
            co_return;
        }
        ++up_;
        conns_.push_back(conn);
        asio::co_spawn(io_, hold(conn), asio::detached);
    }

    // Reads until the link ends: an idle link sees nothing until the daemon or stop() ends it.
    asio::awaitable<void> hold(std::shared_ptr<net::Connection> conn) {
        for (;;) {
            auto r = co_await conn->read();
            if (std::holds_alternative<pb::Envelope>(r)) continue;
            break;
        }
        if (!stopping_) ++lost_;
    }

    void failed(const net::LinkError& error) {
        ++failures_[std::string(reason_name(error.reason))];
        if (first_error_.empty()) first_error_ = error.detail;
    }

    // The first line: the links are up (or what failed); then they are held.
    void report() {
        reported_ = true;
        const double secs =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
        std::cout << "{\"phase\":\"up\",\"as\":\"" << opt_.as << "\",\"links\":" << peers_.size()
                  << ",\"up\":" << up_ << ",\"seconds\":" << secs << ",\"handshakes_per_second\":"
                  << (secs > 0 ? static_cast<double>(up_) / secs : 0)
                  << ",\"timed_out\":" << (timed_out_ ? "true" : "false") << ",\"failures\":{";
        bool first = true;
        for (const auto& [k, v] : failures_) {
            std::cout << (first ? "" : ",") << "\"" << k << "\":" << v;
            first = false;
        }
        std::cout << "}}\n" << std::flush;
        if (!first_error_.empty())
            std::cerr << "cpns-load: first failure: " << first_error_ << "\n";
        if (timed_out_) return;
        if (opt_.hold_s > 0) {
            hold_.expires_after(std::chrono::seconds(opt_.hold_s));
            hold_.async_wait([this](const std::error_code& ec) {
                if (!ec) io_.stop();
            });
        }
    }

    asio::io_context& io_;
    const LinksOptions& opt_;
    std::vector<Peer> peers_;
    net::HostPort to_;
    net::PskLink link_;
    const tls::TlsContext tls_;
    asio::steady_timer limit_, hold_;
    std::chrono::steady_clock::time_point started_;
    std::size_t next_ = 0, active_ = 0, up_ = 0, lost_ = 0;
    std::map<std::string, std::size_t> failures_;
    std::string first_error_;
    std::vector<std::shared_ptr<net::Connection>> conns_;
    bool reported_ = false, timed_out_ = false, stopping_ = false;
};

}  // namespace

CLI::App* add_links_command(CLI::App& app, LinksOptions& o) {
    auto* links = app.add_subcommand(
        "links",
        "open many PSK-TLS links to one daemon, hold them idle and report (JSON lines): as "
        "PN GWs to a cpns-server, or as PNEs to a cpns-gw PAN endpoint. Raises its own "
        "descriptor limit (RLIMIT_NOFILE) to what the links need.");
    links->add_option("--as", o.as, "gw (to a cpns-server) or pne (to a cpns-gw PAN endpoint)")
        ->check(CLI::IsMember({"gw", "pne"}));
    links
        ->add_option("--entities", o.entities,
                     "gw: an entities file (from 'provision'); pne: a file with [[pne]] tables "
                     "(from 'provision-pan')")
        ->required();
    links->add_option("--to", o.to, "the daemon's address host:port")->required();
    links->add_option("--count", o.count, "links to open (default: one per identity in the file)")
        ->check(CLI::Range(0, kMaxLinks));
    links->add_option("--concurrency", o.concurrency, "handshakes in flight at once (default 64)")
        ->check(CLI::Range(1, kMaxConcurrency));
    links
        ->add_option("--time-limit-s", o.time_limit_s,
                     "give up opening after this long (default 120)")
        ->check(CLI::Range(1, kMaxTimeLimitS));
    links
        ->add_option("--hold-s", o.hold_s,
                     "hold the links this long once up, then close them (default 0: until "
                     "SIGINT or SIGTERM)")
        ->check(CLI::Range(0, kMaxHoldS));
    links->add_option("--log-level", o.log_level, "log level (default warn)");
    return links;
}

CLI::App* add_provision_pan_command(CLI::App& app, int& pnes, std::string& out) {
    auto* prov = app.add_subcommand(
        "provision-pan",
        "write [[pne]] tables with pre-assigned keys, to append to a cpns-gw configuration "
        "(for 'links --as pne')");
    prov->add_option("--pnes", pnes, "PNEs")->check(CLI::Range(1, kMaxLinks));
    prov->add_option("--out", out, "file to write");
    return prov;
}

int provision_pan(int pnes, const std::string& out) {
    OsRandom rnd;
    std::ofstream f(out);
    // It holds keys: the owner's only, as the daemons require of such files.
    std::error_code ec;
    std::filesystem::permissions(
        out, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write, ec);
    for (int p = 1; p <= pnes; ++p) {
        char id[32];
        std::snprintf(id, sizeof id, "lpne-%05d", p);
        f << "[[pne]]\nid = \"" << id << "\"\npan_secure = false\npreassigned_key = \""
          << rnd.key().to_hex() << "\"\n\n";
    }
    f.close();
    if (!f) {
        std::cerr << "cpns-load: cannot write " << out << "\n";
        return 2;
    }
    std::cerr << "cpns-load: " << pnes << " PNE(s) with pre-assigned keys in " << out << "\n";
    return 0;
}

int run_links(const LinksOptions& o) {
    try {
        init_logging("load", o.log_level);
        auto peers = o.as == "gw" ? gw_peers(o.entities) : pne_peers(o.entities);
        if (o.count > 0) {
            if (static_cast<std::size_t>(o.count) > peers.size())
                throw ConfigError(o.entities + " has " + std::to_string(peers.size()) +
                                  " identities, fewer than --count " + std::to_string(o.count));
            peers.resize(static_cast<std::size_t>(o.count));
        }
        if (peers.size() > static_cast<std::size_t>(kMaxLinks))
            throw ConfigError("at most " + std::to_string(kMaxLinks) + " links");
        raise_descriptor_limit(peers.size());
        asio::io_context io;
        LinkRun run(io, o, std::move(peers));
        run.start();
        run_until_stopped(io, [&] { run.stop(); });
        run.print_end();
        return run.all_up() ? 0 : 1;
    } catch (const ConfigError& e) {
        std::cerr << "cpns-load: " << e.what() << "\n";
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "cpns-load: " << e.what() << "\n";
        return 2;
    }
}

}  // namespace cpns::load
