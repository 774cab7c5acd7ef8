"""Evaluation: descriptors, distances, Market-1501 metrics, re-ranking."""

from sa_reid_jax.evaluation.distances import DistanceRows
from sa_reid_jax.evaluation.distances import pairwise_distances
from sa_reid_jax.evaluation.features import extract_features
from sa_reid_jax.evaluation.metrics import RankResult
from sa_reid_jax.evaluation.metrics import evaluate_rank
from sa_reid_jax.evaluation.rerank import re_rank
from sa_reid_jax.evaluation.rerank import re_rank_descriptors
