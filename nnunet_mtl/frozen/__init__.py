"""Heads on a frozen nnU-Net: pooled encoder features of any trained model, and linear probes on them.

* ``pooling``: per-stage feature pools accumulated over every network forward of one case.
* ``cache``: the model's identity (checkpoint path, size, mtime) and the on-disk feature cache.
* ``extract``: the model's own sliding window, with hooks on ``network.encoder``; case sources
  (preprocessed cases or raw images).
* ``probe``: logistic regression / ridge fitted on cached features (``FrozenEncoderProbe``).
* ``heads_model``: one probe per fold of a stock model's own split (out-of-fold validation), saved as a
  frozen-heads folder (``nnunet_mtl_add_heads``, ``pipeline.py --add_heads``).
* ``heads_predictor``: a frozen-heads folder as a predictor (stock masks + the probes' outputs) that
  ``inference.load_predictor`` returns and ``inference.predict_folder`` drives (``nnunet_mtl_predict -m``).
"""
