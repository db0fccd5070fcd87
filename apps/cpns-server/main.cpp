// cpns-server: the CPNS Server daemon.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <iostream>

#include "api/server.hpp"
#include "api/tokens.hpp"
#include "common/version.hpp"
#include "daemon/config_check.hpp"
#include "daemon/credentials.hpp"
#include "daemon/server_daemon.hpp"

using namespace cpns;
using namespace cpns::daemon;

int main(int argc, char** argv) {
    CLI::App app{
        "cpns-server: the CPNS Server of OMA CPNS PN Establishment. Authenticates PN GWs (TLS 1.3 "
        "external PSK derived from each PN GW's EUKey), authenticates each PNE (hash_PNE), hands "
        "out LocalEUKeys and registers PNs in the PN Inventory. Settings come from a TOML file "
        "(see docs/operations.md); flags override it. Stops cleanly on SIGTERM or SIGINT."};
    std::string config_path, listen, entities, log_level, keylog, ready_file, id, store, master_key,
        trace_file, control_listen, crash_at, metrics, log_format, api, api_cert, api_key,
        api_tokens;
    bool api_insecure_http = false;
    app.add_option("-c,--config", config_path, "TOML configuration file")->check(CLI::ExistingFile);
    app.add_option("--id", id, "server ID (default cpns-server)");
    app.add_option("--listen", listen,
                   "address for PN GW links, host:port (port 0: any free port)");
    app.add_option("--store", store,
                   "the store: sqlite:PATH or a PostgreSQL URL (default $CPNS_STORE, else "
                   "sqlite:cpns-server.db)");
    app.add_option(
        "--master-key-file", master_key,
        "file with the 256-bit master key sealing EUKeys at rest (else $CPNS_MASTER_KEY); under "
        "systemd the unit gives it as credential 'master-key' ($CREDENTIALS_DIRECTORY) and this "
        "option must not be set");
    app.add_option("--entities", entities,
                   "optional: import these entities into the store at start");
    app.add_option("--log-level", log_level, "trace, debug, info, warn or error (default info)");
    app.add_option("--log-format", log_format,
                   "human (default) or json: one JSON object per line (time, level, daemon, "
                   "event, pn, peer, reason, msg)");
    app.add_option("--metrics", metrics,
                   "serve Prometheus metrics on http://ADDR:PORT/metrics; a bare PORT means "
                   "127.0.0.1:PORT (default: off)");
    app.add_option("--keylog", keylog, "append TLS secrets in NSS key-log format (debugging only)");
    app.add_option("--ready-file", ready_file, "write the listening address here once ready");
    app.add_option("--trace-file", trace_file,
                   "append a JSON-lines event trace (state transitions, messages, outcomes)");
    app.add_option("--control-listen", control_listen,
                   "status port, host:port on loopback (port 0: any free port); answers the line "
                   "'status' with JSON: ready, store health (default: off)");
    app.add_option(
        "--crash-at", crash_at,
        "testing aid: SIGKILL this process at a message boundary, WHEN:MESSAGE[:N] with WHEN "
        "before-send, send or recv (docs/operations.md, Crash points)");
    app.add_option("--api", api,
                   "serve the management API and web console on ADDR:PORT (HTTPS; a bare PORT "
                   "means 127.0.0.1:PORT; default: off; docs/api.md)");
    app.add_option("--api-cert", api_cert, "the API's TLS certificate chain (PEM)");
    app.add_option("--api-key", api_key, "the API's TLS private key (PEM)");
    app.add_option("--api-tokens", api_tokens,
                   "the API's token file: NAME ROLE SHA256HEX lines, mode 0600 (make tokens with "
                   "`cpnsctl token new`)");
    app.add_flag("--api-insecure-http", api_insecure_http,
                 "serve the API over plain HTTP instead of HTTPS; only on a loopback address");
    app.set_version_flag("--version", cpns::version_text("cpns-server"),
                         "print the version and the OpenSSL version, and exit");
    std::string check_config;
    bool print_default = false;
    app.add_option("--check-config", check_config,
                   "validate this configuration file (keys, types, ranges, the master key and "
                   "entities files) without starting; prints 'FILE: OK' (exit 0) or the first "
                   "error as FILE:LINE:COL (exit 2)");
    app.add_flag("--print-default-config", print_default,
                 "print the commented default configuration and exit");
    CLI11_PARSE(app, argc, argv);
    try {
        if (print_default) {
            std::cout << default_config(Program::kServer);
            return 0;
        }
        const bool checking = !check_config.empty();
        Config cfg = checking              ? Config::load(check_config)
                     : config_path.empty() ? Config{}
                                           : Config::load(config_path);
        if (checking) {
            spdlog::set_level(spdlog::level::warn);  // no progress lines before "OK"
            check_known_keys(cfg, Program::kServer);
            check_log_settings(cfg);
        } else {
            init_logging("server", log_level.empty() ? cfg.str("log_level", "info") : log_level,
                         log_format.empty() ? cfg.str("log_format", "human") : log_format);
        }
        ServerOptions o;
        o.role.server_id = id.empty() ? cfg.str("id", o.role.server_id) : id;
        o.listen = parse_address(listen.empty() ? cfg.str("listen", o.listen.str()) : listen,
                                 cfg.where("listen"));
        o.entities_file = entities.empty() ? cfg.str("entities") : entities;
        if (const char* env = std::getenv("CPNS_STORE"); env && *env) o.store = env;
        o.store = store.empty() ? cfg.str("store", o.store) : store;
        // systemd's LoadCredential=master-key:... wins; a configured path beside it is an error.
        o.master_key_file = key_file_or_credential(
            kMasterKeyCredential, master_key.empty() ? cfg.str("master_key_file") : master_key,
            master_key.empty() ? "master_key_file" : "--master-key-file");
        o.keylog = keylog.empty() ? cfg.str("keylog") : keylog;
        o.ready_file = ready_file.empty() ? cfg.str("ready_file") : ready_file;
        o.trace_file = trace_file.empty() ? cfg.str("trace_file") : trace_file;
        if (const std::string c =
                control_listen.empty() ? cfg.str("control_listen") : control_listen;
            !c.empty())
            o.control_listen = parse_address(c, cfg.where("control_listen"));
        o.max_connections =
            connection_limit(cfg, "max_connections", kMaxGwConnections, kMaxGwConnectionsLimit);
        o.max_connections_per_source = connection_limit(
            cfg, "max_connections_per_source",
            std::min(kDefaultGwConnectionsPerSource, o.max_connections), o.max_connections);
        o.crash_at = crash_at;
        if (const std::string m = metrics.empty() ? cfg.str("metrics") : metrics; !m.empty())
            o.metrics = parse_metrics_address(m, "metrics");
        if (checking) {
            // What the server reads at start without the network: the master key and the
            // entities file (the store is not opened).
            if (!cfg.str("master_key_file").empty()) {
                try {
                    (void)store::load_master_key(o.master_key_file);
                } catch (const std::exception& e) {
                    throw ConfigError(cfg.where("master_key_file") + ": " + e.what());
                }
            }
            if (!o.entities_file.empty()) {
                try {
                    (void)read_entities(o.entities_file);
                } catch (const std::exception& e) {
                    throw ConfigError(cfg.where("entities") + ": " + e.what());
                }
            }
            // The API's files: its token file (read as at start) and, for HTTPS, its
            // certificate and key (the TLS library reads them when the API starts).
            if (const std::string t = cfg.str("api_tokens"); !t.empty()) {
                try {
                    (void)api::TokenFile::load(t);
                } catch (const std::exception& e) {
                    throw ConfigError(cfg.where("api_tokens") + ": " + e.what());
                }
            }
            std::cout << check_config << ": OK\n";
            return 0;
        }
        std::unique_ptr<api::ApiServer> api_server;
        if (const std::string a = api.empty() ? cfg.str("api") : api; !a.empty()) {
            api::ApiOptions ao;
            ao.listen = parse_metrics_address(a, "api");
            ao.cert_file = api_cert.empty() ? cfg.str("api_cert") : api_cert;
            ao.key_file = api_key.empty() ? cfg.str("api_key") : api_key;
            ao.tokens_file = api_tokens.empty() ? cfg.str("api_tokens") : api_tokens;
            ao.insecure_http = api_insecure_http || cfg.boolean("api_insecure_http", false);
            ao.store_url = o.store;
            ao.master_key_file = o.master_key_file;
            ao.version = CPNS_VERSION;
            ao.events = o.events = std::make_shared<EventHub>();
            ao.readiness = o.readiness = std::make_shared<Readiness>();
            api_server = std::make_unique<api::ApiServer>(std::move(ao));
        }
        asio::io_context io;
        ServerDaemon daemon(io, o);
        daemon.start();
        const auto reload = [&] {
            reload_config(
                cfg, !log_level.empty(), {"log_level", "max_connections_per_source", "entities"},
                [&](const Config& fresh) -> std::function<void()> {
                    check_known_keys(fresh, Program::kServer);
                    // At most the running max_connections (which needs a restart).
                    const std::size_t per_source = connection_limit(
                        fresh, "max_connections_per_source",
                        std::min(kDefaultGwConnectionsPerSource, o.max_connections),
                        o.max_connections);
                    // --entities on the command line wins over the file, as at start.
                    std::string file = entities.empty() ? fresh.str("entities") : entities;
                    if (!file.empty()) {
                        try {
                            (void)read_entities(file);
                        } catch (const std::exception& e) {
                            throw ConfigError(fresh.where("entities") + ": " + e.what());
                        }
                    }
                    return [&daemon, per_source, file] { daemon.reload(per_source, file); };
                });
        };
        if (api_server) api_server->start();
        run_until_stopped(
            io,
            [&] {
                if (api_server) api_server->stop();
                daemon.stop();
            },
            reload);
        return 0;
    } catch (const ConfigError& e) {
        std::cerr << "cpns-server: " << e.what() << "\n";
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "cpns-server: fatal: " << e.what() << "\n";
        return 3;
    }
}
