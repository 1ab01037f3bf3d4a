#!/bin/sh
# Build (once) a Debian-unstable root holding Debian's asterisk package, for machines
# whose distribution ships no Asterisk (Debian 12). The root is cached outside the
# checkout; later runs find it complete and return at once.
#
#   scripts/build-asterisk-root.sh [ROOT]      default: $OMNICC_ASTERISK_ROOT or
#                                              /var/cache/omnicc/asterisk-root
set -eu

ROOT="${1:-${OMNICC_ASTERISK_ROOT:-/var/cache/omnicc/asterisk-root}}"
MIRROR="${OMNICC_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE="${OMNICC_ASTERISK_SUITE:-sid}"
PACKAGES="asterisk asterisk-core-sounds-en-gsm asterisk-moh-opsound-gsm"

if [ -f "$ROOT/.omnicc-complete" ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "build-asterisk-root: must run as root (debootstrap and chroot)" >&2
    exit 1
fi
command -v debootstrap >/dev/null || { echo "build-asterisk-root: debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }

# Work in a sibling directory and rename at the end, so an interrupted build never
# looks complete.
WORK="$ROOT.partial"
rm -rf "$WORK"
mkdir -p "$(dirname "$ROOT")"
echo "==> debootstrap $SUITE into $WORK (once; a few minutes)"
debootstrap --variant=minbase "$SUITE" "$WORK" "$MIRROR"

cp /etc/resolv.conf "$WORK/etc/resolv.conf"
mount -t proc proc "$WORK/proc"
trap 'umount "$WORK/proc" 2>/dev/null || true' EXIT
echo "==> apt-get install $PACKAGES (inside the root)"
chroot "$WORK" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $PACKAGES
chroot "$WORK" apt-get clean
umount "$WORK/proc"
trap - EXIT

# Without DNS, Asterisk stalls resolving its own hostname and a root server: give it
# an /etc/hosts that names this host and an empty resolv.conf.
: > "$WORK/etc/resolv.conf"
printf '127.0.0.1\tlocalhost %s\n::1\tlocalhost ip6-localhost\n' "$(hostname)" > "$WORK/etc/hosts"
chroot "$WORK" asterisk -V > "$WORK/.omnicc-complete"
rm -rf "$ROOT"
mv "$WORK" "$ROOT"
echo "==> $(cat "$ROOT/.omnicc-complete") ready in $ROOT"
