// Internal: the small SQL surface the store's logic (sql_store.cpp) runs on, implemented once
// for SQLite (sqlite_db.cpp) and once for PostgreSQL (pg_db.cpp). Not part of the public API.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/crypto.hpp"

namespace cpns::store::detail {

// A statement parameter. Values always travel separately from the SQL text.
struct Param {
    enum class Type { kNull, kInt, kText, kBlob };
    Type type = Type::kNull;
    std::int64_t integer = 0;
    std::string bytes;  // kText: the text; kBlob: the raw bytes

    static Param null() { return {}; }
    static Param of(std::int64_t v) { return {Type::kInt, v, {}}; }
    static Param of(std::string_view text) { return {Type::kText, 0, std::string(text)}; }
    static Param of(const std::string& text) { return of(std::string_view(text)); }
    static Param of(const char* text) { return of(std::string_view(text)); }
    static Param blob(ByteView b) {
        return {Type::kBlob, 0, std::string(reinterpret_cast<const char*>(b.data()), b.size())};
    }
    static Param blob(std::string b) { return {Type::kBlob, 0, std::move(b)}; }
};

// A result cell: NULL, or the value's bytes (integers as decimal text, booleans as "1"/"0"
// or "t"/"f", BLOB/bytea as raw bytes).
using Cell = std::optional<std::string>;
using Row = std::vector<Cell>;

struct Result {
    std::vector<Row> rows;
    std::int64_t changed = 0;  // rows inserted/updated/deleted by an INSERT/UPDATE/DELETE
};

struct Migration {
    int version = 0;
    std::vector<std::string> statements;  // one statement each, no values
};

class Db {
  public:
    virtual ~Db() = default;
    virtual std::string backend() const = 0;
    // One statement with placeholders $1..$n. Throws StoreError.
    virtual Result run(std::string_view sql, const std::vector<Param>& params) = 0;
    Result run(std::string_view sql) { return run(sql, {}); }

    // Transactions. begin_write takes the write lock up front where the backend has one
    // (SQLite: BEGIN IMMEDIATE); begin_read gives one consistent snapshot for several reads;
    // begin_migration also serialises schema migration between processes.
    virtual void begin_write() = 0;
    virtual void begin_read() = 0;
    virtual void begin_migration() = 0;
    virtual void commit() = 0;
    virtual void rollback() noexcept = 0;

    virtual const std::vector<Migration>& migrations() const = 0;
};

// Rolls back unless committed.
class Transaction {
  public:
    enum class Kind { kWrite, kRead, kMigration };
    Transaction(Db& db, Kind kind) : db_(db) {
        switch (kind) {
            case Kind::kWrite:
                db_.begin_write();
                break;
            case Kind::kRead:
                db_.begin_read();
                break;
            case Kind::kMigration:
                db_.begin_migration();
                break;
        }
    }
    Transaction(const Transaction&) = delete;
    Transaction& operator=(const Transaction&) = delete;
    ~Transaction() {
        if (!done_) db_.rollback();
    }
    void commit() {
        done_ = true;  // a failed COMMIT ends the transaction too (rolled back by the backend)
        db_.commit();
    }

  private:
    Db& db_;
    bool done_ = false;
};

std::unique_ptr<Db> open_sqlite(const std::string& path);
std::unique_ptr<Db> open_postgresql(const std::string& conninfo);

}  // namespace cpns::store::detail
