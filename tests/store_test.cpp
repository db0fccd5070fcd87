// Tests of the store (src/store/): one typed suite run against both backends (SQLite and
// PostgreSQL), plus the at-rest sealing, the master key loader and the URL dispatch.
//
// PostgreSQL: the suite uses the server named by CPNS_TEST_PG_URL (scripts/test.sh starts a
// throw-away one with scripts/pg-test-server.sh). Each test works in a schema of its own, so
// tests may run in parallel on one server. Without CPNS_TEST_PG_URL the PostgreSQL cases fail,
// unless CPNS_TEST_NO_PG=1 asks to skip them.
#include <fcntl.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <openssl/evp.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <barrier>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "store/db.hpp"
#include "store/sealed.hpp"
#include "store/store.hpp"

namespace cpns::store {
namespace {

namespace fs = std::filesystem;

SecretKey random_key() {
    OsRandom random;
    return random.key();
}

std::string unique_suffix() {
    static std::atomic<int> counter{0};
    OsRandom random;
    return std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" +
           to_hex(random.bytes(4));
}

std::string make_temp_dir() {
    const fs::path base = fs::temp_directory_path() / ("cpns-store-test-" + unique_suffix());
    fs::create_directories(base);
    return base.string();
}

std::string read_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string upper(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(),
                   [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
    return s;
}

std::string bytes_string(ByteView b) {
    return {reinterpret_cast<const char*>(b.data()), b.size()};
}

bool env_is(const char* name, const char* value) {
    const char* v = std::getenv(name);
    return v != nullptr && std::string(v) == value;
}

bool contains(const std::vector<std::string>& list, const std::string& item) {
    return std::find(list.begin(), list.end(), item) != list.end();
}

// --- Backends under test -----------------------------------------------------------------------

using Rows = std::vector<std::vector<std::string>>;

class SqliteBackend {
  public:
    static std::string name() { return "sqlite"; }
    static bool may_skip() { return false; }
    // "" when ready, else why not.
    std::string setup() {
        dir_ = make_temp_dir();
        file_ = dir_ + "/store.db";
        return "";
    }
    void teardown() {
        std::error_code ec;
        fs::remove_all(dir_, ec);
    }
    std::string url() const { return "sqlite:" + file_; }

    // A second, raw connection (no foreign key enforcement unless asked).
    Rows query(const std::string& sql) const {
        sqlite3* db = nullptr;
        if (sqlite3_open_v2(file_.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK) {
            const std::string why = db ? sqlite3_errmsg(db) : "out of memory";
            sqlite3_close(db);
            throw std::runtime_error("raw sqlite open: " + why);
        }
        sqlite3_busy_timeout(db, 5000);
        Rows rows;
        char* err = nullptr;
        const int rc = sqlite3_exec(
            db, sql.c_str(),
            [](void* out, int n, char** values, char**) {
                std::vector<std::string> row;
                for (int i = 0; i < n; ++i) row.emplace_back(values[i] ? values[i] : "<null>");
                static_cast<Rows*>(out)->push_back(std::move(row));
                return 0;
            },
            &rows, &err);
        const std::string why = err ? err : "";
        sqlite3_free(err);
        sqlite3_close(db);
        if (rc != SQLITE_OK) throw std::runtime_error("raw sqlite: " + why + " in: " + sql);
        return rows;
    }
    void exec(const std::string& sql) const { query(sql); }

    // What a copy of the database would hold: the file and its write-ahead log.
    std::string copy_of_database() const {
        std::string all = read_file(file_);
        if (fs::exists(file_ + "-wal")) all += read_file(file_ + "-wal");
        return all;
    }

    // SQL dialect for the injections.
    static std::string blob_literal(const std::string& hex) { return "X'" + hex + "'"; }
    static std::string hex_of(const std::string& column) { return "lower(hex(" + column + "))"; }
    static std::string unchecked() { return "PRAGMA foreign_keys=OFF; "; }
    static std::string drop_member_key() {
        return "CREATE TABLE pn_members_copy AS SELECT * FROM pn_members;"
               " DROP TABLE pn_members;"
               " ALTER TABLE pn_members_copy RENAME TO pn_members;";
    }
    static std::string failing_member_trigger(const std::string& pne_id) {
        return "CREATE TRIGGER fail_member BEFORE INSERT ON pn_members WHEN NEW.pne_id = '" +
               pne_id + "' BEGIN SELECT RAISE(ABORT, 'injected failure'); END;";
    }

  private:
    std::string dir_;
    std::string file_;
};

std::string pg_dump_binary() {
    std::vector<fs::path> found;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator("/usr/lib/postgresql", ec)) {
        const fs::path candidate = entry.path() / "bin" / "pg_dump";
        if (fs::exists(candidate)) found.push_back(candidate);
    }
    if (found.empty()) return "pg_dump";
    std::sort(found.begin(), found.end(), [](const fs::path& a, const fs::path& b) {
        // Version directories ("13", "15"): numerically.
        return std::stoi(a.parent_path().parent_path().filename().string()) <
               std::stoi(b.parent_path().parent_path().filename().string());
    });
    return found.back().string();
}

class PgBackend {
  public:
    static std::string name() { return "postgresql"; }
    // Only when no server is named and the developer asked explicitly to skip.
    static bool may_skip() {
        const char* url = std::getenv("CPNS_TEST_PG_URL");
        return (url == nullptr || *url == '\0') && env_is("CPNS_TEST_NO_PG", "1");
    }
    std::string setup() {
        const char* url = std::getenv("CPNS_TEST_PG_URL");
        if (url == nullptr || *url == '\0') {
            return "CPNS_TEST_PG_URL is not set. The PostgreSQL store tests need a server: run "
                   "the test suite with the README's test command, ./scripts/test.sh, which "
                   "starts a throw-away PostgreSQL (scripts/pg-test-server.sh) and sets "
                   "CPNS_TEST_PG_URL. To skip these tests deliberately, set CPNS_TEST_NO_PG=1.";
        }
        base_url_ = url;
        schema_ = "cpns_t_" + unique_suffix();
        try {
            run_on(base_url_, "CREATE SCHEMA " + schema_);
        } catch (const std::exception& e) {
            return std::string("cannot prepare the PostgreSQL test schema at CPNS_TEST_PG_URL: ") +
                   e.what();
        }
        url_ = with_schema(base_url_, schema_);
        return "";
    }
    void teardown() {
        try {
            run_on(base_url_, "DROP SCHEMA IF EXISTS " + schema_ + " CASCADE");
        } catch (const std::exception&) {
            // The server is throw-away; a schema left behind does no harm.
        }
    }
    std::string url() const { return url_; }
    // The URL with one more libpq connection parameter.
    std::string url_with(const std::string& keyword, const std::string& value) const {
        if (url_.rfind("postgres", 0) == 0 && url_.find("://") != std::string::npos) {
            return url_ + "&" + keyword + "=" + value;
        }
        return url_ + " " + keyword + "='" + value + "'";
    }

    Rows query(const std::string& sql) const { return run_on(url_, sql); }
    void exec(const std::string& sql) const { run_on(url_, sql); }

    // What a copy of the database would hold: pg_dump of the test's schema.
    std::string copy_of_database() const {
        const std::string cmd = "'" + pg_dump_binary() + "' --no-owner --schema=" + schema_ +
                                " --dbname='" + base_url_ + "' 2>&1";
        FILE* pipe = ::popen(cmd.c_str(), "r");
        if (!pipe) throw std::runtime_error("cannot run pg_dump");
        std::string out;
        char buf[65536];
        std::size_t n = 0;
        while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
        const int status = ::pclose(pipe);
        if (status != 0) throw std::runtime_error("pg_dump failed: " + out);
        return out;
    }

    static std::string blob_literal(const std::string& hex) {
        return "decode('" + hex + "', 'hex')";
    }
    static std::string hex_of(const std::string& column) { return "encode(" + column + ", 'hex')"; }
    // Foreign keys are enforced by triggers, which replica mode does not fire (superuser).
    static std::string unchecked() { return "SET session_replication_role = replica; "; }
    static std::string drop_member_key() {
        return "ALTER TABLE pn_members DROP CONSTRAINT pn_members_pkey;";
    }
    static std::string failing_member_trigger(const std::string& pne_id) {
        return "CREATE FUNCTION fail_member() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF "
               "NEW.pne_id = '" +
               pne_id +
               "' THEN RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; END $$;"
               " CREATE TRIGGER fail_member BEFORE INSERT ON pn_members FOR EACH ROW EXECUTE "
               "FUNCTION fail_member();";
    }

  private:
    static std::string with_schema(const std::string& url, const std::string& schema) {
        if (url.rfind("postgresql://", 0) == 0 || url.rfind("postgres://", 0) == 0) {
            return url + (url.find('?') == std::string::npos ? "?" : "&") +
                   "options=-csearch_path%3D" + schema;
        }
        return url + " options='-csearch_path=" + schema + "'";
    }

    // A raw connection; several statements in one string are allowed (PQexec).
    static Rows run_on(const std::string& url, const std::string& sql) {
        PGconn* conn = PQconnectdb(url.c_str());
        if (PQstatus(conn) != CONNECTION_OK) {
            const std::string why = PQerrorMessage(conn);
            PQfinish(conn);
            throw std::runtime_error("raw PostgreSQL connect: " + why);
        }
        PQsetNoticeProcessor(
            conn, [](void*, const char*) {}, nullptr);
        PGresult* res = PQexec(conn, sql.c_str());
        const ExecStatusType status = PQresultStatus(res);
        Rows rows;
        if (status == PGRES_TUPLES_OK) {
            for (int r = 0; r < PQntuples(res); ++r) {
                std::vector<std::string> row;
                for (int c = 0; c < PQnfields(res); ++c) {
                    row.emplace_back(PQgetisnull(res, r, c) ? "<null>" : PQgetvalue(res, r, c));
                }
                rows.push_back(std::move(row));
            }
        }
        const std::string why = PQresultErrorMessage(res);
        PQclear(res);
        PQfinish(conn);
        if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
            throw std::runtime_error("raw PostgreSQL: " + why + " in: " + sql);
        }
        return rows;
    }

    std::string base_url_;
    std::string schema_;
    std::string url_;
};

// --- Test data ---------------------------------------------------------------------------------

pb::DeviceCapabilities capabilities(const std::string& type) {
    pb::DeviceCapabilities c;
    c.set_device_type(type);
    c.set_manufacturer("Acme");
    c.set_model(type + "-9000");
    c.set_enough_ui(type != "headset");
    c.add_pan_technologies("bluetooth");
    c.add_pan_technologies("wifi");
    c.add_services("audio-sink");
    return c;
}

StoredEntity entity(const std::string& id, EntityKind kind) {
    StoredEntity e;
    e.id = id;
    e.kind = kind;
    e.eukey = random_key();
    e.capabilities = capabilities(kind == EntityKind::kGw ? "phone" : "headset");
    return e;
}

pb::PnMember member(const std::string& pne_id) {
    pb::PnMember m;
    m.set_pne_id(pne_id);
    *m.mutable_capabilities() = capabilities("media-player");
    pb::ContentInfo* content = m.add_contents();
    content->set_content_id("c-" + pne_id);
    content->set_media_type("audio/flac");
    content->set_title("Song of " + pne_id);
    content->set_size_bytes(123456789);
    m.set_joined_at_ms(1700000000123);
    m.set_local_eukey_assigned(true);
    return m;
}

pb::PnInventory inventory(const std::string& gw_id, const std::string& pn_id,
                          const std::vector<std::string>& pnes) {
    pb::PnInventory inv;
    inv.set_gw_id(gw_id);
    inv.set_pn_id(pn_id);
    *inv.mutable_gw_capabilities() = capabilities("phone");
    for (const std::string& p : pnes) *inv.add_members() = member(p);
    inv.set_registered_at_ms(1700000000999);
    return inv;
}

void provision(Store& s, const std::vector<std::string>& gws,
               const std::vector<std::string>& pnes) {
    for (const std::string& g : gws) s.put_entity(entity(g, EntityKind::kGw));
    for (const std::string& p : pnes) s.put_entity(entity(p, EntityKind::kPne));
}

bool same(const google::protobuf::Message& a, const google::protobuf::Message& b) {
    return google::protobuf::util::MessageDifferencer::Equals(a, b);
}

std::string hex_of_message(const google::protobuf::Message& m) {
    return to_hex(as_bytes(m.SerializeAsString()));
}

std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const StoreError& e) {
        return e.what();
    }
    return "<no StoreError>";
}

