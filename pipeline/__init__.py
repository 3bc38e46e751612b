"""Seamline: very large images in, one polygon per object out.

The library never imports prefect; ``flows/`` wires these stages into Prefect flows.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
