#!/bin/sh
# Install what omnicc needs on Debian 12, skipping what is already there:
#   1. Debian packages (Kamailio and its modules, SIPp, Redis, PostgreSQL, debootstrap, ...)
#   2. .venv made from the system python3 (the interpreter Kamailio embeds), omnicc in it
#   3. Asterisk: a system `asterisk` if on PATH, else a cached Debian-unstable root
# Run by `make demo` and `make test`; safe and quick to run again.
set -eu
cd "$(dirname "$0")/.."

PACKAGES="kamailio kamailio-python3-modules
kamailio-websocket-modules kamailio-tls-modules sip-tester redis-server postgresql
debootstrap python3 python3-venv python3-dev util-linux procps"

missing=""
for pkg in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "install: missing Debian packages:$missing" >&2
        echo "install: run as root (sudo make install) or: sudo apt-get install$missing" >&2
        exit 1
    fi
    echo "==> apt-get install$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
    # omnicc starts its own Kamailio on the config's port; a packaged kamailio service
    # that this install just brought in would take 5060 first. Stop and disable it.
    case " $missing " in
        *" kamailio "*)
            if [ -d /run/systemd/system ]; then
                systemctl disable --now kamailio.service 2>/dev/null || true
            fi ;;
    esac
fi

# The venv must be built from the python3 Kamailio's app_python3 embeds (/usr/bin/python3),
# so the KEMI script can import the same packages.
stamp=.venv/.omnicc-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "==> .venv (from /usr/bin/python3) with omnicc and its dependencies"
    [ -x .venv/bin/python ] || /usr/bin/python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
    echo "$want" > "$stamp"
fi

if command -v asterisk >/dev/null 2>&1; then
    echo "==> asterisk: using $(command -v asterisk)"
elif [ "$(id -u)" = 0 ]; then
    scripts/build-asterisk-root.sh
else
    root="${OMNICC_ASTERISK_ROOT:-/var/cache/omnicc/asterisk-root}"
    if [ ! -f "$root/.omnicc-complete" ]; then
        echo "install: no asterisk; building its root needs root: sudo scripts/build-asterisk-root.sh" >&2
        exit 1
    fi
fi
echo "==> install: done"
