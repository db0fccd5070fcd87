#!/usr/bin/env bash
# The security explorer (cpns-explore) over every standard scenario, checking every property,
# bounded in time (at most a few seconds per scenario; the whole test well under 3 minutes on
# two cores). It prints the states explored, the depth exhausted in every scenario and the time.
#   1. an active attacker on every insecure PAN: replays, rewrites of every field, injections;
#   2. a dishonest PN GW rewriting what it relays (two rewrites per run), every property but
#      agreement (see below);
#   3. one lifecycle move per trace after the honest establishment, under the PAN attacker.
# Timers and network faults are left out here: with them agreement fails in the documented
# known limitations (docs/security.md, section 4: a result lost or refused leaves the PNE
# registered); so do the result-corrupting rewrites (hash_server, inventory, success), which
# tests/explore_test.cpp explores with their own expectations.
set -euo pipefail
bin=${CPNS_BINARY_DIR:?}/apps/cpns-explore/cpns-explore
[[ -x "$bin" ]] || { echo "FAIL: $bin not built"; echo "0 passed, 1 failed"; exit 1; }
out=$(mktemp)
trap 'rm -f "$out"' EXIT

passed=0
failed=0
run() {
    local name=$1
    shift
    echo "== $name: cpns-explore --all $*"
    local rc=0
    "$bin" --all --quiet "$@" >"$out" || rc=$?
    grep -E '^total:| [1-9][0-9]* violated' "$out" || true
    if ((rc == 0)); then
        passed=$((passed + 1))
        echo "ok   $name"
    else
        failed=$((failed + 1))
        echo "FAIL $name (exit $rc; run the command without --quiet for the counterexamples)"
    fi
}

run "PAN attacker, every property" --with "faults=0;timers=0;inject;attacks=2" --depth 4 \
    --walks 300 --walk-depth 50 --seconds 2
# A dishonest PN GW can always make a PNE refuse its result (it holds the PNE's session and
# can hand it another PNE's): the PNE then stays registered, which agreement reports (known
# limitation L4, docs/security.md). Every other property is checked here; agreement's own part
# — a PNE never stores a member list the server did not register — is
# ExplorerHolds.InventoryGivenToPneAuthenticated.
run "dishonest PN GW, every property but agreement" \
    --with "faults=0;timers=0;dgw;attacks=2;mut=setup_type+invited+caps+hash_pne+wrapped+pn_id+rand_server" \
    --depth 3 --walks 200 --walk-depth 50 --seconds 2.5 --property consent \
    --property initiator_authenticity --property setup_fidelity --property secrecy \
    --property freshness --property bounded_state

# The PN lifecycle after the honest establishment: one move per trace (a PNE leaves, the PN GW
# removes, adds or dissolves, the operator revokes a PNE), the PAN attacker replaying and
# rewriting around it; every property, revocation included.
run "lifecycle moves, PAN attacker, every property" --from-honest \
    --with "faults=0;timers=0;attacks=1;life=1" --depth 3 --walks 100 --walk-depth 40 --seconds 1.5

echo "$passed passed, $failed failed"
((failed == 0))
