// cpns-server: the CPNS Server role behind a PSK-TLS listener for PN GWs.
#pragma once

#include <map>
#include <memory>
#include <set>

#include "core/server.hpp"
#include "core/throttle.hpp"
#include "daemon/common.hpp"
#include "daemon/trace.hpp"
#include "net/connection.hpp"
#include "net/listener.hpp"
#include "store/store.hpp"

namespace cpns::daemon {

// How long a PN GW has to complete its TLS handshake.
inline constexpr Millis kGwHandshakeTimeout = 10'000;
// Connections from PN GWs open at once.
inline constexpr std::size_t kMaxGwConnections = 10'000;
// How often the PN GW records (for the TLS PSK lookup) are re-read from the store, so that
// provisioning, disabling and revoking reach a running server.
inline constexpr Millis kGwDirectoryRefresh = 2'000;
// Store jobs queued at once; past this a registration is refused with "busy".
inline constexpr std::size_t kMaxStoreQueue = 10'000;
// PN GW IDs looked up at once after TLS cache misses (unknown identities cannot queue more).
inline constexpr std::size_t kMaxPendingLookups = 256;

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
    std::string crash_at;    // --crash-at (daemon/trace.hpp); "" = none
};

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
    std::uint16_t port() const { return port_; }
    const Counters& link_counters() const { return links_; }

  private:
    net::Listener::Hooks listener_hooks();
    asio::awaitable<void> serve(std::shared_ptr<net::Connection> conn);
    // Counts and logs a PN GW link whose PSK-TLS handshake failed.
    void refused(const net::Connection& conn, const net::LinkError& error);
    void apply(ServerEffects effects);
    void to_role(const std::string& gw, const pb::Envelope& env);
    void send_effect(const SendEffect& s);
    void persist_effect(PersistPnEffect& p);
    void outcome_effect(const OutcomeEffect& o);
    // Runs `job` on the store thread, then `done` on the event loop.
    void store_job(std::function<void(store::Store&)> job, std::function<void()> done = {});
    void deliver(const std::string& gw, std::shared_ptr<pb::Envelope> env);
    void refuse_registration(const std::string& gw, const pb::Envelope& request,
                             pb::FailureReason reason, const std::string& detail);
    void refresh_gateways();

    asio::io_context& io_;
    ServerOptions opt_;
    CachedDirectory dir_;
    std::unique_ptr<store::Store> store_;  // used on the store thread only
    asio::thread_pool store_thread_{1};
    std::size_t store_queue_ = 0;
    std::size_t registered_ = 0;
    // Audit records wait here while one batch is being written (one transaction per batch).
    std::vector<store::AuditRecord> audit_pending_;
    bool audit_writing_ = false;
    std::set<std::string> lookups_;  // PN GW IDs being fetched after a cache miss (bounded)
    PskThrottle throttle_;           // failed PSK attempts per PN GW identity
    void flush_audit();
    OsRandom random_;
    std::unique_ptr<Server> server_;
    std::unique_ptr<RoleTrace> trace_;
    std::optional<tls::TlsContext> tls_;
    net::Listener listener_;
    RoleTimer timer_;
    asio::steady_timer refresh_;
    std::map<std::string, std::shared_ptr<net::Connection>> gws_;
    Counters links_;  // refused PN GW links, by reason
    std::uint16_t port_ = 0;
    std::map<std::pair<std::string, std::string>, SecretKey> session_keys_;
};

}  // namespace cpns::daemon
