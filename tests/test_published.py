"""Published weights (``--weights imagenet``): model files' ``weights:`` sections, the ImageNet class list,
finding, downloading and verifying the files, torchvision's image preparation, and the commands on them.

Nothing reaches the internet: the files are state dicts in torchvision's layout made here from numpy
arrays (saved with torch, the format torchvision publishes), served from a local HTTP server under
published-style names (``<name>-<start of the SHA-256>.pth``). The built-in models' name maps are checked
against ``tests/data/torchvision_keys.txt``, the key list of torchvision's own networks (its header and
``derive_torchvision_keys.py`` say how it was made).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import IMAGENET_MEAN, IMAGENET_STD, run_main, torchvision_layouts

from cnncli import dataset_names
from cnncli.data import class_lists, folder
from cnncli.data.source import Source
from cnncli.errors import SpecError, UsageError
from cnncli.exchange.torch_module import transposed
from cnncli.model import graph, spec
from cnncli.records import checkpoint, published, trained

PIL = pytest.importorskip("PIL.Image")

# --------------------------------------------------------------------------- the class list


def test_imagenet_class_list_ships_with_its_ids_in_label_order():
    classes = class_lists.get("imagenet")
    assert len(classes) == 1000 and len(classes.ids) == 1000
    assert (classes.ids[0], classes.names[0]) == ("n01440764", "tench")
    assert (classes.ids[207], classes.names[207]) == ("n02099601", "golden retriever")
    assert list(classes.ids) == sorted(set(classes.ids))  # ImageNet's labels are its sorted WordNet ids
    assert len(set(classes.names)) == 1000
    assert set(class_lists.CLASS_LISTS) == set(dataset_names.CLASS_LISTS)


def test_folder_names_match_by_id_name_or_loose_name():
    classes = class_lists.get("imagenet")
    assert class_lists.match_folders(["n02099601", "golden retriever"][:1], classes) == [207]
    assert class_lists.match("golden retriever", classes) == 207
    assert class_lists.match("Golden_Retriever", classes) == 207
    assert class_lists.match("Cardigan", classes) == 264 and class_lists.match("cardigan", classes) == 474
    with pytest.raises(UsageError, match="could be the ImageNet class 'Cardigan' .* or 'cardigan'"):
        class_lists.match("CARDIGAN", classes)
    with pytest.raises(UsageError, match=r"'goldn retriever' is not one of the ImageNet classes.*"
                                         r"nearest names: 'golden retriever' \(n02099601\)"):
        class_lists.match("goldn retriever", classes)
    with pytest.raises(UsageError, match="'golden retriever' and 'n02099601' are the same ImageNet class"):
        class_lists.match_folders(["golden retriever", "n02099601"], classes)


# --------------------------------------------------------------------------- the built-in models


LAYOUTS = torchvision_layouts()


@pytest.mark.parametrize("model", ["alexnet", "vgg16", "resnet18", "resnet34", "resnet50", "googlenet"])
def test_name_map_turns_torchvisions_layout_into_every_parameter_of_the_model(model):
    """Every entry of torchvision's state dict lands on a parameter or buffer of the same shape (a dense
    weight transposed), and every parameter and buffer of the model (with its auxiliary heads) gets one."""
    model_spec = spec.load(model)
    weights = model_spec.weights["imagenet"]
    assert (weights.classes, weights.resize) == ("imagenet", 256)
    g = graph.build(model_spec)
    flipped = transposed(g)
    ours = {f"{n.name}.{suffix}": shape for n in g.nodes for suffix, shape in {**n.params, **n.buffers}.items()}
    theirs = {key: (shape[::-1] if key in flipped else shape)
              for key, shape in published.renamed(LAYOUTS[model], weights.names).items()
              if not key.endswith(".num_batches_tracked")}
    assert set(theirs) == set(ours)
    assert {k: theirs[k] for k in ours} == ours


def test_googlenet_weights_load_without_the_aux_heads_and_with_transform_inputs_statistics():
    model_spec = spec.load("googlenet")
    weights = model_spec.weights["imagenet"]
    # torchvision's transform_input=True after ImageNet's normalisation is (x - 0.5) / 0.5 per channel.
    pixel = np.array([0.1, 0.6, 0.9])
    x = (pixel - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    transformed = x * (np.array(IMAGENET_STD) / 0.5) + (np.array(IMAGENET_MEAN) - 0.5) / 0.5
    np.testing.assert_allclose((pixel - np.array(weights.mean)) / np.array(weights.std), transformed)
    state = {k: np.zeros(s, dtype=np.float32) for k, s in LAYOUTS["googlenet"].items()}
    saved = checkpoint.Checkpoint(Path("googlenet-00000000.pth"), published.renamed(state, weights.names),
                                  {"origin": "torch"})
    net = trained.network(model_spec, graph.build(model_spec, aux=False), saved)
    assert not any(k.startswith(("aux1.", "aux2.")) for k in net.params)


def test_only_models_whose_layers_match_have_published_weights():
    assert published.models_with("imagenet") == ["alexnet", "googlenet", "resnet18", "resnet34", "resnet50",
                                                 "vgg16"]
    urls = {m: spec.load(m).weights["imagenet"].url for m in published.models_with("imagenet")}
    assert urls["resnet50"] == "https://download.pytorch.org/models/resnet50-0676ba61.pth"  # V1: resize 256
    assert urls["resnet18"] == "https://download.pytorch.org/models/resnet18-f37072fd.pth"


# --------------------------------------------------------------------------- the weights: section


TINY = """\
name: tiny-imagenet
input: [3, 16, 16]
classes: 1000
layers:
  - conv: {{name: stem, filters: 2, kernel: 3}}
  - relu
  - global_avgpool
  - dense: {{name: head, units: 1000}}
{weights}"""


def _section(url: str, extra: str = "") -> str:
    return (f"weights:\n  imagenet:\n    url: {url}\n    classes: imagenet\n    resize: 18\n"
            f"    mean: [0.485, 0.456, 0.406]\n    std: [0.229, 0.224, 0.225]\n"
            f"    names: {{features.0: stem, classifier: head}}\n{extra}")


@pytest.mark.parametrize("change, message", [
    (("resize: 18", "resize: 15"), "resize: the shorter side .* at least 16"),
    (("tiny-0123456789.pth", "tiny.pth"), "must end in -HASH.EXT"),
    (("tiny-0123456789.pth", "tiny-xyz.pth"), "must end in -HASH.EXT"),
    (("classes: imagenet", "classes: imagenett"), "must be a class list: imagenet"),
    (("classifier: head", "classifier: haed"), "names.classifier: must name a layer with parameters"),
    (("mean: [0.485, 0.456, 0.406]", "mean: [0.5]"), "mean: must be a list of 3 numbers"),
    (("std: [0.229, 0.224, 0.225]", "std: [0.2, 0, 0.2]"), "std: must be positive"),
    (("classes: imagenet", "clases: imagenet"), "unknown key 'clases' — did you mean 'classes'"),
])
def test_weights_section_is_checked(change, message):
    text = TINY.format(weights=_section("https://example.org/tiny-0123456789.pth")).replace(*change)
    with pytest.raises(SpecError, match=message):
        spec.parse(text, "tiny.yaml")


def test_weights_section_is_read():
    model_spec = spec.parse(TINY.format(weights=_section("https://example.org/m/tiny-0123456789.pth")), "t.yaml")
    w = model_spec.weights["imagenet"]
    assert (w.filename, w.hash_prefix, w.resize, w.names) == (
        "tiny-0123456789.pth", "0123456789", 18, {"features.0": "stem", "classifier": "head"})
    assert spec.parse(TINY.format(weights=""), "t.yaml").weights == {}


# --------------------------------------------------------------------------- preparation


def _reference_pixels(path: Path, resize: int, crop: int) -> np.ndarray:
    """torchvision's Resize(resize) + CenterCrop(crop) on a PIL image, written out plainly."""
    img = PIL.open(path).convert("RGB")
    w, h = img.size
    if w <= h:
        size = (resize, int(resize * h / w))
    else:
        size = (int(resize * w / h), resize)
    img = img.resize(size, PIL.Resampling.BILINEAR)
    left, top = int(round((size[0] - crop) / 2.0)), int(round((size[1] - crop) / 2.0))
    return np.asarray(img.crop((left, top, left + crop, top + crop))).transpose(2, 0, 1)


