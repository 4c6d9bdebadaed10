"""The two rivals a reviewer names first, on the features the target model (the SVM) sees.

- ``KNNLabelSanitization`` (Paudice, Munoz-Gonzalez & Lupu, "Label Sanitization against Label
  Flipping Poisoning Attacks", ECML-PKDD 2018 workshops): a point whose ``k`` nearest neighbours
  mostly carry another label is suspicious. Score = the share of its ``k`` neighbours whose label
  differs from its own; the paper's rule relabels a point when the most common label among its
  neighbours differs from its own and holds a share ``>= eta`` of them (here: the point is
  flagged instead of relabelled).
- ``LossFilter`` (loss-based filtering, the first step of robust-training methods such as Sever,
  Diakonikolas et al., ICML 2019): fit the task's model (a linear SVM by default, or a logistic
  regression) on the contaminated data and drop the points it fits worst. Score = the negative
  signed margin ``-s * f(x)`` (``s`` = the label as +/-1, ``f`` = the model's decision function),
  which orders the points as their hinge (or logistic) loss does where that loss is positive and
  still ranks the points the loss puts at 0.

Both take labels of any two (kNN: any number of) values and ``X`` as ``(N, D)`` features or
``(N, C, H, W)`` images in ``[0, 1]`` (flattened); neither uses randomness apart from the GMM
decision (seeded with ``seed``).
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors
from sklearn.svm import SVC

from poisondetect.checks import check_features, check_fitted, check_label_vector
from poisondetect.detectors.base import SampleDetector, keyword_init
from poisondetect.detectors.decision import gmm_decision
from poisondetect.errors import PoisonDetectError

REFERENCES = ("fit", "self")


def _flat(X: np.ndarray) -> np.ndarray:
    return check_features(X).reshape(len(X), -1).astype(np.float64)


def _check_choice(who: str, name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise PoisonDetectError(
            f"{who}: {name} must be one of {', '.join(map(str, choices))}, got {value!r}"
        )


def _check_width(who: str, x: np.ndarray, n_features: int) -> None:
    if x.shape[1] != n_features:
        raise PoisonDetectError(
            f"{who}: X has {x.shape[1]} features, the fit data had {n_features}; score points"
            " of the same kind as the fit data"
        )


class KNNLabelSanitization(SampleDetector):
    """kNN label sanitization (Paudice et al. 2018): flag points whose neighbours disagree.

    Parameters: ``k`` neighbours (Euclidean, scikit-learn ``NearestNeighbors``); ``eta`` the
    confidence threshold in ``(0, 1]``; ``reference`` the set the neighbours come from;
    ``decision`` ``"eta"`` (the paper's rule, the default) or ``"gmm"`` (the workflow's common
    2-component mixture on the score, seeded with ``seed``).

    Where the neighbours come from (``reference``):

    - ``"fit"`` (default): from the points given to ``fit``. The ``filter`` command fits and
      scores the same training set, which is Paudice et al.'s setting (each point of the training
      set against the others). In the workflow the reference is the pooled detector rounds
      (contaminated at the same rate as the scored round, ~15-50x more points, so denser
      neighbourhoods; with ``train_on: clean`` a trusted reference), the data every other
      detector learns from. On the digits demo it scored an F1 (eta rule) at least as high as
      ``"self"`` in 7 of the 8 cells.
    - ``"self"``: from the scored set itself, leaving the point out: each evaluation round
      sanitised on its own, as if it were the only training set the defender had (``fit`` then
      only checks the parameters and records the feature count; ``train_on`` changes nothing).

    A point is never its own neighbour: a reference point with the same features *and* the same
    label as the scored point is taken to be the point itself and one such copy is left out (so
    the ``filter`` command, which fits and scores the same points, and ``"self"`` are both
    leave-one-out; a copy with another label, such as a flipped-label duplicate, stays a
    neighbour).

    Score (``score_samples``, higher = more suspicious) = ``neighbour_disagreement``, the share
    of the ``k`` neighbours whose label differs from the point's own. ``predict`` with ``"eta"``
    flags a point when a label other than its own is the most common among its neighbours, i.e.
    strictly more common than its own label (a tie keeps the given label), and holds a share
    ``>= eta`` (two classes, ``eta <= 0.5``: more than half of the neighbours disagree).
    Sub-scores: ``neighbour_disagreement`` and ``neighbour_distance`` (mean Euclidean distance to
    the ``k`` neighbours).
    """

    __init__ = keyword_init(k=10, eta=0.5, reference="fit", decision="eta", seed=0)

    def _check_params(self) -> None:
        who = type(self).__name__
        if isinstance(self.k, bool) or int(self.k) != self.k or self.k < 1:
            raise PoisonDetectError(f"{who}: k must be an integer >= 1, got {self.k!r}")
        if not 0.0 < float(self.eta) <= 1.0:
            raise PoisonDetectError(f"{who}: eta must be in (0, 1], got {self.eta!r}")
        _check_choice(who, "reference", self.reference, REFERENCES)
        _check_choice(who, "decision", self.decision, ("eta", "gmm"))

    def fit(self, X: np.ndarray, y: np.ndarray) -> KNNLabelSanitization:
        self._check_params()
        x = _flat(X)
        yy = check_label_vector(y, len(x))
        self.n_features_in_ = x.shape[1]
        if self.reference == "fit":
            if len(x) <= self.k:
                raise PoisonDetectError(
                    f"KNNLabelSanitization.fit: {len(x)} points cannot give each point k ="
                    f" {self.k} neighbours besides itself; lower k or fit on more points"
                )
            self.reference_x_, self.reference_y_ = x, yy
            self.nn_ = NearestNeighbors(n_neighbors=int(self.k) + 1).fit(x)
        return self

    def _neighbours(self, X: np.ndarray, y: np.ndarray):
        """``(x, y, neighbour labels (n, k), neighbour distances (n, k))`` of the scored points."""
        check_fitted(self, "n_features_in_")
        self._check_params()
        k = int(self.k)
        x = _flat(X)
        yy = check_label_vector(y, len(x))
        _check_width("KNNLabelSanitization", x, self.n_features_in_)
        if self.reference == "fit":
            ref_x, ref_y, nn = self.reference_x_, self.reference_y_, self.nn_
        else:
            if len(x) <= k:
                raise PoisonDetectError(
                    f"KNNLabelSanitization: {len(x)} points cannot give each point k = {k}"
                    " neighbours besides itself; lower k or score more points at once"
                )
            ref_x, ref_y = x, yy
            nn = NearestNeighbors(n_neighbors=k + 1).fit(x)
        dist, idx = nn.kneighbors(x, n_neighbors=k + 1)
        # The point itself among its k + 1 nearest: identical features and label (checked exactly,
        # on the few candidates at a distance within rounding of 0); drop it, else the farthest.
        is_self = np.zeros(idx.shape, dtype=bool)
        rows, cols = np.nonzero(dist < 1e-3)
        j = idx[rows, cols]
        is_self[rows, cols] = (ref_y[j] == yy[rows]) & np.all(ref_x[j] == x[rows], axis=1)
        drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
        keep = np.ones(idx.shape, dtype=bool)
        keep[np.arange(len(x)), drop] = False
        n = len(x)
        return x, yy, ref_y[idx[keep].reshape(n, k)], dist[keep].reshape(n, k)

    def sub_scores(self, X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """``neighbour_disagreement`` (share of the k neighbours with another label) and
        ``neighbour_distance`` (mean distance to them)."""
        _, yy, labels, dist = self._neighbours(X, y)
        return {
            "neighbour_disagreement": (labels != yy[:, None]).mean(axis=1),
            "neighbour_distance": dist.mean(axis=1),
        }

    def score_from(self, sub_scores: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(sub_scores["neighbour_disagreement"], dtype=np.float64)

    def score_samples(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.score_from(self.sub_scores(X, y))

    def predict(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """True = poisoned: the paper's relabelling rule (``decision="eta"``) or the GMM."""
        if self.decision == "gmm":
            return gmm_decision(self.score_samples(X, y), seed=self.seed)
        _, yy, labels, _ = self._neighbours(X, y)
        k = labels.shape[1]
        own = (labels == yy[:, None]).sum(axis=1)
        top_other = np.zeros(len(yy), dtype=np.int64)
        for c in np.unique(labels):  # the most common label other than the point's own
            count = (labels == c).sum(axis=1)
            top_other = np.where(yy != c, np.maximum(top_other, count), top_other)
        return (top_other > own) & (top_other >= float(self.eta) * k - 1e-9)


