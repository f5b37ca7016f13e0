"""Tests of onnxq/passes/."""
