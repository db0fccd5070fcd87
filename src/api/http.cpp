// The one translation unit that includes cpp-httplib (a heavy header): the API server and
// cpnsctl's client. Why cpp-httplib: docs/api.md, "Implementation".
#include <httplib.h>
#include <openssl/ssl.h>
#include <spdlog/spdlog.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <set>
#include <thread>

#include "api/admin.hpp"
#include "api/client.hpp"
#include "api/console_files.hpp"
#include "api/server.hpp"
#include "api/tokens.hpp"
#include "core/codec.hpp"
#include "daemon/common.hpp"
#include "store/store.hpp"

namespace cpns::api {

using daemon::ConfigError;
using nlohmann::json;

bool is_loopback_host(const std::string& host) {
    if (host == "localhost" || host == "::1" || host == "[::1]") return true;
    return host.rfind("127.", 0) == 0;
}

namespace {

// httplib's worker pool, bounded: kApiThreads threads, at most kApiQueuedConnections accepted
// connections waiting; when full, enqueue() blocks the accepting thread (further connections
// wait in the kernel's backlog).
class BoundedPool final : public httplib::TaskQueue {
  public:
    BoundedPool() {
        for (std::size_t i = 0; i < kApiThreads; ++i) threads_.emplace_back([this] { work(); });
    }
    ~BoundedPool() override { BoundedPool::shutdown(); }
    void enqueue(std::function<void()> fn) override {
        std::unique_lock lock(mutex_);
        room_.wait(lock, [&] { return jobs_.size() < kApiQueuedConnections || stopping_; });
        jobs_.push_back(std::move(fn));
        lock.unlock();
        ready_.notify_one();
    }
    void shutdown() override {
        {
            const std::lock_guard lock(mutex_);
            if (stopping_ && threads_.empty()) return;
            stopping_ = true;
        }
        ready_.notify_all();
        room_.notify_all();
        for (auto& t : threads_)
            if (t.joinable()) t.join();
        threads_.clear();
    }

  private:
    void work() {
        for (;;) {
            std::function<void()> fn;
            {
                std::unique_lock lock(mutex_);
                ready_.wait(lock, [&] { return !jobs_.empty() || stopping_; });
                if (jobs_.empty()) return;  // stopping, nothing left
                fn = std::move(jobs_.front());
                jobs_.pop_front();
            }
            room_.notify_one();
            fn();
        }
    }
    std::mutex mutex_;
    std::condition_variable ready_, room_;
    std::deque<std::function<void()>> jobs_;
    std::vector<std::thread> threads_;
    bool stopping_ = false;
};

// Per request, on its worker thread: for the request log line.
struct RequestNote {
    std::chrono::steady_clock::time_point start{};
    std::string token_name;
};
thread_local RequestNote t_note;

const char* code_for(int status) {
    switch (status) {
        case 400:
            return "MALFORMED_REQUEST";
        case 401:
            return "UNAUTHORIZED";
        case 403:
            return "FORBIDDEN";
        case 404:
            return "NOT_FOUND";
        case 405:
            return "NOT_FOUND";
        case 409:
            return "CONFLICT";
        case 413:
            return "BODY_TOO_LARGE";
        case 414:
            return "MALFORMED_REQUEST";
        case 429:
            return "RATE_LIMITED";
        case 503:
            return "STORE_UNAVAILABLE";
        default:
            return "INTERNAL_ERROR";
    }
}

void send_json(httplib::Response& res, int status, const json& body) {
    res.status = status;
    res.set_header("Cache-Control", "no-store");
    res.set_header("X-Content-Type-Options", "nosniff");
    res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace) + "\n",
                    "application/json");
}

void send_error(httplib::Response& res, int status, const std::string& code,
                const std::string& message) {
    send_json(res, status, json{{"error", {{"code", code}, {"message", message}}}});
}

// A refusal from a handler: status, code, message.
struct Refusal {
    int status;
    std::string code, message;
};

