"""Synthetic face-embedding galleries fitted to real embeddings: size and test an index before you have the people.

Random unit vectors are a poor stand-in for face embeddings: real templates cluster
tightly by identity, and the impostor scores of a real model spread much wider than
those of independent 512-D directions (the effective dimension of identity centres is
about a hundred, not 512). :func:`fit_synthetic` fits a small generative model to real
labelled embeddings, and :class:`SyntheticGallery` streams galleries of any size from it
(millions of templates, chunk by chunk, never all in memory), with mated probes (fresh
views of enrolled identities) and non-mated probes (identities never enrolled)::

    model = fit_synthetic(embeddings, labels)          # e.g. facematch eval's embeddings of your set
    print(model.check(embeddings, labels).table())     # genuine/impostor quantiles side by side, KS
    gal = SyntheticGallery(model, n_identities=250_000, templates_per_identity=4)
    for ids, owners, vectors in gal.chunks():          # template ids 1.., identity index, (n, d) fp32
        index.add(ids, vectors)
    probes, truth = gal.mated_probes(1000)

The model (every part fitted to, or drawn from, the real set):

- identity centre ``c = unit(a m + Q (s * z))``, ``z ~ N(0, I)``: ``m`` the real embeddings'
  mean direction, ``Q`` a random orthonormal basis, ``s_k^2`` proportional to
  ``k^-alpha`` (``sum s_k^2 = 1``); ``a`` and ``alpha`` set the impostor mean and spread;
- template ``x = cos(t) c + sin(t) u``: ``u`` a unit direction orthogonal to ``c`` drawn
  from a Gaussian with the pooled covariance of the real templates' offsets from their
  identity centres (pose, light and expression directions are shared by all people);
  ``t`` the angle of a real template to its identity's (leave-one-out) centre, taken
  from one real identity per synthetic identity (some people vary more than others),
  jittered, and widened by ``tan(t') = kappa tan(t)``; ``kappa`` sets the genuine median.

``a``, ``alpha`` and ``kappa`` are found by bisection so that synthetic impostor mean,
impostor standard deviation and genuine median equal the real ones; everything else
about the two distributions (their shapes and tails) is a prediction, checked by
:meth:`SyntheticFaces.check`. Twenty-odd real identities cannot say anything about the
impostor tail beyond their own pairs (``1 / pairs``); thresholds far below that
(FPIR over a million templates) rest on the model's Gaussian-like tail.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgumentError

QUANTILES = (0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999)
_MIN_ANGLE, _MAX_ANGLE = 1e-3, 0.5 * math.pi - 1e-3
_FIT_IDENTITIES, _FIT_PER_IDENTITY = 400, 20


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def ks_2samp(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic ``D`` and its asymptotic p-value (independent samples)."""
    a = np.sort(np.asarray(a, np.float64).reshape(-1))
    b = np.sort(np.asarray(b, np.float64).reshape(-1))
    if a.size == 0 or b.size == 0:
        raise InvalidArgumentError("both samples need at least one value")
    grid = np.concatenate([a, b])
    d = float(np.max(np.abs(np.searchsorted(a, grid, "right") / a.size - np.searchsorted(b, grid, "right") / b.size)))
    en = math.sqrt(a.size * b.size / (a.size + b.size))
    lam = (en + 0.12 + 0.11 / en) * d
    if lam < 0.2:
        return d, 1.0
    p = 2.0 * sum((-1) ** (j - 1) * math.exp(-2.0 * j * j * lam * lam) for j in range(1, 101))
    return d, float(min(max(p, 0.0), 1.0))


