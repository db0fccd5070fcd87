#!/usr/bin/env bash
# Recomputes every key-schedule test vector in docs/test-vectors.txt independently of the
# project's code, with bash, xxd and the openssl command-line tool only, and checks that
#   - each recomputed value equals the committed one,
#   - docs/key-schedule.md shows the same values (and the cpns-vectors Markdown verbatim),
#   - cpns-vectors, when built, prints exactly the committed file.
# The definitions it implements are in docs/key-schedule.md:
#   KDF(K, FC, P0..Pn) = HMAC-SHA-256(K, FC || P0 || L0 || ... || Pn || Ln), Li two octets BE
#   wrap = AES-256-KWP (RFC 5649, IV A65959A6)
set -euo pipefail

src=${CPNS_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
bin_dir=${CPNS_BINARY_DIR:-}
vectors_file=$src/docs/test-vectors.txt
doc_file=$src/docs/key-schedule.md

for tool in openssl xxd; do
    command -v "$tool" >/dev/null || { echo "FAIL: $tool not found" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

passed=0
failed=0

pass() {
    passed=$((passed + 1))
    echo "ok   $1"
}

fail() {
    failed=$((failed + 1))
    echo "FAIL $1" >&2
}

# check NAME EXPECTED ACTUAL
check() {
    if [[ "$2" == "$3" ]]; then
        pass "$1"
    else
        fail "$1"
        echo "     expected: $2" >&2
        echo "     actual:   $3" >&2
    fi
}

# --- Primitives built from the openssl command line ----------------------------------------

# hex_to_file HEX FILE
hex_to_file() {
    printf '%s' "$1" | xxd -r -p >"$2"
}

# file_to_hex FILE
file_to_hex() {
    xxd -p -c 1000000 "$1" | tr -d '\n'
}

# ascii_hex TEXT
ascii_hex() {
    printf '%s' "$1" | xxd -p -c 1000000 | tr -d '\n'
}

# len16 HEX: the length of HEX in octets as two octets, big-endian
len16() {
    local n=$((${#1} / 2))
    if ((n > 65535)); then
        echo "parameter longer than 65535 octets" >&2
        return 1
    fi
    printf '%04x' "$n"
}

# hmac KEYHEX DATAHEX
hmac() {
    local out
    hex_to_file "$2" "$work/hmac.in"
    out=$(openssl mac -digest SHA256 -macopt "hexkey:$1" -in "$work/hmac.in" HMAC) || return 1
    printf '%s' "${out,,}"
}

# kdf KEYHEX FCHEX P0HEX P1HEX ...: HMAC-SHA-256(K, FC || P0 || L0 || P1 || L1 ...)
kdf() {
    local key=$1 s=$2 p
    shift 2
    for p in "$@"; do
        s+="$p$(len16 "$p")" || return 1
    done
    hmac "$key" "$s"
}

# kwp_wrap CIPHER KEKHEX PLAINHEX (CIPHER: id-aes192-wrap-pad, id-aes256-wrap-pad)
kwp_wrap() {
    hex_to_file "$3" "$work/kwp.in"
    rm -f "$work/kwp.out"
    openssl enc -"$1" -K "$2" -iv A65959A6 -in "$work/kwp.in" -out "$work/kwp.out" || return 1
    file_to_hex "$work/kwp.out"
}

# kwp_unwrap CIPHER KEKHEX WRAPPEDHEX: prints the key, or fails
kwp_unwrap() {
    hex_to_file "$3" "$work/kwp.in"
    rm -f "$work/kwp.out"
    openssl enc -d -"$1" -K "$2" -iv A65959A6 -in "$work/kwp.in" -out "$work/kwp.out" 2>/dev/null ||
        return 1
    file_to_hex "$work/kwp.out"
}

# --- The tools themselves against published answers ----------------------------------------

check "openssl HMAC-SHA-256 = RFC 4231 test case 2" \
    5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843 \
    "$(hmac "$(ascii_hex Jefe)" "$(ascii_hex 'what do ya want for nothing?')")"
check "openssl HMAC-SHA-256 = RFC 4231 test case 3" \
    773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe \
    "$(hmac "$(printf 'aa%.0s' {1..20})" "$(printf 'dd%.0s' {1..50})")"
check "openssl AES-KWP = RFC 5649 section 6, 20-octet key" \
    138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a \
    "$(kwp_wrap id-aes192-wrap-pad 5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8 \
        c37b7e6492584340bed12207808941155068f738)"
check "openssl AES-KWP = RFC 5649 section 6, 7-octet key" \
    afbeb0f07dfbf5419200f2ccb50bb24f \
    "$(kwp_wrap id-aes192-wrap-pad 5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8 \
        466f7250617369)"

# --- The committed vectors -----------------------------------------------------------------

input_keys=(eukey_pne eukey_gw local_eukey rand_pne rand_server pne_id gw_id pn_id flow role
    setup local_key_requested invited_0 invited_1)
output_keys=(setup_binding id_list sk_pne hash_pne hash_server_pne kek_pne kek_gw
    wrapped_local_eukey_pne wrapped_local_eukey_gw gw_server_psk)

declare -A kv=()
declare -a file_order=()
if [[ ! -r "$vectors_file" ]]; then
    fail "docs/test-vectors.txt is readable"
    echo "$passed passed, $failed failed"
    exit 1
fi
malformed=0
while IFS= read -r line || [[ -n "$line" ]]; do
    if [[ "$line" =~ ^([a-z0-9_]+)=([0-9a-f]*)$ ]] && (( ${#BASH_REMATCH[2]} % 2 == 0 )); then
        kv[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}
        file_order+=("${BASH_REMATCH[1]}")
    else
        malformed=$((malformed + 1))
        echo "     malformed line: $line" >&2
    fi
done <"$vectors_file"
check "docs/test-vectors.txt has only key=hex lines" 0 "$malformed"
expected_order="${input_keys[*]} ${output_keys[*]}"
check "docs/test-vectors.txt has exactly the expected keys, in order" \
    "$expected_order" "${file_order[*]}"
for key in "${input_keys[@]}" "${output_keys[@]}"; do
    [[ -v "kv[$key]" ]] || kv[$key]=""
done

eukey_pne=${kv[eukey_pne]}
eukey_gw=${kv[eukey_gw]}
local_eukey=${kv[local_eukey]}
rand_pne=${kv[rand_pne]}
rand_server=${kv[rand_server]}
pne_id=${kv[pne_id]}
gw_id=${kv[gw_id]}
pn_id=${kv[pn_id]}

check "input sizes: keys 32 octets, challenges 16, setup fields 1" \
    "64 64 64 32 32 2 2 2 2" \
    "${#eukey_pne} ${#eukey_gw} ${#local_eukey} ${#rand_pne} ${#rand_server} ${#kv[flow]} \
${#kv[role]} ${#kv[setup]} ${#kv[local_key_requested]}"

# Encodings, assembled here octet by octet.
binding=${kv[flow]}${kv[role]}${kv[setup]}${kv[local_key_requested]}
check "setup_binding = flow || role || setup || local_key_requested" \
    "${kv[setup_binding]}" "$binding"
id_list=""
for i in 0 1; do
    id=${kv[invited_$i]}
    id_list+="$(len16 "$id")$id"
done
check "id_list = (len16 || ID) for each invited ID" "${kv[id_list]}" "$id_list"

# The derived values.
sk_pne=$(kdf "$eukey_pne" 51 "$rand_pne" "$rand_server" "$pne_id" "$gw_id" "$pn_id" \
    "$binding" "$id_list")
check "sk_pne = KDF(EUKey_PNE, 0x51, ...)" "${kv[sk_pne]}" "$sk_pne"

hash_pne=$(kdf "$eukey_pne" 52 "$rand_pne" "$rand_server" "$sk_pne" "$pne_id" "$gw_id" "$pn_id" \
    "$binding" "$id_list")
check "hash_pne = KDF(EUKey_PNE, 0x52, ...)" "${kv[hash_pne]}" "$hash_pne"

hash_server_pne=$(kdf "$eukey_pne" 53 "$rand_pne" "$rand_server" "$sk_pne" "$hash_pne" \
    "$pne_id" "$gw_id" "$pn_id" "$binding" "$id_list")
check "hash_server_pne = KDF(EUKey_PNE, 0x53, ...)" "${kv[hash_server_pne]}" "$hash_server_pne"

kek_pne=$(kdf "$eukey_pne" 54 01 "$pn_id" "$pne_id" "$gw_id" "$rand_server")
check "kek_pne = KDF(EUKey_PNE, 0x54, 0x01, ...)" "${kv[kek_pne]}" "$kek_pne"

kek_gw=$(kdf "$eukey_gw" 54 02 "$pn_id" "$pne_id" "$gw_id" "$rand_server")
check "kek_gw = KDF(EUKey_GW, 0x54, 0x02, ...)" "${kv[kek_gw]}" "$kek_gw"

wrapped_pne=$(kwp_wrap id-aes256-wrap-pad "$kek_pne" "$local_eukey")
check "wrapped_local_eukey_pne = AES-256-KWP(kek_pne, LocalEUKey)" \
    "${kv[wrapped_local_eukey_pne]}" "$wrapped_pne"

wrapped_gw=$(kwp_wrap id-aes256-wrap-pad "$kek_gw" "$local_eukey")
check "wrapped_local_eukey_gw = AES-256-KWP(kek_gw, LocalEUKey)" \
    "${kv[wrapped_local_eukey_gw]}" "$wrapped_gw"

gw_psk=$(kdf "$eukey_gw" 55 "$gw_id")
check "gw_server_psk = KDF(EUKey_GW, 0x55, PN GW ID)" "${kv[gw_server_psk]}" "$gw_psk"

# Each copy opens with its own KEK, and the PN GW's KEK does not open the PNE's copy.
check "the PNE's KEK unwraps the PNE's copy" "$local_eukey" \
    "$(kwp_unwrap id-aes256-wrap-pad "$kek_pne" "${kv[wrapped_local_eukey_pne]}" || true)"
check "the PN GW's KEK unwraps the PN GW's copy" "$local_eukey" \
    "$(kwp_unwrap id-aes256-wrap-pad "$kek_gw" "${kv[wrapped_local_eukey_gw]}" || true)"
if kwp_unwrap id-aes256-wrap-pad "$kek_gw" "${kv[wrapped_local_eukey_pne]}" >/dev/null; then
    fail "the PN GW's KEK does not unwrap the PNE's copy"
else
    pass "the PN GW's KEK does not unwrap the PNE's copy"
fi

# --- The document shows the same values ----------------------------------------------------

if [[ -r "$doc_file" ]]; then
    doc=$(<"$doc_file")
    missing=()
    for key in "${input_keys[@]}" "${output_keys[@]}"; do
        value=${kv[$key]}
        if [[ -z "$value" || "$doc" != *"$value"* ]]; then
            missing+=("$key")
        fi
    done
    if ((${#missing[@]} == 0)); then
        pass "docs/key-schedule.md shows every vector value"
    else
        fail "docs/key-schedule.md shows every vector value (missing: ${missing[*]})"
    fi
else
    fail "docs/key-schedule.md is readable"
fi

protocol_doc=$src/docs/protocol.md
if [[ -r "$protocol_doc" ]]; then
    pdoc=$(<"$protocol_doc")
    missing=()
    for key in "${input_keys[@]}" "${output_keys[@]}"; do
        value=${kv[$key]}
        if [[ -z "$value" || "$pdoc" != *"| \`$key\` | \`$value\` |"* ]]; then
            missing+=("$key")
        fi
    done
    if ((${#missing[@]} == 0)); then
        pass "docs/protocol.md's test-vector table shows every value"
    else
        fail "docs/protocol.md's test-vector table shows every value (missing: ${missing[*]})"
    fi
else
    fail "docs/protocol.md is readable"
fi

# --- cpns-vectors, when built, prints the same ---------------------------------------------

tool=${bin_dir:+$bin_dir/apps/cpns-vectors/cpns-vectors}
if [[ -n "$tool" && -x "$tool" ]]; then
    if "$tool" --format kv >"$work/kv.txt"; then
        if cmp -s "$work/kv.txt" "$vectors_file"; then
            pass "cpns-vectors --format kv prints docs/test-vectors.txt"
        else
            fail "cpns-vectors --format kv prints docs/test-vectors.txt"
            diff "$vectors_file" "$work/kv.txt" >&2 || true
        fi
    else
        fail "cpns-vectors --format kv runs"
    fi
    if "$tool" >"$work/section.md"; then
        section=$(<"$work/section.md")
        if [[ -r "$doc_file" && "$(<"$doc_file")" == *"$section"* ]]; then
            pass "docs/key-schedule.md contains the cpns-vectors Markdown verbatim"
        else
            fail "docs/key-schedule.md contains the cpns-vectors Markdown verbatim"
        fi
    else
        fail "cpns-vectors (Markdown) runs"
    fi
else
    echo "skip cpns-vectors not built (looked for ${tool:-\$CPNS_BINARY_DIR/apps/cpns-vectors/cpns-vectors})"
fi

echo "$passed passed, $failed failed"
((failed == 0))
