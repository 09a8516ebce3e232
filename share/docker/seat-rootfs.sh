#!/bin/sh
# The root file system of the seats' container image, as a tar for `docker import` (no registry needed):
# Debian's minimal base (debootstrap, from Debian's own packages) with its python3, and the students'
# Python environment copied in at the same path (the hub's versions of jupyterhub, jupyterlab and
# ipykernel, as `make system-users` builds it), so a seat's server runs the same code in a container
# as on the machine.
#   share/docker/seat-rootfs.sh OUT.tar STUDENT_VENV [SUITE] [MIRROR]
set -eu
out=$1
venv=$(cd "$2" && pwd)
suite=${3:-bookworm}
mirror=${4:-http://deb.debian.org/debian}
[ "$(id -u)" = 0 ] || { echo "seat-rootfs: must run as root (debootstrap)" >&2; exit 1; }
[ -x "$venv/bin/python" ] || { echo "seat-rootfs: no students' Python at $venv (run make system-users)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
debootstrap --variant=minbase --include=python3,tini,procps "$suite" "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -20 "$work/debootstrap.log" >&2; exit 1; }
mkdir -p "$work/root$venv"
cp -a "$venv/." "$work/root$venv/"
# Nothing of the build machine's package caches or logs goes into the image.
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"* "$work/root/var/log/"*
tar -C "$work/root" --numeric-owner -cf "$out.part" .
mv "$out.part" "$out"
