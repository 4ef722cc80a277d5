"""Training: typed configs, data modules, the Lightning module and callbacks, launch strategies
(ddp/DeepSpeed), per-kind recipes, fine-tuning, refiner training and resource estimates."""
