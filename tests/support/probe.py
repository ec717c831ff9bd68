"""The path probe: what the LAN device sees of the workload while something happens to the cluster.

ICMP echoes at a steady rate (ping -i, in the LAN device's network namespace, through the tunnel) give each reply's
round trip and every lost echo. Meanwhile the probe polls both peers' views, each from `tailscale status --json`
(PeerRelay when it sends through a peer relay, CurAddr when direct, Relay, the DERP region, otherwise; ipn/ipnstate's
PeerStatus, filled from magicsock's addrForSendLocked): the LAN device's of the workload (the echo's way out) and the
workload's of the LAN device (the reply's way back). Each peer picks its own path. A peer whose status names a relay
(or direct) path trusts it and sends only there; while no path is trusted (magicsock trustUDPAddrDuration ran out) its
status names DERP and it sends on its candidate path and via DERP at once. Which one carried the echo then shows in
its round trip, because the test tailnet's DERP server is DERP_DELAY_MS away (scripts/images/derp-delay) and every
other path is local: each way through DERP adds that delay (one way through DERP after a loss: about 32 ms; both:
about 65 ms; a relay both ways: 1 to 3 ms). So a way counts as through DERP when its peer's status names DERP and the
round trip says so (a round trip alone is not enough: on a busy machine a relayed echo takes 20 to 200 ms at times).
An echo is relayed when the LAN device sent it through a peer relay and no way went through DERP. The result reads
as a timeline (people) and as JSON (code, the benchmark's results).
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotations only
    from support.tailnet import Tailnet

# iputils ping -D -O: "[1764590000.123456] 64 bytes from 100.64.0.2: icmp_seq=7 ttl=64 time=1.23 ms"
#                     "[1764590000.323456] no answer yet for icmp_seq=8"
REPLY = re.compile(r"^\[(?P<at>[\d.]+)\] \d+ bytes from .*icmp_seq=(?P<seq>\d+) .*time=(?P<rtt>[\d.]+) ms")
TRANSMITTED = re.compile(r"^(?P<sent>\d+) packets transmitted")
NO_ANSWER = re.compile(r"^\[[\d.]+\] no answer yet for icmp_seq=(?P<seq>\d+)")
# an echo sent less than this long ago may still be answered
IN_FLIGHT = 1.5


@dataclass(frozen=True)
class PathSample:
    at: float  # wall-clock seconds
    path: str  # "peer-relay", "direct", "derp" or "none"
    via: str  # the relay endpoint (ip:port:vni:N), the direct address or the DERP region


NOTHING_YET = PathSample(0.0, "none", "")


@dataclass(frozen=True)
class Echo:
    seq: int
    sent_s: float  # seconds since the probe started
    rtt_ms: float | None  # None: lost
    path: str  # the LAN device's path to the workload (the echo's way out)
    via: str
    back_path: str  # the workload's path to the LAN device (the reply's way back), as its status names it
    back_via: str
    derp_legs: int | None  # how many ways went through DERP, by the round trip (None: lost)

    @property
    def relay_endpoint(self) -> str | None:
        """The relay's address (ip:port, as the relay advertises it) when the echo went out through a peer relay."""
        return self.via.rsplit(":vni:", 1)[0] if self.path == "peer-relay" else None

    @property
    def route(self) -> str:
        """ "lost", "derp" (both ways), "derp-one-way", or, with no way through DERP, the LAN device's path
        ("peer-relay", "direct")."""
        if self.rtt_ms is None:
            return "lost"
        routes: dict[int | None, str] = {2: "derp", 1: "derp-one-way"}
        return routes.get(self.derp_legs, self.path)

    @property
    def relayed(self) -> bool:
        """Answered through a peer relay both ways: sent through one, and no way went through DERP."""
        return self.rtt_ms is not None and self.derp_legs == 0 and self.path == "peer-relay"


# paths a peer sends on alone once its status names them (trusted); otherwise it may send via DERP too
TRUSTED = ("peer-relay", "direct")


def derp_legs(rtt_ms: float | None, derp_leg_ms: float, out_path: str = "derp", back_path: str = "derp") -> int | None:
    """How many ways of an echo answered in RTT_MS went through DERP: by the round trip, each way through DERP adding
    DERP_LEG_MS (every other path being local: 0 below half of it, 1 below one and a half, else 2), but no more ways
    than the peers' statuses allow (a peer whose status names a TRUSTED path sends only there)."""
    if rtt_ms is None:
        return None
    by_rtt = 0 if rtt_ms < derp_leg_ms / 2 else 1 if rtt_ms < derp_leg_ms * 1.5 else 2
    return min(by_rtt, sum(path not in TRUSTED for path in (out_path, back_path)))


