// cpns-server: the CPNS Server role behind a PSK-TLS listener for PN GWs.
#pragma once

#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "core/server.hpp"
#include "core/throttle.hpp"
#include "daemon/common.hpp"
#include "daemon/event_hub.hpp"
#include "daemon/metrics.hpp"
#include "daemon/trace.hpp"
#include "net/connection.hpp"
#include "net/listener.hpp"
#include "store/store.hpp"

namespace cpns::daemon {

// How long a PN GW has to complete its TLS handshake.
inline constexpr Millis kGwHandshakeTimeout = 10'000;
// Connections from PN GWs open at once: the default of `max_connections`, and the most that
// key may say (each link is a descriptor and about 16 KiB of memory; docs/benchmarks.md row f).
inline constexpr std::size_t kMaxGwConnections = 10'000;
inline constexpr std::size_t kMaxGwConnectionsLimit = 100'000;
// Default of `max_connections_per_source`: connections open at once from one IP address (a
// tenth of kMaxGwConnections, so one source cannot fill the server).
inline constexpr std::size_t kDefaultGwConnectionsPerSource = 1'000;
// How often the PN GW records (for the TLS PSK lookup) are re-read from the store, so that
// provisioning, disabling and revoking reach a running server.
inline constexpr Millis kGwDirectoryRefresh = 2'000;
// How often a server reads its store's change log (revocations and disablings to push to the
// PN GWs, PNs deleted by the operator): a revocation takes effect within about this long.
inline constexpr Millis kChangeLogPoll = 200;
// A re-key order (cpnsctl rekey) in the change log is sent to its PN GW only this soon after it
// was written (cpnsctl waits kRekeyWaitTimeout for its outcome).
inline constexpr std::int64_t kRekeyOrderMaxAge = 30'000;
inline constexpr std::size_t kChangeLogBatch = 256;  // change-log rows read per poll
// Rows re-read behind the newest seen (PostgreSQL can make a row visible after a later one),
// and rows replayed at start (what happened while this server was down; replays are harmless).
inline constexpr std::int64_t kChangeLogWindow = 64;
inline constexpr std::int64_t kChangeLogStartReplay = 1'024;
// Store jobs queued at once; past this a registration is refused with "busy".
inline constexpr std::size_t kMaxStoreQueue = 10'000;
// PN GW IDs looked up at once after TLS cache misses (unknown identities cannot queue more).
inline constexpr std::size_t kMaxPendingLookups = 256;
// A registration whose store connection broke (kUnavailable) is tried this many times in all,
// the next attempt on a new connection (the PostgreSQL backend reconnects at once after a
// loss, then backs off). A retry that finds the PN already stored with exactly this content
// counts it as registered: the broken attempt had committed before its answer was lost.
inline constexpr int kPersistAttempts = 2;
// Group commit: registrations that arrive while a commit is in progress wait, and the next
// commit takes all of them at once (Store::register_pns, one transaction), at most this many.
// Each is still answered only after its own commit. A group that fails as a whole is tried
// again one registration at a time, so that each gets its own result.
inline constexpr std::size_t kMaxCommitGroup = 256;
// Registrations answered STORE_UNAVAILABLE whose COMMIT may have happened anyway (the
// connection broke during it, e.g. the primary died after the standby had the commit) are
// kept, at most this many (the oldest dropped), and withdrawn from the store when it is back,
// so that the store holds exactly the PNs the PN GWs were told are registered.
inline constexpr std::size_t kMaxUnacknowledged = 10'000;
// The status port (control_listen; off unless configured): connections open at once, the
// longest request line, and how long a connection may take to send it.
inline constexpr std::size_t kMaxServerControlConnections = 16;
inline constexpr std::size_t kMaxServerControlLine = 256;
inline constexpr Millis kServerControlTimeout = 5'000;

// The store URL with any password replaced, for logs.
std::string redact_url(const std::string& url);

// The CPNS Server role's configuration (its ID; the clock and log are set by the daemon) and
// what the daemon around it needs.
struct ServerOptions {
    ServerConfig role;
    net::HostPort listen{"127.0.0.1", 7000};
    // The store: "sqlite:PATH" (default; $CPNS_STORE overrides the default) or a PostgreSQL URL.
    std::string store = "sqlite:cpns-server.db";
    std::string master_key_file;  // else $CPNS_MASTER_KEY
    std::string entities_file;  // optional: [[entity]] entries added at start (existing ones kept)
    std::string keylog;
    std::string ready_file;
    std::string trace_file;  // JSON-lines event trace; "" = off
    // Loopback status port answering "status" with one JSON line (ready, store health);
    // nullopt = off.
    std::optional<net::HostPort> control_listen;
    // PN GW connections open at once (`max_connections`), and from one IP address
    // (`max_connections_per_source`, at most max_connections).
    std::size_t max_connections = kMaxGwConnections;
    std::size_t max_connections_per_source = kDefaultGwConnectionsPerSource;
    std::string crash_at;                  // --crash-at (daemon/trace.hpp); "" = none
    std::optional<net::HostPort> metrics;  // --metrics: Prometheus endpoint; nullopt = off
    // For the management API (src/api/), when it runs: establishment outcomes and lifecycle
    // changes are published to `events`, readiness to `readiness`. Null: not published.
    std::shared_ptr<EventHub> events;
    std::shared_ptr<Readiness> readiness;
};
// How often the server counts the PNs and entities in its store for its gauges (a registration
// adds to the PN count at once; the count corrects it, e.g. after deletions).
inline constexpr Millis kInventoryCountInterval = 30'000;

// The store as the event loop sees it, from the outcome of each store job.
struct StoreHealth {
    bool reachable = true;  // false from a job failing with kUnavailable to the next success
    bool full = false;      // a write refused for lack of space, until a write succeeds
    std::uint64_t unavailable = 0, full_errors = 0, other_errors = 0;  // failed jobs, by kind
    std::uint64_t retries = 0;        // registrations tried again on a new connection
    std::uint64_t withdrawn = 0;      // committed but answered "store unavailable", then removed
    std::uint64_t group_commits = 0;  // group commits that succeeded as one transaction
    std::uint64_t grouped_pns = 0;    // registrations they carried (mean group size: the ratio)
    Millis down_since = 0;            // mono_now() when reachable became false
};

// The failure reason a PN GW gets for a store failure of `kind`.
pb::FailureReason store_failure_reason(store::StoreError::Kind kind);

// Loads a provisioning file into a directory. ConfigError on any bad entry.
void load_entities(const std::string& path, MemoryDirectory& dir);
// The same file as store records (cpnsctl import, and the server's entities_file).
std::vector<store::StoredEntity> read_entities(const std::string& path);

// What the core reads synchronously: a cache in front of the store, filled by the store
// worker before a message reaches the core (so the event loop never waits on the database).
class CachedDirectory final : public Directory {
  public:
    std::optional<EntityRecord> find(const std::string& id) const override;
    bool pn_registered(const std::string&, const std::string&) const override { return false; }
    void put(const std::string& id, std::optional<EntityRecord> rec);
    std::size_t size() const { return entries_.size(); }