// The store connections of the API's threads: one per request at a time, kept for reuse.
class StorePool {
  public:
    StorePool(std::string url, SecretKey master) : url_(std::move(url)), master_(master) {}
    std::unique_ptr<store::Store> take() {
        {
            const std::lock_guard lock(mutex_);
            if (!idle_.empty()) {
                auto s = std::move(idle_.back());
                idle_.pop_back();
                return s;
            }
        }
        return store::open_store(url_, master_);
    }
    void give_back(std::unique_ptr<store::Store> s) {
        const std::lock_guard lock(mutex_);
        if (idle_.size() < kApiThreads) idle_.push_back(std::move(s));
    }

  private:
    const std::string url_;
    const SecretKey master_;
    std::mutex mutex_;
    std::vector<std::unique_ptr<store::Store>> idle_;
};

struct Lease {
    StorePool& pool;
    std::unique_ptr<store::Store> st;
    explicit Lease(StorePool& p) : pool(p), st(p.take()) {}
    ~Lease() {
        if (st) pool.give_back(std::move(st));
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    store::Store& operator*() { return *st; }
};

// The request body as a JSON object with only the fields in `allowed` (an empty body is {}).
json body_object(const httplib::Request& req, const std::set<std::string>& allowed) {
    if (req.body.empty()) return json::object();
    json j = json::parse(req.body, nullptr, false);
    if (j.is_discarded()) throw Refusal{400, "MALFORMED_REQUEST", "the body is not valid JSON"};
    if (!j.is_object()) throw Refusal{400, "MALFORMED_REQUEST", "the body must be a JSON object"};
    for (const auto& [key, value] : j.items())
        if (!allowed.count(key))
            throw Refusal{400, "UNKNOWN_FIELD", "unknown field '" + printable(key) + "'"};
    return j;
}

std::string string_field(const json& j, const std::string& name, bool required) {
    if (!j.contains(name)) {
        if (required) throw Refusal{400, "MALFORMED_REQUEST", "missing field '" + name + "'"};
        return {};
    }
    if (!j.at(name).is_string())
        throw Refusal{400, "MALFORMED_REQUEST", "field '" + name + "' must be a string"};
    return j.at(name).get<std::string>();
}

// The query string's parameters only (httplib adds a form body's fields to req.params).
httplib::Params query_of(const httplib::Request& req) {
    httplib::Params q;
    if (const auto mark = req.target.find('?'); mark != std::string::npos)
        httplib::detail::parse_query_text(req.target.substr(mark + 1), q);
    return q;
}

// The query parameters, checked: only those in `allowed`, each at most once.
httplib::Params check_params(const httplib::Request& req, const std::set<std::string>& allowed) {
    std::set<std::string> seen;
    httplib::Params q = query_of(req);
    for (const auto& [key, value] : q) {
        if (!allowed.count(key))
            throw Refusal{400, "MALFORMED_REQUEST",
                          "unknown query parameter '" + printable(key) + "'"};
        if (!seen.insert(key).second)
            throw Refusal{400, "MALFORMED_REQUEST", "query parameter '" + key + "' twice"};
    }
    return q;
}

std::optional<std::string> param(const httplib::Params& q, const std::string& key) {
    const auto it = q.find(key);
    if (it == q.end()) return std::nullopt;
    return it->second;
}

}  // namespace

struct ApiServer::Impl {
    ApiOptions opt;
    TokenFile tokens;
    RateLimiter rate;
    std::unique_ptr<StorePool> stores;
    std::unique_ptr<httplib::Server> server;
    std::thread thread;
    std::uint16_t port = 0;

