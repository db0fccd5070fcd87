// cpns-bench: what the CPNS Server, a PN GW and a PNE spend per operation.
//
// Micro-benchmarks of the key schedule, the codec and the PSK-TLS handshakes, and one macro
// benchmark of a whole simulated establishment. Figures and what they mean for capacity are
// in docs/benchmarks.md; scripts/bench.sh builds the release preset and runs everything.
#include <benchmark/benchmark.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <time.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "core/codec.hpp"
#include "core/crypto.hpp"
#include "sim/sim.hpp"
#ifdef CPNS_BENCH_HAVE_TLS
#include "tls/tls.hpp"
#endif

namespace {

using namespace cpns;

// Every input comes from a fixed seed: runs are comparable and nothing depends on the OS RNG.
constexpr std::uint64_t kSeed = 20240611;

// A rate per second of `per_iteration` items: "N/s" columns in the output.
benchmark::Counter rate(double per_iteration) {
    return benchmark::Counter(per_iteration, benchmark::Counter::kIsIterationInvariantRate);
}
// Seconds per item (the inverse of rate()): "time per PNE" columns in the output.
benchmark::Counter seconds_per(double items_per_iteration) {
    return benchmark::Counter(items_per_iteration, benchmark::Counter::kIsIterationInvariantRate |
                                                       benchmark::Counter::kInvert);
}

// The parameters one PNE's SK_PNE is bound to, as in a PNE-initiated 'All' setup where the
// PNE is the initiator and asked for a LocalEUKey (IDs shaped like the simulator's).
struct PneParams {
    SecretKey eukey;
    Bytes rand_pne;
    Bytes rand_server;
    PneContext ctx;

    explicit PneParams(Random& random)
        : eukey(random.key()),
          rand_pne(random.bytes(kRandSize)),
          rand_server(random.bytes(kRandSize)) {
        ctx.pne_id = "gw-1-pne-1";
        ctx.gw_id = "gw-1";
        ctx.pn_id = "pn-" + to_hex(random.bytes(6));
        ctx.flow = Flow::kPneInitiated;
        ctx.role = PneRole::kInitiator;
        ctx.setup = SetupKind::kAll;
        ctx.local_key_requested = true;
    }
};

// --- Key schedule -----------------------------------------------------------------------------

void BM_HmacSha256_64B(benchmark::State& state) {
    DeterministicRandom random(kSeed);
    const Bytes key = random.bytes(32);
    const Bytes data = random.bytes(64);
    for (auto _ : state) {
        auto mac = hmac_sha256(key, data);
        benchmark::DoNotOptimize(mac);
    }
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(data.size()));
    state.counters["hmac/s"] = rate(1);
}
BENCHMARK(BM_HmacSha256_64B);

// Calibration, not project code: OpenSSL's HMAC-SHA-256 of 64 bytes with one EVP_MAC_CTX
// initialised once and reused (EVP_MAC_init with a NULL key reuses the key): the bound for
// BM_HmacSha256_64B in the same run. hmac_sha256() above duplicates a per-thread context and
// sets the key on every call, and the gap between the two is that per-call cost.
void BM_Calibration_OpenSslHmacReusedCtx_64B(benchmark::State& state) {
    DeterministicRandom random(kSeed);
    const Bytes key = random.bytes(32);
    const Bytes data = random.bytes(64);
    EVP_MAC* mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
    EVP_MAC_CTX* ctx = mac != nullptr ? EVP_MAC_CTX_new(mac) : nullptr;
    char digest_name[] = "SHA256";
    const OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest_name, 0),
        OSSL_PARAM_construct_end()};
    if (ctx == nullptr || EVP_MAC_init(ctx, key.data(), key.size(), params) != 1) {
        state.SkipWithError("cannot set up OpenSSL HMAC");
    } else {
        std::array<std::uint8_t, 32> out{};
        for (auto _ : state) {
            std::size_t len = 0;
            if (EVP_MAC_init(ctx, nullptr, 0, nullptr) != 1 ||
                EVP_MAC_update(ctx, data.data(), data.size()) != 1 ||
                EVP_MAC_final(ctx, out.data(), &len, out.size()) != 1) {
                state.SkipWithError("OpenSSL HMAC failed");
                break;
            }
            benchmark::DoNotOptimize(out);
        }
        state.counters["hmac/s"] = rate(1);
    }
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
}
BENCHMARK(BM_Calibration_OpenSslHmacReusedCtx_64B);