def _photo(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size[1] // 8 + 1, size[0] // 8 + 1, 3)).astype(np.uint8)
    PIL.fromarray(base).resize(size, PIL.Resampling.BICUBIC).save(path)
    return path


def test_torchvisions_resize_and_centre_crop(tmp_path):
    # 459×300: the shorter side to 256 makes the longer int(391.68) = 391, and (391 - 224) / 2 = 83.5 rounds to
    # 84 as Python rounds (torchvision's center_crop), where the floor would cut at 83.
    for size in [(459, 300), (300, 459), (256, 256), (1000, 257)]:
        path = _photo(tmp_path / f"p{size[0]}x{size[1]}.png", size)
        got = folder.decode_image(path, (3, 224, 224), resize=256)
        np.testing.assert_array_equal(got, _reference_pixels(path, 256, 224))
    assert folder.shorter_side_to((459, 300), 256) == (391, 256)
    assert folder.describe((3, 224, 224), 256) == "RGB, resized (shorter side to 256) and centre-cropped to 224×224"


def test_source_record_keeps_the_resize_rule():
    source = Source("imagenet", "ImageNet", ("a", "b"), (3, 224, 224), IMAGENET_MEAN, IMAGENET_STD, resize=256)
    assert Source.from_config(json.loads(json.dumps(source.to_config()))).resize == 256
    assert Source.from_config({**source.to_config(), "resize": None}).resize is None
    record = source.to_config()
    del record["resize"]  # a checkpoint written before the rule existed
    assert Source.from_config(record).resize is None


# --------------------------------------------------------------------------- files, downloads, commands


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A private cache, no folder of weights, no mirrors override, downloads allowed, no proxy."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    for name in ("CNNCLI_WEIGHTS", "CNNCLI_MIRRORS", "CNNCLI_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def tiny_state():
    """The tiny model's weights in torchvision's layout: (out, in) dense weight, its own layer names."""
    rng = np.random.default_rng(7)
    return {"features.0.weight": rng.normal(0, 0.5, (2, 3, 3, 3)).astype(np.float32),
            "features.0.bias": rng.normal(0, 0.1, 2).astype(np.float32),
            "classifier.weight": rng.normal(0, 1.0, (1000, 2)).astype(np.float32),
            "classifier.bias": rng.normal(0, 0.1, 1000).astype(np.float32)}


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory, tiny_state):
    """The bytes of the state dict as torch.save writes it, and its published-style name."""
    torch = pytest.importorskip("torch")
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save({k: torch.from_numpy(v) for k, v in tiny_state.items()}, path)
    body = path.read_bytes()
    return f"tiny-{hashlib.sha256(body).hexdigest()[:10]}.pth", body


