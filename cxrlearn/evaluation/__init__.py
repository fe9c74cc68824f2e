"""Evaluation: how good is a trained classifier, and how sure can we be?

The modules of lesson 04, bottom up; every function takes arrays (labels, predictions,
probabilities) and returns numbers or figures, and knows nothing of models:

- `metrics`: the confusion matrix, and from it the classification report (per-class
  precision, recall, F1, support; accuracy; macro and weighted averages), sensitivity and
  specificity.
- `roc`: ROC curves and their area, one class against the rest.
- `uncertainty`: 95% intervals (Wilson for accuracy, the bootstrap for the rest).
- `calibration`: reliability bins, the expected calibration error, temperature scaling.
- `report`: the report as scikit-learn's text, with its intervals.
- `plots`: learning curves, confusion matrix, ROC curves, reliability diagram, mistakes.

Lesson: lessons/04_evaluation_metrics.ipynb
"""