// --- The typed suite ---------------------------------------------------------------------------

template <typename Backend>
class StoreTest : public ::testing::Test {
  protected:
    void SetUp() override {
        const std::string why = backend_.setup();
        if (!why.empty()) {
            if (Backend::may_skip()) GTEST_SKIP() << why;
            FAIL() << why;
        }
        ready_ = true;
    }
    void TearDown() override {
        if (ready_) backend_.teardown();
    }
    std::unique_ptr<Store> open(const SecretKey& key) { return open_store(backend_.url(), key); }
    std::unique_ptr<Store> open() { return open(master_); }
    std::string count(const std::string& table) {
        return backend_.query("SELECT COUNT(*) FROM " + table).at(0).at(0);
    }

    Backend backend_;
    SecretKey master_ = random_key();
    bool ready_ = false;
};

struct BackendNames {
    template <typename T>
    static std::string GetName(int) {
        return T::name();
    }
};

using Backends = ::testing::Types<SqliteBackend, PgBackend>;
TYPED_TEST_SUITE(StoreTest, Backends, BackendNames);

TYPED_TEST(StoreTest, OpensTheRightBackend) {
    const auto s = this->open();
    EXPECT_EQ(s->backend(), TypeParam::name());
}

TYPED_TEST(StoreTest, EntityRoundTrip) {
    auto s = this->open();
    StoredEntity e = entity("pne-1", EntityKind::kPne);
    e.status = EntityStatus::kDisabled;
    e.created_at_ms = 1111;
    e.updated_at_ms = 2222;
    s->put_entity(e);

    std::optional<StoredEntity> got = s->get_entity("pne-1");
    ASSERT_TRUE(got);
    EXPECT_EQ(got->id, "pne-1");
    EXPECT_EQ(got->kind, EntityKind::kPne);
    EXPECT_TRUE(got->eukey == e.eukey);
    EXPECT_EQ(got->status, EntityStatus::kDisabled);
    EXPECT_TRUE(same(got->capabilities, e.capabilities));
    EXPECT_EQ(got->created_at_ms, 1111);
    EXPECT_EQ(got->updated_at_ms, 2222);
    EXPECT_FALSE(s->get_entity("pne-unknown"));

    // Replace: new key, kind and status; created_at_ms 0 keeps the stored one.
    StoredEntity r = entity("pne-1", EntityKind::kGw);
    r.status = EntityStatus::kRevoked;
    s->put_entity(r);
    got = s->get_entity("pne-1");
    ASSERT_TRUE(got);
    EXPECT_TRUE(got->eukey == r.eukey);
    EXPECT_FALSE(got->eukey == e.eukey);
    EXPECT_EQ(got->kind, EntityKind::kGw);
    EXPECT_EQ(got->status, EntityStatus::kRevoked);
    EXPECT_EQ(got->created_at_ms, 1111);
    EXPECT_GT(got->updated_at_ms, 1600000000000);

    // Timestamps left at 0 are filled with the current time.
    s->put_entity(entity("gw-1", EntityKind::kGw));
    got = s->get_entity("gw-1");
    ASSERT_TRUE(got);
    EXPECT_GT(got->created_at_ms, 1600000000000);
    EXPECT_EQ(got->created_at_ms, got->updated_at_ms);

    // Refused: no id, an all-zero key.
    EXPECT_THROW(s->put_entity(entity("", EntityKind::kPne)), StoreError);
    StoredEntity zero = entity("pne-zero", EntityKind::kPne);
    zero.eukey = SecretKey();
    EXPECT_THROW(s->put_entity(zero), StoreError);

    // Durable across connections.
    s.reset();
    const auto again = this->open();
    got = again->get_entity("pne-1");
    ASSERT_TRUE(got);
    EXPECT_TRUE(got->eukey == r.eukey);
}

TYPED_TEST(StoreTest, StatusChanges) {
    const auto s = this->open();
    StoredEntity e = entity("pne-1", EntityKind::kPne);
    e.updated_at_ms = 5;
    s->put_entity(e);
    EXPECT_EQ(s->get_entity("pne-1")->status, EntityStatus::kActive);

    EXPECT_TRUE(s->set_status("pne-1", EntityStatus::kDisabled));
    std::optional<StoredEntity> got = s->get_entity("pne-1");
    EXPECT_EQ(got->status, EntityStatus::kDisabled);
    EXPECT_GT(got->updated_at_ms, 5);
    EXPECT_TRUE(got->eukey == e.eukey);

    EXPECT_TRUE(s->set_status("pne-1", EntityStatus::kRevoked));
    EXPECT_EQ(s->get_entity("pne-1")->status, EntityStatus::kRevoked);
    EXPECT_TRUE(s->set_status("pne-1", EntityStatus::kActive));
    EXPECT_EQ(s->get_entity("pne-1")->status, EntityStatus::kActive);

    EXPECT_FALSE(s->set_status("pne-unknown", EntityStatus::kRevoked));
    EXPECT_FALSE(s->get_entity("pne-unknown"));
}

TYPED_TEST(StoreTest, ListFilters) {
    const auto s = this->open();
    EXPECT_TRUE(s->list_entities().empty());
    provision(*s, {"gw-b", "gw-a"}, {"pne-c", "pne-a", "pne-b"});

    auto ids = [](const std::vector<StoredEntity>& list) {
        std::vector<std::string> out;
        for (const StoredEntity& e : list) out.push_back(e.id);
        return out;
    };
    EXPECT_EQ(ids(s->list_entities()),
              (std::vector<std::string>{"gw-a", "gw-b", "pne-a", "pne-b", "pne-c"}));
    EXPECT_EQ(ids(s->list_entities(EntityKind::kPne)),
              (std::vector<std::string>{"pne-a", "pne-b", "pne-c"}));
    EXPECT_EQ(ids(s->list_entities(EntityKind::kGw)), (std::vector<std::string>{"gw-a", "gw-b"}));
    // The server's gauges count without reading the rows.
    EXPECT_EQ(s->count_entities(), 5u);
    EXPECT_EQ(s->count_entities(EntityKind::kPne), 3u);
    EXPECT_EQ(s->count_entities(EntityKind::kGw), 2u);
    for (const StoredEntity& e : s->list_entities()) {
        EXPECT_TRUE(e.eukey == s->get_entity(e.id)->eukey) << e.id;
        EXPECT_FALSE(e.eukey.is_zero());
    }
}

// Bounded state at the server: a PNE in kMaxPnsPerPne PNs is registered in no more; the
// refused PN leaves nothing behind.
// PN lifecycle (core/lifecycle.hpp): a change applies only at the PN's current revision, is
// durable at once (a second connection sees it), and a refused one writes nothing.
TYPED_TEST(StoreTest, LifecycleChangesApplyAtTheirRevisionOnly) {
    const auto s = this->open();
    provision(*s, {"gw-1"}, {"pne-1", "pne-2", "pne-3"});
    ASSERT_EQ(s->register_pn(inventory("gw-1", "pn-1", {"pne-1", "pne-2", "pne-3"})),
              PutResult::kOk);
    ChangeResult r = s->change_pn("gw-1", "pn-1", pb::CHANGE_LEAVE, "pne-1", 0);
    ASSERT_EQ(r.reason, pb::REASON_NONE);
    EXPECT_EQ(r.inventory.revision(), 1u);
    EXPECT_FALSE(r.dissolved);
    const auto other = this->open();  // another connection: committed
    auto stored = other->get_pn("gw-1", "pn-1");
    ASSERT_TRUE(stored);
    EXPECT_EQ(stored->revision(), 1u);
    ASSERT_EQ(stored->members_size(), 2);
    EXPECT_EQ(stored->members(0).pne_id(), "pne-2");
    // Replayed (revision 0 again), not a member, unknown PN: refused, nothing written.
    r = s->change_pn("gw-1", "pn-1", pb::CHANGE_REMOVE, "pne-2", 0);
    EXPECT_EQ(r.reason, pb::STALE_REVISION);
    EXPECT_EQ(r.inventory.revision(), 1u);  // the current PN comes back
    EXPECT_EQ(s->change_pn("gw-1", "pn-1", pb::CHANGE_REMOVE, "pne-1", 1).reason, pb::NOT_A_MEMBER);
    EXPECT_EQ(s->change_pn("gw-1", "pn-9", pb::CHANGE_DISSOLVE, "", 0).reason, pb::UNKNOWN_PN);
    EXPECT_EQ(s->change_pn("gw-2", "pn-1", pb::CHANGE_DISSOLVE, "", 1).reason, pb::UNKNOWN_PN);
    EXPECT_EQ(other->get_pn("gw-1", "pn-1")->members_size(), 2);
    // Removing the last members dissolves the PN: gone with its member rows.
    ASSERT_EQ(s->change_pn("gw-1", "pn-1", pb::CHANGE_REMOVE, "pne-2", 1).reason, pb::REASON_NONE);
    r = s->change_pn("gw-1", "pn-1", pb::CHANGE_LEAVE, "pne-3", 2);
    ASSERT_EQ(r.reason, pb::REASON_NONE);
    EXPECT_TRUE(r.dissolved);
    EXPECT_EQ(r.inventory.revision(), 3u);
    EXPECT_FALSE(other->pn_exists("gw-1", "pn-1"));
    EXPECT_EQ(this->count("pn_members"), "0");
    EXPECT_TRUE(s->check().empty());
    // Dissolving by the PN GW.
    ASSERT_EQ(s->register_pn(inventory("gw-1", "pn-2", {"pne-1", "pne-2"})), PutResult::kOk);
    r = s->change_pn("gw-1", "pn-2", pb::CHANGE_DISSOLVE, "", 0);
    ASSERT_EQ(r.reason, pb::REASON_NONE);
    EXPECT_TRUE(r.dissolved);
    EXPECT_EQ(r.before, (std::vector<std::string>{"pne-1", "pne-2"}));
    EXPECT_TRUE(s->list_pns().empty());
}

// PN update (CHANGE_ADD): the new members are added at the PN's revision only, after the earlier
// ones, durable at once; a PNE already in the PN, a stale revision or an unknown PN write
// nothing; a member that is not a known PNE is refused by the store.
TYPED_TEST(StoreTest, AddingMembersAppliesAtTheirRevisionOnly) {
    const auto s = this->open();
    provision(*s, {"gw-1"}, {"pne-1", "pne-2", "pne-3", "pne-4"});
    ASSERT_EQ(s->register_pn(inventory("gw-1", "pn-1", {"pne-1", "pne-2"})), PutResult::kOk);
    auto member = [](const std::string& id) {
        pb::PnMember m;
        m.set_pne_id(id);
        return m;
    };
    ChangeResult r = s->change_pn("gw-1", "pn-1", pb::CHANGE_ADD, "", 0, {member("pne-3")});
    ASSERT_EQ(r.reason, pb::REASON_NONE);
    EXPECT_EQ(r.inventory.revision(), 1u);
    EXPECT_EQ(r.before, (std::vector<std::string>{"pne-1", "pne-2"}));
    const auto other = this->open();
    auto stored = other->get_pn("gw-1", "pn-1");
    ASSERT_TRUE(stored);
    EXPECT_EQ(stored->revision(), 1u);
    ASSERT_EQ(stored->members_size(), 3);
    EXPECT_EQ(stored->members(2).pne_id(), "pne-3");
    // Stale, already a member (even with a new one beside it), unknown PN: nothing written.
    EXPECT_EQ(s->change_pn("gw-1", "pn-1", pb::CHANGE_ADD, "", 0, {member("pne-4")}).reason,
              pb::STALE_REVISION);
    EXPECT_EQ(
        s->change_pn("gw-1", "pn-1", pb::CHANGE_ADD, "", 1, {member("pne-4"), member("pne-1")})
            .reason,
        pb::ALREADY_A_MEMBER);
    EXPECT_EQ(s->change_pn("gw-1", "pn-9", pb::CHANGE_ADD, "", 0, {member("pne-4")}).reason,
              pb::UNKNOWN_PN);
    EXPECT_EQ(other->get_pn("gw-1", "pn-1")->members_size(), 3);
    EXPECT_EQ(other->get_pn("gw-1", "pn-1")->revision(), 1u);
    EXPECT_THROW(s->change_pn("gw-1", "pn-1", pb::CHANGE_ADD, "", 1, {member("pne-x")}),
                 StoreError);
    EXPECT_EQ(other->get_pn("gw-1", "pn-1")->members_size(), 3);
    // After a removal the next member still goes last, and the PN reads back in order.
    ASSERT_EQ(s->change_pn("gw-1", "pn-1", pb::CHANGE_REMOVE, "pne-1", 1).reason, pb::REASON_NONE);
    ASSERT_EQ(s->change_pn("gw-1", "pn-1", pb::CHANGE_ADD, "", 2, {member("pne-4")}).reason,
              pb::REASON_NONE);
    stored = other->get_pn("gw-1", "pn-1");
    ASSERT_EQ(stored->members_size(), 3);
    EXPECT_EQ(stored->members(0).pne_id(), "pne-2");
    EXPECT_EQ(stored->members(2).pne_id(), "pne-4");
    EXPECT_EQ(stored->revision(), 3u);
    EXPECT_TRUE(s->check().empty());
}