def path_of(peer: dict) -> tuple[str, str]:
    """The path the LAN device sends to PEER (its entry in `tailscale status --json`) on."""
    if peer.get("PeerRelay"):
        return "peer-relay", peer["PeerRelay"]
    if peer.get("CurAddr"):
        return "direct", peer["CurAddr"]
    if peer.get("Relay"):
        return "derp", peer["Relay"]
    return "none", ""


def sample_at(samples: list[PathSample], at: float) -> PathSample:
    """The path in effect at AT: the latest sample taken by then (the first one before any was)."""
    current = [p for p in samples if p.at <= at]
    return current[-1] if current else (samples[0] if samples else NOTHING_YET)


def echoes(
    ping_output: str,
    started: float,
    interval: float,
    paths: list[PathSample],
    back_paths: list[PathSample],
    derp_leg_ms: float,
) -> list[Echo]:
    """Every echo ping sent (replied or lost), with the paths both ways in effect when it was sent (PATHS the LAN
    device's, BACK_PATHS the workload's) and how many ways went through DERP (DERP_LEG_MS: derp_legs): ping sends
    echo N at STARTED + (N-1) * INTERVAL."""
    replies: dict[int, float] = {}
    sent = 0
    for line in ping_output.splitlines():
        if match := REPLY.match(line.strip()):
            replies.setdefault(int(match["seq"]), float(match["rtt"]))
        elif match := TRANSMITTED.match(line.strip()):
            sent = int(match["sent"])
        elif match := NO_ANSWER.match(line.strip()):
            sent = max(sent, int(match["seq"]))
    sent = max([sent, *replies])
    out = []
    for seq in range(1, sent + 1):
        at = started + (seq - 1) * interval
        out_, back = sample_at(paths, at), sample_at(back_paths, at)
        rtt = replies.get(seq)
        out.append(
            Echo(
                seq,
                round(at - started, 3),
                rtt,
                out_.path,
                out_.via,
                back.path,
                back.via,
                derp_legs(rtt, derp_leg_ms, out_.path, back.path),
            )
        )
    return out


def summarize(run: list[Echo], interval: float) -> dict:
    """Echoes sent and lost, seconds not answered through a peer relay both ways (of them, seconds answered with one
    way through DERP), the relays the echoes went out through, and the last echo's route."""
    lost = [e.seq for e in run if e.rtt_ms is None]
    off = [e for e in run if not e.relayed]
    one_way = [e for e in run if e.derp_legs == 1]
    return {
        "sent": len(run),
        "lost": len(lost),
        "lost_seqs": lost,
        "seconds_off_relay": round(len(off) * interval, 1),
        "seconds_derp_one_way": round(len(one_way) * interval, 1),
        "relays": sorted({e.relay_endpoint for e in run if e.relay_endpoint}),
        "last_path": run[-1].route if run else "none",
    }


def timeline(run: list[Echo]) -> str:
    """One line per stretch of echoes on one route (lost ones apart): when, the route, the LAN device's relay or DERP
    region out, what the workload's status named back, how many, median round trip."""
    lines: list[str] = []
    stretch: list[Echo] = []

    def key(echo: Echo) -> tuple[str, str, str]:
        return ("lost", "", "") if echo.rtt_ms is None else (echo.route, echo.via, echo.back_path)

    def flush() -> None:
        if not stretch:
            return
        what, via, back = key(stretch[0])
        rtts = sorted(e.rtt_ms for e in stretch if e.rtt_ms is not None)
        median = f", median {rtts[len(rtts) // 2]:.2f} ms" if rtts else ""
        back = f"back: {back}" if back else ""
        lines.append(
            f"{stretch[0].sent_s:7.1f} s to {stretch[-1].sent_s:7.1f} s  {what:<12} {via:<40} {back:<16} "
            f"{len(stretch):4d} echoes{median}"
        )

    for echo in run:
        if stretch and key(echo) != key(stretch[0]):
            flush()
            stretch = []
        stretch.append(echo)
    flush()
    return "\n".join(lines)


