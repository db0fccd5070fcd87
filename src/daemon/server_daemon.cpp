#include "daemon/server_daemon.hpp"

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/message_differencer.h>

#include "daemon/log_json.hpp"

namespace cpns::daemon {

// SK_PNE values kept for use after establishment (bounded; when full, the entry with the
// smallest (PN ID, PNE ID) is dropped).
inline constexpr std::size_t kMaxSessionKeys = 100'000;

void load_entities(const std::string& path, MemoryDirectory& dir) {
    const Config c = Config::load(path);
    const auto* arr = c.table()["entity"].as_array();
    if (!arr) throw ConfigError(path + ": no [[entity]] entries");
    std::size_t n = 0;
    for (const auto& node : *arr) {
        const auto* t = node.as_table();
        if (!t) throw ConfigError(path + ": [[entity]] must be a table");
        const std::string id = (*t)["id"].value_or(std::string());
        const std::string kind = (*t)["kind"].value_or(std::string());
        const std::string status =
            (*t)["status"].value_or(std::string(to_string(EntityStatus::kActive)));
        if (!valid_id(id)) throw ConfigError(path + ": invalid entity id '" + id + "'");
        const auto parsed_kind = parse_entity_kind(kind);
        if (!parsed_kind) throw ConfigError(path + ": entity " + id + ": kind must be pne or gw");
        EntityRecord rec;
        rec.kind = *parsed_kind;
        rec.eukey =
            parse_key((*t)["eukey"].value_or(std::string()), path + ": entity " + id + " eukey");
        const auto parsed_status = parse_entity_status(status);
        if (!parsed_status)
            throw ConfigError(path + ": entity " + id +
                              ": status must be active, disabled or revoked");
        rec.status = *parsed_status;
        if (dir.find(id)) throw ConfigError(path + ": entity " + id + " is listed twice");
        dir.add(id, std::move(rec));
        ++n;
    }
    spdlog::info("loaded {} entities from {}", n, path);
}

std::vector<store::StoredEntity> read_entities(const std::string& path) {
    MemoryDirectory dir;
    load_entities(path, dir);
    const Config c = Config::load(path);
    std::vector<store::StoredEntity> out;
    for (const auto& node : *c.table()["entity"].as_array()) {
        const std::string id = (*node.as_table())["id"].value_or(std::string());
        const auto rec = dir.find(id);
        store::StoredEntity e;
        e.id = id;
        e.kind = rec->kind;
        e.eukey = rec->eukey;
        e.status = rec->status;
        out.push_back(std::move(e));
    }
    return out;
}

std::optional<EntityRecord> CachedDirectory::find(const std::string& id) const {
    auto it = entries_.find(id);
    if (it == entries_.end()) return std::nullopt;
    return it->second;
}

void CachedDirectory::put(const std::string& id, std::optional<EntityRecord> rec) {
    entries_[id] = std::move(rec);
}

std::string redact_url(const std::string& url) {
    // postgresql://user:secret@host/db -> postgresql://user:***@host/db; password=... too.
    std::string out = url;
    const auto scheme = out.find("://");
    const auto at = out.find('@');
    if (scheme != std::string::npos && at != std::string::npos && at > scheme) {
        const auto colon = out.find(':', scheme + 3);
        if (colon != std::string::npos && colon < at) out.replace(colon + 1, at - colon - 1, "***");
    }
    const auto pw = out.find("password=");
    if (pw != std::string::npos) {
        const auto end = out.find_first_of(" &", pw);
        out.replace(pw + 9, (end == std::string::npos ? out.size() : end) - pw - 9, "***");
    }
    return out;
}

namespace {
// `job`, observing into `seconds` how long it ran when it ends without an exception (on the
// store thread: Histogram::observe is atomic).
std::function<void(store::Store&)> timed(std::function<void(store::Store&)> job,
                                         Histogram& seconds) {
    return [job = std::move(job), &seconds](store::Store& st) {
        const auto began = std::chrono::steady_clock::now();
        job(st);
        seconds.observe(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count());
    };
}

std::optional<EntityRecord> to_record(const std::optional<store::StoredEntity>& e) {
    if (!e) return std::nullopt;
    return EntityRecord{e->kind, e->eukey, e->status, e->previous};
}
}  // namespace

ServerDaemon::ServerDaemon(asio::io_context& io, ServerOptions options)
    : io_(io),
      opt_(std::move(options)),
      listener_(io.get_executor(), {opt_.max_connections, opt_.max_connections_per_source},
                listener_hooks()),
      control_listener_(io.get_executor(),
                        {kMaxServerControlConnections, kMaxServerControlConnections},
                        control_hooks()),
      timer_(io.get_executor(), [this](Millis now) { apply(server_->on_timer(now)); }),
      refresh_(io),
      change_poll_(io) {
    try {
        store_ = store::open_store(opt_.store, store::load_master_key(opt_.master_key_file));
        if (!opt_.entities_file.empty()) {
            // Only entities the store does not know yet: a restart must not undo a revocation
            // or a key change made with cpnsctl.
            std::size_t added = 0, kept = 0;
            for (const auto& e : read_entities(opt_.entities_file)) {
                if (store_->get_entity(e.id)) {
                    ++kept;
                    continue;
                }
                store_->put_entity(e);
                ++added;
            }
            spdlog::info("entities file {}: {} added, {} already in the store (kept as stored)",
                         opt_.entities_file, added, kept);
        }
        for (const auto& e : store_->list_entities(EntityKind::kGw))
            dir_.put(e.id, EntityRecord{e.kind, e.eukey, e.status, e.previous});
    } catch (const store::StoreError& e) {
        throw ConfigError(std::string("store: ") + e.what());
    }
    spdlog::info("store: {} ({}), {} PN GW(s) provisioned", redact_url(opt_.store),
                 store_->backend(), dir_.size());
    opt_.role.log = core_log_sink();
    opt_.role.wall_clock_ms = [] {
        return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                              std::chrono::system_clock::now().time_since_epoch())
                                              .count());
    };
    server_ = std::make_unique<Server>(opt_.role, dir_, random_);
    trace_ =
        std::make_unique<RoleTrace>(opt_.role.server_id, "server", opt_.trace_file, opt_.crash_at);
    tls::TlsConfig tc;
    tc.role = tls::Role::kServer;
    tc.mode = tls::Mode::kTls13;
    tc.keylog_path = keylog_path(opt_.keylog);
    // PN GW Authentication: the PSK of identity <gw_id> is derived from that PN GW's EUKey.
    tc.psk_lookup = [this](std::string_view identity) { return gw_psk(identity); };
    tls_.emplace(tc);
    if (!tc.keylog_path.empty())
        spdlog::warn("TLS key log enabled: {} (debugging only)", tc.keylog_path);
    declare_metrics();
}

