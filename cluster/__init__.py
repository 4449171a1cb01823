"""Tensor-parallel serving cluster for GLM-5 on Apple-silicon Macs."""

__version__ = "0.1.0"
