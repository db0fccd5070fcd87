// cpns-bench: what the CPNS Server, a PN GW and a PNE spend per operation.
//
// Micro-benchmarks of the key schedule, the codec and the PSK-TLS handshakes, and one macro
// benchmark of a whole simulated establishment. Figures and what they mean for capacity are
// in docs/benchmarks.md; scripts/bench.sh builds the release preset and runs everything.
#include <benchmark/benchmark.h>

#include <libpq-fe.h>
#include <malloc.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/ssl.h>
#include <sqlite3.h>
#include <time.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "core/codec.hpp"
#include "core/crypto.hpp"
#include "core/server.hpp"
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

// Row a of scripts/bench.sh's table (docs/benchmarks.md): the KDF with the parameters of
// SK_PNE under an EUKey keyed once (KeyedHmac), as the server and the PNE call it: the pads
// are hashed once per EUKey per session, and each KDF call builds S and hashes it.
void BM_Kdf_SkPneParams_Keyed(benchmark::State& state) {
    DeterministicRandom random(kSeed);
    const PneParams p(random);
    const Bytes binding = encode_setup_binding(p.ctx);
    const Bytes invited = encode_id_list(p.ctx.invited);
    KeyedHmac keyed(p.eukey);
    for (auto _ : state) {
        auto out = kdf(keyed, Fc::kSkPne,
                       {p.rand_pne, p.rand_server, as_bytes(p.ctx.pne_id), as_bytes(p.ctx.gw_id),
                        as_bytes(p.ctx.pn_id), binding, invited});
        benchmark::DoNotOptimize(out);
    }
    state.counters["kdf/s"] = rate(1);
}
BENCHMARK(BM_Kdf_SkPneParams_Keyed);

// S = FC || P0 || L0 || ... exactly as the KDF builds it (docs/key-schedule.md), made here
// independently so that the bound below hashes the very bytes the KDF hashes.
Bytes kdf_input_bytes(Fc fc, std::initializer_list<ByteView> params) {
    Bytes s{static_cast<std::uint8_t>(fc)};
    for (const ByteView v : params) {
        s.insert(s.end(), v.begin(), v.end());
        s.push_back(static_cast<std::uint8_t>(v.size() >> 8));
        s.push_back(static_cast<std::uint8_t>(v.size() & 0xFF));
    }
    return s;
}

// The bound of row a, not project code: a bare HMAC-SHA-256 over the same S, OpenSSL's
// EVP_MAC context keyed once and re-initialised per call (EVP_MAC_init with a NULL key).
// Checks once that it computes the KDF's output.
void BM_Bound_BareHmac_SkPneInput(benchmark::State& state) {
    DeterministicRandom random(kSeed);
    const PneParams p(random);
    const Bytes binding = encode_setup_binding(p.ctx);
    const Bytes invited = encode_id_list(p.ctx.invited);
    const Bytes s = kdf_input_bytes(
        Fc::kSkPne, {p.rand_pne, p.rand_server, as_bytes(p.ctx.pne_id), as_bytes(p.ctx.gw_id),
                     as_bytes(p.ctx.pn_id), binding, invited});
    EVP_MAC* mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
    EVP_MAC_CTX* ctx = mac != nullptr ? EVP_MAC_CTX_new(mac) : nullptr;
    char digest_name[] = "SHA256";
    const OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest_name, 0),
        OSSL_PARAM_construct_end()};
    std::array<std::uint8_t, 32> out{};
    std::size_t len = 0;
    if (ctx == nullptr || EVP_MAC_init(ctx, p.eukey.view().data(), kKeySize, params) != 1 ||
        EVP_MAC_update(ctx, s.data(), s.size()) != 1 ||
        EVP_MAC_final(ctx, out.data(), &len, out.size()) != 1) {
        state.SkipWithError("cannot set up OpenSSL HMAC");
    } else if (out != kdf(p.eukey, Fc::kSkPne,
                          {p.rand_pne, p.rand_server, as_bytes(p.ctx.pne_id), as_bytes(p.ctx.gw_id),
                           as_bytes(p.ctx.pn_id), binding, invited})) {
        state.SkipWithError("the bound does not hash the KDF's input");
    } else {
        for (auto _ : state) {
            if (EVP_MAC_init(ctx, nullptr, 0, nullptr) != 1 ||
                EVP_MAC_update(ctx, s.data(), s.size()) != 1 ||
                EVP_MAC_final(ctx, out.data(), &len, out.size()) != 1) {
                state.SkipWithError("OpenSSL HMAC failed");
                break;
            }
            benchmark::DoNotOptimize(out);
        }
        state.counters["hmac/s"] = rate(1);
        state.counters["input_bytes"] = static_cast<double>(s.size());
    }
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
}
BENCHMARK(BM_Bound_BareHmac_SkPneInput);

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

