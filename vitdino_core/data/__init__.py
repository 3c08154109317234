"""Images, datasets and the data root, one idea per file:

images      any image file -> 8-bit RGB (to_rgb, open_rgb)
datasets    datasets by name, image folders, the data root, the evaluation transform
imagenette  the course copy, Imagenette-96: its recipe, its check, its builder
loader      multi-crop batches for training: per-sample seeds, EpochBatchSampler, make_loader
downloads   resumable downloads: the Imagenette v2 archive, DINO's published weights
command     python -m vitdino_core.data where | download NAME
"""

from .command import main, where_lines
from .datasets import (
    DATASETS,
    IMAGENETTE_96,
    IMAGENETTE_CLASSES,
    IMAGENETTE_FOLDERS,
    REPO_ROOT,
    TORCHVISION_DATASETS,
    DatasetNotFoundError,
    ImageFolderDataset,
    TensorImageDataset,
    build_dataset,
    data_root,
    eval_transform,
    find_imagenette,
)
from .imagenette import (
    MARKER,
    download_imagenette_96,
    is_course_copy,
    make_imagenette_96,
    split_files,
)
from .images import IMG_EXTENSIONS, open_rgb, to_rgb
from .loader import EpochBatchSampler, MultiCropDataset, make_loader, sample_seed
