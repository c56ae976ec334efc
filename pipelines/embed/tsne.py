"""The embed stage's analysis of a layer's features: a 2-D t-SNE map and measured map quality."""
from __future__ import annotations

import time
from typing import Optional

import numpy as np

from pipelines.errors import StageError

# t-SNE schedule: openTSNE's early exaggeration (250 iterations, factor 12), then plain iterations until
# the KL divergence falls by less than TSNE_TOL (relative) over TSNE_CHECK_EVERY iterations, at most
# TSNE_MAX_ITER. On 10,000 Fashion-MNIST features, 5-NN accuracy and trustworthiness of the map stay
# flat after the first 50-100 plain iterations while later ones cost the most (the map spreads, the
# FFT grid grows): docs/speed.md has the measurement.
TSNE_EXAGGERATION_ITER = 250
TSNE_MAX_ITER = 500
# From TSNE_THREADS_FROM points (the FFT gradient, the embed stage's 10,000-point maps) at most 100 plain
# iterations: on 10,000 points of three kinds of features (the Simple CNN's fc1 and logits, raw pixels)
# 100 instead of the 250 to 300 the rule above ran left 5-NN accuracy on the map within 0.35 pp and
# trustworthiness within 0.0001 of the longer schedule's, and took 4.8 against 12.7 to 14.9 s a map
# (benchmarks/tsne.py's features, docs/speed.md). Smaller maps take a fraction of a second either way,
# and on 200 points the shorter schedule moved trustworthiness by up to 0.005: they keep the rule.
TSNE_MAX_ITER_LARGE = 100
TSNE_CHECK_EVERY = 50
TSNE_TOL = 0.02
# Wide layers are first reduced by PCA (randomised, seeded) to PCA_COMPONENTS, as scikit-learn's TSNE
# documentation advises: on thousands of dimensions the neighbour search dominates (a 6,272-d layer
# of 10,000 points: 51 s of a 56 s map, 2.3 s after PCA; 2,048-d: 27 s against 18 s) and the map keeps
# its quality, which quality() still measures against the layer's own features (docs/speed.md). At
# 128 and 512 dimensions it gained nothing, and on a few hundred points there is nothing to gain.
PCA_ABOVE_DIMS = 1024
PCA_MIN_POINTS = 500
PCA_COMPONENTS = 50
# Below this many points the map's gradient is Barnes-Hut, whose threads mostly wait on each other:
# one thread is faster, and under load much faster (2 shared cores at load 6.5, medians of interleaved
# runs: 60 points 0.15 s on one thread against 0.91 s on two, worst 0.4 s against 4.4 s; 2,000 points
# 7.0 s against 16.0 s), with the same map (identical coordinates, checked at 60 and 2,000 points).
TSNE_THREADS_FROM = 10_000
# Up to this many points the perplexity's neighbours are found exactly, by brute force (scikit-learn's
# blocked distance matrix: one matrix product per block of rows), rather than by Annoy's approximate
# forest: on 10,000 points of 10 to 512 dimensions it took 1.3 to 4.5 s against Annoy's 8 to 10 s
# (2 shared cores, benchmarks/tsne.py; docs/speed.md), and it is exact. Its cost grows with the
# square of the points, so larger maps keep Annoy.
EXACT_NEIGHBOURS_UP_TO = 20_000


def check_finite(feats: np.ndarray, stage: str, role: str, module: str) -> None:
    """Stop in one line when a layer's features hold NaN or inf (a model whose training diverged):
    neither a map nor its quality measures can be computed from them."""
    bad = int((~np.isfinite(feats).all(axis=1)).sum())
    if bad:
        raise StageError(f"{stage}: the {role} layer `{module}` gives non-finite features (NaN or inf) for {bad} "
                         f"of {len(feats)} images, so no t-SNE map can be made; the model's training diverged "
                         f"(its train metrics' `diagnosis` and learning curves show where)")


def neighbour_search(n: int, neighbours: str = "auto") -> dict:
    """openTSNE's neighbour search for n points: "auto" is exact by brute force up to
    EXACT_NEIGHBOURS_UP_TO, else Annoy ("exact" and "annoy" force one). Either on one thread (the
    caller's n_jobs=1): Annoy's multi-threaded build may order its trees differently per run."""
    if neighbours not in ("auto", "exact", "annoy"):
        raise ValueError(f"neighbours {neighbours!r}: allowed are auto, exact, annoy")
    if neighbours == "exact" or (neighbours == "auto" and n <= EXACT_NEIGHBOURS_UP_TO):
        return {"method": "exact", "knn_kwargs": {"algorithm": "brute"}}
    return {"method": "annoy"}