def pair_scores(
    x: np.ndarray, labels: np.ndarray, *, max_impostor: int = 500_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(genuine, impostor) cosine scores of labelled unit vectors: every same-identity pair, and
    every other pair (or about ``max_impostor`` of them, between two random sets of rows, when
    there are more)."""
    x = np.asarray(x, np.float32)
    labels = np.asarray(labels).reshape(-1)
    n = x.shape[0]
    order = np.argsort(labels, kind="stable")
    xs, ls = x[order], labels[order]
    starts = np.flatnonzero(np.r_[True, ls[1:] != ls[:-1]])
    ends = np.r_[starts[1:], n]
    gen = []
    for size in np.unique(ends - starts):
        first = starts[(ends - starts) == size]
        if size < 2:
            continue
        groups = xs[first[:, None] + np.arange(size)]  # (groups, size, d): one batched product per group size
        s = groups @ groups.transpose(0, 2, 1)
        iu = np.triu_indices(int(size), 1)
        gen.append(s[:, iu[0], iu[1]].reshape(-1))
    genuine = np.concatenate(gen).astype(np.float64) if gen else np.zeros((0,), np.float64)
    total = n * (n - 1) // 2
    if total - genuine.size <= max_impostor:
        s = x @ x.T
        iu = np.triu_indices(n, 1)
        diff = labels[iu[0]] != labels[iu[1]]
        return genuine, s[iu][diff].astype(np.float64)
    rng = np.random.default_rng(seed)
    m = min(n, math.ceil(math.sqrt(2 * max_impostor)))  # two random row sets: one product, m * m pairs
    a, b = rng.choice(n, m, replace=False), rng.choice(n, m, replace=False)
    s = x[a] @ x[b].T
    diff = labels[a][:, None] != labels[b][None, :]
    return genuine, s[diff][:max_impostor].astype(np.float64)


def participation_ratio(vectors: np.ndarray) -> float:
    """Effective dimension ``(sum l)^2 / sum l^2`` of the covariance of ``vectors`` (rows)."""
    v = np.asarray(vectors, np.float64)
    v = v - v.mean(axis=0)
    ev = np.clip(np.linalg.eigvalsh(v.T @ v / max(v.shape[0] - 1, 1)), 0.0, None)
    return float(ev.sum() ** 2 / max(float((ev**2).sum()), 1e-300))


def centre_stats(x: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Identity-centre geometry: centre-centre cosine mean/std, effective dimension of the centres
    (``1 / E[cos^2]`` of centred centre directions), mean cosine of a template to its centre."""
    labels = np.asarray(labels).reshape(-1)
    ids = np.unique(labels)
    cents = _unit(np.stack([x[labels == i].mean(0) for i in ids]).astype(np.float64))
    iu = np.triu_indices(ids.size, 1)
    cc = (cents @ cents.T)[iu]
    centred = _unit(cents - cents.mean(0))
    c2 = (centred @ centred.T)[iu]
    to_centre = np.concatenate([x[labels == i] @ c for i, c in zip(ids, cents, strict=True)])
    return {
        "centre_cos_mean": float(cc.mean()),
        "centre_cos_std": float(cc.std()),
        "centre_effective_dim": float(1.0 / max(float(np.mean(c2**2)), 1e-12)),
        "template_to_centre_cos": float(to_centre.mean()),
    }


@dataclass(frozen=True)
class FitCheck:
    """Synthetic vs real: score quantiles side by side and two-sample KS statistics.

    ``split_half_*`` is the KS distance between two halves of the *real* identities: how far
    two samples of the real population differ by themselves (the yardstick for ``ks_*``;
    the p-values assume independent pairs, which pairs sharing identities are not).
    """

    quantiles: tuple[float, ...]
    real_genuine: tuple[float, ...]
    synthetic_genuine: tuple[float, ...]
    real_impostor: tuple[float, ...]
    synthetic_impostor: tuple[float, ...]
    ks_genuine: float
    ks_genuine_p: float
    ks_impostor: float
    ks_impostor_p: float
    split_half_genuine: float
    split_half_impostor: float
    real_centres: dict[str, float]
    synthetic_centres: dict[str, float]
    real_pairs: tuple[int, int]
    synthetic_pairs: tuple[int, int]

    def table(self) -> str:
        """Markdown: the quantile table, the KS line and the centre geometry."""
        lines = [
            "| quantile | genuine celeb24 | genuine synthetic | impostor celeb24 | impostor synthetic |",
            "|---:|---:|---:|---:|---:|",
        ]
        for i, q in enumerate(self.quantiles):
            lines.append(
                f"| {q:g} | {self.real_genuine[i]:.3f} | {self.synthetic_genuine[i]:.3f} | "
                f"{self.real_impostor[i]:.3f} | {self.synthetic_impostor[i]:.3f} |"
            )
        lines += [
            "",
            f"Two-sample KS, synthetic vs real: genuine D = {self.ks_genuine:.3f} (p = {self.ks_genuine_p:.2g}), "
            f"impostor D = {self.ks_impostor:.3f} (p = {self.ks_impostor_p:.2g}); between two halves of the real "
            f"identities: genuine D = {self.split_half_genuine:.3f}, impostor D = {self.split_half_impostor:.3f}. "
            f"Pairs (genuine, impostor): real {self.real_pairs[0]:,} / {self.real_pairs[1]:,}, synthetic "
            f"{self.synthetic_pairs[0]:,} / {self.synthetic_pairs[1]:,}.",
            "",
            "| identity centres | real | synthetic |",
            "|---|---:|---:|",
        ]
        for key in self.real_centres:
            lines.append(f"| {key} | {self.real_centres[key]:.3f} | {self.synthetic_centres[key]:.3f} |")
        return "\n".join(lines)


@dataclass(frozen=True, eq=False)
class SyntheticFaces:
    """A fitted generative model of labelled face embeddings (see the module docstring)."""

    dim: int
    mean_direction: np.ndarray  # (dim,) unit
    mean_weight: float  # a
    alpha: float  # power-law exponent of the centre spectrum
    basis_seed: int
    within: np.ndarray  # (r, dim): u_raw = z @ within, z ~ N(0, I_r)
    angles: np.ndarray  # real template angles to their identity centre (radians), grouped by identity
    profile_offsets: np.ndarray  # (profiles + 1,) start of each real identity's angles in ``angles``
    kappa: float  # tan(t') = kappa * tan(t)
    jitter: float  # radians of Gaussian jitter on drawn angles
    source: str = ""

    def __post_init__(self) -> None:
        rng = np.random.default_rng([self.basis_seed, 7])
        q, r = np.linalg.qr(rng.standard_normal((self.dim, self.dim)))
        object.__setattr__(self, "_basis", (q * np.sign(np.diag(r))).astype(np.float32))

    @property
    def n_profiles(self) -> int:
        return int(self.profile_offsets.size - 1)

    def centre_scales(self, alpha: float | None = None) -> np.ndarray:
        k = np.arange(1, self.dim + 1, dtype=np.float64)
        s2 = k ** -(self.alpha if alpha is None else alpha)
        return np.sqrt(s2 / s2.sum()).astype(np.float32)

    @property
    def centre_effective_dim(self) -> float:
        """Participation ratio of the centre spectrum (before the mean direction and normalisation)."""
        s2 = self.centre_scales().astype(np.float64) ** 2
        return float(s2.sum() ** 2 / (s2**2).sum())

    # ---- drawing -----------------------------------------------------------------------------
    def centres(
        self, rng: np.random.Generator, n: int, *, a: float | None = None, alpha: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``n`` identity centres (n, dim) float32 and the real identity profile each borrows (n,)."""
        z = rng.standard_normal((n, self.dim), dtype=np.float32) * self.centre_scales(alpha)
        basis: np.ndarray = self.__dict__["_basis"]
        c = z @ basis.T + np.float32(self.mean_weight if a is None else a) * self.mean_direction.astype(np.float32)
        profiles = rng.integers(0, self.n_profiles, n)
        return _unit(c).astype(np.float32), profiles

    def templates(
        self,
        rng: np.random.Generator,
        centres: np.ndarray,
        profiles: np.ndarray,
        per_identity: int,
        *,
        kappa: float | None = None,
    ) -> np.ndarray:
        """``per_identity`` fresh templates of each centre, identity-major: (n * per_identity, dim) float32."""
        n = centres.shape[0] * per_identity
        c = np.repeat(centres, per_identity, axis=0)
        prof = np.repeat(profiles, per_identity)
        start, size = self.profile_offsets[prof], np.diff(self.profile_offsets)[prof]
        pick = start + np.minimum((rng.random(n) * size).astype(np.int64), size - 1)
        t = np.clip(self.angles[pick] + self.jitter * rng.standard_normal(n), _MIN_ANGLE, _MAX_ANGLE)
        t = np.arctan((self.kappa if kappa is None else kappa) * np.tan(t)).astype(np.float32)
        u = rng.standard_normal((n, self.within.shape[0]), dtype=np.float32) @ self.within
        u -= np.einsum("ij,ij->i", u, c)[:, None] * c
        u = _unit(u)
        return _unit(np.cos(t)[:, None] * c + np.sin(t)[:, None] * u).astype(np.float32)

    def sample(
        self, n_identities: int, per_identity: int, seed: int = 0, **params: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """A small labelled set (templates, identity labels) held in memory (for fits and checks)."""
        rng = np.random.default_rng([seed, 11])
        cents, prof = self.centres(rng, n_identities, a=params.get("a"), alpha=params.get("alpha"))
        x = self.templates(rng, cents, prof, per_identity, kappa=params.get("kappa"))
        return x, np.repeat(np.arange(n_identities), per_identity)

    # ---- the fit check -------------------------------------------------------------------------
    def check(self, embeddings: np.ndarray, labels: np.ndarray, *, n_identities: int = 2000, seed: int = 1) -> FitCheck:
        """Compare a synthetic set (``n_identities`` x the real set's median templates per identity)
        with the real one: quantiles, KS distances and centre geometry."""
        x, labels = _check_labelled(embeddings, labels, self.dim)
        per = int(np.median(np.unique(labels, return_counts=True)[1]))
        sx, sl = self.sample(n_identities, per, seed=seed)
        rg, ri = pair_scores(x, labels)
        sg, si = pair_scores(sx, sl, seed=seed)
        ids = np.unique(labels)
        half = np.isin(labels, ids[::2])
        g1, i1 = pair_scores(x[half], labels[half])
        g2, i2 = pair_scores(x[~half], labels[~half])
        q = np.asarray(QUANTILES)
        dg, pg = ks_2samp(rg, sg)
        di, pi = ks_2samp(ri, si)
        return FitCheck(
            quantiles=QUANTILES,
            real_genuine=tuple(np.quantile(rg, q).tolist()),
            synthetic_genuine=tuple(np.quantile(sg, q).tolist()),
            real_impostor=tuple(np.quantile(ri, q).tolist()),
            synthetic_impostor=tuple(np.quantile(si, q).tolist()),
            ks_genuine=dg,
            ks_genuine_p=pg,
            ks_impostor=di,
            ks_impostor_p=pi,
            split_half_genuine=ks_2samp(g1, g2)[0],
            split_half_impostor=ks_2samp(i1, i2)[0],
            real_centres=centre_stats(x, labels),
            synthetic_centres=centre_stats(*self.sample(max(ids.size, 200), per, seed=seed + 1)),
            real_pairs=(rg.size, ri.size),
            synthetic_pairs=(sg.size, si.size),
        )


def _check_labelled(
    embeddings: np.ndarray, labels: np.ndarray, dim: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(embeddings, np.float32)
    lab = np.asarray(labels).reshape(-1)
    if x.ndim != 2 or x.shape[0] != lab.size or (dim is not None and x.shape[1] != dim):
        raise InvalidArgumentError(f"expected (n, d) embeddings with n labels, got {x.shape} and {lab.size}")
    counts = np.unique(lab, return_counts=True)[1]
    if (counts >= 3).sum() < 4:
        raise InvalidArgumentError("fitting needs at least 4 identities with 3 or more templates each")
    return _unit(x.astype(np.float64)).astype(np.float32), lab


def _bisect(f, lo: float, hi: float, target: float, increasing: bool, iters: int = 13) -> float:  # type: ignore[no-untyped-def]
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if (f(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def fit_synthetic(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int = 0,
    within_variance: float = 0.995,
    source: str = "",
    rounds: int = 3,
    fit_sample: tuple[int, int] = (_FIT_IDENTITIES, _FIT_PER_IDENTITY),
) -> SyntheticFaces:
    """Fit :class:`SyntheticFaces` to real unit embeddings ``(n, d)`` with identity ``labels``.

    Identities with fewer than 3 templates are ignored. ``within_variance``: the share of
    the within-identity variance kept in the offset directions (the rest is dropped).
    ``rounds`` of bisection on (kappa, a, alpha), each scoring a synthetic set of
    ``fit_sample`` = (identities, templates each) with the same draw (common random numbers).
    """
    x, lab = _check_labelled(embeddings, labels)
    ids, counts = np.unique(lab, return_counts=True)
    ids = ids[counts >= 3]
    dim = x.shape[1]
    xd = x.astype(np.float64)
    mean = xd.mean(0)
    angles: list[np.ndarray] = []
    offsets: list[np.ndarray] = []
    for i in ids:
        xi = xd[lab == i]
        total = xi.sum(0)
        loo = _unit(total[None, :] - xi)  # each template's leave-one-out centre
        cos = np.clip(np.einsum("ij,ij->i", xi, loo), -1.0, 1.0)
        angles.append(np.arccos(cos))
        c = _unit(total)
        offsets.append(xi - (xi @ c)[:, None] * c)  # the tangent part at the identity centre
    resid = np.concatenate(offsets)
    ev, vec = np.linalg.eigh(resid.T @ resid / resid.shape[0])
    ev, vec = np.clip(ev[::-1], 0.0, None), vec[:, ::-1]
    r = int(np.searchsorted(np.cumsum(ev) / ev.sum(), within_variance) + 1)
    within = (np.sqrt(ev[:r])[:, None] * vec[:, :r].T).astype(np.float32)
    pooled = np.concatenate(angles)
    sizes = np.asarray([a.size for a in angles])
    model = SyntheticFaces(
        dim=dim,
        mean_direction=_unit(mean).astype(np.float32),
        mean_weight=float(np.linalg.norm(mean)),
        alpha=1.0,
        basis_seed=seed,
        within=within,
        angles=pooled,
        profile_offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        kappa=1.0,
        jitter=float(0.25 * pooled.std() * sizes.size**-0.2),
        source=source,
    )
    real_gen, real_imp = pair_scores(x, lab)
    targets = (float(np.median(real_gen)), float(real_imp.mean()), float(real_imp.std()))
    params = {"a": model.mean_weight, "alpha": model.alpha, "kappa": model.kappa}

    def stats(**over: float) -> tuple[float, float, float]:
        p = {**params, **over}
        sx, sl = model.sample(fit_sample[0], fit_sample[1], seed=seed + 101, **p)
        g, imp = pair_scores(sx, sl, max_impostor=100_000, seed=seed)
        return float(np.median(g)), float(imp.mean()), float(imp.std())

    for _ in range(rounds):
        params["kappa"] = _bisect(lambda v: stats(kappa=v)[0], 0.2, 5.0, targets[0], increasing=False)
        params["a"] = _bisect(lambda v: stats(a=v)[1], 0.0, 3.0, targets[1], increasing=True)
        params["alpha"] = _bisect(lambda v: stats(alpha=v)[2], 0.0, 4.0, targets[2], increasing=True)
    return SyntheticFaces(
        dim=dim,
        mean_direction=model.mean_direction,
        mean_weight=params["a"],
        alpha=params["alpha"],
        basis_seed=seed,
        within=within,
        angles=pooled,
        profile_offsets=model.profile_offsets,
        kappa=params["kappa"],
        jitter=model.jitter,
        source=source,
    )


class SyntheticGallery:
    """A gallery of ``n_identities`` x ``templates_per_identity`` synthetic templates, streamed in chunks.

    Deterministic in ``seed``: identity ``i``'s centre is the same whenever it is drawn, so
    mated probes can be made after (or without) streaming the gallery. Template ids are
    ``1 .. n_templates``, identity-major: template ``t`` belongs to identity ``(t - 1) // T``.
    Non-mated probes come from a separate stream of identities that are never enrolled.
    """

    def __init__(
        self,
        model: SyntheticFaces,
        n_identities: int,
        templates_per_identity: int = 4,
        *,
        seed: int = 0,
        block: int = 4096,
    ) -> None:
        if n_identities < 1 or templates_per_identity < 1 or block < 1:
            raise InvalidArgumentError("n_identities, templates_per_identity and block must be positive")
        self.model = model
        self.n_identities = int(n_identities)
        self.per = int(templates_per_identity)
        self.seed = int(seed)
        self.block = int(block)

    @property
    def n_templates(self) -> int:
        return self.n_identities * self.per

    def owners(self, template_ids: np.ndarray) -> np.ndarray:
        """Identity index of each template id."""
        return (np.asarray(template_ids, np.int64) - 1) // self.per

    def _block_centres(self, b: int, stream: int = 1) -> tuple[np.ndarray, np.ndarray]:
        n = min(self.block, self.n_identities - b * self.block) if stream == 1 else self.block
        return self.model.centres(np.random.default_rng([self.seed, stream, b]), n)

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(template ids int64, identity index int64, vectors (n, dim) float32), one block of identities at a time."""
        for b in range(math.ceil(self.n_identities / self.block)):
            cents, prof = self._block_centres(b)
            x = self.model.templates(np.random.default_rng([self.seed, 2, b]), cents, prof, self.per)
            first = b * self.block
            owners = np.repeat(np.arange(first, first + cents.shape[0], dtype=np.int64), self.per)
            ids = first * self.per + 1 + np.arange(x.shape[0], dtype=np.int64)
            yield ids, owners, x

    def mated_probes(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``n`` fresh views of distinct enrolled identities (chosen at random): (probes, identity index)."""
        rng = np.random.default_rng([self.seed, 3, seed])
        who = np.sort(rng.choice(self.n_identities, size=min(n, self.n_identities), replace=False))
        out = np.empty((who.size, self.model.dim), np.float32)
        for b in np.unique(who // self.block):
            sel = np.flatnonzero(who // self.block == b)
            cents, prof = self._block_centres(int(b))
            local = who[sel] - b * self.block
            draw = np.random.default_rng([self.seed, 4, seed, int(b)])
            out[sel] = self.model.templates(draw, cents[local], prof[local], 1)
        perm = rng.permutation(who.size)
        return out[perm], who[perm]

    def non_mated_probes(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` views of identities that are not in the gallery (one each)."""
        out = []
        for b in range(math.ceil(n / self.block)):
            cents, prof = self._block_centres(b + 1000 * seed, stream=5)
            out.append(self.model.templates(np.random.default_rng([self.seed, 6, seed, b]), cents, prof, 1))
        return np.concatenate(out)[:n]


__all__ = [
    "QUANTILES",
    "FitCheck",
    "SyntheticFaces",
    "SyntheticGallery",
    "centre_stats",
    "fit_synthetic",
    "ks_2samp",
    "pair_scores",
    "participation_ratio",
]
