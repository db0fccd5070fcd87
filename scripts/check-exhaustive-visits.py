#!/usr/bin/env python3
"""Shows that every adapter handles every effect of its role: for each handler of each
std::visit(Overloaded{...}) over a role's effects, removes that one handler, compiles the
adapter's object file, and expects the build to fail in std::visit. Restores the file after
each try. Slow (one compile per handler); a developer's check, not part of CI.

Usage: scripts/check-exhaustive-visits.py BUILD_DIR [FILE ...]
"""
import pathlib
import re
import subprocess
import sys

ADAPTERS = {
    "src/sim/sim.cpp": "src/sim/CMakeFiles/cpns_sim.dir/sim.cpp.o",
    "src/daemon/gw_daemon.cpp": "src/daemon/CMakeFiles/cpns_daemon.dir/gw_daemon.cpp.o",
    "src/daemon/pne_daemon.cpp": "src/daemon/CMakeFiles/cpns_daemon.dir/pne_daemon.cpp.o",
    "src/daemon/server_daemon.cpp": "src/daemon/CMakeFiles/cpns_daemon.dir/server_daemon.cpp.o",
    "apps/cpns-load/main.cpp": "apps/cpns-load/CMakeFiles/cpns-load.dir/main.cpp.o",
}


def skip_literal(text, i):
    """Index after the string/char literal or comment that starts at i."""
    if text.startswith("//", i):
        return text.index("\n", i)
    if text.startswith("/*", i):
        return text.index("*/", i) + 2
    quote = text[i]
    i += 1
    while text[i] != quote:
        i += 2 if text[i] == "\\" else 1
    return i + 1


def handlers(text):
    """(start, end) of each top-level lambda inside each Overloaded{...} (end includes ',')."""
    out = []
    for m in re.finditer(r"std::visit\(Overloaded\{", text):
        i, depth = m.end(), 1
        while depth:
            c = text[i]
            if c in "\"'" or text.startswith(("//", "/*"), i):
                i = skip_literal(text, i)
                continue
            if c in "([{":
                if depth == 1 and text.startswith("[&](", i):
                    start = i
                    j, d = i, 0
                    while True:
                        if text[j] in "\"'" or text.startswith(("//", "/*"), j):
                            j = skip_literal(text, j)
                            continue
                        if text[j] in "([{":
                            d += 1
                        elif text[j] in ")]}":
                            d -= 1
                            if d == 0 and text[j] == "}":
                                break
                        j += 1
                    end = j + 1
                    if text[end] == ",":
                        end += 1
                    out.append((start, end))
                    i = end
                    continue
                depth += 1
            elif c in ")]}":
                depth -= 1
            i += 1
    return out


def main():
    build = pathlib.Path(sys.argv[1])
    files = sys.argv[2:] or list(ADAPTERS)
    failures = 0
    for name in files:
        path = pathlib.Path(name)
        original = path.read_text()
        found = handlers(original)
        print(f"{name}: {len(found)} handlers")
        try:
            for start, end in found:
                first = original[start:end].split("\n")[0].strip()
                path.write_text(original[:start] + original[end:])
                r = subprocess.run(["ninja", "-C", str(build), ADAPTERS[name]],
                                   capture_output=True, text=True)
                broke = r.returncode != 0 and ("visit" in r.stdout or "visit" in r.stderr)
                print(f"  {'ok  ' if broke else 'FAIL'} without {first[:70]}")
                failures += not broke
        finally:
            path.write_text(original)
    subprocess.run(["ninja", "-C", str(build)], capture_output=True)
    print(f"{failures} handler(s) whose removal still built")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
