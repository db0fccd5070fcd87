// Writes the seed corpora of the fuzz targets (fuzz/make_corpus.sh runs it, then minimizes
// with libFuzzer's -merge=1). Not a fuzz target: an ordinary program.
//
//   make_seeds OUT_DIR
//
// The role seeds come from honest establishments: the real Server, PN GW and PNEs of the
// fuzz cast (fuzz/roles.hpp, built exactly as the harnesses build them) run against each
// other through a loss-free zero-latency router, and every call each role receives is written
// as that role's event stream. A seed therefore replays a complete establishment in the
// harness. Every message delivered also becomes a seed of the decode, body and discovery
// targets; configuration seeds are the sample files of each daemon; TLS seeds are transcripts
// of real handshakes between TlsEngines.
#include <cstdint>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "fuzz/roles.hpp"
#include "tls/tls.hpp"

namespace {

using namespace cpns;
using namespace cpns::fuzz;
namespace fs = std::filesystem;

fs::path g_out;
std::set<std::string> g_written;

void write(const std::string& target, const std::string& name, const Bytes& data) {
    const fs::path dir = g_out / target;
    fs::create_directories(dir);
    std::ofstream(dir / (name + ".bin"), std::ios::binary)
        .write(reinterpret_cast<const char*>(data.data()),
               static_cast<std::streamsize>(data.size()));
}
void write_text(const std::string& target, const std::string& name, const std::string& text) {
    write(target, name, Bytes(text.begin(), text.end()));
}

// Each distinct message once, for the codec targets.
void message_seeds(const pb::Envelope& env) {
    const std::string body = env.SerializeAsString();
    if (!g_written.insert(body).second) return;
    const std::string name =
        std::string(message_name(env)) + "-" + std::to_string(g_written.size());
    write("decode", name, encode_frame(env));
    // fuzz_body: the oneof field's index, then the body message alone.
    const auto* oneof = pb::Envelope::descriptor()->oneof_decl(0);
    for (int i = 0; i < oneof->field_count(); ++i)
        if (oneof->field(i)->number() == static_cast<int>(env.body_case())) {
            const auto& m = env.GetReflection()->GetMessage(env, oneof->field(i));
            const std::string b = m.SerializeAsString();
            Bytes seed{static_cast<std::uint8_t>(i)};
            seed.insert(seed.end(), b.begin(), b.end());
            write("body", name, seed);
        }
    if (env.has_discovery_request() || env.has_discovery_response()) {
        const Bytes frame = encode_frame(env);
        Bytes seed{static_cast<std::uint8_t>(frame.size() >> 8),
                   static_cast<std::uint8_t>(frame.size() & 0xff)};
        seed.insert(seed.end(), frame.begin(), frame.end());
        write("discovery", name, seed);
    }
}

// The cast on a loss-free PAN and WAN with zero latency; time moves only to the next
// deadline when nothing is in flight.
class Run {
  public:
    std::set<std::string> drop_to;  // messages to these entities are lost

    Run() : server_(server_config(), dir_, rs_), gw_(gw_config(), rg_) {
        provision(dir_);
        gw_.set_endpoint("127.0.0.1:47010");
        const std::string ids[] = {kPneA, kPneB, kPneC};
        for (std::size_t i = 0; i < 3; ++i) {
            rp_.push_back(std::make_unique<DeterministicRandom>(kRoleSeed + 2 + i));
            pnes_[ids[i]] = std::make_unique<Pne>(pne_config(ids[i]), *rp_.back());
            streams_[ids[i]].byte(static_cast<std::uint8_t>(i));  // the harness's PNE choice
        }
        for (const auto& id : {kServerId, kGwId, kPneA, kPneB, kPneC}) clock_[id] = kStart;
    }