std::optional<SecretKey> ServerDaemon::gw_psk(std::string_view identity) {
    const std::string id(identity);
    {
        auto rec = dir_.find(id);
        if (!rec && valid_id(id) && lookups_.size() < kMaxPendingLookups &&
            lookups_.insert(id).second) {
            // Not cached (provisioned after the last refresh): fetch it for the PN GW's retry.
            auto found = std::make_shared<std::optional<store::StoredEntity>>();
            store_job([id, found](store::Store& st) { *found = st.get_entity(id); },
                      [this, id, found](StoreFailure) {
                          lookups_.erase(id);
                          if (*found) dir_.put(id, to_record(*found));
                      });
        }
        if (!rec || rec->kind != EntityKind::kGw || rec->status != EntityStatus::kActive)
            return std::nullopt;
        return derive_gw_server_psk(rec->eukey, identity);
    }
}

std::optional<net::PskRetry> ServerDaemon::gw_previous_psk(std::string_view identity) const {
    const auto rec = dir_.find(std::string(identity));
    if (!rec || !rec->previous || rec->kind != EntityKind::kGw ||
        rec->status != EntityStatus::kActive)
        return std::nullopt;
    return net::PskRetry{derive_gw_server_psk(rec->previous->eukey, identity),
                         rec->previous_in_grace(wall_now_ms()) != nullptr};
}

std::int64_t ServerDaemon::wall_now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

pb::FailureReason store_failure_reason(store::StoreError::Kind kind) {
    switch (kind) {
        case store::StoreError::Kind::kUnavailable:
            return pb::STORE_UNAVAILABLE;
        case store::StoreError::Kind::kFull:
            return pb::STORAGE_FULL;
        case store::StoreError::Kind::kOther:
            break;
    }
    return pb::INTERNAL_ERROR;
}

void ServerDaemon::store_job(std::function<void(store::Store&)> job,
                             std::function<void(StoreFailure)> done, bool write) {
    ++store_queue_;
    if (write) job = timed(std::move(job), *store_commit_);
    asio::post(store_thread_,
               [this, job = std::move(job), done = std::move(done), write]() mutable {
                   StoreFailure failure;
                   withdraw_unacknowledged(*store_);
                   try {
                       job(*store_);
                   } catch (const store::StoreError& e) {
                       failure = e.kind();
                       spdlog::error("store: {}", e.what());
                   } catch (const std::exception& e) {
                       failure = store::StoreError::Kind::kOther;
                       spdlog::error("store: {}", e.what());
                   }
                   asio::post(io_, [this, done = std::move(done), failure, write] {
                       --store_queue_;
                       note_store(failure, write);
                       if (done) done(failure);
                   });
               });
}

// Readiness follows the store: unreachable from the first job that could not reach it to the
// next job that ran to its end (the directory refresh every kGwDirectoryRefresh is one, so
// readiness comes back without traffic).
void ServerDaemon::note_store(StoreFailure failure, bool write) {
    health_.retries = persist_retries_.load(std::memory_order_relaxed);
    health_.withdrawn = withdrawn_.load(std::memory_order_relaxed);
    if (!failure || *failure != store::StoreError::Kind::kUnavailable) {
        if (!health_.reachable)
            spdlog::warn("store reachable again after {} ms; ready",
                         mono_now() - health_.down_since);
        health_.reachable = true;
        if (opt_.readiness) {
            opt_.readiness->store_reachable = true;
            opt_.readiness->store_down_since_ms = 0;
        }
    }
    if (!failure) {
        if (write && health_.full) spdlog::warn("store accepts writes again (space returned)");
        if (write) health_.full = false;
        return;
    }
    switch (*failure) {
        case store::StoreError::Kind::kUnavailable:
            ++health_.unavailable;
            if (health_.reachable) {
                health_.down_since = mono_now();
                spdlog::error(
                    "store unreachable: not ready; registrations fail with 'store unavailable' "
                    "until it is back (reconnecting by itself)");
            }
            health_.reachable = false;
            if (opt_.readiness && opt_.readiness->store_reachable.exchange(false))
                opt_.readiness->store_down_since_ms = wall_now_ms();
            break;
        case store::StoreError::Kind::kFull:
            ++health_.full_errors;
            if (!health_.full)
                spdlog::error(
                    "store full: registrations fail with 'storage full' until space returns");
            health_.full = true;
            break;
        case store::StoreError::Kind::kOther:
            ++health_.other_errors;
            break;
    }
}

void ServerDaemon::flush_audit() {
    if (audit_writing_ || audit_pending_.empty()) return;
    audit_writing_ = true;
    auto batch = std::make_shared<std::vector<store::AuditRecord>>(std::move(audit_pending_));
    audit_pending_.clear();
    metrics_.registry()
        .histogram("cpns_store_batch_size", {"audit"})
        .observe(static_cast<double>(batch->size()));
    store_job([batch](store::Store& st) { st.audit_many(*batch); },
              [this](StoreFailure) {
                  audit_writing_ = false;
                  flush_audit();
              },
              true);
}

void ServerDaemon::refresh_gateways() {
    auto gws = std::make_shared<std::vector<store::StoredEntity>>();
    store_job([gws](store::Store& st) { *gws = st.list_entities(EntityKind::kGw); },
              [this, gws](StoreFailure) {
                  for (const auto& e : *gws) {
                      dir_.put(e.id, EntityRecord{e.kind, e.eukey, e.status, e.previous});
                      // A PN GW disabled or revoked since it connected loses its link now.
                      auto link = gws_.find(e.id);
                      // So does one on an EUKey that is neither its current one nor its
                      // previous one within the grace period (rotated, grace ended).
                      if (auto used = gw_link_eukeys_.find(e.id);
                          link != gws_.end() && used != gw_link_eukeys_.end() &&
                          !(used->second == e.eukey) &&
                          !(e.previous && used->second == e.previous->eukey &&
                            wall_now_ms() < e.previous->expires_at_ms)) {
                          spdlog::warn(
                              "PN GW {}: its link uses an EUKey that was rotated and "
                              "whose grace period has ended ({}): closing it",
                              e.id, reason_name(pb::KEY_EXPIRED));
                          gw_link_eukeys_.erase(used);
                          link->second->close();
                      }
                      if (e.status != EntityStatus::kActive && link != gws_.end()) {
                          spdlog::warn("PN GW {} is {} in the store: closing its link", e.id,
                                       to_string(e.status));
                          link->second->close();
                      }
                  }
                  refresh_.expires_after(std::chrono::milliseconds(kGwDirectoryRefresh));
                  refresh_.async_wait([this](const std::error_code& ec) {
                      if (!ec) refresh_gateways();
                  });
              });
}