// A LocalEUKey re-key (docs/protocol.md, "LocalEUKey re-key") is recorded at its revision only:
// the revision grows by one and every member stays as it was; a PNE that is not a member or has
// no LocalEUKey is refused, and nothing is written.
TYPED_TEST(StoreTest, ARekeyChangesTheRevisionOnly) {
    const auto s = this->open();
    provision(*s, {"gw-1"}, {"pne-1", "pne-2", "pne-3"});
    pb::PnInventory inv = inventory("gw-1", "pn-1", {"pne-1", "pne-2"});
    inv.mutable_members(1)->set_local_eukey_assigned(false);  // pne-2: a pre-assigned key
    ASSERT_EQ(s->register_pn(inv), PutResult::kOk);
    const ChangeResult r = s->change_pn("gw-1", "pn-1", pb::CHANGE_REKEY, "pne-1", 0);
    ASSERT_EQ(r.reason, pb::REASON_NONE);
    EXPECT_FALSE(r.dissolved);
    EXPECT_EQ(r.inventory.revision(), 1u);
    const auto other = this->open();
    auto stored = other->get_pn("gw-1", "pn-1");
    ASSERT_TRUE(stored);
    EXPECT_EQ(stored->revision(), 1u);
    pb::PnInventory expected = inv;
    expected.set_revision(1);
    EXPECT_TRUE(same(*stored, expected)) << stored->DebugString();
    EXPECT_EQ(s->change_pn("gw-1", "pn-1", pb::CHANGE_REKEY, "pne-1", 0).reason,
              pb::STALE_REVISION);
    EXPECT_EQ(s->change_pn("gw-1", "pn-1", pb::CHANGE_REKEY, "pne-3", 1).reason, pb::NOT_A_MEMBER);
    EXPECT_EQ(s->change_pn("gw-1", "pn-1", pb::CHANGE_REKEY, "pne-2", 1).reason,
              pb::NO_LOCAL_EUKEY);
    EXPECT_EQ(s->change_pn("gw-1", "pn-9", pb::CHANGE_REKEY, "pne-1", 0).reason, pb::UNKNOWN_PN);
    EXPECT_TRUE(same(*other->get_pn("gw-1", "pn-1"), expected));
    EXPECT_TRUE(s->check().empty());
}

// The change log the servers poll: every status change and every PN the operator deletes, in
// order, visible to another connection once committed; pns_of finds a PNE's PNs.
TYPED_TEST(StoreTest, ChangeLogRecordsStatusChangesAndDeletedPns) {
    const auto s = this->open();
    provision(*s, {"gw-1"}, {"pne-1", "pne-2"});
    ASSERT_EQ(s->register_pn(inventory("gw-1", "pn-1", {"pne-1", "pne-2"})), PutResult::kOk);
    ASSERT_EQ(s->register_pn(inventory("gw-1", "pn-2", {"pne-2"})), PutResult::kOk);
    const std::int64_t head = s->change_log_head();
    EXPECT_EQ(s->pns_of("pne-2").size(), 2u);
    EXPECT_EQ(s->pns_of("pne-1").size(), 1u);
    EXPECT_TRUE(s->pns_of("pne-9").empty());
    ASSERT_TRUE(s->set_status("pne-1", EntityStatus::kRevoked));
    const ChangeResult r = s->delete_pn("gw-1", "pn-2");
    ASSERT_EQ(r.reason, pb::REASON_NONE);
    EXPECT_TRUE(r.dissolved);
    EXPECT_EQ(s->delete_pn("gw-1", "pn-2").reason, pb::UNKNOWN_PN);
    const auto other = this->open();
    const auto events = other->change_log_after(head, 10);
    ASSERT_EQ(events.size(), 2u);
    EXPECT_EQ(events[0].kind, "status");
    EXPECT_EQ(events[0].entity_id, "pne-1");
    EXPECT_EQ(events[0].payload, "revoked");
    EXPECT_EQ(events[1].kind, "pn_deleted");
    EXPECT_EQ(events[1].gw_id, "gw-1");
    EXPECT_EQ(events[1].pn_id, "pn-2");
    pb::PnInventory before;
    ASSERT_TRUE(before.ParseFromString(events[1].payload));
    EXPECT_EQ(before.members_size(), 1);
    EXPECT_LT(events[0].seq, events[1].seq);
    EXPECT_EQ(other->change_log_head(), events[1].seq);
    EXPECT_TRUE(other->change_log_after(events[1].seq, 10).empty());
    EXPECT_FALSE(other->pn_exists("gw-1", "pn-2"));
    EXPECT_TRUE(s->check().empty());
}

TYPED_TEST(StoreTest, WithdrawPnRemovesOnlyThePnStoredWithExactlyThatContent) {
    const auto s = this->open();
    provision(*s, {"gw-1"}, {"pne-1", "pne-2"});
    const pb::PnInventory inv = inventory("gw-1", "pn-1", {"pne-1", "pne-2"});
    pb::PnInventory other = inv;
    other.set_registered_at_ms(inv.registered_at_ms() + 1);
    EXPECT_FALSE(s->withdraw_pn(inv));  // not there
    ASSERT_EQ(s->register_pn(inv), PutResult::kOk);
    ASSERT_EQ(s->register_pn(inventory("gw-1", "pn-2", {"pne-1"})), PutResult::kOk);
    EXPECT_FALSE(s->withdraw_pn(other));  // another registration under the same PN ID
    EXPECT_TRUE(s->pn_exists("gw-1", "pn-1"));
    EXPECT_TRUE(s->withdraw_pn(inv));
    EXPECT_FALSE(s->pn_exists("gw-1", "pn-1"));
    EXPECT_FALSE(s->withdraw_pn(inv));
    // Its members went with it; the other PN is untouched; the PN ID may be registered again.
    EXPECT_TRUE(s->check().empty());
    EXPECT_EQ(s->list_pns().size(), 1u);
    EXPECT_EQ(s->register_pn(inv), PutResult::kOk);
}

TYPED_TEST(StoreTest, RegisterPnRefusesAPneAtItsPnBound) {
    const auto s = this->open();
    provision(*s, {"gw-1"}, {"pne-1", "pne-2"});
    for (std::size_t i = 0; i < kMaxPnsPerPne; ++i)
        ASSERT_EQ(s->register_pn(inventory("gw-1", "pn-" + std::to_string(i), {"pne-1"})),
                  PutResult::kOk);
    EXPECT_EQ(s->register_pn(inventory("gw-1", "pn-over", {"pne-2", "pne-1"})), PutResult::kLimit);
    EXPECT_FALSE(s->pn_exists("gw-1", "pn-over"));
    EXPECT_EQ(s->register_pn(inventory("gw-1", "pn-other", {"pne-2"})), PutResult::kOk);
}

// Group commit: one transaction for several PNs, each with its own result; a refused one
// writes nothing and costs the others nothing, a failing statement fails the whole group.
TYPED_TEST(StoreTest, RegisterPnsCommitsAGroupWithAResultForEach) {
    const auto s = this->open();
    provision(*s, {"gw-1"}, {"pne-1", "pne-2", "pne-3", "pne-boom"});
    ASSERT_EQ(s->register_pn(inventory("gw-1", "pn-old", {"pne-3"})), PutResult::kOk);

    const pb::PnInventory a = inventory("gw-1", "pn-a", {"pne-1", "pne-2"});
    const pb::PnInventory dup_old = inventory("gw-1", "pn-old", {"pne-1"});
    const pb::PnInventory unknown = inventory("gw-1", "pn-u", {"pne-1", "pne-unknown"});
    const pb::PnInventory empty = inventory("gw-1", "pn-e", {});
    const pb::PnInventory b = inventory("gw-1", "pn-b", {"pne-2", "pne-3"});
    const pb::PnInventory a_again = inventory("gw-1", "pn-a", {"pne-3"});
    const std::vector<PutResult> r =
        s->register_pns({&a, &dup_old, &unknown, &empty, &b, &a_again});
    EXPECT_EQ(r,
              (std::vector<PutResult>{PutResult::kOk, PutResult::kDuplicate, PutResult::kError,
                                      PutResult::kError, PutResult::kOk, PutResult::kDuplicate}));
    // Exactly the accepted ones, as given; the refused ones left nothing behind.
    ASSERT_TRUE(s->get_pn("gw-1", "pn-a"));
    EXPECT_TRUE(same(*s->get_pn("gw-1", "pn-a"), a));
    ASSERT_TRUE(s->get_pn("gw-1", "pn-b"));
    EXPECT_TRUE(same(*s->get_pn("gw-1", "pn-b"), b));
    EXPECT_FALSE(s->pn_exists("gw-1", "pn-u"));
    EXPECT_EQ(s->get_pn("gw-1", "pn-old")->members_size(), 1);
    EXPECT_EQ(this->count("pns"), "3");
    EXPECT_EQ(this->count("pn_members"), "5");
    EXPECT_TRUE(s->check().empty());
    EXPECT_TRUE(s->register_pns({}).empty());

    // Limits count the PNs accepted earlier in the same group: pne-lim one PN short of its
    // bound takes the first of two PNs and refuses the second, which writes nothing.
    s->put_entity(entity("pne-lim", EntityKind::kPne));
    std::vector<pb::PnInventory> fill;
    for (std::size_t i = 0; i + 1 < kMaxPnsPerPne; ++i)
        fill.push_back(inventory("gw-1", "pn-fill-" + std::to_string(i), {"pne-lim"}));
    std::vector<const pb::PnInventory*> fill_ptrs;
    for (const auto& inv : fill) fill_ptrs.push_back(&inv);
    const std::vector<PutResult> filled = s->register_pns(fill_ptrs);
    EXPECT_EQ(std::count(filled.begin(), filled.end(), PutResult::kOk),
              static_cast<std::ptrdiff_t>(kMaxPnsPerPne - 1));
    const pb::PnInventory last = inventory("gw-1", "pn-last", {"pne-lim", "pne-1"});
    const pb::PnInventory over = inventory("gw-1", "pn-over", {"pne-2", "pne-lim"});
    EXPECT_EQ(s->register_pns({&last, &over}),
              (std::vector<PutResult>{PutResult::kOk, PutResult::kLimit}));
    EXPECT_FALSE(s->pn_exists("gw-1", "pn-over"));
    EXPECT_EQ(s->pns_of("pne-lim").size(), kMaxPnsPerPne);
    EXPECT_TRUE(s->check().empty());

    // A statement failing inside the group: StoreError, and nothing of the group is written
    // (the caller then registers each alone).
    const std::string pns_before = this->count("pns");
    this->backend_.exec(TypeParam::failing_member_trigger("pne-boom"));
    const pb::PnInventory c = inventory("gw-1", "pn-c", {"pne-1"});
    const pb::PnInventory boom = inventory("gw-1", "pn-boom", {"pne-2", "pne-boom"});
    const std::string why = error_of([&] { s->register_pns({&c, &boom}); });
    EXPECT_NE(why.find("injected failure"), std::string::npos) << why;
    EXPECT_FALSE(s->pn_exists("gw-1", "pn-c"));
    EXPECT_FALSE(s->pn_exists("gw-1", "pn-boom"));
    EXPECT_EQ(this->count("pns"), pns_before);
    // The store is usable afterwards: the good one alone commits.
    EXPECT_EQ(s->register_pns({&c}), std::vector<PutResult>{PutResult::kOk});
}