// --- PNE authentication through the real Server role (row b) ---------------------------------

// The PNE mix of rows b: a PN of kRowBPnes PNEs (PN GW initiated, 'All'), the odd-numbered ones
// with enough UI (a LocalEUKey, wrapped for the PNE and for the PN GW), the others without.
constexpr int kRowBPnes = 10;

std::string row_b_pne_id(int i) {
    return "gw-1-pne-" + std::to_string(i);
}

// CPU time of the calling thread (see thread_cpu_seconds below for why a CPU clock).
double row_b_cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// What the PN GW and the PNEs would answer: each PNE's hash_PNE over what the server sent.
// Computed by the benchmark between the timed parts (it is not the server's work).
pb::Envelope row_b_auth_response(const pb::PnRegistrationRequest& req,
                                 const pb::AuthenticationRequest& a,
                                 const std::map<std::string, SecretKey>& keys) {
    pb::Envelope env;
    env.set_sender_id("gw-1");
    auto& r = *env.mutable_auth_response();
    r.set_pn_id(a.pn_id());
    const ByteView rand_server = bytes_of(a.rand_server());
    for (const auto& info : req.pnes()) {
        const pb::PneJoin& join = info.join();
        PneContext ctx;
        ctx.pne_id = join.pne_id();
        ctx.gw_id = "gw-1";
        ctx.pn_id = a.pn_id();
        ctx.flow = Flow::kGwInitiated;
        ctx.role = PneRole::kInvitee;
        ctx.local_key_requested = join.local_eukey_requested();
        ctx.join_digest = join_digest(join);
        const SecretKey& eukey = keys.at(join.pne_id());
        const SecretKey sk = derive_sk_pne(eukey, bytes_of(join.rand_pne()), rand_server, ctx);
        const Hash h = derive_hash_pne(eukey, bytes_of(join.rand_pne()), rand_server, sk, ctx);
        auto& res = *r.add_results();
        res.set_pne_id(join.pne_id());
        res.set_hash_pne(h.data(), h.size());
    }
    return env;
}

