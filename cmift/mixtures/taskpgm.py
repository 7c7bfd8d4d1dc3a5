"""TaskPGM's energy and its closed-form minimiser (arXiv 2507.12612; docs/MIXTURES.md).

Tasks are the nodes of a Markov random field over mixture proportions p (1'p = 1):

    E(p) = (lam / 2) p' S p  -  beta u' p,        u = S 1

S is a symmetric task-affinity (similarity) matrix. The pairwise term penalises mass on tasks
that behave alike (diversity); the unary term rewards tasks that are like many others
(representativeness, u_i = sum_j S_ij); beta / lam trades one for the other. With the affine
constraint the minimiser is closed form (Lagrange multiplier nu):

    p* = (lam S)^-1 (beta u - nu 1),   nu = (1'(lam S)^-1 beta u - 1) / (1'(lam S)^-1 1)

followed, when an entry is negative, by the Euclidean projection onto the simplex, as the
authors' released code does. S is first made positive definite (its most negative eigenvalue
lifted to `ridge`), so the quadratic is convex and S invertible. NumPy only: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def positive_definite(S: np.ndarray, ridge: float) -> np.ndarray:
    """Symmetrised S, shifted by (max(0, -lambda_min) + ridge) I: convex energy, invertible S.
    The authors' code shifts by |lambda_min| alone, which leaves S singular; the ridge (their
    epsilon, 1e-5) keeps the solve well posed."""
    S = (np.asarray(S, dtype=np.float64) + np.asarray(S, dtype=np.float64).T) / 2
    lowest = float(np.linalg.eigvalsh(S).min())
    return S + (max(0.0, -lowest) + ridge) * np.eye(len(S))


def energy(p: np.ndarray, S: np.ndarray, u: np.ndarray, beta: float, lam: float) -> float:
    return float(0.5 * lam * p @ S @ p - beta * u @ p)


def closed_form(S: np.ndarray, u: np.ndarray, beta: float, lam: float) -> np.ndarray:
    """The minimiser of `energy` subject to 1'p = 1 (S positive definite)."""
    ones = np.ones(len(S))
    A = lam * S
    a_u = np.linalg.solve(A, beta * u)
    a_1 = np.linalg.solve(A, ones)
    nu = (ones @ a_u - 1.0) / (ones @ a_1)
    return a_u - nu * a_1


def project_to_simplex(y: np.ndarray) -> np.ndarray:
    """The Euclidean projection of y onto {p >= 0, 1'p = 1} (sort and threshold)."""
    y = np.asarray(y, dtype=np.float64)
    s = np.sort(y)[::-1]
    cumulative = np.cumsum(s) - 1.0
    k = np.arange(1, len(y) + 1)
    rho = np.nonzero(s - cumulative / k > 0)[0][-1]
    return np.maximum(y - cumulative[rho] / (rho + 1), 0.0)


@dataclass
class Solution:
    p: np.ndarray  # on the simplex
    unconstrained: np.ndarray  # the closed form before projection (may have negative entries)
    projected: bool  # the projection changed it (some proportion would have been negative)
    energy: float  # E(p) with the shifted S


def solve(S: np.ndarray, beta: float = 1.0, lam: float = 1.0, ridge: float = 1e-5) -> Solution:
    """TaskPGM's mixture for the affinity matrix S (u = row sums of the shifted S)."""
    shifted = positive_definite(S, ridge)
    u = shifted @ np.ones(len(S))
    raw = closed_form(shifted, u, beta, lam)
    projected = bool((raw < 0).any())
    p = project_to_simplex(raw) if projected else raw / raw.sum()
    return Solution(p=p, unconstrained=raw, projected=projected,
                    energy=energy(p, shifted, u, beta, lam))


# ----- task affinities from the single-task models' distributions -----------------------------
def jsd_similarity(R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S, D) from R (n_tasks, n_probe, K): D_ij = mean over probes of JSD(R_i(x) || R_j(x))
    in nats, and S = 1 - D / ln 2 in [0, 1] (1 = identical behaviour on the probe set)."""
    R = np.clip(np.asarray(R, dtype=np.float64), 1e-12, None)
    logR = np.log(R)
    n = len(R)
    D = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            M = (R[i] + R[j]) / 2
            logM = np.log(M)
            kl_i = (R[i] * (logR[i] - logM)).sum(-1)
            kl_j = (R[j] * (logR[j] - logM)).sum(-1)
            D[i, j] = D[j, i] = float(np.mean((kl_i + kl_j) / 2))
    return 1.0 - D / np.log(2.0), D


def pmi_similarity(R: np.ndarray) -> np.ndarray:
    """S_ij = log P(Y_i = Y_j) / sum_k P(Y_i = k) P(Y_j = k): the pointwise mutual information of
    the event "models i and j emit the same coordinate" when each draws from its own r on the
    same probe x (P(Y_i = Y_j) = mean_x sum_k r_i(k|x) r_j(k|x)), against the chance agreement of
    their marginals. > 0: they agree on the probes more than their marginals explain."""
    R = np.asarray(R, dtype=np.float64)
    joint = np.einsum("ixk,jxk->ij", R, R) / R.shape[1]
    marginal = R.mean(axis=1)
    chance = marginal @ marginal.T
    return np.log(np.clip(joint, 1e-300, None) / np.clip(chance, 1e-300, None))
