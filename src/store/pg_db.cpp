// The PostgreSQL backend (libpq). Every statement goes through PQexecParams with its values as
// parameters; the SQL text never contains a value. Results come back in text format; bytea
// columns are decoded from their hex form.
#include <libpq-fe.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>

#include "store/db.hpp"
#include "store/store.hpp"

namespace cpns::store::detail {
namespace {

// Reconnection after a lost connection: the first attempt is immediate (a terminated backend,
// a restarted server); after a failed one, calls fail at once with kUnavailable until the
// back-off has passed, doubling from kReconnectBackoffMin up to kReconnectBackoffMax. So a
// database that is down costs one connection attempt per back-off, not one per call.
constexpr std::chrono::milliseconds kReconnectBackoffMin{100};
constexpr std::chrono::milliseconds kReconnectBackoffMax{2'000};
// Defaults for the connection (the conninfo/URL may override them): seconds to wait for one
// host to accept a connection, and how long unacknowledged data or a silent peer may last
// before the kernel declares the connection dead, so that a statement to a vanished host
// fails within about half a minute instead of hanging on TCP retransmissions.
constexpr const char* kConnectTimeoutS = "5";
constexpr const char* kTcpUserTimeoutMs = "20000";
constexpr const char* kKeepalivesIdleS = "10";
constexpr const char* kKeepalivesIntervalS = "5";
constexpr const char* kKeepalivesCount = "3";

constexpr Oid kByteaOid = 17;  // pg_type.oid of bytea (catalog/pg_type_d.h: BYTEAOID)
// pg_advisory_xact_lock key that serialises schema migrations ("cpnsStor").
constexpr std::int64_t kMigrationLockKey = 0x63706e7353746f72;

const std::vector<Migration> kPgMigrations = {
    {1,
     {
         "CREATE TABLE entities ("
         " id TEXT NOT NULL PRIMARY KEY,"
         " kind TEXT NOT NULL CHECK (kind IN ('pne', 'gw')),"
         " sealed_eukey BYTEA NOT NULL,"
         " status TEXT NOT NULL CHECK (status IN ('active', 'disabled', 'revoked')),"
         " capabilities BYTEA NOT NULL,"
         " created_at_ms BIGINT NOT NULL,"
         " updated_at_ms BIGINT NOT NULL)",
         "CREATE INDEX entities_kind_idx ON entities (kind, id)",
         "CREATE TABLE pns ("
         " gw_id TEXT NOT NULL,"
         " pn_id TEXT NOT NULL,"
         " registered_at_ms BIGINT NOT NULL,"
         " inventory BYTEA NOT NULL,"
         " CONSTRAINT pns_gw_pn_key UNIQUE (gw_id, pn_id))",
         "CREATE TABLE pn_members ("
         " gw_id TEXT NOT NULL,"
         " pn_id TEXT NOT NULL,"
         " pne_id TEXT NOT NULL,"
         " member_index INTEGER NOT NULL,"
         " member BYTEA NOT NULL,"
         " CONSTRAINT pn_members_pkey PRIMARY KEY (gw_id, pn_id, pne_id),"
         " CONSTRAINT pn_members_pn_fkey FOREIGN KEY (gw_id, pn_id)"
         "  REFERENCES pns (gw_id, pn_id) ON DELETE CASCADE)",
         "CREATE INDEX pn_members_pne_idx ON pn_members (pne_id)",
         "CREATE TABLE audit ("
         " id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
         " at_ms BIGINT NOT NULL,"
         " server_id TEXT NOT NULL,"
         " gw_id TEXT NOT NULL,"
         " pn_id TEXT NOT NULL,"
         " pne_id TEXT NOT NULL,"
         " success BOOLEAN NOT NULL,"
         " reason TEXT NOT NULL,"
         " detail TEXT NOT NULL)",
         "CREATE INDEX audit_at_idx ON audit (at_ms, id)",
     }},
    // Migration 2: integrity at rest (sealed.hpp). The store's code then re-seals every row
    // of version 1 with the master key, in the same transaction (SqlStore::seal_legacy_rows).
    {2,
     {
         "ALTER TABLE entities ADD COLUMN key_version BIGINT NOT NULL DEFAULT 0",
         "ALTER TABLE entities ADD COLUMN revision BIGINT NOT NULL DEFAULT 0",
         "ALTER TABLE entities ADD COLUMN row_mac BYTEA",
         "CREATE TABLE entity_versions ("
         " id TEXT NOT NULL PRIMARY KEY,"
         " key_version BIGINT NOT NULL,"
         " revision BIGINT NOT NULL,"
         " mac BYTEA NOT NULL)",
     }},
    // Migration 3: EUKey rotation. The EUKey before the last rotation, sealed for the key
    // version before the current one, and when its grace period ends (sql_store.cpp).
    {3,
     {
         "ALTER TABLE entities ADD COLUMN previous_sealed_eukey BYTEA",
         "ALTER TABLE entities ADD COLUMN previous_expires_at_ms BIGINT",
     }},
    // Migration 4: the change log the servers poll (Store::change_log_after). A row's seq is
    // taken at insert time, so rows can become visible out of seq order when transactions
    // commit out of order: the pollers re-read a short window behind their last seq.
    {4,
     {
         "CREATE TABLE change_log ("
         " seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
         " at_ms BIGINT NOT NULL,"
         " kind TEXT NOT NULL,"
         " entity_id TEXT NOT NULL,"
         " gw_id TEXT NOT NULL,"
         " pn_id TEXT NOT NULL,"
         " payload BYTEA NOT NULL)",
     }},
};

struct ResultFree {
    void operator()(PGresult* r) const noexcept { PQclear(r); }
};
using PgResult = std::unique_ptr<PGresult, ResultFree>;

void ignore_notice(void*, const char*) {}

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// bytea in the hex output format: "\x" followed by two hex digits per byte.
std::string decode_bytea(const char* text, std::size_t n) {
    if (n < 2 || text[0] != '\\' || text[1] != 'x' || n % 2 != 0) {
        throw StoreError("PostgreSQL returned bytea not in hex format");
    }
    std::string out;
    out.reserve((n - 2) / 2);
    for (std::size_t i = 2; i < n; i += 2) {
        const int hi = hex_digit(text[i]);
        const int lo = hex_digit(text[i + 1]);
        if (hi < 0 || lo < 0) throw StoreError("PostgreSQL returned malformed bytea");
        out.push_back(static_cast<char>((hi << 4) | lo));
    }
    return out;
}

std::string trimmed(const char* message) {
    std::string s = message ? message : "";
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    return s;
}

// What a failed statement means to the caller, from its SQLSTATE (Appendix A of the
// PostgreSQL manual): connection exceptions (08), operator intervention such as a shutdown or
// a server not accepting connections yet (57P), a write on a read-only server (25006: a
// standby, or a primary demoted under us), system I/O errors (58) and too many connections
// (53300) are "unavailable"; disk full (53100) is "full".
StoreError::Kind classify(const char* sqlstate) {
    if (!sqlstate) return StoreError::Kind::kOther;
    const std::string_view s(sqlstate);
    if (s == "53100") return StoreError::Kind::kFull;
    if (s.starts_with("08") || s.starts_with("57P") || s.starts_with("58") || s == "25006" ||
        s == "53300")
        return StoreError::Kind::kUnavailable;
    return StoreError::Kind::kOther;
}

class PgDb final : public Db {
  public:
    explicit PgDb(const std::string& conninfo) {
        // Our defaults come first: settings in the caller's conninfo/URL override them.
        const char* const keywords[] = {
            "connect_timeout",  "tcp_user_timeout", "keepalives_idle", "keepalives_interval",
            "keepalives_count", "application_name", "dbname",          nullptr};
        const char* const values[] = {
            kConnectTimeoutS, kTcpUserTimeoutMs, kKeepalivesIdleS, kKeepalivesIntervalS,
            kKeepalivesCount, "cpns-store",      conninfo.c_str(), nullptr};
        conn_ = PQconnectdbParams(keywords, values, 1);
        if (!conn_) throw StoreError("cannot connect to PostgreSQL: out of memory");
        if (PQstatus(conn_) != CONNECTION_OK) {
            const std::string why = trimmed(PQerrorMessage(conn_));
            PQfinish(conn_);
            conn_ = nullptr;
            throw StoreError("cannot connect to PostgreSQL: " + why,
                             StoreError::Kind::kUnavailable);
        }
        try {
            configure_session();
        } catch (...) {
            PQfinish(conn_);
            conn_ = nullptr;
            throw;
        }
    }
    ~PgDb() override {
        if (conn_) PQfinish(conn_);
    }
    PgDb(const PgDb&) = delete;
    PgDb& operator=(const PgDb&) = delete;

    std::string backend() const override { return "postgresql"; }
    using Db::run;

    Result run(std::string_view sql, const std::vector<Param>& params) override {
        if (!in_transaction_) reconnect_if_broken();
        return exec(sql, params);
    }

    void begin_write() override { begin("BEGIN"); }
    void begin_read() override { begin("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"); }
    // Several server processes may open one database at the same moment: the advisory lock,
    // held until the transaction ends, lets one migrate while the others wait and then find
    // the schema up to date.
    void begin_migration() override {
        begin("BEGIN");
        try {
            exec("SELECT pg_advisory_xact_lock($1::bigint)", {Param::of(kMigrationLockKey)});
        } catch (...) {
            rollback();
            throw;
        }
    }
    void commit() override {
        in_transaction_ = false;  // COMMIT ends the transaction whether it succeeds or not
        // Never on a fresh connection: a COMMIT there would "succeed" without a transaction.
        try {
            exec("COMMIT", {});
        } catch (const StoreError& e) {
            // The connection broke while committing: the transaction may or may not be
            // committed (and, with synchronous replication, on the standby). The caller must
            // treat it as not acknowledged and find out on retry (register_pn: duplicate).
            if (e.kind() != StoreError::Kind::kUnavailable) throw;
            throw StoreError(std::string("PostgreSQL COMMIT outcome unknown: ") + e.what(),
                             StoreError::Kind::kUnavailable);
        }
    }
    void rollback() noexcept override {
        if (!in_transaction_) return;
        in_transaction_ = false;
        if (conn_ && PQstatus(conn_) == CONNECTION_OK) {
            PQclear(PQexecParams(conn_, "ROLLBACK", 0, nullptr, nullptr, nullptr, nullptr, 0));
        }
    }

    const std::vector<Migration>& migrations() const override { return kPgMigrations; }

  private:
    Result exec(std::string_view sql, const std::vector<Param>& params) {
        std::vector<std::string> numbers(params.size());
        std::vector<const char*> values(params.size(), nullptr);
        std::vector<int> lengths(params.size(), 0);
        std::vector<int> formats(params.size(), 0);
        for (std::size_t i = 0; i < params.size(); ++i) {
            const Param& p = params[i];
            switch (p.type) {
                case Param::Type::kNull:
                    break;
                case Param::Type::kInt:
                    numbers[i] = std::to_string(p.integer);
                    values[i] = numbers[i].c_str();
                    break;
                case Param::Type::kText:
                    if (p.bytes.find('\0') != std::string::npos) {
                        throw StoreError("PostgreSQL text parameter contains a NUL byte");
                    }
                    values[i] = p.bytes.c_str();
                    break;
                case Param::Type::kBlob:
                    values[i] = p.bytes.data();
                    lengths[i] = static_cast<int>(p.bytes.size());
                    formats[i] = 1;  // binary: the bytes as they are
                    break;
            }
        }
        const std::string text(sql);
        const PgResult res(PQexecParams(conn_, text.c_str(), static_cast<int>(params.size()),
                                        nullptr, values.data(), lengths.data(), formats.data(), 0));
        if (!res)
            throw StoreError("PostgreSQL: " + trimmed(PQerrorMessage(conn_)),
                             PQstatus(conn_) == CONNECTION_OK ? StoreError::Kind::kOther
                                                              : StoreError::Kind::kUnavailable);
        const ExecStatusType status = PQresultStatus(res.get());
        if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
            const char* state = PQresultErrorField(res.get(), PG_DIAG_SQLSTATE);
            // A broken connection is "unavailable" whatever SQLSTATE libpq made up for it.
            const StoreError::Kind kind =
                PQstatus(conn_) != CONNECTION_OK ? StoreError::Kind::kUnavailable : classify(state);
            throw StoreError(
                "PostgreSQL statement failed" +
                    (state ? " (SQLSTATE " + std::string(state) + ")" : std::string()) + ": " +
                    trimmed(PQresultErrorMessage(res.get())),
                kind);
        }

        Result result;
        const int rows = PQntuples(res.get());
        const int columns = PQnfields(res.get());
        result.rows.reserve(static_cast<std::size_t>(rows));
        for (int r = 0; r < rows; ++r) {
            Row row;
            row.reserve(static_cast<std::size_t>(columns));
            for (int c = 0; c < columns; ++c) {
                if (PQgetisnull(res.get(), r, c)) {
                    row.emplace_back(std::nullopt);
                    continue;
                }
                const char* v = PQgetvalue(res.get(), r, c);
                const auto n = static_cast<std::size_t>(PQgetlength(res.get(), r, c));
                if (PQftype(res.get(), c) == kByteaOid) {
                    row.emplace_back(decode_bytea(v, n));
                } else {
                    row.emplace_back(std::string(v, n));
                }
            }
            result.rows.push_back(std::move(row));
        }
        const char* tuples = PQcmdTuples(res.get());
        if (tuples && *tuples) result.changed = std::stoll(tuples);
        return result;
    }

    void begin(const char* sql) {
        reconnect_if_broken();
        exec(sql, {});
        in_transaction_ = true;
    }

    // Session settings that the store's promises rely on, whatever the server's defaults:
    // a commit is durable when it returns (synchronous_commit), bytea comes back in hex.
    void configure_session() {
        PQsetNoticeProcessor(conn_, ignore_notice, nullptr);
        exec("SET synchronous_commit = on", {});
        exec("SET bytea_output = 'hex'", {});
        exec("SET client_min_messages = warning", {});
    }

    // A connection that broke (server restart, failover, network) is re-established before the
    // next statement outside a transaction, never inside one; the failed call itself has
    // thrown StoreError (kUnavailable). PQreset tries every host of a multi-host conninfo in
    // turn, honouring target_session_attrs (read-write: the new primary after a failover).
    // Attempts after a failed one wait for the back-off (kReconnectBackoffMin..Max).
    void reconnect_if_broken() {
        if (PQstatus(conn_) == CONNECTION_OK) return;
        const auto now = std::chrono::steady_clock::now();
        if (now < next_attempt_) {
            throw StoreError("PostgreSQL connection lost (next reconnection attempt within " +
                                 std::to_string(backoff_.count()) + " ms): " + last_error_,
                             StoreError::Kind::kUnavailable);
        }
        PQreset(conn_);
        if (PQstatus(conn_) != CONNECTION_OK) {
            last_error_ = trimmed(PQerrorMessage(conn_));
            backoff_ = std::clamp(backoff_ * 2, kReconnectBackoffMin, kReconnectBackoffMax);
            next_attempt_ = std::chrono::steady_clock::now() + backoff_;
            throw StoreError("PostgreSQL connection lost: " + last_error_,
                             StoreError::Kind::kUnavailable);
        }
        backoff_ = {};
        next_attempt_ = {};
        last_error_.clear();
        configure_session();
    }

    PGconn* conn_ = nullptr;
    bool in_transaction_ = false;
    std::chrono::milliseconds backoff_{0};
    std::chrono::steady_clock::time_point next_attempt_{};
    std::string last_error_;
};

}  // namespace

std::unique_ptr<Db> open_postgresql(const std::string& conninfo) {
    return std::make_unique<PgDb>(conninfo);
}

}  // namespace cpns::store::detail
