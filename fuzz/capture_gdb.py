"""Capture real GDB traffic against ``hvdbg run --gdb`` through a logging TCP proxy.

The client->stub byte streams become the seeds of the mutation fuzzer
(``fuzz/seeds/*.client.bin``); the stub->client streams are kept next to them for
reference. Run:  python -m fuzz.capture_gdb
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

from fuzz.common import SEEDS, SMP_ELF, ensure_guests, free_port_block, start_hvdbg_gdb, write_config

#: GDB sessions to record: (name, stub port offset (0 = all vCPUs), gdb commands).
SESSIONS: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("all-vcpus", 0, (
        "info threads", "info registers", "p/x $cr3", "x/8xg $rsp", "x/4i $pc",
        "break kmain", "continue", "bt", "stepi", "nexti", "x/4i $pc",
        "thread 2", "info registers rip", "thread 1",
        "hbreak ap_entry", "delete",
        "watch ap_online", "rwatch ap_online", "awatch ap_online", "continue", "delete",
        "monitor vcpus", "monitor regs 1", "monitor help", "monitor exits 5",
        "maint packet qC", "maint packet qXfer:threads:read::0,fff",
        "maint packet qqemu.sstepbits", "maint packet Qqemu.PhyMemMode:1",
        "maint packet m100000,20", "maint packet Qqemu.PhyMemMode:0",
        "set $rax = 0x1234", "set var ap_online = 0", "p ap_online",
        "info all-registers", "thread apply all bt 1", "detach",
    )),
    ("per-vcpu", 1, (
        "info threads", "break work_run", "continue", "stepi", "info registers",
        "x/16xb $rsp", "kill",
    )),
)


class LoggingProxy:
    """Forward one TCP connection to ``upstream`` and record both directions."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.client_bytes = bytearray()
        self.server_bytes = bytearray()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        client, _ = self.listener.accept()
        server = socket.create_connection(("127.0.0.1", self.upstream))
        pumps = [threading.Thread(target=self._pump, args=(client, server, self.client_bytes)),
                 threading.Thread(target=self._pump, args=(server, client, self.server_bytes))]
        for p in pumps:
            p.start()
        for p in pumps:
            p.join()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, log: bytearray) -> None:
        try:
            while data := src.recv(65536):
                log += data
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        self.listener.close()


def run_gdb(port: int, commands: tuple[str, ...], kernel: Path) -> str:
    script = ["set confirm off", "set pagination off", f"file {kernel}",
              f"target remote 127.0.0.1:{port}", *commands]
    argv = ["gdb", "--nx", "--batch"]
    for line in script:
        argv += ["-ex", line]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120).stdout


def capture(out_dir: Path = SEEDS) -> list[Path]:
    ensure_guests()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = write_config(Path(tmp) / "vm.toml", vcpus=2, cmdline="work_mib=16")
        for name, offset, commands in SESSIONS:
            port = free_port_block(3)
            proc = start_hvdbg_gdb(cfg, port)
            try:
                proxy = LoggingProxy(port + offset)
                transcript = run_gdb(proxy.port, commands, SMP_ELF)
                proxy.join(30)
            finally:
                proc.kill()
                proc.communicate(timeout=30)
            for suffix, data in (("client.bin", proxy.client_bytes), ("server.bin", proxy.server_bytes)):
                path = out_dir / f"gdb-{name}.{suffix}"
                path.write_bytes(bytes(data))
                written.append(path)
            (out_dir / f"gdb-{name}.transcript.txt").write_text(transcript)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SEEDS)
    args = parser.parse_args()
    for path in capture(args.out):
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
