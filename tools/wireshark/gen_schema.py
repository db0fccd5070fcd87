#!/usr/bin/env python3
"""Generates the message table of the Wireshark dissector (tools/wireshark/cpns.lua) from the
one message schema, proto/cpns/messages.proto.

The dissector decodes the Protocol Buffers wire format itself, driven by this table: every
message reachable from cpns.v1.Envelope (the messages that cross a link) and every enum they
use. The table sits in cpns.lua between the lines "-- BEGIN GENERATED SCHEMA" and
"-- END GENERATED SCHEMA".

Usage:
  gen_schema.py          rewrite the table in cpns.lua from the .proto
  gen_schema.py --check  exit 1 (and say what differs) if cpns.lua is not what the .proto gives
  --proto FILE, --lua FILE: other files than the repository's (the test checks a changed copy)

The parser understands the subset of proto3 the schema uses (top-level messages and enums,
scalar, enum and message fields, repeated, optional, oneof, map). Anything else stops it with
an error naming the line, so a schema change it cannot follow is noticed rather than dropped.
Python 3 standard library only.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE.parent.parent / "proto" / "cpns" / "messages.proto"
LUA = HERE / "cpns.lua"
BEGIN = "-- BEGIN GENERATED SCHEMA (tools/wireshark/gen_schema.py; do not edit by hand)"
END = "-- END GENERATED SCHEMA"
ROOT = "Envelope"
SCALARS = {"string", "bytes", "bool", "uint32", "uint64", "int32", "int64", "sint32", "sint64",
           "fixed32", "fixed64", "sfixed32", "sfixed64", "double", "float"}


class SchemaError(Exception):
    pass


def tokens(text: str):
    """(token, line) pairs; comments dropped."""
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("//", 1)[0]
        for tok in re.findall(r'"[^"]*"|<[^>]*>|[A-Za-z_][A-Za-z0-9_.]*|\d+|[{}=;]', line):
            yield tok, n


def parse(text: str):
    enums: dict[str, dict[int, str]] = {}
    messages: dict[str, list[dict]] = {}
    toks = list(tokens(text))
    i = 0

    def expect(value: str):
        nonlocal i
        if i >= len(toks) or toks[i][0] != value:
            got = toks[i] if i < len(toks) else ("end of file", "?")
            raise SchemaError(f"line {got[1]}: expected {value!r}, got {got[0]!r}")
        i += 1

    def skip_statement():
        nonlocal i
        while toks[i][0] != ";":
            i += 1
        i += 1

    while i < len(toks):
        tok, line = toks[i]
        if tok in ("syntax", "package", "import", "option"):
            skip_statement()
        elif tok == "enum":
            name = toks[i + 1][0]
            i += 2
            expect("{")
            values = {}
            while toks[i][0] != "}":
                if toks[i][0] == "option":
                    skip_statement()
                    continue
                vname, num = toks[i][0], toks[i + 2][0]
                i += 1
                expect("=")
                i += 1
                expect(";")
                values[int(num)] = vname
            i += 1
            enums[name] = values
        elif tok == "message":
            name = toks[i + 1][0]
            i += 2
            expect("{")
            fields: list[dict] = []
            oneof = ""
            while True:
                tok, line = toks[i]
                if tok == "}":
                    i += 1
                    if oneof:
                        oneof = ""
                        continue
                    break
                if tok in ("message", "enum", "reserved", "extensions"):
                    raise SchemaError(f"line {line}: '{tok}' inside message {name} is not "
                                      "supported by gen_schema.py")
                if tok == "oneof":
                    oneof = toks[i + 1][0]
                    i += 2
                    expect("{")
                    continue
                label = ""
                if tok in ("repeated", "optional"):
                    label = tok
                    i += 1
                ftype = toks[i][0]
                if ftype == "map":
                    ftype = "map" + toks[i + 1][0]
                    i += 1
                fname = toks[i + 1][0]
                i += 2
                expect("=")
                number = int(toks[i][0])
                i += 1
                expect(";")
                fields.append({"name": fname, "type": ftype, "number": number,
                               "repeated": label == "repeated", "oneof": oneof})
            messages[name] = fields
        else:
            raise SchemaError(f"line {line}: unexpected {tok!r}")
    return enums, messages


def reachable(messages: dict, enums: dict):
    """Messages and enums reachable from the Envelope, in a stable order."""
    seen_m: list[str] = []
    seen_e: list[str] = []
    pending = [ROOT]
    while pending:
        name = pending.pop(0)
        if name in seen_m:
            continue
        seen_m.append(name)
        for f in messages[name]:
            t = f["type"]
            if t.startswith("map"):
                raise SchemaError(f"{name}.{f['name']}: map fields in sent messages are not "
                                  "supported by gen_schema.py")
            if t in SCALARS:
                continue
            if t in enums:
                if t not in seen_e:
                    seen_e.append(t)
            elif t in messages:
                pending.append(t)
            else:
                raise SchemaError(f"{name}.{f['name']}: unknown type {t}")
    return seen_m, seen_e


def lua_table(enums: dict, messages: dict) -> str:
    msg_names, enum_names = reachable(messages, enums)
    out = [BEGIN, "local ENUMS = {"]
    for e in sorted(enum_names):
        out.append(f"  {e} = {{")
        for num, vname in sorted(enums[e].items()):
            out.append(f'    [{num}] = "{vname}",')
        out.append("  },")
    out.append("}")
    out.append("-- kind: the wire handling; type: the .proto type (a message or enum name, or a "
               "scalar)")
    out.append("local MESSAGES = {")
    for m in sorted(msg_names):
        out.append(f"  {m} = {{")
        for f in sorted(messages[m], key=lambda f: f["number"]):
            t = f["type"]
            kind = "message" if t in messages else "enum" if t in enums else t
            attrs = [f'name = "{f["name"]}"', f'kind = "{kind}"', f'type = "{t}"']
            if f["repeated"]:
                attrs.append("repeated = true")
            if f["oneof"]:
                attrs.append(f'oneof = "{f["oneof"]}"')
            out.append(f"    [{f['number']}] = {{ {', '.join(attrs)} }},")
        out.append("  },")
    out.append("}")
    out.append(END)
    return "\n".join(out)


def main(argv: list[str]) -> int:
    import argparse
    ap = argparse.ArgumentParser(description="The dissector's message table from the .proto")
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 if different")
    ap.add_argument("--proto", type=Path, default=PROTO)
    ap.add_argument("--lua", type=Path, default=LUA)
    args = ap.parse_args(argv)
    check, proto, lua_path = args.check, args.proto, args.lua
    try:
        enums, messages = parse(proto.read_text())
        table = lua_table(enums, messages)
    except SchemaError as e:
        print(f"gen_schema.py: {proto}: {e}", file=sys.stderr)
        return 2
    lua = lua_path.read_text()
    start, stop = lua.find(BEGIN), lua.find(END)
    if start < 0 or stop < start:
        print(f"gen_schema.py: {lua_path} has no generated-schema markers", file=sys.stderr)
        return 2
    current = lua[start:stop + len(END)]
    if check:
        if current != table:
            import difflib
            diff = difflib.unified_diff(current.splitlines(), table.splitlines(),
                                        "cpns.lua (current)", f"from {proto.name}", lineterm="")
            print("gen_schema.py: the dissector's message table is out of date with "
                  f"{proto.name}; run tools/wireshark/gen_schema.py", file=sys.stderr)
            print("\n".join(diff), file=sys.stderr)
            return 1
        return 0
    lua_path.write_text(lua[:start] + table + lua[stop + len(END):])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