// Row b of scripts/bench.sh's table: PNE authentications per second through the real Server
// role, no I/O. Timed (CPU time of this thread): decoding the PN Registration Request frame,
// Server::on_message, encoding the Authentication Request; decoding the Authentication
// Response, Server::on_message (verify each hash_PNE), Server::on_persisted (each
// hash_server_PNE) and encoding every message the role returns. Not timed: the PN GW's and
// the PNEs' side (their frames and hash_PNE).
void BM_ServerRole_PneAuth(benchmark::State& state) {
    DeterministicRandom random(kSeed);
    MemoryDirectory dir;
    dir.add("gw-1", EntityRecord{EntityKind::kGw, random.key(), EntityStatus::kActive});
    std::map<std::string, SecretKey> keys;
    for (int i = 1; i <= kRowBPnes; ++i) {
        keys.emplace(row_b_pne_id(i), random.key());
        dir.add(row_b_pne_id(i),
                EntityRecord{EntityKind::kPne, keys.at(row_b_pne_id(i)), EntityStatus::kActive});
    }
    DeterministicRandom server_random(kSeed + 1);
    ServerConfig cfg;
    cfg.wall_clock_ms = [] { return std::uint64_t{1'700'000'000'000}; };
    Server server(cfg, dir, server_random);

    pb::Envelope request = registration_request_10(random);
    auto& req = *request.mutable_registration_request();
    req.set_flow(pb::FLOW_GW_INITIATED);
    req.set_setup_type(pb::SETUP_UNSPECIFIED);
    for (auto& info : *req.mutable_pnes()) info.set_role(pb::ROLE_INVITEE);

    Millis now = 1;
    std::uint64_t n = 0;
    std::string error;
    std::size_t authenticated = 0;
    for (auto _ : state) {
        req.set_pn_id("pn-" + std::to_string(++n));
        const Bytes reg_frame = encode_frame(request);
        double cpu = 0;
        double t0 = row_b_cpu_seconds();
        auto decoded = decode_frame(reg_frame);
        ServerEffects fx = server.on_message("gw-1", std::get<pb::Envelope>(decoded), ++now);
        const pb::AuthenticationRequest* auth = nullptr;
        std::size_t out_bytes = 0;
        for (const auto& e : fx) {
            if (const auto* send = std::get_if<SendEffect>(&e)) {
                out_bytes += encode_frame(send->msg).size();
                if (send->msg.has_auth_request()) auth = &send->msg.auth_request();
            }
        }
        cpu += row_b_cpu_seconds() - t0;
        if (auth == nullptr) {
            error = "the server did not ask the PNEs to authenticate";
            state.SkipWithError(error.c_str());
            break;
        }
        const Bytes resp_frame = encode_frame(row_b_auth_response(req, *auth, keys));

        t0 = row_b_cpu_seconds();
        decoded = decode_frame(resp_frame);
        fx = server.on_message("gw-1", std::get<pb::Envelope>(decoded), ++now);
        std::string persisted_gw;
        for (const auto& e : fx)
            if (const auto* persist = std::get_if<PersistPnEffect>(&e))
                persisted_gw = persist->gw_id;
        fx = server.on_persisted("gw-1", req.pn_id(), pb::REASON_NONE, ++now);
        std::size_t registered = 0;
        for (const auto& e : fx) {
            if (const auto* send = std::get_if<SendEffect>(&e)) {
                out_bytes += encode_frame(send->msg).size();
                if (send->msg.has_registration_response())
                    for (const auto& r : send->msg.registration_response().results())
                        registered += r.authenticated();
            }
        }
        cpu += row_b_cpu_seconds() - t0;
        state.SetIterationTime(cpu);
        benchmark::DoNotOptimize(out_bytes);
        if (persisted_gw != "gw-1" || registered != kRowBPnes) {
            error = "not every PNE was authenticated and registered (" +
                    std::to_string(registered) + " of " + std::to_string(kRowBPnes) + ")";
            state.SkipWithError(error.c_str());
            break;
        }
        authenticated += registered;
    }
    state.counters["pne_auth/s"] = rate(kRowBPnes);
    state.counters["pnes_checked"] = static_cast<double>(authenticated);
}
BENCHMARK(BM_ServerRole_PneAuth)->UseManualTime();

