#!/usr/bin/env bash
# Install the real clients that tests/test_clients.py opens Seamline's outputs with:
#   gdal-bin        ogrinfo, and (via its dependency python3-gdal) GDAL's validate_gpkg.py
#   python3-qgis    QGIS's Python API for the system /usr/bin/python3
#   qgis-providers  the QGIS "ogr" data provider that reads GeoPackage
#   chromium, chromium-driver  a real headless browser (driven by Selenium) for the HTML run report
#   xvfb, xauth     a virtual X display for the napari smoke test (Qt's offscreen platform has no OpenGL)
#   docker-compose  Compose's own validator for infra/docker-compose.yml (`docker-compose config`; no engine needed)
# Debian 12 (bookworm): GDAL 3.6.2, QGIS 3.22.16; ~230 MB of archives, ~1.1 GB on disk, about 2 minutes.
# Skips apt entirely when the clients already work. Needs root (or sudo).
set -euo pipefail

PACKAGES=(gdal-bin python3-qgis qgis-providers chromium chromium-driver xvfb xauth docker-compose)

clients_work() {
    command -v ogrinfo >/dev/null 2>&1 \
        && command -v chromium >/dev/null 2>&1 \
        && command -v chromedriver >/dev/null 2>&1 \
        && command -v xvfb-run >/dev/null 2>&1 \
        && command -v docker-compose >/dev/null 2>&1 \
        && [ -x /usr/bin/python3 ] \
        && QT_QPA_PLATFORM=offscreen /usr/bin/python3 -c 'import qgis.core, osgeo_utils.samples.validate_gpkg' >/dev/null 2>&1
}

if clients_work; then
    echo "install-clients: ogrinfo, QGIS python, chromium, xvfb and docker-compose already work, skipping apt"
    exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-clients: need root or sudo to apt-get install ${PACKAGES[*]}" >&2; exit 1; }
    SUDO=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
start=$(date +%s)
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${PACKAGES[@]}"
echo "install-clients: installed ${PACKAGES[*]} in $(( $(date +%s) - start ))s"

if ! clients_work; then
    echo "install-clients: installed, but ogrinfo or '/usr/bin/python3 -c \"import qgis.core\"' still fails" >&2
    exit 1
fi
ogrinfo --version
chromium --version
QT_QPA_PLATFORM=offscreen /usr/bin/python3 -c 'from qgis.core import Qgis; print("QGIS", Qgis.QGIS_VERSION)'
