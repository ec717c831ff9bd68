"""The path probe (support.probe) reads ping's and tailscale's own output: every echo sent is counted, answered or
lost, and gets the paths both peers' statuses named, and how many ways went through DERP by its round trip."""

from typing import Any

import pytest

from support.probe import Echo, PathSample, derp_legs, echoes, path_of, summarize, timeline

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
PATHS = [
    PathSample(999.9, "peer-relay", "172.18.255.200:61441:vni:1"),
    PathSample(1000.5, "derp", "headscale"),
    PathSample(1000.95, "peer-relay", "[fc00:f853:ccd:e793::c8]:61441:vni:7"),
]
# the workload's way back: its status names DERP at first (its relay path's trust had run out, so it sent on the
# relay and via DERP at once), then a relay (at the address it reaches it at in the cluster), DERP again around echo 6
BACK = [
    PathSample(999.9, "derp", "headscale"),
    PathSample(1000.1, "peer-relay", "10.244.1.5:61441:vni:2"),
    PathSample(1000.9, "derp", "headscale"),
    PathSample(1001.1, "peer-relay", "10.244.1.5:61441:vni:8"),
]
# the test tailnet's DERP delay: what each way through DERP adds to a round trip
DERP_MS = 30.0
# the probes built here only read what they are given: no tailnet (typed Any: it stands in for a Tailnet)
NO_TAILNET: Any = None


@pytest.mark.parametrize(
    "peer, path",
    [
        (
            {"PeerRelay": "172.18.255.200:61441:vni:1", "Relay": "headscale"},
            ("peer-relay", "172.18.255.200:61441:vni:1"),
        ),
        ({"CurAddr": "172.18.0.5:41641", "Relay": "headscale"}, ("direct", "172.18.0.5:41641")),
        ({"Relay": "headscale", "CurAddr": "", "PeerRelay": ""}, ("derp", "headscale")),
        ({}, ("none", "")),
    ],
    ids=["peer relay", "direct", "derp", "nothing yet"],
)
def test_the_path_is_the_one_tailscale_sends_on(peer, path):
    assert path_of(peer) == path


def test_every_echo_sent_is_counted_answered_or_lost_with_the_paths_both_ways_it_was_sent_on():
    run = echoes(PING, STARTED, 0.2, PATHS, BACK, DERP_MS)
    assert [e.seq for e in run] == [1, 2, 3, 4, 5, 6, 7], "ping's own total counts the last, unanswered echo"
    assert [e.rtt_ms for e in run] == [1.1, 1.3, None, None, 30.2, 16.1, None]
    assert [e.path for e in run] == [
        "peer-relay",
        "peer-relay",
        "peer-relay",
        "derp",
        "derp",
        "peer-relay",
        "peer-relay",
    ]
    assert [e.back_path for e in run] == ["derp"] + ["peer-relay"] * 4 + ["derp", "peer-relay"]
    assert [e.derp_legs for e in run] == [0, 0, None, None, 1, 1, None]
    assert run[3] == Echo(4, 0.6, None, "derp", "headscale", "peer-relay", "10.244.1.5:61441:vni:2", None)


@pytest.mark.parametrize("rtt, legs", [(1.2, 0), (9.9, 0), (16.1, 1), (32.4, 1), (46.0, 2), (65.3, 2), (None, None)])
def test_the_round_trip_tells_how_many_ways_went_through_derp(rtt, legs):
    assert derp_legs(rtt, DERP_MS) == legs


@pytest.mark.parametrize(
    "out_path, back_path, legs",
    [
        ("peer-relay", "peer-relay", 0),
        ("peer-relay", "derp", 1),
        ("derp", "peer-relay", 1),
        ("direct", "derp", 1),
        ("derp", "derp", 2),
    ],
)
def test_a_slow_echo_went_through_derp_only_where_a_status_allows_it(out_path, back_path, legs):
    # 65 ms: both ways by the round trip, but a peer whose status names a relay or direct path sends only there (a
    # busy machine's slow relayed echo is not DERP)
    assert derp_legs(65.3, DERP_MS, out_path, back_path) == legs


def test_an_echo_is_relayed_only_when_sent_through_a_relay_and_no_way_went_through_derp():
    run = echoes(PING, STARTED, 0.2, PATHS, BACK, DERP_MS)
    # 1: the workload's status named DERP, but a 1.1 ms round trip went through no DERP; 5: out via DERP;
    # 6: out through the relay, and 16.1 ms: back via DERP
    assert [e.relayed for e in run] == [True, True, False, False, False, False, False]
    assert [e.route for e in run] == [
        "peer-relay",
        "peer-relay",
        "lost",
        "lost",
        "derp-one-way",
        "derp-one-way",
        "lost",
    ]


def test_the_summary_counts_what_a_lan_user_lost_and_the_time_off_a_relay():
    summary = summarize(echoes(PING, STARTED, 0.2, PATHS, BACK, DERP_MS), 0.2)
    assert summary["sent"] == 7 and summary["lost"] == 3 and summary["lost_seqs"] == [3, 4, 7]
    # lost (3, 4, 7), out via DERP (5) or back via DERP (6): five echoes of 0.2 s, two of them one way through DERP
    assert summary["seconds_off_relay"] == 1.0
    assert summary["seconds_derp_one_way"] == 0.4
    assert summary["relays"] == ["172.18.255.200:61441", "[fc00:f853:ccd:e793::c8]:61441"]
    assert summary["last_path"] == "lost"