    void discover() {
        for (auto& [id, pne] : pnes_) {
            sync(id);
            streams_[id].command(Command::kDiscover);
            apply(id, pne->discover(now_));
        }
        sync(kGwId);
        streams_[kGwId].command(Command::kDiscover);
        apply(kGwId, gw_.discover(now_));
        drain();
    }
    void setup(const std::string& pne, pb::SetupType type, std::vector<std::string> invited) {
        sync(pne);
        EventWriter& w = streams_[pne];
        w.command(Command::kSetup);
        w.byte(peer_index(kGwId));
        w.byte(static_cast<std::uint8_t>(type));
        w.peer_list(invited);
        apply(pne, pnes_[pne]->start_setup(kGwId, type, std::move(invited), now_));
        run();
    }
    void invite(std::vector<std::string> pnes) {
        sync(kGwId);
        streams_[kGwId].command(Command::kInvite);
        streams_[kGwId].peer_list(pnes);
        apply(kGwId, gw_.invite(std::move(pnes), now_));
        run();
    }
    // Until nothing is in flight and no deadline is left.
    void run() {
        for (int rounds = 0; rounds < 100; ++rounds) {
            drain();
            Millis next = std::min(server_.next_deadline(), gw_.next_deadline());
            for (auto& [id, pne] : pnes_) next = std::min(next, pne->next_deadline());
            if (next == kNever) return;
            now_ = std::max(now_, (next + kTick - 1) / kTick * kTick);
            if (server_.next_deadline() <= now_) {
                sync(kServerId);
                streams_[kServerId].timer();
                apply(kServerId, server_.on_timer(now_));
            }
            if (gw_.next_deadline() <= now_) {
                sync(kGwId);
                streams_[kGwId].timer();
                apply(kGwId, gw_.on_timer(now_));
            }
            for (auto& [id, pne] : pnes_)
                if (pne->next_deadline() <= now_) {
                    sync(id);
                    streams_[id].timer();
                    apply(id, pne->on_timer(now_));
                }
        }
    }
    void save(const std::string& scenario) {
        write("server", scenario, streams_[kServerId].bytes());
        write("gateway", scenario, streams_[kGwId].bytes());
        for (const auto& id : {kPneA, kPneB, kPneC})
            write("pne", scenario + "-" + id, streams_[id].bytes());
    }
    std::size_t joined(const std::string& pne) const { return pnes_.at(pne)->memberships().size(); }

  private:
    struct Pending {
        enum class Kind { kMessage, kTls, kPersist } kind = Kind::kMessage;
        std::string from, to;
        pb::Envelope env;
        Protection protection = Protection::kClear;
        std::string identity;  // kTls
        SecretKey psk;         // kTls
        std::string pn_id;     // kPersist
    };

    void sync(const std::string& id) {
        streams_[id].advance(now_ - clock_[id]);
        clock_[id] = now_;
    }
    void send(const std::string& from, const SendEffect& s) {
        std::vector<std::string> to;
        if (s.to == "*") {  // the PAN: the PN GW and every PNE but the sender
            if (from != kGwId) to.push_back(kGwId);
            for (const auto& [id, pne] : pnes_)
                if (id != from) to.push_back(id);
        } else {
            to.push_back(s.to);
        }
        // Through the codec, as on a real link.
        const auto decoded = decoded_envelope(encode_frame(s.msg));
        if (!decoded) {
            std::cerr << "make_seeds: a role sent a message that does not decode\n";
            std::exit(1);
        }
        message_seeds(*decoded);
        for (const auto& t : to)
            if (!drop_to.count(t)) {
                Pending p;
                p.from = from;
                p.to = t;
                p.env = *decoded;
                p.protection = s.protection;
                queue_.push_back(std::move(p));
            }
    }
    template <class Effects>
    void apply(const std::string& from, Effects fx) {
        for (auto& e : fx)
            std::visit(Overloaded{
                           [&](const SendEffect& s) { send(from, s); },
                           [&](const StartTlsEffect& t) {
                               Pending p;
                               p.kind = Pending::Kind::kTls;
                               p.from = from;
                               p.to = t.peer;
                               p.identity = t.identity;
                               p.psk = t.psk;
                               queue_.push_back(std::move(p));
                           },
                           [&](const PersistPnEffect& p) {
                               Pending q;
                               q.kind = Pending::Kind::kPersist;
                               q.from = p.gw_id;
                               q.pn_id = p.inventory.pn_id();
                               queue_.push_back(std::move(q));
                           },
                           [](const auto&) {},
                       },
                       e);
    }
    void drain() {
        while (!queue_.empty()) {
            Pending p = std::move(queue_.front());
            queue_.pop_front();
            if (p.kind == Pending::Kind::kTls) {
                const auto psk = gw_.tls_psk_for(p.identity);
                const bool ok = psk && *psk == p.psk;
                sync(kGwId);
                if (ok) {
                    streams_[kGwId].link(Link::kEstablished, p.from);
                    streams_[kGwId].str(p.identity);
                    apply(kGwId, gw_.on_tls_established(p.from, p.identity, now_));
                } else {
                    streams_[kGwId].link(Link::kFailed, p.from);
                    apply(kGwId, gw_.on_tls_failed(p.from, now_));
                }
                sync(p.from);
                streams_[p.from].link(ok ? Link::kEstablished : Link::kFailed, p.to);
                apply(p.from, ok ? pnes_[p.from]->on_tls_established(p.to, now_)
                                 : pnes_[p.from]->on_tls_failed(p.to, now_));
            } else if (p.kind == Pending::Kind::kPersist) {
                sync(kServerId);
                streams_[kServerId].link(Link::kPersisted, p.from);
                streams_[kServerId].str(p.pn_id);
                streams_[kServerId].byte(0);
                apply(kServerId, server_.on_persisted(p.from, p.pn_id, pb::REASON_NONE, now_));
            } else if (p.to == kServerId) {
                sync(kServerId);
                streams_[kServerId].message(p.from, p.env, p.protection);
                apply(kServerId, server_.on_message(p.from, p.env, now_));
            } else if (p.to == kGwId) {
                sync(kGwId);
                streams_[kGwId].message(p.from, p.env, p.protection);
                apply(kGwId, gw_.on_message(p.from, p.env, p.protection, now_));
            } else if (auto it = pnes_.find(p.to); it != pnes_.end()) {
                sync(p.to);
                streams_[p.to].message(p.from, p.env, p.protection);
                apply(p.to, it->second->on_message(p.from, p.env, p.protection, now_));
            }
        }
    }

