// The management API of cpns-server (docs/api.md, docs/api.yaml): JSON over HTTPS (plain HTTP
// only on loopback and only when asked for), bearer tokens with a role, a per-token rate limit,
// entities, PNs, the audit log, health and readiness, and a server-sent-events stream of what
// the event loop publishes to its EventHub. Also serves the web console (web/console/, embedded
// at build time). Runs on its own bounded pool of threads with its own store connections; the
// running server learns of the changes through its change-log poll, as with cpnsctl.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "daemon/event_hub.hpp"
#include "net/address.hpp"

namespace cpns::api {

// Worker threads (each serves one connection at a time; an event stream holds one): at most
// this many requests are served at once, and as many connections wait accepted; further ones
// wait in the kernel's listen backlog.
inline constexpr std::size_t kApiThreads = 16;
inline constexpr std::size_t kApiQueuedConnections = 64;
// The largest request body (a bigger one is refused with 413 BODY_TOO_LARGE, unread).
inline constexpr std::size_t kMaxBodyBytes = 16 * 1024;
// Socket timeouts (seconds): reading a request, writing an answer, an idle keep-alive
// connection; requests on one connection. One: an idle keep-alive TLS connection would hold a
// worker thread for kApiKeepAliveTimeoutS and delay the server's stop by as much (cpp-httplib
// notices a stop only between requests); a management API does not need the saved handshakes.
inline constexpr int kApiReadTimeoutS = 10;
inline constexpr int kApiWriteTimeoutS = 10;
inline constexpr int kApiKeepAliveTimeoutS = 1;
inline constexpr std::size_t kApiKeepAliveMaxRequests = 1;
// An event stream sends a comment line when nothing happened for this long (which also finds
// clients that went away).
inline constexpr int kSseKeepAliveMs = 5'000;
// GET /api/v1/audit: the default and the largest `limit`.
inline constexpr std::size_t kAuditDefaultLimit = 50;
inline constexpr std::size_t kAuditMaxLimit = 1'000;
// How long stop() waits for the worker threads to end.
inline constexpr int kApiStopTimeoutMs = 5'000;

struct ApiOptions {
    net::HostPort listen{"127.0.0.1", 0};
    std::string cert_file, key_file;  // PEM; required unless insecure_http
    bool insecure_http = false;       // plain HTTP: only with a loopback address
    std::string tokens_file;          // required
    std::string store_url;            // the server's store
    std::string master_key_file;      // else $CPNS_MASTER_KEY
    std::string version;              // for /api/v1/health
    std::shared_ptr<daemon::EventHub> events;
    std::shared_ptr<daemon::Readiness> readiness;
};

class ApiServer {
  public:
    explicit ApiServer(ApiOptions options);
    ~ApiServer();
    ApiServer(const ApiServer&) = delete;
    ApiServer& operator=(const ApiServer&) = delete;
    // Checks the options (ConfigError: no TLS files and not plain HTTP on loopback, an
    // unreadable certificate or key, a bad token file), binds and starts serving on its threads.
    // Returns the port.
    std::uint16_t start();
    void stop();

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// True for 127.0.0.0/8, ::1 and "localhost".
bool is_loopback_host(const std::string& host);

}  // namespace cpns::api
