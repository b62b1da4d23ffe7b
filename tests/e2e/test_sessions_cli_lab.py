"""`microseg sessions`, `status` and `sweep` on a build attached by the CLI.

The lab test attaches with `microseg up` (a process that exits: the maps
are then reached by id, as an operator's later command reaches them), runs
real clients through the gateway, and reads the sessions back through the
CLI. Bad filter input is refused before anything is read.
"""
from __future__ import annotations

import json

import pytest

from appliance.lab import CLIENT_V4, SERVER_V4, HttpServer
from datapath.config import DatapathConfig
# An address in the server's subnet that nobody holds: a SYN to it stays unanswered.
NOBODY_V4 = "10.77.2.99"


def assert_usage_error(r, *needles):
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("microseg: error: ")
    for n in needles:
        assert n in lines[0]


@pytest.mark.parametrize("args, needle", [
    (("--src", "not-an-ip"), "--src 'not-an-ip'"),
    (("--dst", "10.0.0.0/99"), "--dst"),
    (("--port", "http"), "--port 'http'"),
    (("--port", "65536"), "--port"),
    (("--state", "SLEEPING"), "--state 'SLEEPING'"),
    (("--proto", "sctp2"), "--proto"),
])
def test_bad_filter_is_one_line_and_exit_2(microseg, args, needle):
    assert_usage_error(microseg("sessions", *args), needle)


def sessions_json(cli, lab, *filters) -> dict:
    return json.loads(cli("sessions", "--netns", lab.gateway, "--json", *filters, check=True).stdout)


def shown(cli, lab, *filters) -> list[dict]:
    return sessions_json(cli, lab, *filters)["sessions"]


# Each CLI call below may take seconds on a busy machine: the half-open
# and TIME_WAIT sessions must outlive them all, so nothing expires mid-test.
LONG_TIMEOUTS = "timeouts: {syn_sent: 3600, time_wait: 3600}\n"


