#!/bin/sh
# make deb: build okcell_<version>_<arch>.deb with dpkg-deb from deploy/debian/.
#
# The package holds a ready virtual environment at /opt/okcell made with the target's own interpreter ($PYTHON,
# which becomes the venv's python) and installed offline from $WHEELHOUSE (collected by `make wheelhouse`, wheels for
# that interpreter and architecture) plus a wheel of this checkout. So build on the target distribution and
# architecture, or in a chroot of it (docs/deploy.md). SYSTEM_SITE_PACKAGES=1 (Jetson) lets the venv see the
# system's TensorRT bindings (python3-libnvinfer from JetPack's apt); EXTRA_PACKAGES names more wheels to install
# (Jetson: pycuda, built on the Jetson into the wheelhouse).
#
# Environment: PYTHON (default /usr/bin/python3), PIP (a pip able to build the okcell wheel; default "$PYTHON -m
# pip"), WHEELHOUSE (required), OUT (default build), ARCH (default: dpkg --print-architecture),
# SYSTEM_SITE_PACKAGES (0/1), EXTRA_PACKAGES, COMPRESS (dpkg-deb -Z: zstd, the default, needs dpkg >= 1.21.18 or
# Ubuntu's; xz is smaller and takes minutes).
set -eu
# only the wheels and the checkout go into the venv, whatever this shell's Python search path says
unset PYTHONPATH PYTHONHOME PYTHONUSERBASE

REPO=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$REPO/deploy/debian"
PYTHON=${PYTHON:-/usr/bin/python3}
PIP=${PIP:-"$PYTHON -m pip"}
: "${WHEELHOUSE:?set WHEELHOUSE to the folder of wheels (make wheelhouse)}"
OUT=${OUT:-$REPO/build}
ARCH=${ARCH:-$(dpkg --print-architecture)}
SYSTEM_SITE_PACKAGES=${SYSTEM_SITE_PACKAGES:-0}
EXTRA_PACKAGES=${EXTRA_PACKAGES:-}
COMPRESS=${COMPRESS:-"-Zxz -z1"}
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO/okcell/__init__.py")
PYVER=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PYNEXT=$("$PYTHON" -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))')
DEB="$OUT/okcell_${VERSION}_${ARCH}.deb"

[ -d "$WHEELHOUSE" ] || { echo "build-deb: wheelhouse $WHEELHOUSE not found (make wheelhouse)" >&2; exit 2; }
mkdir -p "$OUT"
WORK=$(mktemp -d "$OUT/.deb-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
STAGE="$WORK/root"
VENV="$STAGE/opt/okcell"

echo "build-deb: okcell $VERSION for $ARCH, Python $PYVER ($PYTHON), wheels from $WHEELHOUSE"
$PIP wheel --quiet --no-deps --no-build-isolation --no-index --wheel-dir "$WORK/wheel" "$REPO"
if [ "$SYSTEM_SITE_PACKAGES" = 1 ]; then
	"$PYTHON" -m venv --without-pip --system-site-packages "$VENV"
else
	"$PYTHON" -m venv --without-pip "$VENV"
fi
# shellcheck disable=SC2086 # EXTRA_PACKAGES is a list of requirement names
$PIP --python "$VENV/bin/python3" install --quiet --no-index --find-links "$WHEELHOUSE" --find-links "$WORK/wheel" \
	--no-compile --no-warn-script-location --disable-pip-version-check "okcell==$VERSION" $EXTRA_PACKAGES

[ -x "$VENV/bin/okcell" ] || { echo "build-deb: okcell was not installed into the venv" >&2; exit 1; }

# the venv was made in $VENV and runs from /opt/okcell: rewrite the paths in scripts and pyvenv.cfg
grep -rlIZ -- "$VENV" "$VENV" | xargs -0 -r sed -i "s|$VENV|/opt/okcell|g"
if grep -rlI -- "$WORK" "$VENV"; then
	echo "build-deb: files above still name the build folder $WORK" >&2
	exit 1
fi
find "$VENV" -depth -type d -name __pycache__ -exec rm -rf {} +
# pip's record of where each wheel came from names this build machine's folders
find "$VENV" -path '*.dist-info/direct_url.json' -delete
# nothing in site-packages is run as a program (shared libraries and modules are loaded, not executed)
find "$VENV"/lib/python*/site-packages -type f -perm /111 -exec chmod a-x {} +
# the newest glibc a wheel was built for (manylinux_2_X; manylinux2014 = 2.17) is the oldest libc6 it runs with
GLIBC=$(ls "$WHEELHOUSE" | sed -n -e 's/.*manylinux2014.*/2.17/p' -e 's/.*manylinux_2_\([0-9]*\)_.*/2.\1/p' \
	| sort -t. -k2,2n | tail -n 1)

install -D -m 644 "$HERE/cell.yaml" "$STAGE/etc/okcell/cell.yaml"
install -D -m 644 "$REPO/systemd/okcell.service" "$STAGE/lib/systemd/system/okcell.service"
install -D -m 644 "$REPO/systemd/okcell-engine.service" "$STAGE/lib/systemd/system/okcell-engine.service"
mkdir -p "$STAGE/usr/bin"
ln -s /opt/okcell/bin/okcell "$STAGE/usr/bin/okcell"
mkdir -p "$STAGE/usr/share/man/man1"
gzip -9n < "$HERE/okcell.1" > "$STAGE/usr/share/man/man1/okcell.1.gz"
install -D -m 644 "$HERE/copyright" "$STAGE/usr/share/doc/okcell/copyright"
gzip -9n < "$HERE/changelog" > "$STAGE/usr/share/doc/okcell/changelog.gz"
install -D -m 644 "$HERE/lintian-overrides" "$STAGE/usr/share/lintian/overrides/okcell"

mkdir -p "$STAGE/DEBIAN"
install -m 755 "$HERE/postinst" "$HERE/prerm" "$HERE/postrm" "$STAGE/DEBIAN/"
install -m 644 "$HERE/conffiles" "$STAGE/DEBIAN/"
chmod -R u+rwX,go+rX,go-w "$STAGE"
(cd "$STAGE" && find . -path ./DEBIAN -prune -o -type f -print0 | LC_ALL=C sort -z | xargs -0 md5sum \
	| sed 's| \./| |') > "$STAGE/DEBIAN/md5sums"
chmod 644 "$STAGE/DEBIAN/md5sums"
SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
sed -e "s|@VERSION@|$VERSION|" -e "s|@ARCH@|$ARCH|" -e "s|@INSTALLED_SIZE@|$SIZE|" \
	-e "s|@DEPENDS@|python3 (>= $PYVER), python3 (<< $PYNEXT), libpython$PYVER${GLIBC:+, libc6 (>= $GLIBC)}|" "$HERE/control.in" \
	> "$STAGE/DEBIAN/control"

# shellcheck disable=SC2086 # COMPRESS is dpkg-deb options
dpkg-deb --root-owner-group $COMPRESS --build "$STAGE" "$DEB" >/dev/null
echo "build-deb: $DEB ($(du -h "$DEB" | cut -f1), installed $(( SIZE / 1024 )) MiB)"
