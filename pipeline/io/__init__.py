"""Readers and writers: GDAL rasters, slides, object storage, output files."""
