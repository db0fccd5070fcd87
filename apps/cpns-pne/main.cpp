// cpns-pne: a PNE ("run": answer invitations; "setup": start a PN and print the outcome;
// "neighbours": list a running PNE's Entity Discovery neighbours).
#include <CLI/CLI.hpp>

#include <csignal>
#include <iostream>

#include "common/version.hpp"
#include "daemon/config_check.hpp"
#include "daemon/pne_daemon.hpp"
#include "sim/sim.hpp"

using namespace cpns;
using namespace cpns::daemon;

namespace {

// How long `neighbours` waits for the running PNE's answer (it answers at once).
constexpr int kControlAnswerTimeoutS = 10;

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{
        "cpns-pne: a PNE of OMA CPNS PN Establishment. It finds its PN GW (configured address or "
        "UDP multicast Entity Discovery) and keeps a PAN link to it: in clear on a secure PAN, "
        "PSK-TLS otherwise (pre-assigned key for a PNE without UI, LocalEUKey once assigned). "
        "'run' waits for invitations (5.2.1.2); 'setup' asks the PN GW for a PN (5.2.1.1), "
        "prints the outcome and exits 0 only if this PNE joined; 'neighbours' asks a running PNE "
        "(its control_listen) for its live Entity Discovery neighbours."};
    app.require_subcommand(0, 1);
    std::string check_config, token_file;
    bool print_default = false;
    app.add_option("--check-config", check_config,
                   "validate this configuration file (keys, types, ranges, key and token files) "
                   "without starting; prints 'FILE: OK' (exit 0) or the first error as "
                   "FILE:LINE:COL (exit 2)");
    app.add_flag("--print-default-config", print_default,
                 "print the commented default configuration and exit");
    std::string config_path, log_level, id, gw, keylog, pan_tls, trace_file, crash_at, metrics,
        log_format;
    app.add_option("-c,--config", config_path, "TOML configuration file (required)")
        ->check(CLI::ExistingFile);
    app.add_option("--id", id, "PNE ID (overrides the file)");
    app.add_option("--gw", gw, "PN GW address host:port (default: multicast discovery)");
    app.add_option("--log-level", log_level, "trace, debug, info, warn or error");
    app.add_option("--log-format", log_format,
                   "human (default) or json: one JSON object per line (time, level, daemon, "
                   "event, pn, peer, reason, msg)");
    app.add_option("--metrics", metrics,
                   "run only: serve Prometheus metrics on http://ADDR:PORT/metrics; a bare PORT "
                   "means 127.0.0.1:PORT (default: off)");
    app.add_option("--keylog", keylog, "append TLS secrets in NSS key-log format (debugging only)");
    app.add_option("--trace-file", trace_file,
                   "append a JSON-lines event trace (state transitions, messages, outcomes)");
    app.add_option(
        "--crash-at", crash_at,
        "testing aid: SIGKILL this process at a message boundary, WHEN:MESSAGE[:N] with WHEN "
        "before-send, send or recv (docs/operations.md, Crash points)");
    app.add_option("--pan-tls", pan_tls, "tls13 (default) or tls12 (RFC 5487/5489 PSK suites)");
    auto* run = app.add_subcommand(
        "run",
        "stay linked to the PN GW and answer invitations; serves 'neighbours' on the control "
        "endpoint ('control': a Unix socket by default)");
    run->fallthrough();  // run --check-config / --print-default-config
    auto* setup = app.add_subcommand("setup", "ask the PN GW for a PN and print the outcome");
    std::string type = "all";
    std::vector<std::string> invite;
    bool json = false;
    setup->add_option("-t,--type", type, "setup type: 1-1, all or list")
        ->check(CLI::IsMember({"1-1", "all", "list"}));
    setup->add_option("--invite", invite, "PNE IDs to invite (with --type list)")->delimiter(',');
    setup->add_flag("--json", json, "print the outcome as JSON");
    auto* leave = app.add_subcommand(
        "leave", "leave a PN (proven to the CPNS Server under the EUKey) and print the outcome");
    std::string leave_pn;
    leave->add_option("--pn", leave_pn, "the PN to leave")->required();
    leave->add_flag("--json", json, "print the outcome as JSON");
    auto* neighbours = app.add_subcommand(
        "neighbours", "print a running PNE's live neighbours as JSON (from its control endpoint)");
    std::string control;
    neighbours->add_option(
        "--control", control,
        "control endpoint of the running cpns-pne: unix:PATH, PATH or HOST:PORT (default: "
        "'control' from -c, else the default Unix socket $RUNTIME_DIRECTORY/control.sock, "
        "/run/cpns-pne/control.sock for root, $XDG_RUNTIME_DIR/cpns-pne/control.sock)");
    neighbours->add_option("--token-file", token_file,
                           "for a TCP control endpoint: the file holding its token (as "
                           "control_token_file)");
    app.set_version_flag("--version", cpns::version_text("cpns-pne"),
                         "print the version and the OpenSSL version, and exit");
    CLI11_PARSE(app, argc, argv);

