"""The TCP transition table the fast path runs (loaded into ms_tcp_fsm).

Rows are (state, flow direction, event) -> outcome. The outcome is a next
state, or one of the verdicts of bpf/lib/maps.h:
  TV_CLOSE_PHASE  legal; the state follows from FIN bookkeeping
                  (conntrack.h ms_close_phase_state: FIN_WAIT1/2, CLOSE_WAIT,
                  CLOSING, LAST_ACK, TIME_WAIT from who sent a FIN and
                  whether it was acknowledged),
  TV_IGNORE       legal, state unchanged, window not advanced,
  TV_INVALID      illegal: dropped with DROP_TCP_INVALID (or passed and
                  counted, when configured).
Anything not listed is TV_INVALID. Directions: O = from the initiator,
R = from the responder. The packet must also be inside the window
(conntrack.h ms_tcp_window) except where the outcome is TV_IGNORE.

A RST row applies only to a RST that counts (conntrack.h
ms_tcp_rst_counts, RFC 5961 3.2): at the sequence number its receiver
expects, or in SYN_SENT one from the responder acknowledging the SYN. Any
other RST inside the window passes as PASS_TCP_RST_CHALLENGE with the
session unchanged (the endpoint answers it with a challenge ACK).

A new flow (no session) is not in the table: only a bare SYN opens one
(or, with the loose option, an ACK picks the flow up mid-stream).
"""
from __future__ import annotations

from .enums import enum_list

_ST = {e.name: e.value for e in enum_list("CT_STATE")}
_EV = {e.name: e.value for e in enum_list("TCP_EVENT")}
_TV = {e.name: e.value for e in enum_list("TCP_VERDICT")}

O, R = 0, 1
CLOSE_PHASE = "TV_CLOSE_PHASE"
IGNORE = "TV_IGNORE"

# States once the handshake is over, where FIN and ACK follow the FIN
# bookkeeping.
_CLOSING_STATES = ("CT_ESTABLISHED", "CT_FIN_WAIT1", "CT_FIN_WAIT2", "CT_CLOSE_WAIT",
                   "CT_CLOSING", "CT_LAST_ACK")


def _rows() -> dict[tuple[str, int, str], str]:
    t: dict[tuple[str, int, str], str] = {}

    # Handshake.
    t["CT_SYN_SENT", O, "EV_SYN"] = "CT_SYN_SENT"          # SYN retransmitted
    t["CT_SYN_SENT", R, "EV_SYNACK"] = "CT_SYN_RECV"       # must ack the SYN (checked)
    t["CT_SYN_SENT", R, "EV_SYN"] = "CT_SYN_SENT2"         # simultaneous open
    t["CT_SYN_SENT", O, "EV_RST"] = "CT_CLOSE"             # initiator gives up
    t["CT_SYN_SENT", R, "EV_RST"] = "CT_CLOSE"             # connection refused

    t["CT_SYN_SENT2", O, "EV_SYN"] = "CT_SYN_SENT2"
    t["CT_SYN_SENT2", R, "EV_SYN"] = "CT_SYN_SENT2"
    t["CT_SYN_SENT2", O, "EV_SYNACK"] = "CT_SYN_RECV"
    t["CT_SYN_SENT2", R, "EV_SYNACK"] = "CT_SYN_RECV"
    t["CT_SYN_SENT2", O, "EV_RST"] = "CT_CLOSE"
    t["CT_SYN_SENT2", R, "EV_RST"] = "CT_CLOSE"

    t["CT_SYN_RECV", O, "EV_SYN"] = IGNORE                 # SYN retransmitted, SYN-ACK lost
    t["CT_SYN_RECV", R, "EV_SYNACK"] = "CT_SYN_RECV"       # SYN-ACK retransmitted
    t["CT_SYN_RECV", O, "EV_SYNACK"] = "CT_SYN_RECV"       # simultaneous open's other SYN-ACK
    t["CT_SYN_RECV", O, "EV_ACK"] = CLOSE_PHASE            # handshake done -> ESTABLISHED
    t["CT_SYN_RECV", O, "EV_FIN"] = CLOSE_PHASE            # ACK+FIN at once -> FIN_WAIT1
    t["CT_SYN_RECV", R, "EV_ACK"] = "CT_SYN_RECV"          # responder data early (TFO)
    t["CT_SYN_RECV", R, "EV_FIN"] = CLOSE_PHASE            # responder closes at once
    t["CT_SYN_RECV", O, "EV_RST"] = "CT_CLOSE"
    t["CT_SYN_RECV", R, "EV_RST"] = "CT_CLOSE"

    # Established and closing: FIN / ACK follow the bookkeeping; a new SYN
    # or SYN-ACK leaves the flow alone (RFC 5961 section 4: the endpoint
    # answers with a challenge ACK); a RST at the expected sequence closes
    # (any other is passed for the endpoint to challenge, see above).
    for s in _CLOSING_STATES:
        for d in (O, R):
            t[s, d, "EV_ACK"] = CLOSE_PHASE
            t[s, d, "EV_FIN"] = CLOSE_PHASE
            t[s, d, "EV_SYN"] = IGNORE
            t[s, d, "EV_SYNACK"] = IGNORE
            t[s, d, "EV_RST"] = "CT_CLOSE"

    # TIME_WAIT: stray ACKs and FINs are retransmissions; the initiator may
    # reuse the ports with a new SYN (the flow starts over).
    for d in (O, R):
        t["CT_TIME_WAIT", d, "EV_ACK"] = "CT_TIME_WAIT"
        t["CT_TIME_WAIT", d, "EV_FIN"] = "CT_TIME_WAIT"
        t["CT_TIME_WAIT", d, "EV_RST"] = "CT_CLOSE"
        t["CT_CLOSE", d, "EV_ACK"] = "CT_CLOSE"
        t["CT_CLOSE", d, "EV_RST"] = "CT_CLOSE"
    t["CT_TIME_WAIT", O, "EV_SYN"] = "CT_SYN_SENT"
    t["CT_CLOSE", O, "EV_SYN"] = "CT_SYN_SENT"
    return t


ROWS = _rows()


def outcome(state: str, direction: int, event: str) -> str:
    return ROWS.get((state, direction, event), "TV_INVALID")


def table_bytes() -> list[tuple[int, int]]:
    """(map index, value) for every cell of ms_tcp_fsm."""
    n_ev = len(_EV)
    out = []
    for sname, s in _ST.items():
        for d in (O, R):
            for ename, e in _EV.items():
                o = outcome(sname, d, ename)
                out.append(((s * 2 + d) * n_ev + e, _ST[o] if o in _ST else _TV[o]))
    return out
