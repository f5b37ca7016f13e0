"""Tests of onnxq/exporters/."""