def _model(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.format(weights=_section(url)), encoding="utf-8")
    return path


def _forward(state: dict[str, np.ndarray], pixels: np.ndarray, mean, std) -> np.ndarray:
    """The tiny network by hand: 3×3 convolution (no padding), ReLU, global average, dense; softmax."""
    x = (pixels.astype(np.float64) / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    return _network(state, x)


def _network(state: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The tiny network's class probabilities for a normalised input x (3, H, W)."""
    w, b = state["features.0.weight"].astype(np.float64), state["features.0.bias"].astype(np.float64)
    h, wd = x.shape[1] - 2, x.shape[2] - 2
    patches = np.stack([x[:, i:i + h, j:j + wd] for i in range(3) for j in range(3)], axis=-1)  # (3, h, w, 9)
    conv = np.einsum("chwk,ock->ohw", patches, w.reshape(2, 3, 9)) + b[:, None, None]
    pooled = np.maximum(conv, 0).mean(axis=(1, 2))
    logits = state["classifier.weight"].astype(np.float64) @ pooled + state["classifier.bias"]
    e = np.exp(logits - logits.max())
    return e / e.sum()


def test_downloaded_weights_predict_as_the_network_computes_by_hand(tmp_path, server, tiny_file, tiny_state,
                                                                    capsys, monkeypatch):
    name, body = tiny_file
    server.routes[f"/models/{name}"] = ("ok", body)
    model = _model(tmp_path, f"{server.url}/models/{name}")
    photo = _photo(tmp_path / "photo.png", (37, 23), seed=3)
    code, out, err = run_main(["predict", str(model), str(photo), "--weights", "imagenet", "--format", "json"],
                              capsys)
    assert code == 0, err
    record = json.loads(out)
    assert server.hits == [f"/models/{name}"]
    assert (tmp_path / "xdg-cache" / "cnncli" / "weights" / name).read_bytes() == body
    assert record["dataset"] == "imagenet" and record["top_k"] == 5  # 1000 classes: top-5 by default
    assert record["input"] == "shorter side to 18, centre crop"  # the model file's resize; the crop is its input
    probs = _forward(tiny_state, _reference_pixels(photo, 18, 16), IMAGENET_MEAN, IMAGENET_STD)
    top = np.argsort(-probs, kind="stable")[:5]
    names = class_lists.get("imagenet").names
    assert [g["class"] for g in record["predictions"][0]["top"]] == top.tolist()
    assert [g["name"] for g in record["predictions"][0]["top"]] == [names[i] for i in top]
    np.testing.assert_allclose([g["probability"] for g in record["predictions"][0]["top"]], probs[top],
                               rtol=1e-4, atol=1e-7)
    # A second run uses the cached file: no download, and no second hashing (the download's check is recorded).
    cached = tmp_path / "xdg-cache" / "cnncli" / "weights" / name
    assert str(cached.resolve()) in json.loads((published.cache_folder() / published.VERIFIED).read_text())
    monkeypatch.setattr(published, "sha256", lambda path: pytest.fail(f"{path} hashed again"))
    assert run_main(["predict", str(model), str(photo), "--weights", "imagenet"], capsys)[0] == 0
    assert len(server.hits) == 1


def test_a_file_whose_hash_does_not_match_its_name_is_refused_and_not_kept(tmp_path, server, tiny_file, capsys):
    name, body = tiny_file
    wrong = "tiny-0123456789.pth"
    server.routes[f"/models/{wrong}"] = ("ok", body)
    model = _model(tmp_path, f"{server.url}/models/{wrong}")
    code, _, err = run_main(["predict", str(model), str(_photo(tmp_path / "p.png", (20, 20))), "--weights",
                             "imagenet"], capsys)
    assert code == 2
    assert "does not start with 0123456789" in err and "not the published file" in err
    cache = tmp_path / "xdg-cache" / "cnncli" / "weights"
    assert list(cache.iterdir()) == []  # neither the file nor a partial download


def test_a_cached_file_is_used_without_downloading(tmp_path, server, tiny_file, capsys):
    name, body = tiny_file
    cache = tmp_path / "xdg-cache" / "cnncli" / "weights"
    cache.mkdir(parents=True)
    (cache / name).write_bytes(body)
    model = _model(tmp_path, f"{server.url}/models/{name}")  # the server has nothing
    code, _, err = run_main(["predict", str(model), str(_photo(tmp_path / "p.png", (20, 20))), "--weights",
                             "imagenet"], capsys)
    assert code == 0, err
    assert server.hits == []


def test_a_folder_of_weights_and_the_mirrors_override(tmp_path, server, tiny_file, monkeypatch, capsys):
    name, body = tiny_file
    photo = str(_photo(tmp_path / "p.png", (20, 20)))
    model = _model(tmp_path, f"http://127.0.0.1:9/models/{name}")  # a closed port: never reached
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / name).write_bytes(body)
    monkeypatch.setenv("CNNCLI_WEIGHTS", str(mine))
    assert run_main(["predict", str(model), photo, "--weights", "imagenet"], capsys)[0] == 0
    monkeypatch.delenv("CNNCLI_WEIGHTS")
    server.routes[f"/elsewhere/weights/{name}"] = ("ok", body)
    monkeypatch.setenv("CNNCLI_MIRRORS", f"{server.url}/elsewhere/{{dataset}}/")
    code, _, err = run_main(["predict", str(model), photo, "--weights", "imagenet"], capsys)
    assert code == 0, err
    assert server.hits == [f"/elsewhere/weights/{name}"]


def test_offline_without_the_file_says_where_to_put_it(tmp_path, tiny_file, monkeypatch, capsys):
    name, _ = tiny_file
    monkeypatch.setenv("CNNCLI_OFFLINE", "1")
    monkeypatch.setenv("CNNCLI_WEIGHTS", str(tmp_path / "mine"))
    model = _model(tmp_path, f"https://example.org/models/{name}")
    code, _, err = run_main(["predict", str(model), str(_photo(tmp_path / "p.png", (20, 20))), "--weights",
                             "imagenet"], capsys)
    assert code == 2
    assert f"not found: {name}" in err and "CNNCLI_OFFLINE" in err
    assert f"{tmp_path / 'mine'}  [CNNCLI_WEIGHTS] (does not exist)" in err
    assert f"{tmp_path / 'xdg-cache' / 'cnncli' / 'weights'}  [cache]" in err
    assert f"download https://example.org/models/{name}" in err


def test_a_model_without_published_weights_names_those_that_have_them(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file called imagenet here
    code, _, err = run_main(["eval", "lenet5", "--weights", "imagenet"], capsys)
    assert code == 2
    assert "model 'lenet5' has no published imagenet weights" in err
    assert "alexnet, googlenet, resnet18, resnet34, resnet50, vgg16" in err


def test_eval_scores_a_folder_of_imagenet_classes_with_the_weights_preparation(tmp_path, server, tiny_file,
                                                                             tiny_state, capsys):
    name, body = tiny_file
    server.routes[f"/models/{name}"] = ("ok", body)
    model = _model(tmp_path, f"{server.url}/models/{name}")
    root = tmp_path / "photos"
    layout = {"n02099601": 207, "tench": 0, "Great_White_Shark": 2}
    expected = np.zeros((1000, 1000), dtype=np.int64)
    for i, (folder_name, label) in enumerate(layout.items()):
        (root / folder_name).mkdir(parents=True)
        for j in range(2):  # too few for a seeded test split: every image is scored
            photo = _photo(root / folder_name / f"{j}.png", (30 + 7 * j, 19 + 5 * i), seed=10 * i + j)
            probs = _forward(tiny_state, _reference_pixels(photo, 18, 16), IMAGENET_MEAN, IMAGENET_STD)
            expected[label, int(np.argmax(probs))] += 1
    code, out, err = run_main(["eval", str(model), "--weights", "imagenet", "--dataset", "image-folder",
                               "--data-dir", str(root), "--format", "json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert record["n"] == 6 and record["top_k"]["k"] == 5
    np.testing.assert_array_equal(np.array(record["confusion"]), expected)
    assert math.isclose(record["accuracy"], np.trace(expected) / 6)

    (root / "tenchh").mkdir()
    _photo(root / "tenchh" / "0.png", (20, 20))
    code, _, err = run_main(["eval", str(model), "--weights", "imagenet", "--dataset", "image-folder",
                             "--data-dir", str(root)], capsys)
    assert code == 2 and "'tenchh' is not one of the ImageNet classes" in err and "'tench' (n01440764)" in err


def test_imagenet_is_no_dataset_to_load(tmp_path, server, tiny_file, capsys):
    name, body = tiny_file
    server.routes[f"/models/{name}"] = ("ok", body)
    code, _, err = run_main(["eval", str(_model(tmp_path, f"{server.url}/models/{name}")), "--weights",
                             "imagenet"], capsys)
    assert code == 2 and "ImageNet is not a dataset cnncli loads" in err and "--dataset image-folder" in err


def test_backprop_trace_of_imagenet_weights_is_offered_an_input_array(tmp_path, server, tiny_file, tiny_state,
                                                                      capsys):
    """--sample takes a test image of a dataset, which ImageNet weights do not have: the message offers the input
    backprop-trace reads instead, an array as the network takes it, and that works."""
    name, body = tiny_file
    server.routes[f"/models/{name}"] = ("ok", body)
    model = _model(tmp_path, f"{server.url}/models/{name}")
    code, _, err = run_main(["backprop-trace", str(model), "--weights", "imagenet", "--sample", "3"], capsys)
    text = " ".join(err.split())
    assert code == 2 and "Traceback" not in err
    assert "--sample 3: the weights were trained on ImageNet, of which cnncli has the class names but no images" in text
    assert "Give the input itself: --input FILE.npy, an array of 3×16×16 numbers as the network takes them" in text
    assert "or leave --sample out" in text and "--image FILE and --method saliency" in text
    x = np.random.default_rng(4).normal(0, 1, (3, 16, 16))
    np.save(tmp_path / "x.npy", x)
    code, out, err = run_main(["backprop-trace", str(model), "--weights", "imagenet", "--input",
                               str(tmp_path / "x.npy"), "--target", "207", "--format", "json"], capsys)
    assert code == 0, err
    # The traced loss is the cross-entropy of class 207 on the array as given, by hand.
    assert json.loads(out)["loss"] == pytest.approx(-math.log(_network(tiny_state, x)[207]), rel=1e-5)


def test_open_weights_is_a_file_when_no_published_weights_have_the_name(lenet_checkpoint):
    path, _ = lenet_checkpoint
    saved = trained.open_weights(path, spec.load("lenet5"))
    assert saved.path == path and "source" not in saved.meta


def test_a_photo_is_drawn_shrunk_beside_its_classes():
    """A 224×224 crop would be 112 lines of 224 columns; it is averaged down to fit beside the bars."""
    import io

    from rich.console import Console

    from cnncli.commands.predict import Guess, ImagePrediction, PredictResult
    from cnncli.render import predict as render

    pixels = np.tile(np.arange(224, dtype=np.uint8), (3, 224, 1))
    guesses = [Guess(i, class_lists.get("imagenet").names[i], 0.2) for i in range(5)]
    result = PredictResult("resnet18", Path("imagenet"), "imagenet", "ImageNet", "as is", 5,
                           [ImagePrediction(Path("dog.jpg"), pixels, guesses)])
    out = io.StringIO()
    render.show(result, "table", Console(file=out, width=80, color_system=None))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert 10 <= len(lines) <= 20  # the title, a blank line, then 28 px rows two to a line (224 / 8 = 28)
    assert any("tench" in line and "█" in line for line in lines)  # the bars beside the picture


def test_explain_reads_published_weights_and_their_preparation(tmp_path, server, tiny_file, tiny_state, capsys):
    name, body = tiny_file
    server.routes[f"/models/{name}"] = ("ok", body)
    model = _model(tmp_path, f"{server.url}/models/{name}")
    photo = _photo(tmp_path / "photo.png", (37, 23), seed=3)
    code, out, err = run_main(["explain", str(model), "--weights", "imagenet", "--image", str(photo),
                               "--method", "saliency", "--format", "json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    probs = _forward(tiny_state, _reference_pixels(photo, 18, 16), IMAGENET_MEAN, IMAGENET_STD)
    assert record["class"] == int(np.argmax(probs))  # the predicted class, on the weights' 16×16 crop
    assert record["probability"] == pytest.approx(float(probs.max()), rel=1e-4)
    assert record["map_shape"] == [16, 16]


def test_fine_tuning_published_weights_prepares_the_folder_as_the_weights_expect(tmp_path, server, tiny_file,
                                                                                    tiny_state, capsys):
    """The folder keeps its own classes (a fresh head), but its images are resized, cropped and normalised as
    the weights were trained: their features are of images so prepared."""
    from cnncli.commands import training

    name, body = tiny_file
    server.routes[f"/models/{name}"] = ("ok", body)
    model = _model(tmp_path, f"{server.url}/models/{name}")
    for c, colour in enumerate(("red", "blue")):
        (tmp_path / "shapes" / colour).mkdir(parents=True)
        for i in range(8):
            _photo(tmp_path / "shapes" / colour / f"{i}.png", (30 + i, 20 + c), seed=10 * c + i)
    out = tmp_path / "run"
    code, text, err = run_main(["train", str(model), "--weights", "imagenet", "--dataset", "image-folder",
                                "--data-dir", str(tmp_path / "shapes"), "--epochs", "1", "--batch-size", "4",
                                "--out", str(out)], capsys)
    assert code == 0, err
    assert "head: 1000 → 2 units" in " ".join(text.split()) and "ImageNet weights' statistics" in text
    # the weights' download is shown as predict's is (a plain line each when not on a terminal), before the run
    assert " ".join(text.split()).startswith(f"downloading {name} from {server.url}/models/{name} "
                                             f"({len(body) / 1e6:.1f} MB) downloaded {name} ")
    run = checkpoint.load(out / "last.npz")
    source = Source.from_config(run.meta["source"])
    assert source.classes == ("blue", "red") and source.resize == 18
    assert source.mean == pytest.approx(IMAGENET_MEAN) and source.std == pytest.approx(IMAGENET_STD)
    # the training images are the weights' crop of each photo: shorter side to 18, the centre 16×16
    images, _ = source.load("train")
    first = sorted((tmp_path / "shapes" / "blue").iterdir())
    assert any(np.array_equal(img, _reference_pixels(f, 18, 16)) for img in images for f in first)
    # resumed, it prepares them the same way
    assert training.configure(str(model), {"epochs": 2}, resume=out / "last.npz").weights == "imagenet"


def test_a_file_put_in_place_by_hand_is_checked_against_its_name_once(tmp_path, tiny_file, monkeypatch, capsys):
    """Offline, by hand, is where other weights under the published name would go unnoticed."""
    name, body = tiny_file
    photo = str(_photo(tmp_path / "p.png", (20, 20)))
    model = _model(tmp_path, f"http://127.0.0.1:9/models/{name}")  # a closed port: never reached
    mine = tmp_path / "mine"
    mine.mkdir()
    monkeypatch.setenv("CNNCLI_WEIGHTS", str(mine))
    (mine / name).write_bytes(body[:-1] + bytes([body[-1] ^ 1]))  # one bit off
    code, _, err = run_main(["predict", str(model), photo, "--weights", "imagenet"], capsys)
    assert code == 2 and "not the published file" in err and name in err
    (mine / name).write_bytes(body)
    assert run_main(["predict", str(model), photo, "--weights", "imagenet"], capsys)[0] == 0
    record = json.loads((published.cache_folder() / published.VERIFIED).read_text())
    assert str((mine / name).resolve()) in record
    # a file that passed is not hashed again until it changes
    monkeypatch.setattr(published, "sha256", lambda path: pytest.fail("hashed again"))
    assert run_main(["predict", str(model), photo, "--weights", "imagenet"], capsys)[0] == 0


# --------------------------------------------------------------------------- a state dict in torchvision's layout


@pytest.mark.parametrize("model", ["alexnet", "vgg16", "resnet18", "resnet34", "resnet50", "googlenet"])
def test_a_state_dict_is_in_the_published_layout_by_its_keys(model):
    """torchvision's keys (and googlenet's without the auxiliary heads, as torchvision saves the network built
    with its weights) are the entry's layout; the same weights under cnncli's names, or one key short, are not."""
    model_spec = spec.load(model)
    theirs = dict(LAYOUTS[model])
    assert published.layout_of(theirs, model_spec) == "imagenet"
    if model == "googlenet":
        assert published.layout_of({k: s for k, s in theirs.items() if not k.startswith("aux")},
                                   model_spec) == "imagenet"
    if model_spec.weights["imagenet"].names:
        assert published.layout_of(published.renamed(theirs, model_spec.weights["imagenet"].names),
                                   model_spec) is None
    assert published.layout_of(dict(list(theirs.items())[1:]), model_spec) is None


@pytest.fixture
def in_place(tmp_path, tiny_file, monkeypatch):
    """The tiny model whose published weights are found in CNNCLI_WEIGHTS (offline), and the same bytes as a
    user's own file under another name."""
    name, body = tiny_file
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / name).write_bytes(body)
    monkeypatch.setenv("CNNCLI_WEIGHTS", str(mine))
    monkeypatch.setenv("CNNCLI_OFFLINE", "1")
    own = tmp_path / "r18.pth"
    own.write_bytes(body)
    return _model(tmp_path, f"http://127.0.0.1:9/models/{name}"), own


def _both(args: list[str], own: Path, capsys) -> tuple[dict, dict, str]:
    """``args`` run with --weights imagenet and with --weights OWN (JSON, the weights' own name left out), and
    the second run's messages."""
    records, errs = [], []
    for weights in ("imagenet", str(own)):
        code, out, err = run_main([*args, "--weights", weights, "--format", "json"], capsys)
        assert code == 0, err
        record = json.loads(out)
        assert record.pop("checkpoint") == weights
        records.append(record)
        errs.append(err)
    assert "torchvision's layout" not in errs[0]
    return records[0], records[1], errs[1]


def test_a_torchvision_state_dict_by_path_is_read_as_the_published_weights(in_place, tiny_state, tmp_path,
                                                                             capsys):
    model, own = in_place
    photo = _photo(tmp_path / "photo.png", (37, 23), seed=3)
    published_record, own_record, err = _both(["predict", str(model), str(photo)], own, capsys)
    assert own_record == published_record
    assert (f"note: {own}: weights in torchvision's layout: read as imagenet's (1000 ImageNet classes, its "
            "preparation)") in " ".join(err.split())
    # what both computed: the network by hand on the weights' crop, with ImageNet's statistics
    probs = _forward(tiny_state, _reference_pixels(photo, 18, 16), IMAGENET_MEAN, IMAGENET_STD)
    assert [g["class"] for g in own_record["predictions"][0]["top"]] == np.argsort(-probs, kind="stable")[:5].tolist()

    published_record, own_record, _ = _both(["features", str(model), "--image", str(photo)], own, capsys)
    assert own_record == published_record and own_record["prediction"][0]["class"] == int(np.argmax(probs))

    root = tmp_path / "photos"
    for i, folder_name in enumerate(("tench", "golden retriever")):
        (root / folder_name).mkdir(parents=True)
        _photo(root / folder_name / "0.png", (30, 19 + i), seed=20 + i)
    args = ["eval", str(model), "--dataset", "image-folder", "--data-dir", str(root)]
    published_record, own_record, _ = _both(args, own, capsys)
    assert own_record == published_record and own_record["n"] == 2


def test_a_state_dict_of_another_layout_is_read_as_before(in_place, tiny_state, tmp_path, capsys):
    """The same weights under the model file's own layer names are no published layout: weights alone, whose
    1000-unit head asks for the dataset they were trained on, as before."""
    torch = pytest.importorskip("torch")
    model, _ = in_place
    names = spec.parse(model.read_text(encoding="utf-8"), str(model)).weights["imagenet"].names
    other = tmp_path / "other.pth"
    torch.save({k: torch.from_numpy(v) for k, v in published.renamed(tiny_state, names).items()}, other)
    code, _, err = run_main(["predict", str(model), str(_photo(tmp_path / "p.png", (20, 20))), "--weights",
                             str(other)], capsys)
    assert code == 2 and "torchvision's layout" not in err
    assert "records no classes, and its head (head) has 1,000 units" in err
    assert "give the dataset it was trained on" in err


# --------------------------------------------------------------------------- folders of one class, of one image


def test_a_folder_of_one_imagenet_class_is_scored_and_predicted_but_not_trained_on(in_place, tiny_state,
                                                                                    tmp_path, capsys):
    model, _ = in_place
    root = tmp_path / "retrievers"
    (root / "golden retriever").mkdir(parents=True)
    photos = [_photo(root / "golden retriever" / f"{j}.png", (30 + j, 21), seed=40 + j) for j in range(2)]
    code, out, err = run_main(["eval", str(model), "--weights", "imagenet", "--dataset", "image-folder",
                               "--data-dir", str(root), "--format", "json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    guesses = [int(np.argmax(_forward(tiny_state, _reference_pixels(p, 18, 16), IMAGENET_MEAN, IMAGENET_STD)))
               for p in photos]
    assert record["n"] == 2 and record["accuracy"] == guesses.count(207) / 2
    assert sum(record["confusion"][207]) == 2 and sum(map(sum, record["confusion"])) == 2
    code, out, err = run_main(["predict", str(model), str(photos[0]), "--weights", "imagenet", "--dataset",
                               "image-folder", "--data-dir", str(root), "--format", "json"], capsys)
    assert code == 0, err
    assert json.loads(out)["predictions"][0]["top"][0]["class"] == guesses[0]
    # training keeps the folder's own classes: one is no classifier
    code, _, err = run_main(["train", str(model), "--weights", "imagenet", "--dataset", "image-folder",
                             "--data-dir", str(root), "--epochs", "1", "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "has a single class, 'golden retriever'" in err and "at least two class folders" in err


def test_predict_takes_a_folder_too_small_to_split_for_its_statistics(in_place, tmp_path, capsys):
    """Weights alone given a folder of their classes: predict needs its classes and statistics, not a test split,
    so a class of one image is no reason to refuse; the statistics are then of all its images. eval, which
    scores the test split, still refuses it."""
    torch = pytest.importorskip("torch")
    model, _ = in_place
    rng = np.random.default_rng(11)
    state = {"stem.weight": rng.normal(0, 0.5, (2, 3, 3, 3)), "stem.bias": rng.normal(0, 0.1, 2),
             "head.weight": rng.normal(0, 1.0, (2, 2)), "head.bias": rng.normal(0, 0.1, 2)}
    own = tmp_path / "two.pth"
    torch.save({k: torch.from_numpy(v.astype(np.float32)) for k, v in state.items()}, own)
    root = tmp_path / "shapes"
    files = []
    for c, n in (("a", 1), ("b", 2)):
        (root / c).mkdir(parents=True)
        files += [_photo(root / c / f"{i}.png", (16, 16), seed=50 + 10 * len(files) + i) for i in range(n)]
    pixels = np.stack([np.asarray(PIL.open(f).convert("RGB")).transpose(2, 0, 1) for f in files]) / 255.0
    mean, std = pixels.mean(axis=(0, 2, 3)), pixels.std(axis=(0, 2, 3))  # of all three images
    code, out, err = run_main(["predict", str(model), str(files[0]), "--weights", str(own), "--dataset",
                               "image-folder", "--data-dir", str(root), "--format", "json"], capsys)
    assert code == 0, err
    x = (pixels[0] - mean[:, None, None]) / std[:, None, None]
    probs = _network({"features.0.weight": state["stem.weight"], "features.0.bias": state["stem.bias"],
                      "classifier.weight": state["head.weight"], "classifier.bias": state["head.bias"]}, x)
    top = json.loads(out)["predictions"][0]["top"]
    assert [g["name"] for g in top] == [("a", "b")[i] for i in np.argsort(-probs, kind="stable")]
    np.testing.assert_allclose([g["probability"] for g in top], np.sort(probs)[::-1], rtol=1e-4)
    code, _, err = run_main(["eval", str(model), "--weights", str(own), "--dataset", "image-folder",
                             "--data-dir", str(root)], capsys)
    assert code == 2 and "class 'a' of" in err and "has only 1 image: splitting off a test set" in err
