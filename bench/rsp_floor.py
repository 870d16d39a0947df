"""The floor of a Python gdb stub: the least a Python process can do per RSP packet (one
blocking ``recv``, find the packet, one ``sendall`` of a fixed reply), with no target
behind it. bench/p4_gdb.py runs it next to hvdbg and QEMU so that the bare round trip
(``qC``) of hvdbg's stub can be read against what Python itself costs.

    python bench/rsp_floor.py PORT
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gdbstub.packet import frame  # noqa: E402  (the project's framing: the same reply bytes)

#: fixed replies by packet prefix (what p4_gdb's raw client sends); others get ""
REPLIES = ((b"qSupported", b"PacketSize=4000"), (b"QStartNoAckMode", b"OK"), (b"Z", b"OK"), (b"z", b"OK"),
           (b"vCont;c", b"T05thread:1;"), (b"qC", b"QC1"))


def main() -> None:
    listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
    sock, _ = listener.accept()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pending = b""
    while data := sock.recv(65536):
        pending += data
        while (start := pending.find(b"$")) >= 0 and (end := pending.find(b"#", start)) >= 0 \
                and len(pending) >= end + 3:
            body, pending = pending[start + 1:end], pending[end + 3:]
            reply = next((r for prefix, r in REPLIES if body.startswith(prefix)), b"")
            sock.sendall(b"+" + frame(reply))   # the ack is ignored in no-ack mode


if __name__ == "__main__":
    main()
