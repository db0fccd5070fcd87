// cpns-pne: a PNE ("run": answer invitations; "setup": start a PN and print the outcome;
// "neighbours": list a running PNE's Entity Discovery neighbours).
#include <CLI/CLI.hpp>

#include <csignal>
#include <iostream>

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
    app.require_subcommand(1);
    std::string config_path, log_level, id, gw, keylog, pan_tls, trace_file, crash_at, metrics,
        log_format;
    app.add_option("-c,--config", config_path, "TOML configuration file")
        ->required()
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
    auto* run = app.add_subcommand("run", "stay linked to the PN GW and answer invitations");
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
        "neighbours", "print a running PNE's live neighbours as JSON (from its control_listen)");
    std::string control;
    neighbours->add_option("--control", control,
                           "control address of the running cpns-pne (default: control_listen)");
    CLI11_PARSE(app, argc, argv);

    try {
        Config cfg = Config::load(config_path);
        if (*neighbours) {
            if (control.empty()) control = cfg.str("control_listen");
            if (control.empty())
                throw ConfigError(cfg.where("control_listen") +
                                  ": not set (the PNE has no control endpoint); or give --control");
            const auto at = parse_address(control, "control");
            if (at.port == 0)
                throw ConfigError("control_listen has port 0: give the PNE's port with --control");
            std::cout << control_request(at, "neighbours", "cpns-pne", kControlAnswerTimeoutS)
                      << "\n";
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
        run_until_stopped(io, [&] { daemon.stop(); });
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
