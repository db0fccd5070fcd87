// cpns-pne: the PNE role. Finds its PN GW (configured address or UDP multicast discovery),
// keeps a PAN link to it (in clear on a secure PAN, PSK-TLS with the pre-assigned key for a
// PNE without UI on an insecure PAN, and PSK-TLS with the LocalEUKey once one is assigned),
// answers invitations, and can start a PN itself.
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "core/pne.hpp"
#include "daemon/common.hpp"
#include "daemon/metrics.hpp"
#include "daemon/state_file.hpp"
#include "daemon/trace.hpp"
#include "net/connection.hpp"
#include "net/discovery.hpp"
#include "net/listener.hpp"

namespace cpns::daemon {

inline constexpr Millis kDiscoveryTimeout = 10'000;    // finding a PN GW by multicast
inline constexpr Millis kDiscoveryRepeat = 1'000;      // re-send the request this often
inline constexpr Millis kGatewayHelloTimeout = 5'000;  // the PN GW answers discovery on the link
inline constexpr Millis kPneReconnectDelay = 2'000;    // run mode: retry a lost PAN link
// The optional local control endpoint (`control_listen`): connections open at once (in all and
// per source), the longest request line, and how long a connection may take to send it.
inline constexpr std::size_t kMaxPneControlConnections = 8;
inline constexpr std::size_t kMaxPneControlLine = 256;
inline constexpr Millis kPneControlIdleTimeout = 10'000;

// The PNE role's configuration (its ID, keys, capabilities - enough_ui among them -, PAN
// security, contents) and what the daemon around it needs.
struct PneOptions {
    PneConfig role;
    std::optional<net::HostPort> gw;  // none: discover by multicast
    DeviceOptions device;             // state_file: memberships, LocalEUKeys, SK_PNE
    // Where to answer "neighbours" for operators (none: no control endpoint). `cpns-pne run`
    // sets it (control_address_from: a Unix socket by default); a TCP endpoint needs
    // control_token.
    std::optional<ControlAddress> control;
    std::optional<SecretKey> control_token;
};

PneOptions pne_options_from(const Config& c);

// What the caller wants from the process.
struct PneTask {
    enum class Kind { kRun, kSetup, kLeave } kind = Kind::kRun;
    pb::SetupType setup_type = pb::SETUP_ALL;
    std::vector<std::string> invited;
    std::string pn_id;  // kLeave
};

class PneDaemon {
  public:
    PneDaemon(asio::io_context& io, PneOptions options, PneTask task);
    void start();
    void stop();
    std::uint16_t control_port() const { return control_port_; }
    std::uint16_t metrics_port() const { return metrics_port_; }
    // kSetup: the outcome, once known. Exit status 0 iff success.
    const std::optional<OutcomeEffect>& result() const { return result_; }
    // Set when the process could not even start an establishment (no PN GW, TLS refused).
    const std::optional<OutcomeEffect>& early_failure() const { return early_; }

  private:
    struct Link {
        std::shared_ptr<net::Connection> conn;
        std::string identity;  // TLS identity, empty for a clear link
    };
    asio::awaitable<void> main();
    asio::awaitable<std::optional<net::HostPort>> discover_gateway();
    // Opens a PAN link to the PN GW (PSK-TLS when `psk` is set): nullopt, or why it failed.
    asio::awaitable<std::optional<net::LinkError>> open_link(const std::string& identity,
                                                             const SecretKey* psk);
    asio::awaitable<void> read_link(std::shared_ptr<net::Connection> conn);
    asio::awaitable<void> start_tls(std::shared_ptr<const StartTlsEffect> eff);
    void apply(PneEffects effects);
    void carry_out();
    void carry_out(PneEffect& effect);
    void state_saved(const std::string& pn_id, const std::string& error);
    void to_role(const std::string& from, const pb::Envelope& env, Protection protection,
                 const Origin& origin = {});
    void send_effect(const SendEffect& s);
    void outcome_effect(const OutcomeEffect& o);
    void fail_early(pb::FailureReason reason, const std::string& detail);
    net::Listener::Hooks control_hooks();
    using ControlSocket = asio::generic::stream_protocol::socket;
    void control_accepted(std::shared_ptr<ControlSocket> sock, net::Listener::Slot slot,
                          std::string peer);
    asio::awaitable<void> control_serve(std::shared_ptr<ControlSocket> socket,
                                        std::shared_ptr<net::Listener::Slot> slot,
                                        std::string peer);
    void finish();

    asio::io_context& io_;
    PneOptions opt_;
    PneTask task_;
    OsRandom random_;
    std::unique_ptr<Pne> pne_;
    std::unique_ptr<RoleTrace> trace_;
    std::optional<tls::TlsContext> tls_;
    RoleTimer timer_;
    net::HostPort gw_addr_;
    std::string gw_id_;
    std::vector<Link> links_;
    std::optional<OutcomeEffect> result_, early_;
    bool setup_started_ = false;  // the one-shot task (setup, leave) has been started
    void save_state(const std::string& pn_id);
    bool stopping_ = false;
    asio::steady_timer wait_;
    std::unique_ptr<StateWriter> state_;
    // Effects held back, in order, while a saved membership is not yet durable: the PNE
    // reports a joined PN (its outcome, the exit status of `setup`) only once it is on disk.
    std::deque<PneEffect> held_;
    bool saving_ = false;
    net::Listener control_listener_;
    std::uint16_t control_port_ = 0, metrics_port_ = 0;
    DaemonMetrics metrics_{"PNE"};  // Prometheus metrics (--metrics)
    MetricsServer metrics_server_{io_, metrics_.registry()};
    // Control connections being served (at most kMaxPneControlConnections), closed at stop().
    std::map<const ControlSocket*, std::weak_ptr<ControlSocket>> control_sockets_;
    RefusalLog control_refusals_;  // requests without the right token
};

}  // namespace cpns::daemon
