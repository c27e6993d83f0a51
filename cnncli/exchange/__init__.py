"""Exchange with other engines: a model and its weights handed to ONNX (and PyTorch), and taken back."""