TYPED_TEST(StoreTest, RegisterPnIsAtomicAndRefusesDuplicates) {
    const auto s = this->open();
    provision(*s, {"gw-1"}, {"pne-1", "pne-2", "pne-boom"});

    const pb::PnInventory inv = inventory("gw-1", "pn-1", {"pne-1", "pne-2"});
    EXPECT_EQ(s->register_pn(inv), PutResult::kOk);
    EXPECT_TRUE(s->pn_exists("gw-1", "pn-1"));

    // The same (gw, pn) again, even with other contents: kDuplicate, the first one stays.
    EXPECT_EQ(s->register_pn(inventory("gw-1", "pn-1", {"pne-2"})), PutResult::kDuplicate);
    const std::optional<pb::PnInventory> got = s->get_pn("gw-1", "pn-1");
    ASSERT_TRUE(got);
    EXPECT_TRUE(same(*got, inv));
    // The same PN ID under another PN GW is another PN.
    s->put_entity(entity("gw-2", EntityKind::kGw));
    EXPECT_EQ(s->register_pn(inventory("gw-2", "pn-1", {"pne-1"})), PutResult::kOk);

    // Refused inventories write nothing.
    EXPECT_EQ(s->register_pn(inventory("gw-1", "pn-x", {})), PutResult::kError);
    EXPECT_EQ(s->register_pn(inventory("gw-1", "", {"pne-1"})), PutResult::kError);
    EXPECT_EQ(s->register_pn(inventory("", "pn-x", {"pne-1"})), PutResult::kError);
    EXPECT_EQ(s->register_pn(inventory("gw-1", "pn-x", {"pne-1", "pne-1"})), PutResult::kError);
    EXPECT_EQ(s->register_pn(inventory("gw-1", "pn-x", {"pne-1", "pne-unknown"})),
              PutResult::kError);
    EXPECT_EQ(s->register_pn(inventory("gw-1", "pn-x", {"pne-1", "gw-2"})), PutResult::kError);
    EXPECT_FALSE(s->pn_exists("gw-1", "pn-x"));
    EXPECT_EQ(this->count("pns"), "2");
    EXPECT_EQ(this->count("pn_members"), "3");

    // A failure in the middle of the transaction (the second member's insert fails in the
    // database): neither the PN row nor the first member remain.
    this->backend_.exec(TypeParam::failing_member_trigger("pne-boom"));
    const std::string why = error_of([&] {
        s->register_pn(inventory("gw-1", "pn-2", {"pne-1", "pne-boom"}));
    });
    EXPECT_NE(why.find("injected failure"), std::string::npos) << why;
    EXPECT_FALSE(s->pn_exists("gw-1", "pn-2"));
    EXPECT_EQ(this->count("pns"), "2");
    EXPECT_EQ(this->count("pn_members"), "3");

    // The store is still usable, and the PN can be registered once the fault is gone.
    EXPECT_EQ(s->register_pn(inventory("gw-1", "pn-3", {"pne-2"})), PutResult::kOk);
    this->backend_.exec("DROP TRIGGER fail_member" +
                        std::string(TypeParam::name() == "postgresql" ? " ON pn_members" : ""));
    EXPECT_EQ(s->register_pn(inventory("gw-1", "pn-2", {"pne-1", "pne-boom"})), PutResult::kOk);
    EXPECT_TRUE(s->check().empty());
}

TYPED_TEST(StoreTest, GetAndListPns) {
    const auto s = this->open();
    provision(*s, {"gw-1", "gw-2"}, {"pne-1", "pne-2", "pne-3"});
    EXPECT_TRUE(s->list_pns().empty());
    EXPECT_EQ(s->count_pns(), 0u);

    const pb::PnInventory a = inventory("gw-1", "pn-b", {"pne-3", "pne-1", "pne-2"});
    const pb::PnInventory b = inventory("gw-1", "pn-a", {"pne-2"});
    const pb::PnInventory c = inventory("gw-2", "pn-a", {"pne-2", "pne-1"});
    for (const auto* inv : {&a, &b, &c}) ASSERT_EQ(s->register_pn(*inv), PutResult::kOk);
    EXPECT_EQ(s->count_pns(), 3u);

    const std::optional<pb::PnInventory> got = s->get_pn("gw-1", "pn-b");
    ASSERT_TRUE(got);
    EXPECT_TRUE(same(*got, a)) << got->DebugString();  // members in their original order
    EXPECT_FALSE(s->get_pn("gw-1", "pn-unknown"));
    EXPECT_FALSE(s->get_pn("gw-3", "pn-a"));
    EXPECT_TRUE(s->pn_exists("gw-2", "pn-a"));
    EXPECT_FALSE(s->pn_exists("gw-2", "pn-b"));

    const std::vector<pb::PnInventory> all = s->list_pns();
    ASSERT_EQ(all.size(), 3u);
    EXPECT_TRUE(same(all[0], b));
    EXPECT_TRUE(same(all[1], a));
    EXPECT_TRUE(same(all[2], c));

    const std::vector<pb::PnInventory> of_gw2 = s->list_pns("gw-2");
    ASSERT_EQ(of_gw2.size(), 1u);
    EXPECT_TRUE(same(of_gw2[0], c));
    EXPECT_TRUE(s->list_pns("gw-unknown").empty());
}

TYPED_TEST(StoreTest, AuditManyWritesEveryRecordInOrder) {
    const auto s = this->open();
    std::vector<AuditRecord> batch;
    // More than one multi-row statement's worth (128 rows), with a remainder of every size.
    constexpr int kRecords = 128 + 127;
    for (int i = 1; i <= kRecords; ++i) {
        AuditRecord r;
        r.at_ms = 5000;  // one timestamp: order comes from insertion
        r.server_id = "server-a";
        r.gw_id = "gw-1";
        r.pn_id = "pn-1";
        r.pne_id = "pne-" + std::to_string(i);
        r.success = i % 2 == 0;
        r.reason = r.success ? "none" : "authentication failed";
        batch.push_back(r);
    }
    s->audit_many(batch);
    s->audit_many({});
    const auto log = s->audit_log(1000);
    ASSERT_EQ(log.size(), static_cast<std::size_t>(kRecords));
    for (int i = 0; i < kRecords; ++i) {  // newest first: the batch backwards
        const AuditRecord& r = log[static_cast<std::size_t>(i)];
        const int n = kRecords - i;
        EXPECT_EQ(r.pne_id, "pne-" + std::to_string(n));
        EXPECT_EQ(r.success, n % 2 == 0) << r.pne_id;
        EXPECT_EQ(r.reason, n % 2 == 0 ? "none" : "authentication failed") << r.pne_id;
        EXPECT_EQ(r.at_ms, 5000) << r.pne_id;
        EXPECT_EQ(r.server_id, "server-a");
    }
    EXPECT_EQ(log.back().reason, "authentication failed");
}

TYPED_TEST(StoreTest, AuditLogNewestFirstWithLimit) {
    const auto s = this->open();
    EXPECT_TRUE(s->audit_log(10).empty());
    for (int i = 1; i <= 10; ++i) {
        AuditRecord r;
        r.at_ms = 1000 * (i <= 8 ? i : 8);  // records 8, 9 and 10 share a timestamp
        r.server_id = "server-" + std::to_string(i % 2);
        r.gw_id = "gw-1";
        r.pn_id = "pn-" + std::to_string(i);
        r.pne_id = "pne-" + std::to_string(i);
        r.success = i % 3 == 0;
        r.reason = r.success ? "" : "AUTHENTICATION_FAILED";
        r.detail = "record " + std::to_string(i) + " with 'quotes' and ; semicolons";
        s->audit(r);
    }

    const std::vector<AuditRecord> three = s->audit_log(3);
    ASSERT_EQ(three.size(), 3u);
    EXPECT_EQ(three[0].pn_id, "pn-10");  // same at_ms: the later record first
    EXPECT_EQ(three[1].pn_id, "pn-9");
    EXPECT_EQ(three[2].pn_id, "pn-8");

    const std::vector<AuditRecord> all = s->audit_log(100);
    ASSERT_EQ(all.size(), 10u);
    for (std::size_t k = 0; k < all.size(); ++k) {
        const int i = 10 - static_cast<int>(k);
        const AuditRecord& r = all[k];
        EXPECT_EQ(r.at_ms, 1000 * (i <= 8 ? i : 8));
        EXPECT_EQ(r.server_id, "server-" + std::to_string(i % 2));
        EXPECT_EQ(r.gw_id, "gw-1");
        EXPECT_EQ(r.pn_id, "pn-" + std::to_string(i));
        EXPECT_EQ(r.pne_id, "pne-" + std::to_string(i));
        EXPECT_EQ(r.success, i % 3 == 0);
        EXPECT_EQ(r.reason, r.success ? "" : "AUTHENTICATION_FAILED");
        EXPECT_EQ(r.detail, "record " + std::to_string(i) + " with 'quotes' and ; semicolons");
    }
    EXPECT_TRUE(s->audit_log(0).empty());

    // at_ms 0: the current time.
    AuditRecord now;
    now.pn_id = "pn-now";
    s->audit(now);
    EXPECT_EQ(s->audit_log(1).at(0).pn_id, "pn-now");
    EXPECT_GT(s->audit_log(1).at(0).at_ms, 1600000000000);
}

TYPED_TEST(StoreTest, CheckIsEmptyOnAGoodStoreAndFindsInjectedInconsistencies) {
    const auto s = this->open();
    EXPECT_TRUE(s->check().empty());
    provision(*s, {"gw-1"}, {"pne-1", "pne-2", "pne-3"});
    ASSERT_EQ(s->register_pn(inventory("gw-1", "pn-1", {"pne-1", "pne-2", "pne-3"})),
              PutResult::kOk);
    ASSERT_EQ(s->register_pn(inventory("gw-1", "pn-2", {"pne-1", "pne-2"})), PutResult::kOk);
    for (int i = 0; i < 5; ++i) s->audit(AuditRecord{});
    const std::vector<std::string> clean = s->check();
    EXPECT_TRUE(clean.empty()) << clean.front();

    auto blob = [](const google::protobuf::Message& m) {
        return TypeParam::blob_literal(hex_of_message(m));
    };
    pb::PnInventory empty_header = inventory("gw-1", "pn-empty", {});
    // A PN without members.
    this->backend_.exec(
        "INSERT INTO pns (gw_id, pn_id, registered_at_ms, inventory) VALUES ('gw-1', "
        "'pn-empty', 1, " +
        blob(empty_header) + ")");
    // A member of a PN that does not exist (past the foreign key).
    this->backend_.exec(TypeParam::unchecked() +
                        "INSERT INTO pn_members (gw_id, pn_id, pne_id, member_index, member) "
                        "VALUES ('gw-1', 'pn-ghost', 'pne-1', 0, " +
                        blob(member("pne-1")) + ")");
    // Members that are not PNE entities: the PN GW itself, and an unknown ID.
    this->backend_.exec(
        "INSERT INTO pn_members (gw_id, pn_id, pne_id, member_index, member) VALUES "
        "('gw-1', 'pn-1', 'gw-1', 3, " +
        blob(member("gw-1")) + "), ('gw-1', 'pn-1', 'pne-unknown', 4, " +
        blob(member("pne-unknown")) + ")");
    // A duplicate member row (past the primary key).
    this->backend_.exec(TypeParam::drop_member_key());
    this->backend_.exec(
        "INSERT INTO pn_members (gw_id, pn_id, pne_id, member_index, member) VALUES "
        "('gw-1', 'pn-1', 'pne-1', 5, " +
        blob(member("pne-1")) + ")");
    // A member row whose record names another PNE (so pne-1 is listed twice in pn-2).
    this->backend_.exec("UPDATE pn_members SET member = " + blob(member("pne-1")) +
                        " WHERE gw_id = 'gw-1' AND pn_id = 'pn-2' AND pne_id = 'pne-2'");
    // An unreadable sealed key.
    this->backend_.exec("UPDATE entities SET sealed_eukey = " +
                        TypeParam::blob_literal(std::string(2 * kSealedKeySize, '0')) +
                        " WHERE id = 'pne-3'");

    const std::vector<std::string> problems = s->check();
    const std::set<std::string> expected = {
        "entity pne-3: integrity check failed: its sealed EUKey does not open for this entity, "
        "kind and key version (altered, moved or copied back)",
        "PN gw-1/pn-empty: no members",
        "member pne-1 of PN gw-1/pn-ghost: no such PN",
        "member gw-1 of PN gw-1/pn-1: the entity is not a PNE",
        "member pne-unknown of PN gw-1/pn-1: no such entity (not a PNE)",
        "PN gw-1/pn-1: PNE pne-1 is a member 2 times",
        "member pne-2 of PN gw-1/pn-2: the record names PNE pne-1",
        "PN gw-1/pn-2: PNE pne-1 is a member 2 times",
    };
    std::string listing;
    for (const std::string& p : problems) listing += "\n  " + p;
    EXPECT_EQ(std::set<std::string>(problems.begin(), problems.end()), expected) << listing;
    EXPECT_EQ(problems.size(), expected.size()) << listing;
}

