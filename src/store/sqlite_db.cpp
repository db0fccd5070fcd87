// The SQLite backend: one database file in WAL mode, synchronous=FULL (a commit is on disk when
// it returns), foreign keys enforced, 5 s busy timeout. Prepared statements are cached.
#include <fcntl.h>
#include <sqlite3.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <string>
#include <thread>

#include "store/db.hpp"
#include "store/store.hpp"

namespace cpns::store::detail {
namespace {

constexpr int kBusyTimeoutMs = 5000;
// Switching to WAL needs the database to itself for a moment, and SQLite answers SQLITE_BUSY
// at once (without its busy handler) while another connection is opening or migrating it:
// the switch is tried again this many times, kWalRetryDelayMs apart (within kBusyTimeoutMs).
constexpr int kWalAttempts = 100;
constexpr int kWalRetryDelayMs = 50;

// Migration 1: the tables of the store. Kinds and statuses are stored as words, the blobs are
// serialized protobuf (capabilities, inventory header, members) or sealed EUKeys.
const std::vector<Migration> kSqliteMigrations = {
    {1,
     {
         "CREATE TABLE entities ("
         " id TEXT NOT NULL PRIMARY KEY,"
         " kind TEXT NOT NULL CHECK (kind IN ('pne', 'gw')),"
         " sealed_eukey BLOB NOT NULL,"
         " status TEXT NOT NULL CHECK (status IN ('active', 'disabled', 'revoked')),"
         " capabilities BLOB NOT NULL,"
         " created_at_ms INTEGER NOT NULL,"
         " updated_at_ms INTEGER NOT NULL)",
         "CREATE INDEX entities_kind_idx ON entities (kind, id)",
         "CREATE TABLE pns ("
         " gw_id TEXT NOT NULL,"
         " pn_id TEXT NOT NULL,"
         " registered_at_ms INTEGER NOT NULL,"
         " inventory BLOB NOT NULL,"
         " CONSTRAINT pns_gw_pn_key UNIQUE (gw_id, pn_id))",
         "CREATE TABLE pn_members ("
         " gw_id TEXT NOT NULL,"
         " pn_id TEXT NOT NULL,"
         " pne_id TEXT NOT NULL,"
         " member_index INTEGER NOT NULL,"
         " member BLOB NOT NULL,"
         " CONSTRAINT pn_members_pkey PRIMARY KEY (gw_id, pn_id, pne_id),"
         " CONSTRAINT pn_members_pn_fkey FOREIGN KEY (gw_id, pn_id)"
         "  REFERENCES pns (gw_id, pn_id) ON DELETE CASCADE)",
         "CREATE INDEX pn_members_pne_idx ON pn_members (pne_id)",
         "CREATE TABLE audit ("
         " id INTEGER PRIMARY KEY AUTOINCREMENT,"
         " at_ms INTEGER NOT NULL,"
         " server_id TEXT NOT NULL,"
         " gw_id TEXT NOT NULL,"
         " pn_id TEXT NOT NULL,"
         " pne_id TEXT NOT NULL,"
         " success INTEGER NOT NULL CHECK (success IN (0, 1)),"
         " reason TEXT NOT NULL,"
         " detail TEXT NOT NULL)",
         "CREATE INDEX audit_at_idx ON audit (at_ms, id)",
     }},
    // Migration 2: integrity at rest (sealed.hpp). The store's code then re-seals every row
    // of version 1 with the master key, in the same transaction (SqlStore::seal_legacy_rows).
    {2,
     {
         "ALTER TABLE entities ADD COLUMN key_version INTEGER NOT NULL DEFAULT 0",
         "ALTER TABLE entities ADD COLUMN revision INTEGER NOT NULL DEFAULT 0",
         "ALTER TABLE entities ADD COLUMN row_mac BLOB",
         "CREATE TABLE entity_versions ("
         " id TEXT NOT NULL PRIMARY KEY,"
         " key_version INTEGER NOT NULL,"
         " revision INTEGER NOT NULL,"
         " mac BLOB NOT NULL)",
     }},
    // Migration 3: EUKey rotation. The EUKey before the last rotation, sealed for the key
    // version before the current one, and when its grace period ends (sql_store.cpp).
    {3,
     {
         "ALTER TABLE entities ADD COLUMN previous_sealed_eukey BLOB",
         "ALTER TABLE entities ADD COLUMN previous_expires_at_ms INTEGER",
     }},
    // Migration 4: the change log the servers poll (Store::change_log_after): status changes
    // of entities and PNs deleted by the operator, in commit order.
    {4,
     {
         "CREATE TABLE change_log ("
         " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
         " at_ms INTEGER NOT NULL,"
         " kind TEXT NOT NULL,"
         " entity_id TEXT NOT NULL,"
         " gw_id TEXT NOT NULL,"
         " pn_id TEXT NOT NULL,"
         " payload BLOB NOT NULL)",
     }},
};

// $1..$n (the store's placeholder style) -> SQLite's parameters. The SQL text of the store
// contains no other '$'. When they appear as $1, $2, ... $n, each once and in that order (every
// multi-row statement of a group commit), they become plain '?': SQLite numbers those as they
// come, while each ?NNN is looked up among the earlier ones when the statement is prepared,
// which for the thousands of a group's statement was the largest single cost of SQLite in a
// profile of the server. Otherwise ?1..?n.
std::string to_sqlite_placeholders(std::string_view sql) {
    std::string plain, numbered;
    plain.reserve(sql.size());
    numbered.reserve(sql.size());
    bool in_order = true;
    long next = 1;
    for (std::size_t i = 0; i < sql.size(); ++i) {
        if (sql[i] != '$') {
            plain += sql[i];
            numbered += sql[i];
            continue;
        }
        std::size_t j = i + 1;
        long n = 0;
        while (j < sql.size() && sql[j] >= '0' && sql[j] <= '9' && n < 1'000'000)
            n = n * 10 + (sql[j++] - '0');
        in_order = in_order && n == next++;
        plain += '?';
        numbered += '?';
        numbered.append(sql.substr(i + 1, j - i - 1));
        i = j - 1;
    }
    return in_order ? plain : numbered;
}

class SqliteDb final : public Db {
  public:
    explicit SqliteDb(const std::string& path) : path_(path) {
        create_private_file();
        const int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
        const int rc = sqlite3_open_v2(path.c_str(), &db_, flags, nullptr);
        if (rc != SQLITE_OK) {
            last_rc_ = rc;
            const std::string why = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
            sqlite3_close(db_);
            db_ = nullptr;
            throw StoreError("cannot open SQLite database " + path + ": " + why);
        }
        try {
            sqlite3_extended_result_codes(db_, 1);
            sqlite3_busy_timeout(db_, kBusyTimeoutMs);
            Result mode;
            for (int attempt = 1;; ++attempt) {
                try {
                    mode = run("PRAGMA journal_mode=WAL");
                    break;
                } catch (const StoreError& e) {
                    if (e.kind() != StoreError::Kind::kUnavailable || attempt >= kWalAttempts)
                        throw;
                    std::this_thread::sleep_for(std::chrono::milliseconds(kWalRetryDelayMs));
                }
            }
            const std::string got =
                mode.rows.empty() || !mode.rows[0][0] ? std::string() : *mode.rows[0][0];
            if (got != "wal" && path != ":memory:") {
                throw StoreError("cannot switch SQLite database " + path +
                                 " to WAL mode (journal_mode is '" + got + "')");
            }
            run("PRAGMA synchronous=FULL");
            run("PRAGMA foreign_keys=ON");
            const Result fk = run("PRAGMA foreign_keys");
            if (fk.rows.empty() || fk.rows[0][0] != std::optional<std::string>("1")) {
                throw StoreError("SQLite without foreign key support");
            }
            check_integrity();
        } catch (const StoreError& e) {
            close();
            throw StoreError(explain_open_failure(e), e.kind());
        } catch (...) {
            close();
            throw;
        }
    }
    ~SqliteDb() override { close(); }
    SqliteDb(const SqliteDb&) = delete;
    SqliteDb& operator=(const SqliteDb&) = delete;

