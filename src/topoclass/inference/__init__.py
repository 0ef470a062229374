"""Prediction without PyTorch: the exported network on ONNX Runtime, the trees through LightGBM's C
library, and the serving rules in NumPy (shared with the PyTorch path)."""
