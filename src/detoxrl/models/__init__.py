"""Loading and materialising base models; LoRA adapters over them."""