// The change log (store.hpp): what cpnsctl (or another server) wrote that this server must
// act on. A revoked or disabled PNE is removed from each of its PNs by the server itself
// (Server::push_change: through the store at the PN's revision, then an unsolicited
// PnChangeResponse to the PN GW, which closes the PNE's PSK-TLS session and drops its
// LocalEUKey); a disabled or revoked PN GW loses its link; a PN the operator deleted is
// announced to its PN GW as dissolved. Every server instance on one store acts on every row:
// the store's compare-and-set makes one removal win, and the others send their PN GW the PN as
// it is.
void ServerDaemon::poll_changes() {
    const std::int64_t from = change_seq_;
    auto polled = std::make_shared<std::vector<PolledChange>>();
    auto head = std::make_shared<std::int64_t>(from);
    store_job(
        [from, polled, head](store::Store& st) {
            std::int64_t after = from;
            if (after < 0)
                after = std::max<std::int64_t>(0, st.change_log_head() - kChangeLogStartReplay);
            else
                after = std::max<std::int64_t>(0, after - kChangeLogWindow);
            for (auto& e : st.change_log_after(after, kChangeLogBatch)) {
                PolledChange c;
                *head = std::max(*head, e.seq);
                if (e.kind == "status") {
                    try {
                        c.entity = st.get_entity(e.entity_id);
                    } catch (const store::StoreError& err) {
                        if (err.kind() == store::StoreError::Kind::kUnavailable) throw;
                        spdlog::warn("change log: entity {}: {}", e.entity_id, err.what());
                    }
                    if (c.entity && c.entity->kind == EntityKind::kPne &&
                        c.entity->status != EntityStatus::kActive)
                        c.pns = st.pns_of(e.entity_id);
                } else if (e.kind == "pn_deleted") {
                    pb::PnInventory before;
                    if (before.ParseFromString(e.payload)) c.pns.push_back(std::move(before));
                }
                std::set<std::string> ids;
                for (const auto& inv : c.pns)
                    for (const auto& m : inv.members()) ids.insert(m.pne_id());
                for (const auto& id : ids) {
                    try {
                        c.members.push_back(st.get_entity(id));
                    } catch (const store::StoreError& err) {
                        if (err.kind() == store::StoreError::Kind::kUnavailable) throw;
                        c.members.push_back(std::nullopt);
                    }
                }
                c.event = std::move(e);
                polled->push_back(std::move(c));
            }
            if (*head < 0) *head = st.change_log_head();
        },
        [this, polled, head](StoreFailure failure) {
            if (!failure) {
                for (const auto& c : *polled) {
                    if (!change_seen_.insert(c.event.seq).second) continue;
                    act_on(c);
                }
                change_seq_ = std::max(change_seq_, *head);
                while (!change_seen_.empty() &&
                       *change_seen_.begin() < change_seq_ - kChangeLogStartReplay)
                    change_seen_.erase(change_seen_.begin());
            }
            change_poll_.expires_after(std::chrono::milliseconds(kChangeLogPoll));
            change_poll_.async_wait([this](const std::error_code& ec) {
                if (!ec) poll_changes();
            });
        });
}

void ServerDaemon::publish_lifecycle(std::string_view action, const std::string& gw_id,
                                     const std::string& pn_id, const std::string& subject) {
    if (opt_.events)
        opt_.events->publish("lifecycle",
                             lifecycle_event_json(wall_now_ms(), action, gw_id, pn_id, subject));
}

void ServerDaemon::act_on(const PolledChange& c) {
    for (const auto& m : c.members)
        if (m) dir_.put(m->id, to_record(m));
    const store::ChangeEvent& e = c.event;
    // Changes replayed at start (made while this server was down) are not news to the API's
    // event stream; those read after the first poll are.
    const bool news = change_seq_ >= 0;
    if (e.kind == "status" && c.entity) {
        dir_.put(c.entity->id, to_record(c.entity));
        if (news) {
            const EntityStatus st = c.entity->status;
            publish_lifecycle(st == EntityStatus::kRevoked    ? "revoke"
                              : st == EntityStatus::kDisabled ? "disable"
                                                              : "enable",
                              c.entity->kind == EntityKind::kGw ? c.entity->id : "", "",
                              c.entity->id);
        }
        if (c.entity->status == EntityStatus::kActive) return;
        if (c.entity->kind == EntityKind::kGw) {
            if (auto link = gws_.find(c.entity->id); link != gws_.end()) {
                spdlog::warn("PN GW {} is {} in the store: closing its link; its PNs are orphaned",
                             c.entity->id, to_string(c.entity->status));
                link->second->close();
            }
            return;
        }
        if (!c.pns.empty())
            spdlog::warn("PNE {} is {}: removing it from {} PN(s)", c.entity->id,
                         to_string(c.entity->status), c.pns.size());
        for (const auto& inv : c.pns)
            apply(server_->push_change(inv.gw_id(), inv.pn_id(), pb::CHANGE_REMOVE, c.entity->id,
                                       inv.revision(), pb::REVOKED, mono_now()));
    } else if (e.kind == "rekey") {
        // The operator ordered a re-key (cpnsctl rekey). An order older than
        // kRekeyOrderMaxAge (read again at a restart, or by a server that was down) is not
        // carried out: cpnsctl has given up waiting for it.
        const std::int64_t age = wall_now_ms() - e.at_ms;
        if (age > kRekeyOrderMaxAge) return;
        std::uint64_t revision = 0;
        try {
            revision = std::stoull(e.payload);
        } catch (const std::exception&) {
            spdlog::warn("change log: re-key order {} without a revision: ignored", e.seq);
            return;
        }
        const bool linked = gws_.count(e.gw_id) != 0;
        apply(server_->order_rekey(e.gw_id, e.pn_id, e.entity_id, revision, linked, mono_now()));
    } else if (e.kind == "pn_deleted" && !c.pns.empty()) {
        const pb::PnInventory& before = c.pns.front();
        if (news) publish_lifecycle("delete", before.gw_id(), before.pn_id(), before.pn_id());
        const ChangeResult r = change_inventory(before, pb::CHANGE_DISSOLVE, "", before.revision());
        spdlog::warn("PN {} of {} deleted by the operator: telling its PN GW", before.pn_id(),
                     before.gw_id());
        apply(server_->announce(before.gw_id(), pb::CHANGE_DISSOLVE, "", r,
                                "deleted by the operator"));
    }
}

