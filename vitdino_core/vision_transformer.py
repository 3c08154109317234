"""The Vision Transformer (Dosovitskiy et al. 2021) as DINO uses it.

    tokens = [cls; patch_embed(x)] + pos_embed            (B, N+1, D)
    x = x + drop_path(attn(norm1(x)))                      pre-norm residual blocks, `depth` times
    x = x + drop_path(mlp(norm2(x)))
    out = norm(x)[:, 0]                                    the CLS token is the image's feature

Parameter names match the official DINO `vision_transformer.py` (and timm), so official
backbone weights load with `strict=True` and a reader can hold the two side by side.

Two DINOv2 additions, off by default (the model and its state dict are then DINO's):
`num_register_tokens=R` adds R learned registers (Darcet et al. 2024) after the position embedding,
tokens [cls; registers; patches] (B, 1+R+N, D), registers without a position; `use_mask_token=True`
adds the learned `mask_token` that `prepare_tokens(x, masks)` puts in place of masked patches
(iBOT). Names and layout follow DINOv2's `vision_transformer.py`.

`fast=True` (what training uses; `fast: true` in the configs) turns on three ways of computing the
same values in less time, each a branch next to the plain code it replaces, and `repr(model)` shows
the flag on every module that has one: the last block computes the CLS row alone
(`VisionTransformer.forward`, `Block.forward_cls`, `Attention.forward_cls`); in training on a CPU a
dropped residual branch is not computed (`Block.forward_kept`); on a CPU in bf16 attention is the
explicit softmax (`Attention.attend`). Notebook 09 shows what each one saves.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from .attention import Attention
from .patch_embedding import PatchEmbed, check_image_batch


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch for a random subset of samples, as DINO
    writes it.

    Each sample keeps its branch with probability keep_prob (floor(keep_prob + U) is 1), scaled by
    1/keep_prob so that the expectation is unchanged."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # (B, 1, 1): one coin per sample
    random_tensor = keep_prob + torch.rand(shape, dtype=x.dtype, device=x.device)  # (B, 1, 1)
    random_tensor.floor_()  # 1 = keep, 0 = drop
    return x.div(keep_prob) * random_tensor  # (B, N, D)


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """Two linear layers with a GELU in between; hidden width = mlp_ratio * dim."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        drop: float = 0.0,
    ):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.fc1(x)))  # (B, N, hidden)
        return self.drop(self.fc2(x))  # (B, N, D)


