"""core.labels.curation: each edit as the pixels that change, labels untouched."""

import numpy as np
import pytest

from napari_instseg.core.labels import curation
from napari_instseg.core.types import InputError


def _apply(labels, edit):
    index, values = edit
    out = labels.copy()
    out[index] = values
    return out


def _two_touching_discs():
    yy, xx = np.mgrid[:40, :60]
    left = (yy - 20) ** 2 + (xx - 20) ** 2 <= 100
    right = (yy - 20) ** 2 + (xx - 38) ** 2 <= 100
    labels = np.zeros((40, 60), np.uint16)
    labels[left | right] = 5  # one merged object
    return labels, left, right


def test_merge_keeps_the_smallest_id_and_changes_only_the_others():
    labels = np.array([[1, 1, 0, 2], [3, 0, 2, 2]], np.uint16)
    before = labels.copy()
    merged = _apply(labels, curation.merge(labels, [3, 2]))
    np.testing.assert_array_equal(merged, [[1, 1, 0, 2], [2, 0, 2, 2]])
    np.testing.assert_array_equal(labels, before)
    with pytest.raises(InputError, match="two objects"):
        curation.merge(labels, [2])


def test_split_separates_touching_discs_along_their_neck():
    labels, left, right = _two_touching_discs()
    edit = curation.split(labels, [(20, 15), (20, 43)])
    split = _apply(labels, edit)
    assert set(np.unique(split)) == {0, 5, 6}
    assert ((split == 5) & left).sum() / left.sum() > 0.9
    assert ((split == 6) & right).sum() / right.sum() > 0.9
    assert np.all(labels[edit[0]] == 5)  # only the object's own pixels change


def test_split_refuses_points_off_the_object():
    labels, *_ = _two_touching_discs()
    with pytest.raises(InputError, match="same object"):
        curation.split(labels, [(20, 15), (0, 0)])
    with pytest.raises(InputError, match="two points"):
        curation.split(labels, [(20, 15)])
    with pytest.raises(InputError, match="outside"):
        curation.split(labels, [(20, 15), (99, 99)])


def test_remove_small_fill_holes_and_relabel():
    labels = np.zeros((2, 20, 20), np.uint16)
    labels[0, 2:10, 2:10] = 4
    labels[0, 5, 5] = 0  # a hole
    labels[1, 0, 0] = 9  # a speck
    cleaned = _apply(labels, curation.remove_small(labels, 5))
    assert 9 not in cleaned and (cleaned == 4).sum() == 63
    filled = _apply(cleaned, curation.fill_holes(cleaned))
    assert filled[0, 5, 5] == 4
    edit, mapping = curation.relabel_consecutive(labels)
    assert mapping == {4: 1, 9: 2}
    np.testing.assert_array_equal(np.unique(_apply(labels, edit)), [0, 1, 2])
    _, nothing = curation.relabel_consecutive(np.array([[0, 1, 2]]))
    assert nothing == {}
