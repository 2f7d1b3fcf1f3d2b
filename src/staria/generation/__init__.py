"""Generation stage: sample pieces from a trained checkpoint and write them for evaluation."""