// The KDF with the parameters of SK_PNE (FC 0x51): 2 randoms, 3 IDs, binding, empty list.
void BM_Kdf_SkPneParams(benchmark::State& state) {
    DeterministicRandom random(kSeed);
    const PneParams p(random);
    const Bytes binding = encode_setup_binding(p.ctx);
    const Bytes invited = encode_id_list(p.ctx.invited);
    for (auto _ : state) {
        auto out = kdf(p.eukey, Fc::kSkPne,
                       {p.rand_pne, p.rand_server, as_bytes(p.ctx.pne_id), as_bytes(p.ctx.gw_id),
                        as_bytes(p.ctx.pn_id), binding, invited});
        benchmark::DoNotOptimize(out);
    }
    state.counters["kdf/s"] = rate(1);
}
BENCHMARK(BM_Kdf_SkPneParams);

// What the CPNS Server derives for every PNE it authenticates: SK_PNE, the expected hash_PNE
// and hash_server_PNE (three KDF calls plus the P-encodings).
void BM_ServerPerPneDerivations(benchmark::State& state) {
    DeterministicRandom random(kSeed);
    const PneParams p(random);
    for (auto _ : state) {
        SecretKey sk = derive_sk_pne(p.eukey, p.rand_pne, p.rand_server, p.ctx);
        const Hash hash_pne = derive_hash_pne(p.eukey, p.rand_pne, p.rand_server, sk, p.ctx);
        const Hash hash_server =
            derive_hash_server_pne(p.eukey, p.rand_pne, p.rand_server, sk, hash_pne, p.ctx);
        benchmark::DoNotOptimize(sk);
        benchmark::DoNotOptimize(hash_server);
    }
    state.counters["pne/s"] = rate(1);
}
BENCHMARK(BM_ServerPerPneDerivations);

// One LocalEUKey copy: KEK derivation (one KDF) plus AES-256-KWP. The server makes two per
// PNE that asked for a LocalEUKey (one for the PNE, one for the PN GW).
void BM_WrapLocalEukey(benchmark::State& state) {
    DeterministicRandom random(kSeed);
    const PneParams p(random);
    const SecretKey local = random.key();
    for (auto _ : state) {
        Bytes wrapped = wrap_local_eukey(p.eukey, Recipient::kPne, p.ctx.pn_id, p.ctx.pne_id,
                                         p.ctx.gw_id, p.rand_server, p.rand_pne, local);
        benchmark::DoNotOptimize(wrapped.data());
    }
    state.counters["wrap/s"] = rate(1);
}
BENCHMARK(BM_WrapLocalEukey);

// The receiving side (a PNE or the PN GW): KEK derivation plus AES-256-KWP unwrap and check.
void BM_UnwrapLocalEukey(benchmark::State& state) {
    DeterministicRandom random(kSeed);
    const PneParams p(random);
    const SecretKey local = random.key();
    const Bytes wrapped = wrap_local_eukey(p.eukey, Recipient::kPne, p.ctx.pn_id, p.ctx.pne_id,
                                           p.ctx.gw_id, p.rand_server, p.rand_pne, local);
    for (auto _ : state) {
        std::optional<SecretKey> key =
            unwrap_local_eukey(p.eukey, Recipient::kPne, p.ctx.pn_id, p.ctx.pne_id, p.ctx.gw_id,
                               p.rand_server, p.rand_pne, wrapped);
        if (!key || !(*key == local)) {
            state.SkipWithError("unwrap_local_eukey did not return the wrapped key");
            break;
        }
        benchmark::DoNotOptimize(key);
    }
    state.counters["unwrap/s"] = rate(1);
}
BENCHMARK(BM_UnwrapLocalEukey);