// The bound of row b: only the key-schedule calls the server makes for the same PN, the
// same mix: per PNE its EUKey keyed once, SK_PNE, hash_PNE, hash_server_PNE; per PNE with a
// LocalEUKey a fresh key and two copies (KEK and AES-KWP for the PNE, and for the PN GW under
// EUKey_GW keyed once per PN). No codec, no role, no digests of messages.
void BM_Bound_KeySchedule_PneMix(benchmark::State& state) {
    DeterministicRandom random(kSeed);
    const SecretKey gw_eukey = random.key();
    std::vector<PneParams> pnes;
    for (int i = 1; i <= kRowBPnes; ++i) {
        pnes.emplace_back(random);
        pnes.back().ctx.pne_id = row_b_pne_id(i);
        pnes.back().ctx.flow = Flow::kGwInitiated;
        pnes.back().ctx.role = PneRole::kInvitee;
        pnes.back().ctx.setup = SetupKind::kNone;
        pnes.back().ctx.local_key_requested = i % 2 == 1;
    }
    for (auto _ : state) {
        const double t0 = row_b_cpu_seconds();
        std::optional<KeyedHmac> gw_mac;
        for (const PneParams& p : pnes) {
            KeyedHmac keyed(p.eukey);
            if (p.ctx.local_key_requested) {
                if (!gw_mac) gw_mac.emplace(gw_eukey);
                const SecretKey local = random.key();
                Bytes a = wrap_local_eukey(keyed, Recipient::kPne, p.ctx.pn_id, p.ctx.pne_id,
                                           p.ctx.gw_id, p.rand_server, p.rand_pne, local);
                Bytes b = wrap_local_eukey(*gw_mac, Recipient::kGw, p.ctx.pn_id, p.ctx.pne_id,
                                           p.ctx.gw_id, p.rand_server, p.rand_pne, local);
                benchmark::DoNotOptimize(a.data());
                benchmark::DoNotOptimize(b.data());
            }
            SecretKey sk = derive_sk_pne(keyed, p.rand_pne, p.rand_server, p.ctx);
            const Hash h = derive_hash_pne(keyed, p.rand_pne, p.rand_server, sk, p.ctx);
            const Hash hs = derive_hash_server_pne(keyed, p.rand_pne, p.rand_server, sk, h, p.ctx);
            benchmark::DoNotOptimize(hs);
        }
        state.SetIterationTime(row_b_cpu_seconds() - t0);  // the same clock as the project's
    }
    state.counters["pne_auth/s"] = rate(kRowBPnes);
}
BENCHMARK(BM_Bound_KeySchedule_PneMix)->UseManualTime();

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

// --- The bound of row e: a bare server-side OpenSSL handshake ----------------------------------
//
// Not project code: OpenSSL alone, configured as src/tls configures a PAN server (TLS 1.3 only,
// external PSK with psk_dhe_ke, groups X25519 and P-256, the same two suites, no tickets, no
// session cache, released idle buffers), the client written the same way. Timed with the
// thread's CPU clock: the server's SSL_new, its memory BIOs, every SSL_do_handshake and
// BIO transfer on its side, the read that takes the client's Finished, and SSL_free. The
// project's figure is the CPU a real cpns-gw spends per handshake at its PAN endpoint under
// many concurrent clients (scripts/bench.sh, row e).

struct BareTls {
    static constexpr std::string_view kIdentity = "pre:pne-0001";
    std::array<unsigned char, kKeySize> key{};
    SSL_CTX* server = nullptr;
    SSL_CTX* client = nullptr;