class PathProbe:
    """`with PathProbe(tailnet) as probe: <the event>`; then probe.echoes, probe.summary(), probe.timeline().
    RATE echoes a second to the workload's tailnet IPv4 address; both ways' paths polled every PATH_EVERY seconds
    (the workload's through its node's container runtime, so also while the API server is away)."""

    def __init__(
        self, net: Tailnet, rate: float = 5.0, path_every: float = 0.5, derp_leg_ms: float | None = None
    ) -> None:
        self.net, self.interval, self.path_every = net, 1.0 / rate, path_every
        # what one way through DERP adds to a round trip: the test tailnet's DERP delay
        self.derp_leg_ms = derp_leg_ms if derp_leg_ms is not None else net.derp_delay_ms
        self.paths: list[PathSample] = []  # the LAN device's, to the workload
        self.back_paths: list[PathSample] = []  # the workload's, to the LAN device
        self.echoes: list[Echo] = []
        self._stop = threading.Event()

    def _poll(self, peer: Callable[[], dict | None], samples: list[PathSample]) -> None:
        """Appends PEER()'s path (a peer entry of `tailscale status --json`, None if absent) to SAMPLES until
        stopped."""
        while not self._stop.is_set():
            try:
                samples.append(PathSample(time.time(), *path_of(peer() or {})))
            except (OSError, ValueError, subprocess.SubprocessError):  # a device busy: the next poll answers
                pass
            self._stop.wait(self.path_every)

    def _read(self) -> None:
        assert self._ping.stdout is not None, "ping runs with stdout=PIPE"
        for line in self._ping.stdout:
            self._lines.append(line)

    def __enter__(self) -> PathProbe:
        ip = self.net.workload_ip()
        lan_key = self.net.lan_peer()[1]["Self"]["PublicKey"]
        self._pollers = [
            threading.Thread(
                target=self._poll, args=(lambda: self.net.lan_peer(timeout=10)[0], self.paths), daemon=True
            ),
            threading.Thread(
                target=self._poll, args=(lambda: self.net.workload_peer(lan_key), self.back_paths), daemon=True
            ),
        ]
        for poller in self._pollers:
            poller.start()
        self.started = time.time()
        self._lines: list[str] = []
        self._ping = subprocess.Popen(
            [
                "nsenter",
                "-t",
                self.net.lan_pid(),
                "-n",
                "ping",
                "-n",
                "-D",
                "-O",
                "-W",
                "1",
                "-i",
                f"{self.interval:g}",
                ip,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def __exit__(self, *exc: object) -> None:
        stopped = time.time()
        self._ping.send_signal(signal.SIGINT)  # ping prints its totals on SIGINT
        self._ping.wait(timeout=30)
        self._reader.join(timeout=30)
        self._stop.set()
        for poller in self._pollers:
            poller.join(timeout=30)
        # the echoes still in flight when ping stopped were cut off, not lost
        self.echoes = [
            e
            for e in echoes(
                "".join(self._lines), self.started, self.interval, self.paths, self.back_paths, self.derp_leg_ms
            )
            if e.rtt_ms is not None or e.sent_s < stopped - self.started - IN_FLIGHT
        ]

    def current_path(self) -> tuple[PathSample | None, PathSample | None]:
        """The paths both ways now (the latest polls: the LAN device's, the workload's), while the probe runs."""
        return (self.paths[-1] if self.paths else None), (self.back_paths[-1] if self.back_paths else None)

    def relayed_again(self, endpoints: set[str], count: int = 5, since: float | None = None) -> bool:
        """While the probe runs: whether the last COUNT echoes whose answer is due (sent over IN_FLIGHT seconds ago),
        of those sent after SINCE (a time.time(); an event's end), were all relayed (Echo.relayed: no way through
        DERP), out through a relay at one of ENDPOINTS (ip:port). The LAN device's status alone is not enough: it names
        a relay path until that path's trust runs out (6.5 s after its last pong, magicsock trustUDPAddrDuration), dead
        or not, and the reply may come back via DERP. Without SINCE, echoes answered before a relay stopped would
        count: a pod is gone a moment after its relay stopped answering."""
        after = -1.0 if since is None else since - self.started
        due = [
            e
            for e in echoes(
                "".join(self._lines),
                self.started,
                self.interval,
                list(self.paths),
                list(self.back_paths),
                self.derp_leg_ms,
            )
            if after <= e.sent_s < time.time() - self.started - IN_FLIGHT
        ][-count:]
        return len(due) == count and all(e.relayed and e.relay_endpoint in endpoints for e in due)

    def summary(self) -> dict:
        return summarize(self.echoes, self.interval)

    def timeline(self) -> str:
        return timeline(self.echoes)

    def to_json(self) -> dict:
        return {
            "interval_s": self.interval,
            "derp_leg_ms": self.derp_leg_ms,
            "summary": self.summary(),
            "echoes": [asdict(e) for e in self.echoes],
        }