// --- Codec ------------------------------------------------------------------------------------

// A PNE's join as the simulator's devices send it.
void fill_join(pb::PneJoin& join, const std::string& pne_id, bool enough_ui, Random& random) {
    join.set_pne_id(pne_id);
    auto& caps = *join.mutable_capabilities();
    caps.set_device_type(enough_ui ? "media-player" : "sensor");
    caps.set_manufacturer("sim");
    caps.set_model("model-7");
    caps.set_enough_ui(enough_ui);
    caps.add_pan_technologies("bluetooth");
    caps.add_services("audio-sink");
    auto& content = *join.add_contents();
    content.set_content_id("c-" + pne_id);
    content.set_media_type("audio/mpeg");
    content.set_title("Track 1");
    content.set_size_bytes(4'200'000);
    const Bytes rand = random.bytes(kRandSize);
    join.set_rand_pne(rand.data(), rand.size());
    join.set_local_eukey_requested(enough_ui);
}

// 5.2.1.1 step 4 (PN GW -> CPNS Server) for a PN of 10 PNEs.
pb::Envelope registration_request_10(Random& random) {
    pb::Envelope env;
    env.set_sender_id("gw-1");
    auto& m = *env.mutable_registration_request();
    m.set_pn_id("pn-" + to_hex(random.bytes(6)));
    auto& gw = *m.mutable_gw();
    gw.set_gw_id("gw-1");
    gw.mutable_capabilities()->set_device_type("home-hub");
    gw.mutable_capabilities()->set_manufacturer("sim");
    gw.mutable_capabilities()->set_enough_ui(true);
    gw.mutable_subscription()->set_subscriber_id("sub-gw-1");
    gw.mutable_subscription()->set_service_plan("cpns-basic");
    m.set_flow(pb::FLOW_PNE_INITIATED);
    m.set_setup_type(pb::SETUP_ALL);
    for (int i = 1; i <= 10; ++i) {
        auto& info = *m.add_pnes();
        info.set_role(i == 1 ? pb::ROLE_INITIATOR : pb::ROLE_INVITEE);
        fill_join(*info.mutable_join(), "gw-1-pne-" + std::to_string(i), i % 2 == 1, random);
    }
    return env;
}

// 5.2.1.1 step 1 (PNE -> PN GW).
pb::Envelope setup_request_small(Random& random) {
    pb::Envelope env;
    env.set_sender_id("gw-1-pne-1");
    auto& m = *env.mutable_setup_request();
    m.set_setup_type(pb::SETUP_ALL);
    fill_join(*m.mutable_join(), "gw-1-pne-1", true, random);
    return env;
}

// encode_frame takes the envelope by value: the copy is part of what a caller pays.
template <pb::Envelope (*Make)(Random&)>
void BM_EncodeFrame(benchmark::State& state) {
    DeterministicRandom random(kSeed);
    const pb::Envelope env = Make(random);
    std::size_t size = 0;
    for (auto _ : state) {
        Bytes frame = encode_frame(env);
        size = frame.size();
        benchmark::DoNotOptimize(frame.data());
    }
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(size));
    state.counters["frame_bytes"] = static_cast<double>(size);
    state.counters["frames/s"] = rate(1);
}
BENCHMARK(BM_EncodeFrame<registration_request_10>)->Name("BM_EncodeFrame/PnRegistrationRequest_10");
BENCHMARK(BM_EncodeFrame<setup_request_small>)->Name("BM_EncodeFrame/PnSetupRequest");