    try {
        if (print_default) {
            std::cout << default_config(Program::kPne);
            return 0;
        }
        if (!check_config.empty()) {
            const Config checked = Config::load(check_config);
            check_known_keys(checked, Program::kPne);
            const PneOptions o = pne_options_from(checked);
            check_log_settings(checked);
            if (!o.device.metrics.empty()) parse_metrics_address(o.device.metrics, "metrics");
            if (!checked.str("control").empty() || !checked.str("control_listen").empty()) {
                const ControlAddress at = control_address_from(checked, "cpns-pne");
                if (!at.is_unix() && !o.control_token)
                    throw ConfigError(checked.where("control") +
                                      ": a TCP control endpoint needs control_token_file");
            }
            std::cout << check_config << ": OK\n";
            return 0;
        }
        if (app.get_subcommands().empty()) {
            std::cerr << "cpns-pne: a command is required (run --help for the list)\n";
            return 2;
        }
        if (config_path.empty()) throw ConfigError("--config (-c) is required");
        Config cfg = Config::load(config_path);  // replaced by each reload (SIGHUP)
        if (*neighbours) {
            const ControlAddress at = control_address_from(cfg, "cpns-pne", control);
            if (token_file.empty()) token_file = cfg.str("control_token_file");
            const std::string answer =
                control_request(at, "neighbours", "cpns-pne", kControlAnswerTimeoutS, token_file);
            if (auto error = control_error(answer)) {
                std::cerr << "cpns-pne: " << *error << "\n";
                return 1;
            }
            std::cout << answer << "\n";
            return 0;
        }
        PneOptions o = pne_options_from(cfg);
        if (!id.empty()) {
            if (!valid_id(id)) throw ConfigError("--id '" + id + "' is not a valid entity ID");
            o.role.pne_id = id;
        }
        if (!gw.empty()) o.gw = parse_address(gw, "--gw");
        if (!keylog.empty()) o.device.keylog = keylog;
        if (!trace_file.empty()) o.device.trace_file = trace_file;
        o.device.crash_at = crash_at;
        if (!metrics.empty()) o.device.metrics = metrics;
        // The one-shot commands never serve metrics: they would take the running PNE's port.
        if (!*run) o.device.metrics.clear();
        if (!o.device.metrics.empty()) parse_metrics_address(o.device.metrics, "metrics");
        if (!pan_tls.empty()) o.device.pan_tls = parse_tls_mode(pan_tls, "--pan-tls");
        // Only the long-running PNE serves the control endpoint ('setup' and 'leave' would
        // take its socket).
        if (*run) o.control = control_address_from(cfg, "cpns-pne");
        init_logging(o.role.pne_id, log_level.empty() ? cfg.str("log_level", "info") : log_level,
                     log_format.empty() ? cfg.str("log_format", "human") : log_format);
        PneTask task;
        if (*setup) {
            task.kind = PneTask::Kind::kSetup;
            task.setup_type = *sim::parse_setup_type(type);
            task.invited = invite;
            if (task.setup_type == pb::SETUP_INVITE_LIST && invite.empty())
                throw ConfigError("--type list needs --invite PNE[,PNE...]");
        }
        if (*leave) {
            if (!valid_id(leave_pn))
                throw ConfigError("--pn '" + leave_pn + "' is not a valid PN ID");
            task.kind = PneTask::Kind::kLeave;
            task.pn_id = leave_pn;
        }
        asio::io_context io;
        PneDaemon daemon(io, o, task);
        daemon.start();
        const auto reload = [&] {
            reload_config(cfg, !log_level.empty(), {"log_level"},
                          [](const Config& fresh) -> std::function<void()> {
                              check_known_keys(fresh, Program::kPne);
                              (void)pne_options_from(fresh);
                              return {};
                          });
        };
        run_until_stopped(
            io, [&] { daemon.stop(); }, reload);
        if (task.kind == PneTask::Kind::kRun) return 0;
        const auto& outcome = daemon.result() ? daemon.result() : daemon.early_failure();
        if (!outcome) {
            std::cerr << "cpns-pne: stopped before the establishment ended\n";
            return 1;
        }
        const auto report = to_report(o.role.pne_id, *outcome);
        std::cout << (json ? message_json(report) + "\n" : report_text(report));
        return outcome->success ? 0 : 1;
    } catch (const ConfigError& e) {
        std::cerr << "cpns-pne: " << e.what() << "\n";
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "cpns-pne: " << e.what() << "\n";
        return 3;
    }
}
