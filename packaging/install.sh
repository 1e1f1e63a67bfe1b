#!/bin/sh
# Set up guard on a fresh Debian or Ubuntu machine: the system library it needs
# (libmagic), a virtual environment in .venv, and guard installed into it.
#   packaging/install.sh           the guard
#   packaging/install.sh --test    the guard plus what the tests need
set -eu
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=""
ldconfig -p 2>/dev/null | grep -q 'libmagic\.so\.1' || need="$need libmagic1"
python3 -c 'import ensurepip, venv' 2>/dev/null || need="$need python3-venv"
if [ "${1:-}" = "--test" ]; then
    # the tests sign a PE with a throwaway CA to check Authenticode verification
    command -v osslsigncode >/dev/null || need="$need osslsigncode"
    # syslog forwarding is tested against a real rsyslog on loopback
    command -v rsyslogd >/dev/null || need="$need rsyslog"
fi
if [ -n "$need" ]; then
    echo "installing system packages:$need"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".$extra"
echo "guard installed: $(.venv/bin/guard --version)"
