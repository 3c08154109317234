"""vitdino_core: a Vision Transformer and DINO self-distillation, written from scratch in PyTorch.

One module per idea, named like the notebook that builds it:
    patch_embedding (01) · attention (02) · vision_transformer (03) · multicrop (04)
    dino_loss (05) · ema_training (06) · attention_maps (07) · linear_probe (08)
Beside them:
    data/          images, datasets by name, the course's Imagenette-96, multi-crop batches,
                   downloads
    checkpoint     files: written atomically, official DINO weights read, a backbone built from
                   a file
    eval_protocol  frozen-feature evaluation: which images, the features, kNN and probe scores
    features       saved features on disk
    training/      config, device, the trainer, a run's folder, the GPU multi-crop (notebook 09)
    train, evaluate, sanity   the commands (python -m vitdino_core.<command>); data/ has its own
    notebook, exercises/      helpers of the notebooks and the learners' checks
The notebook-named modules import none of the others but each other, checkpoint and data;
training/ builds on them, and the commands on training/.
"""

from .attention import Attention
from .attention_maps import (
    cls_attention,
    denormalize,
    load_image,
    overlay_masks,
    plot_attention_heads,
    threshold_masks,
    upsample,
)
from .checkpoint import (
    CheckpointError,
    backbone_state_dict,
    build_backbone_from_checkpoint,
    build_random_backbone,
    export_backbone,
    load_backbone_weights,
    load_checkpoint,
    save_checkpoint,
)
from .data import DatasetNotFoundError, ImageFolderDataset, build_dataset, data_root, eval_transform
from .dino_loss import DINOHead, DINOLoss
from .ema_training import (
    cancel_gradients_last_layer,
    clip_gradients,
    cosine_scheduler,
    get_params_groups,
    make_teacher,
    update_teacher,
)
from .eval_protocol import evaluate_features
from .linear_probe import extract_features, knn_classifier, linear_probe, raw_pixel_features
from .multicrop import MultiCropAugmentation, MultiCropWrapper, collate_multicrop
from .patch_embedding import PatchEmbed, patchify
from .vision_transformer import (
    Block,
    DropPath,
    Mlp,
    VisionTransformer,
    build_vit,
    vit_base,
    vit_small,
    vit_tiny,
)

__version__ = "0.1.0"