  private:
    std::map<std::string, std::optional<EntityRecord>> entries_;
};

class ServerDaemon {
  public:
    ServerDaemon(asio::io_context& io, ServerOptions options);
    void start();  // binds and listens; ConfigError if it cannot
    void stop();
    // Configuration reload: the per-source connection bound, and the entities file read again
    // (`entities`, already checked; "" = none): entities the store does not know yet are added
    // on the store thread, as at start.
    void reload(std::size_t max_connections_per_source, const std::string& entities);
    std::uint16_t port() const { return port_; }
    std::uint16_t control_port() const { return control_port_; }
    std::uint16_t metrics_port() const { return metrics_port_; }
    const Counters& link_counters() const { return links_; }
    // Ready: listening, and the store reachable. The status port's "ready".
    bool ready() const { return port_ != 0 && health_.reachable; }
    const StoreHealth& store_health() const { return health_; }
    // The status port's answer: one JSON object.
    std::string status_json() const;

  private:
    net::Listener::Hooks listener_hooks();
    asio::awaitable<void> serve(std::shared_ptr<net::Connection> conn);
    // Counts and logs a PN GW link whose PSK-TLS handshake failed (`blocked`: refused by the
    // back-off without looking at its PSK).
    void refused(const net::Connection& conn, const net::LinkError& error, bool blocked);
    // The PSK of PN GW `identity`, or nullopt if it is not an active PN GW.
    std::optional<SecretKey> gw_psk(std::string_view identity);
    // The PSK of PN GW `identity`'s previous EUKey after a rotation (accept: within its grace
    // period), or nullopt.
    std::optional<net::PskRetry> gw_previous_psk(std::string_view identity) const;
    static std::int64_t wall_now_ms();
    void apply(ServerEffects effects);
    void to_role(const std::string& gw, const pb::Envelope& env);
    void send_effect(const SendEffect& s);
    void persist_effect(PersistPnEffect& p);
    // Group commit (kMaxCommitGroup): the registrations waiting for the store.
    struct PendingPersist {
        std::string gw;
        pb::PnInventory inventory;
        pb::FailureReason result = pb::INTERNAL_ERROR;
    };
    void flush_persist();
    // Store thread: registers a group in one transaction, each member's result in `result`;
    // throws StoreError (the worst kind among the members) when any failed that way.
    void commit_group(store::Store& st, std::vector<PendingPersist>& group);
    // Store thread: one registration alone, `attempt` being its first try's number (a group
    // that broke counts as the first); kPersistAttempts in all. Throws StoreError.
    pb::FailureReason register_alone(store::Store& st, const pb::PnInventory& inv, int attempt);
    void outcome_effect(const OutcomeEffect& o);
    // How a store job ended: nullopt when it ran to its end, else the kind of its StoreError
    // (any other exception is kOther).
    using StoreFailure = std::optional<store::StoreError::Kind>;
    // Runs `job` on the store thread, then `done` on the event loop with how it ended (after
    // the store's health was updated from it). `write`: the job writes (for health_.full).
    void store_job(std::function<void(store::Store&)> job,
                   std::function<void(StoreFailure)> done = {}, bool write = false);
    void note_store(StoreFailure failure, bool write);
    // Store thread: kMaxUnacknowledged bookkeeping and withdrawal (see there).
    void remember_unacknowledged(const pb::PnInventory& inv);
    void change_effect(const ChangePnEffect& c);
    void withdraw_unacknowledged(store::Store& st);
    net::Listener::Hooks control_hooks();
    asio::awaitable<void> control_serve(std::shared_ptr<net::tcp::socket> socket,
                                        std::shared_ptr<net::Listener::Slot> slot);
    void deliver(const std::string& gw, std::shared_ptr<pb::Envelope> env);
    void refuse_registration(const std::string& gw, const pb::Envelope& request,
                             pb::FailureReason reason, const std::string& detail);
    void refresh_gateways();
    // Reads the change log and pushes what it says to the PN GWs (see kChangeLogPoll).
    void poll_changes();
    struct PolledChange {
        store::ChangeEvent event;
        std::optional<store::StoredEntity> entity;                // "status": the entity as stored
        std::vector<pb::PnInventory> pns;                         // "status" of a PNE: its PNs
        std::vector<std::optional<store::StoredEntity>> members;  // every PNE named above
    };
    void act_on(const PolledChange& c);
    void publish_lifecycle(std::string_view action, const std::string& gw_id,
                           const std::string& pn_id, const std::string& subject);

