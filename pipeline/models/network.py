"""The instance-segmentation network: an smp model with three heads.

Heads (output channels, in order):

``foreground``
    logit of "inside any object".
``boundary``
    logit of "on the boundary of an object or the contact between two": separates touching objects.
``distance``
    logit of the distance to the object's edge, normalised per object to [0, 1]: its crest marks
    object centres, so markers come from it even where the boundary head is unsure.

:func:`instances.heads_to_instances` turns these three maps into labelled instances (marker watershed).
Weights are never downloaded: ``encoder_weights=None`` always.
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import CheckpointError

__all__ = ["HEADS", "build_network", "default_architecture"]

HEADS = ("foreground", "boundary", "distance")


def default_architecture() -> dict[str, Any]:
    """The architecture of the shipped nuclei model (U-Net, MobileNetV2 encoder, 4.1 M parameters)."""
    return {
        "architecture": "Unet",
        "encoder": "mobilenet_v2",
        "encoder_depth": 5,
        "decoder_channels": [128, 64, 32, 16, 8],
        "in_channels": 3,
        "heads": list(HEADS),
    }


def build_network(spec: dict[str, Any]):
    """Build an smp network from an architecture dict (as stored in checkpoint metadata)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import segmentation_models_pytorch as smp

    arch = spec.get("architecture", "Unet")
    cls = getattr(smp, arch, None)
    if cls is None or not isinstance(cls, type):
        raise CheckpointError(f"architecture {arch!r} is not an smp model; use one of Unet, UnetPlusPlus, FPN, DeepLabV3Plus")
    kwargs: dict[str, Any] = {
        "encoder_name": spec.get("encoder", "mobilenet_v2"),
        "encoder_weights": None,
        "in_channels": int(spec.get("in_channels", 3)),
        "classes": len(spec.get("heads", HEADS)),
    }
    if "encoder_depth" in spec:
        kwargs["encoder_depth"] = int(spec["encoder_depth"])
    if "decoder_channels" in spec and arch in ("Unet", "UnetPlusPlus"):
        kwargs["decoder_channels"] = list(spec["decoder_channels"])
    try:
        return cls(**kwargs)
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"cannot build {arch} with {kwargs}: {exc}") from None