class LossFilter(SampleDetector):
    """Loss-based filtering: the points a model fitted on the contaminated data fits worst.

    Parameters: ``loss_model`` ``"svm"`` (scikit-learn ``SVC`` with ``kernel`` -- ``"linear"``
    by default, the target model of the MNIST tasks -- ``C`` and ``gamma``, as the task's SVM) or
    ``"logistic"`` (``LogisticRegression`` with ``C``; ``kernel`` and ``gamma`` unused);
    ``reference``; ``decision`` ``"margin"`` (default: flag the points on the wrong side of the
    model's boundary, margin < 0, the method's own parameter-free rule) or ``"gmm"`` (the
    workflow's 2-component mixture on the score, seeded with ``seed``; on the digits demo it
    flagged too many points in a few rounds of the semi-optimal attack).

    Which model scores a point (``reference``):

    - ``"fit"`` (default): the model fitted in ``fit`` on the contaminated data (in the workflow
      the pooled detector rounds, a training set ~50x larger than one round); the filter command
      fits and scores the same points, which is the method as published (the model is trained on
      the very points it filters). A model fitted on one small round can fit its own poisons (a
      linear SVM on 100 points in 64 or 784 dimensions separates almost any labelling), hiding
      them; the pooled model cannot.
    - ``"self"``: a model refitted on each scored set, scoring that set (the method applied to
      each round on its own).

    The two classes of ``fit``'s labels are mapped to -1 / +1 (sorted order); scored labels must
    be among them. Sub-scores: ``margin`` (``s * f(x)``) and ``loss`` (the model's loss of the
    point under its own label: hinge ``max(0, 1 - margin)`` or logistic
    ``log(1 + exp(-margin))``); score = ``-margin``.
    """

    __init__ = keyword_init(
        loss_model="svm",
        C=None,
        kernel=None,
        gamma=None,
        svm=None,
        reference="fit",
        decision="margin",
        seed=0,
    )

    def _svm_setting(self, name: str, default):
        """``C``, ``kernel`` or ``gamma``: the detector's own, else the task's SVM's (``svm``, the
        workflow passes the task's SVC arguments), else the default."""
        own = getattr(self, name)
        return own if own is not None else (self.svm or {}).get(name, default)

    def _check_params(self) -> None:
        who = type(self).__name__
        _check_choice(who, "loss_model", self.loss_model, ("svm", "logistic"))
        kernel, C, gamma = (
            self._svm_setting(k, d)
            for k, d in (("kernel", "linear"), ("C", 1.0), ("gamma", "scale"))
        )
        _check_choice(who, "kernel", kernel, ("linear", "rbf"))
        _check_choice(who, "reference", self.reference, REFERENCES)
        _check_choice(who, "decision", self.decision, ("margin", "gmm"))
        if isinstance(C, bool) or not isinstance(C, int | float) or not C > 0:
            raise PoisonDetectError(f"{who}: C must be a positive number, got {C!r}")
        if gamma not in ("scale", "auto") and not (
            isinstance(gamma, int | float) and not isinstance(gamma, bool) and gamma > 0
        ):
            raise PoisonDetectError(
                f"{who}: gamma must be 'scale', 'auto' or a positive number, got {gamma!r}"
            )

    def _model(self):
        C = float(self._svm_setting("C", 1.0))
        if self.loss_model == "logistic":
            return LogisticRegression(C=C, max_iter=1000, random_state=self.seed)
        return SVC(
            kernel=self._svm_setting("kernel", "linear"),
            C=C,
            gamma=self._svm_setting("gamma", "scale"),
            random_state=self.seed,
        )

    def _signs(self, y: np.ndarray, classes: np.ndarray, where: str) -> np.ndarray:
        unknown = ~np.isin(y, classes)
        if unknown.any():
            raise PoisonDetectError(
                f"LossFilter.{where}: label(s) {np.unique(y[unknown])[:5].tolist()} are not the"
                f" fit data's classes {classes.tolist()}; score points of the same two classes"
            )
        return np.where(y == classes[1], 1.0, -1.0)

    @staticmethod
    def _two_classes(y: np.ndarray, where: str) -> np.ndarray:
        classes = np.unique(y)
        if len(classes) != 2:
            raise PoisonDetectError(
                f"LossFilter.{where}: the labels hold {len(classes)} class(es)"
                f" {classes[:5].tolist()}; the model needs exactly two"
            )
        return classes

    def fit(self, X: np.ndarray, y: np.ndarray) -> LossFilter:
        self._check_params()
        x = _flat(X)
        yy = check_label_vector(y, len(x))
        self.classes_ = self._two_classes(yy, "fit")
        self.n_features_in_ = x.shape[1]
        if self.reference == "fit":
            self.model_ = self._model().fit(x, self._signs(yy, self.classes_, "fit"))
        return self

    def sub_scores(self, X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """``margin`` = ``s * f(x)`` (< 0: wrong side) and ``loss`` (hinge or logistic)."""
        check_fitted(self, "classes_")
        self._check_params()
        x = _flat(X)
        yy = check_label_vector(y, len(x))
        _check_width("LossFilter", x, self.n_features_in_)
        s = self._signs(yy, self.classes_, "score_samples")
        if self.reference == "fit":
            model = self.model_
        else:
            self._two_classes(yy, "score_samples (reference='self')")
            model = self._model().fit(x, s)
        margin = s * model.decision_function(x)
        if self.loss_model == "logistic":
            loss = np.logaddexp(0.0, -margin)
        else:
            loss = np.maximum(0.0, 1.0 - margin)
        return {"margin": margin, "loss": loss}

    def score_from(self, sub_scores: dict[str, np.ndarray]) -> np.ndarray:
        return -np.asarray(sub_scores["margin"], dtype=np.float64)

    def score_samples(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.score_from(self.sub_scores(X, y))

    def predict(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """True = poisoned: margin < 0 (``decision="margin"``), or the GMM on the score."""
        score = self.score_samples(X, y)
        if self.decision == "margin":
            return score > 0
        return gmm_decision(score, seed=self.seed)
