"""Calibration data straight from the frameworks: a PyTorch DataLoader or Dataset and a
tf.data.Dataset quantize to the same bytes as the equivalent list of numpy feeds (tuples map
to the inputs in order, labels dropped; Dataset items get the batch axis)."""

from __future__ import annotations

import numpy as np
import pytest

import onnxq
from tests import builders as B


def _data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((6, 3, 16, 16)).astype(np.float32), rng.integers(0, 10, 6)


def _reference(model, x, batch):
    feeds = [{"input": x[i:i + batch]} for i in range(0, len(x), batch)]
    return onnxq.quantize(model, feeds, progress=False).model.SerializeToString()


@pytest.mark.torch
def test_torch_dataloader_and_dataset():
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    model = B.conv_bn_relu()
    x, y = _data()
    dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    loader = DataLoader(dataset, batch_size=2, shuffle=False)
    got = onnxq.quantize(model, loader, progress=False).model.SerializeToString()
    assert got == _reference(model, x, 2)
    got = onnxq.quantize(model, dataset, progress=False).model.SerializeToString()
    assert got == _reference(model, x, 1)


@pytest.mark.tf
def test_tf_data_dataset():
    tf = pytest.importorskip("tensorflow")
    model = B.conv_bn_relu()
    x, y = _data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(3)
    got = onnxq.quantize(model, ds, progress=False).model.SerializeToString()
    assert got == _reference(model, x, 3)
    named = tf.data.Dataset.from_tensor_slices({"input": x})  # dict elements, unbatched
    got = onnxq.quantize(model, named, progress=False).model.SerializeToString()
    assert got == _reference(model, x, 1)


@pytest.mark.torch
def test_dict_items_drop_labels_and_a_torch_module_needs_shapes():
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from onnxq.errors import ConfigError

    model = B.conv_bn_relu()
    x, y = _data()
    items = [{"input": torch.from_numpy(x[i:i + 2]), "labels": torch.from_numpy(y[i:i + 2])}
             for i in range(0, 6, 2)]
    got = onnxq.quantize(model, DataLoader(items, batch_size=None), progress=False)
    assert got.model.SerializeToString() == _reference(model, x, 2)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    with pytest.raises(ConfigError, match="input_shapes"):
        onnxq.quantize(net, DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(x))),
                       progress=False)