    static SSL_SESSION* session(SSL* ssl, const unsigned char* key) {
        static constexpr std::array<unsigned char, 2> kAes128Gcm = {0x13, 0x01};
        SSL_SESSION* s = SSL_SESSION_new();
        if (s == nullptr) return nullptr;
        if (SSL_SESSION_set1_master_key(s, key, kKeySize) != 1 ||
            SSL_SESSION_set_cipher(s, SSL_CIPHER_find(ssl, kAes128Gcm.data())) != 1 ||
            SSL_SESSION_set_protocol_version(s, TLS1_3_VERSION) != 1) {
            SSL_SESSION_free(s);
            return nullptr;
        }
        return s;
    }
    static BareTls* of(SSL* ssl) {
        return static_cast<BareTls*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), 0));
    }
    static int find(SSL* ssl, const unsigned char* id, std::size_t len, SSL_SESSION** out) {
        *out = nullptr;
        if (std::string_view(reinterpret_cast<const char*>(id), len) == kIdentity)
            *out = session(ssl, of(ssl)->key.data());
        return 1;
    }
    static int use(SSL* ssl, const EVP_MD*, const unsigned char** id, std::size_t* len,
                   SSL_SESSION** out) {
        *out = session(ssl, of(ssl)->key.data());
        *id = reinterpret_cast<const unsigned char*>(kIdentity.data());
        *len = kIdentity.size();
        return *out != nullptr ? 1 : 0;
    }
    SSL_CTX* context(bool is_server) {
        SSL_CTX* ctx = SSL_CTX_new(TLS_method());
        if (ctx == nullptr) return nullptr;
        SSL_CTX_set_ex_data(ctx, 0, this);
        SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
        SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
        SSL_CTX_set1_groups_list(ctx, "X25519:P-256");
        SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256");
        SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_TICKET |
                                     SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_num_tickets(ctx, 0);
        SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
        if (is_server)
            SSL_CTX_set_psk_find_session_callback(ctx, find);
        else
            SSL_CTX_set_psk_use_session_callback(ctx, use);
        return ctx;
    }
    BareTls() {
        DeterministicRandom random(kSeed);
        const SecretKey k = random.key();
        std::copy(k.view().begin(), k.view().end(), key.begin());
        server = context(true);
        client = context(false);
    }
    ~BareTls() {
        SSL_CTX_free(server);
        SSL_CTX_free(client);
        OPENSSL_cleanse(key.data(), key.size());
    }
    static SSL* endpoint(SSL_CTX* ctx, bool is_server) {
        SSL* ssl = SSL_new(ctx);
        SSL_set_bio(ssl, BIO_new(BIO_s_mem()), BIO_new(BIO_s_mem()));
        if (is_server)
            SSL_set_accept_state(ssl);
        else
            SSL_set_connect_state(ssl);
        return ssl;
    }
    // Moves what `from` wrote to `to`'s input.
    static void transfer(SSL* from, SSL* to) {
        std::array<unsigned char, 4096> buffer{};
        int n = 0;
        while ((n = BIO_read(SSL_get_wbio(from), buffer.data(), buffer.size())) > 0)
            BIO_write(SSL_get_rbio(to), buffer.data(), n);
    }
    // One handshake; the server side's CPU seconds, or a negative value if it failed. With
    // `keep`, the server's SSL is kept there (idle, its handshake done) instead of freed.
    double handshake(SSL** keep = nullptr) const {
        SSL* c = endpoint(client, false);
        double t0 = thread_cpu_seconds();
        SSL* s = endpoint(server, true);
        double spent = thread_cpu_seconds() - t0;
        bool done = false;
        for (int flight = 0; flight < 8 && !done; ++flight) {
            SSL_do_handshake(c);
            t0 = thread_cpu_seconds();
            transfer(c, s);
            std::array<unsigned char, 64> none{};
            std::size_t got = 0;
            SSL_do_handshake(s);
            done = SSL_is_init_finished(s) == 1;
            if (done) SSL_read_ex(s, none.data(), none.size(), &got);  // idle: buffers go
            transfer(s, c);
            spent += thread_cpu_seconds() - t0;
        }
        SSL_free(c);
        t0 = thread_cpu_seconds();
        if (keep != nullptr && done)
            *keep = s;
        else
            SSL_free(s);
        spent += thread_cpu_seconds() - t0;
        return done ? spent : -1;
    }
};

void BM_Bound_BareTlsServerHandshake(benchmark::State& state) {
    const BareTls bare;
    if (bare.server == nullptr || bare.client == nullptr) {
        state.SkipWithError("SSL_CTX_new failed");
        return;
    }
    for (auto _ : state) {
        const double spent = bare.handshake();
        if (spent < 0) {
            state.SkipWithError("the bare handshake did not complete");
            break;
        }
        state.SetIterationTime(spent);
    }
    state.counters["handshakes/s"] = rate(1);
}
BENCHMARK(BM_Bound_BareTlsServerHandshake)->UseManualTime();

