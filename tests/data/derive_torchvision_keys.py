"""Writes torchvision_keys.txt: the state-dict keys and shapes of torchvision's ImageNet networks.

How the file was made (not run by the tests; needs torch and a torchvision source tree, not an installed
torchvision): ``python tests/data/derive_torchvision_keys.py /path/to/torchvision > tests/data/torchvision_keys.txt``.
It imports torchvision's own model modules (alexnet.py, vgg.py, resnet.py, googlenet.py) with their
package-level helpers stubbed (the weights enums, presets and logging they import), builds each network as
its published weights are loaded (GoogLeNet with its auxiliary heads, as the file holds them) and prints
every state-dict entry as ``model<TAB>key<TAB>shape``.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path


def _stub_package(root: Path) -> None:
    pkg = types.ModuleType("torchvision")
    pkg.__path__ = [str(root)]
    sys.modules["torchvision"] = pkg
    models = types.ModuleType("torchvision.models")
    models.__path__ = [str(root / "models")]
    sys.modules["torchvision.models"] = models

    class _Anything:
        def __init__(self, *a, **k):
            pass

        def __call__(self, *a, **k):
            return self

    def passthrough(*a, **k):
        return lambda f: f

    presets = types.ModuleType("torchvision.transforms._presets")
    presets.ImageClassification = _Anything
    sys.modules["torchvision.transforms"] = types.ModuleType("torchvision.transforms")
    sys.modules["torchvision.transforms._presets"] = presets
    utils = types.ModuleType("torchvision.utils")
    utils._log_api_usage_once = lambda *a, **k: None
    sys.modules["torchvision.utils"] = utils
    api = types.ModuleType("torchvision.models._api")
    api.register_model = passthrough
    api.Weights = _Anything

    class WeightsEnum:  # the enums' bodies only need to evaluate
        pass

    api.WeightsEnum = WeightsEnum
    sys.modules["torchvision.models._api"] = api
    mutils = types.ModuleType("torchvision.models._utils")
    mutils._ovewrite_named_param = lambda *a, **k: None
    mutils.handle_legacy_interface = passthrough
    sys.modules["torchvision.models._utils"] = mutils
    for name in ("_meta",):
        spec = importlib.util.spec_from_file_location(f"torchvision.models.{name}", root / "models" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)


def _module(root: Path, name: str):
    spec = importlib.util.spec_from_file_location(f"torchvision.models.{name}", root / "models" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main(root: Path) -> None:
    _stub_package(root)
    alexnet, vgg, resnet, googlenet = (_module(root, n) for n in ("alexnet", "vgg", "resnet", "googlenet"))
    networks = {
        "alexnet": alexnet.AlexNet(),
        "vgg16": vgg.VGG(vgg.make_layers(vgg.cfgs["D"])),
        "resnet18": resnet.ResNet(resnet.BasicBlock, [2, 2, 2, 2]),
        "resnet34": resnet.ResNet(resnet.BasicBlock, [3, 4, 6, 3]),
        "resnet50": resnet.ResNet(resnet.Bottleneck, [3, 4, 6, 3]),
        "googlenet": googlenet.GoogLeNet(aux_logits=True, init_weights=False),
    }
    print("# model\tkey\tshape: torchvision's state dicts, made by tests/data/derive_torchvision_keys.py")
    for model, net in networks.items():
        for key, value in net.state_dict().items():
            print(f"{model}\t{key}\t{'x'.join(map(str, value.shape))}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
