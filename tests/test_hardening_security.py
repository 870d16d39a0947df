"""Security of what a GDB port exposes: the stubs listen on 127.0.0.1 unless asked;
``monitor`` cannot evaluate Python, read host files or run commands; guest memory
accesses (m/M/X, virtual or physical) never reach outside the VM's guest RAM."""

from __future__ import annotations

import os
import random
import secrets
import socket
import time
from pathlib import Path

import pytest

from gdbstub import GdbServer
from gdbstub.packet import frame
from gdbstub_fake_target import FakeMachine

from fuzz.churn import RawDebugger
from fuzz.common import free_port_block, start_hvdbg_gdb, write_config
from fuzz.rsp_harness import RspFuzzer, VmStub
from hvdbg.ui.cli import build_parser

LISTEN = "0A"  # TCP state in /proc/net/tcp


# ===================================================================== bind address


def listening_addresses(pid: int) -> dict[int, str]:
    """Port -> bound IPv4 address of every TCP socket process ``pid`` listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == LISTEN and inode in inodes:
            hex_ip, hex_port = local.split(":")
            ip = socket.inet_ntoa(bytes.fromhex(hex_ip)[::-1])
            out[int(hex_port, 16)] = ip
    return out


def test_gdbserver_binds_loopback_by_default():
    with GdbServer(FakeMachine((1,))) as server:
        assert server._listener.getsockname()[0] == "127.0.0.1"
        assert server.address[0] == "127.0.0.1"


def test_cli_defaults_to_loopback_for_run_and_shell():
    parser = build_parser()
    assert parser.parse_args(["run", "x.toml", "--gdb", "1234"]).gdb_host == "127.0.0.1"
    assert parser.parse_args(["shell", "x.toml", "--gdb", "1234"]).gdb_host == "127.0.0.1"


@pytest.mark.parametrize("host, expected", [(None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")],
                         ids=["default", "asked-for-all-interfaces"])
def test_hvdbg_run_stubs_listen_where_asked(tmp_path, guest_kernels, host, expected):
    cfg = write_config(tmp_path / "vm.toml", kernel=guest_kernels / "smp.elf", vcpus=3)
    port = free_port_block(4)
    proc = start_hvdbg_gdb(cfg, port, extra=() if host is None else ("--gdb-host", host))
    try:
        bound = listening_addresses(proc.pid)
        assert bound == {p: expected for p in range(port, port + 4)}
    finally:
        proc.kill()
        proc.communicate(timeout=30)


# ===================================================================== monitor commands


@pytest.fixture(scope="module")
def vm_stub(guest_kernels):
    stub = VmStub(vcpus=2)
    yield stub
    stub.close()


@pytest.fixture
def monitor(vm_stub):
    dbg = RawDebugger.session(vm_stub.server.port)

    def run(line: str) -> str:
        dbg.sock.sendall(frame(b"qRcmd," + line.encode("utf-8", "surrogateescape").hex().encode()))
        text = b""
        while True:
            reply = dbg.reply(60)
            if reply.startswith(b"O") and reply != b"OK":
                text += bytes.fromhex(reply[1:].decode())
                continue
            assert reply == b"OK" or reply.startswith(b"E"), reply
            return text.decode("utf-8", "replace")

    yield run
    dbg.request(b"D")
    dbg.close()


def test_monitor_cannot_run_commands_eval_python_or_read_files(monitor, tmp_path):
    canary = tmp_path / "pwned"
    secret_file = tmp_path / "secret.txt"
    secret = secrets.token_hex(16)
    secret_file.write_text(secret + "\n")
    attempts = [
        f"$(touch {canary})", f"`touch {canary}`", f"; touch {canary}", f"| touch {canary}",
        f"regs && touch {canary}", f"x/4xb 0 ; touch {canary}", f"help $(touch {canary})",
        f"__import__('os').system('touch {canary}')", f"exec(\"open('{canary}','w')\")",
        f"eval(open('{secret_file}').read())", "import os", "python print(1)", "shell id", "!id",
        f"source {secret_file}", f"x/s {secret_file}", f"x/64xb {secret_file}", f"sym {secret_file}",
        f"disas {secret_file}", f"help {secret_file}", f"serial > {canary}", f"break {secret_file}",
        "x/s /etc/passwd", "cat /etc/passwd", "file /etc/passwd", "../../../../etc/passwd",
        "%s%s%s%n", "{0.__class__}", "${IFS}id", "x/4xg $(id)", "regs $HOME",
    ]
    for line in attempts:
        out = monitor(line)
        assert secret not in out, line
        assert "root:x:0:0" not in out, line
        assert "uid=" not in out, line
        assert "Traceback" not in out, line
        assert not canary.exists(), line
    assert secret_file.read_text() == secret + "\n"


def test_random_monitor_lines_never_leak_a_traceback(monitor, vm_stub):
    """Registry words, numbers, symbols and garbage: every line gets text and OK."""
    rng = random.Random(5)
    words = monitor("help").split() + ["$rip", "$rsp", "kmain", "0x100000", "-1", "99", "all", "-p",
                                       "/4xg", "\x00", "\xff", "'", '"', "\\", "*", "+", "-"]
    for _ in range(300):
        line = " ".join(rng.choice(words) for _ in range(rng.randrange(1, 5)))
        out = monitor(line)
        assert "Traceback" not in out and out.endswith("\n"), line
    assert vm_stub.crashes() == []


# ===================================================================== guest memory bounds


def host_regions(vm) -> dict[str, tuple[int, int]]:
    return {name: (hpa, size) for hpa, size, name in vm.memory.host.regions()}


def test_memory_packets_stay_inside_guest_ram(vm_stub):
    """Random m/M/X at boundary, huge, wrapping and EPT-unmapped addresses, virtual and
    physical: the hypervisor's own pages (EPT tables) never change, a write either fails
    or lands exactly where GDB asked inside guest RAM, a read returns guest RAM bytes."""
    vm = vm_stub.session.vm
    ram = vm.memory.ram_size
    pool_hpa, pool_size = host_regions(vm)["hypervisor pages"]
    pool_before = vm.memory.host.read(pool_hpa, pool_size)
    fuzzer = RspFuzzer(vm_stub, seed=0)
    fuzzer._connect()
    peer = fuzzer.peer
    rng = random.Random(9)
    edges = [0, 0x1000, 0x8000, 0xE0000, 0x100000, ram - 0x10, ram - 1, ram, ram + 0x1000, pool_hpa,
             pool_hpa + 0x1000, 0xFEE00000, 0xFFFFFFFF, 1 << 32, (1 << 46) - 8, 1 << 48,
             0xFFFFFF8000100000, 0xFFFFFFFFFFFFFFF0, 0xFFFFFFFFFFFFFFFF, 1 << 64, (1 << 64) + 0x100000]

    def request(payload: bytes) -> bytes:
        peer.send_raw(frame(payload))
        reply = peer.read_packet(time.monotonic() + 20)
        assert reply is not None, payload[:60]
        return reply

    landed = 0
    try:
        for i in range(400):
            physical = rng.random() < 0.5
            assert request(b"Qqemu.PhyMemMode:%d" % physical) == b"OK"
            address = rng.choice(edges) + rng.choice((0, 0, -8, -1, 1, 8, 0xFFF))
            address = max(address, 0)
            size = rng.choice((1, 4, 8, 0x20, 0x1000, 0x2000))
            op = rng.choice("mMX")
            data = bytes(rng.randrange(256) for _ in range(size))
            if op == "m":
                reply = request(b"m%x,%x" % (address, size))
                if physical and not reply.startswith(b"E"):
                    got = bytes.fromhex(reply.decode())
                    assert address + len(got) <= ram  # only guest RAM is readable
                    assert got == vm.memory.read(address, len(got))
                continue
            payload = data.hex().encode() if op == "M" else data
            reply = request(b"%c%x,%x:" % (ord(op), address, size) + payload)
            assert reply == b"OK" or reply.startswith(b"E"), reply
            if reply == b"OK" and physical:
                assert address + size <= ram
                assert vm.memory.read(address, size) == data  # exactly there
                landed += 1
        assert vm.memory.host.read(pool_hpa, pool_size) == pool_before
        assert landed > 0  # the test did write somewhere legal
        assert fuzzer.errors.take() == []
    finally:
        request(b"Qqemu.PhyMemMode:0")
        fuzzer._disconnect()


def test_physical_mode_cannot_reach_the_ept_tables_or_mmio(vm_stub):
    vm = vm_stub.session.vm
    ram = vm.memory.ram_size
    pool_hpa, _ = host_regions(vm)["hypervisor pages"]
    fuzzer = RspFuzzer(vm_stub, seed=1)
    fuzzer._connect()
    peer = fuzzer.peer

    def request(payload: bytes) -> bytes:
        peer.send_raw(frame(payload))
        return peer.read_packet(time.monotonic() + 20)

    try:
        assert request(b"Qqemu.PhyMemMode:1") == b"OK"
        # GPA == HPA of the EPT tables here (offset 0): still not guest-visible memory
        for gpa in (pool_hpa, pool_hpa + 0x1000, ram, 0xFEE00000, 0xFEE00020, (1 << 48) - 0x1000):
            assert request(b"m%x,8" % gpa).startswith(b"E"), hex(gpa)
            assert request(b"M%x,8:%s" % (gpa, b"41" * 8)).startswith(b"E"), hex(gpa)
        # a read across the end of RAM returns only the RAM part
        reply = request(b"m%x,2000" % (ram - 0x1000))
        assert len(bytes.fromhex(reply.decode())) == 0x1000
        # a write across the end of RAM is refused as a whole: RAM's last bytes are unchanged
        before = vm.memory.read(ram - 8, 8)
        assert request(b"M%x,10:%s" % (ram - 8, b"ee" * 16)).startswith(b"E")
        assert vm.memory.read(ram - 8, 8) == before
    finally:
        request(b"Qqemu.PhyMemMode:0")
        fuzzer._disconnect()
