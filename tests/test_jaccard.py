"""The Jaccard score is the competition's figure: checked against a hand computation."""
from __future__ import annotations

import pytest
import torch

from training.segmentation import MaskScore, frames_of_step, jaccard


def test_jaccard_matches_a_hand_computation_over_all_masks_at_once():
    # Two 2x3 masks, 5 classes; class 3 appears only in the prediction, class 4 in neither.
    predicted = torch.tensor([[[0, 1, 1], [2, 2, 0]], [[0, 0, 3], [1, 1, 1]]])
    true = torch.tensor([[[0, 1, 2], [2, 2, 1]], [[0, 0, 0], [1, 1, 2]]])
    # Over all 12 pixels: class 0: hits 3 (pred 4, true 4) -> 3/5; class 1: hits 3, pred 5, true 4 -> 3/6;
    # class 2: hits 2, pred 2, true 4 -> 2/4; class 3: hits 0, pred 1, true 0 -> 0/1; class 4: absent.
    per_class = [3 / 5, 3 / 6, 2 / 4, 0.0, None]
    expected = (3 / 5 + 3 / 6 + 2 / 4 + 0.0) / 4  # class 4 counts in neither sum nor count
    result = jaccard(predicted, true, num_classes=5)
    assert result["per_class_iou"] == pytest.approx(per_class)
    assert result["jaccard"] == pytest.approx(expected)
    # Per-video means would differ: the figure pools every pixel first.
    mean_of_videos = (jaccard(predicted[:1], true[:1], 5)["jaccard"] + jaccard(predicted[1:], true[1:], 5)["jaccard"]) / 2
    assert mean_of_videos != pytest.approx(expected)


def test_accumulating_batches_equals_scoring_all_at_once():
    generator = torch.Generator().manual_seed(0)
    predicted = torch.randint(0, 7, (6, 5, 4), generator=generator)
    true = torch.randint(0, 7, (6, 5, 4), generator=generator)
    score = MaskScore(7)
    for part in range(3):
        score.update(predicted[part * 2:part * 2 + 2], true[part * 2:part * 2 + 2])
    pooled, whole = score.compute(), jaccard(predicted, true, 7)
    assert pooled["jaccard"] == pytest.approx(whole["jaccard"])
    assert pooled["per_class_iou"] == pytest.approx(whole["per_class_iou"])


def test_training_frames_rotate_and_cover_the_window():
    assert frames_of_step(8, 4, 0) == [0, 2, 4, 6] and frames_of_step(8, 4, 1) == [1, 3, 5, 7]
    assert frames_of_step(3, 5, 7) == [0, 1, 2]
