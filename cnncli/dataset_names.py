"""The names of the datasets cnncli can load: the one list that the CLI's ``--dataset``, the model files'
``train: dataset:`` and :data:`cnncli.data.DATASETS` all use (a test holds them equal).

It imports nothing, so that ``--help``, ``summarize`` and ``models`` can read it without loading
numpy or the data code.
"""

DATASET_NAMES: tuple[str, ...] = ("mnist", "fashion-mnist", "cifar10", "cifar100", "cifar100-coarse")

#: A folder of the user's own images (``--data-dir DIR``; cnncli.data.folder), not a registered dataset.
FOLDER = "image-folder"

#: Datasets of boxes (detection): canvases of digits made from MNIST's files (cnncli.data.mnist_detect) ...
DETECTION: tuple[str, ...] = ("mnist-detect", "fashion-mnist-detect", "mnist-locate")
#: ... and a folder of the user's own in the YOLO layout (``--data-dir DIR``; cnncli.data.yolo).
YOLO = "yolo"

def of_boxes(name: str) -> bool:
    """Whether dataset ``name`` labels its images with boxes (trains detectors) rather than one class each."""
    return name in DETECTION or name == YOLO


#: The class lists of published weights (a model file's ``weights: classes:``; cnncli.data.class_lists):
#: classes without images, so no dataset cnncli loads.
CLASS_LISTS: tuple[str, ...] = ("imagenet",)

#: What ``--dataset`` and ``train: dataset:`` accept.
CHOICES: tuple[str, ...] = DATASET_NAMES + (FOLDER,) + DETECTION + (YOLO,)