class Block(nn.Module):
    """Pre-norm transformer block: attention then MLP, each inside a residual connection."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer=nn.LayerNorm,
        fast: bool = False,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(
            dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop, fast=fast
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.fast = (
            fast  # in training on a CPU, a dropped residual branch is not computed (`forward_kept`)
        )

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        if (
            self.fast
            and self.training
            and not return_attention
            and x.device.type == "cpu"
            and not torch.compiler.is_compiling()
        ):  # eager CPU: the kept samples are found without a wait
            return self.forward_kept(x)  # (B, N, D): a dropped branch is not computed
        if return_attention:
            y, attn = self.attn(self.norm1(x), return_attention=True)  # (B, N, D), (B, H, N, N)
        else:
            y, attn = self.attn(self.norm1(x)), None  # (B, N, D)
        x = x + self.drop_path(y)  # (B, N, D)
        x = x + self.drop_path(self.mlp(self.norm2(x)))  # (B, N, D)
        return (x, attn) if return_attention else x

    def forward_kept(self, x: torch.Tensor) -> torch.Tensor:
        """`self(x)` in training, (B, N, D), with stochastic depth as Huang et al. (2016) meant it:
        a sample whose residual branch is dropped does not compute it. The coins are those
        `drop_path` would draw (one per sample, in the branch's dtype), drawn before the branch;
        the values and the gradients are the plain block's."""
        p = getattr(self.drop_path, "drop_prob", 0.0)  # nn.Identity: nothing dropped
        keep = 1 - p
        dtype = (
            torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        )  # the branch's dtype
        for norm, branch in ((self.norm1, self.attn), (self.norm2, self.mlp)):
            if p == 0.0:
                x = x + branch(norm(x))  # (B, N, D): no coins to draw
                continue
            coins = (
                keep + torch.rand(x.shape[0], 1, 1, dtype=dtype, device=x.device)
            ).floor_()  # (B, 1, 1): 1 = keep
            kept = coins.flatten().nonzero().squeeze(1)  # (b,): the samples that keep the branch
            if 0 < len(kept) < x.shape[0]:
                y = branch(norm(x[kept])).div(
                    keep
                )  # (b, N, D): the branch of the kept samples alone
                x = x.index_add(0, kept, y.to(x.dtype))  # (B, N, D): a dropped sample's row stays x
            else:  # nobody dropped, or everybody (the branch's weights still take part, at 0)
                x = x + branch(norm(x)).div(keep) * coins  # (B, N, D): drop_path with these coins
        return x

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        """`self(x)[:, :1]`, (B, N, D) -> (B, 1, D): the block's output for the CLS token alone."""
        x_cls = x[:, :1] + self.drop_path(
            self.attn.forward_cls(self.norm1(x))
        )  # (B, 1, D): CLS attends to all
        return x_cls + self.drop_path(
            self.mlp(self.norm2(x_cls))
        )  # (B, 1, D): the MLP of one token

    def extra_repr(self) -> str:
        return f"fast={self.fast}"


def resize_pos_grid(grid_pos: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(1, s*s, D) patch position embeddings -> (1, rows*cols, D), resized bicubically as the
    official DINO code does.

    DINO passes scale factors (rows + 0.1) / s and (cols + 0.1) / s, not the output size: the 0.1
    keeps floor(s * scale) from falling one short, and the factors also set where the new grid
    samples the old one (output row i reads input row (i + 0.5) * s / (rows + 0.1) - 0.5), so
    official weights give official features."""
    s = math.isqrt(grid_pos.shape[1])
    if s * s != grid_pos.shape[1]:
        raise ValueError(
            f"position embeddings of {grid_pos.shape[1]} patches are not a square grid"
        )
    grid = grid_pos.reshape(1, s, s, -1).permute(0, 3, 1, 2)  # (1, D, s, s): a D-channel image
    grid = F.interpolate(
        grid.float(),
        scale_factor=((rows + 0.1) / s, (cols + 0.1) / s),
        mode="bicubic",
        align_corners=False,
    )  # (1, D, rows, cols)
    return (
        grid.to(grid_pos.dtype).permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
    )  # (1, rows*cols, D), row-major


def default_img_size(patch_size: int, target: int = 224) -> int:
    """The multiple of `patch_size` nearest to `target` (224 for /16 and /8, 228 for /12)."""
    return max(1, round(target / patch_size)) * patch_size


class VisionTransformer(nn.Module):
    """`fast=True` sets the flag on the model and on every block and its attention; each module
    reads its own, so turning it off on one kind of module turns off that module's trick alone."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        num_classes: int = 0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        norm_layer=None,
        fast: bool = False,
        num_register_tokens: int = 0,
        use_mask_token: bool = False,
    ):
        super().__init__()
        if num_register_tokens < 0:
            raise ValueError(f"num_register_tokens must be >= 0, got {num_register_tokens}")
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        self.num_features = self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.grad_checkpointing = False  # recompute block activations in backward to save memory
        self.fast = fast  # the last block computes the CLS row alone (`forward`)

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))  # (1, 1, D)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))  # (1, N+1, D)
        self.pos_drop = nn.Dropout(p=drop_rate)
        self.num_register_tokens = num_register_tokens  # R: tokens 1..R are registers
        if num_register_tokens > 0:  # no parameter at R = 0: DINO checkpoints load strict
            self.register_tokens = nn.Parameter(
                torch.zeros(1, num_register_tokens, embed_dim)
            )  # (1, R, D)
        if use_mask_token:  # iBOT: what a masked patch becomes (DINOv2 inits it at zero)
            self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # (1, D)

        dpr = [
            drop_path_rate * i / max(depth - 1, 1) for i in range(depth)
        ]  # linear rule: deeper blocks drop more
        self.blocks = nn.ModuleList(
            [
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio,
                    qkv_bias,
                    drop_rate,
                    attn_drop_rate,
                    dpr[i],
                    norm_layer,
                    fast=fast,
                )
                for i in range(depth)
            ]
        )
        self.norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if num_register_tokens > 0:
            nn.init.normal_(self.register_tokens, std=1e-6)  # as DINOv2
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def interpolate_pos_encoding(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Position embeddings for an h x w image: the learned grid, resized
        bicubically if needed."""
        npatch = x.shape[1] - 1
        N = self.pos_embed.shape[1] - 1
        h0, w0 = h // self.patch_size, w // self.patch_size
        if npatch == N and h0 == w0:
            return self.pos_embed
        grid = resize_pos_grid(self.pos_embed[:, 1:], h0, w0)  # (1, h0*w0, D)
        return torch.cat(
            (self.pos_embed[:, :1], grid), dim=1
        )  # (1, 1+h0*w0, D): the CLS entry as it is

    def prepare_tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) -> tokens (B, 1+R+N, D): [cls; registers; patches], positions added
        to cls and patches. `masks` (B, N) bool puts the mask token in place of the masked patches'
        embeddings, before the positions are added (DINOv2's `prepare_tokens_with_masks`)."""
        check_image_batch(
            x, self.patch_size, self.patch_embed.in_chans
        )  # the batch's one input check
        B, _, h, w = x.shape
        x = (
            self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        )  # (B, N, D): `patch_embed(x)`, checked above
        if masks is not None:
            x = self.mask_patches(x, masks)  # (B, N, D)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)  # (B, N+1, D)
        x = x + self.interpolate_pos_encoding(x, h, w)  # (B, N+1, D)
        if self.num_register_tokens > 0:
            x = torch.cat(
                (x[:, :1], self.register_tokens.expand(B, -1, -1), x[:, 1:]), dim=1
            )  # (B, 1+R+N, D): registers after CLS, with no position
        return self.pos_drop(x)

    def mask_patches(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Patch embeddings (B, N, D) with the masked ones ((B, N) bool) replaced by the mask
        token."""
        if not hasattr(self, "mask_token"):
            raise ValueError("masks need a mask token: build the model with use_mask_token=True")
        if masks.shape != x.shape[:2]:
            raise ValueError(
                f"masks {tuple(masks.shape)} do not match the patches {tuple(x.shape[:2])}"
            )
        return torch.where(
            masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x
        )  # (B, N, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The CLS token after the final norm, (B, D): the image's feature."""
        x = self.prepare_tokens(x)  # (B, 1+R+N, D)
        blocks = list(self.blocks)
        if (
            self.fast
        ):  # nothing reads the last block's other N outputs: it computes the CLS row alone
            blocks[-1] = self.blocks[-1].forward_cls  # (B, N+1, D) -> (B, 1, D)
        recompute = (
            self.grad_checkpointing and self.training and torch.is_grad_enabled()
        )  # save memory, not time
        for blk in blocks:
            x = (
                torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
                if recompute
                else blk(x)
            )  # (B, N+1, D)
        x = self.norm(x)  # (B, N+1, D), or (B, 1, D) when fast
        return self.head(x[:, 0])  # (B, D)

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """All tokens after the final norm: (B, 1+R+N, D) ([cls; registers; patches])."""
        return self.norm(self.forward_prenorm(x, masks))  # (B, 1+R+N, D)

    def forward_prenorm(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """All tokens after the last block, before the final norm: (B, 1+R+N, D)."""
        x = self.prepare_tokens(x, masks)  # (B, 1+R+N, D)
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for blk in self.blocks:
            x = (
                torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
                if recompute
                else blk(x)
            )  # (B, 1+R+N, D)
        return x

    def forward_features_dict(
        self, x: torch.Tensor, masks: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor | None]:
        """DINOv2's `forward_features`: the tokens after the final norm, split by kind.

        {"x_norm_clstoken": (B, D), "x_norm_regtokens": (B, R, D), "x_norm_patchtokens": (B, N, D),
        "x_prenorm": (B, 1+R+N, D), "masks": masks}."""
        x = self.forward_prenorm(x, masks)  # (B, 1+R+N, D)
        x_norm = self.norm(x)  # (B, 1+R+N, D)
        R = self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],  # (B, D)
            "x_norm_regtokens": x_norm[:, 1 : R + 1],  # (B, R, D)
            "x_norm_patchtokens": x_norm[:, R + 1 :],  # (B, N, D)
            "x_prenorm": x,  # (B, 1+R+N, D)
            "masks": masks,
        }

    def extra_repr(self) -> str:
        return f"fast={self.fast}"

    @torch.no_grad()
    def get_last_selfattention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention weights of the last block: (B, heads, T, T) with T = 1+R+N; row 0 is what CLS
        looks at, columns 1+R onwards are the patches."""
        x = self.prepare_tokens(x)
        for blk in self.blocks[:-1]:
            x = blk(x)
        _, attn = self.blocks[-1](x, return_attention=True)
        return attn

    @torch.no_grad()
    def get_intermediate_layers(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        """Normalised outputs (B, 1+R+N, D) of the last `n` blocks, as DINO's
        linear evaluation uses."""
        x = self.prepare_tokens(x)
        out = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if len(self.blocks) - i <= n:
                out.append(self.norm(x))
        return out


class ArchSize(NamedTuple):
    embed_dim: int
    depth: int
    num_heads: int
    letter: str  # the short name: ViT-S/16 is vit_small with 16 px patches


# the package's one list of architectures (DeiT's and DINO's sizes; mlp_ratio 4, qkv_bias)
ARCHS = {
    "vit_tiny": ArchSize(192, 12, 3, "Ti"),
    "vit_small": ArchSize(384, 12, 6, "S"),
    "vit_base": ArchSize(768, 12, 12, "B"),
}


def build_vit(
    arch: str, patch_size: int = 12, img_size: int | None = None, **kwargs
) -> VisionTransformer:
    """One of ARCHS; img_size defaults to the multiple of the patch size nearest 224."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    size = ARCHS[arch]
    return VisionTransformer(
        img_size=img_size or default_img_size(patch_size),
        patch_size=patch_size,
        embed_dim=size.embed_dim,
        depth=size.depth,
        num_heads=size.num_heads,
        mlp_ratio=4,
        qkv_bias=True,
        **kwargs,
    )


def model_name(arch: str, patch_size: int) -> str:
    """ "ViT-S/16" for ("vit_small", 16)."""
    return f"ViT-{ARCHS[arch].letter}/{patch_size}" if arch in ARCHS else f"{arch}/{patch_size}"


def vit_tiny(patch_size: int = 12, img_size: int | None = None, **kwargs) -> VisionTransformer:
    return build_vit("vit_tiny", patch_size, img_size, **kwargs)


def vit_small(patch_size: int = 12, img_size: int | None = None, **kwargs) -> VisionTransformer:
    return build_vit("vit_small", patch_size, img_size, **kwargs)


def vit_base(patch_size: int = 12, img_size: int | None = None, **kwargs) -> VisionTransformer:
    return build_vit("vit_base", patch_size, img_size, **kwargs)
