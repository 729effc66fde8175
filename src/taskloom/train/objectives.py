"""Training objectives, one per task type, each a plain function of embeddings and targets.

- classification: cross-entropy of a linear head over the pooled, L2-normalised embedding;
- pair_similarity: CoSENT (Su, 2022): every pair whose gold score is higher must get a higher cosine,
  or cosine-MSE: the cosine must equal the gold score;
- retrieval: InfoNCE with in-batch negatives (plus the rows' own negatives) at a low temperature.
"""

from __future__ import annotations

COSENT_SCALE = 20.0
INFONCE_TEMPERATURE = 0.05


def classification_loss(logits, targets):
    import torch.nn.functional as F

    return F.cross_entropy(logits.float(), targets)


def cosent_loss(cosines, scores, scale: float = COSENT_SCALE):
    """log(1 + Σ_{s_i > s_j} exp(scale·(cos_j − cos_i))): a ranking loss on the cosines of the pairs."""
    import torch

    cosines = cosines.float() * scale
    diff = cosines[None, :] - cosines[:, None]  # diff[i, j] = cos_j - cos_i
    wrong = scores[:, None] > scores[None, :]  # pairs where i should score above j
    diff = diff[wrong]
    zero = torch.zeros(1, device=diff.device, dtype=diff.dtype)
    return torch.logsumexp(torch.cat([zero, diff]), dim=0)


def cosine_mse_loss(cosines, scores):
    """Mean squared distance between each pair's cosine and its gold score: the cosine itself becomes
    the calibrated similarity, which is what a Pearson correlation rewards."""
    return ((cosines.float() - scores.float()) ** 2).mean()


def info_nce_loss(queries, documents, positives, temperature: float = INFONCE_TEMPERATURE):
    """Cross-entropy over query·document similarities: `documents[positives[i]]` is query i's answer,
    every other document (the other rows' answers, the rows' given negatives) is a negative. Documents
    are de-duplicated by the caller, so two queries sharing an answer never push it away."""
    import torch.nn.functional as F

    logits = queries.float() @ documents.float().T / temperature
    return F.cross_entropy(logits, positives)


# pair_similarity objectives by name (taskloom.tasks.types.PAIR_OBJECTIVE picks one)
PAIR_LOSSES = {"cosine_mse": cosine_mse_loss, "cosent": cosent_loss}
