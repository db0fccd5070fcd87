// cpns-gw: the PN GW daemon ("run") and its operator commands ("invite", "status",
// "neighbours").
#include <CLI/CLI.hpp>

#include <csignal>
#include <iostream>

#include "common/version.hpp"
#include "daemon/config_check.hpp"
#include "daemon/gw_daemon.hpp"

using namespace cpns;
using namespace cpns::daemon;

namespace {

// How long the operator's command waits for the PN GW's answer: longer than every wait of
// an establishment added up (invitation, server, PNE authentication, registration).
constexpr int kControlAnswerTimeoutS = 180;

}  // namespace

int main(int argc, char** argv) {
    const std::string kControlHelp =
        "control endpoint of the running cpns-gw: unix:PATH, PATH or HOST:PORT (default: "
        "'control' from -c, else the default Unix socket $RUNTIME_DIRECTORY/control.sock, "
        "/run/cpns-gw/control.sock for root, $XDG_RUNTIME_DIR/cpns-gw/control.sock)";
    const std::string kTokenHelp =
        "for a TCP control endpoint: the file holding its token (as control_token_file)";
    CLI::App app{
        "cpns-gw: the PN GW of OMA CPNS PN Establishment. 'run' keeps the PAN side (PNEs over TCP, "
        "in clear or PSK-TLS; UDP multicast Entity Discovery) and the authenticated link to the "
        "CPNS Server; 'invite' starts the PN GW initiated flow (5.2.1.2) on a running cpns-gw and "
        "prints the outcome; 'status' prints its links, neighbours and PN Inventory; 'neighbours' "
        "lists its live Entity Discovery neighbours in detail."};
    app.require_subcommand(0, 1);
    std::string config_path, log_level = "", control, token_file, check_config;
    bool print_default = false;
    app.add_option("-c,--config", config_path, "TOML configuration file")->check(CLI::ExistingFile);
    app.add_option("--check-config", check_config,
                   "validate this configuration file of 'cpns-gw run' (keys, types, ranges, key "
                   "and token files) without starting; prints 'FILE: OK' (exit 0) or the first "
                   "error as FILE:LINE:COL (exit 2)");
    app.add_flag("--print-default-config", print_default,
                 "print the commented default configuration of 'cpns-gw run' and exit");

    auto* run = app.add_subcommand("run", "run the PN GW daemon (stops on SIGTERM/SIGINT)");
    run->fallthrough();  // run --check-config / --print-default-config
    std::string id, server, pan_listen, control_listen, keylog, ready_file, discovery, trace_file,
        crash_at, metrics, log_format;
    run->add_option("--id", id, "PN GW ID");
    run->add_option("--server", server, "CPNS Server address, host:port");
    run->add_option("--pan-listen", pan_listen, "PAN address for PNEs, host:port (0: any port)");
    run->add_option("--control-listen", control_listen,
                    "control endpoint: unix:PATH (a Unix socket, mode 0660) or HOST:PORT (TCP, "
                    "needs control_token_file); overrides 'control' (default: the Unix socket "
                    "in the runtime directory, docs/operations.md)");
    run->add_option("--discovery-group", discovery, "multicast group:port for discovery, or 'off'");
    run->add_option("--log-level", log_level, "trace, debug, info, warn or error");
    run->add_option("--log-format", log_format,
                    "human (default) or json: one JSON object per line (time, level, daemon, "
                    "event, pn, peer, reason, msg)");
    run->add_option("--metrics", metrics,
                    "serve Prometheus metrics on http://ADDR:PORT/metrics; a bare PORT means "
                    "127.0.0.1:PORT (default: off)");
    run->add_option("--keylog", keylog,
                    "append TLS secrets in NSS key-log format (debugging only)");
    run->add_option("--ready-file", ready_file, "write 'pan=ADDR control=ADDR' here once ready");
    run->add_option("--trace-file", trace_file,
                    "append a JSON-lines event trace (state transitions, messages, outcomes)");
    run->add_option(
        "--crash-at", crash_at,
        "testing aid: SIGKILL this process at a message boundary, WHEN:MESSAGE[:N] with WHEN "
        "before-send, send or recv (docs/operations.md, Crash points)");

    auto* invite =
        app.add_subcommand("invite", "invite PNEs into a new PN (5.2.1.2) and print the outcome");
    std::vector<std::string> pnes;
    bool json = false;
    invite->add_option("pne", pnes, "PNE IDs to invite (none: every discovered PNE)");
    invite->add_option("--control", control, kControlHelp);
    invite->add_option("--token-file", token_file, kTokenHelp);
    invite->add_flag("--json", json, "print the outcome as JSON");
    auto* status = app.add_subcommand("status", "print the running PN GW's state as JSON");
    status->add_option("--control", control, kControlHelp);
    status->add_option("--token-file", token_file, kTokenHelp);
    std::string pn_id, pne_id;
    auto* remove = app.add_subcommand(
        "remove",
        "remove a PNE from a PN (recorded by the CPNS Server first) and print the outcome");
    remove->add_option("--pn", pn_id, "PN ID")->required();
    remove->add_option("--pne", pne_id, "PNE ID")->required();
    remove->add_option("--control", control, kControlHelp);
    remove->add_option("--token-file", token_file, kTokenHelp);
    remove->add_flag("--json", json, "print the outcome as JSON");
    auto* add = app.add_subcommand(
        "add",
        "invite PNEs into an existing PN (authenticated as in 5.2.1.2; recorded by the CPNS "
        "Server, which tells the earlier members) and print the outcome");
    add->add_option("--pn", pn_id, "PN ID")->required();
    std::vector<std::string> add_pnes;
    add->add_option("pne", add_pnes, "PNE IDs to add (none: every discovered PNE not in the PN)");
    add->add_option("--control", control, kControlHelp);
    add->add_option("--token-file", token_file, kTokenHelp);
    add->add_flag("--json", json, "print the outcome as JSON");
    auto* rekey = app.add_subcommand(
        "rekey",
        "give a PNE a new LocalEUKey in a PN (authenticated as in 5.2.1.2; recorded by the CPNS "
        "Server; the old key is refused once the PNE confirms the new one) and print the outcome");
    rekey->add_option("--pn", pn_id, "PN ID")->required();
    rekey->add_option("--pne", pne_id, "PNE ID")->required();
    rekey->add_option("--control", control, kControlHelp);
    rekey->add_option("--token-file", token_file, kTokenHelp);
    rekey->add_flag("--json", json, "print the outcome as JSON");
    auto* dissolve = app.add_subcommand(
        "dissolve", "end a PN for every member (recorded by the CPNS Server first)");
    dissolve->add_option("--pn", pn_id, "PN ID")->required();
    dissolve->add_option("--control", control, kControlHelp);
    dissolve->add_option("--token-file", token_file, kTokenHelp);
    dissolve->add_flag("--json", json, "print the outcome as JSON");
    auto* neighbours = app.add_subcommand(
        "neighbours",
        "print the running PN GW's live neighbours as JSON (mode, how learnt, link, expiry)");
    neighbours->add_option("--control", control, kControlHelp);
    neighbours->add_option("--token-file", token_file, kTokenHelp);
    app.set_version_flag("--version", cpns::version_text("cpns-gw"),
                         "print the version and the OpenSSL version, and exit");
    CLI11_PARSE(app, argc, argv);

    try {
        if (print_default) {
            std::cout << default_config(Program::kGw);
            return 0;
        }
        if (!check_config.empty()) {
            const Config checked = Config::load(check_config);
            check_known_keys(checked, Program::kGw);
            const GwOptions o = gw_options_from(checked);
            check_log_settings(checked);
            if (!o.device.metrics.empty()) parse_metrics_address(o.device.metrics, "metrics");
            if (!o.control.is_unix() && !o.control_token)
                throw ConfigError(checked.where("control") +
                                  ": a TCP control endpoint needs control_token_file");
            std::cout << check_config << ": OK\n";
            return 0;
        }
        if (app.get_subcommands().empty()) {
            std::cerr << "cpns-gw: a command is required (run --help for the list)\n";
            return 2;
        }
        Config cfg = config_path.empty() ? Config{} : Config::load(config_path);
        if (*invite || *status || *neighbours || *remove || *dissolve || *add || *rekey) {
            const ControlAddress at = control_address_from(cfg, "cpns-gw", control);
            if (token_file.empty()) token_file = cfg.str("control_token_file");
            if (*status || *neighbours) {
                const std::string answer =
                    control_request(at, *status ? "status" : "neighbours", "cpns-gw",
                                    kControlAnswerTimeoutS, token_file);
                if (auto error = control_error(answer)) {
                    std::cerr << "cpns-gw: " << *error << "\n";
                    return 1;
                }
                std::cout << answer << "\n";
                return 0;
            }
            std::string line = "invite";
            for (const auto& p : pnes) line += " " + p;
            if (*remove) line = "remove " + pn_id + " " + pne_id;
            if (*rekey) line = "rekey " + pn_id + " " + pne_id;
            if (*dissolve) line = "dissolve " + pn_id;
            if (*add) {
                line = "add " + pn_id;
                for (const auto& p : add_pnes) line += " " + p;
            }
            const std::string answer =
                control_request(at, line, "cpns-gw", kControlAnswerTimeoutS, token_file);
            pb::OutcomeReport report;
            if (auto error = control_error(answer); error || !parse_json(answer, report)) {
                std::cerr << "cpns-gw: " << (error ? *error : answer) << "\n";
                return 1;
            }
            std::cout << (json ? answer + "\n" : report_text(report));
            return report.success() ? 0 : 1;
        }
        init_logging(cfg.str("id", "gw"),
                     log_level.empty() ? cfg.str("log_level", "info") : log_level,
                     log_format.empty() ? cfg.str("log_format", "human") : log_format);
        GwOptions o = [&] {
            if (config_path.empty())
                throw ConfigError("cpns-gw run needs --config (see docs/operations.md)");
            return gw_options_from(cfg, control_listen);
        }();
        if (!id.empty()) {
            if (!valid_id(id)) throw ConfigError("--id '" + id + "' is not a valid entity ID");
            o.role.gw_id = id;
        }
        if (!server.empty()) o.server = parse_address(server, "--server");
        if (!pan_listen.empty()) o.pan_listen = parse_address(pan_listen, "--pan-listen");
        if (!control_listen.empty())
            o.control = parse_control_address(control_listen, "--control-listen");
        if (!discovery.empty()) o.device.discovery_group = discovery == "off" ? "" : discovery;
        if (!keylog.empty()) o.device.keylog = keylog;
        if (!ready_file.empty()) o.ready_file = ready_file;
        if (!trace_file.empty()) o.device.trace_file = trace_file;
        o.device.crash_at = crash_at;
        if (!metrics.empty()) o.device.metrics = metrics;
        if (!o.device.metrics.empty()) parse_metrics_address(o.device.metrics, "metrics");
        asio::io_context io;
        GwDaemon daemon(io, o);
        daemon.start();
        const auto reload = [&] {
            reload_config(cfg, !log_level.empty(),
                          {"log_level", "pan_max_connections_per_source",
                           "control_max_connections_per_source"},
                          [&](const Config& fresh) -> std::function<void()> {
                              check_known_keys(fresh, Program::kGw);
                              const GwOptions next = gw_options_from(fresh, control_listen);
                              return [&daemon, pan = next.pan_max_connections_per_source,
                                      ctl = next.control_max_connections_per_source] {
                                  daemon.set_connection_limits(pan, ctl);
                              };
                          });
        };
        run_until_stopped(
            io, [&] { daemon.stop(); }, reload);
        return 0;
    } catch (const ConfigError& e) {
        std::cerr << "cpns-gw: " << e.what() << "\n";
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "cpns-gw: " << e.what() << "\n";
        return 3;
    }
}
