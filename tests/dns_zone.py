"""A real DNS server on loopback (dnslib), serving a zone the test edits as it goes.

UDP and TCP on the same port, so long TXT answers that truncate over UDP are
retried over TCP as with any real server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from dnslib import MX, QTYPE, RCODE, RR, TXT, DNSLabel
from dnslib.server import BaseResolver, DNSLogger, DNSServer


class Zone(BaseResolver):  # type: ignore[misc]
    def __init__(self) -> None:
        self._records: dict[str, list[RR]] = {}
        self._lock = threading.Lock()
        self.port = 0
        self.servfail: set[str] = set()  # names answered with SERVFAIL
        self.queries: list[tuple[str, str]] = []

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def txt(self, name: str, *values: str) -> None:
        """One TXT record per value; a value longer than 255 bytes is split into strings."""
        for value in values:
            strings = [value[i : i + 255] for i in range(0, len(value), 255)] or [""]
            self._add(name, RR(name, QTYPE.TXT, rdata=TXT(strings), ttl=60))

    def mx(self, name: str, host: str, preference: int = 10) -> None:
        self._add(name, RR(name, QTYPE.MX, rdata=MX(host, preference), ttl=60))

    def remove(self, name: str) -> None:
        with self._lock:
            self._records.pop(_key(name), None)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def _add(self, name: str, record: RR) -> None:
        with self._lock:
            self._records.setdefault(_key(name), []).append(record)

    def resolve(self, request, handler):  # type: ignore[no-untyped-def]
        reply = request.reply()
        name = _key(str(request.q.qname))
        self.queries.append((name, QTYPE[request.q.qtype]))
        if name in self.servfail:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        with self._lock:
            records = self._records.get(name)
            if records is None:
                reply.header.rcode = RCODE.NXDOMAIN
                return reply
            for record in records:
                if record.rtype == request.q.qtype:
                    reply.add_answer(record)
        return reply


def _key(name: str) -> str:
    return str(DNSLabel(name)).lower().rstrip(".")


@contextmanager
def serve_zone() -> Iterator[Zone]:
    zone = Zone()
    udp, tcp = _bind_pair(zone)
    for server in (udp, tcp):  # a short poll: shutdown() waits for one (default 0.5 s)
        threading.Thread(
            target=server.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
    try:
        yield zone
    finally:
        for server in (udp, tcp):
            server.stop()
            server.server.server_close()


def _bind_pair(zone: Zone) -> tuple[DNSServer, DNSServer]:
    """UDP on a free port, then TCP on the same number; another try if TCP's is taken."""
    quiet = DNSLogger(log="-request,-reply,-truncated,-error", logf=lambda _: None)
    for _ in range(20):
        udp = DNSServer(zone, address="127.0.0.1", port=0, logger=quiet)
        zone.port = udp.server.server_address[1]
        try:
            return udp, DNSServer(zone, address="127.0.0.1", port=zone.port, tcp=True, logger=quiet)
        except OSError:
            udp.server.server_close()
    raise RuntimeError("no port free for UDP and TCP at once")