    DeterministicRandom rs_{kRoleSeed}, rg_{kRoleSeed + 1};
    std::vector<std::unique_ptr<DeterministicRandom>> rp_;
    MemoryDirectory dir_;
    Server server_;
    Gateway gw_;
    std::map<std::string, std::unique_ptr<Pne>> pnes_;
    std::map<std::string, EventWriter> streams_;
    std::map<std::string, Millis> clock_;
    std::deque<Pending> queue_;
    Millis now_ = kStart;
};

int role_seeds() {
    int joined = 0;
    {
        Run r;
        r.discover();
        r.setup(kPneA, pb::SETUP_ALL, {});
        joined += static_cast<int>(r.joined(kPneA) + r.joined(kPneB) + r.joined(kPneC));
        r.save("setup-all");
    }
    {
        Run r;
        r.discover();
        r.setup(kPneB, pb::SETUP_ONE_TO_ONE, {});
        joined += static_cast<int>(r.joined(kPneB));
        r.save("setup-one-to-one");
    }
    {
        Run r;
        r.discover();
        r.setup(kPneC, pb::SETUP_INVITE_LIST, {kPneA});
        joined += static_cast<int>(r.joined(kPneC) + r.joined(kPneA));
        r.save("setup-invite-list");
    }
    {
        Run r;  // PN GW initiated, then a second PN over the LocalEUKeys of the first
        r.discover();
        r.invite({});
        r.invite({kPneA, kPneB});
        joined += static_cast<int>(r.joined(kPneA) + r.joined(kPneB) + r.joined(kPneC));
        r.save("invite-twice");
    }
    {
        Run r;  // an invitee never answers: the PN GW's and the server's timeouts
        r.drop_to = {kPneB};
        r.discover();
        r.setup(kPneA, pb::SETUP_ALL, {});
        r.save("setup-all-timeout");
    }
    return joined;
}

void tls_seeds() {
    const SecretKey psk = cast().preassigned_b;
    const std::string identity = preassigned_identity(kPneB);
    for (const tls::Mode mode : {tls::Mode::kTls13, tls::Mode::kTls12Psk}) {
        tls::TlsConfig sc;
        sc.role = tls::Role::kServer;
        sc.mode = mode;
        sc.psk_lookup = [&](std::string_view id) -> std::optional<SecretKey> {
            if (id == identity) return psk;
            return std::nullopt;
        };
        tls::TlsConfig cc;
        cc.role = tls::Role::kClient;
        cc.mode = mode;
        const tls::TlsContext server_ctx(sc), client_ctx(cc);
        tls::TlsEngine server(server_ctx);
        tls::TlsEngine client(client_ctx, tls::ClientPsk{identity, psk});
        Bytes to_server, to_client;  // everything each side received
        const std::string hello = "PnSetupRequest";
        client.write(as_bytes(hello));
        for (int i = 0; i < 8; ++i) {
            Bytes c = client.take_output();
            to_server.insert(to_server.end(), c.begin(), c.end());
            server.feed(c);
            if (server.handshake_done()) server.write(as_bytes(hello));
            Bytes s = server.take_output();
            to_client.insert(to_client.end(), s.begin(), s.end());
            client.feed(s);
        }
        client.close();
        Bytes c = client.take_output();
        to_server.insert(to_server.end(), c.begin(), c.end());
        // fuzz_tls: flags (bit 0 client, bit 1 TLS 1.2), then the records.
        const std::uint8_t m = mode == tls::Mode::kTls12Psk ? 2 : 0;
        Bytes srv{m}, cli{static_cast<std::uint8_t>(m | 1)};
        srv.insert(srv.end(), to_server.begin(), to_server.end());
        cli.insert(cli.end(), to_client.begin(), to_client.end());
        write("tls", std::string("server-") + std::string(tls::to_string(mode)), srv);
        write("tls", std::string("client-") + std::string(tls::to_string(mode)), cli);
    }
}

void config_seeds() {
    const std::string key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    // fuzz_config: the first byte picks the reader (0 PNE, 1 PN GW, 2 server, 3 entities).
    auto seed = [](char which, const std::string& name, const std::string& text) {
        write_text("config", name, std::string(1, which) + text);
    };
    seed(0, "pne",
         "id = \"pne-a\"\neukey = \"" + key +
             "\"\ngw = \"127.0.0.1:47010\"\nenough_ui = true\npan_secure = false\n"
             "accept_invitations = true\npan_tls = \"tls12\"\n"
             "discovery_group = \"239.255.67.78:47011\"\n[capabilities]\n"
             "device_type = \"phone\"\nmanufacturer = \"x\"\npan_technologies = [\"wifi\"]\n"
             "[[content]]\nid = \"song-1\"\nmedia_type = \"audio/ogg\"\ntitle = \"Song\"\n"
             "size_bytes = 4096\n");
    seed(0, "pne-no-ui",
         "id = \"pne-b\"\neukey = \"" + key + "\"\npreassigned_key = \"" + key +
             "\"\nenough_ui = false\ngw = \"127.0.0.1:47010\"\n");
    seed(1, "gw",
         "id = \"gw-1\"\neukey = \"" + key +
             "\"\nserver = \"127.0.0.1:47000\"\nlisten = \"127.0.0.1:0\"\n"
             "control = \"127.0.0.1:0\"\npan_secure = false\n[subscription]\n"
             "subscriber_id = \"sub-0001\"\nservice_plan = \"cpns-basic\"\n"
             "[[pne]]\nid = \"pne-b\"\npreassigned_key = \"" +
             key + "\"\npan_secure = false\n[capabilities]\ndevice_type = \"gw\"\n");
    seed(2, "server",
         "id = \"cpns-server\"\nlisten = \"127.0.0.1:0\"\nentities = \"entities.toml\"\n"
         "store = \"sqlite:server.db\"\nmaster_key = \"" +
             key + "\"\n");
    seed(3, "entities",
         "[[entity]]\nid = \"gw-1\"\nkind = \"gw\"\neukey = \"" + key +
             "\"\n[[entity]]\nid = \"pne-a\"\nkind = \"pne\"\nstatus = \"disabled\"\n"
             "eukey = \"" +
             key + "\"\n");
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::cerr << "usage: make_seeds OUT_DIR\n";
        return 2;
    }
    g_out = argv[1];
    const int joined = role_seeds();
    if (joined < 8) {  // the honest runs must really establish PNs, or the seeds are shallow
        std::cerr << "make_seeds: the honest runs established only " << joined << " memberships\n";
        return 1;
    }
    tls_seeds();
    config_seeds();
    std::cout << "make_seeds: " << g_written.size() << " distinct messages, " << joined
              << " memberships in the honest runs\n";
    return 0;
}
