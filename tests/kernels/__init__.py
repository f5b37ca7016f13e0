"""Tests of onnxq/kernels/."""
