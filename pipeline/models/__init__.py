"""Models: the classical baseline and the learned smp network, behind one small interface."""

from pipeline.models.registry import load_model

__all__ = ["load_model"]