def tsne_2d(x: np.ndarray, seed: int, perplexity: float, n_jobs: int = -1,
            info: Optional[dict] = None, neighbours: str = "auto") -> tuple[np.ndarray, str]:
    """2-D t-SNE of a layer's features (of their PCA_COMPONENTS leading components, for a wide layer):
    openTSNE (FFT gradient from 10,000 points, Barnes-Hut below; exact neighbours up to
    EXACT_NEIGHBOURS_UP_TO points, Annoy's approximate ones beyond) on `n_jobs` threads (-1: every
    core; one below TSNE_THREADS_FROM points), stopped once converged;
    scikit-learn's Barnes-Hut when openTSNE is not installed. `info`, if given, receives the
    iterations run, the final KL divergence and, for a wide layer, the PCA components it was reduced to.
    `neighbours`: neighbour_search's choice (benchmarks/tsne.py compares them)."""
    perplexity = min(perplexity, max(2.0, (len(x) - 1) / 3))
    x = x.astype(np.float32)
    if x.shape[1] > PCA_ABOVE_DIMS and len(x) >= PCA_MIN_POINTS:
        from sklearn.decomposition import PCA

        x = PCA(PCA_COMPONENTS, svd_solver="randomized", random_state=seed).fit_transform(x).astype(np.float32)
        if info is not None:
            info["pca_components"] = PCA_COMPONENTS
    try:
        from openTSNE import TSNEEmbedding, affinity, initialization
    except ImportError:
        from sklearn.manifold import TSNE as SkTSNE

        xy = SkTSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
        return np.asarray(xy, dtype=np.float32), "scikit-learn"
    if len(x) < TSNE_THREADS_FROM:
        n_jobs = 1
    aff = affinity.PerplexityBasedNN(x, perplexity=perplexity, n_jobs=1, random_state=seed,
                                     **neighbour_search(len(x), neighbours))
    emb = TSNEEmbedding(initialization.pca(x, random_state=seed), aff, n_jobs=n_jobs, random_state=seed)
    emb = emb.optimize(TSNE_EXAGGERATION_ITER, exaggeration=12, momentum=0.8)
    kls: list[float] = []

    def converged(_it, kl, _e) -> bool:
        kls.append(float(kl))
        return len(kls) >= 2 and kls[-2] - kls[-1] < TSNE_TOL * kls[-2]

    plain = TSNE_MAX_ITER_LARGE if len(x) >= TSNE_THREADS_FROM else TSNE_MAX_ITER
    emb = emb.optimize(plain, momentum=0.8, callbacks=converged, callbacks_every_iters=TSNE_CHECK_EVERY)
    if info is not None:  # the callback ran after every TSNE_CHECK_EVERY plain iterations
        info.update(iterations=TSNE_EXAGGERATION_ITER + TSNE_CHECK_EVERY * len(kls),
                    kl_divergence=kls[-1] if kls else None)
    return np.asarray(emb, dtype=np.float32), "openTSNE"


def quality(feats: np.ndarray, xy: np.ndarray, y: np.ndarray, seed: int, max_points: int = 2000) -> dict:
    """Measured versions of the lab's by-eye comments on a layer's clusters.

    silhouette: cohesion vs separation of the classes (-1..1); knn: 5-NN accuracy, 5-fold
    cross-validated (%), on the features and on the t-SNE map; linear: 5-fold logistic-regression
    accuracy on the features (%), i.e. linear separability; trustworthiness: how well the 2-D map
    keeps feature-space neighbours (0..1). Computed on a seeded subsample of at most max_points.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.manifold import trustworthiness
    from sklearn.metrics import silhouette_score
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(len(y))[:max_points])
    f, m, lab = feats[idx].astype(np.float32), xy[idx], y[idx]
    out: dict = {"subsample": int(len(idx))}
    if len(np.unique(lab)) < 2:
        return out
    folds = int(min(5, np.bincount(lab).min()))
    out["silhouette_features"] = float(silhouette_score(f, lab))
    out["silhouette_tsne"] = float(silhouette_score(m, lab))
    if folds >= 2:
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        k = min(5, max(1, len(lab) // (2 * folds)))
        knn = KNeighborsClassifier(k)
        out["knn_acc_features"] = float(cross_val_score(knn, f, lab, cv=cv).mean() * 100)
        out["knn_acc_tsne"] = float(cross_val_score(knn, m, lab, cv=cv).mean() * 100)
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        out["linear_probe_acc"] = float(cross_val_score(probe, f, lab, cv=cv).mean() * 100)
    out["trustworthiness"] = float(trustworthiness(f, m, n_neighbors=min(10, len(lab) // 3)))
    out["seconds"] = time.perf_counter() - t0
    return out