    asio::io_context& io_;
    ServerOptions opt_;
    CachedDirectory dir_;
    std::unique_ptr<store::Store> store_;  // used on the store thread only
    asio::thread_pool store_thread_{1};
    std::size_t store_queue_ = 0;
    std::size_t registered_ = 0;
    StoreHealth health_;
    std::atomic<std::uint64_t> persist_retries_{0};  // counted on the store thread
    std::atomic<std::uint64_t> withdrawn_{0};        // counted on the store thread
    std::atomic<std::uint64_t> group_commits_{0};    // counted on the store thread
    std::atomic<std::uint64_t> grouped_pns_{0};      // counted on the store thread
    std::deque<PendingPersist> persist_pending_;     // waiting for the next group commit
    bool persist_writing_ = false;                   // a group commit is in progress
    std::deque<pb::PnInventory> unacknowledged_;     // store thread only
    // Audit records wait here while one batch is being written (one transaction per batch).
    std::vector<store::AuditRecord> audit_pending_;
    bool audit_writing_ = false;
    std::set<std::string> lookups_;  // PN GW IDs being fetched after a cache miss (bounded)
    PskThrottle throttle_;           // failed PSK attempts per (source, PN GW identity)
    void flush_audit();
    OsRandom random_;
    std::unique_ptr<Server> server_;
    std::unique_ptr<RoleTrace> trace_;
    std::optional<tls::TlsContext> tls_;
    net::Listener listener_;
    net::Listener control_listener_;
    std::uint16_t control_port_ = 0;
    RoleTimer timer_;
    asio::steady_timer refresh_;
    asio::steady_timer change_poll_;
    std::int64_t change_seq_ = -1;        // newest change-log seq read (-1: not yet)
    std::set<std::int64_t> change_seen_;  // seqs within kChangeLogWindow already acted on
    std::map<std::string, std::shared_ptr<net::Connection>> gws_;
    // The EUKey each open PN GW link authenticated with: after a rotation, a link on the
    // previous EUKey is closed once its grace period has ended (refresh_gateways).
    std::map<std::string, SecretKey> gw_link_eukeys_;
    Counters links_;  // refused PN GW links, by reason
    std::uint16_t port_ = 0;
    std::map<std::pair<std::string, std::string>, SecretKey> session_keys_;
    // Prometheus metrics (declare_metrics); the store thread updates only the histogram below.
    void declare_metrics();
    void count_inventory();
    DaemonMetrics metrics_{"CPNS Server"};
    Histogram* store_commit_ = nullptr;
    MetricsServer metrics_server_{io_, metrics_.registry()};
    std::uint16_t metrics_port_ = 0;
    double pns_ = 0, entities_gw_ = 0, entities_pne_ = 0;  // counted, plus registrations since
    asio::steady_timer count_timer_{io_};
};

}  // namespace cpns::daemon
