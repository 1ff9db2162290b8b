//! Checkpoint files: PyTorch `.pth` (zip + pickle) and safetensors.
