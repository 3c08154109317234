"""`photo(name)`: the photos of notebooks 00-07 work offline with nothing in the data root, a file
in <data root>/photos comes first, and a missing one says how to get it."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from vitdino_core.notebook import PHOTOS, SKIMAGE_PHOTOS, photo


@pytest.fixture
def empty_root(tmp_path, monkeypatch):
    monkeypatch.setenv("VITDINO_DATA", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("name", PHOTOS)
def test_every_photo_is_there_with_an_empty_data_root(empty_root, name):
    img = photo(name)
    assert img.mode == "RGB" and min(img.size) >= 256
    assert np.asarray(img).std() > 20  # a photo, not a blank


@pytest.mark.parametrize("name", SKIMAGE_PHOTOS)
def test_the_four_extra_photos_are_scikit_images_own(empty_root, name):
    import skimage.data

    expected = getattr(skimage.data, name)()[..., :3]  # (H, W, 3) uint8
    np.testing.assert_array_equal(np.asarray(photo(name)), expected)


def test_a_file_in_the_data_root_comes_first(empty_root):
    (empty_root / "photos").mkdir()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(empty_root / "photos" / "my_chelsea.png")
    img = photo("chelsea")
    assert img.size == (40, 30) and img.getpixel((0, 0)) == (10, 200, 30)


def test_without_scikit_image_the_message_says_how_to_get_the_photo(empty_root, monkeypatch):
    for module in [m for m in sys.modules if m == "skimage" or m.startswith("skimage.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "skimage", None)  # import skimage -> ImportError
    with pytest.raises(FileNotFoundError) as err:
        photo("astronaut")
    message = str(err.value)
    assert "pip install scikit-image" in message and "make lab" in message
    assert str(empty_root / "photos") in message  # or a file of one's own there
    assert photo("china").size == (640, 427)  # the others do not need it


def test_an_unknown_photo_names_the_folder_and_the_photos_that_need_no_file(empty_root):
    with pytest.raises(FileNotFoundError) as err:
        photo("zebra")
    message = str(err.value)
    assert str(empty_root / "photos") in message
    assert all(name in message for name in PHOTOS)
