#!/bin/sh
# Build the Debian package: packaging/build-deb.sh [OUTDIR]   (default: dist/)
#
# The package carries guard and every Python dependency as wheels, built here with the
# system's python3 (the interpreter the package runs on); postinst makes a virtual
# environment in /opt/guard/venv from them, offline. Also in the package: the systemd
# units, a default /etc/guard/config.toml (a conffile), and /usr/bin/guard.
# Needs: python3 with venv, dpkg-deb, network access to PyPI (for the wheels).
set -eu
cd "$(dirname "$0")/.."
out="${1:-dist}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' guard/__init__.py)"
arch="$(dpkg --print-architecture)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/root"

# 1. wheels for guard and its dependencies, with the system python3
/usr/bin/python3 -m venv "$work/build-venv"
"$work/build-venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip wheel
"$work/build-venv/bin/python" -m pip wheel -q --disable-pip-version-check \
    --wheel-dir "$root/opt/guard/wheels" .

# 2. files
install -D -m 0644 packaging/systemd/guard.service "$root/lib/systemd/system/guard.service"
install -D -m 0644 packaging/systemd/guard-user.service "$root/usr/lib/systemd/user/guard.service"
install -D -m 0644 packaging/config.toml "$root/etc/guard/config.toml"
install -d -m 0755 "$root/etc/guard/rules.d" "$root/usr/bin"
ln -s /opt/guard/venv/bin/guard "$root/usr/bin/guard"
install -D -m 0644 README.md "$root/usr/share/doc/guard/README.md"

# 3. control files
install -d "$root/DEBIAN"
for f in postinst prerm postrm; do
    install -m 0755 "packaging/debian/$f" "$root/DEBIAN/$f"
done
echo "/etc/guard/config.toml" > "$root/DEBIAN/conffiles"
size="$(du -sk "$root" | cut -f1)"
cat > "$root/DEBIAN/control" <<CONTROL
Package: guard
Version: $version
Architecture: $arch
Maintainer: guard project <guard@localhost>
Installed-Size: $size
Depends: python3 (>= 3.11), python3-venv, libmagic1
Section: admin
Priority: optional
Homepage: https://github.com/guard-project/guard
Description: stops executables disguised as documents
 An agent that watches download and chat-attachment folders, flags executables,
 shortcuts, scripts and archives disguised as documents, quarantines them, blocks
 launches that are not on the admins' allowlist, and writes a tamper-evident audit
 log for the SOC.
CONTROL

deb="$out/guard_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