// decode_frame: parse plus validate() of every field.
template <pb::Envelope (*Make)(Random&)>
void BM_DecodeFrame(benchmark::State& state) {
    DeterministicRandom random(kSeed);
    const Bytes frame = encode_frame(Make(random));
    if (!std::holds_alternative<pb::Envelope>(decode_frame(frame))) {
        state.SkipWithError("the benchmark's frame does not decode");
        return;
    }
    for (auto _ : state) {
        auto decoded = decode_frame(frame);
        benchmark::DoNotOptimize(decoded);
    }
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(frame.size()));
    state.counters["frame_bytes"] = static_cast<double>(frame.size());
    state.counters["frames/s"] = rate(1);
}
BENCHMARK(BM_DecodeFrame<registration_request_10>)->Name("BM_DecodeFrame/PnRegistrationRequest_10");
BENCHMARK(BM_DecodeFrame<setup_request_small>)->Name("BM_DecodeFrame/PnSetupRequest");

// --- PSK-TLS handshakes in memory -------------------------------------------------------------
#ifdef CPNS_BENCH_HAVE_TLS

struct TlsSetup {
    tls::Mode mode;
    std::vector<std::string> suites;  // empty: the mode's default list
};

const TlsSetup kTls13{tls::Mode::kTls13, {}};
const TlsSetup kTls12PskGcm{tls::Mode::kTls12Psk, {"PSK-AES128-GCM-SHA256"}};
const TlsSetup kTls12EcdhePskChacha{tls::Mode::kTls12Psk, {"ECDHE-PSK-CHACHA20-POLY1305"}};

// CPU time of the calling thread: unlike a wall clock it does not count the time the thread
// waits for a core, which matters on a machine shared with builds. One read is a system call
// (about 0.4 us on the 2-core build machine); the server-only variant makes about a dozen per
// handshake, so its figures include a few microseconds of measuring.
double thread_cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// One full handshake between a client (PNE) and a server (PN GW) engine, bytes moved in
// memory. Time per iteration is both ends together; the "server_only" variant reports the CPU
// time of the server engine's calls only (construction, feed, take_output, not destruction):
// the figure that bounds how many PNE sessions one PN GW core can set up.
template <const TlsSetup* Setup, bool kServerOnly>
void BM_TlsHandshake(benchmark::State& state) {
    DeterministicRandom random(kSeed);
    const std::string identity = "gw-1-pne-1@pn-0a1b2c3d4e5f";
    const SecretKey psk = random.key();

    tls::TlsConfig server_config;
    server_config.role = tls::Role::kServer;
    server_config.mode = Setup->mode;
    server_config.suites = Setup->suites;
    server_config.psk_lookup = [&](std::string_view id) -> std::optional<SecretKey> {
        if (id == identity) return psk;
        return std::nullopt;
    };
    tls::TlsConfig client_config;
    client_config.role = tls::Role::kClient;
    client_config.mode = Setup->mode;
    client_config.suites = Setup->suites;
    const tls::TlsContext server_ctx(std::move(server_config));
    const tls::TlsContext client_ctx(std::move(client_config));

    std::string label;
    std::string error;  // outlives the loop: SkipWithError keeps the pointer's text
    for (auto _ : state) {
        double server_time = 0;
        tls::TlsEngine client(client_ctx, tls::ClientPsk{identity, psk});
        double t0 = thread_cpu_seconds();
        tls::TlsEngine server(server_ctx);
        server_time += thread_cpu_seconds() - t0;

        for (int flight = 0; flight < 8; ++flight) {
            if (client.handshake_done() && server.handshake_done()) break;
            if (client.has_output()) {
                const Bytes to_server = client.take_output();
                t0 = thread_cpu_seconds();
                server.feed(to_server);
                server_time += thread_cpu_seconds() - t0;
            }
            t0 = thread_cpu_seconds();
            const Bytes to_client = server.take_output();
            server_time += thread_cpu_seconds() - t0;
            if (!to_client.empty()) client.feed(to_client);
            if (client.failed() || server.failed()) break;
        }
        if (!client.handshake_done() || !server.handshake_done()) {
            error = "handshake did not complete: client " +
                    std::string(tls::to_string(client.error())) + ", server " +
                    std::string(tls::to_string(server.error())) + " " + server.error_detail();
            state.SkipWithError(error.c_str());
            break;
        }
        if (label.empty()) {
            label = server.version() + " " + server.cipher();
            if (const std::string group = server.key_exchange_group(); !group.empty())
                label += " " + group;
        }
        if constexpr (kServerOnly) {
            state.SetIterationTime(server_time);
        }
        // Engines are destroyed here, inside the timed region: freeing the SSL object is part
        // of a handshake's cost in a long-running PN GW.
    }
    state.SetLabel(label);
    state.counters["handshakes/s"] = rate(1);
}

