"""Backends of :mod:`pipeline.io.sources` (one module per library): gdal, slide (OpenSlide), ometiff
(tifffile), omezarr (zarr). Import them through :func:`pipeline.io.sources.open_source`."""
