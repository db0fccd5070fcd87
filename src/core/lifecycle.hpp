// The life of a PN after its establishment (docs/protocol.md, "PN lifecycle"), the parts the
// three roles, the store and the simulator share: the one rule that applies a change to a PN
// Inventory, and the proofs that make a change authentic end to end. I/O-free.
//
// A change is decided by the CPNS Server and made durable in its store before anyone is told.
// Every PN carries a revision (PnInventory.revision): 0 when registered, +1 per change. A
// change names the revision it applies to; the store applies it only to that revision
// (compare-and-set), so a replayed or stale change is refused (STALE_REVISION), and two changes
// racing on one PN cannot both win.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/codec.hpp"
#include "core/crypto.hpp"

namespace cpns {

// The result of applying one change to a PN.
struct ChangeResult {
    pb::FailureReason reason = pb::REASON_NONE;  // REASON_NONE: applied
    // Applied: the PN after the change (revision + 1; no members when dissolved). Refused as
    // STALE_REVISION or NOT_A_MEMBER: the PN as it is. UNKNOWN_PN: empty.
    pb::PnInventory inventory;
    bool dissolved = false;           // applied, and the PN no longer exists
    std::vector<std::string> before;  // the members before the change (applied only)
};

// Applies `op` (for LEAVE, REMOVE and REKEY: of `pne_id`; for ADD: the members `added`) to
// `current` (nullopt: the PN does not exist) if `current` is at `expected_revision`. A PN left
// without members is dissolved; ADD refuses a PNE already in the PN (ALREADY_A_MEMBER) and keeps
// the earlier members first; REKEY changes only the revision, for a member that has a LocalEUKey
// (NOT_A_MEMBER, NO_LOCAL_EUKEY otherwise). Pure: the SQL store and the simulator's directory both
// decide with it. CHANGE_SYNC (resynchronisation, docs/protocol.md) changes nothing: it reads the
// PN (REASON_NONE with `current` as it is, `before` empty, or UNKNOWN_PN); the callers write
// nothing for it.
ChangeResult change_inventory(const std::optional<pb::PnInventory>& current, pb::ChangeOp op,
                              const std::string& pne_id, std::uint64_t expected_revision,
                              const std::vector<pb::PnMember>& added = {});

// The reason an outcome reports: REASON_NONE when it succeeded; when it failed, `reason`, or
// INTERNAL_ERROR if the peer refused without naming one (an outcome's success and its reason
// always agree; found by cpns-fuzz-gateway).
constexpr pb::FailureReason outcome_reason(bool succeeded, pb::FailureReason reason) {
    if (succeeded) return pb::REASON_NONE;
    return reason == pb::REASON_NONE ? pb::INTERNAL_ERROR : reason;
}

// "leave", "remove", "dissolve", "add", "rekey": the word used in logs, outcomes and the audit log.
std::string_view to_string(pb::ChangeOp op);
// The notice each PNE concerned by an applied change gets (in this order: the PNE that left or
// was removed, then every remaining member, or every former member of a dissolved PN; for ADD,
// NOTICE_UPDATED to each earlier member only: the PNEs added get the registration's result;
// for REKEY, NOTICE_UPDATED to every member but the re-keyed one, which gets its result),
// without proofs. For CHANGE_SYNC (`before`: the members the PN GW held): NOTICE_REMOVED to each
// PNE it held that is no longer in the PN, NOTICE_UPDATED to every member, or NOTICE_DISSOLVED
// to each PNE it held when the PN is gone. For a STALE_REVISION refusal of a leave: NOTICE_UPDATED
// to the leaver, if the current PN lists it, so that it can bring its view up to date.
std::vector<pb::PnChangeNotice> change_notices(const ChangeResult& r, pb::ChangeOp op,
                                               const std::string& pne_id,
                                               const std::string& rand_pne);
// The server's proof of a notice, under the EUKey of the PNE it is for.
Hash notice_proof(const SecretKey& eukey_pne, const pb::PnChangeNotice& n);
// A PNE's leave proof over its request (pn_id, gw_id, revision, rand_pne).
Hash leave_proof(const SecretKey& eukey_pne, const std::string& pne_id,
                 const pb::PnLeaveRequest& m);

}  // namespace cpns
