"""The MLflow Model every trained variant is logged as: MLflow's "models from code".

MLflow stores this file itself as the model's code (no pickled Python object; registry.py logs it
by file path, nothing imports it), the whole `pipelines` package (`code_paths`), and the variant's
`model.pt` (config + state dict) as an artifact.
Loading rebuilds the network from the config and reads the tensors with
`torch.load(weights_only=True)`, so loading a model runs no code from the weights file. The SVM
option is the same model: its classifier is stored as the linear head's weight and bias arrays.

Input: uint8 images, shape (n, height, width, channels), as the prepared arrays hold them.
Output: one row per image: `label` (class index), `class` (its name) and `probability` (softmax).
Predictions are made exactly as the evaluate stage makes them (same normalisation, batching,
precision and memory layout), on the CPU.
"""
from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class ImageClassifier(PythonModel):
    def load_context(self, context) -> None:
        import torch

        from pipelines import models

        self.model, self.config = models.load_checkpoint(context.artifacts["weights"])
        self.model = self.model.to(torch.device("cpu"), memory_format=torch.channels_last).eval()
        options = context.model_config or {}
        self.precision = options.get("precision", "fp32")
        self.batch_size = int(options.get("eval_batch_size", 256))

    # The type hint is MLflow's: a np.ndarray input is one it checks against the logged signature (a
    # uint8 tensor of images) rather than one it infers a schema from, so it asks for no other hint.
    def predict(self, context, model_input: np.ndarray, params=None):
        import pandas as pd
        import torch

        from pipelines import compute, inference

        if isinstance(model_input, dict) and len(model_input) == 1:  # a named tensor
            model_input = next(iter(model_input.values()))
        x = np.asarray(model_input)
        c = self.config
        shape = (c["image_size"], c["image_size"], c["in_channels"])
        if x.ndim == 3 and c["in_channels"] == 1:
            x = x[..., None]
        if x.ndim != 4 or x.shape[1:] != shape:
            raise ValueError(f"images of shape (n, {', '.join(map(str, shape))}) expected, got {x.shape}")
        x = x.astype(np.uint8, copy=False)
        device = torch.device("cpu")
        data = compute.DeviceData.from_arrays(x, np.zeros(len(x), np.int64), c["mean"], c["std"], device)
        logits = inference.predict_logits(self.model, data, self.batch_size, device, self.precision)
        prob = torch.softmax(logits, 1)
        p, label = prob.max(1)
        label = label.numpy()
        return pd.DataFrame({"label": label.astype(np.int64),
                             "class": [c["classes"][i] for i in label],
                             "probability": p.numpy().astype(np.float64)})


mlflow.models.set_model(ImageClassifier())
