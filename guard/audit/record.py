"""Verdicts and actions -> audit records with Elastic Common Schema field names.

Records are nested dicts (``{"event": {"action": ...}}``), which is how ECS documents
are shipped; Filebeat/Elastic Agent and most SIEMs read them without mapping. guard's own
fields live under ``guard.*``. The writer adds ``@timestamp``, host, and the hash chain.
"""

from __future__ import annotations

import getpass
import os
import pwd
from pathlib import PurePath
from typing import Any

from ..identify.names import valid_text
from ..verdict import Action, Decision, ExecDecision, Verdict, VerdictSummary, path_b64

from .writer import SCHEMA_VERSION  # one definition, in the writer


def actor() -> str:
    """Who is doing this: the sudo caller when run through sudo, else the user."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def _user_of(uid: int | None) -> str:
    if uid is None:
        return ""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def file_fields(path: str, size: int | None = None, sha256: str = "",
                uid: int | None = None) -> dict[str, Any]:
    """ECS file.* for a path; exact bytes in file.path_b64 when it is not valid UTF-8."""
    p = PurePath(path)
    out: dict[str, Any] = {"path": valid_text(path), "name": valid_text(p.name),
                           "directory": valid_text(str(p.parent))}
    if p.suffix:
        out["extension"] = valid_text(p.suffix[1:].lower())
    if size is not None:
        out["size"] = size
    if sha256:
        out["hash"] = {"sha256": sha256}
    if uid is not None:
        out["owner"] = _user_of(uid)
        out["uid"] = str(uid)
    raw = path_b64(path)
    if raw is not None:
        out["path_b64"] = raw
    return out


def scan_record(decision: Decision, source: str = "", provenance: dict[str, Any] | None = None,
                quarantine_id: str = "", outcome: str = "success", error: str = "",
                trigger: str = "", quarantine_ms: float | None = None) -> dict[str, Any]:
    """The record for one file the daemon judged (and maybe quarantined).

    ``event.duration`` (ECS, nanoseconds) is the scan plus the move to the vault;
    ``guard.timing`` splits it in milliseconds.
    """
    v: Verdict = decision.verdict
    uid = v.owner_uid
    if decision.action is Action.QUARANTINE:
        action = "quarantine"
    elif decision.intended is Action.QUARANTINE:
        action = "would-quarantine"             # monitor mode: logged, nothing moved
    else:
        action = "file-scanned"
    if error:
        outcome = "failure"
    rec: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "event": {
            "kind": "alert" if v.flagged else "event",
            "category": ["file", "malware"] if v.flagged else ["file"],
            "type": ["deletion"] if action == "quarantine" and outcome == "success" else ["info"],
            "action": action, "outcome": outcome, "module": "guard",
            "reason": v.summary or v.level.value,
        },
        "file": {**file_fields(v.path, v.size, v.sha256, uid),
                 "mime_type": v.type.mime},
        "rule": {"name": list(v.rules)} if v.rules else {},
        "user": {"name": _user_of(uid)} if uid is not None else {},
        "guard": {
            "verdict": v.level.value,
            "codes": list(v.codes),
            "reasons": [r.to_dict() for r in v.reasons],
            "type": v.type.to_dict(),
            "claimed_family": v.claimed_family.value,
            "decision": decision.to_dict(),
            "mode": decision.mode,
            "meeting": decision.meeting,
            "source": source,
            "trigger": trigger,
        },
    }
    timing = {"scan_ms": round(v.scan_ms, 2)}
    if quarantine_ms is not None:
        timing["quarantine_ms"] = round(quarantine_ms, 2)
    rec["event"]["duration"] = int(sum(timing.values()) * 1_000_000)
    rec["guard"]["timing"] = timing
    if provenance:
        rec["guard"]["provenance"] = provenance
        if provenance.get("origin_url") or provenance.get("host_url"):
            rec["url"] = {"original": provenance.get("origin_url") or provenance["host_url"]}
    if quarantine_id:
        rec["guard"]["quarantine_id"] = quarantine_id
    if error or v.error:
        rec["error"] = {"message": error or v.error}
    return {k: val for k, val in rec.items() if val != {}}


def admin_record(action: str, outcome: str = "success", message: str = "",
                 path: str = "", quarantine_id: str = "", **guard_fields: Any
                 ) -> dict[str, Any]:
    """A record of something a person or the daemon itself did (restore, purge, reload)."""
    rec: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "event": {"kind": "event", "category": ["configuration"] if "config" in action
                  else ["file"], "type": ["change"], "action": action, "outcome": outcome,
                  "module": "guard"},
        "user": {"name": actor()},
        "guard": {k: v for k, v in guard_fields.items() if v not in (None, "")},
    }
    if message:
        rec["message"] = message
        rec["event"]["reason"] = message
    if path:
        rec["file"] = file_fields(path)
    if quarantine_id:
        rec["guard"]["quarantine_id"] = quarantine_id
    return rec


def exec_record(decision: ExecDecision, path: str, process: dict[str, Any], *,
                backend: str, latency_ms: float, sha256: str = "",
                verdict: VerdictSummary | None = None, uid: int | None = None,
                outcome: str = "") -> dict[str, Any]:
    """The record of one launch decision (``exec-allowed``, ``exec-denied``,
    ``exec-would-deny``, ``exec-timeout``). *process* is ECS ``process.*`` of the
    launcher; *uid* its user (``user.name``, ``user.id``); *outcome* what stopping it
    did (portable monitor)."""
    rec = admin_record(decision.action, outcome="success", message=decision.because,
                       path=path,
                       decision={"allow": decision.allow, "how": decision.how.value,
                                 "because": decision.because, "entry": decision.entry,
                                 "fail_mode": decision.how.value if decision.how.timed_out
                                 else "", "mode": decision.mode.value},
                       backend=backend, latency_ms=latency_ms, outcome_detail=outcome or None)
    rec["event"]["kind"] = "alert" if not decision.allow else "event"
    rec["event"]["category"] = ["process"]
    rec["event"]["type"] = ["denied"] if not decision.allow else ["allowed"]
    rec["process"] = process
    if sha256:
        rec.setdefault("file", {})["hash"] = {"sha256": sha256}
    rec["guard"]["decision"]["verdict"] = verdict.level.value if verdict else "not-scanned"
    if verdict is not None:
        rec["guard"]["verdict"] = verdict.level.value
        rec["guard"]["codes"] = list(verdict.codes)
        if verdict.rules:
            rec["rule"] = {"name": list(verdict.rules)}
    if uid is not None:
        rec["user"] = {"name": _user_of(uid), "id": str(uid)}
    else:
        rec.pop("user", None)           # not the agent's own user: unknown
    return rec