TYPED_TEST(StoreTest, WrongMasterKeyFailsClearly) {
    {
        const auto s = this->open();
        provision(*s, {"gw-1"}, {"pne-1"});
    }
    const auto wrong = this->open(random_key());  // opening works: the key is not in the DB
    EXPECT_EQ(error_of([&] { wrong->get_entity("pne-1"); }),
              "cannot unseal EUKey of pne-1: wrong master key?");
    const std::string why = error_of([&] { wrong->list_entities(); });
    EXPECT_NE(why.find("wrong master key?"), std::string::npos) << why;
    const std::vector<std::string> problems = wrong->check();
    EXPECT_TRUE(contains(problems,
                         "entity pne-1: unreadable sealed EUKey (wrong master key or corrupted)"));
    EXPECT_EQ(problems.size(), 2u);

    const auto right = this->open();
    EXPECT_TRUE(right->get_entity("pne-1"));
    EXPECT_TRUE(right->check().empty());
}

TYPED_TEST(StoreTest, SealedKeyCannotBeMovedToAnotherEntity) {
    const auto s = this->open();
    provision(*s, {}, {"pne-1", "pne-2"});
    this->backend_.exec(
        "UPDATE entities SET sealed_eukey = (SELECT sealed_eukey FROM entities WHERE id = "
        "'pne-1') WHERE id = 'pne-2'");
    EXPECT_TRUE(s->get_entity("pne-1"));
    // pne-2's version record shows the master key right: the row itself was altered.
    EXPECT_EQ(error_of([&] { s->get_entity("pne-2"); }),
              "entity pne-2 refused: integrity check failed: its sealed EUKey does not open for "
              "this entity, kind and key version (altered, moved or copied back)");
}

// --- Integrity at rest: rows altered by someone who can write the database but lacks the
// master key ---------------------------------------------------------------------------------

// The entity is refused when loaded (get_entity throws, naming it, and so does list_entities;
// nothing is returned, so nothing is used as active) and check() reports it, once.
void expect_refused(Store& s, const std::string& id, const std::string& what) {
    const std::string why = error_of([&] { s.get_entity(id); });
    EXPECT_NE(why, "<no StoreError>") << what << ": get_entity(" << id << ") accepted the row";
    EXPECT_NE(why.find(id), std::string::npos) << what << ": " << why;
    // Listing stops at a refused row (this one, or another one altered too).
    const std::string list_why = error_of([&] { s.list_entities(); });
    EXPECT_NE(list_why.find(" refused: "), std::string::npos) << what << ": " << list_why;
    std::vector<std::string> problems;
    for (const std::string& p : s.check()) {
        if (p.rfind("entity " + id + ": ", 0) == 0) problems.push_back(p);
    }
    EXPECT_EQ(problems.size(), 1u) << what << ": check() does not report " << id;
}

TYPED_TEST(StoreTest, AFlippedStatusIsRefused) {
    const auto s = this->open();
    provision(*s, {"gw-1"}, {"pne-1", "pne-2"});
    ASSERT_TRUE(s->set_status("pne-1", EntityStatus::kRevoked));
    ASSERT_TRUE(s->set_status("gw-1", EntityStatus::kDisabled));

    // Revoked -> active, disabled -> active, in the database only.
    this->backend_.exec("UPDATE entities SET status = 'active' WHERE id IN ('pne-1', 'gw-1')");
    expect_refused(*s, "pne-1", "revoked flipped to active");
    expect_refused(*this->open(), "gw-1", "disabled flipped to active");  // another connection
    EXPECT_EQ(s->check().size(), 2u);
    EXPECT_TRUE(s->get_entity("pne-2"));  // the rows left alone still load

    // Put back as they were: accepted again.
    this->backend_.exec("UPDATE entities SET status = 'revoked' WHERE id = 'pne-1'");
    this->backend_.exec("UPDATE entities SET status = 'disabled' WHERE id = 'gw-1'");
    EXPECT_EQ(s->get_entity("pne-1")->status, EntityStatus::kRevoked);
    EXPECT_EQ(s->get_entity("gw-1")->status, EntityStatus::kDisabled);
    EXPECT_TRUE(s->check().empty());
}

TYPED_TEST(StoreTest, AChangedKindIsRefused) {
    const auto s = this->open();
    provision(*s, {"gw-1"}, {"pne-1"});
    this->backend_.exec("UPDATE entities SET kind = 'gw' WHERE id = 'pne-1'");
    this->backend_.exec("UPDATE entities SET kind = 'pne' WHERE id = 'gw-1'");
    expect_refused(*s, "pne-1", "pne changed to gw");
    expect_refused(*s, "gw-1", "gw changed to pne");
    EXPECT_EQ(s->check().size(), 2u);
    const std::string why = error_of([&] { s->list_entities(EntityKind::kGw); });
    EXPECT_NE(why.find("pne-1"), std::string::npos) << why;
}

TYPED_TEST(StoreTest, ARolledBackEukeyIsRefused) {
    const auto s = this->open();
    const StoredEntity first = entity("pne-1", EntityKind::kPne);
    s->put_entity(first);
    this->backend_.exec(
        "CREATE TABLE old_blob AS SELECT sealed_eukey FROM entities WHERE id = 'pne-1'");
    this->backend_.exec("CREATE TABLE old_row AS SELECT * FROM entities WHERE id = 'pne-1'");
    const StoredEntity second = entity("pne-1", EntityKind::kPne);  // the key is replaced
    s->put_entity(second);
    ASSERT_TRUE(s->get_entity("pne-1")->eukey == second.eukey);

    // The replaced key's sealed blob copied back.
    this->backend_.exec(
        "UPDATE entities SET sealed_eukey = (SELECT sealed_eukey FROM old_blob) WHERE id = "
        "'pne-1'");
    expect_refused(*s, "pne-1", "older sealed blob copied back");

    // The whole older row (every column) copied back.
    this->backend_.exec(
        "DELETE FROM entities WHERE id = 'pne-1'; INSERT INTO entities SELECT * FROM old_row");
    expect_refused(*s, "pne-1", "older row copied back");

    // The operator replaces the key again: accepted.
    const StoredEntity third = entity("pne-1", EntityKind::kPne);
    s->put_entity(third);
    EXPECT_TRUE(s->get_entity("pne-1")->eukey == third.eukey);
    EXPECT_TRUE(s->check().empty());
}

TYPED_TEST(StoreTest, ARolledBackRevocationIsRefused) {
    const auto s = this->open();
    provision(*s, {}, {"pne-1"});
    this->backend_.exec("CREATE TABLE old_row AS SELECT * FROM entities WHERE id = 'pne-1'");
    ASSERT_TRUE(s->set_status("pne-1", EntityStatus::kRevoked));
    this->backend_.exec(
        "DELETE FROM entities WHERE id = 'pne-1'; INSERT INTO entities SELECT * FROM old_row");
    expect_refused(*s, "pne-1", "row from before the revocation copied back");
}

TYPED_TEST(StoreTest, LegitimateStatusChangesAndKeyReplacementsStayValid) {
    const auto s = this->open();
    provision(*s, {"gw-1"}, {"pne-1"});
    for (const EntityStatus st : {EntityStatus::kDisabled, EntityStatus::kActive,
                                  EntityStatus::kDisabled, EntityStatus::kRevoked}) {
        ASSERT_TRUE(s->set_status("pne-1", st));
        EXPECT_EQ(this->open()->get_entity("pne-1")->status, st);
        EXPECT_TRUE(s->check().empty());
    }
    for (int i = 0; i < 3; ++i) {
        const StoredEntity e = entity("gw-1", i % 2 == 0 ? EntityKind::kGw : EntityKind::kPne);
        s->put_entity(e);
        const std::optional<StoredEntity> got = this->open()->get_entity("gw-1");
        ASSERT_TRUE(got);
        EXPECT_TRUE(got->eukey == e.eukey);
        EXPECT_EQ(got->kind, e.kind);
        EXPECT_TRUE(s->check().empty());
    }
    EXPECT_EQ(s->list_entities().size(), 2u);
}

TYPED_TEST(StoreTest, RevokingATamperedEntityDestroysItsKey) {
    const auto s = this->open();
    const StoredEntity e = entity("pne-1", EntityKind::kPne);
    s->put_entity(e);
    ASSERT_TRUE(s->set_status("pne-1", EntityStatus::kRevoked));
    this->backend_.exec("UPDATE entities SET status = 'active' WHERE id = 'pne-1'");

    // Nothing but a revocation is applied to a tampered row.
    EXPECT_THROW(s->set_status("pne-1", EntityStatus::kDisabled), StoreError);
    EXPECT_THROW(s->set_status("pne-1", EntityStatus::kActive), StoreError);
    ASSERT_TRUE(s->set_status("pne-1", EntityStatus::kRevoked));
    const std::optional<StoredEntity> got = s->get_entity("pne-1");
    ASSERT_TRUE(got);
    EXPECT_EQ(got->status, EntityStatus::kRevoked);
    EXPECT_FALSE(got->eukey == e.eukey);  // a fresh key nobody holds
    EXPECT_TRUE(s->check().empty());
}

// What the previous version (schema version 1) wrote: AES-256-GCM under the at-rest key with
// AAD "cpns-eukey|" || id.
std::string seal_v1_hex(const SecretKey& master, const std::string& id, const SecretKey& eukey) {
    const SecretKey k = derive_at_rest_key(master);
    const std::string aad = "cpns-eukey|" + id;
    Bytes out(kSealedKeySize);
    OsRandom().fill({out.data(), kSealNonceSize});
    EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
    int len = 0;
    const bool ok =
        EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr, k.view().data(), out.data()) == 1 &&
        EVP_EncryptUpdate(ctx, nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                          static_cast<int>(aad.size())) == 1 &&
        EVP_EncryptUpdate(ctx, out.data() + 12, &len, eukey.view().data(), 32) == 1 &&
        EVP_EncryptFinal_ex(ctx, out.data() + 44, &len) == 1 &&
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, out.data() + 44) == 1;
    EVP_CIPHER_CTX_free(ctx);
    if (!ok) throw std::runtime_error("AES-256-GCM failed");
    return to_hex(out);
}

// --- EUKey rotation ------------------------------------------------------------------------