    // Authenticates and rate-limits the request; nullopt after answering it with an error.
    std::optional<TokenEntry> authorize(const httplib::Request& req, httplib::Response& res,
                                        Role needed, bool query_token = false) {
        std::string token;
        const std::string auth = req.get_header_value("Authorization");
        bool token_given = false;
        // The scheme is case-insensitive (RFC 9110, 11.1).
        if (auth.size() > 7 && auth[6] == ' ' &&
            std::equal(auth.begin(), auth.begin() + 6, "bearer", [](char a, char b) {
                return std::tolower(static_cast<unsigned char>(a)) == b;
            }))
            token = auth.substr(7);
        else if (const auto q = query_token ? param(query_of(req), "access_token") : std::nullopt)
            token = *q;
        std::optional<TokenEntry> who;
        token_given = !auth.empty() || !token.empty();
        if (!token.empty()) who = tokens.authenticate(token);
        wipe(token.data(), token.size());
        if (!who) {
            // Failed attempts are rate-limited per client address.
            if (!rate.allow("@" + req.remote_addr)) {
                send_error(res, 429, "RATE_LIMITED", "too many requests; slow down");
                return std::nullopt;
            }
            res.set_header("WWW-Authenticate", "Bearer");
            send_error(res, 401, "UNAUTHORIZED",
                       !token_given ? "no token: send Authorization: Bearer TOKEN"
                                    : "the token is not valid");
            return std::nullopt;
        }
        t_note.token_name = who->name;
        if (!rate.allow(who->name)) {
            res.set_header("Retry-After", "1");
            send_error(res, 429, "RATE_LIMITED",
                       "token '" + who->name + "' is over its rate limit; slow down");
            return std::nullopt;
        }
        if (needed == Role::kAdmin && who->role != Role::kAdmin) {
            send_error(res, 403, "FORBIDDEN",
                       "token '" + who->name + "' has the read role; this needs admin");
            return std::nullopt;
        }
        return who;
    }

    // Runs a handler after authorization, mapping refusals and store failures to errors.
    void guarded(const httplib::Request& req, httplib::Response& res, Role needed,
                 const std::function<void(const TokenEntry&)>& handler, bool query_token = false) {
        const auto who = authorize(req, res, needed, query_token);
        if (!who) return;
        try {
            handler(*who);
        } catch (const Refusal& r) {
            send_error(res, r.status, r.code, r.message);
        } catch (const AdminError& e) {
            switch (e.code()) {
                case AdminError::Code::kNotFound:
                    send_error(res, 404, "NOT_FOUND", e.what());
                    break;
                case AdminError::Code::kConflict:
                    send_error(res, 409, "CONFLICT", e.what());
                    break;
                case AdminError::Code::kInvalid:
                    send_error(res, 400, "MALFORMED_REQUEST", e.what());
                    break;
            }
        } catch (const store::StoreError& e) {
            if (e.kind() == store::StoreError::Kind::kUnavailable) {
                spdlog::warn("api: store unavailable: {}", e.what());
                send_error(res, 503, "STORE_UNAVAILABLE",
                           "the store cannot be reached; nothing changed; retry later");
            } else {
                spdlog::error("api: store error: {}", e.what());
                send_error(res, 500, "INTERNAL_ERROR", std::string("store error: ") + e.what());
            }
        } catch (const ConfigError& e) {
            send_error(res, 500, "INTERNAL_ERROR", e.what());
        }
    }

    void routes();
    void serve_events(const httplib::Request& req, httplib::Response& res);
};

