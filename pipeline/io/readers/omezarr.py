"""zarr backend: OME-Zarr (NGFF 0.4/0.5) multiscale images, including the bioformats2raw layout (a root
group whose ``OME/`` group lists the series, each a multiscale image).

Levels are the ``multiscales[0].datasets`` in order; a level's downsample is its x scale over level 0's.
The pixel size is level 0's x/y ``scale`` (times any multiscale-wide scale) in the axes' unit; without a
unit it is unknown (NGFF's scale may be in pixels). Channel names come from ``omero.channels[].label`` or
from the bioformats2raw ``OME/METADATA.ome.xml``. Local paths and fsspec URLs (zarr's FsspecStore).
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import InputError
from pipeline.io import storage
from pipeline.io.readers.base import ImageSource, Level
from pipeline.io.readers.ometiff import ome_channels_and_size
from pipeline.io.units import to_um

__all__ = ["OmeZarrSource"]


def _open_group(url: str):
    import zarr

    path = storage.local_path(url)
    try:
        if storage.is_url(path):
            from zarr.storage import FsspecStore

            return zarr.open_group(FsspecStore.from_url(path, read_only=True), mode="r")
        return zarr.open_group(path, mode="r")
    except FileNotFoundError:
        raise InputError(f"input {url}: no zarr group there; check the path (an OME-Zarr folder)") from None
    except Exception as exc:  # noqa: BLE001 - zarr/fsspec raise many types for a broken store; one line names it
        raise InputError(f"input {url}: not a readable OME-Zarr ({str(exc).splitlines()[0][:160]}); pass an "
                         "OME-Zarr (NGFF) image folder") from None


def _attrs(group) -> dict:
    a = dict(group.attrs)
    return a.get("ome", a)  # NGFF 0.5 nests everything under "ome"


class OmeZarrSource(ImageSource):
    reader = "zarr"

    def __init__(self, url: str, series: int | None = None) -> None:
        self.url = url
        self.series = series or 0
        root = _open_group(url)
        attrs = _attrs(root)
        image, xml = root, None
        if "bioformats2raw.layout" in attrs and "multiscales" not in attrs:
            try:
                paths = list(_attrs(root["OME"]).get("series", []))
            except KeyError:
                paths = []
            if not paths:
                paths = sorted((k for k in root.group_keys() if k.isdigit()), key=int)
            if self.series >= len(paths):
                raise InputError(f"input {url}: series {self.series} does not exist, the container has "
                                 f"{len(paths)} (0..{len(paths) - 1}); pick one with series:")
            image = root[paths[self.series]]
            attrs = _attrs(image)
            try:
                xml = _read_text(root, "OME/METADATA.ome.xml")
            except Exception:  # noqa: BLE001 - optional OME-XML channel names
                xml = None
        ms = attrs.get("multiscales")
        if not ms:
            raise InputError(f"input {url}: no 'multiscales' metadata; expected an OME-Zarr (NGFF) image")
        m = ms[0]
        axes = [a["name"] if isinstance(a, dict) else a for a in m.get("axes", ["t", "c", "z", "y", "x"])]
        units = {a["name"]: a.get("unit") for a in m.get("axes", []) if isinstance(a, dict)}
        self._axes = axes
        self._arrays = [image[d["path"]] for d in m["datasets"]]
        scales = []
        for d in m["datasets"]:
            s = np.ones(len(axes))
            for t in d.get("coordinateTransformations", []):
                if t.get("type") == "scale":
                    s = s * np.asarray(t["scale"], float)
            for t in m.get("coordinateTransformations", []) or []:
                if t.get("type") == "scale":
                    s = s * np.asarray(t["scale"], float)
            scales.append(s)
        ix, iy = axes.index("x"), axes.index("y")
        self.levels = [Level(int(a.shape[iy]), int(a.shape[ix]), float(s[ix] / scales[0][ix])) for a, s in zip(self._arrays, scales)]
        x, y = to_um(scales[0][ix], units.get("x")), to_um(scales[0][iy], units.get("y"))
        self.pixel_size, self.pixel_unit = ((x, y), "um") if x and y else (None, None)
        n_ch = int(self._arrays[0].shape[axes.index("c")]) if "c" in axes else 1
        names = [c.get("label") for c in attrs.get("omero", {}).get("channels", [])]
        if not any(names) and xml:
            names = ome_channels_and_size(xml, self.series)[0]
        self.channel_names = [(names[i] if i < len(names) and names[i] else f"ch{i + 1}") for i in range(n_ch)]
        self.dtype = str(self._arrays[0].dtype)
        self.format = "ome-zarr"
        self._check_dtype()

    def _read(self, level: int, row: int, col: int, h: int, w: int, channels: list[int]) -> np.ndarray:
        idx: list = []
        for ax in self._axes:
            if ax == "y":
                idx.append(slice(row, row + h))
            elif ax == "x":
                idx.append(slice(col, col + w))
            elif ax == "c":
                idx.append(slice(None))
            else:
                idx.append(0)  # t, z: the first plane
        data = np.asarray(self._arrays[level][tuple(idx)])
        kept = [ax for ax in self._axes if ax in ("y", "x", "c")]
        data = data[None] if "c" not in kept else np.moveaxis(data, kept.index("c"), 0)
        return np.ascontiguousarray(data[channels])


def _read_text(root, key: str) -> str | None:
    import asyncio

    from zarr.core.buffer import default_buffer_prototype

    async def get():
        buf = await root.store.get(key, prototype=default_buffer_prototype())
        return None if buf is None else buf.to_bytes().decode("utf-8", "replace")

    try:
        return asyncio.run(get())
    except RuntimeError:  # inside a running loop (rare here): skip the XML
        return None
