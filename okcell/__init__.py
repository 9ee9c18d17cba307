"""okcell: an edge visual inspection cell (camera -> DINOv2 -> reference index -> OK/NOK -> PLC)."""

__version__ = "0.1.0"
