"""Training of the instance-segmentation network (``seamline train``)."""

__all__: list[str] = []
