"""Two baselines users expect beside CAE+, applied to the features the target model (the SVM) sees.

- ``SpectralSignatures`` (Tran, Li & Madry, NeurIPS 2018): per class, centre the fit data's
  features and take their top right singular vector ``v_c``; a point's score is its squared
  projection ``((x - mean_c) . v_c)^2`` on the direction of its labelled class (poisons that share a
  shift line up along it).
- ``ActivationClustering`` (Chen et al., 2018): per class, project the fit data onto its first
  ``n_components`` principal axes and split it into two clusters with k-means; the smaller cluster
  is the suspect one. A point's score is ``d(big) - d(small)``, its distance to the large cluster's
  centre minus that to the small one's (positive = nearer the suspect cluster); ``predict`` flags
  the points nearer the small cluster when that cluster holds at most ``max_size`` of its class
  (Chen et al.'s relative-size rule), else none of the class.

Both are written here rather than taken from IBM ART: ART's ``SpectralSignatureDefense`` and
``ActivationDefence`` take a fitted ART classifier and compute activations of its hidden layer over
the whole training set at once, whereas here the SVM has no hidden layer (the "activations" are the
input features) and the detectors follow the stage's protocol: fit on the first rounds' pooled
data, score each later round. The computations are a few lines of numpy / scikit-learn.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from poisondetect.checks import check_features, check_fitted, check_labels
from poisondetect.detectors.base import SampleDetector, keyword_init
from poisondetect.errors import PoisonDetectError


def _flat(X: np.ndarray) -> np.ndarray:
    return check_features(X).reshape(len(X), -1).astype(np.float64)


def _per_class(x: np.ndarray, y: np.ndarray, n_classes: int, who: str) -> list[np.ndarray]:
    groups = [x[y == c] for c in range(n_classes)]
    small = [c for c, g in enumerate(groups) if len(g) < 2]
    if small:
        raise PoisonDetectError(f"{who}.fit: class(es) {small} have fewer than 2 points; need more")
    return groups


class SpectralSignatures(SampleDetector):
    """Spectral signatures: squared projection on the top singular vector of the point's class."""

    __init__ = keyword_init(n_classes=2, seed=0)

    def fit(self, X: np.ndarray, y: np.ndarray) -> SpectralSignatures:
        x = _flat(X)
        yy = check_labels(y, len(x), self.n_classes)
        self.means_, self.directions_ = [], []
        for g in _per_class(x, yy, self.n_classes, "SpectralSignatures"):
            mean = g.mean(axis=0)
            _, _, vt = np.linalg.svd(g - mean, full_matrices=False)
            self.means_.append(mean)
            self.directions_.append(vt[0])
        self.means_, self.directions_ = np.stack(self.means_), np.stack(self.directions_)
        return self

    def score_samples(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        check_fitted(self, "directions_")
        x = _flat(X)
        yy = check_labels(y, len(x), self.n_classes)
        if x.shape[1] != self.means_.shape[1]:
            raise PoisonDetectError(
                f"SpectralSignatures: X has {x.shape[1]} features, the fit data had"
                f" {self.means_.shape[1]}"
            )
        return np.einsum("nd,nd->n", x - self.means_[yy], self.directions_[yy]) ** 2


class ActivationClustering(SampleDetector):
    """Activation clustering: 2-means per class on the principal components, smaller = suspect."""

    __init__ = keyword_init(n_components=10, max_size=0.35, n_classes=2, seed=0)

    def fit(self, X: np.ndarray, y: np.ndarray) -> ActivationClustering:
        if not 0.0 < self.max_size <= 0.5 or int(self.n_components) < 1:
            raise PoisonDetectError(
                "ActivationClustering needs n_components >= 1 and max_size in (0, 0.5], got"
                f" {self.n_components}, {self.max_size}"
            )
        x = _flat(X)
        yy = check_labels(y, len(x), self.n_classes)
        self.pcas_, self.centres_, self.sizes_ = [], [], []
        for g in _per_class(x, yy, self.n_classes, "ActivationClustering"):
            k = min(int(self.n_components), g.shape[1], len(g))
            pca = PCA(n_components=k, random_state=self.seed).fit(g)
            z = pca.transform(g)
            km = KMeans(n_clusters=2, n_init=10, random_state=self.seed).fit(z)
            sizes = np.bincount(km.labels_, minlength=2) / len(g)
            order = np.argsort(sizes)  # (small, big)
            self.pcas_.append(pca)
            self.centres_.append(km.cluster_centers_[order])
            self.sizes_.append(sizes[order])
        self.sizes_ = np.stack(self.sizes_)
        return self

    def _distances(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        check_fitted(self, "centres_")
        x = _flat(X)
        yy = check_labels(y, len(x), self.n_classes)
        d = np.zeros((len(x), 2))
        for c in range(self.n_classes):
            m = yy == c
            if m.any():
                z = self.pcas_[c].transform(x[m])
                d[m] = np.linalg.norm(z[:, None, :] - self.centres_[c][None], axis=2)
        return d, yy

    def sub_scores(self, X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """``d_small`` / ``d_big``: distances to the suspect and the large cluster's centres."""
        d, _ = self._distances(X, y)
        return {"d_small": d[:, 0], "d_big": d[:, 1]}

    def score_from(self, sub_scores: dict[str, np.ndarray]) -> np.ndarray:
        return sub_scores["d_big"] - sub_scores["d_small"]

    def score_samples(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.score_from(self.sub_scores(X, y))

    def predict(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Nearer the small cluster, in a class whose small cluster is at most ``max_size``."""
        d, yy = self._distances(X, y)
        suspect_class = self.sizes_[:, 0] <= self.max_size
        return (d[:, 0] < d[:, 1]) & suspect_class[yy]
