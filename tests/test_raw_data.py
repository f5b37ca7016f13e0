"""Calibration from raw data through the CLI: a folder of JPEG/PNG images with a preprocessing
spec, a text file with a tokenizer.json, a folder of .wav files; mismatches between the data
and the model's inputs are exit 2 naming the mismatch."""

from __future__ import annotations

import wave

import numpy as np
import onnx
import pytest

from onnxq.cli import main
from onnxq.raw_data import image_spec, model_inputs, raw_feeds
from tests import builders as B

PIL = pytest.importorskip("PIL.Image")
tokenizers = pytest.importorskip("tokenizers")


def _images(folder, n: int = 4) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 256, (40 + 8 * i, 52, 3), dtype=np.uint8)
        PIL.fromarray(pixels).save(folder / f"img{i}.{'jpg' if i % 2 else 'png'}")


def test_an_image_folder_calibrates_through_the_cli(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(B.conv_bn_relu(), str(src))  # input [batch, 3, 16, 16]
    _images(tmp_path / "photos")
    spec = tmp_path / "prep.toml"
    spec.write_text('resize = 20\ncrop = 16\nmean = [0.5, 0.5, 0.5]\nstd = [0.25, 0.25, 0.25]\n')
    assert main(["quantize", str(src), str(tmp_path / "q.onnx"), "--calib-data",
                 str(tmp_path / "photos"), "--preprocess", str(spec), "--quiet"]) == 0
    feeds = list(raw_feeds(tmp_path / "photos", model_inputs(src), preprocess=str(spec)))
    assert len(feeds) == 4 and feeds[0]["input"].shape == (1, 3, 16, 16)
    # the first image by hand: shorter side 40 -> 20 (52 -> 26), centre 16x16, normalized
    img = PIL.open(tmp_path / "photos" / "img0.png").convert("RGB").resize((26, 20),
                                                                         PIL.Resampling.BILINEAR)
    crop = np.asarray(img.crop((5, 2, 21, 18)), np.float32) / 255
    want = ((crop - 0.5) / 0.25).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(feeds[0]["input"], want, rtol=1e-5, atol=1e-5)


def test_mismatched_preprocessing_is_exit_2_naming_it(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(B.conv_bn_relu(), str(src))
    _images(tmp_path / "photos")
    out = str(tmp_path / "q.onnx")
    assert main(["quantize", str(src), out, "--calib-data", str(tmp_path / "photos"),
                 "--preprocess", "imagenet", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "224x224" in err and "'input'" in err and "crop = 16" in err
    assert main(["quantize", str(src), out, "--calib-data", str(tmp_path / "photos"),
                 "--quiet"]) == 2
    assert "--preprocess" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('layout = "NCWH"\n')
    assert main(["quantize", str(src), out, "--calib-data", str(tmp_path / "photos"),
                 "--preprocess", str(bad), "--quiet"]) == 2
    assert "layout" in capsys.readouterr().err
    with pytest.raises(Exception, match="neither a preset"):
        image_spec("imagenett")


def _tokenizer(path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[UNK]", "[PAD]"] + [f"w{i}" for i in range(200)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))


def test_a_text_file_with_a_tokenizer_calibrates_through_the_cli(tmp_path):
    src = tmp_path / "m.onnx"
    model = B.bert_embedded()  # input_ids [batch, 32], vocabulary 8000
    onnx.save(model, str(src))
    _tokenizer(tmp_path / "tokenizer.json")
    rng = np.random.default_rng(1)
    (tmp_path / "texts.txt").write_text("\n".join(
        " ".join(f"w{j}" for j in rng.integers(0, 200, rng.integers(5, 40))) for _ in range(6))
        + "\n\n")
    assert main(["quantize", str(src), str(tmp_path / "q.onnx"), "--calib-data",
                 str(tmp_path / "texts.txt"), "--tokenizer", str(tmp_path / "tokenizer.json"),
                 "--quiet"]) == 0
    feeds = list(raw_feeds(tmp_path / "texts.txt", model_inputs(src),
                           tokenizer=str(tmp_path / "tokenizer.json")))
    assert len(feeds) == 6 and all(f["input_ids"].shape == (1, 32) for f in feeds)
    assert feeds[0]["input_ids"].dtype == np.int64 and feeds[0]["input_ids"].max() < 202
    assert main(["quantize", str(src), str(tmp_path / "q.onnx"), "--calib-data",
                 str(tmp_path / "texts.txt"), "--quiet"]) == 2


def _wav(path, seconds: float, rate: int, channels: int) -> None:
    t = np.arange(int(seconds * rate)) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(tone, channels).tobytes())


def test_a_wav_folder_calibrates_through_the_cli(tmp_path):
    b = B._Builder(0, 17)
    h = b.op("Relu", [b.linear("audio", "fc1", 1600, 32, 0.02, 0.0)], "relu")
    b.linear(h, "fc2", 32, 4, 0.1, 0.0, out="y")
    model = b.model("audio", [("audio", [1, 1600])], [("y", [1, 4])])
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    (tmp_path / "wavs").mkdir()
    for i in range(3):
        _wav(tmp_path / "wavs" / f"s{i}.wav", 0.05 + 0.05 * i, 8000, 2)
    assert main(["quantize", str(src), str(tmp_path / "q.onnx"), "--calib-data",
                 str(tmp_path / "wavs"), "--sample-rate", "16000", "--quiet"]) == 0
    feeds = list(raw_feeds(tmp_path / "wavs", model_inputs(src), sample_rate=16000))
    first = feeds[0]["audio"]
    assert first.shape == (1, 1600) and np.all(first[0, 801:] == 0)  # 0.05 s at 16 kHz, padded
    assert abs(np.abs(first[0, :800]).max() - 0.5) < 0.01  # resampled tone, mono


def test_bad_raw_data_settings_are_exit_2(tmp_path, capsys):
    """Found in review: an output over the spec file, raw-pixel (uint8) inputs normalized into
    garbage, malformed specs and non-UTF-8 text were silent or tracebacks."""
    src = tmp_path / "m.onnx"
    onnx.save(B.conv_bn_relu(), str(src))
    _images(tmp_path / "photos")
    spec = tmp_path / "prep.toml"
    spec.write_text('resize = 20\ncrop = 16\n')
    before = spec.read_text()
    assert main(["quantize", str(src), str(tmp_path / "q.onnx"), "--calib-data",
                 str(tmp_path / "photos"), "--preprocess", str(spec), "--report", str(spec),
                 "--quiet"]) == 2
    assert spec.read_text() == before
    for text, match in (('mean = [0.5, 0.5]\n', "1 or 3 values"), ('crop = "16"\n', "crop"),
                        ('std = [0.0]\n', "non-zero")):
        (tmp_path / "bad.toml").write_text(text)
        assert main(["quantize", str(src), str(tmp_path / "q.onnx"), "--calib-data",
                     str(tmp_path / "photos"), "--preprocess", str(tmp_path / "bad.toml"),
                     "--quiet"]) == 2
        assert match in capsys.readouterr().err
    raw = onnx.load(str(src))
    raw.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.UINT8
    with pytest.raises(Exception, match="raw pixels"):
        list(raw_feeds(tmp_path / "photos", model_inputs(raw), preprocess="imagenet"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 w1 w2\n".encode("latin-1"))
    _tokenizer(tmp_path / "tok.json")
    onnx.save(B.bert_embedded(), str(tmp_path / "b.onnx"))
    assert main(["quantize", str(tmp_path / "b.onnx"), str(tmp_path / "q.onnx"),
                 "--calib-data", str(tmp_path / "latin1.txt"), "--tokenizer",
                 str(tmp_path / "tok.json"), "--quiet"]) == 2
    assert "UTF-8" in capsys.readouterr().err
