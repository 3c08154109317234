"""vitdino_core: a Vision Transformer and DINO self-distillation, written from scratch in PyTorch.

One module per idea, named like the notebook that builds it:
    patch_embedding (01) · attention (02) · vision_transformer (03) · multicrop (04)
    dino_loss (05) · ema_training (06) · attention_maps (07) · linear_probe (08) · train/config (09)
"""

from .attention import Attention
from .checkpoint import CheckpointError, backbone_state_dict, load_backbone_weights, load_checkpoint, save_checkpoint
from .data import DatasetNotFoundError, ImageFolderDataset, build_dataset, data_root, eval_transform
from .dino_loss import DINOHead, DINOLoss
from .ema_training import (cancel_gradients_last_layer, clip_gradients, cosine_scheduler, get_params_groups, make_teacher,
                           update_teacher)
from .multicrop import MultiCropAugmentation, MultiCropWrapper, collate_multicrop
from .patch_embedding import PatchEmbed, patchify
from .vision_transformer import Block, DropPath, Mlp, VisionTransformer, build_vit, vit_base, vit_small, vit_tiny

__version__ = "0.1.0"
