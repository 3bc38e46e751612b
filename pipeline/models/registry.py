"""Turn ``--model`` (``classical``, ``default``, or a checkpoint path) into a model object."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import CheckpointError
from pipeline.models.checkpoint import checkpoint_paths
from pipeline.models.classical import ClassicalModel
from pipeline.models.learned import SHIPPED_MODEL, LearnedModel

__all__ = ["load_model", "resolve_model_spec", "SHIPPED_AERIAL", "SHIPPED_HE", "DEFAULT"]

_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
#: Shipped aerial models by name (docs/MODEL.md): buildings (Kampala, OpenAerialMap + OSM) and tree crowns
#: (NEON 10 cm RGB, box-supervised from DeepForest's boxes).
SHIPPED_AERIAL = {"buildings": _WEIGHTS / "buildings_unet_mbv2", "trees": _WEIGHTS / "trees_unet_mbv2"}
#: The shipped H&E brightfield nuclei model (CoNSeP, Apache-2.0; issue #20). ``--model default`` takes it for a
#: scene whose overview is H&E brightfield (:mod:`pipeline.stages.model_choice`), the fluorescence model else.
SHIPPED_HE = _WEIGHTS / "nuclei_he_unet_mbv2"
#: ``--model`` values that name the default: chosen per scene by its modality.
DEFAULT = "default"


def resolve_model_spec(spec: str, what: str = "--model") -> str:
    """Validate a model spec early (on the driver), returning ``classical`` or a checkpoint stem path.

    ``what`` names the parameter in the error message (``--model``, ``init_from``)."""
    if spec == "classical":
        return spec
    if spec in (DEFAULT, "nuclei"):  # before a scene is seen, the default is the fluorescence nuclei model
        spec = str(SHIPPED_MODEL)
    elif spec == "nuclei-he":
        spec = str(SHIPPED_HE)
    elif spec in SHIPPED_AERIAL:
        spec = str(SHIPPED_AERIAL[spec])
    weights, meta = checkpoint_paths(spec)
    if not weights.is_file() or not meta.is_file():
        raise CheckpointError(
            f"{what} {spec}: no checkpoint there (need {weights.name} and {meta.name}); "
            "pass 'classical', 'default', 'nuclei', 'nuclei-he', 'buildings', 'trees', or a path written by seamline train"
        )
    return str(Path(weights).with_suffix(""))


def load_model(spec: str, classical_params: dict | None = None, device: str = "auto", threads: int | None = None,
               tta: bool = False, inference: str = "eager"):
    spec = resolve_model_spec(spec)
    if spec == "classical":
        return ClassicalModel(**(classical_params or {}))
    return LearnedModel(spec, device=device, threads=threads, tta=tta, inference=inference)
