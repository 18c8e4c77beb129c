import numpy as np

from hwloop.kernels import random_inputs, reference
from hwloop.layers import LayerConfig
from hwloop.references import check_io

CONFIG = LayerConfig("conv2d", 3, 4, 6, 6, kernel=3, padding=1)


def test_the_reference_is_kept_and_read_back(tmp_path):
    data, weight, expected = check_io(CONFIG, tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip((data, weight), random_inputs(CONFIG)))
    assert np.array_equal(expected, reference(CONFIG, data, weight))
    (kept,) = tmp_path.iterdir()
    np.save(kept, expected * 2)
    assert np.array_equal(check_io(CONFIG, tmp_path)[2], expected * 2)  # read back, not computed again


def test_an_unreadable_or_foreign_reference_is_computed_again(tmp_path):
    expected = check_io(CONFIG, tmp_path)[2]
    (kept,) = tmp_path.iterdir()
    for bad in (b"not an array", None):
        if bad is None:
            np.save(kept, np.zeros(3, np.float32))  # another shape
        else:
            kept.write_bytes(bad)
        assert np.array_equal(check_io(CONFIG, tmp_path)[2], expected)
        assert np.array_equal(np.load(kept), expected)  # and kept again
    assert [p.name for p in tmp_path.iterdir()] == [kept.name]


def test_without_a_folder_nothing_is_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data, weight, expected = check_io(CONFIG)
    assert np.array_equal(expected, reference(CONFIG, data, weight)) and not list(tmp_path.iterdir())
