"""PASCAL_MT (Multi-Task-Learning-PyTorch's PASCAL-Context folder): the five tasks decoded from
fixture files written from the layout's definition, has-flags, splits and one-line errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from conftest import SHARED
from formatkit import CAT, PERSON, SMALL, label_tasks, write_pascal_mt
from scipy.io import savemat

from cvmtl.data.dataset import DenseDataset
from cvmtl.data.formats import DataError, list_ids, load_dataset_info, load_sample
from cvmtl.data.pascal_mt import NORMALS_VALID_CONTEXT_IDS, voc_palette
from cvmtl.scoring.thinning import thin
from cvmtl.tasks.spec import BINARY, CLASSES, THIN_BINARY

TASKS = ("seg", "parts", "saliency", "normal", "edge")


@pytest.fixture(autouse=True)
def _tasks():
    with label_tasks({"edge": THIN_BINARY, "saliency": BINARY, "parts": CLASSES}):
        yield


@pytest.fixture
def pascal(tmp_path):
    write_pascal_mt(tmp_path)
    return tmp_path


def test_splits_and_info(pascal):
    assert list_ids(pascal, "pascal_mt", "train") == ["a", "b"]
    assert list_ids(pascal, "pascal_mt", "val") == ["c"]
    assert list_ids(pascal, "pascal_mt", "test") == ["c"]  # val is the standard test split
    info = load_dataset_info(pascal, "pascal_mt")
    assert len(info["classes"]) == 21 and info["classes"][15] == "person"
    assert info["palette"][:3] == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    assert info["palette"][15] == [192, 128, 128] and voc_palette()[20] == [0, 64, 128]
    (pascal / "ImageSets" / "Context" / "val.txt").unlink()
    with pytest.raises(DataError, match=r"Context.val\.txt is missing"):
        list_ids(pascal, "pascal_mt", "val")


def test_every_task_of_an_image_with_a_person(pascal):
    s = load_sample(pascal, "pascal_mt", "train", "a", TASKS, 21)
    h, w = SMALL
    assert s["has"] == dict.fromkeys(TASKS, True)
    expected_seg = np.zeros((h, w), np.int64)
    expected_seg[:, : w // 2] = 15
    expected_seg[0] = 255
    np.testing.assert_array_equal(s["seg"], expected_seg)  # palette indices, not colours
    parts = np.zeros((h, w), np.int64)
    parts[0:4, 0:4], parts[4:8, 0:4], parts[8:10, 0:4] = 1, 3, 6  # head, upper arm, foot
    np.testing.assert_array_equal(s["parts"], parts)
    np.testing.assert_array_equal(s["saliency"], np.tile(np.repeat([0, 1], w // 2), (h, 1)))
    # (128, 128, 255) -> 2 v / 255 - 1 = (0.00392, 0.00392, 1), unit length, left half only
    v = 2 * 128 / 255 - 1
    n = np.array([v, v, 1.0]) / np.sqrt(2 * v * v + 1)
    np.testing.assert_allclose(
        s["normal"][:, : w // 2], np.broadcast_to(n, (h, w // 2, 3)), atol=2e-6
    )
    assert not s["normal"][:, w // 2 :].any()  # class 431 (unknown) is not a valid normal class
    # LabelMap halves 284 | 431: the Laplacian marks columns 11 and 12; Guo-Hall thinning keeps
    # column 11 and drops its top pixel (worked by hand from the deletion conditions)
    edge = np.zeros((h, w), np.int64)
    edge[1:, w // 2 - 1] = 1
    np.testing.assert_array_equal(s["edge"], edge)
    assert s["seg"].dtype == s["edge"].dtype == s["parts"].dtype == np.int64


def test_missing_labels_are_flagged_and_filled(pascal):
    b = load_sample(pascal, "pascal_mt", "train", "b", TASKS, 21)
    assert (b["seg"] == 8).all() and b["has"]["seg"]  # semseg/pascal-context fallback
    assert not b["has"]["parts"] and (b["parts"] == 255).all()  # a cat and a partless person
    c = load_sample(pascal, "pascal_mt", "val", "c", TASKS, 21)
    assert not c["has"]["seg"] and not c["has"]["parts"] and c["has"]["edge"]
    (pascal / "pascal-context" / "trainval" / "c.mat").unlink()
    c = load_sample(pascal, "pascal_mt", "val", "c", TASKS, 21)
    assert not c["has"]["edge"] and not c["has"]["normal"] and c["has"]["saliency"]
    assert (c["edge"] == 255).all() and not c["normal"].any()


def test_bad_files_are_one_line_errors_naming_file_and_id(pascal):
    mat = pascal / "pascal-context" / "trainval" / "a.mat"
    mat.write_bytes(b"not a mat file at all")
    with pytest.raises(DataError, match=r"a\.mat \(id 'a'\)") as err:
        load_sample(pascal, "pascal_mt", "train", "a", ("edge",), 21)
    assert "\n" not in str(err.value)
    savemat(pascal / "human_parts" / "b.mat", {"something": np.zeros(3)})
    with pytest.raises(DataError, match=r"PASCAL-Part.*b\.mat \(id 'b'\)"):
        load_sample(pascal, "pascal_mt", "train", "b", ("parts",), 21)
    cv2.imwrite(str(pascal / "semseg" / "pascal-context" / "b.png"), np.full(SMALL, 30, np.uint8))
    with pytest.raises(DataError, match=r"\[30\] outside 0..20.*b\.png"):
        load_sample(pascal, "pascal_mt", "train", "b", ("seg",), 21)
    with pytest.raises(ValueError, match="pascal_mt has no 'depth' labels"):
        load_sample(pascal, "pascal_mt", "train", "b", ("depth",), 21)


def test_a_missing_human_parts_file_is_an_error_not_no_person(pascal):
    # Every listed image has its human_parts .mat; c's holds a cat and no person: no parts label
    c = load_sample(pascal, "pascal_mt", "val", "c", ("parts",), 21)
    assert not c["has"]["parts"] and (c["parts"] == 255).all()
    # A missing .mat is a broken copy, not "no person": one line naming the file and the id
    missing = pascal / "human_parts" / "a.mat"
    missing.unlink()
    with pytest.raises(DataError) as err:
        load_sample(pascal, "pascal_mt", "train", "a", TASKS, 21)
    assert str(err.value) == f"human parts missing: {missing} (id 'a')"
    # the other tasks do not read the file
    others = ("seg", "saliency", "normal", "edge")
    assert load_sample(pascal, "pascal_mt", "train", "a", others, 21)["has"] == dict.fromkeys(
        others, True
    )


def test_dense_dataset_reads_pascal(pascal):
    ds = DenseDataset(pascal, "train", "pascal_mt", TASKS, num_classes=21)
    assert len(ds) == 2 and ds[0]["has"]["parts"] and not ds[1]["has"]["parts"]


def test_thin_equals_scikit_image():
    skimage_thin = pytest.importorskip("skimage.morphology").thin
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = rng.random((int(rng.integers(3, 30)), int(rng.integers(3, 30)))) < 0.6
        np.testing.assert_array_equal(thin(mask), skimage_thin(mask))


def test_normal_classes_match_the_shared_list():
    path = SHARED / "pascal_mt" / "normals_valid_context_ids.json"
    if not path.is_file():
        pytest.skip("../shared/pascal_mt is not available")
    assert sorted(NORMALS_VALID_CONTEXT_IDS) == sorted(json.loads(path.read_text()))
    assert PERSON in NORMALS_VALID_CONTEXT_IDS and CAT in NORMALS_VALID_CONTEXT_IDS
