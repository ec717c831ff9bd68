"""The path probe (support.probe) reads ping's and tailscale's own output: every echo sent is counted, answered or
lost, and gets the path the LAN device sent it on."""
import pytest

from support.probe import Echo, PathSample, echoes, path_of, summarize, timeline

STARTED = 1000.0
# iputils ping -n -D -O -i 0.2, as it prints an outage of two echoes, then SIGINT's totals
PING = """PING 100.64.0.2 (100.64.0.2) 56(84) bytes of data.
[1000.001000] 64 bytes from 100.64.0.2: icmp_seq=1 ttl=64 time=1.10 ms
[1000.201000] 64 bytes from 100.64.0.2: icmp_seq=2 ttl=64 time=1.30 ms
[1000.600000] no answer yet for icmp_seq=3
[1000.800000] no answer yet for icmp_seq=4
[1000.830000] 64 bytes from 100.64.0.2: icmp_seq=5 ttl=64 time=30.2 ms
[1001.010000] 64 bytes from 100.64.0.2: icmp_seq=6 ttl=64 time=1.20 ms

--- 100.64.0.2 ping statistics ---
7 packets transmitted, 4 received, 42.8571% packet loss, time 1203ms
"""
PATHS = [PathSample(999.9, "peer-relay", "172.18.255.200:61441:vni:1"),
         PathSample(1000.5, "derp", "headscale"),
         PathSample(1000.95, "peer-relay", "[fc00:f853:ccd:e793::c8]:61441:vni:7")]


@pytest.mark.parametrize("peer, path", [
    ({"PeerRelay": "172.18.255.200:61441:vni:1", "Relay": "headscale"}, ("peer-relay", "172.18.255.200:61441:vni:1")),
    ({"CurAddr": "172.18.0.5:41641", "Relay": "headscale"}, ("direct", "172.18.0.5:41641")),
    ({"Relay": "headscale", "CurAddr": "", "PeerRelay": ""}, ("derp", "headscale")),
    ({}, ("none", "")),
], ids=["peer relay", "direct", "derp", "nothing yet"])
def test_the_path_is_the_one_tailscale_sends_on(peer, path):
    assert path_of(peer) == path


def test_every_echo_sent_is_counted_answered_or_lost_with_the_path_it_was_sent_on():
    run = echoes(PING, STARTED, 0.2, PATHS)
    assert [e.seq for e in run] == [1, 2, 3, 4, 5, 6, 7], "ping's own total counts the last, unanswered echo"
    assert [e.rtt_ms for e in run] == [1.1, 1.3, None, None, 30.2, 1.2, None]
    assert [e.path for e in run] == ["peer-relay", "peer-relay", "peer-relay", "derp", "derp", "peer-relay",
                                     "peer-relay"]
    assert run[3] == Echo(4, 0.6, None, "derp", "headscale")


def test_the_summary_counts_what_a_lan_user_lost_and_the_time_off_a_relay():
    summary = summarize(echoes(PING, STARTED, 0.2, PATHS), 0.2)
    assert summary["sent"] == 7 and summary["lost"] == 3 and summary["lost_seqs"] == [3, 4, 7]
    # lost (3, 4, 7) or answered off a relay (5): four echoes of 0.2 s
    assert summary["seconds_off_relay"] == 0.8
    assert summary["relays"] == ["172.18.255.200:61441", "[fc00:f853:ccd:e793::c8]:61441"]
    assert summary["last_path"] == "peer-relay"


def test_the_timeline_has_one_line_per_stretch_on_one_path():
    lines = timeline(echoes(PING, STARTED, 0.2, PATHS)).splitlines()
    assert [line.split()[5] for line in lines] == ["peer-relay", "lost", "derp", "peer-relay", "lost"]
    assert "2 echoes, median 1.30 ms" in lines[0]
    assert lines[1].split()[:5] == ["0.4", "s", "to", "0.6", "s"] and "2 echoes" in lines[1]


def test_while_running_an_unanswered_echo_counts_as_lost():
    live = PING.split("\n\n---")[0] + "\n[1001.400000] no answer yet for icmp_seq=8\n"
    assert [e.seq for e in echoes(live, STARTED, 0.2, PATHS)][-1] == 8


@pytest.mark.parametrize("lines, back", [
    (PING.split("\n\n---")[0], False),  # the last due echoes: one lost (seq 3, 4), one via DERP (5)
    ("".join(f"[{1000 + 0.2 * i + 0.001:.6f}] 64 bytes from 100.64.0.2: icmp_seq={i + 1} ttl=64 time=1.2 ms\n"
             for i in range(10)), True),
], ids=["lost and DERP", "five answered through the relay"])
def test_relayed_again_needs_answered_echoes_sent_through_the_relay(lines, back, monkeypatch):
    from support import probe as module

    probe = module.PathProbe(net=None)
    probe.started, probe._lines = STARTED, [lines]
    probe.paths = [PathSample(999.0, "peer-relay", "[fc00:f853:ccd:e793::c8]:61441:vni:7")] if back else PATHS
    monkeypatch.setattr(module.time, "time", lambda: STARTED + 4.0)
    assert probe.relayed_again({"[fc00:f853:ccd:e793::c8]:61441", "172.18.255.200:61441"}) is back


def test_echoes_still_in_flight_when_the_probe_stops_are_not_counted_lost(monkeypatch):
    from support import probe as module

    class Stopped:  # ping, thread: already done
        def send_signal(self, _): pass
        def wait(self, timeout=None): pass
        def join(self, timeout=None): pass
    probe = module.PathProbe(net=None)
    probe.started, probe._lines, probe.paths = STARTED, [PING], PATHS
    probe._ping = probe._reader = probe._poller = Stopped()
    # stopped 1.3 s after echo 7 was sent: its answer was still due (echoes 3 and 4 were due long before)
    monkeypatch.setattr(module.time, "time", lambda: STARTED + 2.5)
    probe.__exit__(None, None, None)
    assert [e.seq for e in probe.echoes] == [1, 2, 3, 4, 5, 6]
    assert probe.summary()["lost_seqs"] == [3, 4]