@pytest.mark.lab
def test_sessions_status_and_sweep_in_the_lab(tmp_path, microseg, lab, attached):
    cli = microseg
    settings = tmp_path / "datapath.yaml"
    settings.write_text(LONG_TIMEOUTS)
    with attached("--config", settings):
        # a handshake nobody answers: half-open, SYN_SENT, unreplied
        lab.run(lab.client, ["curl", "-s", "--max-time", "1", f"http://{NOBODY_V4}:8081/"], check=False)
        with HttpServer(lab):
            r = lab.run(lab.client, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                     "--max-time", "5", f"http://{SERVER_V4}:8080/"])
            assert r.stdout == "200"

        data = sessions_json(cli, lab)
        web = [s for s in data["sessions"] if s["dport"] == 8080]
        assert len(web) == 1, data
        s = web[0]
        # initiator first; the server (python http.server, HTTP/1.0)
        # closes first, the client answers with its FIN, both are
        # acknowledged: TIME_WAIT (not CLOSE: nobody reset)
        assert (s["proto"], s["src"], s["dst"], s["table"]) == ("tcp", CLIENT_V4, SERVER_V4, "ms_flows")
        assert s["sport"] not in (8080, 0)
        assert s["state"] == "TIME_WAIT"
        assert 120 < s["timeout_s"] <= 3600       # TIME_WAIT's configured timeout
        assert s["packets_orig"] >= 4 and s["packets_reply"] >= 4
        assert s["bytes_reply"] > s["bytes_orig"]  # the page came back
        assert "ASSURED" in s["flags"] and "UNREPLIED" not in s["flags"]
        syn = [x for x in data["sessions"] if x["dport"] == 8081]
        assert len(syn) == 1 and syn[0]["table"] == "ms_halfopen"
        assert syn[0]["state"] == "SYN_SENT" and "UNREPLIED" in syn[0]["flags"]
        assert syn[0]["packets_reply"] == 0
        sm = data["summary"]
        assert sm["shown"] == sm["total"] == len(data["sessions"]) >= 2
        assert sm["by_state"]["TIME_WAIT"] == 1 and sm["by_table"]["ms_halfopen"] >= 1

        # the text form: conntrack -L's shape, and a summary line
        text = cli("sessions", "--netns", lab.gateway, "--port", "8080", check=True).stdout.splitlines()
        assert len(text) == 2
        assert text[0].startswith("tcp ") and " TIME_WAIT " in text[0]
        assert f"src={CLIENT_V4} dst={SERVER_V4} sport={s['sport']} dport=8080" in text[0]
        assert f"src={SERVER_V4} dst={CLIENT_V4} sport=8080 dport={s['sport']}" in text[0]
        assert "[ASSURED]" in text[0] and text[0].endswith(" app=http")
        assert text[1].startswith("1 session shown of ") and "TIME_WAIT 1" in text[1]

        # filters
        def ports(*f):
            return sorted(x["dport"] for x in shown(cli, lab, *f))
        assert ports("--port", "8080") == [8080]
        assert ports("--port", str(s["sport"])) == [8080]   # either end's port
        assert ports("--port", "9") == []
        assert ports("--state", "TIME_WAIT") == [8080]
        assert ports("--state", "time_wait") == [8080]
        assert ports("--state", "ESTABLISHED") == []
        assert ports("--state", "SYN_SENT") == [8081]
        assert ports("--src", "10.77.1.0/24", "--proto", "tcp") == [8080, 8081]
        assert ports("--src", SERVER_V4) == []              # the server did not open it
        assert ports("--dst", SERVER_V4) == [8080]
        assert ports("--dst", "10.77.2.0/24", "--port", "8081") == [8081]
        assert ports("--proto", "udp") == []
        assert ports("--src", "fd77:1::2") == []            # IPv6 filter, IPv4 sessions

        # status: the session table as the kernel counts it
        st = json.loads(cli("status", "--netns", lab.gateway, "--json", check=True).stdout)
        (prog,) = {a["prog_id"] for a in st["attached"] if a["direction"] == "DIR_INGRESS"}
        ses = st["programs"][str(prog)]["sessions"]
        f, h = ses["ms_flows"], ses["ms_halfopen"]
        assert f["entries"] == f["present"] == sm["by_table"]["ms_flows"]
        assert f["entries"] == f["inserted"] - f["deleted_kernel"] - f["deleted_user"]
        assert (f["capacity"], f["insert_failed"], f["alerts"], f["pressure_pct"]) == (524288, 0, 0, 90)
        assert 0 < f["pct_used"] < 1 and f["alert_armed"]
        d = DatapathConfig()   # both families' half-open maps: 65,536 + 16,384 by default
        assert h["entries"] == h["present"] >= 1 and h["capacity"] == d.halfopen_table_size + d.halfopen6_size == 81920
        assert h["evictions"] == 0   # a handful of flows in an 81,920-entry LRU
        # Each family's map against its own size (IPv4 sessions only here).
        pm = ses["maps"]
        assert (pm["ms_flows4"]["entries"], pm["ms_flows4"]["capacity"]) == (f["entries"], 524288)
        assert (pm["ms_flows6"]["entries"], pm["ms_flows6"]["capacity"]) == (0, d.flow6_size)
        assert pm["ms_halfopen4"]["entries"] == h["present"] and pm["ms_halfopen6"]["capacity"] == d.halfopen6_size
        maps = {m["name"]: m for m in st["maps"] if prog in m["prog_ids"]}   # each map once
        mf = maps["ms_flows4"]
        assert mf["key_size"] == 16 and maps["ms_flows6"]["key_size"] == 40   # IPv4 sessions under 16-byte keys
        assert mf["estimate_bytes"] == 524288 * (mf["key_size"] + mf["value_size"] + 64)
        assert mf["memlock_bytes"] > 0
        text = cli("status", "--netns", lab.gateway, check=True).stdout
        assert "insert failures" in text and "alerts sent" in text and "estimate" in text
        assert "ms_flows6 (IPv6)" in text and "ms_halfopen6 (IPv6)" in text

        # one sweep pass: nothing has expired yet, every entry is read
        sw = json.loads(cli("sweep", "--netns", lab.gateway, "--json", check=True).stdout)["sweeps"]
        assert len(sw) == 1 and sw[0]["prog_id"] == prog
        assert sw[0]["scanned"] == f["present"] + h["present"]
        assert sw[0]["expired_flows"] == 0 and sw[0]["entries_after"] == f["entries"]
        out = cli("sweep", "--netns", lab.gateway, check=True).stdout
        assert out.startswith(f"build {prog}: scanned ")

        # bad input in a real namespace: still one line, exit 2
        assert_usage_error(cli("sessions", "--netns", lab.gateway, "--src", "not-an-ip"), "--src")


def test_not_attached_is_one_line(microseg, lab):
    for cmd in ("sessions", "sweep"):
        r = microseg(cmd, "--netns", lab.gateway)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert r.stderr.strip() == f"microseg: error: microseg is not attached to any interface " \
                                   f"in network namespace '{lab.gateway}'"