    std::string backend() const override { return "sqlite"; }
    using Db::run;

    Result run(std::string_view sql, const std::vector<Param>& params) override {
        sqlite3_stmt* stmt = prepare(sql);
        // Reset and unbind on every path, so no statement stays active (an active statement
        // would keep a read transaction open and hold the WAL).
        struct Reset {
            sqlite3_stmt* s;
            ~Reset() {
                sqlite3_reset(s);
                sqlite3_clear_bindings(s);
            }
        } reset{stmt};

        for (std::size_t i = 0; i < params.size(); ++i) {
            const int index = static_cast<int>(i + 1);
            const Param& p = params[i];
            int rc = SQLITE_OK;
            switch (p.type) {
                case Param::Type::kNull:
                    rc = sqlite3_bind_null(stmt, index);
                    break;
                case Param::Type::kInt:
                    rc = sqlite3_bind_int64(stmt, index, p.integer);
                    break;
                case Param::Type::kText:
                    rc = sqlite3_bind_text64(stmt, index, p.bytes.data(), p.bytes.size(),
                                             SQLITE_TRANSIENT, SQLITE_UTF8);
                    break;
                case Param::Type::kBlob:
                    rc = sqlite3_bind_blob64(stmt, index, p.bytes.data(), p.bytes.size(),
                                             SQLITE_TRANSIENT);
                    break;
            }
            if (rc != SQLITE_OK) fail("bind", sql, rc);
        }

        Result result;
        const sqlite3_int64 before = sqlite3_total_changes64(db_);
        for (;;) {
            const int rc = sqlite3_step(stmt);
            if (rc == SQLITE_DONE) break;
            if (rc != SQLITE_ROW) fail("step", sql, rc);
            const int columns = sqlite3_column_count(stmt);
            Row row;
            row.reserve(static_cast<std::size_t>(columns));
            for (int c = 0; c < columns; ++c) {
                switch (sqlite3_column_type(stmt, c)) {
                    case SQLITE_NULL:
                        row.emplace_back(std::nullopt);
                        break;
                    case SQLITE_BLOB: {
                        const void* data = sqlite3_column_blob(stmt, c);
                        const int n = sqlite3_column_bytes(stmt, c);
                        row.emplace_back(data ? std::string(static_cast<const char*>(data),
                                                            static_cast<std::size_t>(n))
                                              : std::string());
                        break;
                    }
                    default: {  // INTEGER, FLOAT, TEXT: as text
                        const unsigned char* text = sqlite3_column_text(stmt, c);
                        const int n = sqlite3_column_bytes(stmt, c);
                        row.emplace_back(text ? std::string(reinterpret_cast<const char*>(text),
                                                            static_cast<std::size_t>(n))
                                              : std::string());
                        break;
                    }
                }
            }
            result.rows.push_back(std::move(row));
        }
        result.changed = static_cast<std::int64_t>(sqlite3_total_changes64(db_) - before);
        return result;
    }

