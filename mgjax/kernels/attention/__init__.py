"""Attention kernels: an XLA reference, cuDNN, and mgjax's Pallas GPU and TPU flash
attention, behind one dispatcher (`attention`, see dispatch.py)."""

from mgjax.kernels.attention.dispatch import IMPLEMENTATIONS, attention, resolve, target_platform

__all__ = ["IMPLEMENTATIONS", "attention", "resolve", "target_platform"]
