"""The imgq machine-learning library: backbones, weights, preprocessing, registry, inference.

Modules that need TensorFlow import it themselves; ``preprocess``, ``registry``, ``labels`` and
``torch_checkpoint`` do not, so the API can use them without loading TensorFlow.
"""
