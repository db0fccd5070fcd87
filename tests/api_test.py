"""The management API of cpns-server (docs/api.md) with real processes on 127.0.0.1.

A lab (a CPNS Server with --api over HTTPS with a self-signed certificate made here with the
openssl CLI, a PN GW, PNEs) runs; every endpoint is called, and every answer (status and body,
error bodies included) is validated against the OpenAPI document docs/api.yaml with
python3-jsonschema. Checked: a bad token, a read token on an admin endpoint, a malformed body,
an unknown field, a wrong type and an over-long body each get the documented error and change
nothing in the store (cpnsctl on the database before and after); the device key appears in the
provisioning and rotation answers only (never in show, list, audit or the server's log); the
rate limit answers 429; the event stream delivers the establishment of a PN made through the lab
and the lifecycle event of a revocation; the web console is served with a strict
Content-Security-Policy; cpnsctl prints the same through the API as from the database. Also:
plain HTTP on loopback when asked for, and the configurations the server must refuse; and
readiness false while a PostgreSQL store is stopped (skipped with CPNS_TEST_NO_PG=1 or when no
PostgreSQL server binaries are installed, saying why).
Needs python3-yaml and python3-jsonschema (scripts/deps.sh --with-tests).
"""

import http.client
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

import warnings

import jsonschema
import yaml

# Newer jsonschema releases deprecate RefResolver (Debian 12's 4.10 has no replacement).
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"jsonschema|__main__")

sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
from cpnslab import PneSpec, cleanup, free_port, make_lab  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = os.path.join(os.environ.get("CPNS_BINARY_DIR", "build/dev"), "apps")
CPNSCTL = os.path.join(BIN, "cpnsctl", "cpnsctl")
SERVER = os.path.join(BIN, "cpns-server", "cpns-server")
SPEC = yaml.safe_load((ROOT / "docs" / "api.yaml").read_text())
HTTP_TIMEOUT_S = 15.0
EVENT_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 20.0


def node_ref_parts(ref):
    assert ref.startswith("#/"), ref
    return ref[2:].split("/")


def deref(node):
    while isinstance(node, dict) and "$ref" in node:
        target = SPEC
        for part in node_ref_parts(node["$ref"]):
            target = target[part]
        node = target
    return node


def schema_validator(schema):
    resolver = jsonschema.RefResolver.from_schema(SPEC)
    return jsonschema.Draft202012Validator(schema, resolver=resolver)


def validate_schema_named(name, instance):
    schema_validator({"$ref": f"#/components/schemas/{name}"}).validate(instance)


class Answer:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.text = status, headers, body
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None


class Api:
    """A client of the server's API that checks every answer against docs/api.yaml."""

    def __init__(self, port, cafile=None):
        self.port, self.cafile = port, cafile
        self.bodies = []  # every answer body (to look for keys in)

    def conn(self, timeout=HTTP_TIMEOUT_S):
        if self.cafile:
            ctx = ssl.create_default_context(cafile=self.cafile)
            return http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx,
                                               timeout=timeout)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def raw(self, method, target, token=None, body=None, headers=None):
        c = self.conn()
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        c.request(method, target, body=body, headers=h)
        r = c.getresponse()
        text = r.read().decode("utf-8", "replace")
        c.close()
        self.bodies.append(text)
        return Answer(r.status, r.getheaders(), text)

    def call(self, method, template, target=None, token=None, body=None, expect=None,
             code=None, headers=None):
        """Calls `target` (default: the template itself), checks the status against `expect`,
        the error code against `code`, and the body against the document's schema for that
        path template, method and status."""
        a = self.raw(method, target or template, token, body, headers)
        if expect is not None:
            assert a.status == expect, (method, target or template, a.status, a.text)
        op = SPEC["paths"].get(template, {}).get(method.lower())
        if op is None:  # no such endpoint in the document: only the error shape is known
            validate_schema_named("Error", a.json)
        else:
            responses = op["responses"]
            assert str(a.status) in responses, (method, template, a.status, a.text)
            resp = deref(responses[str(a.status)])
            content = resp.get("content", {})
            if "application/json" in content:
                assert a.json is not None, (method, template, a.text)
                schema_validator(content["application/json"]["schema"]).validate(a.json)
        if code is not None:
            assert a.json["error"]["code"] == code, (method, template, a.text)
        return a


