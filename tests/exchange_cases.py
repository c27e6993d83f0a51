"""Small networks, one per layer kind, that the exporters (ONNX, PyTorch) are checked on."""

# One small network per layer kind, with the options whose conventions differ most between engines.
CASES = {
    "conv": "input: [4, 11, 9]\nlayers:\n  - conv: {filters: 6, kernel: [3, 2], stride: [2, 1], padding: [1, 2], "
            "dilation: [1, 2], groups: 2}\n  - conv: {filters: 3, kernel: 1, bias: false}\n  - conv: {filters: 2, "
            "kernel: 2, connections: [[1, 0, 1], [0, 1, 1]]}",
    "maxpool": "input: [2, 9, 10]\nlayers:\n  - maxpool: {kernel: 3, stride: 2, padding: 1, ceil_mode: true}\n"
               "  - maxpool: {kernel: [2, 3], stride: [1, 2]}",
    "avgpool": "input: [2, 9, 10]\nlayers:\n  - avgpool: {kernel: 3, stride: 2, padding: 1, count_include_pad: false}\n"
               "  - avgpool: {kernel: 2, stride: 2, ceil_mode: true}",
    "adaptive_avgpool": "input: [3, 7, 5]\nlayers:\n  - adaptive_avgpool: {output: [3, 2]}",
    "global_avgpool": "input: [3, 5, 4]\nlayers:\n  - global_avgpool",
    "subsample": "input: [3, 8, 8]\nlayers:\n  - subsample: {kernel: 2, stride: 2}",
    "shortcut_pad": "input: [3, 8, 7]\nlayers:\n  - shortcut_pad: {stride: 2, channels: 5}",
    "dense": "input: [6]\nlayers:\n  - dense: {units: 4}\n  - dense: {units: 3, bias: false}",
    "flatten": "input: [2, 3, 4]\nlayers:\n  - flatten\n  - dense: {units: 2}",
    "relu": "input: [5]\nlayers:\n  - relu",
    "leaky_relu": "input: [5]\nlayers:\n  - leaky_relu: {slope: 0.2}",
    "sigmoid": "input: [5]\nlayers:\n  - sigmoid",
    "tanh": "input: [5]\nlayers:\n  - tanh",
    "softmax": "input: [5]\nlayers:\n  - dense: {units: 4}\n  - softmax",
    "batchnorm": "input: [3, 4, 4]\nlayers:\n  - batchnorm: {eps: 0.001}\n  - flatten\n  - dense: {units: 4}\n"
                 "  - batchnorm",
    "dropout": "input: [6]\nlayers:\n  - dropout: {rate: 0.5}\n  - dense: {units: 2}",
    "lrn": "input: [7, 4, 4]\nlayers:\n  - lrn: {size: 3, alpha: 0.01, beta: 0.75, k: 2}",
    "add": "input: [3, 4, 4]\nlayers:\n  - conv: {name: a, filters: 3, kernel: 1}\n  - conv: {name: b, filters: 3, "
           "kernel: 3, padding: 1, input: input}\n  - add: {inputs: [a, b, input]}",
    "yolo": "input: [3, 4, 4]\nclasses: 2\nlayers:\n  - conv: {filters: 12, kernel: 1}\n  - yolo: {boxes: 2}",
    "localize": "input: [6]\nclasses: 3\nlayers:\n  - dense: {units: 7}\n  - localize",
    "concat": "input: [3, 4, 4]\nlayers:\n  - conv: {name: a, filters: 2, kernel: 1}\n  - relu: {name: b, input: input}\n"
              "  - concat: {inputs: [a, b]}",
}