// Answers a registration the store cannot take with an ErrorReport.
void ServerDaemon::refuse_registration(const std::string& gw, const pb::Envelope& request,
                                       pb::FailureReason reason, const std::string& detail) {
    pb::Envelope err;
    err.set_sender_id(opt_.role.server_id);
    err.mutable_error()->set_pn_id(request.registration_request().pn_id());
    err.mutable_error()->set_reason(reason);
    err.mutable_error()->set_detail(detail);
    if (auto it = gws_.find(gw); it != gws_.end()) it->second->send(err);
}

// A registration first brings the records of the PN GW and of every PNE it names into the
// cache (on the store thread), then goes to the core.
void ServerDaemon::deliver(const std::string& gw, std::shared_ptr<pb::Envelope> env) {
    if (env->has_change_request() && env->change_request().op() == pb::CHANGE_LEAVE) {
        // A leave's proof is checked under the PNE's EUKey: its record first.
        const std::string id = env->change_request().pne_id();
        auto found = std::make_shared<std::optional<store::StoredEntity>>();
        store_job([id, found](store::Store& st) { *found = st.get_entity(id); },
                  [this, gw, env, id, found](StoreFailure) {
                      if (*found) dir_.put(id, to_record(*found));
                      to_role(gw, *env);
                  });
        return;
    }
    if (!env->has_registration_request()) {
        to_role(gw, *env);
        return;
    }
    if (store_queue_ >= kMaxStoreQueue) {
        refuse_registration(gw, *env, pb::BUSY, "the server's store is saturated; retry later");
        spdlog::warn("refusing a registration from {}: store queue full", gw);
        return;
    }
    std::vector<std::string> ids{gw};
    for (const auto& p : env->registration_request().pnes()) ids.push_back(p.join().pne_id());
    auto found = std::make_shared<std::vector<std::optional<store::StoredEntity>>>();
    store_job(
        [ids, found](store::Store& st) {
            for (const auto& id : ids) found->push_back(st.get_entity(id));
        },
        [this, gw, env, ids, found](StoreFailure failure) {
            if (failure) {
                const pb::FailureReason reason = store_failure_reason(*failure);
                refuse_registration(gw, *env, reason,
                                    reason == pb::STORE_UNAVAILABLE
                                        ? "the server's store is unavailable; retry later"
                                        : "the server could not read its store");
                return;
            }
            for (std::size_t i = 0; i < ids.size(); ++i) dir_.put(ids[i], to_record((*found)[i]));
            to_role(gw, *env);
        });
}

void ServerDaemon::start() {
    port_ = listen_on(listener_, opt_.listen, "listen address");
    if (opt_.readiness) opt_.readiness->listening = true;
    const std::string addr = opt_.listen.host + ":" + std::to_string(port_);
    spdlog::info("CPNS Server {} listening for PN GWs on {} (TLS 1.3 external PSK)",
                 opt_.role.server_id, addr);
    if (opt_.control_listen) {
        control_port_ = listen_on(control_listener_, *opt_.control_listen, "control_listen");
        spdlog::info("status on {}:{} (one request line: status)", opt_.control_listen->host,
                     control_port_);
        asio::co_spawn(io_, control_listener_.run(), asio::detached);
    }
    if (opt_.metrics) metrics_port_ = metrics_server_.start(*opt_.metrics);
    count_inventory();
    write_ready_file(opt_.ready_file, addr);
    asio::co_spawn(io_, listener_.run(), asio::detached);
    refresh_.expires_after(std::chrono::milliseconds(kGwDirectoryRefresh));
    refresh_.async_wait([this](const std::error_code& error) {
        if (!error) refresh_gateways();
    });
    poll_changes();
}

void ServerDaemon::reload(std::size_t max_connections_per_source, const std::string& entities) {
    opt_.max_connections_per_source = max_connections_per_source;
    listener_.set_max_per_source(max_connections_per_source);
    if (entities.empty()) return;
    auto list = std::make_shared<std::vector<store::StoredEntity>>(read_entities(entities));
    auto counts = std::make_shared<std::pair<std::size_t, std::size_t>>();
    store_job(
        [list, counts](store::Store& st) {
            for (const auto& e : *list) {
                if (st.get_entity(e.id)) {
                    ++counts->second;
                    continue;
                }
                st.put_entity(e);
                ++counts->first;
            }
        },
        [entities, counts](StoreFailure failure) {
            if (failure)
                spdlog::error("reload: entities file {} not imported (store error)", entities);
            else
                spdlog::info(
                    "reload: entities file {}: {} added, {} already in the store (kept as stored)",
                    entities, counts->first, counts->second);
        },
        true);
}

void ServerDaemon::stop() {
    listener_.close();
    control_listener_.close();
    metrics_server_.close();
    count_timer_.cancel();
    timer_.cancel();
    refresh_.cancel();
    change_poll_.cancel();
    for (auto& [id, c] : gws_) c->close();
    gws_.clear();
    // The job running now finishes (a registration commits or not, atomically); jobs still
    // queued are dropped: their PN GWs get no answer and time out, which is what they would
    // see from a crashed server as well.
    store_thread_.stop();
    store_thread_.join();
    if (store_queue_ > 0) spdlog::warn("{} store job(s) dropped at shutdown", store_queue_);
    spdlog::info(
        "stopped: {} PN(s) registered by this process, {} establishment(s) in flight "
        "dropped, {} PN GW link(s) refused",
        registered_, server_->active_sessions(),
        links_[pb::GATEWAY_AUTHENTICATION_FAILED] + links_[pb::UNKNOWN_ENTITY] +
            links_[pb::KEY_EXPIRED]);
}

net::Listener::Hooks ServerDaemon::listener_hooks() {
    net::Listener::Hooks hooks;
    hooks.on_socket = [this](net::tcp::socket socket, net::Listener::Slot slot) {
        auto conn = std::make_shared<net::Connection>(std::move(socket));
        conn->hold(std::move(slot));
        asio::co_spawn(io_, serve(std::move(conn)), asio::detached);
    };
    hooks.on_refused = [this](const std::string& source, net::Listener::Refusal why,
                              std::size_t open, std::size_t count) {
        links_.count(pb::LIMIT_EXCEEDED);
        if (why == net::Listener::Refusal::kPerSource)
            spdlog::warn("refused {} connection(s): {} open from {} (max_connections_per_source)",
                         count, opt_.max_connections_per_source, source);
        else
            spdlog::warn("refused {} connection(s): {} PN GW links open (limit)", count, open);
    };
    hooks.on_evicted = [](const std::string& source, std::size_t count) {
        spdlog::warn("full: closed {} connection(s) not yet authenticated (last from {})", count,
                     source);
    };
    hooks.on_error = [](const std::error_code& ec, std::size_t count) {
        spdlog::warn("accept failed {} time(s): {}{}", count, ec.message(),
                     ec == asio::error::no_descriptors ? " (raise the descriptor limit)" : "");
    };
    return hooks;
}

