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

# --- A protobuf reader, for checking the encodings --------------------------------------------

# pb_varint HEX OFFSET: prints "VALUE NEXT_OFFSET" (offsets in hex digits), or fails
pb_varint() {
    local hex=$1 at=$2 value=0 shift_=0 byte
    while :; do
        ((at + 2 <= ${#hex})) || return 1
        byte=$((16#${hex:at:2}))
        at=$((at + 2))
        value=$((value | ((byte & 0x7f) << shift_)))
        ((byte & 0x80)) || break
        shift_=$((shift_ + 7))
        ((shift_ < 63)) || return 1
    done
    echo "$value $at"
}

# pb_fields HEX: one line "FIELD WIRETYPE VALUE" per top-level field, in encoding order; VALUE is
# the decimal value of a varint, the hex payload of a length-delimited field. Fails on anything
# else (the schema uses only these two wire types).
pb_fields() {
    local hex=$1 at=0 tag len next value
    while ((at < ${#hex})); do
        read -r tag at < <(pb_varint "$hex" "$at") || return 1
        case $((tag & 7)) in
            0)
                read -r value at < <(pb_varint "$hex" "$at") || return 1
                echo "$((tag >> 3)) 0 $value"
                ;;
            2)
                read -r len at < <(pb_varint "$hex" "$at") || return 1
                next=$((at + 2 * len))
                ((next <= ${#hex})) || return 1
                echo "$((tag >> 3)) 2 ${hex:at:2*len}"
                at=$next
                ;;
            *) return 1 ;;
        esac
    done
}

# pb_get HEX FIELD: the values of FIELD, one a line
pb_get() {
    pb_fields "$1" | while read -r f _ v; do
        if [[ "$f" == "$2" ]]; then echo "$v"; fi
    done
}

# pb_ordered HEX: "yes" if the top-level fields are in field-number order (a repeated field's
# elements together) and each has a non-default value (proto3 omits those)
pb_ordered() {
    local fields last=0 f w v
    fields=$(pb_fields "$1") || {
        echo "undecodable"
        return
    }
    while read -r f w v; do
        [[ -z "$f" ]] && continue
        if ((f < last)); then
            echo "field $f after $last"
            return
        fi
        if [[ "$w" == 0 && "$v" == 0 ]]; then
            echo "field $f encoded with its default value"
            return
        fi
        last=$f
    done <<<"$fields"
    echo yes
}

# sha256_hex HEX: SHA-256 of the octets, with openssl dgst
sha256_hex() {
    local out
    hex_to_file "$1" "$work/sha.in"
    out=$(openssl dgst -sha256 -r "$work/sha.in") || return 1
    out=${out%% *}
    printf '%s' "${out,,}"
}

check "openssl SHA-256 = FIPS 180-2 'abc'" \
    ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad \
    "$(sha256_hex "$(ascii_hex abc)")"
check "openssl SHA-256 of no octets" \
    e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 "$(sha256_hex "")"

# --- The committed vectors -----------------------------------------------------------------

# Set 1 (no prefix): the initiator of a PNE-initiated run; set 2 (invitee_): an invitee of the
# same run, without a LocalEUKey; set 3 (gwinit_): the invitee of a PN GW-initiated run.
input_keys=(eukey_pne eukey_gw local_eukey rand_pne rand_server pne_id gw_id pn_id flow role
    setup local_key_requested invited_0 invited_1 join_encoding inventory_encoding
    device_state_label leave_revision leave_rand_pne after_inventory_encoding)
output_keys=(setup_binding id_list join_digest inventory_digest sk_pne hash_pne hash_server_pne
    kek_pne kek_gw wrapped_local_eukey_pne wrapped_local_eukey_gw gw_server_psk device_state_key
    after_inventory_digest leave_proof notice_left_proof notice_updated_proof)
invitee_input_keys=(invitee_eukey_pne invitee_rand_pne invitee_rand_server invitee_pne_id
    invitee_gw_id invitee_pn_id invitee_flow invitee_role invitee_setup
    invitee_local_key_requested invitee_join_encoding invitee_inventory_encoding)
invitee_output_keys=(invitee_setup_binding invitee_join_digest invitee_inventory_digest
    invitee_sk_pne invitee_hash_pne invitee_hash_server_pne)
gwinit_input_keys=(gwinit_eukey_pne gwinit_eukey_gw gwinit_local_eukey gwinit_rand_pne
    gwinit_rand_server gwinit_pne_id gwinit_gw_id gwinit_pn_id gwinit_flow gwinit_role
    gwinit_setup gwinit_local_key_requested gwinit_join_encoding gwinit_inventory_encoding)
gwinit_output_keys=(gwinit_setup_binding gwinit_join_digest gwinit_inventory_digest
    gwinit_sk_pne gwinit_hash_pne gwinit_hash_server_pne gwinit_kek_pne gwinit_kek_gw
    gwinit_wrapped_local_eukey_pne gwinit_wrapped_local_eukey_gw)
# EUKey rotation (set 1's inputs): the expiry notice under a rotated-out EUKey.
rotation_output_keys=(expiry_notice_pne)
all_keys=("${input_keys[@]}" "${output_keys[@]}" "${rotation_output_keys[@]}"
    "${invitee_input_keys[@]}"
    "${invitee_output_keys[@]}" "${gwinit_input_keys[@]}" "${gwinit_output_keys[@]}")

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
check "docs/test-vectors.txt has exactly the expected keys, in order" \
    "${all_keys[*]}" "${file_order[*]}"
for key in "${all_keys[@]}"; do
    [[ -v "kv[$key]" ]] || kv[$key]=""
done

# check_set PREFIX INVITED_COUNT HAS_LOCAL_KEY: recomputes one set from its inputs
check_set() {
    local p=$1 n_invited=$2 has_local=$3 name=${1:-initiator_}
    name=${name%_}
    local eukey_pne=${kv[${p}eukey_pne]} rand_pne=${kv[${p}rand_pne]}
    local rand_server=${kv[${p}rand_server]} pne_id=${kv[${p}pne_id]} gw_id=${kv[${p}gw_id]}
    local pn_id=${kv[${p}pn_id]} join=${kv[${p}join_encoding]}
    local inventory=${kv[${p}inventory_encoding]} lkr=${kv[${p}local_key_requested]}

    check "$name: input sizes: EUKey 32 octets, challenges 16, setup fields 1" \
        "64 32 32 2 2 2 2" \
        "${#eukey_pne} ${#rand_pne} ${#rand_server} ${#kv[${p}flow]} ${#kv[${p}role]} \
${#kv[${p}setup]} ${#lkr}"

    # Encodings, assembled here octet by octet.
    local binding=${kv[${p}flow]}${kv[${p}role]}${kv[${p}setup]}$lkr
    check "$name: setup_binding = flow || role || setup || local_key_requested" \
        "${kv[${p}setup_binding]}" "$binding"
    local id_list="" i id
    for ((i = 0; i < n_invited; i++)); do
        id=${kv[${p}invited_$i]}
        id_list+="$(len16 "$id")$id"
    done
    if ((n_invited > 0)); then
        check "$name: id_list = (len16 || ID) for each invited ID" "${kv[${p}id_list]}" "$id_list"
    fi

    # The join and the inventory: well-formed deterministic encodings of this PNE's values.
    check "$name: the join's fields are in field-number order, no defaults encoded" yes \
        "$(pb_ordered "$join")"
    check "$name: the join carries PNE ID (1), rand_PNE (4), the LocalEUKey request (5)" \
        "$pne_id|$rand_pne|$((16#$lkr))" \
        "$(pb_get "$join" 1)|$(pb_get "$join" 4)|$(pb_get "$join" 5 | grep . || echo 0)"
    check "$name: the inventory's fields are in field-number order, no defaults encoded" yes \
        "$(pb_ordered "$inventory")"
    check "$name: the inventory is of this PN (1) and PN GW (2)" "$pn_id|$gw_id" \
        "$(pb_get "$inventory" 1)|$(pb_get "$inventory" 2)"
    local member found=""
    while read -r member; do
        [[ -z "$member" ]] && continue
        if [[ "$(pb_get "$member" 1)" == "$pne_id" ]]; then
            found="$(pb_get "$member" 2)|$(pb_get "$member" 3 | tr '\n' ,)"
            found+="|$(pb_get "$member" 5 | grep . || echo 0)"
            [[ "$(pb_ordered "$member")" == yes ]] || found+=" (member not in field order)"
        fi
    done < <(pb_get "$inventory" 4)
    check "$name: the inventory lists the PNE with the capabilities and contents it sent" \
        "$(pb_get "$join" 2)|$(pb_get "$join" 3 | tr '\n' ,)|$((16#$lkr))" "$found"

    # The derived values.
    local join_digest inventory_digest sk_pne hash_pne hash_server_pne
    join_digest=$(sha256_hex "$join")
    check "$name: join_digest = SHA-256(join encoding)" "${kv[${p}join_digest]}" "$join_digest"
    inventory_digest=$(sha256_hex "$inventory")
    check "$name: inventory_digest = SHA-256(inventory encoding)" \
        "${kv[${p}inventory_digest]}" "$inventory_digest"

    sk_pne=$(kdf "$eukey_pne" 51 "$rand_pne" "$rand_server" "$pne_id" "$gw_id" "$pn_id" \
        "$binding" "$id_list")
    check "$name: sk_pne = KDF(EUKey_PNE, 0x51, ...)" "${kv[${p}sk_pne]}" "$sk_pne"

    hash_pne=$(kdf "$eukey_pne" 52 "$rand_pne" "$rand_server" "$sk_pne" "$pne_id" "$gw_id" \
        "$pn_id" "$binding" "$id_list" "$join_digest")
    check "$name: hash_pne = KDF(EUKey_PNE, 0x52, ..., join digest)" "${kv[${p}hash_pne]}" \
        "$hash_pne"

    hash_server_pne=$(kdf "$eukey_pne" 53 "$rand_pne" "$rand_server" "$sk_pne" "$hash_pne" \
        "$pne_id" "$gw_id" "$pn_id" "$binding" "$id_list" "$join_digest" "$inventory_digest")
    check "$name: hash_server_pne = KDF(EUKey_PNE, 0x53, ..., join digest, inventory digest)" \
        "${kv[${p}hash_server_pne]}" "$hash_server_pne"

    [[ "$has_local" == yes ]] || return 0
    local eukey_gw=${kv[${p}eukey_gw]} local_eukey=${kv[${p}local_eukey]}
    local kek_pne kek_gw wrapped_pne wrapped_gw
    check "$name: key sizes: EUKey_GW and LocalEUKey 32 octets" "64 64" \
        "${#eukey_gw} ${#local_eukey}"

    kek_pne=$(kdf "$eukey_pne" 54 01 "$pn_id" "$pne_id" "$gw_id" "$rand_server" "$rand_pne")
    check "$name: kek_pne = KDF(EUKey_PNE, 0x54, 0x01, ..., rand_server, rand_PNE)" \
        "${kv[${p}kek_pne]}" "$kek_pne"

    kek_gw=$(kdf "$eukey_gw" 54 02 "$pn_id" "$pne_id" "$gw_id" "$rand_server" "$rand_pne")
    check "$name: kek_gw = KDF(EUKey_GW, 0x54, 0x02, ..., rand_server, rand_PNE)" \
        "${kv[${p}kek_gw]}" "$kek_gw"

    wrapped_pne=$(kwp_wrap id-aes256-wrap-pad "$kek_pne" "$local_eukey")
    check "$name: wrapped_local_eukey_pne = AES-256-KWP(kek_pne, LocalEUKey)" \
        "${kv[${p}wrapped_local_eukey_pne]}" "$wrapped_pne"

    wrapped_gw=$(kwp_wrap id-aes256-wrap-pad "$kek_gw" "$local_eukey")
    check "$name: wrapped_local_eukey_gw = AES-256-KWP(kek_gw, LocalEUKey)" \
        "${kv[${p}wrapped_local_eukey_gw]}" "$wrapped_gw"

    # Each copy opens with its own KEK, and the PN GW's KEK does not open the PNE's copy.
    check "$name: the PNE's KEK unwraps the PNE's copy" "$local_eukey" \
        "$(kwp_unwrap id-aes256-wrap-pad "$kek_pne" "${kv[${p}wrapped_local_eukey_pne]}" || true)"
    check "$name: the PN GW's KEK unwraps the PN GW's copy" "$local_eukey" \
        "$(kwp_unwrap id-aes256-wrap-pad "$kek_gw" "${kv[${p}wrapped_local_eukey_gw]}" || true)"
    if kwp_unwrap id-aes256-wrap-pad "$kek_gw" "${kv[${p}wrapped_local_eukey_pne]}" >/dev/null; then
        fail "$name: the PN GW's KEK does not unwrap the PNE's copy"
    else
        pass "$name: the PN GW's KEK does not unwrap the PNE's copy"
    fi
    # A copy made for another run (another rand_PNE, same everything else) does not open.
    local other_rand=${rand_pne:0:${#rand_pne}-2}$(printf '%02x' $((16#${rand_pne: -2} ^ 1)))
    local old_kek
    old_kek=$(kdf "$eukey_pne" 54 01 "$pn_id" "$pne_id" "$gw_id" "$rand_server" "$other_rand")
    if kwp_unwrap id-aes256-wrap-pad "$old_kek" "${kv[${p}wrapped_local_eukey_pne]}" >/dev/null; then
        fail "$name: the PNE's copy does not open under another run's rand_PNE"
    else
        pass "$name: the PNE's copy does not open under another run's rand_PNE"
    fi
}

check_set "" 2 yes
check_set invitee_ 0 no
check_set gwinit_ 0 yes

# The expiry notice: 32 zero octets under the KEK of set 1's PNE copy; it opens under that
# KEK to zeros, and no other KEK (the PN GW's) opens it.
notice_kek=$(kdf "${kv[eukey_pne]}" 54 01 "${kv[pn_id]}" "${kv[pne_id]}" "${kv[gw_id]}" \
    "${kv[rand_server]}" "${kv[rand_pne]}")
zeros=$(printf '%064d' 0)
check "expiry_notice_pne = AES-256-KWP(kek_pne, 32 zero octets)" "${kv[expiry_notice_pne]}" \
    "$(kwp_wrap id-aes256-wrap-pad "$notice_kek" "$zeros")"
check "the PNE's KEK opens the expiry notice to 32 zero octets" "$zeros" \
    "$(kwp_unwrap id-aes256-wrap-pad "$notice_kek" "${kv[expiry_notice_pne]}" || true)"
if kwp_unwrap id-aes256-wrap-pad "${kv[kek_gw]}" "${kv[expiry_notice_pne]}" >/dev/null; then
    fail "the PN GW's KEK does not open the expiry notice"
else
    pass "the PN GW's KEK does not open the expiry notice"
fi

gw_psk=$(kdf "${kv[eukey_gw]}" 55 "${kv[gw_id]}")
check "gw_server_psk = KDF(EUKey_GW, 0x55, PN GW ID)" "${kv[gw_server_psk]}" "$gw_psk"

check "device_state_label = \"cpns device state v1\"" "$(ascii_hex 'cpns device state v1')" \
    "${kv[device_state_label]}"
state_key=$(kdf "${kv[eukey_pne]}" 56 "$(ascii_hex 'cpns device state v1')" "${kv[pne_id]}")
check "device_state_key = KDF(EUKey_PNE, 0x56, \"cpns device state v1\", PNE ID)" \
    "${kv[device_state_key]}" "$state_key"

# PN lifecycle (docs/key-schedule.md, "PN lifecycle proofs"): the initiator of set 1 leaves.
check "leave_revision = 0 as eight octets" 0000000000000000 "${kv[leave_revision]}"
after_digest=$(sha256_hex "${kv[after_inventory_encoding]}")
check "after_inventory_digest = SHA-256(after_inventory_encoding)" \
    "${kv[after_inventory_digest]}" "$after_digest"
leave=$(kdf "${kv[eukey_pne]}" 5a "${kv[pne_id]}" "${kv[gw_id]}" "${kv[pn_id]}" \
    "${kv[leave_revision]}" "${kv[leave_rand_pne]}")
check "leave_proof = KDF(EUKey_PNE, 0x5a, PNE ID, PN GW ID, PN ID, revision, rand_PNE)" \
    "${kv[leave_proof]}" "$leave"
left=$(kdf "${kv[eukey_pne]}" 5b 01 "${kv[pne_id]}" "$after_digest" "${kv[leave_rand_pne]}")
check "notice_left_proof = KDF(EUKey_PNE, 0x5b, 0x01, PNE ID, digest, rand_PNE)" \
    "${kv[notice_left_proof]}" "$left"
updated=$(kdf "${kv[invitee_eukey_pne]}" 5b 04 "${kv[invitee_pne_id]}" "$after_digest" "")
check "notice_updated_proof = KDF(invitee EUKey_PNE, 0x5b, 0x04, PNE ID, digest, empty)" \
    "${kv[notice_updated_proof]}" "$updated"

# How the sets relate: the invitee is of the same run and registered PN as the initiator.
check "invitee_: same PN, PN GW, rand_server and inventory as set 1" \
    "${kv[pn_id]} ${kv[gw_id]} ${kv[rand_server]} ${kv[inventory_encoding]}" \
    "${kv[invitee_pn_id]} ${kv[invitee_gw_id]} ${kv[invitee_rand_server]} \
${kv[invitee_inventory_encoding]}"
check "flows and roles: set 1 01/01, invitee_ 01/02 (setup 00), gwinit_ 02/02 (setup 00)" \
    "01 01 01 02 00 02 02 00" \
    "${kv[flow]} ${kv[role]} ${kv[invitee_flow]} ${kv[invitee_role]} ${kv[invitee_setup]} \
${kv[gwinit_flow]} ${kv[gwinit_role]} ${kv[gwinit_setup]}"

# --- The document shows the same values ----------------------------------------------------

if [[ -r "$doc_file" ]]; then
    doc=$(<"$doc_file")
    missing=()
    for key in "${all_keys[@]}"; do
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
