// libFuzzer target: one PNE (src/core/pne.hpp) fed a sequence of events (fuzz/roles.hpp):
// messages from any peer in clear or over TLS, time, timer ticks, TLS and link callbacks and
// the user's commands. The first byte picks the PNE of the cast (UI + LocalEUKey, no UI +
// pre-assigned key, secure PAN).
//
// Invariants, besides no crash, UB, leak or assertion: every effect is well-formed (valid,
// bounded messages; outcomes whose success and reason agree; no all-zero key), a fired timer
// moves the deadline past now, a busy PNE always has a deadline, the neighbour and membership
// tables stay within their bounds, and the exported state imports into a fresh PNE and
// exports again to the same bytes.
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <variant>

#include "fuzz/roles.hpp"

namespace {

using namespace cpns;
using namespace cpns::fuzz;
constexpr const char* kTarget = "cpns-fuzz-pne";

std::size_t g_established = 0;  // successful outcomes of this input

void check_effects(const PneEffects& fx) {
    const EffectChecker check(kTarget);
    for (const auto& e : fx)
        std::visit(Overloaded{
                       [&](const SendEffect& s) { check.send(s); },
                       [&](const StartTlsEffect& t) {
                           if (t.identity.empty() || !parse_psk_identity(t.identity))
                               fail(kTarget, "TLS started with an unparsable PSK identity");
                           check.key(t.psk, "TLS PSK");
                       },
                       [&](const StoreLocalKeyEffect& k) { check.key(k.key, "LocalEUKey"); },
                       [&](const SessionKeyEffect& k) { check.key(k.sk, "SK_PNE"); },
                       [&](const OutcomeEffect& o) {
                           check.outcome(o);
                           if (o.success) ++g_established;
                       },
                       [&](const TransitionEffect&) {},
                       [&](const MembershipEffect& m) {
                           if (!valid_id(m.pn_id))
                               fail(kTarget, "membership change of an invalid PN");
                       },
                   },
                   e);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    static const std::array<std::string, 3> kIds = {kPneA, kPneB, kPneC};
    const std::size_t which = data[0] % kIds.size();
    DeterministicRandom random(kRoleSeed + 2 + which);
    Pne pne(pne_config(kIds[which]), random);
    EventReader in(std::span<const std::uint8_t>(data + 1, size - 1));
    Millis now = kStart;
    g_established = 0;

    for (std::size_t n = 0; n < kMaxEvents && !in.done(); ++n) {
        PneEffects fx;
        switch (in.choose<Op>()) {
            case Op::kMessage: {
                const std::string from = in.peer();
                const Protection p = (in.byte() & 1) ? Protection::kTls : Protection::kClear;
                const auto body = in.bytes();
                if (in.truncated()) break;
                auto decoded = decode_body(body);
                if (auto* env = std::get_if<pb::Envelope>(&decoded))
                    fx = pne.on_message(from, *env, p, now);
                break;
            }
            case Op::kAdvance:
                now += in.u16() * kTick;
                break;
            case Op::kTimer:
                if (now >= pne.next_deadline()) {
                    fx = pne.on_timer(now);
                    if (pne.next_deadline() <= now) fail(kTarget, "a fired timer stays due");
                }
                break;
            case Op::kLink: {
                const Link kind = in.choose<Link>();
                const std::string peer = in.peer();
                if (in.truncated()) break;
                if (kind == Link::kEstablished)
                    fx = pne.on_tls_established(peer, now);
                else if (kind == Link::kFailed)
                    fx = pne.on_tls_failed(peer, now);
                else
                    fx = pne.on_link_down(peer, now);
                break;
            }
            case Op::kCommand: {
                const Command kind = in.choose<Command>();
                if (kind == Command::kDiscover) {
                    fx = pne.discover(now);
                    break;
                }
                if (kind == Command::kLifecycle) {
                    // Leave a PN it holds (or, holding none, any text).
                    const std::uint8_t pick = in.byte();
                    std::string pn;
                    if (pne.memberships().empty()) {
                        pn = in.str();
                    } else {
                        auto it = pne.memberships().begin();
                        std::advance(it, pick % pne.memberships().size());
                        pn = it->first;
                    }
                    if (in.truncated()) break;
                    fx = pne.leave(pn, now);
                    break;
                }
                const std::string gw = in.peer();
                const auto type = static_cast<pb::SetupType>(in.byte() % 4);
                auto invited = in.peer_list();
                if (in.truncated()) break;
                fx = pne.start_setup(gw, type, std::move(invited), now);
                break;
            }
            case Op::kCount:
                break;
        }
        check_effects(fx);
        if (pne.neighbours().size() > kMaxNeighbours) fail(kTarget, "neighbour table unbounded");
        if (pne.memberships().size() > kMaxPnsPerPne) fail(kTarget, "membership table unbounded");
        if (pne.busy() && pne.next_deadline() == kNever)
            fail(kTarget, "a busy PNE waits without a timeout");
    }

    const pb::PneState state = pne.export_state();
    DeterministicRandom other(1);
    Pne again(pne_config(kIds[which]), other);
    if (!again.import_state(state)) fail(kTarget, "a PNE refuses its own exported state");
    if (deterministic_bytes(again.export_state()) != deterministic_bytes(state))
        fail(kTarget, "export -> import -> export changed the PNE state");
    if (std::getenv("CPNS_FUZZ_VERBOSE"))  // make_corpus.sh: do the seeds establish PNs?
        std::fprintf(stderr, "%s: %zu establishment(s) succeeded\n", kTarget, g_established);
    return 0;
}