void ApiServer::Impl::routes() {
    httplib::Server& s = *server;
    const std::string v1 = "/api/v1";
    s.Get(v1 + "/health", [this](const httplib::Request&, httplib::Response& res) {
        send_json(res, 200, json{{"status", "ok"}, {"version", opt.version}});
    });
    s.Get(v1 + "/ready", [this](const httplib::Request&, httplib::Response& res) {
        const bool listening = opt.readiness && opt.readiness->listening.load();
        const bool reachable = !opt.readiness || opt.readiness->store_reachable.load();
        if (listening && reachable) {
            send_json(res, 200,
                      json{{"ready", true}, {"listening", true}, {"store_reachable", true}});
            return;
        }
        json j{{"ready", false},
               {"listening", listening},
               {"store_reachable", reachable},
               {"reason", !listening ? "not listening for PN GWs yet"
                                     : "the store is unreachable since " +
                                           time_text(opt.readiness->store_down_since_ms.load())}};
        send_json(res, 503, j);
    });
    s.Get(v1 + "/whoami", [this](const httplib::Request& req, httplib::Response& res) {
        guarded(req, res, Role::kRead, [&](const TokenEntry& who) {
            check_params(req, {});
            send_json(res, 200, json{{"name", who.name}, {"role", role_name(who.role)}});
        });
    });
    s.Get(v1 + "/entities", [this](const httplib::Request& req, httplib::Response& res) {
        guarded(req, res, Role::kRead, [&](const TokenEntry&) {
            const auto q = check_params(req, {"kind"});
            std::optional<EntityKind> kind;
            if (const auto k = param(q, "kind")) {
                kind = parse_entity_kind(*k);
                if (!kind) throw Refusal{400, "MALFORMED_REQUEST", "kind must be pne or gw"};
            }
            Lease st(*stores);
            json list = json::array();
            for (const auto& e : (*st).list_entities(kind)) list.push_back(entity_json(e));
            send_json(res, 200, json{{"entities", list}});
        });
    });
    s.Get(v1 + R"(/entities/([^/]+))", [this](const httplib::Request& req, httplib::Response& res) {
        guarded(req, res, Role::kRead, [&](const TokenEntry&) {
            check_params(req, {});
            Lease st(*stores);
            const auto e = (*st).get_entity(req.matches[1]);
            if (!e) throw Refusal{404, "NOT_FOUND", "no entity " + printable(req.matches[1].str())};
            send_json(res, 200, entity_json(*e));
        });
    });
    s.Post(v1 + "/entities", [this](const httplib::Request& req, httplib::Response& res) {
        guarded(req, res, Role::kAdmin, [&](const TokenEntry& who) {
            check_params(req, {});
            const json body = body_object(req, {"id", "kind", "device_type"});
            const std::string id = string_field(body, "id", true);
            const auto kind = parse_entity_kind(string_field(body, "kind", true));
            if (!kind) throw Refusal{400, "MALFORMED_REQUEST", "kind must be pne or gw"};
            const std::string device_type = string_field(body, "device_type", false);
            OsRandom rnd;
            const SecretKey key = rnd.key();
            Lease st(*stores);
            const auto e = provision(*st, id, *kind, device_type, key, who.name);
            std::string hex = key.to_hex();
            send_json(res, 201, json{{"entity", entity_json(e)}, {"key", hex}});
            wipe(hex.data(), hex.size());
            spdlog::info("api: {} provisioned {} {}", who.name, to_string(*kind), id);
        });
    });
    for (const std::string action : {"disable", "enable", "revoke"}) {
        s.Post(v1 + "/entities/([^/]+)/" + action,
               [this, action](const httplib::Request& req, httplib::Response& res) {
                   guarded(req, res, Role::kAdmin, [&](const TokenEntry& who) {
                       check_params(req, {});
                       (void)body_object(req, {});
                       const EntityStatus st = action == "enable"   ? EntityStatus::kActive
                                               : action == "revoke" ? EntityStatus::kRevoked
                                                                    : EntityStatus::kDisabled;
                       Lease store(*stores);
                       const auto e = set_status(*store, req.matches[1], st, who.name);
                       send_json(res, 200, entity_json(e));
                       spdlog::info("api: {} set {} {}", who.name, e.id, to_string(st));
                   });
               });
    }
    s.Post(v1 + "/entities/([^/]+)/rotate", [this](const httplib::Request& req,
                                                   httplib::Response& res) {
        guarded(req, res, Role::kAdmin, [&](const TokenEntry& who) {
            check_params(req, {});
            const json body = body_object(req, {"grace"});
            std::string grace_text = string_field(body, "grace", false);
            const Millis grace = parse_duration(grace_text.empty() ? "24h" : grace_text);
            OsRandom rnd;
            const SecretKey fresh = rnd.key();
            Lease st(*stores);
            const auto r = rotate(*st, req.matches[1], fresh, grace, who.name);
            std::string hex = fresh.to_hex();
            send_json(res, 200,
                      json{{"entity", entity_json(r.entity)},
                           {"key", hex},
                           {"key_version", r.key_version},
                           {"previous_key_valid_until", time_text(r.previous_valid_until_ms)},
                           {"previous_key_valid_until_ms", r.previous_valid_until_ms}});
            wipe(hex.data(), hex.size());
            spdlog::info("api: {} rotated the EUKey of {}", who.name, r.entity.id);
        });
    });
    s.Get(v1 + "/pns", [this](const httplib::Request& req, httplib::Response& res) {
        guarded(req, res, Role::kRead, [&](const TokenEntry&) {
            const auto q = check_params(req, {"gw", "orphaned"});
            const std::optional<std::string> gw = param(q, "gw");
            bool orphaned = false;
            if (const auto o = param(q, "orphaned")) {
                if (*o != "true" && *o != "false")
                    throw Refusal{400, "MALFORMED_REQUEST", "orphaned must be true or false"};
                orphaned = *o == "true";
            }
            Lease st(*stores);
            json list = json::array();
            for (const auto& p : list_pns(*st, gw, orphaned)) list.push_back(pn_json(p));
            send_json(res, 200, json{{"pns", list}});
        });
    });
    s.Get(v1 + R"(/pns/([^/]+)/([^/]+))",
          [this](const httplib::Request& req, httplib::Response& res) {
              guarded(req, res, Role::kRead, [&](const TokenEntry&) {
                  check_params(req, {});
                  Lease st(*stores);
                  const auto p = get_pn(*st, req.matches[1], req.matches[2]);
                  if (!p)
                      throw Refusal{404, "NOT_FOUND",
                                    "no PN " + printable(req.matches[2].str()) + " of " +
                                        printable(req.matches[1].str())};
                  send_json(res, 200, pn_json(*p));
              });
          });
    s.Delete(v1 + R"(/pns/([^/]+)/([^/]+))", [this](const httplib::Request& req,
                                                    httplib::Response& res) {
        guarded(req, res, Role::kAdmin, [&](const TokenEntry& who) {
            check_params(req, {});
            (void)body_object(req, {});
            Lease st(*stores);
            const auto d = delete_pn(*st, req.matches[1], req.matches[2], who.name);
            send_json(res, 200,
                      json{{"deleted", true}, {"gw_id", d.gw_id}, {"members", d.members}});
            spdlog::info("api: {} deleted PN {} of {}", who.name, req.matches[2].str(), d.gw_id);
        });
    });
    s.Get(v1 + "/audit", [this](const httplib::Request& req, httplib::Response& res) {
        guarded(req, res, Role::kRead, [&](const TokenEntry&) {
            const auto q = check_params(req, {"limit"});
            std::size_t limit = kAuditDefaultLimit;
            if (const auto lim = param(q, "limit")) {
                const std::string& t = *lim;
                if (t.empty() || t.size() > 6 ||
                    !std::all_of(t.begin(), t.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
                    std::stoul(t) == 0 || std::stoul(t) > kAuditMaxLimit)
                    throw Refusal{
                        400, "MALFORMED_REQUEST",
                        "limit must be a whole number from 1 to " + std::to_string(kAuditMaxLimit)};
                limit = std::stoul(t);
            }
            Lease st(*stores);
            json list = json::array();
            for (const auto& r : (*st).audit_log(limit)) list.push_back(audit_json(r));
            send_json(res, 200, json{{"records", list}});
        });
    });
    s.Get(v1 + "/events",
          [this](const httplib::Request& req, httplib::Response& res) { serve_events(req, res); });
    // Everything else under /api/ is NOT_FOUND (the error handler gives it its JSON body).
    // The web console, embedded at build time.
    const auto console = [](const httplib::Request& req, httplib::Response& res) {
        std::string path = req.path == "/" || req.path == "/console" || req.path == "/console/"
                               ? "index.html"
                               : req.path.substr(std::string("/console/").size());
        for (std::size_t i = 0; i < kConsoleFileCount; ++i) {
            const ConsoleFile& f = kConsoleFiles[i];
            if (path != f.path) continue;
            res.set_header("Content-Security-Policy",
                           "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                           "form-action 'self'");
            res.set_header("X-Content-Type-Options", "nosniff");
            res.set_header("Referrer-Policy", "no-referrer");
            res.set_header("Cache-Control", "no-cache");
            res.set_content(reinterpret_cast<const char*>(f.data), f.size, f.type);
            return;
        }
        send_error(res, 404, "NOT_FOUND", "no such file");
    };
    s.Get("/", console);
    s.Get("/console", console);
    s.Get(R"(/console/(.*))", console);
}

void ApiServer::Impl::serve_events(const httplib::Request& req, httplib::Response& res) {
    guarded(
        req, res, Role::kRead,
        [&](const TokenEntry& who) {
            check_params(req, {"access_token"});
            if (!opt.events) throw Refusal{404, "NOT_FOUND", "no event stream"};
            const auto start = opt.events->subscribe();
            if (!start)
                throw Refusal{429, "RATE_LIMITED",
                              "too many event streams open (at most " +
                                  std::to_string(daemon::kMaxEventSubscribers) + ")"};
            spdlog::info("api: event stream opened by {}", who.name);
            auto next = std::make_shared<std::uint64_t>(*start);
            auto hub = opt.events;
            res.set_header("Cache-Control", "no-store");
            res.set_header("X-Accel-Buffering", "no");
            // A stream without a length, not chunked: the connection ends the stream (the API
            // answers one request per connection). httplib 0.11's chunked writer raced between
            // two event streams on a buffer of its own (a ThreadSanitizer report in CI).
            res.set_content_provider(
                "text/event-stream",
                [hub, next, opened = std::make_shared<bool>(false)](std::size_t,
                                                                    httplib::DataSink& sink) {
                    if (!*opened) {
                        *opened = true;
                        const std::string hello = ": cpns event stream\nretry: 2000\n\n";
                        return sink.write(hello.data(), hello.size());
                    }
                    std::vector<daemon::HubEvent> events;
                    switch (hub->wait(*next, events, std::chrono::milliseconds(kSseKeepAliveMs))) {
                        case daemon::EventHub::Wait::kEvents: {
                            std::string out;
                            for (const auto& e : events)
                                out += "id: " + std::to_string(e.seq) + "\nevent: " + e.type +
                                       "\ndata: " + e.data + "\n\n";
                            return sink.write(out.data(), out.size());
                        }
                        case daemon::EventHub::Wait::kTimeout: {
                            const std::string ping = ": keep-alive\n\n";
                            return sink.write(ping.data(), ping.size());
                        }
                        case daemon::EventHub::Wait::kLost: {
                            // Fell behind the ring: closed (bounded memory); the client
                            // reconnects and lists what it missed.
                            const std::string lost =
                                "event: lost\ndata: {\"reason\":\"the client fell behind\"}\n\n";
                            (void)sink.write(lost.data(), lost.size());
                            sink.done();
                            return true;
                        }
                        case daemon::EventHub::Wait::kClosed:
                            sink.done();
                            return true;
                    }
                    return false;
                },
                [hub](bool) { hub->unsubscribe(); });
        },
        /*query_token=*/true);
}

ApiServer::ApiServer(ApiOptions options) : impl_(std::make_unique<Impl>()) {
    impl_->opt = std::move(options);
}

ApiServer::~ApiServer() {
    stop();
}

std::uint16_t ApiServer::start() {
    Impl& m = *impl_;
    const ApiOptions& o = m.opt;
    if (o.insecure_http) {
        if (!is_loopback_host(o.listen.host))
            throw ConfigError(
                "api_insecure_http: plain HTTP is only allowed on a loopback "
                "address, not " +
                o.listen.host + "; give api_cert and api_key for HTTPS");
    } else if (o.cert_file.empty() || o.key_file.empty()) {
        throw ConfigError(
            "api: HTTPS needs api_cert and api_key (PEM files); plain HTTP on loopback only "
            "with api_insecure_http");
    }
    if (o.tokens_file.empty())
        throw ConfigError(
            "api: api_tokens (the token file) is required; make one with "
            "`cpnsctl token new`");
    m.tokens = TokenFile::load(o.tokens_file);
    if (m.tokens.entries().empty())
        daemon::warn_operator("api_tokens " + o.tokens_file +
                              " holds no token: every request is refused");
    m.stores = std::make_unique<StorePool>(o.store_url, store::load_master_key(o.master_key_file));

    if (o.insecure_http) {
        m.server = std::make_unique<httplib::Server>();
    } else {
        std::string problem;
        auto tls = std::make_unique<httplib::SSLServer>([&](SSL_CTX& ctx) {
            SSL_CTX_set_min_proto_version(&ctx, TLS1_2_VERSION);
            if (SSL_CTX_use_certificate_chain_file(&ctx, o.cert_file.c_str()) != 1) {
                problem = "cannot load the certificate api_cert " + o.cert_file;
                return false;
            }
            if (SSL_CTX_use_PrivateKey_file(&ctx, o.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
                problem = "cannot load the private key api_key " + o.key_file;
                return false;
            }
            if (SSL_CTX_check_private_key(&ctx) != 1) {
                problem = "api_key " + o.key_file + " does not match api_cert " + o.cert_file;
                return false;
            }
            return true;
        });
        if (!tls->is_valid())
            throw ConfigError("api: " + (problem.empty() ? "cannot set up TLS" : problem));
        m.server = std::move(tls);
    }
    httplib::Server& s = *m.server;
    s.new_task_queue = [] { return new BoundedPool(); };
    s.set_payload_max_length(kMaxBodyBytes);
    s.set_tcp_nodelay(true);
    s.set_read_timeout(kApiReadTimeoutS, 0);
    s.set_write_timeout(kApiWriteTimeoutS, 0);
    s.set_keep_alive_timeout(kApiKeepAliveTimeoutS);
    s.set_keep_alive_max_count(kApiKeepAliveMaxRequests);
    s.set_pre_routing_handler([](const httplib::Request&, httplib::Response&) {
        t_note.start = std::chrono::steady_clock::now();
        t_note.token_name.clear();
        return httplib::Server::HandlerResponse::Unhandled;
    });
    s.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return;
        if (res.status == 413)
            send_error(res, 413, "BODY_TOO_LARGE",
                       "the body is longer than " + std::to_string(kMaxBodyBytes) + " bytes");
        else if (res.status == 404 || res.status == 405)
            send_error(res, 404, "NOT_FOUND", "no such endpoint: " + printable(req.path, 200));
        else if (res.status == 414)
            send_error(res, 400, "MALFORMED_REQUEST", "the request line is longer than 8 KiB");
        else if (res.status == 400)
            send_error(res, 400, "MALFORMED_REQUEST",
                       "not a valid HTTP request (a header longer than 8 KiB, or an unknown "
                       "method)");
        else
            send_error(res, res.status, code_for(res.status), "the request was refused");
    });
    s.set_exception_handler(
        [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
            std::string what = "unknown";
            try {
                if (ep) std::rethrow_exception(ep);
            } catch (const std::exception& e) {
                what = e.what();
            } catch (...) {
            }
            spdlog::error("api: request failed: {}", what);
            send_error(res, 500, "INTERNAL_ERROR", "the request failed inside the server");
        });
    // One line per request: never the query string (it may hold access_token), never a token.
    s.set_logger([](const httplib::Request& req, const httplib::Response& res) {
        const auto ms = t_note.start == std::chrono::steady_clock::time_point{}
                            ? 0
                            : std::chrono::duration_cast<std::chrono::milliseconds>(
                                  std::chrono::steady_clock::now() - t_note.start)
                                  .count();
        spdlog::info("api {} {} {} token={} {} ms", printable(req.method, 16),
                     printable(req.path, 200), res.status,
                     t_note.token_name.empty() ? "-" : t_note.token_name, ms);
        t_note = RequestNote{};
    });
    m.routes();
    const int port = o.listen.port == 0
                         ? s.bind_to_any_port(o.listen.host)
                         : (s.bind_to_port(o.listen.host, o.listen.port) ? o.listen.port : -1);
    if (port <= 0)
        throw ConfigError("api: cannot listen on " + o.listen.str() +
                          " (address in use, or not an address of this host)");
    m.port = static_cast<std::uint16_t>(port);
    m.thread = std::thread([&s] { s.listen_after_bind(); });
    spdlog::info("management API on {}://{}:{} ({} token(s); web console at /)",
                 o.insecure_http ? "http" : "https", o.listen.host, m.port,
                 m.tokens.entries().size());
    return m.port;
}

void ApiServer::stop() {
    if (!impl_ || !impl_->server) return;
    if (impl_->opt.events) impl_->opt.events->close();
    impl_->server->stop();
    if (impl_->thread.joinable()) impl_->thread.join();
    impl_->server.reset();
}

}  // namespace cpns::api

