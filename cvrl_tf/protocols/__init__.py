"""The paper's protocols, each a recipe (a frozen dataclass of typed settings; `cvrl_train`
builds it from gin, Python code directly) and the function that runs it:
pretrain.py (CVRL pretraining), classify.py (linear eval, fine-tune, semi-supervised, the
multi-view test of a trained classifier), knn.py (k-NN on frozen features); and what they
share: multiview.py (the multi-view test), feature_cache.py (linear eval on cached
features), collection.py (views -> videos over a strategy), metrics.py (accuracy,
confusion, k-NN voting; NumPy), reports.py (class names, confusion PNG, predictions CSV)."""
