// libFuzzer target: one PN GW (src/core/gateway.hpp) configured as in fuzz/roles.hpp, fed a
// sequence of events: messages from any PNE or server identity in clear or over TLS, time,
// timer ticks, TLS handshakes with any PSK identity, link losses for any reason, and the
// user's discover / invite commands.
//
// Invariants, besides no crash, UB, leak or assertion: every effect is well-formed (valid,
// bounded messages; outcomes whose success and reason agree; no all-zero LocalEUKey), a fired
// timer moves the deadline past now, no session waits without a deadline, sessions,
// neighbours and kept PNs stay within their bounds, the PN GW never holds a PNE's EUKey
// (docs/security.md), and the exported state imports into a fresh PN GW and exports again to
// the same bytes.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <variant>

#include "fuzz/roles.hpp"

namespace {

using namespace cpns;
using namespace cpns::fuzz;
constexpr const char* kTarget = "cpns-fuzz-gateway";

std::size_t g_established = 0;  // successful outcomes of this input

void check_effects(const GatewayEffects& fx) {
    const EffectChecker check(kTarget);
    for (const auto& e : fx)
        std::visit(Overloaded{
                       [&](const SendEffect& s) { check.send(s); },
                       [&](const CloseLinkEffect& c) {
                           if (c.peer.empty()) fail(kTarget, "close of an unnamed link");
                       },
                       [&](const StoreInventoryEffect& s) {
                           if (s.inventory.gw_id() != kGwId)
                               fail(kTarget, "kept another PN GW's inventory");
                       },
                       [&](const StoreLocalKeyEffect& k) { check.key(k.key, "LocalEUKey"); },
                       [&](const OutcomeEffect& o) {
                           check.outcome(o);
                           if (o.success) ++g_established;
                       },
                       [&](const TransitionEffect&) {},
                   },
                   e);
}

bool holds(const Bytes& haystack, const SecretKey& key) {
    const ByteView k = key.view();
    return std::search(haystack.begin(), haystack.end(), k.begin(), k.end()) != haystack.end();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    DeterministicRandom random(kRoleSeed + 1);
    Gateway gw(gw_config(), random);
    gw.set_endpoint("127.0.0.1:47010");
    EventReader in(std::span<const std::uint8_t>(data, size));
    Millis now = kStart;
    g_established = 0;

    for (std::size_t n = 0; n < kMaxEvents && !in.done(); ++n) {
        GatewayEffects fx;
        switch (in.choose<Op>()) {
            case Op::kMessage: {
                const std::string from = in.peer();
                const Protection p = (in.byte() & 1) ? Protection::kTls : Protection::kClear;
                const auto body = in.bytes();
                if (in.truncated()) break;
                auto decoded = decode_body(body);
                if (auto* env = std::get_if<pb::Envelope>(&decoded))
                    fx = gw.on_message(from, *env, p, now);
                break;
            }
            case Op::kAdvance:
                now += in.u16() * kTick;
                break;
            case Op::kTimer:
                if (now >= gw.next_deadline()) {
                    fx = gw.on_timer(now);
                    if (gw.next_deadline() <= now) fail(kTarget, "a fired timer stays due");
                }
                break;
            case Op::kLink: {
                const Link kind = in.choose<Link>();
                const std::string peer = in.peer();
                if (kind == Link::kEstablished) {
                    // As the transport does: the identity's PSK first, then the callback.
                    const std::string identity = in.str();
                    if (in.truncated()) break;
                    if (auto psk = gw.tls_psk_for(identity); psk && psk->is_zero())
                        fail(kTarget, "an all-zero PSK for a TLS identity");
                    fx = gw.on_tls_established(peer, identity, now);
                } else if (kind == Link::kFailed) {
                    if (in.truncated()) break;
                    fx = gw.on_tls_failed(peer, now);
                } else {
                    // The daemon passes a reason for every link it loses.
                    pb::FailureReason reason = in.reason();
                    if (reason == pb::REASON_NONE) reason = pb::PEER_UNREACHABLE;
                    if (in.truncated()) break;
                    fx = gw.on_link_down(peer, now, reason);
                }
                break;
            }
            case Op::kCommand: {
                const Command kind = in.choose<Command>();
                if (kind == Command::kDiscover) {
                    fx = gw.discover(now);
                    break;
                }
                if (kind == Command::kLifecycle) {
                    // A PN it holds (or, holding none, any text), then add / remove / dissolve.
                    const std::uint8_t pick = in.byte();
                    const std::uint8_t op = in.byte() % 3;
                    std::string pn;
                    if (gw.inventory().empty()) {
                        pn = in.str();
                    } else {
                        auto it = gw.inventory().begin();
                        std::advance(it, pick % gw.inventory().size());
                        pn = it->first;
                    }
                    if (op == 0) {
                        auto pnes = in.peer_list();
                        if (in.truncated()) break;
                        fx = gw.add(pn, std::move(pnes), now);
                    } else if (op == 1) {
                        const std::string pne = in.peer();
                        if (in.truncated()) break;
                        fx = gw.remove(pn, pne, now);
                    } else {
                        if (in.truncated()) break;
                        fx = gw.dissolve(pn, now);
                    }
                    break;
                }
                auto pnes = in.peer_list();
                if (in.truncated()) break;
                fx = gw.invite(std::move(pnes), now);
                break;
            }
            case Op::kCount:
                break;
        }
        check_effects(fx);
        if (gw.active_sessions() > kMaxGwSessions) fail(kTarget, "sessions unbounded");
        if (gw.neighbours().size() > kMaxNeighbours) fail(kTarget, "neighbour table unbounded");
        if (gw.inventory().size() > kMaxPnsPerGw) fail(kTarget, "inventory unbounded");
        if (gw.active_sessions() > 0 && gw.next_deadline() == kNever)
            fail(kTarget, "a session waits without a timeout");
    }

    const Bytes snapshot = gw.snapshot();
    const Cast& k = cast();
    if (holds(snapshot, k.eukey_a) || holds(snapshot, k.eukey_b) || holds(snapshot, k.eukey_c))
        fail(kTarget, "the PN GW holds a PNE's EUKey");
    const pb::GwState state = gw.export_state();
    DeterministicRandom other(1);
    Gateway again(gw_config(), other);
    if (!again.import_state(state)) fail(kTarget, "a PN GW refuses its own exported state");
    if (deterministic_bytes(again.export_state()) != deterministic_bytes(state))
        fail(kTarget, "export -> import -> export changed the PN GW state");
    if (std::getenv("CPNS_FUZZ_VERBOSE"))  // make_corpus.sh: do the seeds establish PNs?
        std::fprintf(stderr, "%s: %zu establishment(s) succeeded\n", kTarget, g_established);
    return 0;
}
