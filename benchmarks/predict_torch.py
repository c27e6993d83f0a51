"""PyTorch's side of ``cnncli predict MODEL --weights W PHOTO``, timed as a whole process beside it.

Loads a module and state dict written by ``cnncli export MODEL --weights W --to torch -o m.py``, prepares
one photo as torchvision's classification weights expect it (shorter side to 256 with bilinear
resampling, the centre 224x224, ImageNet's mean and standard deviation), runs the forward pass under
``inference_mode`` and prints the five most probable class indices: the same work as cnncli's predict
(load, prepare, forward), so that the two commands' wall times compare::

    cnncli export resnet50 --weights W --to torch -o r50.py
    /usr/bin/time -f %e python benchmarks/predict_torch.py r50.py photo.jpg
    /usr/bin/time -f %e cnncli predict resnet50 --weights W photo.jpg --format json
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MEAN, STD, RESIZE, CROP = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 256, 224


def prepare(path: Path) -> torch.Tensor:
    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = RESIZE / min(w, h)
    image = image.resize((max(RESIZE, int(w * scale)), max(RESIZE, int(h * scale))), Image.BILINEAR)
    w, h = image.size
    left, top = int(round((w - CROP) / 2.0)), int(round((h - CROP) / 2.0))
    pixels = np.asarray(image.crop((left, top, left + CROP, top + CROP)), dtype=np.float32) / 255.0
    pixels = (pixels - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())[None]


def main(module_file: str, photo: str) -> None:
    path = Path(module_file)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    classes = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, torch.nn.Module)
               and v.__module__ == module.__name__]
    model = classes[0]()
    model.load_state_dict(torch.load(path.with_suffix(".pt"), weights_only=True))
    model.eval()
    with torch.inference_mode():
        probs = torch.softmax(model(prepare(Path(photo))), dim=1)[0]
    print(torch.topk(probs, 5).indices.tolist())


if __name__ == "__main__":
    main(*sys.argv[1:3])
