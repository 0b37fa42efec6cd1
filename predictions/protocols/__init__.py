"""Other servers' request formats on this product's one serving path.

Each protocol (MLflow's scoring protocol in mlflow.py, the Open Inference Protocol V2 in v2.py)
only decodes a request into rows (frame.FrameBody) and encodes the answer: authentication,
access policy, throttle, routing, splits, validation, the result cache, the prediction log and
the metrics are the native predict endpoint's own (predictions.serving).
"""