    void begin_write() override { run("BEGIN IMMEDIATE"); }
    // A deferred transaction: in WAL mode its first read fixes the snapshot for all others.
    void begin_read() override { run("BEGIN DEFERRED"); }
    // BEGIN IMMEDIATE takes the database's write lock: a second process migrating at the same
    // time waits (busy timeout) and then finds the schema up to date.
    void begin_migration() override { run("BEGIN IMMEDIATE"); }
    void commit() override {
        try {
            run("COMMIT");
        } catch (...) {
            rollback();
            throw;
        }
    }
    void rollback() noexcept override {
        if (db_ && sqlite3_get_autocommit(db_) == 0) {
            sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
        }
    }

    const std::vector<Migration>& migrations() const override { return kSqliteMigrations; }

  private:
    // A damaged file is refused at open, not when a registration first touches the damaged
    // page: PRAGMA quick_check reads every page once (b-tree structure, record formats; not
    // the index contents, which integrity_check would also compare). Reports at most
    // kMaxIntegrityProblems problems.
    static constexpr int kMaxIntegrityProblems = 3;
    void check_integrity() {
        if (path_ == ":memory:") return;
        const Result r = run("PRAGMA quick_check(" + std::to_string(kMaxIntegrityProblems) + ")");
        std::string problems;
        for (const Row& row : r.rows) {
            const std::string line = row.empty() || !row[0] ? std::string() : *row[0];
            if (line == "ok") continue;
            problems += (problems.empty() ? "" : "; ") + line;
        }
        if (!problems.empty()) {
            last_rc_ = SQLITE_CORRUPT;
            throw StoreError("integrity check failed: " + problems);
        }
    }

