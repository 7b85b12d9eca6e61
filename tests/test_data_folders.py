import pytest
import torch
from PIL import Image
from torchvision.io import write_png

from cnnopt.config import DataConfig
from cnnopt.data.registry import load_dataset
from cnnopt.errors import DataError

# torchvision 0.29 deprecates its image codecs (in favour of TorchCodec) but they still work.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def png(path, value=0, size=(8, 8), channels=3):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = torch.full((channels, *size), value, dtype=torch.uint8)
    if channels == 4:  # torchvision's encoder writes grey and RGB only
        Image.fromarray(img.permute(1, 2, 0).numpy(), "RGBA").save(path)
    else:
        write_png(img, str(path))
    return path


def load(root, name="image_folder", **kw):
    return load_dataset(DataConfig(dataset=name, data_dir=str(root), **kw))


def test_single_tree(tmp_path):
    for i in range(3):
        png(tmp_path / "cat" / f"{i}.png", 10)
    png(tmp_path / "dog" / "a.PNG", 200, channels=1)  # minority grey -> converted to RGB
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = load(tmp_path)
    assert ds.classes == ["cat", "dog"]
    assert ds.x_train.shape == (4, 3, 8, 8) and ds.x_train.dtype == torch.uint8
    assert ds.y_train.tolist() == [0, 0, 0, 1]
    assert ds.x_train[3].unique().tolist() == [200]
    assert ds.x_test is None and ds.y_test is None
    assert ds.info["skipped_files"] == 1 and ds.info["converted_channels"] == 1


def test_train_test_layout_with_val_and_resize(tmp_path):
    png(tmp_path / "train" / "a" / "1.png", size=(10, 20), channels=1)
    png(tmp_path / "train" / "b" / "1.png", size=(12, 12), channels=1)
    png(tmp_path / "val" / "b" / "2.png", size=(12, 12), channels=4)  # RGBA: alpha dropped
    png(tmp_path / "test" / "b" / "1.png", size=(30, 30), channels=1)
    ds = load(tmp_path, image_size=6)
    assert ds.classes == ["a", "b"]
    assert ds.x_train.shape == (3, 1, 6, 6) and ds.y_train.tolist() == [0, 1, 1]
    assert ds.x_test.shape == (1, 1, 6, 6) and ds.y_test.tolist() == [1]
    assert ds.info["val_merged"] == 1


def test_test_class_not_in_train(tmp_path):
    png(tmp_path / "train" / "a" / "1.png")
    png(tmp_path / "test" / "z" / "1.png")
    with pytest.raises(DataError, match=r"test: classes \['z'\] are not in the training set"):
        load(tmp_path)


def test_corrupt_image_names_file(tmp_path):
    png(tmp_path / "a" / "ok.png")
    bad = tmp_path / "a" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg: cannot decode image"):
        load(tmp_path)


def test_empty_class_and_missing_folder(tmp_path):
    png(tmp_path / "a" / "1.png")
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match=r"/b: class folder has no images"):
        load(tmp_path)
    with pytest.raises(DataError, match="nowhere: image folder not found"):
        load(tmp_path / "nowhere")
    flat = tmp_path / "flat"
    png(flat / "1.png")
    with pytest.raises(DataError, match=r"no class folders \(found 1 images directly in it\)"):
        load(flat)


def test_mismatched_sizes(tmp_path):
    png(tmp_path / "a" / "1.png", size=(8, 8))
    png(tmp_path / "b" / "1.png", size=(9, 9))
    with pytest.raises(
        DataError,
        match=r"mismatched image sizes: .*1\.png is 8x8 but .*1\.png is 9x9; set image_size",
    ):
        load(tmp_path)
    assert load(tmp_path, image_size=8).x_train.shape == (2, 3, 8, 8)


def test_cache_limit(tmp_path):
    png(tmp_path / "a" / "1.png", size=(64, 64))
    with pytest.raises(
        DataError,
        match=r"over max_cache_gb=1e-06; set image_size to stream them from disk, "
        r"or raise the limit \(--set max_cache_gb=1\)",
    ):
        load(tmp_path, max_cache_gb=1e-6)
    # with image_size the same folder is streamed instead (tests/test_data_stream.py)
    assert load(tmp_path, max_cache_gb=1e-6, image_size=64).info["storage"] == "streamed"


def write_labels(path, rows, header="image,labels"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")


def test_multilabel_csv(tmp_path):
    png(tmp_path / "x1.png", 1)
    png(tmp_path / "images" / "x2.png", 2)
    png(tmp_path / "sub" / "x3.jpg.png", 3)
    write_labels(tmp_path / "labels.csv", ["x1.png,sky sea", "x2,tree", "sub/x3.jpg.png,"])
    png(tmp_path / "t1.png", 4)
    write_labels(tmp_path / "test_labels.csv", ["t1.png,sea tree"])
    ds = load(tmp_path, name="multilabel_csv")
    assert ds.multilabel and ds.classes == ["sea", "sky", "tree"]
    assert ds.y_train.dtype == torch.float32
    assert ds.y_train.tolist() == [[1, 1, 0], [0, 0, 1], [0, 0, 0]]
    assert ds.x_train.shape == (3, 3, 8, 8) and ds.x_train[1].unique().tolist() == [2]
    assert ds.y_test.tolist() == [[1, 0, 1]]


def test_multilabel_csv_errors(tmp_path):
    png(tmp_path / "x1.png")
    write_labels(tmp_path / "labels.csv", ["x1.png,a"], header="file,tags")
    with pytest.raises(DataError, match=r"labels\.csv: header is file,tags; expected image,labels"):
        load(tmp_path, name="multilabel_csv")
    write_labels(tmp_path / "mine.csv", ["x1.png,a", "missing.png,b"])
    with pytest.raises(DataError, match=r"mine\.csv: line 3: image 'missing.png' not found"):
        load(tmp_path, name="multilabel_csv", label_csv="mine.csv")
    write_labels(tmp_path / "labels.csv", ["x1.png,a"])
    write_labels(tmp_path / "test_labels.csv", ["x1.png,a zebra"])
    with pytest.raises(DataError, match=r"test_labels\.csv: line 2: labels \['zebra'\]"):
        load(tmp_path, name="multilabel_csv")
