"""Closed-form and property tests of the pure-numpy calibrators and the streaming histogram."""

from __future__ import annotations

import numpy as np
import pytest

from onnxq.calibrators.base import Calibrator
from onnxq.calibrators.entropy import EntropyCalibrator
from onnxq.calibrators.histogram import StreamingHistogram
from onnxq.calibrators.minmax import MinMaxCalibrator
from onnxq.calibrators.mse import MSECalibrator
from onnxq.calibrators.percentile import PercentileCalibrator
from onnxq.errors import CalibrationError, ConfigError
from onnxq.qtypes import TensorRange

ALL_CALIBRATORS = [MinMaxCalibrator, PercentileCalibrator, EntropyCalibrator, MSECalibrator]
HISTOGRAM_CALIBRATORS = [PercentileCalibrator, EntropyCalibrator, MSECalibrator]


def _batches(data: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(data, np.cumsum(sizes)[:-1])


def _calibrate(calibrator, batches, name: str = "t") -> TensorRange:
    for batch in batches:
        calibrator.observe(name, batch)
    return calibrator.compute()[name]


def _u8_quant_mse(x: np.ndarray, r: TensorRange) -> float:
    """Actual MSE of asymmetric u8 quantize-dequantize of ``x`` with range ``r``."""
    scale = (r.hi - r.lo) / 255.0
    zero_point = np.clip(np.round(-r.lo / scale), 0, 255)
    q = np.clip(np.round(x / scale) + zero_point, 0, 255)
    return float(np.mean(((q - zero_point) * scale - x) ** 2))


# ------------------------------------------------------------------------------ protocol


@pytest.mark.parametrize("cls", ALL_CALIBRATORS)
def test_protocol_and_names(cls) -> None:
    calibrator = cls()
    assert isinstance(calibrator, Calibrator)
    assert (
        calibrator.name
        == {
            MinMaxCalibrator: "minmax",
            PercentileCalibrator: "percentile",
            EntropyCalibrator: "entropy",
            MSECalibrator: "mse",
        }[cls]
    )


# -------------------------------------------------------------------------------- min/max


def test_minmax_exact_on_uniform_batches() -> None:
    rng = np.random.default_rng(1)
    batches = [rng.uniform(-3.0, 5.0, size=(n, 7)).astype(np.float32) for n in (1, 13, 200)]
    r = _calibrate(MinMaxCalibrator(), batches)
    data = np.concatenate([b.ravel() for b in batches])
    assert r == TensorRange(float(data.min()), float(data.max()))
    assert -3.0 <= r.lo < -2.9 and 4.9 < r.hi <= 5.0

    positive = _calibrate(MinMaxCalibrator(), [rng.uniform(2.0, 3.0, size=50)])
    assert positive.lo == 0.0 and positive.hi <= 3.0

    sym = _calibrate(MinMaxCalibrator(symmetric=True), batches)
    assert sym == TensorRange(-r.hi, r.hi)


def test_minmax_moving_average_closed_form() -> None:
    batches = [np.array([-1.0, 2.0]), np.array([-3.0, 4.0]), np.array([-5.0, 10.0])]
    r = _calibrate(MinMaxCalibrator(moving_average=True, averaging_constant=0.5), batches)
    # lo: -1 -> -1 + 0.5*(-3+1) = -2 -> -2 + 0.5*(-5+2) = -3.5 ; hi: 2 -> 3 -> 6.5
    assert r == TensorRange(-3.5, 6.5)


# ----------------------------------------------------------------------------- percentile


@pytest.mark.parametrize("p", [99.0, 99.9])
def test_percentile_matches_numpy_within_one_bin(p: float) -> None:
    rng = np.random.default_rng(2)
    sizes = [5, 1000, 37, 20000, 333, 8000]
    data = np.concatenate([rng.normal(0.5, 2.0, 20000), rng.laplace(0.0, 1.0, sum(sizes) - 20000)])
    rng.shuffle(data)
    calibrator = PercentileCalibrator(percentile=p)
    r = _calibrate(calibrator, _batches(data, sizes))
    width = calibrator.histogram("t").bin_width
    assert abs(r.hi - np.percentile(data, p)) <= width
    assert abs(r.lo - np.percentile(data, 100.0 - p)) <= width

    sym = PercentileCalibrator(percentile=p, symmetric=True)
    rs = _calibrate(sym, _batches(data, sizes))
    t = np.percentile(np.abs(data), p)
    assert abs(rs.hi - t) <= sym.histogram("t").bin_width and rs.lo == -rs.hi


def test_percentile_rejects_bad_percentile() -> None:
    with pytest.raises(ConfigError):
        PercentileCalibrator(percentile=30.0)


# -------------------------------------------------------------------------------- entropy


def test_entropy_ignores_huge_outliers() -> None:
    rng = np.random.default_rng(3)
    data = rng.standard_normal(200_000)
    data[:6] = [25.0, -22.5, 20.0, 17.5, -25.0, 24.0]  # a few huge outliers (~25 sigma)
    calibrator = EntropyCalibrator()
    r = _calibrate(calibrator, _batches(data, [50_000] * 4))
    # Measured once with this seed: t = 4.375 = 280 bins of the |x| histogram (bin width 2**-6,
    # since max |x| = 25 must fit into 2048 bins). The largest inlier |x| is 4.57, so the KL
    # search keeps practically the whole Gaussian and clips only the 6 outliers. The tolerance
    # of 0.3 (about 20 bins) allows for a slightly different grid, not for keeping outliers.
    assert r.lo == -r.hi
    assert r.hi == pytest.approx(4.375, abs=0.3)
    assert r.hi < 25.0 / 4
    width = calibrator.histogram("t").bin_width
    assert r.hi / width >= calibrator.num_quant_bins  # never below L bins

    # A non-negative tensor gets [0, t] (searched with 2 * L levels), within the data.
    nonneg = _calibrate(EntropyCalibrator(), [np.abs(data)])
    assert nonneg.lo == 0.0 and 3.5 < nonneg.hi < 25.0 / 4


def test_entropy_relu_spike_at_zero_is_not_smeared() -> None:
    data = np.maximum(np.random.default_rng(13).standard_normal(200_000), 0.0)  # ~50% zeros
    r = _calibrate(EntropyCalibrator(), _batches(data, [1000, 199_000]))
    # Exact zeros stay in bin 0 of P and Q; smearing them over the first level used to pull
    # the threshold down to ~2.0 (clipping ~2% of the positive values). Now t ~ 4.1.
    assert r.lo == 0.0 and 3.5 < r.hi <= data.max()
    assert np.mean(data > r.hi) < 1e-4


def test_entropy_tiny_sample_keeps_everything() -> None:
    # With three values every candidate has KL == 0; ties go to the least clipping.
    assert _calibrate(EntropyCalibrator(), [np.array([1.0, -2.0, 3.0])]) == TensorRange(-2.0, 3.0)


def test_entropy_never_exceeds_observed_extremes() -> None:
    rng = np.random.default_rng(4)
    data = np.concatenate([rng.uniform(-0.5, 0.0, 1000), rng.uniform(0.0, 8.0, 100_000)])
    r = _calibrate(EntropyCalibrator(), [data])
    assert r.lo >= data.min() and r.hi <= data.max()


# ------------------------------------------------------------------------------------ MSE


@pytest.mark.parametrize(
    "sample",
    [lambda g: g.laplace(0.0, 1.0, 200_000), lambda g: g.standard_t(3, 200_000)],
    ids=["laplace", "student_t3"],
)
def test_mse_beats_minmax_on_heavy_tails(sample) -> None:
    data = sample(np.random.default_rng(5))
    r_mse = _calibrate(MSECalibrator(), _batches(data, [70_000, 30_000, 100_000]))
    r_minmax = _calibrate(MinMaxCalibrator(), [data])
    assert r_mse.hi < r_minmax.hi and r_mse.lo > r_minmax.lo  # it really clips
    mse, minmax = _u8_quant_mse(data, r_mse), _u8_quant_mse(data, r_minmax)
    assert mse < 0.9 * minmax
    # Close to the best symmetric clip found by brute force on the actual data.
    best = min(_u8_quant_mse(data, TensorRange(-t, t)) for t in np.linspace(2, 60, 117))
    assert mse < 1.1 * best


def test_mse_nonnegative_and_symmetric() -> None:
    data = np.maximum(np.random.default_rng(6).laplace(0.0, 1.0, 50_000), 0.0)
    r = _calibrate(MSECalibrator(), [data])
    assert r.lo == 0.0 and 0.0 < r.hi <= data.max()
    rs = _calibrate(MSECalibrator(symmetric=True), [data - 0.5])
    assert rs.lo == -rs.hi > -np.abs(data - 0.5).max() - 1e-12


# -------------------------------------------------------------------- shared properties


@pytest.mark.parametrize("cls", HISTOGRAM_CALIBRATORS)
def test_invariant_to_batch_order_and_size(cls) -> None:
    rng = np.random.default_rng(7)
    batches = [rng.normal(0.0, s, size=n) for s, n in [(0.1, 500), (3.0, 4000), (1.0, 900)]]
    batches.append(rng.standard_t(2, 3000))
    data = np.concatenate(batches)
    reference = cls()
    r0 = _calibrate(reference, batches)
    width = reference.histogram("t").bin_width
    for variant in (batches[::-1], [data], _batches(data, [1, 2, 8000, 397])):
        calibrator = cls()
        r = _calibrate(calibrator, variant)
        assert abs(r.lo - r0.lo) <= width and abs(r.hi - r0.hi) <= width
        # The power-of-two grid even makes the histogram itself bit-identical.
        np.testing.assert_array_equal(
            calibrator.histogram("t").counts, reference.histogram("t").counts
        )
        np.testing.assert_array_equal(
            calibrator.histogram("t").edges, reference.histogram("t").edges
        )


@pytest.mark.parametrize("cls", ALL_CALIBRATORS)
def test_nan_raises_with_tensor_and_feed(cls) -> None:
    calibrator = cls()
    calibrator.observe("act0", np.ones(4, dtype=np.float32))
    calibrator.observe("act0", np.ones(4, dtype=np.float32))
    bad = np.array([1.0, np.nan, 2.0], dtype=np.float32)
    with pytest.raises(CalibrationError, match=r"'act0'.*feed #2.*allow_nonfinite"):
        calibrator.observe("act0", bad)
    with pytest.raises(CalibrationError, match=r"'act1'.*feed #7"):
        calibrator.observe("act1", np.array([np.inf]), index=7)


@pytest.mark.parametrize("cls", ALL_CALIBRATORS)
def test_allow_nonfinite_ignores_them(cls) -> None:
    rng = np.random.default_rng(8)
    clean = [rng.normal(size=300), rng.normal(size=200)]
    dirty = [b.copy() for b in clean]
    dirty[0][[3, 50]] = [np.nan, np.inf]
    dirty[1][7] = -np.inf
    kept = [np.delete(clean[0], [3, 50]), np.delete(clean[1], 7)]
    tolerant = cls(allow_nonfinite=True)
    tolerant.observe("x", np.array([np.nan, np.inf]))  # nothing finite: tensor stays unseen
    assert _calibrate(tolerant, dirty, "t") == _calibrate(cls(), kept, "t")
    assert "x" not in tolerant.compute()


@pytest.mark.parametrize("cls", ALL_CALIBRATORS)
def test_all_zero_tensor_gives_valid_range(cls) -> None:
    r = _calibrate(cls(), [np.zeros((4, 8), dtype=np.float32), np.zeros(3)])
    assert r == TensorRange(0.0, 0.0)


@pytest.mark.parametrize("cls", ALL_CALIBRATORS)
def test_nonnegative_tensor_has_zero_lo(cls) -> None:
    data = np.random.default_rng(9).gamma(2.0, 1.5, size=(1000, 4)) + 0.25
    r = _calibrate(cls(), [data[:300], data[300:]])
    assert r.lo == 0.0 and 0.0 < r.hi <= data.max()


@pytest.mark.parametrize("cls", ALL_CALIBRATORS)
def test_nothing_observed_raises_and_empty_tensors_are_omitted(cls) -> None:
    calibrator = cls()
    with pytest.raises(CalibrationError, match="no calibration data was observed"):
        calibrator.compute()
    calibrator.observe("empty", np.zeros((0, 3)))
    with pytest.raises(CalibrationError, match="no calibration data was observed"):
        calibrator.compute()
    calibrator.observe("full", np.arange(-2.0, 3.0))
    first = calibrator.compute()
    assert set(first) == {"full"} and calibrator.compute() == first  # compute is repeatable


# ------------------------------------------------------------------------------ histogram


def test_histogram_matches_numpy_histogram_on_its_grid() -> None:
    rng = np.random.default_rng(10)
    hist = StreamingHistogram(256)
    batches = [rng.normal(2.0, 0.01, 100), rng.normal(0.0, 1.0, 1000), rng.uniform(-40, 3, 77)]
    for batch in batches:
        hist.add(batch.reshape(-1, 1))
    data = np.concatenate(batches)
    edges = hist.edges
    assert edges.size == 257 and 0.0 in edges
    assert np.log2(hist.bin_width) == int(np.log2(hist.bin_width))  # a power of two
    expected, _ = np.histogram(data, bins=edges)
    np.testing.assert_array_equal(hist.counts, expected)
    assert hist.min == data.min() and hist.max == data.max()


def test_histogram_mass_conserved_after_growth_and_merge() -> None:
    rng = np.random.default_rng(11)
    a, b = StreamingHistogram(512), StreamingHistogram(512)
    sizes = []
    for k in range(12):  # the range grows by 2.5x per batch, forcing repeated re-binning
        batch = rng.normal(0.0, 2.5**k, 101 + k)
        (a if k % 2 else b).add(batch)
        sizes.append(batch.size)
    assert a.total + b.total == sum(sizes)
    combined = StreamingHistogram(512)
    combined.merge(a)
    combined.merge(b)
    assert combined.total == sum(sizes) and int(combined.counts.sum()) == sum(sizes)
    b.merge(a)
    np.testing.assert_array_equal(b.counts, combined.counts)
    assert b.min == combined.min and b.max == combined.max
    b.merge(StreamingHistogram(512))  # merging an empty histogram is a no-op
    assert b.total == sum(sizes)


def test_histogram_memory_is_bounded() -> None:
    rng = np.random.default_rng(12)
    calibrator = PercentileCalibrator(num_bins=128)
    for k in range(300):
        calibrator.observe("t", rng.normal(0.0, 1.0 + k, size=64))
    hist = calibrator.histogram("t")
    assert hist.counts.shape == (128,) and hist.edges.shape == (129,)
    assert hist.total == 300 * 64
    assert all(v.nbytes <= 8 * 129 for v in vars(hist).values() if isinstance(v, np.ndarray))


def test_histogram_rejects_nonfinite() -> None:
    with pytest.raises(ValueError, match="NaN/Inf"):
        StreamingHistogram().add(np.array([1.0, np.nan]))