def test_the_timeline_has_one_line_per_stretch_on_one_route():
    lines = timeline(echoes(PING, STARTED, 0.2, PATHS, BACK, DERP_MS)).splitlines()
    assert [line.split()[5] for line in lines] == [
        "peer-relay",
        "peer-relay",
        "lost",
        "derp-one-way",
        "derp-one-way",
        "lost",
    ]
    assert "back: derp" in lines[0] and "back: peer-relay" in lines[1], "the workload's own status is in the timeline"
    assert "1 echoes, median 1.10 ms" in lines[0]
    assert lines[2].split()[:5] == ["0.4", "s", "to", "0.6", "s"] and "2 echoes" in lines[2]


def test_while_running_an_unanswered_echo_counts_as_lost():
    live = PING.split("\n\n---")[0] + "\n[1001.400000] no answer yet for icmp_seq=8\n"
    assert [e.seq for e in echoes(live, STARTED, 0.2, PATHS, BACK, DERP_MS)][-1] == 8


ON_RELAY = [PathSample(999.0, "peer-relay", "[fc00:f853:ccd:e793::c8]:61441:vni:7")]


def answered(rtt_ms: float) -> str:
    return "".join(
        f"[{1000 + 0.2 * i + 0.001:.6f}] 64 bytes from 100.64.0.2: icmp_seq={i + 1} ttl=64 time={rtt_ms} ms\n"
        for i in range(10)
    )


VIA_DERP = [PathSample(999.0, "derp", "headscale")]
BACK_ON_RELAY = [PathSample(999.0, "peer-relay", "10.244.1.5:61441:vni:2")]


@pytest.mark.parametrize(
    "lines, paths, back_paths, relayed",
    [
        # the last due echoes: one lost (seq 3, 4), one via DERP (5)
        (PING.split("\n\n---")[0], PATHS, BACK, False),
        (answered(1.2), ON_RELAY, BACK_ON_RELAY, True),
        # the workload's status names DERP, but the round trips show its replies came through the relay
        (answered(1.2), ON_RELAY, VIA_DERP, True),
        (answered(33.0), ON_RELAY, VIA_DERP, False),
        # slow, but both peers send only on the relay: a busy machine, not DERP
        (answered(33.0), ON_RELAY, BACK_ON_RELAY, True),
        (answered(1.2), VIA_DERP, BACK_ON_RELAY, False),
    ],
    ids=[
        "lost and DERP",
        "five answered through the relay both ways",
        "the workload sending on both",
        "out through the relay, back via DERP",
        "slow through the relay",
        "the LAN device sending via DERP",
    ],
)
def test_relayed_again_needs_answered_echoes_through_the_relay_both_ways(
    lines, paths, back_paths, relayed, monkeypatch
):
    from support import probe as module

    probe = module.PathProbe(net=NO_TAILNET, derp_leg_ms=DERP_MS)
    probe.started, probe._lines, probe.paths, probe.back_paths = STARTED, [lines], paths, back_paths
    monkeypatch.setattr(module.time, "time", lambda: STARTED + 4.0)
    assert probe.relayed_again({"[fc00:f853:ccd:e793::c8]:61441", "172.18.255.200:61441"}) is relayed


@pytest.mark.parametrize(
    "since, relayed",
    [(None, True), (1.0, True), (1.5, False)],
    ids=["every echo", "five sent after the event", "three sent after the event"],
)
def test_relayed_again_counts_only_echoes_sent_after_the_event(since, relayed, monkeypatch):
    # ten echoes through the relay both ways, sent 0.0 to 1.8 s after the probe began, all due at 4.0 s: an event that
    # ended at 1.5 s has three after it, too few to say the LAN device is back (those before may predate the loss)
    from support import probe as module

    probe = module.PathProbe(net=NO_TAILNET, derp_leg_ms=DERP_MS)
    probe.started, probe._lines, probe.paths, probe.back_paths = STARTED, [answered(1.2)], ON_RELAY, BACK_ON_RELAY
    monkeypatch.setattr(module.time, "time", lambda: STARTED + 4.0)
    assert (
        probe.relayed_again({"[fc00:f853:ccd:e793::c8]:61441"}, since=None if since is None else STARTED + since)
        is relayed
    )


def test_echoes_still_in_flight_when_the_probe_stops_are_not_counted_lost(monkeypatch):
    from support import probe as module

    class Stopped:  # ping, thread: already done
        def send_signal(self, _):
            pass

        def wait(self, timeout=None):
            pass

        def join(self, timeout=None):
            pass

    probe = module.PathProbe(net=NO_TAILNET, derp_leg_ms=DERP_MS)
    probe.started, probe._lines, probe.paths, probe.back_paths = STARTED, [PING], PATHS, BACK
    done: Any = Stopped  # stands in for the ping process and the threads (typed Any: it is neither)
    probe._ping = probe._reader = done()
    probe._pollers = [done(), done()]
    # stopped 1.3 s after echo 7 was sent: its answer was still due (echoes 3 and 4 were due long before)
    monkeypatch.setattr(module.time, "time", lambda: STARTED + 2.5)
    probe.__exit__(None, None, None)
    assert [e.seq for e in probe.echoes] == [1, 2, 3, 4, 5, 6]
    assert probe.summary()["lost_seqs"] == [3, 4]