BENCHMARK_TEMPLATE(BM_TlsHandshake, &kTls13, false)->Name("BM_TlsHandshake/tls13_psk_dhe");
BENCHMARK_TEMPLATE(BM_TlsHandshake, &kTls13, true)
    ->Name("BM_TlsHandshake/tls13_psk_dhe/server_only")
    ->UseManualTime();
BENCHMARK_TEMPLATE(BM_TlsHandshake, &kTls12PskGcm, false)
    ->Name("BM_TlsHandshake/tls12_psk_aes128_gcm");
BENCHMARK_TEMPLATE(BM_TlsHandshake, &kTls12PskGcm, true)
    ->Name("BM_TlsHandshake/tls12_psk_aes128_gcm/server_only")
    ->UseManualTime();
BENCHMARK_TEMPLATE(BM_TlsHandshake, &kTls12EcdhePskChacha, false)
    ->Name("BM_TlsHandshake/tls12_ecdhe_psk_chacha20");
BENCHMARK_TEMPLATE(BM_TlsHandshake, &kTls12EcdhePskChacha, true)
    ->Name("BM_TlsHandshake/tls12_ecdhe_psk_chacha20/server_only")
    ->UseManualTime();

#endif  // CPNS_BENCH_HAVE_TLS

// --- Whole establishment in the simulator ----------------------------------------------------

// One CPNS Server, one PN GW with 10 PNEs, PNE-initiated 'All' (5.2.1.1), no faults, no
// trace. The PNE mix is cpns-sim's default: odd-numbered PNEs have enough UI (LocalEUKey),
// PNEs 1-2, 5-6, 9-10 are on a secure PAN. Timed: from PN Setup Request to the last
// PN Establishment Notify, i.e. every role's work for every message (codec, key schedule,
// key wraps, state machines, the simulator's event queue). Not timed: building the
// simulator and entity discovery (step 0).
void BM_SimEstablishment(benchmark::State& state) {
    const int pnes = static_cast<int>(state.range(0));
    std::uint64_t seed = kSeed;
    for (auto _ : state) {
        state.PauseTiming();
        auto sim = std::make_unique<sim::Simulator>(seed++, sim::FaultConfig{}, false);
        sim::GwSpec spec;
        spec.id = "gw-1";
        for (int i = 1; i <= pnes; ++i) {
            sim::PneSpec p;
            p.id = "gw-1-pne-" + std::to_string(i);
            p.enough_ui = i % 2 == 1;
            p.pan_secure = ((i - 1) / 2) % 2 == 0;
            spec.pnes.push_back(p);
        }
        sim->add_gateway(spec);
        sim->discover_all();
        sim->run();
        state.ResumeTiming();

        sim->start_pne_setup("gw-1-pne-1", pb::SETUP_ALL);
        sim->run();

        state.PauseTiming();
        const sim::Summary s = sim->summary();
        const bool ok = s.pns_registered == 1 && s.pnes_authenticated == spec.pnes.size() &&
                        s.sk_checked == s.sk_agree && s.local_key_checked == s.local_key_agree;
        sim.reset();
        state.ResumeTiming();
        if (!ok) {
            state.SkipWithError("the simulated establishment did not authenticate every PNE");
            break;
        }
    }
    state.counters["pnes/s"] = rate(pnes);
    state.counters["time/pne"] = seconds_per(pnes);
}
BENCHMARK(BM_SimEstablishment)->Arg(10)->ArgName("pnes")->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