TYPED_TEST(StoreTest, RotationKeepsThePreviousEukeySealedWithItsExpiry) {
    const auto s = this->open();
    const StoredEntity first = entity("pne-1", EntityKind::kPne);
    s->put_entity(first);
    provision(*s, {"gw-1"}, {});
    const SecretKey second = random_key();
    EXPECT_EQ(s->rotate_eukey("pne-1", second, 1'800'000'000'000), 2);

    // Read back by another connection: the new EUKey under key version 2, the old one as the
    // previous EUKey with its expiry; nothing else changed.
    std::optional<StoredEntity> got = this->open()->get_entity("pne-1");
    ASSERT_TRUE(got);
    EXPECT_TRUE(got->eukey == second);
    EXPECT_EQ(got->key_version, 2);
    EXPECT_EQ(got->status, EntityStatus::kActive);
    EXPECT_TRUE(same(got->capabilities, first.capabilities));
    ASSERT_TRUE(got->previous);
    EXPECT_TRUE(got->previous->eukey == first.eukey);
    EXPECT_EQ(got->previous->expires_at_ms, 1'800'000'000'000);
    EXPECT_FALSE(s->get_entity("gw-1")->previous);
    EXPECT_TRUE(s->check().empty());

    EXPECT_EQ(this->backend_.query("SELECT id FROM entities WHERE previous_sealed_eukey IS NOT "
                                   "NULL AND previous_expires_at_ms IS NOT NULL"),
              (Rows{{"pne-1"}}));

    // A status change keeps the previous EUKey; a second rotation replaces it; a revocation
    // destroys it; a replacement (put_entity) drops it.
    ASSERT_TRUE(s->set_status("pne-1", EntityStatus::kDisabled));
    EXPECT_TRUE(s->get_entity("pne-1")->previous->eukey == first.eukey);
    const SecretKey third = random_key();
    EXPECT_EQ(s->rotate_eukey("pne-1", third, 1'900'000'000'000), 3);
    got = s->get_entity("pne-1");
    ASSERT_TRUE(got && got->previous);
    EXPECT_TRUE(got->eukey == third);
    EXPECT_EQ(got->status, EntityStatus::kDisabled);
    EXPECT_TRUE(got->previous->eukey == second);
    EXPECT_EQ(got->previous->expires_at_ms, 1'900'000'000'000);
    s->put_entity(entity("pne-1", EntityKind::kPne));
    EXPECT_FALSE(s->get_entity("pne-1")->previous);
    EXPECT_EQ(s->rotate_eukey("pne-1", random_key(), 1), 5);
    ASSERT_TRUE(s->set_status("pne-1", EntityStatus::kRevoked));
    EXPECT_FALSE(s->get_entity("pne-1")->previous);
    EXPECT_TRUE(s->check().empty());

    // Refused: a revoked entity, an unknown one (nullopt), the all-zero key.
    EXPECT_NE(error_of([&] { s->rotate_eukey("pne-1", random_key(), 1); }).find("revoked"),
              std::string::npos);
    EXPECT_FALSE(s->rotate_eukey("nobody", random_key(), 1));
    EXPECT_NE(error_of([&] { s->rotate_eukey("gw-1", SecretKey(), 1); }), "<no StoreError>");
}

TYPED_TEST(StoreTest, APreviousEukeyAlteredInTheDatabaseIsRefused) {
    const auto s = this->open();
    provision(*s, {}, {"pne-1", "pne-2"});
    ASSERT_TRUE(s->rotate_eukey("pne-1", random_key(), 1'800'000'000'000));
    ASSERT_TRUE(s->rotate_eukey("pne-2", random_key(), 1'800'000'000'000));
    this->backend_.exec("CREATE TABLE old_row AS SELECT * FROM entities WHERE id = 'pne-1'");

    // A longer grace written into the database: refused.
    this->backend_.exec(
        "UPDATE entities SET previous_expires_at_ms = 4000000000000 WHERE id = 'pne-1'");
    expect_refused(*s, "pne-1", "grace extended");
    this->backend_.exec(
        "DELETE FROM entities WHERE id = 'pne-1'; INSERT INTO entities SELECT * FROM old_row");
    EXPECT_TRUE(s->get_entity("pne-1"));

    // The previous EUKey removed (so that an old row without it could be copied back) or
    // swapped with another entity's: refused.
    this->backend_.exec(
        "UPDATE entities SET previous_sealed_eukey = NULL, previous_expires_at_ms = NULL WHERE "
        "id = 'pne-1'");
    expect_refused(*s, "pne-1", "previous EUKey removed");
    this->backend_.exec(
        "DELETE FROM entities WHERE id = 'pne-1'; INSERT INTO entities SELECT * FROM old_row");
    this->backend_.exec(
        "UPDATE entities SET previous_sealed_eukey = (SELECT previous_sealed_eukey FROM old_row)"
        " WHERE id = 'pne-2'");
    expect_refused(*s, "pne-2", "another entity's previous EUKey");

    // The current and the previous sealed EUKeys swapped (back to the old key): refused.
    this->backend_.exec(
        "UPDATE entities SET sealed_eukey = (SELECT previous_sealed_eukey FROM old_row),"
        " previous_sealed_eukey = (SELECT sealed_eukey FROM old_row) WHERE id = 'pne-1'");
    expect_refused(*s, "pne-1", "current and previous EUKeys swapped");
}

TYPED_TEST(StoreTest, ADatabaseOfSchemaVersion1IsUpgradedWhenOpenedWithItsMasterKey) {
    std::vector<StoredEntity> entities = {entity("gw-1", EntityKind::kGw),
                                          entity("pne-1", EntityKind::kPne),
                                          entity("pne-2", EntityKind::kPne)};
    entities[2].status = EntityStatus::kRevoked;
    {
        const auto s = this->open();
        for (const StoredEntity& e : entities) s->put_entity(e);
        ASSERT_EQ(s->register_pn(inventory("gw-1", "pn-1", {"pne-1"})), PutResult::kOk);
    }
    // Back to what the previous version left: schema version 1, blobs sealed its way.
    this->backend_.exec(
        "DROP TABLE change_log; DROP TABLE entity_versions; ALTER TABLE entities DROP COLUMN "
        "row_mac;"
        " ALTER TABLE entities DROP COLUMN previous_sealed_eukey;"
        " ALTER TABLE entities DROP COLUMN previous_expires_at_ms;"
        " ALTER TABLE entities DROP COLUMN revision; ALTER TABLE entities DROP COLUMN "
        "key_version; DELETE FROM schema_version WHERE version > 1");
    for (const StoredEntity& e : entities) {
        this->backend_.exec("UPDATE entities SET sealed_eukey = " +
                            TypeParam::blob_literal(seal_v1_hex(this->master_, e.id, e.eukey)) +
                            " WHERE id = '" + e.id + "'");
    }

    // Another master key does not migrate it: refused, nothing changed.
    const std::string why = error_of([&] { this->open(random_key()); });
    EXPECT_NE(why.find("does not open under this master key"), std::string::npos) << why;
    EXPECT_EQ(this->backend_.query("SELECT MAX(version) FROM schema_version"), (Rows{{"1"}}));

    // Its own: every row re-sealed under key version 1, MACed and recorded.
    const auto s = this->open();
    for (const StoredEntity& e : entities) {
        const std::optional<StoredEntity> got = s->get_entity(e.id);
        ASSERT_TRUE(got) << e.id;
        EXPECT_TRUE(got->eukey == e.eukey) << e.id;
        EXPECT_EQ(got->kind, e.kind) << e.id;
        EXPECT_EQ(got->status, e.status) << e.id;
        EXPECT_EQ(got->key_version, 1) << e.id;
    }
    EXPECT_TRUE(s->pn_exists("gw-1", "pn-1"));
    EXPECT_TRUE(s->check().empty());
    EXPECT_EQ(this->backend_.query("SELECT version FROM schema_version ORDER BY version"),
              (Rows{{"1"}, {"2"}, {"3"}, {"4"}}));
    EXPECT_EQ(this->count("entity_versions"), "3");

    // Protected from now on; a row stripped of its MAC is not upgraded again either.
    this->backend_.exec("UPDATE entities SET status = 'active' WHERE id = 'pne-2'");
    expect_refused(*s, "pne-2", "revoked flipped to active after the upgrade");
    this->backend_.exec("UPDATE entities SET row_mac = NULL WHERE id = 'pne-2'");
    expect_refused(*this->open(), "pne-2", "MAC removed");
    s->put_entity(entities[1]);  // a key replacement: key version 2
    EXPECT_EQ(s->get_entity("pne-1")->key_version, 2);
}

TYPED_TEST(StoreTest, MigrationsAreIdempotentAndSafeToRace) {
    {
        const auto s = this->open();
        provision(*s, {"gw-1"}, {"pne-1"});
        ASSERT_EQ(s->register_pn(inventory("gw-1", "pn-1", {"pne-1"})), PutResult::kOk);
    }
    for (int i = 0; i < 2; ++i) {
        const auto s = this->open();
        EXPECT_TRUE(s->get_entity("pne-1"));
        EXPECT_TRUE(s->pn_exists("gw-1", "pn-1"));
    }
    EXPECT_EQ(this->backend_.query("SELECT version FROM schema_version ORDER BY version"),
              (Rows{{"1"}, {"2"}, {"3"}, {"4"}}));

    // Several processes opening a new database at once: each one migrates or waits.
    TypeParam fresh;
    ASSERT_EQ(fresh.setup(), "");
    constexpr int kOpeners = 4;
    std::barrier start(kOpeners);
    std::vector<std::string> errors(kOpeners);
    std::vector<std::thread> threads;
    for (int i = 0; i < kOpeners; ++i) {
        threads.emplace_back([&, i] {
            start.arrive_and_wait();
            try {
                const auto s = open_store(fresh.url(), this->master_);
                s->put_entity(entity("pne-" + std::to_string(i), EntityKind::kPne));
            } catch (const std::exception& e) {
                errors[static_cast<std::size_t>(i)] = e.what();
            }
        });
    }
    for (std::thread& t : threads) t.join();
    for (const std::string& e : errors) EXPECT_EQ(e, "");
    EXPECT_EQ(fresh.query("SELECT version FROM schema_version ORDER BY version"),
              (Rows{{"1"}, {"2"}, {"3"}, {"4"}}));
    EXPECT_EQ(fresh.query("SELECT COUNT(*) FROM entities"), (Rows{{"4"}}));
    fresh.teardown();
}

TYPED_TEST(StoreTest, RacingRegistrationsOfOnePnRegisterItOnce) {
    {
        const auto s = this->open();
        provision(*s, {"gw-1"}, {"pne-1", "pne-2", "pne-3"});
    }
    constexpr int kRounds = 25;
    std::vector<std::unique_ptr<Store>> stores;
    stores.push_back(this->open());
    stores.push_back(this->open());
    std::vector<std::vector<PutResult>> results(2, std::vector<PutResult>(kRounds));
    std::vector<std::string> errors(2);
    std::barrier sync(2);
    std::vector<std::thread> threads;
    for (std::size_t t = 0; t < 2; ++t) {
        threads.emplace_back([&, t] {
            for (int r = 0; r < kRounds; ++r) {
                // Each side registers the same (gw, pn), with its own member list.
                const pb::PnInventory inv =
                    t == 0 ? inventory("gw-1", "pn-" + std::to_string(r), {"pne-1", "pne-2"})
                           : inventory("gw-1", "pn-" + std::to_string(r), {"pne-3"});
                sync.arrive_and_wait();
                try {
                    results[t][static_cast<std::size_t>(r)] = stores[t]->register_pn(inv);
                } catch (const std::exception& e) {
                    errors[t] = e.what();
                    results[t][static_cast<std::size_t>(r)] = PutResult::kError;
                }
            }
        });
    }
    for (std::thread& t : threads) t.join();
    EXPECT_EQ(errors[0], "");
    EXPECT_EQ(errors[1], "");

    const auto s = this->open();
    for (int r = 0; r < kRounds; ++r) {
        const PutResult a = results[0][static_cast<std::size_t>(r)];
        const PutResult b = results[1][static_cast<std::size_t>(r)];
        EXPECT_EQ((a == PutResult::kOk) + (b == PutResult::kOk), 1) << "round " << r;
        EXPECT_EQ((a == PutResult::kDuplicate) + (b == PutResult::kDuplicate), 1) << "round " << r;
        // The stored PN is the winner's, whole.
        const std::optional<pb::PnInventory> got = s->get_pn("gw-1", "pn-" + std::to_string(r));
        ASSERT_TRUE(got);
        EXPECT_EQ(got->members_size(), a == PutResult::kOk ? 2 : 1) << "round " << r;
    }
    EXPECT_EQ(s->list_pns().size(), static_cast<std::size_t>(kRounds));
    EXPECT_TRUE(s->check().empty());
}

TYPED_TEST(StoreTest, ACopyOfTheDatabaseAloneRevealsNoEukey) {
    std::vector<SecretKey> keys;
    auto s = this->open();
    for (int i = 0; i < 50; ++i) {
        StoredEntity e = entity((i % 5 == 0 ? "gw-" : "pne-") + std::to_string(i),
                                i % 5 == 0 ? EntityKind::kGw : EntityKind::kPne);
        keys.push_back(e.eukey);
        s->put_entity(e);
    }
    // Positive control: the copy holds the rows, and the sealed blobs, found by this search.
    const Rows sealed = this->backend_.query("SELECT " + TypeParam::hex_of("sealed_eukey") +
                                             " FROM entities WHERE id = 'pne-1'");
    ASSERT_EQ(sealed.size(), 1u);
    ASSERT_EQ(sealed[0][0].size(), 2 * kSealedKeySize);
    const std::string sealed_raw = bytes_string(*from_hex(sealed[0][0]));

    auto search = [&](const std::string& copy, const std::string& when) {
        ASSERT_NE(copy.find("pne-49"), std::string::npos) << when;
        EXPECT_TRUE(copy.find(sealed_raw) != std::string::npos ||
                    copy.find(sealed[0][0]) != std::string::npos)
            << when;
        for (std::size_t i = 0; i < keys.size(); ++i) {
            const std::string raw = bytes_string(keys[i].view());
            const std::string hex = keys[i].to_hex();
            EXPECT_EQ(copy.find(raw), std::string::npos) << when << ": raw EUKey " << i;
            EXPECT_EQ(copy.find(hex), std::string::npos) << when << ": hex EUKey " << i;
            EXPECT_EQ(copy.find(upper(hex)), std::string::npos) << when << ": HEX EUKey " << i;
        }
    };
    search(this->backend_.copy_of_database(), "while open");
    s.reset();
    search(this->backend_.copy_of_database(), "after close");
}

