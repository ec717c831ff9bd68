"""A stand-in for tailscaled's LocalAPI on a unix socket, for the relay-settings sidecar's tests.

It behaves like tailscale 1.104 (and 1.102: these points did not change) on the points the sidecar relies on (ipn/localapi/localapi.go, ipn/prefs.go):
- only Host "local-tailscaled.sock" (or none) is served, and requests with Origin or Referer are refused;
- GET status gives BackendState; GET prefs gives the preferences, tab-indented, the relay fields omitted when unset
  (`json:",omitempty"`);
- PATCH prefs takes MaskedPrefs: a field changes only with its ...Set flag; endpoints are parsed like
  netip.ParseAddrPort (IPv4 "a.b.c.d:port", IPv6 only bracketed, port 0-65535, no blanks) and a bad one fails the
  whole request with 400 {"Error": ...}; they are stored as given but in canonical form (netip's MarshalText:
  lower-case, RFC 5952 compressed IPv6), neither sorted nor deduplicated (only the CLI does that);
- the relay server holds its UDP port (written to a /proc/net/udp-style table) only when it can bind it: ports
  below 1024 fail for an unprivileged tailscaled, as in a pod running as uid 1000.
"""
from __future__ import annotations

import ipaddress
import json
import re
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

LOCALAPI_HOST = "local-tailscaled.sock"


class BadEndpoint(ValueError):
    pass


def parse_addr_port(text: str) -> str:
    """netip.ParseAddrPort, then MarshalText: the canonical form, or BadEndpoint with Go's kind of message."""
    match = re.fullmatch(r"\[(?P<v6>[^\]]+)\]:(?P<port>\d+)|(?P<v4>[0-9.]+):(?P<port4>\d+)", text)
    if not match:
        raise BadEndpoint(f'invalid ip:port "{text}"')
    port = int(match.group("port") or match.group("port4"))
    if port > 65535:
        raise BadEndpoint(f'invalid port "{port}" parsing "{text}"')
    try:
        if match.group("v6"):
            return f"[{ipaddress.IPv6Address(match.group('v6')).compressed}]:{port}"
        return f"{ipaddress.IPv4Address(match.group('v4'))}:{port}"
    except ValueError as error:
        raise BadEndpoint(f'ParseAddr("{text}"): {error}') from None


class FakeTailscaled:
    """Serves the LocalAPI on SOCKET; UDP_TABLE is where the relay server's bound port shows."""

    def __init__(self, socket_path: Path, udp_table: Path, privileged: bool = False):
        self.socket_path = Path(socket_path)
        self.udp_table = Path(udp_table)
        self.privileged = privileged
        self.backend_state = "Running"
        self.port: int | None = None
        self.endpoints: list[str] = []
        self.patches: list[dict] = []
        self._write_udp_table()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def address_string(self):  # unix sockets have no client address
                return "unix"

            def _reply(self, code: int, body: str, content_type: str = "application/json"):
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _allowed(self) -> bool:
                if self.headers.get("Origin") or self.headers.get("Referer") or \
                        self.headers.get("Host", "") not in ("", LOCALAPI_HOST):
                    self._reply(403, "invalid localapi request\n", "text/plain")
                    return False
                return True

            def do_GET(self):
                if not self._allowed():
                    return
                path = self.path.split("?")[0]
                if path == "/localapi/v0/status":
                    self._reply(200, json.dumps({"Version": "1.104.7", "BackendState": fake.backend_state,
                                                 "Self": {"HostName": "relay"}}, indent="\t"))
                elif path == "/localapi/v0/prefs":
                    self._reply(200, fake.prefs_json())
                else:
                    self._reply(404, "404 page not found\n", "text/plain")

            def do_PATCH(self):
                if not self._allowed():
                    return
                if self.path != "/localapi/v0/prefs":
                    self._reply(404, "404 page not found\n", "text/plain")
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.patches.append(body)
                try:
                    endpoints = [parse_addr_port(e) for e in body.get("RelayServerStaticEndpoints") or []]
                except BadEndpoint as error:
                    self._reply(400, f"{error}\n", "text/plain")
                    return
                if body.get("RelayServerPortSet"):
                    fake.port = body.get("RelayServerPort")
                if body.get("RelayServerStaticEndpointsSet"):
                    fake.endpoints = endpoints
                fake._write_udp_table()
                self._reply(200, fake.prefs_json())

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(str(self.socket_path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def prefs_json(self) -> str:
        prefs = {"ControlURL": "http://headscale.example:8080", "RouteAll": False, "WantRunning": True,
                 "Hostname": "relay", "NetfilterMode": 2}
        if self.port is not None:
            prefs["RelayServerPort"] = self.port
        if self.endpoints:
            prefs["RelayServerStaticEndpoints"] = self.endpoints
        prefs["Persist"] = {"PrivateNodeKey": "privkey:0000", "UserProfile": {"ID": 1, "LoginName": "relay-test"}}
        return json.dumps(prefs, indent="\t") + "\n"

    def relogin(self):
        """What `tailscale up` after a re-login does: every preference replaced, the relay settings gone."""
        self.port, self.endpoints = None, []
        self._write_udp_table()

    def _write_udp_table(self):
        rows = ["  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
                "   0: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 1 2"]
        if self.port and (self.port >= 1024 or self.privileged):
            rows.append(f"   1: 00000000:{self.port:04X} 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000"
                        "        0 2 2")
        self.udp_table.write_text("\n".join(rows) + "\n")

    def close(self):
        self.server.shutdown()
        self.server.server_close()
