"""What people look at: progress on stderr (terminal and plain), the quicklook PNG/COG, the HTML report and
the batch index — checked in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium; installed by .ci/install-clients.sh, so a missing browser FAILS with the fix, never skips)."""

from __future__ import annotations

import json
import math
import os
import pty
import re
import select
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from pipeline.io.palette import PALETTE

H, W = 600, 700  # tile 256: a 3 x 3 grid with partial edge tiles
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
HINT = "run .ci/install-clients.sh (apt-get install --no-install-recommends chromium chromium-driver)"


def _segment_cmd(*inputs: Path, out: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "segment", *map(str, inputs), "--out", str(out), "--model", "classical",
            "--tile", "256", "--halo", "32", "--workers", "1", *extra]


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """A georeferenced scene and a microscopy scene, one batch run with stderr piped (plain progress)."""
    from pipeline.synthetic import write_scene

    root = tmp_path_factory.mktemp("report")
    write_scene(root / "geo.tif", H, W, seed=5, crs="EPSG:32633")
    write_scene(root / "micro.ome.tif", 300, 400, seed=6, crs=None, pixel_size_um=0.5)
    out = root / "out"
    r = subprocess.run(_segment_cmd(root / "geo.tif", root / "micro.ome.tif", out=out), capture_output=True, text=True,
                       env={**ENV, "SEAMLINE_PROGRESS_EVERY": "0"}, timeout=300, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    return root, out, r


# --------------------------------------------------------------------------------------------- progress
@pytest.mark.slow  # CLI runs
def test_plain_progress_lines_when_stderr_is_not_a_terminal(batch):
    _, _, r = batch
    err = r.stderr
    assert "\x1b[" not in err and "\r" not in err, "no terminal control codes in logs"
    for stage in ("ingest + statistics", "segment 9 tiles", "stitch", "write outputs", "quicklook + report"):
        assert f"seamline: geo: {stage} ..." in err and re.search(rf"seamline: geo: {re.escape(stage)} done in \d", err), err
    lines = re.findall(r"seamline: geo: tiles (\d+)/9 \((\d+)%\), ([\d.]+|--) Mpx/s, ETA (\S+)", err)
    assert lines and lines[-1][:2] == ("9", "100"), err
    assert [int(x[0]) for x in lines] == sorted(int(x[0]) for x in lines)
    assert float(lines[-1][2]) > 0 and lines[-1][3] == "00:00"
    assert "seamline: micro: tiles 4/4 (100%)" in err


def _run_in_pty(cmd: list[str], cwd: Path, timeout: float = 300) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal (as in an interactive shell) and stdout on a pipe."""
    master, slave = pty.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, cwd=cwd,
                         env={k: v for k, v in ENV.items() if k not in ("COLUMNS", "TERM")} | {"TERM": "xterm-256color"})
    os.close(slave)
    chunks = []
    end = time.time() + timeout
    while time.time() < end:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif p.poll() is not None:
            break
    os.close(master)
    out = p.stdout.read().decode()
    return p.wait(timeout=30), out, b"".join(chunks).decode(errors="replace")


@pytest.mark.slow  # CLI runs on a pseudo-terminal
def test_live_bar_on_a_terminal_and_quiet(batch, tmp_path):
    root, _, _ = batch
    rc, out, raw = _run_in_pty(_segment_cmd(root / "geo.tif", out=tmp_path / "live"), tmp_path)
    assert rc == 0, raw[-3000:]
    assert "\x1b[" in raw, "a terminal gets a live (redrawn) bar"
    term = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    assert re.search(r"9/9 tiles [\d.]+ Mpx/s ETA 00:00", term), term[-2000:]
    assert "━" in term  # rich's bar
    assert "seamline: geo: segment 9 tiles done in" in term
    assert not re.search(r"tiles \d+/9 \(\d+%\)", term), "plain lines are for non-terminals only"
    assert "objects ->" in out
    rc, out, term = _run_in_pty(_segment_cmd(root / "geo.tif", out=tmp_path / "quiet", extra=("--quiet",)), tmp_path)
    assert rc == 0 and "objects ->" in out, term
    assert "Mpx/s" not in term and "seamline:" not in term and "\x1b[" not in term, term


def test_progress_counts_resumed_tiles_and_eta():
    import io

    from pipeline.report.progress import Progress

    buf = io.StringIO()
    p = Progress("plain", buf, every=0)
    p.scene = "s"
    p.start_tiles(10, 10e6)
    p.advance(0, resumed=4)  # done by an earlier run: counts as done, not in the rate
    assert p.rate_eta() == (None, None)
    time.sleep(0.05)
    p.advance(2)
    rate, eta = p.rate_eta()
    assert rate is not None and 2e6 / 0.05 >= rate > 0 and eta == pytest.approx(4e6 / rate, rel=0.05)
    assert re.search(r"^seamline: s: tiles 6/10 \(60%\), [\d.]+ Mpx/s, ETA \d\d:\d\d$", buf.getvalue().splitlines()[-1])


# --------------------------------------------------------------------------------------------- quicklook
def test_quicklook_png_and_cog(batch):
    import rasterio
    from affine import Affine
    from PIL import Image

    root, out, _ = batch
    s = json.loads((out / "geo.json").read_text())
    for k in ("quicklook_png", "quicklook_tif", "report"):
        assert Path(s["outputs"][k]).exists(), s["outputs"]
    png = np.asarray(Image.open(out / "geo.quicklook.png").convert("RGB"))
    assert png.shape == (H, W, 3)  # smaller than 2048: factor 1
    yellow = np.all(png == PALETTE[0], axis=-1)
    assert yellow.sum() > 50 * s["objects"] ** 0.5, "outlines drawn in the class colour"
    with rasterio.open(out / "geo.quicklook.tif") as ds:
        assert ds.crs.to_epsg() == 32633 and ds.count == 3 and ds.dtypes[0] == "uint8"
        assert ds.transform == Affine(0.5, 0, 500000.0, 0, -0.5, 5_000_000.0)
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert [c.name for c in ds.colorinterp] == ["red", "green", "blue"]
        np.testing.assert_array_equal(np.moveaxis(ds.read(), 0, -1), png)
    assert not (out / "micro.quicklook.tif").exists(), "no COG for a scene without georeferencing"
    assert (out / "micro.quicklook.png").exists()
    assert not list(out.glob(".*tmp*")), "no temporary files left"


def test_quicklook_reduced_out_of_core_and_georeferenced(tmp_path):
    """A store larger than the quicklook: block means equal the whole-array reference, the COG's pixels are
    `factor` scene pixels, and peak memory stays far below the image's size."""
    import rasterio
    import zarr
    from affine import Affine

    from pipeline.report.quicklook import downsample_store, make_quicklook, write_cog

    hh, ww, tile = 1900, 2300, 128
    rng = np.random.default_rng(0)
    img = rng.integers(0, 4000, (1, hh, ww), dtype=np.uint16)
    store = str(tmp_path / "s.zarr")
    zarr.create_array(store=store, name="image", shape=img.shape, chunks=(1, tile, tile), dtype="uint16")[:] = img
    f = 7
    tracemalloc.start()
    small = downsample_store(store, f)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < img.nbytes / 4, f"peak {peak} bytes for a {img.nbytes}-byte image"
    ref = np.pad(img[0].astype(np.float64), ((0, -hh % f), (0, -ww % f)))
    cnt = np.pad(np.ones((hh, ww)), ((0, -hh % f), (0, -ww % f)))
    ref = ref.reshape(math.ceil(hh / f), f, -1, f).sum((1, 3)) / cnt.reshape(math.ceil(hh / f), f, -1, f).sum((1, 3))
    np.testing.assert_allclose(small[0], ref, rtol=1e-5)
    # through make_quicklook with a small limit: one polygon drawn at its place in the reduced image
    import geopandas as gpd
    from shapely.geometry import box

    t = (2.0, 0.0, 300000.0, 0.0, -2.0, 6000000.0)
    gpd.GeoDataFrame({"class": ["a"]}, geometry=[box(300000 + 2 * 700, 6000000 - 2 * 1400, 300000 + 2 * 1400, 6000000 - 2 * 700)],
                     crs="EPSG:32633").to_parquet(tmp_path / "o.parquet")
    q = make_quicklook(store, str(tmp_path / "o.parquet"), t, [(0, 4000)], {"a": (255, 0, 0)}, tile, max_side=500)
    assert q.factor == math.ceil(2300 / 500) == 5 and q.image.shape == (380, 460, 3)
    # the box spans scene px 700..1400 = quicklook px 140..280 (edges on pixel corners, drawn within a pixel)
    red = np.argwhere(np.all(q.image == (255, 0, 0), axis=-1))
    assert red.size and red.min(0).tolist() == [139, 139] and red.max(0).tolist() == [279, 279], (red.min(0), red.max(0))
    cog = write_cog(q.image, q.factor, t, "EPSG:32633", tmp_path / "q.tif")
    with rasterio.open(cog) as ds:
        assert ds.transform == Affine(*t) * Affine.scale(5)
        assert ds.bounds.left == 300000 and ds.bounds.top == 6000000
        assert ds.bounds.right == 300000 + 2 * 5 * 460 and ds.bounds.bottom == 6000000 - 2 * 5 * 380


# --------------------------------------------------------------------------------------------- browser
def _chrome(tmp: Path):
    for exe, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(exe).exists():
            pytest.fail(f"{exe} not found: install the Debian package {pkg} ({HINT})")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: pip install -e '.[test]'")
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager look for drivers on the network
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={tempfile.mkdtemp(dir=tmp)}", "--window-size=1280,1000"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


@pytest.mark.slow  # a real headless Chromium
def test_report_renders_in_headless_chromium(batch, tmp_path):
    root, out, _ = batch
    s = json.loads((out / "geo.json").read_text())
    driver = _chrome(tmp_path)
    try:
        for page, stem in ((out / "geo.html", "geo"), (out / "micro.html", "micro")):
            driver.get(page.resolve().as_uri())
            assert driver.title == f"Seamline report: {stem}"
            imgs = driver.execute_script("return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.src.slice(0, 22)])")
            alts = [i[0] for i in imgs]
            assert alts[:3] == [f"quicklook of {stem}", "Densest area", "Tile seam"], imgs
            assert all(i[1] and i[2] > 0 and i[3] == "data:image/png;base64," for i in imgs), imgs
            assert driver.execute_script("return document.querySelectorAll('svg rect').length") > 20  # two histograms
            assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0, "no network"
            body = driver.find_element("tag name", "body").text
            logs = driver.get_log("browser")
            assert not logs, logs
            if stem == "geo":
                assert f"{s['objects']:,}" in body and "area (m2)" in body.replace("\n", " ")
                assert re.search(r"processed in this run\s+9", body), body
                h = driver.execute_script("return document.body.scrollHeight")
                driver.set_window_size(1280, min(h + 120, 5000))
                shot = Path(os.environ.get("SEAMLINE_SCREENSHOT_DIR", tmp_path)) / "report_geo.png"
                assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        driver.get((out / "index.html").resolve().as_uri())
        links = driver.execute_script("return Array.from(document.links).map(a => a.getAttribute('href'))")
        assert links == ["geo.html", "micro.html"] and all((out / ln).exists() for ln in links)
        assert all(driver.execute_script("return Array.from(document.images).map(i => i.naturalWidth > 0)"))
        assert not driver.get_log("browser")
    finally:
        driver.quit()
    html = (out / "geo.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html) and "<script" not in html


def test_plain_heartbeat_while_nothing_finishes():
    import io

    from pipeline.report.progress import Progress

    buf = io.StringIO()
    with Progress("plain", buf, every=0.2) as p:
        with p.stage("ingest"):
            time.sleep(0.9)
        p.start_tiles(3, 3e6)
        time.sleep(0.9)
        p.advance(3)
        p.finish_tiles()
    lines = buf.getvalue().splitlines()
    assert lines[0] == "seamline: ingest ..." and re.match(r"seamline: ingest done in 0\.\d s", [ln for ln in lines if "done" in ln][0])
    assert sum(bool(re.fullmatch(r"seamline: ingest \.\.\. \d s", ln)) for ln in lines) >= 2, lines
    assert sum(ln == "seamline: tiles 0/3 (0%), -- Mpx/s, ETA --:--" for ln in lines) >= 2, lines
    assert lines[-1].startswith("seamline: tiles 3/3 (100%)"), lines


def test_stretch_clips_below_low_percentile_to_black():
    from pipeline.report.render import stretch, to_rgb

    block = np.array([[[0, 5, 10, 250, 255]]], np.uint8)
    rgb = to_rgb(stretch(block, [(5.0, 250.0)]))
    assert rgb[0, :, 0].tolist() == [0, 0, 5, 255, 255]  # (10 - 5) / 245 * 255 = 5.2


def test_class_palette_is_stable():
    from pipeline.io.palette import class_colours

    a = class_colours(["building", "tree"], ["tree", "car", "building"])
    b = class_colours(["building", "tree"], ["car"])
    assert list(a) == ["building", "tree", "car"] and a == {**b, "tree": a["tree"]}
    assert a["building"] == PALETTE[0] and a["tree"] == PALETTE[1] and a["car"] == PALETTE[2]
    assert class_colours(None, ["b", "a"]) == {"a": PALETTE[0], "b": PALETTE[1]}  # no model order: sorted names


def test_page_lists_skipped_tiles_and_warnings():
    from pipeline.report.html import render_page

    hist = {"area": (np.linspace(0, 1, 4), np.array([1, 2, 3]), False), "score": (np.linspace(0, 1, 4), np.array([3, 2, 1]), False)}
    s = {"objects": 6, "counts_per_class": {"nucleus": 6}, "tiling": {"tiles": 12}, "tiles_processed": 5, "tiles_resumed": 1,
         "tiles_skipped": {"tissue": 4, "nodata": 2, "total": 6, "fraction": 0.5}, "warnings": ["halo < receptive <field>"],
         "timings_s": {"tiles": 2.0, "total": 3.0}, "outputs": {}}
    page = render_page(s, "x", {"nucleus": PALETTE[0]}, hist, None, 1, [], None)
    for cell in ('<td>skipped (no tissue)</td><td class="n">4</td>', '<td>skipped (all nodata)</td><td class="n">2</td>',
                 '<td>resumed (done by an earlier run)</td><td class="n">1</td>'):
        assert cell in page, cell
    assert "halo &lt; receptive &lt;field&gt;" in page  # warnings escaped