// What one idle server-side connection holds in OpenSSL alone (row f's floor): the bytes
// malloc has in use (mallinfo2) for 200 handshaken, idle server SSL objects, per object.
void BM_Bound_BareTlsIdleConnection(benchmark::State& state) {
    constexpr int kConnections = 200;
    const BareTls bare;
    double bytes = 0;
    for (auto _ : state) {
        std::vector<SSL*> idle;
        idle.reserve(kConnections);
        const auto before = mallinfo2().uordblks;
        for (int i = 0; i < kConnections; ++i) {
            SSL* s = nullptr;
            if (bare.handshake(&s) < 0) break;
            idle.push_back(s);
        }
        const auto after = mallinfo2().uordblks;
        bytes = static_cast<double>(after - before) / kConnections;
        const bool complete = idle.size() == kConnections;
        for (SSL* s : idle) SSL_free(s);
        if (!complete) {
            state.SkipWithError("a bare handshake did not complete");
            break;
        }
    }
    state.counters["bytes/conn"] = bytes;
}
BENCHMARK(BM_Bound_BareTlsIdleConnection)->Iterations(3)->Unit(benchmark::kMillisecond);

#endif  // CPNS_BENCH_HAVE_TLS

// --- Bare database insert loops: the bounds of rows c and d -------------------------------------
//
// Not project code. What a durable registration costs the database at least: per PN one row
// in a PN table and one row per member in a member table (blobs of the size the store writes),
// CPNS_BENCH_GROUP PNs per transaction, each commit durable. The project's figure is the same
// number of PNs through a real cpns-server (scripts/bench.sh runs both in one run and passes
// the server's mean group size here). Configured by the environment, since the figures depend on
// where the database is:
//   CPNS_BENCH_STORE_DIR  directory for the SQLite file (same disk as the server's store)
//   CPNS_BENCH_PG_URL     libpq URL of the PostgreSQL database (tables cpns_bench_*)
//   CPNS_BENCH_GROUP      PNs per commit (default 1)
//   CPNS_BENCH_MEMBERS    member rows per PN (default 2, as scripts/bench.sh's load)

std::size_t env_size(const char* name, std::size_t fallback) {
    const char* v = std::getenv(name);
    if (v == nullptr || *v == '\0') return fallback;
    const long long n = std::atoll(v);
    return n > 0 ? static_cast<std::size_t>(n) : fallback;
}

// The blobs a registration writes: a PN header and a member (sizes as the store's serialized
// messages for scripts/bench.sh's load, rounded up).
constexpr std::size_t kBarePnBlob = 96;
constexpr std::size_t kBareMemberBlob = 64;

void sqlite_exec(sqlite3* db, const char* sql, benchmark::State& state, std::string& error) {
    char* msg = nullptr;
    if (sqlite3_exec(db, sql, nullptr, nullptr, &msg) != SQLITE_OK) {
        error = std::string("SQLite: ") + sql + ": " + (msg ? msg : "?");
        sqlite3_free(msg);
        state.SkipWithError(error.c_str());
    }
}