void ServerDaemon::refused(const net::Connection& conn, const net::LinkError& error, bool blocked) {
    const LogScope scope("tls", "", conn.remote(), pb::FailureReason_Name(error.reason));
    const std::string identity = conn.tls_identity();
    std::string why = error.detail;
    auto started = PskThrottle::Block::kNone;
    if (blocked) {
        why = "backing off after repeated PSK failures from " + conn.source();
        links_.count(pb::LIMIT_EXCEEDED);
    } else if (error.tls == tls::TlsError::kUnknownIdentity) {
        why = "unknown, disabled or revoked PN GW identity";
        started = throttle_.failed_unknown(conn.source(), mono_now());
    } else if (error.reason == pb::KEY_EXPIRED) {
        why =
            "the PN GW uses its previous EUKey, whose grace period has ended: give it the key "
            "file `cpnsctl rotate` wrote";
        if (!identity.empty()) started = throttle_.failed(conn.source(), identity, mono_now());
    } else if (error.tls == tls::TlsError::kBadPsk) {
        why = "wrong PSK (the PN GW's EUKey differs)";
        if (!identity.empty()) started = throttle_.failed(conn.source(), identity, mono_now());
    }
    links_.count(error.reason);
    if (started == PskThrottle::Block::kIdentity)
        spdlog::warn("{} failed PSK attempts as {} from {}: refused for {} s",
                     kMaxFailedPskAttempts, printable(identity), conn.source(), kPskBackoff / 1000);
    else if (started == PskThrottle::Block::kSource)
        spdlog::warn("{} failed PSK attempts from {}: the address is refused for {} s",
                     kMaxFailedPskAttemptsPerSource, conn.source(), kPskBackoff / 1000);
    // A handshake that timed out or was lost before any TLS verdict (a scan, a slow-loris,
    // an eviction when full) is counted but not worth a warning per connection.
    spdlog::log(
        error.tls == tls::TlsError::kNone && !blocked ? spdlog::level::debug : spdlog::level::warn,
        "refused PN GW link from {}{}: {} - {} (refused so far: {})", conn.remote(),
        identity.empty() ? "" : " as " + printable(identity), reason_name(error.reason), why,
        links_[pb::GATEWAY_AUTHENTICATION_FAILED] + links_[pb::UNKNOWN_ENTITY] +
            links_[pb::KEY_EXPIRED]);
}

asio::awaitable<void> ServerDaemon::serve(std::shared_ptr<net::Connection> conn) {
    // The back-off is per (source, identity): replaying a wrong key from elsewhere cannot
    // lock the key holder out. A refused identity fails like a wrong key on the wire.
    auto blocked = std::make_shared<bool>(false);
    const tls::PskLookup lookup = [this, conn = conn.get(),
                                   blocked](std::string_view identity) -> std::optional<SecretKey> {
        if (throttle_.blocked(conn->source(), std::string(identity), mono_now()) !=
            PskThrottle::Block::kNone) {
            *blocked = true;
            return std::nullopt;
        }
        return gw_psk(identity);
    };
    // EUKey rotation: a PN GW still on its previous EUKey fails the first key's binder check;
    // the same ClientHello is then tried under the previous EUKey's PSK (accepted within the
    // grace period, only recognised after it: KEY_EXPIRED in our log, a wrong key on the wire).
    const net::PskRetryLookup retry = [this](std::string_view identity) {
        return gw_previous_psk(identity);
    };
    if (auto error = co_await conn->server_handshake(
            *tls_, kGwHandshakeTimeout, net::PskLink::kServerOfGateway, lookup, retry)) {
        refused(*conn, *error, *blocked);
        metrics_.tls_handshake("server", error->reason);
        if (*blocked) metrics_.psk_throttled("server");
        co_return;
    }
    conn->authenticated();
    metrics_.tls_handshake("server", pb::REASON_NONE);
    const std::string gw = conn->tls_identity();
    conn->peer_id = gw;
    throttle_.succeeded(conn->source(), gw);
    if (auto old = gws_.find(gw); old != gws_.end()) {
        spdlog::info("PN GW {} reconnected; closing its previous link", gw);
        old->second->close();
    }
    gws_[gw] = conn;
    if (const auto rec = dir_.find(gw))
        gw_link_eukeys_[gw] =
            conn->used_retry_psk() && rec->previous ? rec->previous->eukey : rec->eukey;
    if (spdlog::should_log(spdlog::level::info))  // tls_summary() costs a few allocations
        spdlog::info("PN GW {} authenticated from {} ({}){}", gw, conn->remote(),
                     conn->tls_summary(),
                     conn->used_retry_psk()
                         ? " with its previous EUKey (rotated; valid until the grace period ends)"
                         : "");
    for (;;) {
        auto r = co_await conn->read();
        if (auto* env = std::get_if<pb::Envelope>(&r)) {
            spdlog::debug("{} -> server: {}", gw, message_name(*env));
            deliver(gw, std::make_shared<pb::Envelope>(std::move(*env)));
            continue;
        }
        if (auto* de = std::get_if<DecodeError>(&r)) {
            links_.count(to_reason(*de));
            spdlog::warn("closing link of {}: {}", gw, to_string(*de));
        } else {
            spdlog::info("PN GW {} disconnected ({})", gw, std::get<net::LinkError>(r).detail);
        }
        break;
    }
    conn->close();
    if (auto it = gws_.find(gw); it != gws_.end() && it->second == conn) {
        gws_.erase(it);
        gw_link_eukeys_.erase(gw);
    }
}

void ServerDaemon::to_role(const std::string& gw, const pb::Envelope& env) {
    trace_->message("recv", env, gw, Protection::kTls);
    const LogScope scope("message", pn_id_of(env), gw);
    if (env.has_registration_request())
        metrics_.started(gw + "/" + env.registration_request().pn_id(),
                         flow_of(env.registration_request().flow()),
                         env.registration_request().setup_type(), mono_now());
    apply(server_->on_message(gw, env, mono_now()));
    trace_->handled(env);
}

void ServerDaemon::send_effect(const SendEffect& s) {
    trace_->message("send", s.msg, s.to, Protection::kTls);
    auto it = gws_.find(s.to);
    if (it == gws_.end() || !it->second->send(s.msg))
        spdlog::warn("cannot send {} to {}: no link", message_name(s.msg), s.to);
    else {
        spdlog::debug("server -> {}: {}", s.to, message_name(s.msg));
        trace_->sent(s.msg, it->second, io_.get_executor());
    }
}