def openssl_cert(workdir: Path):
    cert, key = workdir / "api.crt", workdir / "api.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    os.chmod(key, 0o600)
    return cert, key


def new_token(tokens: Path, name: str, role: str) -> str:
    r = subprocess.run([CPNSCTL, "token", "new", "--name", name, "--role", role, "--tokens",
                        str(tokens)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", token), r.stdout
    return token


class EventReader(threading.Thread):
    """Reads an event stream into self.events: (type, data dict) pairs."""

    def __init__(self, api: Api, token: str):
        super().__init__(daemon=True)
        self.api, self.token = api, token
        self.events, self.status, self.error = [], None, None
        self.lock = threading.Lock()
        self.opened = threading.Event()

    def run(self):
        try:
            c = self.api.conn(timeout=EVENT_TIMEOUT_S * 2)
            c.request("GET", f"/api/v1/events?access_token={self.token}")
            r = c.getresponse()
            self.status = r.status
            self.content_type = r.getheader("Content-Type", "")
            self.opened.set()
            kind, data = None, None
            deadline = time.monotonic() + EVENT_TIMEOUT_S * 4
            while time.monotonic() < deadline:
                line = r.fp.readline()
                if not line:
                    break
                line = line.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                elif line == "" and kind:
                    with self.lock:
                        self.events.append((kind, data))
                    kind, data = None, None
        except Exception as e:  # noqa: BLE001 - reported by wait_for
            self.error = e
            self.opened.set()

    def wait_for(self, pred, timeout=EVENT_TIMEOUT_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for kind, data in self.events:
                    if pred(kind, data):
                        return kind, data
            time.sleep(0.05)
        raise AssertionError(f"no such event within {timeout}s; got {self.events} {self.error}")


class ApiLab:
    """A lab whose server serves the API with the given extra configuration lines."""

    def __init__(self, pnes, tls=True):
        self.lab = make_lab(BIN, pnes)
        self.work = self.lab.workdir
        self.tokens = self.work / "api.tokens"
        self.admin = new_token(self.tokens, "ops", "admin")
        self.reader = new_token(self.tokens, "viewer", "read")
        self.port = free_port()
        self.cafile = None
        lines = [f'api = "127.0.0.1:{self.port}"', f'api_tokens = "{self.tokens}"']
        if tls:
            cert, key = openssl_cert(self.work)
            self.cafile = str(cert)
            lines += [f'api_cert = "{cert}"', f'api_key = "{key}"']
        else:
            lines += ["api_insecure_http = true"]
        cfg = self.work / "server.toml"
        cfg.write_text(cfg.read_text() + "\n".join(lines) + "\n")
        self.api = Api(self.port, self.cafile)
        self.store = self.lab.store_url or f"sqlite:{self.work / 'server.db'}"
        (self.work / "admin.token").write_text(self.admin + "\n")
        os.chmod(self.work / "admin.token", 0o600)

    def start(self):
        self.lab.start_server()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if self.api.raw("GET", "/api/v1/health").status == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the API did not answer:\n" + self.lab.logs()[-4000:])

    def ctl_db(self, *args):
        r = subprocess.run([CPNSCTL, "--store", self.store, "--master-key-file",
                            str(self.work / "master.key"), *args], capture_output=True,
                           text=True, timeout=60)
        return r.returncode, r.stdout, r.stderr

    def ctl_api(self, *args):
        url = f"{'https' if self.cafile else 'http'}://127.0.0.1:{self.port}"
        extra = ["--api-ca", self.cafile] if self.cafile else []
        r = subprocess.run([CPNSCTL, "--api", url, "--token-file", str(self.work / "admin.token"),
                            *extra, *args], capture_output=True, text=True, timeout=60)
        return r.returncode, r.stdout, r.stderr

    def snapshot(self):
        """What a refused request must not change: the entities and the audit log."""
        _, entities, _ = self.ctl_db("list")
        _, shows, _ = self.ctl_db("show", "pne-1")
        _, audit, _ = self.ctl_db("audit", "--limit", "1000")
        _, pns, _ = self.ctl_db("pns")
        return entities, shows, audit, pns


class HttpsApiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pnes = [PneSpec("pne-1"), PneSpec("pne-2")]
        cls.t = ApiLab(cls.pnes, tls=True)
        try:
            cls.t.start()
            cls.t.lab.start_gw()
            cls.t.lab.wait_server_link()
            for p in cls.pnes:
                cls.t.lab.start_pne(p)
            cls.t.lab.wait_linked([p.id for p in cls.pnes], timeout=30)
        except BaseException:
            print(cls.t.lab.logs()[-6000:], file=sys.stderr)
            cleanup(cls.t.lab)
            raise

    @classmethod
    def tearDownClass(cls):
        cleanup(cls.t.lab)

    def setUp(self):
        self.api, self.admin, self.reader = self.t.api, self.t.admin, self.t.reader

    def test_01_health_ready_whoami(self):
        a = self.api.call("GET", "/api/v1/health", expect=200)
        self.assertEqual(a.json["status"], "ok")
        self.api.call("GET", "/api/v1/ready", expect=200)
        a = self.api.call("GET", "/api/v1/whoami", token=self.admin, expect=200)
        self.assertEqual(a.json, {"name": "ops", "role": "admin"})
        a = self.api.call("GET", "/api/v1/whoami", token=self.reader, expect=200)
        self.assertEqual(a.json, {"name": "viewer", "role": "read"})
        self.api.call("GET", "/api/v1/whoami", expect=401, code="UNAUTHORIZED")
        # The scheme is case-insensitive; anything but Bearer is no token.
        a = self.api.call("GET", "/api/v1/whoami", headers={"Authorization": f"bearer {self.reader}"},
                          expect=200)
        self.api.call("GET", "/api/v1/whoami", headers={"Authorization": f"Basic {self.reader}"},
                      expect=401, code="UNAUTHORIZED")
        self.api.call("GET", "/api/v1/whoami", token="0" * 64, expect=401, code="UNAUTHORIZED")
        self.api.call("GET", "/api/v1/whoami", target="/api/v1/whoami?x=1", token=self.reader,
                      expect=400, code="MALFORMED_REQUEST")
        self.api.call("GET", "/api/v1/nothing-here", token=self.reader, expect=404,
                      code="NOT_FOUND")

    def test_02_events_establishment_and_revoke(self):
        reader = EventReader(self.api, self.reader)
        type(self).events = reader  # test_05 reads the deletion from it
        reader.start()
        self.assertTrue(reader.opened.wait(HTTP_TIMEOUT_S))
        self.assertEqual(reader.status, 200, reader.error)
        self.assertTrue(reader.content_type.startswith("text/event-stream"), reader.content_type)
        rc, out, err = self.t.lab.pne_setup(self.pnes[0], "all")
        self.assertEqual(rc, 0, err[-2000:])
        self.assertTrue(out.get("success"), out)
        kind, data = reader.wait_for(lambda k, d: k == "establishment")
        validate_schema_named("EstablishmentEvent", data)
        self.assertEqual(data["outcome"], "registered")
        self.assertEqual(data["flow"], "pne_initiated")
        self.assertEqual(data["gw_id"], "gw-1")
        self.assertEqual(data["members"], 2)
        # A PN GW initiated establishment (5.2.1.2) too.
        rc, out = self.t.lab.gw_invite(["pne-2"])
        self.assertEqual(rc, 0, out)
        kind, data = reader.wait_for(lambda k, d: k == "establishment"
                                     and d["flow"] == "gw_initiated")
        validate_schema_named("EstablishmentEvent", data)
        self.assertEqual(data["outcome"], "registered")
        # A revocation through the API reaches the stream as a lifecycle event.
        self.api.call("POST", "/api/v1/entities", token=self.admin,
                      body={"id": "pne-rev", "kind": "pne"}, expect=201)
        self.api.call("POST", "/api/v1/entities/{id}/revoke", "/api/v1/entities/pne-rev/revoke",
                      token=self.admin, expect=200)
        kind, data = reader.wait_for(lambda k, d: k == "lifecycle" and d["subject"] == "pne-rev")
        validate_schema_named("LifecycleEvent", data)
        self.assertEqual(data["action"], "revoke")
        # Without a token: refused.
        self.api.call("GET", "/api/v1/events", expect=401, code="UNAUTHORIZED")
        # At most four streams at once: the fifth is refused (the four stay open to the end).
        more = [EventReader(self.api, self.reader) for _ in range(3)]
        for r in more:
            r.start()
            self.assertTrue(r.opened.wait(HTTP_TIMEOUT_S))
            self.assertEqual(r.status, 200, r.error)
        a = self.api.call("GET", "/api/v1/events", f"/api/v1/events?access_token={self.reader}",
                          expect=429, code="RATE_LIMITED")
        self.assertIn("too many event streams", a.json["error"]["message"])

    def test_03_entities(self):
        a = self.api.call("GET", "/api/v1/entities", token=self.reader, expect=200)
        ids = [e["id"] for e in a.json["entities"]]
        self.assertIn("gw-1", ids)
        self.assertIn("pne-1", ids)
        a = self.api.call("GET", "/api/v1/entities", "/api/v1/entities?kind=gw", token=self.reader,
                          expect=200)
        self.assertEqual([e["id"] for e in a.json["entities"]], ["gw-1"])
        self.api.call("GET", "/api/v1/entities", "/api/v1/entities?kind=cat", token=self.reader,
                      expect=400, code="MALFORMED_REQUEST")
        a = self.api.call("GET", "/api/v1/entities/{id}", "/api/v1/entities/pne-1",
                          token=self.reader, expect=200)
        self.assertEqual((a.json["id"], a.json["kind"], a.json["status"]),
                         ("pne-1", "pne", "active"))
        self.api.call("GET", "/api/v1/entities/{id}", "/api/v1/entities/nobody",
                      token=self.reader, expect=404, code="NOT_FOUND")

        before = self.t.snapshot()
        a = self.api.call("POST", "/api/v1/entities", token=self.admin,
                          body={"id": "pne-new", "kind": "pne", "device_type": "watch"},
                          expect=201)
        key = a.json["key"]
        self.assertEqual(a.json["entity"]["device_type"], "watch")
        self.assertNotEqual(self.t.snapshot()[0], before[0])
        self.api.call("POST", "/api/v1/entities", token=self.admin,
                      body={"id": "pne-new", "kind": "pne"}, expect=409, code="CONFLICT")
        # Status changes, and the one refused.
        for action, status in (("disable", "disabled"), ("enable", "active"),
                               ("revoke", "revoked")):
            a = self.api.call("POST", "/api/v1/entities/{id}/" + action,
                              f"/api/v1/entities/pne-new/{action}", token=self.admin, expect=200)
            self.assertEqual(a.json["status"], status)
        mid = self.t.snapshot()
        self.api.call("POST", "/api/v1/entities/{id}/enable", "/api/v1/entities/pne-new/enable",
                      token=self.admin, expect=409, code="CONFLICT")
        self.api.call("POST", "/api/v1/entities/{id}/disable", "/api/v1/entities/nobody/disable",
                      token=self.admin, expect=404, code="NOT_FOUND")
        self.api.call("POST", "/api/v1/entities/{id}/rotate", "/api/v1/entities/pne-new/rotate",
                      token=self.admin, body={"grace": "1h"}, expect=409, code="CONFLICT")
        self.assertEqual(self.t.snapshot(), mid)
        # Rotation: a new key, once.
        a = self.api.call("POST", "/api/v1/entities/{id}/rotate", "/api/v1/entities/pne-2/rotate",
                          token=self.admin, body={"grace": "1h"}, expect=200)
        rotated = a.json["key"]
        self.assertEqual(a.json["key_version"], 2)
        self.assertIsNotNone(a.json["entity"]["previous_key_valid_until_ms"])
        self.api.call("POST", "/api/v1/entities/{id}/rotate", "/api/v1/entities/pne-2/rotate",
                      token=self.admin, body={"grace": "forever"}, expect=400,
                      code="MALFORMED_REQUEST")
        # The keys appear in no other answer, nor in the audit log, nor in the server's log.
        self.api.bodies = [b for b in self.api.bodies if key not in b and rotated not in b]
        for target in ("/api/v1/entities", "/api/v1/entities/pne-new", "/api/v1/entities/pne-2",
                       "/api/v1/audit?limit=1000", "/api/v1/pns"):
            text = self.api.raw("GET", target, token=self.admin).text
            self.assertNotIn(key, text)
            self.assertNotIn(rotated, text)
        logs = self.t.lab.logs()
        for secret in (key, rotated, self.admin, self.reader):
            self.assertNotIn(secret, logs)
            self.assertNotIn(secret, self.t.ctl_db("audit", "--limit", "1000")[1])
        self.assertRegex(logs, r"api POST /api/v1/entities 201 token=ops \d+ ms")

    def test_04_bad_input_changes_nothing(self):
        before = self.t.snapshot()
        new = {"id": "pne-bad", "kind": "pne"}
        # A bad token, and none.
        self.api.call("POST", "/api/v1/entities", token="f" * 64, body=new, expect=401,
                      code="UNAUTHORIZED")
        self.api.call("POST", "/api/v1/entities", body=new, expect=401, code="UNAUTHORIZED")
        # A read token on admin endpoints.
        self.api.call("POST", "/api/v1/entities", token=self.reader, body=new, expect=403,
                      code="FORBIDDEN")
        self.api.call("POST", "/api/v1/entities/{id}/revoke", "/api/v1/entities/pne-1/revoke",
                      token=self.reader, expect=403, code="FORBIDDEN")
        self.api.call("DELETE", "/api/v1/pns/{gw_id}/{pn_id}", "/api/v1/pns/gw-1/x",
                      token=self.reader, expect=403, code="FORBIDDEN")
        # Malformed bodies, wrong types, missing fields.
        for body in ('{"id": "pne-bad",', "[1, 2]", '"pne-bad"', "not json"):
            self.api.call("POST", "/api/v1/entities", token=self.admin, body=body,
                          headers={"Content-Type": "application/json"}, expect=400,
                          code="MALFORMED_REQUEST")
        self.api.call("POST", "/api/v1/entities", token=self.admin,
                      body={"id": 7, "kind": "pne"}, expect=400, code="MALFORMED_REQUEST")
        self.api.call("POST", "/api/v1/entities", token=self.admin, body={"kind": "pne"},
                      expect=400, code="MALFORMED_REQUEST")
        self.api.call("POST", "/api/v1/entities", token=self.admin,
                      body={"id": "pne-bad", "kind": "router"}, expect=400,
                      code="MALFORMED_REQUEST")
        self.api.call("POST", "/api/v1/entities", token=self.admin,
                      body={"id": "bad id!", "kind": "pne"}, expect=400, code="MALFORMED_REQUEST")
        # Unknown fields.
        self.api.call("POST", "/api/v1/entities", token=self.admin,
                      body={"id": "pne-bad", "kind": "pne", "eukey": "00" * 32}, expect=400,
                      code="UNKNOWN_FIELD")
        self.api.call("POST", "/api/v1/entities/{id}/disable", "/api/v1/entities/pne-1/disable",
                      token=self.admin, body={"why": "test"}, expect=400, code="UNKNOWN_FIELD")
        # An over-long request line, an over-long header.
        self.api.call("GET", "/api/v1/entities/{id}", "/api/v1/entities/" + "a" * 9000,
                      token=self.admin, expect=400, code="MALFORMED_REQUEST")
        self.api.call("GET", "/api/v1/whoami", token=self.admin, headers={"X-Big": "b" * 9000},
                      expect=400, code="MALFORMED_REQUEST")
        # An over-long body.
        big = {"id": "pne-bad", "kind": "pne", "device_type": "x" * (17 * 1024)}
        self.api.call("POST", "/api/v1/entities", token=self.admin, body=big, expect=413,
                      code="BODY_TOO_LARGE")
        self.assertEqual(self.t.snapshot(), before)

    def test_05_pns_and_audit(self):
        if not self.api.raw("GET", "/api/v1/pns", token=self.reader).json["pns"]:
            rc, out, err = self.t.lab.pne_setup(self.pnes[0], "all")
            self.assertEqual(rc, 0, err[-2000:])
        a = self.api.call("GET", "/api/v1/pns", token=self.reader, expect=200)
        self.assertTrue(a.json["pns"])
        # The PN pne-1 asked for (test_02 also made one of the PN GW's with pne-2 alone).
        pn = next(p for p in a.json["pns"] if any(m["pne_id"] == "pne-1" for m in p["members"]))
        self.assertEqual(pn["gw_id"], "gw-1")
        self.assertFalse(pn["orphaned"])
        a = self.api.call("GET", "/api/v1/pns", "/api/v1/pns?gw=gw-1", token=self.reader,
                          expect=200)
        self.assertTrue(a.json["pns"])
        a = self.api.call("GET", "/api/v1/pns", "/api/v1/pns?gw=gw-9", token=self.reader,
                          expect=200)
        self.assertEqual(a.json["pns"], [])
        a = self.api.call("GET", "/api/v1/pns", "/api/v1/pns?orphaned=true", token=self.reader,
                          expect=200)
        self.assertEqual(a.json["pns"], [])
        self.api.call("GET", "/api/v1/pns", "/api/v1/pns?orphaned=maybe", token=self.reader,
                      expect=400, code="MALFORMED_REQUEST")
        path = f"/api/v1/pns/gw-1/{pn['pn_id']}"
        a = self.api.call("GET", "/api/v1/pns/{gw_id}/{pn_id}", path, token=self.reader,
                          expect=200)
        self.assertEqual(a.json["pn_id"], pn["pn_id"])
        self.assertEqual(sorted(m["pne_id"] for m in a.json["members"]), ["pne-1", "pne-2"])
        self.api.call("GET", "/api/v1/pns/{gw_id}/{pn_id}", "/api/v1/pns/gw-1/none",
                      token=self.reader, expect=404, code="NOT_FOUND")

        a = self.api.call("GET", "/api/v1/audit", "/api/v1/audit?limit=3", token=self.reader,
                          expect=200)
        self.assertLessEqual(len(a.json["records"]), 3)
        for bad in ("0", "1001", "ten", "-1"):
            self.api.call("GET", "/api/v1/audit", f"/api/v1/audit?limit={bad}",
                          token=self.reader, expect=400, code="MALFORMED_REQUEST")

        # cpnsctl prints the same through the API as from the database.
        for args in (["list"], ["list", "--kind", "pne"], ["show", "pne-1"], ["show", "gw-1"],
                     ["pns"], ["pns", "--orphaned"], ["audit", "--limit", "30"]):
            db, api = self.t.ctl_db(*args), self.t.ctl_api(*args)
            self.assertEqual(db[0], 0, db)
            self.assertEqual(api, db, args)
        db, api = self.t.ctl_db("show", "nobody"), self.t.ctl_api("show", "nobody")
        self.assertEqual((db[0], db[2]), (1, "cpnsctl: no entity nobody\n"))
        self.assertEqual(api, db)

        # Deleting the PN: once.
        a = self.api.call("DELETE", "/api/v1/pns/{gw_id}/{pn_id}", path, token=self.admin,
                          expect=200)
        self.assertTrue(a.json["deleted"])
        if getattr(type(self), "events", None):
            kind, data = self.events.wait_for(
                lambda k, d: k == "lifecycle" and d["action"] == "delete"
                and d["pn_id"] == pn["pn_id"])
            validate_schema_named("LifecycleEvent", data)
            self.assertEqual(data["gw_id"], "gw-1")
        self.api.call("DELETE", "/api/v1/pns/{gw_id}/{pn_id}", path, token=self.admin,
                      expect=404, code="NOT_FOUND")
        a = self.api.call("GET", "/api/v1/audit", "/api/v1/audit?limit=5", token=self.reader,
                          expect=200)
        self.assertTrue(any(r["actor"] == "ops" and "pn delete" in r["detail"]
                            for r in a.json["records"]), a.json)

    def test_06_cpnsctl_api_writes(self):
        work = self.t.work
        rc, out, err = self.t.ctl_api("provision", "pne-ctl", "--key-out", str(work / "c.key"))
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, f"provisioned pne pne-ctl; its EUKey is in {work / 'c.key'} "
                              "(give it to the device as eukey_file; mode 0600)\n")
        self.assertEqual(os.stat(work / "c.key").st_mode & 0o777, 0o600)
        rc, out, err = self.t.ctl_api("disable", "pne-ctl")
        self.assertEqual((rc, out), (0, "pne-ctl is now disabled; its next authentication "
                                        "fails with 'revoked'\n"), err)
        rc, out, _ = self.t.ctl_db("show", "pne-ctl")
        self.assertIn("status:   disabled", out)
        rc, out, err = self.t.ctl_api("revoke", "pne-ctl")
        rc, out, err = self.t.ctl_api("enable", "pne-ctl")
        self.assertEqual((rc, err), (2, "cpnsctl: pne-ctl is revoked; revocation is final "
                                        "(provision a new entity)\n"))

    def test_07_rate_limit(self):
        # Eight clients at once: faster than the refill.
        statuses, bodies, lock = [], [], threading.Lock()

        def client():
            c = self.api.conn()
            try:
                for _ in range(40):
                    c.request("GET", "/api/v1/whoami",
                              headers={"Authorization": f"Bearer {self.reader}"})
                    r = c.getresponse()
                    body = r.read()
                    with lock:
                        statuses.append(r.status)
                        if r.status == 429:
                            bodies.append(json.loads(body))
            finally:
                c.close()

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        for body in bodies:
            validate_schema_named("Error", body)
            self.assertEqual(body["error"]["code"], "RATE_LIMITED")
        self.assertIn(429, statuses)
        # Another token has its own bucket.
        self.api.call("GET", "/api/v1/whoami", token=self.admin, expect=200)
        # Failed authentications are limited per client address.
        refused = []

        def guesser():
            for _ in range(20):
                refused.append(self.api.raw("GET", "/api/v1/whoami", token="e" * 64).status)

        threads = [threading.Thread(target=guesser) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        self.assertIn(429, refused)
        self.assertEqual(set(refused), {401, 429})
        time.sleep(2.5)  # both buckets full again for the tests that follow

    def test_08_console(self):
        a = self.api.raw("GET", "/")
        self.assertEqual(a.status, 200)
        headers = {k.lower(): v for k, v in a.headers}
        self.assertTrue(headers["content-type"].startswith("text/html"))
        self.assertIn("default-src 'self'", headers["content-security-policy"])
        self.assertEqual(a.text, (ROOT / "web" / "console" / "index.html").read_text())
        a = self.api.raw("GET", "/console/index.html")
        self.assertEqual(a.status, 200)
        self.api.call("GET", "/console/missing.js", expect=404, code="NOT_FOUND")


def run_server(config_text: str, workdir: Path, timeout=10):
    cfg = workdir / "bad.toml"
    cfg.write_text(config_text)
    return subprocess.run([SERVER, "--config", str(cfg)], capture_output=True, text=True,
                          timeout=timeout)


class HttpAndConfigTest(unittest.TestCase):
    def test_plain_http_on_loopback(self):
        t = ApiLab([PneSpec("pne-1")], tls=False)
        try:
            t.start()
            t.api.call("GET", "/api/v1/health", expect=200)
            t.api.call("GET", "/api/v1/whoami", token=t.admin, expect=200)
            for args in (["list"], ["audit"]):
                self.assertEqual(t.ctl_api(*args), t.ctl_db(*args))
            # One request per connection.
            a = t.api.call("GET", "/api/v1/health", expect=200)
            self.assertEqual(dict((k.lower(), v) for k, v in a.headers).get("connection"),
                             "close")
            # A client that stops in the middle of its request is dropped after the read
            # timeout (kApiReadTimeoutS, 10 s).
            import socket
            with socket.create_connection(("127.0.0.1", t.port), timeout=30) as sock:
                sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
                start = time.monotonic()
                data = b""
                while True:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                waited = time.monotonic() - start
            self.assertGreaterEqual(waited, 8.0)
            self.assertLess(waited, 25.0)
            self.assertNotIn(b"200 OK", data)
        finally:
            cleanup(t.lab)

    def test_refused_configurations(self):
        work = Path(tempfile.mkdtemp(prefix="cpns-api-"))
        try:
            master = work / "master.key"
            master.write_text("11" * 32 + "\n")
            os.chmod(master, 0o600)
            tokens = work / "tokens"
            new_token(tokens, "ops", "admin")
            base = (f'listen = "127.0.0.1:0"\nstore = "sqlite:{work / "s.db"}"\n'
                    f'master_key_file = "{master}"\napi_tokens = "{tokens}"\n')
            # Plain HTTP on a non-loopback address.
            r = run_server(base + f'api = "0.0.0.0:{free_port()}"\napi_insecure_http = true\n',
                           work)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("only allowed on a loopback address", r.stderr)
            # Neither TLS files nor plain HTTP.
            r = run_server(base + f'api = "127.0.0.1:{free_port()}"\n', work)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("HTTPS needs api_cert and api_key", r.stderr)
            # A token file others may read.
            os.chmod(tokens, 0o644)
            r = run_server(base + f'api = "{free_port()}"\napi_insecure_http = true\n', work)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("chmod 600", r.stderr)
            os.chmod(tokens, 0o600)
            # A malformed token line.
            with open(tokens, "a") as f:
                f.write("bob superuser 00\n")
            r = run_server(base + f'api = "{free_port()}"\napi_insecure_http = true\n', work)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("neither admin nor read", r.stderr)
        finally:
            shutil.rmtree(work, ignore_errors=True)


class ReadinessTest(unittest.TestCase):
    def test_ready_false_while_store_unreachable(self):
        if os.environ.get("CPNS_TEST_NO_PG") == "1":
            self.skipTest("CPNS_TEST_NO_PG=1: PostgreSQL cases skipped on purpose")
        if not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")):
            self.skipTest("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin): "
                          "scripts/deps.sh --with-tests installs them")
        pgdir = Path(tempfile.mkdtemp(prefix="cpns-api-pg-"))
        os.chmod(pgdir, 0o755)  # the postgres OS user (as root) must reach its data directory
        script = str(ROOT / "scripts" / "pg-test-server.sh")
        r = subprocess.run(["bash", script, "start", str(pgdir / "pg")], capture_output=True,
                           text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        url = r.stdout.strip().splitlines()[-1]
        stopped = False
        lab = make_lab(BIN, [PneSpec("pne-1")], store_url=url)
        try:
            tokens = lab.workdir / "api.tokens"
            token = new_token(tokens, "ops", "read")
            port = free_port()
            cfg = lab.workdir / "server.toml"
            cfg.write_text(cfg.read_text() + f'api = "127.0.0.1:{port}"\napi_tokens = "{tokens}"\n'
                           "api_insecure_http = true\n")
            lab.start_server()
            api = Api(port)
            api.call("GET", "/api/v1/ready", expect=200)
            api.call("GET", "/api/v1/entities", token=token, expect=200)
            subprocess.run(["bash", script, "stop", str(pgdir / "pg")], capture_output=True,
                           timeout=120)
            stopped = True
            deadline = time.monotonic() + READY_TIMEOUT_S
            a = None
            while time.monotonic() < deadline:
                a = api.call("GET", "/api/v1/ready")
                if a.status == 503:
                    break
                time.sleep(0.2)
            self.assertEqual(a.status, 503, a.text)
            self.assertFalse(a.json["ready"])
            self.assertFalse(a.json["store_reachable"])
            api.call("GET", "/api/v1/entities", token=token, expect=503, code="STORE_UNAVAILABLE")
            api.call("GET", "/api/v1/health", expect=200)
        except BaseException:
            print(lab.logs()[-6000:], file=sys.stderr)
            raise
        finally:
            cleanup(lab)
            if not stopped:
                subprocess.run(["bash", script, "stop", str(pgdir / "pg")], capture_output=True,
                               timeout=120)
            shutil.rmtree(pgdir, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
