"""PCA reduction, whitening and L2 normalisation of features, in torch.

DeepCluster (Caron, Bojanowski, Joulin, Douze, "Deep Clustering for Unsupervised Learning of
Visual Features", ECCV 2018, section 3.3 and its code's ``preprocess_features``) prepares the
features of the whole dataset for k-means in three steps: PCA to 256 dimensions, whitening
(every kept direction scaled to unit variance: faiss's ``PCAMatrix`` with ``eigen_power =
-0.5``) and L2 normalisation of each row. With ``X`` the features ``[N, D]``, ``mu`` their
mean, ``C = (X - mu)^T (X - mu) / N = U diag(lambda) U^T`` the eigendecomposition of their
covariance (eigenvalues in decreasing order) and ``U_d`` its first ``d`` eigenvectors:

    Y = (X - mu) U_d diag(lambda_1..d + eps)^(-1/2),        Z_i = Y_i / ||Y_i||

so that ``Y`` has zero mean and (up to ``eps``) identity covariance. ``eps`` (a fraction of
the largest eigenvalue) keeps directions without variance (dead ReLU channels) from being
divided by zero; faiss has no such floor. Each eigenvector's sign is fixed (its largest
entry positive), so the result does not depend on the eigensolver's sign convention.

The covariance is accumulated in float64 (a ``[D, D]`` matrix: small) from float32 row
blocks, so 60,000 x 512 features need no float64 copy of the whole matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fewlabels.threads import one_thread

__all__ = ["PCAWhitening", "fit_pca_whitening", "pca_whiten_normalize"]

# Rows per block when accumulating the covariance.
_ROW_BLOCK = 8192


@dataclass
class PCAWhitening:
    """A fitted PCA-whitening: ``mean [D]``, ``components [D, d]`` (eigenvectors as columns,
    by decreasing eigenvalue), ``eigenvalues [d]`` and ``scales [d]`` (their inverse square
    roots, floored)."""

    mean: torch.Tensor
    components: torch.Tensor
    eigenvalues: torch.Tensor
    scales: torch.Tensor

    @property
    def dim(self) -> int:
        return self.components.shape[1]

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """Project ``features [M, D]`` to ``[M, d]`` whitened coordinates (float32)."""
        centred = features.float() - self.mean
        return (centred @ self.components) * self.scales


@torch.no_grad()
def fit_pca_whitening(features: torch.Tensor, dim: int | None = None, *,
                      eps: float = 1e-6) -> PCAWhitening:
    """Fit PCA-whitening to ``features [N, D]``, keeping ``dim`` directions (``None`` or a
    ``dim`` of at least ``D``: all ``D``). ``eps``: the eigenvalue floor, as a fraction of
    the largest eigenvalue."""
    if features.ndim != 2 or features.shape[0] < 1:
        raise ValueError(f"PCA needs features of shape [N, D], got {tuple(features.shape)}")
    if dim is not None and dim < 1:
        raise ValueError(f"the PCA dimension must be positive, got {dim}")
    count, width = features.shape
    kept = width if dim is None else min(dim, width)
    mean = features.double().mean(0)
    covariance = torch.zeros(width, width, dtype=torch.float64, device=features.device)
    mean32 = mean.float()
    for start in range(0, count, _ROW_BLOCK):
        block = features[start:start + _ROW_BLOCK].float() - mean32
        covariance += (block.T @ block).double()
    covariance /= count
    eigenvalues, eigenvectors = _eigh_one_thread(covariance)  # ascending
    eigenvalues = eigenvalues.flip(0)[:kept].clamp_min(0)
    eigenvectors = eigenvectors.flip(1)[:, :kept]
    # a fixed sign: the entry of largest magnitude of every eigenvector is positive
    largest = eigenvectors.abs().argmax(0)
    signs = torch.sign(eigenvectors[largest, torch.arange(kept, device=features.device)])
    eigenvectors = eigenvectors * torch.where(signs == 0, 1.0, signs)
    floor = eps * float(eigenvalues[0]) if kept else 0.0
    scales = (eigenvalues + max(floor, 1e-30)).rsqrt()
    return PCAWhitening(mean=mean32, components=eigenvectors.float(),
                        eigenvalues=eigenvalues.float(), scales=scales.float())


def _eigh_one_thread(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` on one CPU thread: for a 512 x 512 matrix it takes 0.04 s there,
    and 0.3-4 s on two threads when another process holds a core (measured on this
    machine), so the threads only wait for each other."""
    if matrix.device.type != "cpu":
        return torch.linalg.eigh(matrix)
    with one_thread():
        return torch.linalg.eigh(matrix)


@torch.no_grad()
def pca_whiten_normalize(features: torch.Tensor, dim: int | None = 256, *,
                         eps: float = 1e-6) -> torch.Tensor:
    """DeepCluster's preprocessing for k-means: PCA to ``dim`` dimensions, whitened, each
    row L2-normalised; float32 ``[N, min(dim, D)]``."""
    whitening = fit_pca_whitening(features, dim, eps=eps)
    return F.normalize(whitening(features), dim=1)