// The Registration Response leaves only once the store has committed the PN. Registrations
// are committed in groups (kMaxCommitGroup): those that arrive while a commit is in progress
// go together into the next one, and each is answered only after that commit. A connection
// broken during the transaction is retried once on a new connection (kPersistAttempts); the
// PN GW learns STORE_UNAVAILABLE / STORAGE_FULL / INTERNAL_ERROR when it still fails, and is
// never told "registered" for a PN whose commit was not confirmed.
void ServerDaemon::persist_effect(PersistPnEffect& p) {
    ++store_queue_;  // a waiting registration counts towards kMaxStoreQueue like a job
    persist_pending_.push_back(PendingPersist{p.gw_id, std::move(p.inventory)});
    flush_persist();
}

void ServerDaemon::flush_persist() {
    if (persist_writing_ || persist_pending_.empty()) return;
    persist_writing_ = true;
    auto group = std::make_shared<std::vector<PendingPersist>>();
    const std::size_t n = std::min(persist_pending_.size(), kMaxCommitGroup);
    group->reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
        group->push_back(std::move(persist_pending_.front()));
        persist_pending_.pop_front();
    }
    metrics_.registry()
        .histogram("cpns_store_batch_size", {"registration"})
        .observe(static_cast<double>(group->size()));
    store_job([this, group](store::Store& st) { commit_group(st, *group); },
              [this, group](StoreFailure) {
                  persist_writing_ = false;
                  store_queue_ -= group->size();
                  health_.group_commits = group_commits_.load(std::memory_order_relaxed);
                  health_.grouped_pns = grouped_pns_.load(std::memory_order_relaxed);
                  for (const PendingPersist& m : *group) {
                      if (m.result == pb::REASON_NONE) {
                          ++registered_;
                          metrics_.registry().counter("cpns_pn_registrations_total").inc();
                          ++pns_;
                      }
                      apply(server_->on_persisted(m.gw, m.inventory.pn_id(), m.result, mono_now()));
                  }
                  flush_persist();
              },
              true);
}

namespace {

pb::FailureReason put_reason(store::PutResult put) {
    switch (put) {
        case store::PutResult::kOk:
            return pb::REASON_NONE;
        case store::PutResult::kDuplicate:
            return pb::DUPLICATE_PN;
        case store::PutResult::kLimit:
            return pb::LIMIT_EXCEEDED;
        case store::PutResult::kError:
            break;
    }
    return pb::INTERNAL_ERROR;
}

// Which failure a group reports for the store's health when members failed differently: an
// unreachable store first, then a full one.
int severity(store::StoreError::Kind kind) {
    switch (kind) {
        case store::StoreError::Kind::kUnavailable:
            return 2;
        case store::StoreError::Kind::kFull:
            return 1;
        case store::StoreError::Kind::kOther:
            break;
    }
    return 0;
}

}  // namespace

void ServerDaemon::commit_group(store::Store& st, std::vector<PendingPersist>& group) {
    int attempt = 1;
    if (group.size() > 1) {
        std::vector<const pb::PnInventory*> invs;
        invs.reserve(group.size());
        for (const PendingPersist& m : group) invs.push_back(&m.inventory);
        try {
            const std::vector<store::PutResult> put = st.register_pns(invs);
            for (std::size_t i = 0; i < group.size(); ++i) group[i].result = put_reason(put.at(i));
            group_commits_.fetch_add(1, std::memory_order_relaxed);
            grouped_pns_.fetch_add(group.size(), std::memory_order_relaxed);
            return;
        } catch (const store::StoreError& e) {
            // Nothing of the group is known to be committed; each is tried alone for its own
            // result. A broken connection counts as each one's first attempt (its COMMIT may
            // have happened: register_alone then recognises the PN as its own).
            if (e.kind() == store::StoreError::Kind::kUnavailable) {
                attempt = 2;
                persist_retries_.fetch_add(group.size(), std::memory_order_relaxed);
            }
            spdlog::warn(
                "store: the group commit of {} registrations failed ({}); registering "
                "each alone",
                group.size(), e.what());
        }
    }
    std::optional<store::StoreError> worst;
    std::size_t failed = 0;
    for (PendingPersist& m : group) {
        try {
            m.result = register_alone(st, m.inventory, attempt);
        } catch (const store::StoreError& e) {
            m.result = store_failure_reason(e.kind());
            ++failed;
            if (!worst || severity(e.kind()) > severity(worst->kind())) worst = e;
            if (group.size() > 1)
                spdlog::error("store: registering PN {} of {}: {}", m.inventory.pn_id(),
                              m.inventory.gw_id(), e.what());
        } catch (const std::exception& e) {
            m.result = pb::INTERNAL_ERROR;
            ++failed;
            if (!worst) worst = store::StoreError(e.what());
            spdlog::error("store: registering PN {} of {}: {}", m.inventory.pn_id(),
                          m.inventory.gw_id(), e.what());
        }
    }
    if (!worst) return;
    if (group.size() == 1) throw *worst;  // store_job logs it and notes the store's health
    throw store::StoreError(std::to_string(failed) + " of " + std::to_string(group.size()) +
                                " registrations failed, e.g. " + worst->what(),
                            worst->kind());
}

pb::FailureReason ServerDaemon::register_alone(store::Store& st, const pb::PnInventory& inv,
                                               int attempt) {
    for (;; ++attempt) {
        store::PutResult put = store::PutResult::kError;
        try {
            put = st.register_pn(inv);
            if (put == store::PutResult::kDuplicate && attempt > 1) {
                // The broken attempt may have committed before its answer was lost.
                const auto stored = st.get_pn(inv.gw_id(), inv.pn_id());
                if (stored && google::protobuf::util::MessageDifferencer::Equals(*stored, inv)) {
                    spdlog::info("store: PN {} of {} was committed by the broken attempt",
                                 inv.pn_id(), inv.gw_id());
                    put = store::PutResult::kOk;
                }
            }
        } catch (const store::StoreError& e) {
            if (e.kind() != store::StoreError::Kind::kUnavailable) throw;
            if (attempt >= kPersistAttempts) {
                remember_unacknowledged(inv);
                throw;
            }
            persist_retries_.fetch_add(1, std::memory_order_relaxed);
            spdlog::warn("store: registering PN {} of {} failed ({}); trying again", inv.pn_id(),
                         inv.gw_id(), e.what());
            continue;
        }
        return put_reason(put);
    }
}