    // The message of a failed open, for the operator: what is wrong with the file and what to
    // do about it, then SQLite's own words.
    std::string explain_open_failure(const StoreError& e) const {
        switch (last_rc_ & 0xff) {
            case SQLITE_CORRUPT:
            case SQLITE_NOTADB:
                return "SQLite database " + path_ +
                       " is corrupted or not a SQLite database; restore it from a backup "
                       "(cpnsctl check verifies a restored copy): " +
                       e.what();
            case SQLITE_READONLY:
            case SQLITE_CANTOPEN:
            case SQLITE_PERM:
            case SQLITE_AUTH:
                return "SQLite database " + path_ +
                       " cannot be written: the file, its directory (for the -wal and -shm "
                       "files) or the file system is read-only for this user: " +
                       e.what();
            default:
                return e.what();
        }
    }

    // A new database file is created readable by its owner only; SQLite creates the -wal and
    // -shm files with the same permissions.
    // Creates the file (mode 0600) if it does not exist; else checks that it is writable
    // WITHOUT opening it: closing any descriptor of the database file drops every POSIX lock
    // this process holds on it, including the shared lock of another connection of this
    // process (the management API opens one per worker thread next to the server's). Without
    // that lock, another process closing its connection believes it is the last one,
    // checkpoints and deletes the WAL under this process's connections, and their later
    // commits are lost to every other reader.
    void create_private_file() const {
        if (path_.empty() || path_ == ":memory:") return;
        int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        int err = errno;
        if (fd < 0 && err == EEXIST) {
            if (::faccessat(AT_FDCWD, path_.c_str(), R_OK | W_OK, AT_EACCESS) == 0) return;
            err = errno;
        }
        if (fd < 0) {
            std::string why = std::strerror(err);
            if (err == EROFS || err == EACCES || err == EPERM)
                why +=
                    " (the server writes its store: the file and its directory must be "
                    "writable by this user, on a file system mounted read-write)";
            throw StoreError("cannot open SQLite database " + path_ + " for writing: " + why,
                             StoreError::Kind::kUnavailable);
        }
        ::close(fd);
    }

    sqlite3_stmt* prepare(std::string_view sql) {
        const auto it = statements_.find(std::string(sql));
        if (it != statements_.end()) return it->second;
        const std::string text = to_sqlite_placeholders(sql);
        sqlite3_stmt* stmt = nullptr;
        const int rc = sqlite3_prepare_v3(db_, text.c_str(), static_cast<int>(text.size() + 1),
                                          SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
        if (rc != SQLITE_OK) fail("prepare", sql, rc);
        statements_.emplace(std::string(sql), stmt);
        return stmt;
    }

    [[noreturn]] void fail(const char* what, std::string_view sql, int rc) {
        last_rc_ = rc;
        std::string first_words(sql.substr(0, sql.find_first_of("(\n")));
        throw StoreError("SQLite " + std::string(what) + " failed (" + sqlite3_errstr(rc) +
                             "): " + sqlite3_errmsg(db_) + " [in: " + first_words + "]",
                         classify(rc));
    }

    // SQLITE_FULL (the file system is full, or the database at its size limit) is "full";
    // I/O errors, a lock held too long, a file that cannot be opened or written now are
    // "unavailable"; a corrupted file and everything else are "other".
    static StoreError::Kind classify(int rc) {
        switch (rc & 0xff) {
            case SQLITE_FULL:
                return StoreError::Kind::kFull;
            case SQLITE_IOERR:
            case SQLITE_BUSY:
            case SQLITE_LOCKED:
            case SQLITE_CANTOPEN:
            case SQLITE_READONLY:
            case SQLITE_PROTOCOL:
                return StoreError::Kind::kUnavailable;
            default:
                return StoreError::Kind::kOther;
        }
    }

    void close() noexcept {
        for (auto& [sql, stmt] : statements_) sqlite3_finalize(stmt);
        statements_.clear();
        if (db_) {
            rollback();
            sqlite3_close(db_);
            db_ = nullptr;
        }
    }

    std::string path_;
    int last_rc_ = SQLITE_OK;  // of the last failure (explain_open_failure)
    sqlite3* db_ = nullptr;
    std::map<std::string, sqlite3_stmt*, std::less<>> statements_;
};

}  // namespace

std::unique_ptr<Db> open_sqlite(const std::string& path) {
    if (path.empty()) throw StoreError("empty SQLite database path");
    return std::make_unique<SqliteDb>(path);
}

}  // namespace cpns::store::detail
