// libFuzzer target: one CPNS Server (src/core/server.hpp) with the cast provisioned (fuzz/
// roles.hpp) fed a sequence of events: messages from any PN GW identity, time, timer ticks
// and the store's answers to its persist requests (durable or failed, for any PN).
//
// Invariants, besides no crash, UB, leak or assertion: every effect is well-formed (valid,
// bounded messages; outcomes whose success and reason agree; a persisted inventory that
// validates and names the asking PN GW; no all-zero SK_PNE), a fired timer moves the
// deadline past now, no session waits without a deadline, and sessions stay within
// kMaxServerSessions.
#include <cstddef>
#include <cstdint>
#include <string>
#include <variant>

#include "fuzz/roles.hpp"

namespace {

using namespace cpns;
using namespace cpns::fuzz;
constexpr const char* kTarget = "cpns-fuzz-server";

std::size_t g_established = 0;  // successful outcomes of this input

void check_effects(const ServerEffects& fx) {
    const EffectChecker check(kTarget);
    for (const auto& e : fx)
        std::visit(Overloaded{
                       [&](const SendEffect& s) { check.send(s); },
                       [&](const PersistPnEffect& p) {
                           if (!valid_id(p.gw_id) || !valid_id(p.inventory.pn_id()))
                               fail(kTarget, "persist request with an invalid ID");
                           if (p.inventory.gw_id() != p.gw_id)
                               fail(kTarget, "persist request for another PN GW's inventory");
                       },
                       [&](const SessionKeyEffect& k) { check.key(k.sk, "SK_PNE"); },
                       [&](const OutcomeEffect& o) {
                           check.outcome(o);
                           if (o.success) ++g_established;
                       },
                       [&](const TransitionEffect&) {},
                       [&](const ChangePnEffect& c) {
                           if (!valid_id(c.gw_id) || !valid_id(c.pn_id))
                               fail(kTarget, "change request with an invalid ID");
                       },
                   },
                   e);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const MemoryDirectory directory = [] {
        MemoryDirectory d;
        provision(d);
        return d;
    }();
    DeterministicRandom random(kRoleSeed);
    Server server(server_config(), directory, random);
    EventReader in(std::span<const std::uint8_t>(data, size));
    Millis now = kStart;
    g_established = 0;

    for (std::size_t n = 0; n < kMaxEvents && !in.done(); ++n) {
        ServerEffects fx;
        switch (in.choose<Op>()) {
            case Op::kMessage: {
                const std::string from = in.peer();
                in.byte();  // protection: the server's links are always PSK-TLS
                const auto body = in.bytes();
                if (in.truncated()) break;
                auto decoded = decode_body(body);
                if (auto* env = std::get_if<pb::Envelope>(&decoded))
                    fx = server.on_message(from, *env, now);
                break;
            }
            case Op::kAdvance:
                now += in.u16() * kTick;
                break;
            case Op::kTimer:
                if (now >= server.next_deadline()) {
                    fx = server.on_timer(now);
                    if (server.next_deadline() <= now) fail(kTarget, "a fired timer stays due");
                }
                break;
            case Op::kLink: {
                in.choose<Link>();  // the server's only callback is the store's answer
                const std::string gw = in.peer();
                const std::string pn = in.str();
                const pb::FailureReason result = in.reason();
                if (in.truncated()) break;
                fx = server.on_persisted(gw, pn, result, now);
                break;
            }
            case Op::kCommand:
            case Op::kCount:
                break;
        }
        check_effects(fx);
        if (server.active_sessions() > kMaxServerSessions) fail(kTarget, "sessions unbounded");
        if (server.active_sessions() > 0 && server.next_deadline() == kNever)
            fail(kTarget, "a session waits without a timeout");
    }
    if (std::getenv("CPNS_FUZZ_VERBOSE"))  // make_corpus.sh: do the seeds establish PNs?
        std::fprintf(stderr, "%s: %zu establishment(s) succeeded\n", kTarget, g_established);
    return 0;
}
