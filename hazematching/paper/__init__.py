"""The paper's released checkpoints and data sets: the table (``releases``), verified resumable
downloads (``download``) and safe unpacking into this project's train/val/test layout (``archive``)."""
