// The PostgreSQL backend (libpq). Every statement goes through PQexecParams with its values as
// parameters; the SQL text never contains a value. Results come back in text format; bytea
// columns are decoded from their hex form.
#include <libpq-fe.h>

#include <cstring>
#include <string>

#include "store/db.hpp"
#include "store/store.hpp"

namespace cpns::store::detail {
namespace {

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

class PgDb final : public Db {
  public:
    explicit PgDb(const std::string& conninfo) {
        // Our defaults come first: settings in the caller's conninfo/URL override them.
        const char* const keywords[] = {"connect_timeout", "application_name", "dbname", nullptr};
        const char* const values[] = {"10", "cpns-store", conninfo.c_str(), nullptr};
        conn_ = PQconnectdbParams(keywords, values, 1);
        if (!conn_) throw StoreError("cannot connect to PostgreSQL: out of memory");
        if (PQstatus(conn_) != CONNECTION_OK) {
            const std::string why = trimmed(PQerrorMessage(conn_));
            PQfinish(conn_);
            conn_ = nullptr;
            throw StoreError("cannot connect to PostgreSQL: " + why);
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
        exec("COMMIT", {});
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
        if (!res) throw StoreError("PostgreSQL: " + trimmed(PQerrorMessage(conn_)));
        const ExecStatusType status = PQresultStatus(res.get());
        if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
            const char* state = PQresultErrorField(res.get(), PG_DIAG_SQLSTATE);
            throw StoreError("PostgreSQL statement failed" +
                             (state ? " (SQLSTATE " + std::string(state) + ")" : std::string()) +
                             ": " + trimmed(PQresultErrorMessage(res.get())));
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

    // A connection that broke (server restart, network) is re-established before the next
    // statement outside a transaction; the failed call itself has thrown StoreError.
    void reconnect_if_broken() {
        if (PQstatus(conn_) == CONNECTION_OK) return;
        PQreset(conn_);
        if (PQstatus(conn_) != CONNECTION_OK) {
            throw StoreError("PostgreSQL connection lost: " + trimmed(PQerrorMessage(conn_)));
        }
        configure_session();
    }

    PGconn* conn_ = nullptr;
    bool in_transaction_ = false;
};

}  // namespace

std::unique_ptr<Db> open_postgresql(const std::string& conninfo) {
    return std::make_unique<PgDb>(conninfo);
}

}  // namespace cpns::store::detail
