"""Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021).

Patches of ``patch_size``² pixels are embedded by a strided convolution, a CLS token is prepended,
and pre-norm blocks (LayerNorm -> multi-head self-attention -> residual; LayerNorm -> MLP ->
residual) follow; a final LayerNorm ends the encoder. ``forward(x)`` returns the CLS feature.

Position embeddings are fixed 2-D sin-cos by default, as in MAE (He et al., CVPR 2022) and
MoCo v3 (Chen et al., ICCV 2021, which found them as good as learned ones): they cost no
parameters and are recomputed exactly for any grid, so smaller crops (DINO's local views) need no
interpolation. ``position_embedding="learned"`` gives the original ViT's learned table,
bicubically resized for a different grid. The CLS token gets no position embedding.

For masked image modelling, :meth:`VisionTransformer.forward_tokens` can drop patch tokens before
the blocks (``keep_indices``, MAE: a gather, no loops) or replace them by a mask token (``mask``,
SimMIM / BEiT). Attention uses ``F.scaled_dot_product_attention``; the explicit softmax runs only
when attention maps are asked for (DINO's visualisations).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def sincos_position_embedding_2d(embed_dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings ``[grid_h * grid_w, embed_dim]`` (row-major).

    Half of the channels encode the row, half the column; each half is
    ``[sin(pos·ω_i), cos(pos·ω_i)]`` with ``ω_i = 10000^(-i / (embed_dim / 4))`` (Vaswani et al.,
    2017, in 2-D as in MAE). ``embed_dim`` must be divisible by 4.
    """
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # [D/4]
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64),
        torch.arange(grid_w, dtype=torch.float64),
        indexing="ij",
    )

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions.reshape(-1, 1) * omega  # [L, D/4]
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # [L, D/2]

    return torch.cat([encode(rows), encode(cols)], dim=1).float()  # [L, D]


class Attention(nn.Module):
    """Multi-head self-attention with a fused QKV projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        N, T, D = x.shape
        qkv = self.qkv(x).reshape(N, T, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [N, heads, T, head_dim]
        attention = None
        if return_attention:
            scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)  # [N, heads, T, T]
            attention = scores.softmax(dim=-1)
            out = attention @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)  # [N, heads, T, head_dim]
        out = out.transpose(1, 2).reshape(N, T, D)
        return self.proj(out), attention


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))`` (GELU MLP)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, attention = self.attn(self.norm1(x), return_attention)
        x = x + out
        x = x + self.mlp(self.norm2(x))
        return x, attention


class VisionTransformer(nn.Module):
    """ViT encoder returning the CLS feature ``[N, embed_dim]``; see the module docstring.

    ``no_weight_decay`` names the parameters that optimisers leave undecayed (the class token
    and a learned position table, as in MAE and timm).

    Args:
        image_size: side of the (square) training images; the position table is built for it.
        in_channels: channels of the input images.
        patch_size: side of a patch; must divide ``image_size``.
        embed_dim: token width (``feature_dim``); divisible by ``num_heads`` (and by 4 for sin-cos).
        depth: number of blocks.
        num_heads: attention heads per block.
        mlp_ratio: hidden width of the MLP relative to ``embed_dim``.
        position_embedding: ``"sincos"`` (fixed) or ``"learned"``.
    """

    no_weight_decay = ("cls_token", "position_embedding")

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        patch_size: int = 4,
        embed_dim: int = 192,
        depth: int = 6,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        position_embedding: str = "sincos",
    ) -> None:
        super().__init__()
        if image_size % patch_size or embed_dim % num_heads:
            raise ValueError("patch_size must divide image_size and num_heads embed_dim")
        self.patch_size = patch_size
        self.grid_size = image_size // patch_size
        self.num_patches = self.grid_size**2
        self.embed_dim = self.feature_dim = embed_dim
        self.num_heads = num_heads
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.learned_positions = position_embedding == "learned"
        if self.learned_positions:
            table = torch.zeros(1, self.num_patches, embed_dim)
            self.position_embedding = nn.Parameter(table)  # [1, L, D]
            nn.init.trunc_normal_(self.position_embedding, std=0.02)
        else:
            table = sincos_position_embedding_2d(embed_dim, self.grid_size, self.grid_size)[None]
            self.register_buffer("position_embedding", table, persistent=False)  # [1, L, D]
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        """Truncated normal (std 0.02) for linear layers and the patch projection, as in ViT/MAE."""
        nn.init.normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def positions(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position embeddings ``[1, grid_h * grid_w, D]`` for a grid of patches."""
        table = self.position_embedding
        if (grid_h, grid_w) == (self.grid_size, self.grid_size):
            return table
        if not self.learned_positions:
            fresh = sincos_position_embedding_2d(self.embed_dim, grid_h, grid_w)
            return fresh[None].to(table.device, table.dtype)
        square = table.reshape(1, self.grid_size, self.grid_size, -1).permute(0, 3, 1, 2)
        resized = F.interpolate(square, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return resized.flatten(2).transpose(1, 2)  # [1, grid_h * grid_w, D]

    def forward_tokens(
        self,
        x: torch.Tensor,
        keep_indices: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """All token features after the final LayerNorm, ``[N, 1 + L_kept, D]`` (CLS first).

        Args:
            x: images ``[N, C, H, W]``; H and W multiples of ``patch_size``.
            keep_indices: ``[N, L_keep]`` long indices of the patches (row-major, in ``[0, L)``)
                to keep; the others are dropped before the blocks (MAE's encoder).
            mask: ``[N, L]`` bool, True where a patch embedding is replaced by ``mask_token``
                ``[D]`` before the position embedding is added (SimMIM / BEiT).
            return_attention: also return the attention of every block, ``[N, heads, T, T]``.
        """
        tokens = self.patch_embed(x)  # [N, D, h, w]
        grid_h, grid_w = tokens.shape[-2:]
        tokens = tokens.flatten(2).transpose(1, 2)  # [N, L, D]
        if mask is not None:
            if mask_token is None:
                raise ValueError("mask needs a mask_token")
            tokens = torch.where(mask[..., None], mask_token.to(tokens.dtype), tokens)
        tokens = tokens + self.positions(grid_h, grid_w)
        if keep_indices is not None:
            index = keep_indices[..., None].expand(-1, -1, tokens.shape[-1])  # [N, L_keep, D]
            tokens = torch.gather(tokens, 1, index)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # [N, 1, D]
        tokens = torch.cat([cls, tokens], dim=1)  # [N, 1 + L_keep, D]
        attentions = []
        for block in self.blocks:
            tokens, attention = block(tokens, return_attention)
            if attention is not None:
                attentions.append(attention)
        tokens = self.norm(tokens)
        return (tokens, attentions) if return_attention else tokens

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """CLS feature ``[N, D]``; with ``return_attention``, also the per-block attention maps."""
        if return_attention:
            tokens, attentions = self.forward_tokens(x, return_attention=True)
            return tokens[:, 0], attentions
        return self.forward_tokens(x)[:, 0]  # [N, D]

    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Attention of every block, each ``[N, heads, 1 + L, 1 + L]``; rows sum to 1."""
        return self.forward(x, return_attention=True)[1]


def default_patch_size(image_size: int) -> int:
    """The divisor of ``image_size`` up to 16 nearest to ``image_size / 8`` (~8×8 patches).

    28 -> 4 (7×7 patches), 32 -> 4 (8×8), 64 -> 8, 96 -> 12, 224 -> 16 (14×14).
    """
    divisors = [p for p in range(1, min(image_size, 16) + 1) if image_size % p == 0]
    return min(divisors, key=lambda p: (abs(p - image_size / 8), p))
