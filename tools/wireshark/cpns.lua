-- Wireshark dissector for CPNS PN Establishment (this repository's protocol; docs/protocol.md).
--
-- What it decodes: every cpns.v1.Envelope of proto/cpns/messages.proto, framed by a 4-octet
-- big-endian length (docs/protocol.md, "Framing"):
--   * on TCP: the PAN port of a PN GW and the server port of a CPNS Server (preferences
--     cpns.pan_port and cpns.server_port). A connection on those ports whose first octet is a
--     TLS record (PSK-TLS on an insecure PAN, always on the server link) is handed to
--     Wireshark's TLS dissector; with a key log (tls.keylog_file) the decrypted records come
--     back here. Any other port: a heuristic on the length prefix and the Envelope's first
--     field (version 1);
--   * on UDP: Entity Discovery datagrams (preference cpns.discovery_port), one frame each, and
--     the same heuristic on other ports.
-- Every field of every message is shown by name; enums (failure reasons, setup types, ...) by
-- their .proto names. Malformed frames become expert-info errors; the decoder never raises a
-- Lua error on bad input.
--
-- Installation: copy this one file into the personal Lua plugin folder (Wireshark: Help ->
-- About -> Folders -> "Personal Lua Plugins", usually ~/.local/lib/wireshark/plugins/), or
-- load it for one run with `tshark -X lua_script:cpns.lua` (docs/operations.md, "Wireshark").
--
-- The message table below is generated from the .proto by tools/wireshark/gen_schema.py; the
-- test tests/dissector_test.py fails when it is out of date.

local cpns = Proto("cpns", "CPNS PN Establishment")

-- Limits of the framing (src/core/codec.hpp).
local FRAME_HEADER_SIZE = 4
local MAX_FRAME_SIZE = 65536
local PROTOCOL_VERSION = 1
local MAX_NESTING = 16 -- the schema nests 5 deep; anything deeper is malformed
local DEFAULT_PAN_PORT = 7100
local DEFAULT_SERVER_PORT = 7000
local DEFAULT_DISCOVERY_PORT = 47011

-- BEGIN GENERATED SCHEMA (tools/wireshark/gen_schema.py; do not edit by hand)
local ENUMS = {
  ChangeOp = {
    [0] = "CHANGE_UNSPECIFIED",
    [1] = "CHANGE_LEAVE",
    [2] = "CHANGE_REMOVE",
    [3] = "CHANGE_DISSOLVE",
    [4] = "CHANGE_ADD",
    [5] = "CHANGE_SYNC",
    [6] = "CHANGE_REKEY",
  },
  EntityMode = {
    [0] = "MODE_UNSPECIFIED",
    [1] = "MODE_PNE",
    [2] = "MODE_PN_GW",
    [3] = "MODE_BOTH",
  },
  FailureReason = {
    [0] = "REASON_NONE",
    [1] = "AUTHENTICATION_FAILED",
    [2] = "SERVER_AUTHENTICATION_FAILED",
    [3] = "TIMEOUT",
    [4] = "DECLINED",
    [5] = "UNKNOWN_ENTITY",
    [6] = "REVOKED",
    [7] = "TLS_HANDSHAKE_FAILED",
    [8] = "TLS_REQUIRED",
    [9] = "KEY_UNWRAP_FAILED",
    [10] = "MALFORMED_MESSAGE",
    [11] = "UNSUPPORTED_VERSION",
    [12] = "UNEXPECTED_MESSAGE",
    [13] = "NO_PNE_AUTHENTICATED",
    [14] = "LIMIT_EXCEEDED",
    [15] = "NOT_INVITED",
    [16] = "BUSY",
    [17] = "GATEWAY_AUTHENTICATION_FAILED",
    [18] = "PEER_UNREACHABLE",
    [19] = "INTERNAL_ERROR",
    [20] = "FRAME_TOO_LARGE",
    [21] = "DUPLICATE_PN",
    [22] = "REPLAYED",
    [23] = "INITIATOR_NOT_AUTHENTICATED",
    [24] = "SETUP_VIOLATION",
    [25] = "STORE_UNAVAILABLE",
    [26] = "STORAGE_FULL",
    [27] = "KEY_EXPIRED",
    [28] = "UNKNOWN_PN",
    [29] = "NOT_A_MEMBER",
    [30] = "STALE_REVISION",
    [31] = "ALREADY_A_MEMBER",
    [32] = "NO_LOCAL_EUKEY",
  },
  Flow = {
    [0] = "FLOW_UNSPECIFIED",
    [1] = "FLOW_PNE_INITIATED",
    [2] = "FLOW_GW_INITIATED",
  },
  NoticeKind = {
    [0] = "NOTICE_UNSPECIFIED",
    [1] = "NOTICE_LEFT",
    [2] = "NOTICE_REMOVED",
    [3] = "NOTICE_DISSOLVED",
    [4] = "NOTICE_UPDATED",
  },
  PneRoleInFlow = {
    [0] = "ROLE_UNSPECIFIED",
    [1] = "ROLE_INITIATOR",
    [2] = "ROLE_INVITEE",
  },
  SetupType = {
    [0] = "SETUP_UNSPECIFIED",
    [1] = "SETUP_ONE_TO_ONE",
    [2] = "SETUP_ALL",
    [3] = "SETUP_INVITE_LIST",
  },
}
-- kind: the wire handling; type: the .proto type (a message or enum name, or a scalar)
local MESSAGES = {
  AuthenticationRequest = {
    [1] = { name = "pn_id", kind = "string", type = "string" },
    [2] = { name = "rand_server", kind = "bytes", type = "bytes" },
    [3] = { name = "local_eukeys", kind = "message", type = "WrappedKeyPair", repeated = true },
    [4] = { name = "pne_ids", kind = "string", type = "string", repeated = true },
    [5] = { name = "excluded", kind = "message", type = "PneExclusion", repeated = true },
  },
  AuthenticationResponse = {
    [1] = { name = "pn_id", kind = "string", type = "string" },
    [2] = { name = "results", kind = "message", type = "PneAuthResult", repeated = true },
  },
  ContentInfo = {
    [1] = { name = "content_id", kind = "string", type = "string" },
    [2] = { name = "media_type", kind = "string", type = "string" },
    [3] = { name = "title", kind = "string", type = "string" },
    [4] = { name = "size_bytes", kind = "uint64", type = "uint64" },
  },
  DeviceCapabilities = {
    [1] = { name = "device_type", kind = "string", type = "string" },
    [2] = { name = "manufacturer", kind = "string", type = "string" },
    [3] = { name = "model", kind = "string", type = "string" },
    [4] = { name = "enough_ui", kind = "bool", type = "bool" },
    [5] = { name = "pan_technologies", kind = "string", type = "string", repeated = true },
    [6] = { name = "services", kind = "string", type = "string", repeated = true },
  },
  EntityDiscoveryRequest = {
    [1] = { name = "entity_id", kind = "string", type = "string" },
    [2] = { name = "mode", kind = "enum", type = "EntityMode" },
    [3] = { name = "pn_ids", kind = "string", type = "string", repeated = true },
    [4] = { name = "endpoint", kind = "string", type = "string" },
    [5] = { name = "padding", kind = "bytes", type = "bytes" },
  },
  EntityDiscoveryResponse = {
    [1] = { name = "entity_id", kind = "string", type = "string" },
    [2] = { name = "mode", kind = "enum", type = "EntityMode" },
    [3] = { name = "pn_ids", kind = "string", type = "string", repeated = true },
    [4] = { name = "endpoint", kind = "string", type = "string" },
  },
  Envelope = {
    [1] = { name = "version", kind = "uint32", type = "uint32" },
    [2] = { name = "sender_id", kind = "string", type = "string" },
    [10] = { name = "discovery_request", kind = "message", type = "EntityDiscoveryRequest", oneof = "body" },
    [11] = { name = "discovery_response", kind = "message", type = "EntityDiscoveryResponse", oneof = "body" },
    [12] = { name = "setup_request", kind = "message", type = "PnSetupRequest", oneof = "body" },
    [13] = { name = "setup_invite", kind = "message", type = "PnSetupInvite", oneof = "body" },
    [14] = { name = "setup_notify", kind = "message", type = "PnSetupNotify", oneof = "body" },
    [15] = { name = "setup_notify_response", kind = "message", type = "PnSetupNotifyResponse", oneof = "body" },
    [16] = { name = "pne_auth_request", kind = "message", type = "PneAuthenticationRequest", oneof = "body" },
    [17] = { name = "pne_auth_response", kind = "message", type = "PneAuthenticationResponse", oneof = "body" },
    [18] = { name = "establishment_notify", kind = "message", type = "PnEstablishmentNotify", oneof = "body" },
    [19] = { name = "registration_request", kind = "message", type = "PnRegistrationRequest", oneof = "body" },
    [20] = { name = "auth_request", kind = "message", type = "AuthenticationRequest", oneof = "body" },
    [21] = { name = "auth_response", kind = "message", type = "AuthenticationResponse", oneof = "body" },
    [22] = { name = "registration_response", kind = "message", type = "PnRegistrationResponse", oneof = "body" },
    [23] = { name = "error", kind = "message", type = "ErrorReport", oneof = "body" },
    [24] = { name = "setup_response", kind = "message", type = "PnSetupResponse", oneof = "body" },
    [25] = { name = "leave_request", kind = "message", type = "PnLeaveRequest", oneof = "body" },
    [26] = { name = "leave_response", kind = "message", type = "PnLeaveResponse", oneof = "body" },
    [27] = { name = "change_notify", kind = "message", type = "PnChangeNotify", oneof = "body" },
    [28] = { name = "change_request", kind = "message", type = "PnChangeRequest", oneof = "body" },
    [29] = { name = "change_response", kind = "message", type = "PnChangeResponse", oneof = "body" },
    [30] = { name = "change_notify_ack", kind = "message", type = "PnChangeNotifyAck", oneof = "body" },
    [31] = { name = "sync_request", kind = "message", type = "PnSyncRequest", oneof = "body" },
  },
  ErrorReport = {
    [1] = { name = "pn_id", kind = "string", type = "string" },
    [2] = { name = "reason", kind = "enum", type = "FailureReason" },
    [3] = { name = "detail", kind = "string", type = "string" },
  },
  GwInfo = {
    [1] = { name = "gw_id", kind = "string", type = "string" },
    [2] = { name = "capabilities", kind = "message", type = "DeviceCapabilities" },
    [3] = { name = "subscription", kind = "message", type = "SubscriptionInfo" },
  },
  PnChangeNotice = {
    [1] = { name = "pne_id", kind = "string", type = "string" },
    [2] = { name = "kind", kind = "enum", type = "NoticeKind" },
    [3] = { name = "inventory", kind = "message", type = "PnInventory" },
    [4] = { name = "rand_pne", kind = "bytes", type = "bytes" },
    [5] = { name = "proof", kind = "bytes", type = "bytes" },
  },
  PnChangeNotify = {
    [1] = { name = "notice", kind = "message", type = "PnChangeNotice" },
  },
  PnChangeNotifyAck = {
    [1] = { name = "pn_id", kind = "string", type = "string" },
    [2] = { name = "revision", kind = "uint64", type = "uint64" },
    [3] = { name = "rekeyed", kind = "bool", type = "bool" },
  },
  PnChangeRequest = {
    [1] = { name = "pn_id", kind = "string", type = "string" },
    [2] = { name = "op", kind = "enum", type = "ChangeOp" },
    [3] = { name = "pne_id", kind = "string", type = "string" },
    [4] = { name = "revision", kind = "uint64", type = "uint64" },
    [5] = { name = "leave", kind = "message", type = "PnLeaveRequest" },
  },
  PnChangeResponse = {
    [1] = { name = "pn_id", kind = "string", type = "string" },
    [2] = { name = "op", kind = "enum", type = "ChangeOp" },
    [3] = { name = "pne_id", kind = "string", type = "string" },
    [4] = { name = "accepted", kind = "bool", type = "bool" },
    [5] = { name = "reason", kind = "enum", type = "FailureReason" },
    [6] = { name = "inventory", kind = "message", type = "PnInventory" },
    [7] = { name = "dissolved", kind = "bool", type = "bool" },
    [8] = { name = "notices", kind = "message", type = "PnChangeNotice", repeated = true },
  },
  PnEstablishmentNotify = {
    [1] = { name = "result", kind = "message", type = "PnResult" },
  },
  PnHeld = {
    [1] = { name = "pn_id", kind = "string", type = "string" },
    [2] = { name = "revision", kind = "uint64", type = "uint64" },
    [3] = { name = "pne_ids", kind = "string", type = "string", repeated = true },
  },
  PnInventory = {
    [1] = { name = "pn_id", kind = "string", type = "string" },
    [2] = { name = "gw_id", kind = "string", type = "string" },
    [3] = { name = "gw_capabilities", kind = "message", type = "DeviceCapabilities" },
    [4] = { name = "members", kind = "message", type = "PnMember", repeated = true },
    [5] = { name = "registered_at_ms", kind = "uint64", type = "uint64" },
    [6] = { name = "revision", kind = "uint64", type = "uint64" },
  },
  PnLeaveRequest = {
    [1] = { name = "pn_id", kind = "string", type = "string" },
    [2] = { name = "gw_id", kind = "string", type = "string" },
    [3] = { name = "revision", kind = "uint64", type = "uint64" },
    [4] = { name = "rand_pne", kind = "bytes", type = "bytes" },
    [5] = { name = "proof", kind = "bytes", type = "bytes" },
  },
  PnLeaveResponse = {
    [1] = { name = "pn_id", kind = "string", type = "string" },
    [2] = { name = "accepted", kind = "bool", type = "bool" },
    [3] = { name = "reason", kind = "enum", type = "FailureReason" },
    [4] = { name = "notice", kind = "message", type = "PnChangeNotice" },
  },
  PnMember = {
    [1] = { name = "pne_id", kind = "string", type = "string" },
    [2] = { name = "capabilities", kind = "message", type = "DeviceCapabilities" },
    [3] = { name = "contents", kind = "message", type = "ContentInfo", repeated = true },
    [4] = { name = "joined_at_ms", kind = "uint64", type = "uint64" },
    [5] = { name = "local_eukey_assigned", kind = "bool", type = "bool" },
  },
  PnRegistrationRequest = {
    [1] = { name = "pn_id", kind = "string", type = "string" },
    [2] = { name = "gw", kind = "message", type = "GwInfo" },
    [3] = { name = "flow", kind = "enum", type = "Flow" },
    [4] = { name = "setup_type", kind = "enum", type = "SetupType" },
    [5] = { name = "invited_pne_ids", kind = "string", type = "string", repeated = true },
    [6] = { name = "pnes", kind = "message", type = "PneInfo", repeated = true },
    [7] = { name = "add", kind = "bool", type = "bool" },
    [8] = { name = "revision", kind = "uint64", type = "uint64" },
    [9] = { name = "rekey", kind = "bool", type = "bool" },
  },
  PnRegistrationResponse = {
    [1] = { name = "pn_id", kind = "string", type = "string" },
    [2] = { name = "registered", kind = "bool", type = "bool" },
    [3] = { name = "reason", kind = "enum", type = "FailureReason" },
    [4] = { name = "results", kind = "message", type = "PneRegistrationResult", repeated = true },
    [5] = { name = "inventory", kind = "message", type = "PnInventory" },
    [6] = { name = "notices", kind = "message", type = "PnChangeNotice", repeated = true },
  },
  PnResult = {
    [1] = { name = "pn_id", kind = "string", type = "string" },
    [2] = { name = "success", kind = "bool", type = "bool" },
    [3] = { name = "reason", kind = "enum", type = "FailureReason" },
    [4] = { name = "inventory", kind = "message", type = "PnInventory" },
    [5] = { name = "hash_server_pne", kind = "bytes", type = "bytes" },
    [6] = { name = "excluded", kind = "message", type = "PneExclusion", repeated = true },
  },
  PnSetupInvite = {
    [1] = { name = "pn_id", kind = "string", type = "string" },
    [2] = { name = "gw_id", kind = "string", type = "string" },
    [3] = { name = "rekey", kind = "bool", type = "bool" },
  },
  PnSetupNotify = {
    [1] = { name = "pn_id", kind = "string", type = "string" },
    [2] = { name = "initiator_pne_id", kind = "string", type = "string" },
    [3] = { name = "gw_id", kind = "string", type = "string" },
  },
  PnSetupNotifyResponse = {
    [1] = { name = "pn_id", kind = "string", type = "string" },
    [2] = { name = "accept", kind = "bool", type = "bool" },
    [3] = { name = "join", kind = "message", type = "PneJoin" },
    [4] = { name = "decline_reason", kind = "enum", type = "FailureReason" },
  },
  PnSetupRequest = {
    [1] = { name = "setup_type", kind = "enum", type = "SetupType" },
    [2] = { name = "invited_pne_ids", kind = "string", type = "string", repeated = true },
    [3] = { name = "join", kind = "message", type = "PneJoin" },
  },
  PnSetupResponse = {
    [1] = { name = "result", kind = "message", type = "PnResult" },
  },
  PnSyncRequest = {
    [1] = { name = "pns", kind = "message", type = "PnHeld", repeated = true },
  },
  PneAuthResult = {
    [1] = { name = "pne_id", kind = "string", type = "string" },
    [2] = { name = "hash_pne", kind = "bytes", type = "bytes" },
    [3] = { name = "failure", kind = "enum", type = "FailureReason" },
  },
  PneAuthenticationRequest = {
    [1] = { name = "pn_id", kind = "string", type = "string" },
    [2] = { name = "rand_server", kind = "bytes", type = "bytes" },
    [3] = { name = "wrapped_local_eukey", kind = "bytes", type = "bytes" },
    [4] = { name = "wrapped_local_eukey_previous", kind = "bytes", type = "bytes" },
  },
  PneAuthenticationResponse = {
    [1] = { name = "pn_id", kind = "string", type = "string" },
    [2] = { name = "pne_id", kind = "string", type = "string" },
    [3] = { name = "hash_pne", kind = "bytes", type = "bytes" },
    [4] = { name = "failure", kind = "enum", type = "FailureReason" },
  },
  PneExclusion = {
    [1] = { name = "pne_id", kind = "string", type = "string" },
    [2] = { name = "reason", kind = "enum", type = "FailureReason" },
  },
  PneInfo = {
    [1] = { name = "join", kind = "message", type = "PneJoin" },
    [2] = { name = "role", kind = "enum", type = "PneRoleInFlow" },
  },
  PneJoin = {
    [1] = { name = "pne_id", kind = "string", type = "string" },
    [2] = { name = "capabilities", kind = "message", type = "DeviceCapabilities" },
    [3] = { name = "contents", kind = "message", type = "ContentInfo", repeated = true },
    [4] = { name = "rand_pne", kind = "bytes", type = "bytes" },
    [5] = { name = "local_eukey_requested", kind = "bool", type = "bool" },
  },
  PneRegistrationResult = {
    [1] = { name = "pne_id", kind = "string", type = "string" },
    [2] = { name = "authenticated", kind = "bool", type = "bool" },
    [3] = { name = "reason", kind = "enum", type = "FailureReason" },
    [4] = { name = "hash_server_pne", kind = "bytes", type = "bytes" },
  },
  SubscriptionInfo = {
    [1] = { name = "subscriber_id", kind = "string", type = "string" },
    [2] = { name = "service_plan", kind = "string", type = "string" },
  },
  WrappedKeyPair = {
    [1] = { name = "pne_id", kind = "string", type = "string" },
    [2] = { name = "for_pne", kind = "bytes", type = "bytes" },
    [3] = { name = "for_gw", kind = "bytes", type = "bytes" },
    [4] = { name = "for_pne_previous", kind = "bytes", type = "bytes" },
    [5] = { name = "for_gw_previous", kind = "bytes", type = "bytes" },
  },
}
-- END GENERATED SCHEMA

-- Fields ------------------------------------------------------------------------------------

local F = {
    length = ProtoField.uint32("cpns.length", "Length", base.DEC),
    msgtype = ProtoField.string("cpns.msgtype", "Message type"),
    -- The same value wherever it occurs in a message, for filters such as cpns.pn_id == "..."
    pn_id = ProtoField.string("cpns.pn_id", "PN ID"),
    pne_id = ProtoField.string("cpns.pne_id", "PNE ID"),
    gw_id = ProtoField.string("cpns.gw_id", "PN GW ID"),
    setup_type = ProtoField.uint32("cpns.setup_type", "Setup type", base.DEC, ENUMS.SetupType),
    reason = ProtoField.uint32("cpns.reason", "Failure reason", base.DEC, ENUMS.FailureReason),
    unknown = ProtoField.bytes("cpns.unknown_field", "Unknown field"),
}

local PNE_ID_FIELDS = {
    pne_id = true, initiator_pne_id = true, invited_pne_ids = true, pne_ids = true,
}

-- One ProtoField per field of every message: cpns.<Message>.<field>.
local MSG_FIELDS = {}
for mname, fields in pairs(MESSAGES) do
    MSG_FIELDS[mname] = {}
    for num, f in pairs(fields) do
        local abbr = "cpns." .. mname .. "." .. f.name
        local pf
        if f.kind == "message" then
            pf = ProtoField.none(abbr, f.name, f.type)
        elseif f.kind == "enum" then
            pf = ProtoField.uint32(abbr, f.name, base.DEC, ENUMS[f.type], nil, f.type)
        elseif f.kind == "string" then
            pf = ProtoField.string(abbr, f.name)
        elseif f.kind == "bytes" then
            pf = ProtoField.bytes(abbr, f.name)
        elseif f.kind == "bool" then
            pf = ProtoField.bool(abbr, f.name)
        elseif f.kind == "uint64" or f.kind == "fixed64" then
            pf = ProtoField.uint64(abbr, f.name, base.DEC)
        elseif f.kind == "uint32" or f.kind == "fixed32" then
            pf = ProtoField.uint32(abbr, f.name, base.DEC)
        else -- a scalar type the schema does not use today: shown as text
            pf = ProtoField.string(abbr, f.name, base.ASCII, f.type)
        end
        MSG_FIELDS[mname][num] = pf
        F[abbr] = pf
    end
end

local fields_list = {}
for _, pf in pairs(F) do
    fields_list[#fields_list + 1] = pf
end
cpns.fields = fields_list

local E = {
    malformed = ProtoExpert.new("cpns.malformed", "Malformed CPNS frame", expert.group.MALFORMED,
        expert.severity.ERROR),
    too_large = ProtoExpert.new("cpns.frame_too_large", "CPNS frame too large",
        expert.group.MALFORMED, expert.severity.ERROR),
    version = ProtoExpert.new("cpns.unsupported_version", "Unsupported CPNS protocol version",
        expert.group.PROTOCOL, expert.severity.ERROR),
    no_body = ProtoExpert.new("cpns.no_body",
        "Envelope without a message body (or a message type this dissector does not know)",
        expert.group.UNDECODED, expert.severity.WARN),
    unknown_field = ProtoExpert.new("cpns.unknown_field.expert",
        "Field not in the schema (a newer peer?)", expert.group.UNDECODED, expert.severity.NOTE),
    failure = ProtoExpert.new("cpns.failure", "CPNS failure reason", expert.group.RESPONSE_CODE,
        expert.severity.NOTE),
    internal = ProtoExpert.new("cpns.internal_error", "CPNS dissector internal error",
        expert.group.MALFORMED, expert.severity.ERROR),
}
cpns.experts = { E.malformed, E.too_large, E.version, E.no_body, E.unknown_field, E.failure,
    E.internal }

cpns.prefs.pan_port = Pref.uint("PAN port (TCP)", DEFAULT_PAN_PORT,
    "The PN GW's pan_listen port: clear CPNS frames and PSK-TLS on one port")
cpns.prefs.server_port = Pref.uint("CPNS Server port (TCP)", DEFAULT_SERVER_PORT,
    "The CPNS Server's listen port: always PSK-TLS")
cpns.prefs.discovery_port = Pref.uint("Entity Discovery port (UDP)", DEFAULT_DISCOVERY_PORT,
    "The port of the discovery_group (multicast requests, unicast answers)")
cpns.prefs.heuristic = Pref.bool("Heuristic on other ports", true,
    "Find CPNS frames on any TCP/UDP port by their length prefix and version field")
cpns.prefs.protobuf_view = Pref.bool("Also show Wireshark's Protobuf view", false,
    "Hand each well-formed Envelope to Wireshark's Protobuf dissector as well (a subtree " ..
    "'Protocol Buffers: cpns.v1.Envelope'). Needs Protobuf search paths: the repository's " ..
    "proto/ folder (load all files) and the folder holding google/protobuf/struct.proto")

-- Wireshark's own Protobuf dissector (optional view; nil if this Wireshark has none).
local protobuf_ok, protobuf_handle = pcall(Dissector.get, "protobuf")
if not protobuf_ok then protobuf_handle = nil end

-- Protocol Buffers wire format ---------------------------------------------------------------

-- A decode failure: raised with error() inside the decoder, caught by pcall at the frame.
local Malformed = {}
Malformed.__index = Malformed
local function malformed(range, text)
    error(setmetatable({ range = range, text = text }, Malformed), 0)
end

-- The varint at offset (< stop): number (exact up to 2^53), UInt64, octet count.
local function read_varint(tvb, offset, stop)
    local num, lo, hi = 0, 0, 0
    for i = 0, 9 do
        if offset + i >= stop then
            malformed(tvb(offset, stop - offset), "truncated varint")
        end
        local b = tvb(offset + i, 1):uint()
        local group = b % 128
        num = num + group * 2 ^ (7 * i)
        -- the 64-bit value in two 32-bit halves
        local shift = 7 * i
        if shift < 32 then
            local low_part = group * 2 ^ shift
            lo = lo + low_part % 2 ^ 32
            hi = hi + math.floor(low_part / 2 ^ 32)
        else
            hi = hi + (group * 2 ^ (shift - 32)) % 2 ^ 32
        end
        if b < 128 then
            hi = hi % 2 ^ 32
            return num, UInt64.new(lo, hi), i + 1
        end
    end
    malformed(tvb(offset, 10), "varint longer than 10 octets")
end

local WIRE_VARINT, WIRE_I64, WIRE_LEN, WIRE_I32 = 0, 1, 2, 5
local EXPECTED_WIRE = {
    message = WIRE_LEN, string = WIRE_LEN, bytes = WIRE_LEN, enum = WIRE_VARINT,
    bool = WIRE_VARINT, uint32 = WIRE_VARINT, uint64 = WIRE_VARINT, int32 = WIRE_VARINT,
    int64 = WIRE_VARINT, sint32 = WIRE_VARINT, sint64 = WIRE_VARINT, fixed32 = WIRE_I32,
    sfixed32 = WIRE_I32, float = WIRE_I32, fixed64 = WIRE_I64, sfixed64 = WIRE_I64,
    double = WIRE_I64,
}

-- What a frame's decoding found, for the Info column and the checks after decoding.
local function new_summary()
    return { version = 0, body = nil, pn_id = nil, pne_ids = {}, pne_seen = {}, setup_type = nil,
        reasons = {} }
end

-- Whether s (raw octets) is well-formed UTF-8: proto3 string fields must be, and the daemons'
-- decoder rejects the message otherwise (docs/protocol.md, "Decoding and typed errors").
local function valid_utf8(s)
    local i, n = 1, #s
    while i <= n do
        local c = s:byte(i)
        local len, min
        if c < 0x80 then
            len, min = 1, 0
        elseif c >= 0xC2 and c <= 0xDF then
            len, min = 2, 0x80
        elseif c >= 0xE0 and c <= 0xEF then
            len, min = 3, 0x800
        elseif c >= 0xF0 and c <= 0xF4 then
            len, min = 4, 0x10000
        else
            return false
        end
        if i + len - 1 > n then return false end
        local cp = len == 1 and c or c % (2 ^ (7 - len))
        for k = 1, len - 1 do
            local cc = s:byte(i + k)
            if cc < 0x80 or cc > 0xBF then return false end
            cp = cp * 64 + cc % 64
        end
        if cp < min or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then return false end
        i = i + len
    end
    return true
end

-- Octets as printable text: ASCII kept, anything else as \xNN.
local function escaped(s)
    return (s:gsub("[^\32-\126]", function(ch) return string.format("\\x%02x", ch:byte()) end))
end

local decode_message

local function add_scalar(tree, pinfo, summary, mname, num, f, range, value, u64)
    local pf = MSG_FIELDS[mname][num]
    if f.kind == "string" then
        local text = range:len() > 0 and range:raw() or ""
        if not valid_utf8(text) then
            text = escaped(text)
            tree:add(pf, range, text):add_proto_expert_info(E.malformed, string.format(
                "%s.%s is not valid UTF-8 (the receiver rejects the message)", mname, f.name))
        else
            tree:add(pf, range, text)
        end
        if f.name == "pn_id" then
            tree:add(F.pn_id, range, text):set_hidden()
            if summary.pn_id == nil and text ~= "" then summary.pn_id = text end
        elseif f.name == "gw_id" then
            tree:add(F.gw_id, range, text):set_hidden()
        end
        if PNE_ID_FIELDS[f.name] then
            tree:add(F.pne_id, range, text):set_hidden()
            if not summary.pne_seen[text] then
                summary.pne_seen[text] = true
                summary.pne_ids[#summary.pne_ids + 1] = text
            end
        end
    elseif f.kind == "bytes" then
        if range:len() > 0 then
            tree:add(pf, range)
        else
            tree:add(pf, range, ByteArray.new()):append_text(" (empty)")
        end
    elseif f.kind == "enum" then
        local item = tree:add(pf, range, value)
        if ENUMS[f.type] and ENUMS[f.type][value] == nil then
            item:append_text(" (not a value of " .. f.type .. ")")
        end
        if f.type == "SetupType" then
            tree:add(F.setup_type, range, value):set_hidden()
            summary.setup_type = summary.setup_type or value
        elseif f.type == "FailureReason" and value ~= 0 then
            tree:add(F.reason, range, value):set_hidden()
            local name = ENUMS.FailureReason[value] or tostring(value)
            summary.reasons[#summary.reasons + 1] = name
            item:add_proto_expert_info(E.failure, f.name .. ": " .. name)
        end
    elseif f.kind == "bool" then
        tree:add(pf, range, value ~= 0)
    elseif f.kind == "uint64" or f.kind == "fixed64" then
        tree:add(pf, range, u64)
    elseif f.kind == "uint32" or f.kind == "fixed32" then
        tree:add(pf, range, value % 2 ^ 32)
    else
        tree:add(pf, range, tostring(u64))
    end
end

-- Decodes the fields of message `mname` in tvb[offset, stop) under tree.
decode_message = function(tvb, offset, stop, mname, tree, pinfo, summary, depth)
    if depth > MAX_NESTING then
        malformed(tvb(offset, stop - offset), "messages nested deeper than " .. MAX_NESTING)
    end
    local schema = MESSAGES[mname]
    while offset < stop do
        local start = offset
        local key, _, klen = read_varint(tvb, offset, stop)
        offset = offset + klen
        local num, wire = math.floor(key / 8), key % 8
        if num == 0 then
            malformed(tvb(start, klen), "field number 0")
        end
        -- the value's extent
        local vstart, vlen, value, u64 = offset, 0, nil, nil
        if wire == WIRE_VARINT then
            value, u64, vlen = read_varint(tvb, offset, stop)
        elseif wire == WIRE_LEN then
            local n, _, nlen = read_varint(tvb, offset, stop)
            vstart = offset + nlen
            if n > stop - vstart then
                malformed(tvb(start, stop - start), string.format(
                    "field %d announces %d octets; %d left in %s", num, n, stop - vstart, mname))
            end
            vlen = n
        elseif wire == WIRE_I64 or wire == WIRE_I32 then
            vlen = wire == WIRE_I64 and 8 or 4
            if vlen > stop - offset then
                malformed(tvb(start, stop - start), "truncated fixed-size field " .. num)
            end
        else
            malformed(tvb(start, klen), string.format("field %d has invalid wire type %d",
                num, wire))
        end
        local next_offset = vstart + vlen
        local range = tvb(vstart, vlen)
        local whole = tvb(start, next_offset - start)
        local f = schema[num]
        if f == nil or EXPECTED_WIRE[f.kind] ~= wire then
            local item = tree:add(F.unknown, whole)
            local why = f == nil and "field number %d not in %s" or
                "field %d of %s (" .. (f and f.name or "") .. ") with wire type %d"
            item:set_text(string.format("Unknown: " .. why, num, mname, wire))
            if f ~= nil then -- a known field of the wrong type does not parse at the receiver
                item:add_proto_expert_info(E.malformed, string.format(
                    "%s.%s sent with wire type %d", mname, f.name, wire))
            else
                item:add_proto_expert_info(E.unknown_field, string.format(
                    "%s has no field %d (wire type %d)", mname, num, wire))
            end
        elseif f.kind == "message" then
            local sub = tree:add(MSG_FIELDS[mname][num], whole)
            sub:set_text(f.name .. ": " .. f.type)
            if mname == "Envelope" and f.oneof == "body" then
                summary.body = f.type
            end
            decode_message(tvb, vstart, next_offset, f.type, sub, pinfo, summary, depth + 1)
        else
            if mname == "Envelope" and f.name == "version" then summary.version = value end
            add_scalar(tree, pinfo, summary, mname, num, f, range, value, u64)
        end
        offset = next_offset
    end
end

-- Frames ---------------------------------------------------------------------------------------

-- The first CPNS frame of a packet sets the Info column, the others add to it. The protocol
-- column tells which: it is "CPNS" only once this dissection of the packet showed a frame
-- (columns start empty at every dissection, also when Wireshark dissects a packet again).
local function set_info(pinfo, text)
    if tostring(pinfo.cols.protocol) == "CPNS" then
        pinfo.cols.info:append(", " .. text)
    else
        pinfo.cols.protocol = "CPNS"
        pinfo.cols.info:clear_fence()
        pinfo.cols.info:set(text)
    end
end

local function summary_text(s)
    local parts = { s.body or "Envelope" }
    if s.pn_id then parts[#parts + 1] = "pn=" .. s.pn_id end
    if #s.pne_ids > 0 and #s.pne_ids <= 4 then
        parts[#parts + 1] = "pne=" .. table.concat(s.pne_ids, ",")
    elseif #s.pne_ids > 4 then
        parts[#parts + 1] = "pnes=" .. #s.pne_ids
    end
    if s.setup_type and s.setup_type ~= 0 then
        parts[#parts + 1] = "setup=" .. (ENUMS.SetupType[s.setup_type] or tostring(s.setup_type))
    end
    if #s.reasons > 0 then parts[#parts + 1] = "reason=" .. table.concat(s.reasons, ",") end
    return table.concat(parts, " ")
end

-- One frame: tvb starts at its length prefix. complete = false: the frame is cut short (a
-- datagram shorter than its length, or an oversized length on a stream).
local function dissect_frame(tvb, pinfo, tree, transport)
    local item = tree:add(cpns, tvb())
    local len = tvb:len()
    if len < FRAME_HEADER_SIZE then
        item:add_proto_expert_info(E.malformed, "fewer than 4 octets: no length prefix")
        set_info(pinfo, "Malformed (truncated length prefix)")
        return
    end
    local body_len = tvb(0, 4):uint()
    item:add(F.length, tvb(0, 4))
    if body_len == 0 then
        item:add_proto_expert_info(E.malformed, "empty frame (length 0)")
        set_info(pinfo, "Malformed (empty frame)")
        return
    end
    if body_len > MAX_FRAME_SIZE then
        item:add_proto_expert_info(E.too_large, string.format(
            "length %d is over the maximum of %d octets", body_len, MAX_FRAME_SIZE))
        set_info(pinfo, "Malformed (frame too large: " .. body_len .. " octets)")
        return
    end
    if len - FRAME_HEADER_SIZE < body_len then
        item:add_proto_expert_info(E.malformed, string.format(
            "truncated: length %d but %d octets present", body_len, len - FRAME_HEADER_SIZE))
        set_info(pinfo, "Malformed (truncated frame)")
        return
    end
    if len - FRAME_HEADER_SIZE > body_len then
        item:add_proto_expert_info(E.malformed, string.format(
            "%d octets after the frame in one %s", len - FRAME_HEADER_SIZE - body_len, transport))
    end
    local summary = new_summary()
    local ok, err = pcall(decode_message, tvb, FRAME_HEADER_SIZE, FRAME_HEADER_SIZE + body_len,
        "Envelope", item, pinfo, summary, 0)
    if not ok then
        if getmetatable(err) == Malformed then
            local where = item:add(F.unknown, err.range)
            where:set_text("Undecodable: " .. err.text)
            where:add_proto_expert_info(E.malformed, err.text)
            set_info(pinfo, (summary.body or "Envelope") .. " Malformed (" .. err.text .. ")")
        else
            item:add_proto_expert_info(E.internal, tostring(err))
            set_info(pinfo, "CPNS (dissector error)")
        end
        item:append_text(", Malformed")
        return
    end
    if cpns.prefs.protobuf_view and protobuf_handle then
        pinfo.private["pb_msg_type"] = "message,cpns.v1.Envelope"
        local pb_ok, pb_err = pcall(protobuf_handle.call, protobuf_handle,
            tvb(FRAME_HEADER_SIZE, body_len):tvb(), pinfo, item)
        if not pb_ok then
            item:add_proto_expert_info(E.internal, "Protobuf dissector: " .. tostring(pb_err))
        end
    end
    if summary.body then
        item:add(F.msgtype, summary.body):set_generated()
    else
        item:add_proto_expert_info(E.no_body)
    end
    if summary.version ~= PROTOCOL_VERSION then
        item:add_proto_expert_info(E.version, string.format("version %d (this dissector knows %d)",
            summary.version, PROTOCOL_VERSION))
    end
    local text = summary_text(summary)
    item:append_text(", " .. text)
    set_info(pinfo, text)
end

-- A TCP or TLS byte stream: as many whole frames as the data holds; the rest is asked for.
local function dissect_stream(tvb, pinfo, tree)
    local len = tvb:len()
    local offset = 0
    while offset < len do
        local remain = len - offset
        if remain < FRAME_HEADER_SIZE then
            pinfo.desegment_offset = offset
            pinfo.desegment_len = DESEGMENT_ONE_MORE_SEGMENT
            return len
        end
        local body_len = tvb(offset, 4):uint()
        if body_len > MAX_FRAME_SIZE or body_len == 0 then
            -- the receiver closes the connection here: nothing after it is framed
            dissect_frame(tvb(offset):tvb(), pinfo, tree, "stream")
            return len
        end
        if remain < FRAME_HEADER_SIZE + body_len then
            pinfo.desegment_offset = offset
            pinfo.desegment_len = FRAME_HEADER_SIZE + body_len - remain
            return len
        end
        dissect_frame(tvb(offset, FRAME_HEADER_SIZE + body_len):tvb(), pinfo, tree, "stream")
        offset = offset + FRAME_HEADER_SIZE + body_len
    end
    return offset
end

-- The start of a CPNS frame as every encoder writes it: a length under 64 KiB, then the
-- Envelope's field 1 (version) = 1.
local function looks_like_cpns(tvb)
    if tvb:len() < 6 then return false end
    local body_len = tvb(0, 4):uint()
    return body_len >= 2 and body_len <= MAX_FRAME_SIZE and tvb(4, 1):uint() == 0x08 and
        tvb(5, 1):uint() == PROTOCOL_VERSION
end

-- A TLS record header: content type 20..23, major version 3.
local function looks_like_tls(tvb)
    if tvb:len() < 3 then return false end
    local ct = tvb(0, 1):uint()
    return ct >= 20 and ct <= 23 and tvb(1, 1):uint() == 3
end

-- Dispatch on the configured ports ---------------------------------------------------------

local tls_handle = Dissector.get("tls")
local f_tcp_stream = Field.new("tcp.stream")
local tls_streams = {}  -- tcp.stream -> true (TLS) / false (clear), from its first octets
local inside_tls = false -- set while the TLS dissector runs for us: what it hands back is clear

function cpns.init()
    tls_streams = {}
    inside_tls = false
end

local function dissect_tcp(tvb, pinfo, tree)
    if inside_tls then
        return dissect_stream(tvb, pinfo, tree)
    end
    local stream_field = f_tcp_stream()
    local stream = stream_field and stream_field.value
    local is_tls = stream and tls_streams[stream]
    if is_tls == nil then
        is_tls = looks_like_tls(tvb)
        if stream then tls_streams[stream] = is_tls end
    end
    if not is_tls then
        return dissect_stream(tvb, pinfo, tree)
    end
    inside_tls = true
    local ok, consumed = pcall(tls_handle.call, tls_handle, tvb, pinfo, tree)
    inside_tls = false
    if not ok then
        tree:add(cpns, tvb()):add_proto_expert_info(E.internal, tostring(consumed))
        return tvb:len()
    end
    return consumed
end

local function dissect_datagram(tvb, pinfo, tree)
    dissect_frame(tvb, pinfo, tree, "datagram")
    return tvb:len()
end

function cpns.dissector(tvb, pinfo, tree)
    if pinfo.port_type == 3 then -- PT_UDP
        return dissect_datagram(tvb, pinfo, tree)
    end
    return dissect_tcp(tvb, pinfo, tree)
end

local function heuristic_stream(tvb, pinfo, tree)
    if not cpns.prefs.heuristic or not looks_like_cpns(tvb) then return false end
    dissect_stream(tvb, pinfo, tree)
    return true
end

local function heuristic_datagram(tvb, pinfo, tree)
    if not cpns.prefs.heuristic or not looks_like_cpns(tvb) then return false end
    dissect_datagram(tvb, pinfo, tree)
    return true
end

cpns:register_heuristic("tcp", heuristic_stream)
cpns:register_heuristic("tls", heuristic_stream)
cpns:register_heuristic("udp", heuristic_datagram)

local registered = {}

local function register_ports()
    local tcp_table = DissectorTable.get("tcp.port")
    local tls_table = DissectorTable.get("tls.port")
    local udp_table = DissectorTable.get("udp.port")
    if registered.pan then
        tcp_table:remove(registered.pan, cpns)
        tls_table:remove(registered.pan, cpns)
        tcp_table:remove(registered.server, cpns)
        tls_table:remove(registered.server, cpns)
        udp_table:remove(registered.discovery, cpns)
    end
    registered = { pan = cpns.prefs.pan_port, server = cpns.prefs.server_port,
        discovery = cpns.prefs.discovery_port }
    -- tls.port first: what the TLS dissector decrypts on these ports comes back to cpns; then
    -- tcp.port, so that cpns (not TLS) sees each new connection and tells clear from TLS.
    for _, port in ipairs({ registered.pan, registered.server }) do
        tls_table:add(port, cpns)
        tcp_table:add(port, cpns)
    end
    udp_table:add(registered.discovery, cpns)
end

function cpns.prefs_changed()
    if registered.pan ~= cpns.prefs.pan_port or registered.server ~= cpns.prefs.server_port or
        registered.discovery ~= cpns.prefs.discovery_port then
        register_ports()
    end
end

register_ports()