// --- PostgreSQL only ---------------------------------------------------------------------------

class StorePostgresql : public StoreTest<PgBackend> {};

TEST_F(StorePostgresql, ReconnectsOnTheNextCallAfterTheConnectionBroke) {
    const std::string app = "cpns_kill_" + unique_suffix();
    const auto s = open_store(backend_.url_with("application_name", app), master_);
    provision(*s, {"gw-1"}, {"pne-1"});
    // The server ends the store's session (as a restart or a network failure would).
    EXPECT_EQ(backend_.query("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                             "WHERE application_name = '" +
                             app + "'"),
              (Rows{{"t"}}));
    const std::string why = error_of([&] { s->get_entity("pne-1"); });
    EXPECT_EQ(why.rfind("PostgreSQL", 0), 0u) << why;
    // The failed call threw; the next one reconnects.
    EXPECT_TRUE(s->get_entity("pne-1"));
    EXPECT_EQ(s->register_pn(inventory("gw-1", "pn-1", {"pne-1"})), PutResult::kOk);
    EXPECT_TRUE(s->check().empty());
}

StoreError::Kind kind_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const StoreError& e) {
        return e.kind();
    }
    ADD_FAILURE() << "no StoreError";
    return StoreError::Kind::kOther;
}

TEST_F(StorePostgresql, ALostConnectionIsUnavailableAndTheNextCallReconnects) {
    const std::string app = "cpns_lost_" + unique_suffix();
    const auto s = open_store(backend_.url_with("application_name", app), master_);
    provision(*s, {"gw-1"}, {"pne-1"});
    backend_.query(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
        "WHERE application_name = '" +
        app + "'");
    // What the server turns into STORE_UNAVAILABLE for the PN GW.
    EXPECT_EQ(kind_of([&] { s->get_entity("pne-1"); }), StoreError::Kind::kUnavailable);
    EXPECT_TRUE(s->get_entity("pne-1"));  // reconnected at once (the first attempt)
    // A statement error on a healthy connection is not "unavailable".
    EXPECT_EQ(kind_of([&] { s->put_entity(entity("", EntityKind::kPne)); }),
              StoreError::Kind::kOther);
}

TEST_F(StorePostgresql, AConnectionBrokenMidTransactionWritesNothingAndTheRetryRegisters) {
    const std::string app = "cpns_mid_" + unique_suffix();
    const auto s = open_store(backend_.url_with("application_name", app), master_);
    provision(*s, {"gw-1"}, {"pne-1", "pne-2"});
    // The second member's insert waits, so that the transaction is open (the PN row written,
    // uncommitted) when its backend is terminated.
    backend_.exec(
        "CREATE FUNCTION slow_member() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF "
        "NEW.pne_id = 'pne-2' THEN PERFORM pg_sleep(30); END IF; RETURN NEW; END $$;"
        " CREATE TRIGGER slow_member BEFORE INSERT ON pn_members FOR EACH ROW EXECUTE "
        "FUNCTION slow_member();");
    std::atomic<bool> done{false};
    StoreError::Kind kind = StoreError::Kind::kOther;
    std::thread writer([&] {
        kind = kind_of([&] { s->register_pn(inventory("gw-1", "pn-1", {"pne-1", "pne-2"})); });
        done = true;
    });
    bool terminated = false;
    for (int i = 0; i < 300 && !terminated; ++i) {  // up to 30 s
        const Rows r = backend_.query(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE "
            "application_name = '" +
            app + "' AND wait_event = 'PgSleep'");
        terminated = !r.empty();
        if (!terminated) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    writer.join();
    ASSERT_TRUE(terminated);
    ASSERT_TRUE(done);
    EXPECT_EQ(kind, StoreError::Kind::kUnavailable);
    backend_.exec("DROP TRIGGER slow_member ON pn_members");
    // Nothing of the broken transaction is there; the same registration now succeeds once.
    EXPECT_FALSE(s->pn_exists("gw-1", "pn-1"));
    EXPECT_EQ(backend_.query("SELECT COUNT(*) FROM pn_members"), (Rows{{"0"}}));
    EXPECT_EQ(s->register_pn(inventory("gw-1", "pn-1", {"pne-1", "pne-2"})), PutResult::kOk);
    EXPECT_EQ(s->register_pn(inventory("gw-1", "pn-1", {"pne-1", "pne-2"})), PutResult::kDuplicate);
    EXPECT_TRUE(s->check().empty());
}

TEST_F(StorePostgresql, WhileTheDatabaseIsDownCallsFailAsUnavailableWithBackOffThenRecover) {
    std::string url = backend_.url();
    if (url.rfind("postgres", 0) != 0 || url.find("://") == std::string::npos)
        GTEST_SKIP() << "needs CPNS_TEST_PG_URL as a URL";
    // A database of its own, which the test makes refuse connections (the server down).
    const std::string app = "cpns_down_" + unique_suffix();
    const std::string db = "cpns_down_" + unique_suffix();
    backend_.exec("CREATE DATABASE " + db);
    url = url.substr(0, url.find('?'));
    url = url.substr(0, url.rfind('/')) + "/" + db + "?application_name=" + app;
    {
        const auto s = open_store(url, master_);
        provision(*s, {"gw-1"}, {"pne-1"});
        backend_.exec("ALTER DATABASE " + db + " ALLOW_CONNECTIONS false");
        backend_.query(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE application_name = '" +
            app + "'");
        // The first call finds the connection lost; the next tries to reconnect and fails;
        // the one after fails at once (back-off) without a connection attempt.
        for (int i = 0; i < 2; ++i)
            EXPECT_EQ(kind_of([&] { s->get_entity("pne-1"); }), StoreError::Kind::kUnavailable);
        const std::string why = error_of([&] { s->get_entity("pne-1"); });
        EXPECT_NE(why.find("next reconnection attempt"), std::string::npos) << why;
        backend_.exec("ALTER DATABASE " + db + " ALLOW_CONNECTIONS true");
        // Within the longest back-off, it is back by itself.
        bool back = false;
        for (int i = 0; i < 100 && !back; ++i) {  // up to 10 s
            try {
                back = s->get_entity("pne-1").has_value();
            } catch (const StoreError& e) {
                EXPECT_EQ(e.kind(), StoreError::Kind::kUnavailable) << e.what();
                std::this_thread::sleep_for(std::chrono::milliseconds(100));
            }
        }
        EXPECT_TRUE(back);
    }
    backend_.exec("DROP DATABASE " + db + " WITH (FORCE)");
}

// --- Sealing ---------------------------------------------------------------------------------

TEST(StoreSealed, AtRestKeyIsHkdfSha256OfTheMasterKey) {
    // HKDF (RFC 5869) recomputed with HMAC-SHA-256: no salt = HashLen zero octets,
    // PRK = HMAC(salt, IKM), OKM = T(1) = HMAC(PRK, info || 0x01).
    const SecretKey master = random_key();
    const Bytes zero_salt(32, 0);
    const auto prk = hmac_sha256(zero_salt, master.view());
    std::string t1_input = "cpns store at-rest v1";
    t1_input.push_back('\x01');
    const auto okm = hmac_sha256(prk, as_bytes(t1_input));
    const SecretKey derived = derive_at_rest_key(master);
    EXPECT_EQ(derived.to_hex(), to_hex(okm));
    EXPECT_FALSE(derived == master);

    // The row MAC key: the same with its own info label.
    std::string t1_mac = "cpns store row-mac v1";
    t1_mac.push_back('\x01');
    EXPECT_EQ(derive_row_mac_key(master).to_hex(), to_hex(hmac_sha256(prk, as_bytes(t1_mac))));
}

TEST(StoreSealed, RowMacIsHmacOfTheLabelAndLengthPrefixedFields) {
    const SecretKey master = random_key();
    const Sealer sealer(master);
    const std::string input = std::string("label") + std::string("\0\0\0\x01", 4) + "a" +
                              std::string("\0\0\0\x02", 4) + "bc" + std::string(4, '\0');
    const auto expected = hmac_sha256(derive_row_mac_key(master).view(), as_bytes(input));
    EXPECT_EQ(to_hex(sealer.mac("label", {"a", "bc", ""})), to_hex(expected));
    // Field boundaries count: ("ab", "c") is another input.
    EXPECT_NE(to_hex(sealer.mac("label", {"ab", "c", ""})), to_hex(expected));
}

TEST(StoreSealed, LayoutIsNonceCiphertextTagUnderAesGcmWithTheEntityKindVersionAad) {
    const SecretKey master = random_key();
    const SecretKey eukey = random_key();
    const Bytes blob = Sealer(master).seal({"pne-7", EntityKind::kPne, 3}, eukey);
    ASSERT_EQ(blob.size(), 60u);
    EXPECT_EQ(seal_aad({"pne-7", EntityKind::kGw, 12}), "cpns-eukey-v2|pne-7|gw|12");

    // Open it independently with EVP: nonce = first 12, tag = last 16,
    // AAD = "cpns-eukey-v2|pne-7|pne|3".
    const SecretKey k = derive_at_rest_key(master);
    const std::string aad = "cpns-eukey-v2|pne-7|pne|3";
    std::array<unsigned char, 32> plain{};
    Bytes tag(blob.end() - 16, blob.end());
    EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
    int len = 0;
    ASSERT_EQ(EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr, nullptr, nullptr), 1);
    ASSERT_EQ(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, 12, nullptr), 1);
    ASSERT_EQ(EVP_DecryptInit_ex(ctx, nullptr, nullptr, k.view().data(), blob.data()), 1);
    ASSERT_EQ(
        EVP_DecryptUpdate(ctx, nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                          static_cast<int>(aad.size())),
        1);
    ASSERT_EQ(EVP_DecryptUpdate(ctx, plain.data(), &len, blob.data() + 12, 32), 1);
    ASSERT_EQ(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, tag.data()), 1);
    unsigned char rest[16];
    EXPECT_EQ(EVP_DecryptFinal_ex(ctx, rest, &len), 1);
    EVP_CIPHER_CTX_free(ctx);
    EXPECT_EQ(to_hex(plain), eukey.to_hex());
    wipe(plain.data(), plain.size());
}

TEST(StoreSealed, OpensOnlyForItsEntityKindAndKeyVersionUnderItsMasterKeyUnaltered) {
    const SecretKey master = random_key();
    const Sealer sealer(master);
    const SecretKey eukey = random_key();
    const SealBinding binding{"pne-1", EntityKind::kPne, 2};
    const Bytes blob = sealer.seal(binding, eukey);

    const std::optional<SecretKey> opened = sealer.unseal(binding, blob);
    ASSERT_TRUE(opened);
    EXPECT_TRUE(*opened == eukey);
    EXPECT_NE(sealer.seal(binding, eukey), blob);  // a fresh nonce every time

    EXPECT_FALSE(sealer.unseal({"pne-2", EntityKind::kPne, 2}, blob));
    EXPECT_FALSE(sealer.unseal({"pne-1 ", EntityKind::kPne, 2}, blob));
    EXPECT_FALSE(sealer.unseal({"pne-1", EntityKind::kGw, 2}, blob));
    EXPECT_FALSE(sealer.unseal({"pne-1", EntityKind::kPne, 1}, blob));
    EXPECT_FALSE(sealer.unseal({"pne-1", EntityKind::kPne, 3}, blob));
    EXPECT_FALSE(sealer.unseal_v1("pne-1", blob));
    EXPECT_FALSE(Sealer(random_key()).unseal(binding, blob));
    for (std::size_t i = 0; i < blob.size(); ++i) {
        Bytes altered = blob;
        altered[i] ^= 0x01;
        EXPECT_FALSE(sealer.unseal(binding, altered)) << "byte " << i;
    }
    EXPECT_FALSE(sealer.unseal(binding, ByteView(blob).first(59)));
    EXPECT_FALSE(sealer.unseal(binding, Bytes{}));
}

