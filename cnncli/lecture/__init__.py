"""The lecture's views: its hand-worked numbers, recomputed by the engine and compared.

    slides  the lecture's printed numbers (``slides.yaml``) and a step-local checker
    trace   ``backprop-trace``: one exact forward and backward pass, recorded for display
"""