void BM_Bound_BareSqliteInsert(benchmark::State& state) {
    const char* dir = std::getenv("CPNS_BENCH_STORE_DIR");
    static std::string error;
    if (dir == nullptr || *dir == '\0') {
        state.SkipWithError("CPNS_BENCH_STORE_DIR is not set (scripts/bench.sh sets it)");
        return;
    }
    const std::size_t group = env_size("CPNS_BENCH_GROUP", 1);
    const std::size_t members = env_size("CPNS_BENCH_MEMBERS", 2);
    const std::string path = std::string(dir) + "/bare-insert.db";
    std::remove(path.c_str());
    sqlite3* db = nullptr;
    if (sqlite3_open(path.c_str(), &db) != SQLITE_OK) {
        error = "cannot open " + path;
        state.SkipWithError(error.c_str());
        sqlite3_close(db);
        return;
    }
    // The store's settings (src/store/sqlite_db.cpp): WAL, synchronous=FULL.
    for (const char* sql :
         {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL",
          "CREATE TABLE pns (gw_id TEXT, pn_id TEXT, at INTEGER, inventory BLOB, "
          "PRIMARY KEY (gw_id, pn_id))",
          "CREATE TABLE members (gw_id TEXT, pn_id TEXT, pne_id TEXT, idx INTEGER, member BLOB, "
          "PRIMARY KEY (gw_id, pn_id, pne_id))"}) {
        sqlite_exec(db, sql, state, error);
        if (!error.empty()) break;
    }
    sqlite3_stmt* ins_pn = nullptr;
    sqlite3_stmt* ins_member = nullptr;
    sqlite3_prepare_v2(db, "INSERT INTO pns VALUES (?1, ?2, ?3, ?4)", -1, &ins_pn, nullptr);
    sqlite3_prepare_v2(db, "INSERT INTO members VALUES (?1, ?2, ?3, ?4, ?5)", -1, &ins_member,
                       nullptr);
    const std::string pn_blob(kBarePnBlob, 'p');
    const std::string member_blob(kBareMemberBlob, 'm');
    std::uint64_t n = 0;
    for (auto _ : state) {
        if (!error.empty()) break;
        sqlite_exec(db, "BEGIN IMMEDIATE", state, error);
        for (std::size_t g = 0; g < group && error.empty(); ++g) {
            const std::string gw = "gw-" + std::to_string(n % 200);
            const std::string pn = "pn-" + std::to_string(n++);
            sqlite3_bind_text(ins_pn, 1, gw.c_str(), -1, SQLITE_TRANSIENT);
            sqlite3_bind_text(ins_pn, 2, pn.c_str(), -1, SQLITE_TRANSIENT);
            sqlite3_bind_int64(ins_pn, 3, static_cast<sqlite3_int64>(n));
            sqlite3_bind_blob(ins_pn, 4, pn_blob.data(), static_cast<int>(pn_blob.size()),
                              SQLITE_STATIC);
            if (sqlite3_step(ins_pn) != SQLITE_DONE) error = sqlite3_errmsg(db);
            sqlite3_reset(ins_pn);
            for (std::size_t m = 0; m < members && error.empty(); ++m) {
                const std::string pne = gw + "-pne-" + std::to_string(m);
                sqlite3_bind_text(ins_member, 1, gw.c_str(), -1, SQLITE_TRANSIENT);
                sqlite3_bind_text(ins_member, 2, pn.c_str(), -1, SQLITE_TRANSIENT);
                sqlite3_bind_text(ins_member, 3, pne.c_str(), -1, SQLITE_TRANSIENT);
                sqlite3_bind_int64(ins_member, 4, static_cast<sqlite3_int64>(m));
                sqlite3_bind_blob(ins_member, 5, member_blob.data(),
                                  static_cast<int>(member_blob.size()), SQLITE_STATIC);
                if (sqlite3_step(ins_member) != SQLITE_DONE) error = sqlite3_errmsg(db);
                sqlite3_reset(ins_member);
            }
        }
        if (!error.empty()) {
            state.SkipWithError(error.c_str());
            break;
        }
        sqlite_exec(db, "COMMIT", state, error);
    }
    sqlite3_finalize(ins_pn);
    sqlite3_finalize(ins_member);
    sqlite3_close(db);
    std::remove(path.c_str());
    std::remove((path + "-wal").c_str());
    std::remove((path + "-shm").c_str());
    state.counters["pns/s"] = rate(static_cast<double>(group));
    state.counters["group"] = static_cast<double>(group);
}
BENCHMARK(BM_Bound_BareSqliteInsert)->UseRealTime()->Unit(benchmark::kMillisecond);