// A lifecycle change: the store applies it at the named revision in one transaction; the PN
// GW (and through it each PNE) is told only once it is committed. A broken connection is
// answered STORE_UNAVAILABLE: a change is never retried blindly, since the PN GW (or the PNE)
// asks again at the revision it then holds, and a change committed before the break is
// refused as STALE_REVISION with the PN as it is, which brings the asker up to date.
void ServerDaemon::change_effect(const ChangePnEffect& c) {
    auto result = std::make_shared<ChangeResult>();
    result->reason = pb::INTERNAL_ERROR;
    // The records of every PNE to be told come with the result: the server proves each notice
    // under that PNE's EUKey.
    auto records = std::make_shared<std::vector<std::optional<store::StoredEntity>>>();
    store_job(
        [c, result, records](store::Store& st) {
            *result = st.change_pn(c.gw_id, c.pn_id, c.op, c.pne_id, c.revision, c.added);
            std::set<std::string> ids(result->before.begin(), result->before.end());
            for (const auto& m : result->inventory.members()) ids.insert(m.pne_id());
            // A resynchronisation: the members the PN GW named, told even when no longer listed.
            if (c.op == pb::CHANGE_SYNC)
                for (const auto& m : c.added) ids.insert(m.pne_id());
            for (const auto& id : ids) {
                try {
                    records->push_back(st.get_entity(id));
                } catch (const store::StoreError& e) {
                    if (e.kind() == store::StoreError::Kind::kUnavailable) throw;
                    records->push_back(std::nullopt);  // refused row: that PNE is not told
                }
            }
        },
        [this, c, result, records](StoreFailure failure) {
            if (failure) {
                result->reason = store_failure_reason(*failure);
                result->inventory.Clear();
            }
            for (const auto& r : *records)
                if (r) dir_.put(r->id, to_record(r));
            apply(server_->on_changed(c.gw_id, c.pn_id, *result, mono_now()));
        },
        c.op != pb::CHANGE_SYNC);  // a resynchronisation only reads
}

void ServerDaemon::remember_unacknowledged(const pb::PnInventory& inv) {
    if (unacknowledged_.size() >= kMaxUnacknowledged) {
        const auto& old = unacknowledged_.front();
        spdlog::error(
            "store: more than {} registrations with an unknown outcome: PN {} of {} is no longer "
            "tracked (if its commit happened it stays registered unacknowledged)",
            kMaxUnacknowledged, old.pn_id(), old.gw_id());
        unacknowledged_.pop_front();
    }
    unacknowledged_.push_back(inv);
}

void ServerDaemon::withdraw_unacknowledged(store::Store& st) {
    while (!unacknowledged_.empty()) {
        const pb::PnInventory& inv = unacknowledged_.front();
        try {
            if (st.withdraw_pn(inv)) {
                withdrawn_.fetch_add(1, std::memory_order_relaxed);
                spdlog::warn(
                    "store: PN {} of {} had been committed although its PN GW was told 'store "
                    "unavailable' (the answer was lost with the connection): withdrawn",
                    inv.pn_id(), inv.gw_id());
            }
        } catch (const store::StoreError& e) {
            if (e.kind() == store::StoreError::Kind::kUnavailable) return;  // next job
            spdlog::error("store: cannot withdraw PN {} of {}: {}", inv.pn_id(), inv.gw_id(),
                          e.what());
        }
        unacknowledged_.pop_front();
    }
}

net::Listener::Hooks ServerDaemon::control_hooks() {
    net::Listener::Hooks hooks;
    hooks.on_socket = [this](net::tcp::socket socket, net::Listener::Slot slot) {
        asio::co_spawn(io_,
                       control_serve(std::make_shared<net::tcp::socket>(std::move(socket)),
                                     std::make_shared<net::Listener::Slot>(std::move(slot))),
                       asio::detached);
    };
    hooks.on_refused = [](const std::string& source, net::Listener::Refusal, std::size_t open,
                          std::size_t count) {
        spdlog::warn("refused {} status connection(s) (last from {}): {} open (limit)", count,
                     source, open);
    };
    return hooks;
}

std::string ServerDaemon::status_json() const {
    // A Struct printed by the protobuf JSON printer: every string escaped by it.
    google::protobuf::Struct st;
    auto& f = *st.mutable_fields();
    const auto num = [](std::uint64_t v) {
        google::protobuf::Value x;
        x.set_number_value(static_cast<double>(v));
        return x;
    };
    f["server_id"].set_string_value(opt_.role.server_id);
    f["ready"].set_bool_value(ready());
    f["store_backend"].set_string_value(store_->backend());
    f["store_reachable"].set_bool_value(health_.reachable);
    f["store_full"].set_bool_value(health_.full);
    f["store_down_ms"] = num(health_.reachable ? 0 : mono_now() - health_.down_since);
    auto& errors = *f["store_errors"].mutable_struct_value()->mutable_fields();
    errors["unavailable"] = num(health_.unavailable);
    errors["full"] = num(health_.full_errors);
    errors["other"] = num(health_.other_errors);
    f["store_retries"] = num(health_.retries);
    f["store_withdrawn"] = num(health_.withdrawn);
    f["group_commits"] = num(health_.group_commits);
    f["grouped_pns"] = num(health_.grouped_pns);
    f["store_queue"] = num(store_queue_);
    f["registered"] = num(registered_);
    f["gw_links"] = num(gws_.size());
    return message_json(st);
}

// One request line per connection ("status"), answered with one line; bounded in line length
// (kMaxServerControlLine), time (kServerControlTimeout) and connections.
// The slot counts the connection against the status port's limit until this returns.
asio::awaitable<void> ServerDaemon::control_serve(std::shared_ptr<net::tcp::socket> socket,
                                                  std::shared_ptr<net::Listener::Slot> slot) {
    asio::steady_timer deadline(io_);
    deadline.expires_after(std::chrono::milliseconds(kServerControlTimeout));
    deadline.async_wait([socket](const std::error_code& ec) {
        std::error_code ignored;
        if (!ec) socket->close(ignored);
    });
    std::string line;
    std::error_code ec;
    const std::size_t n =
        co_await asio::async_read_until(*socket, asio::dynamic_buffer(line, kMaxServerControlLine),
                                        '\n', asio::redirect_error(asio::use_awaitable, ec));
    std::string answer;
    if (ec) {
        if (ec != asio::error::not_found) co_return;  // closed, timed out
        answer = R"({"error":"request line too long"})";
    } else {
        line.resize(n - 1);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        answer = line == "status" ? status_json() : R"({"error":"unknown command; use: status"})";
    }
    answer += '\n';
    slot->authenticated();  // answered: not evicted while the answer is written
    co_await asio::async_write(*socket, asio::buffer(answer),
                               asio::redirect_error(asio::use_awaitable, ec));
    deadline.cancel();
    socket->shutdown(net::tcp::socket::shutdown_both, ec);
    socket->close(ec);
}

