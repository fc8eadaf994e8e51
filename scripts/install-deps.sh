#!/usr/bin/env bash
# Installs the Debian packages the cloud needs, only those missing. Safe to run twice.
set -euo pipefail

# command -> package that provides it
declare -A NEED=(
  [etcd]=etcd-server
  [redis-server]=redis-server
  [libvirtd]=libvirt-daemon-system
  [virsh]=libvirt-clients
  [qemu-system-x86_64]=qemu-system-x86
  [qemu-img]=qemu-utils
  [dnsmasq]=dnsmasq-base
  [iptables]=iptables
  [pkg-config]=pkg-config
  [mkfs.ext4]=e2fsprogs
  [cpio]=cpio
  [chromium]=chromium   # the dashboard's browser tests (Playwright drives it)
)
missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${NEED[$cmd]}")
done
# Headers to build libvirt-python; busybox for the guest image.
dpkg -s libvirt-dev >/dev/null 2>&1 || missing+=(libvirt-dev)
[ -x /bin/busybox ] && dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