TEST(StoreSealed, OpensABlobOfSchemaVersion1ForTheMigrationOnly) {
    const SecretKey master = random_key();
    const SecretKey eukey = random_key();
    const Bytes blob = *from_hex(seal_v1_hex(master, "pne-1", eukey));
    const std::optional<SecretKey> opened = Sealer(master).unseal_v1("pne-1", blob);
    ASSERT_TRUE(opened);
    EXPECT_TRUE(*opened == eukey);
    EXPECT_FALSE(Sealer(master).unseal_v1("pne-2", blob));
    EXPECT_FALSE(Sealer(master).unseal({"pne-1", EntityKind::kPne, 0}, blob));
}

// --- Master key --------------------------------------------------------------------------------

class StoreMasterKey : public ::testing::Test {
  protected:
    void SetUp() override {
        dir_ = make_temp_dir();
        if (const char* v = std::getenv("CPNS_MASTER_KEY")) saved_ = v;
        ::unsetenv("CPNS_MASTER_KEY");
    }
    void TearDown() override {
        if (saved_) {
            ::setenv("CPNS_MASTER_KEY", saved_->c_str(), 1);
        } else {
            ::unsetenv("CPNS_MASTER_KEY");
        }
        std::error_code ec;
        fs::remove_all(dir_, ec);
    }
    std::string write_key_file(const std::string& content, mode_t mode) {
        const std::string path = dir_ + "/key-" + unique_suffix();
        {
            std::ofstream out(path, std::ios::binary);
            out << content;
        }
        ::chmod(path.c_str(), mode);
        return path;
    }

    std::string dir_;
    std::optional<std::string> saved_;
    const std::string hex_ = random_key().to_hex();
};

TEST_F(StoreMasterKey, FromAnOwnerOnlyFile) {
    EXPECT_EQ(load_master_key(write_key_file(hex_ + "\n", 0600)).to_hex(), hex_);
    EXPECT_EQ(load_master_key(write_key_file(hex_, 0400)).to_hex(), hex_);
    EXPECT_EQ(load_master_key(write_key_file(upper(hex_) + "\r\n", 0600)).to_hex(), hex_);
}

TEST_F(StoreMasterKey, RefusesAFileReadableByGroupOrOthers) {
    for (const mode_t mode : {0640, 0604, 0644, 0660}) {
        const std::string path = write_key_file(hex_ + "\n", mode);
        const std::string why = error_of([&] { load_master_key(path); });
        EXPECT_NE(why.find("accessible by group or others"), std::string::npos) << why;
        EXPECT_NE(why.find("chmod 600"), std::string::npos) << why;
        EXPECT_EQ(why.find(hex_), std::string::npos);
    }
}

TEST_F(StoreMasterKey, RefusesMalformedAndMissingFiles) {
    for (const std::string& content :
         {std::string(), hex_.substr(2), hex_ + "00", "zz" + hex_.substr(2), hex_ + "\n\n",
          " " + hex_, std::string(64, '0')}) {
        const std::string path = write_key_file(content, 0600);
        const std::string why = error_of([&] { load_master_key(path); });
        EXPECT_NE(why.find("master key"), std::string::npos) << why;
        EXPECT_EQ(why.find(hex_), std::string::npos) << why;
    }
    const std::string why = error_of([&] { load_master_key(dir_ + "/missing"); });
    EXPECT_NE(why.find("cannot open master key file"), std::string::npos) << why;
    // A file given but unusable: no fallback to the environment.
    ::setenv("CPNS_MASTER_KEY", hex_.c_str(), 1);
    EXPECT_THROW(load_master_key(dir_ + "/missing"), StoreError);
}

TEST_F(StoreMasterKey, FromTheEnvironmentWhenNoFileIsGiven) {
    const std::string none = error_of([] { load_master_key(""); });
    EXPECT_NE(none.find("CPNS_MASTER_KEY"), std::string::npos) << none;
    ::setenv("CPNS_MASTER_KEY", hex_.c_str(), 1);
    EXPECT_EQ(load_master_key("").to_hex(), hex_);
    ::setenv("CPNS_MASTER_KEY", "not-hex", 1);
    const std::string bad = error_of([] { load_master_key(""); });
    EXPECT_NE(bad.find("malformed master key in environment variable CPNS_MASTER_KEY"),
              std::string::npos)
        << bad;
}

// --- open_store --------------------------------------------------------------------------------

TEST(StoreOpen, SqliteUrlsAndFileSettings) {
    const std::string dir = make_temp_dir();
    const SecretKey master = random_key();
    for (const std::string& url :
         {"sqlite:" + dir + "/a.db", dir + "/b.db", "sqlite://" + dir + "/c.db"}) {
        const auto s = open_store(url, master);
        EXPECT_EQ(s->backend(), "sqlite") << url;
        s->put_entity(entity("pne-1", EntityKind::kPne));
    }
    for (const char* file : {"/a.db", "/b.db", "/c.db"}) {
        struct stat st {};
        ASSERT_EQ(::stat((dir + file).c_str(), &st), 0) << file;
        EXPECT_EQ(st.st_mode & 0777, 0600u) << file;
    }
    // WAL is a property of the file: a fresh connection sees it.
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((dir + "/a.db").c_str(), &db), SQLITE_OK);
    sqlite3_stmt* stmt = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &stmt, nullptr), SQLITE_OK);
    ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0))), "wal");
    sqlite3_finalize(stmt);
    sqlite3_close(db);

    EXPECT_THROW(open_store("sqlite:" + dir + "/no/such/dir/x.db", master), StoreError);
    EXPECT_THROW(open_store("", master), StoreError);
    EXPECT_THROW(open_store("sqlite:", master), StoreError);
    EXPECT_THROW(open_store("sqlite:" + dir + "/d.db", SecretKey()), StoreError);
    std::error_code ec;
    fs::remove_all(dir, ec);
}

// The number of entities another process sees in the SQLite file at `path` (-1: it could not
// read them): a new program (python3's sqlite3 module) that opens the file, counts and closes
// it, as cpnsctl does. Not a fork() of this process: the child would inherit SQLite's own table
// of the locks this process holds and take them for its own.
int entities_seen_by_another_process(const std::string& path) {
    const std::string cmd =
        "python3 -c 'import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "print(c.execute(\"SELECT COUNT(*) FROM entities\").fetchone()[0]); c.close()' " +
        path + " 2>&1";
    FILE* p = ::popen(cmd.c_str(), "r");
    if (!p) return -1;
    std::array<char, 256> buf{};
    std::string out;
    while (std::fgets(buf.data(), buf.size(), p)) out += buf.data();
    if (::pclose(p) != 0) {
        ADD_FAILURE() << "python3 could not read " << path << ": " << out;
        return -1;
    }
    return std::atoi(out.c_str());
}

// A second connection of the same process (the management API's, next to the server's) must
// not drop the first one's locks: a raw open()/close() of the file did (close() releases every
// POSIX lock of the process on it), and another process closing the file then took it for
// unused and unlinked the -wal file the first connection went on writing to. Its later commits
// were never seen by another process.
TEST(StoreOpen, ASecondConnectionLeavesTheFirstOnesWritesVisibleToOtherProcesses) {
    const std::string dir = make_temp_dir();
    const std::string path = dir + "/shared.db";
    const SecretKey master = random_key();
    const auto first = open_store("sqlite:" + path, master);
    first->put_entity(entity("pne-1", EntityKind::kPne));
    const auto second = open_store("sqlite:" + path, master);
    EXPECT_EQ(entities_seen_by_another_process(path), 1);
    first->put_entity(entity("pne-2", EntityKind::kPne));
    EXPECT_EQ(entities_seen_by_another_process(path), 2);
    second->put_entity(entity("pne-3", EntityKind::kPne));
    EXPECT_EQ(entities_seen_by_another_process(path), 3);
    std::error_code ec;
    fs::remove_all(dir, ec);
}

TEST(StoreOpen, PostgresqlUrlsAndConninfoGoToLibpq) {
    const SecretKey master = random_key();
    // Nothing listens on port 1: the errors come from libpq.
    for (const std::string& url :
         {std::string("postgresql://postgres@127.0.0.1:1/x"),
          std::string("postgres://127.0.0.1:1/x"), std::string("host=127.0.0.1 port=1 dbname=x")}) {
        const std::string why = error_of([&] { open_store(url, master); });
        EXPECT_EQ(why.rfind("cannot connect to PostgreSQL", 0), 0u) << url << ": " << why;
    }
}

TEST(StoreOpen, ASqliteDatabaseOutOfSpaceFailsAsFullAndTakesWritesAgainAfterwards) {
    const std::string dir = make_temp_dir();
    const auto db = detail::open_sqlite(dir + "/full.db");
    db->run("CREATE TABLE t (b BLOB)");
    const std::int64_t pages = std::stoll(*db->run("PRAGMA page_count").rows[0][0]);
    // The file may not grow: as a full file system would answer (SQLite maps ENOSPC to this).
    db->run("PRAGMA max_page_count = " + std::to_string(pages + 2));
    const std::string blob(64 * 1024, 'x');
    StoreError::Kind kind = StoreError::Kind::kOther;
    bool failed = false;
    for (int i = 0; i < 10 && !failed; ++i) {
        try {
            detail::Transaction txn(*db, detail::Transaction::Kind::kWrite);
            db->run("INSERT INTO t VALUES ($1)", {detail::Param::blob(blob)});
            txn.commit();
        } catch (const StoreError& e) {
            failed = true;
            kind = e.kind();
        }
    }
    ASSERT_TRUE(failed);
    EXPECT_EQ(kind, StoreError::Kind::kFull);
    db->run("PRAGMA max_page_count = 1000000");  // space returns
    detail::Transaction txn(*db, detail::Transaction::Kind::kWrite);
    db->run("INSERT INTO t VALUES ($1)", {detail::Param::blob(blob)});
    txn.commit();
    std::error_code ec;
    fs::remove_all(dir, ec);
}

// Overwrites `n` bytes at `offset` of `path`.
void damage(const std::string& path, std::size_t offset, std::size_t n) {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(offset));
    const std::string junk(n, '\x5a');
    f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
}

TEST(StoreOpen, ACorruptedSqliteFileIsRefusedAtOpenWithAClearMessage) {
    const std::string dir = make_temp_dir();
    const SecretKey master = random_key();
    for (const bool header : {true, false}) {
        const std::string path = dir + (header ? "/header.db" : "/page.db");
        {
            const auto s = open_store("sqlite:" + path, master);
            provision(*s, {"gw-1"}, {"pne-1", "pne-2"});
            ASSERT_EQ(s->register_pn(inventory("gw-1", "pn-1", {"pne-1", "pne-2"})),
                      PutResult::kOk);
        }  // closed: the WAL is checkpointed into the file
        ASSERT_FALSE(fs::exists(path + "-wal") && fs::file_size(path + "-wal") > 0);
        // The header's magic string; or the b-tree page header of page 2 (a table's root).
        const std::size_t page = 4096;
        if (header)
            damage(path, 0, 16);
        else
            damage(path, page, 12);
        const std::string why = error_of([&] { open_store("sqlite:" + path, master); });
        EXPECT_NE(why.find("is corrupted or not a SQLite database"), std::string::npos)
            << (header ? "header: " : "page: ") << why;
        EXPECT_NE(why.find(path), std::string::npos) << why;
    }
    std::error_code ec;
    fs::remove_all(dir, ec);
}

TEST(StoreOpen, RefusesADatabaseFromANewerProgram) {
    const std::string dir = make_temp_dir();
    const std::string url = "sqlite:" + dir + "/s.db";
    const SecretKey master = random_key();
    open_store(url, master);
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((dir + "/s.db").c_str(), &db), SQLITE_OK);
    ASSERT_EQ(
        sqlite3_exec(db, "INSERT INTO schema_version VALUES (99, 0)", nullptr, nullptr, nullptr),
        SQLITE_OK);
    sqlite3_close(db);
    const std::string why = error_of([&] { open_store(url, master); });
    EXPECT_NE(why.find("schema version 99 is newer"), std::string::npos) << why;
    std::error_code ec;
    fs::remove_all(dir, ec);
}

}  // namespace
}  // namespace cpns::store
