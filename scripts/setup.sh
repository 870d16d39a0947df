#!/usr/bin/env bash
# Set up hvdbg on a fresh Debian machine: system tools, a virtualenv with hvdbg, the guest kernels.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
command -v gcc >/dev/null || need+=(gcc)
command -v as >/dev/null || need+=(binutils)
command -v make >/dev/null || need+=(make)
command -v gdb >/dev/null || need+=(gdb)
command -v python3 >/dev/null || need+=(python3)
python3 -c "import venv, ensurepip" 2>/dev/null || need+=(python3-venv)
if [ "${HVDBG_WITH_QEMU:-1}" = "1" ]; then
  command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
  [ -d /usr/lib/grub/i386-pc ] && command -v grub-mkrescue >/dev/null || need+=(grub-pc-bin grub-common)
  command -v xorriso >/dev/null || need+=(xorriso)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

make -s -C guests
echo "setup: ready (.venv/bin/hvdbg, guests/build/)"
