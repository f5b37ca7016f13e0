"""Tests of onnxq/calibrators/."""
