"""The path probe (support.probe) reads ping's and tailscale's own output: every echo sent is counted, answered or
lost, and gets the paths both ways: the LAN device's it was sent on, and the workload's the reply came back on."""
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
[1001.017000] 64 bytes from 100.64.0.2: icmp_seq=6 ttl=64 time=16.1 ms

--- 100.64.0.2 ping statistics ---
7 packets transmitted, 4 received, 42.8571% packet loss, time 1203ms
"""
PATHS = [PathSample(999.9, "peer-relay", "172.18.255.200:61441:vni:1"),
         PathSample(1000.5, "derp", "headscale"),
         PathSample(1000.95, "peer-relay", "[fc00:f853:ccd:e793::c8]:61441:vni:7")]
# the workload's way back: on a relay (the address it reaches it at in the cluster) but for a while around echo 6
BACK = [PathSample(999.9, "peer-relay", "10.244.1.5:61441:vni:2"),
        PathSample(1000.9, "derp", "headscale"),
        PathSample(1001.1, "peer-relay", "10.244.1.5:61441:vni:8")]


@pytest.mark.parametrize("peer, path", [
    ({"PeerRelay": "172.18.255.200:61441:vni:1", "Relay": "headscale"}, ("peer-relay", "172.18.255.200:61441:vni:1")),
    ({"CurAddr": "172.18.0.5:41641", "Relay": "headscale"}, ("direct", "172.18.0.5:41641")),
    ({"Relay": "headscale", "CurAddr": "", "PeerRelay": ""}, ("derp", "headscale")),
    ({}, ("none", "")),
], ids=["peer relay", "direct", "derp", "nothing yet"])
def test_the_path_is_the_one_tailscale_sends_on(peer, path):
    assert path_of(peer) == path


def test_every_echo_sent_is_counted_answered_or_lost_with_the_paths_both_ways_it_was_sent_on():
    run = echoes(PING, STARTED, 0.2, PATHS, BACK)
    assert [e.seq for e in run] == [1, 2, 3, 4, 5, 6, 7], "ping's own total counts the last, unanswered echo"
    assert [e.rtt_ms for e in run] == [1.1, 1.3, None, None, 30.2, 16.1, None]
    assert [e.path for e in run] == ["peer-relay", "peer-relay", "peer-relay", "derp", "derp", "peer-relay",
                                     "peer-relay"]
    assert [e.back_path for e in run] == ["peer-relay"] * 5 + ["derp", "peer-relay"]
    assert run[3] == Echo(4, 0.6, None, "derp", "headscale", "peer-relay", "10.244.1.5:61441:vni:2")
    assert run[5].route == "peer-relay/derp", "an echo out through a relay and back via DERP names both"


def test_an_echo_is_relayed_only_when_answered_through_a_relay_both_ways():
    assert [e.relayed for e in echoes(PING, STARTED, 0.2, PATHS, BACK)] == [True, True, False, False, False, False,
                                                                           False]


def test_the_summary_counts_what_a_lan_user_lost_and_the_time_off_a_relay():
    summary = summarize(echoes(PING, STARTED, 0.2, PATHS, BACK), 0.2)
    assert summary["sent"] == 7 and summary["lost"] == 3 and summary["lost_seqs"] == [3, 4, 7]
    # lost (3, 4, 7), out via DERP (5) or back via DERP (6): five echoes of 0.2 s, two of them relayed one way
    assert summary["seconds_off_relay"] == 1.0
    assert summary["seconds_relayed_one_way"] == 0.4
    assert summary["relays"] == ["172.18.255.200:61441", "[fc00:f853:ccd:e793::c8]:61441"]
    assert summary["last_path"] == "peer-relay"


def test_the_timeline_has_one_line_per_stretch_on_one_route():
    lines = timeline(echoes(PING, STARTED, 0.2, PATHS, BACK)).splitlines()
    assert [line.split()[5] for line in lines] == ["peer-relay", "lost", "derp/peer-relay", "peer-relay/derp",
                                                       "lost"]
    assert "2 echoes, median 1.30 ms" in lines[0]
    assert lines[1].split()[:5] == ["0.4", "s", "to", "0.6", "s"] and "2 echoes" in lines[1]


def test_while_running_an_unanswered_echo_counts_as_lost():
    live = PING.split("\n\n---")[0] + "\n[1001.400000] no answer yet for icmp_seq=8\n"
    assert [e.seq for e in echoes(live, STARTED, 0.2, PATHS, BACK)][-1] == 8


ANSWERED_10 = "".join(f"[{1000 + 0.2 * i + 0.001:.6f}] 64 bytes from 100.64.0.2: icmp_seq={i + 1} ttl=64 "
                      "time=1.2 ms\n" for i in range(10))
ON_RELAY = [PathSample(999.0, "peer-relay", "[fc00:f853:ccd:e793::c8]:61441:vni:7")]


@pytest.mark.parametrize("lines, paths, back_paths, relayed", [
    # the last due echoes: one lost (seq 3, 4), one via DERP (5)
    (PING.split("\n\n---")[0], PATHS, BACK, False),
    (ANSWERED_10, ON_RELAY, [PathSample(999.0, "peer-relay", "10.244.1.5:61441:vni:2")], True),
    (ANSWERED_10, ON_RELAY, [PathSample(999.0, "derp", "headscale")], False),
    (ANSWERED_10, ON_RELAY, [], False),
], ids=["lost and DERP", "five answered through the relay both ways", "out through the relay, back via DERP",
        "the way back unknown"])
def test_relayed_again_needs_answered_echoes_through_the_relay_both_ways(lines, paths, back_paths, relayed,
                                                                        monkeypatch):
    from support import probe as module

    probe = module.PathProbe(net=None)
    probe.started, probe._lines, probe.paths, probe.back_paths = STARTED, [lines], paths, back_paths
    monkeypatch.setattr(module.time, "time", lambda: STARTED + 4.0)
    assert probe.relayed_again({"[fc00:f853:ccd:e793::c8]:61441", "172.18.255.200:61441"}) is relayed


def test_echoes_still_in_flight_when_the_probe_stops_are_not_counted_lost(monkeypatch):
    from support import probe as module

    class Stopped:  # ping, thread: already done
        def send_signal(self, _): pass
        def wait(self, timeout=None): pass
        def join(self, timeout=None): pass
    probe = module.PathProbe(net=None)
    probe.started, probe._lines, probe.paths, probe.back_paths = STARTED, [PING], PATHS, BACK
    probe._ping = probe._reader = Stopped()
    probe._pollers = [Stopped(), Stopped()]
    # stopped 1.3 s after echo 7 was sent: its answer was still due (echoes 3 and 4 were due long before)
    monkeypatch.setattr(module.time, "time", lambda: STARTED + 2.5)
    probe.__exit__(None, None, None)
    assert [e.seq for e in probe.echoes] == [1, 2, 3, 4, 5, 6]
    assert probe.summary()["lost_seqs"] == [3, 4]