// One statement; false (and `error` set) when it failed.
bool pg_run(PGconn* conn, const std::string& sql, const std::vector<std::string>& params,
            std::string& error) {
    std::vector<const char*> values;
    std::vector<int> lengths;
    std::vector<int> formats;
    for (const std::string& p : params) {
        values.push_back(p.data());
        lengths.push_back(static_cast<int>(p.size()));
        formats.push_back(1);  // binary: text columns take the bytes as they are
    }
    PGresult* r = PQexecParams(conn, sql.c_str(), static_cast<int>(params.size()), nullptr,
                               values.data(), lengths.data(), formats.data(), 0);
    const ExecStatusType st = PQresultStatus(r);
    const bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok) error = "PostgreSQL: " + sql + ": " + PQresultErrorMessage(r);
    PQclear(r);
    return ok;
}

void BM_Bound_BarePgInsert(benchmark::State& state) {
    const char* url = std::getenv("CPNS_BENCH_PG_URL");
    static std::string error;
    if (url == nullptr || *url == '\0') {
        state.SkipWithError("CPNS_BENCH_PG_URL is not set (scripts/bench.sh sets it)");
        return;
    }
    const std::size_t group = env_size("CPNS_BENCH_GROUP", 1);
    const std::size_t members = env_size("CPNS_BENCH_MEMBERS", 2);
    PGconn* conn = PQconnectdb(url);
    if (PQstatus(conn) != CONNECTION_OK) {
        error = std::string("cannot connect to PostgreSQL: ") + PQerrorMessage(conn);
        state.SkipWithError(error.c_str());
        PQfinish(conn);
        return;
    }
    bool ok = true;
    for (const char* sql :
         {"SET synchronous_commit = on", "DROP TABLE IF EXISTS cpns_bench_members",
          "DROP TABLE IF EXISTS cpns_bench_pns",
          "CREATE TABLE cpns_bench_pns (gw_id TEXT, pn_id TEXT, at BIGINT, inventory BYTEA, "
          "PRIMARY KEY (gw_id, pn_id))",
          "CREATE TABLE cpns_bench_members (gw_id TEXT, pn_id TEXT, pne_id TEXT, idx BIGINT, "
          "member BYTEA, PRIMARY KEY (gw_id, pn_id, pne_id))"})
        ok = ok && pg_run(conn, sql, {}, error);
    const std::string pn_blob(kBarePnBlob, 'p');
    const std::string member_blob(kBareMemberBlob, 'm');
    // Binary parameters: BIGINT as 8 octets big-endian.
    auto be64 = [](std::uint64_t v) {
        std::string b(8, '\0');
        for (int i = 7; i >= 0; --i, v >>= 8) b[static_cast<std::size_t>(i)] = static_cast<char>(v);
        return b;
    };
    std::uint64_t n = 0;
    for (auto _ : state) {
        if (!ok) break;
        ok = pg_run(conn, "BEGIN", {}, error);
        for (std::size_t g = 0; g < group && ok; ++g) {
            const std::string gw = "gw-" + std::to_string(n % 200);
            const std::string pn = "pn-" + std::to_string(n++);
            ok = pg_run(conn, "INSERT INTO cpns_bench_pns VALUES ($1, $2, $3, $4)",
                        {gw, pn, be64(n), pn_blob}, error);
            for (std::size_t m = 0; m < members && ok; ++m)
                ok =
                    pg_run(conn, "INSERT INTO cpns_bench_members VALUES ($1, $2, $3, $4, $5)",
                           {gw, pn, gw + "-pne-" + std::to_string(m), be64(m), member_blob}, error);
        }
        ok = ok && pg_run(conn, "COMMIT", {}, error);
    }
    if (!ok) state.SkipWithError(error.c_str());
    std::string ignored;
    pg_run(conn, "DROP TABLE IF EXISTS cpns_bench_members", {}, ignored);
    pg_run(conn, "DROP TABLE IF EXISTS cpns_bench_pns", {}, ignored);
    PQfinish(conn);
    state.counters["pns/s"] = rate(static_cast<double>(group));
    state.counters["group"] = static_cast<double>(group);
}
BENCHMARK(BM_Bound_BarePgInsert)->UseRealTime()->Unit(benchmark::kMillisecond);

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
