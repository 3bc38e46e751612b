"""``--model default`` per scene: the shipped nuclei model for the scene's imaging modality.

The fluorescence nuclei model learned bright nuclei on a dark background; on an H&E slide it outlines pink
stroma and cytoplasm (issue #20: CoNSeP test F1@0.5 0.17, objects of 10⁵ px on the real SVS). The H&E model
learned dark haematoxylin-stained nuclei from colour deconvolution (``input: hematoxylin``). Which one a scene
needs is judged on its low-resolution overview (:func:`pipeline.stages.modality.detect_modality`) before any
full-resolution read, and the summary's ``model_choice`` says which model ran and why.

Only an RGB scene can be H&E: a scene whose model channels are not three (a DAPI channel, a multiplex image)
or that is georeferenced gets the fluorescence model without its overview being read. Anything that is not
H&E brightfield (fluorescence, grey brightfield, other stains, unknown) keeps the fluorescence model — the
default before this choice existed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.io.sources import open_source
from pipeline.models.registry import DEFAULT, SHIPPED_HE, resolve_model_spec
from pipeline.stages.inputs import model_channels, read_overview
from pipeline.stages.modality import Modality, detect_modality

__all__ = ["ModelChoice", "choose_default_model"]


@dataclass(frozen=True)
class ModelChoice:
    """The checkpoint ``default`` stands for in one scene, and why (for the summary)."""

    model: str  # checkpoint stem path
    why: str
    modality: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"requested": DEFAULT, "model": Path(self.model).name, "why": self.why, "modality": self.modality}


def choose_default_model(url: str, cfg) -> ModelChoice | None:
    """The model for ``url`` when ``cfg.model`` is ``default``; None for any other ``--model`` (run as given).

    Reads the overview only of an RGB, non-georeferenced scene (one low-resolution level of a pyramid)."""
    if cfg.model != DEFAULT:
        return None
    fluo = resolve_model_spec(DEFAULT)
    src = open_source(url, cfg.reader, cfg.series)
    try:
        channels, _ = model_channels(src, cfg)
        if src.crs_wkt is not None:
            m = detect_modality(None, georeferenced=True)
        elif len(channels) != 3:
            m = Modality("unknown", None, f"{len(channels)} channel(s), not RGB: not H&E brightfield")
        else:
            ov, mask, _ = read_overview(src, url)
            m = detect_modality(ov[channels], mask)
    finally:
        src.close()
    if m.is_he:
        return ModelChoice(str(resolve_model_spec(str(SHIPPED_HE))), f"H&E brightfield: {m.reason}", m.as_dict())
    return ModelChoice(fluo, f"not H&E brightfield ({m.modality}: {m.reason}): the fluorescence nuclei model",
                       m.as_dict())