namespace cpns::api {

struct ApiClient::Impl {
    std::unique_ptr<httplib::Client> client;
    std::string token;
    ~Impl() { wipe(token.data(), token.size()); }

    json answer(const httplib::Result& r, const std::string& what) {
        if (!r)
            throw std::runtime_error(what + ": no answer from the API (" +
                                     httplib::to_string(r.error()) + ")");
        json body = json::parse(r->body, nullptr, false);
        if (r->status >= 200 && r->status < 300) {
            if (body.is_discarded())
                throw std::runtime_error(what + ": the API's answer is not JSON");
            return body;
        }
        if (!body.is_discarded() && body.contains("error") && body["error"].is_object())
            throw ApiError(r->status, body["error"].value("code", "?"),
                           body["error"].value("message", "?"));
        throw ApiError(r->status, "?", what + ": HTTP " + std::to_string(r->status));
    }
    httplib::Headers headers() const { return {{"Authorization", "Bearer " + token}}; }
};

ApiClient::ApiClient(const std::string& url, std::string token, const std::string& ca_file)
    : impl_(std::make_unique<Impl>()) {
    if (url.rfind("https://", 0) != 0 && url.rfind("http://", 0) != 0)
        throw ConfigError("--api '" + url + "': want https://HOST:PORT or http://HOST:PORT");
    std::string base = url;
    while (!base.empty() && base.back() == '/') base.pop_back();  // "https://host:8443/"
    impl_->client = std::make_unique<httplib::Client>(base);
    if (!impl_->client->is_valid()) throw ConfigError("--api '" + url + "': not a usable URL");
    impl_->token = std::move(token);
    impl_->client->set_connection_timeout(kClientConnectTimeoutS, 0);
    impl_->client->set_read_timeout(kClientReadTimeoutS, 0);
    impl_->client->set_write_timeout(kClientReadTimeoutS, 0);
    if (url.rfind("https://", 0) == 0) {
        impl_->client->enable_server_certificate_verification(true);
        if (!ca_file.empty()) impl_->client->set_ca_cert_path(ca_file.c_str());
    }
}

ApiClient::~ApiClient() = default;

json ApiClient::get(const std::string& path) {
    return impl_->answer(impl_->client->Get(path.c_str(), impl_->headers()), "GET " + path);
}

json ApiClient::post(const std::string& path, const json& body) {
    return impl_->answer(
        impl_->client->Post(path.c_str(), impl_->headers(), body.dump(), "application/json"),
        "POST " + path);
}

json ApiClient::del(const std::string& path) {
    return impl_->answer(impl_->client->Delete(path.c_str(), impl_->headers()), "DELETE " + path);
}

std::string read_token_file(const std::string& path) {
    auto f = daemon::read_checked_file(path, "token file", daemon::kMaxKeyFileBytes,
                                       daemon::FileSecrecy::kSecret);
    std::string token;
    for (char c : f.content)
        if (!std::isspace(static_cast<unsigned char>(c))) token.push_back(c);
    wipe(f.content.data(), f.content.size());
    if (token.empty()) throw ConfigError("token file " + path + " is empty");
    return token;
}

std::string url_encode(const std::string& text) {
    return httplib::detail::encode_query_param(text);
}

}  // namespace cpns::api