// The audit log: one record per PNE, plus one for the PN itself.
void ServerDaemon::outcome_effect(const OutcomeEffect& o) {
    trace_->outcome(o);
    const bool lifecycle = !o.operation.empty();
    const LogScope scope(lifecycle ? o.operation : "outcome", o.pn_id, o.gw_id,
                         pb::FailureReason_Name(o.reason));
    if (opt_.events) {
        if (lifecycle)
            opt_.events->publish(
                "lifecycle",
                lifecycle_event_json(wall_now_ms(), o.operation, o.gw_id, o.pn_id,
                                     o.pnes.empty() ? o.pn_id : o.pnes.front().pne_id));
        else
            opt_.events->publish(
                "establishment",
                establishment_event_json(
                    wall_now_ms(), flow_label(metrics_.flow(o.gw_id + "/" + o.pn_id)), o.gw_id,
                    o.pn_id, o.success,
                    pb::FailureReason_Name(o.success ? pb::REASON_NONE : o.reason),
                    static_cast<std::size_t>(o.inventory.members_size())));
    }
    if (!lifecycle) metrics_.finished(o.gw_id + "/" + o.pn_id, o, mono_now());
    // The outcome as JSON (protobuf's reflection-based printer) only when it is logged.
    if (spdlog::should_log(spdlog::level::info))
        spdlog::info("{} {}: {}", lifecycle ? o.operation : "establishment", o.pn_id,
                     outcome_json(opt_.role.server_id, o));
    const auto now_ms =
        static_cast<std::int64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                      std::chrono::system_clock::now().time_since_epoch())
                                      .count());
    // A lifecycle change is audited under its operation ("leave", "remove", "dissolve"); the
    // PNE it concerns gets a record of its own.
    const std::string detail =
        lifecycle ? o.operation + (o.detail.empty() ? "" : ": " + o.detail) : o.detail;
    audit_pending_.push_back({now_ms, opt_.role.server_id, o.gw_id, o.pn_id, "", o.success,
                              std::string(reason_name(o.reason)), detail});
    for (const auto& pne : o.pnes)
        audit_pending_.push_back({now_ms, opt_.role.server_id, o.gw_id, o.pn_id, pne.pne_id,
                                  lifecycle ? o.success : pne.joined,
                                  std::string(reason_name(pne.reason)),
                                  lifecycle ? o.operation : ""});
    flush_audit();
}

void ServerDaemon::apply(ServerEffects effects) {
    for (auto& e : effects)
        std::visit(Overloaded{
                       [&](const SendEffect& s) { send_effect(s); },
                       [&](PersistPnEffect& p) { persist_effect(p); },
                       [&](const ChangePnEffect& c) { change_effect(c); },
                       [&](const SessionKeyEffect& k) {
                           if (session_keys_.size() >= kMaxSessionKeys)
                               session_keys_.erase(session_keys_.begin());
                           session_keys_[{k.pn_id, k.pne_id}] = k.sk;
                       },
                       [&](const OutcomeEffect& o) { outcome_effect(o); },
                       [&](const TransitionEffect& t) { trace_->transition(t); },
                   },
                   e);
    timer_.arm(server_->next_deadline());
}

// The server's own metrics besides those of every daemon (DaemonMetrics): registrations, the
// store (commit latency, batch sizes, queue, errors), the PN and entity counts, PN GW links.
void ServerDaemon::declare_metrics() {
    using Sample = Registry::Sample;
    Registry& r = metrics_.registry();
    r.declare_counter("cpns_pn_registrations_total",
                      "PNs this server registered (committed to its store and answered).", {});
    r.counter("cpns_pn_registrations_total");
    r.declare_histogram("cpns_store_commit_seconds",
                        "Store write jobs (registrations, lifecycle changes, audit batches) from "
                        "their start on the store thread to their commit.",
                        {}, latency_buckets());
    store_commit_ = &r.histogram("cpns_store_commit_seconds");
    r.declare_histogram("cpns_store_batch_size", "Records written in one store transaction.",
                        {"kind"}, batch_buckets());
    r.declare_sampled("cpns_store_queue_depth", "Store jobs queued or running now.", {}, [this] {
        return std::vector<Sample>{{{}, static_cast<double>(store_queue_)}};
    });
    r.declare_sampled(
        "cpns_store_errors_total",
        "Store jobs that failed, by kind: unavailable (no connection), full (no space), other.",
        {"kind"},
        [this] {
            return std::vector<Sample>{{{"unavailable"}, static_cast<double>(health_.unavailable)},
                                       {{"full"}, static_cast<double>(health_.full_errors)},
                                       {{"other"}, static_cast<double>(health_.other_errors)}};
        },
        "counter");
    r.declare_sampled("cpns_store_up", "1 while the store is reachable, else 0.", {}, [this] {
        return std::vector<Sample>{{{}, health_.reachable ? 1.0 : 0.0}};
    });
    r.declare_sampled("cpns_pns",
                      "PNs registered in the store (counted every 30 s, plus registrations since).",
                      {}, [this] {
                          return std::vector<Sample>{{{}, pns_}};
                      });
    r.declare_sampled(
        "cpns_entities", "Entities provisioned in the store, by kind (counted every 30 s).",
        {"kind"}, [this] {
            return std::vector<Sample>{{{"gw"}, entities_gw_}, {{"pne"}, entities_pne_}};
        });
    r.declare_sampled("cpns_gw_links", "PN GWs linked to this server now.", {}, [this] {
        return std::vector<Sample>{{{}, static_cast<double>(gws_.size())}};
    });
    metrics_.watch_listener("server", listener_);
    metrics_.watch_listener("control", control_listener_);
    metrics_.watch_listener("metrics", metrics_server_.listener());
}

// Counts PNs and entities on the store thread every kInventoryCountInterval (never per scrape).
void ServerDaemon::count_inventory() {
    struct Counts {
        double pns = 0, gw = 0, pne = 0;
    };
    auto counts = std::make_shared<Counts>();
    store_job(
        [counts](store::Store& st) {
            // COUNT(*), not the rows: reading every PN (and unsealing every entity) each
            // interval made the server's memory and CPU grow with the PNs it had registered.
            counts->pns = static_cast<double>(st.count_pns());
            counts->gw = static_cast<double>(st.count_entities(EntityKind::kGw));
            counts->pne = static_cast<double>(st.count_entities(EntityKind::kPne));
        },
        [this, counts](StoreFailure failure) {
            if (!failure) {
                pns_ = counts->pns;
                entities_gw_ = counts->gw;
                entities_pne_ = counts->pne;
            }
            count_timer_.expires_after(std::chrono::milliseconds(kInventoryCountInterval));
            count_timer_.async_wait([this](const std::error_code& ec) {
                if (!ec) count_inventory();
            });
        });
}

}  // namespace cpns::daemon
