"""COM1 receives: the 16550's receive queue and interrupts (IIR, THRE, OUT2 gating IRQ 4),
and the SMP guest's ``workload=echo``, which takes IRQ 4 through the I/O APIC on a chosen
CPU while the other CPUs hammer a ``lock incq`` counter the handler increments too, fed
from ``hvdbg run --serial-input`` (a file, or standard input as it comes) and from the
shell's ``serial send``."""

from __future__ import annotations

import re
import subprocess
import sys
import threading

import pytest

from hvdbg.platform.devices.uart import (COM1, IER_DLM, IIR_FCR, LSR, LSR_DR, LSR_OE, MCR, MCR_OUT2,
                                         RBR_THR_DLL, Uart16550)
from hvdbg.platform.devices.uart_loopback import MCR_LOOP, Uart16550Loopback

ECHO = "workload=echo echo_cpu=1"
SUMMARY = re.compile(r"echo: (\d+) lines, (\d+) bytes \((\d+) dropped\) in (\d+) interrupts on CPU \d")


def uart_with_line(cls=Uart16550):
    u = cls()
    levels: list[bool] = []
    u.on_irq = levels.append
    return u, levels


def reg(u, off, value=None):
    if value is None:
        return u.io_read(COM1 + off, 1)
    u.io_write(COM1 + off, 1, value)
    return None


def test_received_data_raises_irq4_only_with_out2_and_the_interrupt_enabled():
    u, levels = uart_with_line()
    u.feed(b"a")
    assert levels == [] and reg(u, LSR) & LSR_DR            # polled: data there, no IRQ
    reg(u, IER_DLM, 0x01)
    assert levels == [] and reg(u, IIR_FCR) == 0x04          # pending, but OUT2 gates the line
    reg(u, MCR, MCR_OUT2)
    assert levels == [True]
    assert reg(u, RBR_THR_DLL) == ord("a")
    assert levels == [True, False] and reg(u, IIR_FCR) == 0x01


def test_the_receiver_holds_one_byte_or_sixteen_with_the_fifo_and_the_rest_waits():
    u, _ = uart_with_line()
    u.feed(b"0123456789abcdefXYZ")
    assert len(u.rx) == 1 and len(u.pending_input) == 18
    reg(u, IIR_FCR, 0x01)                                    # FIFO on
    assert len(u.rx) == 16
    got = bytes(reg(u, RBR_THR_DLL) for _ in range(19))
    assert got == b"0123456789abcdefXYZ" and not reg(u, LSR) & LSR_DR
    u.feed(b"zz")
    reg(u, IIR_FCR, 0x03)                                    # clear the receive FIFO
    assert not u.rx and not reg(u, LSR) & LSR_DR


def test_thre_interrupt_is_cleared_by_reading_iir_and_comes_back_after_a_write():
    u, levels = uart_with_line()
    reg(u, MCR, MCR_OUT2)
    reg(u, IER_DLM, 0x02)                                    # enabling it with THR empty interrupts
    assert levels == [True] and reg(u, IIR_FCR) == 0x02
    assert levels == [True, False] and reg(u, IIR_FCR) == 0x01
    reg(u, RBR_THR_DLL, ord("x"))                            # sent at once: THR empty again
    assert levels[-1] is True and u.output == b"x"
    u.feed(b"r")
    reg(u, IER_DLM, 0x03)
    assert reg(u, IIR_FCR) == 0x04                           # received data outranks THRE


def test_loopback_overruns_a_full_receiver():
    u, _ = uart_with_line(Uart16550Loopback)
    reg(u, MCR, MCR_LOOP)
    reg(u, RBR_THR_DLL, 1)
    reg(u, RBR_THR_DLL, 2)                                   # no FIFO: the second byte overruns
    assert reg(u, LSR) & (LSR_DR | LSR_OE) == LSR_DR | LSR_OE
    assert not reg(u, LSR) & LSR_OE                          # reading LSR cleared it
    assert reg(u, RBR_THR_DLL) == 1 and u.output == b""


def hvdbg(*args, **kw):
    return [sys.executable, "-m", "hvdbg.ui.cli", *args]


@pytest.mark.parametrize("executor", [[], ["--no-deterministic"], ["--pcpus", "2", "--sched", "cfs"], ["--vcpus", "1"]],
                         ids=["deterministic", "threads-pinned", "threads-cfs-2", "one-vcpu-all-halted"])
def test_a_guest_echoes_what_arrives_on_stdin_as_it_comes(guest_kernels, executor):
    """Lines written to hvdbg's stdin one at a time, each after the guest echoed the one
    before: each reaches the halted CPU 1 through IRQ 4 and the I/O APIC; meanwhile the
    run does not end as a hang while input may come (with one vCPU, every vCPU is halted)."""
    proc = subprocess.Popen(hvdbg("run", str(guest_kernels / "smp.elf"), "--vcpus", "3", "--cmdline", ECHO,
                                  "--serial-input", "-", "--seconds", "100", *executor),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(110, proc.kill)
    timer.start()
    seen = []
    try:
        to_send = ["hello", "a second line", "quit"]
        for line in proc.stdout:
            seen.append(line)
            echoed = line.startswith("echo: ") and "type lines" not in line
            if to_send and ("type lines" in line or echoed):
                proc.stdin.write(to_send.pop(0) + "\n")
                proc.stdin.flush()
            if line.startswith("echo: quit"):
                break
        out = "".join(seen) + proc.stdout.read()
        proc.stdin.close()
        rc = proc.wait(timeout=30)
    finally:
        timer.cancel()
    assert rc == 0, out[-2000:] + proc.stderr.read()
    assert [l for l in out.splitlines() if l.startswith("echo: ") and "type lines" not in l][:3] == \
        ["echo: hello", "echo: a second line", "echo: quit"]
    lines, nbytes, dropped, interrupts = map(int, SUMMARY.search(out).groups())
    assert (lines, nbytes, dropped) == (3, len("hello\na second line\nquit\n"), 0)
    assert interrupts >= 3                                   # one per line at least: it came live
    assert "echo ok" in out                                  # shared counter exact, IRQs on CPU 1 only


def test_serial_input_from_a_file_is_there_before_the_guest_starts(guest_kernels, tmp_path):
    data = tmp_path / "input.txt"
    data.write_bytes(b"one\r\ntwo\nquit\n")
    out = subprocess.run(hvdbg("run", str(guest_kernels / "smp.elf"), "--vcpus", "2", "--cmdline", ECHO,
                               "--serial-input", str(data)), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:]
    assert "echo: one\necho: two\necho: quit\n" in out.stdout and "echo ok" in out.stdout
    missing = subprocess.run(hvdbg("run", str(guest_kernels / "smp.elf"), "--serial-input", str(tmp_path / "no")),
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "--serial-input" in missing.stderr and "cannot read" in missing.stderr


def test_the_shells_serial_send_reaches_the_guest(guest_kernels):
    out = subprocess.run(hvdbg("shell", str(guest_kernels / "smp.elf"), "--vcpus", "2", "--cmdline", ECHO,
                               "-c", r"serial send hello world\n\x71uit\n", "-c", "continue", "-c", "serial 6",
                               "-c", r"serial send \q"),
                         capture_output=True, text=True, timeout=120)
    assert "sent 17 bytes to COM1" in out.stdout, out.stdout
    assert "echo: hello world\necho: quit\n" in out.stdout and "echo ok" in out.stdout
    assert "error: serial send: unknown escape \\q" in out.stderr
